"""End to end: plain DNS clients (dig, kdig, dnspython) over UDP and TCP
through dotproxy get what unbound gives directly over TLS."""

import random
import socket
import struct

import dns.flags
import dns.message
import dns.rcode
import pytest

import dphelpers as H


@pytest.fixture
def proxy(dotproxy, unbound, certs):
    return dotproxy([unbound.upstream_arg()], certs["ca"])


def _queries(transport):
    return H.E2E_QUERIES + (H.TCP_ONLY_QUERIES if transport == "tcp" else [])


def _mismatch_report(bad):
    return "\n".join("%s %s over %s:\n  via dotproxy: %s\n  direct TLS:   %s" % b for b in bad)


@pytest.mark.parametrize("tool", ["dig", "kdig"])
def test_cli_clients_match_unbound_tls(proxy, unbound, certs, tool):
    bad = []
    for transport in ("udp", "tcp"):
        for name, rdtype in _queries(transport):
            ref, _ = H.kdig(unbound.host, unbound.tls_port, name, rdtype, tls_ca=certs["ca"])
            if tool == "dig":
                got, out = H.dig(proxy.host, proxy.port, name, rdtype, tcp=(transport == "tcp"))
            else:
                got, out = H.kdig(proxy.host, proxy.port, name, rdtype, tcp=(transport == "tcp"))
            if H.essence(got) != H.essence(ref):
                bad.append((name, rdtype, transport, H.essence(got), H.essence(ref)))
    assert not bad, _mismatch_report(bad)


def test_dnspython_matches_unbound_tls(proxy, unbound, certs):
    bad = []
    for transport in ("udp", "tcp"):
        for name, rdtype in _queries(transport):
            for use_edns in (-1, 0):  # without and with EDNS
                q = H.make_query(name, rdtype, use_edns=use_edns, payload=1232)
                ref = H.norm_msg(H.tls(q, unbound.host, unbound.tls_port, certs["ca"]))
                q2 = H.make_query(name, rdtype, use_edns=use_edns, payload=1232)
                send = H.udp if transport == "udp" else H.tcp
                r = send(q2, proxy.host, proxy.port)  # dnspython checks ID and question
                assert r.id == q2.id
                got = H.norm_msg(r)
                if got["question"] != ref["question"] or H.essence(got) != H.essence(ref):
                    bad.append((name, rdtype, "%s edns=%d" % (transport, use_edns), got, ref))
    assert not bad, _mismatch_report(bad)


def test_ipv6_listen(dotproxy, unbound, certs):
    if not H.have_ipv6_loopback():
        pytest.skip("::1 is not available on this machine")
    port6 = H.free_port("::1")
    dp = dotproxy([unbound.upstream_arg()], certs["ca"], listen=[("::1", port6)])
    for tcp in (False, True):
        got, out = H.dig("::1", port6, "www.test.", "AAAA", tcp=tcp)
        assert got["rcode"] == "NOERROR", out
        assert got["answer"] == {("www.test.", "IN", "AAAA", frozenset({"2001:db8::1"}))}, out
    r = H.udp(H.make_query("multi.test.", "A"), "::1", port6)
    assert {rd.to_text() for rd in r.answer[0]} == {"192.0.2.11", "192.0.2.12", "192.0.2.13", "192.0.2.14"}
    r = H.tcp(H.make_query("txt.test.", "TXT"), "::1", port6)
    assert r.rcode() == dns.rcode.NOERROR and len(r.answer[0]) == 2


def test_ipv4_and_ipv6_listen_together(dotproxy, unbound, certs):
    if not H.have_ipv6_loopback():
        pytest.skip("::1 is not available on this machine")
    listen = [("127.0.0.1", H.free_port()), ("::1", H.free_port("::1"))]
    dotproxy([unbound.upstream_arg()], certs["ca"], listen=listen)
    for host, port in listen:
        for send in (H.udp, H.tcp):
            r = send(H.make_query("n7.test.", "A"), host, port)
            assert [rd.to_text() for rd in r.answer[0]] == ["198.51.100.7"], (host, send.__name__)


def test_nxdomain_passes_through(proxy, unbound, certs):
    ref = H.tls(H.make_query("does-not-exist.test.", "A"), unbound.host, unbound.tls_port, certs["ca"])
    assert ref.rcode() == dns.rcode.NXDOMAIN
    for send in (H.udp, H.tcp):
        r = send(H.make_query("does-not-exist.test.", "A"), proxy.host, proxy.port)
        assert r.rcode() == dns.rcode.NXDOMAIN, send.__name__
        assert not r.answer
        assert H.rrsets_norm(r.authority) == H.rrsets_norm(ref.authority)
    for transport in ("udp", "tcp"):
        got, out = H.dig(proxy.host, proxy.port, "does-not-exist.test.", "AAAA", tcp=(transport == "tcp"))
        assert got["rcode"] == "NXDOMAIN", out


def test_answer_id_equals_client_id(proxy):
    ids = [0, 1, 0x7FFF, 0x8000, 0xFFFF] + random.sample(range(65536), 20)
    # UDP: one socket, one query at a time
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    try:
        for i, qid in enumerate(ids):
            q = H.make_query("n%d.test." % (i % 100), "A", qid=qid)
            s.sendto(q.to_wire(), (proxy.host, proxy.port))
            data = s.recv(65535)
            assert H.wire_id(data) == qid
            r = dns.message.from_wire(data)
            assert r.flags & dns.flags.QR
            assert r.question == q.question
            assert [rd.to_text() for rd in r.answer[0]] == ["198.51.100.%d" % (i % 100)]
    finally:
        s.close()
    # TCP: one connection, sequential
    c = socket.create_connection((proxy.host, proxy.port), timeout=3)
    try:
        for i, qid in enumerate(ids):
            q = H.make_query("n%d.test." % (i % 100), "A", qid=qid)
            w = q.to_wire()
            c.sendall(struct.pack("!H", len(w)) + w)
            data = H.tcp_read_msg(c)
            assert H.wire_id(data) == qid
            r = dns.message.from_wire(data)
            assert r.question == q.question
    finally:
        c.close()


def test_same_id_from_two_clients(proxy):
    """Two clients using the same ID for different names at the same moment
    each get their own answer (IDs are remapped upstream)."""
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for sock in (a, b):
            sock.settimeout(3)
        for round_ in range(20):
            qa = H.make_query("n%d.test." % round_, "A", qid=4242)
            qb = H.make_query("n%d.test." % (round_ + 50), "A", qid=4242)
            a.sendto(qa.to_wire(), (proxy.host, proxy.port))
            b.sendto(qb.to_wire(), (proxy.host, proxy.port))
            ra = dns.message.from_wire(a.recv(65535))
            rb = dns.message.from_wire(b.recv(65535))
            assert ra.id == rb.id == 4242
            assert ra.question == qa.question and rb.question == qb.question
            assert [rd.to_text() for rd in ra.answer[0]] == ["198.51.100.%d" % round_]
            assert [rd.to_text() for rd in rb.answer[0]] == ["198.51.100.%d" % (round_ + 50)]
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("use_edns,payload,limit", [(-1, 0, 512), (0, 512, 512), (0, 1232, 1232)])
def test_udp_answer_fits_client_size(proxy, use_edns, payload, limit):
    """big.test TXT is ~2.6 KB: over UDP the answer must fit the client's
    size (512 without EDNS) and say TC; over TCP it arrives whole."""
    q = H.make_query("big.test.", "TXT", use_edns=use_edns, payload=payload or 1232)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    try:
        s.sendto(q.to_wire(), (proxy.host, proxy.port))
        data = s.recv(65535)
    finally:
        s.close()
    assert len(data) <= limit, "UDP answer of %d bytes to a client that allows %d" % (len(data), limit)
    r = dns.message.from_wire(data, ignore_trailing=True)
    assert r.id == q.id
    assert r.flags & dns.flags.TC, "truncated answer without TC"
    full = H.tcp(H.make_query("big.test.", "TXT"), proxy.host, proxy.port)
    assert len(full.answer[0]) == H.BIG_TXT_COUNT

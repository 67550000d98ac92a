"""Configured limits: --max-udp-size and --tcp-idle-timeout."""

import socket
import struct
import time

import dns.flags
import dns.message
import pytest

import dphelpers as H


def _udp_raw(dp, q):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    try:
        s.sendto(q.to_wire(), (dp.host, dp.port))
        return s.recv(65535)
    finally:
        s.close()


def test_max_udp_size_caps_answer(dotproxy, unbound, certs):
    dp = dotproxy([unbound.upstream_arg()], certs["ca"], extra=["--max-udp-size", "512"])
    q = H.make_query("big.test.", "TXT", use_edns=0, payload=4096)
    data = _udp_raw(dp, q)
    assert len(data) <= 512, "%d-byte UDP answer with --max-udp-size 512" % len(data)
    r = dns.message.from_wire(data, ignore_trailing=True)
    assert r.id == q.id and r.flags & dns.flags.TC


def test_large_udp_answer_when_both_allow(dotproxy, unbound, certs):
    dp = dotproxy([unbound.upstream_arg()], certs["ca"], extra=["--max-udp-size", "4096"])
    q = H.make_query("big.test.", "TXT", use_edns=0, payload=4096)
    data = _udp_raw(dp, q)
    r = dns.message.from_wire(data)
    assert len(data) > 1232 and len(data) <= 4096, len(data)
    assert not r.flags & dns.flags.TC
    assert len(r.answer[0]) == H.BIG_TXT_COUNT


def test_tcp_idle_timeout_closes(dotproxy, unbound, certs):
    dp = dotproxy([unbound.upstream_arg()], certs["ca"], extra=["--tcp-idle-timeout", "500ms"])
    c = socket.create_connection((dp.host, dp.port), timeout=5)
    try:
        q = H.make_query("www.test.", "A")
        w = q.to_wire()
        c.sendall(struct.pack("!H", len(w)) + w)
        r = dns.message.from_wire(H.tcp_read_msg(c))
        assert r.id == q.id and r.answer
        t0 = time.monotonic()
        try:
            rest = c.recv(1)
        except ConnectionResetError:
            rest = b""
        dt = time.monotonic() - t0
    finally:
        c.close()
    assert rest == b"", "unexpected data on an idle connection: %r" % rest
    assert 0.3 <= dt <= 3.0, "idle connection closed after %.2f s with --tcp-idle-timeout 500ms" % dt


def test_tcp_connection_kept_while_active(dotproxy, unbound, certs):
    """Queries every 200 ms keep a connection open past a 500 ms idle timeout."""
    dp = dotproxy([unbound.upstream_arg()], certs["ca"], extra=["--tcp-idle-timeout", "500ms"])
    c = socket.create_connection((dp.host, dp.port), timeout=5)
    try:
        for i in range(8):
            q = H.make_query("n%d.test." % i, "A")
            w = q.to_wire()
            c.sendall(struct.pack("!H", len(w)) + w)
            r = dns.message.from_wire(H.tcp_read_msg(c))
            assert r.id == q.id and [rd.to_text() for rd in r.answer[0]] == ["198.51.100.%d" % i]
            time.sleep(0.2)
    finally:
        c.close()

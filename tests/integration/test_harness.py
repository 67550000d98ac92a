"""Self-tests of the harness against unbound directly (no dotproxy needed):
the DoT upstream fixture answers over TLS with the expected zone data, and
dig/kdig/dnspython parsing agree with each other."""

import pytest

import dphelpers as H


def test_unbound_dot_answers_kdig_tls(unbound, certs):
    p, out = H.kdig(unbound.host, unbound.tls_port, "www.test.", "A", tls_ca=certs["ca"])
    assert "TLS session" in out
    assert p["rcode"] == "NOERROR"
    assert p["answer"] == {("www.test.", "IN", "A", frozenset({"192.0.2.1"}))}


def test_unbound_tls_rejects_wrong_name(unbound, certs):
    # the upstream's certificate is only good for upstream.test
    r = H.run(["kdig", "@127.0.0.1", "-p", str(unbound.tls_port), "+tls", "+tls-ca=%s" % certs["ca"],
               "+tls-hostname=wrong.test", "+retry=0", "+time=2", "www.test.", "A"], timeout=15)
    assert "status: NOERROR" not in r.stdout


def test_unbound_tls_rejects_other_ca(unbound, other_ca):
    r = H.run(["kdig", "@127.0.0.1", "-p", str(unbound.tls_port), "+tls", "+tls-ca=%s" % other_ca["ca"],
               "+tls-hostname=%s" % H.UPSTREAM_NAME, "+retry=0", "+time=2", "www.test.", "A"], timeout=15)
    assert "status: NOERROR" not in r.stdout


@pytest.mark.parametrize("name,rdtype", H.E2E_QUERIES + H.TCP_ONLY_QUERIES)
def test_reference_parsers_agree(unbound, certs, name, rdtype):
    ref = H.norm_msg(H.tls(H.make_query(name, rdtype, use_edns=0), unbound.host, unbound.tls_port, certs["ca"]))
    kd, _ = H.kdig(unbound.host, unbound.tls_port, name, rdtype, tls_ca=certs["ca"])
    dg, _ = H.dig(unbound.host, unbound.plain_port, name, rdtype, tcp=True)
    assert H.essence(kd) == H.essence(ref)
    assert H.essence(dg) == H.essence(ref)


def test_zone_shapes(unbound, certs):
    big = H.tls(H.make_query("big.test.", "TXT", use_edns=0, payload=4096), unbound.host, unbound.tls_port,
                certs["ca"])
    assert len(big.to_wire()) > 1232
    assert len(big.answer[0]) == H.BIG_TXT_COUNT
    nx = H.tls(H.make_query("nxdomain.test.", "A"), unbound.host, unbound.tls_port, certs["ca"])
    assert nx.rcode() == 3
    perf = H.tls(H.make_query("q123456.perf.test.", "A"), unbound.host, unbound.tls_port, certs["ca"])
    assert [rd.to_text() for rd in perf.answer[0]] == [H.PERF_ADDR]

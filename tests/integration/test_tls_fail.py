"""Upstream TLS verification: a wrong name or a CA that did not sign the
upstream's certificate must give SERVFAIL quickly, a logged handshake
failure, and never an answer with data."""

import re
import time

import dns.rcode
import pytest

import dphelpers as H

TIMEOUT_S = 4.0  # --timeout; SERVFAIL must come well before it
QUICK_S = 2.0

CASES = {
    "wrong_name": lambda unbound, certs, other_ca: (unbound.upstream_arg("wrong.test"), certs["ca"]),
    "untrusted_ca": lambda unbound, certs, other_ca: (unbound.upstream_arg(), other_ca["ca"]),
}


def _is_handshake_failure(d):
    return d.get("level") == "warn" and d.get("msg") == "upstream handshake failed"


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_upstream_certificate(dotproxy, unbound, certs, other_ca, case):
    upstream, ca = CASES[case](unbound, certs, other_ca)
    # no readiness query: the first query below triggers the failing handshake
    dp = dotproxy([upstream], ca, timeout="%gs" % TIMEOUT_S, wait="log")

    # dnspython, several types, both transports: SERVFAIL, no data, fast
    for send in (H.udp, H.tcp):
        for name, rdtype in [("www.test.", "A"), ("txt.test.", "TXT"), ("x1.perf.test.", "A")]:
            q = H.make_query(name, rdtype)
            t0 = time.monotonic()
            r = send(q, dp.host, dp.port, timeout=TIMEOUT_S + 3)
            dt = time.monotonic() - t0
            assert r.rcode() == dns.rcode.SERVFAIL, "%s %s/%s: got %s" % (send.__name__, name, rdtype, r)
            assert not r.answer, "answer data despite failed verification: %s" % r
            assert r.id == q.id
            assert dt < QUICK_S, "%s SERVFAIL took %.2f s (--timeout %gs)" % (send.__name__, dt, TIMEOUT_S)

    # dig over UDP and TCP
    for tcp in (False, True):
        t0 = time.monotonic()
        got, out = H.dig(dp.host, dp.port, "www.test.", "A", tcp=tcp)
        dt = time.monotonic() - t0
        assert got["rcode"] == "SERVFAIL", out
        assert not got["answer"], out
        assert dt < QUICK_S + 0.5, "dig took %.2f s" % dt

    line = dp.wait_log(_is_handshake_failure, timeout=3)
    assert line, 'no level=warn msg="upstream handshake failed" line; stderr:\n%s' % dp.tail()
    reason = str(line.get("reason", ""))
    assert re.search(r"(?i)verif|certificate|hostname|issuer|mismatch", reason), \
        "handshake failure reason does not name a verification error: %r" % line
    st = dp.stats()
    assert st.get("handshake_failures", 0) >= 1, st
    assert st.get("upstream_answers", 0) == 0, st

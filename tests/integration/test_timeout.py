"""Upstreams that never answer: a TCP server that accepts and never speaks
TLS, and an address with nothing listening. Clients get SERVFAIL in about
--timeout, never a hang."""

import threading
import time

import dns.rcode
import pytest

import dphelpers as H

SEND = {"udp": H.udp, "tcp": H.tcp}


def _timed(send, dp, name="www.test."):
    q = H.make_query(name, "A")
    t0 = time.monotonic()
    r = send(q, dp.host, dp.port, timeout=6)
    return r, time.monotonic() - t0


@pytest.mark.timeout_s(60)
@pytest.mark.parametrize("first", ["udp", "tcp"])
def test_silent_upstream_servfail_after_timeout(dotproxy, certs, silent_upstream, first):
    # No readiness query: the first query below is the one that makes
    # dotproxy connect to the silent upstream.
    dp = dotproxy(["127.0.0.1:%d#%s" % (silent_upstream.port, H.UPSTREAM_NAME)], certs["ca"], timeout="1s",
                  wait="log")
    r, dt = _timed(SEND[first], dp)
    assert r.rcode() == dns.rcode.SERVFAIL, r
    assert not r.answer
    assert 0.5 <= dt <= 3.0, "first query (%s): SERVFAIL after %.2f s with --timeout 1s" % (first, dt)
    assert silent_upstream.accepted >= 1, "dotproxy never connected to the upstream"

    # Later queries may be failed faster (upstream marked down) but never
    # later than about --timeout, on both transports, several at once.
    results = {}

    def one(i):
        t0 = time.monotonic()
        try:
            rr, _ = _timed(H.udp if i % 2 else H.tcp, dp, "n%d.test." % i)
            results[i] = (dns.rcode.to_text(rr.rcode()), len(rr.answer), time.monotonic() - t0)
        except Exception as e:
            results[i] = ("%s: %s" % (type(e).__name__, e), 0, time.monotonic() - t0)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert all(not t.is_alive() for t in threads), "a client hung"
    bad = {i: v for i, v in results.items() if v[0] != "SERVFAIL" or v[1] or v[2] > 3.0}
    assert len(results) == 8 and not bad, results

    line = dp.wait_log(lambda d: d.get("level") == "warn" and d.get("msg") == "upstream handshake failed", 3)
    assert line, "no handshake failure logged for the silent upstream:\n%s" % dp.tail()
    st = dp.stats()
    assert st.get("servfail", 0) >= 9, st
    assert st.get("upstream_answers", 0) == 0, st


@pytest.mark.timeout_s(60)
def test_nothing_listening_servfail(dotproxy, certs):
    dead = H.free_port()  # nothing listens here
    dp = dotproxy(["127.0.0.1:%d#%s" % (dead, H.UPSTREAM_NAME)], certs["ca"], timeout="1s", wait="log")
    for name, send in SEND.items():
        for i in range(3):
            r, dt = _timed(send, dp, "n%d.test." % i)
            assert r.rcode() == dns.rcode.SERVFAIL, r
            assert not r.answer
            assert dt <= 3.0, "%s: SERVFAIL after %.2f s with --timeout 1s" % (name, dt)
    got, out = H.dig(dp.host, dp.port, "www.test.", "A")
    assert got["rcode"] == "SERVFAIL", out

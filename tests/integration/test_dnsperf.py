"""Load: dnsperf over UDP with 200,000 distinct names (every one a cache
miss, every one answered by unbound's perf.test. redirect zone), and proof
that queries are batched into shared SSL_write calls."""

import os
import random
import re
import socket
import time

import dns.message
import dns.rcode
import pytest

import dphelpers as H
from conftest import require_tool

NAMES = 200_000


def _dnsperf_field(out, label):
    m = re.search(r"^\s*%s:\s+(\d+)" % re.escape(label), out, re.M)
    assert m, "dnsperf output lacks %r:\n%s" % (label, out)
    return int(m.group(1))


@pytest.mark.timeout_s(300)
def test_dnsperf_200k_unique_names(dotproxy, unbound, certs, tmp_path):
    require_tool("dnsperf")
    dp = dotproxy([unbound.upstream_arg()], certs["ca"], timeout="5s")
    tag = "%x" % random.randrange(1 << 32)
    qfile = tmp_path / "queries.txt"
    with open(qfile, "w") as f:
        for i in range(NAMES):
            f.write("p%d-%s.perf.test A\n" % (i, tag))
    cmd = ["dnsperf", "-s", dp.host, "-p", str(dp.port), "-d", str(qfile), "-n", "1", "-q", "1000",
           "-c", "20", "-l", "120"]
    t0 = time.monotonic()
    r = H.run(cmd, timeout=180)
    elapsed = time.monotonic() - t0
    out = r.stdout + r.stderr
    print(out)
    assert r.returncode == 0, "dnsperf exited %d:\n%s" % (r.returncode, out)
    sent = _dnsperf_field(out, "Queries sent")
    completed = _dnsperf_field(out, "Queries completed")
    lost = _dnsperf_field(out, "Queries lost")
    st = dp.stats()
    print("elapsed %.1f s; dotproxy stats: %s" % (elapsed, st))
    assert lost == 0, "Queries lost: %d of %d sent (dotproxy stats: %s)" % (lost, sent, st)
    assert sent == NAMES and completed == NAMES, "sent %d completed %d, want %d" % (sent, completed, NAMES)
    m = re.search(r"Response codes:\s+(.*)", out)
    assert m and m.group(1).strip().startswith("NOERROR %d " % NAMES), "not all NOERROR: %s" % (m and m.group(1))
    assert st.get("udp_queries", 0) >= NAMES, st
    assert st.get("upstream_bad_id", 0) == 0, st
    assert st.get("upstream_bad_question", 0) == 0, st
    assert st.get("servfail", 0) == 0, st
    writes, wq = st.get("ssl_writes", 0), st.get("ssl_write_queries", 0)
    assert writes > 0 and wq / writes > 1.5, "little batching under load: %d queries in %d SSL_write" % (wq, writes)


@pytest.mark.timeout_s(60)
def test_ssl_write_batching(dotproxy, unbound, certs):
    """Bursts of distinct UDP queries sent without waiting (5 x 200, each
    burst answered before the next): all answered, and the counters show
    several queries per SSL_write."""
    dp = dotproxy([unbound.upstream_arg()], certs["ca"], timeout="5s", threads=1)
    bursts, per_burst = 5, 200
    tag = "%x" % random.randrange(1 << 32)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.settimeout(5)
    answered = 0
    try:
        for b in range(bursts):
            want = {}
            wires = []
            for i in range(per_burst):
                qid = b * per_burst + i
                q = H.make_query("b%d-%s.perf.test." % (qid, tag), "A", qid=qid)
                want[qid] = q
                wires.append(q.to_wire())
            for w in wires:
                s.sendto(w, (dp.host, dp.port))
            got = set()
            try:
                while len(got) < per_burst:
                    r = dns.message.from_wire(s.recv(65535))
                    assert r.id in want, "answer with an ID from an earlier burst: %d" % r.id
                    assert r.question == want[r.id].question
                    assert r.rcode() == dns.rcode.NOERROR, r
                    assert [rd.to_text() for rd in r.answer[0]] == [H.PERF_ADDR]
                    got.add(r.id)
            except socket.timeout:
                pass
            answered += len(got)
            if len(got) < per_burst:
                break
    finally:
        s.close()
    st = dp.stats()
    total = bursts * per_burst
    assert answered == total, "%d of %d burst queries answered (stats: %s)" % (answered, total, st)
    writes, wq = st.get("ssl_writes"), st.get("ssl_write_queries")
    assert isinstance(writes, int) and isinstance(wq, int) and writes > 0, "stats lack ssl_writes: %s" % st
    ratio = wq / writes
    print("ssl_write_queries=%d ssl_writes=%d ratio=%.2f max_write_batch=%s" % (wq, writes, ratio,
                                                                               st.get("max_write_batch")))
    assert ratio > 1.5, "no batching: %d queries in %d SSL_write calls (%.2f per write)" % (wq, writes, ratio)

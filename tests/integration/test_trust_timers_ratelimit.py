"""Issue 12 (trust), holes 5 and 6.

Hole 5: the rate limiter was a direct-mapped table under an unkeyed hash in
which a new address took a bucket over with a full allowance: a victim's
address alternating with one that collides with it (anyone could compute
one) was never limited. Now the sets are keyed with SipHash under a
per-process random key and a takeover inherits the bucket's allowance.

Hole 6: query deadlines and hedge times sat in FIFO lists that assume one
fixed delay: after a SIGHUP shortened --timeout (or the hedge delay), a new
query waited behind the older, longer deadlines. Now they are timers on a
per-shard timer wheel that fires in deadline order.

Upstreams: the session's unbound (conftest) and tools/dot-responder
(--drop-pct 100: handshakes, never answers). One shard (--threads 1) so
that every query meets the same rate-limit table and the same timers.
The config file read again on SIGHUP lives in a 0755 directory under /tmp
(dotproxy reads it after dropping privileges to nobody).
"""

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import pytest

import dphelpers as H
from conftest import _alias, _stop, _tail

RESPONDER = H.BUILD_DIR / "tools" / "dot-responder"


# ---------------------------------------------------------------- helpers

class Responder:
    """tools/dot-responder on 127.0.0.1, kernel-chosen port."""

    def __init__(self, exe, errpath, certs, extra):
        self.errpath = errpath
        self.args = [str(exe), "--listen", "127.0.0.1:0", "--cert", str(certs["server"]),
                     "--key", str(certs["server_key"]), "--threads", "1"] + list(extra)
        with open(errpath, "wb") as f:
            self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=f, stderr=f,
                                         start_new_session=True)
        self.port = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.port is None and self.proc.poll() is None:
            for line in Path(errpath).read_text(errors="replace").splitlines():
                if line.startswith("listening on 127.0.0.1:"):
                    self.port = int(line.split()[2].rsplit(":", 1)[1])
            time.sleep(0.02)
        if self.port is None:
            _stop(self.proc)
            pytest.fail("dot-responder did not start: %s\n%s" % (" ".join(self.args), _tail(errpath)),
                        pytrace=False)

    def upstream_arg(self):
        return "127.0.0.1:%d#%s" % (self.port, H.UPSTREAM_NAME)


@pytest.fixture
def responders(tmp_path, bindir, certs):
    if not (RESPONDER.is_file() and os.access(RESPONDER, os.X_OK)):
        pytest.fail("dot-responder not found at %s" % RESPONDER, pytrace=False)
    exe = _alias(bindir, RESPONDER, "dr-trust-timers")
    started = []

    def start(extra=()):
        r = Responder(exe, tmp_path / ("responder-%d.stderr" % len(started)), certs, extra)
        started.append(r)
        return r

    yield start
    for r in started:
        _stop(r.proc)


def write_conf(path, lines):
    H.write_file(path, "# written by test_trust_timers_ratelimit.py\n" + "\n".join(lines) + "\n")


def reload(dp, conf, lines):
    write_conf(conf, lines)
    n = sum(1 for l in dp.log_lines() if 'msg="reloaded"' in l)
    os.kill(dp.pid, signal.SIGHUP)
    ok = H.wait_for(lambda: sum(1 for l in dp.log_lines() if 'msg="reloaded"' in l) > n, 5.0)
    assert ok, "no msg=\"reloaded\" within 5 s of SIGHUP:\n%s" % dp.tail()
    time.sleep(0.1)  # the shard adopts it at its next wake-up


def udp_socket(src="127.0.0.1"):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    s.bind((src, 0))
    return s


def collect(s, ids, timeout):
    """{id: (rcode text, seconds)} for the answers to ids that arrive within timeout."""
    t0 = time.monotonic()
    end = t0 + timeout
    got = {}
    while len(got) < len(ids) and time.monotonic() < end:
        s.settimeout(max(0.01, end - time.monotonic()))
        try:
            r = dns.message.from_wire(s.recv(65535))
        except socket.timeout:
            break
        if r.id in ids and r.id not in got:
            got[r.id] = (dns.rcode.to_text(r.rcode()), time.monotonic() - t0)
    return got


def send(s, dp, name, qid):
    s.sendto(H.make_query(name, "A", qid=qid).to_wire(), (dp.host, dp.port))


# ---------------------------------------------------------------- hole 5

def old_bucket(addr, entries=1 << 16):
    """The bucket f108c5a's rate limiter gave an IPv4 address: the address
    as a native (little-endian) u64, the family in the top octet, times the
    golden ratio, bits 32 and up."""
    key = int.from_bytes(socket.inet_aton(addr), "little")
    h = ((key ^ (socket.AF_INET << 56)) * 0x9E3779B97F4A7C15) & ((1 << 64) - 1)
    return (h >> 32) & (entries - 1)


def colliding_address(victim):
    """An address in 127.0.0.0/8 in the victim's old bucket."""
    want = old_bucket(victim)
    for n in range(1, 1 << 24):
        a = "127.%d.%d.%d" % (n >> 16, (n >> 8) & 255, n & 255)
        if a != victim and old_bucket(a) == want:
            return a
    raise AssertionError("no colliding address for %s" % victim)


@pytest.mark.timeout_s(60)
def test_hole5_rate_limit_not_bypassed_by_colliding_address(dotproxy, unbound, certs):
    """--rate-limit 20: a victim address and one colliding with it under
    the old unkeyed hash send 100 queries each, alternating. Each must be
    limited to about its burst (20); on f108c5a every switch handed the
    bucket over with a full allowance and all 200 were answered."""
    victim = "127.0.0.2"
    other = colliding_address(victim)
    dp = dotproxy([unbound.upstream_arg()], certs["ca"], threads=1, extra=["--rate-limit", "20"])
    sv, so = udp_socket(victim), udp_socket(other)
    try:
        # warm the cache from a third address: the queries below are hits
        s3 = udp_socket("127.0.0.3")
        send(s3, dp, "www.test.", 7)
        r, _ = H.wait_answer(s3, 7, 3.0)
        s3.close()
        assert r is not None and r.rcode() == dns.rcode.NOERROR and r.answer, r
        t0 = time.monotonic()
        for i in range(100):
            send(sv, dp, "www.test.", i)
            send(so, dp, "www.test.", 1000 + i)
        elapsed = time.monotonic() - t0
        got = {}
        for name, s in (("victim", sv), ("other", so)):
            real = tc = 0
            end = time.monotonic() + 1.5
            while time.monotonic() < end:
                s.settimeout(max(0.01, end - time.monotonic()))
                try:
                    r = dns.message.from_wire(s.recv(65535))
                except socket.timeout:
                    break
                if r.flags & dns.flags.TC:
                    tc += 1
                elif r.rcode() == dns.rcode.NOERROR and r.answer:
                    real += 1
            got[name] = (real, tc)
    finally:
        sv.close()
        so.close()
    msg = ("%s and %s (same bucket under the old hash) alternating, 100 queries each in %.3f s "
           "with --rate-limit 20: (answered, TC) %s" % (victim, other, elapsed, got))
    print(msg)
    allowed = 20 + int(20 * elapsed) + 5
    assert got["victim"][0] <= allowed and got["other"][0] <= allowed, msg
    assert got["victim"][1] > 0 and got["other"][1] > 0, msg
    st = dp.stats()
    assert st["ratelimited"] > 0, st


# ---------------------------------------------------------------- hole 6

@pytest.mark.timeout_s(60)
def test_hole6_reload_shorter_timeout_applies_to_new_queries(dotproxy, responders, certs, readable_dir):
    """An upstream that never answers; timeout 10 s from the config file.
    Query A is sent, then SIGHUP sets timeout 1 s, then query B: B gets its
    SERVFAIL after about 1 s. On f108c5a B's deadline sat behind A's in a
    FIFO list and B waited until A's 10 s were up."""
    silent = responders(["--drop-pct", "100"])
    ca = H.copy_ca(certs, readable_dir)
    conf = readable_dir / "dotproxy.conf"
    write_conf(conf, ["timeout 10s"])
    dp = dotproxy([silent.upstream_arg()], ca, timeout=None, threads=1, wait="log",
                  extra=["--config", str(conf), "--drain-timeout", "1s"])
    sa, sb = udp_socket(), udp_socket()
    try:
        t_a = time.monotonic()
        send(sa, dp, "a.timeout.test.", 1)
        time.sleep(0.3)
        reload(dp, conf, ["timeout 1s"])
        send(sb, dp, "b.timeout.test.", 2)
        rb, dt_b = H.wait_answer(sb, 2, 15.0)
        assert rb is not None, "no answer to B within 15 s"
        assert rb.rcode() == dns.rcode.SERVFAIL, rb
        # A keeps the deadline it was given: still waiting
        ra, _ = H.wait_answer(sa, 1, 0.0)
        print("B (timeout 1 s after the reload): SERVFAIL after %.2f s; A (10 s) pending: %s"
              % (dt_b, ra is None))
        assert 0.5 <= dt_b <= 3.0, \
            "B got its SERVFAIL after %.2f s with --timeout 1s (A, sent %.1f s before it with 10 s, " \
            "still waiting)" % (dt_b, time.monotonic() - t_a - dt_b)
        assert ra is None, "A (timeout 10 s) answered before its deadline: %s" % ra
        # and A gets its SERVFAIL at its own deadline
        ra, dt_a = H.wait_answer(sa, 1, 15.0)
        dt_a = time.monotonic() - t_a
        assert ra is not None and ra.rcode() == dns.rcode.SERVFAIL, ra
        assert 8.0 <= dt_a <= 13.0, "A answered after %.2f s, its timeout was 10 s" % dt_a
    finally:
        sa.close()
        sb.close()


@pytest.mark.timeout_s(60)
def test_hole6_hedge_fires_in_order(dotproxy, responders, certs, readable_dir):
    """Two upstreams, round robin: A never answers, B answers at once.
    hedge-after 5 s from the config file; X1, X2 sent (one waits on A, its
    hedge due in 5 s); SIGHUP sets hedge-after 100ms; Y1, Y2 sent: the one
    on A is hedged to B after 100 ms and answered. On f108c5a its hedge sat
    behind X's in a FIFO list and went out only when X's 5 s were up."""
    a = responders(["--drop-pct", "100"])
    b = responders()
    ca = H.copy_ca(certs, readable_dir)
    conf = readable_dir / "dotproxy.conf"
    write_conf(conf, ["hedge-after 5s"])
    dp = dotproxy([a.upstream_arg(), b.upstream_arg()], ca, timeout="10s", threads=1, wait="log",
                  extra=["--config", str(conf), "--upstream-policy", "round-robin",
                         "--drain-timeout", "1s"])
    sx, sy = udp_socket(), udp_socket()
    try:
        send(sx, dp, "x1.hedge.test.", 1)
        send(sx, dp, "x2.hedge.test.", 2)
        gx = collect(sx, {1, 2}, 1.0)  # the one sent to B: answered at once
        assert len(gx) == 1, "X1, X2: want one answered by B at once, one waiting on A: %s\n%s" % (
            gx, dp.tail())
        reload(dp, conf, ["hedge-after 100ms"])
        send(sy, dp, "y1.hedge.test.", 11)
        send(sy, dp, "y2.hedge.test.", 12)
        got = collect(sy, {11, 12}, 8.0)
        st = dp.stats()
    finally:
        sx.close()
        sy.close()
    msg = "Y answers (rcode, seconds) %s; hedges_sent=%s hedge_wins=%s" % (
        got, st.get("hedges_sent"), st.get("hedge_wins"))
    print(msg)
    assert len(got) == 2 and all(v[0] == "NOERROR" for v in got.values()), msg
    assert max(v[1] for v in got.values()) <= 1.5, \
        "with hedge-after 100ms the query on the silent upstream waited for the 5 s hedge: " + msg
    assert st.get("hedges_sent", 0) >= 1 and st.get("hedge_wins", 0) >= 1, msg

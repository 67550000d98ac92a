"""Operations (GitHub issue "Operations"): Prometheus /metrics and /healthz,
the config file and its SIGHUP reload, the SIGTERM drain, and the privilege
drop after binding.

Upstreams: the session's unbound (conftest) and, where two upstreams must be
told apart or answers must be slow, tools/dot-responder (--answer-ip,
--delay-ms, --drop-pct), each started here on a kernel-chosen port.

Files that dotproxy must read after it dropped privileges to nobody (the
config file on SIGHUP) are written into a mode 0755 directory under /tmp with
mode 0644: pytest's own tmp directories are 0700 and root's, so nobody cannot
read them. (No test here uses --allow-root.)

dnsperf runs under `flock /tmp/dp-bench.lock` (other benchmarks share the
machine); it waits up to LOCK_WAIT s for the lock and fails saying so.

Known dotproxy bugs, each exposed by a test marked xfail(strict=True) with a
dedicated exception (so any other failure in those tests is a real failure):
the SIGTERM drain closes client TCP connections (TcpDrainLoss); /healthz
flaps to 200 at every backoff expiry, and with several shards stays 200 when
the only upstream is down (HealthzWrong).
"""

import os
import random
import re
import signal
import socket
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import dns.message
import dns.rcode
import pytest

import dphelpers as H
from conftest import _alias, _probe_udp, _stop, _tail, require_tool

DOT_RESPONDER = H.BUILD_DIR / "tools" / "dot-responder"
BENCH_LOCK = "/tmp/dp-bench.lock"
NOBODY = 65534


# ================================================================ helpers: processes we start here

class DotResponder:
    """tools/dot-responder on 127.0.0.1:<kernel-chosen port>, serving the
    conftest certificate (upstream.test / 127.0.0.1)."""

    def __init__(self, exe, certs, logdir, answer_ip, extra=(), port=0):
        self.log = Path(logdir) / ("dot-responder-%s-%d.log" % (answer_ip, random.randrange(1 << 30)))
        self.answer_ip = answer_ip
        args = [str(exe), "--listen", "127.0.0.1:%d" % port, "--cert", str(certs["server"]),
                "--key", str(certs["server_key"]), "--answer-ip", answer_ip] + list(extra)
        self.args = args
        self.logf = open(self.log, "wb")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self.logf,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.port = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)", self.log.read_text(errors="replace"))
            if m:
                self.port = int(m.group(1))
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise AssertionError("dot-responder did not start (%s):\n%s" % (" ".join(args), _tail(self.log)))

    def upstream_arg(self):
        return "127.0.0.1:%d#%s" % (self.port, H.UPSTREAM_NAME)

    def stop(self):
        _stop(self.proc)
        self.logf.close()


@pytest.fixture
def responders(tmp_path, bindir, certs):
    """Factory: responders(answer_ip, extra=[...]) -> DotResponder; all
    stopped (by PID) at teardown."""
    if not (DOT_RESPONDER.is_file() and os.access(DOT_RESPONDER, os.X_OK)):
        pytest.fail("%s not built (ninja -C %s)" % (DOT_RESPONDER, H.BUILD_DIR), pytrace=False)
    exe = _alias(bindir, DOT_RESPONDER, "dr-ops")
    made = []

    def make(answer_ip, extra=(), port=0):
        r = DotResponder(exe, certs, tmp_path, answer_ip, extra, port)
        made.append(r)
        return r

    yield make
    for r in made:
        r.stop()




class RawProcs:
    """dotproxy processes started without the conftest factory (when the
    command line must not carry --listen); stopped by PID at teardown."""

    def __init__(self, tmp_path, exe):
        self.tmp_path = tmp_path
        self.exe = exe
        self.procs = []

    def start(self, args):
        errpath = self.tmp_path / ("raw-dotproxy-%d.stderr" % len(self.procs))
        errf = open(errpath, "wb")
        p = subprocess.Popen([str(self.exe)] + list(args), stdin=subprocess.DEVNULL, stdout=errf,
                             stderr=errf, start_new_session=True)
        errf.close()
        p.errpath = errpath
        p.log_text = lambda: errpath.read_text(errors="replace")
        self.procs.append(p)
        return p


@pytest.fixture
def raw(tmp_path, dotproxy_bin):
    r = RawProcs(tmp_path, dotproxy_bin)
    yield r
    problems = []
    for p in r.procs:
        rc, killed = _stop(p)
        if killed:
            problems.append("pid %d ignored SIGTERM for 5 s" % p.pid)
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


# ================================================================ helpers: HTTP

def http_get(port, path, timeout=3.0):
    """(status, content-type, body text) of GET http://127.0.0.1:port/path."""
    url = "http://127.0.0.1:%d%s" % (port, path)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode()


def raw_http(port, data, timeout=6.0):
    """Send raw bytes, read until close. Returns (status or None, bytes read,
    how it ended: 'closed', 'reset' or 'timeout')."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    buf = b""
    how = "closed"
    try:
        try:
            if data:
                s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            how = "reset"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                how = "timeout"
                break
            except ConnectionResetError:
                how = "reset"
                break
            if not chunk:
                break
            buf += chunk
        else:
            how = "timeout"
    finally:
        s.close()
    m = re.match(rb"HTTP/1\.[01] (\d{3}) ", buf)
    return (int(m.group(1)) if m else None), buf, how


# ================================================================ helpers: Prometheus text format

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LNAME = r"[a-zA-Z_][a-zA-Z0-9_]*"
_LVAL = r'"(?:[^"\\\n]|\\[\\"n])*"'
_LABELS = r"%s=%s(?:,%s=%s)*,?" % (_LNAME, _LVAL, _LNAME, _LVAL)
_SAMPLE = re.compile(r"^(%s)(?:\{(%s)?\})? (\S+)(?: (-?\d+))?$" % (_NAME, _LABELS))
_FLOAT = re.compile(r"^(?:[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|[+-]?Inf|NaN)$")
_HELP = re.compile(r"^# HELP (%s)(?: (.*))?$" % _NAME)
_TYPE = re.compile(r"^# TYPE (%s) (counter|gauge|histogram|summary|untyped)$" % _NAME)
_LABEL_KV = re.compile(r'(%s)=("(?:[^"\\]|\\.)*")' % _LNAME)


def _float(v):
    return float(v.replace("Inf", "inf"))


def parse_prom(text):
    """Parse and validate Prometheus text exposition 0.0.4. Returns
    {metric name: {frozenset(labels.items()): value}}. Asserts: every line a
    comment (HELP/TYPE well formed) or `name{labels} value` with a float
    value; each family typed before its samples, declared once, contiguous;
    no duplicate series; counters finite and >= 0; histogram buckets with
    increasing le, cumulative counts, ending at le="+Inf" == _count, with
    a _sum."""
    assert text.endswith("\n"), "exposition does not end with a newline: %r" % text[-80:]
    types, helps, samples = {}, {}, {}
    order = []  # family of each sample line, to check contiguity
    for no, line in enumerate(text.split("\n")[:-1], 1):
        where = "line %d: %r" % (no, line)
        assert line.strip() == line and line, "blank or padded line, %s" % where
        if line.startswith("#"):
            if line.startswith("# HELP"):
                m = _HELP.match(line)
                assert m, "malformed HELP, %s" % where
                assert m.group(1) not in helps, "second HELP for %s, %s" % (m.group(1), where)
                helps[m.group(1)] = m.group(2) or ""
            elif line.startswith("# TYPE"):
                m = _TYPE.match(line)
                assert m, "malformed TYPE, %s" % where
                fam = m.group(1)
                assert fam not in types, "second TYPE for %s, %s" % (fam, where)
                assert fam not in order, "TYPE for %s after its samples, %s" % (fam, where)
                types[fam] = m.group(2)
            continue
        m = _SAMPLE.match(line)
        assert m, "not `name{labels} value`, %s" % where
        name, labels_s, value = m.group(1), m.group(2) or "", m.group(3)
        assert _FLOAT.match(value), "value %r is not a float, %s" % (value, where)
        fam = name
        if fam not in types:
            for suf in ("_bucket", "_sum", "_count"):
                if name.endswith(suf) and types.get(name[: -len(suf)]) in ("histogram", "summary"):
                    fam = name[: -len(suf)]
                    break
        assert fam in types, "sample of %s without a # TYPE line before it, %s" % (name, where)
        if order and order[-1] != fam:
            assert fam not in order, "samples of %s are not contiguous, %s" % (fam, where)
        order.append(fam)
        labels = {}
        for k, v in _LABEL_KV.findall(labels_s):
            assert k not in labels, "label %s twice, %s" % (k, where)
            labels[k] = v[1:-1].replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
        key = frozenset(labels.items())
        series = samples.setdefault(name, {})
        assert key not in series, "duplicate series, %s" % where
        val = _float(value)
        series[key] = val
        if types[fam] == "counter" or name.endswith(("_bucket", "_count")):
            assert val >= 0 and val != float("inf") and val == val, "bad counter value, %s" % where
    for fam in helps:
        assert fam in types, "HELP for %s without a TYPE" % fam
    # histograms
    for fam, t in types.items():
        if t != "histogram":
            continue
        buckets = samples.get(fam + "_bucket", {})
        counts = samples.get(fam + "_count", {})
        sums = samples.get(fam + "_sum", {})
        assert counts, "histogram %s has no _count" % fam
        groups = {}
        for key, v in buckets.items():
            d = dict(key)
            assert "le" in d, "bucket of %s without le: %s" % (fam, d)
            le = _float(d.pop("le"))
            groups.setdefault(frozenset(d.items()), []).append((le, v))
        assert set(groups) == set(counts) == set(sums), \
            "histogram %s: bucket/_sum/_count label sets differ: %s / %s / %s" % (fam, set(groups), set(sums),
                                                                            set(counts))
        for key, bs in groups.items():
            # the order in the text must already be increasing; dict keeps it
            les = [le for le, _ in bs]
            assert les == sorted(les) and len(set(les)) == len(les), "%s%s: le not increasing: %s" % (
                fam, dict(key), les)
            assert les[-1] == float("inf"), "%s%s: last bucket is le=%s, not +Inf" % (fam, dict(key), les[-1])
            vals = [v for _, v in bs]
            assert all(a <= b for a, b in zip(vals, vals[1:])), "%s%s: buckets not cumulative: %s" % (
                fam, dict(key), vals)
            assert vals[-1] == counts[key], "%s%s: +Inf bucket %s != _count %s" % (
                fam, dict(key), vals[-1], counts[key])
            assert sums[key] >= 0, "%s%s: negative _sum" % (fam, dict(key))
    return samples


def msum(samples, name, **match):
    """Sum of the series of name whose labels include match."""
    tot = 0.0
    for key, v in samples.get(name, {}).items():
        d = dict(key)
        if all(d.get(k) == want for k, want in match.items()):
            tot += v
    return tot


def scrape(port):
    st, ctype, body = http_get(port, "/metrics")
    assert st == 200, "GET /metrics -> %d: %s" % (st, body[:200])
    assert ctype.startswith("text/plain"), "Content-Type %r" % ctype
    assert "version=0.0.4" in ctype, "Content-Type %r lacks version=0.0.4" % ctype
    return body, parse_prom(body)


# ================================================================ helpers: DNS

def udp_query(port, name, rdtype="A", timeout=3.0):
    return H.udp(H.make_query(name, rdtype), "127.0.0.1", port, timeout=timeout)


def a_addrs(resp):
    return sorted(rd.address for rr in resp.answer for rd in rr if rr.rdtype == 1)


def tag():
    return "%x" % random.randrange(1 << 32)


def free_low_port():
    """A port in 600..1000 free for TCP and UDP on 127.0.0.1 (random start)."""
    ports = list(range(600, 1001))
    start = random.randrange(len(ports))
    for p in ports[start:] + ports[:start]:
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            t.bind(("127.0.0.1", p))
            u.bind(("127.0.0.1", p))
            return p
        except OSError:
            continue
        finally:
            t.close()
            u.close()
    pytest.fail("no free port in 600..1000 on 127.0.0.1 for both UDP and TCP", pytrace=False)


def _dnsperf_field(out, label):
    m = re.search(r"^\s*%s:\s+(\d+)" % re.escape(label), out, re.M)
    assert m, "dnsperf output lacks %r:\n%s" % (label, out)
    return int(m.group(1))


# ================================================================ 1. /metrics under dnsperf

PERF_NAMES = 4000
PERF_QPS = 2000  # -Q: makes the run last ~2 s so that scrapes land during it
LOCK_WAIT = 150  # s to wait for other benchmarks on the machine (flock)
LOCK_BUSY = 75   # flock's exit status when it could not take the lock


@pytest.mark.timeout_s(LOCK_WAIT + 60)
def test_metrics_during_and_after_dnsperf(dotproxy, unbound, certs, tmp_path):
    require_tool("dnsperf")
    require_tool("flock")
    mport = H.free_port()
    dp = dotproxy([unbound.upstream_arg()], certs["ca"], timeout="5s",
                  extra=["--metrics", "127.0.0.1:%d" % mport])
    _, before = scrape(mport)

    t = tag()
    qfile = tmp_path / "queries.txt"
    with open(qfile, "w") as f:
        for i in range(PERF_NAMES):
            f.write("m%d-%s.%s A\n" % (i, t, H.PERF_ZONE.rstrip(".")))
    cmd = ["flock", "-w", str(LOCK_WAIT), "-E", str(LOCK_BUSY), BENCH_LOCK,
           "dnsperf", "-s", "127.0.0.1", "-p", str(dp.port), "-d", str(qfile), "-n", "1", "-q", "200",
           "-Q", str(PERF_QPS), "-l", "60", "-t", "5"]
    out_path = tmp_path / "dnsperf.out"
    with open(out_path, "w") as outf:
        perf = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=outf, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
    during = []  # (queries seen in that scrape minus before, parsed)
    bad = []
    try:
        deadline = time.monotonic() + LOCK_WAIT + 40
        while perf.poll() is None and time.monotonic() < deadline:
            try:
                body, s = scrape(mport)
            except AssertionError as e:
                bad.append(str(e))
                time.sleep(0.02)
                continue
            delta = msum(s, "dotproxy_queries_total") - msum(before, "dotproxy_queries_total")
            during.append((delta, s))
            # slow polling while dnsperf waits for the lock, fast once it runs
            time.sleep(0.02 if delta else 0.2)
        if perf.poll() is None:
            perf.kill()
            pytest.fail("dnsperf (with flock wait) did not finish in %d s" % (LOCK_WAIT + 40), pytrace=False)
    finally:
        if perf.poll() is None:
            perf.kill()
        perf.wait(timeout=10)
    out = out_path.read_text()
    print(out)
    if perf.returncode == LOCK_BUSY:
        pytest.fail("could not take %s within %d s: another benchmark on this machine holds it"
                    % (BENCH_LOCK, LOCK_WAIT), pytrace=False)
    assert perf.returncode == 0, "dnsperf exited %d:\n%s" % (perf.returncode, out)
    assert not bad, "%d of %d scrapes during load were malformed; first: %s" % (
        len(bad), len(bad) + len(during), bad[0])
    mid = [d for d, _ in during if 0 < d < PERF_NAMES]
    print("scrapes during dnsperf: %d, of them mid-run (0 < queries < %d): %d"
          % (len(during), PERF_NAMES, len(mid)))
    assert mid, "no scrape landed while dnsperf was running (deltas seen: %s)" % [d for d, _ in during][:20]

    sent = _dnsperf_field(out, "Queries sent")
    completed = _dnsperf_field(out, "Queries completed")
    lost = _dnsperf_field(out, "Queries lost")
    assert sent == PERF_NAMES, out
    assert lost == 0 and completed == sent, "dnsperf: sent %d completed %d lost %d" % (sent, completed, lost)
    rc_line = re.search(r"Response codes:\s+(.*)", out)
    assert rc_line and rc_line.group(1).strip().startswith("NOERROR %d " % completed), rc_line

    # counters are published each tick: poll until they settle on the totals
    def settled():
        _, s = scrape(mport)
        q = msum(s, "dotproxy_queries_total") - msum(before, "dotproxy_queries_total")
        return s if q >= sent else None
    after = H.wait_for(settled, 3.0, interval=0.1)
    if not after:
        _, after = scrape(mport)

    def d(name, **kw):
        return msum(after, name, **kw) - msum(before, name, **kw)
    report = {
        "queries": d("dotproxy_queries_total"),
        "queries_udp_A": d("dotproxy_queries_total", transport="udp", qtype="A"),
        "NOERROR": d("dotproxy_answers_total", rcode="NOERROR"),
        "SERVFAIL": d("dotproxy_answers_total", rcode="SERVFAIL"),
        "answers_all": d("dotproxy_answers_total"),
        "latency_count": d("dotproxy_query_duration_seconds_count"),
        "upstream_answers": d("dotproxy_upstream_answers_total", upstream=unbound.upstream_arg()),
    }
    print("dnsperf sent=%d completed=%d; /metrics deltas: %s" % (sent, completed, report))
    ev = {dict(k)["event"]: v - before.get("dotproxy_events_total", {}).get(k, 0)
          for k, v in after.get("dotproxy_events_total", {}).items()}
    print("event deltas:", {k: v for k, v in ev.items() if v})
    assert report["queries"] == sent, report
    assert report["queries_udp_A"] == sent, report
    assert report["NOERROR"] == completed, report
    assert report["SERVFAIL"] == 0, report
    assert report["answers_all"] == completed, report
    assert report["latency_count"] == completed, report
    # the upstream also answers dotproxy's own keep-alive/health probes
    probes = ev.get("probes_sent", 0)
    assert completed <= report["upstream_answers"] <= completed + probes + 1, (report, probes)
    assert ev.get("upstream_answers") == report["upstream_answers"], (ev, report)
    # the in-flight gauge (published each tick) comes back to zero
    assert H.wait_for(lambda: msum(scrape(mport)[1], "dotproxy_upstream_inflight") == 0, 3.0, 0.1), \
        "dotproxy_upstream_inflight not 0 3 s after the load"
    assert msum(after, "dotproxy_upstream_healthy", upstream=unbound.upstream_arg()) == 1
    st, _, body = http_get(mport, "/healthz")
    assert st == 200, (st, body)


# ================================================================ 1b. /healthz

def _healthz(port):
    st, _, body = http_get(port, "/healthz")
    return st, body


def _start_down(dotproxy, certs, threads):
    """dotproxy whose only upstream is a closed port; 0.5 s after start
    (past the first publishing tick) one query, answered SERVFAIL."""
    closed = H.free_port()
    mport = H.free_port()
    dp = dotproxy(["127.0.0.1:%d#%s" % (closed, H.UPSTREAM_NAME)], certs["ca"], timeout="2s", threads=threads,
                  extra=["--metrics", "127.0.0.1:%d" % mport], wait="log")
    time.sleep(0.5)
    r = udp_query(dp.port, "www.test.", timeout=5)
    assert r.rcode() == dns.rcode.SERVFAIL, dns.rcode.to_text(r.rcode())
    return dp, mport, closed


def _watch_healthz(port, seconds, interval=0.02):
    """Poll /healthz; returns [(t, status)] at each change."""
    t0 = time.monotonic()
    changes = []
    while time.monotonic() - t0 < seconds:
        st, _ = _healthz(port)
        if not changes or changes[-1][1] != st:
            changes.append((round(time.monotonic() - t0, 2), st))
        time.sleep(interval)
    return changes


@pytest.mark.timeout_s(60)
def test_healthz_up_and_down(dotproxy, unbound, certs, responders):
    mport = H.free_port()
    dp = dotproxy([unbound.upstream_arg()], certs["ca"], extra=["--metrics", "127.0.0.1:%d" % mport])
    r = udp_query(dp.port, "www.test.")
    assert r.rcode() == dns.rcode.NOERROR and a_addrs(r) == ["192.0.2.1"]
    # the health gauge is published each 100 ms tick: allow for the first
    got = H.wait_for(lambda: _healthz(mport) == (200, "ok\n"), 1.0)
    assert got, "/healthz %s with a working upstream" % (_healthz(mport),)

    # the only upstream: a closed port (one shard: see the test below for more)
    dp2, mport2, closed = _start_down(dotproxy, certs, threads=1)
    got = H.wait_for(lambda: _healthz(mport2)[0] == 503, 5.0, interval=0.05)
    assert got, "/healthz still %s 5 s after the only upstream failed" % (_healthz(mport2),)
    assert _healthz(mport2)[1] in ("no healthy upstream\n", "ok\n")
    _, s = scrape(mport2)
    assert msum(s, "dotproxy_upstream_errors_total") >= 1
    # and the working one is still healthy
    assert _healthz(mport) == (200, "ok\n")

    # the upstream comes up on that port: dotproxy probes it after its
    # backoff and /healthz recovers without any client query
    t_up = time.monotonic()
    responders("192.0.2.33", port=closed)
    got = H.wait_for(lambda: _healthz(mport2)[0] == 200, 15.0, interval=0.2)
    print("/healthz back to 200 %.1f s after the upstream came up" % (time.monotonic() - t_up))
    assert got, "/healthz still %s 15 s after the upstream came up:\n%s" % (_healthz(mport2), dp2.tail())
    r = udp_query(dp2.port, "back-%s.perf.test." % tag(), timeout=5)
    assert a_addrs(r) == ["192.0.2.33"], r
    _, s = scrape(mport2)
    assert msum(s, "dotproxy_upstream_healthy") == 1


class HealthzWrong(AssertionError):
    pass


@pytest.mark.timeout_s(60)
# Regression test (was a known bug, now fixed): dotproxy bug: /healthz flaps to 200 while the only upstream stays down. dp_upstream_publish() sets  healthy = !(down_until_ms > now) and runs in the tick before dp_upstream_expire(), which is what  probes the upstream once its backoff is over: at each backoff expiry (0.25, 0.5, 1, 2, 4 s ...) one  t
def test_healthz_stays_503_while_upstream_down(dotproxy, certs):
    dp, mport, _ = _start_down(dotproxy, certs, threads=1)
    got = H.wait_for(lambda: _healthz(mport)[0] == 503, 5.0, interval=0.02)
    assert got, "/healthz never 503 (%s) after the only upstream failed" % (_healthz(mport),)
    changes = _watch_healthz(mport, 3.0)
    fails = [l for l in dp.log_lines() if "connect failed" in l]
    print("/healthz over 3 s with the upstream down: %s; %d failed connects" % (changes, len(fails)))
    assert len(fails) >= 3, "the upstream was not retried: %s" % dp.tail()
    if any(st != 503 for _, st in changes):
        raise HealthzWrong("/healthz not steadily 503 with its only upstream down: (s, status) changes %s"
                           % changes)


@pytest.mark.timeout_s(60)
# Regression test (was a known bug, now fixed): dotproxy bug: with several shards /healthz stays 200 when the only upstream is unreachable. Upstream  health is per shard and dp_metrics_healthy() ORs the shards' healthy gauges; a shard that has not  sent anything to the upstream yet counts as healthy (down_until_ms == 0), so unless every shard  ha
def test_healthz_503_with_two_shards(dotproxy, certs):
    dp, mport, _ = _start_down(dotproxy, certs, threads=2)
    changes = _watch_healthz(mport, 3.0, interval=0.05)
    shards = sorted({H.parse_logline(l).get("shard") for l in dp.log_lines() if "connect failed" in l})
    _, s = scrape(mport)
    print("/healthz with 2 shards, upstream down: %s; shards that tried it: %s; healthy gauge %s"
          % (changes, shards, msum(s, "dotproxy_upstream_healthy")))
    assert shards, "no connect failure logged:\n%s" % dp.tail()
    if not any(st == 503 for _, st in changes):
        raise HealthzWrong("/healthz never 503 in 3 s with the only upstream down (changes %s; only shard(s) "
                           "%s tried it)" % (changes, shards))


# ================================================================ 1c. bad HTTP requests

@pytest.mark.timeout_s(60)
def test_bad_http_requests(dotproxy, unbound, certs):
    mport = H.free_port()
    dp = dotproxy([unbound.upstream_arg()], certs["ca"], extra=["--metrics", "127.0.0.1:%d" % mport])
    # silent clients first: they must not block the others meanwhile
    silent = [socket.create_connection(("127.0.0.1", mport), timeout=10) for _ in range(4)]
    t_silent = time.monotonic()
    cases = [
        ("garbage line", b"this is no http request at all\r\n\r\n", {400}),
        # NUL bytes: a parser working on C strings may never see the end of
        # the request and close at its 3 s client deadline instead of a 400
        ("binary garbage", b"\x00\x01\xff\xfe\r\n\r\n", {400, None}),
        ("no version", b"GET /metrics\r\n\r\n", {400}),
        ("POST", b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", {405}),
        ("DELETE", b"DELETE /healthz HTTP/1.1\r\n\r\n", {405}),
        ("huge header", b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", {400, None}),
        ("huge path", b"GET /" + b"p" * 3000 + b" HTTP/1.1\r\n\r\n", {400, 404}),
        ("/nope", b"GET /nope HTTP/1.1\r\n\r\n", {404}),
        ("HEAD /metrics", b"HEAD /metrics HTTP/1.1\r\n\r\n", {200}),
    ]
    results = {}
    for label, data, want in cases:
        st, buf, how = raw_http(mport, data)
        results[label] = (st, how, len(buf))
        assert st in want, "%s: got status %s (%s) %r, want one of %s" % (label, st, how, buf[:120], want)
        assert how in ("closed", "reset"), "%s: connection not closed (%s)" % (label, how)
        if st is not None:
            assert b"\r\nConnection: close\r\n" in buf, "%s: %r" % (label, buf[:200])
        if label == "HEAD /metrics":
            head, _, rest = buf.partition(b"\r\n\r\n")
            assert rest == b"", "HEAD answered with a body of %d bytes" % len(rest)
    print("bad requests:", results)
    # while the silent clients hold their connections, /metrics works
    _, s = scrape(mport)
    assert "dotproxy_queries_total" in s
    r = udp_query(dp.port, "www.test.")
    assert a_addrs(r) == ["192.0.2.1"]
    # the silent clients are dropped (CLIENT_MS = 3 s) without any bytes
    for c in silent:
        c.settimeout(max(0.1, t_silent + 6 - time.monotonic()))
        try:
            data = c.recv(100)
        except socket.timeout:
            pytest.fail("a client that said nothing was still connected after 6 s")
        except ConnectionResetError:
            data = b""
        assert data == b"", "silent client got %r" % data[:100]
        c.close()
    dt = time.monotonic() - t_silent
    print("silent clients closed after %.2f s" % dt)
    # and dotproxy still serves DNS and /metrics
    r = udp_query(dp.port, "n7.test.")
    assert a_addrs(r) == ["198.51.100.7"]
    r = H.tcp(H.make_query("www.test.", "AAAA"), "127.0.0.1", dp.port)
    assert r.rcode() == dns.rcode.NOERROR
    body, s = scrape(mport)
    assert msum(s, "dotproxy_queries_total") >= 3
    assert http_get(mport, "/healthz")[0] == 200
    assert dp.proc.poll() is None


# ================================================================ 2. SIGHUP reload under load

def _config_text(upstream, ca, extra_lines=()):
    return "\n".join(["# written by test_ops.py", "upstream %s" % upstream, "ca-file %s" % ca]
                     + list(extra_lines)) + "\n"


class QueryLoad:
    """n threads, each sending unique perf.test names over UDP one after the
    other (3 s client timeout, no retries) until stop(); every result
    recorded as (t_sent, t_done, name, outcome) with outcome an A address,
    an rcode name, or 'TIMEOUT'."""

    def __init__(self, port, n=6, prefix="l"):
        self.port = port
        self.results = []
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self.t = tag()
        self.threads = [threading.Thread(target=self._run, args=(i, prefix), daemon=True) for i in range(n)]

    def _run(self, i, prefix):
        k = 0
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(3.0)
        try:
            while not self._stop.is_set():
                name = "%s%d-%d-%s.%s" % (prefix, i, k, self.t, H.PERF_ZONE)
                k += 1
                q = H.make_query(name, "A")
                t0 = time.monotonic()
                s.sendto(q.to_wire(), ("127.0.0.1", self.port))
                r, _ = H.wait_answer(s, q.id, 3.0)
                outcome = "TIMEOUT"
                if r is not None:
                    addrs = a_addrs(r)
                    outcome = addrs[0] if (r.rcode() == dns.rcode.NOERROR and len(addrs) == 1) \
                        else dns.rcode.to_text(r.rcode())
                with self.lock:
                    self.results.append((t0, time.monotonic(), name, outcome))
        finally:
            s.close()

    def start(self):
        for th in self.threads:
            th.start()
        return self

    def stop(self):
        self._stop.set()
        for th in self.threads:
            th.join(timeout=10)
        assert not any(th.is_alive() for th in self.threads), "load threads did not stop"
        return list(self.results)


def _outcomes(results):
    c = {}
    for _, _, _, o in results:
        c[o] = c.get(o, 0) + 1
    return c


SLOW_A = "192.0.2.98"


@pytest.mark.timeout_s(90)
@pytest.mark.parametrize("a_kind", ["unbound", "slow-responder"])
def test_sighup_reload_under_load(dotproxy, unbound, certs, responders, readable_dir, a_kind):
    """A -> B by SIGHUP during a query loop. a_kind=unbound: A is the session
    unbound (answers in ~1 ms). a_kind=slow-responder: A is a dot-responder
    holding answers 300 ms, so dozens of queries are waiting on A when the
    reload closes its connection; they must be re-sent to B, not lost."""
    b = responders("192.0.2.99")
    if a_kind == "unbound":
        a_arg, a_addr, nthreads = unbound.upstream_arg(), H.PERF_ADDR, 6
    else:
        a_arg, a_addr, nthreads = responders(SLOW_A, ["--delay-ms", "300"]).upstream_arg(), SLOW_A, 24
    ca = H.copy_ca(certs, readable_dir)
    conf = readable_dir / "dotproxy.conf"
    H.write_file(conf, _config_text(a_arg, ca))
    mport = H.free_port()
    dp = dotproxy([], None, timeout="2s", extra=["--config", str(conf), "--metrics", "127.0.0.1:%d" % mport])
    r = udp_query(dp.port, "pre-%s.perf.test." % tag())
    assert a_addrs(r) == [a_addr], "upstream A (%s) not in use: %s" % (a_kind, r)

    load = QueryLoad(dp.port, n=nthreads).start()
    time.sleep(1.0)
    H.write_file(conf, _config_text(b.upstream_arg(), ca, ["# now upstream B: dot-responder"]))
    n_reloaded = sum(1 for l in dp.log_lines() if 'msg="reloaded"' in l)
    t_hup = time.monotonic()
    os.kill(dp.pid, signal.SIGHUP)
    ok = H.wait_for(lambda: sum(1 for l in dp.log_lines() if 'msg="reloaded"' in l) > n_reloaded, 5.0)
    t_reloaded = time.monotonic()
    time.sleep(1.5)
    results = load.stop()
    assert ok, "no msg=\"reloaded\" within 5 s of SIGHUP:\n%s" % dp.tail()
    before = [x for x in results if x[1] < t_hup]
    around = [x for x in results if x[1] >= t_hup and x[0] < t_reloaded]
    after = [x for x in results if x[0] >= t_reloaded + 0.1]
    oc = _outcomes(results)
    print("reload under load: %d queries: %s; before SIGHUP %s, around %s, after %s"
          % (len(results), oc, _outcomes(before), _outcomes(around), _outcomes(after)))
    lost = oc.get("TIMEOUT", 0)
    servfail = oc.get("SERVFAIL", 0)
    assert len(results) > 300, "too little load to mean anything: %d queries" % len(results)
    assert lost == 0, "%d of %d queries unanswered across the reload: %s" % (lost, len(results), oc)
    assert servfail == 0, "%d SERVFAIL across the reload: %s" % (servfail, oc)
    assert set(oc) <= {a_addr, "192.0.2.99"}, oc
    assert _outcomes(before) == {a_addr: len(before)}, _outcomes(before)
    straddling = [x for x in results if x[0] < t_hup <= x[1]]
    print("queries in flight at the SIGHUP: %d, answered: %s" % (len(straddling), _outcomes(straddling)))
    if a_kind == "slow-responder":
        assert len(straddling) >= 10, "too few queries waiting on the slow A at the reload: %d" % len(straddling)
    assert after and _outcomes(after) == {"192.0.2.99": len(after)}, \
        "queries sent after the reload not all answered by B: %s" % _outcomes(after)

    # afterwards: B is used, and /metrics says so by upstream label
    for i in range(10):
        r = udp_query(dp.port, "post%d-%s.perf.test." % (i, tag()))
        assert a_addrs(r) == ["192.0.2.99"], r
    _, s = scrape(mport)
    ups = {dict(k).get("upstream") for k in s.get("dotproxy_upstream_answers_total", {})}
    assert ups == {b.upstream_arg()}, "upstream labels after reload: %s" % ups
    assert msum(s, "dotproxy_upstream_answers_total", upstream=b.upstream_arg()) >= 10
    assert dp.wait_log(lambda d: d.get("msg") == "reloaded" and d.get("upstreams") == 1)

    # an invalid file: rejected with FILE:LINE:, the running config (B) kept
    H.write_file(conf, _config_text(unbound.upstream_arg(), ca, ["threads 1", "no-such-setting 42"]))
    bad_line = 5  # comment, upstream, ca-file, threads, no-such-setting
    assert conf.read_text().splitlines()[bad_line - 1].startswith("no-such-setting")
    n_rej = sum(1 for l in dp.log_lines() if "reload rejected" in l)
    os.kill(dp.pid, signal.SIGHUP)
    ok = H.wait_for(lambda: sum(1 for l in dp.log_lines() if "reload rejected" in l) > n_rej, 5.0)
    assert ok, "no 'reload rejected' log line within 5 s:\n%s" % dp.tail()
    line = [l for l in dp.log_lines() if "reload rejected" in l][-1]
    print("rejected:", line)
    assert "%s:%d:" % (conf, bad_line) in line, line
    assert "no-such-setting" in line, line
    for i in range(10):
        r = udp_query(dp.port, "kept%d-%s.perf.test." % (i, tag()))
        assert a_addrs(r) == ["192.0.2.99"], "after a rejected reload: %s" % r
    assert dp.proc.poll() is None

    if os.geteuid() == 0:
        # the reload reads the file as nobody: a 0700 root directory hides it
        H.write_file(conf, _config_text(unbound.upstream_arg(), ca))
        os.chmod(readable_dir, 0o700)
        try:
            n_rej = sum(1 for l in dp.log_lines() if "reload rejected" in l)
            os.kill(dp.pid, signal.SIGHUP)
            ok = H.wait_for(lambda: sum(1 for l in dp.log_lines() if "reload rejected" in l) > n_rej, 5.0)
        finally:
            os.chmod(readable_dir, 0o755)
        assert ok, "reload of a file nobody cannot read was not rejected:\n%s" % dp.tail()
        line = [l for l in dp.log_lines() if "reload rejected" in l][-1]
        assert str(conf) in line and "Permission denied" in line, line
        r = udp_query(dp.port, "perm-%s.perf.test." % tag())
        assert a_addrs(r) == ["192.0.2.99"], r


@pytest.mark.timeout_s(60)
def test_reload_keeps_restart_settings(dotproxy, unbound, certs, readable_dir):
    """A SIGHUP whose file changes settings read only at start (threads,
    max-inflight): the running values stay, one warning names exactly those
    (config.c's option table says which they are), and the daemon answers
    as before. A reload that changes only live settings warns about none."""
    ca = H.copy_ca(certs, readable_dir)
    conf = readable_dir / "restart.conf"
    H.write_file(conf, "threads 1\nmax-inflight 1000\ncache-size 8\n")
    dp = dotproxy([unbound.upstream_arg()], ca, timeout=None, extra=["--config", str(conf)])

    def sighup(text):
        H.write_file(conf, text)
        n = sum(1 for l in dp.log_lines() if 'msg="reloaded"' in l)
        os.kill(dp.pid, signal.SIGHUP)
        ok = H.wait_for(lambda: sum(1 for l in dp.log_lines() if 'msg="reloaded"' in l) > n, 5.0)
        assert ok, "no msg=\"reloaded\" within 5 s of SIGHUP:\n%s" % dp.tail()
        return [H.parse_logline(l) for l in dp.log_lines() if "need a restart" in l]

    warned = sighup("threads 2\nmax-inflight 2000\ncache-size 8\ntimeout 1500ms\n")
    assert len(warned) == 1 and warned[0].get("settings") == "threads,max-inflight", warned
    assert warned[0].get("level") == "warn", warned
    started = [H.parse_logline(l) for l in dp.log_lines() if 'msg="started"' in l]
    assert started[0].get("shards") == 1, started
    r = udp_query(dp.port, "www.test.")
    assert a_addrs(r) == ["192.0.2.1"], r
    # the same start-only values, a new live one: no further warning
    warned = sighup("threads 1\nmax-inflight 1000\ncache-size 8\ntimeout 1s\n")
    assert len(warned) == 1, warned
    assert dp.proc.poll() is None


# ================================================================ 3. SIGTERM drain under load

class DrainLoad:
    """UDP: one socket, a query every ~2 ms; TCP: one connection with a
    query every ~5 ms, pipelined (never waiting for answers). Every send is
    timestamped after it returned; reader threads collect the answers."""

    def __init__(self, port, udp=True, tcp=True):
        self.port = port
        self.t = tag()
        self._stop = threading.Event()
        self._rstop = threading.Event()
        self.udp_sent, self.tcp_sent = {}, {}     # id -> (t after the send returned, name)
        self.udp_ans, self.tcp_ans = {}, {}       # id -> (outcome, t received)
        self.tcp_err = None
        self.threads = []
        self.udp = self.tcp = None
        if udp:
            self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            self.threads += [self._udp_send, self._udp_recv]
        if tcp:
            self.tcp = socket.create_connection(("127.0.0.1", port), timeout=5)
            self.threads += [self._tcp_send, self._tcp_recv]
        self.threads = [threading.Thread(target=f, daemon=True) for f in self.threads]

    @staticmethod
    def _outcome(r):
        addrs = a_addrs(r)
        return addrs[0] if (r.rcode() == dns.rcode.NOERROR and len(addrs) == 1) else dns.rcode.to_text(r.rcode())

    def _udp_send(self):
        i = 0
        while not self._stop.is_set() and i < 65536:
            name = "du%d-%s.%s" % (i, self.t, H.PERF_ZONE)
            try:
                self.udp.sendto(H.make_query(name, "A", qid=i).to_wire(), ("127.0.0.1", self.port))
            except OSError:
                break
            self.udp_sent[i] = (time.monotonic(), name)
            i += 1
            time.sleep(0.002)

    def _udp_recv(self):
        self.udp.settimeout(0.1)
        while not self._rstop.is_set():
            try:
                data = self.udp.recv(65535)
            except socket.timeout:
                continue
            except OSError:
                break
            r = dns.message.from_wire(data)
            self.udp_ans[r.id] = (self._outcome(r), time.monotonic())

    def _tcp_send(self):
        i = 0
        while not self._stop.is_set() and i < 65536:
            name = "dt%d-%s.%s" % (i, self.t, H.PERF_ZONE)
            w = H.make_query(name, "A", qid=i).to_wire()
            try:
                self.tcp.sendall(struct.pack("!H", len(w)) + w)
            except OSError as e:
                self.tcp_err = "send: %s" % e
                break
            self.tcp_sent[i] = (time.monotonic(), name)
            i += 1
            time.sleep(0.005)

    def _tcp_recv(self):
        self.tcp.settimeout(0.1)
        buf = b""
        while not self._rstop.is_set():
            try:
                chunk = self.tcp.recv(65536)
            except socket.timeout:
                continue
            except OSError as e:
                self.tcp_err = "recv: %s" % e
                break
            if not chunk:
                self.tcp_err = self.tcp_err or "closed by dotproxy"
                break
            buf += chunk
            while len(buf) >= 2:
                (n,) = struct.unpack("!H", buf[:2])
                if len(buf) < 2 + n:
                    break
                r = dns.message.from_wire(buf[2:2 + n])
                buf = buf[2 + n:]
                self.tcp_ans[r.id] = (self._outcome(r), time.monotonic())

    def start(self):
        for th in self.threads:
            th.start()
        return self

    def stop(self):
        self._stop.set()
        self._rstop.set()
        for th in self.threads:
            th.join(timeout=5)
        for so in (self.udp, self.tcp):
            if so is not None:
                so.close()


DRAIN_ANSWER = "192.0.2.77"


def _sigterm_under_load(dp, load, drain_s):
    """Run the load 1.2 s, SIGTERM, keep sending 0.3 s; wait for the exit.
    Returns (exit status, seconds from SIGTERM to exit, t_term)."""
    load.start()
    try:
        time.sleep(1.2)
        t_term = time.monotonic()
        os.kill(dp.pid, signal.SIGTERM)
        dp.expect_exited = True
        time.sleep(0.3)  # load continues after the SIGTERM
        load._stop.set()
        try:
            rc = dp.proc.wait(timeout=drain_s + 3)
        except subprocess.TimeoutExpired:
            pytest.fail("dotproxy still running %.1f s after SIGTERM (drain timeout %s s):\n%s"
                        % (time.monotonic() - t_term, drain_s, dp.tail()), pytrace=False)
        t_exit = time.monotonic()
        time.sleep(0.3)  # let the readers take what is still in the sockets
    finally:
        load.stop()
    return rc, t_exit - t_term, t_term


def _drain_account(kind, sent, ans, t_term):
    """Queries sent before the SIGTERM: unanswered ids, wrong answers, and
    how many of them were in flight (sent in the last 300 ms before it)."""
    pre = {i: v for i, v in sent.items() if v[0] < t_term}
    post = {i: v for i, v in sent.items() if v[0] >= t_term}
    missing = sorted(i for i in pre if i not in ans)
    wrong = {i: ans[i][0] for i in pre if i in ans and ans[i][0] != DRAIN_ANSWER}
    inflight = sum(1 for i in pre if pre[i][0] > t_term - 0.3)
    answered_late = sum(1 for i in pre if i in ans and ans[i][1] > t_term)
    line = ("%s: %d sent before SIGTERM, ~%d of them in flight at it, %d answered after it, %d unanswered, "
            "%d wrong; %d sent after SIGTERM, %d of those answered"
            % (kind, len(pre), inflight, answered_late, len(missing), len(wrong), len(post),
               sum(1 for i in post if i in ans)))
    print(line)
    return pre, missing, wrong, inflight, line


def _check_drain_exit(dp, rc, exit_s, drain_s):
    assert rc == 0, "exit status %s after SIGTERM:\n%s" % (rc, dp.tail())
    assert exit_s <= drain_s + 1.0, "exit %.2f s after SIGTERM, drain timeout %s s" % (exit_s, drain_s)
    logs = [H.parse_logline(l) for l in dp.log_lines()]
    msgs = [d.get("msg") for d in logs]
    for m in ("stopping", "draining", "drained", "stopped"):
        assert m in msgs, "no msg=%r in the log:\n%s" % (m, dp.tail())
    return logs


@pytest.mark.timeout_s(60)
def test_sigterm_drains_udp_in_flight(dotproxy, certs, responders):
    """UDP queries arriving continuously, upstream answers held back 300 ms:
    every query sent before the SIGTERM is answered, exit 0 well within
    --drain-timeout 3s."""
    slow = responders(DRAIN_ANSWER, ["--delay-ms", "300"])
    dp = dotproxy([slow.upstream_arg()], certs["ca"], timeout="5s", extra=["--drain-timeout", "3s"])
    load = DrainLoad(dp.port, udp=True, tcp=False)
    rc, exit_s, t_term = _sigterm_under_load(dp, load, 3)
    pre, missing, wrong, inflight, _ = _drain_account("UDP", load.udp_sent, load.udp_ans, t_term)
    print("exit status %s %.2f s after SIGTERM" % (rc, exit_s))
    logs = _check_drain_exit(dp, rc, exit_s, 3)
    assert len(pre) > 200 and inflight > 50, "too little load: %d sent, ~%d in flight" % (len(pre), inflight)
    assert not missing, "UDP queries sent before SIGTERM never answered: %d of %d, ids %s" % (
        len(missing), len(pre), missing[:20])
    assert not wrong, wrong
    drained = [d for d in logs if d.get("msg") == "drained"]
    assert all(d.get("unanswered") == 0 for d in drained), drained


class TcpDrainLoss(AssertionError):
    pass


@pytest.mark.timeout_s(60)
# Regression test (was a known bug, now fixed): dotproxy bug: the SIGTERM drain closes client TCP connections. start_drain() -> dp_tcp_stop_reading()  cancels each connection's multishot recv; the -ECANCELED completion reaches dp_tcp_on_recv(), which  treats any res < 0 (other than -ENOBUFS) as an error and calls dp_tcp_close(). The answers of th
def test_sigterm_drains_tcp_in_flight(dotproxy, certs, responders):
    """Same as the UDP case over one TCP connection with pipelined queries
    (plus UDP alongside): every query sent before the SIGTERM is answered."""
    slow = responders(DRAIN_ANSWER, ["--delay-ms", "300"])
    dp = dotproxy([slow.upstream_arg()], certs["ca"], timeout="5s", extra=["--drain-timeout", "3s"])
    load = DrainLoad(dp.port, udp=True, tcp=True)
    rc, exit_s, t_term = _sigterm_under_load(dp, load, 3)
    upre, umissing, uwrong, _, _ = _drain_account("UDP", load.udp_sent, load.udp_ans, t_term)
    tpre, tmissing, twrong, tin, tline = _drain_account("TCP", load.tcp_sent, load.tcp_ans, t_term)
    print("exit status %s %.2f s after SIGTERM; TCP client: %s" % (rc, exit_s, load.tcp_err))
    _check_drain_exit(dp, rc, exit_s, 3)
    assert len(tpre) > 100 and tin > 20, "too little TCP load: %d sent, ~%d in flight" % (len(tpre), tin)
    assert not umissing and not uwrong and not twrong, (umissing[:20], uwrong, twrong)
    if tmissing:
        stats = [l for l in dp.log_lines() if 'msg="stats"' in l]
        dropped = H.parse_logline(stats[-1]).get("tcp_answers_dropped") if stats else None
        raise TcpDrainLoss("TCP queries sent before SIGTERM never answered: %d of %d (%s); client saw: %s; "
                           "dotproxy tcp_answers_dropped=%s" % (len(tmissing), len(tpre), tline, load.tcp_err,
                                                                 dropped))


@pytest.mark.timeout_s(60)
def test_sigterm_drain_is_bounded(dotproxy, certs, responders):
    """An upstream that never answers: the drain gives up at --drain-timeout,
    the queries still waiting get SERVFAIL, and the exit is clean (0)."""
    mute = responders("192.0.2.78", ["--drop-pct", "100"])
    dp = dotproxy([mute.upstream_arg()], certs["ca"], timeout="20s", extra=["--drain-timeout", "2s"], wait="log")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        t = tag()
        for i in range(20):
            s.sendto(H.make_query("mute%d-%s.perf.test." % (i, t), "A", qid=i).to_wire(), ("127.0.0.1", dp.port))
        time.sleep(0.3)
        t_term = time.monotonic()
        os.kill(dp.pid, signal.SIGTERM)
        dp.expect_exited = True
        try:
            rc = dp.proc.wait(timeout=2 + 4)
        except subprocess.TimeoutExpired:
            pytest.fail("dotproxy still running 6 s after SIGTERM with --drain-timeout 2s", pytrace=False)
        exit_s = time.monotonic() - t_term
        s.settimeout(0.3)
        got = {}
        try:
            while True:
                r = dns.message.from_wire(s.recv(65535))
                got[r.id] = dns.rcode.to_text(r.rcode())
        except socket.timeout:
            pass
    finally:
        s.close()
    print("drain with a mute upstream: exit %s after %.2f s; %d of 20 clients got an answer: %s"
          % (rc, exit_s, len(got), sorted(set(got.values()))))
    assert rc == 0, dp.tail()
    assert 1.8 <= exit_s <= 2 + 1.0, "exit after %.2f s, drain timeout 2 s" % exit_s
    drained = [H.parse_logline(l) for l in dp.log_lines() if 'msg="drained"' in l]
    assert drained and sum(d.get("unanswered", 0) for d in drained) == 20, drained
    assert got == {i: "SERVFAIL" for i in range(20)}, got


# ================================================================ 4. privilege drop

def _ids(pid):
    out = {}
    for line in Path("/proc/%d/status" % pid).read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("Uid", "Gid", "Groups"):
            out[k] = v.split()
    return out


@pytest.mark.timeout_s(60)
def test_privilege_drop_to_nobody(dotproxy, unbound, certs, dotproxy_bin):
    if os.geteuid() != 0:
        pytest.skip("NOT ROOT: the privilege drop can only be tested as root (CI runs as root)")
    port = free_low_port()
    dp = dotproxy([unbound.upstream_arg()], certs["ca"], listen=[("127.0.0.1", port)])
    r = udp_query(port, "www.test.")
    assert a_addrs(r) == ["192.0.2.1"]
    r = H.tcp(H.make_query("www.test.", "A"), "127.0.0.1", port)
    assert a_addrs(r) == ["192.0.2.1"]
    ids = _ids(dp.pid)
    print("port %d; /proc/%d/status: %s" % (port, dp.pid, ids))
    assert ids["Uid"][:3] == [str(NOBODY)] * 3, ids
    assert ids["Gid"][:3] == [str(NOBODY)] * 3, ids
    assert ids["Uid"][3] == ids["Gid"][3] == str(NOBODY), ids  # filesystem ids too
    assert ids.get("Groups", []) == [], "supplementary groups kept: %s" % ids
    tasks = sorted(os.listdir("/proc/%d/task" % dp.pid))
    assert len(tasks) >= 2, tasks
    for t in tasks:
        tids = _ids(int(t))
        assert tids["Uid"][:3] == [str(NOBODY)] * 3 and tids["Gid"][:3] == [str(NOBODY)] * 3, (t, tids)
    d = dp.wait_log(lambda d: d.get("msg") == "dropped privileges")
    assert d and d.get("uid") == NOBODY and d.get("gid") == NOBODY, dp.tail()

    # --user root: refused, non-zero exit, a message
    port2 = free_low_port()
    rc, out, err = H.run_bounded([dotproxy_bin, "--listen", "127.0.0.1:%d" % port2, "--upstream",
                                unbound.upstream_arg(), "--ca-file", certs["ca"], "--user", "root"])
    print("--user root: rc=%d stderr=%r" % (rc, err))
    assert rc != 0, "started as --user root"
    assert "root" in err and "refus" in err, err
    assert "started" not in err, err
    # an unknown user: refused too
    rc, out, err = H.run_bounded([dotproxy_bin, "--listen", "127.0.0.1:%d" % port2, "--upstream",
                                unbound.upstream_arg(), "--ca-file", certs["ca"], "--user", "no-such-user-ops"])
    assert rc != 0 and "no-such-user-ops" in err, (rc, err)


# ================================================================ 5. config file

@pytest.mark.timeout_s(60)
def test_config_file(raw, unbound, certs, responders, readable_dir, dotproxy_bin):
    b = responders("192.0.2.55")
    ca = H.copy_ca(certs, readable_dir)
    port = H.free_port()
    conf = readable_dir / "ok.conf"
    # '#' comments: whole line, indented, after a value (space and tab),
    # and a '#' inside IP#NAME that is not one
    H.write_file(conf, "\n".join([
        "# dotproxy test config",
        "",
        "   # indented comment",
        "listen 127.0.0.1:%d   # the only listener" % port,
        "upstream %s # unbound, IP#NAME" % unbound.upstream_arg(),
        "threads 1\t# one shard",
        "ca-file %s" % ca,
        "timeout 3s",
        "log-level info",
        "allow-root no",
    ]) + "\n")
    p = raw.start(["--config", conf])
    r = _probe_udp("127.0.0.1", port, time.monotonic() + 10, p)
    assert r is not None, "no answer on the file's listen address:\n%s" % p.log_text()
    r = udp_query(port, "www.test.")
    assert r.rcode() == dns.rcode.NOERROR and a_addrs(r) == ["192.0.2.1"], \
        "file's upstream/ca-file not in effect: %s\n%s" % (r, p.log_text())
    logs = [H.parse_logline(l) for l in p.log_text().splitlines()]
    started = [d for d in logs if d.get("msg") == "started"]
    assert started and started[0].get("shards") == 1, "threads 1 from the file: %s" % started
    ups = [d.get("addr") for d in logs if d.get("msg") == "upstream"]
    assert ups == [unbound.upstream_arg()], ups
    lis = [d.get("addr") for d in logs if d.get("msg") == "listening"]
    assert lis == ["127.0.0.1:%d" % port], lis
    rc, _ = _stop(p)
    assert rc == 0

    # the command line's --upstream replaces the file's
    p = raw.start(["--config", conf, "--upstream", b.upstream_arg()])
    r = _probe_udp("127.0.0.1", port, time.monotonic() + 10, p)
    assert r is not None, p.log_text()
    r = udp_query(port, "cli-%s.perf.test." % tag())
    assert a_addrs(r) == ["192.0.2.55"], "answer not from the command line's upstream: %s" % r
    logs = [H.parse_logline(l) for l in p.log_text().splitlines()]
    ups = [d.get("addr") for d in logs if d.get("msg") == "upstream"]
    assert ups == [b.upstream_arg()], "the file's upstream was not replaced: %s" % ups
    rc, _ = _stop(p)
    assert rc == 0

    # bad lines: exit status 2, FILE:LINE: on stderr
    good = ["listen 127.0.0.1:%d" % H.free_port(), "upstream %s" % unbound.upstream_arg(), "ca-file %s" % ca]
    bad_cases = [
        ("unknown setting", "no-such-thing 1"),
        ("bad value", "threads banana"),
        ("missing value", "timeout"),
        ("flag with a value", "no-cache maybe"),
        ("comment glued to a value", "listen 127.0.0.1:5300#oops"),
        ("bad upstream", "upstream 127.0.0.1:853#bad name!"),
        ("config inside config", "config /etc/passwd"),
    ]
    for label, bad in bad_cases:
        f = readable_dir / "bad.conf"
        H.write_file(f, "\n".join(["# bad: " + label] + good + [bad]) + "\n")
        lineno = len(good) + 2
        rc, out, err = H.run_bounded([dotproxy_bin, "--config", f])
        print("%s: rc=%d %s" % (label, rc, err.strip()))
        assert rc == 2, "%s: exit %d, want 2; stderr %r" % (label, rc, err)
        assert "%s:%d:" % (f, lineno) in err, "%s: no %s:%d: in %r" % (label, f, lineno, err)
        assert len([l for l in err.splitlines() if l.strip()]) == 1, err
    # a file that does not exist
    rc, out, err = H.run_bounded([dotproxy_bin, "--config", readable_dir / "missing.conf"])
    assert rc == 2 and "missing.conf" in err, (rc, err)

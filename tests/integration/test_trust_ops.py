"""Trust (issue 12), the operator-facing holes: 4 (the metrics/health
endpoint can be starved and ignores any allow list), 7 (an upstream that
never reads grows the TLS write buffer without bound; capabilities kept for
the process's life) and 8 (an idle daemon shows as 100% iowait; gauges typed
as counters; the maximum write batch aggregated two ways).

Every test named test_holeN_* fails on f108c5a because of the hole itself
(none of them needs a flag that f108c5a lacks) and passes with the fix.

Upstreams: the session's unbound, or a Python TLS server here that completes
the handshake and then never reads a byte (NeverReadingUpstream).
"""

import os
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error

import dns.message
import dns.rcode
import pytest

import dphelpers as H
from conftest import _stop
from test_ops import free_low_port, scrape


# ================================================================ helpers: HTTP

def http_status(port, path="/healthz", src="127.0.0.1", timeout=2.0):
    """Status code of one GET from source address src, or a string saying
    how it failed ('closed', 'reset', 'timeout', 'refused')."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.bind((src, 0))
        s.connect(("127.0.0.1", port))
        s.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
        buf = b""
        while b"\r\n" not in buf:
            d = s.recv(4096)
            if not d:
                return "closed"
            buf += d
        m = re.match(rb"HTTP/1\.[01] (\d{3}) ", buf)
        return int(m.group(1)) if m else "garbled"
    except socket.timeout:
        return "timeout"
    except ConnectionResetError:
        return "reset"
    except ConnectionRefusedError:
        return "refused"
    finally:
        s.close()


def wait_metrics_up(port, timeout=10.0):
    ok = H.wait_for(lambda: http_status(port) == 200, timeout, interval=0.1)
    assert ok, "/healthz never answered 200 on port %d" % port


class IdleFlood:
    """Keeps n connections to 127.0.0.1:port open without sending a byte,
    closing and reopening all of them every `renew` seconds (the renewal
    keeps each one younger than any per-connection timeout)."""

    def __init__(self, port, n=40, renew=1.0):
        self.port, self.n, self.renew = port, n, renew
        self.socks = []
        self.opened = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _open_all(self):
        for _ in range(self.n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(1.0)
            try:
                s.connect(("127.0.0.1", self.port))
                self.opened += 1
            except OSError:
                pass
            self.socks.append(s)

    def _close_all(self):
        for s in self.socks:
            s.close()
        self.socks = []

    def _run(self):
        while not self._stop.is_set():
            self._close_all()
            self._open_all()
            self._stop.wait(self.renew)
        self._close_all()

    def __enter__(self):
        self._open_all()
        self.thread.start()
        time.sleep(0.3)
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join(timeout=10)


# ================================================================ hole 4

@pytest.mark.timeout_s(60)
def test_hole4_healthz_survives_idle_connection_flood(dotproxy, unbound, certs):
    """40 silent connections, all renewed every second (more than the
    endpoint's slots, each younger than any header timeout): every /healthz
    probe still gets its 200 within 2 s. On f108c5a the 32 slots stay taken
    and each probe is accepted and closed unanswered."""
    mport = H.free_port()
    dotproxy([unbound.upstream_arg()], certs["ca"], extra=["--metrics", "127.0.0.1:%d" % mport])
    wait_metrics_up(mport)
    results = []
    with IdleFlood(mport, n=40, renew=1.0) as flood:
        for _ in range(10):
            results.append(http_status(mport, timeout=2.0))
            time.sleep(0.4)
        opened = flood.opened
    assert opened >= 80, "the flood did not get its connections in (%d)" % opened
    assert results == [200] * len(results), "probes during the flood: %s" % results
    # and afterwards
    assert http_status(mport) == 200


@pytest.mark.timeout_s(60)
def test_hole4_metrics_allow_list_refuses_others(dotproxy, unbound, certs):
    """Bound on every address as the shipped ConfigMap does, with the default
    allow list (the loopback address 127.0.0.1, ::1): a connection from
    another source, here 127.0.0.2, is closed without an answer, while
    127.0.0.1 gets its 200. On f108c5a the endpoint answers anyone."""
    mport = H.free_port()
    dotproxy([unbound.upstream_arg()], certs["ca"], extra=["--metrics", "0.0.0.0:%d" % mport])
    wait_metrics_up(mport)
    for path in ("/healthz", "/metrics"):
        got = http_status(mport, path, src="127.0.0.2")
        assert got in ("closed", "reset"), "%s from 127.0.0.2 (not allowed) got %r" % (path, got)
    assert http_status(mport, "/metrics", src="127.0.0.1") == 200


@pytest.mark.timeout_s(60)
def test_metrics_allow_flag(dotproxy, unbound, certs):
    """--metrics-allow replaces the default: the listed sources get answers,
    the loopback address no longer does. (Uses the new flag, so it is not a
    test of f108c5a.)"""
    mport = H.free_port()
    dotproxy([unbound.upstream_arg()], certs["ca"],
             extra=["--metrics", "127.0.0.1:%d" % mport, "--metrics-allow", "127.0.0.2/32,127.0.0.3"])
    ok = H.wait_for(lambda: http_status(mport, src="127.0.0.2") == 200, 10.0, interval=0.1)
    assert ok, "127.0.0.2 (allowed) got no 200"
    assert http_status(mport, src="127.0.0.3") == 200
    assert http_status(mport, src="127.0.0.1") in ("closed", "reset")
    assert http_status(mport, src="127.0.0.4") in ("closed", "reset")


@pytest.mark.timeout_s(60)
def test_metrics_slow_header_is_dropped(dotproxy, unbound, certs):
    """A client that sends half a request head and stops is closed after
    the header bound (well under 3 s), answered or not."""
    mport = H.free_port()
    dotproxy([unbound.upstream_arg()], certs["ca"], extra=["--metrics", "127.0.0.1:%d" % mport])
    wait_metrics_up(mport)
    s = socket.create_connection(("127.0.0.1", mport), timeout=5.0)
    try:
        s.sendall(b"GET /healthz HTTP/1.1\r\n")
        t0 = time.monotonic()
        try:
            while s.recv(4096):
                pass
        except (ConnectionResetError, socket.timeout):
            pass
        took = time.monotonic() - t0
    finally:
        s.close()
    assert took < 3.0, "a silent half request held its slot %.1f s" % took


# ================================================================ hole 8b

# dotproxy's values that are not counters: what is in flight or open now, or
# the highest so far (stats.h DP_STATS_GAUGES and DP_STATS_PEAKS)
GAUGES = ("tcp_open", "queries_inflight", "cache_entries", "cache_bytes", "max_write_batch")


def _types(text):
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))


def _family(name, types):
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name[: -len(suffix)] in types:
            return name[: -len(suffix)]
    return name


def _gauge_values(text):
    """{gauge: [(family, value)...]}: every sample that carries one of
    GAUGES, as its own name (dotproxy_<gauge>) or as a label value."""
    out = {g: [] for g in GAUGES}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$", line)
        if not m:
            continue
        name, labels, val = m.group(1), m.group(2) or "", float(m.group(3))
        for g in GAUGES:
            if name == "dotproxy_" + g or re.search(r'="%s"' % g, labels):
                out[g].append((name, val))
    return out


def _udp_spread(port, n, prefix):
    """n distinct names, each from its own socket (its own source port, so
    SO_REUSEPORT spreads them over the shards). Returns the answers."""
    socks, got = [], []
    try:
        for i in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(5.0)
            q = H.make_query("%s%d.perf.test." % (prefix, i), "A")
            s.sendto(q.to_wire(), ("127.0.0.1", port))
            socks.append(s)
        for s in socks:
            try:
                got.append(s.recv(65535))
            except socket.timeout:
                pass
    finally:
        for s in socks:
            s.close()
    return got


@pytest.mark.timeout_s(60)
def test_hole8_gauges_typed_as_gauges(dotproxy, unbound, certs):
    """Every value that can go down (in flight, open TCP, cache entries and
    bytes) or is a peak (max write batch) is exported as a gauge, never
    inside a counter family. On f108c5a they are dotproxy_events_total
    series, typed counter."""
    mport = H.free_port()
    dp = dotproxy([unbound.upstream_arg()], certs["ca"], threads=2,
                  extra=["--metrics", "127.0.0.1:%d" % mport])
    wait_metrics_up(mport)
    assert len(_udp_spread(dp.port, 32, "gauge")) > 0
    time.sleep(0.3)  # one publishing tick
    body, _ = scrape(mport)
    types = _types(body)
    found = _gauge_values(body)
    for g in GAUGES:
        assert found[g], "%s is not exported at all" % g
        for name, _ in found[g]:
            fam = _family(name, types)
            assert types.get(fam) == "gauge", "%s is exported in %s, typed %r, not gauge" % (g, fam, types.get(fam))


@pytest.mark.timeout_s(60)
def test_hole8_max_batch_aggregated_the_same_in_both_readers(dotproxy, unbound, certs):
    """Two shards, both with a write batch behind them: /metrics and the
    SIGUSR1 line report the same max_write_batch (the highest of the shards).
    On f108c5a /metrics sums it over shards while the log line takes the
    maximum."""
    mport = H.free_port()
    dp = dotproxy([unbound.upstream_arg()], certs["ca"], threads=2,
                  extra=["--metrics", "127.0.0.1:%d" % mport, "--no-cache"])
    wait_metrics_up(mport)
    for rnd in range(3):
        assert len(_udp_spread(dp.port, 64, "batch%d-" % rnd)) >= 32
    time.sleep(0.3)

    def from_metrics():
        found = _gauge_values(scrape(mport)[0])["max_write_batch"]
        assert len(found) == 1, "max_write_batch exported %d times: %s" % (len(found), found)
        return int(found[0][1])

    m1 = from_metrics()
    log = int(dp.stats()["max_write_batch"])
    m2 = from_metrics()
    assert log >= 1, "no write batch recorded"
    assert m1 == m2 == log, "max_write_batch: /metrics %d (then %d), SIGUSR1 line %d" % (m1, m2, log)


# ================================================================ hole 8a

def _kernel_at_least(major, minor):
    m = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return m and (int(m.group(1)), int(m.group(2))) >= (major, minor)


CGROUP2 = "/sys/fs/cgroup/unified" if os.path.isdir("/sys/fs/cgroup/unified") else "/sys/fs/cgroup"


def _own_cgroup():
    """A fresh cgroup v2 directory (no controller needed: pressure is kept
    for every cgroup), or None when cgroup v2 or PSI is not there."""
    if not os.path.exists(os.path.join(CGROUP2, "cgroup.procs")):
        return None
    path = os.path.join(CGROUP2, "dp-trust-iowait-%d" % os.getpid())
    try:
        os.mkdir(path)
    except OSError:
        return None
    if not os.path.exists(os.path.join(path, "io.pressure")):
        os.rmdir(path)
        return None
    return path


def _io_some_us(cg):
    with open(os.path.join(cg, "io.pressure")) as f:
        return int(re.search(r"^some .*total=(\d+)", f.read(), re.M).group(1))


@pytest.mark.timeout_s(90)
def test_hole8_idle_does_not_count_as_iowait(dotproxy, unbound, certs):
    """An idle daemon with 2 shards must not be waiting for I/O in the
    kernel's eyes. Measured on the daemon alone (other processes on a shared
    machine, older dotproxys among them, must not count): the daemon runs in
    a cgroup of its own, whose io.pressure "some" total grows exactly while
    one of its tasks sleeps as iowait, which is also what makes /proc/stat
    count idle CPU time as iowait. Over 3 s idle it must grow by under 10%
    of the time; on f108c5a (io_uring_enter without IORING_ENTER_NO_IOWAIT)
    it grows by about 100%."""
    if not _kernel_at_least(6, 15):
        pytest.skip("KERNEL TOO OLD: %s has no IORING_FEAT_NO_IOWAIT (6.15+); nothing to opt out of"
                    % os.uname().release)
    cg = _own_cgroup()
    if cg is None:
        pytest.skip("NO CGROUP V2 WITH PSI: cannot measure the daemon's own iowait (needs root, "
                    "a cgroup2 mount and CONFIG_PSI)")
    dp = None
    try:
        dp = dotproxy([unbound.upstream_arg()], certs["ca"], threads=2)
        with open(os.path.join(cg, "cgroup.procs"), "w") as f:
            f.write("%d\n" % dp.pid)
        time.sleep(1.0)  # start-up done: the shards sleep in io_uring_enter
        u0, t0 = _io_some_us(cg), time.monotonic()
        time.sleep(3.0)
        u1, t1 = _io_some_us(cg), time.monotonic()
        share = (u1 - u0) / ((t1 - t0) * 1e6)
        print("the idle daemon's io pressure: %.3f of the time (%d us over %.2f s)" % (share, u1 - u0, t1 - t0))
        assert dp.proc.poll() is None
        assert share < 0.10, "an idle dotproxy sleeps as iowait %.0f%% of the time" % (share * 100)
    finally:
        if dp is not None and dp.proc.poll() is None:
            with open(os.path.join(CGROUP2, "cgroup.procs"), "w") as f:  # back where it came from
                f.write("%d\n" % dp.pid)
        for _ in range(50):
            try:
                os.rmdir(cg)
                break
            except OSError:  # still populated while the daemon exits
                time.sleep(0.1)


# ================================================================ hole 7b

CAP_KEYS = ("CapInh", "CapPrm", "CapEff", "CapAmb")


def _caps_of_every_thread(pid):
    """{tid: {CapInh/CapPrm/CapEff/CapAmb/CapBnd: int}} of every thread."""
    out = {}
    for tid in os.listdir("/proc/%d/task" % pid):
        with open("/proc/%d/task/%s/status" % (pid, tid)) as f:
            text = f.read()
        out[tid] = {k: int(re.search(r"^%s:\s+([0-9a-f]+)" % k, text, re.M).group(1), 16)
                    for k in CAP_KEYS + ("CapBnd",)}
    return out


def _assert_no_caps(pid, what):
    caps = _caps_of_every_thread(pid)
    assert len(caps) >= 2, "expected the control thread and a shard: %s" % caps
    kept = {tid: {k: "%x" % v for k, v in c.items() if k in CAP_KEYS and v}
            for tid, c in caps.items()}
    kept = {t: c for t, c in kept.items() if c}
    assert not kept, "%s: capabilities kept after binding: %s" % (what, kept)
    return caps


@pytest.fixture
def world_readable_ca(certs):
    d = tempfile.mkdtemp(prefix="dp-trust-ops-", dir="/tmp")
    os.chmod(d, 0o755)
    path = os.path.join(d, "ca.pem")
    shutil.copyfile(certs["ca"], path)
    os.chmod(path, 0o644)
    try:
        yield path
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.timeout_s(60)
def test_hole7_capabilities_dropped_after_bind(dotproxy, unbound, world_readable_ca, tmp_path):
    """Started as the systemd unit starts it (nobody, CAP_NET_BIND_SERVICE in
    the ambient set, no_new_privs) on a port below 1024, and as root with
    --allow-root: once bound and answering, no thread holds a capability in
    its effective, permitted, inheritable or ambient set (root's bounding
    set is emptied too). On f108c5a CAP_NET_BIND_SERVICE (resp. every
    capability) stays for the process's life."""
    if os.geteuid() != 0:
        pytest.skip("NOT ROOT: starting the daemon with a granted capability needs root (CI runs as root)")
    setpriv = shutil.which("setpriv")
    if not setpriv:
        pytest.skip("REQUIRED TOOL MISSING: setpriv (util-linux)")

    # 1. the systemd unit's way
    port = free_low_port()
    args = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups",
            "--inh-caps=-all,+net_bind_service", "--ambient-caps=-all,+net_bind_service",
            "--bounding-set=-all,+net_bind_service", "--no-new-privs", "--",
            str(H.DOTPROXY), "--listen", "127.0.0.1:%d" % port, "--upstream", unbound.upstream_arg(),
            "--ca-file", world_readable_ca, "--threads", "2"]
    errpath = tmp_path / "unit-way.stderr"
    with open(errpath, "wb") as errf:
        p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=errf, stderr=errf, start_new_session=True)
    try:
        r = None
        deadline = time.monotonic() + 15
        while r is None and time.monotonic() < deadline and p.poll() is None:
            try:
                r = H.udp(H.make_query("www.test.", "A"), "127.0.0.1", port, timeout=0.5)
            except Exception:
                r = None
        assert r is not None and r.rcode() == dns.rcode.NOERROR, \
            "no answer on port %d (rc=%s):\n%s" % (port, p.poll(), errpath.read_text())
        caps = _assert_no_caps(p.pid, "nobody with ambient CAP_NET_BIND_SERVICE")
        print("unit way, port %d: %s" % (port, caps))
    finally:
        _stop(p, grace=10)
    assert p.returncode == 0, "exit %s:\n%s" % (p.returncode, errpath.read_text())

    # 2. root, told to stay root
    dp = dotproxy([unbound.upstream_arg()], world_readable_ca, listen=[("127.0.0.1", free_low_port())],
                  threads=2, extra=["--allow-root"])
    r = H.udp(H.make_query("www.test.", "A"), "127.0.0.1", dp.port)
    assert r.rcode() == dns.rcode.NOERROR
    caps = _assert_no_caps(dp.pid, "root with --allow-root")
    assert all(c["CapBnd"] == 0 for c in caps.values()), "root's bounding set kept: %s" % caps


# ================================================================ hole 7a

class NeverReadingUpstream(H.LoopbackServer):
    """A DoT server on 127.0.0.1 that completes the TLS handshake and then
    never reads another byte (a small receive buffer, so that the backlog
    stays with the client). Threads; stop() closes everything."""

    def __init__(self, certs):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(certs["server"]), str(certs["server_key"]))
        self.handshakes = 0
        super().__init__(backlog=64, rcvbuf=4096, timeout=0.2)

    def _run(self):
        while not self._stop.is_set():
            try:
                c, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            c.settimeout(3.0)
            try:
                t = self.ctx.wrap_socket(c, server_side=True)
                self.handshakes += 1
                self.conns.append(t)  # held open, never read
            except (ssl.SSLError, OSError):
                c.close()

    def upstream_arg(self):
        return "127.0.0.1:%d#%s" % (self.port, H.UPSTREAM_NAME)


def _flood_template():
    """A query of about 1,200 octets: a 250-octet name whose first label
    (x00000000) is rewritten per query, and an EDNS option of 900 octets
    (an unassigned code, which f108c5a forwards as it is)."""
    import dns.edns
    name = ".".join(["x00000000"] + ["a" * 60] * 3 + ["perf", "test"]) + "."
    q = dns.message.make_query(name, "A", use_edns=0, payload=1232,
                               options=[dns.edns.GenericOption(65001, b"\x5a" * 900)])
    wire = bytearray(q.to_wire())
    at = wire.index(b"x00000000")
    return wire, at


@pytest.mark.timeout_s(150)
def test_hole7_upstream_write_buffer_capped(dotproxy, certs):
    """The only upstream completes the handshake and never reads. A flood of
    50,000 distinct queries of about 1,200 octets (a 30 s query timeout, room
    for them all in the in-flight table) must not pile up in the
    connection's TLS write buffer: the daemon's RSS grows by less than 48 MB
    (on f108c5a, which frames and encrypts every query into an unbounded
    buffer, by over 100 MB), the queries that do not fit are answered
    SERVFAIL, and a client asking after the flood gets SERVFAIL, not a hang."""
    up = NeverReadingUpstream(certs)
    try:
        dp = dotproxy([up.upstream_arg()], certs["ca"], timeout="30s", threads=1,
                      extra=["--max-inflight", "100000", "--hedge-after", "off", "--no-cache"],
                      wait="log")
        time.sleep(0.5)
        rss0 = H.rss_kb(dp.pid)
        wire, at = _flood_template()
        n, sent, peak = 50000, 0, rss0
        socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(8)]
        try:
            for s in socks:
                s.setblocking(False)
            t0 = time.monotonic()
            for i in range(n):
                wire[0:2] = (i & 0xFFFF).to_bytes(2, "big")
                wire[at + 1:at + 9] = b"%08d" % i
                for _ in range(200):
                    try:
                        socks[i % len(socks)].sendto(wire, ("127.0.0.1", dp.port))
                        sent += 1
                        break
                    except BlockingIOError:
                        time.sleep(0.0005)
                if i % 500 == 0:
                    time.sleep(0.02)  # a pace the daemon's socket buffer keeps up with
                    peak = max(peak, H.rss_kb(dp.pid))
                    for s in socks:  # drop the SERVFAILs so nothing blocks
                        try:
                            while s.recv(65535):
                                pass
                        except BlockingIOError:
                            pass
                if time.monotonic() - t0 > 60:
                    break
            flood_s = time.monotonic() - t0
        finally:
            for s in socks:
                s.close()
        time.sleep(1.0)
        peak = max(peak, H.rss_kb(dp.pid))
        t1 = time.monotonic()
        try:
            r = H.udp(H.make_query("late.perf.test.", "A"), "127.0.0.1", dp.port, timeout=10.0)
            late = (dns.rcode.to_text(r.rcode()), time.monotonic() - t1)
        except Exception as e:  # dns.exception.Timeout
            late = ("no answer: %s" % type(e).__name__, time.monotonic() - t1)
        st = dp.stats()
        grown = peak - rss0
        print("sent %d in %.1f s; received %s; rss %d kB, peak +%d kB; late query %s; handshakes %d; "
              "wbuf_full=%s stalled=%s inflight=%s servfail=%s"
              % (sent, flood_s, st.get("udp_queries"), rss0, grown, late, up.handshakes,
                 st.get("upstream_wbuf_full"), st.get("upstream_write_stalled"), st.get("queries_inflight"),
                 st.get("servfail")))
        assert int(st["udp_queries"]) >= 40000, "the flood did not get in: %s queries" % st["udp_queries"]
        if H.sanitized(dp.pid):
            print("AddressSanitizer build: RSS bound not checked (quarantine)")
        else:
            assert grown < 48 * 1024, "RSS grew by %d kB behind an upstream that never reads" % grown
        assert int(st["servfail"]) > 0
        assert late[0] == "SERVFAIL", "late query: %s after %.1f s" % late
        # the upstream that takes no byte is failed, and the queries stuck
        # in it are answered (SERVFAIL) long before their 30 s timeout
        assert dp.wait_log(lambda d: d.get("msg") == "upstream not reading", timeout=10.0), dp.tail()
        assert H.wait_for(lambda: int(dp.stats()["queries_inflight"]) <= 1, 5.0, interval=0.5), dp.stats()
    finally:
        up.stop()

"""Fixtures for the dotproxy integration tests.

Objects owned here, all torn down even when a test fails:
- certs / other_ca: throwaway CAs made by tools/mkcert.sh in a tmp dir;
- unbound: one DoT upstream (plus a plain-DNS port for harness self-tests)
  for the whole session, serving the zone in dphelpers.ZONE_DATA;
- dotproxy: a factory starting the daemon on free ports; teardown sends
  SIGTERM and requires exit code 0 within 5 s;
- silent_upstream: a TCP server that accepts and never speaks TLS.
- readable_dir: a 0755 directory under /tmp for config files and CAs the
  daemon reads after it drops to nobody.

A missing unbound/kdig/dig/dnsperf skips (loudly); a missing dotproxy binary
fails, since the daemon is what is under test.
"""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

import dphelpers as H


def pytest_configure(config):
    config.addinivalue_line("markers", "timeout_s(n): fail the test after n seconds (SIGALRM)")


# ---------------------------------------------------------------- per-test time bound

class BoundExceeded(Exception):
    pass


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    m = item.get_closest_marker("timeout_s")
    secs = int(m.args[0]) if m else 120

    def on_alarm(signum, frame):
        raise BoundExceeded("test exceeded its %d s bound" % secs)

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(secs)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


# ---------------------------------------------------------------- required programs

def require_tool(name):
    path = shutil.which(name)
    if not path:
        # STYLE.md: skip loudly when a required server/client is not installed.
        pytest.skip("REQUIRED TOOL MISSING: %s is not installed; install it (CI must not skip)" % name)
    return path


@pytest.fixture(scope="session")
def bindir(tmp_path_factory):
    return tmp_path_factory.mktemp("bin")


def _alias(bindir, target, name):
    """A symlink named name to target: the process then runs as `name`, so
    that a `pkill -x dotproxy` or `pkill -x unbound` run by someone else on a
    shared machine (scripts/install-deps.sh does the latter) does not kill
    the instances under test. The binary run is still target."""
    link = bindir / name
    if not link.exists():
        link.symlink_to(Path(target).resolve())
    return link


@pytest.fixture(scope="session")
def dotproxy_bin(bindir):
    if not (H.DOTPROXY.is_file() and os.access(H.DOTPROXY, os.X_OK)):
        pytest.fail("dotproxy binary not found at %s (build it, or set DOTPROXY_BUILD_DIR)" % H.DOTPROXY,
                    pytrace=False)
    return _alias(bindir, H.DOTPROXY, "dp-under-test")


# ---------------------------------------------------------------- certificates

def _wait_mkcert():
    wait = float(os.environ.get("DOTPROXY_MKCERT_WAIT", "60"))
    deadline = time.monotonic() + wait
    while not H.MKCERT.is_file():
        if time.monotonic() >= deadline:
            pytest.fail("%s does not exist (waited %.0f s)" % (H.MKCERT, wait), pytrace=False)
        time.sleep(2)


def _mkcert(outdir, name, ip="127.0.0.1"):
    _wait_mkcert()
    require_tool("openssl")
    outdir.mkdir(parents=True, exist_ok=True)
    r = H.run(["bash", str(H.MKCERT), str(outdir), name, ip], timeout=60)
    assert r.returncode == 0, "mkcert.sh failed (%d):\n%s%s" % (r.returncode, r.stdout, r.stderr)
    files = {"ca": outdir / "ca.pem", "ca_key": outdir / "ca.key",
             "server": outdir / "server.pem", "server_key": outdir / "server.key"}
    for k, p in files.items():
        assert p.is_file() and p.stat().st_size > 0, "mkcert.sh did not create %s" % p
    v = H.run(["openssl", "verify", "-CAfile", str(files["ca"]), str(files["server"])], timeout=20)
    assert v.returncode == 0, "mkcert.sh output does not verify: %s%s" % (v.stdout, v.stderr)
    return files


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    """CA and server certificate for upstream.test (and IP 127.0.0.1)."""
    return _mkcert(tmp_path_factory.mktemp("ca-main"), H.UPSTREAM_NAME)


@pytest.fixture(scope="session")
def other_ca(tmp_path_factory):
    """An unrelated CA: it signed nothing unbound serves."""
    return _mkcert(tmp_path_factory.mktemp("ca-other"), H.UPSTREAM_NAME)


# ---------------------------------------------------------------- processes

def _stop(proc, sig=signal.SIGTERM, grace=5.0):
    """Signal proc, wait up to grace, then SIGKILL. Returns (rc, killed)."""
    if proc.poll() is not None:
        return proc.returncode, False
    try:
        proc.send_signal(sig)
        return proc.wait(timeout=grace), False
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        return proc.returncode, True


def _tail(path, n=40):
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return "<no log>"
    return "\n".join(lines[-n:])


# ---------------------------------------------------------------- unbound DoT upstream

class Unbound:
    def __init__(self, tmpdir, certs, exe="unbound"):
        self.exe = exe
        self.dir = tmpdir
        self.certs = certs
        self.host = "127.0.0.1"
        self.tls_port = H.free_port()
        self.plain_port = H.free_port()
        self.conf = tmpdir / "unbound.conf"
        self.log = tmpdir / "unbound.log"
        self.proc = None

    def config_text(self):
        lines = [
            "server:",
            '  username: ""',
            '  chroot: ""',
            '  directory: "%s"' % self.dir,
            '  pidfile: ""',
            '  logfile: ""',
            "  use-syslog: no",
            "  verbosity: 1",
            "  num-threads: 1",
            "  so-reuseport: yes",
            "  interface: 127.0.0.1@%d" % self.tls_port,
            "  interface: 127.0.0.1@%d" % self.plain_port,
            "  tls-port: %d" % self.tls_port,
            '  tls-service-key: "%s"' % self.certs["server_key"],
            '  tls-service-pem: "%s"' % self.certs["server"],
            "  do-ip4: yes",
            "  do-ip6: no",
            "  do-udp: yes",
            "  do-tcp: yes",
            "  do-not-query-localhost: no",
            "  access-control: 127.0.0.0/8 allow",
            "  incoming-num-tcp: 1000",
            "  tcp-idle-timeout: 120000",
            "  num-queries-per-thread: 4096",
            "  outgoing-range: 8192",
            "  so-rcvbuf: 4m",
            "  so-sndbuf: 4m",
            '  module-config: "iterator"',
            "  rrset-roundrobin: no",
            "  minimal-responses: yes",
            "  ip-ratelimit: 0",
            "  ratelimit: 0",
            "  harden-referral-path: no",
            "  prefetch: no",
            '  local-zone: "test." static',
        ]
        lines += ["  local-data: '%s'" % rr for rr in H.ZONE_DATA]
        lines += [
            '  local-zone: "%s" redirect' % H.PERF_ZONE,
            "  local-data: '%s 3600 IN A %s'" % (H.PERF_ZONE, H.PERF_ADDR),
            "remote-control:",
            "  control-enable: no",
        ]
        return "\n".join(lines) + "\n"

    def start(self):
        self.conf.write_text(self.config_text())
        chk = H.run(["unbound-checkconf", str(self.conf)], timeout=20) if shutil.which("unbound-checkconf") else None
        if chk is not None:
            assert chk.returncode == 0, "unbound-checkconf: %s%s" % (chk.stdout, chk.stderr)
        self.logf = open(self.log, "ab")
        self.proc = subprocess.Popen([str(self.exe), "-d", "-c", str(self.conf)], stdin=subprocess.DEVNULL,
                                     stdout=self.logf, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 20
        last = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("unbound exited with %d:\n%s" % (self.proc.returncode, _tail(self.log)))
            r = H.run(["kdig", "@127.0.0.1", "-p", str(self.tls_port), "+tls",
                       "+tls-ca=%s" % self.certs["ca"], "+tls-hostname=%s" % H.UPSTREAM_NAME,
                       "+retry=0", "+time=1", "ready.test.", "A"], timeout=10)
            last = r.stdout + r.stderr
            if r.returncode == 0 and "status: NOERROR" in r.stdout and "192.0.2.250" in r.stdout:
                return self
            time.sleep(0.2)
        self.stop()
        raise AssertionError("unbound did not answer over TLS on port %d within 20 s; last kdig:\n%s\n"
                             "unbound log:\n%s" % (self.tls_port, last, _tail(self.log)))

    def stop(self):
        if self.proc:
            _stop(self.proc)
        if getattr(self, "logf", None):
            self.logf.close()

    def upstream_arg(self, name=H.UPSTREAM_NAME):
        return "127.0.0.1:%d#%s" % (self.tls_port, name)


@pytest.fixture(scope="session")
def unbound_session(tmp_path_factory, certs, bindir):
    exe = _alias(bindir, require_tool("unbound"), "ub-upstream")
    require_tool("kdig")
    u = Unbound(tmp_path_factory.mktemp("unbound"), certs, exe)
    u.start()
    try:
        yield u
    finally:
        u.stop()


@pytest.fixture
def unbound(unbound_session):
    """The session's unbound, checked alive around each test. If something
    outside the test killed it (e.g. a `pkill -x unbound` elsewhere on the
    machine), it is restarted on the same ports, with a warning."""
    u = unbound_session
    if u.proc.poll() is not None:
        import warnings
        msg = ("unbound upstream (pid %d) had exited with %s before this test; restarting it. Log tail:\n%s"
               % (u.proc.pid, u.proc.returncode, _tail(u.log, 8)))
        warnings.warn(msg)
        print(msg)
        u.stop()
        u.start()
    yield u
    if u.proc.poll() is not None:
        print("!!!! unbound upstream (pid %d) exited during this test with %s; log tail:\n%s"
              % (u.proc.pid, u.proc.returncode, _tail(u.log, 8)))


# ---------------------------------------------------------------- dotproxy

class DotProxy:
    """One running dotproxy. listen: list of (host, port); host/port are the
    first listen address."""

    def __init__(self, proc, args, listen, stderr_path):
        self.proc = proc
        self.args = args
        self.listen = listen
        self.host, self.port = listen[0]
        self.stderr_path = stderr_path

    @property
    def pid(self):
        return self.proc.pid

    def log_text(self):
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_lines(self):
        return self.log_text().splitlines()

    def tail(self, n=40):
        return _tail(self.stderr_path, n)

    def find_log(self, pred):
        return [H.parse_logline(l) for l in self.log_lines() if pred(H.parse_logline(l))]

    def wait_log(self, pred, timeout=5.0):
        """Wait until some log line (parsed) satisfies pred; returns it or None."""
        def probe():
            found = self.find_log(pred)
            return found[-1] if found else None
        return H.wait_for(probe, timeout)

    def _stats_lines(self):
        return [l for l in self.log_lines() if 'msg="stats"' in l]

    def stats(self, timeout=5.0):
        """SIGUSR1, then the newest msg="stats" line parsed into a dict."""
        assert self.proc.poll() is None, "dotproxy is not running (rc=%s):\n%s" % (self.proc.returncode, self.tail())
        before = len(self._stats_lines())
        os.kill(self.proc.pid, signal.SIGUSR1)
        ok = H.wait_for(lambda: len(self._stats_lines()) > before, timeout)
        assert ok, "no msg=\"stats\" line within %.0f s after SIGUSR1; stderr tail:\n%s" % (timeout, self.tail())
        return H.parse_logline(self._stats_lines()[-1])

    def stop(self, sig=signal.SIGTERM, grace=5.0):
        return _stop(self.proc, sig, grace)


def _probe_udp(host, port, deadline, proc):
    """Send ready.test/A over UDP every 300 ms until any DNS response arrives
    (SERVFAIL counts: the daemon is up). Returns the response or None."""
    import dns.message
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    try:
        q = H.make_query("ready.test.", "A")
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return None
            try:
                s.sendto(q.to_wire(), (host, port))
            except OSError:
                pass
            end = min(deadline, time.monotonic() + 0.3)
            while time.monotonic() < end:
                s.settimeout(max(0.01, end - time.monotonic()))
                try:
                    data = s.recv(65535)
                except (socket.timeout, ConnectionRefusedError, OSError):
                    continue
                try:
                    r = dns.message.from_wire(data)
                except Exception:
                    continue
                if r.id == q.id:
                    return r
        return None
    finally:
        s.close()


@pytest.fixture
def dotproxy(request, tmp_path, dotproxy_bin):
    """Factory: start(upstreams=[...], ca_file=..., listen=[(host, port)], extra=[...],
    timeout="2s", threads=None, log_level="info", wait=True) -> DotProxy.

    With wait=True, returns once the daemon answered a UDP query (bounded:
    15 s); with wait="log", once it logged msg="started" (no query sent);
    fails with its stderr otherwise. Teardown: SIGTERM, exit 0 within 5 s."""
    started = []
    counter = [0]

    def start(upstreams, ca_file, listen=None, extra=(), timeout="2s", threads=None,
              log_level="info", wait=True, ready_timeout=15.0):
        if listen is None:
            listen = [("127.0.0.1", H.free_port())]
        args = [str(dotproxy_bin)]
        for host, port in listen:
            args += ["--listen", H.fmt_addr(host, port)]
        for u in upstreams:
            args += ["--upstream", u]
        if ca_file is not None:
            args += ["--ca-file", str(ca_file)]
        if timeout is not None:
            args += ["--timeout", timeout]
        if threads is not None:
            args += ["--threads", str(threads)]
        if log_level is not None:
            args += ["--log-level", log_level]
        args += list(extra)
        counter[0] += 1
        errpath = tmp_path / ("dotproxy-%d.stderr" % counter[0])
        errf = open(errpath, "wb")
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=errf, stderr=errf,
                                start_new_session=True)
        errf.close()
        dp = DotProxy(proc, args, listen, errpath)
        started.append(dp)
        if wait == "log":
            # no query at all: wait for the start-up lines (for tests whose
            # first query must be the one that contacts the upstream)
            ok = H.wait_for(lambda: proc.poll() is not None or
                            any(d.get("msg") == "started" for d in map(H.parse_logline, dp.log_lines())),
                            ready_timeout)
            if not ok or proc.poll() is not None:
                pytest.fail("dotproxy did not log msg=\"started\" within %.0f s (rc=%s)\ncommand: %s\n"
                            "stderr:\n%s" % (ready_timeout, proc.poll(), " ".join(args), dp.tail(60)),
                            pytrace=False)
        elif wait:
            r = _probe_udp(dp.host, dp.port, time.monotonic() + ready_timeout, proc)
            if r is None:
                rc = proc.poll()
                state = ("exited with code %s" % rc) if rc is not None else "still running"
                pytest.fail("dotproxy did not answer a UDP query on %s within %.0f s (%s)\n"
                            "command: %s\nstderr:\n%s" % (H.fmt_addr(dp.host, dp.port), ready_timeout,
                                                          state, " ".join(args), dp.tail(60)),
                            pytrace=False)
        return dp

    yield start

    problems = []
    for dp in started:
        if dp.proc.poll() is not None and getattr(dp, "expect_exited", False):
            continue
        was_running = dp.proc.poll() is None
        rc, killed = dp.stop()
        if killed:
            problems.append("dotproxy pid %d did not exit within 5 s of SIGTERM (killed)" % dp.pid)
        elif not was_running and not getattr(dp, "expect_exited", False):
            why = ""
            if any(H.parse_logline(l).get("msg") == "stopping" for l in dp.log_lines()):
                why = (" after logging msg=\"stopping\": it got a SIGTERM/SIGINT this test did not send"
                       " (another process on the machine, e.g. a pkill?)")
            problems.append("dotproxy pid %d had already exited with %s before teardown%s" % (dp.pid, rc, why))
        elif rc != 0:
            problems.append("dotproxy pid %d exited with %s after SIGTERM (want 0)" % (dp.pid, rc))
    failed = any(getattr(request.node, "rep_" + w, None) is not None and getattr(request.node, "rep_" + w).failed
                 for w in ("setup", "call"))
    if failed or problems:
        for dp in started:
            print("---- dotproxy %s\n---- stderr tail (%s):\n%s" % (" ".join(dp.args), dp.stderr_path, dp.tail(60)))
    if problems:
        pytest.fail("; ".join(problems) + "\n" + "\n".join(dp.tail(20) for dp in started), pytrace=False)


# ---------------------------------------------------------------- a silent upstream

class SilentServer(H.LoopbackServer):
    """Accepts TCP connections on 127.0.0.1 and never writes a byte (reads
    and discards what arrives). Runs in a thread; stop() closes everything."""

    def __init__(self):
        self.accepted = 0
        super().__init__(backlog=128)

    def _run(self):
        import selectors
        sel = selectors.DefaultSelector()
        sel.register(self.sock, selectors.EVENT_READ)
        while not self._stop.is_set():
            for key, _ in sel.select(timeout=0.1):
                if key.fileobj is self.sock:
                    try:
                        c, _ = self.sock.accept()
                    except OSError:
                        continue
                    self.accepted += 1
                    self.conns.append(c)
                    sel.register(c, selectors.EVENT_READ)
                else:
                    try:
                        data = key.fileobj.recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        sel.unregister(key.fileobj)
                        key.fileobj.close()
        sel.close()


@pytest.fixture
def readable_dir():
    """A 0755 directory under /tmp (files in it: 0644, see H.write_file and
    H.copy_ca), readable by the daemon after it drops to nobody."""
    d = Path(tempfile.mkdtemp(prefix="dp-test-", dir="/tmp"))
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def silent_upstream():
    s = SilentServer()
    try:
        yield s
    finally:
        s.stop()

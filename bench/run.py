#!/usr/bin/python3
"""run.py - dotproxy's benchmark suite, on loopback, in one command.

    bench/run.py                 full run: dotproxy and every installed peer
    bench/run.py --smoke         dotproxy only, short, then the regression gate
    bench/run.py --help          every option

One run makes a throwaway CA, starts one DoT upstream (the synthetic
dot-responder, or unbound with --upstream unbound), measures the upstream's
own ceiling with dnsperf -m dot, then starts each system under test in turn --
dotproxy, dnsdist, unbound, stubby, knot-resolver -- forwarding to that
upstream over TLS with certificate verification against the throwaway CA, and
drives it with dnsperf through the scenarios (udp-miss, udp-hit, tcp-miss,
latency at fixed offered loads; on request zipf, and mixed, where cluster.local
names go over plain TCP to a second, plain responder and the rest over DoT). Every measured run records dnsperf's counts,
latency percentiles from dnsperf -v's per-query lines, the CPU time of the
system's processes and of the upstream, and the system's peak RSS. Results go
to a table on the terminal, a JSON file and a PNG; bench/README.md documents
all three and the regression gate (bench/compare.py).

The whole run holds an exclusive flock on /tmp/dp-bench.lock so that two
benchmarks on this machine never overlap.
"""
import argparse
import array
import fcntl
import hashlib
import itertools
import json
import math
import os
import platform
import random
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import string
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True  # no __pycache__ in bench/
import compare  # noqa: E402
import encload  # noqa: E402

import dns.message  # noqa: E402
import dns.query  # noqa: E402
import dns.rcode  # noqa: E402

SCHEMA = "dotproxy-bench/1"
UNAME = "dot-upstream.bench"  # the upstream certificate's name (SNI, checked)
ZONE = "example.com"  # every query is for a name under it
PEERS = ("dnsdist", "unbound", "stubby", "kresd")
SYSTEMS = ("dotproxy",) + PEERS
# dotproxy with other settings, measured beside the default in the same run
# when named in --systems (never by default)
VARIANTS = {"dotproxy-1shard": {"threads": 1},
            "dotproxy-nobatch": {"args": ["--batch-us", "0"]},
            # another build (--base-dotproxy): before/after a change, in one run
            "dotproxy-base": {"binary": "base_dotproxy"}}


def is_dotproxy(name):
    return name == "dotproxy" or name in VARIANTS
# scenario -> (dnsperf transport, name set)
THROUGHPUT = {"udp-miss": ("udp", "miss"), "udp-hit": ("udp", "hit"), "tcp-miss": ("tcp", "miss")}
# the mixed scenario: unique names over UDP, a share of them under CLUSTER_ZONE,
# which every system forwards over plain TCP to a second responder
MIXED = {"mixed": ("udp", "mixed")}
# encrypted clients (issue 16): clients speak DoT (dnsperf -m dot) or DoH
# over HTTP/2 (h2load) to the system under test; scenario -> (client
# protocol, name set). Each also measures latency at one fixed load, and
# after them run.py measures new TLS handshakes per CPU-second
ENCRYPTED = {"dot-in-miss": ("dot", "miss"), "dot-in-hit": ("dot", "hit"),
             "doh-in-miss": ("doh", "miss"), "doh-in-hit": ("doh", "hit")}
# peers with DoT and DoH listeners (stubby has no server side for either)
ENC_SERVERS = ("dnsdist", "unbound", "kresd")
FNAME = "dns.bench"  # the frontends' certificate name (the load generators do not check it)
SCENARIOS = tuple(THROUGHPUT) + ("latency", "zipf") + tuple(MIXED) + tuple(ENCRYPTED)
DEFAULT_SCENARIOS = tuple(THROUGHPUT) + ("latency",)
CLUSTER_ZONE = "cluster.local"
CLUSTER_SUFFIX = "default.svc." + CLUSTER_ZONE  # the mixed scenario's cluster names end so
PLAIN_ANSWER = "192.0.2.53"  # the plain responder's A record, so a probe tells who answered
DOT_ANSWER = "192.0.2.1"  # the DoT responder's (its default)
# systems that can forward one zone elsewhere (stubby cannot: one upstream list for every name)
ZONE_ROUTING = ("dnsdist", "unbound", "kresd")
HIT_NAMES = 1000
# the zipf scenario: (TTL seconds, percent of names); names carry their TTL
# ("t300-z17.example.com"), which tools/dot-responder --name-ttl answers with
ZIPF_TTLS = ((5, 10), (30, 15), (60, 15), (300, 25), (900, 10), (3600, 15), (86400, 10))
# dotproxy asks for an 8 MB UDP receive buffer; every peer gets as much, so
# that dnsperf's opening burst of -q queries is not dropped by some only
UDP_RCVBUF = 8 << 20
RCVBUF_HOW = {"dnsdist": "setUDPSocketBufferSizes (8 MB, capped at net.core.rmem_max)",
              "unbound": "so-rcvbuf: 8m",
              "stubby": "net.core.rmem_default raised to 8 MB while it starts (no option of its own)",
              "kresd": "net.core.rmem_default raised to 8 MB while it starts (no option of its own)"}
MAX_NAMES = 4_000_000
# dnsdist sizes its packet cache in entries: about this many bytes each
# (dnsdist 1.7: the cached packet and the qname on the heap, the entry
# itself, its hash-map node) turn --cache-mb into a count
DNSDIST_ENTRY_BYTES = 300
# the smoke gate's default threshold (percent); bench/README.md says why
SMOKE_THRESHOLD = 75.0
PACKAGES = {"dnsperf": "dnsperf", "dnsdist": "dnsdist", "unbound": "unbound",
            "stubby": "stubby", "kresd": "knot-resolver"}
VERSION_CMDS = {"dnsperf": (["dnsperf", "-h"], r"Version (\S+)"),
                "dnsdist": (["dnsdist", "--version"], r"dnsdist (\S+)"),
                "unbound": (["unbound", "-V"], r"Version (\S+)"),
                "stubby": (["stubby", "-V"], r"Stubby (\S+)"),
                "kresd": (["kresd", "--version"], r"version (\S+)")}
# per-run values summarised as median/min/max over the repetitions
RUN_KEYS = ("qps", "sent", "completed", "lost", "lost_pct", "errors", "lat_avg_ms", "lat_p50_ms",
            "lat_p90_ms", "lat_p99_ms", "lat_p999_ms", "lat_max_ms", "cpu_s", "cpu_us_per_query",
            "upstream_cpu_us_per_query", "cpu_ratio", "upstream_queries_per_query",
            "rss_peak_kb", "loadgen_cpu_s", "loadgen_cpus", "other_cpu_s", "other_cpus", "run_time_s",
            "machine_cpu_us_per_query",
            # zipf only
            "hit_ratio", "hit_ratio_raw", "ideal_hit_ratio", "upstream_per_distinct",
            "upstream_per_ideal", "prefetches", "hedges", "misses",
            # mixed only: upstream queries at each responder, the plain one's share
            "dot_queries", "plain_queries", "plain_share",
            # handshake measurement only
            "handshakes", "handshakes_failed", "handshake_rate", "cpu_us_per_handshake",
            "handshakes_per_cpu_s")

T0 = time.monotonic()


def say(msg):
    """A progress line on stderr, stamped with the time since start."""
    print("[%6.1fs] %s" % (time.monotonic() - T0, msg), file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


# ---- processes -------------------------------------------------------------

LIVE = []  # daemons started and not yet stopped; stopped on any exit


class Daemon:
    """One background process with its output in a log file."""

    def __init__(self, name, argv, log, cpu=None):
        self.name, self.argv, self.log = name, argv, log
        self.logf = open(log, "ab")
        pre = (lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None
        self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.logf,
                                  stderr=subprocess.STDOUT, start_new_session=True,
                                  preexec_fn=pre)
        self.pid = self.p.pid
        LIVE.append(self)

    def alive(self):
        return self.p.poll() is None

    def stop(self):
        """SIGTERM, then SIGKILL after 10 s; returns the exit status."""
        if self.alive():
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.logf.close()
        if self in LIVE:
            LIVE.remove(self)
        return self.p.returncode

    def tail(self, n=12):
        try:
            with open(self.log, "rb") as f:
                f.seek(max(0, os.path.getsize(self.log) - 8192))
                lines = f.read().decode(errors="replace").splitlines()
            return "\n".join(lines[-n:])
        except OSError:
            return ""


def stop_all():
    for d in list(LIVE):
        d.stop()


def cpu_seconds(pid):
    """CPU time (user+system, every thread, exited ones too) of a process.

    Reads the process CPU-time clock (clock_getcpuclockid(pid): the same sum
    as utime+stime in /proc/PID/stat, in nanoseconds instead of ticks), and
    falls back to /proc/PID/stat."""
    try:
        return time.clock_gettime(((~pid) << 3) | 2)  # MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)
    except OSError:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        m = re.search(r"VmRSS:\s+(\d+)", f.read())
    return int(m.group(1)) if m else 0


def reset_peak_rss(pid):
    """Reset VmHWM to the current RSS (clear_refs 5, Linux >= 4.0)."""
    try:
        with open("/proc/%d/clear_refs" % pid, "w") as f:
            f.write("5")
    except OSError:
        pass


def free_port():
    """A port free for both TCP and UDP on 127.0.0.1."""
    for _ in range(200):
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            u.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            t.close()
            u.close()
    raise BenchError("no free port")


def machine_cpu_seconds():
    """(busy, irq) CPU seconds of the whole machine so far (/proc/stat):
    busy is user+nice+system+steal, irq is irq+softirq time, which the
    kernel charges to no process (much of it is loopback packet work)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    tck = os.sysconf("SC_CLK_TCK")
    return (v[0] + v[1] + v[2] + v[7]) / tck, (v[5] + v[6]) / tck


def wait_quiet(max_s, limit=0.25):
    """Wait up to MAX_S seconds for the machine to be nearly idle (other
    work below LIMIT CPUs over 2 s); returns the last load seen."""
    deadline = time.monotonic() + max_s
    warned = False
    while True:
        b0 = machine_cpu_seconds()[0]
        time.sleep(2)
        load = (machine_cpu_seconds()[0] - b0) / 2
        if load < limit or time.monotonic() > deadline:
            return load
        if not warned:
            say("machine busy (%.1f CPUs used by other work); waiting up to %ds for it to calm down" % (load, max_s))
            warned = True


def udp_rcvbuf_errors():
    """Machine-wide count of UDP datagrams dropped for a full receive buffer."""
    with open("/proc/net/snmp") as f:
        rows = [ln.split() for ln in f if ln.startswith("Udp:")]
    return int(rows[1][rows[0].index("RcvbufErrors")])


class RmemDefault:
    """Temporarily raise net.core.rmem_default, for starting a system that
    has no option of its own for its UDP receive buffer (kresd, stubby):
    sockets created meanwhile get the larger buffer, as an operator's sysctl
    tuning would give them. Restored on exit; a no-op when not writable."""
    PATH = "/proc/sys/net/core/rmem_default"

    def __init__(self, size):
        self.size, self.old = size, None

    def __enter__(self):
        if self.size is None:
            return self
        try:
            with open(self.PATH) as f:
                self.old = f.read().strip()
            with open(self.PATH, "w") as f:
                f.write(str(self.size))
        except OSError:
            self.old = None
        return self

    def __exit__(self, *exc):
        if self.old is not None:
            with open(self.PATH, "w") as f:
                f.write(self.old)


def render_text(template, **vals):
    """bench/peers/TEMPLATE with its ${VAR}s filled in."""
    with open(os.path.join(HERE, "peers", template)) as f:
        try:
            return string.Template(f.read()).substitute(vals)
        except (KeyError, ValueError) as e:
            raise BenchError("bench/peers/%s: bad placeholder %s" % (template, e))


def render(template, out, **vals):
    """Fill bench/peers/TEMPLATE's ${VAR}s into OUT."""
    text = render_text(template, **vals)
    with open(out, "w") as f:
        f.write(text)
    return out


def cmd_output(argv):
    try:
        r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=10)
        return r.stdout.decode(errors="replace")
    except (OSError, subprocess.TimeoutExpired):
        return ""


def tree_sha256(folder):
    """sha256 over the files of folder (names and contents, in name order):
    one hash for a program kept in several files. None when it is unreadable."""
    h = hashlib.sha256()
    try:
        for name in sorted(os.listdir(folder)):
            with open(os.path.join(folder, name), "rb") as f:
                h.update(name.encode() + b"\0" + f.read() + b"\0")
    except OSError:
        return None
    return h.hexdigest()


def random_name():
    return "p%08x.%s" % (random.getrandbits(32), ZONE)


# ---- the benchmark context ---------------------------------------------------

class Bench:
    def __init__(self, args):
        self.args = args
        self.tmp = tempfile.mkdtemp(prefix="dp-bench.")
        os.chmod(self.tmp, 0o755)  # systems that drop privileges still read the CA
        self.logs = os.path.join(args.out, "logs")
        os.makedirs(self.logs, exist_ok=True)
        self.cadir = os.path.join(self.tmp, "ca")
        self.upstream = []  # Daemons
        self.uport = None
        self.plain = None  # the plain DNS-over-TCP responder (mixed scenario)
        self.pport = None
        self.zipf = None  # the ZipfStream, made once for every system

    # -- upstream ---------------------------------------------------------

    def make_ca(self):
        r = subprocess.run(["sh", os.path.join(ROOT, "tools", "mkcert.sh"), self.cadir, UNAME, "127.0.0.1"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if r.returncode != 0:
            raise BenchError("tools/mkcert.sh failed: %s" % r.stdout.decode(errors="replace"))
        self.ca = os.path.join(self.cadir, "ca.pem")
        self.cert = os.path.join(self.cadir, "server.pem")
        self.key = os.path.join(self.cadir, "server.key")
        if any(sc in ENCRYPTED for sc in self.args.scenarios):
            self.make_frontend_cert()

    def make_frontend_cert(self):
        """The certificate every system under test serves its DoT and DoH
        clients: FNAME and 127.0.0.1, from a throwaway CA of its own
        (mkcert.sh makes a CA per directory; the load generators check
        nothing, run.py's readiness probe checks it against fca)."""
        d = os.path.join(self.tmp, "front")
        r = subprocess.run(["sh", os.path.join(ROOT, "tools", "mkcert.sh"), d, FNAME, "127.0.0.1"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if r.returncode != 0:
            raise BenchError("tools/mkcert.sh failed: %s" % r.stdout.decode(errors="replace"))
        self.fca, self.fcert, self.fkey = (os.path.join(d, f) for f in ("ca.pem", "server.pem", "server.key"))
        # systems that drop privileges (dotproxy to nobody, kresd) re-read it
        os.chmod(self.fkey, 0o644)

    def start_upstream(self):
        a = self.args
        self.uport = free_port()
        if a.upstream == "responder":
            if not os.access(a.responder, os.X_OK):
                raise BenchError("%s not built (cmake --build build, or --upstream unbound)" % a.responder)
            self.upstream = [Daemon("dot-responder", [
                a.responder, "--listen", "127.0.0.1:%d" % self.uport, "--cert", self.cert,
                "--key", self.key, "--threads", str(a.upstream_threads)]
                + (["--name-ttl"] if "zipf" in a.scenarios else []),
                os.path.join(self.logs, "upstream.log"), cpu=a.pin_upstream)]
        else:
            d = os.path.join(self.tmp, "upstream-unbound")
            os.makedirs(d)
            conf = render("unbound-upstream.conf.in", os.path.join(d, "unbound.conf"), DIR=d,
                          UPORT=self.uport, KEY=self.key, CERT=self.cert, UTHREADS=a.upstream_threads)
            shutil.copy(conf, os.path.join(self.logs, "upstream-unbound.conf"))
            self.upstream = [Daemon("unbound-upstream", ["unbound", "-d", "-c", conf],
                                    os.path.join(self.logs, "upstream.log"), cpu=a.pin_upstream)]
        # ready once it answers a DoT query whose certificate verifies
        ctx = ssl.create_default_context(cafile=self.ca)
        deadline = time.monotonic() + 15
        while True:
            err = None
            try:
                q = dns.message.make_query(random_name(), "A")
                r = dns.query.tls(q, "127.0.0.1", port=self.uport, ssl_context=ctx,
                                  server_hostname=UNAME, timeout=2)
                if r.rcode() == 0 and r.answer:
                    break
                err = "rcode %s" % r.rcode()
            except Exception as e:  # noqa: BLE001 - any failure means not ready yet
                err = e
            if not self.upstream[0].alive() or time.monotonic() > deadline:
                raise BenchError("upstream did not answer over DoT (%s):\n%s" % (err, self.upstream[0].tail()))
            time.sleep(0.1)
        say("upstream %s on 127.0.0.1:%d (%d thread%s)" % (
            a.upstream, self.uport, a.upstream_threads, "s" if a.upstream_threads > 1 else ""))

    def start_plain(self):
        """The mixed scenario's internal server: tools/dot-responder with
        --listen-tcp only (plain DNS over TCP, pipelined), as many threads
        as the DoT upstream, answering PLAIN_ANSWER. Ready once it answers a
        cluster name over TCP."""
        a = self.args
        self.pport = free_port()
        self.plain = Daemon("plain-responder", [
            a.responder, "--listen-tcp", "127.0.0.1:%d" % self.pport, "--threads", str(a.upstream_threads),
            "--answer-ip", PLAIN_ANSWER], os.path.join(self.logs, "plain-upstream.log"))
        self.upstream.append(self.plain)
        deadline = time.monotonic() + 15
        while True:
            err = None
            try:
                r = dns.query.tcp(dns.message.make_query("ready." + CLUSTER_SUFFIX, "A"), "127.0.0.1",
                                  port=self.pport, timeout=2)
                if answer_ips(r) == [PLAIN_ANSWER]:
                    break
                err = "answer %s" % r.answer
            except Exception as e:  # noqa: BLE001 - any failure means not ready yet
                err = e
            if not self.plain.alive() or time.monotonic() > deadline:
                raise BenchError("plain responder did not answer over TCP (%s):\n%s" % (err, self.plain.tail()))
            time.sleep(0.1)
        say("plain upstream (%s) on tcp 127.0.0.1:%d" % (CLUSTER_ZONE, self.pport))

    def upstream_pids(self):
        return [d.pid for d in self.upstream]

    def upstream_queries(self):
        """Queries the synthetic DoT responder has answered so far (from its
        SIGUSR1 counters line), or None when the upstream cannot tell."""
        if self.args.upstream != "responder":
            return None
        return responder_queries(self.upstream[0])

    def plain_queries(self):
        """Queries the plain responder has answered so far; None without it."""
        return responder_queries(self.plain) if self.plain else None

    # -- names ------------------------------------------------------------

    def names(self, tag, count, prefix=None, cluster_pct=0):
        """Write COUNT query lines (name, type A) under a fresh random prefix
        to a file in the scratch directory; returns its path. Fresh prefixes
        keep every miss-scenario name unique in every run and repetition.
        CLUSTER_PCT percent of the lines, spread evenly (every run of 100
        lines has that many), are under CLUSTER_SUFFIX instead of ZONE."""
        prefix = prefix or "%s%08x-" % (tag, random.getrandbits(32))
        count = int(min(max(count, 1000), MAX_NAMES))
        path = os.path.join(self.tmp, "names-%s.txt" % tag)

        def zone(i):
            cluster = (i + 1) * cluster_pct // 100 > i * cluster_pct // 100
            return CLUSTER_SUFFIX if cluster else ZONE

        with open(path, "w") as f:
            for start in range(0, count, 100000):
                f.write("".join("%s%d.%s A\n" % (prefix, i, zone(i))
                                for i in range(start, min(count, start + 100000))))
        return path

    def zipf_stream(self):
        """The zipf scenario's stream, written on first use and then the
        same file for every system of the run."""
        a = self.args
        if self.zipf is None:
            t0 = time.monotonic()
            self.zipf = ZipfStream(os.path.join(self.tmp, "names-zipf.txt"), a.zipf_names, a.zipf_exponent,
                                   a.zipf_nx_pct, a.zipf_rate, a.zipf_seconds, a.zipf_seed)
            say("zipf stream: %d queries, %d distinct names, a perfect cache would fetch %d (%.1fs to make)" % (
                self.zipf.count, self.zipf.distinct[-1], self.zipf.ideal[-1], time.monotonic() - t0))
        return self.zipf

    # -- dnsperf ----------------------------------------------------------

    def dnsperf(self, port, mode, datafile, duration, loops=None, qps=None, clients=None):
        """Run dnsperf once; returns the parsed result (see parse_dnsperf)."""
        a = self.args
        argv = ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-m", mode, "-d", datafile,
                "-c", str(clients or a.clients), "-q", str(a.outstanding), "-l", "%g" % duration,
                "-t", str(a.query_timeout), "-v"]
        if loops:
            argv += ["-n", str(loops)]
        if qps:
            argv += ["-Q", str(qps)]
        out = os.path.join(self.tmp, "dnsperf.out")
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        with open(out, "wb") as f:
            p = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            try:
                p.wait(duration + a.query_timeout + 30)
            except subprocess.TimeoutExpired:
                raise BenchError("dnsperf did not finish: %s" % " ".join(argv))
            finally:  # also when interrupted: leave no load running
                if p.poll() is None:
                    p.kill()
                    p.wait()
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        with open(out, "rb") as f:
            r = parse_dnsperf(f.read())
        if r is None:
            with open(out, "rb") as f:
                raise BenchError("dnsperf failed (%s): %s" % (" ".join(argv), f.read()[-1500:].decode(errors="replace")))
        r["loadgen_cpu_s"] = round((ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime), 3)
        r["dnsperf_args"] = argv[1:]
        return r

    def h2load(self, port, datafile, duration, qps=None, unique=False):
        """DoH clients: --doh-clients h2load processes (one HTTP/2
        connection each, --doh-streams streams, GET ?dns=) sharing the names
        of DATAFILE, for DURATION seconds, paced to QPS in all when given.
        Returns a function for measure(load=) that runs them (the URI files
        are written now, outside the measured window) and returns the run in
        parse_dnsperf's shape: sent = requests started,
        completed = answered with a 2xx, errors = answered with another HTTP
        status (h2load cannot see DNS rcodes), lost = streams that failed or
        timed out; in_flight_at_end = started and still unanswered when the
        time was up (h2load stops without waiting: not lost). UNIQUE: the
        names are meant to be asked once each."""
        a = self.args
        files, per_file = encload.write_uri_files(datafile, port, a.doh_clients, self.tmp, "doh")
        return lambda: self._h2load_run(files, per_file, duration, qps, unique)

    def _h2load_run(self, files, per_file, duration, qps, unique):
        a = self.args
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        try:
            t, lat, argv = encload.run_h2load(files, duration, a.doh_streams, self.tmp, rps=qps)
        except RuntimeError as e:
            raise BenchError(str(e))
        finally:
            for f in files:
                os.unlink(f)
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        lat.sort()
        n = len(lat)
        errors = t["status"]["3xx"] + t["status"]["4xx"] + t["status"]["5xx"]
        # status codes also count streams cut off after their headers: the
        # answered ones are those that succeeded, less other statuses
        done = t["succeeded"] - errors

        def pct(q):
            v = encload.percentile(lat, q)
            return v * 1000.0 if v is not None else None

        # QPS while all processes were sending (they start one by one):
        # answers in that span over its length; CPU and upstream queries per
        # query are over every answer of the run, as for dnsperf
        r = {"sent": t["started"], "completed": done, "lost": t["failed"],
             "in_flight_at_end": t["started"] - t["done"], "run_time_s": t["seconds"], "qps": t["window_qps"],
             "qps_all": done / t["seconds"] if t["seconds"] else None,
             "common_window_s": t["window_s"], "start_skew_s": t["start_skew_s"],
             "timeouts": t["timeout"], "rcodes": {"HTTP " + k: v for k, v in t["status"].items() if v},
             "errors": errors, "h2load_errored": t["errored"],
             # a client that asked more names than its file holds asked some twice
             "ended_by": "names wrapped" if unique and t["max_per_process"] > per_file else "time limit",
             "lat_samples": n, "lat_avg_ms": sum(lat) / n * 1000.0 if n else None,
             "lat_p50_ms": pct(50), "lat_p90_ms": pct(90), "lat_p99_ms": pct(99), "lat_p999_ms": pct(99.9),
             "lat_max_ms": lat[-1] * 1000.0 if n else None,
             "loadgen_cpu_s": round((ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime), 3),
             "h2load_args": argv[1:], "h2load_processes": len(files)}
        r["lost_pct"] = 100.0 * r["lost"] / r["sent"] if r["sent"] else 0.0
        return r

    def measure(self, pids, port, mode, datafile, duration, loops=None, qps=None,
                forwarded=False, check=None, clients=None, load=None):
        """One dnsperf run against PIDS (the system's processes) with CPU
        time, peak RSS and the upstream's share recorded around it. When
        FORWARDED, every answered query also cost one upstream query and
        cpu_ratio (system CPU per query / upstream CPU per query) is set.
        LOAD, when given, runs instead of dnsperf and returns a run in
        dnsperf's shape (h2load for DoH clients)."""
        for pid in pids:
            reset_peak_rss(pid)
        upids = [p for p in self.upstream_pids() if p not in pids]
        uq0, pq0 = self.upstream_queries(), self.plain_queries()
        e0 = udp_rcvbuf_errors()
        m0 = machine_cpu_seconds()
        w0 = time.monotonic()
        c0 = sum(cpu_seconds(p) for p in pids)
        u0 = sum(cpu_seconds(p) for p in upids)
        r = load() if load else self.dnsperf(port, mode, datafile, duration, loops, qps, clients)
        c1 = sum(cpu_seconds(p) for p in pids)
        u1 = sum(cpu_seconds(p) for p in upids)
        r["udp_rcvbuf_errors"] = udp_rcvbuf_errors() - e0
        r["window_s"] = round(time.monotonic() - w0, 3)
        # busy CPU time of the machine outside the system, the upstream and
        # dnsperf: other programs competing for the cores, and kernel threads
        # (ksoftirqd, kworkers) doing packet work; approximate (tick-based)
        m1 = machine_cpu_seconds()
        r["other_cpu_s"] = round(m1[0] - m0[0] - (c1 - c0) - (u1 - u0) - r["loadgen_cpu_s"], 2)
        r["irq_cpu_s"] = round(m1[1] - m0[1], 2)
        r["other_cpus"] = round(r["other_cpu_s"] / r["window_s"], 2)
        r["loadgen_cpus"] = round(r["loadgen_cpu_s"] / r["window_s"], 2)
        uq1, pq1 = self.upstream_queries(), self.plain_queries()
        if check:
            check()
        n = r["completed"]
        r["cpu_s"] = round(c1 - c0, 4)
        r["cpu_us_per_query"] = (c1 - c0) / n * 1e6 if n else None
        # the whole machine (every process, kernel threads, interrupts),
        # dnsperf and the upstream included: counts work a system moves
        # into the kernel (softirq) too; tick-based
        r["machine_cpu_s"] = round((m1[0] - m0[0]) + (m1[1] - m0[1]), 2)
        r["machine_cpu_us_per_query"] = r["machine_cpu_s"] / n * 1e6 if n else None
        r["rss_peak_kb"] = sum(peak_rss_kb(p) for p in pids)
        if upids:
            r["upstream_cpu_s"] = round(u1 - u0, 4)
            r["upstream_cpu_us_per_query"] = (u1 - u0) / n * 1e6 if n else None
            if forwarded and n and u1 > u0:
                r["cpu_ratio"] = (c1 - c0) / (u1 - u0)
        if uq0 is not None and uq1 is not None and upids:
            r["upstream_queries"] = uq1 - uq0
            if pq0 is not None and pq1 is not None:
                # both responders: the total, and who got what
                r["dot_queries"], r["plain_queries"] = uq1 - uq0, pq1 - pq0
                r["upstream_queries"] += pq1 - pq0
                r["plain_share"] = (pq1 - pq0) / r["upstream_queries"] if r["upstream_queries"] else None
            r["upstream_queries_per_query"] = r["upstream_queries"] / n if n else None
        if qps:
            r["target_qps"] = qps
        return r


class ZipfStream:
    """The zipf scenario's queries: COUNT = RATE x SECONDS lines drawn from
    NAMES names with Zipf popularity (the name of rank r is asked with
    probability proportional to 1 / r^EXPONENT), from a fixed SEED so every
    system and every run gets the same file. Each name has a TTL from
    ZIPF_TTLS and NX_PCT percent of the names do not exist, independent of
    popularity; the name says both to tools/dot-responder --name-ttl:
    "t300-z17.example.com" (TTL 300), "t30-nx5.example.com" (NXDOMAIN, SOA
    TTL and MINIMUM 30).

    ideal[i] and distinct[i] are, over the first i + 1 queries, the upstream
    fetches of a perfect cache (one per machine, unlimited memory, every
    answer kept exactly its TTL, query i sent at i / RATE as dnsperf -Q
    paces them) and the distinct names asked."""

    def __init__(self, path, names, exponent, nx_pct, rate, seconds, seed):
        rng = random.Random(seed)
        self.path, self.count = path, int(rate * seconds)
        ttl = rng.choices([t for t, _ in ZIPF_TTLS], weights=[w for _, w in ZIPF_TTLS], k=names)
        nx = [rng.random() * 100 < nx_pct for _ in range(names)]
        cum = list(itertools.accumulate(r ** -exponent for r in range(1, names + 1)))
        ranks = rng.choices(range(names), cum_weights=cum, k=self.count)
        with open(path, "w") as f:
            for start in range(0, self.count, 100000):
                f.write("".join("t%d-%s%d.%s A\n" % (ttl[r], "nx" if nx[r] else "z", r, ZONE)
                                for r in ranks[start:start + 100000]))
        self.ideal, self.distinct = array.array("I"), array.array("I")
        expires = {}
        fetches = 0
        for i, r in enumerate(ranks):
            t = i / rate
            e = expires.get(r)
            if e is None or t >= e:
                fetches += 1
                expires[r] = t + ttl[r]
            self.ideal.append(fetches)
            self.distinct.append(len(expires))
        self.nx_query_pct = 100.0 * sum(1 for r in ranks if nx[r]) / self.count
        self.info = {"queries": self.count, "names": names, "exponent": exponent, "nx_names_pct": nx_pct,
                     "nx_queries_pct": round(self.nx_query_pct, 2), "rate": rate, "seconds": seconds,
                     "seed": seed, "ttls": [list(t) for t in ZIPF_TTLS], "distinct_names": self.distinct[-1],
                     "ideal_fetches": self.ideal[-1], "ideal_hit_ratio": 1 - self.ideal[-1] / self.count,
                     "example": "t%d-%s%d.%s" % (ttl[ranks[0]], "nx" if nx[ranks[0]] else "z", ranks[0], ZONE)}

    def prefix(self, sent):
        """(distinct names, perfect-cache fetches) over the first SENT queries."""
        i = max(0, min(sent, self.count) - 1)
        return self.distinct[i], self.ideal[i]


def parse_dnsperf(out):
    """Parse dnsperf 2.10 output run with -v.

    Per-query lines are "> RCODE NAME TYPE SECONDS" for answers, "> T NAME
    TYPE" for timeouts and "> I NAME TYPE" for queries interrupted at exit;
    the totals come from the "Statistics:" block. Latency percentiles are
    over answered queries (nearest rank). Returns None when there is no
    Statistics block (dnsperf failed)."""
    text = out.decode(errors="replace")
    m = re.search(r"Queries sent:\s+(\d+)", text)
    if not m:
        return None
    lat = []
    timeouts = 0
    for line in out.split(b"\n"):
        if line.startswith(b"> "):
            parts = line.split()
            if len(parts) == 5:
                lat.append(float(parts[4]))
            elif parts[1] == b"T":
                timeouts += 1

    def num(pat, conv=int):
        mm = re.search(pat, text)
        return conv(mm.group(1)) if mm else None

    r = {"sent": int(m.group(1)),
         "completed": num(r"Queries completed:\s+(\d+)"),
         "lost": num(r"Queries lost:\s+(\d+)"),
         "run_time_s": num(r"Run time \(s\):\s+([\d.]+)", float),
         "qps": num(r"Queries per second:\s+([\d.]+)", float),
         "timeouts": timeouts,
         "ended_by": "end of file" if "(end of file)" in text else "time limit"}
    rc = re.search(r"Response codes:\s+(.*)", text)
    r["rcodes"] = {k: int(v) for k, v in re.findall(r"(\w+) (\d+) \(", rc.group(1))} if rc else {}
    r["errors"] = (r["completed"] or 0) - r["rcodes"].get("NOERROR", 0)
    r["lost_pct"] = 100.0 * r["lost"] / r["sent"] if r["sent"] else 0.0
    lat.sort()
    n = len(lat)

    def pct(q):
        return lat[max(0, math.ceil(q / 100.0 * n) - 1)] * 1000.0 if n else None

    r.update(lat_samples=n, lat_avg_ms=(sum(lat) / n * 1000.0) if n else None,
             lat_p50_ms=pct(50), lat_p90_ms=pct(90), lat_p99_ms=pct(99), lat_p999_ms=pct(99.9),
             lat_max_ms=lat[-1] * 1000.0 if n else None)
    return r


def summarize(runs):
    """Median, min and max of every per-run value over the repetitions."""
    s = {}
    for k in RUN_KEYS:
        v = [r[k] for r in runs if r.get(k) is not None]
        if v:
            s[k] = {"median": statistics.median(v), "min": min(v), "max": max(v)}
    return s


def med(summary, key):
    v = summary.get(key)
    return v["median"] if v else None


# ---- systems under test ------------------------------------------------------

def start_system(b, name, port, workdir, procs, enc=None):
    """Start system NAME listening on 127.0.0.1:PORT and forwarding to the
    bench upstream; appends its Daemons to PROCS and returns a description
    of its configuration. ENC ({"dot": PORT, "doh": PORT} or None) adds
    encrypted listeners with the bench's frontend certificate."""
    a = b.args
    log = os.path.join(b.logs, "%s.log" % name)
    vals = dict(PORT=port, UPORT=b.uport, UNAME=UNAME, CA=b.ca, DIR=workdir, THREADS=a.threads, ZONE=ZONE,
                CPORT=b.pport, CLUSTER_ZONE=CLUSTER_ZONE,
                CACHE_MB=a.cache_mb, DNSDIST_ENTRIES=a.cache_mb * (1 << 20) // DNSDIST_ENTRY_BYTES,
                # unbound's advice: the rrset cache twice the message cache
                UNBOUND_MSG_MB=max(1, a.cache_mb // 3), UNBOUND_RRSET_MB=max(1, a.cache_mb - a.cache_mb // 3))
    # with the plain responder up (mixed scenario), CLUSTER_ZONE goes to it
    # over plain TCP: peers/SYSTEM-cluster.in goes where the template says
    routed = b.pport is not None and name in ZONE_ROUTING
    vals["CLUSTER_CONF"] = render_text("%s-cluster.in" % name, **vals) if routed else ""
    # encrypted-client scenarios: peers/SYSTEM-enc.in adds the DoT and DoH listeners
    if enc:
        vals.update(TLSPORT=enc.get("dot"), HTTPSPORT=enc.get("doh"), FCERT=b.fcert, FKEY=b.fkey)
    vals["ENC_CONF"] = render_text("%s-enc.in" % name, **vals) if enc and name in ENC_SERVERS else ""
    if is_dotproxy(name):
        var = VARIANTS.get(name, {})
        threads = var.get("threads", a.threads)
        binary = dotproxy_binary(a, name)
        argv = [binary, "--listen", "127.0.0.1:%d" % port,
                "--upstream", "127.0.0.1:%d#%s" % (b.uport, UNAME), "--ca-file", b.ca,
                "--threads", str(threads), "--timeout", "2s", "--cache-size", str(a.cache_mb),
                "--log-level", "info"] + var.get("args", [])
        if b.pport is not None:
            argv += ["--forward", "%s=tcp://127.0.0.1:%d" % (CLUSTER_ZONE, b.pport)]
        if enc:
            argv += ["--cert", b.fcert, "--key", b.fkey]
            argv += ["--listen-tls", "127.0.0.1:%d" % enc["dot"]] if "dot" in enc else []
            argv += ["--listen-https", "127.0.0.1:%d" % enc["doh"]] if "doh" in enc else []
        procs.append(Daemon(name, argv, log))
        return {"argv": argv[1:], "threads": threads, "udp_rcvbuf": "its own (SO_RCVBUFFORCE 8 MB)"}
    if name == "dnsdist":
        conf = render("dnsdist.conf.in", os.path.join(workdir, "dnsdist.conf"), **vals)
        procs.append(Daemon(name, ["dnsdist", "--supervised", "--disable-syslog", "-C", conf], log))
    elif name == "unbound":
        conf = render("unbound.conf.in", os.path.join(workdir, "unbound.conf"), **vals)
        procs.append(Daemon(name, ["unbound", "-d", "-c", conf], log))
    elif name == "stubby":
        conf = render("stubby.yml.in", os.path.join(workdir, "stubby.yml"), **vals)
        procs.append(Daemon(name, ["stubby", "-C", conf, "-v", "4"], log))
    elif name == "kresd":
        conf = render("kresd.conf.in", os.path.join(workdir, "kresd.conf"), **vals)
        for i in range(a.threads):
            rundir = os.path.join(workdir, "kresd%d" % i)
            os.makedirs(rundir)
            procs.append(Daemon("kresd%d" % i, ["kresd", "-n", "-c", conf, rundir], log))
            time.sleep(0.2)  # the first one creates the shared cache
        if shutil.which("kres-cache-gc"):
            # what the docs pair with every kresd: without it a full LMDB
            # cache is wiped whole; its CPU and RSS count as kresd's
            procs.append(Daemon("kres-cache-gc", ["kres-cache-gc", "-c", os.path.join(workdir, "kresd-cache"),
                                                  "-d", "1000"], log))
    else:
        raise BenchError("unknown system %s" % name)
    shutil.copy(conf, os.path.join(b.logs, os.path.basename(conf)))
    return {"config": "bench/peers/" + os.path.basename(conf) + ".in", "processes": len(procs),
            "threads": 1 if name == "stubby" else a.threads,
            "udp_rcvbuf": RCVBUF_HOW[name]}


def dotproxy_binary(a, name):
    """The binary dotproxy or its variant NAME runs."""
    var = VARIANTS.get(name, {})
    return getattr(a, var["binary"]) if "binary" in var else a.dotproxy


def enc_support(a, name):
    """The encrypted client protocols ("dot", "doh") system NAME serves here,
    and why it serves no others: a dotproxy build tells by its --help (the
    DoH listener came after the DoT one), stubby serves neither."""
    if is_dotproxy(name):
        usage = cmd_output([dotproxy_binary(a, name), "--help"])
        have = {p for p, flag in (("dot", "--listen-tls"), ("doh", "--listen-https")) if flag in usage}
        return have, "this dotproxy build has no %s" % " or ".join(
            f for p, f in (("dot", "--listen-tls"), ("doh", "--listen-https")) if p not in have)
    if name in ENC_SERVERS:
        return {"dot", "doh"}, ""
    return set(), "%s has no DoT or DoH listener (a client-side stub only)" % name


def doh_probe(port, qname):
    """One DoH GET for QNAME through h2load; True when it got a 2xx."""
    uri = "https://127.0.0.1:%d%s" % (port, encload.doh_path(qname))
    r = encload.parse_h2load(cmd_output(["h2load", "-c", "1", "-n", "1", uri]))
    return bool(r and r["status"]["2xx"] == 1), r


def wait_enc_ready(b, procs, enc, deadline_s=20):
    """Ready when the DoT listener answers a query whose certificate
    verifies as FNAME against the frontend CA, and the DoH listener answers
    an h2load GET with a 2xx."""
    deadline = time.monotonic() + deadline_s
    ctx = ssl.create_default_context(cafile=b.fca)
    for proto, port in sorted(enc.items()):
        while True:
            for d in procs:
                if not d.alive():
                    raise BenchError("%s exited with status %s:\n%s" % (d.name, d.p.returncode, d.tail()))
            try:
                if proto == "dot":
                    r = dns.query.tls(dns.message.make_query(random_name(), "A"), "127.0.0.1", port=port,
                                      ssl_context=ctx, server_hostname=FNAME, timeout=2)
                    ok, err = r.rcode() == 0 and bool(r.answer), "rcode %s" % dns.rcode.to_text(r.rcode())
                else:
                    ok, err = doh_probe(port, random_name())
            except Exception as e:  # noqa: BLE001 - any failure means not ready yet
                ok, err = False, e
            if ok:
                break
            if time.monotonic() > deadline:
                raise BenchError("no %s answer on 127.0.0.1:%d within %ds (%s):\n%s" % (
                    proto, port, deadline_s, err, "\n".join(d.tail() for d in procs)))
            time.sleep(0.2)


def wait_ready(procs, port, deadline_s=20, probes=20):
    """Ready when PROBES consecutive UDP queries (each from a new source port,
    so SO_REUSEPORT spreads them over every process) get an answer."""
    deadline = time.monotonic() + deadline_s
    ok, err = 0, None
    while ok < probes:
        for d in procs:
            if not d.alive():
                raise BenchError("%s exited with status %s:\n%s" % (d.name, d.p.returncode, d.tail()))
        try:
            r = dns.query.udp(dns.message.make_query(random_name(), "A"), "127.0.0.1", port=port, timeout=1)
            if r.rcode() == 0 and r.answer:
                ok += 1
                continue
            err = "rcode %s" % dns.rcode.to_text(r.rcode())
        except Exception as e:  # noqa: BLE001
            err = e
        ok = 0
        if time.monotonic() > deadline:
            raise BenchError("no answer on 127.0.0.1:%d within %ds (%s):\n%s" % (
                port, deadline_s, err, "\n".join(d.tail() for d in procs)))
        time.sleep(0.2)


def signal_and_read_log(d, extract, timeout_s=2):
    """Send daemon D SIGUSR1 (it logs its counters) and return extract(what
    its log gained since), once that is not None; None after TIMEOUT_S."""
    size0 = os.path.getsize(d.log)
    os.kill(d.pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with open(d.log, "rb") as f:
            f.seek(size0)
            v = extract(f.read())
        if v is not None:
            return v
        time.sleep(0.01)
    return None


def responder_queries(d):
    """Queries tools/dot-responder D has answered so far (SIGUSR1: it logs
    its counters line); None when it does not answer in time."""
    def queries(new):
        m = re.findall(rb"\bqueries=(\d+)", new)
        return int(m[-1]) if m else None
    return signal_and_read_log(d, queries)


def answer_ips(r):
    """The A records' addresses in DNS message R."""
    return [rd.address for rrset in r.answer if rrset.rdtype == 1 for rd in rrset]


def check_routes(port):
    """The mixed scenario's routing, seen by a client: a cluster name is
    answered by the plain responder and an ordinary name by the DoT one
    (their A records differ). Raises BenchError otherwise."""
    for name, want in (("route-check." + CLUSTER_SUFFIX, PLAIN_ANSWER), (random_name(), DOT_ANSWER)):
        try:
            got = answer_ips(dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=3))
        except Exception as e:  # noqa: BLE001
            got = e
        if got != [want]:
            raise BenchError("%s: answered %s, want %s (the %s responder's)" % (
                name, got, want, "plain" if want == PLAIN_ANSWER else "DoT"))


def dotproxy_stats(d):
    """Ask dotproxy for its counters (SIGUSR1) and return the stats line."""
    def stats(new):
        lines = [ln for ln in new.decode(errors="replace").splitlines() if 'msg="stats"' in ln]
        return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)\b", lines[-1])} if lines else None
    return signal_and_read_log(d, stats)


def run_system(b, name, ceiling_qps):
    """Every selected scenario against one system; returns its result."""
    a = b.args
    res = {"status": "ok", "scenarios": {}}
    if not is_dotproxy(name) and not shutil.which(name):
        return {"status": "skipped", "reason": "%s is not installed" % name}
    scenarios = list(a.scenarios)
    routes = is_dotproxy(name) or name in ZONE_ROUTING
    if "mixed" in scenarios and not routes:
        scenarios.remove("mixed")
        why = "%s cannot forward a zone elsewhere" % name
        res["skipped_scenarios"] = {"mixed": why}
        say("%s mixed: skipped (%s)" % (name, why))
        if not scenarios:
            return dict(res, status="skipped", reason=why)
    protos = {ENCRYPTED[sc][0] for sc in scenarios if sc in ENCRYPTED}
    if protos:
        have, why = enc_support(a, name)
        for sc in [sc for sc in scenarios if sc in ENCRYPTED and ENCRYPTED[sc][0] not in have]:
            scenarios.remove(sc)
            res.setdefault("skipped_scenarios", {})[sc] = why
            say("%s %s: skipped (%s)" % (name, sc, why))
        if not scenarios:
            return dict(res, status="skipped", reason=why)
        protos &= have
    # the encrypted listeners' ports ({} without encrypted scenarios): both
    # listeners whenever one is used, so the configuration is the same
    # whichever scenarios run (the peers' -enc.in fragments have both)
    enc = {p: free_port() for p in sorted(have)} if protos else {}
    workdir = os.path.join(b.tmp, name)
    os.makedirs(workdir)
    port = free_port()
    procs = []
    try:
        with RmemDefault(UDP_RCVBUF if name in ("kresd", "stubby") else None):
            res.update(start_system(b, name, port, workdir, procs, enc))
            wait_ready(procs, port)
            if enc:
                wait_enc_ready(b, procs, enc)
                res["enc_ports"] = enc
        pids = [d.pid for d in procs]
        res["rss_ready_kb"] = sum(rss_kb(p) for p in pids)
        say("%s ready on 127.0.0.1:%d (%d process%s)" % (name, port, len(procs), "es" if len(procs) > 1 else ""))
        if "mixed" in scenarios:
            check_routes(port)

        def check():
            for d in procs:
                if not d.alive():
                    raise BenchError("%s died (status %s):\n%s" % (d.name, d.p.returncode, d.tail()))

        hit_prefix = "h%08x-" % random.getrandbits(32)
        # zipf first: its hit ratio needs a cache that holds nothing else yet
        # zipf first (a cold cache); then every hit scenario before any miss
        # one: a miss run leaves the cache full of names no hit asks for, and
        # dnsdist's packet cache takes no new entry when full (its "hits"
        # were all forwarded after the misses had filled 64 MB)
        for scen in sorted(scenarios, key=lambda sc: (sc != "zipf", not sc.endswith("-hit"))):
            if scen == "zipf":
                res["scenarios"]["zipf"] = run_zipf(b, name, pids, port, check,
                                                    procs[0] if is_dotproxy(name) else None)
            elif scen in ENCRYPTED:
                res["scenarios"][scen] = run_encrypted(b, name, pids, enc, scen, hit_prefix, ceiling_qps, check)
            elif scen == "latency":
                udp = res["scenarios"].get("udp-miss", {}).get("summary", {})
                res["scenarios"]["latency"] = run_latency(b, name, pids, port, med(udp, "qps"), check)
            else:
                res["scenarios"][scen] = run_throughput(b, name, pids, port, scen, hit_prefix, ceiling_qps, check)
            if is_dotproxy(name):
                res["scenarios"][scen]["dotproxy_stats"] = dotproxy_stats(procs[0])
        # new TLS handshakes per CPU-second, once per encrypted protocol; a
        # failure here (a peer that does not answer one request per new
        # connection) loses this figure only, not the system's other results
        for proto in sorted(protos):
            try:
                hs = run_handshakes(b, name, pids, proto, enc[proto], hit_prefix, check,
                                    procs[0] if is_dotproxy(name) else None)
            except BenchError as e:
                hs = {"transport": proto, "status": "failed", "reason": str(e)}
                say("%s %s handshakes FAILED: %s" % (name, proto, e))
            res.setdefault("handshakes", {})[proto] = hs
        res["rss_end_kb"] = sum(rss_kb(p) for p in pids)
    except BenchError as e:
        res["status"] = "failed"
        res["reason"] = str(e)
        say("%s FAILED: %s" % (name, e))
    finally:
        res["exit_status"] = [d.stop() for d in procs]
    return res


def run_throughput(b, name, pids, port, scen, hit_prefix, ceiling_qps, check, mode=None):
    """Warm-up, then --reps measured runs of one throughput scenario."""
    a = b.args
    known = dict(THROUGHPUT, **MIXED, **ENCRYPTED)
    mode = mode or known[scen][0]
    kind = known[scen][1] if scen in known else "miss"
    forwarded = kind in ("miss", "mixed") and scen != "ceiling"
    cluster_pct = a.mixed_cluster_pct if kind == "mixed" else 0

    # each h2load process asks its own share of the names, and some go
    # faster than others: half as many again, so that few run out (more
    # names make every h2load slower to start)
    spread = 1.5 if mode == "doh" else 1

    def datafile(tag, duration, est):
        if kind == "hit":
            return b.names("hit", HIT_NAMES, prefix=hit_prefix), None
        return b.names(tag, int(max(est * 2, 50000) * duration * spread), cluster_pct=cluster_pct), 1

    def run(f, duration, loops):
        # DoH clients are h2load processes, every other mode is dnsperf's
        load = b.h2load(port, f, duration, unique=loops == 1) if mode == "doh" else None
        return b.measure(pids, port, mode, f, duration, loops, forwarded=forwarded, check=check, load=load)

    # h2load holds every URI of its file in memory: guess low, the measured
    # runs are sized from the warm-up anyway
    f, loops = datafile("w", a.warmup, min(a.max_qps_guess, 50000) if mode == "doh" else a.max_qps_guess)
    w = run(f, a.warmup, loops)
    say("%s %s warm-up: %s" % (name, scen, brief(w)))
    est = max(w["qps"] or 0, 1000)
    runs = []
    for i in range(a.reps):
        f, loops = datafile("r", a.duration, est)
        r = run(f, a.duration, loops)
        runs.append(r)
        est = max(est, r["qps"] or 0)
        say("%s %s %d/%d: %s" % (name, scen, i + 1, a.reps, brief(r)))
    res = {"transport": mode, "names": kind, "warmup": w, "runs": runs, "summary": summarize(runs)}
    if ceiling_qps and scen != "ceiling":
        q = med(res["summary"], "qps")
        res["summary"]["qps_ratio"] = {"median": q / ceiling_qps} if q else None
    return res


def run_encrypted(b, name, pids, enc, scen, hit_prefix, ceiling_qps, check):
    """An encrypted-client scenario: the throughput runs (dnsperf -m dot,
    or h2load for DoH) on the system's DoT or DoH port, then the latency at
    --enc-rate offered queries per second."""
    proto, kind = ENCRYPTED[scen]
    res = run_throughput(b, name, pids, enc[proto], scen, hit_prefix, ceiling_qps, check, mode=proto)
    res["fixed_load"] = run_fixed_load(b, name, pids, enc[proto], scen, hit_prefix,
                                       med(res["summary"], "qps"), check)
    return res


def run_fixed_load(b, name, pids, port, scen, hit_prefix, max_qps, check):
    """--reps runs of --latency-duration s at --enc-rate queries per second
    over the scenario's protocol and names (dnsperf -Q; h2load --rps split
    over its processes); skipped above 1.1 x the scenario's throughput."""
    a = b.args
    proto, kind = ENCRYPTED[scen]
    rate = a.enc_rate
    if max_qps and rate > 1.1 * max_qps:
        say("%s %s @%d qps: skipped (above its %.0f qps throughput)" % (name, scen, rate, max_qps))
        return {"rate": rate, "skipped": "above %s's %s throughput (%.0f qps)" % (name, scen, max_qps)}
    runs = []
    for i in range(a.reps):
        if kind == "hit":
            f, loops = b.names("hit", HIT_NAMES, prefix=hit_prefix), None
        else:
            f, loops = b.names("l", rate * a.latency_duration * 1.1 + 1000), 1
        load = b.h2load(port, f, a.latency_duration, qps=rate, unique=loops == 1) if proto == "doh" else None
        r = b.measure(pids, port, proto, f, a.latency_duration, loops, qps=rate, forwarded=kind == "miss",
                      check=check, load=load)
        r["target_qps"] = rate
        runs.append(r)
        say("%s %s @%d qps %d/%d: %s" % (name, scen, rate, i + 1, a.reps, brief(r)))
    return {"rate": rate, "runs": runs, "summary": summarize(runs)}


def run_handshakes(b, name, pids, proto, port, hit_prefix, check, dp=None):
    """New TLS handshakes per CPU-second of the system: --reps runs of
    --handshake-seconds in which clients open --handshake-rate new
    connections per second, each a full TLS 1.3 handshake (no resumption)
    and one query for a cached name, then close. DoT: encload's Python ssl
    client in --handshake-workers processes; DoH: h2load -c N -n N -m 1 -r.
    handshakes_per_cpu_s = answered connections / the system's CPU seconds
    in the run: the handshakes one core would do per second at this cost."""
    a = b.args
    qname = "%s0.%s" % (hit_prefix, ZONE)  # the hit set's first name: cached once asked
    uri = os.path.join(b.tmp, "uri-handshake.txt")
    with open(uri, "w") as f:
        f.write("https://127.0.0.1:%d%s\n" % (port, encload.doh_path(qname)))
    rate, secs = a.handshake_rate, a.handshake_seconds

    def load():
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        try:
            if proto == "dot":
                h = encload.dot_connections(port, qname, rate, secs, a.handshake_workers)
                r = {"completed": h["answered"], "lost": h["failed"], "run_time_s": round(h["seconds"], 3),
                     "client": "python asyncio ssl, %d processes" % a.handshake_workers}
                lat = h["latencies"]
                r.update(lat_p50_ms=(encload.percentile(lat, 50) or 0) * 1000 if lat else None,
                         lat_p99_ms=(encload.percentile(lat, 99) or 0) * 1000 if lat else None)
            else:
                h = encload.h2load_connections(uri, rate, secs, b.tmp)
                ok = h["succeeded"] - h["status"]["3xx"] - h["status"]["4xx"] - h["status"]["5xx"]
                r = {"completed": ok, "lost": h["started"] - ok,
                     "run_time_s": h["seconds"], "client": "h2load", "h2load_args": h["argv"]}
        except RuntimeError as e:
            raise BenchError(str(e))
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        r["loadgen_cpu_s"] = round((ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime), 3)
        r["sent"] = int(rate * secs)
        r["qps"] = r["completed"] / r["run_time_s"] if r["run_time_s"] else None
        r["lost_pct"] = 100.0 * r["lost"] / r["sent"] if r["sent"] else 0.0
        return r

    runs = []
    for i in range(a.reps):
        before = dotproxy_stats(dp) if dp else None
        r = b.measure(pids, port, proto, None, secs, check=check, load=load)
        n = r["completed"]
        r.update(handshakes=n, handshakes_failed=r["lost"], handshake_rate=r["qps"], offered_rate=rate,
                 cpu_us_per_handshake=r["cpu_s"] / n * 1e6 if n else None,
                 handshakes_per_cpu_s=n / r["cpu_s"] if n and r["cpu_s"] else None)
        if before:
            after = dotproxy_stats(dp)
            r["dotproxy_delta"] = {k: after[k] - before.get(k, 0) for k in after if k.startswith("tls")}
        runs.append(r)
        say("%s %s handshakes %d/%d: %d of %d answered at %.0f/s, %s us CPU each, %s per CPU-second" % (
            name, proto, i + 1, a.reps, n, r["sent"], r["qps"] or 0, fmt(r["cpu_us_per_handshake"], "%.0f"),
            fmt(r["handshakes_per_cpu_s"], "%.0f")))
    return {"transport": proto, "offered_rate": rate, "seconds": secs, "runs": runs, "summary": summarize(runs)}


def run_zipf(b, name, pids, port, check, dp=None):
    """The zipf scenario: the whole stream once, at --zipf-rate, from
    --zipf-clients source ports, into a cold cache; the hit ratio measured at
    the upstream. DP is dotproxy's Daemon: its prefetches and hedges are
    read from its counters and not counted as misses."""
    a = b.args
    z = b.zipf_stream()
    before = dotproxy_stats(dp) if dp else None
    r = b.measure(pids, port, "udp", z.path, a.zipf_seconds + 10, loops=1, qps=a.zipf_rate, check=check,
                  clients=a.zipf_clients)
    after = dotproxy_stats(dp) if dp else None
    zipf_figures(r, z, before, after)
    say("%s zipf: %s, hit ratio %s (perfect cache %.3f), upstream/perfect %s" % (
        name, brief(r), fmt(r.get("hit_ratio"), "%.3f"), r["ideal_hit_ratio"],
        fmt(r.get("upstream_per_ideal"), "%.3f")))
    return {"transport": "udp", "names": "zipf", "stream": z.info, "runs": [r], "summary": summarize([r])}


def zipf_figures(r, z, before, after):
    """Add the zipf figures to run R: client queries are what dnsperf
    sent; misses the upstream's queries less dotproxy's prefetches and hedges
    (BEFORE and AFTER are its counters around the run, None for others)."""
    sent = r["sent"]
    distinct, ideal = z.prefix(sent)
    r.update(client_queries=sent, distinct_names=distinct, ideal_fetches=ideal,
             ideal_hit_ratio=1 - ideal / sent if sent else None, nxdomain=r["rcodes"].get("NXDOMAIN", 0))
    if before and after:
        gauges = ("cache_entries", "cache_bytes", "queries_inflight", "tcp_open")
        delta = {k: after[k] - before.get(k, 0) for k in after if k not in gauges}
        r["prefetches"] = delta.get("cache_prefetched")
        r["hedges"] = delta.get("hedges_sent")
        r["dotproxy_delta"] = delta
        r["dotproxy_cache"] = {k: after[k] for k in gauges[:2] if k in after}
    up = r.get("upstream_queries")
    if up is None or not sent:
        return
    r["misses"] = up - (r.get("prefetches") or 0) - (r.get("hedges") or 0)
    r["hit_ratio"] = 1 - r["misses"] / sent
    r["hit_ratio_raw"] = 1 - up / sent
    r["upstream_per_distinct"] = r["misses"] / distinct
    r["upstream_per_ideal"] = r["misses"] / ideal


def run_latency(b, name, pids, port, max_qps, check):
    """dnsperf -Q at each --rates load, --reps times, unique names."""
    a = b.args
    points = []
    for rate in a.rates:
        if max_qps and rate > 1.1 * max_qps:
            points.append({"rate": rate, "skipped": "above %s's udp-miss throughput (%.0f qps)" % (name, max_qps)})
            say("%s latency @%d qps: skipped (above its %.0f qps throughput)" % (name, rate, max_qps))
            continue
        runs = []
        for i in range(a.reps):
            f = b.names("l", rate * a.latency_duration * 1.1 + 1000)
            r = b.measure(pids, port, "udp", f, a.latency_duration, 1, qps=rate, forwarded=True, check=check)
            runs.append(r)
            say("%s latency @%d qps %d/%d: %s" % (name, rate, i + 1, a.reps, brief(r)))
        points.append({"rate": rate, "runs": runs, "summary": summarize(runs)})
    return {"transport": "udp", "names": "miss", "points": points}


def brief(r):
    def ms(v):
        return "%.2f" % v if v is not None else "-"
    s = "%8.0f qps, lost %d, p50 %s p99 %s ms, %s us/query" % (
        r["qps"] or 0, r["lost"] or 0, ms(r["lat_p50_ms"]), ms(r["lat_p99_ms"]),
        "%.1f" % r["cpu_us_per_query"] if r.get("cpu_us_per_query") else "-")
    if r.get("errors"):
        s += ", %d non-NOERROR %s" % (r["errors"], r["rcodes"])
    if r.get("ended_by") == "end of file":
        s += " (names ran out)"
    if r.get("ended_by") == "names wrapped":
        s += " (names wrapped: some asked twice)"
    if r.get("plain_share") is not None:
        s += ", %.1f%% of upstream queries over plain TCP" % (100 * r["plain_share"])
    return s


# ---- machine, versions ------------------------------------------------------------

def machine_info():
    cpu = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = re.search(r"MemTotal:\s+(\d+)", open("/proc/meminfo").read())
    osr = {}
    try:
        for line in open("/etc/os-release"):
            k, _, v = line.strip().partition("=")
            osr[k] = v.strip('"')
    except OSError:
        pass
    return {"kernel": platform.release(), "kernel_version": platform.version(), "cpu_model": cpu,
            "nproc": os.cpu_count(), "cpus_allowed": len(os.sched_getaffinity(0)),
            "mem_total_kb": int(mem.group(1)) if mem else None, "os": osr.get("PRETTY_NAME"),
            "loadavg_start": open("/proc/loadavg").read().split()[:3]}


def versions(a):
    v = {}
    for name, (argv, pat) in VERSION_CMDS.items():
        if not shutil.which(argv[0]):
            v[name] = None
            continue
        m = re.search(pat, cmd_output(argv))
        pkg = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", PACKAGES[name]],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL).stdout.decode()
        v[name] = {"version": m.group(1) if m else None, "package": pkg or None}
    def git(*c):
        return subprocess.run(["git", "-C", ROOT] + list(c), stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL).stdout.decode().strip()

    dp = {"binary": a.dotproxy, "version": cmd_output([a.dotproxy, "--version"]).strip() or None,
          "git_commit": git("rev-parse", "HEAD") or None,
          "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
          "bench_delay_us": None}
    cache = os.path.join(os.path.dirname(a.dotproxy), "CMakeCache.txt")
    if os.path.exists(cache):
        with open(cache) as f:
            text = f.read()
        m = re.search(r"^DP_BENCH_DELAY_US:\w+=(\S*)", text, re.M)
        m2 = re.search(r"^CMAKE_BUILD_TYPE:\w+=(\S*)", text, re.M)
        dp["bench_delay_us"] = int(m.group(1)) if m and m.group(1).isdigit() else None
        dp["build_type"] = (m2.group(1) if m2 else None) or None
    v["dotproxy"] = dp
    v["dot-responder"] = {"binary": a.responder, "git_commit": dp["git_commit"],
                          "source_sha256": tree_sha256(os.path.join(ROOT, "tools", "responder"))}
    return v


# ---- results: metrics, table, plot --------------------------------------------------

def metrics(results):
    """The flat metrics object the regression gate reads: "SYSTEM.SCENARIO.
    NAME" -> {value (the median), min, max, better}."""
    out = {}

    def put(key, summ, name, better):
        s = summ.get(name)
        if s and s.get("median") is not None:
            out[key + "." + name] = {"value": s["median"], "min": s.get("min"), "max": s.get("max"),
                                     "better": better}

    ceil = results.get("upstream", {}).get("ceiling")
    if ceil:
        put("upstream.ceiling", ceil["summary"], "qps", "higher")
        put("upstream.ceiling", ceil["summary"], "cpu_us_per_query", "lower")
    for sysname, sres in results["systems"].items():
        for scen, sc in sres.get("scenarios", {}).items():
            if scen == "latency":
                for pt in sc["points"]:
                    if "summary" in pt:
                        for k in ("lat_p50_ms", "lat_p99_ms", "cpu_us_per_query"):
                            put("%s.latency@%d" % (sysname, pt["rate"]), pt["summary"], k, "lower")
                continue
            key = "%s.%s" % (sysname, scen)
            s = sc["summary"]
            if scen == "zipf":
                for k in ("hit_ratio", "hit_ratio_raw"):
                    put(key, s, k, "higher")
                for k in ("upstream_per_ideal", "upstream_per_distinct", "machine_cpu_us_per_query"):
                    put(key, s, k, "lower")
            put(key, s, "qps", "higher")
            for k in ("cpu_us_per_query", "cpu_ratio", "lat_p50_ms", "lat_p99_ms", "lost_pct", "rss_peak_kb"):
                put(key, s, k, "lower")
            put(key, s, "qps_ratio", "higher")
            pt = sc.get("fixed_load", {})
            if "summary" in pt:
                for k in ("lat_p50_ms", "lat_p99_ms", "cpu_us_per_query"):
                    put("%s@%d" % (key, pt["rate"]), pt["summary"], k, "lower")
        for proto, hs in sres.get("handshakes", {}).items():
            if "summary" not in hs:
                continue  # failed: no figure
            put("%s.%s-in" % (sysname, proto), hs["summary"], "handshakes_per_cpu_s", "higher")
            put("%s.%s-in" % (sysname, proto), hs["summary"], "cpu_us_per_handshake", "lower")
    return out


def fmt(v, f="%.2f"):
    return f % v if v is not None else "-"


def print_table(results, out=sys.stdout):
    rows, failed = [], []
    ceil = results.get("upstream", {}).get("ceiling")
    if ceil:
        rows.append(("upstream", "ceiling(dot)", ceil))
    for sysname, sres in results["systems"].items():
        if sres["status"] != "ok":
            failed.append("%-15s %s: %s" % (sysname, sres["status"], (sres.get("reason") or "?").splitlines()[0]))
            continue
        for scen, sc in sres["scenarios"].items():
            if scen not in ("latency", "zipf") and scen not in ENCRYPTED:
                rows.append((sysname, scen, sc))
    for line in failed:
        print(line, file=out)
    row = "%-15s %-12s %22s %6s %5s %7s %7s %7s %7s %7s %6s %6s %5s %7s %5s"
    if rows:
        print("\nThroughput (dnsperf -c %d -q %d, %gs x %d runs; median [min-max])" % (
            results["settings"]["clients"], results["settings"]["outstanding"],
            results["settings"]["duration_s"], results["settings"]["reps"]), file=out)
        print(row % ("system", "scenario", "QPS", "lost", "err", "avg", "p50", "p90", "p99", "p99.9", "us/q",
                     "ratio", "up/q", "RSS MB", "bg"), file=out)
        print(row % ("", "", "", "", "", "ms", "ms", "ms", "ms", "ms", "CPU", "", "", "peak", "CPUs"), file=out)
    for sysname, scen, sc in rows:
        s = sc["summary"]
        q = s.get("qps", {})
        g = lambda k: med(s, k)  # noqa: E731
        qs = "%.0f [%.0f-%.0f]" % (q["median"], q["min"], q["max"]) if q else "-"
        upq = g("upstream_queries_per_query")
        print(row % (
            sysname, scen, qs, fmt(g("lost"), "%.0f"), fmt(g("errors"), "%.0f"),
            fmt(g("lat_avg_ms")), fmt(g("lat_p50_ms")), fmt(g("lat_p90_ms")), fmt(g("lat_p99_ms")),
            fmt(g("lat_p999_ms")), fmt(g("cpu_us_per_query"), "%.1f"), fmt(g("cpu_ratio")),
            fmt(upq), fmt(g("rss_peak_kb") / 1024.0 if g("rss_peak_kb") else None, "%.1f"),
            fmt(g("other_cpus"), "%.1f")), file=out)
    lat = [(n, s["scenarios"]["latency"]) for n, s in results["systems"].items()
           if s["status"] == "ok" and "latency" in s.get("scenarios", {})]
    if lat:
        print("\nLatency at fixed offered load (UDP, unique names; median of %d runs)" % results["settings"]["reps"],
              file=out)
        print("%-15s %8s %9s %6s %7s %7s %7s %7s %7s %7s" % (
            "system", "offered", "achieved", "lost", "avg", "p50", "p90", "p99", "p99.9", "us/q"), file=out)
        for n, sc in lat:
            for pt in sc["points"]:
                if "skipped" in pt:
                    print("%-15s %8d %s" % (n, pt["rate"], "skipped: " + pt["skipped"]), file=out)
                    continue
                g = lambda k: med(pt["summary"], k)  # noqa: E731
                print("%-15s %8d %9.0f %6s %7s %7s %7s %7s %7s %7s" % (
                    n, pt["rate"], g("qps"), fmt(g("lost"), "%.0f"), fmt(g("lat_avg_ms")), fmt(g("lat_p50_ms")),
                    fmt(g("lat_p90_ms")), fmt(g("lat_p99_ms")), fmt(g("lat_p999_ms")),
                    fmt(g("cpu_us_per_query"), "%.1f")), file=out)
    print_zipf(results, out)
    print_mixed(results, out)
    print_encrypted(results, out)
    print("\nus/q: CPU time of the system's processes per answered query; ratio: that divided by the\n"
          "upstream's CPU per query in the same runs (miss scenarios); up/q: upstream queries per\n"
          "answered query (1 = forwarded, 0 = answered from cache); err: answers other than NOERROR;\n"
          "bg: machine CPUs busy outside the measured processes (other programs, kernel threads).", file=out)


def print_encrypted(results, out):
    """The encrypted-client scenarios, when they ran: throughput, latency at
    the fixed load, and the handshake cost per system and protocol."""
    st = results["settings"].get("encrypted")
    rows = [(n, sc, s["scenarios"][sc]) for sc in ENCRYPTED for n, s in results["systems"].items()
            if s["status"] == "ok" and sc in s.get("scenarios", {})]
    skipped = {}  # (system, why) -> [scenario], one line each
    for n, s in results["systems"].items():
        for sc, why in s.get("skipped_scenarios", {}).items():
            if sc in ENCRYPTED:
                skipped.setdefault((n, why), []).append(sc)
    if not rows and not skipped:
        return
    print("\nEncrypted clients (DoT: dnsperf -m dot -c %d -q %d; DoH: %d h2load processes x 1 connection x %d "
          "streams;\n%gs x %d runs, median; fixed load %d qps for %gs; handshakes: %d new connections/s for %gs, "
          "median of %d)" % (
              results["settings"]["clients"], results["settings"]["outstanding"], st["doh_clients"],
              st["doh_streams"], results["settings"]["duration_s"], results["settings"]["reps"], st["rate"],
              results["settings"]["latency_duration_s"], st["handshake_rate"], st["handshake_seconds"],
              results["settings"]["reps"]), file=out)
    row = "%-15s %-12s %16s %6s %5s %7s %7s %6s %5s %5s %4s | %7s %7s %6s | %8s %7s %5s"
    print(row % ("system", "scenario", "QPS", "lost", "err", "p50", "p99", "us/q", "ratio", "up/q", "gen",
                 "p50@", "p99@", "us/q@", "hs/CPU-s", "us/hs", "hs ok"), file=out)
    print(row % ("", "", "[min-max]", "", "", "ms", "ms", "CPU", "", "", "CPUs", "ms", "ms", "CPU", "per core",
                 "CPU", "%"), file=out)
    for n, scen, sc in rows:
        g = lambda k: med(sc["summary"], k)  # noqa: E731
        q = sc["summary"].get("qps")
        fl = sc.get("fixed_load", {})
        f = (lambda k: med(fl["summary"], k)) if "summary" in fl else (lambda k: None)  # noqa: E731
        # the handshake figures once per system and protocol: on its first scenario's row
        proto = ENCRYPTED[scen][0]
        hs = results["systems"][n].get("handshakes", {}).get(proto)
        first = next(sc2 for n2, sc2, _ in rows if n2 == n and ENCRYPTED[sc2][0] == proto) == scen
        h = (lambda k: med(hs["summary"], k)) if hs and first and "summary" in hs else (lambda k: None)  # noqa: E731
        ok = None
        if hs and first and h("handshakes") is not None:
            ok = 100.0 * h("handshakes") / (h("handshakes") + (h("handshakes_failed") or 0))
        print(row % (n, scen, "%.0f [%.0f-%.0f]" % (q["median"], q["min"], q["max"]) if q else "-",
                     fmt(g("lost"), "%.0f"), fmt(g("errors"), "%.0f"), fmt(g("lat_p50_ms")), fmt(g("lat_p99_ms")),
                     fmt(g("cpu_us_per_query"), "%.1f"), fmt(g("cpu_ratio")), fmt(g("upstream_queries_per_query")),
                     fmt(g("loadgen_cpus"), "%.1f"),
                     fmt(f("lat_p50_ms")) if "summary" in fl else ("skip" if fl else "-"), fmt(f("lat_p99_ms")),
                     fmt(f("cpu_us_per_query"), "%.1f"), fmt(h("handshakes_per_cpu_s"), "%.0f"),
                     fmt(h("cpu_us_per_handshake"), "%.0f"), fmt(ok, "%.1f")), file=out)
    for (n, why), scens in skipped.items():
        print("%-15s %s skipped: %s" % (n, ",".join(scens), why), file=out)
    for n, sres in results["systems"].items():
        for proto, hs in sorted(sres.get("handshakes", {}).items()):
            if hs.get("status") == "failed":
                print("%-15s %s-in handshakes failed: %s" % (n, proto, hs["reason"]), file=out)
    print("gen: CPUs the load generator used (dnsperf, or the h2load processes); when it is near the machine's\n"
          "CPUs less the system's, the generator was the limit. @: at the fixed offered load. hs/CPU-s: new TLS\n"
          "connections (full TLS 1.3 handshake, one query for a cached name, close) answered per CPU-second of\n"
          "the system's processes = per core; us/hs: the CPU per such connection; hs ok: connections answered\n"
          "of those opened. DoH err: non-2xx HTTP statuses (h2load does not see DNS rcodes); DoH up/q is a\n"
          "little above 1 on misses: h2load stops with its streams in flight, which were forwarded but are\n"
          "not counted as answered.", file=out)


def print_mixed(results, out):
    """Who answered the mixed scenario's queries, when it ran: the plain
    responder's share of the upstream queries beside the share of cluster
    names sent (they match when every name went where it belongs)."""
    ms = [(n, s["scenarios"]["mixed"]) for n, s in results["systems"].items()
          if s["status"] == "ok" and "mixed" in s.get("scenarios", {})]
    if not ms:
        return
    st = results["settings"]["mixed"]
    print("\nMixed routing (UDP, unique names; %d%% under %s to the plain responder over TCP, the rest over "
          "DoT; median of %d runs)" % (st["cluster_pct"], st["cluster_suffix"], results["settings"]["reps"]),
          file=out)
    row = "%-15s %9s %10s %10s %7s %6s %6s %7s"
    print(row % ("system", "QPS", "DoT q", "TCP q", "TCP %", "up/q", "us/q", "ratio"), file=out)
    for n, sc in ms:
        g = lambda k: med(sc["summary"], k)  # noqa: E731
        share = g("plain_share")
        print(row % (n, fmt(g("qps"), "%.0f"), fmt(g("dot_queries"), "%.0f"), fmt(g("plain_queries"), "%.0f"),
                     fmt(100 * share if share is not None else None, "%.1f"), fmt(g("upstream_queries_per_query")),
                     fmt(g("cpu_us_per_query"), "%.1f"), fmt(g("cpu_ratio"))), file=out)
    skipped = [(n, s["skipped_scenarios"]["mixed"]) for n, s in results["systems"].items()
               if "mixed" in s.get("skipped_scenarios", {})]
    for n, why in skipped:
        print("%-15s skipped: %s" % (n, why), file=out)
    print("TCP %%: the plain responder's share of the upstream queries (want %d); ratio: CPU per query over "
          "both\nresponders' CPU per query in the same runs." % st["cluster_pct"], file=out)


def print_zipf(results, out):
    """The zipf scenario's table, when it ran."""
    zs = [(n, s["scenarios"]["zipf"]) for n, s in results["systems"].items()
          if s["status"] == "ok" and "zipf" in s.get("scenarios", {})]
    if not zs:
        return
    st = zs[0][1]["stream"]
    print("\nZipf workload (UDP, dnsperf -c %d -Q %d, %gs, cold cache of %d MB each; %d queries over %d names, "
          "exponent %g,\n%g%% of names NXDOMAIN (%.1f%% of queries), TTL 5 s - 1 day; %d distinct names asked; "
          "a perfect cache: hit %.1f%%)" % (
              results["settings"]["zipf"]["clients"], st["rate"], st["seconds"], results["settings"]["cache_mb"],
              st["queries"], st["names"], st["exponent"], st["nx_names_pct"], st["nx_queries_pct"],
              st["distinct_names"], 100 * st["ideal_hit_ratio"]), file=out)
    row = "%-15s %8s %6s %6s %9s %8s %6s %6s %6s %8s %8s %6s %6s %7s %7s"
    print(row % ("system", "QPS", "lost", "NX%", "upstream", "prefetch", "hedge", "hit%", "raw%", "up/name",
                 "up/ideal", "us/q", "mach", "p99 ms", "RSS MB"), file=out)
    def pct(v):
        return fmt(100 * v if v is not None else None, "%.1f")

    for n, sc in zs:
        r = sc["runs"][0]
        nx = r["nxdomain"] / r["completed"] if r["completed"] else None
        rss = r["rss_peak_kb"] / 1024.0 if r.get("rss_peak_kb") else None
        print(row % (n, fmt(r["qps"], "%.0f"), fmt(r["lost"], "%d"), pct(nx), fmt(r.get("upstream_queries"), "%d"),
                     fmt(r.get("prefetches"), "%d"), fmt(r.get("hedges"), "%d"), pct(r.get("hit_ratio")),
                     pct(r.get("hit_ratio_raw")), fmt(r.get("upstream_per_distinct"), "%.3f"),
                     fmt(r.get("upstream_per_ideal"), "%.3f"), fmt(r.get("cpu_us_per_query"), "%.1f"),
                     fmt(r.get("machine_cpu_us_per_query"), "%.0f"), fmt(r.get("lat_p99_ms")), fmt(rss, "%.1f")),
              file=out)
    print("hit%: 1 - (upstream queries - prefetches - hedges) / client queries, counted at the upstream;\n"
          "raw%: 1 - upstream / client queries; up/name: (upstream - prefetch - hedge) per distinct name asked;\n"
          "up/ideal: the same over a perfect machine-wide cache's fetches (1.0 = each name once per TTL);\n"
          "prefetch and hedge: dotproxy's own counters (- : the system does not tell); mach: CPU us of the\n"
          "whole machine per answered query (dnsperf and the upstream included).", file=out)


def plot(results, path):
    """A PNG via gnuplot: QPS and CPU/query per system and scenario, and
    p50/p99 latency against offered load. Returns the path or None."""
    if not shutil.which("gnuplot"):
        say("gnuplot not installed: no plot")
        return None
    if not any(sc in THROUGHPUT for sc in results["settings"]["scenarios"]):
        return None  # zipf alone: its table says it all
    d = tempfile.mkdtemp(prefix="dp-plot.")
    scen = [s for s in THROUGHPUT]
    systems = [(n, s) for n, s in results["systems"].items() if s["status"] == "ok"]
    if not systems:
        return None
    with open(os.path.join(d, "thr.dat"), "w") as f:
        for n, s in systems:
            cols = [n]
            for key in ("qps", "cpu_us_per_query"):
                for sc in scen:
                    sm = s["scenarios"].get(sc, {}).get("summary", {}).get(key)
                    cols += ["%g %g %g" % (sm["median"], sm["min"], sm["max"]) if sm else "? ? ?"]
            f.write(" ".join(cols) + "\n")
    lat_plots = []
    for n, s in systems:
        pts = [p for p in s["scenarios"].get("latency", {}).get("points", []) if "summary" in p]
        if pts:
            fn = os.path.join(d, "lat-%s.dat" % n)
            with open(fn, "w") as f:
                for p in pts:
                    f.write("%d %s %s\n" % (p["rate"], fmt(med(p["summary"], "lat_p50_ms"), "%g"),
                                            fmt(med(p["summary"], "lat_p99_ms"), "%g")))
            lat_plots.append((n, fn))
    ceil = med(results.get("upstream", {}).get("ceiling", {}).get("summary", {}), "qps")
    ceil_note = "; upstream alone via dnsperf -m dot: %.0f" % ceil if ceil else ""
    m = results["machine"]
    title = "dotproxy bench %s - %s, %d CPUs, upstream %s" % (
        results["started"][:16], m["cpu_model"], m["nproc"], results["settings"]["upstream"])
    g = ["set terminal pngcairo size 1400,1000 font ',10'", "set output '%s'" % path,
         "set datafile missing '?'", "set multiplot layout 2,2 title \"%s\"" % title,
         "set style data histogram", "set style histogram errorbars gap 1 lw 1",
         "set style fill solid 0.7 border -1", "set key top right", "set grid ytics", "set yrange [0:*]",
         "set title 'Throughput (QPS, median, bars min-max)%s'" % ceil_note,
         "plot '%s/thr.dat' using 2:3:4:xtic(1) title 'udp-miss', '' using 5:6:7 title 'udp-hit', "
         "'' using 8:9:10 title 'tcp-miss'" % d,
         "set title 'CPU time per answered query (us)'",
         "plot '%s/thr.dat' using 11:12:13:xtic(1) title 'udp-miss', '' using 14:15:16 title 'udp-hit', "
         "'' using 17:18:19 title 'tcp-miss'" % d]
    if lat_plots:
        g += ["set style data linespoints", "unset style", "set xlabel 'offered load (QPS)'",
              "set ylabel 'ms'", "set logscale y", "set yrange [*:*]", "set key top left",
              "set title 'p50 latency vs offered load (UDP, cache miss)'",
              "plot " + ", ".join("'%s' using 1:2 with linespoints title '%s'" % (fn, n) for n, fn in lat_plots),
              "set title 'p99 latency vs offered load (UDP, cache miss)'",
              "plot " + ", ".join("'%s' using 1:3 with linespoints title '%s'" % (fn, n) for n, fn in lat_plots)]
    g.append("unset multiplot")
    r = subprocess.run(["gnuplot"], input="\n".join(g).encode(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    shutil.rmtree(d, ignore_errors=True)
    if r.returncode != 0:
        say("gnuplot failed: %s" % r.stdout.decode(errors="replace")[-500:])
        return None
    return path


# ---- main -------------------------------------------------------------------------

def parse_args(argv):
    ap = argparse.ArgumentParser(description="dotproxy benchmark suite on loopback (see bench/README.md)")
    ap.add_argument("--smoke", action="store_true",
                    help="dotproxy + synthetic responder only, udp-miss, 3 x 3 s, then the regression gate "
                         "against bench/baseline-smoke.json; under 60 s")
    ap.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated systems (default %(default)s)")
    ap.add_argument("--scenarios", default=",".join(DEFAULT_SCENARIOS),
                    help="comma-separated scenarios (default %(default)s; also: zipf, mixed, "
                         "dot-in-miss, dot-in-hit, doh-in-miss, doh-in-hit)")
    ap.add_argument("--reps", type=int, help="measured repetitions per scenario and load (default 3)")
    ap.add_argument("--duration", type=float, help="seconds per measured throughput run (default 5; smoke 3)")
    ap.add_argument("--warmup", type=float, help="seconds of the warm-up run before each scenario (default 2; smoke 1.5)")
    ap.add_argument("--latency-duration", type=float, default=4,
                    help="seconds per fixed-load latency run (default %(default)s)")
    ap.add_argument("--rates", default="5000,10000,20000,30000",
                    help="offered loads in QPS of the latency scenario (default %(default)s)")
    ap.add_argument("--clients", type=int, default=20, help="dnsperf -c (default %(default)s)")
    ap.add_argument("--outstanding", type=int, default=1000, help="dnsperf -q (default %(default)s)")
    ap.add_argument("--query-timeout", type=int, default=3,
                    help="dnsperf -t: seconds before a query counts as lost (default %(default)s)")
    ap.add_argument("--max-qps-guess", type=int, default=250000,
                    help="unique names generated per second of warm-up; measured runs are sized from the "
                         "warm-up's rate (default %(default)s)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(),
                    help="threads (kresd: processes) of each system under test; stubby has one "
                         "(default: online CPUs, %(default)s)")
    ap.add_argument("--cache-mb", type=int, default=64,
                    help="cache memory of every system, MB: dotproxy --cache-size, unbound msg (1/3) and rrset "
                         "(2/3) caches, kresd cache.size, dnsdist packet cache entries at %d bytes each "
                         "(default %%(default)s)" % DNSDIST_ENTRY_BYTES)
    ap.add_argument("--zipf-seconds", type=float, default=60,
                    help="zipf: seconds of queries at --zipf-rate (default %(default)s; shorter for a smoke check)")
    ap.add_argument("--zipf-rate", type=int, default=20000, help="zipf: dnsperf -Q (default %(default)s)")
    ap.add_argument("--zipf-clients", type=int, default=200,
                    help="zipf: dnsperf -c, one source port each (default %(default)s)")
    ap.add_argument("--zipf-names", type=int, default=1000000, help="zipf: names to draw from (default %(default)s)")
    ap.add_argument("--zipf-exponent", type=float, default=0.95, help="zipf: exponent (default %(default)s)")
    ap.add_argument("--zipf-nx-pct", type=float, default=5, help="zipf: percent of names that do not exist "
                    "(default %(default)s)")
    ap.add_argument("--zipf-seed", type=int, default=13, help="zipf: seed of the stream (default %(default)s)")
    ap.add_argument("--mixed-cluster-pct", type=int, default=50,
                    help="mixed: percent of the names under %s, forwarded over plain TCP (default %%(default)s)"
                    % CLUSTER_SUFFIX)
    ap.add_argument("--enc-rate", type=int, default=5000,
                    help="dot-in-*/doh-in-*: the fixed offered load (queries per second) of their latency runs "
                         "(default %(default)s)")
    ap.add_argument("--doh-clients", type=int, default=20,
                    help="doh-in-*: h2load processes, one HTTP/2 connection each (default %(default)s)")
    ap.add_argument("--doh-streams", type=int, default=50,
                    help="doh-in-*: h2load -m, concurrent streams per connection (default %(default)s: with 20 "
                         "clients as many queries in flight as dnsperf -q 1000)")
    ap.add_argument("--handshake-rate", type=int, default=500,
                    help="dot-in-*/doh-in-*: new TLS connections per second of the handshake measurement "
                         "(default %(default)s)")
    ap.add_argument("--handshake-seconds", type=float, default=4,
                    help="seconds per handshake run (default %(default)s)")
    ap.add_argument("--handshake-workers", type=int, default=2,
                    help="processes of the Python DoT handshake client (default %(default)s)")
    ap.add_argument("--upstream", choices=("responder", "unbound"), default="responder",
                    help="DoT upstream: tools/dot-responder, or unbound answering every name from a "
                         "redirect local-zone (default %(default)s)")
    ap.add_argument("--upstream-threads", type=int, default=1, help="threads of the upstream (default %(default)s)")
    ap.add_argument("--pin-upstream", type=int, metavar="CPU", help="pin the upstream to this CPU (default: not pinned)")
    ap.add_argument("--no-ceiling", action="store_true", help="skip the upstream's own ceiling (dnsperf -m dot)")
    ap.add_argument("--build-dir", default=os.path.join(ROOT, "build"),
                    help="where dotproxy and tools/dot-responder are built (default %(default)s)")
    ap.add_argument("--dotproxy", help="dotproxy binary (default BUILD_DIR/dotproxy)")
    ap.add_argument("--base-dotproxy", help="the binary the dotproxy-base variant runs (an older build, "
                    "to compare before and after a change in one run)")
    ap.add_argument("--responder", help="dot-responder binary (default BUILD_DIR/tools/dot-responder)")
    ap.add_argument("--out", help="output directory (default bench/out/TIMESTAMP, or TIMESTAMP-smoke)")
    ap.add_argument("--json", help="also write the results JSON to this file")
    ap.add_argument("--no-plot", action="store_true", help="no PNG")
    ap.add_argument("--compare", metavar="BASELINE.json", help="run the regression gate against this baseline")
    ap.add_argument("--no-gate", action="store_true", help="no regression gate, not even in --smoke")
    ap.add_argument("--gate", default=compare.DEFAULT_GATE,
                    help="comma-separated metrics the gate checks (default %(default)s)")
    ap.add_argument("--threshold", type=float,
                    help="percent a gated metric may be worse than the baseline (default %g; smoke %g)" % (
                        compare.DEFAULT_THRESHOLD, SMOKE_THRESHOLD))
    ap.add_argument("--wait-quiet", type=int, default=0, metavar="SECONDS",
                    help="before starting, wait up to SECONDS for other work on the machine to stop "
                         "(below 0.25 CPUs; default: do not wait)")
    ap.add_argument("--lock", default="/tmp/dp-bench.lock", help="flock held for the whole run (default %(default)s)")
    ap.add_argument("--report", metavar="RESULTS.json",
                    help="run nothing: print the table of an earlier run and plot it into --out")
    a = ap.parse_args(argv)
    if a.smoke:
        a.systems, a.scenarios, a.upstream = "dotproxy", "udp-miss", "responder"
        if a.compare is None:
            a.compare = os.path.join(HERE, "baseline-smoke.json")
    a.reps = a.reps or 3
    a.duration = a.duration or (3 if a.smoke else 5)
    a.warmup = a.warmup or (1.5 if a.smoke else 2)
    if a.threshold is None:
        a.threshold = SMOKE_THRESHOLD if a.smoke else compare.DEFAULT_THRESHOLD
    if a.no_gate:
        a.compare = None
    a.systems = [s for s in a.systems.split(",") if s]
    a.scenarios = [s for s in a.scenarios.split(",") if s]
    for s in a.systems:
        if s not in SYSTEMS and s not in VARIANTS:
            ap.error("unknown system %s (known: %s)" % (s, ", ".join(SYSTEMS + tuple(VARIANTS))))
    for s in a.scenarios:
        if s not in SCENARIOS:
            ap.error("unknown scenario %s (known: %s)" % (s, ", ".join(SCENARIOS)))
    a.rates = [int(r) for r in a.rates.split(",") if r]
    if "zipf" in a.scenarios and a.upstream != "responder":
        ap.error("the zipf scenario needs --upstream responder (its names set TTLs and NXDOMAIN, and the "
                 "responder counts the upstream queries)")
    if "mixed" in a.scenarios and a.upstream != "responder":
        ap.error("the mixed scenario needs --upstream responder (the responders count who got which query)")
    if not 0 <= a.mixed_cluster_pct <= 100:
        ap.error("--mixed-cluster-pct must be 0..100")
    if "zipf" in a.scenarios and (a.zipf_seconds <= 0 or a.zipf_rate <= 0 or a.zipf_names < 1
                                  or not 0 <= a.zipf_nx_pct <= 100):
        ap.error("bad --zipf-* value")
    a.dotproxy = os.path.abspath(a.dotproxy or os.path.join(a.build_dir, "dotproxy"))
    a.responder = os.path.abspath(a.responder or os.path.join(a.build_dir, "tools", "dot-responder"))
    if not a.out:
        a.out = os.path.join(HERE, "out", time.strftime("%Y%m%d-%H%M%S") + ("-smoke" if a.smoke else ""))
    a.out = os.path.abspath(a.out)
    return a


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    a = parse_args(argv)
    if a.report:
        with open(a.report) as f:
            results = json.load(f)
        print_table(results)
        if not a.no_plot:
            os.makedirs(a.out, exist_ok=True)
            png = plot(results, os.path.join(a.out, "bench.png"))
            if png:
                say("plot: %s" % png)
        return 0
    if "dotproxy-base" in a.systems and not (a.base_dotproxy and os.access(a.base_dotproxy, os.X_OK)):
        print("run.py: the dotproxy-base variant needs --base-dotproxy BINARY", file=sys.stderr)
        return 2
    if any(is_dotproxy(n) for n in a.systems) and not os.access(a.dotproxy, os.X_OK):
        print("run.py: %s not found; build first: cmake -S . -B build -G Ninja && cmake --build build" % a.dotproxy,
              file=sys.stderr)
        return 2
    tools = ("dnsperf", "openssl") + (("h2load",) if any(sc in ENCRYPTED for sc in a.scenarios) else ())
    for tool in tools:
        if not shutil.which(tool):
            print("run.py: %s not installed (sh scripts/install-deps.sh)" % tool, file=sys.stderr)
            return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, lambda *_: sys.exit(130))  # even where started with SIGINT ignored
    os.makedirs(a.out, exist_ok=True)

    lockf = open(a.lock, "a")
    lock_wait = time.monotonic()
    try:
        fcntl.flock(lockf, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        say("waiting for %s (another benchmark is running)" % a.lock)
        fcntl.flock(lockf, fcntl.LOCK_EX)
    lock_wait = time.monotonic() - lock_wait

    quiet = None
    if a.wait_quiet:
        quiet = wait_quiet(a.wait_quiet)
        say("other work on the machine: %.2f CPUs" % quiet)
    b = Bench(a)
    results = {"schema": SCHEMA, "mode": "smoke" if a.smoke else "full",
               "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": ["bench/run.py"] + argv,
               "machine": machine_info(), "versions": versions(a),
               "settings": {"clients": a.clients, "outstanding": a.outstanding, "duration_s": a.duration,
                            "warmup_s": a.warmup, "latency_duration_s": a.latency_duration, "reps": a.reps,
                            "rates": a.rates, "threads": a.threads, "upstream": a.upstream,
                            "upstream_threads": a.upstream_threads, "pin_upstream": a.pin_upstream,
                            "query_timeout_s": a.query_timeout, "systems": a.systems, "scenarios": a.scenarios,
                            "cache_mb": a.cache_mb, "zipf": {
                                "seconds": a.zipf_seconds, "rate": a.zipf_rate, "clients": a.zipf_clients,
                                "names": a.zipf_names, "exponent": a.zipf_exponent, "nx_pct": a.zipf_nx_pct,
                                "seed": a.zipf_seed},
                            "mixed": {"cluster_pct": a.mixed_cluster_pct, "cluster_suffix": CLUSTER_SUFFIX,
                                      "cluster_zone": CLUSTER_ZONE},
                            "encrypted": {"rate": a.enc_rate, "doh_clients": a.doh_clients,
                                          "doh_streams": a.doh_streams, "handshake_rate": a.handshake_rate,
                                          "handshake_seconds": a.handshake_seconds,
                                          "handshake_workers": a.handshake_workers}},
               "upstream": {}, "systems": {}}
    results["machine"]["other_cpus_at_start"] = quiet
    results["lock_wait_s"] = round(lock_wait, 1)
    status = 0
    try:
        b.make_ca()
        b.start_upstream()
        results["upstream"] = {"kind": a.upstream, "port": b.uport, "threads": a.upstream_threads}
        if "mixed" in a.scenarios:
            b.start_plain()
            results["upstream"]["plain"] = {"kind": "responder --listen-tcp", "port": b.pport,
                                            "threads": a.upstream_threads, "zone": CLUSTER_ZONE}
        ceiling_qps = None
        if not a.no_ceiling:
            def check_upstream():
                if not all(d.alive() for d in b.upstream):
                    raise BenchError("upstream died:\n" + b.upstream[0].tail())
            c = run_throughput(b, "upstream", b.upstream_pids(), b.uport, "ceiling", None, None,
                               check_upstream, mode="dot")
            results["upstream"]["ceiling"] = c
            ceiling_qps = med(c["summary"], "qps")
        for name in a.systems:
            say("---- %s" % name)
            results["systems"][name] = run_system(b, name, ceiling_qps)
            for d in b.upstream:
                if not d.alive():
                    raise BenchError("upstream died:\n%s" % d.tail())
    except BenchError as e:
        say("ERROR: %s" % e)
        results["error"] = str(e)
        status = 2
    finally:
        stop_all()
        shutil.rmtree(b.tmp, ignore_errors=True)
    results["machine"]["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    results["duration_s"] = round(time.monotonic() - T0, 1)
    results["metrics"] = metrics(results)

    print_table(results)
    if not a.no_plot and not a.smoke and status == 0:
        png = plot(results, os.path.join(a.out, "bench.png"))
        if png:
            results["plot"] = png
    dp = results["systems"].get("dotproxy")
    if dp and dp["status"] != "ok" and status == 0:
        status = 2
    if a.compare and status == 0:
        with open(a.compare) as f:
            base = json.load(f)
        gates = [g for g in a.gate.split(",") if g]
        ok, rows = compare.check(base, results, gates, a.threshold)
        results["gate"] = {"baseline": os.path.relpath(a.compare, ROOT), "threshold_pct": a.threshold,
                           "results": rows, "passed": ok}
        print()
        compare.print_rows(rows)
        if compare.responder_changed(base, results):
            results["gate"]["warning"] = "tools/responder/ differs from the baseline's"
            print("warning: tools/responder/ differs from the baseline's; ratios to the responder "
                  "are not comparable: refresh the baseline")
        print("gate: %s" % ("PASS" if ok else "FAIL"))
        status = 0 if ok else (2 if any(r.get("error") for r in rows) else 1)

    path = os.path.join(a.out, "results.json")
    for p in [path] + ([a.json] if a.json else []):
        with open(p, "w") as f:
            json.dump(results, f, indent=1, sort_keys=False)
            f.write("\n")
    say("results: %s%s (%.0fs)" % (path, (", plot: " + results["plot"]) if results.get("plot") else "",
                                     time.monotonic() - T0))
    return status


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        stop_all()

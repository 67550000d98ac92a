#!/usr/bin/python3
"""hsflood.py - established clients' latency during a flood of new TLS handshakes.

    bench/hsflood.py                       R = 0, 500, 1000 new connections/s, 3 repetitions
    bench/hsflood.py --rates 0,1000 --reps 1 --duration 5    quicker
    bench/hsflood.py --help                every option

Checks ISSUE-NOTES' target for issue 16: "During a flood of 1,000 new TLS
handshakes per second, established clients' p99 stays under 10 ms."

One run makes bench/run.py's throwaway CA, starts tools/dot-responder as the
DoT upstream and dotproxy with --listen-tls and --listen-https (one
certificate) and --threads 2, warms the cache with the established clients'
names, then for each repetition and each flood rate R:

  - the flood: tools/tls-flood opens R new DoT connections a second,
    evenly spaced, each a full TLS handshake (no session kept, no ticket
    asked for: dotproxy's tls_resumed stays 0), one query for a cached name,
    its answer, close (--flood-tool h2load: the same against the DoH
    listener, R/100 connections every 10 ms, one GET each); it starts LEAD
    seconds before the measurement and ends after it;
  - the established clients, measured meanwhile: dnsperf -m dot over
    --est-clients TLS connections opened once, at a fixed --est-qps, on the
    cached names (per-query latency from dnsperf -v), and h2load over one
    established HTTP/2 connection at --doh-qps (per-request latency from
    h2load --log-file);
  - around the measurement window: dotproxy's counters (/metrics: handshakes
    done, resumed, deferred, connections accepted), the CPU time of
    dotproxy (per thread too), of each load generator and of the machine,
    and the run-queue wait of dotproxy's and dnsperf's threads.

Each rate's values are medians over the repetitions (rates interleaved within
a repetition, so drift of the machine's load hits all alike). A table goes to
the terminal and everything to bench/out/hsflood-TIMESTAMP.json. The run holds
the flock /tmp/dp-bench.lock that bench/run.py holds, so no two benchmarks
overlap; every child process is bounded in time. bench/README.md documents it.
"""
import argparse
import base64
import fcntl
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True
import run  # noqa: E402  (bench/run.py: CA, upstream, daemons, dnsperf parsing)
from run import Daemon, BenchError, say, cpu_seconds, free_port, machine_cpu_seconds  # noqa: E402

import dns.message  # noqa: E402
import dns.query  # noqa: E402

SCHEMA = "dotproxy-hsflood/1"
FLOOD_NAME = "flood.example.com"  # the flood's one GET, a cached name
PERIOD_S = 0.01  # --flood-tool h2load opens its connections in batches this often
EVENTS = ("tls_handshakes", "tls_resumed", "tls_handshakes_deferred", "tls_handshake_failures",
          "tls_handshake_timeouts", "tls_accepted", "https_accepted", "https_requests", "tls_queries",
          "tcp_refused", "tcp_evicted")
TARGET_P99_MS = 10.0


# ---- dotproxy's counters and CPU ---------------------------------------------

def scrape(port):
    """dotproxy's /metrics: {event: value} of dotproxy_events_total, plus
    the open connections gauge as "tcp_open"."""
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as r:
        text = r.read().decode()
    ev = {m.group(1): int(m.group(2))
          for m in re.finditer(r'^dotproxy_events_total\{event="(\w+)"\} (\d+)', text, re.M)}
    m = re.search(r"^dotproxy_tcp_connections (\d+)", text, re.M)
    ev["tcp_open"] = int(m.group(1)) if m else None
    return ev


def thread_cpu(pid):
    """{thread name + tid: CPU seconds} of every live thread of PID."""
    tck = os.sysconf("SC_CLK_TCK")
    out = {}
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/stat" % (pid, tid)) as f:
                s = f.read()
        except OSError:
            continue
        comm = s[s.index("(") + 1:s.rindex(")")]
        f = s.rsplit(")", 1)[1].split()
        out["%s/%s" % (comm, tid)] = (int(f[11]) + int(f[12])) / tck
    return out


def user_sys(pid):
    """(user, system) CPU seconds of PID, every thread (/proc/PID/stat)."""
    with open("/proc/%d/stat" % pid) as f:
        v = f.read().rsplit(")", 1)[1].split()
    tck = os.sysconf("SC_CLK_TCK")
    return int(v[11]) / tck, int(v[12]) / tck


def thread_sched(pid):
    """(run, wait) seconds summed over PID's live threads (/proc/PID/task/
    TID/schedstat): time on a CPU, and time runnable but waiting for one."""
    run_ns = wait_ns = 0
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/schedstat" % (pid, tid)) as f:
                v = f.read().split()
        except OSError:
            continue
        run_ns += int(v[0])
        wait_ns += int(v[1])
    return run_ns / 1e9, wait_ns / 1e9


def cpu_or_none(pid):
    try:
        return cpu_seconds(pid)
    except OSError:
        return None


# ---- the clients ----------------------------------------------------------------

def doh_uri(port, name):
    """An RFC 8484 GET URI for NAME/A, DNS ID 0, unpadded base64url."""
    q = dns.message.make_query(name, "A")
    q.id = 0
    b64 = base64.urlsafe_b64encode(q.to_wire()).rstrip(b"=").decode()
    return "https://127.0.0.1:%d/dns-query?dns=%s" % (port, b64)


def lower(nice):
    """In a child: run at NICE, its session's scheduling group too (with
    autogroup, as on most distributions, a nice value only ranks a process
    within its session's group; /proc/self/autogroup ranks the group)."""
    os.nice(nice)
    try:
        with open("/proc/self/autogroup", "w") as f:
            f.write(str(nice))
    except OSError:
        pass


class Child:
    """A load generator: output to a file, killed if it outlives its bound."""

    def __init__(self, argv, out, nice=0):
        self.argv, self.out = argv, out
        self.f = open(out, "wb")
        self.p = subprocess.Popen(argv, stdout=self.f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  start_new_session=bool(nice), preexec_fn=(lambda: lower(nice)) if nice else None)
        self.rusage = None
        self.sched = (0.0, 0.0)  # (run, run-queue wait) seconds, see thread_sched

    def cpu(self):
        return cpu_or_none(self.p.pid) if self.rusage is None else None

    def wait(self, bound_s):
        """Wait up to BOUND_S; kill after that. Returns (status, CPU seconds)."""
        deadline = time.monotonic() + bound_s
        while time.monotonic() < deadline:
            try:  # the last reading before it exits
                self.sched = thread_sched(self.p.pid)
            except OSError:
                pass
            pid, status, ru = os.wait4(self.p.pid, os.WNOHANG)
            if pid:
                self.rusage = ru
                self.p.returncode = os.waitstatus_to_exitcode(status)
                break
            time.sleep(0.05)
        else:
            self.p.kill()
            _, status, self.rusage = os.wait4(self.p.pid, 0)
            self.p.returncode = "killed after %gs" % bound_s
        self.f.close()
        return self.p.returncode, self.rusage.ru_utime + self.rusage.ru_stime

    def text(self):
        with open(self.out, "rb") as f:
            return f.read().decode(errors="replace")


def flood_argv(rate, seconds, uri):
    """h2load opening RATE connections a second for SECONDS, PERIOD_S apart
    in batches; -n = -c: one request per connection, which it then closes."""
    batch = max(1, round(rate * PERIOD_S))
    total = int(rate * seconds)
    return ["h2load", "-t", "1", "-c", str(total), "-n", str(total), "-m", "1",
            "-r", str(batch), "--rate-period", "%dms" % round(PERIOD_S * 1000), "-T", "5", uri]


def tls_flood_argv(tool, port, rate, seconds):
    """tools/tls-flood opening RATE DoT connections a second, evenly, for
    SECONDS: a full handshake, one query for FLOOD_NAME, its answer, close."""
    return [tool, "--connect", "127.0.0.1:%d" % port, "--rate", str(rate), "--duration", "%g" % seconds,
            "--name", FLOOD_NAME]


def parse_tls_flood(text):
    """tls-flood's counters line: {opened, handshakes, resumed, ...}."""
    m = re.search(r"^opened=.*$", text, re.M)
    return {k: float(v) if "." in v else int(v) for k, v in re.findall(r"(\w+)=([\d.]+)", m.group(0))} if m else {}


def parse_h2load(text):
    """h2load's summary: requests done/succeeded/failed/errored, 2xx count."""
    r = {}
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                  r"(\d+) errored, (\d+) timeout", text)
    if m:
        r.update(zip(("total", "started", "done", "succeeded", "failed", "errored", "timeout"),
                     map(int, m.groups())))
    m = re.search(r"status codes: (\d+) 2xx", text)
    r["2xx"] = int(m.group(1)) if m else None
    m = re.search(r"finished in ([\d.]+)(m?s)", text)
    if m:
        r["finished_s"] = float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)
    return r


def pct(sorted_ms, q):
    n = len(sorted_ms)
    return sorted_ms[max(0, -(-q * n // 100) - 1)] if n else None


def parse_h2load_log(path):
    """Per-request latency (ms) percentiles from h2load --log-file lines
    "start_us<TAB>status<TAB>duration_us"; failed streams (status -1 or not 2xx) counted."""
    lat, bad = [], 0
    with open(path) as f:
        for line in f:
            p = line.split("\t")
            if len(p) < 3:
                continue
            if p[1] != "200":
                bad += 1
                continue
            lat.append(int(p[2]) / 1000.0)
    lat.sort()
    return {"samples": len(lat), "failed": bad, "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99),
            "max_ms": lat[-1] if lat else None}


# ---- one measurement ----------------------------------------------------------

def measure(ctx, rate):
    """One window of --duration seconds at flood rate RATE; returns its values."""
    a = ctx.args
    tmp = ctx.bench.tmp
    flood = None
    if rate:
        # the flood runs LEAD seconds before the window and a second after it
        secs = a.lead + a.duration + 1.5
        argv = (tls_flood_argv(a.tls_flood, ctx.tport, rate, secs) if a.flood_tool == "tls-flood"
                else flood_argv(rate, secs, ctx.flood_uri))
        flood = Child(argv, os.path.join(tmp, "flood.out"), nice=a.flood_nice)
        time.sleep(a.lead)
        if flood.p.poll() is not None:
            raise BenchError("h2load (flood) exited early:\n" + flood.text()[-1500:])
    m0, t0 = scrape(ctx.mport), time.monotonic()
    c0, th0, mc0 = cpu_seconds(ctx.dp.pid), thread_cpu(ctx.dp.pid), machine_cpu_seconds()
    s0, us0 = thread_sched(ctx.dp.pid), user_sys(ctx.dp.pid)
    u0, f0 = cpu_seconds(ctx.bench.upstream[0].pid), flood.cpu() if flood else None
    est = Child(["dnsperf", "-s", "127.0.0.1", "-p", str(ctx.tport), "-m", "dot", "-d", ctx.names,
                 "-c", str(a.est_clients), "-q", "100", "-Q", str(a.est_qps), "-l", "%g" % a.duration,
                 "-t", "3", "-v"], os.path.join(tmp, "dnsperf.out"))
    doh = None
    if a.doh_qps:
        doh_log = os.path.join(tmp, "doh-est.log")
        if os.path.exists(doh_log):  # h2load appends
            os.unlink(doh_log)
        doh = Child(["h2load", "-t", "1", "-c", "1", "-m", "10", "--rps", str(a.doh_qps),
                     "-D", "%g" % a.duration, "--log-file", doh_log, ctx.est_uri],
                    os.path.join(tmp, "doh-est.out"))
    est_status, est_cpu = est.wait(a.duration + 20)
    if doh:
        doh_status, doh_cpu = doh.wait(10)
    m1, t1 = scrape(ctx.mport), time.monotonic()
    c1, th1, mc1 = cpu_seconds(ctx.dp.pid), thread_cpu(ctx.dp.pid), machine_cpu_seconds()
    s1, us1 = thread_sched(ctx.dp.pid), user_sys(ctx.dp.pid)
    u1, f1 = cpu_seconds(ctx.bench.upstream[0].pid), flood.cpu() if flood else None
    win = t1 - t0
    r = {"rate": rate, "window_s": round(win, 3)}
    d = {k: m1.get(k, 0) - m0.get(k, 0) for k in EVENTS}
    r["events"] = d
    r["tcp_open_end"] = m1.get("tcp_open")
    r["handshakes_per_s"] = round(d["tls_handshakes"] / win, 1)
    r["https_accepted_per_s"] = round(d["https_accepted"] / win, 1)
    r["dotproxy_cpu_s"] = round(c1 - c0, 3)
    r["dotproxy_cpus"] = round((c1 - c0) / win, 3)
    # user: TLS and DNS work; system: the kernel's socket work (ticks)
    r["dotproxy_user_cpus"] = round((us1[0] - us0[0]) / win, 3)
    r["dotproxy_sys_cpus"] = round((us1[1] - us0[1]) / win, 3)
    r["dotproxy_threads_cpus"] = {k: round((th1[k] - th0[k]) / win, 3) for k in th1 if k in th0
                                  and th1[k] - th0[k] > 0}
    # time dotproxy's threads were runnable but got no CPU (summed over threads)
    r["dotproxy_runq_wait_s_per_s"] = round((s1[1] - s0[1]) / win, 3)
    r["upstream_cpus"] = round((u1 - u0) / win, 3)
    r["machine_busy_cpus"] = round((mc1[0] - mc0[0]) / win, 2)
    r["machine_irq_cpus"] = round((mc1[1] - mc0[1]) / win, 2)
    r["flood_cpus"] = round((f1 - f0) / win, 3) if f0 is not None and f1 is not None else None
    r["dnsperf_cpus"] = round(est_cpu / win, 3)
    # time dnsperf's threads were runnable but got no CPU (up to its last
    # 50 ms): its latencies include that
    r["dnsperf_runq_wait_s_per_s"] = round(est.sched[1] / win, 3)
    dp = run.parse_dnsperf(est.text().encode())
    if dp is None or est_status != 0:
        raise BenchError("dnsperf failed (%s):\n%s" % (est_status, est.text()[-1500:]))
    r["dot"] = {k: dp[k] for k in ("sent", "completed", "lost", "timeouts", "qps", "errors", "lat_samples",
                                   "lat_p50_ms", "lat_p90_ms", "lat_p99_ms", "lat_p999_ms", "lat_max_ms")}
    if doh:
        r["doh"] = parse_h2load_log(doh_log)
        r["doh"].update(status=doh_status, cpus=round(doh_cpu / win, 3), summary=parse_h2load(doh.text()))
        r["doh_h2load_cpus"] = r["doh"]["cpus"]
    if flood:
        fs, fcpu = flood.wait(a.duration + 30)
        if a.flood_tool == "tls-flood":
            r["flood"] = parse_tls_flood(flood.text())
            r["flood"]["argv"] = flood.argv
        else:
            r["flood"] = parse_h2load(flood.text())
            r["flood"]["argv"] = flood.argv[:-1] + ["URI"]
        r["flood"].update(tool=a.flood_tool, status=fs, cpu_s_total=round(fcpu, 3))
    # busy and interrupt time: softirq work done in a process's context is
    # charged to it too
    other = (mc1[0] - mc0[0]) + (mc1[1] - mc0[1]) - (c1 - c0) - (u1 - u0) - est_cpu - (doh_cpu if doh else 0) \
        - ((f1 - f0) if flood and f0 is not None and f1 is not None else 0)
    r["other_cpus"] = round(other / win, 2)
    return r


# ---- setup -------------------------------------------------------------------

class Ctx:
    pass


def start(a):
    """CA, upstream, dotproxy; returns the context."""
    ctx = Ctx()
    ctx.args = a
    # bench/run.py's Bench does the CA and the upstream; it reads these settings
    ra = argparse.Namespace(out=a.out, upstream="responder", responder=a.responder, upstream_threads=1,
                            pin_upstream=None, scenarios=[])
    ctx.bench = b = run.Bench(ra)
    b.make_ca()
    b.start_upstream()
    ctx.port, ctx.tport, ctx.hport, ctx.mport = (free_port() for _ in range(4))
    argv = [a.dotproxy, "--listen", "127.0.0.1:%d" % ctx.port, "--listen-tls", "127.0.0.1:%d" % ctx.tport,
            "--listen-https", "127.0.0.1:%d" % ctx.hport, "--cert", b.cert, "--key", b.key,
            "--upstream", "127.0.0.1:%d#%s" % (b.uport, run.UNAME), "--ca-file", b.ca,
            "--threads", str(a.threads), "--metrics", "127.0.0.1:%d" % ctx.mport, "--log-level", "info"]
    if a.dotproxy_rt:
        # diagnostic: dotproxy never waits for a CPU behind the load generators
        # or other work, so what remains is its own loop's delay
        argv = ["chrt", "-f", "1"] + argv
    ctx.dp_argv = argv
    ctx.dp = Daemon("dotproxy", argv, os.path.join(b.logs, "dotproxy.log"))
    run.wait_ready([ctx.dp], ctx.port)
    # the established clients' names, and the flood's, answered from the cache
    ctx.names = os.path.join(b.tmp, "names.txt")
    names = ["est%d.example.com" % i for i in range(a.names)]
    with open(ctx.names, "w") as f:
        f.write("".join("%s A\n" % n for n in names))
    for n in names + [FLOOD_NAME]:
        dns.query.udp(dns.message.make_query(n, "A"), "127.0.0.1", port=ctx.port, timeout=2)
    ctx.flood_uri = doh_uri(ctx.hport, FLOOD_NAME)
    ctx.est_uri = doh_uri(ctx.hport, names[0])
    # warm-up over the real transports: the DoT answers and one DoH connection
    w = Child(["dnsperf", "-s", "127.0.0.1", "-p", str(ctx.tport), "-m", "dot", "-d", ctx.names,
               "-c", str(a.est_clients), "-Q", str(a.est_qps), "-l", "2", "-t", "3"],
              os.path.join(b.tmp, "warm.out"))
    if w.wait(25)[0] != 0:
        raise BenchError("warm-up dnsperf failed:\n" + w.text()[-1500:])
    w = Child(["h2load", "-c", "1", "-n", "10", ctx.flood_uri], os.path.join(b.tmp, "warm2.out"))
    w.wait(20)
    if parse_h2load(w.text()).get("2xx") != 10:
        raise BenchError("warm-up h2load did not get 10 x 200:\n" + w.text()[-1500:])
    return ctx



# ---- results -------------------------------------------------------------------

# (column, key path, format) of the table, medians over the repetitions
COLUMNS = (("R/s", ("rate",), "%d"), ("hs/s", ("handshakes_per_s",), "%.0f"),
           ("resumed", ("events", "tls_resumed"), "%d"), ("deferred", ("events", "tls_handshakes_deferred"), "%d"),
           ("dp CPUs", ("dotproxy_cpus",), "%.2f"), ("dp user", ("dotproxy_user_cpus",), "%.2f"),
           ("dp sys", ("dotproxy_sys_cpus",), "%.2f"), ("flood CPUs", ("flood_cpus",), "%.2f"),
           ("other CPUs", ("other_cpus",), "%.2f"), ("dp runq", ("dotproxy_runq_wait_s_per_s",), "%.3f"),
           ("dnsperf runq", ("dnsperf_runq_wait_s_per_s",), "%.3f"),
           ("DoT p50", ("dot", "lat_p50_ms"), "%.2f"), ("DoT p99", ("dot", "lat_p99_ms"), "%.2f"),
           ("DoT max", ("dot", "lat_max_ms"), "%.1f"), ("DoT lost", ("dot", "lost"), "%d"),
           ("DoH p50", ("doh", "p50_ms"), "%.2f"), ("DoH p99", ("doh", "p99_ms"), "%.2f"),
           ("DoH max", ("doh", "max_ms"), "%.1f"))


def get(r, path):
    for k in path:
        if not isinstance(r, dict) or r.get(k) is None:
            return None
        r = r[k]
    return r


def medians(runs):
    """{column: {median, min, max}} over the runs of one rate."""
    out = {}
    for col, path, _ in COLUMNS:
        v = [get(r, path) for r in runs if get(r, path) is not None]
        if v:
            out[col] = {"median": statistics.median(v), "min": min(v), "max": max(v)}
    return out


def print_table(summary):
    cols = [c for c, _, _ in COLUMNS]
    print("medians over repetitions (ms for latency; CPUs = CPU seconds per second)")
    print("  ".join("%10s" % c for c in cols))
    for rate, s in summary.items():
        cells = []
        for col, _, fmt in COLUMNS:
            cells.append("%10s" % ((fmt % s[col]["median"]) if col in s else "-"))
        print("  ".join(cells))
    for v in verdicts(summary):
        print("R=%d: established p99 (worse of DoT and DoH) median %.2f ms, worst repetition %.2f ms: "
              "target < %g ms %s" % (v["rate"], v["p99_median_ms"], v["p99_worst_ms"], TARGET_P99_MS,
                                     "MET" if v["met"] else "MISSED"))


def verdicts(summary):
    """The target's check for each rate of at least 1,000/s: the worse of the
    DoT and DoH p99 medians below TARGET_P99_MS."""
    out = []
    for rate, s in summary.items():
        p99 = [s[c] for c in ("DoT p99", "DoH p99") if c in s]
        if int(rate) >= 1000 and p99:
            med = max(v["median"] for v in p99)
            out.append({"rate": int(rate), "p99_median_ms": med, "p99_worst_ms": max(v["max"] for v in p99),
                        "met": med < TARGET_P99_MS})
    return out


# ---- main --------------------------------------------------------------------------

def parse_args(argv):
    ap = argparse.ArgumentParser(description="established clients' latency during a TLS handshake flood "
                                             "(see bench/README.md)")
    ap.add_argument("--rates", default="0,500,1000", help="new connections per second (default %(default)s)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions (default %(default)s)")
    ap.add_argument("--duration", type=float, default=10, help="seconds per measurement (default %(default)s)")
    ap.add_argument("--lead", type=float, default=2, help="seconds of flood before each measurement "
                    "(default %(default)s)")
    ap.add_argument("--est-qps", type=int, default=2000, help="DoT established load, dnsperf -Q "
                    "(default %(default)s)")
    ap.add_argument("--est-clients", type=int, default=4, help="its TLS connections, dnsperf -c "
                    "(default %(default)s)")
    ap.add_argument("--doh-qps", type=int, default=500, help="DoH established load over one HTTP/2 "
                    "connection, h2load --rps; 0 = none (default %(default)s)")
    ap.add_argument("--flood-tool", choices=("tls-flood", "h2load"), default="tls-flood",
                    help="the flood's client: tools/tls-flood (BoringSSL, DoT listener, one query per "
                         "connection) or h2load (DoH listener, one GET per connection; costs about 1 ms of "
                         "CPU per connection here, see bench/README.md) (default %(default)s)")
    ap.add_argument("--flood-nice", type=int, default=0, metavar="N",
                    help="run the flood's h2load at nice N in its own session and scheduling group "
                         "(the generator shares the machine's cores; see bench/README.md; default %(default)s)")
    ap.add_argument("--dotproxy-rt", action="store_true",
                    help="diagnostic: run dotproxy under chrt -f 1 (SCHED_FIFO), so that it never waits "
                         "for a CPU behind the load generators; see bench/README.md")
    ap.add_argument("--names", type=int, default=100, help="distinct cached names (default %(default)s)")
    ap.add_argument("--threads", type=int, default=2, help="dotproxy --threads (default %(default)s)")
    ap.add_argument("--build-dir", default=os.path.join(ROOT, "build"))
    ap.add_argument("--dotproxy", help="binary (default BUILD_DIR/dotproxy)")
    ap.add_argument("--responder", help="default BUILD_DIR/tools/dot-responder")
    ap.add_argument("--tls-flood", help="default BUILD_DIR/tools/tls-flood")
    ap.add_argument("--out", help="directory for logs (default bench/out/hsflood-TIMESTAMP)")
    ap.add_argument("--lock", default="/tmp/dp-bench.lock")
    a = ap.parse_args(argv)
    a.rates = [int(x) for x in a.rates.split(",") if x]
    a.dotproxy = os.path.abspath(a.dotproxy or os.path.join(a.build_dir, "dotproxy"))
    a.responder = os.path.abspath(a.responder or os.path.join(a.build_dir, "tools", "dot-responder"))
    a.tls_flood = os.path.abspath(a.tls_flood or os.path.join(a.build_dir, "tools", "tls-flood"))
    a.out = os.path.abspath(a.out or os.path.join(HERE, "out", "hsflood-" + time.strftime("%Y%m%d-%H%M%S")))
    return a


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    a = parse_args(argv)
    for tool in ("dnsperf", "h2load", "openssl"):
        if not shutil.which(tool):
            print("hsflood.py: %s not installed (sh scripts/install-deps.sh)" % tool, file=sys.stderr)
            return 2
    for b in (a.dotproxy, a.responder) + ((a.tls_flood,) if a.flood_tool == "tls-flood" else ()):
        if not os.access(b, os.X_OK):
            print("hsflood.py: %s not built" % b, file=sys.stderr)
            return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, lambda *_: sys.exit(130))
    os.makedirs(a.out, exist_ok=True)
    lockf = open(a.lock, "a")
    try:
        fcntl.flock(lockf, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        say("waiting for %s (another benchmark is running)" % a.lock)
        fcntl.flock(lockf, fcntl.LOCK_EX)
    res = {"schema": SCHEMA, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "command": ["bench/hsflood.py"] + argv, "machine": run.machine_info(),
           "loadavg_start": open("/proc/loadavg").read().split()[:3],
           "settings": {k: getattr(a, k) for k in ("rates", "reps", "duration", "lead", "est_qps",
                                                   "est_clients", "doh_qps", "names", "threads",
                                                   "flood_tool", "flood_nice", "dotproxy_rt")},
           "flood_period_s": PERIOD_S, "runs": []}
    status = 0
    ctx = None
    try:
        ctx = start(a)
        res["dotproxy_argv"] = ctx.dp_argv
        for rep in range(a.reps):
            for rate in a.rates:
                say("rep %d/%d, flood %d/s" % (rep + 1, a.reps, rate))
                r = measure(ctx, rate)
                r["rep"] = rep
                res["runs"].append(r)
                say("  %.0f handshakes/s (resumed %d, deferred %d), dotproxy %.2f CPUs (run-queue wait %.2f s/s), flood client %s CPUs; "
                    "DoT p50 %.2f p99 %.2f max %.1f ms; DoH p99 %s ms" % (
                        r["handshakes_per_s"], r["events"]["tls_resumed"],
                        r["events"]["tls_handshakes_deferred"], r["dotproxy_cpus"], r["dotproxy_runq_wait_s_per_s"],
                        r["flood_cpus"],
                        r["dot"]["lat_p50_ms"], r["dot"]["lat_p99_ms"], r["dot"]["lat_max_ms"],
                        "%.2f" % r["doh"]["p99_ms"] if r.get("doh") and r["doh"]["p99_ms"] else "-"))
                fl = r.get("flood", {})
                if r["events"]["tls_resumed"] or fl.get("failed") or fl.get("errored") or fl.get("timeouts"):
                    say("  warning: resumed handshakes or failed flood connections: %s" % fl)
                if not ctx.dp.alive():
                    raise BenchError("dotproxy died:\n" + ctx.dp.tail())
    except (BenchError, OSError) as e:
        say("ERROR: %s" % e)
        res["error"] = str(e)
        status = 2
    finally:
        run.stop_all()
        if ctx:
            shutil.rmtree(ctx.bench.tmp, ignore_errors=True)
    res["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    res["summary"] = {str(rate): medians([r for r in res["runs"] if r["rate"] == rate]) for rate in a.rates}
    res["target"] = verdicts(res["summary"])
    print_table(res["summary"])
    path = os.path.join(HERE, "out", "hsflood-%s.json" % time.strftime("%Y%m%d-%H%M%S"))
    with open(path, "w") as f:
        json.dump(res, f, indent=1)
        f.write("\n")
    say("results: %s (logs in %s)" % (path, a.out))
    return status


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        run.stop_all()

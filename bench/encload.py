"""encload.py - load for the bench's encrypted-client scenarios (run.py).

DoH load comes from h2load (nghttp2-client): it takes a file of URIs and
every client walks that file from its first line, so N clients in one h2load
would ask the same names N times. For unique names each client is therefore
its own h2load process (-c 1) with its own slice of the names; what they
print and log is summed here into one run in the shape of run.py's dnsperf
runs. DoT load is dnsperf -m dot (run.py); only the handshake measurement
uses the small Python ssl client below (asyncio, open loop), one new
connection per query.
"""
import asyncio
import base64
import math
import multiprocessing
import os
import re
import ssl
import struct
import subprocess
import time


def wire_query(name):
    """The DNS query NAME A IN, ID 0 (RFC 8484 asks DoH clients for ID 0),
    RD set, no EDNS: the same question dnsperf sends for a "NAME A" line."""
    q = b"".join(bytes([len(label)]) + label.encode() for label in name.rstrip(".").split("."))
    return struct.pack("!HHHHHH", 0, 0x0100, 1, 0, 0, 0) + q + b"\0" + struct.pack("!HH", 1, 1)


def doh_path(name, path="/dns-query"):
    """The GET path for NAME: PATH?dns=<unpadded base64url of the wire query>."""
    return "%s?dns=%s" % (path, base64.urlsafe_b64encode(wire_query(name)).rstrip(b"=").decode())


def write_uri_files(names_file, port, count, outdir, tag):
    """Split the "NAME A" lines of NAMES_FILE over COUNT URI files for h2load
    -i (round robin, so each file holds a disjoint share); returns the paths
    and the lines per file. Only the first URI's scheme, host and port count
    in h2load, so every line carries them."""
    base = "https://127.0.0.1:%d" % port
    with open(names_file) as f:
        names = [ln.split()[0] for ln in f if ln.strip()]
    paths = []
    for i in range(count):
        p = os.path.join(outdir, "uris-%s-%d.txt" % (tag, i))
        with open(p, "w") as f:
            f.write("".join("%s%s\n" % (base, doh_path(n)) for n in names[i::count]))
        paths.append(p)
    return paths, len(names) // count


H2_FINISHED = re.compile(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s")
H2_REQUESTS = re.compile(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                         r"(\d+) errored, (\d+) timeout")
H2_STATUS = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")


def parse_h2load(text):
    """One h2load run's totals, or None when it printed none (it failed)."""
    fin, req, st = H2_FINISHED.search(text), H2_REQUESTS.search(text), H2_STATUS.search(text)
    if not (fin and req and st):
        return None
    secs = float(fin.group(1)) / (1000.0 if fin.group(2) == "ms" else 1.0)
    total, started, done, ok, failed, errored, timeout = (int(x) for x in req.groups())
    return {"seconds": secs, "rps": float(fin.group(3)), "total": total, "started": started, "done": done,
            "succeeded": ok, "failed": failed, "errored": errored, "timeout": timeout,
            "status": dict(zip(("2xx", "3xx", "4xx", "5xx"), (int(x) for x in st.groups())))}


def log_requests(path):
    """(end time, seconds) per answered request from an h2load --log-file
    (start us since the epoch, HTTP status, us to the end of the response),
    in seconds; status -1 (failed) and non-2xx rows are left out."""
    out = []
    with open(path) as f:
        for line in f:
            parts = line.split("\t")
            if len(parts) >= 3 and parts[1].startswith("2"):
                start, took = int(parts[0]), int(parts[2])
                out.append(((start + took) / 1e6, took / 1e6))
    return out


def common_window(per_process):
    """The processes start their clocks one by one (each reads its URI file
    first: on busy cores a second or more apart), so their -D windows only
    partly overlap. Returns (window start, window end, skew): the span in
    which every process was sending (from the last one's first answer to the
    first one's last answer), and how far apart their first answers were."""
    firsts = [min(e for e, _ in reqs) for reqs in per_process if reqs]
    lasts = [max(e for e, _ in reqs) for reqs in per_process if reqs]
    if not firsts:
        return None, None, None
    return max(firsts), min(lasts), max(firsts) - min(firsts)


def run_h2load(uri_files, duration, streams, tmpdir, rps=None, timeout_s=30):
    """One h2load process per URI file (-c 1, -m STREAMS, -D DURATION, and
    --rps RPS / files each when paced), all at once; returns (totals summed
    over the processes with "window_qps" (answers per second while every
    process was sending, see common_window), latencies in that window,
    argv of the first)."""
    procs = []
    logs = [os.path.join(tmpdir, "h2load-%d.log" % i) for i in range(len(uri_files))]
    for log in logs:  # h2load appends to its --log-file
        if os.path.exists(log):
            os.unlink(log)
    for i, uf in enumerate(uri_files):
        argv = ["h2load", "-c", "1", "-t", "1", "-m", str(streams), "-D", "%g" % duration,
                "--log-file", logs[i], "-i", uf]
        if rps:
            argv += ["--rps", str(max(1, int(round(rps / len(uri_files)))))]
        out = open(os.path.join(tmpdir, "h2load-%d.out" % i), "w+")
        procs.append((argv, out, subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                                  stdin=subprocess.DEVNULL)))
    deadline = time.monotonic() + duration + timeout_s
    try:
        for argv, out, p in procs:
            p.wait(max(1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise RuntimeError("h2load did not finish: %s" % " ".join(procs[0][0]))
    finally:  # also when interrupted: leave no load running
        for _, out, p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            out.close()
    runs, per_process = [], []
    for i, (argv, out, p) in enumerate(procs):
        with open(out.name) as f:
            text = f.read()
        r = parse_h2load(text)
        if r is None:
            raise RuntimeError("h2load failed (%s): %s" % (" ".join(argv), text[-1500:]))
        runs.append(r)
        per_process.append(log_requests(logs[i]))
        os.unlink(logs[i])
    tot = {k: sum(r[k] for r in runs) for k in ("rps", "total", "started", "done", "succeeded", "failed",
                                                 "errored", "timeout")}
    tot["status"] = {k: sum(r["status"][k] for r in runs) for k in runs[0]["status"]}
    tot["seconds"] = max(r["seconds"] for r in runs)
    tot["max_per_process"] = max(r["succeeded"] for r in runs)
    w0, w1, skew = common_window(per_process)
    lat = [took for reqs in per_process for end, took in reqs if w0 is not None and w0 <= end <= w1]
    tot["window_s"] = round(w1 - w0, 3) if w0 is not None else None
    tot["start_skew_s"] = round(skew, 3) if skew is not None else None
    tot["window_qps"] = len(lat) / (w1 - w0) if w0 is not None and w1 - w0 > 0 else None
    return tot, lat, procs[0][0]


def h2load_connections(uri_file, rate, seconds, tmpdir, timeout_s=30):
    """The DoH handshake measurement: RATE x SECONDS clients, each a new
    TLS connection that asks one request (h2load -c N -n N -m 1) and closes,
    started at RATE per second (-r RATE/10 every --rate-period 100ms).
    Returns h2load's totals."""
    n = max(1, int(rate * seconds))
    argv = ["h2load", "-c", str(n), "-n", str(n), "-m", "1", "-t", "1", "-r", str(max(1, rate // 10)),
            "--rate-period", "100ms", "-i", uri_file]
    try:
        p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                           timeout=seconds + timeout_s)
    except subprocess.TimeoutExpired:
        raise RuntimeError("h2load did not finish: %s" % " ".join(argv))
    text = p.stdout.decode(errors="replace")
    r = parse_h2load(text)
    if r is None:
        raise RuntimeError("h2load failed (%s): %s" % (" ".join(argv), text[-1500:]))
    r["argv"] = argv[1:]
    return r


async def _dot_connection(port, msg, ctx, timeout):
    """One new connection: TCP, a full TLS handshake, one DoT query, its
    answer, close. Returns the seconds from connect to answer, or None."""
    c0 = time.monotonic()
    w = None
    try:
        # asyncio sets TCP_NODELAY: the query after the client's Finished
        # goes out at once (with Nagle it would wait for an ACK, which a
        # server that sends nothing after its handshake delays by ~40 ms)
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, ssl=ctx), timeout)
        w.write(msg)
        n = struct.unpack("!H", await asyncio.wait_for(r.readexactly(2), timeout))[0]
        await asyncio.wait_for(r.readexactly(n), timeout)
        return time.monotonic() - c0
    except (OSError, ssl.SSLError, asyncio.TimeoutError, asyncio.IncompleteReadError):
        return None
    finally:
        if w is not None:
            w.transport.abort()  # no close_notify exchange: the next connection's CPU is what counts


async def _dot_open_loop(port, query, rate, seconds, timeout):
    """Start a _dot_connection every 1 / RATE seconds for SECONDS (open
    loop: a slow server gets more connections at once, not fewer), then
    wait for them. Returns (answered, failed, [latencies])."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # loopback, a throwaway certificate: the cost is the server's
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols(["dot"])
    # a context keeps no client session unless handed one: every handshake is full
    msg = struct.pack("!H", len(query)) + query
    t0 = time.monotonic()
    tasks = []
    for i in range(int(rate * seconds)):
        wait = t0 + i / rate - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        tasks.append(asyncio.ensure_future(_dot_connection(port, msg, ctx, timeout)))
    res = await asyncio.gather(*tasks)
    lat = [x for x in res if x is not None]
    return len(lat), len(res) - len(lat), lat


def _dot_worker(port, query, rate, seconds, timeout, q):
    """One client process: _dot_open_loop; puts its result on Q."""
    q.put(asyncio.run(_dot_open_loop(port, query, rate, seconds, timeout)))


def dot_connections(port, name, rate, seconds, workers, timeout=3):
    """The DoT handshake measurement: WORKERS processes, each opening
    RATE / WORKERS new connections per second for SECONDS (see
    _dot_open_loop), each asking NAME once. Returns {answered, failed,
    latencies (sorted), seconds}."""
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    query = wire_query(name)
    ps = [ctx.Process(target=_dot_worker, args=(port, query, rate / workers, seconds, timeout, q))
          for _ in range(workers)]
    t0 = time.monotonic()
    for p in ps:
        p.start()
    try:
        res = [q.get(timeout=seconds + timeout + 30) for _ in ps]
    finally:
        for p in ps:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join()
    lat = sorted(x for r in res for x in r[2])
    return {"answered": sum(r[0] for r in res), "failed": sum(r[1] for r in res), "latencies": lat,
            "seconds": time.monotonic() - t0}


def percentile(sorted_values, q):
    """Nearest-rank percentile Q of SORTED_VALUES, or None when empty."""
    n = len(sorted_values)
    return sorted_values[max(0, math.ceil(q / 100.0 * n) - 1)] if n else None

#!/usr/bin/python3
"""soak.py - dotproxy's memory under a long steady load (issue target: RSS
flat over a 10-minute soak at 50% of max load).

    bench/soak.py [--build-dir build] [--rate 60000] [--seconds 600]

Starts tools/dot-responder (throwaway CA from tools/mkcert.sh) and dotproxy
with its defaults on free loopback ports, runs dnsperf -Q RATE -l SECONDS
over a file of unique names (dnsperf loops over it: the first pass misses,
later ones hit the 64 MB cache, which evicts as it fills), samples
dotproxy's VmRSS every 10 s, and prints the samples. Verdict: the RSS of the
second half of the run stays within 10% of its mean, dnsperf loses less than
0.1% and dotproxy answers no SERVFAIL. Holds /tmp/dp-bench.lock throughout.
"""
import argparse
import fcntl
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from benchutil import free_port, rss_kb

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build-dir", default=os.path.join(HERE, "..", "build"))
    ap.add_argument("--rate", type=int, default=60000)
    ap.add_argument("--seconds", type=int, default=600)
    ap.add_argument("--names", type=int, default=2000000)
    a = ap.parse_args()
    lock = open("/tmp/dp-bench.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    tmp = tempfile.mkdtemp(prefix="dp-soak.")
    os.chmod(tmp, 0o755)  # dotproxy reads the CA as nobody after dropping privileges
    procs = []
    try:
        subprocess.run(["sh", os.path.join(HERE, "..", "tools", "mkcert.sh"), tmp, "soak.test"], check=True)
        for f in os.listdir(tmp):
            os.chmod(os.path.join(tmp, f), 0o644)
        up, port = free_port(), free_port()
        resp = subprocess.Popen([os.path.join(a.build_dir, "tools", "dot-responder"), "--listen",
                                 "127.0.0.1:%d" % up, "--cert", os.path.join(tmp, "server.pem"),
                                 "--key", os.path.join(tmp, "server.key")], stderr=subprocess.DEVNULL)
        procs.append(resp)
        dp = subprocess.Popen([os.path.join(a.build_dir, "dotproxy"), "--listen", "127.0.0.1:%d" % port,
                               "--upstream", "127.0.0.1:%d#soak.test" % up, "--ca-file",
                               os.path.join(tmp, "ca.pem"), "--log-level", "warn"],
                              stderr=open(os.path.join(tmp, "dotproxy.log"), "w"))
        procs.append(dp)
        prefix = "s%x" % random.getrandbits(32)
        qf = os.path.join(tmp, "names.txt")
        with open(qf, "w") as f:
            for i in range(a.names):
                f.write("%s-%d.example.com A\n" % (prefix, i))
        time.sleep(1.0)
        perf = subprocess.Popen(["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", qf, "-Q", str(a.rate),
                                 "-l", str(a.seconds), "-c", "20", "-q", "2000"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        samples = []
        t0 = time.monotonic()
        while perf.poll() is None and time.monotonic() - t0 < a.seconds + 60:
            samples.append((time.monotonic() - t0, rss_kb(dp.pid)))
            print("t=%4.0f s  rss=%.1f MB" % (samples[-1][0], samples[-1][1] / 1024.0), flush=True)
            time.sleep(10)
        out, _ = perf.communicate(timeout=60)
        lost = [l for l in out.splitlines() if "Queries lost" in l or "Queries completed" in l
                or "Response codes" in l or "Queries per second" in l]
        print("\n".join(lost))
        late = [kb for t, kb in samples if t >= a.seconds / 2]
        mean = sum(late) / len(late)
        spread = (max(late) - min(late)) / mean
        sent = int([l for l in out.splitlines() if "Queries sent" in l][0].split()[2])
        lostn = int([l for l in out.splitlines() if "Queries lost" in l][0].split()[2])
        servfail = "SERVFAIL" in out
        print("second half: mean %.1f MB, min %.1f, max %.1f, spread %.1f%%"
              % (mean / 1024, min(late) / 1024, max(late) / 1024, spread * 100))
        ok = spread <= 0.10 and lostn <= sent / 1000 and not servfail and dp.poll() is None
        print("result:", "pass" if ok else "FAIL")
        return 0 if ok else 1
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

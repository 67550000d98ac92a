#!/usr/bin/python3
"""idle_tcp_rss.py - dotproxy's memory with N idle TCP clients (issue target:
idle RSS <= 8 MB with defaults; 10,000 open idle TCP clients <= 64 MB more).

    bench/idle_tcp_rss.py [--build-dir build] [--clients 10000]

Starts dotproxy with its defaults on a free loopback port (the upstream is
never contacted: idle clients send nothing), reads VmRSS, opens N TCP
connections that stay idle, reads VmRSS again, closes them. Needs about N+100
file descriptors for this process (it raises its own soft limit). Prints one
line per figure and exits 1 when a target is missed.
"""
import argparse
import os
import resource
import signal
import socket
import subprocess
import sys
import time

from benchutil import free_port, rss_kb


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build-dir", default=os.path.join(os.path.dirname(__file__), "..", "build"))
    ap.add_argument("--clients", type=int, default=10000)
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, a.clients + 1000), hard))
    port = free_port()
    mport = free_port()
    args = [os.path.join(a.build_dir, "dotproxy"), "--listen", "127.0.0.1:%d" % port,
            "--metrics", "127.0.0.1:%d" % mport,
            "--tcp-idle-timeout", "600s", "--log-level", "warn"]
    if os.geteuid() == 0:
        args.append("--allow-root")  # nothing to read as another user; keeps the test self-contained
    p = subprocess.Popen(args, stdin=subprocess.DEVNULL)
    conns = []
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        time.sleep(1.0)
        idle = rss_kb(p.pid)
        t0 = time.monotonic()
        for i in range(a.clients):
            c = socket.socket()
            c.setblocking(True)
            c.settimeout(5)
            c.connect(("127.0.0.1", port))
            conns.append(c)
        time.sleep(2.0)  # let every accept complete
        with_clients = rss_kb(p.pid)
        import urllib.request
        body = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % mport, timeout=5).read().decode()
        open_conns = [l for l in body.splitlines() if l.startswith("dotproxy_tcp_connections ")]
        accepted = int(float(open_conns[0].split()[1])) if open_conns else -1
        alive = p.poll() is None
        print("dotproxy idle RSS: %.1f MB (target <= 8 MB)" % (idle / 1024.0))
        print("with %d idle TCP clients: %.1f MB, +%.1f MB (target <= +64 MB); %d connects in %.1f s"
              % (a.clients, with_clients / 1024.0, (with_clients - idle) / 1024.0, len(conns),
                 time.monotonic() - t0))
        print("connections dotproxy holds open: %d" % accepted)
        ok = (alive and idle <= 8 * 1024 and with_clients - idle <= 64 * 1024 and
              accepted == a.clients)
        print("result:", "pass" if ok else "FAIL")
        return 0 if ok else 1
    finally:
        for c in conns:
            c.close()
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""dot_responder_check.py - end-to-end checks of dot-responder.

    tools/dot_responder_check.py PATH/TO/dot-responder

Makes a throwaway CA with tools/mkcert.sh, starts the responder on a free
port of 127.0.0.1, and checks answers, framing, pipelining, malformed input,
TLS 1.2 / 1.3, session resumption, half-close, close_notify and the
counters; then starts it again with each fault flag (delay, drop, reorder,
wrong ID, wrong question, close after N, idle close, torn record + reset,
refused or stalled handshake) and checks the fault happens and its counter moves,
once with --name-ttl (TTL and NXDOMAIN from the first label), and with
--listen-tcp (plain DNS over TCP beside DoT, without --cert, with a fault).
Everything is bounded in time. Prints "N passed, N failed"; exits 0, 1 on
a failure, 77 when openssl is missing.
"""
import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TIMEOUT = 5.0


def query(qid, name, qtype=1, flags=0x0100, opt=None, qdcount=1, opcode=0):
    """Wire query. opt=(udp, version, do) adds an OPT record."""
    hdr = struct.pack(">HHHHHH", qid, flags | (opcode << 11), qdcount, 0, 0, 1 if opt else 0)
    q = b""
    if qdcount:
        for label in name.split("."):
            if label:
                q += bytes([len(label)]) + label.encode()
        q += b"\0" + struct.pack(">HH", qtype, 1)
    if opt:
        udp, ver, do = opt
        q += b"\0" + struct.pack(">HHBBHH", 41, udp, 0, ver, 0x8000 if do else 0, 0)
    return hdr + q


def frame(msg):
    return struct.pack(">H", len(msg)) + msg


def parse(msg):
    qid, flags, qd, an, ns, ar = struct.unpack(">HHHHHH", msg[:12])
    return {"id": qid, "flags": flags, "rcode": flags & 0xF, "qd": qd, "an": an,
            "ns": ns, "ar": ar, "raw": msg}


class Conn:
    def __init__(self, port, ca, version=None, session=None, ctx=None):
        if ctx is None:
            ctx = ssl.create_default_context(cafile=ca)
            if version:
                ctx.minimum_version = version
                ctx.maximum_version = version
        self.ctx = ctx
        raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.s = ctx.wrap_socket(raw, server_hostname="dot.test", session=session)
        self.buf = b""

    def send(self, data):
        self.s.sendall(data)

    def read_msg(self):
        while True:
            if len(self.buf) >= 2:
                n = struct.unpack(">H", self.buf[:2])[0]
                if len(self.buf) >= 2 + n:
                    m, self.buf = self.buf[2:2 + n], self.buf[2 + n:]
                    return parse(m)
            d = self.s.recv(65536)
            if not d:
                return None
            self.buf += d

    def closed_by_peer(self):
        try:
            while True:
                d = self.s.recv(65536)
                if not d:
                    return True
                self.buf += d
        except (ssl.SSLError, ConnectionError):
            return True
        except socket.timeout:
            return False

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass


class PlainConn(Conn):
    """A plain DNS-over-TCP connection (--listen-tcp): Conn without TLS."""

    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.buf = b""


def start_responder(binary, tmp, extra, tag):
    """Start binary on 127.0.0.1:0 with mkcert's files in tmp and the extra
    arguments; returns (proc, port, stderr file) or (proc, None, file)."""
    errf = open(os.path.join(tmp, "stderr-%s" % tag), "w+")
    proc = subprocess.Popen([binary, "--listen", "127.0.0.1:0", "--cert",
                             os.path.join(tmp, "server.pem"), "--key",
                             os.path.join(tmp, "server.key")] + extra, stderr=errf)
    deadline = time.time() + TIMEOUT
    while time.time() < deadline:
        errf.seek(0)
        for line in errf.read().splitlines():
            if line.startswith("listening on 127.0.0.1:"):
                return proc, int(line.split()[2].rsplit(":", 1)[1]), errf
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    return proc, None, errf


def stop_responder(proc, errf):
    """SIGTERM; returns (exit code, the last counters as a dict)."""
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = proc.wait()
    errf.seek(0)
    lines = [l for l in errf.read().splitlines() if "queries=" in l]
    errf.close()
    kv = dict(p.split("=", 1) for p in lines[-1].split()) if lines else {}
    return rc, {k: int(v) for k, v in kv.items() if v.isdigit()}


def fault_checks(c, binary, tmp, ca):
    """One responder per fault flag; each check looks at what a client sees
    and at the fault's counter."""

    def run(tag, extra, body, counter=None, least=1):
        proc, port, errf = start_responder(binary, tmp, extra, tag)
        try:
            if port is None:
                c.ok(False, "%s: responder did not start" % tag)
                return
            c.run(tag, lambda: body(port))
        finally:
            rc, cnt = stop_responder(proc, errf)
            c.ok(rc == 0, "%s: clean exit" % tag)
            if counter:
                c.ok(cnt.get(counter, 0) >= least, "%s: counter %s=%s (want >= %d)"
                     % (tag, counter, cnt.get(counter), least))

    def delay(port):
        # 5 connections x 20 queries at once; every answer 300 ms late, all
        # of them together (a timer queue, not a sleep per answer).
        ks = [Conn(port, ca) for _ in range(5)]
        t0 = time.monotonic()
        for j, k in enumerate(ks):
            k.send(b"".join(frame(query(j * 100 + i, "d%d.example" % i)) for i in range(20)))
        got = 0
        for j, k in enumerate(ks):
            for _ in range(20):
                a = k.read_msg()
                got += a is not None and a["an"] == 1
        dt = time.monotonic() - t0
        c.ok(got == 100 and 0.28 <= dt < 1.2,
             "--delay-ms 300: 100 answers on 5 connections after %.2f s (0.3 s each, served together)" % dt)
        k = ks[0]
        k.s.settimeout(0.15)
        k.send(frame(query(1, "late.example")))
        try:
            early = k.read_msg()
        except socket.timeout:
            early = None
        k.s.settimeout(TIMEOUT)
        c.ok(early is None and k.read_msg()["id"] == 1, "--delay-ms 300: nothing after 150 ms, then the answer")
        for k in ks:
            k.close()

    def delay_pct(port):
        k = Conn(port, ca)
        t0 = time.monotonic()
        k.send(b"".join(frame(query(i, "p%d.example" % i)) for i in range(200)))
        times = []
        for _ in range(200):
            k.read_msg()
            times.append(time.monotonic() - t0)
        fast = sum(1 for t in times if t < 0.25)
        c.ok(40 <= fast <= 160 and max(times) >= 0.3,
             "--delay-pct 50: %d of 200 answers fast, the rest 400 ms late" % fast)
        k.close()

    def drop(port):
        k = Conn(port, ca)
        k.s.settimeout(0.5)
        k.send(b"".join(frame(query(i, "x%d.example" % i)) for i in range(200)))
        ids = set()
        try:
            while True:
                a = k.read_msg()
                if a is None:
                    break
                ids.add(a["id"])
        except socket.timeout:
            pass
        c.ok(40 <= len(ids) <= 160, "--drop-pct 50: %d of 200 queries answered" % len(ids))
        k.close()

    def reorder(port):
        k = Conn(port, ca)
        k.send(b"".join(frame(query(i, "r%d.example" % i)) for i in range(20)))
        ids = [k.read_msg()["id"] for _ in range(20)]
        c.ok(sorted(ids) == list(range(20)) and ids != list(range(20)) and ids[0] > ids[-1],
             "--reorder: 20 pipelined queries answered last first (%s...)" % ids[:5])
        k.close()

    def wrong_id(port):
        k = Conn(port, ca)
        k.send(frame(query(0x4242, "w.example")))
        a = k.read_msg()
        c.ok(a["id"] != 0x4242 and b"\x01w\x07example" in a["raw"],
             "--wrong-id-pct 100: right question, ID %#x instead of 0x4242" % a["id"])
        k.s.settimeout(0.3)
        try:
            more = k.read_msg()
        except socket.timeout:
            more = None
        c.ok(more is None, "--wrong-id-pct 100: no second answer")
        k.close()

    def wrong_question(port):
        k = Conn(port, ca)
        k.send(frame(query(7, "wq.example")) + frame(query(8, "qq.example")))
        a, b = k.read_msg(), k.read_msg()
        c.ok(a["id"] == 7 and b"\x02qq\x07example" in a["raw"] and
             b["id"] == 8 and b"\x02zq\x07example" in b["raw"],
             "--wrong-question-pct 100: right ID, first letter of the name changed")
        k.close()

    def close_after(port):
        k = Conn(port, ca)
        k.send(b"".join(frame(query(i, "c%d.example" % i)) for i in range(10)))
        ids = []
        try:
            while True:
                a = k.read_msg()
                if a is None:
                    break
                ids.append(a["id"])
        except (ssl.SSLError, ConnectionError):
            pass
        c.ok(ids == [0, 1, 2], "--close-after 3: 10 pipelined, answers %s, then closed" % ids)
        k.close()
        k = Conn(port, ca)
        k.send(frame(query(5, "again.example")))
        c.ok(k.read_msg()["id"] == 5, "--close-after 3: a new connection is served")
        k.close()

    def idle_close(port):
        k = Conn(port, ca)
        k.send(frame(query(1, "i.example")))
        k.read_msg()
        t0 = time.monotonic()
        k.s.settimeout(2.0)
        closed = k.closed_by_peer()
        dt = time.monotonic() - t0
        c.ok(closed and 0.25 <= dt < 1.0, "--idle-close-ms 300: closed %.2f s after the last answer" % dt)
        k.close()
        k = Conn(port, ca)
        for i in range(4):  # busy (a query every 150 ms): stays open
            k.send(frame(query(i, "busy.example")))
            c.ok(k.read_msg()["id"] == i, "--idle-close-ms 300: busy connection stays open (%d)" % i)
            time.sleep(0.15)
        k.close()

    def reset_mid(port):
        # TLS over memory BIOs, to see the TCP reset and the torn record
        # (an SSLSocket reports both as a plain EOF).
        ctx = ssl.create_default_context(cafile=ca)
        raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
        o = ctx.wrap_bio(inc, out, server_hostname="dot.test")
        while True:
            try:
                o.do_handshake()
                break
            except ssl.SSLWantReadError:
                raw.sendall(out.read())
                inc.write(raw.recv(65536))
        o.write(b"".join(frame(query(i, "m%d.example" % i)) for i in range(5)))
        raw.sendall(out.read())
        how, plain, cipher = "eof", b"", b""
        try:
            while True:
                d = raw.recv(65536)
                if not d:
                    break
                inc.write(d)
                cipher += d
        except ConnectionResetError:
            how = "reset"
        off = 0  # walk the TLS records (5-byte headers): the last one is cut
        while off + 5 <= len(cipher) and off + 5 + struct.unpack(">H", cipher[off + 3:off + 5])[0] <= len(cipher):
            off += 5 + struct.unpack(">H", cipher[off + 3:off + 5])[0]
        torn = len(cipher) - off
        try:
            while True:
                plain += o.read(65536)
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError as e:
            how += " " + repr(e)
        raw.close()
        ids = []
        while len(plain) >= 2 and len(plain) >= 2 + struct.unpack(">H", plain[:2])[0]:
            n = struct.unpack(">H", plain[:2])[0]
            ids.append(parse(plain[2:2 + n])["id"])
            plain = plain[2 + n:]
        c.ok(ids == [0, 1] and how == "reset" and torn > 5,
             "--reset-mid-record 2: answers %s, %d bytes of a torn record, then %s "
             "(want [0, 1], some, reset)" % (ids, torn, how))

    def refuse(port):
        try:
            k = Conn(port, ca)
            k.close()
            how = "handshake completed"
        except ConnectionResetError:
            how = "reset"
        except (ssl.SSLError, OSError) as e:
            how = repr(e)
        c.ok(how == "reset", "--refuse-handshake: %s (want reset)" % how)

    def hs_delay(port):
        t0 = time.monotonic()
        k = Conn(port, ca)
        dt = time.monotonic() - t0
        k.send(frame(query(3, "hs.example")))
        c.ok(0.28 <= dt < 1.0 and k.read_msg()["id"] == 3,
             "--handshake-delay-ms 300: handshake took %.2f s, then answers" % dt)
        k.close()

    run("delay", ["--delay-ms", "300"], delay, "fault_delayed", 101)
    run("hs_delay", ["--handshake-delay-ms", "300"], hs_delay, "fault_hs_delayed")
    run("delay_pct", ["--delay-ms", "400", "--delay-pct", "50", "--seed", "7"], delay_pct,
        "fault_delayed", 40)
    run("drop", ["--drop-pct", "50", "--seed", "7"], drop, "fault_dropped", 40)
    run("reorder", ["--reorder"], reorder, "fault_reordered")
    run("wrong_id", ["--wrong-id-pct", "100"], wrong_id, "fault_wrong_id")
    run("wrong_question", ["--wrong-question-pct", "100"], wrong_question, "fault_wrong_question", 2)
    run("close_after", ["--close-after", "3"], close_after, "fault_closed_after")
    run("idle_close", ["--idle-close-ms", "300"], idle_close, "fault_idle_closed")
    run("reset_mid", ["--reset-mid-record", "2"], reset_mid, "fault_resets")
    run("refuse", ["--refuse-handshake"], refuse, "fault_refused")


class Checks:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def ok(self, cond, what):
        if cond:
            self.passed += 1
            print("ok    " + what)
        else:
            self.failed += 1
            print("FAIL  " + what)

    def run(self, name, fn):
        try:
            fn()
        except Exception as e:  # a crash in a check is a failure, not an abort
            self.ok(False, "%s: %r" % (name, e))


def name_ttl_checks(c, binary, tmp, ca):
    """--name-ttl: "t<N>-..." answers with TTL N, "t<N>-nx..." with
    NXDOMAIN and the parent's SOA (TTL and MINIMUM N); other names as
    without the flag."""
    proc, port, errf = start_responder(binary, tmp, ["--name-ttl"], "name-ttl")
    try:
        if port is None:
            c.ok(False, "name-ttl: responder did not start")
            return

        def body():
            k = Conn(port, ca)

            def ask(qid, name, qtype=1):
                k.send(frame(query(qid, name, qtype)))
                return k.read_msg()

            a = ask(1, "T77-z1.example.com")
            c.ok(a["rcode"] == 0 and a["an"] == 1 and struct.pack(">I", 77) + b"\x00\x04" in a["raw"],
                 "name-ttl: t77-... answered with TTL 77")
            a = ask(2, "t30-NX5.example.com")
            rr = a["raw"][12 + len("t30-NX5.example.com") + 2 + 4:]
            c.ok(a["rcode"] == 3 and a["an"] == 0 and a["ns"] == 1, "name-ttl: t30-nx... is NXDOMAIN, one NS record")
            c.ok(len(rr) == 36 and rr[:2] == b"\xc0\x14" and rr[2:4] == b"\x00\x06"
                 and rr[6:10] == struct.pack(">I", 30) and rr[-4:] == struct.pack(">I", 30),
                 "name-ttl: SOA of example.com, TTL and MINIMUM 30")
            a = ask(3, "t30-nx5.example.com", 28)
            c.ok(a["rcode"] == 3, "name-ttl: NXDOMAIN for every type")
            for qid, name in ((4, "plain.example.com"), (5, "t12.example.com"), (6, "t5-nx"),
                              (7, "t99999999999-z.example.com")):
                a = ask(qid, name)
                c.ok(a["rcode"] == 0 and a["an"] == 1 and struct.pack(">I", 300) + b"\x00\x04" in a["raw"],
                     "name-ttl: %s keeps --ttl and exists" % name)
            k.close()
        c.run("name_ttl", body)
    finally:
        rc, cnt = stop_responder(proc, errf)
        c.ok(rc == 0, "name-ttl: clean exit")
        c.ok(cnt.get("nxdomain") == 2, "name-ttl: counter nxdomain=%s (want 2)" % cnt.get("nxdomain"))


def start_listeners(binary, tmp, args, tag):
    """Start binary with args (listeners included); returns (proc, {"tls":
    port, "tcp": port} as printed on the "listening on" line, stderr file);
    the dict is empty when it did not start."""
    errf = open(os.path.join(tmp, "stderr-%s" % tag), "w+")
    proc = subprocess.Popen([binary] + args, stderr=errf)
    deadline = time.time() + TIMEOUT
    while time.time() < deadline and proc.poll() is None:
        errf.seek(0)
        for line in errf.read().splitlines():
            if line.startswith("listening on "):
                ports = {}
                for a in line.split()[2:-1]:
                    ports["tcp" if a.startswith("tcp://") else "tls"] = int(a.rsplit(":", 1)[1])
                return proc, ports, errf
        time.sleep(0.02)
    return proc, {}, errf


def plain_checks(c, binary, tmp, ca):
    """--listen-tcp: plain DNS over TCP beside a DoT listener (same answers,
    framing, pipelining; plain_queries counts only its queries), alone
    without --cert, and with a fault."""
    cert = ["--cert", os.path.join(tmp, "server.pem"), "--key", os.path.join(tmp, "server.key")]
    proc, ports, errf = start_listeners(
        binary, tmp, ["--listen", "127.0.0.1:0", "--listen-tcp", "127.0.0.1:0", "--threads", "2",
                      "--answer-ip", "198.51.100.9"] + cert, "plain")
    c.ok(set(ports) == {"tls", "tcp"}, "--listen and --listen-tcp: both printed (%s)" % ports)
    if set(ports) != {"tls", "tcp"}:
        proc.kill()
        proc.wait()
        return
    sent = 0
    try:
        k = PlainConn(ports["tcp"])
        k.send(frame(query(0x4242, "Svc.Default.svc.cluster.local", 1)))
        a = k.read_msg()
        c.ok(a["id"] == 0x4242 and a["rcode"] == 0 and a["an"] == 1
             and a["raw"].endswith(bytes([198, 51, 100, 9]))
             and b"\x03Svc\x07Default" in a["raw"], "plain TCP: A answer, question copied")
        n = 3000
        k.send(b"".join(frame(query(i, "p%d.example" % i)) for i in range(n)))
        ids = [k.read_msg()["id"] for _ in range(n)]
        c.ok(ids == list(range(n)), "plain TCP: 3000 pipelined queries answered in order")
        data = frame(query(99, "split.example")) + frame(query(100, "two.example"))
        for i in range(len(data)):
            k.send(data[i:i + 1])
        c.ok([k.read_msg()["id"], k.read_msg()["id"]] == [99, 100], "plain TCP: split byte by byte")
        k.send(b"".join(frame(query(i, "h.example")) for i in range(50)))
        k.s.shutdown(socket.SHUT_WR)
        got = 0
        while k.read_msg() is not None:
            got += 1
        c.ok(got == 50, "plain TCP: half-close after 50 queries, all answered, then closed")
        k.close()
        sent = 1 + n + 2 + 50
        k = PlainConn(ports["tcp"])
        k.send(frame(query(6, "x.example")) + b"\x00\x00")
        c.ok(k.read_msg()["id"] == 6 and k.closed_by_peer(), "plain TCP: zero-length frame closes")
        k.close()
        sent += 1
        k = Conn(ports["tls"], ca)
        k.send(frame(query(1, "tls.example")))
        c.ok(k.read_msg()["an"] == 1, "the DoT listener beside it still answers")
        k.close()
    except (OSError, TypeError) as e:
        c.ok(False, "plain TCP: %r" % e)
    rc, cnt = stop_responder(proc, errf)
    c.ok(rc == 0 and cnt.get("plain_queries") == sent and cnt.get("queries") == sent + 1
         and cnt.get("handshakes") == 1,
         "plain_queries=%d counts the plain queries only (%s)" % (
             sent, {k: cnt.get(k) for k in ("queries", "plain_queries", "handshakes")}))

    proc, ports, errf = start_listeners(binary, tmp, ["--listen-tcp", "127.0.0.1:0", "--close-after", "3"],
                                        "plain-fault")
    c.ok(list(ports) == ["tcp"], "--listen-tcp alone needs no --cert")
    if ports:
        k = PlainConn(ports["tcp"])
        k.send(b"".join(frame(query(i, "f.example")) for i in range(10)))
        got = 0
        while k.read_msg() is not None:
            got += 1
        c.ok(got == 3, "plain TCP with --close-after 3: 3 answers, then closed (%d)" % got)
        k.close()
    rc, cnt = stop_responder(proc, errf)
    c.ok(cnt.get("fault_closed_after") == 1, "plain TCP: fault counter moved")
    r = subprocess.run([binary, "--listen", "127.0.0.1:0"], stderr=subprocess.PIPE, timeout=TIMEOUT)
    c.ok(r.returncode == 2, "--listen without --cert is refused")


def main():
    if len(sys.argv) != 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    binary = sys.argv[1]
    if not shutil.which("openssl"):
        print("SKIP: openssl command not found", file=sys.stderr)
        return 77
    tmp = tempfile.mkdtemp(prefix="dotresp.")
    proc = None
    c = Checks()
    try:
        subprocess.run([os.path.join(HERE, "mkcert.sh"), tmp, "dot.test"], check=True)
        ca = os.path.join(tmp, "ca.pem")
        errf = open(os.path.join(tmp, "stderr"), "w+")
        proc = subprocess.Popen([binary, "--listen", "127.0.0.1:0", "--cert",
                                 os.path.join(tmp, "server.pem"), "--key",
                                 os.path.join(tmp, "server.key"), "--threads", "2",
                                 "--answer-ip", "198.51.100.7", "--ttl", "42"],
                                stderr=errf)
        port = None
        deadline = time.time() + TIMEOUT
        while time.time() < deadline and port is None:
            errf.seek(0)
            for line in errf.read().splitlines():
                if line.startswith("listening on 127.0.0.1:"):
                    port = int(line.split()[2].rsplit(":", 1)[1])
            time.sleep(0.05)
        c.ok(port is not None, "prints 'listening on' with the port")
        if port is None:
            return 1

        def basic():
            k = Conn(port, ca)
            k.send(frame(query(0x1234, "Example.COM", 1, opt=(4096, 0, True))))
            a = k.read_msg()
            c.ok(a["id"] == 0x1234 and a["rcode"] == 0 and a["an"] == 1 and a["ar"] == 1,
                 "A answer: id, rcode, counts")
            c.ok(b"\x07Example\x03COM\x00" in a["raw"], "question copied byte for byte")
            c.ok(a["raw"].endswith(b"\x00\x00\x29\x04\xd0\x00\x00\x80\x00\x00\x00"),
                 "OPT echoed: udp 1232, DO copied")
            c.ok(b"\x00\x00\x00\x2a\x00\x04\xc6\x33\x64\x07" in a["raw"],
                 "--ttl and --answer-ip used")
            k.send(frame(query(7, "x.test", 28)))
            a = k.read_msg()
            c.ok(a["an"] == 1 and a["ar"] == 0 and a["raw"].endswith(
                bytes.fromhex("20010db8000000000000000000000001")), "AAAA answer, no OPT")
            k.send(frame(query(8, "x.test", 15)))
            a = k.read_msg()
            c.ok(a["rcode"] == 0 and a["an"] == 0, "MX: NOERROR, empty")
            k.close()

        def pipelined():
            k = Conn(port, ca)
            n = 3000
            k.send(b"".join(frame(query(i, "q%d.example" % i)) for i in range(n)))
            ids = set()
            for _ in range(n):
                a = k.read_msg()
                ids.add(a["id"])
            c.ok(ids == set(range(n)), "3000 pipelined queries in one write all answered")
            k.close()

        def split():
            k = Conn(port, ca)
            data = frame(query(99, "split.example")) + frame(query(100, "two.example"))
            for i in range(len(data)):
                k.send(data[i:i + 1])
            a1, a2 = k.read_msg(), k.read_msg()
            c.ok(a1["id"] == 99 and a2["id"] == 100, "messages split byte by byte")
            k.close()

        def big_query():
            k = Conn(port, ca)
            q = query(5, "big.example", opt=(1232, 0, False))
            pad = 60000
            q = q[:-2] + struct.pack(">H", pad + 4) + struct.pack(">HH", 12, pad) + b"\0" * pad
            k.send(frame(q))
            a = k.read_msg()
            c.ok(a is not None and a["id"] == 5 and a["an"] == 1, "60 KB query (padding)")
            k.close()

        def errors():
            k = Conn(port, ca)
            k.send(frame(query(1, "", qdcount=0)))
            a = k.read_msg()
            c.ok(a["rcode"] == 1 and a["id"] == 1, "no question: FORMERR")
            k.send(frame(query(2, "x.example", opcode=2)))
            a = k.read_msg()
            c.ok(a["rcode"] == 4 and a["qd"] == 1, "opcode STATUS: NOTIMP with question")
            k.send(frame(query(3, "x.example", opt=(1232, 1, False))))
            a = k.read_msg()
            c.ok(a["rcode"] == 0 and a["ar"] == 1 and a["raw"][-6] == 1,
                 "EDNS version 1: BADVERS (extended rcode in OPT)")
            k.send(frame(query(4, "x.example", flags=0x8000)))
            k.send(frame(query(5, "x.example")))
            a = k.read_msg()
            c.ok(a["id"] == 5, "a response (QR=1) is dropped, the next query answered")
            k.send(frame(b"\x00\x06\x01\x00\x00"))
            a = k.read_msg()
            c.ok(a is None or k.closed_by_peer(), "message shorter than a header: closed")
            k.close()
            k = Conn(port, ca)
            k.send(frame(query(6, "x.example")) + b"\x00\x00")
            a = k.read_msg()
            c.ok(a["id"] == 6 and k.closed_by_peer(),
                 "zero-length frame: earlier answer sent, then closed")
            k.close()

        def versions():
            for v, name in ((ssl.TLSVersion.TLSv1_2, "TLSv1.2"), (ssl.TLSVersion.TLSv1_3, "TLSv1.3")):
                k = Conn(port, ca, v)
                k.send(frame(query(1, "v.example")))
                a = k.read_msg()
                c.ok(k.s.version() == name and a["an"] == 1, "%s works" % name)
                sess = k.s.session
                k.close()
                k2 = Conn(port, ca, session=sess, ctx=k.ctx)
                k2.send(frame(query(2, "v.example")))
                a = k2.read_msg()
                c.ok(k2.s.session_reused and a["an"] == 1, "%s session ticket resumption" % name)
                k2.close()

        def half_close():
            k = Conn(port, ca)
            k.send(b"".join(frame(query(i, "h.example")) for i in range(50)))
            # TCP FIN, no close_notify (SSLSocket.shutdown would drop the
            # TLS state, so call the plain socket's).
            socket.socket.shutdown(k.s, socket.SHUT_WR)
            got = 0
            while k.read_msg() is not None:
                got += 1
            c.ok(got == 50, "half-close after 50 queries: all answered, then closed")
            k.close()

        def close_notify():
            k = Conn(port, ca)
            k.send(frame(query(1, "n.example")))
            k.read_msg()
            try:
                k.s.unwrap()  # sends close_notify, waits for ours
                c.ok(True, "close_notify answered with close_notify")
            except (ssl.SSLError, OSError) as e:
                c.ok(False, "close_notify: %r" % e)
            k.close()

        def garbage():
            raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
            raw.sendall(b"GET / HTTP/1.0\r\n\r\n" * 10)
            try:
                d = raw.recv(100)
                rest = raw.recv(100) if d else b""
                c.ok(not rest, "not TLS: alert and close")
            except ConnectionError:
                c.ok(True, "not TLS: connection reset")
            raw.close()
            k = Conn(port, ca)
            k.send(frame(query(1, "still.example")))
            c.ok(k.read_msg()["an"] == 1, "other connections unaffected")
            k.close()

        def many_conns():
            ks = [Conn(port, ca) for _ in range(100)]
            for i, k in enumerate(ks):
                k.send(frame(query(i, "m.example")))
            good = sum(1 for i, k in enumerate(ks) if k.read_msg()["id"] == i)
            c.ok(good == 100, "100 concurrent connections")
            for k in ks:
                k.close()

        for fn in (basic, pipelined, split, big_query, errors, versions, half_close,
                   close_notify, garbage, many_conns):
            c.run(fn.__name__, fn)

        proc.send_signal(signal.SIGUSR1)
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=TIMEOUT)
        errf.seek(0)
        lines = [l for l in errf.read().splitlines() if "queries=" in l]
        c.ok(rc == 0, "SIGTERM: clean exit 0")
        c.ok(len(lines) == 2, "SIGUSR1 and exit print counters")
        if lines:
            kv = dict(p.split("=") for p in lines[-1].split())
            c.ok(all(k in kv for k in ("connections", "handshakes", "queries", "answers")),
                 "counters: connections handshakes queries answers")
            c.ok(int(kv.get("queries", 0)) >= 3000 and int(kv.get("resumed", 0)) >= 2,
                 "counters add up across shards (%s)" % lines[-1])
            c.ok(all(int(v) == 0 for k, v in kv.items() if k.startswith("fault_")),
                 "no fault flag: every fault_ counter is 0")
        proc = None
        errf.close()
        fault_checks(c, binary, tmp, ca)
        name_ttl_checks(c, binary, tmp, ca)
        plain_checks(c, binary, tmp, ca)
    finally:
        if proc:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    print("%d passed, %d failed" % (c.passed, c.failed))
    return 1 if c.failed else 0


if __name__ == "__main__":
    sys.exit(main())

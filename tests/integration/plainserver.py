"""plainserver.py - a plain DNS server (UDP and TCP) for the forwarding tests.

One PlainServer listens on HOST:PORT (IPv4 or IPv6) over UDP and TCP (threads in the test
process, or this file run as a program) and:
- answers A queries with its marker address (so a test can tell which server
  answered), PTR queries with "<label>.ptr.test." (label: the server's name),
  other types with NOERROR and no records;
- records every query it received: name as it arrived (case kept), type,
  transport, source address and port, ID, TCP connection number;
- answers names whose first label matches `big` (default: starts with "big")
  over UDP with an empty answer and TC set, and over TCP with BIG_COUNT A
  records (the marker first): about 2 KB, more than 512 and 1232 octets;
- over TCP takes many queries per connection; with reorder (the default) the
  answers to queries read together go out last first;
- with forge=True, before each genuine UDP answer, sends forged ones carrying
  FORGED_ADDR: (a) from the server socket with a wrong ID, (b) with the right
  ID and another question, (c) right ID and question from another socket on
  the same IP (another source port), (d) with forge_dest=True, right ID and
  question from the server socket to the other source ports the client used
  lately (other sockets of its pool), (e) with forge_case=True, right ID and
  the question with the case of every letter swapped (what a 0x20 client
  must drop); then, forge_delay later, the genuine one;
- stop() closes its sockets (TCP connections are reset: a killed server);
  start() binds the same port again.

Objects owned: the sockets and threads of a running server, all released by
stop(). As a program (SIGTERM or SIGINT stops it):
    /usr/bin/python3 plainserver.py --listen 127.0.0.2:5353 --marker 203.0.113.1 [--forge]
prints "listening on HOST:PORT" to stderr, then one JSON line per query on stdout.
"""

import argparse
import heapq
import json
import random
import re
import select
import signal
import socket
import struct
import sys
import threading
import time
from dataclasses import asdict, dataclass

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

BIG_COUNT = 120          # A records in a big answer: 12 + question + 120 * 16 octets, ~2 KB
FORGED_ADDR = "192.0.2.66"
TTL = 300
FORGE_KINDS = ("wrong_id", "wrong_question", "wrong_port", "wrong_dest", "wrong_case")
POLL_S = 0.1             # how often the loops look at the stop flag


@dataclass
class Query:
    name: str            # as received, case kept, absolute ("www.Corp.example.")
    qtype: str
    transport: str       # "udp" or "tcp"
    src: str
    sport: int
    qid: int
    conn: int            # TCP connection number (1, 2, ...), 0 for UDP
    t: float             # time.monotonic() at arrival

    @property
    def lname(self):
        return self.name.lower()


def big_address(i):
    """The i-th A record of a big answer (i >= 1; 0 is the marker)."""
    return "198.18.%d.%d" % (i // 256, i % 256)


class _Timers:
    """One thread running callbacks at given times (forged-then-genuine
    answers, delayed answers), so that no query waits for another's delay."""

    def __init__(self):
        self._heap = []
        self._seq = 0
        self._cv = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def at(self, when, fn):
        with self._cv:
            self._seq += 1
            heapq.heappush(self._heap, (when, self._seq, fn))
            self._cv.notify()

    def _run(self):
        while True:
            with self._cv:
                while not self._stop and (not self._heap or self._heap[0][0] > time.monotonic()):
                    wait = POLL_S if not self._heap else min(POLL_S, self._heap[0][0] - time.monotonic())
                    self._cv.wait(max(0.0, wait))
                if self._stop:
                    return
                _, _, fn = heapq.heappop(self._heap)
            try:
                fn()
            except OSError:
                pass     # the server stopped under a pending send

    def stop(self):
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join(timeout=5)


class PlainServer:
    """See the module comment. host/port: where to listen (port None: a free
    one, chosen once and kept across restarts); marker: the A answer;
    label: the PTR answer's first label and the name in messages."""

    def __init__(self, host, marker, port=None, label=None, big=r"^big", ttl=TTL, reorder=True,
                 delay_ms=0, forge=False, forge_dest=False, forge_case=False, forge_delay=0.03,
                 on_query=None):
        if port is None:
            import dphelpers as H   # only the threaded use needs the test helpers
            port = H.free_port(host)
        self.host, self.port, self.marker = host, port, marker
        self.label = label or "srv-" + marker.replace(".", "-")
        self.big = re.compile(big, re.I)
        self.ttl, self.reorder, self.delay_ms = ttl, reorder, delay_ms
        self.forge, self.forge_dest, self.forge_delay = forge, forge_dest, forge_delay
        self.forge_case = forge_case
        self.on_query = on_query
        self.queries = []            # Query, in arrival order
        self.forged_sent = {k: 0 for k in FORGE_KINDS}
        self.tcp_accepted = 0
        self._lock = threading.Lock()
        self._recent_ports = []      # the client's latest UDP source ports (wrong_dest targets)
        self._running = False

    # ------------------------------------------------------------ life

    def start(self):
        """Bind UDP and TCP on host:port and serve in threads. Returns self."""
        assert not self._running, "already running"
        self._stop = threading.Event()
        fam = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self.udp = socket.socket(fam, socket.SOCK_DGRAM)
        self.udp.bind((self.host, self.port))
        self.alt = socket.socket(fam, socket.SOCK_DGRAM)   # the wrong_port forger
        self.alt.bind((self.host, 0))
        self.lsn = socket.socket(fam, socket.SOCK_STREAM)
        self.lsn.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsn.bind((self.host, self.port))
        self.lsn.listen(128)
        self.conns = []
        self.timers = _Timers()
        self.threads = [threading.Thread(target=self._udp_loop, daemon=True),
                        threading.Thread(target=self._accept_loop, daemon=True)]
        for th in self.threads:
            th.start()
        self._running = True
        return self

    def stop(self):
        """Stop serving and close every socket; open TCP connections are
        reset, as when the process is killed. Idempotent."""
        if not self._running:
            return
        self._running = False
        self._stop.set()
        self.timers.stop()
        for th in list(self.threads):
            th.join(timeout=5)
        for c in list(self.conns):
            try:
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                c.close()
            except OSError:
                pass
        for s in (self.udp, self.alt, self.lsn):
            s.close()

    kill = stop

    @property
    def running(self):
        return self._running

    def addr(self):
        """HOST:PORT, or [HOST]:PORT for IPv6."""
        return ("[%s]:%d" if ":" in self.host else "%s:%d") % (self.host, self.port)

    def upstream(self, scheme):
        """The --forward upstream for this server: udp://IP:PORT or tcp://IP:PORT."""
        return "%s://%s" % (scheme, self.addr())

    # ------------------------------------------------------------ what was asked

    def seen(self, name=None, transport=None):
        """Queries received, optionally only those for name (case ignored)
        and/or over transport."""
        with self._lock:
            qs = list(self.queries)
        if name is not None:
            want = name.lower().rstrip(".") + "."
            qs = [q for q in qs if q.lname == want]
        if transport is not None:
            qs = [q for q in qs if q.transport == transport]
        return qs

    def clear(self):
        with self._lock:
            self.queries.clear()

    def _record(self, q, transport, src, conn):
        rec = Query(q.question[0].name.to_text(), dns.rdatatype.to_text(q.question[0].rdtype),
                    transport, src[0], src[1], q.id, conn, time.monotonic())
        with self._lock:
            self.queries.append(rec)
        if self.on_query:
            self.on_query(rec)
        return rec

    # ------------------------------------------------------------ answers

    def _parse(self, wire):
        """A query we answer, or None (responses, garbage, no question)."""
        try:
            q = dns.message.from_wire(wire)
        except Exception:
            return None
        if q.flags & dns.flags.QR or len(q.question) != 1:
            return None
        return q

    def _is_big(self, q):
        labels = q.question[0].name.labels
        return bool(labels) and bool(self.big.search(labels[0].decode("ascii", "replace")))

    def answer(self, q, transport, addr=None, qname=None):
        """The answer to q as wire. addr: the A data (default the marker);
        qname: another question name (a forgery's)."""
        r = dns.message.make_response(q)
        r.flags |= dns.flags.AA | dns.flags.RA
        qn = q.question[0]
        name = qname if qname is not None else qn.name
        if qname is not None:
            r.question = [dns.rrset.RRset(name, qn.rdclass, qn.rdtype)]
        if qn.rdclass != dns.rdataclass.IN:
            r.set_rcode(dns.rcode.REFUSED)
        elif qn.rdtype == dns.rdatatype.A:
            if self._is_big(q) and transport == "udp" and addr is None:
                r.flags |= dns.flags.TC
            else:
                addrs = [addr or self.marker]
                if self._is_big(q) and addr is None:
                    addrs += [big_address(i) for i in range(1, BIG_COUNT)]
                r.answer.append(dns.rrset.from_text_list(name, self.ttl, "IN", "A", addrs))
        elif qn.rdtype == dns.rdatatype.PTR:
            r.answer.append(dns.rrset.from_text(name, self.ttl, "IN", "PTR", "%s.ptr.test." % self.label))
        return r.to_wire(max_size=65535)

    # ------------------------------------------------------------ UDP

    def _udp_loop(self):
        while not self._stop.is_set():
            rd, _, _ = select.select([self.udp], [], [], POLL_S)
            if not rd:
                continue
            try:
                wire, src = self.udp.recvfrom(65535)
            except OSError:
                continue
            q = self._parse(wire)
            if q is None:
                continue
            self._record(q, "udp", src, 0)
            genuine = self.answer(q, "udp")
            delay = self.delay_ms / 1000.0
            if self.forge:
                self._send_forgeries(q, src)
                delay = max(delay, self.forge_delay)
            if delay > 0:
                self.timers.at(time.monotonic() + delay, lambda g=genuine, s=src: self.udp.sendto(g, s))
            else:
                self.udp.sendto(genuine, src)

    def _send_forgeries(self, q, src):
        """Forged answers to q (sent by client address src), each with
        FORGED_ADDR; see the module comment for the kinds."""
        forged = self.answer(q, "udp", addr=FORGED_ADDR)
        wrong_id = bytearray(forged)
        struct.pack_into("!H", wrong_id, 0, q.id ^ random.randrange(1, 65536))
        self.udp.sendto(bytes(wrong_id), src)
        self.forged_sent["wrong_id"] += 1
        self.udp.sendto(self.answer(q, "udp", addr=FORGED_ADDR, qname=other_name(q.question[0].name)), src)
        self.forged_sent["wrong_question"] += 1
        self.alt.sendto(forged, src)
        self.forged_sent["wrong_port"] += 1
        with self._lock:
            others = [p for p in self._recent_ports if p != src[1]]
            if src[1] not in self._recent_ports:
                self._recent_ports = (self._recent_ports + [src[1]])[-16:]
        if self.forge_dest:
            for p in others[-8:]:
                self.udp.sendto(forged, (src[0], p))
                self.forged_sent["wrong_dest"] += 1
        if self.forge_case:
            swapped = dns.name.from_text(q.question[0].name.to_text().swapcase())
            self.udp.sendto(self.answer(q, "udp", addr=FORGED_ADDR, qname=swapped), src)
            self.forged_sent["wrong_case"] += 1

    # ------------------------------------------------------------ TCP

    def _accept_loop(self):
        while not self._stop.is_set():
            rd, _, _ = select.select([self.lsn], [], [], POLL_S)
            if not rd:
                continue
            try:
                c, src = self.lsn.accept()
            except OSError:
                continue
            with self._lock:
                self.tcp_accepted += 1
                n = self.tcp_accepted
            self.conns.append(c)
            th = threading.Thread(target=self._tcp_conn, args=(c, src, n), daemon=True)
            self.threads.append(th)
            th.start()

    def _tcp_conn(self, c, src, n):
        """One client connection: every complete query read in one go is
        answered, in reverse order when reorder is set; a partial one waits
        for the rest. Ends at EOF, on an error or at stop()."""
        buf = b""
        wlock = threading.Lock()

        def send(data):
            with wlock:
                c.sendall(data)

        while not self._stop.is_set():
            try:
                rd, _, _ = select.select([c], [], [], POLL_S)
                if not rd:
                    continue
                data = c.recv(65535)
            except (OSError, ValueError):
                return
            if not data:
                return
            buf += data
            out = []
            while len(buf) >= 2 and len(buf) >= 2 + struct.unpack("!H", buf[:2])[0]:
                ln = struct.unpack("!H", buf[:2])[0]
                wire, buf = buf[2:2 + ln], buf[2 + ln:]
                q = self._parse(wire)
                if q is None:
                    continue
                self._record(q, "tcp", src, n)
                a = self.answer(q, "tcp")
                out.append(struct.pack("!H", len(a)) + a)
            if self.reorder:
                out.reverse()
            try:
                if self.delay_ms:
                    when = time.monotonic() + self.delay_ms / 1000.0
                    for frame in out:
                        self.timers.at(when, lambda f=frame: send(f))
                elif out:
                    send(b"".join(out))
            except OSError:
                return


def other_name(name):
    """name with its first letter replaced by another letter (not the same
    letter in another case): a different question of the same length."""
    text = name.to_text()
    first = text[0].lower()
    repl = "q" if first != "q" else "z"
    return dns.name.from_text(repl + text[1:])


# ---------------------------------------------------------------- as a program

def main(argv=None):
    ap = argparse.ArgumentParser(description="plain DNS test server (see the module comment)")
    ap.add_argument("--listen", required=True, help="IPv4:PORT or [IPv6]:PORT")
    ap.add_argument("--marker", required=True, help="A record data")
    ap.add_argument("--label", help="PTR answer label")
    ap.add_argument("--big", default=r"^big", help="regex on the first label: TC over UDP, big over TCP")
    ap.add_argument("--no-reorder", action="store_true")
    ap.add_argument("--delay-ms", type=int, default=0)
    ap.add_argument("--forge", action="store_true")
    ap.add_argument("--forge-dest", action="store_true")
    ap.add_argument("--forge-case", action="store_true")
    a = ap.parse_args(argv)
    host, port = a.listen.rsplit(":", 1)
    host = host.strip("[]")

    def emit(rec):
        print(json.dumps(asdict(rec)), flush=True)

    srv = PlainServer(host, a.marker, port=int(port), label=a.label, big=a.big, reorder=not a.no_reorder,
                      delay_ms=a.delay_ms, forge=a.forge, forge_dest=a.forge_dest, forge_case=a.forge_case,
                      on_query=emit).start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    print("listening on %s" % srv.addr(), file=sys.stderr, flush=True)
    while not done.wait(0.5):
        pass
    srv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/python3
"""Chaos harness for dotproxy (issue 12, "a harness that finds the next one").

Drives the sanitizer build of the real daemon for a bounded time with a
random mix drawn from one seed: many TCP clients (pipelining, frames split
at random points, idling, closing abruptly mid-frame or with answers
pending, bursts of cache hits they never read), UDP garbage and valid
queries from several 127.x addresses, SIGHUP reloads that change the
timeout, the idle timeout, the policy, the hedge, the upstream set and the
forwarding zones (the chaos.test zone to a plain tcp:// upstream, or a
client's subzone to another DoT upstream, or neither), dot-responder
upstreams (DoT, and one plain TCP) that delay, drop, reorder, reset and
close and are restarted, and a SIGTERM at a random moment near the end.
DoT and DoH clients (chaos_enc.py, in threads) pipeline, reset streams,
cut records and handshakes, send bad frames and stop reading, while
reloads rewrite the listener certificate.

It asserts:
- no sanitizer report in the daemon's stderr; exit status 0 within the
  drain time after the SIGTERM;
- every valid query answered exactly once: UDP queries sent before the
  SIGTERM all answered (SERVFAIL/REFUSED count as answers), TCP queries of
  clients that read everything answered unless the connection was closed
  for a documented reason; a second answer to one query is a failure;
- no answer to the wrong client: every query name carries its client's
  marker (c<N>- for TCP, u<N>- for UDP, t<N>- DoT, d<N>- DoH) and every answer must match, on
  that socket, a query sent there (ID, name, type) and carry a well-formed
  answer from one of our upstreams;
- RSS (VmRSS) under 512 MB and not growing over the second half of the run.

Exit status: 0 pass, 1 a finding, 2 the harness could not set up. The last
line is a summary; on failure the replay command is printed.

Python 3 standard library, and python3-h2 for DoH (DNS wire handled by
hand: fast, and a malformed answer is a finding rather than an
exception). See README.md.
"""

import argparse
import collections
import hashlib
import heapq
import os
import random
import re
import resource
import select
import selectors
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))
from dphelpers import free_port  # noqa: E402  (a port free for UDP and TCP)
CI_SEED = 1203  # the CI run's seed: change it only by a commit
ENC = None      # chaos_enc (the DoT and DoH clients), imported by main() unless both are disabled
CERT_VARIANTS = 3  # listener certificates besides the first, written over it by reloads
UPSTREAM_NAME = "upstream.test"
RSS_LIMIT_MB = 512
DRAIN_S = 6          # --drain-timeout; every --timeout the mix picks is below it
ANSWER_WAIT_S = 12   # a reading TCP client waits this long for its answers
RELOAD_MARGIN_S = 0.5  # a reload may take effect this long after its SIGHUP
SO_TIMESTAMPNS = 35    # Linux: the kernel's receive time of what a recvmsg returns (evidence only)
CMSG_TS = socket.CMSG_SPACE(16)
# Work one loop turn may do, so that a turn stays short and every client
# reads on time (a harness that reads late sees closes the daemon made on
# time): queries built per burst chunk, answers parsed per client per turn,
# and both summed over all clients per turn.
BURST_CHUNK = 512
BUILD_PER_TURN = 32768
PARSE_PER_CLIENT = 256
PARSE_PER_TURN = 4096
PREBUILD_PER_TURN = 16384  # burst queries built ahead, while the storm waits for its moment
QT_A, QT_AAAA = 1, 28

SAN_PATTERNS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                "AddressSanitizer:DEADLYSIGNAL", "ERROR: ThreadSanitizer", "SUMMARY: UndefinedBehaviorSanitizer")

# The upstreams: dot-responder with fault flags, each answering its own
# address so that an answer's data says who made it.
RESPONDERS = [
    ("clean", []),
    ("slow", ["--delay-ms", "150", "--delay-pct", "40", "--reorder"]),
    ("lossy", ["--drop-pct", "3", "--close-after", "150"]),
    ("resetting", ["--reset-mid-record", "60", "--idle-close-ms", "2000"]),
    ("plain", ["--drop-pct", "2", "--close-after", "200", "--delay-ms", "50", "--delay-pct", "20"]),
]
PLAIN = len(RESPONDERS) - 1  # plain DNS over TCP (--listen-tcp): a forwarding zone's only
DOT = range(PLAIN)           # the others speak DoT and may serve the default route


def answer_ip(i):
    return "192.0.2.%d" % (10 + i)


def answer_ip6(i):
    return "2001:db8::%x" % (0x10 + i)


GOOD_A = {socket.inet_aton(answer_ip(i)) for i in range(len(RESPONDERS))}
GOOD_AAAA = {socket.inet_pton(socket.AF_INET6, answer_ip6(i)) for i in range(len(RESPONDERS))}


# ================================================================ DNS wire

def encode_name(name):
    out = bytearray()
    for label in name.rstrip(".").split("."):
        b = label.encode()
        out.append(len(b))
        out += b
    out.append(0)
    return bytes(out)


def build_query(qid, name, qtype, edns):
    hdr = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 1 if edns else 0)
    q = encode_name(name) + struct.pack("!HH", qtype, 1)
    if edns:
        q += b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 0)
    return hdr + q


def read_name(data, off):
    """(lower-case name without the final dot, offset after it); follows
    compression pointers (bounded). Raises ValueError."""
    labels = []
    end = None
    for _ in range(128):
        if off >= len(data):
            raise ValueError("name runs off the message")
        ln = data[off]
        if ln == 0:
            off += 1
            break
        if ln & 0xC0 == 0xC0:
            if off + 1 >= len(data):
                raise ValueError("cut pointer")
            if end is None:
                end = off + 2
            off = ((ln & 0x3F) << 8) | data[off + 1]
            continue
        if ln & 0xC0:
            raise ValueError("bad label type")
        labels.append(bytes(data[off + 1:off + 1 + ln]).decode("latin-1").lower())
        off += 1 + ln
    else:
        raise ValueError("pointer loop")
    return ".".join(labels), (end if end is not None else off)


def parse_response(data):
    """-> (qid, qname, qtype, rcode, problem or None). qname is None when
    the message has no readable question."""
    if len(data) < 12:
        return None, None, None, None, "shorter than a header"
    qid, flags, qd, an, ns, ar = struct.unpack("!HHHHHH", data[:12])
    rcode = flags & 0xF
    if qd != 1:
        return qid, None, None, rcode, "qdcount %d" % qd
    try:
        qname, off = read_name(data, 12)
        if off + 4 > len(data):
            return qid, qname, None, rcode, "cut question"
        qtype, qclass = struct.unpack("!HH", data[off:off + 4])
        off += 4
        if not flags & 0x8000:
            return qid, qname, qtype, rcode, "QR not set"
        if (flags >> 11) & 0xF:
            return qid, qname, qtype, rcode, "opcode %d" % ((flags >> 11) & 0xF)
        if qclass != 1:
            return qid, qname, qtype, rcode, "class %d" % qclass
        if rcode not in (0, 2, 5):
            return qid, qname, qtype, rcode, "rcode %d to a valid query" % rcode
        if rcode == 0:
            if an < 1 and flags & 0x0200:
                return qid, qname, qtype, rcode, None  # truncated: the client would retry over TCP
            if an < 1:
                return qid, qname, qtype, rcode, "NOERROR without an answer"
            owner, off = read_name(data, off)
            if off + 10 > len(data):
                return qid, qname, qtype, rcode, "cut answer record"
            rtype, rclass, _ttl, rdlen = struct.unpack("!HHIH", data[off:off + 10])
            rdata = bytes(data[off + 10:off + 10 + rdlen])
            if owner != qname or rtype != qtype or rclass != 1 or len(rdata) != rdlen:
                return qid, qname, qtype, rcode, "answer record %s/%d does not match the question" % (owner, rtype)
            if rdata not in (GOOD_A if qtype == QT_A else GOOD_AAAA):
                return qid, qname, qtype, rcode, "answer data %s is no upstream's" % rdata.hex()
    except ValueError as e:
        return qid, None, None, rcode, "unreadable: %s" % e
    return qid, qname, qtype, rcode, None


MARKER = re.compile(r"^([cugtd]\d+)-")


def marker_of(qname):
    m = MARKER.match(qname or "")
    return m.group(1) if m else None


# ================================================================ processes

def tail(path, n=60):
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "<no log>"


class Responder:
    """One tools/dot-responder; restartable on the same port."""

    def __init__(self, run, idx):
        self.run, self.idx = run, idx
        self.kind, self.flags = RESPONDERS[idx]
        self.port = 0
        self.proc = None
        self.old = None  # the process being restarted
        self.starts = 0

    def start(self):
        self.starts += 1
        log = self.run.dir / ("responder-%d-%d.log" % (self.idx, self.starts))
        if self.idx == PLAIN:
            listen = ["--listen-tcp", "127.0.0.1:%d" % self.port]
        else:
            listen = ["--listen", "127.0.0.1:%d" % self.port, "--cert", str(self.run.dir / "server.pem"),
                      "--key", str(self.run.dir / "server.key")]
        args = [str(self.run.responder_exe)] + listen + [
                "--answer-ip", answer_ip(self.idx), "--answer-ip6", answer_ip6(self.idx),
                "--seed", str(self.run.seed % 1000003 + self.idx)] + self.flags
        with open(log, "wb") as f:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            m = re.search(r"listening on (?:tcp://)?127\.0\.0\.1:(\d+)", log.read_text(errors="replace"))
            if m:
                self.port = int(m.group(1))
                return True
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.stop()
        self.run.note("responder %s did not start: %s" % (self.kind, tail(log, 5)))
        return False

    def stop(self):
        for p in (self.proc, self.old):
            if p and p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=5)
        self.proc = self.old = None

    def upstream_arg(self):
        if self.idx == PLAIN:
            return "tcp://127.0.0.1:%d" % self.port
        return "127.0.0.1:%d#%s" % (self.port, UPSTREAM_NAME)


# ================================================================ clients

class Query:
    __slots__ = ("key", "t_sent", "before_term")

    def __init__(self, key):
        self.key = key
        self.t_sent = None
        self.before_term = None


class TcpClient:
    """One connection running a script: a list of steps executed in order
    ("send", bytes, [(end offset in the bytes, key)]), ("sleep", s),
    ("wait", s), ("read", bool), ("close", "fin"|"rst"|"shutwr")."""

    def __init__(self, run, cid, kind, rng, src):
        self.run, self.cid, self.kind, self.rng = run, cid, kind, rng
        self.marker = "c%d" % cid
        self.steps = collections.deque()
        self.stream = bytearray()   # bytes released, not yet written
        self.gen = None             # burst frames still to build: yields (bytes, [(end, Query)])
        self.pregen = None          # the same generator, built ahead into ready before the burst
        self.ready = collections.deque()
        self.stream_base = 0        # absolute offset of stream[0]
        self.frame_ends = collections.deque()  # (absolute end offset, Query)
        self.outstanding = {}       # key -> Query, fully written, unanswered
        self.unsent = {}            # key -> Query, not yet fully written
        self.done = set()
        self.inbuf = bytearray()
        self.reading = True
        self.state = "connecting"
        self.closed_by = None       # "us", "peer", "reset"
        self.t_closed = None
        self.t_connected = None     # by our clock: when the connect completed
        self.t_last_answer = None   # by our clock: when we read its last good answer
        self.t_rx_kernel = None     # when the kernel received what we read last (our clock; evidence only)
        self.t_last_answer_k = None # ... for its last good answer
        self.waiting = None         # deadline of a "wait" step
        self.nq = 0
        self.next_id = rng.randrange(65536)
        self.bodies = {}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            self.sock.bind((src, 0))
            self.lport = self.sock.getsockname()[1]
            self.sock.connect_ex(("127.0.0.1", run.dp_port))
        except OSError as e:
            self.sock.close()
            self.state = "closed"
            self.closed_by = "connect:%s" % e
            return
        self.events = selectors.EVENT_WRITE
        run.sel.register(self.sock, self.events, self)

    # ---------------------------------------------------------- script building

    def name(self, hot=None):
        self.nq += 1
        if hot is not None:
            return "%s-h%d.%s.%s.chaos.test" % (self.marker, hot, self.run.pad(hot), self.run.tag)
        return "%s-q%d.%s.chaos.test" % (self.marker, self.nq, self.run.tag)

    def frames(self, names, rng=None):
        """Wire bytes of one query per name and [(end offset, Query)]."""
        out = bytearray()
        ends = []
        rnd = (rng or self.rng).random
        for nm in names:
            qid = self.next_id
            self.next_id = (self.next_id + 1) & 0xFFFF
            qtype = QT_AAAA if rnd() < 0.2 else QT_A
            edns = rnd() < 0.3
            body = self.bodies.get((nm, qtype, edns))
            if body is None:  # the query after its ID (names repeat: built once)
                body = self.bodies[(nm, qtype, edns)] = build_query(0, nm, qtype, edns)[2:]
            out += struct.pack("!HH", len(body) + 2, qid)
            out += body
            q = Query((qid, nm.lower(), qtype))
            self.unsent[q.key] = q
            ends.append((len(out), q))
        return bytes(out), ends

    # ---------------------------------------------------------- running

    def kick(self):
        """Run steps until one has to wait."""
        while self.steps and self.state == "open":
            if self.waiting is not None:
                if self.outstanding or self.unsent_pending():
                    if time.monotonic() < self.waiting:
                        return
                    if self.kind in ("good", "split") and self.run.term_t is None:
                        self.run.fail("lost", "TCP client %s (%s): %d queries unanswered after %d s on an open "
                                      "connection, e.g. %s" % (self.marker, self.kind, len(self.outstanding),
                                                               ANSWER_WAIT_S, next(iter(self.outstanding), None)))
                self.waiting = None
            step = self.steps.popleft()
            op = step[0]
            if op == "send":
                self.release(step[1], step[2])
                self.flush()
            elif op == "sendgen":
                self.gen = step[1]
                self.flush()
            elif op == "sleep":
                self.run.at(time.monotonic() + step[1], self.kick)
                return
            elif op == "until":
                if time.monotonic() < step[1]:
                    self.run.at(step[1], self.kick)
                    return
            elif op == "wait":
                self.waiting = time.monotonic() + step[1]
                self.run.at(self.waiting + 0.01, self.kick)
            elif op == "read":
                self.reading = step[1]
                self.update_events()
            elif op == "close":
                self.close_by_us(step[1])
                return

    def unsent_pending(self):
        return bool(self.stream) or self.gen is not None

    def release(self, data, ends):
        """Queue data for writing; ends: [(end offset in data, Query)]."""
        base = self.stream_base + len(self.stream)
        for end, q in ends:
            self.frame_ends.append((base + end, q))
        self.stream += data

    def build_more(self):
        """Build the next chunk of a burst if this turn's budget allows
        (else a later turn does: the socket stays registered for writing)."""
        if self.gen is None or len(self.stream) >= 262144:
            return
        if self.ready:
            self.release(*self.ready.popleft())
            return
        if self.run.build_budget <= 0:
            return
        nxt = next(self.gen, None)
        if nxt is None:
            self.gen = None
            return
        self.run.build_budget -= BURST_CHUNK
        self.release(*nxt)

    def peer_gone(self):
        """True when the daemon's FIN is already in our socket (whatever
        data precedes it stays buffered for reading)."""
        p = select.poll()
        p.register(self.sock.fileno(), select.POLLRDHUP)
        return any(ev & select.POLLRDHUP for _, ev in p.poll(0))

    def update_events(self):
        if self.state != "open":
            return
        ev = ((selectors.EVENT_READ if self.reading else 0)
              | (selectors.EVENT_WRITE if self.stream or self.gen is not None else 0))
        if ev != self.events:
            if ev == 0:
                self.run.sel.unregister(self.sock)
            elif self.events == 0:
                self.run.sel.register(self.sock, ev, self)
            else:
                self.run.sel.modify(self.sock, ev, self)
            self.events = ev

    def flush(self):
        self.build_more()
        while self.stream and self.state == "open":
            # a query written into a connection the daemon already closed
            # (FIN in our socket before we send) cannot be answered: book
            # the close before the send, the queries sent before it stay
            # in the books
            if self.peer_gone():
                self.peer_closed("peer_before_send")
                return
            try:
                n = self.sock.send(self.stream[:262144])
            except BlockingIOError:
                break
            except OSError:
                self.peer_closed("reset")
                return
            del self.stream[:n]
            self.stream_base += n
            now = time.monotonic()
            while self.frame_ends and self.frame_ends[0][0] <= self.stream_base:
                _, q = self.frame_ends.popleft()
                self.unsent.pop(q.key, None)
                q.t_sent = now
                q.before_term = self.run.term_t is None
                self.outstanding[q.key] = q
                self.run.stats["tcp_sent"] += 1
            if not self.stream:
                self.build_more()
        self.update_events()

    def on_event(self, mask):
        if self.state == "connecting":
            err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self.state = "closed"
                self.closed_by = "connect:%s" % os.strerror(err)
                self.run.sel.unregister(self.sock)
                self.sock.close()
                self.run.stats["tcp_connect_failed"] += 1
                return
            self.state = "open"
            self.t_connected = time.monotonic()
            self.run.stats["tcp_connected"] += 1
            self.update_events()
            self.kick()
            return
        if mask & selectors.EVENT_WRITE:
            self.flush()
        if self.state == "open" and mask & selectors.EVENT_READ:
            self.read()

    def read(self):
        """Parse what is buffered, then read more, within this turn's
        budget; a client with answers left over is continued next turn."""
        cap = PARSE_PER_CLIENT
        for _ in range(16):
            left, more = self.parse(cap)
            if more or left <= 0:
                if more:
                    self.run.busy[self] = None
                break
            cap = left
            try:
                data = self.recv()
            except BlockingIOError:
                break
            except OSError:
                self.peer_closed("reset")
                return
            if not data:
                self.peer_closed("peer")
                return
            self.inbuf += data
        if self.state == "open" and self.waiting is not None and not self.outstanding:
            self.kick()

    def parse(self, cap=None):
        """Check up to cap buffered answers (all when None) and the run's
        turn budget; -> (cap left, whether a complete answer is left)."""
        off = 0
        buf = self.inbuf
        run = self.run
        n = 0
        limit = None if cap is None else min(cap, run.parse_budget)
        while len(buf) - off >= 2:
            (ln,) = struct.unpack_from("!H", buf, off)
            if len(buf) - off - 2 < ln:
                break
            if limit is not None and n >= limit:
                break
            run.tcp_answer(self, bytes(buf[off + 2:off + 2 + ln]))
            off += 2 + ln
            n += 1
        if off:
            del buf[:off]
        run.parse_budget -= n
        more = len(buf) >= 2 and len(buf) - 2 >= struct.unpack_from("!H", buf, 0)[0]
        return (None if cap is None else min(cap - n, run.parse_budget)), more

    def peer_closed(self, how):
        if self.state != "open":
            return
        self.drain()
        self.parse()
        self.finish(how)

    def drain(self):
        """Take what the kernel still holds for us (bounded): answers that
        came before the close are checked like any other, also when the
        close showed up as a failed send or we had stopped reading."""
        for _ in range(64):
            try:
                data = self.recv()
            except OSError:
                return
            if not data:
                return
            self.inbuf += data

    def recv(self):
        """recv, noting when the kernel received the last of it (a harness
        that reads late shows as a gap between that and our clock)."""
        data, anc, _, _ = self.sock.recvmsg(65536, CMSG_TS)
        for lvl, typ, d in anc:
            if lvl == socket.SOL_SOCKET and typ == SO_TIMESTAMPNS and len(d) >= 16:
                sec, ns = struct.unpack("qq", d[:16])
                self.t_rx_kernel = sec + ns / 1e9 - (time.time() - time.monotonic())
        return data

    def close_by_us(self, mode):
        if self.state != "open":
            return
        if mode == "shutwr":
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            self.reading = True
            self.update_events()
            return
        if mode == "rst":
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.finish("us")

    def finish(self, how):
        self.state = "closed"
        self.closed_by = how
        self.t_closed = time.monotonic()
        if self.events:
            self.run.sel.unregister(self.sock)
            self.events = 0
        self.sock.close()
        self.run.tcp_closed(self)


class UdpSock:
    def __init__(self, run, sid, src, garbage=False):
        self.run, self.sid, self.garbage = run, sid, garbage
        self.marker = ("g%d" if garbage else "u%d") % sid
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind((src, 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.outstanding = {}
        self.done = set()
        self.nq = 0
        self.next_id = 0
        run.sel.register(self.sock, selectors.EVENT_READ, self)

    def send_query(self, rng):
        self.nq += 1
        hot = rng.randrange(8) if rng.random() < 0.4 else None
        if hot is not None:
            nm = "%s-h%d.%s.%s.chaos.test" % (self.marker, hot, self.run.pad(hot), self.run.tag)
        else:
            nm = "%s-q%d.%s.chaos.test" % (self.marker, self.nq, self.run.tag)
        self.next_id = (self.next_id + 1 + rng.randrange(3)) & 0xFFFF
        qtype = QT_AAAA if rng.random() < 0.2 else QT_A
        q = Query((self.next_id, nm.lower(), qtype))
        if q.key in self.outstanding:
            return
        try:
            self.sock.sendto(build_query(q.key[0], nm, qtype, rng.random() < 0.3),
                                                         ("127.0.0.1", self.run.dp_port))
        except OSError:
            return
        q.t_sent = time.monotonic()
        q.before_term = self.run.term_t is None
        self.outstanding[q.key] = q
        self.run.stats["udp_sent" if q.before_term else "udp_sent_after_term"] += 1

    def send_garbage(self, rng):
        kind = rng.randrange(6)
        nm = "%s-x%d.%s.chaos.test" % (self.marker, rng.randrange(1000), self.run.tag)
        good = build_query(rng.randrange(65536), nm, QT_A, False)
        if kind == 0:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 80)))
        elif kind == 1:
            data = good[:rng.randrange(1, len(good))]
        elif kind == 2:  # a response: must be ignored
            data = good[:2] + bytes([good[2] | 0x80]) + good[3:]
        elif kind == 3:  # bogus counts
            data = good[:4] + struct.pack("!HHHH", rng.randrange(65536), rng.randrange(65536),
                                          rng.randrange(65536), rng.randrange(65536)) + good[12:]
        elif kind == 4:  # a compression loop in the question
            data = good[:12] + b"\xc0\x0c" + struct.pack("!HH", 1, 1)
        else:  # random bytes after a valid header
            data = good[:12] + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
        try:
            self.sock.sendto(data, ("127.0.0.1", self.run.dp_port))
            self.run.stats["udp_garbage"] += 1
        except OSError:
            pass

    def on_event(self, mask):
        for _ in range(64):
            try:
                data = self.sock.recv(65535)
            except BlockingIOError:
                return
            except OSError:
                return
            self.run.udp_answer(self, data)


# ================================================================ the run

class Run:
    def __init__(self, args, seed):
        self.args = args
        self.seed = seed
        self.rng = random.Random(seed)
        self.tag = "".join(self.rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(6))
        self.pads = {}
        self.disabled = set(args.disable)
        self.build = Path(args.build_dir).resolve()
        self.sel = selectors.DefaultSelector()
        self.timers = []
        self.tseq = 0
        self.failures = []
        self.fail_counts = collections.Counter()
        self.notes = []
        self.stats = collections.Counter()
        self.tcp = set()  # open clients
        self.tcp_lost = []
        self.tcp_live = 0
        self.udp = []
        self.term_t = None
        self.rss = []  # (t, MB)
        self.cid = 0
        self.dir = None
        self.proc = None
        self.responders = []
        self.udp_drops_daemon = 0
        self.idle_hist = []  # (time the config took effect at the earliest, its tcp-idle-timeout in s)
        self.stalls = []     # (from, to): the loop was away that long (evidence for a lost client)
        self.loop_t = 0.0    # when the loop's current turn began
        self.busy = {}       # clients with answers left to parse (in order: round robin)
        self.build_budget = self.parse_budget = 0
        self.prebuild = collections.deque()  # burst clients whose frames are built ahead
        # the encrypted clients (chaos_enc.py) run in threads: what they share
        self.lock = threading.Lock()   # fail() and count() from any thread
        self.enc_stop = threading.Event()
        self.enc_threads = []
        self.enc_hs_failed = []        # well-behaved clients whose connect or handshake failed
        self.enc_session = {}          # thread -> its last TLS session (resumed by the next)
        self.enc_certs_seen = set()
        self.cert_hist = []            # (time the listener cert file was written, its index)
        self.cert_index = {}           # sha256 of a cert's DER -> its index
        self.cert_rng = random.Random("%d-cert" % seed)

    # ---------------------------------------------------------- bookkeeping

    def note(self, msg):
        self.notes.append(msg)
        if self.args.verbose:
            print("[%7.2f] %s" % (time.monotonic() - self.t0, msg), flush=True)

    def fail(self, kind, msg):
        with self.lock:
            self.fail_counts[kind] += 1
            if self.fail_counts[kind] <= 5:
                self.failures.append("%s: %s" % (kind, msg))
                print("[%7.2f] FAIL %s: %s" % (time.monotonic() - self.t0, kind, msg), flush=True)

    def count(self, key, n=1):
        with self.lock:
            self.stats[key] += n

    def at(self, t, fn, *a):
        self.tseq += 1
        heapq.heappush(self.timers, (t, self.tseq, fn, a))

    def pad(self, hot):
        """A long label shared by a hot name, so that cache-hit answers are
        big and a burst fills a client's write queue quickly."""
        if hot not in self.pads:
            r = random.Random("%d-pad-%d" % (self.seed, hot))
            self.pads[hot] = "p" + "".join(r.choice("abcdefghij") for _ in range(r.randrange(10, 60)))
        return self.pads[hot]

    # ---------------------------------------------------------- answers

    def check_answer(self, where, owner_marker, table, done, data):
        qid, qname, qtype, rcode, problem = parse_response(data)
        m = marker_of(qname)
        if qname is not None and m != owner_marker:
            self.fail("wrong-client", "%s got an answer for %s (marker %s, id %s)" % (where, qname, m, qid))
            return None
        if problem:
            self.fail("bad-answer", "%s: %s (id %s name %s)" % (where, problem, qid, qname))
            return None
        key = (qid, qname, qtype)
        q = table.pop(key, None)
        if q is None:
            if key in done:
                self.fail("duplicate", "%s: a second answer to id %d %s type %d" % (where, qid, qname, qtype))
            else:
                self.fail("unexpected", "%s: an answer to id %d %s type %d, never asked (or not fully sent) there"
                          % (where, qid, qname, qtype))
            return None
        done.add(key)
        self.stats["rcode%d" % rcode] += 1
        return q

    def tcp_answer(self, c, data):
        q = self.check_answer("TCP client %s (%s)" % (c.marker, c.kind), c.marker, c.outstanding, c.done, data)
        if q is not None:
            c.t_last_answer = time.monotonic()
            c.t_last_answer_k = c.t_rx_kernel
            self.stats["tcp_answered"] += 1

    def udp_answer(self, u, data):
        if u.garbage:
            qid, qname, qtype, rcode, problem = parse_response(data)
            m = marker_of(qname)
            if qname is not None and m is not None and m != u.marker:
                self.fail("wrong-client", "UDP garbage socket %s got an answer for %s" % (u.marker, qname))
            self.stats["udp_garbage_answers"] += 1
            return
        q = self.check_answer("UDP socket %s" % u.marker, u.marker, u.outstanding, u.done, data)
        if q is not None:
            self.stats["udp_answered"] += 1

    def tcp_closed(self, c):
        """Book a closed client, then drop what it holds (a long run has
        hundreds of thousands of them)."""
        self.tcp_live -= 1
        self.stats["tcp_closed_" + c.closed_by] += 1
        if c.closed_by == "peer_before_send" and c.kind in ("good", "split"):
            self.stats["tcp_closed_before_send_checked"] += 1
            self.note("%s (%s, port %d) closed by the daemon before it sent its next queries, at +%.2f s"
                      % (c.marker, c.kind, c.lport, time.monotonic() - self.t0))
        if c.kind in ("good", "split"):
            self.check_close(c, "tcp")
        c.outstanding = c.unsent = c.bodies = None
        c.done = c.steps = c.frame_ends = c.stream = c.inbuf = c.gen = c.pregen = c.ready = None
        self.busy.pop(c, None)
        self.tcp.discard(c)

    def check_close(self, c, proto):
        """Book a reading client (TCP good/split, or a well-behaved
        encrypted one, from its thread) closed with queries unanswered that
        it sent before the SIGTERM: an idle close by the daemon's rules, or
        a loss (a finding at the verdict unless documented closes explain it)."""
        pend = [q for q in c.outstanding.values() if q.before_term]
        if pend and c.closed_by != "us":
            first = min(pend, key=lambda q: q.t_sent)
            idle = self.idle_close_excuse(c, first)
            if idle:
                self.count("tcp_idle_forgiven")
                self.note("%s (%s, port %d) closed by %s at +%.2f s with %d unanswered: an idle close, %s"
                          % (c.marker, c.kind, c.lport, c.closed_by, c.t_closed - self.t0, len(pend), idle))
            else:
                start = c.t_last_answer if c.t_last_answer is not None else c.t_connected
                self.tcp_lost.append("%s %s (%s, port %d) closed by %s at +%.2f s (%s) with %d of %d unanswered, "
                                     "the oldest sent %.2f s before the close, %.2f s after its %s "
                                     "(idle timeout %g s)%s: %s"
                                     % (proto, c.marker, c.kind, c.lport, c.closed_by, c.t_closed - self.t0,
                                        "before the SIGTERM" if self.term_t is None else
                                        "SIGTERM at +%.2f s" % (self.term_t - self.t0),
                                        len(pend), len(pend) + len(c.done), c.t_closed - first.t_sent,
                                        first.t_sent - start,
                                        "last answer" if c.t_last_answer is not None else "connect",
                                        min_idle_timeout(self.idle_hist, start, first.t_sent),
                                        ("" if c.t_last_answer is None or c.t_last_answer_k is None else
                                         "; the kernel's receive stamp of that read (its last answer, or a FIN "
                                         "that came after it) %.2f s before we read it"
                                         % (c.t_last_answer - c.t_last_answer_k))
                                        + self.stalled(start - 3, first.t_sent), first.key))

    def stalled(self, t1, t2):
        """Evidence: how long the harness loop was away within [t1, t2]."""
        now = time.monotonic()
        spans = self.stalls + ([(self.loop_t, now)] if now - self.loop_t > 0.25 else [])  # this turn too
        away = sum(min(b, t2) - max(a, t1) for a, b in spans if b > t1 and a < t2)
        return "; the harness loop away %.2f s in the 3 s before the gap and in it" % away if away > 0 else ""

    def idle_close_excuse(self, c, first):
        """Why closing c with first (its oldest unanswered query) unanswered
        was an idle close by the daemon's rules, or None. The daemon's idle
        period starts with the connect or when its last answer is out, and
        only a complete query ends it; by our clock the answer arrived no
        earlier and the query left no later, so a gap of at least the
        smallest --tcp-idle-timeout in force meanwhile means the daemon
        was idle too. A smaller gap is no excuse: harness lag that does
        not add up to a whole idle period is the daemon's to absorb."""
        start = c.t_last_answer if c.t_last_answer is not None else c.t_connected
        if start is None or first.t_sent is None:
            return None
        gap = first.t_sent - start
        floor = min_idle_timeout(self.idle_hist, start, first.t_sent)
        if gap < floor:
            return None
        return ("its first unanswered query fully sent %.2f s after its %s, idle timeout %g s"
                % (gap, "last answer" if c.t_last_answer is not None else "connect", floor))

    # ---------------------------------------------------------- the daemon

    def setup(self):
        self.dir = Path(tempfile.mkdtemp(prefix="dp-chaos-", dir="/tmp"))
        os.chmod(self.dir, 0o755)  # the daemon reads the config as nobody after a reload
        dp = self.build / "dotproxy"
        rs = self.build / "tools" / "dot-responder"
        for p in (dp, rs):
            if not os.access(p, os.X_OK):
                raise SetupError("%s is not built" % p)
        # own names, so that a pkill -x elsewhere cannot hit these processes
        self.dp_exe = self.dir / "dp-chaos"
        self.dp_exe.symlink_to(dp)
        self.responder_exe = self.dir / "dr-chaos"
        self.responder_exe.symlink_to(rs)
        r = subprocess.run(["bash", str(REPO / "tools" / "mkcert.sh"), str(self.dir), UPSTREAM_NAME],
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise SetupError("mkcert.sh failed: %s%s" % (r.stdout, r.stderr))
        self.make_listener_certs()
        if ENC:
            ENC.make_contexts(self)
        for f in self.dir.iterdir():
            if f.is_file() and not f.is_symlink():
                os.chmod(f, 0o644)
        for i in range(len(RESPONDERS)):
            resp = Responder(self, i)
            if not resp.start():
                raise SetupError("dot-responder %d did not start" % i)
            self.responders.append(resp)
        self.conf = self.dir / "dotproxy.conf"
        self.write_config(first=True)
        self.idle_hist.append((float("-inf"), self.cur_idle_s))
        try:
            self.dp_port = free_port()
            self.tls_port = self.https_port = self.dp_port
            while self.tls_port == self.dp_port:
                self.tls_port = free_port()
            while self.https_port in (self.dp_port, self.tls_port):
                self.https_port = free_port()
        except RuntimeError as e:
            raise SetupError(str(e))
        self.stderr_path = self.dir / "dotproxy.stderr"
        args = [str(self.dp_exe), "--config", str(self.conf), "--listen", "127.0.0.1:%d" % self.dp_port,
                "--threads", str(self.args.threads), "--cache-size", "2", "--drain-timeout", "%ds" % DRAIN_S,
                "--log-level", "info"]
        if ENC:
            args += ["--listen-tls", "127.0.0.1:%d" % self.tls_port, "--listen-https", "127.0.0.1:%d" % self.https_port,
                     "--cert", str(self.dp_cert), "--key", str(self.dir / "server.key"),
                     "--listen-tls-handshake-timeout", "%ds" % ENC.HS_TIMEOUT_S]
        self.dp_args = args
        env = dict(os.environ)
        env["ASAN_OPTIONS"] = ("detect_leaks=1:abort_on_error=1:halt_on_error=1:quarantine_size_mb=16:"
                               "malloc_context_size=20:detect_stack_use_after_return=0")
        env["UBSAN_OPTIONS"] = "halt_on_error=1:abort_on_error=1:print_stacktrace=1"
        env["LSAN_OPTIONS"] = "exitcode=23"
        with open(self.stderr_path, "wb") as f:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=f, stderr=f, env=env,
                                         start_new_session=True)
        if not self.probe(20):
            raise SetupError("dotproxy did not answer a UDP query within 20 s (rc=%s):\n%s"
                             % (self.proc.poll(), tail(self.stderr_path)))

    def make_listener_certs(self):
        """The certificates of the daemon's TLS and HTTPS listeners: the
        responders' (upstream.test and 127.0.0.1, from tools/mkcert.sh)
        and CERT_VARIANTS more for the same name and key from the same CA,
        which reloads write over the listener's cert file (the key file
        stays: a reload never sees a key and a cert that do not match)."""
        self.dp_cert = self.dir / "listener.pem"
        self.certs = [(self.dir / "server.pem").read_bytes()]
        ext = self.dir / "leaf.ext"
        ext.write_text("basicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature\n"
                       "extendedKeyUsage = serverAuth\nsubjectAltName = DNS:%s, IP:127.0.0.1\n" % UPSTREAM_NAME)
        for i in range(1, CERT_VARIANTS + 1):
            csr, leaf = self.dir / ("v%d.csr" % i), self.dir / ("v%d.pem" % i)
            for cmd in (["openssl", "req", "-new", "-key", str(self.dir / "server.key"), "-subj",
                         "/CN=%s" % UPSTREAM_NAME, "-out", str(csr)],
                        ["openssl", "x509", "-req", "-in", str(csr), "-CA", str(self.dir / "ca.pem"),
                         "-CAkey", str(self.dir / "ca.key"), "-days", "2", "-sha256", "-set_serial",
                         str(self.seed * 16 + i), "-extfile", str(ext), "-out", str(leaf)]):
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
                if r.returncode != 0:
                    raise SetupError("openssl failed: %s %s" % (cmd, r.stderr))
            self.certs.append(leaf.read_bytes() + (self.dir / "ca.pem").read_bytes())
        for i, pem in enumerate(self.certs):
            der = ssl.PEM_cert_to_DER_cert(pem.decode().split("-----END CERTIFICATE-----")[0]
                                           + "-----END CERTIFICATE-----\n")
            self.cert_index[hashlib.sha256(der).hexdigest()] = i
        self.write_cert(0)

    def write_cert(self, i):
        """Write certificate i over the listener's cert file (atomically)."""
        self.cert_hist.append((time.monotonic(), i))  # stamped before: never in force earlier
        self.cur_cert = i
        tmp = self.dp_cert.with_name(".listener.pem.tmp")
        tmp.write_bytes(self.certs[i])
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.dp_cert)

    def certs_allowed(self, t1, t2):
        """The certificates a full handshake begun at t1 (less the reload
        margin) and done at t2 may see: the one written last before t1 and
        any written up to t2."""
        ok, last = set(), 0
        for t, i in list(self.cert_hist):
            if t <= t1:
                last = i
            elif t <= t2:
                ok.add(i)
        ok.add(last)
        return ok

    def probe(self, secs):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(0.3)
        try:
            q = build_query(4242, "ready.%s.chaos.test" % self.tag, QT_A, False)
            deadline = time.monotonic() + secs
            while time.monotonic() < deadline and self.proc.poll() is None:
                s.sendto(q, ("127.0.0.1", self.dp_port))
                try:
                    if s.recv(65535)[:2] == q[:2]:
                        return True
                except OSError:
                    pass
            return False
        finally:
            s.close()

    def write_config(self, first=False):
        r = self.rng
        ups = [i for i in DOT if r.random() < 0.5]
        if first or not ups or ("upstream" in self.disabled):
            ups = [0] if "upstream" in self.disabled else (ups or [0])
        if r.random() < 0.5 and 0 not in ups:
            ups.append(0)
        self.cur_upstreams = ups
        lines = ["# written by tests/chaos/chaos.py seed=%d" % self.seed]
        lines += ["upstream %s" % self.responders[i].upstream_arg() for i in ups]
        lines += self.forward_lines(r)
        timeout = r.choice(["300ms", "700ms", "1s", "1500ms", "2s"])
        idle = r.choice(["2s", "3s", "5s", "10s"])
        self.cur_idle_s = float(idle[:-1])
        self.note("config: upstreams %s timeout %s tcp-idle-timeout %s"
                  % ([RESPONDERS[i][0] for i in ups], timeout, idle))
        lines += ["ca-file %s" % (self.dir / "ca.pem"),
                  "timeout %s" % timeout,
                  "tcp-idle-timeout %s" % idle,
                  "upstream-policy %s" % r.choice(["fastest", "round-robin"]),
                  "hedge-after %s" % r.choice(["auto", "off", "100ms", "400ms"])]
        tmp = self.conf.with_name(".dotproxy.conf.tmp")
        tmp.write_text("\n".join(lines) + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.conf)

    def forward_lines(self, r):
        """Forwarding zones for this config: all of chaos.test to the plain
        upstream, or the names of one run tag (a longer suffix) to a DoT
        upstream beside it, or none; reloads move queries between them."""
        if "upstream" in self.disabled:
            return []
        lines = []
        if r.random() < 0.5:
            lines.append("forward chaos.test %s" % self.responders[PLAIN].upstream_arg())
        if r.random() < 0.3:
            lines.append("forward %s.chaos.test %s" % (self.tag, self.responders[r.choice(DOT)].upstream_arg()))
        self.note("config: zones %s" % [l.split()[1] for l in lines])
        return lines

    def reload(self):
        if self.term_t is not None or self.proc.poll() is not None:
            return
        self.write_config()
        self.idle_hist.append((time.monotonic(), self.cur_idle_s))  # stamped before: never in force earlier
        # its own generator: the configs a seed writes stay those it wrote before
        if ENC and "cert" not in self.disabled and self.cert_rng.random() < 0.4:
            nxt = self.cert_rng.choice([i for i in range(len(self.certs)) if i != self.cur_cert])
            self.write_cert(nxt)
            self.stats["cert_rewrites"] += 1
            self.note("listener certificate %d written" % nxt)
        os.kill(self.proc.pid, signal.SIGHUP)
        self.stats["reloads"] += 1
        self.note("SIGHUP")

    def restart_responder(self, i, down_s):
        resp = self.responders[i]
        if resp.proc is None or resp.old is not None:
            return  # still restarting
        resp.old = resp.proc
        resp.old.terminate()  # not waited for here: the loop goes on
        resp.proc = None
        self.stats["upstream_restarts"] += 1
        self.note("responder %s down for %.1f s" % (resp.kind, down_s))
        self.at(time.monotonic() + down_s, self.responder_up, i, 0)

    def responder_up(self, i, tries):
        resp = self.responders[i]
        if resp.old is not None:
            if resp.old.poll() is None and tries < 50:
                self.at(time.monotonic() + 0.1, self.responder_up, i, tries + 1)
                return
            if resp.old.poll() is None:
                resp.old.kill()
                resp.old.wait(5)
                self.fail("responder", "dot-responder %s did not exit within 5 s of SIGTERM" % resp.kind)
            elif resp.old.returncode != 0:
                self.fail("responder", "dot-responder %s exited with %s after SIGTERM"
                          % (resp.kind, resp.old.returncode))
            resp.old = None
        if not resp.start() and tries < 70:
            self.at(time.monotonic() + 0.5, self.responder_up, i, tries + 1)

    def sample(self):
        try:
            for line in Path("/proc/%d/status" % self.proc.pid).read_text().splitlines():
                if line.startswith("VmRSS:"):
                    self.rss.append((time.monotonic() - self.t0, int(line.split()[1]) / 1024.0))
        except OSError:
            pass
        drops = udp_socket_drops(self.dp_port)
        if drops is not None:
            self.udp_drops_daemon = max(self.udp_drops_daemon, drops)

    # ---------------------------------------------------------- the mix

    def new_tcp(self, kind, rng=None, at_burst=None, big=False):
        if self.term_t is not None or self.tcp_live >= self.args.max_conns:
            return None
        self.cid += 1
        rng = rng or random.Random("%d-tcp-%d" % (self.seed, self.cid))
        src = "127.0.%d.%d" % (rng.randrange(2), rng.randrange(1, 60))
        c = TcpClient(self, self.cid, kind, rng, src)
        if c.state == "closed":
            self.stats["tcp_connect_failed"] += 1
            return None
        self.tcp.add(c)
        self.tcp_live += 1
        self.stats["tcp_" + kind] += 1
        script_for(c, rng, self, at_burst, big)
        return c

    def storm(self, n, burst_at, big=False):
        self.stats["storms"] += 1
        self.note("storm: %d burst clients, burst at +%.2f s" % (n, burst_at - time.monotonic()))
        for _ in range(n):
            self.new_tcp("burst", at_burst=burst_at, big=big)

    def schedule(self):
        """Top-level events, drawn from the seed up front (what happens and
        when does not depend on timing; only interleavings do)."""
        r = self.rng
        T = self.args.seconds
        t0 = self.t0
        self.term_at = t0 + T * r.uniform(0.85, 0.97) if "term" not in self.disabled else None
        end = self.term_at or (t0 + T)

        def poisson(rate, fn, *a):
            t = t0 + r.expovariate(rate)
            while t < end:
                self.at(t, fn, *a)
                t += r.expovariate(rate)

        kinds = ["good"] * 35 + ["split"] * 20 + ["burst"] * 10 + ["abrupt"] * 20 + ["idle"] * 15
        if "abrupt" in self.disabled:
            kinds = [k for k in kinds if k != "abrupt"]
        if "burst" in self.disabled:
            kinds = [k for k in kinds if k != "burst"]
        t = t0 + 0.1
        while t < end:
            self.at(t, self.new_tcp, r.choice(kinds))
            t += r.expovariate(self.args.tcp_rate)
        if "udp" not in self.disabled:
            poisson(self.args.udp_rate, self.udp_tick, random.Random("%d-udp" % self.seed))
        if "garbage" not in self.disabled:
            poisson(30.0, self.garbage_tick, random.Random("%d-garbage" % self.seed))
        if "reload" not in self.disabled:
            poisson(1 / 4.0, self.reload)
        if "upstream" not in self.disabled:
            rr = random.Random("%d-upstream" % self.seed)
            t = t0 + r.expovariate(1 / 6.0)
            while t < end:
                self.at(t, self.restart_responder, rr.randrange(len(RESPONDERS)), rr.uniform(0.1, 2.0))
                t += r.expovariate(1 / 6.0)
        if "burst" not in self.disabled:
            # the first storm early and at full size: it sets the memory
            # high-water mark the RSS growth check compares against
            t = t0 + r.uniform(0.1, 0.2) * T
            self.at(t, self.storm, 400, t + r.uniform(1.5, 3.0), True)
            t += r.expovariate(1 / 15.0)
            while t < end - 3:
                self.at(t, self.storm, r.randrange(50, 400), t + r.uniform(1.5, 3.0))
                t += r.expovariate(1 / 15.0)
            if self.term_at:
                # SIGTERM mid-burst
                # (bursts of 1000..4000 cache hits, the last of them sent
                # while the daemon still reads, just after the SIGTERM)
                self.at(self.term_at - r.uniform(1.5, 3.0), self.storm, r.randrange(150, 400),
                        self.term_at + r.uniform(-0.2, 0.05), True)
        if self.term_at:
            self.at(self.term_at, self.sigterm)

    def udp_tick(self, rng):
        u = self.udp[rng.randrange(len(self.udp))]
        if not u.garbage:
            u.send_query(rng)

    def garbage_tick(self, rng):
        g = [u for u in self.udp if u.garbage]
        g[rng.randrange(len(g))].send_garbage(rng)

    def sigterm(self):
        self.sample()
        self.term_t = time.monotonic()
        self.note("SIGTERM")
        os.kill(self.proc.pid, signal.SIGTERM)

    # ---------------------------------------------------------- loop

    def prebuild_step(self):
        """Build burst chunks ahead (bounded per turn), so that at the
        burst's moment the clients write at once, as a storm should."""
        budget = PREBUILD_PER_TURN
        while self.prebuild and budget > 0:
            c = self.prebuild[0]
            nxt = next(c.pregen, None) if c.pregen is not None and c.state != "closed" else None
            if nxt is None:
                self.prebuild.popleft()
                continue
            c.ready.append(nxt)
            budget -= BURST_CHUNK

    def loop_until(self, pred, limit):
        next_sample = 0
        prev = time.monotonic()
        while time.monotonic() < limit and not pred():
            now = time.monotonic()
            if now - prev > self.stats["harness_max_stall_ms"] / 1000.0:
                self.stats["harness_max_stall_ms"] = int((now - prev) * 1000)
            if now - prev > 0.25:
                self.stalls.append((prev, now))
                self.note("harness: the loop came round %.2f s late, at +%.2f s" % (now - prev, now - self.t0))
            prev = self.loop_t = now
            self.build_budget, self.parse_budget = BUILD_PER_TURN, PARSE_PER_TURN
            self.prebuild_step()
            if self.busy:
                todo, self.busy = self.busy, {}
                for c in todo:
                    if c.state == "open":
                        c.read()
            while self.timers and self.timers[0][0] <= now:
                _, _, fn, a = heapq.heappop(self.timers)
                fn(*a)
            if now >= next_sample:
                self.sample()
                next_sample = now + 0.25
            wait = 0.02
            if self.timers:
                wait = max(0.0, min(wait, self.timers[0][0] - now))
            if self.busy:
                wait = 0.0
            for key, mask in self.sel.select(timeout=wait):
                key.data.on_event(mask)

    def go(self):
        self.t0 = time.monotonic()
        print("chaos: seed=%d seconds=%g build=%s threads=%d disabled=%s" % (
            self.seed, self.args.seconds, self.build, self.args.threads, ",".join(sorted(self.disabled)) or "-"),
            flush=True)
        self.setup()
        self.t0 = time.monotonic()
        for i in range(8):
            self.udp.append(UdpSock(self, i, "127.0.0.%d" % (1 + i % 5)))
        for i in range(2):
            self.udp.append(UdpSock(self, 100 + i, "127.0.0.%d" % (6 + i), garbage=True))
        self.schedule()
        end = self.t0 + self.args.seconds
        if ENC:
            self.enc_threads = ENC.start(self, self.args.enc_threads, end)
        self.loop_until(lambda: self.proc.poll() is not None, end)
        if self.term_t is None:
            if self.proc.poll() is None:
                self.sigterm()
            else:
                self.term_t = time.monotonic()
                self.fail("exit", "dotproxy exited by itself (status %s) %.1f s into the run, before any SIGTERM"
                          % (self.proc.returncode, self.term_t - self.t0))
        # the schedule ends at the SIGTERM: from here on only the clients'
        # own steps run, and they read while the daemon drains
        self.loop_until(lambda: self.proc.poll() is not None, self.term_t + DRAIN_S + 10)
        if self.proc.poll() is None:
            self.fail("exit", "dotproxy still running %d s after SIGTERM (drain timeout %d s): killed"
                      % (DRAIN_S + 10, DRAIN_S))
            self.proc.kill()
            self.proc.wait(10)
        self.exit_s = time.monotonic() - self.term_t
        # the daemon is gone: read what is left in every socket
        for c in list(self.tcp):
            if c.state == "open":
                c.reading = True
                c.update_events()
        self.loop_until(lambda: all(c.state != "open" for c in self.tcp), time.monotonic() + 3)
        for u in self.udp:
            u.on_event(0)
        for c in list(self.tcp):
            if c.state == "open":
                c.finish("us")
        self.join_enc()

    def join_enc(self):
        """The daemon is gone: the encrypted clients see their closes and
        end; a thread still running after that is stopped (and said)."""
        deadline = time.monotonic() + 5
        for th in self.enc_threads:
            th.join(max(0.1, deadline - time.monotonic()))
        self.enc_stop.set()
        for th in self.enc_threads:
            th.join(5)
            if th.is_alive():
                self.fail("harness", "encrypted client thread %s did not end" % th.name)

    def verify(self):
        rc = self.proc.returncode
        err = Path(self.stderr_path).read_text(errors="replace")
        san = [l for l in err.splitlines() if any(p in l for p in SAN_PATTERNS)]
        if san:
            i = err.find(san[0])
            self.fail("sanitizer", "%s\n%s" % (san[0], err[max(0, i - 200):i + 6000]))
        if rc != 0:
            self.fail("exit", "dotproxy exit status %s %.1f s after SIGTERM (want 0)%s"
                      % (rc, self.exit_s, "" if san else "\n" + tail(self.stderr_path, 30)))
        elif self.exit_s > DRAIN_S + 5:
            self.fail("exit", "exit %.1f s after SIGTERM, drain timeout %d s" % (self.exit_s, DRAIN_S))
        for resp in self.responders:
            for log in sorted(self.dir.glob("responder-%d-*.log" % resp.idx)):
                text = log.read_text(errors="replace")
                hit = [l for l in text.splitlines() if any(p in l for p in SAN_PATTERNS)]
                if hit:
                    self.fail("responder-sanitizer", "%s: %s\n%s" % (log.name, hit[0], text[:4000]))
        for line in err.splitlines():
            if "reload rejected" in line:
                self.fail("reload", line)
        stats = {}
        for line in err.splitlines():
            if 'msg="stats"' in line:
                stats = dict((k, int(v)) for k, v in re.findall(r"(\w+)=(\d+)\b", line))
        self.dp_stats = stats
        # UDP: every query sent before the SIGTERM answered
        lost = []
        for u in self.udp:
            lost += [(u.marker, q.key) for q in u.outstanding.values() if q.before_term]
        our_drops = sum(udp_socket_drops(u.port) or 0 for u in self.udp)
        allowance = self.udp_drops_daemon + our_drops + stats.get("udp_send_errors", 0)
        self.stats["udp_unanswered_after_term"] = sum(1 for u in self.udp for q in u.outstanding.values()
                                                       if not q.before_term)
        if lost:
            if len(lost) <= allowance:
                self.note("%d UDP queries unanswered, explained by %d datagrams the kernel dropped "
                          "or the daemon could not send" % (len(lost), allowance))
            else:
                self.fail("udp-unanswered", "%d UDP queries sent before SIGTERM never answered (kernel drops: "
                          "daemon %d, ours %d; send errors %d), e.g. %s"
                          % (len(lost), self.udp_drops_daemon, our_drops, stats.get("udp_send_errors", 0),
                             lost[:5]))
        # TCP: clients that read everything lose nothing unless closed for
        # a documented reason
        documented = sum(stats.get(k, 0) for k in ("tcp_closed_memory", "tcp_evicted", "tcp_refused"))
        forgiven = self.stats["tcp_idle_forgiven"]
        if forgiven > stats.get("tcp_closed_idle", 0):
            self.fail("tcp-idle-forgiven", "%d reading TCP clients forgiven as idle closes, but the daemon "
                      "counted %d idle closes" % (forgiven, stats.get("tcp_closed_idle", 0)))
        if self.enc_hs_failed:
            msg = ("%d well-behaved encrypted clients could not connect or finish the handshake before the "
                   "SIGTERM, e.g.\n  %s" % (len(self.enc_hs_failed), "\n  ".join(self.enc_hs_failed[:5])))
            if documented:
                self.note(msg + " (documented closes: %d)" % documented)
            else:
                self.fail("tls-handshake", msg)
        if ENC and "cert" not in self.disabled and len(self.cert_hist) > 1 and len(self.enc_certs_seen) < 2:
            self.note("certificate rewritten %d times, but the full handshakes saw only %s"
                      % (len(self.cert_hist) - 1, sorted(self.enc_certs_seen, key=str)))
        tl = self.tcp_lost
        if tl:
            msg = ("%d reading TCP or encrypted clients closed by the daemon with queries sent before SIGTERM unanswered, "
                   "e.g.\n  %s" % (len(tl), "\n  ".join(tl[:5])))
            if documented:
                self.note(msg + " (documented closes: tcp_closed_memory+tcp_evicted+tcp_refused=%d)" % documented)
            else:
                self.fail("tcp-unanswered", msg)
        # RSS
        if self.rss:
            mx = max(m for _, m in self.rss)
            self.stats["rss_max_mb"] = int(mx)
            if mx > RSS_LIMIT_MB:
                self.fail("rss", "VmRSS reached %.0f MB (limit %d)" % (mx, RSS_LIMIT_MB))
            run_end = (self.term_t - self.t0)
            # growth: the peak of the second half against the peak of the
            # first (which holds the first storm, the biggest): a leak
            # keeps climbing, a high-water mark does not
            h1 = [m for t, m in self.rss if t < run_end / 2]
            h2 = [m for t, m in self.rss if run_end / 2 <= t <= run_end]
            if h1 and h2:
                p1, p2 = max(h1), max(h2)
                self.stats["rss_h1_mb"], self.stats["rss_h2_mb"] = int(p1), int(p2)
                if p2 > p1 * 1.10 + 48:
                    self.fail("rss-growth", "VmRSS grew over the second half: peak %.0f MB in the first half, "
                              "%.0f MB in the second" % (p1, p2))

    def cleanup(self):
        for r in self.responders:
            r.stop()
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for c in list(self.tcp):
            if c.state == "open":
                c.sock.close()
        for u in self.udp:
            u.sock.close()


class SetupError(Exception):
    pass


# ================================================================ client scripts

def script_for(c, rng, run, at_burst, big=False):
    """Fill c.steps according to c.kind."""
    S = c.steps
    wait = ANSWER_WAIT_S
    if c.kind == "good":
        for _ in range(rng.randrange(1, 6)):
            names = [c.name(hot=rng.randrange(6) if rng.random() < 0.4 else None)
                     for _ in range(rng.choice([1, 1, 2, 5, 20, 60]))]
            data, ends = c.frames(names)
            S.append(("send", data, ends))
            S.append(("wait", wait))
            if rng.random() < 0.3:
                S.append(("sleep", rng.uniform(0, 1.0)))
        S.append(("close", rng.choice(["fin", "fin", "shutwr"])))
    elif c.kind == "split":
        for _ in range(rng.randrange(1, 4)):
            names = [c.name(hot=rng.randrange(6) if rng.random() < 0.4 else None)
                     for _ in range(rng.choice([1, 3, 10, 40]))]
            data, ends = c.frames(names)
            cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randrange(1, 12))))
            prev = 0
            for cut in cuts + [len(data)]:
                piece_ends = [(e - prev, q) for e, q in ends if prev < e <= cut]
                S.append(("send", data[prev:cut], piece_ends))
                if cut != len(data):
                    S.append(("sleep", rng.choice([0, 0.001, 0.01, 0.05, 0.2])))
                prev = cut
            S.append(("wait", wait))
        S.append(("close", "fin"))
    elif c.kind == "abrupt":
        names = [c.name(hot=rng.randrange(6) if rng.random() < 0.5 else None)
                 for _ in range(rng.randrange(1, 200))]
        data, ends = c.frames(names)
        cut = rng.randrange(1, len(data) + 1)
        S.append(("send", data[:cut], [(e, q) for e, q in ends if e <= cut]))
        if rng.random() < 0.5:
            S.append(("read", False))
        S.append(("sleep", rng.choice([0, 0, 0.001, 0.05, 0.3, 1.5])))
        S.append(("close", rng.choice(["fin", "rst", "rst"])))
    elif c.kind == "idle":
        if rng.random() < 0.5:
            data, ends = c.frames([c.name()])
            S.append(("send", data[:rng.randrange(1, len(data))], []))
        S.append(("sleep", rng.uniform(1, 15)))
        S.append(("close", rng.choice(["fin", "rst"])))
    elif c.kind == "burst":
        hot = rng.sample(range(12), rng.randrange(1, 6))
        data, ends = c.frames([c.name(hot=h) for h in hot])
        S.append(("send", data, ends))
        S.append(("wait", 3.0))
        if at_burst is not None:
            S.append(("until", at_burst))
        if big:
            n = rng.choice([1000, 2000, 4000])
        else:
            n = rng.choice([50, 200, 500, 1500]) if rng.random() < 0.9 else 4000
        # built as it is written, BURST_CHUNK queries at a time, from its
        # own generator seeded here (built up front, a storm's bursts took
        # the harness seconds in one timer call)
        c.pregen = burst_frames(c, random.Random(rng.getrandbits(64)), hot, n)
        run.prebuild.append(c)
        S.append(("sendgen", c.pregen))
        # most stop reading; in the storm at the SIGTERM most read on, so
        # that the daemon's sends complete and nothing holds the connection
        if rng.random() < (0.3 if big else 0.6):
            S.append(("read", False))
        S.append(("sleep", rng.uniform(0.5, 8)))
        r = rng.random()
        if r < 0.3:
            S.append(("close", "rst"))
        elif r < 0.7:
            S.append(("read", True))
            S.append(("sleep", rng.uniform(0.5, 3)))
            S.append(("close", "fin"))
        else:
            S.append(("read", True))
            S.append(("sleep", 600))
    c.run.at(time.monotonic(), c.kick)


def burst_frames(c, rng, hot, n):
    """A burst of n queries for names of hot, BURST_CHUNK at a time, then
    half of one more frame (never completed here: unsent keeps it out of
    the books)."""
    while n > 0:
        k = min(BURST_CHUNK, n)
        n -= k
        yield c.frames([c.name(hot=rng.choice(hot)) for _ in range(k)], rng)
    tail_data, _ = c.frames([c.name(hot=hot[0])], rng)
    yield tail_data[:rng.randrange(1, len(tail_data))], []


# ================================================================ helpers

def _udp_rows():
    try:
        lines = Path("/proc/net/udp").read_text().splitlines()[1:]
    except OSError:
        return []
    rows = []
    for l in lines:
        f = l.split()
        if len(f) >= 13:
            rows.append((f[1], int(f[-1])))
    return rows


def udp_socket_drops(port):
    """Drops (receive buffer full) summed over the sockets bound to port."""
    want = ":%04X" % port
    rows = [d for a, d in _udp_rows() if a.endswith(want)]
    return sum(rows) if rows else None



def min_idle_timeout(hist, start, end, margin=RELOAD_MARGIN_S):
    """The smallest --tcp-idle-timeout in force at some moment of
    [start - margin, end]; hist is [(time of the SIGHUP, timeout)] in
    order, the first entry the initial config (time -inf). The margin
    takes in a reload that took effect late, and a config noted as sent
    but not yet in force only makes the floor lower (stricter)."""
    lo = start - margin
    floor = None
    for t, idle in hist:
        if t <= lo:
            floor = idle  # the last one before the window: in force at its start
        elif t <= end:
            floor = idle if floor is None else min(floor, idle)
        else:
            break
    return floor


def parse_seed(s):
    if s == "random":
        return random.SystemRandom().randrange(1, 1 << 31)
    return int(s)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=float(os.environ.get("DP_CHAOS_SECONDS", 60)),
                    help="chaos time before the drain (default 60, or $DP_CHAOS_SECONDS)")
    ap.add_argument("--seed", default=os.environ.get("DP_CHAOS_SEED", str(CI_SEED)),
                    help="an integer, or 'random' (printed) (default %d, or $DP_CHAOS_SEED)" % CI_SEED)
    ap.add_argument("--build-dir", default=os.environ.get("DOTPROXY_BUILD_DIR", str(REPO / "build-asan")),
                    help="build tree with dotproxy and tools/dot-responder (default: the ASan build)")
    ap.add_argument("--threads", type=int, default=2, help="dotproxy shards (default 2)")
    ap.add_argument("--tcp-rate", type=float, default=20.0, help="new TCP clients per second (default 20)")
    ap.add_argument("--udp-rate", type=float, default=300.0, help="valid UDP queries per second (default 300)")
    ap.add_argument("--max-conns", type=int, default=1500, help="TCP connections open at once, at most")
    ap.add_argument("--enc-threads", type=int, default=3,
                    help="threads running DoT and DoH clients, one client at a time each (default 3)")
    ap.add_argument("--disable", action="append", default=[],
                    choices=["burst", "abrupt", "reload", "upstream", "garbage", "udp", "term", "dot", "doh", "cert"],
                    help="leave a part of the mix out (repeatable); 'term' still stops with SIGTERM at the end")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    ap.add_argument("--verbose", "-v", action="store_true")
    args = ap.parse_args()
    seed = parse_seed(args.seed)
    global ENC
    if not {"dot", "doh"} <= set(args.disable) and args.enc_threads > 0:
        sys.modules.setdefault("chaos", sys.modules[__name__])  # chaos_enc's "import chaos": this module
        import chaos_enc
        ENC = chaos_enc
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    run = Run(args, seed)
    try:
        run.go()
        run.verify()
    except SetupError as e:
        print("chaos: SETUP ERROR seed=%d: %s" % (seed, e), flush=True)
        run.cleanup()
        return 2
    finally:
        run.cleanup()
    s = run.stats
    replay = "%s --seed %d --seconds %g --build-dir %s" % (sys.argv[0], seed, args.seconds, run.build)
    for opt, default in (("threads", 2), ("tcp_rate", 20.0), ("udp_rate", 300.0), ("max_conns", 1500),
                         ("enc_threads", 3)):
        if getattr(args, opt) != default:
            replay += " --%s %g" % (opt.replace("_", "-"), getattr(args, opt))
    if args.disable:
        replay += "".join(" --disable %s" % d for d in args.disable)
    for n in run.notes[-10:] if not args.verbose else []:
        print("note:", n)
    summary = ("seed=%d seconds=%g tcp_clients=%d tcp_queries=%d tcp_answered=%d udp_queries=%d udp_answered=%d "
               "udp_after_term=%d garbage=%d storms=%d reloads=%d upstream_restarts=%d servfail=%d refused=%d "
               "rss_max_mb=%d rss_h1_mb=%d rss_h2_mb=%d exit_s=%.1f dp_tcp_closed_slow=%d dp_cache_hits=%d "
               "tcp_idle_forgiven=%d tcp_closed_before_send=%d(good/split %d) dp_tcp_closed_idle=%d harness_max_stall_ms=%d"
               % (seed, args.seconds, run.cid, s["tcp_sent"], s["tcp_answered"], s["udp_sent"],
                  s["udp_answered"], s["udp_sent_after_term"], s["udp_garbage"], s["storms"], s["reloads"],
                  s["upstream_restarts"], s["rcode2"], s["rcode5"], s["rss_max_mb"], s["rss_h1_mb"], s["rss_h2_mb"],
                  getattr(run, "exit_s", -1), getattr(run, "dp_stats", {}).get("tcp_closed_slow", 0),
                  getattr(run, "dp_stats", {}).get("cache_hits", 0), s["tcp_idle_forgiven"],
                  s["tcp_closed_peer_before_send"], s["tcp_closed_before_send_checked"],
                  getattr(run, "dp_stats", {}).get("tcp_closed_idle", 0), s["harness_max_stall_ms"]))
    if ENC:
        ds = getattr(run, "dp_stats", {})
        summary += (" enc_clients=%d dot_queries=%d dot_answered=%d doh_queries=%d doh_answered=%d doh_reset_by_us=%d doh_reset_by_daemon=%d doh_refused_by_daemon=%d doh_bad_answered=%d doh_rapid_reset(goaway/closed/open)=%d/%d/%d "
                    "enc_handshakes=%d enc_resumed=%d enc_halfopen=%d(closed at the handshake or idle timeout %d, early %d) cert_rewrites=%d certs_seen=%d "
                    "dp_tls_handshake_timeouts=%d dp_h2_resets=%d dp_h2_goaway=%d dp_https_errors=%d "
                    "dp_https_slow_closed=%d"
                    % (sum(v for k, v in s.items() if k in ("enc_" + x for x in ENC.RUNNERS)),
                       s["dot_sent"], s["dot_answered"], s["doh_sent"], s["doh_answered"], s["doh_reset_by_us"],
                       s["doh_reset_by_daemon"], s["doh_refused_by_daemon"], s["doh_bad_answered"],
                       s["doh_rapid_reset_goaway"], s["doh_rapid_reset_closed"], s["doh_rapid_reset_open"],
                       s["enc_handshakes"], s["enc_resumed"], s["enc_halfopen"],
                       s["enc_halfopen_closed_in_time"], s["enc_halfopen_closed_early"], s["cert_rewrites"],
                       len(run.enc_certs_seen), ds.get("tls_handshake_timeouts", 0), ds.get("h2_resets", 0),
                       ds.get("h2_goaway", 0), ds.get("https_errors", 0), ds.get("https_slow_closed", 0)))
    if run.fail_counts:
        print("chaos: FAIL %s %s" % (dict(run.fail_counts), summary), flush=True)
        print("chaos: logs in %s; replay: %s" % (run.dir, replay), flush=True)
        return 1
    if not args.keep and run.dir:
        shutil.rmtree(run.dir, ignore_errors=True)
    print("chaos: PASS %s" % summary, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

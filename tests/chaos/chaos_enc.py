"""Encrypted clients of the chaos harness: DNS-over-TLS and DNS-over-HTTPS.

They run in a few threads with blocking sockets and timeouts (TLS through
ssl.MemoryBIO, so that a client can cut a record or a ClientHello at any
octet), beside the selector loop of chaos.py. Each thread has its own
generator derived from the run's seed and draws its clients from it; every
wait is bounded by ANSWER_WAIT_S or less and by the run's stop event, and
the threads are joined before the verdict.

Kinds (marker t<N> for DoT, d<N> for DoH):
- dot-pipe: pipelined batches of queries, reads every answer, matches it
  by ID and name (well-behaved: its answers are owed, as a TCP `good`);
  half of its connects resume the thread's last session (of the same ALPN);
- dot-abrupt: a batch with its TLS record cut at a random octet, or a
  ClientHello cut, then FIN or RST;
- dot-halfopen: 1..8 connections (to either listener) that send nothing
  or part of a ClientHello and wait: the daemon must close each within
  the handshake timeout (plus slack; the idle timeout may come first);
- doh-streams: GET and POST streams, up to 60 at once, some reset
  (RST_STREAM) before their answer; the other streams are owed an answer
  (well-behaved), each checked against the query of its own stream;
- doh-garbage: a few streams, then requests the daemon must refuse with
  their 4xx, or 250..500 streams opened and reset at once, or garbage (random octets, an oversized or unknown or
  illegal frame, an HPACK block that does not decode) or a frame cut
  mid-payload and a close;
- doh-slow: a tiny flow-control window, up to 60 streams of big answers,
  then stops reading for 1..8 s; reads a little more or closes.

A well-behaved client closed by the daemon with queries unanswered that it
sent before the SIGTERM is booked by Run.check_close exactly as a TCP
`good` client (the idle-close excuse, documented closes). A full handshake
must present the certificate in force: the one written before its connect
(less CERT_MARGIN_S) or one written later.
"""

import base64
import hashlib
import itertools
import random
import select
import socket
import ssl
import struct
import sys
import threading
import time

import chaos as C

try:
    import h2.config
    import h2.connection
    import h2.errors
    import h2.events
    import h2.exceptions
    import h2.settings
except ImportError:  # the harness refuses to start without it (SetupError)
    h2 = None

DOH_PATH = "/dns-query"
HS_TIMEOUT_S = 3       # --listen-tls-handshake-timeout given to the daemon
HS_SLACK_S = 8         # a half-open connection must be closed within HS_TIMEOUT_S + this
CERT_MARGIN_S = 2.0    # a cert reload may take effect this long after its SIGHUP
IO_SLICE_S = 0.5       # blocking reads wake this often to look at the stop event
KINDS = ["dot-pipe"] * 30 + ["dot-abrupt"] * 12 + ["dot-halfopen"] * 5 + \
        ["doh-streams"] * 30 + ["doh-garbage"] * 12 + ["doh-slow"] * 8
WELL_BEHAVED = ("dot-pipe", "doh-streams")


class Closed(Exception):
    """The daemon closed the connection: how ("peer", "reset", "timeout")."""


class Stop(Exception):
    """The run is over: the client gives up where it is."""


# ================================================================ TLS over a blocking socket

class TlsConn:
    """A TLS client through memory BIOs over a blocking TCP socket, so that
    what goes on the wire can be cut anywhere."""

    def __init__(self, run, port, alpn, src, session=None):
        self.run = run
        ctx = run.enc_ctx_dot if alpn == "dot" else run.enc_ctx_h2 if alpn == "h2" else run.enc_ctx_none
        self.raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.raw.settimeout(5)
        self.raw.bind((src, 0))
        self.lport = self.raw.getsockname()[1]
        self.raw.connect(("127.0.0.1", port))
        self.port = port
        self.t_connected = time.monotonic()
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inc, self.out, server_hostname=C.UPSTREAM_NAME, session=session)

    def push(self, cut=None):
        """Send what TLS produced (only its first cut octets when cut)."""
        data = self.out.read()
        if cut is not None:
            data = data[:cut]
        # pull() leaves short timeouts behind: a write gets a whole answer wait
        self.raw.settimeout(C.ANSWER_WAIT_S)
        try:
            self.raw.sendall(data)
        except socket.timeout:
            raise Closed("send_timeout")
        except OSError:
            raise Closed("reset")
        return len(data)

    def pull(self, deadline):
        """One read from the socket into TLS; Closed at EOF or deadline."""
        while True:
            if self.run.enc_stop.is_set():
                raise Stop()
            left = deadline - time.monotonic()
            if left <= 0:
                raise Closed("timeout")
            self.raw.settimeout(min(left, IO_SLICE_S))
            try:
                data = self.raw.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                raise Closed("reset")
            if not data:
                self.inc.write_eof()
                raise Closed("peer")
            self.inc.write(data)
            return

    def handshake(self, deadline):
        while True:
            try:
                self.obj.do_handshake()
                self.push()
                return
            except ssl.SSLWantReadError:
                self.push()
                self.pull(deadline)
            except ssl.SSLError as e:
                raise Closed("tls:%s" % e.reason)

    def client_hello(self):
        """The ClientHello, not sent (the caller sends part of it)."""
        try:
            self.obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        return self.out.read()

    def send(self, data, cut=None):
        # as a TCP client: a FIN already in our socket means the daemon
        # closed first (an idle close, say); what we would send is not owed
        p = select.poll()
        p.register(self.raw.fileno(), select.POLLRDHUP)
        if any(ev & select.POLLRDHUP for _, ev in p.poll(0)):
            raise Closed("peer_before_send")
        try:
            self.obj.write(data)
        except ssl.SSLError as e:
            raise Closed("tls:%s" % e.reason)
        return self.push(cut)

    def recv(self, deadline):
        """Decrypted data; Closed when the daemon ends the stream."""
        while True:
            try:
                data = self.obj.read(65536)
                if not data:
                    raise Closed("peer")
                return data
            except ssl.SSLWantReadError:
                self.pull(deadline)
            except ssl.SSLZeroReturnError:
                raise Closed("peer")
            except ssl.SSLError as e:
                raise Closed("peer" if "EOF" in str(e) or "eof" in str(e) else "tls:%s" % e.reason)

    def peer_cert_hash(self):
        der = self.obj.getpeercert(binary_form=True)
        return hashlib.sha256(der).hexdigest() if der else None

    def close(self, how="fin"):
        try:
            if how == "notify":
                self.obj.unwrap()
                self.push()
            elif how == "rst":
                self.raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except (ssl.SSLError, OSError, Closed):
            pass
        self.raw.close()


# ================================================================ one client's books

class EncClient:
    """What Run.check_close needs of a client (the TcpClient names)."""

    def __init__(self, run, kind, rng):
        self.run, self.kind, self.rng = run, kind, rng
        self.cid = next(run.enc_ids)
        self.marker = ("t%d" if kind.startswith("dot") else "d%d") % self.cid
        self.outstanding = {}
        self.done = set()
        self.nq = 0
        self.lport = 0
        self.t_connected = self.t_last_answer = self.t_last_answer_k = self.t_closed = None
        self.closed_by = None

    def name(self, hot=None):
        self.nq += 1
        if hot is not None:
            return "%s-h%d.%s.%s.chaos.test" % (self.marker, hot, self.run.pad(hot), self.run.tag)
        return "%s-q%d.%s.chaos.test" % (self.marker, self.nq, self.run.tag)

    def query(self, qid, hot_pct=0.4):
        rng = self.rng
        nm = self.name(hot=rng.randrange(6) if rng.random() < hot_pct else None)
        qtype = C.QT_AAAA if rng.random() < 0.2 else C.QT_A
        wire = C.build_query(qid, nm, qtype, rng.random() < 0.5)
        return C.Query((qid, nm.lower(), qtype)), wire

    def sent(self, qs):
        now = time.monotonic()
        term = self.run.term_t is None
        for q in qs:
            q.t_sent, q.before_term = now, term
            self.outstanding[q.key] = q

    def answered(self, q):
        self.t_last_answer = time.monotonic()
        self.run.count(self.kind[:3] + "_answered")

    def closed(self, how):
        self.closed_by = how
        self.t_closed = time.monotonic()
        self.run.count("enc_closed_" + how.split(":")[0])
        if self.kind in WELL_BEHAVED:
            self.run.check_close(self, "enc")


# ================================================================ DoT

def dot_frames(c, n):
    out, qs = bytearray(), []
    qid = c.rng.randrange(65536)
    for _ in range(n):
        qid = (qid + 1) & 0xFFFF
        q, wire = c.query(qid)
        if q.key in c.outstanding or any(x.key == q.key for x in qs):
            continue
        out += struct.pack("!H", len(wire)) + wire
        qs.append(q)
    return bytes(out), qs


def dot_read(c, t, inbuf, deadline):
    """Read answers until none is outstanding or the deadline."""
    while c.outstanding:
        while len(inbuf) >= 2 and len(inbuf) - 2 >= struct.unpack_from("!H", inbuf)[0]:
            ln = struct.unpack_from("!H", inbuf)[0]
            q = c.run.check_answer("DoT client %s" % c.marker, c.marker, c.outstanding, c.done,
                                   bytes(inbuf[2:2 + ln]))
            del inbuf[:2 + ln]
            if q is not None:
                c.answered(q)
        if not c.outstanding:
            return True
        inbuf += t.recv(deadline)
    return True


def run_dot_pipe(run, c):
    alpn = c.rng.choice(["dot", "dot", None])
    skey = (threading.get_ident(), alpn)  # a session resumes only under its own context
    sess = run.enc_session.get(skey) if c.rng.random() < 0.5 else None
    t = TlsConn(run, run.tls_port, alpn, c.src, session=sess)
    c.lport, c.t_connected = t.lport, t.t_connected
    try:
        handshake_checked(run, c, t)
        inbuf = bytearray()
        for _ in range(c.rng.randrange(1, 5)):
            data, qs = dot_frames(c, c.rng.choice([1, 1, 3, 10, 40]))
            t.send(data)
            c.sent(qs)
            run.count("dot_sent", len(qs))
            try:
                dot_read(c, t, inbuf, time.monotonic() + C.ANSWER_WAIT_S)
            except Closed as e:
                if str(e) != "timeout":
                    raise
                if run.term_t is None:
                    run.fail("lost", "DoT client %s: %d queries unanswered after %d s on an open connection, "
                             "e.g. %s" % (c.marker, len(c.outstanding), C.ANSWER_WAIT_S,
                                          next(iter(c.outstanding))))
                break
            if c.rng.random() < 0.3:
                time.sleep(c.rng.uniform(0, 1.0))
        if t.obj.session is not None:  # after an answer: TLS 1.3 tickets come after the handshake
            run.enc_session[skey] = t.obj.session
        c.closed("us")
        t.close(c.rng.choice(["notify", "fin"]))
    except Closed as e:
        c.closed(str(e))
        t.close()


def handshake_checked(run, c, t):
    """Handshake; a well-behaved client's failure is booked (forgiven at the
    verdict only by documented closes), a full handshake's certificate checked."""
    try:
        t.handshake(time.monotonic() + HS_TIMEOUT_S + HS_SLACK_S)
    except Closed as e:
        if run.term_t is None:
            run.enc_hs_failed.append("%s (%s, port %d): handshake failed (%s) at +%.2f s"
                                     % (c.marker, c.kind, c.lport, e, time.monotonic() - run.t0))
        raise
    run.count("enc_handshakes")
    if t.obj.session_reused:
        run.count("enc_resumed")
        return
    h = t.peer_cert_hash()
    ok = run.certs_allowed(c.t_connected - CERT_MARGIN_S, time.monotonic())
    idx = run.cert_index.get(h)
    run.enc_certs_seen.add(idx)
    if idx not in ok:
        run.fail("cert-stale", "%s (%s): a full handshake at +%.2f s presented cert %s, want one of %s "
                 "(cert rewrites: %s)" % (c.marker, c.kind, time.monotonic() - run.t0, idx, sorted(ok),
                                          ["+%.2f s: %d" % (t_ - run.t0, i) for t_, i in run.cert_hist[1:]]))


def run_dot_abrupt(run, c):
    t = TlsConn(run, run.tls_port, "dot", c.src)
    c.lport, c.t_connected = t.lport, t.t_connected
    try:
        if c.rng.random() < 0.3:  # cut in the handshake
            hello = t.client_hello()
            t.raw.sendall(hello[:c.rng.randrange(1, len(hello) + 1)])
            time.sleep(c.rng.choice([0, 0.01, 0.2]))
        else:
            t.handshake(time.monotonic() + HS_TIMEOUT_S + HS_SLACK_S)
            data, qs = dot_frames(c, c.rng.randrange(1, 60))
            t.obj.write(data)
            rec = t.out.read()
            cut = c.rng.randrange(1, len(rec) + 1)
            t.raw.sendall(rec[:cut])
            run.count("dot_abrupt_cut")
            if c.rng.random() < 0.5:  # read whatever comes first
                try:
                    t.recv(time.monotonic() + c.rng.choice([0.01, 0.3]))
                except Closed:
                    pass
        c.closed("us")
        t.close(c.rng.choice(["fin", "rst", "rst"]))
    except (Closed, OSError) as e:
        c.closed(str(e) or "reset")
        t.close()


def run_dot_halfopen(run, c):
    """Connections that never finish a handshake: each must be closed by the
    daemon within its handshake timeout (plus slack)."""
    conns = []
    try:
        for _ in range(c.rng.randrange(1, 9)):
            t = TlsConn(run, run.tls_port if c.rng.random() < 0.7 else run.https_port, "dot", c.src)
            hello = t.client_hello()
            part = hello[:c.rng.randrange(0, len(hello))]
            if part:
                t.raw.sendall(part)
            conns.append(t)
            run.count("enc_halfopen")
        deadline = time.monotonic() + HS_TIMEOUT_S + HS_SLACK_S
        open_ = list(conns)
        while open_ and time.monotonic() < deadline and not run.enc_stop.is_set():
            r, _, _ = select.select([t.raw for t in open_], [], [], IO_SLICE_S)
            for t in [t for t in open_ if t.raw in r]:
                try:
                    if t.raw.recv(4096):
                        continue  # an alert, then the close
                except OSError:
                    pass
                open_.remove(t)
                # the daemon's idle clock runs from the accept too, so the
                # idle timeout may close it first; earlier still: evicted
                # by a full table, say (no finding: counted, noted)
                limit = min(HS_TIMEOUT_S, C.min_idle_timeout(run.idle_hist, t.t_connected, time.monotonic()))
                early = time.monotonic() - t.t_connected < limit - 0.2
                run.count("enc_halfopen_closed_early" if early else "enc_halfopen_closed_in_time")
                if early and run.term_t is None:
                    run.note("%s: half-open port %d (%s) closed by the daemon %.2f s after its connect"
                             % (c.marker, t.lport, "tls" if t.port == run.tls_port else "https",
                                time.monotonic() - t.t_connected))
        if open_ and run.term_t is None and not run.enc_stop.is_set():
            t = open_[0]
            run.fail("tls-handshake-timeout", "%s: %d of %d half-open connections (e.g. port %d, opened at +%.2f s) "
                     "still open %d s after the connect (handshake timeout %d s)"
                     % (c.marker, len(open_), len(conns), t.lport, t.t_connected - run.t0,
                        HS_TIMEOUT_S + HS_SLACK_S, HS_TIMEOUT_S))
    except OSError:
        pass
    finally:
        for t in conns:
            t.close(c.rng.choice(["fin", "rst"]))


# ================================================================ DoH

class Doh:
    """An h2 connection over a TlsConn."""

    def __init__(self, run, c, window=None):
        self.run, self.c = run, c
        self.t = TlsConn(run, run.https_port, "h2", c.src)
        c.lport, c.t_connected = self.t.lport, self.t.t_connected
        cfg = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config=cfg)
        self.window = window
        self.streams = {}   # sid -> [Query, status, headers, body, reset by us]
        self.dead = False   # our h2 state is broken (garbage sent, or a protocol error)

    def start(self):
        handshake_checked(self.run, self.c, self.t)
        self.conn.initiate_connection()
        if self.window is not None:
            self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: self.window})
        if self.window is None:
            self.conn.increment_flow_control_window(1 << 24)
        self.flush()

    def flush(self, cut=None):
        data = self.conn.data_to_send()
        if data:
            self.t.send(data, cut)

    def request(self, q, wire):
        """Open a stream for the query; Closed("goaway") when the daemon's
        GOAWAY came first (nothing sent: nothing owed)."""
        try:
            return self._request(q, wire)
        except h2.exceptions.ProtocolError:
            if self.conn.state_machine.state == h2.connection.ConnectionState.CLOSED:
                raise Closed("goaway")
            raise

    def _request(self, q, wire):
        rng = self.c.rng
        sid = self.conn.get_next_available_stream_id()
        hdrs = [(":method", "GET"), (":scheme", "https"), (":authority", C.UPSTREAM_NAME)]
        if rng.random() < 0.5:
            b64 = base64.urlsafe_b64encode(wire).rstrip(b"=").decode()
            hdrs.append((":path", "%s?dns=%s" % (DOH_PATH, b64)))
            self.conn.send_headers(sid, hdrs + [("accept", "application/dns-message")], end_stream=True)
        else:
            hdrs[0] = (":method", "POST")
            hdrs += [(":path", DOH_PATH), ("content-type", "application/dns-message"),
                     ("content-length", str(len(wire)))]
            self.conn.send_headers(sid, hdrs)
            self.conn.send_data(sid, wire, end_stream=True)
        self.streams[sid] = [q, None, None, bytearray(), False]
        return sid

    def bad_request(self, rng):
        """A request the daemon must refuse with a 4xx: the stream's books
        hold "STATUS what" instead of a query."""
        q, wire = self.c.query(0)
        b64 = base64.urlsafe_b64encode(wire).rstrip(b"=").decode()
        resp = bytearray(wire)
        resp[2] |= 0x80
        kind = rng.choice(BAD_REQUESTS)
        method, path, body, extra = {
            "404 other path": ("GET", "/other?dns=" + b64, None, []),
            "405 PUT": ("PUT", DOH_PATH, wire, [("content-type", "application/dns-message")]),
            "415 POST of text/plain": ("POST", DOH_PATH, wire, [("content-type", "text/plain")]),
            "400 undecodable dns=": ("GET", DOH_PATH + "?dns=!!*" + b64[:5], None, []),
            "400 no dns=": ("GET", DOH_PATH + "?x=1", None, []),
            "400 a response": ("POST", DOH_PATH, bytes(resp), [("content-type", "application/dns-message")]),
        }[kind]
        sid = self.conn.get_next_available_stream_id()
        hdrs = [(":method", method), (":scheme", "https"), (":authority", C.UPSTREAM_NAME), (":path", path)]
        self.conn.send_headers(sid, hdrs + extra, end_stream=body is None)
        if body is not None:
            self.conn.send_data(sid, body, end_stream=True)
        self.streams[sid] = [kind, None, None, bytearray(), False]
        return sid

    def reset(self, sid):
        self.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        self.streams[sid][4] = True

    def pump(self, deadline, ack=True):
        """One read: handle its events; Closed when the daemon ends it."""
        data = self.t.recv(deadline)
        if self.dead:
            return
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            self.dead = True
            self.run.count("doh_proto_error")
            if self.c.kind in WELL_BEHAVED:
                self.run.fail("doh-protocol", "%s: our h2 library rejects what the daemon sent: %r" % (self.c.marker, e))
            return
        for ev in events:
            self.event(ev, ack)
        self.flush()

    def event(self, ev, ack):
        sid = getattr(ev, "stream_id", None)
        st = self.streams.get(sid)
        if isinstance(ev, h2.events.ConnectionTerminated):
            self.run.count("doh_goaway_%s" % getattr(ev.error_code, "name", ev.error_code))
        elif st is None:
            return
        elif isinstance(ev, h2.events.ResponseReceived):
            st[2] = dict(ev.headers)
            st[1] = st[2].get(":status")
        elif isinstance(ev, h2.events.DataReceived):
            st[3] += ev.data
            if ack:
                self.conn.acknowledge_received_data(ev.flow_controlled_length, sid)
        elif isinstance(ev, h2.events.StreamEnded):
            self.answer(sid, st)
        elif isinstance(ev, h2.events.StreamReset):
            del self.streams[sid]
            self.run.count("doh_refused_by_daemon" if ev.error_code == h2.errors.ErrorCodes.REFUSED_STREAM
                           else "doh_reset_by_daemon")
            if not st[4] and self.c.kind in WELL_BEHAVED and ev.error_code != h2.errors.ErrorCodes.REFUSED_STREAM:
                self.run.fail("doh-reset", "%s: the daemon reset stream %d (%s) of %s"
                              % (self.c.marker, sid, ev.error_code, st[0].key))
            if isinstance(st[0], C.Query):
                self.c.outstanding.pop(st[0].key, None)

    def answer(self, sid, st):
        del self.streams[sid]
        q, status, hdrs, body, was_reset = st
        hdrs = hdrs or {}
        c = self.c
        if isinstance(q, str):  # a bad request: its error status, nothing else
            self.run.count("doh_bad_answered")
            if status != q[:3]:
                self.run.fail("doh-status", "%s: stream %d, a bad request (%s), answered %s %s"
                              % (c.marker, sid, q, status, hdrs))
            return
        if status != "200" or hdrs.get("content-type") != "application/dns-message":
            self.run.fail("doh-status", "%s: stream %d of %s answered %s %s" % (c.marker, sid, q.key, status, hdrs))
            return
        # the answer must be the one to this stream's query: nothing else counts
        table = {q.key: q}
        got = self.run.check_answer("DoH client %s stream %d" % (c.marker, sid), c.marker, table, set(), bytes(body))
        if got is None:
            return
        if c.outstanding.pop(q.key, None) is not None:
            c.done.add(q.key)
            c.answered(q)
        elif was_reset:
            self.run.count("doh_answered_after_reset")

    def close(self, how="fin"):
        if how == "goaway" and not self.dead:
            try:
                self.conn.close_connection()
                self.flush()
            except Exception:
                pass
            how = "notify"
        self.t.close(how)


def doh_open(c, d, n, reset_pct):
    """n streams; those reset are taken out of the books at once."""
    sent = []
    for _ in range(n):
        q, wire = c.query(0 if c.rng.random() < 0.7 else c.rng.randrange(65536))
        if q.key in c.outstanding:
            continue
        sid = d.request(q, wire)
        sent.append((sid, q))
    d.flush()
    c.sent([q for _, q in sent])
    c.run.count("doh_sent", len(sent))
    resets = [sid for sid, _ in sent if c.rng.random() < reset_pct]
    for sid in resets:
        d.reset(sid)
        c.outstanding.pop(d.streams[sid][0].key, None)
    if resets:
        d.flush()
        c.run.count("doh_reset_by_us", len(resets))
    return sent


def run_doh_streams(run, c):
    d = Doh(run, c)
    try:
        d.start()
        for _ in range(c.rng.randrange(1, 4)):
            doh_open(c, d, c.rng.choice([1, 5, 20, 60]), c.rng.choice([0, 0.1, 0.5]))
            deadline = time.monotonic() + C.ANSWER_WAIT_S
            try:
                while c.outstanding:
                    d.pump(deadline)
            except Closed as e:
                if str(e) != "timeout":
                    raise
                if run.term_t is None:
                    run.fail("lost", "DoH client %s: %d streams unanswered after %d s on an open connection, "
                             "e.g. %s" % (c.marker, len(c.outstanding), C.ANSWER_WAIT_S, next(iter(c.outstanding))))
                break
            if c.rng.random() < 0.3:
                time.sleep(c.rng.uniform(0, 1.0))
        c.closed("us")
        d.close(c.rng.choice(["goaway", "fin", "rst"]))
    except Closed as e:
        c.closed(str(e))
        d.close()


BAD_REQUESTS = ("404 other path", "405 PUT", "415 POST of text/plain", "400 undecodable dns=", "400 no dns=",
                "400 a response")
GARBAGE = ("badreq", "rapidreset", "random", "oversized", "unknown", "data0", "hpack", "cut", "settings-ack", "window0")


def garbage_bytes(rng, kind):
    """HTTP/2 frames that are wrong in some way (9-octet header + payload)
    or random octets."""
    def frame(ln, typ, flags, sid, payload):
        return struct.pack("!I", ln)[1:] + bytes([typ, flags]) + struct.pack("!I", sid) + payload
    if kind == "random":
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
    if kind == "oversized":
        return frame(1 << 20, 0, 0, 1, b"\0" * 100)
    if kind == "unknown":  # must be ignored (RFC 9113 5.5)
        return frame(8, 0xEE, 0, 0, b"12345678")
    if kind == "data0":
        return frame(4, 0, 1, 0, b"abcd")
    if kind == "hpack":  # a HEADERS frame on a new stream with an undecodable block
        blk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 60)))
        return frame(len(blk), 1, 0x5, 1001, blk)
    if kind == "settings-ack":  # an ACK with a payload
        return frame(6, 4, 1, 0, b"\0\x03\0\0\0\x01")
    if kind == "window0":  # WINDOW_UPDATE of 0 on the connection
        return frame(4, 8, 0, 0, b"\0\0\0\0")
    # cut: a frame header announcing more than follows
    return frame(64, 0, 0, 1, b"x" * rng.randrange(0, 63))


def run_doh_garbage(run, c):
    d = Doh(run, c)
    try:
        d.start()
        doh_open(c, d, c.rng.randrange(0, 6), 0.2)
        if c.rng.random() < 0.5:
            try:
                d.pump(time.monotonic() + c.rng.choice([0.05, 0.5]))
            except Closed as e:
                if str(e) != "timeout":
                    raise
        kind = c.rng.choice(GARBAGE)
        if kind == "badreq":  # well-formed HTTP/2, requests the daemon refuses: each must get its 4xx
            for _ in range(c.rng.randrange(1, 6)):
                d.bad_request(c.rng)
            d.flush()
            run.count("doh_garbage_badreq")
            deadline = time.monotonic() + C.ANSWER_WAIT_S
            try:
                while any(isinstance(st[0], str) for st in d.streams.values()):
                    d.pump(deadline)
            except Closed as e:
                if str(e) == "timeout" and run.term_t is None:
                    run.fail("doh-status", "%s: bad requests unanswered after %d s" % (c.marker, C.ANSWER_WAIT_S))
                elif str(e) != "timeout":
                    raise
            c.closed("us")
            d.close(c.rng.choice(["fin", "goaway"]))
            return
        if kind == "rapidreset":
            rapid_reset(run, c, d)
            return
        junk = garbage_bytes(c.rng, kind)
        d.dead = True  # our h2 state no longer matches the wire
        run.count("doh_garbage_" + kind)
        if kind == "cut" or c.rng.random() < 0.3:  # cut the TLS record too
            d.t.send(junk, cut=c.rng.randrange(1, len(junk) + 30))
            c.closed("us")
            d.close(c.rng.choice(["fin", "rst"]))
            return
        d.t.send(junk)
        deadline = time.monotonic() + c.rng.choice([0.2, 1.0, 3.0])
        try:
            while True:
                d.pump(deadline)
        except Closed as e:
            if str(e) == "timeout":
                c.closed("us")
                d.close(c.rng.choice(["fin", "rst"]))
                return
            raise
    except Closed as e:
        c.closed(str(e))
        d.close()


def rapid_reset(run, c, d):
    """CVE-2023-44487: 250..500 streams opened and reset at once, over the
    daemon's burst of 200; it should send GOAWAY and close (counted, not
    asserted: backpressure on the reset queries may spread them out)."""
    n = c.rng.randrange(250, 500)
    for i in range(n):
        q, wire = c.query(0)
        sid = d.request(q, wire)
        d.reset(sid)
        if i % 50 == 49:
            d.flush()
    d.flush()
    run.count("doh_reset_by_us", n)
    deadline = time.monotonic() + 5
    how = "open"
    try:
        while True:
            d.pump(deadline)
            if d.conn.state_machine.state == h2.connection.ConnectionState.CLOSED:
                how = "goaway"
    except Closed as e:
        if str(e) != "timeout":
            how = "closed" if how == "open" else how
    run.count("doh_rapid_reset_" + how)
    c.closed("us" if how == "open" else "peer")
    d.close("rst")


def run_doh_slow(run, c):
    d = Doh(run, c, window=c.rng.choice([0, 16, 100, 1000]))
    try:
        d.start()
        n = c.rng.choice([10, 30, 60])
        for _ in range(n):
            q, wire = c.query(0, hot_pct=0.9)
            if q.key not in c.outstanding:
                d.request(q, wire)
                c.sent([q])
        d.flush()
        run.count("doh_sent", len(c.outstanding))
        time.sleep(c.rng.uniform(1, 8))  # reads nothing meanwhile
        if c.rng.random() < 0.5:
            deadline = time.monotonic() + c.rng.uniform(0.2, 3)
            try:
                while True:
                    d.pump(deadline, ack=c.rng.random() < 0.5)
            except Closed as e:
                if str(e) != "timeout":
                    raise
        c.closed("us")
        d.close(c.rng.choice(["fin", "rst", "goaway"]))
    except Closed as e:
        c.closed(str(e))
        d.close()


RUNNERS = {"dot-pipe": run_dot_pipe, "dot-abrupt": run_dot_abrupt, "dot-halfopen": run_dot_halfopen,
           "doh-streams": run_doh_streams, "doh-garbage": run_doh_garbage, "doh-slow": run_doh_slow}


# ================================================================ the threads

def worker(run, i, kinds, end):
    """One thread: clients one after another until the SIGTERM or end."""
    rng = random.Random("%d-enc-%d" % (run.seed, i))
    while run.term_t is None and time.monotonic() < end and not run.enc_stop.is_set():
        kind = rng.choice(kinds)
        c = EncClient(run, kind, random.Random(rng.getrandbits(64)))
        c.src = "127.0.%d.%d" % (2 + (kind.startswith("doh")), rng.randrange(1, 60))
        run.count("enc_" + kind)
        try:
            RUNNERS[kind](run, c)
        except Stop:
            pass
        except OSError as e:  # the connect itself
            run.count("enc_connect_failed")
            if kind in WELL_BEHAVED and run.term_t is None:
                run.enc_hs_failed.append("%s (%s): connect failed: %s" % (c.marker, kind, e))
        except Exception as e:  # a harness bug: say so, do not hide it
            run.fail("harness", "encrypted client %s (%s) raised %r" % (c.marker, kind, e))
        time.sleep(rng.uniform(0, 0.3))


def start(run, n, end):
    kinds = [k for k in KINDS if not ((k.startswith("dot") and "dot" in run.disabled)
                                      or (k.startswith("doh") and "doh" in run.disabled))]
    if not kinds or n <= 0:
        return []
    # the selector loop gives up the GIL at every syscall: let it have it
    # back within 1 ms (not the default 5) while these threads compute
    sys.setswitchinterval(0.001)
    threads = [threading.Thread(target=worker, args=(run, i, kinds, end), name="enc-%d" % i, daemon=True)
               for i in range(n)]
    for th in threads:
        th.start()
    return threads


def make_contexts(run):
    if h2 is None:
        raise C.SetupError("python3-h2 is not installed (scripts/install-deps.sh installs it)")
    for alpn in ("dot", "h2", None):
        ctx = ssl.create_default_context(cafile=str(run.dir / "ca.pem"))
        if alpn:
            ctx.set_alpn_protocols([alpn])
        setattr(run, "enc_ctx_%s" % (alpn or "none"), ctx)
    run.enc_ids = itertools.count(1)

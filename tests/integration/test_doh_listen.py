"""DNS-over-HTTPS listeners (--listen-https, RFC 8484, HTTP/2 only), with
clients nobody here wrote: curl (GET and POST), kdig +https, dnsperf -m doh,
h2load, Python's ssl and the h2 library; and hostile HTTP/2 clients written
frame by frame (rapid reset, too many streams, an oversized header block, a
CONTINUATION flood), each run beside a well-behaved DoH client that must be
answered meanwhile.

The daemon is started by test_dot_listen.start_dot with a DoH listener
added (so the DoT listener runs beside it), serving the conftest
certificate (upstream.test, 127.0.0.1); the upstream is the session's
unbound. dnspython's dns.query.https is not used: Debian's dnspython 2.3
speaks HTTP/2 only through httpx (python3-httpx), not installed here; the h2
library, which httpx would use, is.

Objects owned here: client sockets and h2 connections (closed by `with` or
finally), the good-client threads (stopped and joined in finally),
subprocesses (bounded by timeouts), the dotproxy processes (the conftest
factory stops them by PID)."""

import base64
import os
import socket
import ssl
import struct
import threading
import time
import urllib.request

import dns.message
import dns.rcode
import pytest

import dphelpers as H
from conftest import require_tool
from test_dot_listen import start_dot, swap_cert

try:
    import h2.config
    import h2.connection
    import h2.events
    import hpack
except ImportError:  # skipped loudly by need_h2() in the tests that use them
    h2 = hpack = None

DOH_PATH = "/dns-query"
DNS_CT = "application/dns-message"


# ---------------------------------------------------------------- helpers

def need_h2():
    if h2 is None or hpack is None:
        pytest.skip("REQUIRED TOOL MISSING: python3-h2 (and python3-hpack) not installed (CI must not skip)")


def start_doh(dotproxy, unbound, certs, tmp_path, threads=1, extra=(), tag=""):
    """dotproxy with a DoH listener (and start_dot's DoT one) on free ports;
    returns (dp, https_port). The certificate files are start_dot's copies
    (dp.cert_path, dp.key_path)."""
    hport = H.free_port()
    dp, _ = start_dot(dotproxy, unbound, certs, tmp_path, threads=threads, tag=tag,
                      extra=["--listen-https", "127.0.0.1:%d" % hport] + list(extra))
    dp.https_port = hport
    return dp, hport


def b64url(wire):
    """Unpadded base64url (RFC 8484 section 4.1)."""
    return base64.urlsafe_b64encode(wire).rstrip(b"=").decode()


def get_path(q, path=DOH_PATH):
    return "%s?dns=%s" % (path, b64url(q.to_wire()))


def min_ttl(r):
    return min(rr.ttl for rr in r.answer)


def max_age(headers):
    """max-age of a cache-control header value, or None."""
    for part in headers.get("cache-control", "").split(","):
        k, _, v = part.strip().partition("=")
        if k.lower() == "max-age":
            return int(v)
    return None


# ---------------------------------------------------------------- curl

def curl(port, ca, tmp_path, target, method=None, body=None, ctype=DNS_CT, timeout=10):
    """One curl request over HTTP/2 to https://127.0.0.1:port<target>;
    returns (status, headers with lower-case names, body, curl's exit code,
    HTTP version). body (bytes) is sent from a file: a POST, or the given
    method; ctype None sends no content-type at all."""
    out, hdr = tmp_path / "curl.body", tmp_path / "curl.hdr"
    for p in (out, hdr):
        if p.exists():
            p.unlink()
    cmd = ["curl", "-sS", "--http2", "--cacert", str(ca), "--max-time", str(timeout),
           "-o", str(out), "-D", str(hdr), "-w", "%{http_code} %{http_version}"]
    if body is not None:
        bf = tmp_path / "curl.req"
        bf.write_bytes(body)
        cmd += ["--data-binary", "@%s" % bf]
        # ctype None: no content-type at all (curl's own default removed)
        cmd += ["-H", "content-type: %s" % ctype if ctype is not None else "content-type:"]
    if method:
        cmd += ["-X", method]
    cmd.append("https://127.0.0.1:%d%s" % (port, target))
    r = H.run(cmd, timeout=timeout + 10)
    code, _, version = r.stdout.strip().partition(" ")
    headers = {}
    if hdr.exists():
        for line in hdr.read_text(errors="replace").splitlines():
            name, sep, value = line.partition(":")
            if sep and not line.startswith("HTTP/"):
                headers[name.strip().lower()] = value.strip()
    data = out.read_bytes() if out.exists() else b""
    return int(code or 0), headers, data, r.returncode, version


# ---------------------------------------------------------------- HTTP/2 with the h2 library

class StreamReset(Exception):
    pass


class H2Client:
    """A well-behaved HTTP/2 client (the h2 library) on one TLS connection
    with ALPN h2; request() sends one request and waits for its answer."""

    def __init__(self, port, ca, timeout=5.0, strict_eof=False):
        """strict_eof: an end of the TLS stream without close_notify raises
        ssl.SSLEOFError instead of reading as b''."""
        need_h2()
        ctx = ssl.create_default_context(cafile=str(ca))
        ctx.set_alpn_protocols(["h2"])
        if strict_eof:
            ctx.options &= ~ssl.OP_IGNORE_UNEXPECTED_EOF  # set by Python: a cut reads as b""
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        try:
            self.sock = ctx.wrap_socket(raw, server_hostname=H.UPSTREAM_NAME,
                                        suppress_ragged_eofs=not strict_eof)
        except BaseException:
            raw.close()
            raise
        assert self.sock.selected_alpn_protocol() == "h2", self.sock.selected_alpn_protocol()
        cfg = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config=cfg)
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(1 << 30)
        self._flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.sock.close()

    def _flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(self, method, path, body=None, headers=()):
        """(status, response headers, body); StreamReset if the server reset
        the stream, ConnectionError if it closed the connection."""
        sid = self.conn.get_next_available_stream_id()
        hdrs = [(":method", method), (":scheme", "https"), (":authority", H.UPSTREAM_NAME),
                (":path", path)] + list(headers)
        self.conn.send_headers(sid, hdrs, end_stream=body is None)
        if body is not None:
            step = self.conn.max_outbound_frame_size
            for i in range(0, max(len(body), 1), step):
                self.conn.send_data(sid, body[i:i + step], end_stream=i + step >= len(body))
        self._flush()
        resp, data = {}, b""
        while True:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed by the server")
            for ev in self.conn.receive_data(chunk):
                if isinstance(ev, h2.events.ConnectionTerminated):
                    raise ConnectionError("GOAWAY %s" % ev.error_code)
                if getattr(ev, "stream_id", None) != sid:
                    continue
                if isinstance(ev, h2.events.ResponseReceived):
                    resp = dict(ev.headers)
                elif isinstance(ev, h2.events.DataReceived):
                    data += ev.data
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                elif isinstance(ev, h2.events.StreamReset):
                    raise StreamReset("stream %d reset: %s" % (sid, ev.error_code))
                elif isinstance(ev, h2.events.StreamEnded):
                    self._flush()
                    return int(resp[":status"]), resp, data
            self._flush()

    def query(self, q, method="GET"):
        """q over DoH: (status, headers, DNS response or None)."""
        if method == "GET":
            st, hd, data = self.request("GET", get_path(q))
        else:
            st, hd, data = self.request("POST", DOH_PATH, body=q.to_wire(),
                                        headers=[("content-type", DNS_CT)])
        return st, hd, (dns.message.from_wire(data) if st == 200 else None)


class GoodDoH(threading.Thread):
    """A well-behaved DoH client on its own connection, asking a cached name
    every 10 ms (POST and GET in turn) until finish(); finish() checks every
    answer came (at least 10) and the p99 latency is under 1 s, and returns
    the latencies."""

    def __init__(self, port, ca, name="www.test."):
        super().__init__(daemon=True)
        self.port, self.ca, self.name = port, ca, name
        self.lat, self.errors = [], []
        self.halt = threading.Event()
        self.start()

    def run(self):
        try:
            with H2Client(self.port, self.ca) as c:
                i = 0
                while not self.halt.is_set() and i < 100000:
                    q = H.make_query(self.name, "A", qid=0)
                    t = time.monotonic()
                    st, _, r = c.query(q, "GET" if i % 2 else "POST")
                    self.lat.append(time.monotonic() - t)
                    if st != 200 or r.rcode() != dns.rcode.NOERROR:
                        self.errors.append("status %d %s" % (st, r))
                        return
                    i += 1
                    time.sleep(0.01)
        except Exception as e:
            self.errors.append("%s: %s" % (type(e).__name__, e))

    def finish(self):
        # at least 10 answers, the last ones after whatever the test did
        H.wait_for(lambda: len(self.lat) >= 10 or not self.is_alive(), 10)
        self.halt.set()
        self.join(15)
        assert not self.is_alive(), "good DoH client stuck"
        assert not self.errors, self.errors
        assert len(self.lat) >= 10, self.lat
        lat = sorted(self.lat)
        p99 = lat[max(0, int(len(lat) * 0.99) - 1)]
        print("good DoH client: %d answers, p50 %.1f ms, p99 %.1f ms, max %.1f ms"
              % (len(lat), lat[len(lat) // 2] * 1e3, p99 * 1e3, lat[-1] * 1e3))
        assert p99 < 1.0, "good client p99 %.0f ms" % (p99 * 1e3)
        return lat


# ---------------------------------------------------------------- HTTP/2 frame by frame

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 3, 4, 6, 7, 8, 9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20
REFUSED_STREAM, CANCEL = 7, 8
SETTINGS_MAX_CONCURRENT_STREAMS = 3


def frame(ftype, flags, sid, payload=b""):
    """One HTTP/2 frame: 24-bit length, type, flags, 31-bit stream id."""
    return struct.pack("!I", len(payload))[1:] + struct.pack("!BBI", ftype, flags, sid) + payload


class RawH2:
    """An HTTP/2 client that writes frames by hand (to send what a library
    refuses to) and reads the server's: SETTINGS and PING are acknowledged,
    response HEADERS decoded (hpack) into .status, DATA gathered in .body,
    RST_STREAM codes in .resets, the GOAWAY (last stream id, code) in
    .goaway; .closed once the server closed the connection."""

    def __init__(self, port, ca, timeout=5.0):
        need_h2()
        ctx = ssl.create_default_context(cafile=str(ca))
        ctx.set_alpn_protocols(["h2"])
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        try:
            self.sock = ctx.wrap_socket(raw, server_hostname=H.UPSTREAM_NAME)
        except BaseException:
            raw.close()
            raise
        self.enc, self.dec = hpack.Encoder(), hpack.Decoder()
        self.buf = b""
        self.settings, self.goaway, self.closed = None, None, False
        self.status, self.body, self.ended, self.resets = {}, {}, set(), {}
        self.sock.sendall(PREFACE + frame(SETTINGS, 0, 0) +
                          frame(WINDOW_UPDATE, 0, 0, struct.pack("!I", 1 << 30)))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.sock.close()

    def block(self, path, method="GET", extra=()):
        """A header block for a request (hpack, indexed: repeats are short)."""
        return self.enc.encode([(":method", method), (":scheme", "https"),
                                (":authority", H.UPSTREAM_NAME), (":path", path)] + list(extra))

    def send(self, data):
        """sendall; False when the server has closed the connection."""
        try:
            self.sock.sendall(data)
            return True
        except (OSError, ssl.SSLError):
            return False

    def _recv(self, timeout):
        self.sock.settimeout(timeout)
        try:
            d = self.sock.recv(65536)
        except (socket.timeout, ssl.SSLWantReadError):
            return None
        except (ConnectionError, ssl.SSLError, OSError):
            d = b""
        if not d:
            self.closed = True
        self.buf += d
        return d

    def read_frame(self, timeout):
        """Handle the next frame; returns its type, or None when none came
        within timeout or the connection is closed."""
        while not self.closed:
            if len(self.buf) >= 9:
                n = struct.unpack("!I", b"\0" + self.buf[:3])[0]
                if len(self.buf) >= 9 + n:
                    t, fl, sid = struct.unpack("!BBI", self.buf[3:9])
                    payload, self.buf = self.buf[9:9 + n], self.buf[9 + n:]
                    self._handle(t, fl, sid & 0x7FFFFFFF, payload)
                    return t
            if self._recv(timeout) is None:
                return None
        return None

    def _handle(self, t, fl, sid, p):
        if t in (HEADERS, DATA) and fl & PADDED:
            p = p[1:len(p) - p[0]]
        if t == SETTINGS and not fl & ACK:
            self.settings = dict(struct.unpack("!HI", p[i:i + 6]) for i in range(0, len(p), 6))
            self.send(frame(SETTINGS, ACK, 0))
        elif t == PING and not fl & ACK:
            self.send(frame(PING, ACK, 0, p))
        elif t == GOAWAY:
            last, code = struct.unpack("!II", p[:8])
            self.goaway = (last & 0x7FFFFFFF, code)
        elif t == RST_STREAM:
            self.resets[sid] = struct.unpack("!I", p)[0]
        elif t == HEADERS:
            if fl & PRIORITY:
                p = p[5:]
            hd = dict((k.decode() if isinstance(k, bytes) else k, v.decode() if isinstance(v, bytes) else v)
                      for k, v in self.dec.decode(p))
            if ":status" in hd:
                self.status[sid] = int(hd[":status"])
        elif t == DATA:
            self.body[sid] = self.body.get(sid, b"") + p
        if t in (HEADERS, DATA) and fl & END_STREAM:
            self.ended.add(sid)

    def until(self, pred, timeout):
        """Read frames until pred() holds, the connection closes, or timeout."""
        end = time.monotonic() + timeout
        while not pred() and not self.closed:
            left = end - time.monotonic()
            if left <= 0:
                break
            self.read_frame(left)
        return pred()

    def drain(self, quiet):
        """Read whatever comes until nothing arrives for quiet seconds."""
        while self.read_frame(quiet) is not None:
            pass

    def wait_settings(self):
        assert self.until(lambda: self.settings is not None, 5), "no SETTINGS from the server"
        return self.settings


# ---------------------------------------------------------------- interop

@pytest.mark.timeout_s(60)
def test_curl_get_and_post(dotproxy, unbound, certs, tmp_path):
    """curl over HTTP/2, GET with ?dns= and POST: 200, application/dns-message,
    content-length, cache-control max-age = the answer's smallest TTL, the
    answer itself with the request's ID (0)."""
    require_tool("curl")
    dp, port = start_doh(dotproxy, unbound, certs, tmp_path)
    q = H.make_query("www.test.", "A", qid=0)
    for how in ("GET", "POST", "GET"):  # a miss, then hits
        if how == "GET":
            st, hd, body, rc, ver = curl(port, certs["ca"], tmp_path, get_path(q))
        else:
            st, hd, body, rc, ver = curl(port, certs["ca"], tmp_path, DOH_PATH, body=q.to_wire())
        assert rc == 0 and st == 200 and ver == "2", (how, rc, st, ver, hd)
        assert hd.get("content-type") == DNS_CT, hd
        assert int(hd.get("content-length", -1)) == len(body), (hd, len(body))
        r = dns.message.from_wire(body)
        assert r.id == 0 and r.question == q.question and r.rcode() == dns.rcode.NOERROR, r
        assert [x.to_text() for x in r.answer[0]] == ["192.0.2.1"], r
        assert max_age(hd) == min_ttl(r) and 3500 < min_ttl(r) <= 3600, (hd, r)
    # a negative answer: no record in the answer section, a short max-age
    nx = H.make_query("nx.test.", "A", qid=0)
    st, hd, body, rc, _ = curl(port, certs["ca"], tmp_path, get_path(nx))
    r = dns.message.from_wire(body)
    assert st == 200 and r.rcode() == dns.rcode.NXDOMAIN and not r.answer, r
    assert max_age(hd) is not None and max_age(hd) <= 300, hd


@pytest.mark.timeout_s(60)
def test_kdig_https_post_and_get(dotproxy, unbound, certs, tmp_path):
    """kdig +https (POST) and +https-get verify the certificate and get the
    zone's answer."""
    dp, port = start_doh(dotproxy, unbound, certs, tmp_path)
    for extra in (["+https"], ["+https", "+https-get"]):
        p, out = H.kdig("127.0.0.1", port, "multi.test.", "A", tls_ca=certs["ca"], extra=extra)
        assert p["rcode"] == "NOERROR", out
        want = {("multi.test.", "IN", "A", frozenset("192.0.2.1%d" % i for i in range(1, 5)))}
        assert p["answer"] == want, out
        assert "HTTP/2-%s" % ("GET" if "+https-get" in extra else "POST") in out, out


@pytest.mark.timeout_s(60)
def test_h2_id_echoed_get_and_post(dotproxy, unbound, certs, tmp_path):
    """The h2 library: a request with a non-zero DNS ID gets it back (clients
    send 0, but the ID is the request's), over many requests on one
    connection, GET and POST alternating."""
    dp, port = start_doh(dotproxy, unbound, certs, tmp_path)
    with H2Client(port, certs["ca"]) as c:
        for i in range(50):
            q = H.make_query("n%d.test." % (i % 10), "A", qid=(i * 1021) & 0xFFFF)
            st, hd, r = c.query(q, "GET" if i % 2 else "POST")
            assert st == 200 and r.id == q.id and r.question == q.question, (st, r)
            assert [x.to_text() for x in r.answer[0]] == ["198.51.100.%d" % (i % 10)], r
            assert max_age(hd) == min_ttl(r), (hd, r)


@pytest.mark.timeout_s(120)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_dnsperf_doh_loses_nothing(dotproxy, unbound, certs, tmp_path, method):
    require_tool("dnsperf")
    dp, port = start_doh(dotproxy, unbound, certs, tmp_path, threads=2)
    qf = tmp_path / "queries.txt"
    qf.write_text("".join("n%d.test A\nwww.test AAAA\n" % i for i in range(100)))
    r = H.run(["dnsperf", "-m", "doh", "-s", "127.0.0.1", "-p", str(port), "-d", str(qf),
               "-O", "doh-uri=https://127.0.0.1:%d%s" % (port, DOH_PATH),
               "-O", "doh-method=%s" % method, "-l", "3", "-c", "4", "-Q", "3000"], timeout=60)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "Queries sent:" in out, out
    sent = int(out.split("Queries sent:")[1].split()[0])
    done = int(out.split("Queries completed:")[1].split()[0])
    print(out[out.index("Statistics:"):] if "Statistics:" in out else out)
    assert sent > 1000 and done == sent, out
    st = dp.stats()
    assert st["https_requests"] >= done, st


def _h2load(args, timeout=90):
    r = H.run(["h2load"] + args, timeout=timeout)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    return out


@pytest.mark.timeout_s(120)
def test_h2load_many_streams_all_2xx(dotproxy, unbound, certs, tmp_path):
    """h2load (nghttp2-client), 4 connections with 100 streams each in
    flight (the announced limit), GET and then POST: every request
    succeeds with a 2xx."""
    require_tool("h2load")
    dp, port = start_doh(dotproxy, unbound, certs, tmp_path, threads=2)
    q = H.make_query("www.test.", "A", qid=0)
    base = "https://127.0.0.1:%d" % port
    out = _h2load(["-n", "8000", "-c", "4", "-m", "100", base + get_path(q)])
    assert "8000 succeeded" in out and "status codes: 8000 2xx" in out, out
    body = tmp_path / "q.bin"
    body.write_bytes(q.to_wire())
    out = _h2load(["-n", "4000", "-c", "4", "-m", "100", "-d", str(body),
                   "-H", "content-type: %s" % DNS_CT, base + DOH_PATH])
    assert "4000 succeeded" in out and "status codes: 4000 2xx" in out, out
    print(out[out.index("finished in"):out.index("requests:")] if "finished in" in out else out)


# ---------------------------------------------------------------- errors and ALPN

@pytest.mark.timeout_s(90)
def test_http_errors(dotproxy, unbound, certs, tmp_path):
    """Each bad request gets its 4xx (checked with curl), counted in
    https_errors; a good one still gets 200."""
    require_tool("curl")
    dp, port = start_doh(dotproxy, unbound, certs, tmp_path)
    ca = certs["ca"]
    q = H.make_query("www.test.", "A", qid=0)
    resp = dns.message.make_response(q)
    cases = [
        ("bad base64", 400, dict(target=DOH_PATH + "?dns=%21%21not*base64")),
        ("no dns=", 400, dict(target=DOH_PATH + "?foo=bar")),
        ("malformed DNS", 400, dict(target=DOH_PATH + "?dns=" + b64url(b"\x00\x00\x01\x00garbage"))),
        ("a response", 400, dict(target=DOH_PATH + "?dns=" + b64url(resp.to_wire()))),
        ("POST malformed DNS", 400, dict(target=DOH_PATH, body=b"\x00\x01\x02")),
        ("other path", 404, dict(target="/other?dns=" + b64url(q.to_wire()))),
        ("PUT", 405, dict(target=DOH_PATH, method="PUT", body=q.to_wire())),
        ("DELETE", 405, dict(target=get_path(q), method="DELETE")),
        ("body > 65535", 413, dict(target=DOH_PATH, body=q.to_wire() + b"\0" * 66000)),
        ("POST text/plain", 415, dict(target=DOH_PATH, body=q.to_wire(), ctype="text/plain")),
        ("POST no content-type", 415, dict(target=DOH_PATH, body=q.to_wire(), ctype=None)),
    ]
    got = {}
    for what, want, kw in cases:
        st, hd, body, rc, ver = curl(port, ca, tmp_path, **kw)
        got[what] = (st, rc)
        assert st == want, "%s: got %d (curl rc %d), want %d; headers %s" % (what, st, rc, want, hd)
    print(got)
    st, hd, body, rc, _ = curl(port, ca, tmp_path, get_path(q))
    assert st == 200 and dns.message.from_wire(body).rcode() == dns.rcode.NOERROR
    s = dp.stats()
    assert s["https_errors"] == len(cases), s
    assert dp.proc.poll() is None


@pytest.mark.timeout_s(60)
def test_alpn_h2_only(dotproxy, unbound, certs, tmp_path):
    """ALPN h2 is chosen; a client offering only http/1.1 is refused in the
    TLS handshake (no_application_protocol)."""
    dp, port = start_doh(dotproxy, unbound, certs, tmp_path)
    for offer in (["h2"], ["http/1.1", "h2"]):
        ctx = ssl.create_default_context(cafile=str(certs["ca"]))
        ctx.set_alpn_protocols(offer)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname=H.UPSTREAM_NAME) as s:
                assert s.selected_alpn_protocol() == "h2", offer
    ctx = ssl.create_default_context(cafile=str(certs["ca"]))
    ctx.set_alpn_protocols(["http/1.1"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with pytest.raises(ssl.SSLError) as e:
            ctx.wrap_socket(raw, server_hostname=H.UPSTREAM_NAME).close()
    assert "NO_APPLICATION_PROTOCOL" in str(e.value).upper().replace(" ", "_"), e.value
    with H2Client(port, certs["ca"]) as c:
        assert c.query(H.make_query("www.test.", "A", qid=0))[0] == 200


# ---------------------------------------------------------------- hostile HTTP/2

@pytest.mark.timeout_s(90)
def test_rapid_reset_gets_goaway_good_client_served(dotproxy, unbound, certs, tmp_path):
    """HTTP/2 rapid reset (CVE-2023-44487): one connection opens streams and
    resets each at once, up to 5,000. dotproxy answers with GOAWAY after a
    bounded number (burst 200, then 100/s: the GOAWAY's last stream id
    tells how many it processed) and closes the connection; it stays up,
    and a good client on another connection of the same shard is answered
    throughout."""
    dp, port = start_doh(dotproxy, unbound, certs, tmp_path, threads=1)
    with H2Client(port, certs["ca"]) as c:
        c.query(H.make_query("www.test.", "A", qid=0))  # cached from now on
    good = GoodDoH(port, certs["ca"])
    try:
        time.sleep(0.3)
        with RawH2(port, certs["ca"]) as a:
            a.wait_settings()
            path = get_path(H.make_query("www.test.", "A", qid=0))
            sent, t0 = 0, time.monotonic()
            while sent < 5000 and a.goaway is None and not a.closed:
                batch = b""
                for _ in range(50):
                    sid = 2 * sent + 1
                    batch += (frame(HEADERS, END_STREAM | END_HEADERS, sid, a.block(path)) +
                              frame(RST_STREAM, 0, sid, struct.pack("!I", CANCEL)))
                    sent += 1
                if not a.send(batch):
                    break
                a.drain(0.001)
            elapsed = time.monotonic() - t0
            a.until(lambda: a.goaway is not None, 5)
            a.until(lambda: False, 5)  # then EOF
            assert a.goaway is not None, "no GOAWAY after %d resets" % sent
            processed = (a.goaway[0] + 1) // 2
            print("rapid reset: %d streams reset in %.2f s; GOAWAY (last stream %d: %d processed, "
                  "code %d); closed %s" % (sent, elapsed, a.goaway[0], processed, a.goaway[1], a.closed))
            assert processed <= 200 + 100 * elapsed + 100, (processed, elapsed)
            assert a.closed, "connection not closed within 5 s of the GOAWAY"
        time.sleep(0.5)
    finally:
        good.finish()
    assert dp.proc.poll() is None
    st = dp.stats()
    print("h2_resets %d h2_goaway %d" % (st["h2_resets"], st["h2_goaway"]))
    assert st["h2_goaway"] >= 1 and st["h2_resets"] >= 200, st
    with H2Client(port, certs["ca"]) as c:
        assert c.query(H.make_query("www.test.", "A", qid=0))[0] == 200


def _open_posts(a, qs):
    """HEADERS of a POST (body held back) on streams 1, 3, ... for each query;
    one content-length for all: the queries must have one length."""
    extra = [("content-type", DNS_CT), ("content-length", str(len(qs[0].to_wire())))]
    return a.send(b"".join(frame(HEADERS, END_HEADERS, 2 * i + 1, a.block(DOH_PATH, "POST", extra))
                           for i in range(len(qs))))


@pytest.mark.timeout_s(60)
def test_stream_limit_refuses_the_101st(dotproxy, unbound, certs, tmp_path):
    """SETTINGS_MAX_CONCURRENT_STREAMS is 100: a client opening 150 POST
    streams (headers sent, bodies held back) right after its preface, as
    browsers do, before it has acknowledged the server's SETTINGS, has the
    last 50 refused with RST_STREAM REFUSED_STREAM; the first 100 are
    answered once their bodies come, on the same connection. A good client
    is answered meanwhile."""
    dp, port = start_doh(dotproxy, unbound, certs, tmp_path)
    good = GoodDoH(port, certs["ca"])
    try:
        with RawH2(port, certs["ca"]) as a:
            qs = [H.make_query("n%d.test." % (10 + i % 90), "A", qid=i) for i in range(150)]
            assert _open_posts(a, qs)
            a.until(lambda: len(a.resets) >= 50, 5)
            a.drain(0.3)
            assert a.settings.get(SETTINGS_MAX_CONCURRENT_STREAMS) == 100, a.settings
            assert a.resets == {2 * i + 1: REFUSED_STREAM for i in range(100, 150)}, a.resets
            assert a.send(b"".join(frame(DATA, END_STREAM, 2 * i + 1, qs[i].to_wire()) for i in range(100)))
            a.until(lambda: len(a.ended) >= 100, 10)
            assert not a.closed and a.goaway is None, a.goaway
            for i in range(100):
                sid = 2 * i + 1
                assert a.status.get(sid) == 200, (sid, a.status.get(sid))
                r = dns.message.from_wire(a.body[sid])
                assert r.id == i and r.question == qs[i].question, r
    finally:
        good.finish()


@pytest.mark.timeout_s(60)
def test_stream_limit_after_settings_ack(dotproxy, unbound, certs, tmp_path):
    """The same 150 streams from a client that has acknowledged the
    SETTINGS: none beyond the 100th is served. RFC 9113 5.1.2 lets the
    server refuse them (REFUSED_STREAM, the first 100 then answered) or
    treat the excess as a protocol error (stock nghttp2: GOAWAY whose last
    stream is the 100th); either passes, serving a 101st does not."""
    dp, port = start_doh(dotproxy, unbound, certs, tmp_path)
    good = GoodDoH(port, certs["ca"])
    try:
        with RawH2(port, certs["ca"]) as a:
            assert a.wait_settings().get(SETTINGS_MAX_CONCURRENT_STREAMS) == 100, a.settings
            a.drain(0.2)  # our ACK is out before the streams
            qs = [H.make_query("n%d.test." % (10 + i % 90), "A", qid=i) for i in range(150)]
            assert _open_posts(a, qs)
            a.until(lambda: len(a.resets) >= 50 or a.goaway is not None, 5)
            a.drain(0.3)
            if a.goaway is not None:
                assert a.goaway[0] <= 199, a.goaway
                print("excess streams: GOAWAY %s" % (a.goaway,))
            else:
                assert a.resets == {2 * i + 1: REFUSED_STREAM for i in range(100, 150)}, a.resets
                a.send(b"".join(frame(DATA, END_STREAM, 2 * i + 1, qs[i].to_wire()) for i in range(100)))
                a.until(lambda: len(a.ended) >= 100, 10)
                assert sorted(a.status) == [2 * i + 1 for i in range(100)], sorted(a.status)
                print("excess streams: REFUSED_STREAM")
            assert all(a.status.get(2 * i + 1) is None for i in range(100, 150)), a.status
    finally:
        good.finish()


@pytest.mark.timeout_s(60)
def test_oversized_header_block_resets_the_stream(dotproxy, unbound, certs, tmp_path):
    """A request whose header block is over 8 KB (12 KB of one header,
    neither Huffman-coded nor indexed, so 12 KB on the wire and decoded)
    gets its stream reset; the connection goes on: the next request on it
    is answered. A good client is answered meanwhile."""
    dp, port = start_doh(dotproxy, unbound, certs, tmp_path)
    good = GoodDoH(port, certs["ca"])
    try:
        with RawH2(port, certs["ca"]) as a:
            a.wait_settings()
            path = get_path(H.make_query("www.test.", "A", qid=0))
            pad = a.enc.encode([("x-pad", os.urandom(6000).hex(), True)], huffman=False)
            assert a.send(frame(HEADERS, END_STREAM | END_HEADERS, 1, a.block(path) + pad))
            a.until(lambda: 1 in a.resets or 1 in a.ended, 5)
            assert 1 in a.resets and 1 not in a.status, (a.resets, a.status)
            assert a.send(frame(HEADERS, END_STREAM | END_HEADERS, 3, a.block(path)))
            a.until(lambda: 3 in a.ended, 5)
            assert a.status.get(3) == 200 and not a.closed, (a.status, a.goaway)
            assert dns.message.from_wire(a.body[3]).rcode() == dns.rcode.NOERROR
    finally:
        good.finish()


@pytest.mark.timeout_s(60)
@pytest.mark.parametrize("piece", ["empty", "headers"])
def test_continuation_flood_is_closed(dotproxy, unbound, certs, tmp_path, piece):
    """HEADERS without END_HEADERS, then CONTINUATION frames (empty ones, or
    each carrying one more header field), up to 20,000: the connection is
    closed before the flood ends or within 5 s of it; a good client is
    answered meanwhile."""
    dp, port = start_doh(dotproxy, unbound, certs, tmp_path)
    good = GoodDoH(port, certs["ca"])
    try:
        with RawH2(port, certs["ca"]) as a:
            a.wait_settings()
            path = get_path(H.make_query("www.test.", "A", qid=0))
            assert a.send(frame(HEADERS, END_STREAM, 1, a.block(path)))
            sent, t0 = 0, time.monotonic()
            while sent < 20000 and not a.closed:
                batch = b""
                for _ in range(100):
                    blk = b"" if piece == "empty" else a.enc.encode([("x-c%d" % sent, "v" * 20, True)])
                    batch += frame(CONTINUATION, 0, 1, blk)
                    sent += 1
                if not a.send(batch):
                    break
                a.drain(0.001)
            elapsed = time.monotonic() - t0
            a.until(lambda: False, 5)
            print("CONTINUATION flood (%s): %d frames in %.2f s; GOAWAY %s; closed %s"
                  % (piece, sent, elapsed, a.goaway, a.closed))
            assert a.closed, "connection still open after %d CONTINUATION frames" % sent
            assert 1 not in a.status
    finally:
        good.finish()
    assert dp.proc.poll() is None


# ---------------------------------------------------------------- metrics, reload

@pytest.mark.timeout_s(60)
def test_metrics_https_transport_and_requests(dotproxy, unbound, certs, tmp_path):
    """After 5 GETs and 3 POSTs over DoH: queries_total{transport="https"}
    counts 8 AAAA queries and the https_requests event counts 8."""
    mport = H.free_port()
    dp, port = start_doh(dotproxy, unbound, certs, tmp_path,
                         extra=["--metrics", "127.0.0.1:%d" % mport])
    with H2Client(port, certs["ca"]) as c:
        for i in range(8):
            st, _, r = c.query(H.make_query("www.test.", "AAAA", qid=0), "GET" if i < 5 else "POST")
            assert st == 200 and r.rcode() == dns.rcode.NOERROR
    text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % mport, timeout=5).read().decode()

    def value(prefix):
        lines = [l for l in text.splitlines() if l.startswith(prefix)]
        assert len(lines) == 1, (prefix, lines)
        return int(lines[0].split()[-1])

    assert value('dotproxy_queries_total{transport="https",qtype="AAAA"}') == 8
    assert value('dotproxy_queries_total{transport="tls",qtype="AAAA"}') == 0
    assert value('dotproxy_events_total{event="https_requests"}') == 8
    assert value('dotproxy_events_total{event="https_errors"}') == 0


@pytest.mark.timeout_s(120)
def test_cert_reload_mid_run_drops_nothing(dotproxy, unbound, certs, other_ca, readable_dir):
    """DoH clients (GET and POST, each on its own HTTP/2 connection) ask
    without pause while SIGHUP swaps the certificate: every request
    answered, the open connections go on, a new connection gets the new
    certificate (trusted only by other_ca). The files are readable by
    nobody, whom the daemon has become when it re-reads them."""
    dp, port = start_doh(dotproxy, unbound, certs, readable_dir, threads=2)
    os.chmod(dp.cert_path, 0o644)
    os.chmod(dp.key_path, 0o644)
    stop = threading.Event()
    errors, counts = [], []

    def client(cid):
        n = 0
        try:
            with H2Client(port, certs["ca"]) as c:
                while not stop.is_set() and n < 100000:
                    q = H.make_query("r%d-%d.perf.test." % (cid, n), "A", qid=0)
                    st, _, r = c.query(q, "GET" if (cid + n) % 2 else "POST")
                    if st != 200 or r.question != q.question or r.rcode() != dns.rcode.NOERROR:
                        errors.append("client %d: status %d %s" % (cid, st, r))
                        return
                    n += 1
        except Exception as e:
            errors.append("client %d: %s: %s" % (cid, type(e).__name__, e))
        counts.append(n)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        swap_cert(dp, other_ca)
        with H2Client(port, other_ca["ca"]) as c:
            assert c.query(H.make_query("www.test.", "A", qid=0))[0] == 200
        with pytest.raises(ssl.SSLError):
            H2Client(port, certs["ca"]).close()
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not errors, errors
    assert len(counts) == 4 and min(counts) > 0, counts
    print("requests per client: %s" % counts)


@pytest.mark.timeout_s(60)
def test_idle_close_says_goaway_no_error_then_close_notify(dotproxy, unbound, certs, tmp_path):
    """At the idle timeout an HTTP/2 connection gets GOAWAY with NO_ERROR
    (not counted as h2_goaway, which counts abuse), then close_notify."""
    need_h2()
    dp, hport = start_doh(dotproxy, unbound, certs, tmp_path, extra=["--tcp-idle-timeout", "1s"])
    c = H2Client(hport, certs["ca"], timeout=10, strict_eof=True)
    try:
        st, _, r = c.query(dns.message.make_query("www.test.", "A"))
        assert st == 200 and r.rcode() == dns.rcode.NOERROR
        c.sock.settimeout(8)
        events, clean_end = [], False
        while True:
            try:
                chunk = c.sock.recv(65536)
            except ssl.SSLEOFError:
                break  # the TLS stream was cut: no close_notify
            if not chunk:
                clean_end = True
                break
            events += c.conn.receive_data(chunk)
    finally:
        c.close()
    ends = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
    assert ends and ends[0].error_code == 0, events
    assert clean_end, "no close_notify after the GOAWAY"
    st = dp.stats()
    assert st["h2_goaway"] == 0 and st["tcp_closed_idle"] >= 1, st


@pytest.mark.timeout_s(90)
def test_a_client_that_never_reads_is_closed_at_its_bound(dotproxy, unbound, certs, tmp_path):
    """A client that sends requests and never reads: what the session makes
    for it outside tcpconn's answers (here 404s, one TLS record each, 13
    octets in for about 40 out) is bounded per connection like answers are
    (256 KB): the connection is closed as a slow reader (https_slow_closed),
    dotproxy's RSS grows by a few MB, not by what the client could push
    (before the bound, 31 MB in 2 s until the shard's whole budget went),
    and a good client is answered throughout."""
    need_h2()
    dp, hport = start_doh(dotproxy, unbound, certs, tmp_path, extra=["--tcp-idle-timeout", "30s"])
    good = GoodDoH(hport, certs["ca"])
    rss0 = H.rss_kb(dp.pid)
    ctx = ssl.create_default_context(cafile=str(certs["ca"]))
    ctx.set_alpn_protocols(["h2"])
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.settimeout(5)
    raw.connect(("127.0.0.1", hport))
    s = ctx.wrap_socket(raw, server_hostname=H.UPSTREAM_NAME)
    enc = hpack.Encoder()
    sent, closed, rss_max = 0, False, rss0
    try:
        s.sendall(PREFACE + frame(SETTINGS, 0, 0))
        sid = 1
        t_end = t_look = time.monotonic() + 30
        while time.monotonic() < t_end and not closed:
            batch = b""
            for _ in range(50):  # under the 100 concurrent streams
                block = enc.encode([(":method", "GET"), (":scheme", "https"),
                                    (":authority", H.UPSTREAM_NAME), (":path", "/nope")])
                batch += frame(HEADERS, END_HEADERS | END_STREAM, sid, block)
                sid += 2
            try:
                s.sendall(batch)
                sent += 50
            except (OSError, ssl.SSLError):
                closed = True
            if time.monotonic() >= t_look or closed:
                t_look = time.monotonic() + 0.5
                rss_max = max(rss_max, H.rss_kb(dp.pid))
                closed = closed or dp.stats()["https_slow_closed"] >= 1
    finally:
        s.close()
    good.finish()
    st = dp.stats()
    print("never-reading client: %d requests sent, closed %s; RSS %d kB -> max %d kB; "
          "https_slow_closed=%d tcp_closed_memory=%d"
          % (sent, closed, rss0, rss_max, st["https_slow_closed"], st["tcp_closed_memory"]))
    assert st["https_slow_closed"] >= 1, st
    assert st["tcp_closed_memory"] == 0, st
    if not H.sanitized(dp.pid):
        assert rss_max - rss0 < 16 * 1024, (rss0, rss_max)


@pytest.mark.timeout_s(60)
def test_padding_without_tcp_keepalive(dotproxy, unbound, certs, tmp_path):
    """An EDNS client's DoH answers are padded to 468-octet blocks (RFC
    8467) but carry no edns-tcp-keepalive: that option is DNS-over-TCP's,
    and an HTTP cache may hand the answer to others. A client without EDNS
    gets no OPT."""
    need_h2()
    dp, hport = start_doh(dotproxy, unbound, certs, tmp_path)
    with H2Client(hport, certs["ca"]) as c:
        q = dns.message.make_query("www.test.", "A", use_edns=0)
        for st, _, wire in (c.request("GET", get_path(q)),
                            c.request("POST", DOH_PATH, body=q.to_wire(), headers=[("content-type", DNS_CT)])):
            assert st == 200, st
            codes = [o.otype for o in dns.message.from_wire(wire).options]
            assert 12 in codes and 11 not in codes, codes
            assert len(wire) % 468 == 0, len(wire)
        st, _, r = c.query(dns.message.make_query("www.test.", "A"))
        assert st == 200 and r.edns < 0, r

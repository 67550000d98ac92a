"""Shared helpers for the dotproxy integration tests: paths, free ports, the
test zone, DNS client helpers (dnspython, dig, kdig) and answer normalisation.

Fixtures live in conftest.py; this module holds plain functions so that test
files can import them directly.
"""

import os
import random
import re
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
from pathlib import Path

import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
BUILD_DIR = Path(os.environ.get("DOTPROXY_BUILD_DIR", "/work/main/build"))
DOTPROXY = BUILD_DIR / "dotproxy"
MKCERT = REPO / "tools" / "mkcert.sh"
UPSTREAM_NAME = "upstream.test"

# ---------------------------------------------------------------- the zone

# local-data lines served by the unbound upstream under "test." (static:
# anything else under test. is NXDOMAIN).
BIG_TXT_COUNT = 24  # 24 TXT records of ~100 bytes: about 2.6 KB, > 1232
ZONE_DATA = [
    "test. 3600 IN SOA ns.test. hostmaster.test. 1 3600 900 604800 300",
    "test. 3600 IN NS ns.test.",
    "ns.test. 3600 IN A 192.0.2.53",
    "ready.test. 3600 IN A 192.0.2.250",
    "www.test. 3600 IN A 192.0.2.1",
    "www.test. 3600 IN AAAA 2001:db8::1",
    "multi.test. 3600 IN A 192.0.2.11",
    "multi.test. 3600 IN A 192.0.2.12",
    "multi.test. 3600 IN A 192.0.2.13",
    "multi.test. 3600 IN A 192.0.2.14",
    "v6.test. 3600 IN AAAA 2001:db8::6",
    "v6.test. 3600 IN AAAA 2001:db8::66",
    'txt.test. 3600 IN TXT "hello world"',
    'txt.test. 3600 IN TXT "second" "string"',
    "alias.test. 3600 IN CNAME www.test.",
    "mail.test. 3600 IN MX 10 www.test.",
    "_dns._udp.test. 3600 IN SRV 0 5 53 ns.test.",
] + [
    'big.test. 3600 IN TXT "%02d-%s"' % (i, "x" * 96) for i in range(BIG_TXT_COUNT)
] + [
    # many plain names: n0..n99
    "n%d.test. 3600 IN A 198.51.100.%d" % (i, i) for i in range(100)
]

# "perf.test." redirect: every name below answers A 192.0.2.7.
PERF_ZONE = "perf.test."
PERF_ADDR = "192.0.2.7"

# (name, type) pairs compared end to end. big.test is compared over TCP only
# (over UDP it may be truncated, legitimately).
E2E_QUERIES = [
    ("www.test.", "A"),
    ("www.test.", "AAAA"),
    ("multi.test.", "A"),
    ("v6.test.", "AAAA"),
    ("txt.test.", "TXT"),
    ("alias.test.", "CNAME"),
    ("alias.test.", "A"),
    ("mail.test.", "MX"),
    ("_dns._udp.test.", "SRV"),
    ("test.", "SOA"),
    ("test.", "NS"),
    ("www.test.", "MX"),        # NODATA
    ("nxdomain.test.", "A"),    # NXDOMAIN
    ("n42.test.", "A"),
    ("abc.perf.test.", "A"),
]
TCP_ONLY_QUERIES = [("big.test.", "TXT")]

# ---------------------------------------------------------------- tools

_handed_out = set()
_port_lock = threading.Lock()


def free_port(host="127.0.0.1"):
    """A port free for both UDP and TCP on host (bound to port 0 by the
    kernel, then checked for UDP). Never hands the same port out twice in a
    session."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(200):
        t = socket.socket(fam, socket.SOCK_STREAM)
        u = socket.socket(fam, socket.SOCK_DGRAM)
        try:
            t.bind((host, 0))
            port = t.getsockname()[1]
            try:
                u.bind((host, port))
            except OSError:
                continue
        finally:
            t.close()
            u.close()
        with _port_lock:
            if port in _handed_out:
                continue
            _handed_out.add(port)
        return port
    raise RuntimeError("no free port found on %s" % host)


def have_ipv6_loopback():
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        try:
            s.bind(("::1", 0))
        finally:
            s.close()
        return True
    except OSError:
        return False


def run(cmd, timeout=30, **kw):
    """subprocess.run bounded by timeout; text output captured. A missing
    program skips the test loudly (STYLE.md: CI installs them all)."""
    if not shutil.which(cmd[0]) and "/" not in cmd[0]:
        pytest.skip("REQUIRED TOOL MISSING: %s is not installed (CI must not skip)" % cmd[0])
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def run_bounded(args, timeout=10):
    """Run a program that must exit by itself (bounded): (rc, stdout, stderr);
    one that keeps running is a test failure, killed on the way out."""
    p = subprocess.Popen([str(a) for a in args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate(timeout=10)
        pytest.fail("%s did not exit within %d s\nstderr:\n%s" % (" ".join(map(str, args)), timeout, err),
                    pytrace=False)
    return p.returncode, out, err


def fmt_addr(host, port):
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)


# ---------------------------------------------------------------- DNS: dnspython

def make_query(name, rdtype="A", qid=None, use_edns=0, payload=1232, want_dnssec=False,
               flags=dns.flags.RD):
    q = dns.message.make_query(name, rdtype, use_edns=use_edns, payload=payload,
                               want_dnssec=want_dnssec)
    q.flags = flags
    q.id = random.randrange(0, 65536) if qid is None else qid
    return q


def udp(msg, host, port, timeout=3.0):
    return dns.query.udp(msg, host, port=port, timeout=timeout)


def tcp(msg, host, port, timeout=3.0):
    return dns.query.tcp(msg, host, port=port, timeout=timeout)


def tls_context(ca_file):
    ctx = ssl.create_default_context(cafile=str(ca_file))
    ctx.check_hostname = True
    return ctx


def tls(msg, host, port, ca_file, server_hostname=UPSTREAM_NAME, timeout=5.0):
    return dns.query.tls(msg, host, port=port, timeout=timeout,
                         ssl_context=tls_context(ca_file), server_hostname=server_hostname)


def rrsets_norm(section):
    """A section as a set of (name, class, type, frozenset(rdata text)),
    TTLs ignored (a caching forwarder may age them)."""
    out = set()
    for rrset in section:
        out.add((rrset.name.to_text().lower(), dns.rdataclass.to_text(rrset.rdclass),
                 dns.rdatatype.to_text(rrset.rdtype),
                 frozenset(rd.to_text() for rd in rrset)))
    return out


def flags_text(flags):
    """Header flags as dig prints them, sorted: 'aa qr ra rd'."""
    return " ".join(sorted(dns.flags.to_text(flags).lower().split()))


def norm_msg(m):
    """rcode, flags (the whole flags word: the ID is not part of it), question,
    answer and authority sections as sets."""
    return {
        "rcode": dns.rcode.to_text(m.rcode()),
        "flags": flags_text(m.flags),
        "question": [(q.name.to_text().lower(), dns.rdatatype.to_text(q.rdtype)) for q in m.question],
        "answer": rrsets_norm(m.answer),
        "authority": rrsets_norm(m.authority),
    }


def wire_id(data):
    return struct.unpack("!H", data[:2])[0]


def wait_answer(s, qid, timeout):
    """Reads the UDP socket s (answers to other IDs are passed over) for the
    answer with ID qid: (response, seconds waited), or (None, timeout)."""
    t0 = time.monotonic()
    end = t0 + timeout
    while time.monotonic() < end:
        s.settimeout(max(0.01, end - time.monotonic()))
        try:
            data = s.recv(65535)
        except socket.timeout:
            break
        r = dns.message.from_wire(data)
        if r.id == qid:
            return r, time.monotonic() - t0
    return None, timeout


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed after %d of %d bytes" % (len(buf), n))
        buf += chunk
    return buf


def tcp_read_msg(sock):
    (ln,) = struct.unpack("!H", recv_exact(sock, 2))
    return recv_exact(sock, ln)


# ---------------------------------------------------------------- DNS: dig / kdig output

_HDR = re.compile(r"->>HEADER<<-\s+opcode:\s*(\w+)[,;]\s*status:\s*(\w+)[,;]\s*id:\s*(\d+)")
_FLAGS = re.compile(r"^;;\s*[Ff]lags:\s*([a-z ]*);", re.M)


_RR = re.compile(r"^(\S+)\s+(?:(\S+)\s+)??(IN|CH|HS|CLASS\d+)\s+(\S+)\s*(.*)$", re.I)


def _parse_rr(line):
    """One RR line of dig/kdig output -> (name, class, type, rdata text in
    dnspython's canonical form). The TTL (plain or with kdig units) is dropped."""
    m = _RR.match(line.strip())
    if not m:
        raise AssertionError("cannot parse RR line: %r" % line)
    name, rdclass, rdtype, rdata_text = m.group(1).lower(), m.group(3).upper(), m.group(4).upper(), m.group(5)
    rd = dns.rdata.from_text(rdclass, rdtype, rdata_text, origin=dns.name.root, relativize=False)
    return name, rdclass, rdtype, rd.to_text()


def parse_dig_output(out):
    """Parse dig or kdig text output into the norm_msg() shape (flags as a
    sorted set of lower-case names, since dig/kdig print them so)."""
    h = _HDR.search(out)
    if not h:
        raise AssertionError("no header in output:\n" + out)
    f = _FLAGS.search(out)
    if not f:
        raise AssertionError("no flags line in output:\n" + out)
    sections = {}
    cur = None
    for line in out.splitlines():
        s = line.strip()
        m = re.match(r";;\s*(\w+) SECTION:", s)
        if m:
            cur = m.group(1).upper()
            sections.setdefault(cur, [])
            continue
        if not s:
            cur = None
            continue
        if s.startswith(";"):
            continue
        if cur in ("ANSWER", "AUTHORITY"):
            sections[cur].append(_parse_rr(s))

    def group(rrs):
        d = {}
        for name, c, t, rd in rrs:
            d.setdefault((name, c, t), set()).add(rd)
        return {(k[0], k[1], k[2], frozenset(v)) for k, v in d.items()}

    return {
        "rcode": h.group(2).upper(),
        "id": int(h.group(3)),
        "flags": " ".join(sorted(f.group(1).split())),
        "answer": group(sections.get("ANSWER", [])),
        "authority": group(sections.get("AUTHORITY", [])),
    }


def dig(host, port, name, rdtype, tcp=False, extra=(), timeout=15):
    cmd = ["dig", "@" + host, "-p", str(port), name, rdtype, "+tries=1", "+time=3",
           "+tcp" if tcp else "+notcp"] + list(extra)
    r = run(cmd, timeout=timeout)
    assert r.returncode == 0, "dig failed (%d): %s\n%s" % (r.returncode, " ".join(cmd), r.stdout + r.stderr)
    return parse_dig_output(r.stdout), r.stdout


def kdig(host, port, name, rdtype, tcp=False, tls_ca=None, tls_name=UPSTREAM_NAME, extra=(),
         timeout=15):
    cmd = ["kdig", "@" + host, "-p", str(port), name, rdtype, "+retry=0", "+time=3"]
    if tls_ca:
        cmd += ["+tls", "+tls-ca=%s" % tls_ca, "+tls-hostname=%s" % tls_name]
    else:
        cmd += ["+tcp" if tcp else "+notcp"]
    cmd += list(extra)
    r = run(cmd, timeout=timeout)
    assert r.returncode == 0, "kdig failed (%d): %s\n%s" % (r.returncode, " ".join(cmd), r.stdout + r.stderr)
    return parse_dig_output(r.stdout), r.stdout


def dig_flags_norm(p):
    """Drop the id from a parse_dig_output() result for comparison."""
    p = dict(p)
    p.pop("id", None)
    return p


# ---------------------------------------------------------------- log lines

_KV = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


def parse_logline(line):
    """key=value log line -> dict; quoted values unquoted, integers as int."""
    d = {}
    for k, v in _KV.findall(line):
        if v.startswith('"') and v.endswith('"') and len(v) >= 2:
            v = v[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        elif re.fullmatch(r"-?\d+", v):
            v = int(v)
        d[k] = v
    return d


def sanitized(pid):
    """True when process pid runs with AddressSanitizer (its allocator's
    redzones and quarantine: RSS says little about leaks or per-client
    cost)."""
    with open("/proc/%d/maps" % pid) as f:
        return "libasan" in f.read()


def rss_kb(pid):
    """VmRSS of process pid, in kB (0 when /proc does not say)."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def wait_for(pred, timeout, interval=0.05):
    """Poll pred() until truthy or timeout; returns the last value."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(interval)


def essence(d):
    """The parts of a normalised answer that must survive forwarding."""
    return {k: d[k] for k in ("rcode", "flags", "answer", "authority")}


# ---------------------------------------------------------------- files the daemon reads

def write_file(path, text):
    """Write atomically (temp file + rename in the same directory), 0644:
    a daemon that reloads it never sees half a file."""
    path = Path(path)
    tmp = path.with_name(".%s.%d.tmp" % (path.name, random.randrange(1 << 30)))
    tmp.write_text(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def copy_ca(certs, d):
    """certs["ca"] copied to d/ca.pem, 0644 (readable after the daemon drops
    to nobody); its path."""
    dst = Path(d) / "ca.pem"
    shutil.copyfile(certs["ca"], dst)
    os.chmod(dst, 0o644)
    return dst

# ---------------------------------------------------------------- threaded test servers

class LoopbackServer:
    """A TCP listener on 127.0.0.1 (a free port: self.port) whose accept loop,
    the subclass's _run, runs in a daemon thread until stop() sets
    self._stop; stop() then closes the connections kept in self.conns and
    the listener. A subclass sets what _run needs before calling this
    __init__, which starts the thread."""

    def __init__(self, backlog, rcvbuf=None, timeout=None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(backlog)
        if timeout is not None:
            self.sock.settimeout(timeout)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        raise NotImplementedError

    def stop(self):
        self._stop.set()
        self.thread.join(timeout=5)
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass
        self.sock.close()

"""Steering (issue 13): a SO_REUSEPORT eBPF program (core/steer.bpf.c) sends
each UDP query to the shard that is its question's home (core/home.h).

The proof that the program agrees with the C bit for bit: every shard
recomputes dp_home_shard() for each UDP query it reads and counts those
that are not its own (dotproxy_events_total{event="udp_off_home"}). With
steering that counter stays 0 over 2,000 names of every length up to 255
octets, mixed case, octets >= 0x80, lengths on and around the 8-octet
words of the hash; with --steering off it is about (N-1)/N of them.

Malformed questions, which the program leaves to the kernel's hash, are
answered exactly as without steering. The start-up line says whether
steering is on, off, or unavailable and why.
"""

import random
import re
import select
import shutil
import socket
import struct
import subprocess
import time
import urllib.request

import dns.message
import dns.name
import dns.rcode
import pytest

import dphelpers as H
from conftest import _stop

NAMES = 2000
BATCH = 100  # queries in flight at once, each from its own new source port


# ---------------------------------------------------------------- helpers

def start(dotproxy, unbound, certs, threads, steering=None):
    mport = H.free_port()
    extra = ["--no-pin", "--metrics", "127.0.0.1:%d" % mport]
    if steering:
        extra += ["--steering", steering]
    dp = dotproxy([unbound.upstream_arg()], certs["ca"], threads=threads, extra=extra)
    dp.mport = mport
    return dp


def steering_line(dp):
    found = dp.find_log(lambda d: str(d.get("msg", "")).startswith("steering"))
    assert len(found) == 1, "want exactly one steering line at start, got %r:\n%s" % (found, dp.tail())
    return found[0]


def require_steering_on(dp):
    line = steering_line(dp)
    if line["msg"] == "steering unavailable" and "built without" in line.get("reason", ""):
        pytest.fail("this dotproxy was built without the steering program (install libbpf-dev, "
                    "scripts/install-deps.sh, and rebuild): %r" % line, pytrace=False)
    if line["msg"] != "steering on":
        pytest.skip("STEERING UNAVAILABLE on this machine (kernel or privilege): %r" % line)
    return line


def events(dp):
    body = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % dp.mport, timeout=5).read().decode()
    ev = {}
    for m in re.finditer(r'^dotproxy_events_total\{event="(\w+)"\} (\d+)$', body, re.M):
        ev[m.group(1)] = int(m.group(2))
    assert "udp_off_home" in ev, "no udp_off_home event in /metrics:\n%s" % body[:2000]
    return ev


def name_of_wire_len(rng, total, suffix="perf.test."):
    """A name of exactly total wire octets ending in suffix, labels of
    random length and case; some octets >= 0x80, among them 0xc1..0xda
    (upper-case letters with the top bit set, which must not be folded)."""
    sfx = dns.name.from_text(suffix)
    rest = total - len(sfx.to_wire())
    assert rest >= 0 and rest != 1
    labels = []
    while rest > 0:
        top = min(63, rest - 1)
        n = rng.randint(1, top)
        if rest - (n + 1) == 1:  # never leave a single octet
            n = n + 1 if n < top else n - 1
        alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
        lab = bytearray(rng.choice(alphabet) for _ in range(n))
        if rng.random() < 0.1:
            lab[rng.randrange(n)] = rng.choice([0xc1, 0xda, 0xe1, 0x80, 0xff, 0x5b, 0x40, 0x60, 0x7b])
        labels.append(bytes(lab))
        rest -= n + 1
    name = dns.name.Name(labels + list(sfx.labels))
    assert len(name.to_wire()) == total
    return name


def distinct_names(seed, count):
    """count distinct names: wire lengths from 13 to 255 with extra weight on
    the 8-octet word boundaries (8k - 1, 8k, 8k + 1) and on 247..255."""
    rng = random.Random(seed)
    lengths = list(range(13, 256))  # perf.test. alone is 11
    edges = [l for l in lengths if l % 8 in (7, 0, 1)] + list(range(247, 256)) * 4
    out, seen = [], set()
    while len(out) < count:
        total = rng.choice(edges) if rng.random() < 0.5 else rng.choice(lengths)
        n = name_of_wire_len(rng, total)
        key = n.to_wire().lower()
        if key in seen:
            continue
        seen.add(key)
        out.append(n)
    return out


def ask_all(port, names, rdtype="A", rounds=3, host="127.0.0.1"):
    """Ask every name once over UDP, each from a new socket (a new source
    port), BATCH in flight; unanswered ones are asked again (bounded).
    Returns {name: response}."""
    answers = {}
    todo = list(names)
    for _ in range(rounds):
        left = []
        for i in range(0, len(todo), BATCH):
            chunk = todo[i:i + BATCH]
            socks = {}
            try:
                for n in chunk:
                    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                                      socket.SOCK_DGRAM)
                    s.setblocking(False)
                    q = H.make_query(n, rdtype)
                    s.sendto(q.to_wire(), (host, port))
                    socks[s] = (n, q)
                deadline = time.monotonic() + 5
                while socks and time.monotonic() < deadline:
                    r, _, _ = select.select(list(socks), [], [], 0.2)
                    for s in r:
                        n, q = socks.pop(s)
                        try:
                            resp = dns.message.from_wire(s.recv(65535))
                        except (OSError, Exception):
                            left.append(n)
                        else:
                            if resp.id == q.id:
                                answers[n] = resp
                            else:
                                left.append(n)
                        s.close()
                left += [n for n, _ in socks.values()]
            finally:
                for s in socks:
                    s.close()
        todo = left
        if not todo:
            break
    return answers


# ---------------------------------------------------------------- steering on

@pytest.mark.timeout_s(240)
@pytest.mark.parametrize("threads", [2, 8])
def test_steering_every_udp_query_lands_home(dotproxy, unbound, certs, threads):
    """2,000 distinct names from 2,000 source ports: none arrives on a shard
    other than its home (the program and home.h agree on every one)."""
    dp = start(dotproxy, unbound, certs, threads)
    line = require_steering_on(dp)
    assert line["shards"] == threads, line
    assert line["verified_insns"] > 0, line
    before = events(dp)
    names = distinct_names(1300 + threads, NAMES)
    answers = ask_all(dp.port, names)
    assert len(answers) >= NAMES * 0.99, "only %d of %d answered" % (len(answers), NAMES)
    after = events(dp)
    got = after["udp_queries"] - before["udp_queries"]
    off = after["udp_off_home"] - before["udp_off_home"]
    print("threads=%d queries=%d off_home=%d %r" % (threads, got, off, line))
    assert got >= NAMES, "the daemon read only %d queries" % got
    assert off == 0, ("%d of %d UDP queries arrived away from their home shard with steering on: "
                      "the program and home.h disagree" % (off, got))


@pytest.mark.timeout_s(240)
def test_steering_each_listen_address(dotproxy, unbound, certs):
    """Several listen addresses are several reuseport groups, each with the
    program attached and its own sockets in the array: queries to every
    address land home (and on a socket of that address: they are answered)."""
    v6 = H.have_ipv6_loopback()
    listen = [("127.0.0.1", H.free_port()), ("127.0.0.1", H.free_port())]
    if v6:
        listen.append(("::1", H.free_port("::1")))
    mport = H.free_port()
    dp = dotproxy([unbound.upstream_arg()], certs["ca"], threads=4, listen=listen,
                  extra=["--no-pin", "--metrics", "127.0.0.1:%d" % mport])
    dp.mport = mport
    line = require_steering_on(dp)
    assert line["listen"] == len(listen), line
    before = events(dp)
    names = distinct_names(5300, 600 * len(listen))
    for i, (host, port) in enumerate(listen):
        part = names[i::len(listen)]
        answers = ask_all(port, part, host=host)
        assert len(answers) >= len(part) * 0.99, "%s:%d: %d of %d answered" % (host, port, len(answers), len(part))
    after = events(dp)
    got = after["udp_queries"] - before["udp_queries"]
    off = after["udp_off_home"] - before["udp_off_home"]
    print("listen=%r queries=%d off_home=%d" % (listen, got, off))
    assert got >= len(names) and off == 0, "%d of %d away from home" % (off, got)


@pytest.mark.timeout_s(240)
@pytest.mark.parametrize("threads", [2, 8])
def test_steering_off_lands_anywhere(dotproxy, unbound, certs, threads):
    """The control: without the program the kernel's 4-tuple hash decides,
    and about (N-1)/N of the queries arrive away from their home."""
    dp = start(dotproxy, unbound, certs, threads, steering="off")
    line = steering_line(dp)
    assert line["msg"] == "steering off" and line["reason"] == "--steering off", line
    assert "handed to their home shard" in line["fallback"], line
    before = events(dp)
    names = distinct_names(2300 + threads, NAMES)
    answers = ask_all(dp.port, names)
    assert len(answers) >= NAMES * 0.99
    after = events(dp)
    got = after["udp_queries"] - before["udp_queries"]
    off = after["udp_off_home"] - before["udp_off_home"]
    want = (threads - 1) / threads
    print("threads=%d queries=%d off_home=%d (%.3f, expected about %.3f)" % (threads, got, off, off / got, want))
    assert abs(off / got - want) < 0.08, "off-home share %.3f, expected about %.3f" % (off / got, want)


@pytest.mark.timeout_s(180)
@pytest.mark.parametrize("threads", [2, 8])
def test_one_home_udp_second_ask_is_a_hit(dotproxy, unbound, certs, threads):
    """The point of steering, seen from outside: 300 fresh names asked once
    and again from new source ports over UDP are all hits the second time,
    although each shard still has its own cache (on f108c5a about 1/N are)."""
    dp = start(dotproxy, unbound, certs, threads)
    require_steering_on(dp)
    names = distinct_names(4300 + threads, 300)
    first = ask_all(dp.port, names)
    assert len(first) == len(names)
    before = events(dp)
    second = ask_all(dp.port, names)
    after = events(dp)
    assert len(second) == len(names)
    hits = after["cache_hits"] - before["cache_hits"]
    misses = after["cache_misses"] - before["cache_misses"]
    print("threads=%d second asks: hits=%d misses=%d" % (threads, hits, misses))
    assert hits == len(names) and misses == 0, (
        "second asks: %d hits, %d misses, of %d" % (hits, misses, len(names)))


# ---------------------------------------------------------------- malformed

def hdr(qid, flags=0x0100, qd=1, an=0, ns=0, ar=0):
    return struct.pack("!6H", qid, flags, qd, an, ns, ar)


def malformed_packets():
    """(label, wire) of questions the program must leave to the kernel."""
    www = b"\x03www\x04perf\x04test\x00"
    long_name = b"".join(b"\x3f" + b"a" * 63 for _ in range(4)) + b"\x00"  # 257 octets
    return [
        ("truncated name", hdr(0x1001) + b"\x03www\x04pe"),
        ("name without root", hdr(0x1002) + b"\x03www\x04perf\x04test"),
        ("name without qtype", hdr(0x1003) + www),
        ("compression pointer", hdr(0x1004) + b"\x03www\xc0\x0c" + b"\x00\x01\x00\x01"),
        ("pointer only", hdr(0x1005) + b"\xc0\x0c\x00\x01\x00\x01"),
        ("qdcount 2", hdr(0x1006, qd=2) + www + b"\x00\x01\x00\x01" + www + b"\x00\x01\x00\x01"),
        ("qdcount 0", hdr(0x1007, qd=0)),
        ("name over 255", hdr(0x1008) + long_name + b"\x00\x01\x00\x01"),
        ("label type 0x40", hdr(0x1009) + b"\x41" + b"a" * 1 + b"\x00\x00\x01\x00\x01"),
        ("header only", hdr(0x100a)),
        ("response (QR)", hdr(0x100b, flags=0x8100) + www + b"\x00\x01\x00\x01"),
        ("short header", hdr(0x100c)[:11]),
        ("opcode NOTIFY", hdr(0x100d, flags=0x2100) + www + b"\x00\x06\x00\x01"),
        ("trailing junk", hdr(0x100e) + www + b"\x00\x01\x00\x01" + b"\xff" * 3),
    ]


def exchange(port, wire, timeout=1.5):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.settimeout(timeout)
        s.sendto(wire, ("127.0.0.1", port))
        try:
            return s.recv(65535)
        except socket.timeout:
            return None
    finally:
        s.close()


@pytest.mark.timeout_s(180)
def test_steering_malformed_answered_as_without(dotproxy, unbound, certs):
    """Truncated names, compression pointers in the question, QDCOUNT=2 and
    the rest get the same answer (or the same silence) with steering as
    without, each sent from several source ports."""
    on = start(dotproxy, unbound, certs, 2)
    require_steering_on(on)
    off = start(dotproxy, unbound, certs, 2, steering="off")
    expect_rcode = {"truncated name": 1, "name without root": 1, "name without qtype": 1,
                    "compression pointer": 1, "pointer only": 1, "qdcount 2": 1, "qdcount 0": 1,
                    "name over 255": 1, "label type 0x40": 1, "header only": 1,
                    "opcode NOTIFY": 4}
    for label, wire in malformed_packets():
        for _ in range(4):  # several source ports: several shards
            a = exchange(on.port, wire)
            b = exchange(off.port, wire)
            assert a == b, "%s: with steering %r, without %r" % (label, a, b)
            if label in expect_rcode:
                assert a is not None, "%s: no answer" % label
                assert a[:2] == wire[:2] and a[3] & 0x0f == expect_rcode[label], (label, a)
            elif label in ("response (QR)", "short header"):
                assert a is None, "%s: answered %r" % (label, a)
    # and the daemon still answers a good question
    r = H.udp(H.make_query("ok.perf.test.", "A"), "127.0.0.1", on.port)
    assert r.rcode() == dns.rcode.NOERROR


# ---------------------------------------------------------------- start-up line

@pytest.mark.timeout_s(60)
def test_steering_start_line_on(dotproxy, unbound, certs):
    dp = start(dotproxy, unbound, certs, 2)
    line = require_steering_on(dp)
    assert line["shards"] == 2 and line["listen"] == 1 and line["program"] == "sk_reuseport", line


@pytest.mark.timeout_s(60)
def test_steering_one_shard_needs_none(dotproxy, unbound, certs):
    dp = start(dotproxy, unbound, certs, 1)
    line = steering_line(dp)
    assert line["msg"] == "steering off" and "one shard" in line["reason"], line


@pytest.mark.timeout_s(90)
def test_steering_unavailable_without_privilege(tmp_path, unbound, certs, dotproxy_bin):
    """Started with no capability at all (root's bounding set emptied): one
    line says steering is unavailable, why, and what happens instead; the
    daemon runs and answers."""
    setpriv = shutil.which("setpriv")
    if not setpriv:
        pytest.skip("REQUIRED TOOL MISSING: setpriv (util-linux)")
    port, mport = H.free_port(), H.free_port()
    args = [setpriv, "--bounding-set", "-all", "--inh-caps", "-all", "--",
            str(dotproxy_bin), "--listen", "127.0.0.1:%d" % port, "--upstream", unbound.upstream_arg(),
            "--ca-file", str(certs["ca"]), "--threads", "2", "--no-pin", "--allow-root",
            "--metrics", "127.0.0.1:%d" % mport]
    errpath = tmp_path / "noprivs.stderr"
    with open(errpath, "wb") as errf:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=errf, stderr=errf,
                                start_new_session=True)
    try:
        started = H.wait_for(lambda: proc.poll() is not None or 'msg="started"' in errpath.read_text(), 20)
        text = errpath.read_text()
        assert proc.poll() is None and started, "did not start:\n%s" % text
        lines = [H.parse_logline(l) for l in text.splitlines() if 'msg="steering' in l]
        assert len(lines) == 1, text
        line = lines[0]
        assert line["msg"] == "steering unavailable", line
        assert "privilege" in line["reason"], line
        assert "handed to their home shard" in line["fallback"], line
        # a deployment choice (deploy/README.md), not a fault: info, not warn
        assert line["level"] == "info", line
        r = H.udp(H.make_query("www.test.", "A"), "127.0.0.1", port)
        assert r.rcode() == dns.rcode.NOERROR
    finally:
        _stop(proc, grace=10)

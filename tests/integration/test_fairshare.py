"""Issue 12, hole 3: one client must not take the whole in-flight table.

On f108c5a one TCP connection pipelining more distinct names than the
shard's query table holds, or one address flooding UDP, fills every slot
while a slow upstream sits on them, and every other client gets SERVFAIL.
Now a TCP connection is not read beyond --max-inflight-per-conn queries in
flight (backpressure: what it sent waits, nothing is dropped), and under
contention every active client address keeps at least an equal share of
the table (UDP over its share: SERVFAIL; TCP: not read).

Setup of every test: one shard (--threads 1), a 512-slot table
(--max-inflight 512, a flag f108c5a has), a dot-responder upstream that
holds every answer back DELAY_S, distinct names (no cache hit, no
coalescing), and distinct clients as distinct 127.0.0.x source addresses.
No flag f108c5a lacks is passed: the new limits work at their defaults.

Objects owned here: client sockets (closed by `with`), the dot-responder
(test_resilience's `responder` fixture) and dotproxy (conftest), both
stopped at teardown.
"""

import re
import selectors
import socket
import struct
import time
import urllib.request

import dns.message
import dns.rcode
import pytest

import dphelpers as H
from test_resilience import RESP_IP, responder  # noqa: F401 (fixture)

TABLE = 512  # --max-inflight
DELAY_S = 3.0  # the upstream holds every answer back this long
TIMEOUT = "10s"  # dotproxy --timeout: above DELAY_S, below the waits here


def start(dotproxy, responder, certs, extra=(), delay_s=DELAY_S):  # noqa: F811
    r = responder(["--delay-ms", str(int(delay_s * 1000))])
    return dotproxy([r.upstream_arg()], certs["ca"], timeout=TIMEOUT, threads=1,
                    extra=["--max-inflight", str(TABLE)] + list(extra))


def metrics_event(mport, event):
    """dotproxy_events_total{event=...} from /metrics."""
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % mport, timeout=5) as r:
        text = r.read().decode()
    m = re.search(r'^dotproxy_events_total\{event="%s"\} (\d+)$' % event, text, re.M)
    assert m, "no %s in /metrics" % event
    return int(m.group(1))


def names(tag, n):
    return ["q%d.%s.fair.test." % (i, tag) for i in range(n)]


def query_wire(name, qid):
    return H.make_query(name, "A", qid=qid).to_wire()


def verdict(data):
    """'ok' for the responder's answer, else the rcode's name."""
    m = dns.message.from_wire(data)
    if m.rcode() != dns.rcode.NOERROR:
        return dns.rcode.to_text(m.rcode())
    ips = [rd.address for rr in m.answer for rd in rr if hasattr(rd, "address")]
    return "ok" if ips == [RESP_IP] else "wrong answer %s" % ips


def udp_socket(src):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    s.bind((src, 0))
    return s


def udp_send(sock, dp, qnames, first_id=0, burst=64):
    """Send one query per name (IDs first_id...), in bursts so that the
    kernel does not drop datagrams on a loaded machine."""
    for i, name in enumerate(qnames):
        sock.sendto(query_wire(name, first_id + i), (dp.host, dp.port))
        if i % burst == burst - 1:
            time.sleep(0.005)


def udp_collect(sock, ids, timeout, stop=None):
    """Answers to the IDs in ids: {id: verdict}, until every ID has one,
    stop(answers) is true, or timeout seconds passed."""
    got = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(got) < len(ids) and not (stop and stop(got)):
        sock.settimeout(max(0.01, min(0.2, deadline - time.monotonic())))
        try:
            data = sock.recv(65535)
        except socket.timeout:
            continue
        qid = struct.unpack("!H", data[:2])[0]
        if qid in ids:
            assert qid not in got, "query %d answered twice" % qid
            got[qid] = verdict(data)
    return got


def tcp_connect(src, dp):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((src, 0))
    s.settimeout(5)
    s.connect((dp.host, dp.port))
    return s


def tcp_pipeline(sock, qnames, first_id=0):
    sock.sendall(b"".join(struct.pack("!H", len(w)) + w
                          for w in (query_wire(n, first_id + i) for i, n in enumerate(qnames))))


def tcp_collect(socks, want, timeout):
    """Read answers from every connection in socks until want answers in
    all, EOF everywhere, or timeout: {(sock index, id): verdict}."""
    got = {}
    bufs = [b""] * len(socks)
    sel = selectors.DefaultSelector()
    for i, s in enumerate(socks):
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, i)
    deadline = time.monotonic() + timeout
    try:
        while len(got) < want and sel.get_map() and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=min(0.5, max(0.01, deadline - time.monotonic()))):
                i = key.data
                try:
                    chunk = socks[i].recv(65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    sel.unregister(socks[i])
                    continue
                bufs[i] += chunk
                while len(bufs[i]) >= 2 and len(bufs[i]) >= 2 + struct.unpack("!H", bufs[i][:2])[0]:
                    n = struct.unpack("!H", bufs[i][:2])[0]
                    msg, bufs[i] = bufs[i][2:2 + n], bufs[i][2 + n:]
                    qid = struct.unpack("!H", msg[:2])[0]
                    assert (i, qid) not in got, "query %d on connection %d answered twice" % (qid, i)
                    got[(i, qid)] = verdict(msg)
    finally:
        sel.close()
    return got


def summary(verdicts):
    out = {}
    for v in verdicts:
        out[v] = out.get(v, 0) + 1
    return out


@pytest.mark.timeout_s(90)
def test_hole3_tcp_connection_cannot_take_whole_table(dotproxy, responder, certs):  # noqa: F811
    """One TCP connection (127.0.0.2) pipelines TABLE + 88 distinct names to
    the slow upstream. Another client (127.0.0.3, UDP) asking meanwhile gets
    real answers, not SERVFAIL; and every query of the pipelining
    connection is answered with the real answer in the end (it was paused,
    not refused)."""
    dp = start(dotproxy, responder, certs)
    n_flood = TABLE + 88
    with tcp_connect("127.0.0.2", dp) as a, udp_socket("127.0.0.3") as b:
        tcp_pipeline(a, names("tcpflood", n_flood))
        time.sleep(1.0)  # dotproxy has read what it will (well within DELAY_S)
        b_ids = list(range(20))
        udp_send(b, dp, names("other", len(b_ids)))
        b_got = udp_collect(b, b_ids, DELAY_S + 7)
        a_got = tcp_collect([a], n_flood, 3 * DELAY_S * n_flood / 256 + 20)
    assert summary(b_got.values()) == {"ok": len(b_ids)}, (
        "another client's queries while one TCP connection pipelines %d names: %s (want all answered)"
        % (n_flood, summary(b_got.values())))
    assert summary(a_got.values()) == {"ok": n_flood}, (
        "the pipelining connection's %d queries: %s (want every one answered: backpressure, not drops)"
        % (n_flood, summary(a_got.values())))
    st = dp.stats()
    assert int(st["tcp_paused"]) >= 1, st


@pytest.mark.timeout_s(90)
def test_hole3_udp_flood_from_one_address_gets_fair_share(dotproxy, responder, certs):  # noqa: F811
    """127.0.0.2 floods 2 * TABLE distinct names over UDP: it fills the
    table (alone, it may) and the rest gets SERVFAIL. Then 127.0.0.3 asks 20
    names: they are answered for real (its share is taken back from the
    flooder's oldest queries, which get SERVFAIL), not SERVFAIL."""
    mport = H.free_port()
    dp = start(dotproxy, responder, certs, extra=["--metrics", "127.0.0.1:%d" % mport])
    n_flood = 2 * TABLE
    with udp_socket("127.0.0.2") as a, udp_socket("127.0.0.3") as b:
        udp_send(a, dp, names("udpflood", n_flood))
        # The table is full once SERVFAILs come back (those beyond it).
        a_got = udp_collect(a, set(range(n_flood)), DELAY_S - 1,
                            stop=lambda g: sum(v == "SERVFAIL" for v in g.values()) >= n_flood - TABLE - 64)
        assert sum(v == "SERVFAIL" for v in a_got.values()) >= n_flood - TABLE - 64, (
            "flooder: %s; the table did not fill up as the test expects" % summary(a_got.values()))
        b_ids = list(range(20))
        udp_send(b, dp, names("other", len(b_ids)))
        b_got = udp_collect(b, b_ids, DELAY_S + 7)
    assert summary(b_got.values()) == {"ok": len(b_ids)}, (
        "another address's queries while 127.0.0.2 floods: %s (want all answered)" % summary(b_got.values()))
    assert metrics_event(mport, "fair_reclaimed") >= len(b_ids)
    # Refused while alone at a full table (inflight_full), or, once
    # 127.0.0.3 was active, over its share (fair_refused).
    refused = metrics_event(mport, "inflight_full") + metrics_event(mport, "fair_refused")
    assert refused >= n_flood - TABLE - 64


@pytest.mark.timeout_s(90)
def test_hole3_tcp_connections_from_one_address_get_fair_share(dotproxy, responder, certs):  # noqa: F811
    """127.0.0.2 opens 4 TCP connections and pipelines 200 names on each
    (under --max-inflight-per-conn, 800 together: more than the table).
    127.0.0.3 asks 20 names over UDP meanwhile and gets real answers; the
    flooder's connections are paused at its share, not answered SERVFAIL,
    and all of their 800 queries are answered for real in the end."""
    dp = start(dotproxy, responder, certs)
    per_conn = 200
    socks = [tcp_connect("127.0.0.2", dp) for _ in range(4)]
    try:
        for i, s in enumerate(socks):
            tcp_pipeline(s, names("conn%d" % i, per_conn))
        time.sleep(1.0)
        with udp_socket("127.0.0.3") as b:
            b_ids = list(range(20))
            udp_send(b, dp, names("other", len(b_ids)))
            b_got = udp_collect(b, b_ids, DELAY_S + 7)
        a_got = tcp_collect(socks, len(socks) * per_conn, 4 * DELAY_S + 30)
    finally:
        for s in socks:
            s.close()
    assert summary(b_got.values()) == {"ok": len(b_ids)}, (
        "another address's queries while 127.0.0.2 pipelines on 4 connections: %s (want all answered)"
        % summary(b_got.values()))
    # Every query answered; SERVFAIL only for those reclaimed to make room
    # for 127.0.0.3 (the table was full: alone, 127.0.0.2 could fill it).
    a_sum = summary(a_got.values())
    assert len(a_got) == len(socks) * per_conn and set(a_sum) <= {"ok", "SERVFAIL"} \
        and a_sum.get("SERVFAIL", 0) <= len(b_ids), (
            "the 4 connections' %d queries: %s (want every one answered, SERVFAIL at most %d: "
            "backpressure, not drops)" % (len(socks) * per_conn, a_sum, len(b_ids)))
    st = dp.stats()
    assert int(st["fair_refused"]) >= 1 and int(st["tcp_paused"]) >= 1, st


@pytest.mark.timeout_s(60)
def test_hole3_tcp_per_connection_cap_flag(dotproxy, responder, certs):  # noqa: F811
    """--max-inflight-per-conn 16: a connection pipelining 100 names has 16
    of them in the table at a time (the rest waits, unread or held), and all
    100 are answered for real. (A new flag: f108c5a refuses it; the tests
    above cover the hole at the defaults.)"""
    cap, n, delay = 16, 100, 1.0
    dp = start(dotproxy, responder, certs, extra=["--max-inflight-per-conn", str(cap)], delay_s=delay)
    with tcp_connect("127.0.0.2", dp) as a:
        tcp_pipeline(a, names("capped", n))
        time.sleep(delay / 2)
        inflight = int(dp.stats()["queries_inflight"])
        got = tcp_collect([a], n, delay * (n / cap + 1) + 15)
    assert inflight == cap, "queries in flight with a %d-query cap per connection: %d" % (cap, inflight)
    assert summary(got.values()) == {"ok": n}, summary(got.values())
    assert int(dp.stats()["tcp_paused"]) >= n // cap - 1


@pytest.mark.timeout_s(60)
def test_hole3_single_client_not_throttled(dotproxy, responder, certs):  # noqa: F811
    """One address alone may use the whole table: 480 concurrent queries
    (well above its share were a second client active, TABLE / 2, and into
    the last eighth of the table, where the fair share starts to look at
    who asks) all get the real answer."""
    dp = start(dotproxy, responder, certs)
    n = 480
    with udp_socket("127.0.0.2") as a:
        udp_send(a, dp, names("alone", n))
        got = udp_collect(a, set(range(n)), DELAY_S + 10)
    assert summary(got.values()) == {"ok": n}, (
        "one client alone, %d queries in flight on a %d-slot table: %s (want all answered)"
        % (n, TABLE, summary(got.values())))


@pytest.mark.timeout_s(60)
def test_drain_answers_paused_connection(dotproxy, responder, certs):  # noqa: F811
    """SIGTERM while a connection is paused at --max-inflight-per-conn with
    most of its pipelined queries held back (received, not yet dispatched)
    or still in its socket: the drain goes on dispatching them as its
    queries are answered, every one is answered for real, and dotproxy exits
    0 within --drain-timeout. (A new flag: not a hole test.)"""
    import os
    import signal
    cap, n, delay, drain_s = 32, 200, 0.3, 8
    dp = start(dotproxy, responder, certs, delay_s=delay,
               extra=["--max-inflight-per-conn", str(cap), "--drain-timeout", "%ds" % drain_s])
    with tcp_connect("127.0.0.2", dp) as a:
        tcp_pipeline(a, names("drain", n))
        time.sleep(delay / 2)
        t_term = time.monotonic()
        os.kill(dp.pid, signal.SIGTERM)
        dp.expect_exited = True
        got = tcp_collect([a], n, drain_s + 5)
        rc = dp.proc.wait(timeout=drain_s + 5)
        exit_s = time.monotonic() - t_term
    assert summary(got.values()) == {"ok": n}, (
        "a connection paused at its cap when SIGTERM came: %s of %d (want every one answered)"
        % (summary(got.values()), n))
    assert rc == 0, dp.tail()
    assert exit_s <= drain_s + 1.0, "exit %.2f s after SIGTERM, drain timeout %d s" % (exit_s, drain_s)
    stats = [H.parse_logline(l) for l in dp.log_lines() if 'msg="stats"' in l]
    assert stats and int(stats[-1]["tcp_paused"]) >= 1, "the connection was never paused: %s" % stats[-1:]

"""Forwarding rules (issue 15): --forward ZONE=UPSTREAM sends the names at or
below ZONE to that zone's own servers, longest suffix first.

Set-up (start_zones): the default route "." is a DoT upstream (test_resilience's
dot-responder, every A answered with RESP_IP); plainserver.py servers, each on
its own 127.0.0.x address with its own marker address, serve
  corp.example, 10.in-addr.arpa    udp://  CORP   (TC on big names over UDP)
  a.corp.example, 1.10.in-addr.arpa,
  8.b.d.0.1.0.0.2.ip6.arpa         tcp://  ACORP
  cluster.local                    tcp://  CLUSTER
An A answer's address says which server answered; what each plain server
recorded (name, transport, source port) says what the proxy asked where, and
the responder's counters what went over DoT.

Objects owned here: the plain servers (the `plain` fixture stops them);
dotproxy and the dot-responder belong to their fixtures (conftest,
test_resilience). test_forward_spoof.py reuses `plain` and the helpers
(ask, assert_from, who, forward_args, NO_PROBES).

Also here: IPv6 plain upstreams; the plain default route refused without
--allow-plain-default; one cache for all zones; per-zone metrics; a reload
adding a zone under load; failover inside a zone.
"""

import os
import signal
import socket
import struct
import time
from types import SimpleNamespace

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.reversename
import pytest

import dphelpers as H
import plainserver as P
from test_ops import QueryLoad, _config_text, _outcomes, a_addrs, msum, scrape, tag
from test_resilience import RESP_IP, responder  # noqa: F401 (fixture)

CORP_IP, ACORP_IP, CLUSTER_IP = "203.0.113.1", "203.0.113.2", "203.0.113.3"
NEW_IP, HA1_IP, HA2_IP = "203.0.113.5", "203.0.113.11", "203.0.113.12"
WHO = {RESP_IP: "DoT default", CORP_IP: "corp (udp://)", ACORP_IP: "a.corp (tcp://)",
       CLUSTER_IP: "cluster (tcp://)", NEW_IP: "new (udp://)", HA1_IP: "ha server 1", HA2_IP: "ha server 2",
       P.FORGED_ADDR: "FORGED"}
CLIENT_TIMEOUT = 6.0   # dotproxy's --timeout is 2 s; the client waits longer
# No idle probe (". NS" after ~10 s idle) to the DoT upstream during a test:
# the tests count the queries it gets.
NO_PROBES = ["--upstream-idle-timeout", "600s"]


# ---------------------------------------------------------------- fixtures and helpers

@pytest.fixture
def plain():
    """Factory: plain(host, marker, **PlainServer options) -> a started
    PlainServer; all stopped at teardown."""
    made = []

    def make(host, marker, **kw):
        s = P.PlainServer(host, marker, **kw).start()
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()


def ask(dp, name, rdtype="A", tcp=False, timeout=CLIENT_TIMEOUT, payload=1232):
    """One query from a new socket (a new client) to dotproxy; the response,
    or a test failure naming the query."""
    q = H.make_query(name, rdtype, use_edns=0, payload=payload)
    try:
        return (H.tcp if tcp else H.udp)(q, dp.host, dp.port, timeout=timeout)
    except dns.exception.Timeout:
        pytest.fail("no answer to %s/%s over %s within %.0f s" % (name, rdtype, "TCP" if tcp else "UDP",
                                                                  timeout), pytrace=False)


def who(r):
    """The answer, as rcode and the server names its A addresses mean."""
    return "%s %s" % (dns.rcode.to_text(r.rcode()), [WHO.get(a, a) for a in a_addrs(r)])


def assert_from(r, marker, what):
    assert r.rcode() == dns.rcode.NOERROR and a_addrs(r) == [marker], \
        "%s: want %s's answer %s, got %s" % (what, WHO[marker], marker, who(r))


def ptr_target(r):
    return [rd.target.to_text() for rr in r.answer if rr.rdtype == dns.rdatatype.PTR for rd in rr]


def forward_args(pairs):
    out = []
    for zone, up in pairs:
        out += ["--forward", "%s=%s" % (zone, up)]
    return out


def start_zones(dotproxy, responder, certs, plain, extra=(), threads=2):  # noqa: F811
    """The three-zone set-up of the module comment; a namespace with dp,
    dot (the responder) and the plain servers corp, acorp, cluster."""
    z = SimpleNamespace()
    z.dot = responder()
    z.corp = plain("127.0.0.21", CORP_IP, label="corp")
    z.acorp = plain("127.0.0.22", ACORP_IP, label="acorp")
    z.cluster = plain("127.0.0.23", CLUSTER_IP, label="cluster")
    z.plains = [z.corp, z.acorp, z.cluster]
    fwd = [("corp.example", z.corp.upstream("udp")),
           ("10.in-addr.arpa", z.corp.upstream("udp")),
           ("a.corp.example", z.acorp.upstream("tcp")),
           ("1.10.in-addr.arpa", z.acorp.upstream("tcp")),
           ("8.b.d.0.1.0.0.2.ip6.arpa", z.acorp.upstream("tcp")),
           ("cluster.local", z.cluster.upstream("tcp"))]
    z.dp = dotproxy([z.dot.upstream_arg()], certs["ca"], threads=threads,
                    extra=forward_args(fwd) + NO_PROBES + list(extra))
    return z


def dot_queries(z):
    return z.dot.counters()["queries"]


def only_seen_by(z, name, server):
    """name reached server and no other plain server."""
    for s in z.plains:
        got = s.seen(name)
        if s is server:
            assert got, "%s never asked %s (it saw %d queries)" % (s.label, name, len(s.seen()))
        else:
            assert not got, "%s was asked %s: %s" % (s.label, name, got)


# ---------------------------------------------------------------- zones answer from their servers

@pytest.mark.timeout_s(90)
@pytest.mark.parametrize("client", ["udp", "tcp"])
def test_three_zones_answer_from_their_servers(dotproxy, responder, certs, plain, client):  # noqa: F811
    """Names in corp.example (udp://), cluster.local (tcp://) and elsewhere
    (DoT) answered by their own servers, for UDP and for TCP clients; the
    udp:// server asked over UDP, the tcp:// one only over TCP."""
    z = start_zones(dotproxy, responder, certs, plain)
    t = tag()
    tcp = client == "tcp"
    dot0 = dot_queries(z)
    for i in range(5):
        n = "h%d-%s.corp.example." % (i, t)
        assert_from(ask(z.dp, n, tcp=tcp), CORP_IP, n)
        only_seen_by(z, n, z.corp)
        assert [q.transport for q in z.corp.seen(n)] == ["udp"], z.corp.seen(n)
        n = "h%d-%s.svc.cluster.local." % (i, t)
        assert_from(ask(z.dp, n, tcp=tcp), CLUSTER_IP, n)
        only_seen_by(z, n, z.cluster)
        assert [q.transport for q in z.cluster.seen(n)] == ["tcp"], z.cluster.seen(n)
        n = "h%d-%s.example.org." % (i, t)
        assert_from(ask(z.dp, n, tcp=tcp), RESP_IP, n)
        only_seen_by(z, n, None)
    assert dot_queries(z) - dot0 == 5, "the DoT upstream got %d queries for 5 names of its own" % (
        dot_queries(z) - dot0)


@pytest.mark.timeout_s(60)
def test_tcp_zone_pipelines(dotproxy, responder, certs, plain):  # noqa: F811
    """40 cluster.local queries at once from one UDP client: all answered by
    the tcp:// server, which got them over a few connections (many queries
    per connection) and answered them out of order (plainserver reverses
    each batch)."""
    z = start_zones(dotproxy, responder, certs, plain)
    t = tag()
    names = ["p%d-%s.cluster.local." % (i, t) for i in range(40)]
    sock, qs = udp_send(z.dp, names)
    got = udp_read(sock, qs)
    assert got == {n: CLUSTER_IP for n in names}, "answers (address or rcode) by name: %s" % {
        n: WHO.get(o, o) for n, o in got.items()}
    seen = [q for q in z.cluster.seen() if q.lname in set(names)]
    assert sorted(q.lname for q in seen) == sorted(names), "names asked: %s" % [q.name for q in seen]
    assert all(q.transport == "tcp" for q in seen), [q for q in seen if q.transport != "tcp"]
    per_conn = {}
    for q in seen:
        per_conn[q.conn] = per_conn.get(q.conn, 0) + 1
    print("tcp:// server: 40 queries over connections %s (%d accepted in all)" % (per_conn, z.cluster.tcp_accepted))
    assert len(per_conn) <= 10 and max(per_conn.values()) >= 4, \
        "40 queries over %d connections (queries per connection: %s): not pipelined" % (len(per_conn), per_conn)


@pytest.mark.timeout_s(60)
def test_real_clients_dig_and_kdig(dotproxy, responder, certs, plain):  # noqa: F811
    """dig over UDP and kdig over TCP get each zone's own answer."""
    z = start_zones(dotproxy, responder, certs, plain)
    t = tag()
    cases = [("d-%s.corp.example." % t, CORP_IP), ("d-%s.a.corp.example." % t, ACORP_IP),
             ("d-%s.svc.cluster.local." % t, CLUSTER_IP), ("d-%s.example.net." % t, RESP_IP)]
    for name, marker in cases:
        p, out = H.dig(z.dp.host, z.dp.port, name, "A")
        want = {(name, "IN", "A", frozenset([marker]))}
        assert p["rcode"] == "NOERROR" and p["answer"] == want, "dig %s:\n%s" % (name, out)
        k, out = H.kdig(z.dp.host, z.dp.port, "k" + name, "A", tcp=True)
        want = {("k" + name, "IN", "A", frozenset([marker]))}
        assert k["rcode"] == "NOERROR" and k["answer"] == want, "kdig +tcp k%s:\n%s" % (name, out)


@pytest.mark.timeout_s(60)
def test_ipv6_plain_upstreams(dotproxy, responder, certs, plain):  # noqa: F811
    """udp://[::1]:PORT and tcp://[::1]:PORT upstreams, over their transports."""
    if not H.have_ipv6_loopback():
        pytest.skip("no IPv6 loopback here")
    dot = responder()
    u6 = plain("::1", CORP_IP, label="u6")
    t6 = plain("::1", CLUSTER_IP, label="t6")
    dp = dotproxy([dot.upstream_arg()], certs["ca"], threads=2,
                  extra=forward_args([("u6.example", u6.upstream("udp")), ("t6.example", t6.upstream("tcp"))]))
    assert u6.upstream("udp") == "udp://[::1]:%d" % u6.port
    t = tag()
    for tcp in (False, True):
        n = "x%d-%s.u6.example." % (tcp, t)
        assert_from(ask(dp, n, tcp=tcp), CORP_IP, n)
        assert [(q.transport, q.src) for q in u6.seen(n)] == [("udp", "::1")], u6.seen(n)
        n = "x%d-%s.t6.example." % (tcp, t)
        assert_from(ask(dp, n, tcp=tcp), CLUSTER_IP, n)
        assert [(q.transport, q.src) for q in t6.seen(n)] == [("tcp", "::1")], t6.seen(n)


# ---------------------------------------------------------------- longest suffix, case, reverse zones

@pytest.mark.timeout_s(60)
def test_longest_suffix_wins_case_insensitive(dotproxy, responder, certs, plain):  # noqa: F811
    """a.corp.example (tcp://) inside corp.example (udp://): the longer zone
    wins for names at or below it, by whole labels, whatever their case."""
    z = start_zones(dotproxy, responder, certs, plain)
    t = tag()
    cases = [
        ("corp.example.", CORP_IP),                      # the zone apex
        ("www-%s.corp.example." % t, CORP_IP),
        ("WWW-%s.Corp.Example." % t, CORP_IP),
        ("a.corp.example.", ACORP_IP),                   # the inner apex
        ("x-%s.a.corp.example." % t, ACORP_IP),
        ("Y-%s.A.CORP.EXAMPLE." % t, ACORP_IP),
        ("deep.x-%s.a.Corp.example." % t, ACORP_IP),
        ("xa-%s.corp.example." % t, CORP_IP),            # ends in "a.corp.example" but not below it
        ("b.a-%s.corp.example." % t, CORP_IP),
        ("notcorp-%s.example." % t, RESP_IP),            # a string suffix, not a label suffix
        ("corp.example.org.", RESP_IP),
        ("x-%s.Cluster.Local." % t, CLUSTER_IP),
    ]
    for i, (name, marker) in enumerate(cases):
        for tcp in (False, True):
            r = ask(z.dp, name, tcp=tcp)
            assert_from(r, marker, "%s over %s" % (name, "TCP" if tcp else "UDP"))
    # what reached the servers: the case-changed names too
    assert z.corp.seen("www-%s.corp.example." % t), "corp never asked for www-%s" % t
    assert not z.acorp.seen("xa-%s.corp.example." % t)


@pytest.mark.timeout_s(60)
def test_reverse_zones(dotproxy, responder, certs, plain):  # noqa: F811
    """PTR queries route by the reverse tree like any name: 10.in-addr.arpa
    to the udp:// server, 1.10.in-addr.arpa (longer) and an ip6.arpa
    subtree to the tcp:// one, other addresses over DoT."""
    z = start_zones(dotproxy, responder, certs, plain)
    cases = [("10.2.3.4", z.corp), ("10.1.3.4", z.acorp), ("10.11.3.4", z.corp),
             ("2001:db8::53", z.acorp), ("192.0.2.4", None), ("2001:db9::53", None)]
    dot0 = dot_queries(z)
    for addr, server in cases:
        name = dns.reversename.from_address(addr).to_text()
        for tcp in (False, True):
            r = ask(z.dp, name, "PTR", tcp=tcp)
            assert r.rcode() == dns.rcode.NOERROR, "%s PTR: %s" % (name, who(r))
            want = ["%s.ptr.test." % server.label] if server else []
            assert ptr_target(r) == want, "%s PTR (%s): want %s, got %s" % (name, addr, want, ptr_target(r))
        only_seen_by(z, name, server)
    # the 2 other addresses, each maybe twice: the responder's NODATA has no
    # SOA, so it is not cached (RFC 2308)
    assert 2 <= dot_queries(z) - dot0 <= 4, "DoT got %d queries, want the 2 other addresses' (UDP and TCP)" % (
        dot_queries(z) - dot0)


# ---------------------------------------------------------------- TC -> TCP

@pytest.mark.timeout_s(60)
def test_tc_answer_retried_over_tcp(dotproxy, responder, certs, plain):  # noqa: F811
    """The udp:// server answers big names with TC over UDP: the proxy asks
    again over TCP and the client gets all BIG_COUNT records (over TCP; a UDP
    client is told TC and then gets them over TCP, as dig does)."""
    z = start_zones(dotproxy, responder, certs, plain)
    t = tag()

    def check_full(r, name, what):
        assert r.rcode() == dns.rcode.NOERROR and not (r.flags & dns.flags.TC), "%s: %s" % (what, r)
        addrs = a_addrs(r)
        assert len(addrs) == P.BIG_COUNT and CORP_IP in addrs, \
            "%s: %d A records, want %d with %s" % (what, len(addrs), P.BIG_COUNT, CORP_IP)
        tr = [q.transport for q in z.corp.seen(name)]
        assert "udp" in tr and "tcp" in tr, "%s: the server saw %s for %s, want a UDP try then TCP" % (
            what, tr, name)

    name = "big1-%s.corp.example." % t
    check_full(ask(z.dp, name, tcp=True), name, "TCP client")

    # a UDP client (EDNS 1232): the ~2 KB answer does not fit; TC, then TCP
    name = "big2-%s.corp.example." % t
    r = ask(z.dp, name, payload=1232)
    assert r.flags & dns.flags.TC, "a %d-record answer fit in 1232 octets? %s" % (P.BIG_COUNT, who(r))
    check_full(ask(z.dp, name, tcp=True), name, "TCP client after a UDP one")

    # dig: UDP, TC, TCP by itself
    name = "big3-%s.corp.example." % t
    p, out = H.dig(z.dp.host, z.dp.port, name, "A", extra=["+bufsize=1232"])
    assert p["rcode"] == "NOERROR" and "tc" not in p["flags"].split(), out
    (rr,) = p["answer"]
    assert len(rr[3]) == P.BIG_COUNT, "dig got %d records:\n%s" % (len(rr[3]), out)
    tr = [q.transport for q in z.corp.seen(name)]
    assert "tcp" in tr, "the server saw %s for %s" % (tr, name)


# ---------------------------------------------------------------- the cache is shared

@pytest.mark.timeout_s(60)
def test_cache_shared_across_clients_and_zones(dotproxy, responder, certs, plain):  # noqa: F811
    """A name asked by three different clients (UDP, TCP, another UDP
    socket) reaches its zone's server once: the others are cache hits."""
    z = start_zones(dotproxy, responder, certs, plain)
    t = tag()
    for name, marker, server in [("c-%s.corp.example." % t, CORP_IP, z.corp),
                                 ("c-%s.svc.cluster.local." % t, CLUSTER_IP, z.cluster),
                                 ("c-%s.example.com." % t, RESP_IP, None)]:
        dot0 = dot_queries(z)
        for tcp in (False, True, False):
            assert_from(ask(z.dp, name, tcp=tcp), marker, name)
        if server:
            assert len(server.seen(name)) == 1, "%s asked %d times: %s" % (name, len(server.seen(name)),
                                                                          server.seen(name))
            assert dot_queries(z) == dot0, "the DoT upstream was asked for %s" % name
        else:
            assert dot_queries(z) - dot0 == 1, "%s: DoT asked %d times" % (name, dot_queries(z) - dot0)
        only_seen_by(z, name, server)


# ---------------------------------------------------------------- metrics

@pytest.mark.timeout_s(60)
def test_metrics_per_zone(dotproxy, responder, certs, plain):  # noqa: F811
    """dotproxy_zone_queries_total counts client queries per zone (cache
    hits included); the upstream series carry the zone label."""
    mport = H.free_port()
    z = start_zones(dotproxy, responder, certs, plain, extra=["--metrics", "127.0.0.1:%d" % mport])
    t = tag()
    _, s0 = scrape(mport)
    asks = {"corp.example.": ("m%d-" + t + ".corp.example.", 4, CORP_IP),
            "a.corp.example.": ("m%d-" + t + ".a.corp.example.", 3, ACORP_IP),
            "cluster.local.": ("m%d-" + t + ".cluster.local.", 2, CLUSTER_IP)}
    for zone, (fmt, n, marker) in asks.items():
        for i in range(n):
            assert_from(ask(z.dp, fmt % i), marker, fmt % i)
            assert_from(ask(z.dp, fmt % i, tcp=True), marker, fmt % i)   # a cache hit
    _, s = scrape(mport)

    def delta(name, **lab):
        return msum(s, name, **lab) - msum(s0, name, **lab)

    for zone, (fmt, n, marker) in asks.items():
        assert delta("dotproxy_zone_queries_total", zone=zone) == 2 * n, \
            "zone %s: %s client queries counted, want %d" % (zone, delta("dotproxy_zone_queries_total", zone=zone),
                                                              2 * n)
        assert delta("dotproxy_upstream_queries_total", zone=zone) == n, \
            "zone %s: %s upstream queries, want %d (one per name; the repeats are hits)" % (
                zone, delta("dotproxy_upstream_queries_total", zone=zone), n)
        assert delta("dotproxy_upstream_answers_total", zone=zone) == n
    # the label pairs: each plain server in its zone(s), the DoT one in "."
    pairs = {(dict(k).get("zone"), dict(k).get("upstream")) for k in s["dotproxy_upstream_queries_total"]}
    print("upstream series (zone, upstream):", sorted(pairs))
    want = {(".", z.dot.upstream_arg()),
            ("corp.example.", z.corp.upstream("udp")), ("10.in-addr.arpa.", z.corp.upstream("udp")),
            ("a.corp.example.", z.acorp.upstream("tcp")), ("1.10.in-addr.arpa.", z.acorp.upstream("tcp")),
            ("8.b.d.0.1.0.0.2.ip6.arpa.", z.acorp.upstream("tcp")),
            ("cluster.local.", z.cluster.upstream("tcp"))}
    assert pairs == want, "upstream series: %s\nwant: %s" % (sorted(pairs), sorted(want))
    for fam in ("dotproxy_upstream_healthy", "dotproxy_upstream_inflight"):
        zones = {dict(k).get("zone") for k in s.get(fam, {})}
        assert zones == {zz for zz, _ in want}, "%s zones: %s" % (fam, zones)
    assert msum(s, "dotproxy_zone_queries_total", zone=".") >= 1  # the start-up probe at least


# ---------------------------------------------------------------- plain default refused

@pytest.mark.timeout_s(60)
def test_plain_default_refused_unless_allowed(dotproxy, dotproxy_bin, plain, readable_dir):
    """A plain upstream for "." (by --upstream, --forward .= or the config
    file) stops the start with an error naming --allow-plain-default; with
    the flag, the plain server answers everything."""
    u = plain("127.0.0.24", CORP_IP, label="plaindefault")
    listen = ["--listen", "127.0.0.1:%d" % H.free_port()]
    conf = readable_dir / "plain.conf"
    H.write_file(conf, "# plain default\nforward . %s\n" % u.upstream("udp"))
    for how in (["--upstream", u.upstream("udp")], ["--upstream", u.upstream("tcp")],
                ["--forward", ".=" + u.upstream("udp")], ["--forward", ".=" + u.upstream("tcp")],
                ["--config", str(conf)]):
        rc, out, err = H.run_bounded([dotproxy_bin] + listen + how)
        print(how, rc, err.strip())
        assert rc == 2, "%s: exit %d, want 2 (refused); stderr %r" % (how, rc, err)
        assert "allow-plain-default" in err, "%s: the error does not name --allow-plain-default: %r" % (how, err)
    assert not u.seen(), "a refused start still sent queries: %s" % u.seen()

    for scheme in ("udp", "tcp"):
        dp = dotproxy([u.upstream(scheme)], None, extra=["--allow-plain-default"], threads=1)
        name = "allowed-%s-%s.example.com." % (scheme, tag())
        assert_from(ask(dp, name), CORP_IP, name)
        assert [q.transport for q in u.seen(name)] == [scheme], u.seen(name)


# ---------------------------------------------------------------- reload adds a zone

SLOW_MS = 400


@pytest.mark.timeout_s(120)
def test_reload_adds_zone_without_dropping_in_flight(dotproxy, responder, certs, plain, readable_dir):  # noqa: F811
    """A SIGHUP whose file adds new.example: new queries for it go to its
    server at once, while queries in flight across the reload (UDP load and a
    TCP pipeline on the slow DoT default, UDP queries on a slow udp:// zone)
    are all answered by the servers they were sent to."""
    dot = responder(["--delay-ms", str(SLOW_MS)])
    corp = plain("127.0.0.21", CORP_IP, label="corp", delay_ms=SLOW_MS)
    new = plain("127.0.0.25", NEW_IP, label="new")
    ca = H.copy_ca(certs, readable_dir)
    conf = readable_dir / "forward.conf"
    base = ["forward corp.example %s" % corp.upstream("udp")]
    H.write_file(conf, _config_text(dot.upstream_arg(), ca, base))
    dp = dotproxy([], None, threads=2, extra=["--config", str(conf)])
    t = tag()
    assert_from(ask(dp, "pre-%s.new.example." % t), RESP_IP, "new.example before the reload")
    assert_from(ask(dp, "pre-%s.corp.example." % t), CORP_IP, "corp.example before the reload")

    load = QueryLoad(dp.port, n=16).start()
    time.sleep(1.0)
    tcp_conn, tcp_q = pipeline_send(dp, ["tcpflight%d-%s.perf.test." % (i, t) for i in range(20)])
    udp_sock, udp_q = udp_send(dp, ["flight%d-%s.corp.example." % (i, t) for i in range(10)])
    time.sleep(0.1)
    H.write_file(conf, _config_text(dot.upstream_arg(), ca, base + ["forward new.example %s" % new.upstream("udp")]))
    n_reloaded = sum(1 for l in dp.log_lines() if 'msg="reloaded"' in l)
    t_hup = time.monotonic()
    os.kill(dp.pid, signal.SIGHUP)
    ok = H.wait_for(lambda: sum(1 for l in dp.log_lines() if 'msg="reloaded"' in l) > n_reloaded, 5.0)
    t_reloaded = time.monotonic()
    tcp_got = pipeline_read(tcp_conn, tcp_q)
    udp_got = udp_read(udp_sock, udp_q)
    time.sleep(1.0)
    results = load.stop()
    assert ok, "no msg=\"reloaded\" within 5 s of SIGHUP:\n%s" % dp.tail()

    oc = _outcomes(results)
    straddling = [x for x in results if x[0] < t_hup <= x[1]]
    print("UDP load: %d queries %s, %d in flight at the SIGHUP: %s" % (len(results), oc, len(straddling),
                                                                       _outcomes(straddling)))
    assert oc == {RESP_IP: len(results)}, "load on the DoT default across the reload: %s" % oc
    assert len(straddling) >= 10, "too few queries in flight at the reload: %d" % len(straddling)
    assert tcp_got == {n: RESP_IP for n in tcp_q.values()}, "TCP pipeline across the reload: %s" % tcp_got
    assert udp_got == {n: CORP_IP for n in udp_q.values()}, "slow udp:// zone across the reload: %s" % udp_got

    # new queries: the added zone at once, the others as before
    assert t_reloaded - t_hup < 5.0
    n = "post-%s.new.example." % t
    assert_from(ask(dp, n), NEW_IP, "new.example after the reload")
    assert new.seen(n) and not new.seen("pre-%s.new.example." % t)
    assert_from(ask(dp, "post-%s.corp.example." % t, tcp=True), CORP_IP, "corp.example after the reload")
    assert_from(ask(dp, "post-%s.example.org." % t), RESP_IP, "default after the reload")


def pipeline_send(dp, names):
    """names as pipelined A queries on one new TCP connection, not waiting:
    (connection, {id: name}). The IDs are distinct: two equal ones would leave
    a name out of {id: name} and pipeline_read one answer short."""
    c = socket.create_connection((dp.host, dp.port), timeout=CLIENT_TIMEOUT)
    qs = {}
    out = b""
    for n in names:
        q = H.make_query(n, "A")
        while q.id in qs:
            q = H.make_query(n, "A")
        qs[q.id] = n
        w = q.to_wire()
        out += struct.pack("!H", len(w)) + w
    c.sendall(out)
    return c, qs


def pipeline_read(c, qs):
    """{name: outcome} for the answers on c (an A address, an rcode name)."""
    got = {}
    try:
        for _ in qs:
            r = dns.message.from_wire(H.tcp_read_msg(c))
            n = qs.get(r.id, "?id%d" % r.id)
            got[n] = a_addrs(r)[0] if len(a_addrs(r)) == 1 else dns.rcode.to_text(r.rcode())
    except (OSError, ConnectionError) as e:
        got["error"] = repr(e)
    finally:
        c.close()
    return got


def udp_send(dp, names):
    """names as A queries from one new UDP socket, not waiting: (socket,
    {id: name})."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    qs = {}
    for n in names:
        q = H.make_query(n, "A")
        while q.id in qs:
            q = H.make_query(n, "A")
        qs[q.id] = n
        s.sendto(q.to_wire(), (dp.host, dp.port))
    return s, qs


def udp_read(s, qs, timeout=CLIENT_TIMEOUT):
    """{name: outcome} for the answers to qs ({id: name}) on s, in any order:
    an A address, an rcode name, or TIMEOUT; closes s."""
    got = {}
    end = time.monotonic() + timeout
    try:
        while len(got) < len(qs) and time.monotonic() < end:
            s.settimeout(max(0.01, end - time.monotonic()))
            try:
                r = dns.message.from_wire(s.recv(65535))
            except socket.timeout:
                break
            if r.id in qs:
                got[qs[r.id]] = a_addrs(r)[0] if len(a_addrs(r)) == 1 else dns.rcode.to_text(r.rcode())
    finally:
        s.close()
    return {n: got.get(n, "TIMEOUT") for n in qs.values()}


# ---------------------------------------------------------------- failover within a zone

@pytest.mark.timeout_s(150)
@pytest.mark.parametrize("scheme", ["udp", "tcp"])
def test_dead_server_fails_over_within_its_zone(dotproxy, responder, certs, plain, scheme):  # noqa: F811
    """ha.example has two plain servers. The one used most is killed: its
    zone's names are answered by the other, none goes to the DoT default.
    Both killed: SERVFAIL, and corp.example and the default still answer.
    The first one back on its port: used again."""
    z = SimpleNamespace(dot=responder())
    z.corp = plain("127.0.0.21", CORP_IP, label="corp")
    s1 = plain("127.0.0.26", HA1_IP, label="ha1")
    s2 = plain("127.0.0.27", HA2_IP, label="ha2")
    z.plains = [z.corp, s1, s2]
    dp = dotproxy([z.dot.upstream_arg()], certs["ca"], threads=2,
                  extra=NO_PROBES + forward_args([("corp.example", z.corp.upstream("udp")),
                                                  ("ha.example", s1.upstream(scheme)),
                                                  ("ha.example", s2.upstream(scheme))]))
    t = tag()
    dot0 = dot_queries(z)
    for i in range(10):
        r = ask(dp, "up%d-%s.ha.example." % (i, t), tcp=bool(i % 2))
        assert r.rcode() == dns.rcode.NOERROR and a_addrs(r) in ([HA1_IP], [HA2_IP]), who(r)
    print("both up: ha1 asked %d times, ha2 %d" % (len(s1.seen()), len(s2.seen())))
    dead, alive = (s1, s2) if len(s1.seen()) >= len(s2.seen()) else (s2, s1)

    dead.kill()
    for i in range(30):
        n = "one%d-%s.ha.example." % (i, t)
        assert_from(ask(dp, n, tcp=bool(i % 2)), alive.marker, "ha.example with %s dead (query %d)" % (dead.label, i))
    assert dot_queries(z) == dot0, "ha.example names went to the DoT default: %d queries" % (dot_queries(z) - dot0)

    alive.kill()
    for i in range(3):
        n = "none%d-%s.ha.example." % (i, t)
        t0 = time.monotonic()
        r = ask(dp, n, tcp=bool(i % 2))
        assert r.rcode() == dns.rcode.SERVFAIL, "ha.example with both servers dead: %s (in %.1f s)" % (
            who(r), time.monotonic() - t0)
        n = "other%d-%s.corp.example." % (i, t)
        t0 = time.monotonic()
        assert_from(ask(dp, n), CORP_IP, "corp.example while ha.example is dead")
        assert time.monotonic() - t0 < 1.5, "corp.example slowed by the dead zone: %.1f s" % (time.monotonic() - t0)
        n = "other%d-%s.example.net." % (i, t)
        assert_from(ask(dp, n, tcp=True), RESP_IP, "default while ha.example is dead")
    assert dot_queries(z) - dot0 == 3, "the DoT default got %d queries, want the 3 of its own" % (
        dot_queries(z) - dot0)

    # the first one killed back on its port: used again within its backoff
    dead.start()
    deadline = time.monotonic() + 40
    seen = []
    while time.monotonic() < deadline:
        r = ask(dp, "back%d-%s.ha.example." % (len(seen), t))
        seen.append(who(r))
        if a_addrs(r) == [dead.marker]:
            break
        assert r.rcode() == dns.rcode.SERVFAIL, "while recovering: %s" % who(r)
        time.sleep(0.5)
    assert a_addrs(r) == [dead.marker], "%s not used again within 40 s of its restart: %s" % (dead.label, seen[-5:])
    print("%s back after %d queries" % (dead.label, len(seen)))
    assert dot_queries(z) - dot0 == 3, "ha.example names went to the DoT default"

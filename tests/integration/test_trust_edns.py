"""Issue 12, hole 2 and the DNS points of hole 7: what one client's query
may carry to the upstream, and what an answer may carry to another client.

- hole 2: EDNS Client Subnet (RFC 7871) is not forwarded by default
  (section 11.1); no upstream option (ECS, NSID, ...) reaches another client
  through the cache or coalescing; --forward-ecs keys the cache on the
  client's subnet and honours the answer's scope (section 7.3).
- hole 7: an upstream SERVFAIL fails over to the next upstream, is cached
  (RFC 9520) when every upstream gave it, and gives way to a stale answer
  (RFC 8767); TTLs of 2^31 and more are 0 in every answer (RFC 2181 8);
  the AD bit does not cross from one client to another through the cache
  (RFC 6840 5.7).

The upstream is ScriptedUpstream: test_cache.CountingUpstream (a DoT server
in Python) whose answers each test writes, and which keeps every query it
received, so that a test can say what reached the upstream.

Every dotproxy runs with --threads 1 (the cache is per shard).
"""

import ipaddress
import socket
import struct
import threading
import time

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest

import dphelpers as H
from test_cache import CountingUpstream, tcp_raw, udp_raw

ECS = 8
NSID = 3
ANSWER_IP = "192.0.2.77"
A_NET = ("198.51.100.0", 24)
B_NET = ("203.0.113.0", 24)


# ---------------------------------------------------------------- the upstream

class ScriptedUpstream(CountingUpstream):
    """A DoT upstream whose answer to each query is respond(query) (a
    dns.message.Message); every query received is kept, parsed, in
    self.queries."""

    def __init__(self, certs, respond, delay=0.0):
        self.respond = respond
        self.queries = []
        super().__init__(certs, delay=delay)

    def _answer(self, wire):
        q = dns.message.from_wire(wire)
        with self.lock:
            self.queries.append(q)
            key = q.question[0].name.to_text().lower()
            self.counts[key] = self.counts.get(key, 0) + 1
        return self.respond(q).to_wire()

    def seen(self, name):
        """The queries for name received so far."""
        name = name.lower()
        with self.lock:
            return [q for q in self.queries if q.question[0].name.to_text().lower() == name]


def answer(q, ip=ANSWER_IP, ttl=300, options=None, rcode=dns.rcode.NOERROR, ad=False):
    """A response to q: an A record (for an A question and NOERROR), OPT
    when q had one (with options), RA, and AD when asked."""
    r = dns.message.make_response(q)
    r.flags |= dns.flags.RA
    if ad:
        r.flags |= dns.flags.AD
    r.set_rcode(rcode)
    if q.edns >= 0:
        r.use_edns(0, 0, 1232, options=options or [])
    qn = q.question[0]
    if rcode == dns.rcode.NOERROR and qn.rdtype == dns.rdatatype.A:
        r.answer.append(dns.rrset.from_text(qn.name, ttl, "IN", "A", ip))
    return r


def ecs_of(msg):
    return [o for o in msg.options if o.otype == ECS]


def echo_ecs(q, scope=None):
    """As an ECS-aware resolver answers: the query's subnet with a scope
    (default: the source prefix)."""
    out = []
    for o in ecs_of(q):
        out.append(dns.edns.ECSOption(o.address, o.srclen, o.srclen if scope is None else scope))
    return out


@pytest.fixture
def scripted(certs):
    made = []

    def make(respond, delay=0.0):
        u = ScriptedUpstream(certs, respond, delay=delay)
        made.append(u)
        return u

    yield make
    for u in made:
        u.stop()


# ---------------------------------------------------------------- clients

def query(name, rdtype="A", ecs=None, options=(), use_edns=0, flags=dns.flags.RD,
          want_dnssec=False):
    opts = list(options)
    if ecs is not None:
        opts.append(dns.edns.ECSOption(ecs[0], ecs[1]))
    q = H.make_query(name, rdtype, use_edns=use_edns, want_dnssec=want_dnssec, flags=flags)
    if opts:
        q.use_edns(0, dns.flags.DO if want_dnssec else 0, 1232, options=opts)
    return q


def ask(dp, q, tcp=False, timeout=5.0):
    wire = q.to_wire()
    raw = (tcp_raw if tcp else udp_raw)(dp.host, dp.port, wire, timeout)
    assert raw is not None, "no answer to %s within %.1f s" % (q.question[0], timeout)
    r = dns.message.from_wire(raw)
    assert r.id == q.id
    return r, raw


def ask_many(dp, qs, timeout=5.0):
    """Send every query of qs at once from its own UDP socket; the answers
    (parsed), in the order of qs."""
    out = [None] * len(qs)

    def one(i):
        raw = udp_raw(dp.host, dp.port, qs[i].to_wire(), timeout)
        out[i] = (dns.message.from_wire(raw), raw) if raw is not None else None

    ts = [threading.Thread(target=one, args=(i,)) for i in range(len(qs))]
    for t in ts:
        t.start()
        time.sleep(0.02)  # the first one leads, the others coalesce behind it
    for t in ts:
        t.join(timeout + 2)
    assert all(out), "unanswered: %s" % [i for i, a in enumerate(out) if a is None]
    return out


def subnet_bytes(net):
    """The address octets of a subnet as an ECS option carries them."""
    addr, prefix = net
    return ipaddress.ip_address(addr).packed[:(prefix + 7) // 8]


def carries_subnet(raw, r, net):
    """Whether answer r (raw wire) carries subnet net in any form."""
    if any(o.address == net[0] for o in ecs_of(r)):
        return True
    opt_at = raw.find(b"\x00\x00\x29")  # the OPT RR: root owner, type 41
    return opt_at >= 0 and subnet_bytes(net) in raw[opt_at:]


def _skip_name(raw, p):
    while True:
        n = raw[p]
        if n == 0:
            return p + 1
        if n & 0xC0 == 0xC0:
            return p + 2
        p += 1 + n


def wire_ttls(raw):
    """The TTLs of the answer section as written on the wire (dnspython
    reads 2^31 and above as 0 itself, which would hide the hole)."""
    qd, an = struct.unpack("!HH", raw[4:8])
    p = 12
    for _ in range(qd):
        p = _skip_name(raw, p) + 4
    out = []
    for _ in range(an):
        p = _skip_name(raw, p)
        _, _, ttl, rdlen = struct.unpack("!HHIH", raw[p:p + 10])
        out.append(ttl)
        p += 10 + rdlen
    return out


def start(dotproxy, certs, upstreams, extra=(), timeout="2s"):
    return dotproxy([u.upstream_arg() for u in upstreams], certs["ca"], threads=1,
                    timeout=timeout, extra=list(extra))


# ---------------------------------------------------------------- hole 2

@pytest.mark.timeout_s(40)
def test_hole2_ecs_not_forwarded_by_default(dotproxy, certs, scripted):
    """RFC 7871 11.1: a forwarder in front of public resolvers must not tell
    them its clients' subnets. The upstream never sees the client's ECS."""
    up = scripted(lambda q: answer(q, options=echo_ecs(q)))
    dp = start(dotproxy, certs, [up])
    for i, tcp in enumerate((False, True)):
        name = "ecs%d.hole2.test." % i
        r, raw = ask(dp, query(name, ecs=A_NET), tcp=tcp)
        assert r.rcode() == dns.rcode.NOERROR
        seen = up.seen(name)
        assert len(seen) == 1, "the upstream saw %d queries for %s" % (len(seen), name)
        assert ecs_of(seen[0]) == [], "the client's subnet went upstream: %s" % (seen[0].options,)
        assert not carries_subnet(raw, r, A_NET)


@pytest.mark.timeout_s(40)
def test_hole2_cached_answer_carries_no_other_clients_subnet(dotproxy, certs, scripted):
    """A asks with its subnet and the answer is cached (or shared with the
    queries coalesced behind it): B (another subnet) and C (no ECS) must not
    get A's subnet back."""
    up = scripted(lambda q: answer(q, options=echo_ecs(q)), delay=0.4)
    dp = start(dotproxy, certs, [up])
    # The cache: A fills it, B and C hit it.
    name = "cached.hole2.test."
    ask(dp, query(name, ecs=A_NET))
    rb, rawb = ask(dp, query(name, ecs=B_NET))
    rc, rawc = ask(dp, query(name))
    rd, rawd = ask(dp, query(name, use_edns=-1))
    assert len(up.seen(name)) == 1, "B, C and D should have been cache hits"
    for who, r, raw in (("B", rb, rawb), ("C", rc, rawc), ("D", rd, rawd)):
        assert r.rcode() == dns.rcode.NOERROR
        assert not carries_subnet(raw, r, A_NET), "%s got A's subnet: %s" % (who, r.options)
    assert ecs_of(rc) == [] and rd.edns == -1
    assert not carries_subnet(rawb, rb, B_NET) or ecs_of(rb)[0].address == B_NET[0]
    # Coalescing: B and C ask while A's question is upstream.
    name = "coalesced.hole2.test."
    (ra, rawa), (rb, rawb), (rc, rawc) = ask_many(
        dp, [query(name, ecs=A_NET), query(name, ecs=B_NET), query(name)])
    for who, r, raw in (("B", rb, rawb), ("C", rc, rawc)):
        assert r.rcode() == dns.rcode.NOERROR
        assert not carries_subnet(raw, r, A_NET), "%s got A's subnet: %s" % (who, r.options)


@pytest.mark.timeout_s(40)
def test_hole2_nsid_not_served_to_other_clients(dotproxy, certs, scripted):
    """NSID (RFC 5001) names the server that made one response: it is the
    upstream's, for us; a client that did not ask gets none, from the cache
    or not."""
    def respond(q):
        asked = any(o.otype == NSID for o in q.options)
        return answer(q, options=[dns.edns.GenericOption(NSID, b"upstream-secret-id")] if asked else [])

    up = scripted(respond)
    dp = start(dotproxy, certs, [up])
    name = "nsid.hole2.test."
    ra, rawa = ask(dp, query(name, options=[dns.edns.GenericOption(NSID, b"")]))
    assert ra.rcode() == dns.rcode.NOERROR
    for tcp in (False, True):
        rb, rawb = ask(dp, query(name), tcp=tcp)
        assert rb.rcode() == dns.rcode.NOERROR
        assert b"upstream-secret-id" not in rawb, "another client's NSID answer: %s" % (rb.options,)
        assert [o for o in rb.options if o.otype == NSID] == []
    assert len(up.seen(name)) == 1


@pytest.mark.timeout_s(40)
def test_hole2_forward_ecs_keys_cache_on_subnet(dotproxy, certs, scripted):
    """--forward-ecs: the client's subnet goes upstream (cut to its prefix),
    the cache holds one answer per subnet, each client gets the answer (and
    the ECS echo) of its own subnet, an answer scoped narrower than the
    subnet asked for is not cached (RFC 7871 7.3), and a malformed option
    gets FORMERR."""
    def respond(q):
        e = ecs_of(q)
        name = q.question[0].name.to_text()
        if not e:
            return answer(q)
        # 10.x.y.z from the subnet: which subnet the answer was made for
        ip = "10." + ".".join(str(b) for b in (ipaddress.ip_address(e[0].address).packed[:3]))
        return answer(q, ip=ip, options=echo_ecs(q, scope=32 if name.startswith("narrow") else None))

    up = scripted(respond)
    dp = start(dotproxy, certs, [up], extra=["--forward-ecs"])

    def ips(r):
        return [rd.to_text() for rs in r.answer for rd in rs]

    name = "keyed.hole2.test."
    ra, _ = ask(dp, query(name, ecs=A_NET))
    assert ips(ra) == ["10.198.51.100"]
    assert [(o.address, o.srclen, o.scopelen) for o in ecs_of(ra)] == [("198.51.100.0", 24, 24)]
    seen = up.seen(name)
    assert len(seen) == 1 and [(o.address, o.srclen) for o in ecs_of(seen[0])] == [("198.51.100.0", 24)]
    rb, rawb = ask(dp, query(name, ecs=B_NET))
    assert ips(rb) == ["10.203.0.113"] and not carries_subnet(rawb, rb, A_NET)
    assert len(up.seen(name)) == 2
    # A's subnet again, host bits set (cut to the prefix): a hit.
    ra2, _ = ask(dp, query(name, ecs=("198.51.100.77", 24)), tcp=True)
    assert ips(ra2) == ["10.198.51.100"]
    assert len(up.seen(name)) == 2
    # No ECS: its own entry, no subnet in the answer.
    rc, rawc = ask(dp, query(name))
    assert ips(rc) == [ANSWER_IP] and ecs_of(rc) == []
    assert not carries_subnet(rawc, rc, A_NET) and not carries_subnet(rawc, rc, B_NET)
    assert len(up.seen(name)) == 3 and ecs_of(up.seen(name)[2]) == []
    ask(dp, query(name))
    rb2, _ = ask(dp, query(name, ecs=B_NET))
    assert ips(rb2) == ["10.203.0.113"]
    assert len(up.seen(name)) == 3
    # Scope /32 for a /24 question: valid for a narrower subnet, not cached.
    for _ in range(2):
        rn, _ = ask(dp, query("narrow.hole2.test.", ecs=A_NET))
        assert ips(rn) == ["10.198.51.100"]
    assert len(up.seen("narrow.hole2.test.")) == 2
    # Coalescing is per subnet too: A and A' share one upstream query, B
    # and C (no ECS) have their own, and each gets its own answer.
    up.delay = 0.5
    name = "herd.hole2.test."
    got = ask_many(dp, [query(name, ecs=A_NET), query(name, ecs=B_NET),
                        query(name, ecs=("198.51.100.9", 24)), query(name)])
    assert [ips(r) for r, _ in got] == [["10.198.51.100"], ["10.203.0.113"], ["10.198.51.100"],
                                        [ANSWER_IP]]
    assert len(up.seen(name)) == 3
    up.delay = 0.0
    # RFC 7871 6: more address octets than the prefix needs: FORMERR.
    bad = dns.edns.GenericOption(ECS, struct.pack("!HBB", 1, 16, 0) + bytes([198, 51, 100]))
    rf, _ = ask(dp, query("bad.hole2.test.", options=[bad]))
    assert rf.rcode() == dns.rcode.FORMERR
    assert up.seen("bad.hole2.test.") == []


# ---------------------------------------------------------------- hole 7

@pytest.mark.timeout_s(40)
def test_hole7_servfail_fails_over_to_next_upstream(dotproxy, certs, scripted):
    """A SERVFAIL from one upstream is not the answer while another upstream
    has not been asked: every query gets the good upstream's answer."""
    bad = scripted(lambda q: answer(q, rcode=dns.rcode.SERVFAIL))
    good = scripted(lambda q: answer(q))
    dp = start(dotproxy, certs, [bad, good],
               extra=["--upstream-policy", "round-robin", "--hedge-after", "off"])
    names = ["fo%d.hole7.test." % i for i in range(8)]
    for i, name in enumerate(names):
        r, _ = ask(dp, query(name), tcp=bool(i % 2))
        assert r.rcode() == dns.rcode.NOERROR, "%s: %s" % (name, dns.rcode.to_text(r.rcode()))
        assert [rd.to_text() for rs in r.answer for rd in rs] == [ANSWER_IP]
    assert sum(len(bad.seen(n)) for n in names) >= 1, "round robin never chose the failing upstream"
    assert all(len(good.seen(n)) == 1 for n in names)


@pytest.mark.timeout_s(60)
def test_hole7_servfail_cached_when_all_upstreams_fail(dotproxy, certs, scripted):
    """Both upstreams SERVFAIL: each is asked once, the client gets SERVFAIL,
    and for the next seconds the same question is answered SERVFAIL from
    the cache (RFC 9520: at least 1 s, at most 5 min) instead of hammering
    the upstreams; after that it is asked again."""
    ups = [scripted(lambda q: answer(q, rcode=dns.rcode.SERVFAIL)) for _ in range(2)]
    dp = start(dotproxy, certs, ups, extra=["--hedge-after", "off"])
    name = "sf.hole7.test."

    def asked():
        return sum(len(u.seen(name)) for u in ups)

    t0 = time.monotonic()
    r, _ = ask(dp, query(name))
    assert r.rcode() == dns.rcode.SERVFAIL
    assert [len(u.seen(name)) for u in ups] == [1, 1], "each upstream once (failover)"
    for tcp in (False, True, False):
        r, _ = ask(dp, query(name), tcp=tcp)
        assert r.rcode() == dns.rcode.SERVFAIL and r.question[0].name.to_text() == name
    assert time.monotonic() - t0 < 4, "too slow to tell a cached SERVFAIL from an expired one"
    assert asked() == 2, "a SERVFAIL every upstream gave was not cached: %d queries" % asked()
    # Not for long (5 s by default, at most 5 min).
    H.wait_for(lambda: time.monotonic() - t0 > 6.5, 10)
    r, _ = ask(dp, query(name))
    assert r.rcode() == dns.rcode.SERVFAIL
    assert asked() == 4


@pytest.mark.timeout_s(40)
def test_hole7_servfail_serves_stale(dotproxy, certs, scripted):
    """RFC 8767: when the upstream fails (here: SERVFAIL) and the cache holds
    an expired answer, the client gets that answer (TTL 30), not SERVFAIL."""
    mode = {"fail": False}

    def respond(q):
        if mode["fail"]:
            return answer(q, rcode=dns.rcode.SERVFAIL)
        return answer(q, ttl=1)

    up = scripted(respond)
    dp = start(dotproxy, certs, [up])
    name = "stale.hole7.test."
    fresh, _ = ask(dp, query(name))
    assert fresh.rcode() == dns.rcode.NOERROR
    time.sleep(1.6)  # expired, well inside --stale-ttl (1 day)
    mode["fail"] = True
    for tcp in (False, True):
        r, _ = ask(dp, query(name), tcp=tcp)
        assert r.rcode() == dns.rcode.NOERROR, "SERVFAIL instead of the stale answer"
        assert [rd.to_text() for rs in r.answer for rd in rs] == [ANSWER_IP]
        assert [rs.ttl for rs in r.answer] == [30]
    assert len(up.seen(name)) >= 2, "the upstream was not asked again"


@pytest.mark.timeout_s(40)
@pytest.mark.parametrize("cache", [True, False], ids=["cache", "no-cache"])
def test_hole7_ttl_over_2_31_is_zero_in_direct_answers(dotproxy, certs, scripted, cache):
    """RFC 2181 8: a TTL with the top bit set counts as 0, in the answer to
    the query that went upstream as well as in cached ones."""
    def respond(q):
        name = q.question[0].name.to_text()
        return answer(q, ttl=0xFFFFFFFF if name.startswith("max") else 0x80000000)

    up = scripted(respond)
    dp = start(dotproxy, certs, [up], extra=[] if cache else ["--no-cache"])
    for name in ("big.hole7.test.", "max.hole7.test."):
        for tcp in (False, True):
            r, raw = ask(dp, query(name), tcp=tcp)
            assert r.rcode() == dns.rcode.NOERROR
            assert wire_ttls(raw) == [0], "%s: TTLs %s" % (name, wire_ttls(raw))


@pytest.mark.timeout_s(40)
def test_hole7_ad_bit_not_leaked_through_cache(dotproxy, certs, scripted):
    """RFC 6840 5.7: AD goes to a client that set AD or DO. A validating
    upstream sets AD when the query has AD or DO; a client with AD fills the
    cache, a client with neither must not get AD from it, and the other way
    round a client asking AD after a plain client must get it."""
    up = scripted(lambda q: answer(q, ad=bool(q.flags & dns.flags.AD) or q.want_dnssec()))
    dp = start(dotproxy, certs, [up])
    plain = dns.flags.RD
    with_ad = dns.flags.RD | dns.flags.AD
    name = "ad1.hole7.test."
    r1, _ = ask(dp, query(name, flags=with_ad))
    assert r1.flags & dns.flags.AD
    for use_edns in (0, -1):
        r2, _ = ask(dp, query(name, flags=plain, use_edns=use_edns))
        assert r2.rcode() == dns.rcode.NOERROR
        assert not r2.flags & dns.flags.AD, "AD leaked through the cache to a client that set neither AD nor DO"
    name = "ad2.hole7.test."
    r1, _ = ask(dp, query(name, flags=plain))
    assert not r1.flags & dns.flags.AD
    r2, _ = ask(dp, query(name, flags=with_ad))
    assert r2.flags & dns.flags.AD, "a plain client's answer (no AD) served to a client that asked AD"
    r3, _ = ask(dp, query(name, flags=plain, want_dnssec=True))
    assert r3.flags & dns.flags.AD
    assert len(up.seen("ad1.hole7.test.")) == 1 and len(up.seen(name)) <= 2

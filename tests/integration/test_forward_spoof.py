"""Spoofing a plain udp:// upstream (issue 15): forged UDP answers are never
accepted, and the proxy's upstream queries are hard to guess.

The zone spoof.example goes to a plainserver.py in forging mode: before each
genuine answer (its marker, after 30 ms) it sends answers carrying
plainserver.FORGED_ADDR with (a) a wrong ID, (b) the right ID and another
question, (c) the right ID and question from another source port of its IP,
(d) the right ID and question to the other source ports the proxy used lately
(other sockets of its pool), and with ,0x20 on the upstream (e) the right ID
and the question with its letters' case swapped. A proxy that takes any of
them hands the forged address to the client. What the server recorded then
shows the source ports and IDs of the proxy's first 200 queries, under load
and from a quiet client: more than one port, IDs not a counter.

Objects owned here: none beyond test_forward's fixtures (plain servers,
dotproxy, the DoT default responder).
"""

import selectors
import socket
import time

import dns.message
import dns.rcode
import pytest

import dphelpers as H
import plainserver as P
from test_forward import NO_PROBES, ask, assert_from, forward_args, plain, who  # noqa: F401 (fixture)
from test_ops import a_addrs, msum, scrape, tag
from test_resilience import responder  # noqa: F401 (fixture)

MARKER = "203.0.113.31"
N_QUERIES = 200
CLIENTS = 8        # client sockets, each with up to WINDOW queries outstanding
WINDOW = 5
BOUND_S = 60       # all N_QUERIES answered within this


def start_spoofed(dotproxy, responder, certs, plain, threads=2, forge=True, case20=False):  # noqa: F811
    """dotproxy with spoof.example on a (forging) udp:// server, with 0x20
    when case20 (and then forged answers with the case swapped too):
    (server, dp, metrics port)."""
    forger = plain("127.0.0.31", MARKER, label="spoofed", forge=forge, forge_dest=forge, forge_case=case20)
    up = forger.upstream("udp") + (",0x20" if case20 else "")
    dot = responder()
    mport = H.free_port()
    dp = dotproxy([dot.upstream_arg()], certs["ca"], threads=threads,
                  extra=forward_args([("spoof.example", up)]) + NO_PROBES
                  + ["--metrics", "127.0.0.1:%d" % mport])
    return forger, dp, mport


def run_window(dp, names, deadline):
    """names sent over UDP from CLIENTS sockets, at most WINDOW outstanding
    per socket; {name: response, or None when unanswered by deadline}."""
    sel = selectors.DefaultSelector()
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(CLIENTS)]
    pending = {s: {} for s in socks}     # socket -> {id: name}
    got = {}
    todo = list(names)
    try:
        for s in socks:
            sel.register(s, selectors.EVENT_READ)
        while (todo or any(pending.values())) and time.monotonic() < deadline:
            for s, pend in pending.items():
                while todo and len(pend) < WINDOW:
                    q = H.make_query(todo[-1], "A")
                    if q.id in pend:
                        continue
                    pend[q.id] = todo.pop()
                    s.sendto(q.to_wire(), (dp.host, dp.port))
            for key, _ in sel.select(timeout=0.2):
                r = dns.message.from_wire(key.fileobj.recv(65535))
                n = pending[key.fileobj].pop(r.id, None)
                if n is not None:
                    got[n] = r
    finally:
        sel.close()
        for s in socks:
            s.close()
    for n in todo + [n for pend in pending.values() for n in pend.values()]:
        got[n] = None
    return got


@pytest.mark.timeout_s(BOUND_S + 60)
@pytest.mark.parametrize("case20", [False, True], ids=["plain", "0x20"])
def test_forged_udp_answers_never_accepted(dotproxy, responder, certs, plain, case20):  # noqa: F811
    """200 names of spoof.example: every client gets the genuine marker,
    never the forged address, although each query drew three or more
    forgeries that arrived first. With ,0x20 also forgeries that differ
    from the question only in letter case; the names reach the server in
    mixed case, and each client gets its question back as it spelt it."""
    forger, dp, mport = start_spoofed(dotproxy, responder, certs, plain, case20=case20)
    t = tag()
    names = ["s%d-%s.spoof.example." % (i, t) for i in range(N_QUERIES)]
    t0 = time.monotonic()
    got = run_window(dp, names, t0 + BOUND_S)
    took = time.monotonic() - t0
    print("%d queries in %.1f s; forgeries sent: %s" % (len(names), took, forger.forged_sent))

    forged = {n: who(r) for n, r in got.items() if r is not None and P.FORGED_ADDR in a_addrs(r)}
    assert not forged, "%d forged answers accepted, e.g. %s" % (len(forged), sorted(forged.items())[:5])
    missing = [n for n, r in got.items() if r is None]
    assert not missing, "%d of %d queries unanswered within %d s, e.g. %s" % (len(missing), len(names),
                                                                            BOUND_S, missing[:5])
    wrong = {n: who(r) for n, r in got.items()
             if r.rcode() != dns.rcode.NOERROR or a_addrs(r) != [MARKER]}
    assert not wrong, "%d answers not the genuine %s: %s" % (len(wrong), MARKER, sorted(wrong.items())[:5])

    # the forgeries did go out, ahead of each genuine answer
    asked = [q for q in forger.seen(transport="udp") if q.lname in set(names)]
    for kind in ("wrong_id", "wrong_question", "wrong_port"):
        assert forger.forged_sent[kind] >= len(asked) >= N_QUERIES, (kind, forger.forged_sent, len(asked))
    assert forger.forged_sent["wrong_dest"] > 0, forger.forged_sent
    if case20:
        assert forger.forged_sent["wrong_case"] >= len(asked), forger.forged_sent
        mixed = [q.name for q in asked if q.name != q.lname]
        assert len(mixed) > len(asked) // 2, "0x20: only %d of %d names went out with upper-case letters: %s" % (
            len(mixed), len(asked), [q.name for q in asked[:5]])
        spelt = [(n, r.question[0].name.to_text()) for n, r in got.items() if r.question[0].name.to_text() != n]
        assert not spelt, "0x20: questions not echoed as the client spelt them: %s" % spelt[:5]

    # one accepted answer per name (a resent query's second genuine answer
    # is late, not accepted); no forgery counted as an answer on top
    _, s = scrape(mport)
    answers = msum(s, "dotproxy_upstream_answers_total", zone="spoof.example.")
    assert answers == len(names), "upstream answers counted %s for %d names (%d queries reached the server)" % (
        answers, len(names), len(asked))


@pytest.mark.timeout_s(BOUND_S + 60)
@pytest.mark.parametrize("load", ["windowed", "sequential"])
def test_upstream_queries_use_random_ports_and_ids(dotproxy, responder, certs, plain, load):  # noqa: F811
    """The source ports and IDs of the proxy's queries to a plain upstream,
    as the server recorded them: more than one port (a pool of sockets on
    random ports), IDs without a sequence. One shard, so that the ports are
    not simply one socket per shard. load=windowed: the forging server, 40
    queries outstanding; load=sequential: a server that answers at once,
    one query at a time (a quiet client: nothing is busy, nothing resent)."""
    forger, dp, _ = start_spoofed(dotproxy, responder, certs, plain, threads=1, forge=(load == "windowed"))
    t = tag()
    names = ["r%d-%s.spoof.example." % (i, t) for i in range(N_QUERIES)]
    if load == "windowed":
        for i in range(0, N_QUERIES, 40):
            got = run_window(dp, names[i:i + 40], time.monotonic() + BOUND_S / 5)
            assert all(r is not None and a_addrs(r) == [MARKER] for r in got.values()), \
                {n: (who(r) if r else None) for n, r in got.items()}
    else:
        for n in names:
            assert_from(ask(dp, n), MARKER, n)
    # each name's first query only: a resend after the hedge delay goes out
    # from another port, and whether one happens depends on timing
    first = {}
    for q in forger.seen(transport="udp"):
        if q.lname in set(names):
            first.setdefault(q.lname, q)
    assert set(first) == set(names), "names never asked: %s" % sorted(set(names) - set(first))[:5]
    asked = sorted(first.values(), key=lambda q: q.t)
    ports = [q.sport for q in asked]
    ids = [q.qid for q in asked]
    distinct_ports = sorted(set(ports))
    resent = len([q for q in forger.seen(transport="udp") if q.lname in first]) - len(asked)
    print("%d first queries from %d source ports (%s...), %d resends; first IDs %s" % (
        len(asked), len(distinct_ports), distinct_ports[:10], resent, ids[:10]))
    # random 16-bit IDs: about one repeat in 200; a counter: steps of 1
    assert len(set(ids)) >= len(ids) - 5, "IDs repeat: %d distinct of %d" % (len(set(ids)), len(ids))
    steps = [(b - a) % 65536 for a, b in zip(ids, ids[1:])]
    small = sum(1 for d in steps if d <= 16)
    ups = sum(1 for a, b in zip(ids, ids[1:]) if b > a)
    assert small < len(steps) // 10, "%d of %d consecutive IDs within +16 of the last: %s" % (
        small, len(steps), ids[:20])
    assert ups < 0.8 * len(steps), "IDs rise %d times in %d: a counter? %s" % (ups, len(steps), ids[:20])
    # last, so that a failure here still tells the IDs were fine
    assert len(distinct_ports) > 1, "the first query for each of %d names all from source port %s" % (
        len(asked), distinct_ports)
    assert not any(p == 53 or p == forger.port for p in distinct_ports), distinct_ports

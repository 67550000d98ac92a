"""TCP pipelining (RFC 7766): many clients, each writing a burst of queries
on one connection before reading; every answer matched by ID."""

import random
import socket
import struct
import threading

import dns.message
import dns.rcode
import pytest

import dphelpers as H

CLIENTS = 10
PER_CLIENT = 100


def _client(host, port, cid, results):
    err = None
    try:
        ids = random.sample(range(65536), PER_CLIENT)
        tag = random.randrange(1 << 30)
        sent = {}
        buf = b""
        for j, qid in enumerate(ids):
            name = "c%d-q%d-%x.perf.test." % (cid, j, tag)
            q = H.make_query(name, "A", qid=qid)
            sent[qid] = q
            w = q.to_wire()
            buf += struct.pack("!H", len(w)) + w
        c = socket.create_connection((host, port), timeout=15)
        try:
            c.sendall(buf)  # all 100 queries before reading anything
            got = {}
            for _ in range(PER_CLIENT):
                data = H.tcp_read_msg(c)
                r = dns.message.from_wire(data)
                if r.id not in sent:
                    raise AssertionError("client %d: answer with unknown ID %d" % (cid, r.id))
                if r.id in got:
                    raise AssertionError("client %d: second answer for ID %d" % (cid, r.id))
                q = sent[r.id]
                if r.question != q.question:
                    raise AssertionError("client %d: ID %d answered for %s, asked %s"
                                         % (cid, r.id, r.question, q.question))
                if r.rcode() != dns.rcode.NOERROR or len(r.answer) != 1 or \
                        [rd.to_text() for rd in r.answer[0]] != [H.PERF_ADDR] or \
                        r.answer[0].name != q.question[0].name:
                    raise AssertionError("client %d: wrong answer for %s: %s" % (cid, q.question[0].name, r))
                got[r.id] = r
        finally:
            c.close()
        results[cid] = len(got)
    except Exception as e:  # reported by the main thread
        err = "%s: %s" % (type(e).__name__, e)
    if err:
        results[cid] = err


@pytest.mark.timeout_s(90)
def test_ten_clients_pipeline_100_queries_each(dotproxy, unbound, certs):
    dp = dotproxy([unbound.upstream_arg()], certs["ca"], timeout="5s")
    results = {}
    threads = [threading.Thread(target=_client, args=(dp.host, dp.port, i, results), daemon=True)
               for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    hung = [i for i, t in enumerate(threads) if t.is_alive()]
    assert not hung, "clients %s still waiting after 60 s" % hung
    errors = {k: v for k, v in results.items() if v != PER_CLIENT}
    assert not errors, "failed clients:\n" + "\n".join("%d: %s" % kv for kv in sorted(errors.items()))
    assert len(results) == CLIENTS
    st = dp.stats()
    assert st.get("tcp_queries", 0) >= CLIENTS * PER_CLIENT, st

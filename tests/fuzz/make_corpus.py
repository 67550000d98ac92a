#!/usr/bin/python3
"""Write the fuzz seed corpora under tests/fuzz/corpus/<target>/.

Small, valid (and a few deliberately odd) DNS messages made with dnspython.
The output is committed; run this again only to change the seeds:
    /usr/bin/python3 tests/fuzz/make_corpus.py
"""
import os
import struct

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

HERE = os.path.dirname(os.path.abspath(__file__))


def query(name, rdtype, qid, **kw):
    q = dns.message.make_query(name, rdtype, **kw)
    q.id = qid
    return q


def queries():
    out = {}
    out["a_plain"] = query("www.example.com", "A", 0x1234, use_edns=False).to_wire()
    out["aaaa_edns_do"] = query("example.org", "AAAA", 2, use_edns=0, payload=1232,
                                want_dnssec=True).to_wire()
    cookie = dns.edns.GenericOption(dns.edns.COOKIE, b"\x01\x02\x03\x04\x05\x06\x07\x08")
    out["txt_cookie"] = query("Example.NET", "TXT", 3, use_edns=0, payload=4096,
                              options=[cookie]).to_wire()
    out["edns_v1"] = query("example.com", "A", 4, use_edns=1).to_wire()
    q = query("example.com", "SOA", 5, use_edns=False)
    q.set_opcode(dns.opcode.UPDATE)
    out["opcode_update"] = q.to_wire()
    out["no_question"] = struct.pack("!6H", 6, 0x0100, 0, 0, 0, 0)
    out["no_question_edns"] = (struct.pack("!6H", 6, 0x0100, 0, 0, 0, 1)
                               + b"\x00" + struct.pack("!HHIH", 41, 1232, 0x8000, 0))
    out["trailing"] = query("a.b.c.d.e", "MX", 7, use_edns=0).to_wire() + b"\xde\xad\xbe\xef"
    out["long_name"] = query(".".join(["a" * 63] * 3 + ["b" * 61]), "A", 8,
                             use_edns=False).to_wire()
    # A query that carries an answer RR whose owner is compressed.
    out["with_answer_rr"] = (struct.pack("!6H", 9, 0, 1, 1, 0, 0)
                             + dns.name.from_text("example.com").to_wire()
                             + struct.pack("!HH", 1, 1)
                             + b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + bytes([192, 0, 2, 1]))
    return out


def answer(q, rrsets=(), authority=(), additional=(), rcode=dns.rcode.NOERROR):
    r = dns.message.make_response(q)
    r.set_rcode(rcode)
    for rr in rrsets:
        r.answer.append(dns.rrset.from_text(rr[0] + ".", *rr[1:]))
    for rr in authority:
        r.authority.append(dns.rrset.from_text(rr[0] + ".", *rr[1:]))
    for rr in additional:
        r.additional.append(dns.rrset.from_text(rr[0] + ".", *rr[1:]))
    return r.to_wire()


def answers():
    out = {}
    q = query("www.example.com", "A", 0x1234, use_edns=False)
    out["a_cname"] = answer(q, [("www.example.com", 300, "IN", "CNAME", "web.example.com."),
                                ("web.example.com", 300, "IN", "A", "192.0.2.1", "192.0.2.2")])
    q = query("example.org", "AAAA", 2, use_edns=0, payload=1232, want_dnssec=True)
    out["aaaa_edns"] = answer(q, [("example.org", 60, "IN", "AAAA", "2001:db8::1")])
    q = query("nope.example.net", "A", 3, use_edns=0)
    out["nxdomain_soa"] = answer(q, authority=[("example.net", 900, "IN", "SOA",
                                                "ns1.example.net. host.example.net. 1 7200 900 1209600 86400")],
                                 rcode=dns.rcode.NXDOMAIN)
    q = query("example.com", "NS", 4, use_edns=0)
    out["ns_glue"] = answer(q, [("example.com", 3600, "IN", "NS", "ns1.example.com.", "ns2.example.com.")],
                            additional=[("ns1.example.com", 3600, "IN", "A", "192.0.2.53"),
                                        ("ns2.example.com", 3600, "IN", "AAAA", "2001:db8::53")])
    q = query("example.com", "MX", 5, use_edns=False)
    out["servfail_empty"] = answer(q, rcode=dns.rcode.SERVFAIL)
    q = query("example.com", "TXT", 6, use_edns=0)
    r = dns.message.make_response(q)
    r.flags |= dns.flags.TC
    out["tc_set"] = r.to_wire()
    # Regression: OPT owner written as a pointer to a zero octet in the A
    # record's RDATA (must be refused: truncation would leave it dangling).
    q = query("example.com", "A", 1, use_edns=False)
    m = bytearray(answer(q, [("example.com", 60, "IN", "A", "192.0.0.2")]))
    m[11] = 1  # ARCOUNT
    rdata = len(m) - 4
    m += struct.pack("!HHHIH", 0xC000 | (rdata + 1), 41, 1232, 0, 0)
    out["regress_opt_owner_pointer"] = bytes(m)
    # More records than dp_dns_answer_t keeps TTL offsets for (64): the
    # rest are walked (dp_dns_ttl_walk).
    q = query("many.example", "A", 7, use_edns=0, payload=1232)
    out["many_rrs"] = answer(q, [("many.example", 300, "IN", "A")
                                 + tuple("192.0.2.%d" % i for i in range(1, 71))],
                             additional=[("ns.many.example", 0x80000001, "IN", "A", "192.0.2.53")])
    # The OPT not last: an additional record after it, its owner a pointer
    # to the question name (moved when the OPT shrinks or goes).
    q = query("after.example", "A", 8, use_edns=False)
    m = bytearray(answer(q, [("after.example", 60, "IN", "A", "192.0.2.1")]))
    m[11] = 2  # ARCOUNT
    nsid = struct.pack("!HH", 3, 4) + b"abcd"
    m += b"\x00" + struct.pack("!HHIH", 41, 1232, 0, len(nsid)) + nsid
    m += b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 30, 4) + bytes([192, 0, 2, 9])
    out["opt_not_last"] = bytes(m)
    return out


def frames(msgs):
    return b"".join(struct.pack("!H", len(m)) + m for m in msgs)


def tcpframes(qs):
    out = {}
    # First byte: the fuzz target's mode (cut point, failing call).
    out["one"] = b"\x10" + frames([qs["a_plain"]])
    out["three"] = b"\x08" + frames([qs["a_plain"], qs["aaaa_edns_do"], qs["txt_cookie"]])
    out["partial"] = b"\x1f" + frames([qs["a_plain"]]) + frames([qs["edns_v1"]])[:9]
    out["zero_len"] = b"\x04" + frames([qs["a_plain"]]) + b"\x00\x00" + frames([qs["a_plain"]])
    out["fail_second"] = b"\x3f" + frames([qs["a_plain"], qs["trailing"], qs["a_plain"]])
    return out


def tcpconn_programs():
    """fuzz_tcpconn inputs are programs of events (see its header): an
    opcode byte, then its arguments; frames are made from later bytes."""
    return {
        # accept; data (more) with frames; flush; send done; EOF
        "one_client": bytes([0, 0, 1, 0, 60, 1, 20, 1, 0, 10, 6, 0, 4, 0]),
        # two clients, pipelined misses answered later, drain
        "pipeline_drain": bytes([0, 0, 0, 1, 1, 0, 100, 0, 30, 0, 10, 1, 1, 80, 12, 0, 20, 12, 0, 20,
                                 10, 6, 0, 14, 40, 40, 11, 0, 11, 1, 10, 6, 0, 6, 1]),
        # partial frame, then the receive ends with the rest
        "split_end": bytes([0, 0, 1, 0, 9, 1, 30, 2, 2, 2, 0, 120, 10, 6, 0, 9, 0, 11, 0]),
        # backpressure: misses refused while contended, then at the cap of 3,
        # resumed as slots free and queries are answered
        "backpressure": bytes([0, 0, 17, 1, 0, 69] + [0, 0, 0] * 5
                              + [11, 0, 18, 2, 10, 17, 18, 1, 10, 12, 0, 0, 10, 12, 0, 0, 12, 0, 0, 10,
                                 19, 1, 12, 0, 0, 10, 6, 0, 4, 0]),
        # burst of accepts over the cap, idle expiry
        "accepts": bytes([0, 0, 0, 1, 0, 2, 0, 3, 0, 4, 0, 5, 0, 6, 0, 7, 13, 255, 13, 255, 0, 0, 0, 1,
                          11, 0, 11, 1, 11, 2, 11, 3]),
    }


def wire_name(text):
    out = b""
    for label in text.split("."):
        if label:
            out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def route_seeds():
    """fuzz_route: a count byte, that many zone lines, then a wire name."""
    def seed(zones, name):
        return bytes([len(zones)]) + b"".join(z.encode() + b"\n" for z in zones) + name
    return {
        "longest": seed(["corp.example", "a.corp.example"], wire_name("www.a.corp.example")),
        "case": seed(["Corp.EXAMPLE."], wire_name("WWW.corp.Example")),
        "boundary": seed(["example"], b"\x09a\x07example\x00"),
        "reverse": seed(["in-addr.arpa", "10.in-addr.arpa"], wire_name("4.3.2.110.in-addr.arpa")),
        "root_alone": seed([], wire_name("www.example.com")),
        "bad_zone": seed(["a..b", "-"], wire_name("a.b")),
        "long": seed([".".join(["a" * 63] * 3 + ["c" * 61])],
                     wire_name(".".join(["a" * 63] * 3 + ["c" * 61]))),
        "pointer": seed(["example"], b"\x01a\xc0\x0c"),
    }


def write(target, files):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    for name, data in sorted(files.items()):
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)


def main():
    qs = queries()
    write("dns_query", qs)
    ans = answers()
    write("dns_answer", ans)
    # fuzz_edns_cache: a selector byte (client EDNS, Padding, UDP limit,
    # TTL maximum, stale), then the answer.
    write("edns_cache", {name + "_sel" + hex(sel): bytes([sel]) + ans[name]
                         for name in ("many_rrs", "opt_not_last") for sel in (0x41, 0xe3)})
    write("tcpframe", tcpframes(qs))
    write("tcpconn", tcpconn_programs())
    write("route", route_seeds())


if __name__ == "__main__":
    main()

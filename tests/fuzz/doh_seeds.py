#!/usr/bin/python3
"""doh_seeds.py - writes fuzz_doh's seeds into tests/fuzz/corpus/doh/.

Each seed is a fuzz_doh program (tests/fuzz/fuzz_doh.c): steps of
[op][len][octets]. The HTTP/2 input is HPACK literal fields (RFC 7541
6.2.2) in frames (RFC 9113 4.1):
  get      a GET of www.test A (?dns=), answered, output taken
  post     a POST of the same query in one DATA frame, answered
  twoget   two GETs on streams 1 and 3, answered in reverse order
  reset    a GET, then RST_STREAM of it, then its answer
"""
import base64
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
Q = bytes.fromhex("000001000001000000000000") + b"\x03www\x04test\x00\x00\x01\x00\x01"


def lit(n, v):
    n, v = n.encode(), v.encode()
    return bytes([0, len(n)]) + n + bytes([len(v)]) + v


def frame(ftype, flags, sid, payload):
    return struct.pack("!I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack("!I", sid) + payload


def get(sid):
    path = "/dns-query?dns=" + base64.urlsafe_b64encode(Q).decode().rstrip("=")
    h = lit(":method", "GET") + lit(":scheme", "https") + lit(":authority", "dns.test") + lit(":path", path)
    return frame(1, 0x5, sid, h)  # END_STREAM | END_HEADERS


def post(sid):
    h = (lit(":method", "POST") + lit(":scheme", "https") + lit(":authority", "dns.test")
         + lit(":path", "/dns-query") + lit("content-type", "application/dns-message"))
    return frame(1, 0x4, sid, h) + frame(0, 0x1, sid, Q)


def step(op, data=b""):
    out = b""
    while True:
        chunk, data = data[:255], data[255:]
        out += bytes([op, len(chunk)]) + chunk
        if not data:
            return out


SEEDS = {
    "get": step(0, get(1)) + step(1, b"\x2a") + step(3),
    "post": step(0, post(1)) + step(1, b"\x10") + step(3),
    "twoget": step(0, get(1) + get(3)) + step(2, b"\x01") + step(1) + step(3),
    "reset": step(0, get(1)) + step(0, frame(3, 0, 1, struct.pack("!I", 8))) + step(1) + step(3),
}

if __name__ == "__main__":
    out = os.path.join(HERE, "corpus", "doh")
    os.makedirs(out, exist_ok=True)
    for name, data in SEEDS.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)

"""Property tests: compiled parser, pure-Python twin and dnslib on generated and mutated messages."""
from __future__ import annotations

import ipaddress
import socket
import struct

import dnslib
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sensor.parse import Parser

COMPILED = Parser(backend="compiled")
TWIN = Parser(backend="twin")
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

label = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20)
names = st.lists(label, min_size=1, max_size=5).map(lambda labels: ".".join(labels) + ".com")
qtypes = st.sampled_from(["A", "AAAA", "TXT", "MX", "NS", "CNAME", "PTR", "SOA", "SRV", "NULL"])


@st.composite
def responses(draw) -> bytes:
    qname = draw(names)
    reply = dnslib.DNSRecord(dnslib.DNSHeader(id=draw(st.integers(0, 65535)), qr=1, rd=1, ra=1),
                             q=dnslib.DNSQuestion(qname, getattr(dnslib.QTYPE, draw(qtypes))))
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["A", "AAAA", "CNAME", "MX", "TXT"]))
        ttl = draw(st.integers(0, 2**31 - 1))
        if kind == "A":
            rdata = dnslib.A(str(ipaddress.IPv4Address(draw(st.integers(0, 2**32 - 1)))))
        elif kind == "AAAA":
            rdata = dnslib.AAAA(str(ipaddress.IPv6Address(draw(st.integers(0, 2**128 - 1)))))
        elif kind == "CNAME":
            rdata = dnslib.CNAME(draw(names))
        elif kind == "MX":
            rdata = dnslib.MX(draw(names), draw(st.integers(0, 65535)))
        else:
            rdata = dnslib.TXT(draw(st.text(alphabet="abc xyz", max_size=30)))
        reply.add_answer(dnslib.RR(qname, getattr(dnslib.QTYPE, kind), rdata=rdata, ttl=ttl))
    return reply.pack()


def both(payload: bytes):
    a = COMPILED.parse_payloads([payload])
    b = TWIN.parse_payloads([payload])
    ra, rb = list(a.records()), list(b.records())
    assert ra == rb
    assert a.messages.tobytes() == b.messages.tobytes() or ra == rb
    return a


@SETTINGS
@given(st.binary(max_size=600))
def test_random_bytes_never_raise_and_backends_agree(payload):
    batch = both(payload)
    assert len(batch) == (1 if payload else 0)


@SETTINGS
@given(responses(), st.data())
def test_mutated_messages_backends_agree(message, data):
    raw = bytearray(message)
    for _ in range(data.draw(st.integers(1, 8))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert", "retarget"]))
        pointers = [i for i in range(12, len(raw) - 1) if raw[i] >= 0xC0]
        if op == "retarget" and pointers:
            # a compression pointer aimed elsewhere before it: into names, rdata, the header
            i = data.draw(st.sampled_from(pointers))
            target = data.draw(st.integers(0, i - 1))
            raw[i], raw[i + 1] = 0xC0 | (target >> 8), target & 0xFF
        elif op == "flip" and raw:
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] = data.draw(st.integers(0, 255))
        elif op == "cut" and raw:
            del raw[data.draw(st.integers(0, len(raw) - 1)):]
        else:
            i = data.draw(st.integers(0, len(raw)))
            raw[i:i] = data.draw(st.binary(min_size=1, max_size=4))
    both(bytes(raw))


def wire_name(labels: list[str]) -> bytes:
    return b"".join(bytes([len(x)]) + x.encode() for x in labels) + b"\0"


@st.composite
def pointers_into_records(draw) -> bytes:
    """A response whose records hold names in their rdata (CNAME, NS, PTR, MX, RP, TSIG), some
    followed by junk inside the rdlength (the rdata is then kept as hex), and whose
    later owner names point at any earlier offset: the compiled core's name caches
    must give what decoding through the pointer gives."""
    records = draw(st.integers(1, 6))
    out = bytearray(struct.pack("!6H", draw(st.integers(0, 65535)), 0x8180, 1, records, 0, 0))
    out += wire_name(draw(st.lists(label, min_size=1, max_size=4))) + struct.pack("!HH", 1, 1)
    for _ in range(records):
        if draw(st.booleans()):
            target = draw(st.integers(0, len(out) - 1))
            owner = bytes([0xC0 | target >> 8, target & 0xFF])
        else:
            owner = wire_name(draw(st.lists(label, min_size=1, max_size=3)))
        rtype = draw(st.sampled_from([5, 2, 12, 15, 1, 17, 250]))
        if rtype == 1:
            rdata = bytes(draw(st.binary(min_size=4, max_size=4)))
        else:
            rdata = (struct.pack("!H", draw(st.integers(0, 99))) if rtype == 15 else b"") \
                + wire_name(draw(st.lists(label, min_size=1, max_size=3)))
            if rtype == 17:        # RP: a second name
                rdata += wire_name(draw(st.lists(label, min_size=1, max_size=3)))
            elif rtype == 250:     # TSIG: the fields after the algorithm name, no MAC, no other data
                rdata += struct.pack("!HIHHHHH", 0, draw(st.integers(0, 2**32 - 1)), 300, 0, 1, 0, 0)
            rdata += draw(st.sampled_from([b"", b"", b"\0", b"\0junk", b"\xc0"]))
        out += owner + struct.pack("!HHIH", rtype, 1, 300, len(rdata)) + rdata
    return bytes(out)


@SETTINGS
@given(pointers_into_records())
def test_pointers_into_earlier_records_backends_agree(message):
    both(message)


@SETTINGS
@given(responses())
def test_valid_messages_agree_with_dnslib(message):
    ref = dnslib.DNSRecord.parse(message)
    r = both(message).record(0)
    assert r["anomalies"] == []
    assert r["id"] == ref.header.id and r["qr"] == bool(ref.header.qr)
    assert r["qname"] == str(ref.q.qname).rstrip(".").lower()
    assert r["qtype"] == ref.q.qtype
    assert r["ancount"] == len(ref.rr) == len(r["answers"])
    for ours, theirs in zip(r["answers"], ref.rr):
        assert ours["type"] == theirs.rtype and ours["ttl"] == theirs.ttl
        if theirs.rtype in (1, 28):
            assert ipaddress.ip_address(ours["data"]) == ipaddress.ip_address(str(theirs.rdata))
        elif theirs.rtype == 5:
            assert ours["data"] == str(theirs.rdata).rstrip(".")
        elif theirs.rtype == 15:
            assert ours["data"] == f"{theirs.rdata.preference} {str(theirs.rdata.label).rstrip('.')}"
        elif theirs.rtype == 16:
            assert ours["data"] == " ".join('"' + s.decode() + '"' for s in theirs.rdata.data)


# Words drawn mostly from {0, 1, ffff} so zero runs of every length and
# position, and the IPv4-embedding prefixes, come up often.
ipv6_words = st.lists(st.sampled_from([0, 0, 0, 1, 0xFFFF, 0x0DB8, 0xABCD]) | st.integers(0, 0xFFFF),
                      min_size=8, max_size=8)


@SETTINGS
@given(ipv6_words)
def test_aaaa_text_matches_inet_ntop(words):
    raw = b"".join(w.to_bytes(2, "big") for w in words)
    reply = dnslib.DNSRecord(dnslib.DNSHeader(id=1, qr=1), q=dnslib.DNSQuestion("v6.example.com", dnslib.QTYPE.AAAA))
    reply.add_answer(dnslib.RR("v6.example.com", dnslib.QTYPE.AAAA, rdata=dnslib.AAAA(list(raw)), ttl=60))
    batch = both(reply.pack())
    assert batch.rr_dicts(0)[0]["data"] == socket.inet_ntop(socket.AF_INET6, raw)

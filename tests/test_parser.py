"""The parser's contract, run against the compiled core and the pure-Python twin."""
from __future__ import annotations

import struct
import textwrap

import dnslib
import numpy as np
import pytest

from conftest import TEST_PORTS
from pcapgen import Conversation, query, udp_frame, write_pcap
from sensor import schema
from sensor.limits import Limits
from sensor.parse import parse_file


def header(id_=0x1234, flags=0x0100, qd=1, an=0, ns=0, ar=0) -> bytes:
    return struct.pack("!6H", id_, flags, qd, an, ns, ar)


def question(name=b"\x03www\x07example\x03com\x00", qtype=1) -> bytes:
    return name + struct.pack("!HH", qtype, 1)


def rr(rtype: int, rdata: bytes, name=b"\xc0\x0c", ttl=300, rclass=1) -> bytes:
    return name + struct.pack("!HHIH", rtype, rclass, ttl, len(rdata)) + rdata


def one(make_parser, payload: bytes, **kw):
    batch = make_parser(**kw).parse_payloads([payload])
    assert len(batch) == 1
    return batch, batch.record(0)


def test_query_fields_and_name_features(make_parser):
    q = dnslib.DNSRecord.question("A1b2.c3D4e5f6.Example.co.uk", "TXT").pack()
    batch, r = one(make_parser, q)
    m = batch.messages[0]
    assert r["qname"] == "a1b2.c3d4e5f6.example.co.uk"
    assert r["qtype_name"] == "TXT" and r["qr"] is False and r["case_differs"] is True
    f = r["features"]
    assert f["registered_domain"] == "example.co.uk"
    assert (f["labels"], f["longest_label"], f["length"]) == (5, 8, len(r["qname"]))
    assert f["digits"] == 6 and f["uppers"] == 3
    assert f["hexchars"] == sum(ch in "0123456789abcdefABCDEF" for ch in "A1b2c3D4e5f6Examplecouk")
    left = "a1b2c3d4e5f6"
    expected = -sum(left.count(ch) / len(left) * np.log2(left.count(ch) / len(left)) for ch in set(left))
    assert m["entropy"] == pytest.approx(expected, rel=1e-6)
    from sensor.parse.twin import fnv1a64
    assert int(m["name_hash"]) == fnv1a64(r["qname"].encode())


def test_response_rdata_in_presentation_form(make_parser):
    reply = dnslib.DNSRecord.question("example.com", "ANY").reply()
    zone = """
    example.com. 60 IN A 192.0.2.1
    example.com. 60 IN AAAA 2001:db8::1
    example.com. 60 IN MX 10 mail.example.com.
    example.com. 60 IN TXT "hello world" "a\\"b"
    example.com. 60 IN SOA ns.example.com. admin.example.com. 1 2 3 4 5
    _sip._udp.example.com. 60 IN SRV 1 2 5060 sip.example.com.
    example.com. 60 IN CAA 0 issue "letsencrypt.org"
    www.example.com. 30 IN CNAME example.com.
    """
    for record in dnslib.RR.fromZone(textwrap.dedent(zone)):
        reply.add_answer(record)
    _, r = one(make_parser, reply.pack())
    data = {(a["type_name"], a["data"]) for a in r["answers"]}
    assert ("A", "192.0.2.1") in data and ("AAAA", "2001:db8::1") in data
    assert ("MX", "10 mail.example.com") in data
    assert ("TXT", '"hello world" "a\\"b"') in data
    assert ("SOA", "ns.example.com admin.example.com 1 2 3 4 5") in data
    assert ("SRV", "1 2 5060 sip.example.com") in data
    assert ("CAA", '0 issue "letsencrypt.org"') in data
    assert ("CNAME", "example.com") in data
    assert r["min_ttl"] == 30 and r["anomalies"] == []


def test_edns_options_and_extended_rcode(make_parser):
    ecs = struct.pack("!HBB", 1, 24, 0) + bytes([198, 51, 100])
    ede = struct.pack("!H", 18) + b"prohibited"
    options = (struct.pack("!HH", 8, len(ecs)) + ecs + struct.pack("!HH", 10, 8) + b"\x01" * 8
               + struct.pack("!HH", 15, len(ede)) + ede + struct.pack("!HH", 12, 3) + b"\0\0\0"
               + struct.pack("!HH", 11, 2) + b"\x00\x64" + struct.pack("!HH", 3, 2) + b"ab")
    opt = b"\x00" + struct.pack("!HHIH", 41, 1232, (1 << 24) | (0 << 16) | 0x8000, len(options)) + options
    msg = header(flags=0x8187, ar=1) + question() + opt        # header rcode 7 + ext 1 -> 23
    batch, r = one(make_parser, msg)
    m = batch.messages[0]
    assert r["rcode"] == 23 and r["rcode_name"] == "BADCOOKIE"
    assert r["edns"]["udp_size"] == 1232 and r["edns"]["do"] is True
    assert r["edns"]["ede_code"] == 18 and r["edns"]["ecs_prefix"] == 24
    assert "ecs=198.51.100.0/24/0" in r["edns"]["options"]
    assert "keepalive=100" in r["edns"]["options"] and "nsid=6162" in r["edns"]["options"]
    assert m["edns_options"] == 0b111111
    assert r["additional"] == []          # the OPT record is shown as edns, not as an RR


def test_dnssec_and_svcb_rdata(make_parser):
    rrsig = (struct.pack("!HBBIIIH", 1, 13, 2, 300, 1700000000, 1690000000, 12345)
             + b"\x07example\x03com\x00" + b"\x01\x02\x03")
    nsec = b"\x03www\x07example\x03com\x00" + bytes([0, 6, 0x40, 0x01, 0, 0, 0, 0x03])
    https = (struct.pack("!H", 1) + b"\x00" + struct.pack("!HH", 1, 3) + b"\x02h2"
             + struct.pack("!HH", 4, 4) + bytes([192, 0, 2, 1]))
    msg = header(flags=0x8180, an=3) + question() + rr(46, rrsig) + rr(47, nsec) + rr(65, https)
    _, r = one(make_parser, msg)
    data = [a["data"] for a in r["answers"]]
    assert data[0] == "A 13 2 300 20231114221320 20230722042640 12345 example.com AQID"
    assert data[1] == "www.example.com A MX RRSIG NSEC"   # RFC 4034 section 4.3 example
    assert data[2] == "1 . alpn=h2 ipv4hint=192.0.2.1"


def loc(lat_mas: int, lon_mas: int, alt_cm: int, size=0x12, hp=0x16, vp=0x13, version=0) -> bytes:
    """LOC rdata from signed thousandths of an arc second (north, east positive) and cm."""
    return struct.pack("!BBBBIII", version, size, hp, vp, 2**31 + lat_mas, 2**31 + lon_mas, 10_000_000 + alt_cm)


def dms(d: int, m: int, s_thousandths: int) -> int:
    return (d * 3600 + m * 60) * 1000 + s_thousandths


def test_location_rdata_as_bind_writes_it(make_parser):
    es_net = bytes.fromhex("001215138805025065D2D40000989680")    # from a real response (tshark agrees)
    sydney = loc(-dms(33, 51, 54123), dms(151, 12, 34567), -250, size=0x91, hp=0x16, vp=0x00)
    msg = header(flags=0x8180, an=2) + question() + rr(29, es_net) + rr(29, sydney)
    _, r = one(make_parser, msg)
    assert [a["data"] for a in r["answers"]] == [
        "37 22 26.000 N 121 59 28.000 W 0.00m 1m 1000m 10m",
        "33 51 54.123 S 151 12 34.567 E -2.50m 0.90m 10000m 0.00m",
    ]
    assert r["anomalies"] == []


@pytest.mark.parametrize("case, rdata, anomaly", [
    pytest.param(*case, id=case[0]) for case in [
        ("precision_mantissa_10", loc(0, 0, 0, size=0xA2), "bad_rdata"),
        ("latitude_beyond_90", loc(dms(91, 0, 0), 0, 0), "bad_rdata"),
        ("longitude_beyond_180", loc(0, -dms(180, 0, 1), 0), "bad_rdata"),
        ("fifteen_bytes", loc(0, 0, 0)[:15], "rdlength_mismatch"),
    ]
])
def test_invalid_location_falls_back_to_hex(make_parser, case, rdata, anomaly):
    _, r = one(make_parser, header(flags=0x8180, an=1) + question() + rr(29, rdata))
    assert r["answers"][0]["data"].startswith(f"\\# {len(rdata)} "), case
    assert anomaly in r["anomalies"], case


def test_location_of_an_unknown_version_is_generic_and_not_an_anomaly(make_parser):
    rdata = loc(0, 0, 0, version=1) + b"\x07"
    _, r = one(make_parser, header(flags=0x8180, an=1) + question() + rr(29, rdata))
    assert r["answers"][0]["data"] == f"\\# 17 {rdata.hex().upper()}" and r["anomalies"] == []


def test_tsig_tkey_rp_and_eui_rdata(make_parser):
    import base64
    mac, other, key = bytes(range(1, 17)), struct.pack("!HI", 0, 1700000400), b"\x60\x82\x0b"
    tsig = (b"\x0bhmac-sha256\x00" + struct.pack("!HIH", 0, 1700000000, 300)
            + struct.pack("!H", len(mac)) + mac + struct.pack("!HHH", 4660, 18, len(other)) + other)
    tkey = (b"\x08gss-tsig\x00" + struct.pack("!IIHH", 1676938118, 1676938118 + 86400, 3, 0)
            + struct.pack("!H", len(key)) + key + struct.pack("!H", 0))
    rp = b"\x04mbox\x07example\x03com\x00\x03txt\xc0\x0c"
    msg = (header(flags=0x8180, an=4, ar=1) + question() + rr(17, rp)
           + rr(108, bytes.fromhex("00005e00532a")) + rr(109, bytes.fromhex("00005eef1000002a"))
           + rr(249, tkey, rclass=255, ttl=0) + rr(250, tsig, name=b"\x03key\x00", rclass=255, ttl=0))
    _, r = one(make_parser, msg)
    b64 = lambda b: base64.b64encode(b).decode()     # noqa: E731
    assert [a["data"] for a in r["answers"]] == [
        "mbox.example.com txt.www.example.com",
        "00-00-5e-00-53-2a",                         # RFC 7043 examples
        "00-00-5e-ef-10-00-00-2a",
        f"gss-tsig 20230221000838 20230222000838 3 NOERROR 3 {b64(key)} 0",
    ]
    assert r["additional"][0]["data"] == f"hmac-sha256 1700000000 300 16 {b64(mac)} 4660 BADTIME 6 {b64(other)}"
    assert r["anomalies"] == []


def test_tsig_whose_mac_runs_past_its_rdata_is_hex(make_parser):
    tsig = b"\x0bhmac-sha256\x00" + struct.pack("!HIHH", 0, 1700000000, 300, 32) + bytes(8)
    _, r = one(make_parser, header(flags=0x8180, ar=1) + question() + rr(250, tsig, rclass=255, ttl=0))
    assert r["additional"][0]["data"].startswith(f"\\# {len(tsig)} ")
    assert "rdlength_mismatch" in r["anomalies"]


def test_update_records_without_rdata_are_not_anomalies(make_parser):
    """RFC 2136: prerequisites and whole-RRset deletions carry class ANY or NONE and no rdata;
    the prerequisite section is the answer section of the request."""
    zone = b"\x07example\x03com\x00" + struct.pack("!HH", 6, 1)
    host = b"\x04host\xc0\x0c"
    update = (header(flags=0x2800, an=2, ns=2) + zone
              + rr(5, b"", name=host, rclass=254, ttl=0)          # no CNAME may exist
              + rr(1, b"", name=host, rclass=255, ttl=0)          # an A RRset must exist
              + rr(28, b"", name=host, rclass=255, ttl=0)         # delete the AAAA RRset
              + rr(1, b"\xc0\x00\x02\x01", name=host, ttl=1200))
    _, r = one(make_parser, update)
    assert r["opcode"] == 5 and r["anomalies"] == []
    assert [a["data"] for a in r["answers"]] == ["\\# 0", "\\# 0"]
    assert [a["data"] for a in r["authority"]] == ["\\# 0", "192.0.2.1"]
    in_class = header(flags=0x2800, ns=1) + zone + rr(1, b"", name=host, ttl=0)
    assert "rdlength_mismatch" in one(make_parser, in_class)[1]["anomalies"]


def test_notify_with_its_soa_is_not_an_answer_in_a_query(make_parser):
    soa = b"\x02ns\xc0\x0c\x05admin\xc0\x0c" + struct.pack("!5I", 2024010101, 7200, 900, 1209600, 300)
    notify = header(flags=0x2400, an=1) + question(qtype=6) + rr(6, soa)
    _, r = one(make_parser, notify)
    assert r["opcode"] == 4 and r["anomalies"] == []


def test_multicast_dns_question_counts_are_not_anomalies(make_parser):
    """mDNS responses carry no question and its queries may carry several (RFC 6762);
    on port 53 either is an anomaly. The top bit of an mDNS record's class is its
    cache-flush flag; elsewhere it is part of the class."""
    announcement = header(flags=0x8400, qd=0, an=1) + rr(1, b"\xc0\xa8\x01\x07", name=b"\x07printer\x05local\x00",
                                                        rclass=0x8001)
    two_questions = header(flags=0, qd=2) + question(b"\x05_ipps\x04_tcp\x05local\x00", 12) \
        + question(b"\x04_ipp\x04_tcp\x05local\x00", 12)
    parser = make_parser(ports=(53, 5353))
    loopback = b"\x00" * 10 + b"\xff\xff" + bytes([127, 0, 0, 1])
    for i, (payload, sport, dport) in enumerate([(announcement, 5353, 5353), (two_questions, 5353, 5353),
                                                  (two_questions, 40000, 5353), (announcement, 53, 40000),
                                                  (two_questions, 40000, 53)]):
        parser.core.add_message(payload, 0.0, i + 1, 4, loopback, loopback, sport, dport, 17)
    records = list(parser.take().records())
    assert [r["anomalies"] for r in records] == [[], [], [], ["qdcount_not_one"], ["qdcount_not_one"]]
    assert records[0]["answers"][0]["class"] == "IN" and records[0]["answers"][0]["cache_flush"] is True
    assert records[3]["answers"][0]["class"] == "CLASS32769" and "cache_flush" not in records[3]["answers"][0]


def test_messages_where_no_question_belongs_are_not_anomalies(make_parser):
    """RFC 9619: one question, except where none belongs. A question-less standard query
    or plain answer is still an anomaly, and so are two questions anywhere off mDNS."""
    opt = b"\0\0\x29\x10\0\0\0\0\0"
    cookie_opt = opt + b"\0\x0c" + struct.pack("!HH", 10, 8) + b"\x01" * 8     # client cookie only
    cases = [
        ("server cookie query (RFC 7873 5.4)", header(qd=0, ar=1) + cookie_opt, []),
        ("its answer", header(flags=0x8180, qd=0, ar=1) + cookie_opt, []),
        ("inverse query (RFC 1035 6.4)", header(flags=0x0800, qd=0, an=1) + rr(1, b"\xc0\x00\x02\x01", name=b"\0"),
         []),
        ("DSO keepalive (RFC 8490)", header(flags=0x3000, qd=0), []),
        ("FORMERR without the question", header(flags=0x8181, qd=0), []),
        ("NOTIMP without the question", header(flags=0x8184, qd=0), []),
        ("query without a question", header(qd=0), ["qdcount_not_one"]),
        ("EDNS query without cookie or question", header(qd=0, ar=1) + opt + b"\0\0", ["qdcount_not_one"]),
        ("NOERROR answer without the question", header(flags=0x8180, qd=0), ["qdcount_not_one"]),
        ("FORMERR with two questions", header(flags=0x8181, qd=2) + question() + question(), ["qdcount_not_one"]),
    ]
    for what, payload, expected in cases:
        _, r = one(make_parser, payload)
        assert r["anomalies"] == expected, (what, r["anomalies"])


def test_unknown_type_in_rfc3597_form(make_parser):
    msg = header(flags=0x8180, an=1) + question() + rr(65534, b"\x01\xab")
    _, r = one(make_parser, msg)
    assert r["answers"][0]["data"] == "\\# 2 01AB" and r["answers"][0]["type_name"] == "TYPE65534"


# One regression per anomaly, named for the edge case.

@pytest.mark.parametrize("case, payload, expected", [
    ("pointer_to_itself", header() + b"\xc0\x0c" + b"\0\x01\0\x01", "bad_pointer"),
    ("forward_pointer", header(qd=2) + b"\xc0\x11\0\x01\0\x01" + question(), "bad_pointer"),
    ("reserved_label_type", header() + b"\x41abc\0\0\x01\0\x01", "label_too_long"),
    ("name_over_255", header() + b"\x3f" + b"a" * 63 + b"\x3f" + b"b" * 63 + b"\x3f" + b"c" * 63
     + b"\x3f" + b"d" * 63 + b"\0\0\x01\0\x01", "name_too_long"),
    ("short_header", b"\x12\x34\x01", "header_too_short"),
    ("label_past_end", header() + b"\x03a", "truncated"),
    ("rdlength_past_end", header(flags=0x8180, an=1) + question() + b"\xc0\x0c\0\x01\0\x01\0\0\0\x3c\0\x08\x01", "truncated"),
    ("a_record_of_5_bytes", header(flags=0x8180, an=1) + question() + rr(1, b"\x01\x02\x03\x04\x05"), "rdlength_mismatch"),
    ("bytes_after_last_record", header() + question() + b"junk", "trailing_bytes"),
    ("two_questions", header(qd=2) + question() + question(), "qdcount_not_one"),
    ("opcode_9", header(flags=0x4800), "invalid_opcode"),
    ("z_bit", header(flags=0x0140) + question(), "z_bit_set"),
    ("edns_option_overruns", header(ar=1) + question() + b"\0\0\x29\x10\0\0\0\0\0\0\x06\0\x0a\0\x20ab", "edns_bad_option"),
    ("two_opt_records", header(ar=2) + question() + (b"\0\0\x29\x10\0\0\0\0\0\0\0") * 2, "edns_multiple_opt"),
    ("opt_in_answer", header(flags=0x8180, an=1) + question() + b"\0\0\x29\x10\0\0\0\0\0\0\0", "edns_misplaced_opt"),
    ("svcb_alpn_overruns", header(flags=0x8180, an=1) + question()
     + rr(65, b"\0\x01\0" + struct.pack("!HH", 1, 3) + b"\x05h2"), "bad_rdata"),
    ("control_bytes_in_qname", header() + b"\x04a\x01\x02b\x03com\0\0\x01\0\x01", "qname_non_printable"),
    ("query_with_answer", header(an=1) + question() + rr(1, b"\x0a\0\0\x01"), "answer_in_query"),
    ("ttl_above_2_31", header(flags=0x8180, an=1) + question() + rr(1, b"\x0a\0\0\x01", ttl=0xFFFFFFFF), "ttl_high_bit"),
])
def test_anomaly(make_parser, case, payload, expected):
    _, r = one(make_parser, payload)
    assert expected in r["anomalies"], (case, r["anomalies"])


def test_clean_message_has_no_anomaly(make_parser):
    _, r = one(make_parser, dnslib.DNSRecord.question("example.org").pack())
    assert r["anomalies"] == []


def test_pointer_limit_with_lowered_limit(make_parser):
    # Seven owner names, each pointing at the previous one: a chain six deep (Zeek's case).
    from conftest import capture
    path = str(capture("zeek-malformed-compression-chain-depth-crafted.pcap"))
    default = next(make_parser().parse_file(path)).record(0)
    assert "pointer_limit" not in default["anomalies"] and len(default["answers"]) == 7
    lowered = next(make_parser(limits=Limits(max_pointer_hops=5)).parse_file(path)).record(0)
    assert "pointer_limit" in lowered["anomalies"]


def test_too_many_questions_with_lowered_limit(make_parser):
    msg = header(qd=10) + question() * 10
    _, r = one(make_parser, msg)
    assert "too_many_records" not in r["anomalies"]
    _, r = one(make_parser, msg, limits=Limits(max_questions=5))
    assert "too_many_records" in r["anomalies"]


def test_too_many_records_with_lowered_limit(make_parser):
    msg = header(flags=0x8180, an=4) + question() + rr(1, b"\x0a\0\0\x01") * 4
    _, r = one(make_parser, msg, limits=Limits(max_records=3))
    assert "too_many_records" in r["anomalies"] and len(r["answers"]) == 3


def test_anomaly_registry_is_stable_and_documented():
    names = [n for n, _ in schema.ANOMALIES]
    assert len(names) == len(set(names)) and len(names) <= 64
    assert all(doc for _, doc in schema.ANOMALIES)
    # Bits are stored; the first ones must never move.
    assert names[:4] == ["truncated", "bad_pointer", "label_too_long", "name_too_long"]


def test_dtypes_match_compiled_rows():
    from sensor import _core
    assert schema.MESSAGE_DTYPE.itemsize == _core.MESSAGE_ROW_SIZE
    assert schema.RR_DTYPE.itemsize == _core.RR_ROW_SIZE


@pytest.mark.parametrize("name", [
    "www.example.com", "a.b.example.co.uk", "x.www.ck", "www.ck", "foo.bar.blogspot.com",
    "deep.x.y.z.kawasaki.jp", "city.kawasaki.jp", "a.b.c.d.e.f.g.h.i.example.com.au",
    "1.2.3.4.in-addr.arpa", "s3.amazonaws.com", "bucket.s3.eu-west-1.amazonaws.com",
    "xn--80ak6aa92e.com", "test.xn--p1ai", "localhost", "com",
])
def test_registered_domain_agrees_with_tldextract(make_parser, name):
    import tldextract
    extract = tldextract.TLDExtract(suffix_list_urls=(), include_psl_private_domains=True)
    expected = extract(name).top_domain_under_public_suffix or name
    _, r = one(make_parser, dnslib.DNSRecord(dnslib.DNSHeader(id=1), q=dnslib.DNSQuestion(name)).pack())
    assert r["features"]["registered_domain"] == expected


def test_registered_domain_for_every_suffix_rule():
    """Names under every rule, wildcard and exception of the list: the compiled walk over
    the reversed-suffix table agrees with the rule sets themselves."""
    from sensor.parse import Parser
    from sensor.parse.psl import load_rules

    rules = load_rules()
    names = []
    for suffix in sorted(rules.rules | rules.wildcards | rules.exceptions):
        names += [suffix, "a." + suffix, "b.a." + suffix, "x.y.z." + suffix]
    batch = Parser().parse_payloads(
        dnslib.DNSRecord.question(name).pack() for name in names)
    assert len(batch) == len(names)
    for name, m in zip(names, batch.messages):
        labels = name.split(".")
        expected = ".".join(labels[rules.registered_label(labels):])
        assert name[int(m["regdom_off"]):] == expected, name


@pytest.mark.parametrize("module", ["sensor._core", "sensor.capture._frames"])
def test_the_compiled_module_stub_parses_and_declares_every_public_name(module):
    import ast
    import importlib

    from conftest import REPO
    compiled = importlib.import_module(module)
    tree = ast.parse((REPO / (module.replace(".", "/") + ".pyi")).read_text())
    declared = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    declared |= {t.target.id for t in tree.body if isinstance(t, ast.AnnAssign)}
    public = {name for name in dir(compiled) if not name.startswith("_") and name not in ("np",)}
    assert public and public - declared == set()


def test_compressed_owner_names_share_the_text_they_point_to():
    """An owner name compressed to a name its message already decoded takes that
    name's text span instead of a copy; its text is still the full name."""
    from sensor.parse import Parser
    name = b"\x03www\x07example\x03com\x00"
    payload = (header(flags=0x8180, an=3) + question(name)
               + rr(1, bytes([192, 0, 2, 1]))                     # owner: the question
               + rr(1, bytes([192, 0, 2, 2]), name=b"\xc0\x10")   # owner: example.com inside it
               + rr(1, bytes([192, 0, 2, 3]), name=b"\x03ftp\xc0\x10"))  # a new name: its own text
    batch = Parser(backend="compiled", ports=(53,)).parse_payloads([payload])
    m, r = batch.messages[0], batch.rrs
    assert [a["name"] for a in batch.record(0)["answers"]] == ["www.example.com", "example.com",
                                                              "ftp.example.com"]
    assert (r["name_off"][0], r["name_len"][0]) == (m["qname_off"], m["qname_len"])
    assert (r["name_off"][1], r["name_len"][1]) == (m["qname_off"] + 4, 11)
    assert r["name_off"][2] > r["rdata_off"][1]


def test_record_table_starts_as_large_as_the_last_batch_needed():
    """Responses carrying more than two records a message outgrow a table sized by the
    message count: the next batch starts with room for what the last one held, so it is
    not copied as it grows, and its records are the same."""
    from sensor.parse import Parser
    answers = b"".join(rr(1, bytes([192, 0, 2, i])) for i in range(6))
    payload = header(flags=0x8180, an=6) + question() + answers
    parser = Parser(backend="compiled", ports=(53,))
    first_capacity = len(parser.core.rrs_array)
    messages = first_capacity // 3             # 6 records each: three times the start
    first = parser.parse_payloads([payload] * messages)
    assert len(first.rrs) == 6 * messages > first_capacity
    assert len(parser.core.rrs_array) >= len(first.rrs)
    again = parser.parse_payloads([payload] * messages)
    assert len(parser.core.rrs_array) >= len(again.rrs)
    assert np.array_equal(again.rrs, first.rrs) and again.arena == first.arena


def test_pointer_into_rdata_that_became_hex_decodes_the_name_afresh(make_parser):
    """A CNAME whose target name is followed by junk inside its rdlength is kept as
    hex. A later owner name pointing at that target must still read the name there,
    not the hex text written over it (found by the fuzz harness)."""
    target = b"\x09teams-afd\x00"
    payload = (header(flags=0x8180, an=2) + question()
               + rr(5, target + b"\x00junk")                    # rdata at offset 45
               + rr(1, bytes([192, 0, 2, 1]), name=b"\xc0\x2d"))
    _, r = one(make_parser, payload)
    first, second = r["answers"]
    assert first["data"].startswith("\\# 16 ") and "rdlength_mismatch" in r["anomalies"]
    assert second["name"] == "teams-afd"
    assert second["data"] == "192.0.2.1"


def test_question_name_cache_gives_what_a_fresh_decode_gives():
    """The compiled core reuses a question name it decoded before (by its exact
    wire bytes); every field of every message must be what decoding it afresh gives."""
    from sensor.parse import Parser
    rng = np.random.default_rng(7)
    names = [b"\x03www\x07example\x03com\x00", b"\x03WWW\x07Example\x03COM\x00",
             b"\x01a\x01b\x01c\x01d\x01e\x01f\x01g\x01h\x07example\x02co\x02uk\x00",
             b"\x3f" + b"q" * 63 + b"\x07example\x03com\x00",            # past the cached length
             b"\x05a b\x01c\x07example\x03org\x00",                      # escaped in text
             b"\x04ab\x01c\x07example\x03org\x00",                       # \001: non-printable
             b"\x00"]
    # Enough distinct names that slots are taken over by others and asked for again.
    alphabet = np.frombuffer(b"abcdefghijklmnopqrstuvwxyzABC0123456789-", dtype=np.uint8)
    for _ in range(6000):
        label = rng.choice(alphabet, int(rng.integers(1, 20))).tobytes()
        parent = b"\x07example\x03net\x00" if rng.random() < 0.5 else b"\x02co\x02uk\x00"
        names.append(bytes([len(label)]) + label + b"\x03cdn" + parent)
    payloads = []
    for i, name in enumerate(names):
        payloads.append(header(id_=i & 0xFFFF) + question(name))
        answers = [rr(1, bytes([192, 0, 2, i & 0xFF]))]
        if name[0] and name[name[0] + 1]:      # a CNAME owned by the name's parent, through a pointer
            answers.append(rr(5, b"\xc0\x0c", name=bytes([0xC0, 12 + name[0] + 1])))
        payloads.append(header(id_=i & 0xFFFF, flags=0x8180, an=len(answers))
                        + question(name) + b"".join(answers))
    order = rng.permutation(len(payloads))
    payloads = [payloads[i] for i in order] * 2
    parser = Parser(backend="compiled", ports=(53,))
    batch = parser.parse_payloads(payloads)
    assert parser.core.qname_cache_hits > len(payloads) // 4
    compare = [f for f in batch.messages.dtype.names if f not in ("qname_off", "rr_start", "frame")]
    for i in range(0, len(payloads), 7):
        alone = Parser(backend="compiled", ports=(53,)).parse_payloads([payloads[i]])
        assert {**batch.record(i), "frame": 0} == {**alone.record(0), "frame": 0}, i
        for field in compare:
            assert np.array_equal(batch.messages[field][i], alone.messages[field][0]), (i, field)


def test_question_names_of_one_cache_set_share_it_and_the_least_recent_goes():
    """Two names that hash to one set of the question-name cache both stay (each asked
    again is found), and a third drives out the one of the two used less recently."""
    from sensor import _core
    from sensor.parse import Parser
    by_set: dict[int, list[bytes]] = {}
    for i in range(200_000):
        wire = b"\x01a" + bytes([len(str(i))]) + str(i).encode() + b"\x07example\x03com\x00"
        h = int(_core.span_hashes(wire, np.zeros(1, np.uint32), np.array([len(wire)], np.uint32))[0])
        same = by_set.setdefault(h % _core.QNAME_CACHE_SETS, [])
        same.append(wire)
        if len(same) == 3:
            break
    a, b, c = same
    parser = Parser(backend="compiled", ports=(53,))

    def hits(*names: bytes) -> list[bool]:
        """Whether each name, asked in turn, was found in the cache."""
        found = []
        for name in names:
            before = parser.core.qname_cache_hits
            parser.parse_payloads([header() + question(name)])
            found.append(parser.core.qname_cache_hits == before + 1)
        return found

    assert hits(a, b, a, b) == [False, False, True, True]      # a slot each
    assert hits(a, c) == [True, False]           # c takes b's slot: b was used less recently
    # b takes c's slot (a was just used), then c takes a's, and b is still there
    assert hits(a, b, c, b) == [True, False, False, True]


def test_record_names_in_presentation_form_around_every_word_boundary():
    """Record names are written eight plain bytes at a time: a byte to escape or a capital
    at any place in a label of any length must come out as the byte-by-byte decode writes it."""
    from sensor.parse import Parser
    specials = [0x00, 0x20, 0x21, ord("."), ord("\\"), 0x7E, 0x7F, 0x80, 0xFF,
                ord("A"), ord("Z"), ord("@"), ord("["), ord("`"), ord("{"), ord("-")]
    payloads, labels = [], []
    for length in range(1, 26):
        for at in range(length):
            for ch in specials:
                label = bytearray(b"abcdefghijklmnopqrstuvwxyz"[:length])
                label[at] = ch
                labels.append(bytes(label))
    for i, label in enumerate(labels):
        owner = bytes([len(label)]) + label + b"\x07example\x03com\x00"
        target = bytes([len(label)]) + label.upper() + b"\x03cdn\xc0\x0c"
        payloads.append(header(id_=i & 0xFFFF, flags=0x8180, an=1)
                        + question() + rr(5, target, name=owner))
    texts = {}
    for backend in ("compiled", "twin"):
        batch = Parser(backend=backend, ports=(53,)).parse_payloads(payloads)
        texts[backend] = [(a["name"], a["data"]) for i in range(len(batch))
                          for a in batch.record(i)["answers"]]
    assert len(texts["compiled"]) == len(labels)
    assert texts["compiled"] == texts["twin"]
    by_label = dict(zip(labels, texts["compiled"]))
    assert by_label[b"ABCDEFGHIJ"[:1] + b"bcdefghij"] == ("abcdefghij.example.com", "abcdefghij.cdn.www.example.com")
    assert by_label[b"abcdefgh.jk"][0] == "abcdefgh\\.jk.example.com"
    assert by_label[b"abcdefghi\x7fk"][0] == "abcdefghi\\127k.example.com"


def test_span_hashes_read_only_their_span():
    """A span's hash depends on its bytes and length alone, whatever lies around it, and
    any one byte changed changes it (the sensor groups names and rdata by it)."""
    from sensor import _core
    rng = np.random.default_rng(3)
    for length in range(0, 41):
        body = rng.integers(0, 256, length, dtype=np.uint8).tobytes()
        arena = b"\x00" * 9 + body + b"\xff" * 9 + body + b"\x00" * 3
        offsets = np.array([9, 18 + length], dtype=np.uint32)
        lengths = np.array([length, length], dtype=np.uint32)
        same = _core.span_hashes(arena, offsets, lengths)
        assert same[0] == same[1], length
        changed = []
        for at in range(length):
            flipped = bytearray(body)
            flipped[at] ^= 0x20
            changed.append(bytes(flipped))
        if changed:
            blob = b"".join(changed)
            hashes = _core.span_hashes(blob, np.arange(0, len(blob), length, dtype=np.uint32),
                                       np.full(len(changed), length, dtype=np.uint32))
            assert same[0] not in hashes.tolist(), length
        shorter = _core.span_hashes(arena, offsets[:1], np.array([max(length - 1, 0)], dtype=np.uint32))
        assert length == 0 or shorter[0] != same[0], length


HEAP_CHURN = """
import resource, sys
import numpy as np
sys.path.insert(0, {repo!r})
from sensor.parse import Parser
if {tuned}:
    Parser()

def batch():        # one batch's blocks (frame blob, columns, arena) held together, then freed
    held = [np.ones(mib << 20, np.uint8) for mib in (1, 2, 5, 10, 5)]
    del held

batch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    batch()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 20)
"""


@pytest.mark.parametrize("tuned", [False, True])
def test_a_parser_keeps_batch_memory_on_the_heap(tuned):
    """A process with a Parser reuses a freed batch's memory for the next batch instead
    of having the kernel map and zero-fill it again (counted as page faults); without
    one, glibc's starting thresholds fault on every batch."""
    import subprocess
    import sys
    from pathlib import Path
    repo = str(Path(__file__).resolve().parent.parent)
    out = subprocess.run([sys.executable, "-c", HEAP_CHURN.format(repo=repo, tuned=tuned)],
                         capture_output=True, text=True, check=True).stdout
    faults_per_batch = int(out)
    if tuned:
        assert faults_per_batch < 50
    else:
        assert faults_per_batch > 1000       # the pattern is one the default policy pays for


def test_the_collector_is_paused_for_a_block_and_on_again_after_it():
    """gc_paused() turns the cyclic collector off for its block, nested or not, and on again
    after it, whatever ended the block; a collector already off stays off."""
    import gc
    from sensor.heap import gc_paused
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(ZeroDivisionError), gc_paused():
        1 / 0
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def _doubled(frames: list[tuple[float, bytes]], lag_s: float = 3e-6) -> list[tuple[float, bytes]]:
    """What a span port copying both directions of a link delivers: each frame twice."""
    return [copy for ts, frame in frames for copy in ((ts, frame), (ts + lag_s, frame))]


def test_span_port_copies_are_dropped_once_each(backend, tmp_path):
    def parsed(path, window_s=0.0):
        return parse_file(str(path), backend=backend, ports=TEST_PORTS, dedup_window_s=window_s)

    conv = Conversation()
    for i in range(20):
        conv.exchange("192.0.2.10", "192.0.2.53", f"n{i}.example", f"n{i}.example 60 A 192.0.2.{i}", txid=i)
    plain = write_pcap(tmp_path / "plain.pcap", conv.frames)
    doubled = write_pcap(tmp_path / "doubled.pcap", _doubled(conv.frames))
    once = parsed(plain)
    kept = parsed(doubled)
    assert len(kept) == 80 and kept.counters["duplicate_frames"] == 0
    deduped = parsed(doubled, 0.001)
    assert deduped.counters["duplicate_frames"] == 40
    assert list(deduped.records()) == [{**r, "frame": r["frame"] * 2 - 1} for r in once.records()]
    # A stub's retransmission a second later is traffic; a third copy inside the window
    # is a frame of its own (each frame drops at most one copy).
    q = query("again.example", txid=7).pack()
    frame = udp_frame(q, "192.0.2.10", "192.0.2.53", 40000, 53)
    again = write_pcap(tmp_path / "again.pcap", [(100.0, frame), (101.0, frame), (101.0001, frame),
                                                  (101.0002, frame), (101.0003, frame)])
    batch = parsed(again, 0.001)
    assert len(batch) == 3 and batch.counters["duplicate_frames"] == 2
    # the same query from another port, and to another server, are not copies
    other = write_pcap(tmp_path / "other.pcap", [(1.0, frame),
                                                  (1.0, udp_frame(q, "192.0.2.10", "192.0.2.53", 40001, 53)),
                                                  (1.0, udp_frame(q, "192.0.2.10", "192.0.2.54", 40000, 53))])
    assert len(parsed(other, 0.001)) == 3

"""Every public capture decodes to the messages tshark sees, with the same key fields.

Deliberate differences, each narrow:
- DNS over HTTPS bodies (HTTP/2) are decoded by tshark, not by the sensor: those
  captures must yield no message from us.
- Where we flag a name as broken (forward or looping pointer, over-long name,
  reserved label type) tshark prints a placeholder or follows the forward
  pointer; the qname is not compared for those messages.
- rdata we could not decode (shown as RFC 3597 ``\\# ...``) is left out of the
  A/AAAA/CNAME comparison; where tshark flags the frame malformed it stops
  early, so its lists need only be contained in ours.
"""
from __future__ import annotations

import ipaddress
import re

import pytest

from conftest import TEST_PORTS, capture, shared_captures
from sensor import schema
from sensor.parse import parse_file
from tshark_ref import TSHARK, tshark_messages

DOH_CAPTURES = {"suricata-doh-http2-cleartext-get.pcap", "suricata-doh-http2-cleartext-post.pcap"}
NAME_BROKEN = {"bad_pointer", "name_too_long", "label_too_long", "pointer_limit"}

pytestmark = [pytest.mark.tshark, pytest.mark.captures,
              pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")]


def _unescape(text: str) -> bytes:
    """Presentation escapes (\\DDD, \\X) back to bytes; tshark and we both use them."""
    return re.sub(rb"\\(\d{3}|.)", lambda m: bytes([int(m.group(1))]) if m.group(1).isdigit()
                  else m.group(1), text.encode())


def _printable(raw: bytes) -> str:
    return "".join(chr(b) for b in raw if 32 < b < 127).lower()


def _same_name(tshark_name: str, ours: str | None) -> bool:
    if tshark_name == "<Root>":
        return ours in (".", None)
    return _printable(_unescape(tshark_name)) == _printable(_unescape(ours or ""))


def _rdata(record: dict, rtype: int) -> list[str]:
    return [rr["data"] for s in ("answers", "authority", "additional") for rr in record[s]
            if rr["type"] == rtype and not rr["data"].startswith("\\#")]


def _compare_list(ref: list, ours: list, malformed: bool) -> bool:
    if malformed:
        return all(ref.count(x) <= ours.count(x) for x in ref)
    return sorted(ref) == sorted(ours)


@pytest.mark.parametrize("name", shared_captures())
def test_capture_matches_tshark(name):
    path = str(capture(name))
    ref = tshark_messages(path)
    ours = list(parse_file(path, ports=TEST_PORTS).records())
    if name in DOH_CAPTURES:
        assert ref and not ours
        return
    assert [m.frame for m in ref] == [r["frame"] for r in ours], "messages differ in number or frame"
    for r, o in zip(ref, ours):
        where = f"frame {r.frame}"
        assert r.id is None or r.id == o["id"], where
        assert r.qr is None or r.qr == int(o["qr"]), where
        assert r.qtype is None or r.qtype == o["qtype"], where
        assert r.rcode is None or r.rcode == o["rcode"] & 15, where
        if None not in r.counts:
            assert r.counts == [o["qdcount"], o["ancount"], o["nscount"], o["arcount"]], where
        if r.qname is not None and not NAME_BROKEN & set(o["anomalies"]):
            assert _same_name(r.qname, o["qname"]), (where, r.qname, o["qname"])
        assert _compare_list(r.a, _rdata(o, 1), r.malformed), (where, r.a, _rdata(o, 1))
        assert _compare_list([ipaddress.ip_address(x) for x in r.aaaa],
                             [ipaddress.ip_address(x) for x in _rdata(o, 28)], r.malformed), where
        if not NAME_BROKEN & set(o["anomalies"]):
            ref_cnames = [_printable(_unescape(x)) if x != "<Root>" else "" for x in r.cname]
            our_cnames = [_printable(_unescape(x)) if x != "." else "" for x in _rdata(o, 5)]
            assert _compare_list(ref_cnames, our_cnames, r.malformed), (where, r.cname, _rdata(o, 5))
        assert _compare_list(r.tsig, [_tsig_fields(x) for x in _rdata(o, 250)], r.malformed), \
            (where, r.tsig, _rdata(o, 250))


def _tsig_fields(data: str) -> tuple[str, int, int, int, int]:
    """Our TSIG text 'algorithm time fudge macsize [mac] original-id error otherlen [other]'
    reduced to what tshark shows."""
    parts = data.split()
    mac_size = int(parts[3])
    rest = parts[5:] if mac_size else parts[4:]
    errors = {name: code for code, name in schema.TSIG_ERROR_NAMES.items()}
    error = errors[rest[1]] if rest[1] in errors else int(rest[1])
    return (parts[0], int(parts[2]), mac_size, int(rest[0]), error)

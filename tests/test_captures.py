"""What the captures in tests/data (and the shared corpus) must parse to."""
from __future__ import annotations

from collections import Counter

import pytest

from conftest import DATA, TEST_PORTS, capture, shared_captures
from sensor.parse import parse_file


def parse(name: str, backend: str):
    return parse_file(str(capture(name)), backend=backend, ports=(53, 5353, 8053, 1053))


@pytest.mark.parametrize("name, anomaly", [
    ("zeek-malformed-invalid-names-pointer-loop.pcap", "bad_pointer"),
    ("suricata-forward-compression-pointer-qname.pcap", "bad_pointer"),
    ("tcpdump-malformed-forward-pointer-cve-2017-12995.pcap", "bad_pointer"),
    ("tcpdump-malformed-forward-pointer-cve-2017-12995.pcap", "too_many_records"),
    ("suricata-malformed-tcp1053-1500-questions-overlong-qnames.pcap", "name_too_long"),
    ("suricata-malformed-tcp1053-1500-questions-overlong-qnames.pcap", "too_many_records"),
    ("zeek-malformed-edns-option-bad-length.pcap", "edns_bad_option"),
    ("zeek-malformed-https-alpn-len-too-long-crafted.pcap", "bad_rdata"),
    ("suricata-header-z-bit-set.pcap", "z_bit_set"),
    ("suricata-invalid-opcode-9.pcap", "invalid_opcode"),
    ("zeek-qdcount-10-questions-crafted.pcap", "qdcount_not_one"),
    ("tcpdump-udp-snaplen-truncated-response.pcap", "ip_truncated"),
    ("suricata-tcp-gap-missing-segment.pcap", "tcp_gap"),
    ("dnscap-tcp-no-syn.pcap", "tcp_midstream"),
])
def test_malformed_capture_yields_anomaly(backend, name, anomaly):
    batch = parse(name, backend)
    assert anomaly in batch.anomaly_counts(), batch.anomaly_counts()


def test_63k_bad_label_packet_parses_without_exception(backend):
    batch = parse("tcpdump-malformed-bad-label-type-63k.pcap", backend)
    assert len(batch) == 1 and "too_many_records" in batch.record(0)["anomalies"]


def test_zlip_pointer_loop_in_zero_length_udp_is_not_a_message(backend):
    # The UDP length says 8: no DNS payload, as tshark and tcpdump see it.
    batch = parse("tcpdump-malformed-zlip1-pointer-self-loop.pcap", backend)
    assert len(batch) == 0 and batch.counters["empty_payload"] == 1


@pytest.mark.parametrize("name, messages, transport", [
    ("suricata-tcp-pipelined-20-query-response-pairs.pcap", 40, "tcp"),
    ("dnscap-tcp-msgs-straddle-segments.pcap", 3, "tcp"),
    ("gdc-ipv4-fragmented-response-dnskey.pcap", 2, "udp"),
    ("gdc-ipv6-fragmented-response-aaaa.pcap", 2, "udp"),
    ("dnscap-vlan-8021q-tagged.pcap", 82, "udp"),
    ("dnscap-linux-sll2-nxdomain-dnssec.pcap", 2, "udp"),
])
def test_reassembly_and_link_types(backend, name, messages, transport):
    batch = parse(name, backend)
    assert len(batch) == messages
    assert {r["transport"] for r in batch.records()} == {transport}
    frames = batch.messages["frame"]
    assert (frames[1:] >= frames[:-1]).all(), "messages in frame order"


def test_pipelined_tcp_queries_in_order(backend):
    batch = parse("suricata-tcp-pipelined-20-query-response-pairs.pcap", backend)
    queries = [r["qname"] for r in batch.records() if not r["qr"]]
    assert queries == [f"{i}.google.com" for i in range(20)]


def test_fragmented_dnskey_response_decodes_fully(backend):
    batch = parse("gdc-ipv4-fragmented-response-dnskey.pcap", backend)
    response = next(r for r in batch.records() if r["qr"])
    assert response["anomalies"] == []
    assert Counter(a["type_name"] for a in response["answers"])["DNSKEY"] >= 2


@pytest.mark.parametrize("name", sorted({p.name for p in DATA.glob("*.pcap*")} | set(shared_captures())))
def test_backends_agree_on_every_capture(name):
    """The compiled core and the twin, record for record, on every capture in tests/data
    and the shared corpus (its tunnels, malformed messages, TSIG, LOC, updates, mDNS, ...)."""
    path = capture(name)
    a = parse_file(str(path), backend="compiled", ports=TEST_PORTS)
    b = parse_file(str(path), backend="twin", ports=TEST_PORTS)
    assert list(a.records()) == list(b.records())
    assert a.counters == b.counters

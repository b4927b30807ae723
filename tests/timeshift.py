"""Captures moved in time: real frames re-stamped minute after minute to build days of
history, and responses rewritten as SERVFAIL for an outage (the replay test of the series)."""
from __future__ import annotations

import ipaddress
import struct
import sys
from pathlib import Path

import dnslib

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from pcapwrite import PCAP_HEADER, frame  # noqa: E402

ETHERNET_HEADER = 14


def read_pcap(path: Path) -> list[tuple[float, bytes]]:
    """Frames of a classic little-endian Ethernet pcap (the test's own base captures)."""
    data = path.read_bytes()
    magic, _, _, _, _, _, linktype = struct.unpack_from("<IHHiIII", data)
    assert magic == 0xA1B2C3D4 and linktype == 1, path
    out, pos = [], 24
    while pos + 16 <= len(data):
        sec, usec, incl, _ = struct.unpack_from("<IIII", data, pos)
        out.append((sec + usec / 1e6, data[pos + 16:pos + 16 + incl]))
        pos += 16 + incl
    return out


def is_udp_dns(raw: bytes) -> bool:
    """Ethernet, IPv4, UDP, port 53 on one side."""
    if len(raw) < ETHERNET_HEADER + 28 or raw[12:14] != b"\x08\x00" or raw[ETHERNET_HEADER + 9] != 17:
        return False
    ihl = (raw[ETHERNET_HEADER] & 0x0F) * 4
    sport, dport = struct.unpack_from("!HH", raw, ETHERNET_HEADER + ihl)
    return 53 in (sport, dport)


def dns_payload(raw: bytes) -> tuple[bytes, str, str, int, int]:
    """(DNS payload, source, destination, source port, destination port) of an Ethernet/IPv4/UDP frame."""
    ip = raw[ETHERNET_HEADER:]
    ihl = (ip[0] & 0x0F) * 4
    src, dst = str(ipaddress.IPv4Address(ip[12:16])), str(ipaddress.IPv4Address(ip[16:20]))
    sport, dport, length = struct.unpack_from("!HHH", ip, ihl)
    return ip[ihl + 8:ihl + length], src, dst, sport, dport


def as_servfail(raw: bytes) -> bytes:
    """A response frame rewritten as the resolver's SERVFAIL (question kept, records gone);
    queries pass unchanged."""
    payload, src, dst, sport, dport = dns_payload(raw)
    msg = dnslib.DNSRecord.parse(payload)
    if not msg.header.qr:
        return raw
    msg.rr, msg.auth, msg.ar = [], [], []
    msg.header.rcode = 2
    return frame(msg.pack(), src, dst, sport, dport)


def write_pcap(path: Path, frames: list[tuple[float, bytes]]) -> Path:
    frames = sorted(frames, key=lambda f: f[0])
    with open(path, "wb") as f:
        f.write(PCAP_HEADER)
        for t, data in frames:
            f.write(struct.pack("<IIII", int(t), int(round(t % 1 * 1e6)) % 1_000_000, len(data), len(data)))
            f.write(data)
    return path

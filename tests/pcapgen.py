"""Small capture writer for tests: Ethernet/IPv4/UDP frames around DNS payloads."""
from __future__ import annotations

import ipaddress
import struct
from pathlib import Path

import dnslib

PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)


def udp_frame(payload: bytes, src: str, dst: str, sport: int, dport: int) -> bytes:
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    if s.version == 6:
        ip = struct.pack("!IHBB", 6 << 28, len(udp), 17, 64) + s.packed + d.packed
        ethertype = 0x86DD
    else:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0, s.packed, d.packed)
        ethertype = 0x0800
    return b"\x02\0\0\0\0\x01\x02\0\0\0\0\x02" + struct.pack("!H", ethertype) + ip + udp


ETHER_HEADER = b"\x02\0\0\0\0\x01\x02\0\0\0\0\x02\x08\x00"


def ipv4_fragments(payload: bytes, src: str, dst: str, sport: int, dport: int,
                   size: int = 64, ident: int = 1) -> list[bytes]:
    """A UDP datagram cut into IPv4 fragments carrying `size` bytes (a multiple of 8) each."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    s, d = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
    frames = []
    for offset in range(0, len(udp), size):
        piece = udp[offset:offset + size]
        more = 0x2000 if offset + size < len(udp) else 0
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(piece), ident, more | offset // 8, 64, 17, 0, s, d)
        frames.append(ETHER_HEADER + ip + piece)
    return frames


TCP_FIN, TCP_SYN, TCP_PSH_ACK = 0x01, 0x02, 0x18


def tcp_frame(data: bytes, src: str, dst: str, sport: int, dport: int, seq: int,
              flags: int = TCP_PSH_ACK) -> bytes:
    """One IPv4 TCP segment."""
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, flags, 65535, 0, 0) + data
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0,
                     ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed)
    return ETHER_HEADER + ip + tcp


def write_pcap(path: Path, frames: list[tuple[float, bytes]]) -> Path:
    with open(path, "wb") as f:
        f.write(PCAP_HEADER)
        for ts, frame in frames:
            f.write(struct.pack("<IIII", int(ts), round(ts % 1 * 1e6), len(frame), len(frame)))
            f.write(frame)
    return path


def query(name: str, qtype: str = "A", txid: int = 1) -> dnslib.DNSRecord:
    return dnslib.DNSRecord(dnslib.DNSHeader(id=txid, rd=1), q=dnslib.DNSQuestion(name, getattr(dnslib.QTYPE, qtype)))


def answer(q: dnslib.DNSRecord, *records: str, rcode: int = 0, txid: int | None = None) -> bytes:
    r = q.reply()
    r.header.rcode = rcode
    for rr in records:
        r.add_answer(*dnslib.RR.fromZone(rr))
    if txid is not None:
        r.header.id = txid
    return r.pack()


class Conversation:
    """Frames between clients and servers, with timestamps that advance."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.ts = start
        self.frames: list[tuple[float, bytes]] = []

    def send(self, payload: bytes, src: str, dst: str, sport: int, dport: int, after: float = 0.001) -> None:
        self.ts += after
        self.frames.append((self.ts, udp_frame(payload, src, dst, sport, dport)))

    def exchange(self, client: str, server: str, name: str, *records: str, qtype: str = "A", txid: int = 1,
                 sport: int = 40000, rcode: int = 0, rtt: float = 0.01) -> None:
        q = query(name, qtype, txid)
        self.send(q.pack(), client, server, sport, 53)
        self.send(answer(q, *records, rcode=rcode), server, client, 53, sport, after=rtt)

    def write(self, path: Path) -> Path:
        return write_pcap(path, self.frames)

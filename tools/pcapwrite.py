"""Writing small deterministic captures (Ethernet, IPv4, UDP) for the demo and rule samples."""
from __future__ import annotations

import ipaddress
import struct
from pathlib import Path

PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
ETHERNET = b"\x02\0\0\0\0\x01\x02\0\0\0\0\x02\x08\x00"


def frame(payload: bytes, src: str, dst: str, sport: int, dport: int, ttl: int = 64) -> bytes:
    s, d = ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, ttl, 17, 0, s, d)
    return ETHERNET + ip + udp


def write(path: Path, frames: list[tuple[float, bytes]]) -> None:
    """Frames sorted by time into a classic pcap file (microsecond timestamps)."""
    frames.sort(key=lambda f: f[0])
    with open(path, "wb") as f:
        f.write(PCAP_HEADER)
        for t, data in frames:
            f.write(struct.pack("<IIII", int(t), int(round(t % 1 * 1e6)) % 1_000_000, len(data), len(data)))
            f.write(data)
    print(f"wrote {path}: {len(frames)} frames")

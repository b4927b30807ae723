"""Pure-Python reference twin of the compiled core (ext/_core.pyx).

Slow and plain on purpose: it exists so the compiled parser can be checked
against an implementation that is easy to read. ``TwinCore`` has the same
interface as ``sensor._core.Core`` and fills the same numpy rows and text
arena, so one test suite runs against both. The frame decoder here is also
what the reassembly path uses for the rare frames (IP fragments, TCP) that
the compiled fast path hands over.
"""
from __future__ import annotations

import base64
import math
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sensor import schema
from sensor.parse.psl import SuffixRules

A = schema.ANOMALY_BIT
MAX_NAME_WIRE = 255
MAX_VLAN_TAGS = 4
MAX_IPV6_EXT_HEADERS = 8
MAX_ENCAP_DEPTH = 3
FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
OPCODE_IQUERY, OPCODE_DSO = 1, 6
RCODE_FORMERR, RCODE_NOTIMP = 1, 4
EDNS_OPTION_COOKIE = dict(schema.EDNS_OPTION_BITS)["cookie"]
MASK64 = (1 << 64) - 1
V4_MAPPED_PREFIX = b"\x00" * 10 + b"\xff\xff"


def fnv1a64(data: bytes) -> int:
    h = FNV_OFFSET
    for b in data:
        h = ((h ^ b) * FNV_PRIME) & MASK64
    return h


def _bit(name: str) -> int:
    return 1 << A[name]


# ---------------------------------------------------------------- cursor

class Cursor:
    __slots__ = ("msg", "msg_len", "pos", "end", "short")

    def __init__(self, msg: bytes) -> None:
        self.msg = msg
        self.msg_len = len(msg)
        self.pos = 0
        self.end = len(msg)
        self.short = False

    def u8(self) -> int:
        if self.pos + 1 > self.end:
            self.short = True
            return 0
        self.pos += 1
        return self.msg[self.pos - 1]

    def u16(self) -> int:
        if self.pos + 2 > self.end:
            self.short = True
            self.pos = self.end
            return 0
        self.pos += 2
        return int.from_bytes(self.msg[self.pos - 2:self.pos], "big")

    def u32(self) -> int:
        if self.pos + 4 > self.end:
            self.short = True
            self.pos = self.end
            return 0
        self.pos += 4
        return int.from_bytes(self.msg[self.pos - 4:self.pos], "big")


@dataclass
class Name:
    text: str = "."
    labels: list[bytes] = field(default_factory=list)   # lower-cased raw labels
    label_text_start: list[int] = field(default_factory=list)
    digits: int = 0
    hexchars: int = 0
    uppers: int = 0
    nonprint: bool = False
    text_full: bool = False


def _label_text(raw: bytes) -> str:
    out = []
    for ch in raw:
        if 32 < ch < 127:
            if ch in (46, 92):
                out.append("\\")
            out.append(chr(ch))
        else:
            out.append("\\%03d" % ch)
    return "".join(out)


def read_name(c: Cursor, row: dict, max_hops: int) -> Name | None:
    """Mirror of read_name() in _core.pyx; None when the cursor is lost."""
    p, limit, biggest = c.pos, c.end, c.pos
    jumped, hops, wire_len = False, 0, 0
    name = Name()
    texts: list[str] = []
    text_len = 0
    msg = c.msg
    while True:
        if p >= limit:
            if not jumped:
                c.short, c.pos = True, c.end
                return None
            row["anomalies"] |= _bit("truncated")
            break
        b = msg[p]
        if b == 0:
            p += 1
            wire_len += 1
            break
        if b & 0xC0 == 0xC0:
            if p + 2 > limit:
                if not jumped:
                    c.short, c.pos = True, c.end
                    return None
                row["anomalies"] |= _bit("truncated")
                break
            target = ((b & 0x3F) << 8) | msg[p + 1]
            if not jumped:
                jumped = True
                c.pos = p + 2
                limit = c.msg_len
            if target >= biggest:
                row["anomalies"] |= _bit("bad_pointer")
                break
            hops += 1
            if hops > max_hops:
                row["anomalies"] |= _bit("pointer_limit")
                break
            biggest = p = target
            continue
        if b & 0xC0:
            row["anomalies"] |= _bit("label_too_long")
            if not jumped:
                return None
            break
        length = b
        if p + 1 + length > limit:
            if not jumped:
                c.short, c.pos = True, c.end
                return None
            row["anomalies"] |= _bit("truncated")
            break
        wire_len += 1 + length
        if wire_len + 1 > MAX_NAME_WIRE:
            if not name.text_full:
                row["anomalies"] |= _bit("name_too_long")
                name.text_full = True
            if jumped:
                break
        if not name.text_full:
            raw = msg[p + 1:p + 1 + length]
            for ch in raw:
                if 48 <= ch <= 57:
                    name.digits += 1
                    name.hexchars += 1
                elif 65 <= ch <= 90:
                    name.uppers += 1
                    if ch <= 70:
                        name.hexchars += 1
                elif 97 <= ch <= 102:
                    name.hexchars += 1
                if not 32 < ch < 127:
                    name.nonprint = True
            lowered = bytes(ch + 32 if 65 <= ch <= 90 else ch for ch in raw)
            if name.labels:
                text_len += 1
            name.label_text_start.append(text_len)
            label_text = _label_text(lowered)
            texts.append(label_text)
            text_len += len(label_text)
            name.labels.append(lowered)
        p += 1 + length
    if not jumped:
        c.pos = p
    name.text = ".".join(texts) if name.labels else "."
    return name


# ---------------------------------------------------------------- rdata text

def _hex(b: bytes) -> str:
    return b.hex().upper()


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _b32hex(b: bytes) -> str:
    return base64.b32hexencode(b).decode().rstrip("=")


def _text(b: bytes, quoted: bool) -> str:
    out = []
    for ch in b:
        if 32 <= ch < 127:
            if ch in (34, 92):
                out.append("\\")
            out.append(chr(ch))
        else:
            out.append("\\%03d" % ch)
    s = "".join(out)
    return f'"{s}"' if quoted else s


def _ip(b: bytes, family: int) -> str:
    if family == 4:
        return ".".join(str(x) for x in b)
    return socket.inet_ntop(socket.AF_INET6, b)


def _time(secs: int) -> str:
    return time.strftime("%Y%m%d%H%M%S", time.gmtime(secs))


class BadContent(Exception):
    """Rdata whose content is invalid for its type (the compiled core's return 1)."""


def _svc_key(key: int) -> str:
    names = ("mandatory", "alpn", "no-default-alpn", "port", "ipv4hint", "ech", "ipv6hint", "dohpath")
    return names[key] if key < len(names) else f"key{key}"


class _Renderer:
    def __init__(self, core: "TwinCore", c: Cursor, row: dict) -> None:
        self.core, self.c, self.row = core, c, row

    def name(self) -> str:
        n = read_name(self.c, self.row, self.core.max_pointer_hops)
        if n is None:
            raise BadContent
        return n.text

    def need(self, n: int) -> bytes:
        c = self.c
        if c.pos + n > c.end:
            c.short, c.pos = True, c.end
            raise BadContent
        c.pos += n
        return c.msg[c.pos - n:c.pos]

    def rest(self) -> bytes:
        c = self.c
        data = c.msg[c.pos:c.end]
        c.pos = c.end
        return data

    def type_bitmap(self) -> str:
        c, out = self.c, []
        while c.pos < c.end:
            window, blen = c.u8(), c.u8()
            if c.short or blen == 0 or blen > 32:
                raise BadContent
            bits = self.need(blen)
            for i, byte in enumerate(bits):
                for bit in range(8):
                    if byte & (0x80 >> bit):
                        out.append(" " + schema.type_name(window * 256 + i * 8 + bit))
        return "".join(out)

    def render(self, rtype: int) -> str:
        c = self.c
        n = c.end - c.pos
        u8, u16, u32 = c.u8, c.u16, c.u32
        if rtype == 1 or rtype == 28:
            size = 4 if rtype == 1 else 16
            if n != size:
                c.short = True
                raise BadContent
            return _ip(self.need(size), 4 if rtype == 1 else 6)
        if rtype in (2, 5, 12, 39, 3, 4, 7, 8, 9):
            return self.name()
        if rtype in (15, 18, 21, 36):
            pref = u16()
            if c.short:
                raise BadContent
            return f"{pref} {self.name()}"
        if rtype == 6:
            mname = self.name()
            rname = self.name()
            return f"{mname} {rname} " + " ".join(str(u32()) for _ in range(5))
        if rtype in (16, 99, 13):
            parts = []
            while c.pos < c.end:
                length = c.msg[c.pos]
                if c.pos + 1 + length > c.end:
                    c.short = True
                    raise BadContent
                parts.append(_text(c.msg[c.pos + 1:c.pos + 1 + length], True))
                c.pos += 1 + length
            return " ".join(parts)
        if rtype == 33:
            nums = [u16(), u16(), u16()]
            if c.short:
                raise BadContent
            return " ".join(map(str, nums)) + " " + self.name()
        if rtype == 35:
            head = f"{u16()} {u16()}"
            strings = []
            for _ in range(3):
                length = u8()
                if c.short or c.pos + length > c.end:
                    c.short = True
                    raise BadContent
                strings.append(_text(self.need(length), True))
            return head + " " + " ".join(strings) + " " + self.name()
        if rtype == 257:
            flags = u8()
            length = u8()
            if c.short or c.pos + length > c.end:
                c.short = True
                raise BadContent
            tag = _text(self.need(length), False)
            return f"{flags} {tag} {_text(self.rest(), True)}"
        if rtype in (25, 48, 60):
            head = f"{u16()} {u8()} {u8()}"
            if c.short:
                raise BadContent
            return f"{head} {_b64(self.rest())}"
        if rtype in (43, 59, 32768, 32769):
            head = f"{u16()} {u8()} {u8()}"
            if c.short:
                raise BadContent
            return f"{head} {_hex(self.rest())}"
        if rtype in (44, 52, 53):
            head = " ".join(str(u8()) for _ in range(2 if rtype == 44 else 3))
            if c.short:
                raise BadContent
            return f"{head} {_hex(self.rest())}"
        if rtype in (46, 24):
            covered = schema.type_name(u16())
            alg, labels, orig = u8(), u8(), u32()
            exp, inc, tag = u32(), u32(), u16()
            head = f"{covered} {alg} {labels} {orig} {_time(exp)} {_time(inc)} {tag} "
            if c.short:
                raise BadContent
            signer = self.name()
            return f"{head}{signer} {_b64(self.rest())}"
        if rtype == 47:
            nxt = self.name()
            return nxt + self.type_bitmap()
        if rtype in (50, 51):
            head = f"{u8()} {u8()} {u16()} "
            length = u8()
            if c.short or c.pos + length > c.end:
                c.short = True
                raise BadContent
            salt = self.need(length)
            text = head + (_hex(salt) if salt else "-")
            if rtype == 50:
                length = u8()
                if c.short or c.pos + length > c.end:
                    c.short = True
                    raise BadContent
                text += " " + _b32hex(self.need(length)) + self.type_bitmap()
            return text
        if rtype in (64, 65):
            return self.svcb()
        if rtype == 17:
            mailbox = self.name()
            return f"{mailbox} {self.name()}"
        if rtype == 29:
            return self.loc()
        if rtype in (108, 109):
            size = 6 if rtype == 108 else 8
            if n != size:
                c.short = True
                raise BadContent
            return "-".join(f"{b:02x}" for b in self.need(size))
        if rtype == 250:
            algorithm = self.name()
            signed_hi, signed_lo, fudge = u16(), u32(), u16()
            if c.short:
                raise BadContent
            mac = self.sized_b64()
            original_id, error = u16(), u16()
            if c.short:
                raise BadContent
            other = self.sized_b64()
            return (f"{algorithm} {(signed_hi << 32) | signed_lo} {fudge} {mac} {original_id} "
                    f"{schema.tsig_error_name(error)} {other}")
        if rtype == 249:
            algorithm = self.name()
            inception, expiration, mode, error = u32(), u32(), u16(), u16()
            if c.short:
                raise BadContent
            key = self.sized_b64()
            other = self.sized_b64()
            return (f"{algorithm} {_time(inception)} {_time(expiration)} {mode} "
                    f"{schema.tsig_error_name(error)} {key} {other}")
        if rtype == 256:
            head = f"{u16()} {u16()}"
            if c.short:
                raise BadContent
            return f"{head} {_text(self.rest(), True)}"
        return generic(self.rest())

    def sized_b64(self) -> str:
        """A 16-bit length, then that many bytes: 'length base64' (base64 left out when empty)."""
        c = self.c
        length = c.u16()
        if c.short or c.pos + length > c.end:
            c.short = True
            raise BadContent
        data = self.need(length)
        return f"{length} {_b64(data)}" if data else "0"

    def loc(self) -> str:
        """RFC 1876 version 0, as BIND writes it; other versions in RFC 3597 form."""
        c = self.c
        if c.pos < c.end and c.msg[c.pos] != 0:
            return generic(self.rest())
        if c.end - c.pos != 16:
            c.short = True
            raise BadContent
        _, size, hp, vp = self.need(4)
        lat, lon, alt = c.u32(), c.u32(), c.u32()
        if any(x >> 4 > 9 or x & 15 > 9 for x in (size, hp, vp)):
            raise BadContent
        parts = [_loc_angle(lat, 90, "N", "S"), _loc_angle(lon, 180, "E", "W")]
        if None in parts:
            raise BadContent
        below = alt < LOC_ALTITUDE_ORIGIN
        metres = abs(alt - LOC_ALTITUDE_ORIGIN)
        parts.append(f"{'-' if below else ''}{metres // 100}.{metres % 100:02d}m")
        parts += [_loc_precision(x) for x in (size, hp, vp)]
        return " ".join(parts)

    def svcb(self) -> str:
        c = self.c
        prio = c.u16()
        if c.short:
            raise BadContent
        out = [f"{prio} {self.name()}"]
        while c.pos < c.end:
            key, vlen = c.u16(), c.u16()
            if c.short or c.pos + vlen > c.end:
                raise BadContent
            value = c.msg[c.pos:c.pos + vlen]
            c.pos += vlen
            text = _svc_key(key)
            if key == 2:
                if vlen:
                    c.pos = c.end
                    raise BadContent
                out.append(text)
                continue
            if key == 0:
                if vlen % 2:
                    c.pos = c.end
                    raise BadContent
                text += "=" + ",".join(_svc_key(int.from_bytes(value[i:i + 2], "big"))
                                       for i in range(0, vlen, 2))
            elif key == 1:
                ids, i = [], 0
                while i < vlen:
                    length = value[i]
                    if length == 0 or i + 1 + length > vlen:
                        c.pos = c.end
                        raise BadContent
                    ids.append(_text(value[i + 1:i + 1 + length], False))
                    i += 1 + length
                text += "=" + ",".join(ids)
            elif key == 3:
                if vlen != 2:
                    c.pos = c.end
                    raise BadContent
                text += "=" + str(int.from_bytes(value, "big"))
            elif key in (4, 6):
                size = 4 if key == 4 else 16
                if vlen == 0 or vlen % size:
                    c.pos = c.end
                    raise BadContent
                text += "=" + ",".join(_ip(value[i:i + size], 4 if key == 4 else 6)
                                       for i in range(0, vlen, size))
            elif key == 5:
                text += "=" + _b64(value)
            else:
                text += "=" + _hex(value)
            out.append(text)
        return " ".join(out)


LOC_ALTITUDE_ORIGIN = 10_000_000
"""RFC 1876: altitude 0 m is 100 000 m (in cm) on the wire."""


def _loc_angle(raw: int, max_degrees: int, positive: str, negative: str) -> str | None:
    """Thousandths of an arc second off 2^31 as 'D M S.fff H'; None beyond max_degrees."""
    value, hemisphere = (raw - 2**31, positive) if raw >= 2**31 else (2**31 - raw, negative)
    if value > max_degrees * 3_600_000:
        return None
    return (f"{value // 3_600_000} {value // 60_000 % 60} {value % 60_000 // 1000}."
            f"{value % 1000:03d} {hemisphere}")


def _loc_precision(x: int) -> str:
    """Mantissa x 10^exponent cm, in metres as BIND writes it."""
    mantissa, exponent = x >> 4, x & 15
    if exponent >= 2:
        return f"{mantissa * 10 ** (exponent - 2)}m"
    return f"0.{mantissa * 10 ** exponent:02d}m"


def generic(data: bytes) -> str:
    """RFC 3597 form: \\# <length> <hex>."""
    return f"\\# {len(data)}" + (f" {_hex(data)}" if data else "")


def render_opt(c: Cursor, row: dict, ttl: int, rclass: int) -> str:
    row["edns"] = 1
    row["edns_udp_size"] = rclass
    row["edns_version"] = (ttl >> 16) & 0xFF
    row["edns_do"] = (ttl >> 15) & 1
    row["rcode"] = (row["rcode"] & 0xF) | (((ttl >> 24) & 0xFF) << 4)
    out = [f"udp={rclass} version={row['edns_version']} do={row['edns_do']} ext_rcode={(ttl >> 24) & 0xFF}"]
    while c.pos < c.end:
        code, olen = c.u16(), c.u16()
        if c.short or c.pos + olen > c.end:
            row["anomalies"] |= _bit("edns_bad_option")
            c.short = False
            c.pos = c.end
            break
        data = c.msg[c.pos:c.pos + olen]
        c.pos += olen
        if code == 8:
            row["edns_options"] |= 1
            family = int.from_bytes(data[0:2], "big") if olen >= 2 else 0
            src = data[2] if olen >= 3 else 0
            scope = data[3] if olen >= 4 else 0
            addr = data[4:]
            if (olen < 4 or family not in (1, 2) or src > (32 if family == 1 else 128)
                    or len(addr) != (src + 7) // 8):
                row["anomalies"] |= _bit("edns_bad_option")
                out.append("ecs=" + _hex(data))
                continue
            row["ecs_prefix"] = src
            size = 4 if family == 1 else 16
            out.append(f"ecs={_ip(addr.ljust(size, bytes(1)), 4 if family == 1 else 6)}/{src}/{scope}")
        elif code == 10:
            row["edns_options"] |= 2
            out.append("cookie=" + _hex(data))
        elif code == 3:
            row["edns_options"] |= 4
            out.append("nsid=" + _hex(data))
        elif code == 15:
            row["edns_options"] |= 8
            if olen < 2:
                row["anomalies"] |= _bit("edns_bad_option")
                out.append("ede=" + _hex(data))
            else:
                row["ede_code"] = int.from_bytes(data[:2], "big")
                text = f"ede={row['ede_code']}"
                if olen > 2:
                    text += ":" + _text(data[2:], True)
                out.append(text)
        elif code == 12:
            row["edns_options"] |= 16
            out.append(f"padding={olen}")
        elif code == 11:
            row["edns_options"] |= 32
            if olen == 2:
                out.append(f"keepalive={int.from_bytes(data, 'big')}")
            else:
                if olen:
                    row["anomalies"] |= _bit("edns_bad_option")
                out.append("keepalive")
        else:
            row["edns_options"] |= 64
            out.append(f"opt{code}={_hex(data)}")
    return " ".join(out)


# ---------------------------------------------------------------- frames

@dataclass
class Decoded:
    """One frame decoded down to the transport layer."""
    status: str                 # a counter name: dns, slow, not_ip, not_dns, link_truncated
    ip_version: int = 0
    src: bytes = b""
    dst: bytes = b""
    anomalies: int = 0
    ip_ttl: int = 0
    proto: int = 0
    sport: int = 0
    dport: int = 0
    payload: bytes = b""
    # IP fragment (status "slow", fragment=True)
    fragment: bool = False
    frag_id: int = 0
    frag_offset: int = 0
    frag_more: bool = False
    # TCP (status "slow", proto 6)
    tcp_seq: int = 0
    tcp_flags: int = 0


def _mapped(v4: bytes) -> bytes:
    return V4_MAPPED_PREFIX + v4


def decode_frame(pkt: bytes, linktype: int, ports: frozenset[int]) -> Decoded:
    """Mirror of Core.decode_frame, extended with fragment and TCP details."""
    n = len(pkt)
    if linktype == 1:
        return _ether(pkt, n, 0, ports, 0)
    if linktype in (0, 108):
        if n < 4:
            return Decoded("link_truncated")
        if linktype == 108:
            fam = int.from_bytes(pkt[:4], "big")
        else:
            fam = int.from_bytes(pkt[:4], "little")
            if fam > 0xFFFF:
                fam = int.from_bytes(pkt[:4], "big")
        if fam == 2:
            return _ipv4(pkt, n, 4, ports, 0)
        if fam in (24, 28, 30, 10):
            return _ipv6(pkt, n, 4, ports, 0)
        return Decoded("not_ip")
    if linktype in (12, 14, 101):
        if n < 1:
            return Decoded("link_truncated")
        if pkt[0] >> 4 == 4:
            return _ipv4(pkt, n, 0, ports, 0)
        if pkt[0] >> 4 == 6:
            return _ipv6(pkt, n, 0, ports, 0)
        return Decoded("not_ip")
    if linktype == 228:
        return _ipv4(pkt, n, 0, ports, 0)
    if linktype == 229:
        return _ipv6(pkt, n, 0, ports, 0)
    if linktype == 113:
        if n < 16:
            return Decoded("link_truncated")
        return _ethertype(pkt, n, 16, int.from_bytes(pkt[14:16], "big"), ports, 0)
    if linktype == 276:
        if n < 20:
            return Decoded("link_truncated")
        return _ethertype(pkt, n, 20, int.from_bytes(pkt[0:2], "big"), ports, 0)
    if linktype == 10:
        if n < 21 or pkt[13] != 0xAA or pkt[14] != 0xAA or pkt[15] != 3:
            return Decoded("not_ip")
        return _ethertype(pkt, n, 21, int.from_bytes(pkt[19:21], "big"), ports, 0)
    return Decoded("not_ip")


def _ether(pkt: bytes, n: int, off: int, ports: frozenset[int], depth: int) -> Decoded:
    if off + 14 > n:
        return Decoded("link_truncated")
    ethertype = int.from_bytes(pkt[off + 12:off + 14], "big")
    off += 14
    tags = 0
    while ethertype in (0x8100, 0x88A8, 0x9100) and tags < MAX_VLAN_TAGS:
        if off + 4 > n:
            return Decoded("link_truncated")
        ethertype = int.from_bytes(pkt[off + 2:off + 4], "big")
        off += 4
        tags += 1
    return _ethertype(pkt, n, off, ethertype, ports, depth)


def _ethertype(pkt: bytes, n: int, off: int, ethertype: int, ports: frozenset[int], depth: int) -> Decoded:
    if ethertype == 0x0800:
        return _ipv4(pkt, n, off, ports, depth)
    if ethertype == 0x86DD:
        return _ipv6(pkt, n, off, ports, depth)
    return Decoded("not_ip")


def _ipv4(pkt: bytes, n: int, off: int, ports: frozenset[int], depth: int) -> Decoded:
    if off + 20 > n or pkt[off] >> 4 != 4:
        return Decoded("link_truncated" if off + 20 > n else "not_ip")
    ihl = (pkt[off] & 15) * 4
    total = int.from_bytes(pkt[off + 2:off + 4], "big")
    avail = n - off
    if ihl < 20 or total < ihl or off + ihl > n:
        return Decoded("not_ip")
    anomalies = 0
    if total > avail:
        anomalies |= _bit("ip_truncated")
        total = avail
    d = Decoded("dns", 4, _mapped(pkt[off + 12:off + 16]), _mapped(pkt[off + 16:off + 20]), anomalies,
                ip_ttl=pkt[off + 8])
    frag = int.from_bytes(pkt[off + 6:off + 8], "big")
    proto = pkt[off + 9]
    if frag & 0x3FFF:
        if proto in (17, 6):
            d.status, d.fragment, d.proto = "slow", True, proto
            d.frag_id = int.from_bytes(pkt[off + 4:off + 6], "big")
            d.frag_offset = (frag & 0x1FFF) * 8
            d.frag_more = bool(frag & 0x2000)
            d.payload = pkt[off + ihl:off + total]
            return d
        return Decoded("not_dns")
    return decode_l4(d, pkt, off + ihl, off + total, proto, ports, depth)


def _ipv6(pkt: bytes, n: int, off: int, ports: frozenset[int], depth: int) -> Decoded:
    if off + 40 > n or pkt[off] >> 4 != 6:
        return Decoded("link_truncated" if off + 40 > n else "not_ip")
    plen = int.from_bytes(pkt[off + 4:off + 6], "big")
    nh = pkt[off + 6]
    d = Decoded("dns", 6, pkt[off + 8:off + 24], pkt[off + 24:off + 40], ip_ttl=pkt[off + 7])
    p = off + 40
    if plen == 0 or plen > n - p:
        if plen:
            d.anomalies |= _bit("ip_truncated")
        plen = n - p
    end = p + plen
    hops = 0
    while hops < MAX_IPV6_EXT_HEADERS:
        if nh in (0, 43, 60, 135, 139, 140):
            if p + 2 > end:
                return Decoded("link_truncated")
            nh, p = pkt[p], p + (pkt[p + 1] + 1) * 8
        elif nh == 51:
            if p + 2 > end:
                return Decoded("link_truncated")
            nh, p = pkt[p], p + (pkt[p + 1] + 2) * 4
        elif nh == 44:
            if p + 8 > end:
                return Decoded("link_truncated")
            proto = pkt[p]
            fo = int.from_bytes(pkt[p + 2:p + 4], "big")
            d.status, d.fragment, d.proto = "slow", True, proto
            d.frag_offset = fo & 0xFFF8
            d.frag_more = bool(fo & 1)
            d.frag_id = int.from_bytes(pkt[p + 4:p + 8], "big")
            d.payload = pkt[p + 8:end]
            return d
        else:
            break
        hops += 1
        if p > end:
            return Decoded("link_truncated")
    return decode_l4(d, pkt, p, end, nh, ports, depth)


def decode_l4(d: Decoded, pkt: bytes, p: int, end: int, proto: int, ports: frozenset[int],
              depth: int = 0) -> Decoded:
    avail = end - p
    d.proto = proto
    if proto == 17:
        if avail < 8:
            return Decoded("link_truncated")
        sport = int.from_bytes(pkt[p:p + 2], "big")
        dport = int.from_bytes(pkt[p + 2:p + 4], "big")
        if sport not in ports and dport not in ports:
            if depth < MAX_ENCAP_DEPTH:
                if dport == 4789 and avail >= 16:
                    return _ether(pkt[:end], end, p + 16, ports, depth + 1)
                if dport == 6081 and avail >= 16:
                    optlen = (pkt[p + 8] & 0x3F) * 4
                    if avail >= 16 + optlen:
                        inner = int.from_bytes(pkt[p + 10:p + 12], "big")
                        if inner == 0x6558:
                            return _ether(pkt[:end], end, p + 16 + optlen, ports, depth + 1)
                        return _ethertype(pkt[:end], end, p + 16 + optlen, inner, ports, depth + 1)
            return Decoded("not_dns")
        ulen = int.from_bytes(pkt[p + 4:p + 6], "big")
        if ulen < 8:
            return Decoded("not_dns")
        if ulen > avail:
            if not d.anomalies & _bit("ip_truncated"):
                d.anomalies |= _bit("udp_length_mismatch")
            ulen = avail
        elif ulen < avail:
            d.anomalies |= _bit("udp_length_mismatch")
        d.sport, d.dport = sport, dport
        d.payload = pkt[p + 8:p + ulen]
        return d
    if proto == 6:
        if avail < 20:
            return Decoded("link_truncated")
        sport = int.from_bytes(pkt[p:p + 2], "big")
        dport = int.from_bytes(pkt[p + 2:p + 4], "big")
        if sport not in ports and dport not in ports:
            return Decoded("not_dns")
        data_off = (pkt[p + 12] >> 4) * 4
        if data_off < 20 or data_off > avail:
            return Decoded("link_truncated")
        d.status = "slow"
        d.sport, d.dport = sport, dport
        d.tcp_seq = int.from_bytes(pkt[p + 4:p + 8], "big")
        d.tcp_flags = pkt[p + 13]
        d.payload = pkt[p + data_off:end]
        return d
    return Decoded("not_dns")


# ---------------------------------------------------------------- core

def question_count_allowed(row: dict, sport: int, dport: int) -> bool:
    """Whether a message may carry other than one question (after its OPT is read).
    One question is the norm (RFC 9619); none belongs in an inverse query (RFC 1035
    6.4) or a DSO message (RFC 8490), in a query for a server cookie and its answer
    (RFC 7873 5.4), and may be left out of a FORMERR or NOTIMP response. Multicast DNS
    responses carry no question and its queries may carry several (RFC 6762 5.3, 6)."""
    if schema.MDNS_PORT in (sport, dport):
        return True
    if row["qdcount"] > 1:
        return False
    return (row["opcode"] in (OPCODE_IQUERY, OPCODE_DSO)
            or (row["qr"] == 1 and row["rcode"] in (RCODE_FORMERR, RCODE_NOTIMP))
            or bool(row["edns_options"] & EDNS_OPTION_COOKIE))


class TwinCore:
    """Same interface and output as sensor._core.Core, in plain Python."""

    def __init__(self, port_map: np.ndarray, suffixes: SuffixRules, max_questions: int,
                 max_records: int, max_pointer_hops: int, capacity: int = 4096) -> None:
        self.ports = frozenset(int(p) for p in np.flatnonzero(port_map))
        self.suffixes = suffixes
        self.max_questions = max_questions
        self.max_records = max_records
        self.max_pointer_hops = max_pointer_hops
        self.dedup_window_s = 0.0
        self._seen: OrderedDict[tuple, list] = OrderedDict()
        self._seen_cap = 0
        self.begin(capacity)

    def set_dedup(self, window_s: float, slots: int) -> None:
        """As Core.set_dedup; frames are remembered by identity, the `slots` latest (the
        core remembers them by hash slot, so it may forget one sooner)."""
        if window_s < 0 or slots <= 0 or slots & (slots - 1):
            raise ValueError("window_s must be >= 0 and slots a power of two")
        self.dedup_window_s = window_s
        self._seen.clear()
        self._seen_cap = slots

    def _seen_twice(self, d: Any, ts: float) -> bool:
        key = (d.payload, d.src, d.dst, d.sport, d.dport)
        entry = self._seen.get(key)
        if entry is not None and not entry[1] and abs(ts - entry[0]) <= self.dedup_window_s:
            entry[1] = True
            return True
        self._seen[key] = [ts, False]
        self._seen.move_to_end(key)
        if len(self._seen) > self._seen_cap:
            self._seen.popitem(last=False)
        return False

    def begin(self, capacity: int = 4096) -> None:
        self.rows: list[tuple] = []
        self.rr_rows: list[tuple] = []
        self.arena: list[bytes] = []
        self.arena_len = 0
        self.counters = {name: 0 for name in COUNTER_NAMES}

    @property
    def nmsg(self) -> int:
        """Messages in the batch under construction."""
        return len(self.rows)

    def _put(self, text: str) -> tuple[int, int]:
        raw = text.encode("ascii")
        off = self.arena_len
        self.arena.append(raw)
        self.arena_len += len(raw)
        return off, len(raw)

    def finish(self) -> tuple[np.ndarray, np.ndarray, bytes, dict[str, int], dict[str, np.ndarray]]:
        """As the core's, with no hot columns: the batch copies out what is read."""
        msgs = np.zeros(len(self.rows), dtype=schema.MESSAGE_DTYPE)
        for i, row in enumerate(self.rows):
            msgs[i] = row
        rrs = np.zeros(len(self.rr_rows), dtype=schema.RR_DTYPE)
        for i, row in enumerate(self.rr_rows):
            rrs[i] = row
        out = msgs, rrs, b"".join(self.arena), dict(self.counters), {}
        self.begin()
        return out

    def add_frames(self, blob: bytes, meta: np.ndarray, linktype: int, first_frame: int) -> list[int]:
        slow = []
        for i, (sec, usec, off, caplen) in enumerate(meta.tolist()):
            self.counters["packets"] += 1
            self.counters["bytes"] += caplen
            d = decode_frame(bytes(blob[off:off + caplen]), linktype, self.ports)
            if d.status == "slow":
                self.counters["slow_path"] += 1
                slow.append(i)
                continue
            if d.status != "dns":
                self.counters[d.status] += 1
                continue
            self.counters["dns_udp"] += 1
            if not d.payload:
                self.counters["empty_payload"] += 1
                continue
            if self.dedup_window_s and self._seen_twice(d, sec + usec * 1e-6):
                self.counters["duplicate_frames"] += 1
                continue
            self.parse(d.payload, sec + usec * 1e-6, first_frame + i, d.ip_version, d.src, d.dst,
                       d.sport, d.dport, 17, d.anomalies, d.ip_ttl)
        return slow

    def add_message(self, payload: bytes, ts: float, frame: int, ip_version: int, src: bytes,
                    dst: bytes, sport: int, dport: int, transport: int, extra_anomalies: int = 0,
                    ip_ttl: int = 0) -> None:
        if not payload:
            self.counters["empty_payload"] += 1
            return
        self.parse(bytes(payload), ts, frame, ip_version, bytes(src), bytes(dst), sport, dport,
                   transport, extra_anomalies, ip_ttl)

    def parse(self, msg: bytes, ts: float, frame: int, ip_version: int, src: bytes, dst: bytes,
              sport: int, dport: int, transport: int, anomalies: int, ip_ttl: int = 0) -> None:
        self.counters["messages"] += 1
        n = len(msg)
        row = dict(ts=ts, frame=frame, src=src, dst=dst, sport=sport, dport=dport,
                   ip_version=ip_version, transport=transport, anomalies=anomalies, size=n,
                   min_ttl=-1, ede_code=-1, rr_start=len(self.rr_rows), rr_count=0,
                   qname_off=self.arena_len, qname_len=0, name_hash=0, entropy=0.0, id=0,
                   flags=0, rcode=0, qtype=0, qclass=0, qdcount=0, ancount=0, nscount=0,
                   arcount=0, edns_udp_size=0, edns_options=0, digits=0, hexchars=0,
                   uppers=0, regdom_off=0, qr=0, opcode=0, edns=0, edns_version=0, edns_do=0,
                   case_differs=0, labels=0, longest_label=0, ecs_prefix=0, ip_ttl=ip_ttl)
        c = Cursor(msg)
        if n < 12:
            row["anomalies"] |= _bit("header_too_short") | _bit("truncated")
            row["id"] = c.u16()
            row["flags"] = c.u16()
            self._header_bits(row)
            self._store(row)
            return
        for key in ("id", "flags", "qdcount", "ancount", "nscount", "arcount"):
            row[key] = c.u16()
        self._header_bits(row)
        if row["flags"] & 0x40:
            row["anomalies"] |= _bit("z_bit_set")
        if row["opcode"] == 3 or row["opcode"] > 6:
            row["anomalies"] |= _bit("invalid_opcode")
        # Only a standard query: an UPDATE's prerequisites, a NOTIFY's SOA and an
        # inverse query's record all sit in the answer section of the request.
        if row["qr"] == 0 and row["opcode"] == 0 and row["ancount"] > 0:
            row["anomalies"] |= _bit("answer_in_query")
        stop = False
        for q in range(row["qdcount"]):
            if q >= self.max_questions:
                row["anomalies"] |= _bit("too_many_records")
                stop = True
                break
            name = read_name(c, row, self.max_pointer_hops)
            if name is None:
                row["anomalies"] |= _bit("truncated")
                stop = True
                break
            if q == 0:
                self._qname_features(row, name)
            rtype, rclass = c.u16(), c.u16()
            if c.short:
                row["anomalies"] |= _bit("truncated")
                stop = True
                break
            if q == 0:
                row["qtype"] = rtype
                row["qclass"] = rclass & 0x7FFF
        total = 0
        opt_seen = False
        for section, count in enumerate((row["ancount"], row["nscount"], row["arcount"])):
            if stop:
                break
            for _ in range(count):
                if total >= self.max_records:
                    row["anomalies"] |= _bit("too_many_records")
                    stop = True
                    break
                owner = read_name(c, row, self.max_pointer_hops)
                if owner is None:
                    row["anomalies"] |= _bit("truncated")
                    stop = True
                    break
                rtype, rclass, ttl, rdlen = c.u16(), c.u16(), c.u32(), c.u16()
                if c.short or c.pos + rdlen > n:
                    row["anomalies"] |= _bit("truncated")
                    stop = True
                    break
                total += 1
                name_off, name_len = self._put(owner.text)
                rd_start = c.pos
                c.end = c.pos + rdlen
                if rtype == 41:
                    if opt_seen:
                        row["anomalies"] |= _bit("edns_multiple_opt")
                    if section != 2 or owner.labels:
                        row["anomalies"] |= _bit("edns_misplaced_opt")
                    text = render_opt(c, row, ttl, rclass) if not opt_seen else generic(msg[c.pos:c.end])
                    opt_seen = True
                else:
                    if section == 0 and (row["min_ttl"] < 0 or ttl < row["min_ttl"]):
                        row["min_ttl"] = ttl
                    if ttl > 0x7FFFFFFF:
                        row["anomalies"] |= _bit("ttl_high_bit")
                    bad_content = False
                    if rdlen == 0 and row["opcode"] == 5 and rclass in (254, 255):
                        # An UPDATE's prerequisites ("RRset exists", "RRset does not exist")
                        # and deletions of whole RRsets carry no rdata (RFC 2136 2.4, 2.5)
                        text = generic(b"")
                    else:
                        try:
                            text = _Renderer(self, c, row).render(rtype)
                        except BadContent:
                            bad_content, text = True, ""
                    if bad_content or c.short or c.pos != c.end:
                        clean = bad_content and not c.short and c.pos == c.end
                        row["anomalies"] |= _bit("bad_rdata" if clean else "rdlength_mismatch")
                        text = generic(msg[rd_start:rd_start + rdlen])
                rd_off, rd_len = self._put(text)
                self.rr_rows.append((len(self.rows), name_off, rd_off, rd_len, ttl, name_len,
                                     rtype, rclass, section + 1, b"\x00"))
                c.pos = rd_start + rdlen
                c.end = n
                c.short = False
        if not stop and c.pos < n:
            row["anomalies"] |= _bit("trailing_bytes")
        if row["qdcount"] != 1 and not question_count_allowed(row, sport, dport):
            row["anomalies"] |= _bit("qdcount_not_one")
        row["rr_count"] = len(self.rr_rows) - row["rr_start"]
        self._store(row)

    @staticmethod
    def _header_bits(row: dict) -> None:
        row["qr"] = row["flags"] >> 15
        row["opcode"] = (row["flags"] >> 11) & 15
        row["rcode"] = row["flags"] & 15

    def _qname_features(self, row: dict, name: Name) -> None:
        row["qname_off"], row["qname_len"] = self._put(name.text)
        row["name_hash"] = fnv1a64(name.text.encode("ascii"))
        row["labels"] = len(name.labels)
        row["longest_label"] = max((len(x) for x in name.labels), default=0)
        row["digits"], row["hexchars"], row["uppers"] = name.digits, name.hexchars, name.uppers
        row["case_differs"] = int(name.uppers > 0)
        if name.nonprint:
            row["anomalies"] |= _bit("qname_non_printable")
        if name.text_full or not name.labels:
            reg = 0
        else:
            reg = self.suffixes.registered_label([_label_text(x) for x in name.labels])
        row["regdom_off"] = name.label_text_start[reg] if name.labels else 0
        left = b"".join(name.labels[:reg])
        entropy = 0.0
        if left:
            counts = [0] * 256
            for b in left:
                counts[b] += 1
            present = [k for k in counts if k]
            if len(present) > 1:
                # H = log2(n) - sum(c log2 c) / n, summed in ascending byte order
                # with plain additions, exactly as the compiled core does.
                total = 0.0
                for k in present:
                    total += k * math.log2(k)
                entropy = math.log2(len(left)) - total / len(left)
        row["entropy"] = entropy

    def _store(self, row: dict) -> None:
        self.rows.append(tuple(row[f.name] if f.name != "pad" else bytes(8)
                               for f in schema.MESSAGE_FIELDS))


COUNTER_NAMES = (
    "packets", "bytes", "not_ip", "not_dns", "link_truncated", "dns_udp",
    "slow_path", "empty_payload", "messages", "duplicate_frames",
)

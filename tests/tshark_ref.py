"""tshark's decode of a capture, reduced to the key fields of each DNS message."""
from __future__ import annotations

import shutil
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

TSHARK = shutil.which("tshark")
DECODE_AS = ("udp.port==8053,dns", "tcp.port==8053,dns", "tcp.port==1053,dns", "udp.port==1053,dns")


@dataclass
class RefMessage:
    frame: int
    id: int | None = None
    qr: int | None = None
    qname: str | None = None
    qtype: int | None = None
    rcode: int | None = None
    counts: list[int | None] = field(default_factory=lambda: [None] * 4)
    a: list[str] = field(default_factory=list)
    aaaa: list[str] = field(default_factory=list)
    cname: list[str] = field(default_factory=list)
    tsig: list[tuple[str, int, int, int, int]] = field(default_factory=list)
    """(algorithm, fudge, MAC size, original id, error) of each TSIG record."""
    malformed: bool = False


TSIG_FIELDS = ("dns.tsig.fudge", "dns.tsig.mac_size", "dns.tsig.original_id", "dns.tsig.error")
COUNT_FIELDS = ("dns.count.queries", "dns.count.answers", "dns.count.auth_rr", "dns.count.add_rr")


def tshark_messages(path: str) -> list[RefMessage]:
    cmd = [TSHARK, "-n", "-r", path, "-T", "pdml"]
    for rule in DECODE_AS:
        cmd += ["-d", rule]
    out = subprocess.run(cmd, capture_output=True, check=True, timeout=300,
                         env={"LC_ALL": "C", "PATH": "/usr/bin:/bin", "HOME": "/tmp"}).stdout
    messages: list[RefMessage] = []
    for packet in ET.fromstring(out).iter("packet"):
        frame = None
        malformed = any(p.get("name") == "_ws.malformed" for p in packet.iter("proto"))
        for proto in packet.iter("proto"):
            if proto.get("name") == "frame":
                frame = int(next(f.get("show") for f in proto.iter("field") if f.get("name") == "frame.number"))
            if proto.get("name") not in ("dns", "mdns"):
                continue
            m = RefMessage(frame, malformed=malformed)
            for f in proto.iter("field"):
                name, show = f.get("name"), f.get("show")
                if name == "dns.id" and m.id is None:
                    m.id = int(show, 16)
                elif name == "dns.flags.response" and m.qr is None:
                    m.qr = int(show in ("1", "True"))
                elif name == "dns.qry.name" and m.qname is None:
                    m.qname = show
                elif name == "dns.qry.type" and m.qtype is None:
                    m.qtype = int(show)
                elif name == "dns.flags.rcode" and m.rcode is None:
                    m.rcode = int(show)
                elif name in COUNT_FIELDS and m.counts[COUNT_FIELDS.index(name)] is None:
                    m.counts[COUNT_FIELDS.index(name)] = int(show)
                elif name == "dns.a":
                    m.a.append(show)
                elif name == "dns.aaaa":
                    m.aaaa.append(show)
                elif name == "dns.cname":
                    m.cname.append(show)
                elif name == "dns.tsig.algorithm_name":
                    m.tsig.append((show,))
                elif name in TSIG_FIELDS and m.tsig and len(m.tsig[-1]) == TSIG_FIELDS.index(name) + 1:
                    m.tsig[-1] += (int(show, 0),)
            messages.append(m)
    return messages

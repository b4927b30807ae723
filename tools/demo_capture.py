"""Write the demo capture, tests/data/demo-office-resolver.pcap (deterministic).

A small office resolver over ten minutes: clients asking a resolver
(10.1.0.53), the resolver asking authoritative servers from its upstream
address (198.51.100.53), CNAME chains, search-domain NXDOMAIN bursts, one
query never answered, a client sending a burst of malformed queries, and a
spoofed-response flood (wrong ids) against one upstream query. Addresses are
from private and documentation ranges; names are under example domains.

    python tools/demo_capture.py [OUTPUT]
"""
from __future__ import annotations

import random
import sys
from pathlib import Path

import dnslib

from pcapwrite import frame, write

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "demo-office-resolver.pcap"
RESOLVER, RESOLVER_UP = "10.1.0.53", "198.51.100.53"
CLIENTS = [f"10.1.0.{i}" for i in range(11, 19)]
AUTHS = ["192.0.2.1", "192.0.2.2", "192.0.2.3"]
NAMES = ["www.example.com", "mail.example.com", "intranet.example.org", "cdn.example.net",
         "api.example.com", "login.example.org", "static.example.net", "updates.example.com",
         "chat.example.org", "files.example.net"]
START = 1_767_254_400.0           # 2026-01-01 08:00 UTC


def main(out: Path) -> None:
    rng = random.Random(2026)
    frames: list[tuple[float, bytes]] = []

    def send(ts: float, msg: dnslib.DNSRecord | bytes, src: str, dst: str, sport: int, dport: int) -> None:
        frames.append((ts, frame(msg if isinstance(msg, bytes) else msg.pack(), src, dst, sport, dport)))

    def answer(q: dnslib.DNSRecord, name: str, qtype: str, aa: bool) -> dnslib.DNSRecord:
        r = q.reply()
        r.header.aa = int(aa)
        h = sum(name.encode()) % 200
        if name.startswith(("cdn.", "static.")):
            target = f"edge{h % 7}.cdn.example.net"
            r.add_answer(dnslib.RR(name, dnslib.QTYPE.CNAME, rdata=dnslib.CNAME(target), ttl=300))
            name = target
        if qtype == "AAAA":
            r.add_answer(dnslib.RR(name, dnslib.QTYPE.AAAA, rdata=dnslib.AAAA(f"2001:db8::{h:x}"), ttl=600))
        else:
            r.add_answer(dnslib.RR(name, dnslib.QTYPE.A, rdata=dnslib.A(f"203.0.113.{h}"), ttl=600))
        return r

    ts = START
    for i in range(900):
        ts += rng.uniform(0.2, 1.1)
        client = rng.choice(CLIENTS)
        sport = rng.randint(20000, 60000)
        name = rng.choice(NAMES)
        if rng.random() < 0.08:           # search-domain expansion: name.office.example.com
            name = f"{rng.choice(['printer', 'nas', 'wiki'])}.office.example.com"
        qtype = "AAAA" if rng.random() < 0.3 else "A"
        q = dnslib.DNSRecord(dnslib.DNSHeader(id=rng.randint(0, 65535), rd=1),
                             q=dnslib.DNSQuestion(name, getattr(dnslib.QTYPE, qtype)))
        send(ts, q, client, RESOLVER, sport, 53)
        rtt = 0.0004
        miss = rng.random() < 0.25
        if miss or "office" in name:      # cache miss: the resolver asks upstream
            uq = dnslib.DNSRecord(dnslib.DNSHeader(id=rng.randint(0, 65535), rd=0),   # iterative
                                  q=dnslib.DNSQuestion(name, getattr(dnslib.QTYPE, qtype)))
            auth, usport = rng.choice(AUTHS), rng.randint(1024, 65535)
            send(ts + 0.0002, uq, RESOLVER_UP, auth, usport, 53)
            up_rtt = rng.uniform(0.01, 0.06)
            if "office" in name:
                ur = uq.reply()
                ur.header.rcode = dnslib.RCODE.NXDOMAIN
            else:
                ur = answer(uq, name, qtype, aa=True)
            send(ts + 0.0002 + up_rtt, ur, auth, RESOLVER_UP, 53, usport)
            rtt += up_rtt + 0.0004
        if i == 400:                      # the one query that is never answered
            continue
        if "office" in name:
            r = q.reply()
            r.header.rcode = dnslib.RCODE.NXDOMAIN
        else:
            r = answer(q, name, qtype, aa=False)
        send(ts + rtt, r, RESOLVER, client, 53, sport)

    # A client sending malformed queries (compression pointer to itself).
    burst = START + 300
    for i in range(25):
        payload = bytes([0xBE, i, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xC0, 12, 0, 1, 0, 1])
        send(burst + i * 0.05, payload, "10.1.0.66", RESOLVER, 40000 + i, 53)

    # Spoofed responses racing the real one for an upstream query (Kaminsky-style).
    race = START + 420
    uq = dnslib.DNSRecord(dnslib.DNSHeader(id=31337, rd=0), q=dnslib.DNSQuestion("bank.example.com"))
    send(race, uq, RESOLVER_UP, AUTHS[0], 53001, 53)
    for k in range(30):
        spoof = uq.reply()
        spoof.header.id = rng.randint(0, 65535)
        spoof.add_answer(dnslib.RR("bank.example.com", rdata=dnslib.A("198.18.0.66"), ttl=86400))
        send(race + 0.001 + k * 0.0005, spoof, AUTHS[0], RESOLVER_UP, 53, 53001)
    send(race + 0.03, answer(uq, "bank.example.com", "A", aa=True), AUTHS[0], RESOLVER_UP, 53, 53001)

    write(out, frames)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)

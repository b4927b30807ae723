"""Parse throughput, all contenders on the same capture in one run.

Builds (or takes, --capture) a pcap of realistic resolver traffic: queries and
responses, 90 % IPv4 / 10 % IPv6, EDNS on most, CNAME chains, NXDOMAIN with
SOA, AAAA/MX/TXT answers. Prints messages/s for our parser reading the file
(the parser kept from pass to pass, as the sensor keeps it, and a new one each pass),
our parser over frames already in memory, the pure-Python twin, a
dnslib-per-packet loop and tshark (when installed), each with its ratio to
tshark; and reading the file with no parse at all, the ceiling of the first figure
(every message is one frame in the generated capture): with its records in place, as the
sensor reads a classic pcap file, and frame by frame through libpcap's pcap_next_ex. The slow contenders run on a prefix of the capture; rates are rates.
The last line is one JSON object.

    python bench/parse.py [--messages 1000000] [--distinct-pairs 4000] [--capture FILE] [--repeat 3]
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dnslib  # noqa: E402

from sensor.capture.offline import read_frames  # noqa: E402
from sensor.limits import DEFAULT_LIMITS  # noqa: E402
from sensor.parse import Parser  # noqa: E402
from sensor.parse.twin import decode_frame  # noqa: E402

PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
WORDS = ("mail www api cdn static login img video shop news blog app auth m edge "
         "assets media docs status portal secure cloud data search support").split()
TLDS = ("com", "net", "org", "de", "co.uk", "io", "fr", "com.au", "nl", "info")


def _name(rng: random.Random) -> str:
    labels = [rng.choice(WORDS)]
    if rng.random() < 0.3:
        labels.append(rng.choice(WORDS) + str(rng.randint(1, 99)))
    labels.append("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(4, 12))))
    return ".".join(labels) + "." + rng.choice(TLDS)


def _pair(rng: random.Random) -> tuple[bytes, bytes]:
    """One query and its response, wire format."""
    qname = _name(rng)
    qtype = rng.choices(["A", "AAAA", "MX", "TXT", "PTR", "HTTPS"], [55, 25, 5, 5, 7, 3])[0]
    q = dnslib.DNSRecord(dnslib.DNSHeader(id=rng.randint(0, 65535), rd=1),
                         q=dnslib.DNSQuestion(qname, getattr(dnslib.QTYPE, qtype)))
    edns = rng.random() < 0.8
    if edns:
        q.add_ar(dnslib.EDNS0(udp_len=1232, flags="do" if rng.random() < 0.3 else ""))
    r = q.reply()
    if rng.random() < 0.08:
        r.header.rcode = 3
        zone = ".".join(qname.split(".")[-2:])
        r.add_auth(dnslib.RR(zone, dnslib.QTYPE.SOA, ttl=900, rdata=dnslib.SOA(
            "ns1." + zone, "hostmaster." + zone, (2024010101, 7200, 900, 1209600, 300))))
    else:
        owner = qname
        for _ in range(rng.choice([0, 0, 0, 1, 2])):
            target = _name(rng)
            r.add_answer(dnslib.RR(owner, dnslib.QTYPE.CNAME, rdata=dnslib.CNAME(target), ttl=300))
            owner = target
        for _ in range(rng.randint(1, 4)):
            if qtype == "AAAA":
                rdata = dnslib.AAAA(f"2001:db8:{rng.randint(0, 65535):x}::{rng.randint(1, 65535):x}")
            elif qtype == "MX":
                rdata = dnslib.MX("mx" + str(rng.randint(1, 9)) + "." + qname, rng.choice([10, 20]))
            elif qtype == "TXT":
                rdata = dnslib.TXT("v=spf1 include:_spf." + qname + " ~all")
            elif qtype == "PTR":
                rdata = dnslib.PTR(_name(rng))
            else:
                rdata = dnslib.A(f"{rng.randint(1, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}")
            r.add_answer(dnslib.RR(owner, getattr(dnslib.QTYPE, qtype if qtype != "HTTPS" else "A"),
                                   rdata=rdata, ttl=rng.randint(30, 86400)))
    return q.pack(), r.pack()


def _frame(payload: bytes, v6: bool, client: bytes, server: bytes, sport: int, dport: int) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    if v6:
        ip = struct.pack("!IHBB", 6 << 28, len(udp), 17, 64) + client + server
        ethertype = 0x86DD
    else:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0, client, server)
        ethertype = 0x0800
    return b"\x02\0\0\0\0\x01\x02\0\0\0\0\x02" + struct.pack("!H", ethertype) + ip + udp


GENERATED_RESOLVERS = ("10.0.0.53", "2001:db8::35")
"""The resolver of the generated capture (what its site would configure, or discover)."""
GENERATED_CLIENT_NETWORKS = ("192.168.0.0/19", "2001:db8:1::/64")
"""The clients of the generated capture."""


GENERATED_PAIRS = 4000
"""Distinct query/response pairs the generated capture cycles through: names recur, as on a
resolver. As many pairs as the capture has makes every name new (the passive-DNS worst case:
every answer record is one the store has not seen)."""


def build_capture(path: str, messages: int, seed: int = 1, distinct_pairs: int = GENERATED_PAIRS) -> None:
    rng = random.Random(seed)
    pool = [_pair(rng) for _ in range(max(1, min(distinct_pairs, messages // 2)))]
    server4, server6 = (ipaddress.ip_address(a).packed for a in GENERATED_RESOLVERS)
    ts = 1_700_000_000.0
    with open(path, "wb") as f:
        f.write(PCAP_HEADER)
        for i in range(messages // 2):
            query, response = pool[i % len(pool)]
            txid = struct.pack("!H", i & 0xFFFF)
            query, response = txid + query[2:], txid + response[2:]
            v6 = i % 10 == 0
            client = (bytes.fromhex("20010db8000100000000000000") + struct.pack("!I", i % 5000)[1:]
                      if v6 else bytes([192, 168, (i >> 8) & 31, i & 255]))
            sport = 1024 + (i * 7919) % 60000
            for payload, src, dst, sp, dp in ((query, client, server6 if v6 else server4, sport, 53),
                                              (response, server6 if v6 else server4, client, 53, sport)):
                frame = _frame(payload, v6, src, dst, sp, dp)
                ts += 0.00002
                f.write(struct.pack("<IIII", int(ts), int(ts % 1 * 1e6), len(frame), len(frame)))
                f.write(frame)


def tshark_rate(path: str, frames: int | None = None) -> float | None:
    """Messages/s tshark decodes from `path` (its first `frames` frames), printing the DNS
    fields we compare on; None when tshark is not installed."""
    if not shutil.which("tshark"):
        return None
    limit = ["-c", str(frames)] if frames else []
    t0 = time.perf_counter()
    out = subprocess.run(["tshark", "-n", "-r", path, *limit, "-T", "fields", "-e", "dns.id",
                          "-e", "dns.qry.name", "-e", "dns.qry.type", "-e", "dns.flags.rcode",
                          "-e", "dns.a", "-e", "dns.aaaa", "-e", "dns.cname"],
                         capture_output=True, check=True).stdout
    return out.count(b"\n") / (time.perf_counter() - t0)


def print_rates(rows: list[tuple[str, float | None]], tshark: float | None, width: int = 28) -> None:
    """A table of msgs/s with each contender's ratio to tshark (rows without a rate are left out)."""
    print(f"{'contender':<{width}} {'msgs/s':>14} {'vs tshark':>10}")
    for label, rate in rows:
        if rate is None:
            continue
        ratio = f"{rate / tshark:9.1f}x" if tshark else "        -"
        print(f"{label:<{width}} {rate:>14,.0f} {ratio}")


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--capture", help="use this capture instead of generating one")
    ap.add_argument("--repeat", type=int, default=3, help="runs per fast contender (best is kept)")
    ap.add_argument("--slow-messages", type=int, default=20_000,
                    help="messages for the twin and the dnslib loop")
    ap.add_argument("--tshark-messages", type=int, default=100_000)
    ap.add_argument("--distinct-pairs", type=int, default=GENERATED_PAIRS,
                    help="query/response pairs the generated capture cycles through")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="dnssensor-bench-")
    try:
        path = args.capture or os.path.join(tmp, "bench.pcap")
        if not args.capture:
            t0 = time.perf_counter()
            build_capture(path, args.messages, distinct_pairs=args.distinct_pairs)
            print(f"built {path}: {args.messages} messages ({args.distinct_pairs} distinct pairs) "
                  f"in {time.perf_counter() - t0:.1f} s")
        parser = Parser()
        messages = sum(len(b) for b in parser.parse_file(path))

        # One parser reads the file each time, as the in-memory contender's parser parses
        # each time and as the sensor keeps one parser for all its input: the batch memory
        # it fills (45 MB here) is the heap's after the first pass. A parser made for one
        # pass only is timed too; its memory comes from the heap where an earlier parser
        # left it, and is faulted in page by page where glibc had given that back to the
        # kernel (11 k faults, about 40 ms, a pass of this capture).
        file_parser = Parser()

        def from_file(parser_for_pass=lambda: file_parser):
            for _ in parser_for_pass().parse_file(path):
                pass
        file_s = best_of(args.repeat, from_file)
        cold_s = best_of(args.repeat, lambda: from_file(Parser))

        def read_only(records_in_place=True):
            for _ in read_frames(path, DEFAULT_LIMITS.frames_per_read, records_in_place):
                pass
        read_s = best_of(args.repeat, read_only)
        read_libpcap_s = best_of(args.repeat, lambda: read_only(records_in_place=False))

        frames = list(read_frames(path, DEFAULT_LIMITS.frames_per_read))

        def in_memory():       # the same batches parse_file makes
            for fb in frames:
                parser.feed(fb)
                if parser.pending >= DEFAULT_LIMITS.messages_per_batch:
                    parser.take()
            parser.take()
        memory_s = best_of(args.repeat, in_memory)

        if args.capture:
            small = path
        else:
            small = os.path.join(tmp, "small.pcap")
            build_capture(small, args.slow_messages, seed=2)
        twin = Parser(backend="twin")
        t0 = time.perf_counter()
        twin_msgs = 0
        for b in twin.parse_file(small):
            twin_msgs += len(b)
            if twin_msgs >= args.slow_messages:
                break
        twin_rate = twin_msgs / (time.perf_counter() - t0)

        ports = frozenset((53, 5353))
        t0 = time.perf_counter()
        dnslib_msgs = 0
        for fb in read_frames(small, DEFAULT_LIMITS.frames_per_read):
            for sec, usec, off, caplen in fb.meta.tolist():
                d = decode_frame(fb.blob[off:off + caplen], fb.linktype, ports)
                if d.status == "dns" and d.payload:
                    dnslib.DNSRecord.parse(d.payload)
                    dnslib_msgs += 1
                    if dnslib_msgs >= args.slow_messages:
                        break
            if dnslib_msgs >= args.slow_messages:
                break
        dnslib_rate = dnslib_msgs / (time.perf_counter() - t0)

        sub = path
        if shutil.which("tshark") and not args.capture:
            sub = os.path.join(tmp, "tshark.pcap")
            build_capture(sub, args.tshark_messages, seed=3)
        tshark = tshark_rate(sub)

        print(f"\n{messages} messages; one core; best of {args.repeat} for our parser")
        print_rates([("ours, from the pcap file", messages / file_s),
                     ("  a new parser each pass", messages / cold_s),
                     ("ours, frames in memory", messages / memory_s),
                     ("pure-Python twin", twin_rate),
                     ("dnslib per packet", dnslib_rate),
                     ("tshark -T fields", tshark)], tshark)
        print(f"reading the file, no parse: {messages / read_s:,.0f} msgs/s "
              f"({read_s / messages * 1e6:.3f} us a message of the file figure's "
              f"{file_s / messages * 1e6:.3f}); frame by frame through libpcap: "
              f"{messages / read_libpcap_s:,.0f} msgs/s ({read_libpcap_s / read_s:.2f}x the time)")
        result = {
            "messages": messages,
            "distinct_pairs": None if args.capture else args.distinct_pairs,
            "ours_file_msgs_per_s": round(messages / file_s),
            "ours_file_new_parser_msgs_per_s": round(messages / cold_s),
            "ours_memory_msgs_per_s": round(messages / memory_s),
            "read_only_msgs_per_s": round(messages / read_s),
            "read_only_libpcap_msgs_per_s": round(messages / read_libpcap_s),
            "twin_msgs_per_s": round(twin_rate),
            "dnslib_msgs_per_s": round(dnslib_rate),
            "tshark_msgs_per_s": round(tshark) if tshark else None,
            "ratio_vs_tshark": round(messages / file_s / tshark, 1) if tshark else None,
        }
        print(json.dumps(result))
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

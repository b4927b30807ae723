"""Peak memory while replaying queries with unique random subdomains, every detector on.

The worst case for state: every query name is new (a random-subdomain flood), spread
over a few registered domains and many clients, so pending queries, passive-DNS rows,
rule groups and unique counts all grow until their bounds. Builds the capture (queries
only, written with a byte template, no DNS library), replays it with `sensor.engine.replay`
in a child process and reports that process's peak RSS against a baseline child that only
imports the sensor and loads its rules. The last line is one JSON object.

    python bench/memory.py [--queries 10000000]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LIMIT_MB = 512

CHILD = """
import json, resource, sys, time
sys.path.insert(0, {repo!r})
from dataclasses import replace
from sensor.config import Config
from sensor.rules import load_rules_dir
from sensor.detectors import anomaly_burst
rules = load_rules_dir({rules!r}); anomaly_burst.load({rules!r})
from sensor.parse.psl import load_rules; load_rules()
if {replay!r}:
    from sensor.engine.replay import replay
    conf = replace(Config(), db_path={db!r}, rules_dir={rules!r})
    t = time.perf_counter()
    r = replay([{capture!r}], conf, progress_to=None)
    out = {{"messages": r.messages, "seconds": time.perf_counter() - t}}
else:
    out = {{}}
out["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def build(path: str, queries: int, seed: int = 5) -> None:
    rng = random.Random(seed)
    domains = [b"victim%d.example" % i for i in range(8)]
    letters = b"abcdefghijklmnopqrstuvwxyz0123456789"
    eth = b"\x02\0\0\0\0\x01\x02\0\0\0\0\x02\x08\x00"
    resolver = bytes([10, 3, 0, 53])          # one of the resolvers in rules/tags.toml
    ts = 1_767_400_000.0
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        chunk = []
        for i in range(queries):
            label = bytes(rng.choices(letters, k=12)) + b"%x" % i          # unique by construction
            dom = domains[i & 7]
            qname = b"".join(bytes([len(x)]) + x for x in [label] + dom.split(b".")) + b"\0"
            dns = struct.pack("!HHHHHH", i & 0xFFFF, 0x0100, 1, 0, 0, 0) + qname + b"\0\x01\0\x01"
            udp = struct.pack("!HHHH", 1024 + (i * 7) % 60000, 53, 8 + len(dns), 0) + dns
            client = bytes([10, 10 + (i >> 16) % 8, (i >> 8) & 255, i & 255])
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0, client, resolver)
            frame = eth + ip + udp
            ts += 0.00001
            chunk.append(struct.pack("<IIII", int(ts), int(ts % 1 * 1e6), len(frame), len(frame)) + frame)
            if len(chunk) >= 100_000:
                f.write(b"".join(chunk))
                chunk = []
        f.write(b"".join(chunk))


def child(replay: bool, capture: str, db: str) -> dict:
    code = CHILD.format(repo=str(REPO), rules=str(REPO / "rules"), replay=replay, capture=capture, db=db)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--queries", type=int, default=10_000_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="dnssensor-bench-memory-") as tmp:
        capture = os.path.join(tmp, "unique.pcap")
        t = time.perf_counter()
        build(capture, args.queries)
        print(f"built {args.queries:,} queries ({os.path.getsize(capture) / 1e6:,.0f} MB) "
              f"in {time.perf_counter() - t:.0f} s")
        base = child(False, capture, os.path.join(tmp, "base.db"))
        run = child(True, capture, os.path.join(tmp, "run.db"))
    rate = run["messages"] / run["seconds"]
    print(f"baseline (imports, rules loaded): {base['max_rss_mb']:,.0f} MB peak RSS")
    print(f"replay of {run['messages']:,} unique-name queries, all detectors: {run['max_rss_mb']:,.0f} MB peak RSS "
          f"({run['max_rss_mb'] / base['max_rss_mb']:.1f}x baseline), {rate:,.0f} msgs/s; limit {LIMIT_MB} MB")
    print(json.dumps({"queries": run["messages"], "max_rss_mb": round(run["max_rss_mb"]),
                      "baseline_rss_mb": round(base["max_rss_mb"]), "within_limit": run["max_rss_mb"] < LIMIT_MB,
                      "msgs_per_s": round(rate)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Passive-DNS writes into a large table: the store's upsert (rows in name order) against
the same statement with rows as they come, in one run.

A sensor's pdns table grows to gigabytes, far past the writer's page cache, and under a
flood of names never seen before every answer is a new row: the cost of a new row at
that size bounds what the writer takes. This grows a table of --rows random records
(names under 5000 domains, 70 % A records, 30 % CNAMEs), copies it, and upserts the same
--flushes flushes of --flush-rows new records into each copy, one way each, alternating
(best of --repeat), timed after --warm-flushes (a running writer's page cache is warm).
The last line is one JSON object.

    python bench/store.py [--rows 3000000] [--flush-rows 50000] [--flushes 10] [--warm-flushes 5]
                          [--repeat 2]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sensor.store import PDNS_UPSERT, Store  # noqa: E402


def records(rng: random.Random, domains: list[str], n: int) -> list[tuple]:
    letters = "abcdefghijklmnopqrstuvwxyz0123456789"
    out = []
    for _ in range(n):
        name = "".join(rng.choice(letters) for _ in range(10)) + "." + rng.choice(domains)
        if rng.random() < 0.3:
            out.append((name, "CNAME", f"e{rng.randrange(10**6)}.cdn.{rng.choice(domains)}", 1.0, 2.0, 1))
        else:
            out.append((name, "A", ".".join(str(rng.randrange(256)) for _ in range(4)), 1.0, 2.0, 1))
    return out


def timed(path: str, warm: list[list[tuple]], flushes: list[list[tuple]], in_key_order: bool) -> float:
    """Seconds per new row over `flushes`, after `warm` (untimed: a running writer's page
    cache is warm)."""
    store = Store(path)
    spent = 0.0
    for k, rows in enumerate(warm + flushes):
        t = time.perf_counter()
        with store.transaction() as conn:
            if in_key_order:
                store.add_pdns(conn, rows)
            else:
                PDNS_UPSERT.run(conn, rows)   # as they come
        if k >= len(warm):
            spent += time.perf_counter() - t
    store.conn.close()
    return spent / sum(len(f) for f in flushes)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=3_000_000, help="records in the table before the flushes")
    ap.add_argument("--flush-rows", type=int, default=50_000, help="new records per flush")
    ap.add_argument("--flushes", type=int, default=10)
    ap.add_argument("--warm-flushes", type=int, default=5, help="flushes before the timed ones")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    rng = random.Random(1)
    domains = ["".join(rng.choice("abcdefghijklmnop") for _ in range(8)) + ".com" for _ in range(5000)]
    tmp = Path(tempfile.mkdtemp(prefix="dnssensor-bench-store-"))
    try:
        grown = str(tmp / "grown.db")
        store = Store(grown)
        left = args.rows
        while left > 0:
            chunk = records(rng, domains, min(left, 500_000))
            with store.transaction() as conn:
                conn.executemany("INSERT OR IGNORE INTO pdns VALUES (?, ?, ?, ?, ?, ?)", sorted(chunk))
            left -= len(chunk)
        store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        store.conn.close()
        size_mb = os.path.getsize(grown) / 2**20
        warm = [records(rng, domains, args.flush_rows) for _ in range(args.warm_flushes)]
        flushes = [records(rng, domains, args.flush_rows) for _ in range(args.flushes)]
        best = {True: float("inf"), False: float("inf")}
        for _ in range(args.repeat):
            for in_key_order in (False, True):
                copy = str(tmp / "copy.db")
                shutil.copy(grown, copy)
                best[in_key_order] = min(best[in_key_order], timed(copy, warm, flushes, in_key_order))
                os.remove(copy)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ours, baseline = best[True] * 1e6, best[False] * 1e6
    print(f"table of {args.rows:,} records ({size_mb:.0f} MB); {args.flushes} flushes of "
          f"{args.flush_rows:,} new records each; best of {args.repeat}")
    print(f"{'upsert':32s} {'us per new row':>15s}")
    print(f"{'rows as they come':32s} {baseline:15.2f}")
    print(f"{'in name order (the store)':32s} {ours:15.2f}   {baseline / ours:.2f}x")
    print(json.dumps({"table_rows": args.rows, "table_mb": round(size_mb), "flush_rows": args.flush_rows,
                      "us_per_row_as_they_come": round(baseline, 2), "us_per_row_in_key_order": round(ours, 2),
                      "speedup": round(baseline / ours, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

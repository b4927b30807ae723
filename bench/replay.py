"""Full-pipeline replay throughput (parse, track, aggregate, store) against tshark.

Builds the same realistic capture as bench/parse.py (or takes --capture),
replays it through `sensor.engine.replay` into a fresh SQLite file, and runs
tshark on the same file (its first --tshark-frames frames; rates are rates), each
--repeat times, keeping the best of each. A first replay warms the process up and
is reported on its own: it pays for what a sensor pays once, when it starts (the first
touch of the batch memory, about 20 k page faults for the default million messages, and
set-up done on first use).
The site is configured as a deployment would have it (on a resolver box it is
discovered): the generated capture's resolver addresses and client networks, or
--resolver/--client-network for a given capture.
Replays twice over: with every rule of rules/ on and with no rules (an empty rules
directory), and reports the parse-only rate in the same run, so the costs of
tracking and storing and of the detectors show as ratios. The last line is one JSON
object.

    python bench/replay.py [--messages 1000000] [--distinct-pairs 4000]
                           [--capture FILE [--resolver A]... [--client-network N]...] [--repeat 2]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from contextlib import closing
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from parse import (GENERATED_CLIENT_NETWORKS, GENERATED_PAIRS, GENERATED_RESOLVERS, build_capture,  # noqa: E402
                   print_rates, tshark_rate)

from sensor.config import Config  # noqa: E402
from sensor.engine.replay import replay  # noqa: E402
from sensor.parse import Parser  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--capture", help="use this capture instead of generating one")
    ap.add_argument("--resolver", action="append", default=None,
                    help="the site's resolver address (repeatable; default: the generated capture's)")
    ap.add_argument("--client-network", action="append", default=None,
                    help="a network the resolver serves (repeatable; default: the generated capture's)")
    ap.add_argument("--repeat", type=int, default=2, help="replays and tshark runs (the best of each is kept)")
    ap.add_argument("--tshark-frames", type=int, default=200_000)
    ap.add_argument("--distinct-pairs", type=int, default=GENERATED_PAIRS,
                    help="query/response pairs the generated capture cycles through; as many as "
                         "--messages / 2 makes every answer record new to the store")
    args = ap.parse_args()
    if args.capture:
        resolvers, networks = tuple(args.resolver or ()), tuple(args.client_network or ())
    else:
        resolvers = tuple(args.resolver or GENERATED_RESOLVERS)
        networks = tuple(args.client_network or GENERATED_CLIENT_NETWORKS)
    site = dict(resolver_addresses=resolvers, client_networks=networks, discover_networks=False)

    tmp = tempfile.mkdtemp(prefix="dnssensor-bench-replay-")
    try:
        path = args.capture or os.path.join(tmp, "bench.pcap")
        if not args.capture:
            build_capture(path, args.messages, distinct_pairs=args.distinct_pairs)
        no_rules = os.path.join(tmp, "no-rules")
        os.mkdir(no_rules)

        def one_replay(rules_dir: str, db: str):
            return replay([path], replace(Config(), db_path=db, rules_dir=rules_dir, **site), progress_to=None)

        def best_replay(rules_dir: str):
            best, best_db = None, ""
            for i in range(args.repeat):
                db = os.path.join(tmp, f"replay-{os.path.basename(rules_dir)}-{i}.db")
                r = one_replay(rules_dir, db)
                if best is None or r.seconds < best.seconds:
                    best, best_db = r, db
            return best, best_db
        rules_dir = str(Path(__file__).resolve().parent.parent / "rules")
        first = one_replay(rules_dir, os.path.join(tmp, "replay-first.db"))
        best, best_db = best_replay(rules_dir)
        bare, _ = best_replay(no_rules)
        with closing(sqlite3.connect(best_db)) as conn:
            pdns_rows = conn.execute("SELECT count(*) FROM pdns").fetchone()[0]
        parse_s, parsed = float("inf"), 0
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            parsed = sum(len(b) for b in Parser().parse_file(path))
            parse_s = min(parse_s, time.perf_counter() - t0)

        # tshark's best of as many runs as the replay's: a slow run of the baseline would
        # flatter the ratio
        tshark_runs = [tshark_rate(path, args.tshark_frames) for _ in range(args.repeat)]
        tshark = max(tshark_runs) if all(tshark_runs) else None

        replay_rate = best.messages / best.seconds
        first_rate = first.messages / first.seconds
        bare_rate = bare.messages / bare.seconds
        parse_rate = parsed / parse_s
        print(f"\n{best.messages} messages; one core; best of {args.repeat} replays (after a first one) "
              f"and of {args.repeat} tshark runs")
        print_rates([("replay, all detectors", replay_rate), ("first replay of the process", first_rate),
                     ("replay, no detectors", bare_rate),
                     ("parse only (same run)", parse_rate), ("tshark -T fields", tshark)], tshark, width=36)
        print(f"site: resolvers {', '.join(resolvers) or 'none'}; client networks {', '.join(networks) or 'none'}")
        print(f"tracking: {best.tracking}")
        print(f"passive DNS: {pdns_rows} distinct answer records stored")
        result = {
            "messages": best.messages,
            "distinct_pairs": None if args.capture else args.distinct_pairs,
            "pdns_rows": pdns_rows,
            "resolvers": list(resolvers),
            "client_networks": list(networks),
            "replay_msgs_per_s": round(replay_rate),
            "replay_first_msgs_per_s": round(first_rate),
            "replay_no_detectors_msgs_per_s": round(bare_rate),
            "detectors_cost_ratio": round(bare_rate / replay_rate, 2),
            "parse_msgs_per_s": round(parse_rate),
            "replay_vs_parse": round(replay_rate / parse_rate, 3),
            "tshark_msgs_per_s": round(tshark) if tshark else None,
            "ratio_vs_tshark": round(replay_rate / tshark, 1) if tshark else None,
        }
        print(json.dumps(result))
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

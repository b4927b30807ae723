"""Series baselines: precision and recall per method on generated weeks, and the cost.

Four generated weeks of per-minute counts (daily and weekly rhythm, slow trend, Poisson
noise) with injected spikes, drops to zero, a level shift and slow drifts (tests/seriesgen.py); each
method is scored on the events after two weeks of history; Half-Space Trees see queries,
NXDOMAIN and SERVFAIL together. Cost: fitting the baseline and flagging, per series and per
minute of history. The last line is one JSON object.

    python bench/series.py [--weeks 4] [--seeds 5]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from seriesgen import generate, generate_resolver, score  # noqa: E402

from sensor import series  # noqa: E402
from sensor.series import hst, methods  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weeks", type=int, default=4)
    ap.add_argument("--seeds", type=int, default=5, help="generated series per method")
    args = ap.parse_args()
    result: dict = {}
    for method in methods.METHODS:
        def judge(data: tuple, method: str = method) -> list:
            minutes, values, events = data
            base = series.fit(minutes, values)
            flags = methods.flags(method, values, base)
            return series.episodes(flags, values, base.expected, methods.METHODS[method].min_minutes)
        result[method] = measure(method, lambda seed: generate(weeks=args.weeks, seed=seed), judge, 1, args.seeds)

    # Half-Space Trees look at queries, NXDOMAIN and SERVFAIL together; the events are in queries
    def judge_hst(data: tuple) -> list:
        minutes, columns, events = data
        flags, which, scores, bases = hst.flags_over(minutes, columns)
        return series.episodes(np.where(which == 0, flags, 0), columns["queries"], bases["queries"].expected)
    result["hst"] = measure("hst", lambda seed: generate_resolver(weeks=args.weeks, seed=seed), judge_hst, 3,
                            args.seeds)
    print(json.dumps(result))
    return 0


def measure(name: str, generate_one, judge, series_count: int, seeds: int) -> dict:
    """Precision, recall and cost of `judge(data)` -> episodes over the generated
    `generate_one(seed)` -> (minutes, values, events); only judging is timed."""
    precisions, recalls, seconds, minutes_total = [], [], 0.0, 0
    for seed in range(1, seeds + 1):
        data = generate_one(seed)
        t = time.perf_counter()
        found = judge(data)
        seconds += time.perf_counter() - t
        minutes_total += len(data[0]) * series_count
        p, r = score(found, data[2], 14 * 1440)
        precisions.append(p)
        recalls.append(r)
    out = {"precision": round(sum(precisions) / len(precisions), 3), "recall": round(sum(recalls) / len(recalls), 3),
           "us_per_series_minute": round(seconds / minutes_total * 1e6, 3)}
    print(f"{name:<16} precision {out['precision']:.3f}  recall {out['recall']:.3f}  "
          f"{out['us_per_series_minute']:.3f} µs per series-minute")
    return out

if __name__ == "__main__":
    sys.exit(main())

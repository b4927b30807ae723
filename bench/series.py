"""Series baselines: precision and recall per method on generated weeks, and the cost.

Four generated weeks of per-minute counts (daily and weekly rhythm, slow trend, Poisson
noise) with injected spikes, drops to zero and a level shift (tests/seriesgen.py); each
method is scored on the events after two weeks of history. Cost: fitting the baseline and
flagging, per series and per minute of history. The last line is one JSON object.

    python bench/series.py [--weeks 4] [--seeds 5]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from seriesgen import generate, score  # noqa: E402

from sensor import series  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weeks", type=int, default=4)
    ap.add_argument("--seeds", type=int, default=5, help="generated series per method")
    args = ap.parse_args()
    result: dict = {}
    for method in series.METHODS:
        precisions, recalls, seconds, minutes_total = [], [], 0.0, 0
        for seed in range(args.seeds):
            minutes, values, events = generate(weeks=args.weeks, seed=seed + 1)
            t = time.perf_counter()
            base = series.fit(minutes, values)
            flags = series.flags(method, values, base)
            found = series.episodes(flags, values, base.expected)
            seconds += time.perf_counter() - t
            minutes_total += len(values)
            p, r = score(found, events, 14 * 1440)
            precisions.append(p)
            recalls.append(r)
        result[method] = {"precision": round(sum(precisions) / len(precisions), 3),
                          "recall": round(sum(recalls) / len(recalls), 3),
                          "us_per_series_minute": round(seconds / minutes_total * 1e6, 3)}
        print(f"{method:<16} precision {result[method]['precision']:.3f}  recall {result[method]['recall']:.3f}  "
              f"{result[method]['us_per_series_minute']:.3f} µs per series-minute")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

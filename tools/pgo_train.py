"""The training run of the profile-guided build: what the compiled core meets most in a
resolver's traffic, and the rare paths too, less weighted.

- The captures shipped in tests/data, parsed as the engine's parser does (hot columns on):
  malformed, tunnel, fragment and TCP traffic keep the rare paths in the profile.
- Resolver traffic as bench/parse.py generates it (another seed than the benchmarks'):
  queries with EDNS, A/AAAA/CNAME answers, NXDOMAIN, names that recur, replayed through
  the whole engine with the shipped rules, so that tracking, passive DNS, the per-minute
  tables and the rules' compiled helpers are trained as well as the parser. Trained on
  tests/data alone, those had no profile, and the parser's was that of captures whose
  names rarely recur: replaying bench/replay.py's capture took 446-455 ms instead of
  468-474 once the engine was trained on this, a flood of random names 1.03-1.04 s
  instead of 1.07-1.09 (interleaved rounds).

    DNSSENSOR_PGO=generate python setup.py build_ext --inplace --force
    python tools/pgo_train.py
    DNSSENSOR_PGO=use python setup.py build_ext --inplace --force
"""
from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from parse import GENERATED_CLIENT_NETWORKS, GENERATED_RESOLVERS, build_capture  # noqa: E402
from sensor.config import Config  # noqa: E402
from sensor.detectors.samples import SAMPLE_PORTS  # noqa: E402
from sensor.engine.replay import replay  # noqa: E402
from sensor.errors import CaptureError  # noqa: E402
from sensor.parse import Parser  # noqa: E402
from sensor.schema import HOT_COLUMNS  # noqa: E402

ROUNDS = 20
"""Passes over the captures of tests/data: enough for the counts of the common paths to
dwarf the rest."""
RESOLVER_MESSAGES = 200_000
"""Messages of generated resolver traffic replayed through the engine, RESOLVER_ROUNDS times."""
RESOLVER_ROUNDS = 3
RESOLVER_SEED = 7
"""Not the benchmarks' seed (1): the same kind of traffic, other names and answers."""


def main() -> int:
    captures = sorted((REPO / "tests" / "data").glob("*.pcap*"))
    messages = 0
    for _ in range(ROUNDS):
        for path in captures:
            parser = Parser(ports=SAMPLE_PORTS, hot_columns=HOT_COLUMNS)
            try:
                for batch in parser.parse_file(str(path)):
                    messages += len(batch)
            except CaptureError:            # a capture cut short: what it held still trained
                pass
    with tempfile.TemporaryDirectory() as tmp:
        capture = os.path.join(tmp, "resolver.pcap")
        build_capture(capture, RESOLVER_MESSAGES, seed=RESOLVER_SEED)
        for i in range(RESOLVER_ROUNDS):
            config = replace(Config(), db_path=os.path.join(tmp, f"train{i}.db"), rules_dir=str(REPO / "rules"),
                             resolver_addresses=GENERATED_RESOLVERS, client_networks=GENERATED_CLIENT_NETWORKS,
                             discover_networks=False)
            messages += replay([capture], config, progress_to=None).messages
    print(f"profile-guided build: trained on {messages} messages from {len(captures)} captures "
          f"and {RESOLVER_ROUNDS} replays of generated resolver traffic")
    return 0


if __name__ == "__main__":
    sys.exit(main())

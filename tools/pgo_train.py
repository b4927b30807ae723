"""The training run of the profile-guided build: parse the captures shipped in
tests/data with the instrumented core, as the engine's parser does (hot columns on),
so the compiler learns which branches real traffic takes (the usual A/AAAA/CNAME
response, the question-name cache hit) and which it does not (the malformed, tunnel
and fragment captures there keep the rare paths in the profile, only less weighted).

    DNSSENSOR_PGO=generate python setup.py build_ext --inplace --force
    python tools/pgo_train.py
    DNSSENSOR_PGO=use python setup.py build_ext --inplace --force
"""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sensor.detectors.samples import SAMPLE_PORTS  # noqa: E402
from sensor.errors import CaptureError  # noqa: E402
from sensor.parse import Parser  # noqa: E402
from sensor.schema import HOT_COLUMNS  # noqa: E402

ROUNDS = 20
"""Passes over the captures: enough for the counts of the common paths to dwarf the rest."""


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
    print(f"profile-guided build: trained on {messages} messages from {len(captures)} captures")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Coverage-guided fuzzing of the compiled parser with atheris.

Each input is one DNS message. The harness checks that nothing raises and that
the compiled parser and the pure-Python twin produce the same records.

    make fuzz                       # seeds fuzz/corpus from the captures, then runs
    python fuzz/fuzz_parse.py -atheris_runs=1000000 fuzz/corpus

Seeds: every DNS payload in tests/data and ../shared/pcaps (written to
fuzz/corpus on first run).
"""
import sys
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import atheris  # noqa: E402

with atheris.instrument_imports():
    from sensor.parse import Parser
    from sensor.parse.twin import decode_frame

from harness import capture_frames, run  # noqa: E402

COMPILED = Parser(backend="compiled")
TWIN = Parser(backend="twin")
PORTS = frozenset((53, 5353, 8053, 1053))


def seeds() -> Iterator[bytes]:
    for linktype, frames in capture_frames():
        for frame in frames:
            d = decode_frame(frame, linktype, PORTS)
            if d.payload and d.sport in PORTS | {d.dport}:
                yield d.payload


def test_one_input(data: bytes) -> None:
    a = list(COMPILED.parse_payloads([data]).records())
    b = list(TWIN.parse_payloads([data]).records())
    if a != b:
        raise AssertionError(f"compiled and twin disagree on {data!r}")


if __name__ == "__main__":
    run(test_one_input, seeds)

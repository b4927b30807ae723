"""Coverage-guided fuzzing of frame decoding with atheris: link layers, IPv4/IPv6 with
extension headers, UDP, TCP reassembly and IP fragments, then the DNS parser.

Each input is a few frames of one link type, so that state carried from frame to frame
(TCP streams, fragments awaiting the rest) is fuzzed too: the first byte picks the link
type, then each frame is a 2-byte big-endian length and its bytes. The harness checks
that nothing raises and that the compiled parser and the pure-Python twin produce the
same records and the same counters.

    make fuzz                       # seeds the corpora from the captures, then runs
    python fuzz/fuzz_frames.py -atheris_runs=100000 fuzz/corpus-frames

Seeds: runs of consecutive frames from every capture in tests/data and ../shared/pcaps
(written to the corpus folder on first run).
"""
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import atheris  # noqa: E402

with atheris.instrument_imports():
    import numpy as np
    from sensor.capture.offline import FrameBatch
    from sensor.parse import Parser

from harness import capture_frames, run  # noqa: E402

LINKTYPES = (1, 0, 108, 12, 14, 101, 228, 229, 113, 276, 10)
"""The link types the decoder knows; the first input byte picks one (modulo)."""
PORTS = (53, 5353, 8053, 1053)
MAX_FRAMES = 16
"""Frames per input: enough for a TCP exchange or a fragmented response."""
SEED_FRAMES = 8
_LENGTH = struct.Struct("!H")


def encode(linktype: int, frames: list[bytes]) -> bytes:
    return bytes([LINKTYPES.index(linktype)]) + b"".join(_LENGTH.pack(len(f)) + f for f in frames)


def decode(data: bytes) -> tuple[int, list[bytes]]:
    if not data:
        return LINKTYPES[0], []
    linktype, frames, at = LINKTYPES[data[0] % len(LINKTYPES)], [], 1
    while at + _LENGTH.size <= len(data) and len(frames) < MAX_FRAMES:
        (size,) = _LENGTH.unpack_from(data, at)
        at += _LENGTH.size
        frames.append(data[at:at + size])
        at += size
    return linktype, frames


def seeds() -> Iterator[bytes]:
    for linktype, frames in capture_frames():
        if linktype in LINKTYPES:
            for start in range(0, min(len(frames), 64 * SEED_FRAMES), SEED_FRAMES):
                yield encode(linktype, frames[start:start + SEED_FRAMES])


def parse(backend: str, linktype: int, frames: list[bytes]) -> tuple[list, dict]:
    meta = np.zeros((len(frames), 4), dtype=np.uint32)
    offset = 0
    for i, frame in enumerate(frames):
        meta[i] = (1000 + i, 0, offset, len(frame))
        offset += len(frame)
    parser = Parser(backend=backend, ports=PORTS)
    parser.feed(FrameBatch(b"".join(frames), meta, linktype, 1))
    batch = parser.take()
    return list(batch.records()), dict(batch.counters)


def test_one_input(data: bytes) -> None:
    linktype, frames = decode(data)
    if not frames:
        return
    compiled, twin = parse("compiled", linktype, frames), parse("twin", linktype, frames)
    if compiled != twin:
        raise AssertionError(f"compiled and twin disagree on link type {linktype}, frames {frames!r}")


if __name__ == "__main__":
    run(test_one_input, seeds)

"""Reading capture files (pcap and pcapng) through libpcap, a batch of frames at a time."""
from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pcapy

from sensor.errors import CaptureError


@dataclass
class FrameBatch:
    """Frames as pcapy-ng's next_batch() returns them: one blob and a table of
    (seconds, microseconds, offset, caplen) rows, plus the link type and the
    1-based number of the first frame in the capture."""
    blob: bytes
    meta: np.ndarray
    linktype: int
    first_frame: int


def read_frames(path: str, frames_per_read: int) -> Iterator[FrameBatch]:
    """Yield the frames of one capture file; CaptureError when it cannot be read."""
    if os.path.isdir(path):
        raise CaptureError(f"{path}: is a directory, not a capture file")
    try:
        reader = pcapy.open_offline(path)
    except pcapy.PcapError as e:
        raise CaptureError(f"{path}: {e}") from None
    linktype = reader.datalink()
    first = 1
    while True:
        try:
            blob, meta = reader.next_batch(frames_per_read)
        except pcapy.PcapError as e:
            # libpcap reports a capture cut off mid-record only after the
            # frames before it; those have been yielded already.
            raise CaptureError(f"{path}: {e} (after frame {first - 1})") from None
        if not meta:
            return
        table = np.frombuffer(meta, dtype=np.uint32).reshape(-1, 4)
        yield FrameBatch(blob, table, linktype, first)
        first += table.shape[0]

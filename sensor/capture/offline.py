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
        # libpcap names the file itself when it cannot open it, not when it cannot read it
        message = str(e)
        raise CaptureError(message if message.startswith(f"{path}: ") else f"{path}: {message}") from None
    linktype = reader.datalink()
    first = 1
    while True:
        try:
            blob, meta = reader.next_batch(frames_per_read)
        except pcapy.PcapError as e:
            # next_batch() drops the frames it had read when it meets a record
            # cut short (a capture whose writer was killed): read that last
            # stretch again frame by frame so none of them is lost.
            tail = _frames_before_error(path, skip=first - 1)
            if tail is not None:
                yield FrameBatch(tail[0], tail[1], linktype, first)
                first += tail[1].shape[0]
            raise CaptureError(f"{path}: {e} (after frame {first - 1})") from None
        if not meta:
            return
        table = np.frombuffer(meta, dtype=np.uint32).reshape(-1, 4)
        yield FrameBatch(blob, table, linktype, first)
        first += table.shape[0]


def _frames_before_error(path: str, skip: int) -> tuple[bytes, np.ndarray] | None:
    reader = pcapy.open_offline(path)
    for _ in range(skip):
        reader.next()
    blob, rows = bytearray(), []
    while True:
        try:
            hdr, data = reader.next()
        except pcapy.PcapError:
            break
        if hdr is None:
            break
        sec, usec = hdr.getts()
        rows.append((sec, usec, len(blob), len(data)))
        blob += data
    if not rows:
        return None
    return bytes(blob), np.array(rows, dtype=np.uint32).reshape(-1, 4)

"""Reading capture files (pcap and pcapng, plain or compressed with gzip, bzip2 or xz)
through libpcap, a batch of frames at a time.

A compressed capture (tcpdump -z gzip, rotated archives) is read as it is: a child
process decompresses it into a pipe that libpcap opens as its file, so nothing is
written to disk. A process, not a thread: pcapy-ng holds the interpreter lock while
libpcap opens a file, so a thread could never fill the pipe that open waits on. A
small archive is decompressed here instead, into an in-memory file.

libpcap reads a capture file through C stdio, whose buffer is the file's block size
(4 KiB): one read() system call for every 4 KiB. A plain capture file that libpcap reads
frame by frame (pcapng) gets a buffer of SAVEFILE_BUFFER_BYTES instead, and stdio's
per-call lock is switched off (_tune_stdio).

pcapy-ng opens the file; its frames are then read on that libpcap handle by the compiled
FrameReader (pcap_next_ex, one copy of each frame into the batch), where next_batch()
copied each twice more: 72 -> 51 ms a million frames of bench/parse.py's capture.

A plain classic pcap file in this machine's byte order (what tcpdump and dumpcap -P
write here) is read with its records in place (FrameReader.records_in_place): each batch
is a stretch of the file read from libpcap's FILE in one call, the frames' rows come from
the record headers, and any record that is not plain goes through pcap_next_ex. libpcap
still opens and checks the file, reads every other format, and has the last word on an
odd record: 62 -> 34 ms to read a million frames of bench/parse.py's capture.
"""
from __future__ import annotations

import bz2
import ctypes
import fcntl
import functools
import gzip
import importlib.metadata
import lzma
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pcapy

from sensor.capture._frames import READ_ERROR, READ_MORE, FrameReader
from sensor.errors import CaptureError
from sensor.heap import glibc

PCAP_RECORD_HEADER = 16
PCAP_FILE_HEADER = 24
PCAP_MAGICS = (0xA1B2C3D4, 0xA1B23C4D)
"""Classic pcap's magic numbers, read in this machine's byte order: microsecond and
nanosecond fractions."""
STDIN = "-"
"""The file name libpcap reads standard input for."""

COMPRESSIONS = ((b"\x1f\x8b", "gzip"), (b"BZh", "bz2"), (b"\xfd7zXZ\x00", "lzma"))
"""Magic bytes of the compressions read directly, and the standard module for each."""
COMPRESSION_NAMES = {"gzip": "gzip", "bz2": "bzip2", "lzma": "xz"}
_OPENERS = {"gzip": gzip.open, "bz2": bz2.open, "lzma": lzma.open}
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
DECOMPRESS_CHUNK_BYTES = 1 << 16
"""Decompressed bytes the child writes into the pipe at a time."""
FIRST_FRAME_PROBE_BYTES = 1 << 20
"""Decompressed bytes of an archive's start that first_frame_time() hands libpcap: the file
header and a first frame of any size a capture allows (snaplen 262144)."""
SMALL_ARCHIVE_BYTES = 1 << 20
"""Archives up to this size on disk are decompressed in this process, into memory, when
they hold at most SMALL_ARCHIVE_CONTENT_BYTES: a child process costs tens of milliseconds,
which a minute's rotated file does not."""
SMALL_ARCHIVE_CONTENT_BYTES = 16 << 20
SAVEFILE_BUFFER_BYTES = 1 << 20
"""The stdio buffer libpcap reads a plain capture file through, frame by frame. With
libpcap's own (4 KiB) a third of the time spent reading a file of DNS frames went into
read() calls (bench/parse.py, reading frame by frame: 0.077 -> 0.053 us a frame with 1 MiB)."""
FRAME_BATCH_BYTES = 4 << 20
"""Bytes of frames read into one batch at most (besides frames_per_read): a capture of
full-size frames gives batches of about 2 800 of them. A single larger frame (snaplen
allows 256 KiB) gets a batch of its own."""
FSETLOCKING_BYCALLER = 2
"""glibc's __fsetlocking() mode (stdio_ext.h): the caller serialises a FILE's use itself,
so stdio takes no lock on each call."""
PCAPY_READER_FIELDS_BYTES = 88
"""What pcapy-ng 2.x's Reader object holds after the object header: the pcap_t pointer
first, then the network, mask and filter counters. A Reader of another size is of another
layout, and its file keeps libpcap's buffer."""
PIPE_BYTES = 1 << 20
"""The pipe's size (Linux's default ceiling for an unprivileged process): the child
decompresses this far ahead while the reader parses, where the default 64 KiB made
the two take turns."""

_INFLATE = """
import os, sys, {module}
try:
    with {module}.open(sys.stdin.buffer) as stream:
        while chunk := stream.read1({chunk}):
            sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()
except BrokenPipeError:
    os._exit(0)         # the reader wants no more; exiting normally would flush into the pipe again
except Exception as e:
    sys.stderr.write(str(e) or type(e).__name__)
    sys.exit(1)
"""


@dataclass
class FrameBatch:
    """Frames as pcapy-ng's next_batch() returns them: one blob and a table of
    (seconds, microseconds, offset, caplen) rows, plus the link type, the
    1-based number of the first frame in the capture, and how many bytes of
    the capture file(s) on disk the frames stand for (a replay's progress). A frame
    is where its row says: a blob read in place holds the record headers too."""
    blob: bytes
    meta: np.ndarray
    linktype: int
    first_frame: int
    source_bytes: int = 0
    _seconds: tuple[int, int] | None = field(default=None, init=False, repr=False, compare=False)

    def seconds(self) -> tuple[int, int]:
        """The earliest and the latest frame's second (frames exist), worked out once for
        the stages that each ask (the capture's spans, the frames counted per minute)."""
        if self._seconds is None:
            column = self.meta[:, 0]
            self._seconds = (int(column.min()), int(column.max()))
        return self._seconds


class _Inflater:
    """A child process decompressing one capture file into a pipe."""

    def __init__(self, path: str, module: str) -> None:
        self.compression = COMPRESSION_NAMES[module]
        self._file = open(path, "rb")
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _INFLATE.format(module=module, chunk=DECOMPRESS_CHUNK_BYTES)],
            stdin=self._file, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            fcntl.fcntl(self.proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        except OSError:
            pass            # a smaller pipe (fs.pipe-max-size) only overlaps less
        self.pipe = f"/proc/self/fd/{self.proc.stdout.fileno()}"

    @property
    def consumed(self) -> int:
        """Compressed bytes the child has read: it shares the file's offset."""
        try:
            return os.lseek(self._file.fileno(), 0, os.SEEK_CUR)
        except OSError:
            return 0

    def close(self) -> str | None:
        """Stop the child; what went wrong in it, if anything."""
        self.proc.stdout.close()        # a child still writing gets a broken pipe and stops
        try:
            err = self.proc.stderr.read().decode(errors="replace").strip()
            code = self.proc.wait()
        finally:
            self.proc.stderr.close()
            self._file.close()
        return f"{self.compression}: {err or f'exit status {code}'}" if code else None


class _Decompressed:
    """A small archive decompressed whole into an in-memory file for libpcap to open; it
    stands in for _Inflater (the archive counts as consumed at once)."""

    def __init__(self, path: str, module: str, content: bytes) -> None:
        self.compression = COMPRESSION_NAMES[module]
        self.consumed = os.path.getsize(path)
        self._fd = _memory_file(content)
        self.pipe = f"/proc/self/fd/{self._fd}"

    def close(self) -> str | None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        return None


def _memory_file(content: bytes) -> int:
    fd = os.memfd_create("capture")
    view = memoryview(content)
    while view:
        view = view[os.write(fd, view):]
    return fd


def _decompressed(path: str, module: str, limit: int) -> bytes | None:
    """Up to `limit` bytes of the archive's content; None when it cannot be read (the
    child reading it whole then says why, after the frames before the fault)."""
    try:
        with _OPENERS[module](path) as stream:
            return stream.read(limit)
    except Exception:
        return None


def first_frame_time(path: str) -> float:
    """The timestamp of a capture's first frame (inf when it has none): how captures are
    ordered before they are merged. An archive's start is decompressed here, into memory,
    where a child process per file (read_frames) cost tens of milliseconds each."""
    module = _compression(path)
    if module is not None:
        head = _decompressed(path, module, FIRST_FRAME_PROBE_BYTES)
        if head is not None:
            ts = _first_frame_in(head)
            if ts is not None:
                return ts
    for fb in read_frames(path, 1):
        return float(fb.meta[0, 0]) + fb.meta[0, 1] / 1e6
    return float("inf")


def _first_frame_in(head: bytes) -> float | None:
    fd = _memory_file(head)
    try:
        try:
            hdr, _ = pcapy.open_offline(f"/proc/self/fd/{fd}").next()
        except pcapy.PcapError:
            return None
    finally:
        os.close(fd)
    if hdr is None:
        return None
    sec, usec = hdr.getts()
    return sec + usec / 1e6


def is_stream(path: str) -> bool:
    """Standard input, a pipe or a device: read once, as it comes (never looked into first)."""
    return path == STDIN or (os.path.exists(path) and not os.path.isfile(path) and not os.path.isdir(path))


def _compression(path: str) -> str | None:
    if path == STDIN or not os.path.isfile(path):
        return None             # a pipe or a device: a look at its start would consume it
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return None             # libpcap says why, naming the file
    if head.startswith(ZSTD_MAGIC):
        raise CaptureError(f"{path}: zstd-compressed, which is not read directly; "
                           f"decompress it into a pipe: zstd -dc {path} | dnssensor replay -")
    for magic, module in COMPRESSIONS:
        if head.startswith(magic):
            return module
    return None


def _explained(error: Exception | str) -> str:
    message = str(error)
    if "different from the type of the first interface" in message:
        message += " (libpcap reads a pcapng file only when all its interfaces share one link type)"
    return message


def _open(path: str) -> tuple[Any, _Inflater | _Decompressed | None]:
    """A pcapy-ng reader of the capture, and what feeds it when it is compressed."""
    if os.path.isdir(path):
        raise CaptureError(f"{path}: is a directory, not a capture file")
    module = _compression(path)
    if module is None:
        try:
            return pcapy.open_offline(path), None
        except pcapy.PcapError as e:
            # libpcap names the file itself when it cannot open it, not when it cannot read it
            message = _explained(e)
            if is_stream(path) and "unknown file format" in message:
                message += (" (a compressed capture is not read from a pipe or standard input, whose start "
                            "cannot be looked at first: decompress it into the pipe, zcat FILE.gz | "
                            "dnssensor replay -, or name the file)")
            raise CaptureError(message if message.startswith(f"{path}: ") else f"{path}: {message}") from None
    inflater: _Inflater | _Decompressed
    content = (_decompressed(path, module, SMALL_ARCHIVE_CONTENT_BYTES + 1)
               if os.path.getsize(path) <= SMALL_ARCHIVE_BYTES else None)
    if content is not None and len(content) <= SMALL_ARCHIVE_CONTENT_BYTES:
        inflater = _Decompressed(path, module, content)
    else:
        inflater = _Inflater(path, module)
    try:
        return pcapy.open_offline(inflater.pipe), inflater
    except pcapy.PcapError as e:
        why = inflater.close()
        raise CaptureError(f"{path}: {why or f'{inflater.compression}-compressed, but {_explained(e)}'}") from None


@functools.cache
def _libpcap_calls() -> tuple[ctypes.CDLL, ctypes.CDLL] | None:
    """(libpcap as pcapy-ng loaded it, glibc) through ctypes, or None where either is not
    at hand or pcapy-ng is not of the layout PCAPY_READER_FIELDS_BYTES describes."""
    try:
        if importlib.metadata.version("pcapy-ng").split(".")[0] != "2":
            return None
    except importlib.metadata.PackageNotFoundError:
        return None
    libc = glibc()
    try:
        with open("/proc/self/maps") as maps:
            loaded = {line.split()[-1] for line in maps if "/libpcap" in line}
    except OSError:
        return None
    if libc is None or len(loaded) != 1:
        return None
    try:
        pcap = ctypes.CDLL(loaded.pop())
        pcap.pcap_file.restype = ctypes.c_void_p
        pcap.pcap_file.argtypes = (ctypes.c_void_p,)
        pcap.pcap_get_selectable_fd.argtypes = (ctypes.c_void_p,)
        pcap.pcap_geterr.restype = ctypes.c_char_p
        pcap.pcap_geterr.argtypes = (ctypes.c_void_p,)
        pcap.pcap_next_ex.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)
        pcap.pcap_is_swapped.argtypes = (ctypes.c_void_p,)
        pcap.pcap_snapshot.argtypes = (ctypes.c_void_p,)
        libc.fileno.argtypes = (ctypes.c_void_p,)
        libc.setvbuf.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t)
        libc.__fsetlocking.argtypes = (ctypes.c_void_p, ctypes.c_int)
    except (OSError, AttributeError):
        return None
    return pcap, libc


def _handle(reader: Any) -> int | None:
    """The pcap_t under a pcapy-ng reader, or None where its layout is not the known one
    (checked twice: the object's size, then that the pointer gives the reader's own fd)."""
    calls = _libpcap_calls()
    if calls is None or type(reader).__basicsize__ != object.__basicsize__ + PCAPY_READER_FIELDS_BYTES:
        return None
    handle = ctypes.c_void_p.from_address(id(reader) + object.__basicsize__).value
    if not handle or calls[0].pcap_get_selectable_fd(handle) != reader.getfd():
        return None
    return handle


def _savefile_stream(reader: Any, path: str) -> tuple[int, int] | None:
    """(pcap_t, libpcap's FILE) of a capture read from a regular file; None for a pipe,
    standard input or a device (whose start cannot be read again), or where the handle is
    not at hand."""
    handle = _handle(reader)
    if handle is None or not os.path.isfile(path) or is_stream(path):
        return None
    stream = _libpcap_calls()[0].pcap_file(handle)
    return (handle, stream) if stream else None


def _tune_stdio(reader: Any, path: str) -> ctypes.Array | None:
    """Give the FILE libpcap reads a plain capture file through a buffer of
    SAVEFILE_BUFFER_BYTES, and take the lock off its calls. Returns the buffer, which must
    outlive the reader, or None where it was not done (only speed differs). Never for a
    pipe: glibc moves the file offset back over what its old buffer held unread, which a
    pipe cannot do."""
    savefile = _savefile_stream(reader, path)
    if savefile is None:
        return None
    stream = savefile[1]
    libc = _libpcap_calls()[1]
    buffer = ctypes.create_string_buffer(SAVEFILE_BUFFER_BYTES)
    if libc.setvbuf(stream, buffer, 0, SAVEFILE_BUFFER_BYTES) != 0:    # 0: _IOFBF
        return None
    # libpcap makes two fread() calls a frame, each taking the FILE's lock, about a sixth
    # of the time spent reading a file (bench/parse.py). Only the thread reading the file
    # ever uses this FILE, so the lock guards nothing.
    libc.__fsetlocking(stream, FSETLOCKING_BYCALLER)
    return buffer


def _in_place_format(reader: Any, path: str) -> tuple[int, int, bool] | None:
    """(libpcap's FILE, its snapshot length, whether fractions are nanoseconds) where the
    capture's records can be read in place: a regular file (never a pipe, where a record
    left to libpcap could not be read again) of classic pcap, version 2.4, in this machine's
    byte order (libpcap swaps the pseudo-headers of some link types otherwise). None
    elsewhere: pcapng and the rest are read through pcap_next_ex."""
    savefile = _savefile_stream(reader, path)
    if savefile is None:
        return None
    handle, stream = savefile
    pcap, libc = _libpcap_calls()
    if pcap.pcap_is_swapped(handle) != 0:
        return None
    try:
        head = os.pread(libc.fileno(stream), PCAP_FILE_HEADER, 0)
    except OSError:
        return None
    if len(head) < PCAP_FILE_HEADER:
        return None
    magic, major, minor = struct.unpack_from("=IHH", head)
    if magic not in PCAP_MAGICS or (major, minor) != (2, 4):
        return None
    return stream, pcap.pcap_snapshot(handle), magic == PCAP_MAGICS[1]


class FrameSource:
    """Batches of frames from a pcapy-ng handle (a file's or a live interface's): through
    FrameReader on its libpcap handle, which copies each frame once, or through next_batch()
    where the handle is not at hand."""

    def __init__(self, reader: Any) -> None:
        self.reader = reader
        self.handle = _handle(reader)
        self.frame_reader = None
        if self.handle is not None:
            pcap = _libpcap_calls()[0]
            self.frame_reader = FrameReader(ctypes.cast(pcap.pcap_next_ex, ctypes.c_void_p).value, self.handle)

    def read(self, frames_per_read: int) -> tuple[bytes, np.ndarray, str | None]:
        """(blob, meta, failure): an empty meta ends the capture (a live handle: no frame
        waiting); failure is libpcap's error, with the frames read before it in blob and meta."""
        if self.frame_reader is None:
            try:
                blob, meta = self.reader.next_batch(frames_per_read)
            except pcapy.PcapError as e:
                return b"", np.empty((0, 4), np.uint32), _explained(e)
            return blob, np.frombuffer(meta, dtype=np.uint32).reshape(-1, 4), None
        while True:
            blob, meta, status = self.frame_reader.read(frames_per_read, FRAME_BATCH_BYTES)
            if status == READ_ERROR:
                message = (self.frame_reader.failure
                           or _libpcap_calls()[0].pcap_geterr(self.handle).decode(errors="replace"))
                return blob, meta, _explained(message)
            if meta.shape[0] or status != READ_MORE:
                return blob, meta, None


def _close(reader: Any, inflater: _Inflater | _Decompressed | None) -> str | None:
    reader.close()
    return inflater.close() if inflater is not None else None


def read_frames(path: str, frames_per_read: int, records_in_place: bool = True) -> Iterator[FrameBatch]:
    """Yield the frames of one capture file; CaptureError when it cannot be read.
    records_in_place=False reads every frame through pcap_next_ex, as a capture of another
    format is read (the reference the in-place walk is tested against)."""
    reader, inflater = _open(path)
    linktype = reader.datalink()
    source = FrameSource(reader)
    in_place = (_in_place_format(reader, path)
                if records_in_place and inflater is None and source.frame_reader is not None else None)
    if in_place is not None:
        source.frame_reader.records_in_place(*in_place)
    # Read in place, libpcap's FILE keeps its small buffer: a stretch is read past it.
    stdio_buffer = _tune_stdio(reader, path) if inflater is None and in_place is None else None
    first = 1
    consumed = 0
    failure = None
    try:
        while True:
            blob, table, failure = source.read(frames_per_read)
            if table.shape[0]:
                if inflater is None:
                    source_bytes = int(table[:, 3].sum(dtype=np.uint64)) + PCAP_RECORD_HEADER * table.shape[0]
                else:
                    source_bytes, consumed = inflater.consumed - consumed, inflater.consumed
                yield FrameBatch(blob, table, linktype, first, source_bytes)
                first += table.shape[0]
            if failure is not None or not table.shape[0]:
                break
    finally:
        why = _close(reader, inflater)      # a decompressor's error explains libpcap's
        del stdio_buffer                    # libpcap's FILE, closed now, read through it
    if failure is not None and source.frame_reader is None:
        # next_batch() drops the frames it had read when it meets a record cut short (a
        # capture whose writer was killed): read that last stretch again frame by frame
        # so none of them is lost.
        tail = _frames_before_error(path, skip=first - 1)
        if tail is not None:
            yield FrameBatch(tail[0], tail[1], linktype, first)
            first += tail[1].shape[0]
    if failure is not None or why:
        # (why alone: an archive that ended early at a record boundary, where libpcap saw a clean end)
        raise CaptureError(f"{path}: {why or failure} (after frame {first - 1})")


def _frames_before_error(path: str, skip: int) -> tuple[bytes, np.ndarray] | None:
    reader, inflater = _open(path)
    try:
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
    finally:
        _close(reader, inflater)
    if not rows:
        return None
    return bytes(blob), np.array(rows, dtype=np.uint32).reshape(-1, 4)

"""The C heap's policy for this process: batch-sized blocks are reused, not remapped; and
the cyclic garbage collector's pauses while rows are built in bulk (gc_paused).

Every batch brings blocks of 1-20 MB (libpcap's frame blob, the message and record
columns, the text arena) that live until the batch has been processed. glibc serves
blocks above its mmap threshold (128 KiB at start) with a mapping of their own and
returns the heap's free top to the kernel above its trim threshold; both thresholds
only grow as large blocks are freed, so for a long while each batch's memory is
mapped afresh and zero-filled by the kernel page by page. Setting both at their
settled values from the start keeps that memory in the heap for the next batch.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
from collections.abc import Iterator
from contextlib import contextmanager

from sensor.limits import DEFAULT_LIMITS, Limits

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
"""mallopt() parameters, from glibc's <malloc.h>."""

_applied: tuple[int, int] | None = None


def keep_batches_on_heap(limits: Limits = DEFAULT_LIMITS) -> bool:
    """Set the heap thresholds of limits for this process; False where the C library is
    not glibc or refuses a value (glibc's mmap threshold cannot exceed 32 MiB on 64-bit),
    in which case its defaults stay and only speed is affected."""
    global _applied
    wanted = (int(limits.heap_mmap_threshold), int(limits.heap_trim_threshold))
    if _applied == wanted:
        return True
    libc = glibc()
    if libc is None:
        return False
    if not (libc.mallopt(M_MMAP_THRESHOLD, wanted[0]) and libc.mallopt(M_TRIM_THRESHOLD, wanted[1])):
        return False
    _applied = wanted
    return True


def glibc() -> ctypes.CDLL | None:
    """The C library through ctypes where it is glibc, whose behaviour this package's
    tuning relies on; None elsewhere."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version        # absent from musl and the BSDs' libc
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    except (OSError, AttributeError):
        return None
    return libc


@contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off for a block that builds rows in bulk: tuples of text
    and numbers, which form no cycles, by the ten thousand (passive-DNS identities, the
    rows a flush writes). Each 700 new ones set off a collection that walked them, and the
    survivors again in the older generations: 4-5 ms of a bench/replay.py replay, all of it
    there. It is on again after the block, as it was before."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()

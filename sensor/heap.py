"""The C heap's policy for this process: batch-sized blocks are reused, not remapped.

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

# cython: language_level=3
"""Frames of an open libpcap handle into the batches the parser takes.

pcapy-ng's ``next_batch`` gathers frames into a growing buffer and then copies
that into a bytes object: two copies of every frame after the one libpcap makes,
and a third of the time spent reading a capture file. ``FrameReader`` calls
``pcap_next_ex`` of the same libpcap, on the handle pcapy-ng opened, and copies
each frame once, straight into the batch's bytes.

A classic pcap file that libpcap opened can be read faster still, with its records
left in place (``records_in_place``): a batch's bytes are a stretch of the file,
read from libpcap's own FILE in one call, and the walk over its record headers gives
the frames' rows. That is one copy of each frame (the kernel's) where libpcap makes
three (into stdio's buffer, its own, the batch). libpcap stays the authority: a
record the walk does not take as plain (longer than the snapshot length, cut short
by the end of the file, or a read that failed) is left to pcap_next_ex, which reads
it, and the batch after it, as it always would.

A batch is ``(blob, meta)``: the frames in one bytes object (back to back, or with
their record headers between them when read in place) and one row per frame of
(seconds, microseconds, offset in the blob, captured length), uint32.
"""
from libc.errno cimport errno
from libc.stdint cimport uint8_t, uint32_t, uint64_t, uintptr_t
from libc.stdio cimport FILE, SEEK_CUR, clearerr, ferror, fread
from libc.string cimport memcpy, strerror
from libc.stdlib cimport malloc, free, realloc
from posix.stdio cimport fseeko
from cpython.ref cimport PyObject, Py_DECREF

import numpy as np

cdef extern from "Python.h":
    # Declared on PyObject * so that the blob's one reference is ours to count until it is
    # shrunk to size: _PyBytes_Resize shrinks only a bytes object nobody else holds.
    PyObject *PyBytes_FromStringAndSize(const char *v, Py_ssize_t len)
    char *PyBytes_AS_STRING(PyObject *o)
    int _PyBytes_Resize(PyObject **bytes, Py_ssize_t newsize)

cdef extern from *:
    """
    #include <sys/time.h>
    /* libpcap's struct pcap_pkthdr and pcap_next_ex(), declared here so that the
       build needs no libpcap headers: the library is the one pcapy-ng loaded. */
    struct frames_pkthdr { struct timeval ts; unsigned int caplen; unsigned int len; };
    typedef int (*frames_next_ex_t)(void *, struct frames_pkthdr **, const unsigned char **);
    """
    struct timeval:
        long tv_sec
        long tv_usec
    struct frames_pkthdr:
        timeval ts
        unsigned int caplen
        unsigned int len
    ctypedef int (*frames_next_ex_t)(void *, frames_pkthdr **, const unsigned char **) noexcept nogil

cdef extern from *:
    """
    #include <string.h>
    /* Each frame is copied by a call to the C library's memcpy. Inlined, a profile-guided
       build copied it with "rep movsq", whose start-up took three quarters of the time spent
       here (frames of a hundred bytes or so). */
    static void *(*volatile frames_memcpy)(void *, const void *, size_t) = memcpy;
    """
    void *frames_memcpy(void *dst, const void *src, size_t n) noexcept nogil

cdef extern from *:
    """
    #include <stdint.h>
    /* A record's nanoseconds as the microseconds libpcap gives: it reads the fraction as a
       signed 32-bit number and divides it in C, truncating. */
    static inline uint32_t frames_ns_to_us(uint32_t fraction) { return (uint32_t)((int32_t)fraction / 1000); }
    """
    uint32_t frames_ns_to_us(uint32_t fraction) noexcept nogil

READ_MORE = 1
"""read(): the batch filled up; more frames may follow."""
READ_END = 0
"""read(): the capture ended (a live handle: no frame waiting)."""
READ_ERROR = -1
"""read(): libpcap failed; the frames before the failure are in the batch."""

cdef enum:
    RECORD_HEADER = 16          # a classic pcap record's header: seconds, fraction, caplen, len
    PLAIN_CAPLEN_LIMIT = 262144
    READ_AHEAD_SHARE = 32       # an in-place read asks for 1/32 more records than wanted

PLAIN_CAPLEN_MAX = PLAIN_CAPLEN_LIMIT
"""The longest record the in-place walk takes itself: libpcap's own bound on a frame
(MAXIMUM_SNAPLEN), which no link type lowers. A longer one is left to libpcap."""
FIRST_RECORD_GUESS = 256
"""Bytes a record is taken to hold before any was read: how much the first in-place read
asks for, per frame wanted. Later reads go by the records read so far."""


cdef object blob_of(PyObject *raw, Py_ssize_t size):
    """The batch's bytes, made by PyBytes_FromStringAndSize and filled, shrunk to `size`:
    the one reference they hold becomes the returned object's."""
    if _PyBytes_Resize(&raw, size) < 0:     # raw is NULL after a failed resize
        raise MemoryError()
    blob = <object>raw
    Py_DECREF(blob)                 # the reference PyBytes_FromStringAndSize gave
    return blob


cdef class FrameReader:
    """Reads one pcap handle. ``next_ex`` is the address of libpcap's pcap_next_ex and
    ``handle`` the pcap_t it is called on: both must outlive the reader.

    A frame that does not fit in what is left of a batch's bytes waits, copied aside,
    to open the next batch, which is made at least as large (``waiting_bytes``).

    After ``records_in_place``, a classic pcap file is read a stretch at a time: the
    record cut by a stretch's end is copied aside (``carry``) to open the next one."""
    cdef frames_next_ex_t next_ex
    cdef void *handle
    cdef uint8_t *waiting
    cdef Py_ssize_t waiting_len
    cdef uint32_t waiting_sec, waiting_usec
    cdef bint has_waiting
    cdef FILE *stream               # libpcap's FILE, read in place; NULL: through pcap_next_ex
    cdef uint32_t snapshot
    cdef bint nanoseconds
    cdef bint through_libpcap       # the next batch goes through pcap_next_ex
    cdef uint8_t *carry
    cdef Py_ssize_t carry_len, carry_cap
    cdef uint64_t walked_bytes, walked_records
    cdef object failure_text

    def __cinit__(self, uintptr_t next_ex, uintptr_t handle):
        if not next_ex or not handle:
            raise ValueError("pcap_next_ex and the handle must be given")
        self.next_ex = <frames_next_ex_t>next_ex
        self.handle = <void *>handle
        self.waiting = NULL
        self.has_waiting = 0
        self.stream = NULL
        self.carry = NULL
        self.carry_len = self.carry_cap = 0

    def __dealloc__(self):
        free(self.waiting)
        free(self.carry)

    @property
    def waiting_bytes(self) -> int:
        """Bytes of the frame put aside for the next batch (0: none)."""
        return self.waiting_len if self.has_waiting else 0

    @property
    def failure(self):
        """Why the last READ_ERROR came from the in-place walk itself (None: libpcap's
        error, pcap_geterr)."""
        return self.failure_text

    def records_in_place(self, uintptr_t stream, uint32_t snapshot, bint nanoseconds):
        """Read the rest of the file in place. ``stream`` is libpcap's FILE of a classic pcap
        file in this machine's byte order (pcap_file), positioned at a record (nothing
        read yet, or after a frame pcap_next_ex gave); ``snapshot`` libpcap's snapshot
        length for it (pcap_snapshot); ``nanoseconds`` whether its records' fractions are
        nanoseconds, which are read as microseconds, as libpcap gives them."""
        if not stream:
            raise ValueError("the FILE must be given")
        if self.has_waiting:
            raise ValueError("a frame is put aside: records are read in place from the start")
        self.stream = <FILE *>stream
        self.snapshot = snapshot
        self.nanoseconds = nanoseconds
        self.through_libpcap = 0

    def read(self, Py_ssize_t max_frames, Py_ssize_t max_bytes):
        """Read up to max_frames frames and max_bytes of them (more only when the one frame
        put aside is larger): returns (blob, meta, status), status one of READ_MORE,
        READ_END, READ_ERROR. READ_MORE with no frame: the next frame is larger than
        max_bytes, and the next read takes it."""
        if max_frames < 1:
            raise ValueError("max_frames must be at least 1")
        self.failure_text = None
        if self.stream != NULL and not self.through_libpcap and not self.has_waiting:
            return self.read_in_place(max_frames, max_bytes)
        self.through_libpcap = 0
        return self.read_through_libpcap(max_frames, max_bytes)

    cdef object read_through_libpcap(self, Py_ssize_t max_frames, Py_ssize_t max_bytes):
        if max_bytes < self.waiting_bytes:
            max_bytes = self.waiting_bytes
        meta_array = np.empty((max_frames, 4), dtype=np.uint32)
        cdef uint32_t[:, ::1] meta = meta_array
        cdef PyObject *raw = PyBytes_FromStringAndSize(NULL, max_bytes)
        if raw == NULL:
            raise MemoryError()
        cdef uint8_t *out = <uint8_t *>PyBytes_AS_STRING(raw)
        cdef Py_ssize_t n = 0, used = 0
        cdef int status = READ_MORE, r = 0
        cdef frames_pkthdr *hdr
        cdef const unsigned char *data
        if self.has_waiting:
            memcpy(out, self.waiting, self.waiting_len)
            meta[0, 0] = self.waiting_sec
            meta[0, 1] = self.waiting_usec
            meta[0, 2] = 0
            meta[0, 3] = <uint32_t>self.waiting_len
            used = self.waiting_len
            n = 1
            self.has_waiting = 0
        with nogil:
            while n < max_frames:
                r = self.next_ex(self.handle, &hdr, &data)
                if r != 1:
                    break
                if used + hdr.caplen > max_bytes:
                    if self.put_aside(hdr, data) < 0:
                        r = -3
                    break
                frames_memcpy(out + used, data, hdr.caplen)
                meta[n, 0] = <uint32_t>hdr.ts.tv_sec
                meta[n, 1] = <uint32_t>hdr.ts.tv_usec
                meta[n, 2] = <uint32_t>used
                meta[n, 3] = hdr.caplen
                used += hdr.caplen
                n += 1
        if r == -3:
            Py_DECREF(<object>raw)
            raise MemoryError()
        blob = blob_of(raw, used)
        if r == -1:
            status = READ_ERROR
        elif r == 0 or r == -2:         # 0: a live handle's timeout; -2: end of the file
            status = READ_END if n == 0 or r == -2 else READ_MORE
        return blob, meta_array[:n], status

    cdef object read_in_place(self, Py_ssize_t max_frames, Py_ssize_t max_bytes):
        cdef uint32_t rec[4]
        cdef Py_ssize_t want, need, got, used, pos = 0, n = 0, left
        cdef bint odd = 0, ended
        cdef int read_errno = 0
        # With what is carried over, the bytes of max_frames records of the size read so
        # far and a few more (READ_AHEAD_SHARE), so that a batch mostly ends at max_frames
        # and carries over few bytes; within max_bytes, and never less than the record
        # carried needs to be whole.
        if self.walked_records:
            want = <Py_ssize_t>(self.walked_bytes // self.walked_records) * (max_frames + max_frames // READ_AHEAD_SHARE)
        else:
            want = FIRST_RECORD_GUESS * max_frames
        if want > max_bytes:
            want = max_bytes
        want -= self.carry_len
        if self.carry_len >= RECORD_HEADER:
            memcpy(rec, self.carry, RECORD_HEADER)
            need = RECORD_HEADER + <Py_ssize_t>rec[2] - self.carry_len
        else:
            need = RECORD_HEADER - self.carry_len
        if want < need:
            want = need
        if want < 0:                    # what is carried holds whole records to spare
            want = 0
        meta_array = np.empty((max_frames, 4), dtype=np.uint32)
        cdef uint32_t[:, ::1] meta = meta_array
        cdef PyObject *raw = PyBytes_FromStringAndSize(NULL, self.carry_len + want)
        if raw == NULL:
            raise MemoryError()
        cdef uint8_t *out = <uint8_t *>PyBytes_AS_STRING(raw)
        cdef uint32_t snapshot = self.snapshot
        cdef bint nanoseconds = self.nanoseconds
        memcpy(out, self.carry, self.carry_len)
        with nogil:
            got = fread(out + self.carry_len, 1, want, self.stream)
            ended = got < want
            if ended and ferror(self.stream):
                read_errno = errno
            used = self.carry_len + got
            while n < max_frames and pos + RECORD_HEADER <= used:
                memcpy(rec, out + pos, RECORD_HEADER)
                if rec[2] > snapshot or rec[2] > PLAIN_CAPLEN_LIMIT:
                    odd = 1
                    break
                if pos + RECORD_HEADER + rec[2] > used:
                    break
                meta[n, 0] = rec[0]
                meta[n, 1] = frames_ns_to_us(rec[1]) if nanoseconds else rec[1]
                meta[n, 2] = <uint32_t>(pos + RECORD_HEADER)
                meta[n, 3] = rec[2]
                pos += RECORD_HEADER + rec[2]
                n += 1
        left = used - pos
        self.carry_len = 0
        # The walk stopped at an odd record, or at one cut by the end of what was read
        # (n < max_frames): at the end of the file, that record was cut short.
        if odd or (ended and (read_errno or (left and n < max_frames))):
            # libpcap reads on from this record: it cuts an odd one to the snapshot length
            # or refuses it, and names a cut-short file or a failed read, as ever.
            clearerr(self.stream)
            if fseeko(self.stream, -left, SEEK_CUR) != 0:
                self.failure_text = "error seeking in the dump file: " + strerror(errno).decode(errors="replace")
            else:
                self.through_libpcap = 1
        elif left:
            if self.keep_carry(out + pos, left) < 0:
                Py_DECREF(<object>raw)
                raise MemoryError()
        self.walked_bytes += pos
        self.walked_records += n
        blob = blob_of(raw, pos)
        if self.failure_text is not None:
            status = READ_ERROR
        elif ended and not n and not self.through_libpcap:
            status = READ_END
        else:
            status = READ_MORE
        return blob, meta_array[:n], status

    cdef int keep_carry(self, const uint8_t *p, Py_ssize_t n) noexcept:
        cdef uint8_t *grown
        if n > self.carry_cap:
            grown = <uint8_t *>realloc(self.carry, n)
            if grown == NULL:
                return -1
            self.carry = grown
            self.carry_cap = n
        memcpy(self.carry, p, n)
        self.carry_len = n
        return 0

    cdef int put_aside(self, const frames_pkthdr *hdr, const unsigned char *data) noexcept nogil:
        cdef uint8_t *copy = <uint8_t *>malloc(hdr.caplen if hdr.caplen else 1)
        if copy == NULL:
            return -1
        memcpy(copy, data, hdr.caplen)
        free(self.waiting)
        self.waiting = copy
        self.waiting_len = hdr.caplen
        self.waiting_sec = <uint32_t>hdr.ts.tv_sec
        self.waiting_usec = <uint32_t>hdr.ts.tv_usec
        self.has_waiting = 1
        return 0

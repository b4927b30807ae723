# cython: language_level=3
"""Frames of an open libpcap handle into the batches the parser takes.

pcapy-ng's ``next_batch`` gathers frames into a growing buffer and then copies
that into a bytes object: two copies of every frame after the one libpcap makes,
and a third of the time spent reading a capture file. ``FrameReader`` calls
``pcap_next_ex`` of the same libpcap, on the handle pcapy-ng opened, and copies
each frame once, straight into the batch's bytes.

A batch is ``(blob, meta)`` as ``next_batch`` gives it: the frames back to back
in one bytes object and one row per frame of (seconds, microseconds, offset in
the blob, captured length), uint32.
"""
from libc.stdint cimport uint8_t, uint32_t, uintptr_t
from libc.string cimport memcpy
from libc.stdlib cimport malloc, free
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

READ_MORE = 1
"""read(): the batch filled up; more frames may follow."""
READ_END = 0
"""read(): the capture ended (a live handle: no frame waiting)."""
READ_ERROR = -1
"""read(): libpcap failed; the frames before the failure are in the batch."""


cdef class FrameReader:
    """Reads one pcap handle. ``next_ex`` is the address of libpcap's pcap_next_ex and
    ``handle`` the pcap_t it is called on: both must outlive the reader.

    A frame that does not fit in what is left of a batch's bytes waits, copied aside,
    to open the next batch, which is made at least as large (``waiting_bytes``)."""
    cdef frames_next_ex_t next_ex
    cdef void *handle
    cdef uint8_t *waiting
    cdef Py_ssize_t waiting_len
    cdef uint32_t waiting_sec, waiting_usec
    cdef bint has_waiting

    def __cinit__(self, uintptr_t next_ex, uintptr_t handle):
        if not next_ex or not handle:
            raise ValueError("pcap_next_ex and the handle must be given")
        self.next_ex = <frames_next_ex_t>next_ex
        self.handle = <void *>handle
        self.waiting = NULL
        self.has_waiting = 0

    def __dealloc__(self):
        free(self.waiting)

    @property
    def waiting_bytes(self) -> int:
        """Bytes of the frame put aside for the next batch (0: none)."""
        return self.waiting_len if self.has_waiting else 0

    def read(self, Py_ssize_t max_frames, Py_ssize_t max_bytes):
        """Read up to max_frames frames and max_bytes of them (more only when the one frame
        put aside is larger): returns (blob, meta, status), status one of READ_MORE,
        READ_END, READ_ERROR. READ_MORE with no frame: the next frame is larger than
        max_bytes, and the next read takes it."""
        if max_frames < 1:
            raise ValueError("max_frames must be at least 1")
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
        if r == -3 or _PyBytes_Resize(&raw, used) < 0:     # raw is NULL after a failed resize
            if raw != NULL:
                Py_DECREF(<object>raw)
            raise MemoryError()
        blob = <object>raw
        Py_DECREF(blob)                 # the reference PyBytes_FromStringAndSize gave
        if r == -1:
            status = READ_ERROR
        elif r == 0 or r == -2:         # 0: a live handle's timeout; -2: end of the file
            status = READ_END if n == 0 or r == -2 else READ_MORE
        return blob, meta_array[:n], status

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

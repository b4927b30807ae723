"""Live capture on one interface through pcapy-ng: one handle per worker process.

Each handle has a large kernel ring, the BPF filter for the DNS ports plus IP
fragments, and joins the interface's PACKET_FANOUT group in hash mode with
the defragment flag, so a query and its response (and the fragments of a
datagram, reassembled by the kernel) land in the same worker. Reads are
non-blocking behind select() so a quiet link never holds up a shutdown, and go
through FrameSource, as a file's do: one copy of each frame out of the ring.
"""
from __future__ import annotations

import ctypes
import os
import select
from collections.abc import Iterable

import pcapy

from sensor.capture.offline import FrameBatch, FrameSource
from sensor.errors import CaptureError

PACKET_FANOUT_FLAG_DEFRAG = 0x8000
"""Linux: reassemble IPv4 fragments before hashing (pcapy-ng has no name for it)."""
PCAP_ACTIVATE_ERRORS = {
    -1: "capture could not start",
    -5: "no such device (the interface is gone)",
    -6: "monitor mode not supported",
    -8: "permission denied (capturing needs CAP_NET_RAW)",
    -9: "the interface is not up",
    -11: "permission denied for promiscuous mode",
}
"""libpcap's pcap_activate() errors: pcapy-ng returns them instead of raising, and without
pcap_geterr() the next call would only complain that the handle is not activated."""
READ_TIMEOUT_MS = 100
"""libpcap's buffer timeout: frames wait at most this long in the ring before a read sees them."""
_WRAP = 1 << 32


COOKED_LINKTYPES = (113, 276)
"""Linux cooked captures (SLL, SLL2: the `any` interface): the kernel has taken the VLAN tag
off, and libpcap cannot filter on one there."""


def bpf_filter(ports: Iterable[int], vlan: bool = True) -> str:
    """DNS on the given ports over UDP and TCP, and every IP fragment (the ports of a
    fragmented datagram are only in its first piece), with or without a VLAN tag."""
    port_expr = " or ".join(f"port {p}" for p in sorted(set(ports)))
    base = f"((udp or tcp) and ({port_expr})) or (ip and ip[6:2] & 0x3fff != 0) or (ip6 and ip6[6] == 44)"
    return f"({base}) or (vlan and ({base}))" if vlan else base


class LiveCapture:
    def __init__(self, interface: str, ports: Iterable[int], ring_bytes: int, snaplen: int = 65535,
                 fanout_group: int | None = None) -> None:
        self.interface = interface
        try:
            h = pcapy.create(interface)
            h.set_snaplen(snaplen)
            h.set_promisc(1)
            h.set_timeout(READ_TIMEOUT_MS)
            h.set_buffer_size(ring_bytes)
            status = h.activate()
            if isinstance(status, int) and status < 0:
                raise CaptureError(f"{interface}: " + PCAP_ACTIVATE_ERRORS.get(
                    status, f"capture could not start (libpcap error {status})"))
            linktype = h.datalink()
            h.setfilter(bpf_filter(ports, vlan=linktype not in COOKED_LINKTYPES))
            h.setnonblock(1)
            if fanout_group is not None:
                h.set_fanout(fanout_group & 0xFFFF, PACKET_FANOUT_FLAG_DEFRAG | pcapy.PACKET_FANOUT_HASH)
        except (pcapy.PcapError, pcapy.BPFError, OSError) as e:
            raise CaptureError(f"{interface}: {e}") from None
        self.handle = h
        self.source = FrameSource(h)
        self._failure: str | None = None
        self.linktype = linktype
        self.fd = h.getfd()
        self.frames = 0
        self._last_stats = (0, 0)
        self.received = 0            # 64-bit running totals of libpcap's 32-bit counters
        self.dropped = 0

    def set_ports(self, ports: Iterable[int]) -> None:
        try:
            self.handle.setfilter(bpf_filter(ports, vlan=self.linktype not in COOKED_LINKTYPES))
        except pcapy.PcapError as e:
            raise CaptureError(f"{self.interface}: {e}") from None

    def read(self, max_frames: int, timeout_s: float) -> FrameBatch | None:
        """Up to max_frames frames, or None when nothing came within timeout_s. libpcap's
        error is raised (CaptureError) after the frames read before it are given."""
        if self._failure is not None:
            raise CaptureError(f"{self.interface}: {self._failure}")
        readable, _, _ = select.select([self.fd], [], [], timeout_s)
        if not readable:
            return None
        blob, table, self._failure = self.source.read(max_frames)
        if not table.shape[0]:
            if self._failure is not None:
                raise CaptureError(f"{self.interface}: {self._failure}")
            return None
        batch = FrameBatch(blob, table, self.linktype, self.frames + 1)
        self.frames += table.shape[0]
        return batch

    def update_stats(self) -> tuple[int, int]:
        """(received, dropped) since the previous call, unwrapping the 32-bit counters."""
        try:
            recv, drop, _ = self.handle.stats()
        except pcapy.PcapError:
            return 0, 0
        d_recv = (recv - self._last_stats[0]) % _WRAP
        d_drop = (drop - self._last_stats[1]) % _WRAP
        self._last_stats = (recv, drop)
        self.received += d_recv
        self.dropped += d_drop
        return d_recv, d_drop

    def close(self) -> None:
        try:
            self.handle.close()
        except pcapy.PcapError:
            pass


def drop_privileges(user: str) -> None:
    """Once the capture handles are open: become `user` (when root) and give up every
    capability, so a parser bug cannot be turned into control of the box."""
    if user and os.geteuid() == 0:
        import pwd

        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            raise CaptureError(f"service user {user!r} does not exist") from None
        os.setgroups([])
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)
    _clear_capabilities()


def give_to_user(user: str, paths: list[str]) -> None:
    """chown the files made before dropping privileges (the database, its WAL, the spool)."""
    if not user or os.geteuid() != 0:
        return
    import pwd

    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise CaptureError(f"service user {user!r} does not exist") from None
    for path in paths:
        if os.path.exists(path):
            os.chown(path, pw.pw_uid, pw.pw_gid)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 47, 4


def _clear_capabilities() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
        header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
        data = (_CapData * 2)()
        libc.capset(ctypes.byref(header), data)
    except (OSError, AttributeError):
        pass

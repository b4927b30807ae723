"""IP fragment and DNS-over-TCP reassembly: the slow path.

Only frames the compiled fast path cannot finish come here (a few percent of
DNS traffic at most), so this is plain Python over bounded state. Every bound
is a field of ``sensor.limits.Limits``; hitting one drops state and counts it.
State given up for any reason (a bound, a timeout, a stream that ends inside a
message, the end of the input) is a loss: counted under its drop stage, in the
minute of the traffic it held (``losses``).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from sensor import schema
from sensor.limits import Limits

_BIT = schema.ANOMALY_BIT
TCP_FIN, TCP_SYN, TCP_RST = 0x01, 0x02, 0x04
DNS_HEADER = 12
VALID_OPCODES = (0, 1, 2, 4, 5, 6)


@dataclass
class _Datagram:
    first_ts: float
    chunks: list[tuple[int, bytes]] = field(default_factory=list)
    total: int | None = None
    anomalies: int = 0


class _Counting:
    """Counters shared with the parser, and losses by (minute, drop stage)."""

    def __init__(self, limits: Limits, counters: dict[str, int],
                 losses: dict[tuple[int, str], int] | None = None) -> None:
        self.limits = limits
        self.counters = counters
        self.losses = {} if losses is None else losses

    def _count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def _lose(self, stage: str, ts: float) -> None:
        """State given up: counted under its drop stage, in the minute of its traffic."""
        self._count(stage)
        key = (int(ts // 60 * 60), stage)
        self.losses[key] = self.losses.get(key, 0) + 1


class FragmentReassembler(_Counting):
    """Reassembles IPv4 and IPv6 datagrams from fragments (RFC 791, RFC 8200)."""

    def __init__(self, limits: Limits, counters: dict[str, int],
                 losses: dict[tuple[int, str], int] | None = None) -> None:
        super().__init__(limits, counters, losses)
        self.pending: OrderedDict[tuple, _Datagram] = OrderedDict()

    def add(self, ts: float, key: tuple, offset: int, more: bool, data: bytes) -> tuple[bytes, int] | None:
        """Add one fragment; return (transport bytes, anomalies) once the datagram is complete."""
        self.expire(ts)
        dgram = self.pending.get(key)
        if dgram is None:
            if len(self.pending) >= self.limits.max_fragment_datagrams:
                _, oldest = self.pending.popitem(last=False)
                self._lose("frag_limit", oldest.first_ts)
            dgram = self.pending[key] = _Datagram(ts)
        if len(dgram.chunks) >= self.limits.max_fragments_per_datagram:
            del self.pending[key]
            self._lose("frag_limit", dgram.first_ts)
            return None
        if not more:
            end = offset + len(data)
            if dgram.total is not None and dgram.total != end:
                dgram.anomalies |= 1 << _BIT["frag_overlap"]
            dgram.total = end
        dgram.chunks.append((offset, data))
        if dgram.total is None:
            return None
        covered = 0
        for start, chunk in sorted(dgram.chunks):
            if start > covered:
                return None                                # a hole remains
            covered = max(covered, start + len(chunk))
        if covered < dgram.total:
            return None
        out = bytearray(dgram.total)
        written = bytearray(dgram.total)                   # 1 where a byte was already placed
        for start, chunk in dgram.chunks:
            chunk = chunk[:max(0, dgram.total - start)]
            region = range(start, start + len(chunk))
            if any(out[i] != chunk[i - start] for i in region if written[i]):
                dgram.anomalies |= 1 << _BIT["frag_overlap"]
                continue                                   # first arrival wins
            out[start:start + len(chunk)] = chunk
            written[start:start + len(chunk)] = b"\x01" * len(chunk)
        del self.pending[key]
        self._count("frag_datagrams")
        return bytes(out), dgram.anomalies

    def expire(self, now: float) -> None:
        """Give up the datagrams whose first fragment is older than limits.fragment_timeout_s."""
        timeout = self.limits.fragment_timeout_s
        while self.pending:
            key, dgram = next(iter(self.pending.items()))
            if now - dgram.first_ts <= timeout:
                break
            del self.pending[key]
            self._lose("frag_timeout", dgram.first_ts)

    def give_up(self) -> None:
        """End of input: the datagrams still missing fragments never complete (frag_timeout)."""
        for dgram in self.pending.values():
            self._lose("frag_timeout", dgram.first_ts)
        self.pending.clear()


@dataclass
class _HalfStream:
    next_seq: int | None
    last_ts: float
    midstream: bool
    synced: bool
    buf: bytearray = field(default_factory=bytearray)
    pending: dict[int, bytes] = field(default_factory=dict)
    anomalies: int = 0


def _seq_diff(a: int, b: int) -> int:
    """a - b in 32-bit sequence space, as a signed number."""
    d = (a - b) & 0xFFFFFFFF
    return d - (1 << 32) if d & 0x80000000 else d


def plausible_message_start(data: bytes) -> bool:
    """Whether data may begin with a length prefix and a DNS header.

    Used where the stream position is not known (mid-stream start, after a
    gap): a random 2-byte id taken as a length usually fails these checks.
    """
    if len(data) < 2 + DNS_HEADER:
        return False
    length = int.from_bytes(data[0:2], "big")
    if length < DNS_HEADER:
        return False
    flags = int.from_bytes(data[4:6], "big")
    qdcount = int.from_bytes(data[6:8], "big")
    return (flags >> 11) & 15 in VALID_OPCODES and qdcount <= 1


class TcpReassembler(_Counting):
    """Length-prefixed DNS messages (RFC 1035 4.2.2) out of TCP half-connections.

    Handles several messages per segment, messages across segments, TCP Fast
    Open data in the SYN, retransmissions, reordering within a bounded window,
    streams whose start was not captured and gaps (resynchronising on the next
    segment that starts like a message).
    """

    def __init__(self, limits: Limits, counters: dict[str, int],
                 losses: dict[tuple[int, str], int] | None = None) -> None:
        super().__init__(limits, counters, losses)
        self.flows: OrderedDict[tuple, _HalfStream] = OrderedDict()

    def add(self, ts: float, key: tuple, seq: int, flags: int, payload: bytes) -> list[tuple[bytes, int]]:
        """Add one segment; return the (message, anomalies) pairs it completes."""
        self.expire(ts)
        if flags & TCP_RST:
            self._end(self.flows.pop(key, None))
            return []
        flow = self.flows.get(key)
        if flags & TCP_SYN:
            flow = _HalfStream(next_seq=(seq + 1) & 0xFFFFFFFF, last_ts=ts, midstream=False, synced=True)
            self._insert(key, flow)
            seq = (seq + 1) & 0xFFFFFFFF
        elif flow is None:
            if not payload:
                return []
            flow = _HalfStream(next_seq=seq, last_ts=ts, midstream=True, synced=False)
            self._insert(key, flow)
        else:
            self.flows.move_to_end(key)
        flow.last_ts = ts
        out: list[tuple[bytes, int]] = []
        if payload:
            self._segment(flow, seq, payload, out)
        if flags & TCP_FIN:
            self._end(self.flows.pop(key, None))
        return out

    def _insert(self, key: tuple, flow: _HalfStream) -> None:
        self._end(self.flows.pop(key, None))      # the port pair's previous connection
        if len(self.flows) >= self.limits.max_tcp_flows:
            _, oldest = self.flows.popitem(last=False)
            self._lose("tcp_limit", oldest.last_ts)
        self.flows[key] = flow

    def _end(self, flow: _HalfStream | None) -> None:
        """A half-connection is over: a message it held part of will never complete."""
        if flow is not None and (flow.buf or flow.pending):
            self._lose("tcp_unfinished", flow.last_ts)

    def _segment(self, flow: _HalfStream, seq: int, payload: bytes, out: list) -> None:
        diff = _seq_diff(seq, flow.next_seq)
        if diff < 0:                                   # retransmission or overlap
            if -diff >= len(payload):
                self._count("tcp_retransmissions")
                return
            payload, seq, diff = payload[-diff:], flow.next_seq, 0
        if diff > 0:
            if not flow.buf and plausible_message_start(payload):
                flow.anomalies |= 1 << _BIT["tcp_gap"]
                self._count("tcp_gaps")
                flow.pending.clear()
                flow.next_seq = seq
            else:
                if len(flow.pending) >= self.limits.max_tcp_pending_segments:
                    self._resync(flow)
                    self._lose("tcp_limit", flow.last_ts)
                flow.pending[seq] = payload
                return
        self._append(flow, payload, out)
        while flow.pending:                             # segments that now fit
            nxt = flow.pending.pop(flow.next_seq, None)
            if nxt is None:
                stale = [s for s in flow.pending if _seq_diff(s, flow.next_seq) < 0]
                for s in stale:
                    data = flow.pending.pop(s)
                    d = _seq_diff(s, flow.next_seq)
                    if len(data) > -d:
                        flow.pending[flow.next_seq] = data[-d:]
                if flow.next_seq not in flow.pending:
                    break
                continue
            self._append(flow, nxt, out)

    def _resync(self, flow: _HalfStream) -> None:
        flow.buf.clear()
        flow.pending.clear()
        flow.synced = False
        flow.anomalies |= 1 << _BIT["tcp_gap"]

    def _append(self, flow: _HalfStream, data: bytes, out: list) -> None:
        flow.next_seq = (flow.next_seq + len(data)) & 0xFFFFFFFF
        if not flow.synced:
            if not plausible_message_start(data):
                self._count("tcp_unsynced_bytes", len(data))
                return
            flow.synced = True
        flow.buf += data
        if len(flow.buf) > self.limits.max_tcp_buffer:
            self._resync(flow)
            self._lose("tcp_limit", flow.last_ts)
            return
        while len(flow.buf) >= 2:
            length = int.from_bytes(flow.buf[0:2], "big")
            if length < DNS_HEADER:
                flow.anomalies |= 1 << _BIT["bad_length_prefix"]
                self._count("tcp_bad_length_prefix")
                flow.buf.clear()
                flow.synced = False
                return
            if len(flow.buf) < 2 + length:
                return
            anomalies = flow.anomalies
            if flow.midstream:
                anomalies |= 1 << _BIT["tcp_midstream"]
            out.append((bytes(flow.buf[2:2 + length]), anomalies))
            flow.anomalies = 0
            del flow.buf[:2 + length]

    def expire(self, now: float) -> None:
        """Forget the half-connections idle for longer than limits.tcp_idle_timeout_s."""
        timeout = self.limits.tcp_idle_timeout_s
        while self.flows:
            key, flow = next(iter(self.flows.items()))
            if now - flow.last_ts <= timeout:
                break
            del self.flows[key]
            self._count("tcp_idle_expired")
            self._end(flow)

    def give_up(self) -> None:
        """End of input: every half-connection ends where the input does."""
        for flow in self.flows.values():
            self._end(flow)
        self.flows.clear()

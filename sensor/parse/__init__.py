"""Parse stage: capture frames in, columnar batches of DNS messages out.

``Parser`` drives the compiled core (``sensor._core``) or, with
``backend="twin"``, the pure-Python reference twin; both produce the same
``Batch``. Frames the fast path cannot finish (IP fragments, TCP) go through
``sensor.decode.reassembly`` and come back as whole messages.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from sensor import _core, schema
from sensor.capture.offline import FrameBatch, read_frames
from sensor.decode.reassembly import FragmentReassembler, TcpReassembler
from sensor.errors import CaptureError
from sensor.heap import keep_batches_on_heap
from sensor.limits import DEFAULT_LIMITS, DEFAULT_PORTS, Limits
from sensor.parse import twin
from sensor.parse.batch import Batch, concat
from sensor.parse.psl import load_rules

_core.bind_dtypes(schema.MESSAGE_DTYPE, schema.RR_DTYPE)
if _core.ANOMALY_ORDER != tuple(name for name, _ in schema.ANOMALIES[:len(_core.ANOMALY_ORDER)]):
    raise ImportError("sensor._core anomaly bits disagree with sensor.schema.ANOMALIES; rebuild")
if _core.COUNTER_NAMES != twin.COUNTER_NAMES:
    raise ImportError("sensor._core counters disagree with the twin; rebuild")

BACKENDS = ("compiled", "twin")
LOOPBACK_V4 = b"\x00" * 10 + b"\xff\xff" + bytes([127, 0, 0, 1])


class Parser:
    """Turns capture frames into Batches; keeps reassembly state across calls."""

    def __init__(self, ports: Iterable[int] = DEFAULT_PORTS, limits: Limits = DEFAULT_LIMITS,
                 backend: str = "compiled", suffix_list: str | None = None,
                 include_private_suffixes: bool = True, dedup_window_s: float = 0.0,
                 hot_columns: tuple[str, ...] = ()) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
        self.ports = frozenset(int(p) for p in ports)
        bad = [p for p in self.ports if not 0 < p < 65536]
        if bad:
            raise ValueError(f"ports out of range: {bad}")
        self.limits = limits
        keep_batches_on_heap(limits)
        # The core keeps a copy (as a bitmap): set_ports() edits this one and hands it over.
        self._port_map = port_map = np.zeros(65536, dtype=np.uint8)
        port_map[sorted(self.ports)] = 1
        rules = load_rules(suffix_list, include_private_suffixes)
        # Room for a whole batch and the read that completes it, so the first batch
        # is not copied over and over as it grows.
        args = (limits.max_questions, limits.max_records, limits.max_pointer_hops,
                limits.messages_per_batch + limits.frames_per_read)
        if backend == "compiled":
            self.core = _core.Core(port_map, rules.table(), schema.TYPE_NAMES, schema.TSIG_ERROR_NAMES, *args)
            # Fields the consumer reads from every batch, copied out while the rows are in
            # the caches (Batch.columns); the twin makes none, its batches copy them later.
            self.core.set_hot_columns(hot_columns)
        else:
            self.core = twin.TwinCore(port_map, rules, *args)
        self.backend = backend
        self.set_dedup(dedup_window_s)
        self._slow_counters: dict[str, int] = {}
        self._losses: dict[tuple[int, str], int] = {}
        self._slow_messages = 0
        self.pending_frames = 0       # frames fed since the last take(): their counters go out with it
        self.fragments = FragmentReassembler(limits, self._slow_counters, self._losses)
        self.tcp = TcpReassembler(limits, self._slow_counters, self._losses)

    def set_ports(self, ports: Iterable[int]) -> None:
        """Change the DNS ports (configuration reload); reassembly state is kept."""
        new = frozenset(int(p) for p in ports)
        if any(not 0 < p < 65536 for p in new):
            raise ValueError(f"ports out of range: {sorted(new)}")
        self.ports = new
        self._port_map[:] = 0
        self._port_map[sorted(new)] = 1
        if self.backend == "twin":
            self.core.ports = new
        else:
            self.core.set_port_map(self._port_map)

    def set_bailiwick(self, count: bool) -> None:
        """Whether the compiled core counts each message's records out of bailiwick while
        it parses (when a rule reads out_of_bailiwick); else Batch.bailiwick_strays counts
        them when asked."""
        if self.backend == "compiled":
            self.core.count_bailiwick = count

    def set_dedup(self, window_s: float) -> None:
        """Drop UDP DNS frames that repeat one seen at most window_s before (each frame
        once): a span port copying both directions of a link sends every packet twice.
        0 keeps every frame. Counter duplicate_frames. An unchanged window keeps what
        was remembered (a configuration reload)."""
        if window_s != self.core.dedup_window_s:
            self.core.set_dedup(window_s, self.limits.dedup_slots)

    # ------------------------------------------------------------ input

    def feed(self, frames: FrameBatch) -> None:
        """Decode and parse one batch of frames into the batch under construction."""
        self.pending_frames += frames.meta.shape[0]
        slow = self.core.add_frames(frames.blob, frames.meta, frames.linktype, frames.first_frame)
        for i in slow:
            sec, usec, off, caplen = (int(x) for x in frames.meta[i])
            self._slow_frame(frames.blob[off:off + caplen], sec + usec * 1e-6,
                             frames.first_frame + i, frames.linktype)

    def _slow_frame(self, pkt: bytes, ts: float, frame: int, linktype: int) -> None:
        d = twin.decode_frame(pkt, linktype, self.ports)
        if d.fragment:
            key = (d.ip_version, d.src, d.dst, d.proto, d.frag_id)
            done = self.fragments.add(ts, key, d.frag_offset, d.frag_more, d.payload)
            if done is None:
                return
            l4, anomalies = done
            whole = twin.Decoded("dns", d.ip_version, d.src, d.dst, d.anomalies | anomalies, ip_ttl=d.ip_ttl)
            d = twin.decode_l4(whole, l4, 0, len(l4), d.proto, self.ports)
            if d.status == "dns":
                self._message(d.payload, ts, frame, d, 17, d.anomalies)
                return
        if d.status != "slow" or d.proto != 6:
            self._slow_counters[d.status] = self._slow_counters.get(d.status, 0) + 1
            return
        key = (d.ip_version, d.src, d.dst, d.sport, d.dport)
        for message, anomalies in self.tcp.add(ts, key, d.tcp_seq, d.tcp_flags, d.payload):
            self._message(message, ts, frame, d, 6, anomalies | d.anomalies)

    def _message(self, payload: bytes, ts: float, frame: int, d: twin.Decoded,
                 transport: int, anomalies: int) -> None:
        self._slow_messages += 1
        self.core.add_message(payload, ts, frame, d.ip_version, d.src, d.dst, d.sport,
                              d.dport, transport, anomalies, d.ip_ttl)

    def expire(self, now: float) -> None:
        """Time passes with no frames (a quiet link): give up reassembly state past its timeout."""
        self.fragments.expire(now)
        self.tcp.expire(now)

    def drain(self) -> None:
        """End of input: datagrams still missing fragments and TCP streams inside a message
        will never complete; they are given up and counted (frag_timeout, tcp_unfinished)."""
        self.fragments.give_up()
        self.tcp.give_up()

    def add_payloads(self, payloads: Iterable[bytes], ts: float = 0.0) -> None:
        """Parse bare DNS messages (tests, fuzzing), as UDP 127.0.0.1:53000 -> 127.0.0.1:53."""
        for i, payload in enumerate(payloads):
            self.core.add_message(payload, ts, i + 1, 4, LOOPBACK_V4, LOOPBACK_V4, 53000, 53, 17, 0)

    # ------------------------------------------------------------ output

    def take(self) -> Batch:
        """The batch built so far, in frame order; the next one starts empty."""
        msgs, rrs, arena, counters, columns = self.core.finish()
        if self._slow_messages and len(msgs) > 1:
            order = np.argsort(msgs["frame"], kind="stable")
            if np.any(order != np.arange(len(order))):
                inverse = np.empty_like(order)
                inverse[order] = np.arange(len(order))
                msgs = msgs[order]
                columns = {name: column[order] for name, column in columns.items()}
                rrs["msg"] = inverse[rrs["msg"]]
                rrs = rrs[np.argsort(rrs["msg"], kind="stable")]
                msgs["rr_start"] = np.searchsorted(rrs["msg"], np.arange(len(msgs)))
        self._slow_messages = 0
        self.pending_frames = 0
        for name, value in self._slow_counters.items():
            counters[name] = counters.get(name, 0) + value
        self._slow_counters.clear()
        return Batch(msgs, rrs, arena, counters, columns)

    def take_losses(self) -> dict[int, dict[str, int]]:
        """Reassembly state given up since the last call, by minute of the traffic it held
        and drop stage. The same counts go out in the batches' counters, with no minute."""
        out: dict[int, dict[str, int]] = {}
        for (minute, stage), n in self._losses.items():
            out.setdefault(minute, {})[stage] = n
        self._losses.clear()
        return out

    @property
    def pending(self) -> int:
        """Messages parsed into the batch under construction."""
        return self.core.nmsg

    def parse_file(self, path: str) -> Iterator[Batch]:
        """Batches of one capture file of about limits.messages_per_batch messages each,
        read from libpcap limits.frames_per_read frames at a time."""
        try:
            for frames in read_frames(path, self.limits.frames_per_read):
                self.feed(frames)
                if self.pending >= self.limits.messages_per_batch:
                    yield self.take()
        except CaptureError:
            if self.pending_frames:       # a file cut short: what came before the cut still counts
                yield self.take()
            raise
        if self.pending_frames:
            yield self.take()

    def parse_payloads(self, payloads: Iterable[bytes]) -> Batch:
        self.add_payloads(payloads)
        return self.take()


def parse_file(path: str, **parser_args) -> Batch:
    """Every message of one capture as a single batch, with the reassembly state left at
    its end given up and counted (convenience for tools and tests)."""
    parser = Parser(**parser_args)
    batches = list(parser.parse_file(path))
    parser.drain()
    batches.append(parser.take())
    return concat(batches)

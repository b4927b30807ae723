"""parse → track → accumulate over one stream of frames: a capture worker, or a replay."""
from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from sensor.capture.offline import FrameBatch, first_frame_time, is_stream, read_frames
from sensor.config import Config
from sensor.detectors.anomaly_burst import AnomalyBurstRule
from sensor.errors import CaptureError
from sensor.engine.aggregate import Accumulator, Aggregate
from sensor.parse import Parser
from sensor.rules import Rule
from sensor.schema import HOT_COLUMNS, MESSAGE_DTYPE
from sensor.track import Tracker

PARSER_DROP_COUNTERS = ("duplicate_frames",)
"""Batch counters of the parser that mean frames were given up (the others describe
traffic): span-port copies (capture.dedup_window_ms). Reassembly state given up comes
from Parser.take_losses(), in the minute of the traffic it held."""


class Pipeline:
    def __init__(self, config: Config, rule: AnomalyBurstRule, rules: list[Rule] | None = None) -> None:
        self.config = config
        self.parser = Parser(ports=config.ports, limits=config.limits,
                             dedup_window_s=config.dedup_window_ms / 1000, hot_columns=HOT_COLUMNS)
        self.tracker = Tracker(config.limits, config.resolver_set())
        self.acc = Accumulator(config.limits, rule.mask, rule.window_s, rules, config.client_networks)
        self.parser.set_bailiwick(_reads_bailiwick(rules or []))
        self.messages = 0
        self.packets = 0
        self.latest_ts = 0.0
        self._now: float | None = None

    def reconfigure(self, config: Config, rule: AnomalyBurstRule, rules: list[Rule]) -> None:
        """Reload: new ports, resolvers and rules; pending queries and open aggregates stay."""
        from sensor.features import NetworkSet

        self.process()              # what was parsed under the old configuration
        self.config = config
        self.parser.set_ports(config.ports)
        self.parser.set_dedup(config.dedup_window_ms / 1000)
        self.tracker.set_resolvers(config.resolver_set())
        self.acc.malformed_mask, self.acc.window_s = rule.mask, rule.window_s
        self.acc.rules = list(rules)
        self.parser.set_bailiwick(_reads_bailiwick(rules))
        self.acc.networks = NetworkSet(config.client_networks)

    def feed(self, frames: FrameBatch, now: float | None = None) -> int:
        """Parse one read of frames; once limits.messages_per_batch messages are parsed,
        run them through tracking and the accumulator. Returns the messages processed."""
        self.parser.feed(frames)
        if now is not None:
            self._now = now
        if frames.meta.shape[0]:
            self.latest_ts = max(self.latest_ts, float(frames.meta[-1, 0]))
            self._count_frames(frames)
        if self.parser.pending >= self.config.limits.messages_per_batch:
            return self.process()
        return 0

    def process(self) -> int:
        """Track and accumulate the messages parsed so far (a partial batch too)."""
        for minute, drops in self.parser.take_losses().items():
            self.acc.add_sensor(minute, drops=drops)
        if not self.parser.pending_frames:
            return 0
        batch = self.parser.take()
        track = self.tracker.process(batch.messages, self._now, batch.column("ts"))
        self.acc.add(batch, track)
        n = len(batch)
        self.messages += n
        self.packets += int(batch.counters.get("packets", 0))
        drops = {k: int(batch.counters.get(k, 0)) for k in PARSER_DROP_COUNTERS}
        self.acc.add_sensor(int(self.latest_ts // 60 * 60), drops=drops)
        return n

    def _count_frames(self, frames: FrameBatch) -> None:
        """Frames read, in the minute of their timestamp (the parser's `packets`, a batch of
        which can span hours of a replayed capture)."""
        first, last = (second // 60 for second in frames.seconds())
        if first == last:
            self.acc.add_sensor(first * 60, packets=frames.meta.shape[0])
            return
        minutes, counts = np.unique(frames.meta[:, 0] // 60, return_counts=True)
        for minute, count in zip(minutes.tolist(), counts.tolist()):
            self.acc.add_sensor(int(minute) * 60, packets=count)

    def tick(self, now: float) -> None:
        """Time passes with no traffic: queries older than the timeout become unanswered, and
        reassembly state past its timeout is given up."""
        self._now = now
        self.parser.expire(now)
        self.process()
        track = self.tracker.process(np.empty(0, dtype=MESSAGE_DTYPE), now)
        if len(track.unanswered):
            self.acc.add_unanswered(track.unanswered)

    def drain(self) -> None:
        """End of input: queries still waiting are unanswered, datagrams and TCP messages
        still waiting for their rest are given up."""
        self.parser.drain()
        self.process()
        unanswered = self.tracker.drain()
        if len(unanswered):
            self.acc.add_unanswered(unanswered)

    def stop(self) -> None:
        """The capture stops: reassembly state dies with the process and is counted as given
        up. Queries still waiting are not counted unanswered: a stop is not the resolver's doing."""
        self.parser.drain()

    def take(self) -> Aggregate:
        """What was accumulated, the messages parsed so far included."""
        self.process()
        return self.acc.take()


def _reads_bailiwick(rules: list[Rule]) -> bool:
    """Whether a rule reads out_of_bailiwick: only then is it counted while parsing."""
    from sensor.features import LAZY_BAILIWICK
    return any(LAZY_BAILIWICK in rule.reads for rule in rules)


def _frame_times(meta: np.ndarray) -> np.ndarray:
    return meta[:, 0].astype(np.float64) + meta[:, 1] / 1e6


def within(frames: Iterable[FrameBatch], start: float | None, end: float | None) -> Iterator[FrameBatch]:
    """The frames timed in [start, end): each batch cut into its runs of frames inside, which
    keep their numbers in the capture. A batch's bytes on disk go with its first run (or an
    empty batch), so a replay's progress still counts them."""
    for fb in frames:
        ts = _frame_times(fb.meta)
        inside = np.ones(len(ts), dtype=bool)
        if start is not None:
            inside &= ts >= start
        if end is not None:
            inside &= ts < end
        if inside.all():
            yield fb
            continue
        edges = np.flatnonzero(np.diff(np.r_[0, inside.astype(np.int8), 0])).reshape(-1, 2)
        if not len(edges):
            yield FrameBatch(fb.blob, fb.meta[:0], fb.linktype, fb.first_frame, fb.source_bytes)
            continue
        for k, (a, b) in enumerate(edges.tolist()):
            yield FrameBatch(fb.blob, np.ascontiguousarray(fb.meta[a:b]), fb.linktype, fb.first_frame + a,
                             fb.source_bytes if k == 0 else 0)


CAPTURE_SILENCE_S = 1800
"""Within one capture, a stretch without frames up to this long is taken as observed (a
quiet link: minutes without traffic); a longer one as a time the capture did not observe (it
was stopped, or a frame's clock is wrong). A tap that sees nothing at all for half an hour
more likely lost its feed than watched a resolver nobody used; a live sensor, which knows
it was running, counts every silent minute."""


def spanned(frames: Iterator[FrameBatch], spans: list[list[int]] | None) -> Iterator[FrameBatch]:
    """The frames of one capture, appending to `spans` the [first, last] second of each
    stretch of them with no silence longer than CAPTURE_SILENCE_S, as they are read: the time
    the capture observed, traffic or not. A stretch still open grows in place."""
    if spans is None:
        yield from frames
        return
    stretch: list[int] | None = None
    for fb in frames:
        if fb.meta.shape[0]:
            lo, hi = fb.seconds()
            if hi - lo <= CAPTURE_SILENCE_S:          # one stretch: no silence fits inside
                stretches = [(lo, hi)]
            else:
                secs = np.sort(fb.meta[:, 0].astype(np.int64))
                cuts = np.flatnonzero(np.diff(secs) > CAPTURE_SILENCE_S)
                stretches = zip(np.r_[secs[0], secs[cuts + 1]].tolist(), np.r_[secs[cuts], secs[-1]].tolist())
            for lo, hi in stretches:
                if stretch is not None and lo - stretch[1] <= CAPTURE_SILENCE_S:
                    stretch[1] = max(stretch[1], hi)
                else:
                    stretch = [lo, hi]
                    spans.append(stretch)
        yield fb


def merged_frames(paths: list[str], frames_per_read: int, end: float | None = None,
                  spans: list[list[int]] | None = None) -> Iterator[FrameBatch]:
    """Frames of several captures in timestamp order across files.

    Each round takes, from every open file, the frames up to the earliest "last
    timestamp" among the files' current buffers, so no later frame can come
    before them; frames of files with the same link type are merged into one
    batch, sorted by time (stable, so a file's own order is kept on ties).
    A file is opened only when the merge reaches its first frame: rotated
    captures (tcpdump -G or -C), one after another in time, keep one or two
    files open and buffered however many there are, where opening them all at
    once ran out of file descriptors and held a buffer per file. A file whose first
    frame is at or after `end` is not read at all. With `spans`, each file read adds the
    span of its frames (spanned()). A file that fails partway (cut short, a broken
    archive) ends there and the others go on; CaptureError names every such file at the end.
    """
    if len(paths) == 1:
        yield from spanned(read_frames(paths[0], frames_per_read), spans)
        return
    streams = [p for p in paths if is_stream(p)]
    if streams:
        # Merging looks at each file's first frame before reading it: a stream cannot be read twice.
        raise CaptureError(f"{streams[0]}: a pipe or standard input is read alone: it cannot be merged "
                           "with other captures")
    waiting = sorted((first_frame_time(path), i, path) for i, path in enumerate(paths))
    waiting = [w for w in waiting if end is None or w[0] < end][::-1]     # popped: the earliest first
    frame_no = 1

    failures: list[str] = []

    def refill(r) -> bool:
        while r["buf"] is None or r["pos"] >= r["buf"].meta.shape[0]:
            try:
                nxt = next(r["it"], None)
            except CaptureError as e:     # cut short: its frames so far are in, the others go on
                failures.append(str(e))
                return False
            if nxt is None:
                return False
            r["buf"], r["pos"] = nxt, 0
        return True

    def open_next() -> None:
        r = {"it": spanned(read_frames(waiting.pop()[2], frames_per_read), spans), "buf": None, "pos": 0}
        if refill(r):
            active.append(r)

    active: list[dict] = []
    while active or waiting:
        if not active:
            open_next()
            continue
        cutoff = min(_frame_times(r["buf"].meta[-1:])[0] for r in active)
        if waiting and waiting[-1][0] <= cutoff:
            open_next()         # it may lower the cut: take it again
            continue
        pieces: dict[int, list] = {}
        for r in active:
            fb, pos = r["buf"], r["pos"]
            ts = _frame_times(fb.meta[pos:])
            # Up to the last frame at or before the cut (a file's own clock may step back).
            below = np.flatnonzero(ts <= cutoff)
            if not len(below):
                continue
            end = pos + int(below[-1]) + 1
            pieces.setdefault(fb.linktype, []).append((fb, pos, end))
            r["pos"] = end
        for linktype, parts in sorted(pieces.items()):
            blob = b"".join(fb.blob for fb, _, _ in parts)
            metas, base, source = [], 0, 0
            for fb, pos, end in parts:
                m = fb.meta[pos:end].copy()
                m[:, 2] += base
                metas.append(m)
                base += len(fb.blob)
                source += fb.source_bytes * (end - pos) // fb.meta.shape[0]
            meta = np.concatenate(metas)
            order = np.lexsort((np.arange(len(meta)), meta[:, 1], meta[:, 0]))
            meta = np.ascontiguousarray(meta[order])
            yield FrameBatch(blob, meta, linktype, frame_no, source)
            frame_no += len(meta)
        active = [r for r in active if refill(r)]
    if failures:
        raise CaptureError("; ".join(failures))

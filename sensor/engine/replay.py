"""`dnssensor replay`: the live pipeline over capture files, into the same store."""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

from sensor.config import Config, check_syslog_files, resolve_rules_dir, spool_dir
from sensor.detectors import anomaly_burst
from sensor.engine.pipeline import Pipeline, merged_frames, within
from sensor.engine.writer import REPLAY_SERIES_EVERY_S, Writer
from sensor.errors import CaptureError, ConfigError
from sensor.rules import load_rules_dir
from sensor.sinks.syslog import SyslogSender
from sensor.store import Store, StoreError


@dataclass
class ReplayResult:
    files: int = 0
    packets: int = 0
    messages: int = 0
    verdicts: int = 0
    rules: int = 0
    rules_dir: str = ""
    seconds: float = 0.0
    tracking: dict[str, int] = field(default_factory=dict)
    syslog: dict[str, dict[str, int]] = field(default_factory=dict)
    store_errors: int = 0
    capture_error: str | None = None
    """Why a capture could not be read to its end (everything read before is stored)."""


class Progress:
    """A one-line progress bar on a terminal; silent otherwise."""

    def __init__(self, total_bytes: int, out: TextIO | None) -> None:
        self.total = max(total_bytes, 1)
        self.out = out if out is not None and out.isatty() else None
        self.start = time.monotonic()
        self.last = 0.0

    def update(self, done_bytes: int, messages: int, force: bool = False) -> None:
        if self.out is None:
            return
        now = time.monotonic()
        if not force and now - self.last < 0.2:
            return
        self.last = now
        frac = min(done_bytes / self.total, 1.0)
        bar = "#" * int(frac * 30)
        rate = messages / max(now - self.start, 1e-9)
        self.out.write(f"\r[{bar:<30}] {frac:6.1%} {messages:>12,} msgs {rate:>12,.0f}/s")
        if force:
            self.out.write("\n")
        self.out.flush()


class Coverage:
    """The minutes the replayed captures observed, given the sensor's own stats row as live
    capture gives it every minute it runs: a quiet minute inside a capture is a minute
    without traffic, the days between two captures are not observed at all (sensor.series)."""

    def __init__(self, start: float | None, end: float | None) -> None:
        self.spans: list[list[int]] = []          # [first, last] second of each stretch observed (spanned())
        self.start, self.end = start, end
        self.given: list[int] = []                # per span: the last minute given a row

    def give(self, pipeline: Pipeline) -> None:
        """A sensor row for every minute spanned since the last call (within --from/--until)."""
        for i, (first, last) in enumerate(self.spans):
            if self.start is not None:
                first = max(first, int(self.start))
            if self.end is not None:
                last = min(last, math.ceil(self.end) - 1)
            if i == len(self.given):
                self.given.append(first // 60 * 60 - 60)
            lo, hi = max(first // 60 * 60, self.given[i] + 60), last // 60 * 60
            for minute in range(lo, hi + 60, 60):
                pipeline.acc.add_sensor(minute)
            self.given[i] = max(self.given[i], hi)


def _check_inputs(files: list[str], start: float | None, end: float | None) -> None:
    """Refuse what would replay nothing or everything twice, both silently: a window that
    ends before it begins, a capture named twice (a glob and the file it already matched)."""
    if start is not None and end is not None and start >= end:
        raise ConfigError(f"the window is empty: --from ({_utc(start)}) is not before --until ({_utc(end)})")
    seen: dict[tuple[int, int], str] = {}
    for f in files:
        try:
            st = os.stat(f)
        except OSError:
            continue                    # reported by the reader, with the others' frames kept
        if not os.path.isfile(f):
            continue
        first = seen.get((st.st_dev, st.st_ino))
        if first is not None:
            same = "" if os.path.abspath(first) == os.path.abspath(f) else f" (the same file as {first})"
            raise ConfigError(f"{f}: given twice{same}: its traffic would be counted twice")
        seen[(st.st_dev, st.st_ino)] = f


def _utc(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def replay(files: list[str], config: Config, progress_to: TextIO | None = sys.stderr,
           start: float | None = None, end: float | None = None) -> ReplayResult:
    """The live pipeline over capture files merged by time, into config's store; with start
    or end, only the frames timed in [start, end). A capture that cannot be read to its end
    (a tcpdump killed mid-write) is replayed up to the cut, like the others in full, and
    stored; result.capture_error says what stopped it."""
    _check_inputs(files, start, end)
    config = resolve_rules_dir(config)
    check_syslog_files(config)
    rule = anomaly_burst.load(config.rules_dir)
    rules = load_rules_dir(config.rules_dir)
    store = Store(config.db_path)
    senders = [SyslogSender(t, spool_dir(config.db_path), config.sensor_name) for t in config.syslog]
    writer = Writer(config, store, rule, senders, rules, series_every_s=REPLAY_SERIES_EVERY_S,
                    series_backfill=True)
    pipeline = Pipeline(config, rule, rules)
    result = ReplayResult(files=len(files), rules=len(rules), rules_dir=config.rules_dir)
    total = sum(os.path.getsize(f) for f in files if os.path.isfile(f))
    progress = Progress(total, progress_to)
    t0 = time.perf_counter()
    done_bytes = 0
    # The store is written on the live sensor's timer (store.flush_interval_s), so a
    # replay writes it as the live sensor would at the same message rate.
    next_flush = time.monotonic() + config.flush_interval_s
    coverage = Coverage(start, end)
    try:
        frames_in = merged_frames(list(files), config.limits.frames_per_read, end, coverage.spans)
        if start is not None or end is not None:
            frames_in = within(frames_in, start, end)
        try:
            for frames in frames_in:
                pipeline.feed(frames)
                done_bytes += frames.source_bytes
                progress.update(done_bytes, pipeline.messages)
                if time.monotonic() >= next_flush:
                    coverage.give(pipeline)
                    writer.apply(pipeline.take())
                    result.verdicts += writer.flush()
                    next_flush = time.monotonic() + config.flush_interval_s
        except CaptureError as e:
            result.capture_error = str(e)
        pipeline.drain()
        coverage.give(pipeline)
        writer.apply(pipeline.take())
        result.verdicts += writer.flush(final=True)
        # No retention here: a replayed capture is evidence, kept until the next live
        # run's retention pass (or `dnssensor run`) says otherwise.
    finally:
        progress.update(total, pipeline.messages, force=True)
        for s in senders:
            s.close()
        store.close()
    result.seconds = time.perf_counter() - t0
    result.packets = pipeline.packets
    result.messages = pipeline.messages
    result.tracking = dict(pipeline.tracker.totals)
    result.syslog = {s.target.label: dict(s.counters) for s in senders}
    result.store_errors = writer.counters["store_errors"]
    if writer.store_error is not None:
        # The replay's last write failed: what it held exists nowhere else.
        sent = sum(c.get("sent", 0) for c in result.syslog.values())
        raise StoreError(f"{config.db_path}: {writer.store_error}: the last write failed, so "
                         f"{len(writer.unstored)} verdict(s) (printed above) and this replay's latest "
                         f"counters and passive-DNS rows are not in the database"
                         + (f"; syslog was sent {sent} verdict(s)" if senders else ""))
    return result

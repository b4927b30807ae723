"""The one writer: merges the workers' aggregates and writes them in one transaction.

It holds the minutes still open (a late batch adds to them instead of
overwriting), the malformed-traffic windows that may still become verdicts,
and a backlog when the database refuses a write (full disk): nothing is
dropped until the backlog's own bounds are reached, and the next flush
retries. Verdicts reach syslog once they are committed, or at once while the
store refuses them (the SIEM should not go blind because the local disk is
full); those the store cannot take by the final flush are printed to stderr.
"""
from __future__ import annotations

import copy
import json
import sqlite3
import sys
import time
from collections import Counter
from typing import Any

import numpy as np

from sensor.config import Config
from sensor.detectors import series_anomalies
from sensor.detectors.anomaly_burst import AnomalyBurstRule
from sensor.detectors.rule_table import RuleTable
from sensor.detectors.rules_engine import new_table, verdicts
from sensor.heap import gc_paused
from sensor.rules import Rule
from sensor.engine.aggregate import (Aggregate, merge_malformed, merge_sensor_row, merge_stats_row,
                                     new_sensor_row, new_stats_row)
from sensor.sinks.syslog import SyslogSender
from sensor.store import Store, verdict_key
from sensor.track import isin_keys

SERIES_EVERY_S = 60
"""Data time between two evaluations of the series against their baselines, live."""
REPLAY_SERIES_EVERY_S = 900
"""...and in a replay, which reads days of history in seconds: a quarter of an hour still sees
every episode (verdicts look back series_anomalies.RECENT_MIN = 30 minutes)."""
OPEN_MINUTES_GRACE_S = 180
"""Minutes (stats) and windows (verdicts) stay in memory this long after the newest data,
for batches that arrive late from a busy worker."""
SENSOR_RESOLVER, SENSOR_LEG = "*", "sensor"
STORE_ERROR_REPORT_EVERY_S = 60.0
"""While the store keeps refusing writes, its error is printed again this often (not
at every flush)."""
MAX_SENT_UNSTORED = 100_000
"""Verdicts sent to syslog while the store refused them, remembered by entity and window
so that the write that finally stores one does not send it again; past this the oldest
are forgotten (and could be sent twice, never lost)."""


class Writer:
    def __init__(self, config: Config, store: Store, rule: AnomalyBurstRule,
                 senders: list[SyslogSender] | None = None, rules: list[Rule] | None = None,
                 series_every_s: float = SERIES_EVERY_S, series_backfill: bool = False) -> None:
        self.config = config
        self.store = store
        self.rule = rule
        self.rules: dict[str, Rule] = {r.name: r for r in rules or []}
        self.rule_windows: dict[str, RuleTable] = {}
        self.series_rule = series_anomalies.load(config.rules_dir)
        self.series_evaluated = 0.0
        self.series_every_s = series_every_s
        self.series_backfill = series_backfill
        """Judge every step since the first minute (replay), not only those that can still report (live)."""
        self.senders = senders or []
        self.backlog = Aggregate()
        self.open_stats: dict[tuple[int, str, str], dict[str, Any]] = {}
        self.windows: dict[tuple[int, str, str], dict[str, Any]] = {}
        self.latest = 0.0
        self.first_minute = 0
        """Earliest minute of data this writer has seen: a replay judges its series from there."""
        self.counters = Counter()
        self._sink_dropped: dict[str, int] = {}
        self.store_error: str | None = None
        """The store's error while it refuses writes; None once a write lands."""
        self.store_failures = 0
        """Failed writes in a row."""
        self._store_error_printed = 0.0
        self.sent_unstored: dict[tuple, None] = {}
        """Keys of verdicts syslog has had while their rows could not be written (oldest first)."""
        self.unstored: list[dict[str, Any]] = []
        """Verdicts the final flush could not store (printed to stderr)."""

    def apply(self, agg: Aggregate) -> None:
        """Take an aggregate in; the writer owns it from then on. The first one after a
        flush becomes the backlog as it is: merging it into an empty one would only copy
        it, and hold it twice (under a flood of new clients, 100 MB a second's traffic)."""
        if self.backlog.is_empty():
            self.backlog = agg
        else:
            self.backlog.merge(agg, self.config.limits)

    def set_rule(self, rule: AnomalyBurstRule, rules: list[Rule] | None = None,
                 series_rule: series_anomalies.SeriesRule | None = None) -> None:
        """New rules after a reload that validated them (the series rule included)."""
        self.rule = rule
        if rules is not None:
            self.rules = {r.name: r for r in rules}
        self.series_rule = series_rule

    def flush(self, final: bool = False) -> int:
        """Write the backlog; returns the verdicts created. On a database error the
        backlog stays for the next flush (counted as store_errors)."""
        agg = self.backlog
        self._count_sink_losses(agg)
        if agg.is_empty() and not final:
            return 0
        for minute in list(agg.stats) + [(m,) for m in agg.sensor]:
            self.latest = max(self.latest, float(minute[0]))
            self.first_minute = min(self.first_minute or minute[0], minute[0])
        saved_windows = {k: copy.deepcopy(self.windows.get(k)) for k in agg.malformed}
        saved_rule_windows = {name: copy.deepcopy(self.rule_windows.get(name)) for name in agg.rules}
        stats_rows, touched = self._merge_stats(agg)
        verdicts = self._verdicts(agg) + self._rule_verdicts(agg)
        try:
            with gc_paused(), self.store.transaction() as conn:
                self.store.put_stats(conn, stats_rows)
                self.store.add_pdns(conn, agg.pdns.rows())
                self.store.add_nxdomain(conn, agg.nxdomain.rows())
                self.store.add_clients(conn, agg.clients.rows(self.config.limits.max_clients_per_minute))
                self.store.add_breakdown(conn, "network", agg.networks.rows(self.config.limits.max_networks_per_minute, str))
                self.store.add_breakdown(conn, "domain", agg.domains.rows(self.config.limits.max_domains_per_minute, str))
                self.store.add_anomalies(conn, [(m, n, c) for (m, n), c in agg.anomalies.items()])
                created = self.store.put_verdicts(conn, verdicts)
                for worker, row in agg.workers.items():
                    self.store.put_worker(conn, {"worker": worker, **row})
        except sqlite3.Error as e:
            self._store_failed(e, f"keeping {len(agg.pdns)} pdns rows and {len(verdicts)} verdicts "
                                  "for the next flush", verdicts, final)
            # Undo the merge: the backlog is merged again next time. Open minutes
            # are re-read from the store, windows restored as they were.
            for key in touched:
                self.open_stats.pop(key, None)
            for key, before in saved_windows.items():
                if before is None:
                    self.windows.pop(key, None)
                else:
                    self.windows[key] = before
            for name, before in saved_rule_windows.items():
                if before is None:
                    self.rule_windows.pop(name, None)
                else:
                    self.rule_windows[name] = before
            agg.compact(self.config.limits)      # bounded while the store refuses writes
            return 0
        self._store_recovered()
        self.backlog = Aggregate()
        self._send(self._not_yet_sent(created, verdicts))
        self.counters["verdicts_created"] += len(created)
        self._close_old(final)
        return len(created) + self._series_verdicts(final)

    def _steps_with_data(self, ends: list[int]) -> list[int]:
        """The steps whose look-back holds traffic. Every series and mix of the others reads
        an empty window and judges nothing, and a replay of captures weeks apart would
        otherwise walk each empty quarter-hour in between, a query per series each."""
        span = self.series_rule.lookback_min * 60
        rows = self.store.conn.execute(
            "SELECT DISTINCT minute FROM stats WHERE leg != 'sensor' AND minute > ? AND minute <= ? "
            "ORDER BY minute", (min(ends) - span, max(ends))).fetchall()
        minutes = np.array([r[0] for r in rows], dtype=np.int64)
        at = np.searchsorted(minutes, np.array(ends, dtype=np.int64), side="right")   # data minutes <= end
        return [end for end, i in zip(ends, at.tolist()) if i and minutes[i - 1] > end - span]

    def _series_verdicts(self, final: bool) -> int:
        """Counters against their seasonal baseline, every series_every_s of data time (and
        at the end): each step in between is judged as it was then, so a replay that flushes
        hours at once still sees every episode."""
        if self.series_rule is None or not self.first_minute:
            return 0
        last = int(self.latest // 60 * 60)
        every = int(self.series_every_s)
        start = self.series_evaluated + every if self.series_evaluated else self.first_minute + every
        if not self.series_backfill:
            # live: after a quiet spell only the steps that can still report matter (a
            # verdict needs an episode ending in the last RECENT_MIN minutes)
            start = max(start, last - series_anomalies.RECENT_MIN * 60)
        if last < start and not final:
            return 0
        steps = list(range(start, last, every))
        steps.append(last if final else last - 60)      # the newest minute is still filling up
        self.series_evaluated = last
        created: list[dict[str, Any]] = []
        found: list[dict[str, Any]] = []
        try:
            found = [v for end in self._steps_with_data(steps)
                     for v in self.series_rule.verdicts(self.store, self.config.sensor_name, end)]
            if found:
                with self.store.transaction() as conn:
                    created = self.store.put_verdicts(conn, found)
        except sqlite3.Error as e:
            self._store_failed(e, "series verdicts retried at the next flush", found, final)
            self.series_evaluated = steps[0] - every
            return 0
        self._store_recovered()
        self._send(self._not_yet_sent(created, found))
        return len(created)

    def _send(self, created: list[dict[str, Any]]) -> None:
        """New verdicts to every syslog target (queued, never blocking)."""
        for v in created:
            for s in self.senders:
                s.submit(v)

    def _store_failed(self, error: sqlite3.Error, kept: str, verdicts: list[dict[str, Any]],
                      final: bool) -> None:
        """A write the store refused: say so (not at every flush), tell syslog of the new
        verdicts at once, and at the final flush print those that will never be stored."""
        self.counters["store_errors"] += 1
        self.store_failures += 1
        now = time.monotonic()
        if self.store_error is None or final or now - self._store_error_printed >= STORE_ERROR_REPORT_EVERY_S:
            print(f"dnssensor: store: {error}; " + (kept if not final else "nothing more will be written")
                  + (f" ({self.store_failures} failed writes in a row)" if self.store_failures > 1 else ""),
                  file=sys.stderr, flush=True)
            self._store_error_printed = now
        self.store_error = str(error)
        latest = {verdict_key(v): v for v in verdicts}       # a window's newest row
        self._send_unstored(latest)
        if final:
            for v in latest.values():
                print("dnssensor: verdict not stored: " + json.dumps(v, sort_keys=True, default=str),
                      file=sys.stderr, flush=True)
            self.unstored += latest.values()

    def _store_recovered(self) -> None:
        if self.store_error is not None:
            print(f"dnssensor: store: writing again after {self.store_failures} failed write(s)",
                  file=sys.stderr, flush=True)
        self.store_error, self.store_failures = None, 0

    def _send_unstored(self, latest: dict[tuple, dict[str, Any]]) -> None:
        """The verdicts a refused write held (by verdict_key) that syslog has not had and the
        store has no row for (it can still be read when full): sent now, each entity and
        window once."""
        if not self.senders:
            return
        fresh = [k for k in latest if k not in self.sent_unstored]
        try:
            stored = self.store.stored_verdicts(fresh)
        except sqlite3.Error:
            stored = set()               # cannot tell: a repeat beats a loss
        out = [k for k in fresh if k not in stored]
        for k in out:
            self.sent_unstored[k] = None
        while len(self.sent_unstored) > MAX_SENT_UNSTORED:
            del self.sent_unstored[next(iter(self.sent_unstored))]
        self.counters["verdicts_sent_unstored"] += len(out)
        self._send([latest[k] for k in out])

    def _not_yet_sent(self, created: list[dict[str, Any]],
                      written: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Of the verdicts a write created, those syslog did not get while the store was down."""
        if not self.sent_unstored:
            return created
        out = [v for v in created if verdict_key(v) not in self.sent_unstored]
        for v in written:
            self.sent_unstored.pop(verdict_key(v), None)
        return out

    def _count_sink_losses(self, agg: Aggregate) -> None:
        """Verdicts the syslog spools had to drop, and failed store writes, are stage drops too."""
        for s in self.senders:
            now = s.counters["dropped"]
            seen = self._sink_dropped.get(s.target.label, 0)
            if now > seen:
                agg.dropped["syslog_dropped"] += now - seen
                self._sink_dropped[s.target.label] = now

    def _merge_stats(self, agg: Aggregate) -> tuple[list[dict[str, Any]], list]:
        limits = self.config.limits
        touched = []
        for key, row in agg.stats.items():
            merge_stats_row(self._open_row(key), _copy_stats(row), limits)
            touched.append(key)
        for minute, srow in agg.sensor.items():
            key = (minute, SENSOR_RESOLVER, SENSOR_LEG)
            merge_sensor_row(self._open_row(key).setdefault("sensor", new_sensor_row()), srow)
            touched.append(key)
        if agg.dropped:
            # Losses found at aggregation time belong to the newest minute.
            key = (int(self.latest // 60 * 60), SENSOR_RESOLVER, SENSOR_LEG)
            self._open_row(key).setdefault("sensor", new_sensor_row())["drops"].update(agg.dropped)
            touched.append(key)
        rows = []
        for key in dict.fromkeys(touched):
            rows.append(_stats_record(key, self.open_stats[key]))
        return rows, touched

    def _open_row(self, key: tuple[int, str, str]) -> dict[str, Any]:
        row = self.open_stats.get(key)
        if row is None:
            row = self.open_stats[key] = self._reopen(key)
        return row

    def _reopen(self, key: tuple[int, str, str]) -> dict[str, Any]:
        """A minute already closed and written: continue from the stored row."""
        row = new_stats_row()
        stored = self.store.get_stats(*key)
        if stored:
            for name in row:
                if name in stored and name not in ("clients", "rcodes", "qtypes"):
                    row[name] = stored[name] or 0
            row["rcodes"].update(stored["rcodes"])
            row["qtypes"].update(stored["qtypes"])
            row["stored_unique"] = stored.get("unique_clients") or 0
            if key[2] == SENSOR_LEG:
                row["sensor"] = {"packets": stored["packets"] or 0,
                                 "kernel_received": stored["kernel_received"] or 0,
                                 "kernel_dropped": stored["kernel_dropped"] or 0,
                                 "drops": Counter(stored["drops"])}
        return row

    def _verdicts(self, agg: Aggregate) -> list[dict[str, Any]]:
        out = []
        for key, entry in agg.malformed.items():
            mine = self.windows.get(key)
            if mine is None:
                self.windows[key] = mine = {"count": 0, "first": entry["first"], "last": entry["last"],
                                            "anomalies": Counter(), "samples": []}
            merge_malformed(mine, entry)
            v = self.rule.verdict(key, mine, self.config.sensor_name)
            if v is not None:
                out.append(v)
        return out

    def _rule_verdicts(self, agg: Aggregate) -> list[dict[str, Any]]:
        out = []
        for name, part in agg.rules.items():
            rule = self.rules.get(name)
            if rule is None:                   # removed by a reload
                continue
            open_groups = self.rule_windows.get(name)
            if open_groups is None:
                open_groups = self.rule_windows[name] = new_table(rule)
            lost = open_groups.add(part, self.config.limits.max_rule_groups)
            if lost:
                agg.dropped["rule_groups_overflow"] += lost
            touched = isin_keys(open_groups.keys, part.keys)
            found = verdicts(rule, open_groups, self.config.sensor_name, touched,
                             limit=self.config.limits.max_verdicts_per_rule)
            if found.capped:
                agg.dropped["verdicts_capped"] += found.capped
            out += found
        return out

    def _close_old(self, final: bool) -> None:
        horizon = self.latest - OPEN_MINUTES_GRACE_S
        for key in [k for k in self.open_stats if final or k[0] < horizon]:
            del self.open_stats[key]
        for key in [k for k in self.windows if final or k[0] + self.rule.window_s < horizon]:
            del self.windows[key]
        for name, groups in list(self.rule_windows.items()):
            window = self.rules[name].window_s if name in self.rules else 0
            if final:
                del self.rule_windows[name]
                continue
            keep = groups.window + window >= horizon
            if not keep.all():
                self.rule_windows[name] = groups.select(keep)

    def enforce_retention(self, now: float | None = None) -> dict[str, int]:
        """Retention against the data's clock (a replayed week-old capture keeps its rows)."""
        now = now if now is not None else max(self.latest, 0.0) or time.time()
        try:
            return self.store.enforce_retention(now, self.config.retention_days)
        except sqlite3.Error as e:
            # Deleting needs room in the journal too; a full disk is retried at the next pass.
            self.counters["store_errors"] += 1
            print(f"dnssensor: store: retention: {e}; retried at the next pass", file=sys.stderr, flush=True)
            return {}


def _copy_stats(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    out["clients"] = set(row["clients"])
    out["rcodes"] = Counter(row["rcodes"])
    out["qtypes"] = Counter(row["qtypes"])
    return out


def _stats_record(key: tuple[int, str, str], row: dict[str, Any]) -> dict[str, Any]:
    minute, resolver, leg = key
    rec = {"minute": minute, "resolver": resolver, "leg": leg}
    for name in ("queries", "responses", "noerror", "nxdomain", "servfail", "refused",
                 "bytes_queries", "bytes_responses", "answered", "unanswered", "unsolicited",
                 "mismatched", "duplicate", "rtt_count"):
        rec[name] = int(row[name])
    rec["rtt_ms_sum"] = float(row["rtt_ms_sum"])
    rec["unique_clients"] = max(len(row["clients"]), int(row.get("stored_unique", 0)))
    rec["rcodes"] = json.dumps(dict(sorted(row["rcodes"].items())))
    rec["qtypes"] = json.dumps(dict(sorted(row["qtypes"].items())))
    s = row.get("sensor")
    if s is not None:
        rec.update(packets=s["packets"], kernel_received=s["kernel_received"],
                   kernel_dropped=s["kernel_dropped"], drops=json.dumps(dict(sorted(s["drops"].items()))))
    return rec

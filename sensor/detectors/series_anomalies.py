"""Series anomalies as verdicts: rules/series.toml names the counters, the method and the
band; the writer evaluates them against the store's history (sensor.series) as data time
passes, and writes one verdict per episode, updated while it lasts."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sensor import series as ts
from sensor.config import read_toml
from sensor.errors import ConfigError

RULE_FILE = "series.toml"
KINDS = ("volume_spike", "volume_drop", "nxdomain_spike", "servfail_spike", "qtype_shift")
METHODS = ts.METHODS
RECENT_MIN = 30
"""Only episodes ending in the last RECENT_MIN minutes become (or update) verdicts."""


@dataclass(frozen=True)
class Watched:
    name: str
    spike: str | None
    drop: str | None


@dataclass(frozen=True)
class SeriesRule:
    path: str
    method: str = "mad"
    k: float = 5.0
    min_minutes: int = 3
    history_days: int = 35
    watched: tuple[Watched, ...] = ()
    qtype_recent_minutes: int = 0
    """0: no query-type shift test."""
    qtype_reference_minutes: int = 1440
    qtype_min_queries: int = 200
    qtype_min_effect: float = 0.15

    def verdicts(self, conn, sensor: str) -> list[dict[str, Any]]:
        out = []
        for w in self.watched:
            minutes, values = ts.load(conn, w.name, since_s=self.history_days * 86400)
            if len(minutes) < self.min_minutes:
                continue
            base = ts.fit(minutes, values)
            flags = ts.flags(self.method, values, base, self.k)
            for e in ts.episodes(flags, values, base.expected, self.min_minutes):
                if e.end < len(values) - RECENT_MIN:
                    continue
                kind = w.spike if e.direction > 0 else w.drop
                if kind is None:
                    continue
                i = e.peak
                band = (max(base.expected[i] - self.k * base.scale[i], 0.0), base.expected[i] + self.k * base.scale[i])
                observed, expected = float(values[i]), float(base.expected[i])
                out.append({
                    "ts": float(minutes[e.end - 1]) + 60, "kind": kind, "severity": "medium",
                    "client": "", "server": "", "domain": "", "detector": f"series:{w.name}",
                    "summary": (f"{w.name} {'rose' if e.direction > 0 else 'fell'} to {observed:.0f}/min against "
                                f"{expected:.1f} expected (band {band[0]:.1f}-{band[1]:.1f}) for "
                                f"{e.end - e.start} min; baseline seasonality {base.seasonality}"),
                    "evidence": {"series": w.name, "observed": observed, "expected": round(expected, 2),
                                 "band": [round(band[0], 2), round(band[1], 2)], "method": self.method,
                                 "k": self.k, "minutes": int(e.end - e.start), "seasonality": base.seasonality,
                                 "window": [int(minutes[e.start]), int(minutes[e.end - 1]) + 60]},
                    "count": int(e.end - e.start), "first_ts": float(minutes[e.start]),
                    "last_ts": float(minutes[e.end - 1]) + 60, "window_start": int(minutes[e.start]),
                    "sensor": sensor,
                })
        return out + self._qtype_shift(conn, sensor)

    def _qtype_shift(self, conn, sensor: str) -> list[dict[str, Any]]:
        if not self.qtype_recent_minutes:
            return []
        minutes, counts = ts.load_qtypes(conn, since_s=(self.qtype_recent_minutes + self.qtype_reference_minutes) * 60)
        shift = ts.qtype_shift(minutes, counts, self.qtype_recent_minutes, self.qtype_reference_minutes,
                               self.qtype_min_queries)
        if shift is None or shift.chi2 <= shift.critical or shift.effect < self.qtype_min_effect:
            return []
        start = int(minutes[-1]) + 60 - self.qtype_recent_minutes * 60
        moved = sorted(set(shift.recent) | set(shift.reference),
                       key=lambda n: -abs(shift.recent.get(n, 0) - shift.reference.get(n, 0)))[:3]
        change = ", ".join(f"{n} {shift.reference.get(n, 0):.0%} -> {shift.recent.get(n, 0):.0%}" for n in moved)
        return [{
            "ts": float(minutes[-1]) + 60, "kind": "qtype_shift", "severity": "medium", "client": "",
            "server": "", "domain": "", "detector": "series:qtypes",
            "summary": f"query types shifted in the last {self.qtype_recent_minutes} min: {change}",
            "evidence": {"recent_shares": shift.recent, "reference_shares": shift.reference,
                         "chi2": round(shift.chi2, 1), "critical": round(shift.critical, 1),
                         "cramers_v": round(shift.effect, 3), "min_effect": self.qtype_min_effect,
                         "method": "chi2", "window": [start, int(minutes[-1]) + 60],
                         "reference_minutes": self.qtype_reference_minutes},
            "count": 1, "first_ts": float(start), "last_ts": float(minutes[-1]) + 60,
            # one verdict per shift episode: keyed to the hour it began in, updated while it lasts
            "window_start": start - start % 3600, "sensor": sensor,
        }]


def load(rules_dir: str | Path) -> SeriesRule | None:
    path = Path(rules_dir) / RULE_FILE
    if not path.exists():
        return None
    doc, _ = read_toml(path)
    known = {"method", "k", "min_minutes", "history_days", "series", "qtype_shift"}
    for key in doc:
        if key not in known:
            raise ConfigError(f"{path}: {key}: unknown key")
    if doc.get("method", "mad") not in METHODS:
        raise ConfigError(f"{path}: method: expected one of {', '.join(METHODS)}")
    watched = []
    for i, item in enumerate(doc.get("series", [])):
        where = f"{path}: series[{i + 1}]"
        if not isinstance(item, dict) or set(item) - {"name", "spike", "drop"} or "name" not in item:
            raise ConfigError(f"{where}: expected name and spike and/or drop")
        if item["name"] not in ts.SERIES:
            raise ConfigError(f"{where}.name: unknown series {item['name']!r} (one of {', '.join(ts.SERIES)})")
        for key in ("spike", "drop"):
            if item.get(key) is not None and item[key] not in KINDS:
                raise ConfigError(f"{where}.{key}: expected one of {', '.join(KINDS)}")
        watched.append(Watched(item["name"], item.get("spike"), item.get("drop")))
    shift = doc.get("qtype_shift", {})
    if not isinstance(shift, dict) or set(shift) - {"recent_minutes", "reference_minutes", "min_queries",
                                                   "min_effect"}:
        raise ConfigError(f"{path}: qtype_shift: expected recent_minutes, reference_minutes, min_queries, "
                          "min_effect")
    rule = SeriesRule(str(path), doc.get("method", "mad"), float(doc.get("k", 5.0)),
                      int(doc.get("min_minutes", 3)), int(doc.get("history_days", 35)), tuple(watched),
                      int(shift.get("recent_minutes", 0)), int(shift.get("reference_minutes", 1440)),
                      int(shift.get("min_queries", 200)), float(shift.get("min_effect", 0.15)))
    if rule.k <= 0 or rule.min_minutes < 1 or rule.history_days < 1:
        raise ConfigError(f"{path}: k, min_minutes and history_days must be positive")
    return rule

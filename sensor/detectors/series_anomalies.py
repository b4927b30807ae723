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
KINDS = ("volume_spike", "volume_drop", "nxdomain_spike", "servfail_spike")
METHODS = ("mad", "moving_average")
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

    def verdicts(self, conn, sensor: str) -> list[dict[str, Any]]:
        out = []
        for w in self.watched:
            minutes, values = ts.load(conn, w.name, since_s=self.history_days * 86400)
            if len(minutes) < self.min_minutes:
                continue
            base = ts.fit(minutes, values)
            flags = (ts.flags_mad(values, base, self.k) if self.method == "mad"
                     else ts.flags_moving_average(values, k=self.k))
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
        return out


def load(rules_dir: str | Path) -> SeriesRule | None:
    path = Path(rules_dir) / RULE_FILE
    if not path.exists():
        return None
    doc, _ = read_toml(path)
    known = {"method", "k", "min_minutes", "history_days", "series"}
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
    rule = SeriesRule(str(path), doc.get("method", "mad"), float(doc.get("k", 5.0)),
                      int(doc.get("min_minutes", 3)), int(doc.get("history_days", 35)), tuple(watched))
    if rule.k <= 0 or rule.min_minutes < 1 or rule.history_days < 1:
        raise ConfigError(f"{path}: k, min_minutes and history_days must be positive")
    return rule

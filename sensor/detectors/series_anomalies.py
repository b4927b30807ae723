"""Series anomalies as verdicts: rules/series.toml names the counters, the method and the
band; the writer evaluates them against the store (sensor.series) once a minute of data
time, and writes one verdict per episode, updated while it lasts.

The baseline of each series (seasonal profile and spreads) is learnt from up to
`history_days` of the store and kept in the `baselines` table, refitted every
REFIT_EVERY_S of data time; each evaluation reads only the last EVAL_WINDOW_MIN minutes.
"""
from __future__ import annotations

import functools
import sqlite3
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sensor import series as ts
from sensor.config import line_of, read_toml
from sensor.errors import ConfigError
from sensor.series import hst as hst_model
from sensor.series import methods as mt

RULE_FILE = "series.toml"
KINDS = ("volume_spike", "volume_drop", "nxdomain_spike", "servfail_spike", "qtype_shift", "rcode_shift")
METHODS = tuple(mt.METHODS) + ("hst",)
RECENT_MIN = 30
"""Only episodes ending in the last RECENT_MIN minutes become (or update) verdicts."""
EVAL_WINDOW_MIN = ts.LEVEL_WINDOW_MIN + mt.KS_RECENT_MIN + mt.KS_REFERENCE_MIN + RECENT_MIN
"""Minutes read per evaluation: the level's window, then the longest method's, then the minutes judged."""
REFIT_EVERY_S = 6 * 3600
"""Data time between two fits of a series' profile from its history (plus up to an hour, by series)."""
MAX_TOP = 100
"""Most keys (networks or domains) a rule may ask a series for."""
MIN_HISTORY_DAYS = 2.0
"""History a series needs before its episodes become verdicts: a baseline must have seen
mornings rise more than once to tell them from an event. Until then profiles are refitted
every hour."""
HST_ID = "hst"
"""The `baselines` row holding the Half-Space Trees model."""


@dataclass(frozen=True)
class Watched:
    name: str
    spike: str | None
    drop: str | None
    per: tuple[str, ...] = ()
    """Also per client network and/or per registered domain, for the `top` busiest."""
    top: int = 10


@dataclass(frozen=True)
class MixRule:
    column: str                 # qtypes or rcodes
    recent_minutes: int = 0     # 0: off
    reference_minutes: int = 1440
    min_count: int = 200
    min_effect: float = 0.15


@dataclass
class SeriesRule:
    path: str
    method: str = "mad"
    k: float | None = None
    """None: the method's default."""
    min_minutes: int = 3
    history_days: int = 35
    hst_threshold: float = hst_model.DEFAULT_THRESHOLD
    watched: tuple[Watched, ...] = ()
    mixes: tuple[MixRule, ...] = ()
    profiles: dict[str, ts.Profile] = field(default_factory=dict)
    """Cache of the `baselines` rows this rule has read or written."""
    busiest: dict[tuple[str, int, int], list[str]] = field(default_factory=dict)
    """Cache of the busiest networks and domains, by (scope, top, hour)."""

    @property
    def lookback_min(self) -> int:
        """Minutes before a step's end that its evaluation reads (series and mixes): a step
        with no data in them judges nothing."""
        return max([EVAL_WINDOW_MIN] + [m.recent_minutes + m.reference_minutes for m in self.mixes
                                        if m.recent_minutes])

    def verdicts(self, store: Any, sensor: str, end: int) -> list[dict[str, Any]]:
        """Verdicts for episodes that end in the RECENT_MIN minutes up to minute `end` (the
        last complete one; a replay walks `end` through the past); profiles and the streaming
        model are saved to the store on the way."""
        conn = store.conn
        out: list[dict[str, Any]] = []
        judged: dict[str, tuple[np.ndarray, np.ndarray, ts.Baseline]] = {}
        for w in self.watched:
            for scope, key in [(None, None)] + [(s, k) for s in w.per for k in self._busiest(conn, s, w.top, end)]:
                got = self._judge(store, w, scope, key, end)
                if got is None:
                    continue
                minutes, values, base = got
                if scope is None:
                    judged[w.name] = got
                if self.method == "hst":
                    continue
                flags = mt.flags(self.method, values, base, self.k)
                out += self._episodes(w, scope, key, minutes, values, base, flags, sensor)
        if self.method == "hst":
            out += self._hst(store, judged, sensor)
        for mix in self.mixes:
            out += self._mix_shift(conn, mix, sensor, end)
        return out

    def _busiest(self, conn: sqlite3.Connection, scope: str, top: int, end: int) -> list[str]:
        """The busiest keys of the last day, looked up once per hour of data time."""
        key = (scope, top, end // 3600)
        found = self.busiest.get(key)
        if found is None:
            if len(self.busiest) > 16:
                self.busiest.clear()
            found = self.busiest[key] = ts.busiest(conn, scope, end - 86400, top)
        return found

    def _profile(self, store: Any, sid: str, name: str, scope: str | None, key: str | None,
                 end: int) -> ts.Profile:
        profile = self.profiles.get(sid)
        if profile is None:
            row = store.conn.execute("SELECT profile FROM baselines WHERE series = ?", (sid,)).fetchone()
            if row and row[0]:
                profile = self.profiles[sid] = ts.Profile.from_json(row[0])
        refit_every = REFIT_EVERY_S if profile is not None and profile.days >= MIN_HISTORY_DAYS else 3600
        # spread the refits over an hour, so dozens of series never stall the writer together
        refit_every += (zlib.crc32(sid.encode()) % 60) * 60
        if profile is None or end - profile.fitted_to >= refit_every:
            minutes, values = ts.load(store.conn, name, since_s=self.history_days * 86400, scope=scope, key=key,
                                      until=end)
            profile = self.profiles[sid] = ts.fit(minutes, values).profile
            with store.transaction() as conn:
                store.put_baseline(conn, sid, profile.fitted_to, profile.seasonality, profile.to_json(), None)
        return profile

    def _judge(self, store: Any, w: Watched, scope: str | None, key: str | None,
               end: int) -> tuple[np.ndarray, np.ndarray, ts.Baseline] | None:
        minutes, values = ts.load(store.conn, w.name, since_s=EVAL_WINDOW_MIN * 60, scope=scope, key=key, until=end)
        if len(minutes) < self.min_minutes:
            return None
        profile = self._profile(store, ts.series_id(w.name, scope, key), w.name, scope, key, end)
        if profile.days < MIN_HISTORY_DAYS:
            return None
        return minutes, values, ts.apply(profile, minutes, values)

    def _band(self, base: ts.Baseline, i: int) -> tuple[float, float]:
        k = self.k if self.k is not None else mt.METHODS["mad"].k
        return max(base.expected[i] - k * base.scale[i], 0.0), base.expected[i] + k * base.scale[i]

    def _episodes(self, w: Watched, scope: str | None, key: str | None, minutes: np.ndarray, values: np.ndarray,
                  base: ts.Baseline, flags: np.ndarray, sensor: str,
                  scores: np.ndarray | None = None) -> list[dict[str, Any]]:
        out = []
        for e in ts.episodes(flags, values, base.expected, self.min_minutes):
            if e.end < len(values) - RECENT_MIN:
                continue
            kind = w.spike if e.direction > 0 else w.drop
            if kind is None:
                continue
            i = e.peak
            band = self._band(base, i)
            history = base.profile.days if base.profile is not None else 0.0
            observed, expected = float(values[i]), float(base.expected[i])
            where = f" for {scope} {key}" if scope else ""
            evidence = {"series": ts.series_id(w.name, scope, key), "observed": observed,
                        "expected": round(expected, 2), "band": [round(band[0], 2), round(band[1], 2)],
                        "method": self.method, "k": self.k if self.k is not None else mt.METHODS.get(
                            self.method, mt.METHODS["mad"]).k,
                        "minutes": int(e.end - e.start), "seasonality": base.seasonality,
                        "history_days": round(history, 1),
                        "window": [int(minutes[e.start]), int(minutes[e.end - 1]) + 60]}
            if scores is not None:
                evidence.update(k=self.hst_threshold, score=round(float(scores[e.start:e.end].max()), 3))
            out.append({
                "ts": float(minutes[e.end - 1]) + 60, "kind": kind, "severity": "medium",
                "client": key if scope == "network" else "", "server": "",
                "domain": key if scope == "domain" else "", "detector": f"series:{w.name}",
                "summary": (f"{w.name}{where} {'rose' if e.direction > 0 else 'fell'} to {observed:.0f}/min against "
                            f"{expected:.1f} expected (band {band[0]:.1f}-{band[1]:.1f}) for "
                            f"{e.end - e.start} min ({self.method}); baseline seasonality {base.seasonality} "
                            f"from {history:.1f} days of history"),
                "evidence": evidence,
                "count": int(e.end - e.start), "first_ts": float(minutes[e.start]),
                "last_ts": float(minutes[e.end - 1]) + 60, "window_start": int(minutes[e.start]),
                "sensor": sensor,
            })
        return out

    def _hst(self, store: Any, judged: dict[str, tuple[np.ndarray, np.ndarray, ts.Baseline]],
             sensor: str) -> list[dict[str, Any]]:
        """Half-Space Trees over the residuals of all watched series (whole resolver) at once:
        each new minute is scored, then learnt; flags and scores of the window are kept with
        the model so episodes span evaluations."""
        names = [w.name for w in self.watched if w.name in judged]
        if not names:
            return []
        # the minutes all of them have (a series leaves out the minutes the sensor did not observe)
        minutes = functools.reduce(np.intersect1d, [judged[n][0] for n in names])
        if not len(minutes):
            return []
        start = int(minutes[0])
        z = np.stack([judged[n][2].z(judged[n][1])[np.searchsorted(judged[n][0], minutes)] for n in names], axis=1)
        row = store.conn.execute("SELECT model FROM baselines WHERE series = ?", (HST_ID,)).fetchone()
        forest = hst_model.HalfSpaceForest.loads(row[0]) if row and row[0] else None
        if forest is None or forest.names != tuple(names):
            forest = hst_model.HalfSpaceForest(names)
        new = minutes > forest.last_minute
        if new.any():
            f, which, scores = forest.flags(z[new], self.hst_threshold)
            for m, fl, wi, sc in zip(minutes[new].tolist(), f.tolist(), which.tolist(), scores.tolist()):
                forest.recent[m] = (fl, wi, sc)
            forest.last_minute = int(minutes[-1])
            for m in [m for m in forest.recent if m < start]:
                del forest.recent[m]
            with store.transaction() as conn:
                store.put_baseline(conn, HST_ID, forest.last_minute, "streaming", None, forest.dumps())
        out = []
        for si, w in enumerate(w for w in self.watched if w.name in judged):
            m_w, values, base = judged[w.name]
            flags, scores = np.zeros(len(m_w), dtype=np.int64), np.zeros(len(m_w))
            for j, m in enumerate(m_w.tolist()):
                fl, wi, sc = forest.recent.get(m, (0, -1, 0.0))
                scores[j] = sc
                if wi == si:
                    flags[j] = fl
            out += self._episodes(w, None, None, m_w, values, base, flags, sensor, scores)
        return out

    def _mix_shift(self, conn: sqlite3.Connection, mix: MixRule, sensor: str, end: int) -> list[dict[str, Any]]:
        if not mix.recent_minutes:
            return []
        minutes, counts = ts.load_mix(conn, mix.column, since_s=(mix.recent_minutes + mix.reference_minutes) * 60,
                                      until=end)
        categories = ts.MIXES[mix.column]
        shift = ts.mix_shift(minutes, counts, categories, mix.recent_minutes, mix.reference_minutes, mix.min_count)
        if shift is None or shift.chi2 <= shift.critical or shift.effect < mix.min_effect:
            return []
        start = int(minutes[-1]) + 60 - mix.recent_minutes * 60
        moved = sorted(set(shift.recent) | set(shift.reference),
                       key=lambda n: -abs(shift.recent.get(n, 0) - shift.reference.get(n, 0)))[:3]
        change = ", ".join(f"{n} {shift.reference.get(n, 0):.0%} -> {shift.recent.get(n, 0):.0%}" for n in moved)
        if mix.column == "qtypes":
            kind, what = "qtype_shift", "query types"
        else:
            risen = max(shift.recent, key=lambda n: shift.recent[n] - shift.reference.get(n, 0))
            kind = {"SERVFAIL": "servfail_spike", "NXDOMAIN": "nxdomain_spike"}.get(risen, "rcode_shift")
            what = "response codes"
        return [{
            "ts": float(minutes[-1]) + 60, "kind": kind, "severity": "medium", "client": "",
            "server": "", "domain": "", "detector": f"series:{mix.column}",
            "summary": f"{what} shifted in the last {mix.recent_minutes} min: {change}",
            "evidence": {"recent_shares": shift.recent, "reference_shares": shift.reference,
                         "chi2": round(shift.chi2, 1), "critical": round(shift.critical, 1),
                         "cramers_v": round(shift.effect, 3), "min_effect": mix.min_effect,
                         "method": "chi2", "window": [start, int(minutes[-1]) + 60],
                         "reference_minutes": mix.reference_minutes},
            "count": 1, "first_ts": float(start), "last_ts": float(minutes[-1]) + 60,
            # one verdict per shift episode: keyed to the hour it began in, updated while it lasts
            "window_start": start - start % 3600, "sensor": sensor,
        }]


def _mix(doc: dict, section: str, column: str, path: Path) -> MixRule | None:
    body = doc.get(section)
    if body is None:
        return None
    keys = {"recent_minutes", "reference_minutes", "min_count", "min_effect"}
    if not isinstance(body, dict) or set(body) - keys:
        raise ConfigError(f"{path}: {section}: expected {', '.join(sorted(keys))}")
    mix = MixRule(column, int(body.get("recent_minutes", 0)), int(body.get("reference_minutes", 1440)),
                  int(body.get("min_count", 200)), float(body.get("min_effect", 0.15)))
    if mix.recent_minutes < 0 or mix.reference_minutes < 1 or mix.min_count < 1 or not 0 <= mix.min_effect <= 1:
        raise ConfigError(f"{path}: {section}: minutes and min_count must be positive, min_effect in 0..1")
    return mix


def load(rules_dir: str | Path) -> SeriesRule | None:
    path = Path(rules_dir) / RULE_FILE
    if not path.exists():
        return None
    doc, text = read_toml(path)

    def at(key: str) -> str:
        """file:line of a top-level key, for the error."""
        line = line_of(text, key)
        return f"{path}:{line}" if line else str(path)

    known = {"method", "k", "min_minutes", "history_days", "series", "qtype_shift", "rcode_shift", "hst"}
    for key in doc:
        if key not in known:
            raise ConfigError(f"{at(key)}: {key}: unknown key")
    if doc.get("method", "mad") not in METHODS:
        raise ConfigError(f"{at('method')}: method: expected one of {', '.join(METHODS)}")
    watched = []
    for i, item in enumerate(doc.get("series", [])):
        where = f"{path}: series[{i + 1}]"
        if not isinstance(item, dict) or set(item) - {"name", "spike", "drop", "per", "top"} or "name" not in item:
            raise ConfigError(f"{where}: expected name, spike and/or drop, and optionally per and top")
        if item["name"] not in ts.SERIES:
            raise ConfigError(f"{where}.name: unknown series {item['name']!r} (one of {', '.join(ts.SERIES)})")
        for key in ("spike", "drop"):
            if item.get(key) is not None and item[key] not in KINDS:
                raise ConfigError(f"{where}.{key}: expected one of {', '.join(KINDS)}")
        per = item.get("per", [])
        per = [per] if isinstance(per, str) else per
        if not isinstance(per, list) or any(p not in ts.SCOPES for p in per):
            raise ConfigError(f"{where}.per: expected {' and/or '.join(ts.SCOPES)}")
        if per and item["name"] not in ts.SCOPED_SERIES:
            raise ConfigError(f"{where}.per: {item['name']} is not kept per network or domain "
                              f"(one of {', '.join(ts.SCOPED_SERIES)})")
        top = item.get("top", 10)
        if not isinstance(top, int) or not 1 <= top <= MAX_TOP:
            raise ConfigError(f"{where}.top: expected an integer from 1 to {MAX_TOP}")
        watched.append(Watched(item["name"], item.get("spike"), item.get("drop"), tuple(per), top))
    hst = doc.get("hst", {})
    if not isinstance(hst, dict) or set(hst) - {"threshold"} or not 0 < float(hst.get("threshold", 0.9)) < 1:
        raise ConfigError(f"{path}: hst: expected threshold between 0 and 1")
    mixes = tuple(m for m in (_mix(doc, "qtype_shift", "qtypes", path), _mix(doc, "rcode_shift", "rcodes", path))
                  if m is not None)
    k = doc.get("k")
    rule = SeriesRule(str(path), doc.get("method", "mad"), None if k is None else float(k),
                      int(doc.get("min_minutes", 3)), int(doc.get("history_days", 35)),
                      float(hst.get("threshold", hst_model.DEFAULT_THRESHOLD)), tuple(watched), mixes)
    for key in ("k", "min_minutes", "history_days"):
        value = getattr(rule, key)
        if value is not None and value <= 0:
            raise ConfigError(f"{at(key)}: {key}: must be positive")
    return rule

"""Runs the rules of rules/: per batch in the workers, per window in the writer.

Workers filter each batch with a rule's `where`, group the rows by window and
the rule's keys (one pass over 64-bit keys), and fold the rule's aggregates
into mergeable group states. The writer merges the states of every worker,
evaluates the threshold when a group changes, and turns a group over its
threshold into a verdict (one per entity and window, updated while it lasts).

Unique counts are exact up to EXACT_UNIQUE_LIMIT values per group, then a
HyperLogLog sketch (Apache DataSketches) takes over, so memory stays bounded
whatever the traffic; groups per rule between two flushes are bounded by
Limits.max_rule_groups (the rest are counted as rule_groups_overflow).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sensor import _core
from sensor.engine.aggregate import address_text
from sensor.features import FeatureTable
from sensor.rules import Rule
from sensor.track import _hash

EXACT_UNIQUE_LIMIT = 4096
"""Distinct values kept exactly per group and aggregate before switching to a sketch."""
HLL_LG_K = 12
"""HyperLogLog size: 2^12 buckets, about 1.6 % relative error, 4 KB per sketch."""
SAMPLE_NAMES = 5


class UniqueCounter:
    """Exact set up to EXACT_UNIQUE_LIMIT, then an HLL sketch; mergeable and picklable."""

    __slots__ = ("values", "sketch")

    def __init__(self) -> None:
        self.values: set[int] | None = set()
        self.sketch: Any = None

    def update(self, values) -> None:
        if self.values is not None:
            self.values.update(values)
            if len(self.values) > EXACT_UNIQUE_LIMIT:
                self._to_sketch()
        else:
            for v in values:
                self.sketch.update(int(v))

    def _to_sketch(self) -> None:
        import datasketches

        self.sketch = datasketches.hll_sketch(HLL_LG_K)
        for v in self.values:
            self.sketch.update(int(v))
        self.values = None

    def merge(self, other: "UniqueCounter") -> None:
        if other.values is not None:
            self.update(other.values)
            return
        if self.values is not None:
            self._to_sketch()
        import datasketches

        union = datasketches.hll_union(HLL_LG_K)
        union.update(self.sketch)
        union.update(other.sketch)
        self.sketch = union.get_result()

    def count(self) -> int:
        return len(self.values) if self.values is not None else int(round(self.sketch.get_estimate()))

    def __getstate__(self):
        return (self.values, self.sketch.serialize_compact() if self.sketch is not None else None)

    def __setstate__(self, state) -> None:
        self.values, blob = state
        self.sketch = None
        if blob is not None:
            import datasketches
            self.sketch = datasketches.hll_sketch.deserialize(blob)


@dataclass
class GroupState:
    client: str
    server: str
    domain: str
    first: float
    last: float
    count: int = 0
    values: dict[str, float] = field(default_factory=dict)       # sum, min, max, mean's sum
    counts: dict[str, int] = field(default_factory=dict)         # mean's count
    uniques: dict[str, UniqueCounter] = field(default_factory=dict)
    samples: list[str] = field(default_factory=list)
    functions: dict[str, str] = field(default_factory=dict)     # aggregate name -> function

    def merge(self, other: "GroupState") -> None:
        self.first = min(self.first, other.first)
        self.last = max(self.last, other.last)
        self.count += other.count
        for name, function in other.functions.items():
            self.functions.setdefault(name, function)
            if function in ("sum", "mean"):
                self.values[name] = self.values.get(name, 0.0) + other.values.get(name, 0.0)
                self.counts[name] = self.counts.get(name, 0) + other.counts.get(name, 0)
            elif function == "max":
                self.values[name] = max(self.values.get(name, -np.inf), other.values.get(name, -np.inf))
            elif function == "min":
                self.values[name] = min(self.values.get(name, np.inf), other.values.get(name, np.inf))
            elif function == "nunique":
                mine = self.uniques.setdefault(name, UniqueCounter())
                if name in other.uniques:
                    mine.merge(other.uniques[name])
        for s in other.samples:
            if len(self.samples) < SAMPLE_NAMES and s not in self.samples:
                self.samples.append(s)

    def results(self, rule: Rule) -> dict[str, float]:
        out: dict[str, float] = {}
        for a in rule.aggregations:
            if a.function == "count":
                out[a.name] = self.count
            elif a.function == "nunique":
                out[a.name] = self.uniques[a.name].count() if a.name in self.uniques else 0
            elif a.function == "mean":
                n = self.counts.get(a.name, 0)
                out[a.name] = self.values.get(a.name, 0.0) / n if n else 0.0
            else:
                out[a.name] = float(self.values.get(a.name, 0.0))
        return out


def _column(table: FeatureTable, a, idx: np.ndarray) -> np.ndarray:
    values = a.evaluate(table.columns)
    values = np.broadcast_to(np.asarray(values, dtype=np.float64), (len(table),))
    return values[idx]


def fold(rules: list[Rule], table: FeatureTable, partials: dict[str, dict], max_groups: int,
         dropped: dict[str, int]) -> None:
    """Fold one batch into `partials` (rule name -> {(window, *keys): GroupState})."""
    cols = table.columns
    for rule in rules:
        mask = np.broadcast_to(np.asarray(rule.where(cols), dtype=bool), (len(table),))
        idx = np.flatnonzero(mask)
        if not len(idx):
            continue
        window = (cols["ts"][idx] // rule.window_s).astype(np.int64) * rule.window_s
        keys = _hash(window.astype(np.uint64), *[cols[g][idx].astype(np.uint64) for g in rule.group_by])
        first, inverse, counts = _core.group_u64(np.ascontiguousarray(keys))
        g = len(first)
        ts = cols["ts"][idx]
        tmin = np.full(g, np.inf)
        tmax = np.full(g, -np.inf)
        np.minimum.at(tmin, inverse, ts)
        np.maximum.at(tmax, inverse, ts)
        per_agg: dict[str, Any] = {}
        for a in rule.aggregations:
            if a.function == "count":
                continue
            if a.function == "nunique":
                values = cols[a.argument][idx].astype(np.uint64)
                pairs = np.unique(np.rec.fromarrays([inverse, values]))
                bounds = np.searchsorted(pairs["f0"], np.arange(g + 1))
                per_agg[a.name] = (pairs["f1"], bounds)
                continue
            v = _column(table, a, idx)
            if a.function in ("sum", "mean"):
                per_agg[a.name] = np.bincount(inverse, weights=v, minlength=g)
            elif a.function == "max":
                out = np.full(g, -np.inf)
                np.maximum.at(out, inverse, v)
                per_agg[a.name] = out
            else:
                out = np.full(g, np.inf)
                np.minimum.at(out, inverse, v)
                per_agg[a.name] = out
        states = partials.setdefault(rule.name, {})
        for gi, row in enumerate(first.tolist()):
            i = int(idx[row])
            key = (int(window[row]), *[int(cols[k][i]) for k in rule.group_by])
            state = states.get(key)
            if state is None:
                if len(states) >= max_groups:
                    dropped["rule_groups_overflow"] = dropped.get("rule_groups_overflow", 0) + int(counts[gi])
                    continue
                state = states[key] = GroupState(
                    client=address_text(bytes(table.client_addr[i])) if "client" in rule.group_by else "",
                    server=address_text(bytes(table.server_addr[i])) if "server" in rule.group_by else "",
                    domain=(table.regdom_text(i) if "regdom" in rule.group_by
                            else table.qname_text(i) if "qname" in rule.group_by else ""),
                    first=float(tmin[gi]), last=float(tmax[gi]),
                    functions={a.name: a.function for a in rule.aggregations})
            state.first = min(state.first, float(tmin[gi]))
            state.last = max(state.last, float(tmax[gi]))
            state.count += int(counts[gi])
            for a in rule.aggregations:
                data = per_agg.get(a.name)
                if a.function in ("sum", "mean"):
                    state.values[a.name] = state.values.get(a.name, 0.0) + float(data[gi])
                    state.counts[a.name] = state.counts.get(a.name, 0) + int(counts[gi])
                elif a.function == "max":
                    state.values[a.name] = max(state.values.get(a.name, -np.inf), float(data[gi]))
                elif a.function == "min":
                    state.values[a.name] = min(state.values.get(a.name, np.inf), float(data[gi]))
                elif a.function == "nunique":
                    values, bounds = data
                    state.uniques.setdefault(a.name, UniqueCounter()).update(
                        values[bounds[gi]:bounds[gi + 1]].tolist())
            if len(state.samples) < SAMPLE_NAMES:
                members = idx[inverse == gi][:SAMPLE_NAMES * 4]
                for m in members.tolist():
                    name = table.qname_text(m)
                    if name not in state.samples:
                        state.samples.append(name)
                    if len(state.samples) >= SAMPLE_NAMES:
                        break


def merge_partials(mine: dict[str, dict], other: dict[str, dict]) -> None:
    for name, groups in other.items():
        target = mine.setdefault(name, {})
        for key, state in groups.items():
            have = target.get(key)
            if have is None:
                target[key] = state
            else:
                have.merge(state)


def verdict(rule: Rule, key: tuple, state: GroupState, sensor: str) -> dict[str, Any] | None:
    """The verdict for a group over its rule's threshold, with its evidence; None below."""
    values = state.results(rule)
    env = {**values, "window_s": rule.window_s}
    if not bool(rule.threshold(env)):
        return None
    fields = {**values, "kind": rule.kind, "client": state.client, "server": state.server,
              "domain": state.domain, "window_s": rule.window_s, "count": state.count}
    return {
        "ts": state.last, "kind": rule.kind, "severity": rule.severity, "client": state.client,
        "server": state.server, "domain": state.domain, "detector": rule.name,
        "summary": rule.summary.format(**{k: _fmt(v) for k, v in fields.items()}),
        "evidence": {"values": {k: _round(v) for k, v in values.items()}, "threshold": rule.threshold_text,
                     "filter": rule.where_text, "group_by": list(rule.group_by), "window_s": rule.window_s,
                     "sample_qnames": state.samples, "rule_file": rule.path},
        "count": state.count, "first_ts": state.first, "last_ts": state.last, "window_start": key[0],
        "sensor": sensor,
    }


def _round(v: float) -> float | int:
    return int(v) if float(v).is_integer() else round(float(v), 3)


def _fmt(v: Any) -> Any:
    return _round(v) if isinstance(v, (int, float, np.floating, np.integer)) else v

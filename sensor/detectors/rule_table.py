"""One rule's groups as numpy columns, so a batch folds in without a Python object per group.

A group is one entity (the rule's group_by columns) in one window, keyed by a
64-bit hash. Columns: window, client and server addresses, the domain text
and two sample names (fixed width, from the batch the group first appeared
in), row count, first and last ts, one column per sum/mean/min/max aggregate.
Unique counts keep their distinct (group, value) pairs exactly, up to
EXACT_UNIQUE_LIMIT per group; a group past that moves to a HyperLogLog sketch
(Apache DataSketches), the only per-value Python work, and only for such groups.
"""
from __future__ import annotations

import sys
from typing import Any

import numpy as np

from sensor import _core
from sensor.track import group_runs, hash_columns, index_keys, isin_keys, key_groups

EXACT_UNIQUE_LIMIT = 4096
"""Distinct values kept exactly per group and unique-count aggregate before a sketch takes over."""
HLL_LG_K = 12
"""HyperLogLog size: 2^12 buckets, about 1.6 % relative error, 4 KB per sketch."""
DOMAIN_WIDTH = 128
"""Domain text kept per group (longer names are cut: evidence, not identity)."""
SAMPLE_WIDTH = 96
SAMPLES = 2
_MIX = np.uint64(0x9E3779B97F4A7C15)


class HllCounter:
    """A HyperLogLog sketch that pickles (workers hand tables to the writer)."""

    def __init__(self) -> None:
        import datasketches
        self.sketch = datasketches.hll_sketch(HLL_LG_K)

    def update(self, values) -> None:
        for v in values:
            self.sketch.update(int(v))

    def merge(self, other: "HllCounter") -> None:
        import datasketches
        union = datasketches.hll_union(HLL_LG_K)
        union.update(self.sketch)
        union.update(other.sketch)
        self.sketch = union.get_result()

    def count(self) -> int:
        return int(round(self.sketch.get_estimate()))

    def __getstate__(self):
        return self.sketch.serialize_compact()

    def __setstate__(self, blob) -> None:
        import datasketches
        self.sketch = datasketches.hll_sketch.deserialize(blob)


class RuleTable:
    def __init__(self, numeric: tuple[tuple[str, str], ...], uniques: tuple[str, ...]) -> None:
        self.numeric = numeric              # (aggregate name, function) for sum/mean/min/max
        self.uniques = uniques              # names of nunique aggregates
        self.keys = np.empty(0, dtype=np.uint64)
        self.window = np.empty(0, dtype=np.int64)
        self.client = np.empty(0, dtype="V16")
        self.server = np.empty(0, dtype="V16")
        self.domain = np.empty(0, dtype=f"S{DOMAIN_WIDTH}")
        self.samples = np.empty((0, SAMPLES), dtype=f"S{SAMPLE_WIDTH}")
        self.count = np.empty(0, dtype=np.int64)
        self.first = np.empty(0, dtype=np.float64)
        self.last = np.empty(0, dtype=np.float64)
        self.values = np.empty((0, len(numeric)), dtype=np.float64)
        # per unique aggregate: distinct (group key, value) pairs with the hash of each pair
        # (so a batch's pairs are checked against them without rehashing), and sketches of
        # big groups
        self.pairs: dict[str, tuple[np.ndarray, np.ndarray]] = {
            name: (np.empty(0, dtype=np.uint64), np.empty(0, dtype=np.uint64)) for name in uniques}
        self.pair_keys: dict[str, np.ndarray] = {name: np.empty(0, dtype=np.uint64) for name in uniques}
        self.sketches: dict[str, dict[int, HllCounter]] = {name: {} for name in uniques}

    def __len__(self) -> int:
        return len(self.keys)

    def empty_like(self) -> "RuleTable":
        return RuleTable(self.numeric, self.uniques)

    # ------------------------------------------------------------- folding

    def add(self, other: "RuleTable", limit: int) -> int:
        """Merge another table's groups in; returns rows dropped at the group limit."""
        dropped = 0
        if not len(other):
            return 0
        # other's groups are distinct: held ones add up in place, new ones are appended
        pos = index_keys(other.keys, self.keys)
        fresh = pos < 0
        room = max(limit - len(self.keys), 0)
        if np.count_nonzero(fresh) > room:
            keep = ~fresh
            keep[np.flatnonzero(fresh)[:room]] = True
            dropped = int(other.count[~keep].sum())
            other, pos = other.select(keep), pos[keep]
        held = pos >= 0
        if held.any():
            at = pos[held]
            self.count[at] += other.count[held]
            self.first[at] = np.minimum(self.first[at], other.first[held])
            self.last[at] = np.maximum(self.last[at], other.last[held])
            for j, (_, function) in enumerate(self.numeric):
                mine, theirs = self.values[at, j], other.values[held, j]
                if function in ("sum", "mean"):
                    self.values[at, j] = mine + theirs
                elif function == "max":
                    self.values[at, j] = np.maximum(mine, theirs)
                else:
                    self.values[at, j] = np.minimum(mine, theirs)
        new = np.flatnonzero(~held)
        if len(new):
            for attr in ("keys", "window", "client", "server", "domain", "samples", "count", "first", "last",
                         "values"):
                setattr(self, attr, np.concatenate([getattr(self, attr), getattr(other, attr)[new]]))
        for name in self.uniques:
            self._merge_pairs(name, *other.pairs[name], other.pair_keys[name])
            if other.sketches[name]:
                self._take_sketches(name, other.sketches[name])
        return dropped

    @staticmethod
    def combined(parts: list["RuleTable"]) -> "RuleTable":
        """Tables of one rule (a rule's held-back batch tables, in batch order) as one:
        what adding them one after another to the first gives, in one grouping of all their
        rows instead of a lookup and a copy of the growing table per part. No group limit
        applies here; it applies as the whole goes into the rule's table, which drops the
        groups that folding the parts one by one would (those new to it past its room, in
        order of first appearance). The first part may be reused."""
        if len(parts) == 1:
            return parts[0]
        if any(sketches for p in parts for sketches in p.sketches.values()):
            out = parts[0]
            for part in parts[1:]:              # sketches merge one by one
                out.add(part, sys.maxsize)
            return out
        keys = np.concatenate([p.keys for p in parts])
        if not len(keys):
            return parts[0]
        out = parts[0].empty_like()
        first, inverse, sizes = key_groups(keys)
        g = len(first)

        def joined(attr: str) -> np.ndarray:
            return np.concatenate([getattr(p, attr) for p in parts])
        # a group keeps the identity and texts of the part it first appeared in, as add()
        # keeps a held group's own
        out.keys = keys[first]
        for attr in ("window", "client", "server", "domain", "samples"):
            setattr(out, attr, joined(attr)[first])
        out.count = np.bincount(inverse, weights=joined("count"), minlength=g).astype(np.int64)
        order, starts = group_runs(inverse, sizes)
        out.first = reduce_groups("min", joined("first"), inverse, order, starts)
        out.last = reduce_groups("max", joined("last"), inverse, order, starts)
        values = joined("values")
        out.values = np.empty((g, len(out.numeric)))
        for j, (_, function) in enumerate(out.numeric):    # sums in part order, as add()'s
            out.values[:, j] = reduce_groups(function, values[:, j], inverse, order, starts)
        for name in out.uniques:
            pair_keys = np.concatenate([p.pair_keys[name] for p in parts])
            distinct = key_groups(pair_keys)[0]
            groups = np.concatenate([p.pairs[name][0] for p in parts])[distinct]
            held = np.concatenate([p.pairs[name][1] for p in parts])[distinct]
            out._merge_pairs(name, groups, held, pair_keys[distinct])
        return out

    def _take_sketches(self, name: str, incoming: dict[int, HllCounter]) -> None:
        """Another table's sketches in: a group this table still counts exactly takes its
        exact values into the sketch, which counts the group from then on."""
        sketches = self.sketches[name]
        groups, values = self.pairs[name]
        newly = np.fromiter((gk for gk in incoming if gk not in sketches), dtype=np.uint64)
        if len(newly) and len(groups):
            moving = isin_keys(groups, newly)
            if moving.any():
                for gk in np.unique(groups[moving]).tolist():
                    incoming[gk].update(values[moving & (groups == gk)].tolist())
                self.pairs[name] = (groups[~moving], values[~moving])
                self.pair_keys[name] = self.pair_keys[name][~moving]
        for gk, sketch in incoming.items():
            have = sketches.get(gk)
            if have is None:
                sketches[gk] = sketch
            else:
                have.merge(sketch)

    def _merge_pairs(self, name: str, groups: np.ndarray, values: np.ndarray,
                     keys: np.ndarray | None = None) -> None:
        """Take (group key, value) pairs in. `keys`, when given, are the pairs' own keys
        (hash_columns(groups, values)), and the pairs distinct already."""
        if not len(groups):
            return
        sketches = self.sketches[name]
        if sketches:                                  # values of sketched groups go to their sketch
            sk = np.fromiter(sketches.keys(), dtype=np.uint64, count=len(sketches))
            big = isin_keys(groups, sk)
            for gk in np.unique(groups[big]).tolist():
                sketches[gk].update(values[big & (groups == gk)].tolist())
            groups, values = groups[~big], values[~big]
            keys = keys[~big] if keys is not None else None
        if keys is None:
            keys = hash_columns(groups, values)
            distinct = key_groups(keys)[0]
            groups, values, keys = groups[distinct], values[distinct], keys[distinct]
        old_g, old_v = self.pairs[name]
        if not len(old_g):
            # nothing held (a batch's own table): every pair is new, and each group's
            # size is its count among them
            all_g, all_v, all_k = groups, values, keys
            first, _, sizes = key_groups(groups)
            over = groups[first[sizes > EXACT_UNIQUE_LIMIT]]
        else:
            fresh = np.flatnonzero(~isin_keys(keys, self.pair_keys[name]))
            if not len(fresh):
                return
            all_g = np.concatenate([old_g, groups[fresh]])
            all_v = np.concatenate([old_v, values[fresh]])
            all_k = np.concatenate([self.pair_keys[name], keys[fresh]])
            # only groups that gained values can have grown past the exact limit
            gained = groups[fresh]
            grown = gained[key_groups(gained)[0]]
            at = index_keys(all_g, grown)
            sizes = np.bincount(at[at >= 0], minlength=len(grown))
            over = grown[sizes > EXACT_UNIQUE_LIMIT]
        if len(over):
            moving = isin_keys(all_g, over)
            for gk in over.tolist():
                counter = HllCounter()
                counter.update(all_v[moving & (all_g == gk)].tolist())
                sketches[int(gk)] = counter
            all_g, all_v, all_k = all_g[~moving], all_v[~moving], all_k[~moving]
        self.pairs[name] = (all_g, all_v)
        self.pair_keys[name] = all_k

    def select(self, mask: np.ndarray) -> "RuleTable":
        out = self.empty_like()
        for attr in ("keys", "window", "client", "server", "domain", "samples", "count", "first", "last", "values"):
            setattr(out, attr, getattr(self, attr)[mask])
        kept = set(out.keys.tolist())
        for name in self.uniques:
            g, v = self.pairs[name]
            inside = isin_keys(g, out.keys)
            out.pairs[name] = (g[inside], v[inside])
            out.pair_keys[name] = self.pair_keys[name][inside]
            out.sketches[name] = {k: s for k, s in self.sketches[name].items() if k in kept}
        return out

    # ------------------------------------------------------------- results

    def unique_counts(self, name: str) -> np.ndarray:
        """Distinct values per group: exact pairs, or the group's sketch once it has one."""
        groups, _ = self.pairs[name]
        counts = np.zeros(len(self.keys), dtype=np.int64)
        if len(groups):
            at = index_keys(groups, self.keys)
            counts = np.bincount(at[at >= 0], minlength=len(self.keys))
        sketches = self.sketches[name]
        if sketches:
            index = {k: i for i, k in enumerate(self.keys.tolist())}
            for k, sketch in sketches.items():
                if k in index:
                    counts[index[k]] = sketch.count()
        return counts

    def results(self, aggregations) -> dict[str, np.ndarray]:
        """Every aggregate's value for every group."""
        out: dict[str, np.ndarray] = {}
        col = {name: j for j, (name, _) in enumerate(self.numeric)}
        for a in aggregations:
            if a.function == "count":
                out[a.name] = self.count.astype(np.float64)
            elif a.function == "nunique":
                out[a.name] = self.unique_counts(a.name).astype(np.float64)
            elif a.function == "mean":
                out[a.name] = np.where(self.count > 0, self.values[:, col[a.name]] / np.maximum(self.count, 1), 0.0)
            else:
                out[a.name] = self.values[:, col[a.name]]
        return out

    def texts(self, i: int) -> dict[str, Any]:
        return {"domain": self.domain[i].decode("ascii", "replace"),
                "samples": [s.decode("ascii", "replace") for s in self.samples[i] if s]}


def reduce_groups(function: str, values: np.ndarray, inverse: np.ndarray, order: np.ndarray,
                  starts: np.ndarray) -> np.ndarray:
    """One sum/mean, max or min aggregate per group of rows (inverse: each row's group;
    order and starts: group_runs()), as the table holds it (a mean as its sum). Sums add
    in row order; extremes reduce each group's run (ufunc.at is many times slower)."""
    if function in ("sum", "mean"):
        return np.bincount(inverse, weights=values, minlength=len(starts))
    reduce = np.maximum if function == "max" else np.minimum
    return reduce.reduceat(values[order], starts)


def gather_text(arena: bytes, offsets: np.ndarray, lengths: np.ndarray, width: int) -> np.ndarray:
    """Arena slices as a fixed-width bytes column (cut at `width`), in one pass in the core."""
    return _core.gather_spans(arena, np.ascontiguousarray(offsets, dtype=np.int64),
                              np.ascontiguousarray(lengths, dtype=np.int64), width)

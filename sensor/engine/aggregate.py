"""What a worker sends the writer: per-batch results folded into small tables.

`accumulate` turns a parsed batch and its tracking result into group counts
with numpy and the core's one-pass grouping of 64-bit keys; only the distinct groups
become Python values. An `Aggregate` merges with another, so a worker whose
queue to the writer is full keeps folding batches into the next one instead
of dropping them.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from sensor import _core, schema
from sensor.features.memo import NameMemo
from sensor.heap import gc_paused
from sensor.limits import DEFAULT_LIMITS, Limits
from sensor.parse.batch import Batch, address_text
from sensor.store.schema import MINUTE_COUNTERS, STATS_COUNTERS
from sensor.track import (ANSWERED, DUPLICATE, LEG_CLIENT, LEG_NAMES, MISMATCHED, UNSOLICITED, TrackResult,
                          address_words, group_runs, hash_columns, key_groups)

OTHER_RESOLVER = "other"
GROUP_SHIFT = 40
"""Packed (group, value) keys: the group above bit 40, a value (rcode, qtype, client hash) below."""
CLIENT_HASH_MASK = (1 << GROUP_SHIFT) - 1
OTHER_KEY = 0x6F74686572
"""Hash input of the per-minute 'other' row of the domain breakdown (and of any table compacted)."""
OTHER_CLIENT = bytes(16)
"""Label of a compacted clients table's 'other' row (its key marks it; this is never shown)."""
STATS_COUNTER_NAMES = tuple(name for name, _ in STATS_COUNTERS)
NXDOMAIN_COLUMNS = ("qr", "rcode", "qdcount", "name_hash", "qtype", "ts")
"""The message fields _core.nxdomain_records reads, in its order."""


def new_stats_row() -> dict[str, Any]:
    row: dict[str, Any] = {name: 0 for name in STATS_COUNTER_NAMES}
    row.update(rtt_ms_sum=0.0, clients=set(), rcodes=Counter(), qtypes=Counter())
    return row


CLIENT_COLUMNS = tuple(name for name, _ in MINUTE_COUNTERS)


class KeyIndexed:
    """A table whose rows are found through a compiled index of its `keys`, kept across
    batches; the index is not pickled (a shipment carries the keys) and is rebuilt from
    the keys when next needed, as after rows are dropped (`_forget_index`)."""

    keys: np.ndarray
    _index: _core.KeyIndex | None = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_index", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._index = None

    def _key_index(self) -> _core.KeyIndex:
        if self._index is None:
            self._index = _core.KeyIndex(self.keys)
        return self._index

    def _forget_index(self) -> None:
        self._index = None


class KeyedCounts(KeyIndexed):
    """Per (minute, label) counters as numpy columns: a batch folds into the held rows in
    place (new labels appended), and a label (a client address, a network, a registered
    domain) becomes text only when the writer stores the rows."""

    def __init__(self, label_dtype: Any = "V16") -> None:
        self.keys = np.empty(0, dtype=np.uint64)
        self.minute = np.empty(0, dtype=np.int64)
        self.label = np.empty(0, dtype=label_dtype)
        self.counts = np.empty((0, len(CLIENT_COLUMNS)), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.keys)

    def _rows(self, keys: np.ndarray, minute: np.ndarray,
              labels: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """The row of each key. A key not held takes a new row, with zero counts and the
        minute and label (`labels` of those positions) of its first appearance."""
        index = self._key_index()
        rows, first = index.add(np.ascontiguousarray(keys, dtype=np.uint64))
        self.keys = index.keys
        if len(first):
            self.minute = np.concatenate([self.minute, minute[first]])
            self.label = np.concatenate([self.label, labels(first).astype(self.label.dtype, copy=False)])
            self.counts = np.concatenate([self.counts, np.zeros((len(first), self.counts.shape[1]), dtype=np.int64)])
        return rows

    def add(self, keys: np.ndarray, minute: np.ndarray, label: np.ndarray | Callable[[np.ndarray], np.ndarray],
            counts: np.ndarray) -> None:
        """Fold rows in (keys may repeat): stored groups add up in place, new ones append.
        `label` is each row's label, or makes those of the positions given (new keys' first
        rows), so that a label held already is not made again."""
        rows = self._rows(keys, minute, label if callable(label) else lambda first: label[first])
        _core.add_rows(self.counts, rows, np.ascontiguousarray(counts, dtype=np.int64))

    def add_messages(self, keys: np.ndarray, minute: np.ndarray, labels: Callable[[np.ndarray], np.ndarray],
                     qr: np.ndarray, rcode: np.ndarray, size: np.ndarray) -> None:
        """Count messages into their rows (one key per message), in one pass: a new row
        takes the minute and the label (`labels` of the positions of new keys' first
        messages) of its first message."""
        rows = self._rows(keys, minute, labels)
        _core.count_messages(self.counts, rows, qr, rcode, size)

    def merge(self, other: "KeyedCounts") -> None:
        if len(other):
            self.add(other.keys, other.minute, other.label, other.counts)

    def compact(self, limit_per_minute: int, other_label: Any) -> None:
        """Per minute, the busiest `limit_per_minute` labels keep their rows and the rest are
        summed into one 'other' row, as rows() writes them: a table that keeps taking merges
        without being written (a worker whose writer lags, a writer whose store fails) stays
        within that bound for each minute it holds."""
        if len(self.keys) <= limit_per_minute:
            return
        own, rest, starts = self._split(limit_per_minute)
        if not len(rest):
            return
        sums = _core.sum_row_runs(self.counts, rest, starts)
        minutes = self.minute[rest[starts]]
        labels = np.empty(len(starts), dtype=self.label.dtype)
        labels[:] = [other_label] * len(starts)
        own = np.sort(own)
        self.keys, self.minute, self.label, self.counts = (
            self.keys[own], self.minute[own], self.label[own], self.counts[own])
        self._forget_index()
        self.add(_other_keys(minutes), minutes, labels, sums)

    def _split(self, limit_per_minute: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows that keep their own label (the minute's busiest by queries) and the rest, by
        minute, with the start of each minute's run in the rest. A minute's 'other' row
        (compacted, or the domains' own) is always among the rest."""
        other = self.keys == _other_keys(self.minute)
        order = np.lexsort((-self.counts[:, 0], other, self.minute))   # stable: ties keep their order
        minute = self.minute[order]
        rank = np.arange(len(order)) - np.searchsorted(minute, minute, side="left")
        mine = (rank < limit_per_minute) & ~other[order]
        rest_minute = minute[~mine]
        starts = np.flatnonzero(np.r_[True, rest_minute[1:] != rest_minute[:-1]])[:len(rest_minute)]
        return order[mine], order[~mine], starts

    def rows(self, limit_per_minute: int, text: Any = None) -> list[tuple]:
        """(minute, label text, *counts); per minute the busiest `limit_per_minute` labels by
        queries keep their own row, the rest are summed into the label 'other'."""
        if not len(self.keys):
            return []
        own, rest, starts = self._split(limit_per_minute)
        if text is None:
            labels = _address_texts(self.label[own])
        else:
            labels = [text(label) for label in self.label[own].tolist()]
        out = list(zip(self.minute[own].tolist(), labels, *self.counts[own].T.tolist()))
        if len(rest):
            sums = _core.sum_row_runs(self.counts, rest, starts)
            out += zip(self.minute[rest[starts]].tolist(), [OTHER_RESOLVER] * len(starts), *sums.T.tolist())
        return out


def _other_keys(minute: np.ndarray) -> np.ndarray:
    """The key of each minute's 'other' row."""
    return hash_columns(np.asarray(minute).astype(np.uint64), np.full(len(minute), OTHER_KEY, dtype=np.uint64))


def _address_texts(labels: np.ndarray) -> list[str]:
    """16-byte address keys as text."""
    return _core.address_texts(np.ascontiguousarray(labels).view(np.uint8).reshape(-1, 16))


class SeenCounts(KeyIndexed):
    """Rows keyed by a 64-bit hash of their identity (passive DNS: name, type, data) with
    first seen, last seen and count as numpy columns; a batch's distinct keys fold into the
    held rows in place (new keys appended while there is room).
    `group` is a hash of each row's registered domain (that of the question it answered):
    past the limit, rows are shared out fairly among registered domains instead of first
    come, so that a flood of new names under one domain (a wildcard answering random
    subdomains) cannot take every place from the records of all the others.
    `text` maps each key to its identity; the Accumulator fills it when it hands over."""

    COLUMNS = ("keys", "first", "last", "count", "group")

    def __init__(self) -> None:
        self.keys = np.empty(0, dtype=np.uint64)
        self.first = np.empty(0, dtype=np.float64)
        self.last = np.empty(0, dtype=np.float64)
        self.count = np.empty(0, dtype=np.int64)
        self.group = np.empty(0, dtype=np.uint64)
        self.text: dict[int, tuple] = {}

    def __len__(self) -> int:
        return len(self.keys)

    def __setstate__(self, state: dict) -> None:
        # a table pickled before rows had a group (kept on disk across an upgrade)
        super().__setstate__(state)
        if "group" not in state:
            self.group = np.zeros(len(self.keys), dtype=np.uint64)

    def fold(self, keys: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Count each row (one sighting, at ts) whose key is held into its stored row, in
        place and in one compiled pass; returns the positions of the rows whose key is not
        held, for add()."""
        return self._key_index().fold_times(np.ascontiguousarray(keys, dtype=np.uint64),
                                            np.ascontiguousarray(ts, dtype=np.float64),
                                            self.first, self.last, self.count)

    def add(self, keys: np.ndarray, first: np.ndarray, last: np.ndarray, count: np.ndarray,
            limit: int, group: np.ndarray | None = None) -> tuple[int, np.ndarray]:
        """Fold rows with distinct keys in: stored rows are updated in place, new ones
        appended while there is room, and past it shared out among groups (see
        fair_share()), which may evict held rows of the largest groups. Returns the count
        of messages dropped (refused or evicted) and the indexes of the rows appended."""
        if group is None:
            group = np.zeros(len(keys), dtype=np.uint64)
        pos = self._key_index().find(np.ascontiguousarray(keys, dtype=np.uint64))
        known = pos >= 0
        if known.any():
            at = pos[known]
            self.first[at] = np.minimum(self.first[at], first[known])
            self.last[at] = np.maximum(self.last[at], last[known])
            self.count[at] += count[known].astype(np.int64)
        new = np.flatnonzero(~known)
        dropped = 0
        if len(new) > max(limit - len(self.keys), 0):
            keep = fair_share(np.concatenate([self.group, group[new]]), limit)
            held, taken = keep[:len(self.keys)], keep[len(self.keys):]
            if not held.all():
                dropped += int(self.count[~held].sum())
                for k in self.keys[~held].tolist():        # evicted: their text goes too
                    self.text.pop(k, None)
                for name in self.COLUMNS:
                    setattr(self, name, getattr(self, name)[held])
                self._forget_index()
            dropped += int(count[new[~taken]].sum())
            new = new[taken]
        if len(new):
            index = self._key_index()
            _, appended = index.add(np.ascontiguousarray(keys[new], dtype=np.uint64))
            if len(appended) != len(new):
                raise ValueError("keys repeat: a row each is needed")
            self.keys = index.keys
            for name, values in zip(self.COLUMNS[1:], (first, last, count, group)):
                held_values = getattr(self, name)
                setattr(self, name, np.concatenate([held_values, values[new].astype(held_values.dtype, copy=False)]))
        return dropped, new

    def merge(self, other: "SeenCounts", limit: int) -> int:
        """Fold another table in; the text of a row dropped at the limit is not kept (a
        worker whose writer lags merges every shipment into one held table, and would
        otherwise hold the text of every row it dropped)."""
        dropped, appended = self.add(other.keys, other.first, other.last, other.count, limit, other.group)
        if other.text:
            for key in other.keys[appended].tolist():
                self.text[key] = other.text[key]
        return dropped

    def rows(self) -> list[tuple]:
        return [(*self.text[k], f, l, c) for k, f, l, c in zip(
            self.keys.tolist(), self.first.tolist(), self.last.tolist(), self.count.tolist())]


def fair_share(groups: np.ndarray, limit: int) -> np.ndarray:
    """Which of these rows (held ones first, then new ones, each group in that order) to
    keep when more than `limit` compete: every group keeps up to a common cap, the largest
    that fits (the places left go to the next row of the groups above it), so groups
    below the cap keep every row and the largest ones are cut to it. With one group it
    keeps the first `limit` rows, first come."""
    n = len(groups)
    if n <= limit:
        return np.ones(n, dtype=bool)
    _, inverse, sizes = _core.group_u64(np.ascontiguousarray(groups, dtype=np.uint64))   # linear, no sort
    ordered = np.sort(sizes)
    # kept with cap c: sum(min(size, c)); the largest c whose total fits `limit`
    below = np.concatenate([[0], np.cumsum(ordered)[:-1]])
    totals = below + ordered * (len(ordered) - np.arange(len(ordered)))   # cap = each size in turn
    fits = np.flatnonzero(totals <= limit)
    if len(fits):                  # groups up to fits[-1] fit whole; the others share the rest
        j = fits[-1]
        cap = ordered[j] + (limit - totals[j]) // (len(ordered) - j - 1)
    else:
        cap = limit // len(ordered)
    order, starts = group_runs(inverse, sizes)
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - starts[inverse[order]]
    keep = rank < cap
    spare = limit - int(keep.sum())
    if spare > 0:                  # the remainder of the division, to the first rows at the cap
        at_cap = np.flatnonzero(rank == cap)[:spare]
        keep[at_cap] = True
    return keep


@dataclass
class Aggregate:
    stats: dict[tuple[int, str, str], dict[str, Any]] = field(default_factory=dict)
    pdns: SeenCounts = field(default_factory=SeenCounts)
    nxdomain: SeenCounts = field(default_factory=SeenCounts)
    clients: KeyedCounts = field(default_factory=KeyedCounts)
    networks: KeyedCounts = field(default_factory=lambda: KeyedCounts(object))   # client leg, by client network
    domains: KeyedCounts = field(default_factory=lambda: KeyedCounts(object))    # client leg, by registered domain
    anomalies: Counter = field(default_factory=Counter)            # (minute, name) -> count
    malformed: dict[tuple[int, str, str], dict[str, Any]] = field(default_factory=dict)
    sensor: dict[int, dict[str, Any]] = field(default_factory=dict)  # minute -> counters
    rules: dict[str, Any] = field(default_factory=dict)             # rule name -> RuleTable
    workers: dict[str, dict[str, Any]] = field(default_factory=dict)
    dropped: Counter = field(default_factory=Counter)              # stage -> records lost
    messages: int = 0

    def merge(self, other: "Aggregate", limits: Limits = DEFAULT_LIMITS) -> None:
        for key, row in other.stats.items():
            mine = self.stats.get(key)
            if mine is None:
                self.stats[key] = row
            else:
                merge_stats_row(mine, row, limits)
        for mine, theirs in ((self.pdns, other.pdns), (self.nxdomain, other.nxdomain)):
            lost = mine.merge(theirs, limits.max_pdns_rows)
            if lost:
                self.dropped["pdns_overflow"] += lost
        self.clients.merge(other.clients)
        self.networks.merge(other.networks)
        self.domains.merge(other.domains)
        self.anomalies.update(other.anomalies)
        for key, m in other.malformed.items():
            mine = self.malformed.get(key)
            if mine is None:
                self.malformed[key] = m
            else:
                merge_malformed(mine, m)
        if other.rules:
            from sensor.detectors.rules_engine import merge_partials
            merge_partials(self.rules, other.rules, limits.max_rule_groups, self.dropped)
        for minute, s in other.sensor.items():
            merge_sensor_row(self.sensor.setdefault(minute, new_sensor_row()), s)
        self.workers.update(other.workers)
        self.dropped.update(other.dropped)
        self.messages += other.messages

    def minute_tables(self, limits: Limits = DEFAULT_LIMITS) -> tuple[tuple[KeyedCounts, int, Any], ...]:
        """The per-minute tables, each with its limit of labels a minute and the label of
        its 'other' row."""
        return ((self.clients, limits.max_clients_per_minute, OTHER_CLIENT),
                (self.networks, limits.max_networks_per_minute, OTHER_RESOLVER),
                (self.domains, limits.max_domains_per_minute, OTHER_RESOLVER))

    def compact(self, limits: Limits = DEFAULT_LIMITS) -> None:
        """Bound the per-minute tables for an aggregate held back from the store (see
        KeyedCounts.compact); the other tables are bounded as they merge."""
        for table, limit, other in self.minute_tables(limits):
            table.compact(limit, other)

    def is_empty(self) -> bool:
        return not (self.stats or len(self.pdns) or len(self.nxdomain) or len(self.clients) or len(self.networks)
                    or len(self.domains) or self.anomalies or self.malformed
                    or self.rules or self.sensor or self.workers or self.dropped)


def new_sensor_row() -> dict[str, Any]:
    return {"packets": 0, "kernel_received": 0, "kernel_dropped": 0, "drops": Counter()}


def merge_sensor_row(mine: dict[str, Any], other: dict[str, Any]) -> None:
    for k in ("packets", "kernel_received", "kernel_dropped"):
        mine[k] += other[k]
    mine["drops"].update(other["drops"])


def merge_stats_row(mine: dict[str, Any], other: dict[str, Any], limits: Limits) -> None:
    for name in STATS_COUNTER_NAMES:
        mine[name] += other[name]
    mine["rtt_ms_sum"] += other["rtt_ms_sum"]
    room = limits.max_clients_per_group - len(mine["clients"])
    if room >= len(other["clients"]):
        mine["clients"] |= other["clients"]
    elif room > 0:
        mine["clients"].update(list(other["clients"])[:room])
    mine["rcodes"].update(other["rcodes"])
    mine["qtypes"].update(other["qtypes"])


def merge_malformed(mine: dict[str, Any], other: dict[str, Any]) -> None:
    mine["count"] += other["count"]
    mine["first"] = min(mine["first"], other["first"])
    mine["last"] = max(mine["last"], other["last"])
    mine["anomalies"].update(other["anomalies"])
    mine["samples"] = (mine["samples"] + [s for s in other["samples"] if s not in mine["samples"]])[:5]


def _group_times(keys: np.ndarray, ts: np.ndarray):
    """One pass: (distinct keys, index of a member of each, count, first ts, last ts)."""
    keys = np.ascontiguousarray(keys, dtype=np.uint64)
    first, _, counts, tmin, tmax = _core.group_u64(keys, np.ascontiguousarray(ts, dtype=np.float64))
    return keys[first], first, counts, tmin, tmax


_TYPE_NAMES: dict[int, str] = {}


def _type_name(code: int) -> str:
    name = _TYPE_NAMES.get(code)
    if name is None:
        name = _TYPE_NAMES[code] = schema.type_name(code)
    return name


def _type_names(codes: np.ndarray) -> list[str]:
    """The mnemonic of each type code, looked up once per distinct code."""
    distinct, inverse = np.unique(codes, return_inverse=True)
    return np.array([_type_name(c) for c in distinct.tolist()], dtype=object)[inverse].tolist()


def _texts(arena: bytes, offsets: np.ndarray, lengths: np.ndarray) -> list[str]:
    return _core.span_texts(arena, np.ascontiguousarray(offsets, dtype=np.int64),
                            np.ascontiguousarray(lengths, dtype=np.int64))


class Accumulator:
    """Folds batches into an Aggregate; `take()` hands it over and starts a new one."""

    def __init__(self, limits: Limits = DEFAULT_LIMITS, malformed_mask: int = 0, window_s: int = 60,
                 rules: list | None = None, client_networks: tuple[str, ...] = ()):
        from sensor.features import NetworkSet

        self.limits = limits
        self.malformed_mask = malformed_mask
        self.window_s = window_s
        self._rule_pending: dict[str, list] = {}       # rule name -> batch tables not folded yet
        self.rules = rules or []
        self.networks = NetworkSet(client_networks)
        self.agg = Aggregate()
        # Identity text by key, built once from the batch a row first appears in; the
        # key indexes say which keys have text without a Python loop.
        self._pdns_text: dict[int, tuple[str, str, str]] = {}
        self._nx_text: dict[int, tuple[str, str]] = {}
        self._pdns_known = _core.KeyIndex()
        self._nx_known = _core.KeyIndex()
        # (stats row, client) pairs already in the rows' client sets: bounded by
        # limits.max_clients_per_group, then started over
        self._client_pairs = _core.KeyIndex()
        self._compact_above: list[int] = []     # per minute table, the size that compacts it

    @property
    def rules(self) -> list:
        return self._rules

    @rules.setter
    def rules(self, rules: list) -> None:
        if self._rule_pending:                         # batch tables of the rules before
            self._settle_rules()
        self._rules = list(rules)
        # Reloaded rules may bring other lists, patterns or models: what the memo says of a
        # name no longer holds.
        self.names = NameMemo(self.limits.name_memo_names)

    def _settle_rules(self) -> None:
        from sensor.detectors.rules_engine import settle
        settle(self.agg.rules, self._rule_pending, self.limits.max_rule_groups, self.agg.dropped)

    def take(self) -> Aggregate:
        self._settle_rules()
        agg, self.agg = self.agg, Aggregate()
        for table, cache in ((agg.pdns, self._pdns_text), (agg.nxdomain, self._nx_text)):
            table.text = {k: cache[k] for k in table.keys.tolist()}
            if len(cache) > self.limits.max_pdns_rows:       # bounded: rebuilt from later batches
                cache.clear()
        self._pdns_known = _core.KeyIndex()
        self._nx_known = _core.KeyIndex()
        self._client_pairs = _core.KeyIndex()
        self._compact_above = []
        return agg

    def _bound_minute_tables(self) -> None:
        """A flood from spoofed sources brings a new client (and, spread over the address
        space, a new network) with nearly every query, so between two takes a per-minute
        table would grow with the traffic (a second of it at 400 k queries/s: 400 k rows,
        60 MB with their index). Past twice its per-minute limit a table is compacted as
        the writer stores it (KeyedCounts.compact: each minute's busiest labels keep their
        rows, the rest are summed into 'other'), and is next checked at twice the size it
        kept, so a table of many quiet minutes is not sorted again at every batch."""
        tables = self.agg.minute_tables(self.limits)
        if not self._compact_above:
            self._compact_above = [2 * limit for _, limit, _ in tables]
        for i, (table, limit, other) in enumerate(tables):
            if len(table) > self._compact_above[i]:
                table.compact(limit, other)
                self._compact_above[i] = 2 * max(len(table), limit)

    def add(self, batch: Batch, track: TrackResult) -> None:
        msgs = batch.messages
        agg = self.agg
        agg.messages += len(msgs)
        if len(msgs):
            # the client network of each message, looked up once for the breakdown and the rules
            client_network = self.networks.index(track.client) if self.networks.networks else None
            self._stats(batch, track)
            self._clients(batch, track)
            self._breakdown(batch, track, client_network)
            self._bound_minute_tables()
            self._pdns(batch, track)
            self._anomalies(batch)
            if self.rules:
                from sensor import features
                from sensor.detectors.rules_engine import fold
                fold(self.rules, features.build(batch, track, self.networks, self.names, client_network),
                     agg.rules, self.limits.max_rule_groups, agg.dropped, self._rule_pending)
        if len(track.unanswered):
            self.add_unanswered(track.unanswered)
        if len(track.evicted):
            minutes, counts = np.unique((track.evicted // 60).astype(np.int64) * 60, return_counts=True)
            for m, c in zip(minutes.tolist(), counts.tolist()):
                agg.anomalies[(m, "pending_evicted")] += c

    def add_sensor(self, minute: int, packets: int = 0, kernel_received: int = 0,
                   kernel_dropped: int = 0, drops: dict[str, int] | None = None) -> None:
        row = self.agg.sensor.setdefault(minute, new_sensor_row())
        row["packets"] += packets
        row["kernel_received"] += kernel_received
        row["kernel_dropped"] += kernel_dropped
        if drops:
            row["drops"].update({k: v for k, v in drops.items() if v})

    def _stats_row(self, key: tuple[int, str, str]) -> dict[str, Any]:
        stats = self.agg.stats
        row = stats.get(key)
        if row is None:
            if len(stats) >= self.limits.max_stats_groups:
                key = (key[0], OTHER_RESOLVER, key[2])
                row = stats.get(key)
                if row is not None:
                    return row
            row = stats[key] = new_stats_row()
        return row

    @staticmethod
    def _group_keys(keys: np.ndarray, minute: np.ndarray, resolver: np.ndarray, leg: np.ndarray):
        """Rows keyed by (minute, resolver, leg): each row's group and the groups' text keys."""
        first, inverse, _ = key_groups(keys)
        group_keys = [(int(minute[i]), address_text(bytes(resolver[i])), LEG_NAMES[leg[i]])
                      for i in first.tolist()]
        return group_keys, inverse

    def _stats(self, batch: Batch, track: TrackResult) -> None:
        minute = batch.minute
        keys = _core.minute_keys(minute, address_words(track.resolver), track.leg)
        group_keys, inv = self._group_keys(keys, minute, track.resolver, track.leg)
        g = len(group_keys)
        qr, rcode, qtype = batch.column("qr"), batch.column("rcode"), batch.column("qtype")
        totals, by_rcode, by_qtype, by_state, rtt_ms, rare = _core.stats_counts(
            qr, rcode, qtype, batch.column("size"), inv, g, track.state, track.rtt)
        columns = {
            "queries": totals[:, 0], "responses": totals[:, 1],
            "noerror": by_rcode[:, 0], "nxdomain": by_rcode[:, 3],
            "servfail": by_rcode[:, 2], "refused": by_rcode[:, 5],
            "bytes_queries": totals[:, 2], "bytes_responses": totals[:, 3],
            "answered": by_state[:, ANSWERED], "unsolicited": by_state[:, UNSOLICITED],
            "mismatched": by_state[:, MISMATCHED], "duplicate": by_state[:, DUPLICATE],
            "rtt_count": by_state[:, ANSWERED],
        }
        columns = {name: values.tolist() for name, values in columns.items()}
        rtt_ms = rtt_ms.tolist()
        rows = [self._stats_row(k) for k in group_keys]
        for gi, row in enumerate(rows):
            for name, values in columns.items():
                row[name] += int(values[gi])
            row["rtt_ms_sum"] += rtt_ms[gi]
        self._add_clients(rows, keys, inv, track.client_hash)
        cells = [(by_rcode, schema.rcode_name, "rcodes"), (by_qtype, schema.type_name, "qtypes")]
        for table, name_of, column in cells:
            for gi, code in zip(*(x.tolist() for x in np.nonzero(table))):
                rows[gi][column][name_of(code)] += int(table[gi, code])
        if rare.any():            # extended rcodes and qtypes beyond the core's tables
            isq = qr[rare] == 0
            codes = np.where(isq, qtype[rare], rcode[rare]).tolist()
            for gi, q, code in zip(inv[rare].tolist(), isq.tolist(), codes):
                if q:
                    rows[gi]["qtypes"][schema.type_name(code)] += 1
                else:
                    rows[gi]["rcodes"][schema.rcode_name(code)] += 1

    def _add_clients(self, rows: list[dict[str, Any]], keys: np.ndarray, inv: np.ndarray,
                     client_hash: np.ndarray) -> None:
        """The messages' clients into the client sets of their stats rows (row inv[i] of
        `rows`), for the unique-client counts, while a set holds fewer than
        max_clients_per_group. Only the (row, client) pairs not met since the last take()
        reach the sets, and only for rows with room: under a flood from spoofed sources the
        sets are full within a few batches, and every batch after paired, sorted and listed
        its clients for nothing (two thirds of the stats' time in bench/memory.py's replay)."""
        limit = self.limits.max_clients_per_group
        room = np.array([len(row["clients"]) < limit for row in rows])
        if not room.any():
            return
        if not room.all():
            taken = room[inv]
            keys, inv, client_hash = keys[taken], inv[taken], client_hash[taken]
        if len(self._client_pairs) > limit:
            self._client_pairs = _core.KeyIndex()      # a filter only: the sets hold the truth
        _, new_pair = self._client_pairs.add(hash_columns(keys, client_hash))
        # (group, client) packed into one uint64, sorted: each group's clients in one run
        pairs = np.sort((inv[new_pair].astype(np.uint64) << np.uint64(GROUP_SHIFT))
                        | (client_hash[new_pair] & np.uint64(CLIENT_HASH_MASK)))
        pair_group = (pairs >> np.uint64(GROUP_SHIFT)).astype(np.int64)
        bounds = np.searchsorted(pair_group, np.arange(len(rows) + 1)).tolist()
        client_ids = (pairs & np.uint64(CLIENT_HASH_MASK)).tolist()
        for gi, row in enumerate(rows):
            if room[gi] and bounds[gi] < bounds[gi + 1]:
                row["clients"].update(client_ids[bounds[gi]:bounds[gi + 1]])

    @staticmethod
    def _keyed_counts(keys: np.ndarray, minute: np.ndarray, qr: np.ndarray, rcode: np.ndarray,
                      size: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(first row of each key, its minute, CLIENT_COLUMNS counts per key), one pass in the core."""
        first, counts = _core.minute_counts(np.ascontiguousarray(keys, dtype=np.uint64), qr, rcode, size)
        return first, minute[first], counts

    def _clients(self, batch: Batch, track: TrackResult) -> None:
        minute = batch.minute
        keys = _core.minute_keys(minute, address_words(track.client))
        self.agg.clients.add_messages(keys, minute, lambda first: track.client[first],
                                      batch.column("qr"), batch.column("rcode"), batch.column("size"))

    def _breakdown(self, batch: Batch, track: TrackResult, client_network: np.ndarray | None) -> None:
        """Client-leg counters per client network and per registered domain, for the scoped
        series (sensor.series): a network is the configured one the client is in ('other'
        outside them all; `client_network`, per message), or its /24 (IPv6: /48) when none
        is configured."""
        on_client_leg = track.leg == LEG_CLIENT
        if not on_client_leg.any():
            return
        everything = bool(on_client_leg.all())

        def column(name: str) -> np.ndarray:
            return batch.column(name) if everything else batch.column(name)[on_client_leg]

        minute = batch.minute if everything else batch.minute[on_client_leg]
        qr, rcode, size = column("qr"), column("rcode"), column("size")
        if client_network is not None:
            network = client_network if everything else client_network[on_client_leg]
            keys = hash_columns(minute, network + 1)
        else:
            words = address_words(track.client if everything else track.client[on_client_leg])
            v4 = (words[:, 0] == 0) & ((words[:, 1] & np.uint64(0xFFFFFFFF)) == np.uint64(0xFFFF0000))
            prefix = np.where(v4[:, None], words & np.array([0xFFFFFFFFFFFFFFFF, 0x00FFFFFFFFFFFFFF], dtype=np.uint64),
                              words & np.array([0x0000FFFFFFFFFFFF, 0], dtype=np.uint64))
            keys = _core.minute_keys(minute, prefix)

        def labels(first: np.ndarray) -> np.ndarray:
            if client_network is not None:
                text = [str(self.networks.networks[i]) if i >= 0 else OTHER_RESOLVER for i in network[first].tolist()]
            else:
                text = []
                for p0, p1, is4 in zip(prefix[first, 0].tolist(), prefix[first, 1].tolist(), v4[first].tolist()):
                    raw = int(p0).to_bytes(8, "little") + int(p1).to_bytes(8, "little")
                    text.append(f"{address_text(raw)}/{24 if is4 else 48}")
            return np.array(text, dtype=object)
        self.agg.networks.add_messages(keys, minute, labels, qr, rcode, size)
        reg_off, reg_len = batch.regdom_spans
        reg_hash = batch.regdom_hash
        if not everything:
            reg_off, reg_len, reg_hash = reg_off[on_client_leg], reg_len[on_client_leg], reg_hash[on_client_leg]
        keys = hash_columns(minute, reg_hash)
        first, first_minute, counts = self._keyed_counts(keys, minute, qr, rcode, size)
        # only the busiest domains of each minute get a row of their own (the writer keeps
        # max_domains_per_minute): text for those, the rest summed per minute under 'other'
        busiest = self._busiest(first_minute, counts, self.limits.max_domains_per_minute)
        own = np.zeros(len(first), dtype=bool)
        own[busiest] = True
        group_keys = hash_columns(first_minute.astype(np.uint64), np.full(len(first), OTHER_KEY, dtype=np.uint64))
        group_keys[busiest] = keys[first[busiest]]           # the rest share their minute's 'other' key

        def domain_labels(new: np.ndarray) -> np.ndarray:   # text only for domains not held yet
            labels = np.full(len(new), OTHER_RESOLVER, dtype=object)
            named = own[new]
            rows = first[new[named]]
            labels[named] = [bytes(batch.arena[o:o + n]).decode("ascii", "replace") or "."
                             for o, n in zip(reg_off[rows].tolist(), reg_len[rows].tolist())]
            return labels
        self.agg.domains.add(group_keys, first_minute, domain_labels, counts)

    @staticmethod
    def _busiest(minute: np.ndarray, counts: np.ndarray, per_minute: int) -> np.ndarray:
        """Indexes of the `per_minute` groups with the most messages in each minute."""
        if len(minute) <= per_minute:
            return np.arange(len(minute))
        order = np.lexsort((-(counts[:, 0] + counts[:, 1]), minute))
        sorted_minutes = minute[order]
        starts = np.searchsorted(sorted_minutes, sorted_minutes, side="left")
        return np.sort(order[np.arange(len(order)) - starts < per_minute])

    def add_unanswered(self, rows: np.ndarray) -> None:
        """Queries that timed out, counted in the minute and resolver they were sent to."""
        minute = (rows["ts"] // 60).astype(np.int64) * 60
        resolver, leg = rows["resolver"], rows["leg"]
        rw = address_words(resolver)
        keys = hash_columns(minute.astype(np.uint64), rw[:, 0], rw[:, 1], leg)
        group_keys, inv = self._group_keys(keys, minute, resolver, leg)
        counts = np.bincount(inv, minlength=len(group_keys)).tolist()
        for key, n in zip(group_keys, counts):
            self._stats_row(key)["unanswered"] += n

    def _pdns(self, batch: Batch, track: TrackResult) -> None:
        msgs, rrs = batch.messages, batch.rrs
        arena = batch.arena
        agg = self.agg
        # Spoofing attempts (right question, wrong id or port) are evidence, not facts:
        # they stay out of passive DNS. Unsolicited responses stay in (a one-way tap sees
        # only those).
        rows, keys, ts = _core.answer_records(np.ascontiguousarray(rrs), arena, batch.column("qr"),
                                              batch.column("rcode"), batch.column("ts"), track.state, MISMATCHED)
        if len(rows):
            def identities(idx: np.ndarray) -> list[tuple[str, str, str]]:   # keys not seen before
                new = rrs[rows[idx]]
                return list(zip(_texts(arena, new["name_off"], new["name_len"]), _type_names(new["type"]),
                                _texts(arena, new["rdata_off"], new["rdata_len"])))
            self._add_seen(agg.pdns, self._pdns_text, self._pdns_known, keys, ts, identities,
                           lambda idx: batch.regdom_hash[rrs["msg"][rows[idx]]])
        nx, nx_keys, nx_ts = _core.nxdomain_records(*(batch.column(name) for name in NXDOMAIN_COLUMNS),
                                                    track.state, MISMATCHED)
        if len(nx):
            def nx_identities(idx: np.ndarray) -> list[tuple[str, str]]:    # keys not seen before
                new = msgs[nx[idx]]
                return list(zip(_texts(arena, new["qname_off"], new["qname_len"]), _type_names(new["qtype"])))
            self._add_seen(agg.nxdomain, self._nx_text, self._nx_known, nx_keys, nx_ts,
                           nx_identities, lambda idx: batch.regdom_hash[nx[idx]])

    def _add_seen(self, table: SeenCounts, texts: dict, known: _core.KeyIndex, row_keys: np.ndarray,
                  ts: np.ndarray, identities, groups) -> None:
        """Fold one batch's rows into `table`; text is built only for keys never seen
        before (`known`, which takes them in), by `identities` over their first rows, and
        `groups` gives those rows' registered domains (hashed) for a fair share past the
        limit. Rows of keys the table holds (most, between two takes) are counted in place
        first; only the others are grouped."""
        rest = table.fold(row_keys, ts)
        if not len(rest):
            return
        keys, first_idx, counts, first, last = _group_times(row_keys[rest], ts[rest])
        first_idx = rest[first_idx]
        before = len(known)
        new = known.add(keys)[0] >= before
        if new.any():
            new_keys = keys[new]
            # keys met before the last take() still have their text (none before the first)
            missing = (np.fromiter((k not in texts for k in new_keys.tolist()), dtype=bool, count=len(new_keys))
                       if texts else np.ones(len(new_keys), dtype=bool))
            if missing.any():
                with gc_paused():
                    texts.update(zip(new_keys[missing].tolist(), identities(first_idx[new][missing])))
        lost, _ = table.add(keys, first, last, counts, self.limits.max_pdns_rows, groups(first_idx))
        if lost:
            self.agg.dropped["pdns_overflow"] += lost

    def _anomalies(self, batch: Batch) -> None:
        anomalous = batch.column("anomalies") != 0
        if not anomalous.any():
            return
        sel = batch.messages[anomalous]
        minute = (sel["ts"] // 60).astype(np.int64) * 60
        bits = (sel["anomalies"][:, None] >> np.arange(len(schema.ANOMALY_NAMES), dtype=np.uint64)) & np.uint64(1)
        for m in np.unique(minute).tolist():
            sums = bits[minute == m].sum(axis=0).tolist()
            for name, n in zip(schema.ANOMALY_NAMES, sums):
                if n:
                    self.agg.anomalies[(m, name)] += int(n)
        if not self.malformed_mask:
            return
        bad = (sel["anomalies"] & np.uint64(self.malformed_mask)) != 0
        if not bad.any():
            return
        idx = np.flatnonzero(anomalous)[bad]
        self._malformed(batch, idx)

    def _malformed(self, batch: Batch, idx: np.ndarray) -> None:
        msgs = batch.messages[idx]
        isq = msgs["qr"] == 0
        client = np.where(isq, msgs["src"], msgs["dst"])
        server = np.where(isq, msgs["dst"], msgs["src"])
        window = (msgs["ts"] // self.window_s).astype(np.int64) * self.window_s
        cw, sw = address_words(client), address_words(server)
        first_idx, inv, _ = key_groups(hash_columns(window.astype(np.uint64), cw[:, 0], cw[:, 1], sw[:, 0], sw[:, 1]))
        table = self.agg.malformed
        for gi, i in enumerate(first_idx.tolist()):
            members = np.flatnonzero(inv == gi)
            key = (int(window[i]), address_text(bytes(client[i])), address_text(bytes(server[i])))
            if key not in table and len(table) >= self.limits.max_anomaly_sources:
                self.agg.dropped["anomaly_sources"] += len(members)
                continue
            names = Counter()
            bits = msgs["anomalies"][members]
            for b, name in enumerate(schema.ANOMALY_NAMES):
                n = int(np.count_nonzero(bits & np.uint64(1 << b)))
                if n:
                    names[name] = n
            samples = []
            for k in members[:20].tolist():
                q = batch.qname(int(idx[k]))
                if q not in samples:
                    samples.append(q)
                if len(samples) == 3:
                    break
            ts = msgs["ts"][members]
            entry = {"count": len(members), "first": float(ts.min()), "last": float(ts.max()),
                     "anomalies": names, "samples": samples}
            if key in table:
                merge_malformed(table[key], entry)
            else:
                table[key] = entry

"""What a worker sends the writer: per-batch results folded into small tables.

`accumulate` turns a parsed batch and its tracking result into group counts
with numpy (np.unique / bincount on 64-bit keys); only the distinct groups
become Python values. An `Aggregate` merges with another, so a worker whose
queue to the writer is full keeps folding batches into the next one instead
of dropping them.
"""
from __future__ import annotations

import socket
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sensor import _core, schema
from sensor.limits import DEFAULT_LIMITS, Limits
from sensor.parse.batch import Batch
from sensor.track import (ANSWERED, DUPLICATE, LEG_NAMES, MISMATCHED, UNSOLICITED, TrackResult,
                          _hash, address_words)

_V4_MAPPED = b"\0" * 10 + b"\xff\xff"
OPT = 41
OTHER_RESOLVER = "other"
GROUP_SHIFT = 40
"""Packed (group, value) keys: the group above bit 40, a value (rcode, qtype, client hash) below."""
CLIENT_HASH_MASK = (1 << GROUP_SHIFT) - 1
STATS_COUNTER_NAMES = ("queries", "responses", "noerror", "nxdomain", "servfail", "refused",
                       "bytes_queries", "bytes_responses", "answered", "unanswered", "unsolicited",
                       "mismatched", "duplicate", "rtt_count")


def address_text(raw: bytes) -> str:
    if raw[:12] == _V4_MAPPED:
        return socket.inet_ntop(socket.AF_INET, raw[12:])
    return socket.inet_ntop(socket.AF_INET6, raw)


def new_stats_row() -> dict[str, Any]:
    row: dict[str, Any] = {name: 0 for name in STATS_COUNTER_NAMES}
    row.update(rtt_ms_sum=0.0, clients=set(), rcodes=Counter(), qtypes=Counter())
    return row


@dataclass
class Aggregate:
    stats: dict[tuple[int, str, str], dict[str, Any]] = field(default_factory=dict)
    # Keyed by a 64-bit hash of the row's identity; values [*identity, first, last, count].
    pdns: dict[int, list] = field(default_factory=dict)
    nxdomain: dict[int, list] = field(default_factory=dict)
    clients: dict[tuple[int, str], list] = field(default_factory=dict)   # (minute, client) -> counts
    anomalies: Counter = field(default_factory=Counter)            # (minute, name) -> count
    malformed: dict[tuple[int, str, str], dict[str, Any]] = field(default_factory=dict)
    sensor: dict[int, dict[str, Any]] = field(default_factory=dict)  # minute -> counters
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
        _merge_seen(self.pdns, other.pdns, limits.max_pdns_rows, self.dropped, "pdns_overflow")
        _merge_seen(self.nxdomain, other.nxdomain, limits.max_pdns_rows, self.dropped, "pdns_overflow")
        for key, counts in other.clients.items():
            mine = self.clients.get(key)
            if mine is None:
                self.clients[key] = list(counts)
            else:
                for i, n in enumerate(counts):
                    mine[i] += n
        self.anomalies.update(other.anomalies)
        for key, m in other.malformed.items():
            mine = self.malformed.get(key)
            if mine is None:
                self.malformed[key] = m
            else:
                merge_malformed(mine, m)
        for minute, s in other.sensor.items():
            merge_sensor_row(self.sensor.setdefault(minute, new_sensor_row()), s)
        self.workers.update(other.workers)
        self.dropped.update(other.dropped)
        self.messages += other.messages

    def is_empty(self) -> bool:
        return not (self.stats or self.pdns or self.nxdomain or self.clients or self.anomalies or self.malformed
                    or self.sensor or self.workers or self.dropped)


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


def _merge_seen(mine: dict, other: dict, limit: int, dropped: Counter, stage: str) -> None:
    for key, row in other.items():
        have = mine.get(key)
        if have is not None:
            if row[-3] < have[-3]:
                have[-3] = row[-3]
            if row[-2] > have[-2]:
                have[-2] = row[-2]
            have[-1] += row[-1]
        elif len(mine) < limit:
            mine[key] = list(row)
        else:
            dropped[stage] += row[-1]


def _groups(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index of one member per group, group of each row) for 64-bit keys."""
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return first, inverse.reshape(-1)


def _group_times(keys: np.ndarray, ts: np.ndarray):
    """One sort: (distinct keys, index of a member of each, count, first ts, last ts)."""
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    starts = np.flatnonzero(np.concatenate(([True], sk[1:] != sk[:-1]))) if len(sk) else np.empty(0, np.int64)
    st = ts[order]
    counts = np.diff(np.append(starts, len(sk)))
    return (sk[starts], order[starts], counts.tolist(),
            np.minimum.reduceat(st, starts).tolist(), np.maximum.reduceat(st, starts).tolist())


_TYPE_NAMES: dict[int, str] = {}


def _type_name(code: int) -> str:
    name = _TYPE_NAMES.get(code)
    if name is None:
        name = _TYPE_NAMES[code] = schema.type_name(code)
    return name


class Accumulator:
    """Folds batches into an Aggregate; `take()` hands it over and starts a new one."""

    def __init__(self, limits: Limits = DEFAULT_LIMITS, malformed_mask: int = 0, window_s: int = 60):
        self.limits = limits
        self.malformed_mask = malformed_mask
        self.window_s = window_s
        self.agg = Aggregate()
        self._pdns_text: dict[int, tuple[str, str, str]] = {}
        self._nx_text: dict[int, tuple[str, str]] = {}

    def take(self) -> Aggregate:
        agg, self.agg = self.agg, Aggregate()
        return agg

    def add(self, batch: Batch, track: TrackResult) -> None:
        msgs = batch.messages
        agg = self.agg
        agg.messages += len(msgs)
        if len(msgs):
            self._stats(msgs, track)
            self._clients(msgs, track)
            self._pdns(batch, track)
            self._anomalies(batch)
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

    def _group_keys(self, ts: np.ndarray, resolver: np.ndarray, leg: np.ndarray):
        minute = (ts // 60).astype(np.int64) * 60
        rw = address_words(resolver)
        keys = _hash(minute.astype(np.uint64), rw[:, 0], rw[:, 1], leg)
        first, inverse = _groups(keys)
        group_keys = [(int(minute[i]), address_text(bytes(resolver[i])), LEG_NAMES[leg[i]])
                      for i in first.tolist()]
        return group_keys, inverse

    def _stats(self, msgs: np.ndarray, track: TrackResult) -> None:
        group_keys, inv = self._group_keys(msgs["ts"], track.resolver, track.leg)
        g = len(group_keys)
        isq = msgs["qr"] == 0
        isr = ~isq
        rcode = msgs["rcode"]
        size = msgs["size"].astype(np.float64)
        state = track.state

        def count(mask: np.ndarray, weights: np.ndarray | None = None) -> list:
            w = mask.astype(np.float64) if weights is None else np.where(mask, weights, 0.0)
            return np.bincount(inv, weights=w, minlength=g).tolist()

        columns = {
            "queries": count(isq), "responses": count(isr),
            "noerror": count(isr & (rcode == 0)), "nxdomain": count(isr & (rcode == 3)),
            "servfail": count(isr & (rcode == 2)), "refused": count(isr & (rcode == 5)),
            "bytes_queries": count(isq, size), "bytes_responses": count(isr, size),
            "answered": count(state == ANSWERED), "unsolicited": count(state == UNSOLICITED),
            "mismatched": count(state == MISMATCHED), "duplicate": count(state == DUPLICATE),
            "rtt_count": count(state == ANSWERED),
        }
        rtt_ms = count(state == ANSWERED, np.nan_to_num(track.rtt) * 1000.0)
        # (group, value) pairs packed into one uint64 so np.unique sorts plain integers.
        inv64 = inv.astype(np.uint64) << np.uint64(GROUP_SHIFT)
        cw = address_words(track.client)
        pairs = np.unique(inv64 | (_hash(cw[:, 0], cw[:, 1]) & np.uint64(CLIENT_HASH_MASK)))
        pair_group = (pairs >> np.uint64(GROUP_SHIFT)).astype(np.int64)
        bounds = np.searchsorted(pair_group, np.arange(g + 1))
        client_ids = (pairs & np.uint64(CLIENT_HASH_MASK)).tolist()
        rq, rn = np.unique(inv64[isr] | rcode[isr].astype(np.uint64), return_counts=True)
        qq, qn = np.unique(inv64[isq] | msgs["qtype"][isq].astype(np.uint64), return_counts=True)
        rows = [self._stats_row(k) for k in group_keys]
        for gi, row in enumerate(rows):
            for name, values in columns.items():
                row[name] += int(values[gi])
            row["rtt_ms_sum"] += rtt_ms[gi]
            clients = row["clients"]
            if len(clients) < self.limits.max_clients_per_group:
                clients.update(client_ids[bounds[gi]:bounds[gi + 1]])
        for packed, n in zip(rq.tolist(), rn.tolist()):
            rows[packed >> GROUP_SHIFT]["rcodes"][schema.rcode_name(packed & 0xFFFF)] += n
        for packed, n in zip(qq.tolist(), qn.tolist()):
            rows[packed >> GROUP_SHIFT]["qtypes"][schema.type_name(packed & 0xFFFF)] += n

    def _clients(self, msgs: np.ndarray, track: TrackResult) -> None:
        minute = (msgs["ts"] // 60).astype(np.int64) * 60
        cw = address_words(track.client)
        first, inv = _groups(_hash(minute.astype(np.uint64), cw[:, 0], cw[:, 1]))
        g = len(first)
        isq = msgs["qr"] == 0
        isr = ~isq
        rcode, size = msgs["rcode"], msgs["size"].astype(np.float64)
        cols = [np.bincount(inv, weights=w, minlength=g).tolist() for w in (
            isq.astype(np.float64), isr.astype(np.float64), (isr & (rcode == 3)).astype(np.float64),
            (isr & (rcode == 2)).astype(np.float64), np.where(isq, size, 0.0), np.where(isr, size, 0.0))]
        table = self.agg.clients
        limit = self.limits.max_clients_per_minute
        per_minute = Counter(m for m, _ in table)
        for gi, i in enumerate(first.tolist()):
            m = int(minute[i])
            key = (m, address_text(bytes(track.client[i])))
            row = table.get(key)
            if row is None:
                if per_minute[m] >= limit:
                    key = (m, OTHER_RESOLVER)
                    row = table.get(key)
                if row is None:
                    row = table[key] = [0, 0, 0, 0, 0, 0]
                    per_minute[m] += 1
            for k in range(6):
                row[k] += int(cols[k][gi])

    def add_unanswered(self, rows: np.ndarray) -> None:
        """Queries that timed out, counted in the minute and resolver they were sent to."""
        group_keys, inv = self._group_keys(rows["ts"], rows["resolver"], rows["leg"])
        counts = np.bincount(inv, minlength=len(group_keys)).tolist()
        for key, n in zip(group_keys, counts):
            self._stats_row(key)["unanswered"] += n

    def _pdns(self, batch: Batch, track: TrackResult) -> None:
        msgs, rrs = batch.messages, batch.rrs
        owner = rrs["msg"]
        # Spoofing attempts (right question, wrong id or port) are evidence, not facts:
        # they stay out of passive DNS. Unsolicited responses stay in (a one-way tap sees
        # only those).
        ok = ((rrs["section"] == 1) & (rrs["type"] != OPT) & (msgs["qr"][owner] == 1)
              & (msgs["rcode"][owner] == 0) & (track.state[owner] != MISMATCHED))
        arena = batch.arena
        agg = self.agg
        if ok.any():
            name_off = np.ascontiguousarray(rrs["name_off"][ok])
            name_len = rrs["name_len"][ok].astype(np.uint32)
            rdata_off = np.ascontiguousarray(rrs["rdata_off"][ok])
            rdata_len = np.ascontiguousarray(rrs["rdata_len"][ok])
            rtype = rrs["type"][ok]
            ts = msgs["ts"][owner[ok]]
            nh = _core.span_hashes(arena, name_off, name_len)
            rh = _core.span_hashes(arena, rdata_off, rdata_len)
            self._add_seen(agg.pdns, self._pdns_text, _hash(nh, rh, rtype), ts,
                           lambda i: (arena[name_off[i]:name_off[i] + name_len[i]].decode("ascii"),
                                      _type_name(int(rtype[i])),
                                      arena[rdata_off[i]:rdata_off[i] + rdata_len[i]].decode("ascii")))
        nx = (msgs["qr"] == 1) & (msgs["rcode"] == 3) & (msgs["qdcount"] > 0) & (track.state != MISMATCHED)
        if nx.any():
            qoff, qlen, qtype = msgs["qname_off"][nx], msgs["qname_len"][nx], msgs["qtype"][nx]
            self._add_seen(agg.nxdomain, self._nx_text, _hash(msgs["name_hash"][nx], qtype), msgs["ts"][nx],
                           lambda i: (arena[qoff[i]:qoff[i] + qlen[i]].decode("ascii"), _type_name(int(qtype[i]))))

    def _add_seen(self, table: dict, texts: dict, row_keys: np.ndarray, ts: np.ndarray, identity) -> None:
        """Fold one batch's rows into `table` by key; text is built once per distinct
        row and remembered (`texts`, bounded) for the batches that repeat it."""
        keys, first_idx, counts, first, last = _group_times(row_keys, ts)
        limit = self.limits.max_pdns_rows
        for gi, key in enumerate(keys.tolist()):
            row = table.get(key)
            if row is not None:
                if first[gi] < row[-3]:
                    row[-3] = first[gi]
                if last[gi] > row[-2]:
                    row[-2] = last[gi]
                row[-1] += counts[gi]
                continue
            if len(table) >= limit:
                self.agg.dropped["pdns_overflow"] += counts[gi]
                continue
            text = texts.get(key)
            if text is None:
                if len(texts) >= limit:
                    texts.clear()
                text = texts[key] = identity(int(first_idx[gi]))
            table[key] = [*text, first[gi], last[gi], counts[gi]]

    def _anomalies(self, batch: Batch) -> None:
        msgs = batch.messages
        anomalous = msgs["anomalies"] != 0
        if not anomalous.any():
            return
        sel = msgs[anomalous]
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
        first_idx, inv = _groups(_hash(window.astype(np.uint64), cw[:, 0], cw[:, 1], sw[:, 0], sw[:, 1]))
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

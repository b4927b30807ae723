"""Runs the rules of rules/: per batch in the workers, per window in the writer.

Workers filter each batch with a rule's `where`, group the rows by window and
the rule's keys (one pass over 64-bit keys) and fold the aggregates into the
rule's RuleTable, all as numpy columns. The writer merges every worker's
tables into the open windows, evaluates the threshold on the groups a flush
touched (vectorised too) and makes a verdict of each group over it: one per
entity and window, updated while it lasts. Groups per rule are bounded by
Limits.max_rule_groups; the rest are counted (drop stage rule_groups_overflow).
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from sensor import _core
from sensor.detectors.rule_table import DOMAIN_WIDTH, SAMPLE_WIDTH, SAMPLES, RuleTable, gather_text, reduce_groups
from sensor.parse.batch import address_text
from sensor.features import FeatureTable
from sensor.rules import Rule
from sensor.track import group_runs, hash_columns, isin_keys

_NO_ADDRESS = bytes(16)


def new_table(rule: Rule) -> RuleTable:
    return RuleTable(tuple((a.name, a.function) for a in rule.aggregations if a.function in ("sum", "mean", "min", "max")),
                     tuple(a.name for a in rule.aggregations if a.function == "nunique"))


def _group_keys(rule: Rule, cols: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Each row's window and group key (window and the rule's group_by columns)."""
    window = _core.message_windows(cols["ts"], rule.window_s)
    return window, hash_columns(window, *[cols[g] for g in rule.group_by])     # read in place, any int width


def batch_table(rule: Rule, table: FeatureTable, idx: np.ndarray, known: np.ndarray | None = None,
                grouped: tuple[np.ndarray, np.ndarray] | None = None) -> RuleTable:
    """One batch's rows that passed the rule's filter, as the rule's groups. Text (domain,
    samples) is gathered only for groups not among `known` keys: the existing row keeps its own.
    `grouped`: the rows' windows and group keys (_group_keys) where they are made already."""
    cols = table.columns.select(idx)        # features of the rows that passed only
    out = new_table(rule)
    ts = cols["ts"]
    window, row_keys = grouped if grouped is not None else _group_keys(rule, cols)
    first, inverse, counts = _core.group_u64(np.ascontiguousarray(row_keys))
    g = len(first)
    rows = idx[first]
    out.keys, out.window, out.count = row_keys[first], window[first], counts
    empty = np.zeros(g, dtype="V16")
    out.client = table.client_addr[rows] if "client" in rule.group_by else empty
    out.server = table.server_addr[rows] if "server" in rule.group_by else empty
    m = table.batch.messages
    arena = table.batch.arena
    new = ~isin_keys(out.keys, known) if known is not None and len(known) else np.ones(g, dtype=bool)
    rows_new = rows[new]
    out.domain = np.zeros(g, dtype=f"S{DOMAIN_WIDTH}")
    if "regdom" in rule.group_by:
        reg_off, reg_len = table.batch.regdom_spans
        out.domain[new] = gather_text(arena, reg_off[rows_new], reg_len[rows_new], DOMAIN_WIDTH)
    elif "qname" in rule.group_by:
        out.domain[new] = gather_text(arena, m["qname_off"][rows_new], m["qname_len"][rows_new], DOMAIN_WIDTH)
    # the first SAMPLES members of each new group, in batch order
    order, starts = group_runs(inverse, counts)
    out.samples = np.zeros((g, SAMPLES), dtype=f"S{SAMPLE_WIDTH}")
    for s in range(SAMPLES):
        has = (counts > s) & new
        member = idx[order[starts[has] + s]]
        out.samples[has, s] = gather_text(arena, m["qname_off"][member], m["qname_len"][member], SAMPLE_WIDTH)
    out.first = reduce_groups("min", ts, inverse, order, starts)
    out.last = reduce_groups("max", ts, inverse, order, starts)
    out.values = np.empty((g, len(out.numeric)))
    by_name = {a.name: a for a in rule.aggregations}
    for j, (name, function) in enumerate(out.numeric):
        v = np.broadcast_to(np.asarray(by_name[name].evaluate(cols), dtype=np.float64), (len(idx),))
        out.values[:, j] = reduce_groups(function, v, inverse, order, starts)
    for name in out.uniques:
        values = cols[by_name[name].argument].astype(np.uint64, copy=False)
        pair_keys = hash_columns(row_keys, values)
        distinct = _core.group_u64(pair_keys)[0]
        out._merge_pairs(name, row_keys[distinct], values[distinct], pair_keys[distinct])
    return out


PENDING_BATCH_TABLES = 16
"""A rule's batch tables held back and folded into its table together (fold with `pending`).
Folding reads the whole table, every group and pair key, to tell a batch's new ones from
those held, and copies it to append them: once a window's table had grown, folding each
batch on its own cost more than making the batch's table. The held tables are first
combined in one grouping of all their rows (RuleTable.combined), whose cost grows with
their rows more than with their number, so holding 16 rather than 4 takes adding them to
the rules' tables from 6.3 to 2.6 ms a million messages of bench/replay.py's capture. At
most this many batch tables of a rule wait, and only while they hold fewer than
PENDING_ROWS rows, which bounds their memory."""
PENDING_ROWS = 16384
"""Rows (messages that passed a rule's filter) past which a rule's waiting batch tables are
folded in at once. A batch table of that many rows costs more to fold than the table it
goes into, so holding it back saves nothing; and under a flood of unique names four of
them held for each rule took 200 MB more (bench/memory.py) and a quarter of the speed."""


def fold(rules: list[Rule], table: FeatureTable, partials: dict[str, RuleTable], max_groups: int,
         dropped: dict[str, int], pending: dict[str, list[RuleTable]] | None = None) -> None:
    """Fold one batch into `partials` (rule name -> RuleTable). With `pending` (rule name ->
    batch tables not folded yet), a rule's batch tables wait there and go in
    PENDING_BATCH_TABLES at a time, or at PENDING_ROWS rows; settle() folds in those
    still waiting."""
    for rule in rules:
        table.columns.sources.update(rule.sources)
        if rule.dga_model is not None:
            table.columns.dga_model = rule.dga_model
        mask = np.asarray(rule.where(table.columns), dtype=bool)
        # (most filters pass no message of most batches: asked first, that is cheaper)
        if not mask.any():
            continue
        idx = np.flatnonzero(mask) if mask.ndim else np.arange(len(table))
        mine = partials.get(rule.name)
        if mine is None:
            mine = partials[rule.name] = new_table(rule)
        grouped = None
        if len(mine) >= max_groups:
            idx, grouped = _rows_of_held_groups(rule, table, idx, mine.keys, dropped)
            if not len(idx):
                continue
        part = batch_table(rule, table, idx, mine.keys, grouped)
        if pending is None:
            _add(mine, part, max_groups, dropped)
            continue
        waiting = pending.setdefault(rule.name, [])
        waiting.append(part)
        if len(waiting) >= PENDING_BATCH_TABLES or sum(int(w.count.sum()) for w in waiting) >= PENDING_ROWS:
            _add(mine, RuleTable.combined(pending.pop(rule.name)), max_groups, dropped)


def _rows_of_held_groups(rule: Rule, table: FeatureTable, idx: np.ndarray, held: np.ndarray,
                         dropped: dict[str, int]) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """Of the rows that passed a rule's filter, those of groups its full table holds, with
    their windows and group keys (for batch_table): the others would be dropped as their
    groups went in (counted here as they would be there), and under a flood of new entities
    (spoofed sources) making their groups, texts and samples first was most of what the
    rule cost."""
    window, row_keys = _group_keys(rule, table.columns.select(idx))
    inside = isin_keys(row_keys, held)
    lost = len(idx) - int(np.count_nonzero(inside))
    if lost:
        dropped["rule_groups_overflow"] = dropped.get("rule_groups_overflow", 0) + lost
    return idx[inside], (window[inside], row_keys[inside])


def settle(partials: dict[str, RuleTable], pending: dict[str, list[RuleTable]], max_groups: int,
           dropped: dict[str, int]) -> None:
    """Fold the batch tables still waiting in `pending` into `partials`, and empty it."""
    for name, waiting in pending.items():
        _add(partials[name], RuleTable.combined(waiting), max_groups, dropped)
    pending.clear()


def _add(mine: RuleTable, part: RuleTable, max_groups: int, dropped: dict[str, int]) -> None:
    lost = mine.add(part, max_groups)
    if lost:
        dropped["rule_groups_overflow"] = dropped.get("rule_groups_overflow", 0) + lost


def merge_partials(mine: dict[str, RuleTable], other: dict[str, RuleTable], max_groups: int,
                   dropped: dict[str, int]) -> None:
    for name, part in other.items():
        have = mine.get(name)
        if have is None:
            mine[name] = part
            continue
        _add(have, part, max_groups, dropped)


class Verdicts(list):
    """Verdict rows, and how many more groups were over the threshold than `limit` allowed."""
    capped: int = 0


def verdicts(rule: Rule, groups: RuleTable, sensor: str, only: np.ndarray | None = None,
             limit: int | None = None) -> Verdicts:
    """A verdict, with its evidence, for every group over the rule's threshold (among
    `only`, a mask of the groups to look at), the busiest first, at most `limit`."""
    out = Verdicts()
    if not len(groups):
        return out
    values = groups.results(rule.aggregations)
    fires = np.broadcast_to(np.asarray(rule.threshold({**values, "window_s": rule.window_s}), dtype=bool),
                            (len(groups),))
    if only is not None:
        fires = fires & only
    chosen = np.flatnonzero(fires)
    if limit is not None and len(chosen) > limit:
        out.capped = len(chosen) - limit
        chosen = chosen[np.argsort(-groups.count[chosen], kind="stable")[:limit]]
    for i in chosen.tolist():
        texts = groups.texts(i)
        client = address_text(bytes(groups.client[i])) if "client" in rule.group_by else ""
        server = address_text(bytes(groups.server[i])) if "server" in rule.group_by else ""
        row = {name: _round(v[i]) for name, v in values.items()}
        fields = {**row, "kind": rule.kind, "client": client, "server": server, "domain": texts["domain"],
                  "window_s": rule.window_s, "count": int(groups.count[i])}
        out.append({
            "ts": float(groups.last[i]), "kind": rule.kind, "severity": rule.severity, "client": client,
            "server": server, "domain": texts["domain"], "detector": rule.name,
            "summary": rule.summary.format(**fields),
            "evidence": {"values": row, "threshold": rule.threshold_text, "filter": rule.where_text,
                         "group_by": list(rule.group_by), "window_s": rule.window_s,
                         "sample_qnames": texts["samples"], "rule_file": rule.path},
            "count": int(groups.count[i]), "first_ts": float(groups.first[i]), "last_ts": float(groups.last[i]),
            "window_start": int(groups.window[i]), "sensor": sensor,
        })
    return out


def _round(v: float) -> float | int:
    v = float(v)
    return int(v) if v.is_integer() else round(v, 3)

"""Query/response tracking, columnar: one hash pass per batch, no object per message.

A query and its response share a key: client address and port, server address
and port, message id, question name (hash) and type. Queries not answered
within a batch wait in the pending table (numpy arrays) for later batches;
past `query_timeout_s` they count as unanswered, beyond `max_pending_queries`
the oldest are evicted (anomaly `pending_evicted`).

Responses get a state: answered (the first response to an outstanding query),
duplicate (a further response to it), unsolicited (no outstanding query) or
mismatched (no query with this id and port, but one for the same client,
server and question: what a spoofing flood looks like; over UDP only, as a
response over TCP cannot be spoofed blind and one without its query is capture
loss, so it is unsolicited). Both legs are
tracked: client to resolver, and resolver to authoritative servers (the
upstream leg, where the querying client is one of the resolver's own
addresses).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from sensor import _core
from sensor.limits import DEFAULT_LIMITS, Limits
from sensor.schema import ANOMALY_BIT

# Response states (TrackResult.state); queries and untracked messages are NONE.
# ANSWERED and DUPLICATE are the states _core.match_events gives (1 and 2).
NONE, ANSWERED, DUPLICATE, UNSOLICITED, MISMATCHED = range(5)
STATE_NAMES = ("none", "answered", "duplicate", "unsolicited", "mismatched")
LEG_CLIENT, LEG_UPSTREAM = 0, 1
UDP = 17
LEG_NAMES = ("client", "upstream")

# Messages whose question could not be read are not tracked: their key is noise,
# and a broken query that gets no answer says nothing about loss.
UNTRACKABLE = sum(1 << ANOMALY_BIT[name] for name in (
    "header_too_short", "truncated", "bad_pointer", "label_too_long", "name_too_long", "pointer_limit"))

PENDING_DTYPE = np.dtype([("key", "<u8"), ("loose", "<u8"), ("ts", "<f8"),
                          ("resolver", "V16"), ("leg", "u1")], align=True)
"""Rows of whole 64-bit words (48 bytes), so that the table is copied, cut and joined as
rows of words (_pending_words): numpy moves structured rows field by field, several
times slower, and the table holds up to limits.max_pending_queries rows each batch."""
assert ([PENDING_DTYPE.fields[f][1] for f in PENDING_DTYPE.names] == [0, 8, 16, 24, 40]
        and PENDING_DTYPE.itemsize == 48 and sys.byteorder == "little"), "the layout _core.pending_rows writes"
UNANSWERED_DTYPE = np.dtype([("ts", "<f8"), ("resolver", "V16"), ("leg", "u1")])


def hash_columns(*columns: np.ndarray) -> np.ndarray:
    """One 64-bit key per row from several integer columns: the engine's group keys.
    Each column is mixed in with h = (h ^ x) * M1; h ^= h >> 31, the rows finished
    with (h ^ h >> 29) * M2, all in one call of the core that reads the columns in place."""
    return _core.hash_columns(columns)


def key_groups(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Equal 64-bit keys grouped in one hash pass, groups in order of first appearance:
    (first row of each group, group of each row, rows per group)."""
    return _core.group_u64(np.ascontiguousarray(keys, dtype=np.uint64))


def group_runs(inverse: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows grouped (key_groups' group of each row and rows per group) as runs: (the rows in
    group order, each group keeping its rows' order; where each group's run starts), for
    reductions over each run with ufunc.reduceat."""
    return _core.group_order(inverse, counts), np.concatenate([[0], np.cumsum(counts)[:-1]])


def isin_keys(values: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """np.isin for 64-bit keys, through a hash table instead of sorting both sides."""
    return _core.isin_u64(np.ascontiguousarray(values, dtype=np.uint64),
                          np.ascontiguousarray(keys, dtype=np.uint64))


def index_keys(values: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Row of each value among 64-bit `keys` (first occurrence), -1 when absent."""
    return _core.index_u64(np.ascontiguousarray(values, dtype=np.uint64),
                           np.ascontiguousarray(keys, dtype=np.uint64))


def address_words(values: np.ndarray) -> np.ndarray:
    """16-byte addresses (V16) as two uint64 words per row."""
    return np.ascontiguousarray(values).view("<u8").reshape(-1, 2)


def _pending_words(rows: np.ndarray) -> np.ndarray:
    """A contiguous pending table as a 2-D array of its rows' 64-bit words (a view)."""
    return rows.view(np.uint64).reshape(len(rows), PENDING_DTYPE.itemsize // 8)


def _pending_rows(words: np.ndarray) -> np.ndarray:
    return words.view(PENDING_DTYPE).reshape(-1)


def _raced_queries(resp_loose: np.ndarray, resp_ts: np.ndarray, query_loose: np.ndarray,
                   query_key: np.ndarray, query_ts: np.ndarray) -> np.ndarray:
    """For responses with the wrong id or port: the key of the query each raced, the latest
    one with its question (loose key) at or before it, else the earliest after it. A
    spoofer's flood races one query with many answers; answers whose own queries the
    capture lost each race another."""
    cand = np.flatnonzero(isin_keys(query_loose, resp_loose))
    loose = np.concatenate([query_loose[cand], resp_loose])
    ts = np.concatenate([query_ts[cand], resp_ts])
    is_resp = np.concatenate([np.zeros(len(cand), dtype=np.uint8), np.ones(len(resp_loose), dtype=np.uint8)])
    order = np.lexsort((is_resp, ts, loose))
    pos = np.arange(len(order))
    is_q = is_resp[order] == 0
    before = np.maximum.accumulate(np.where(is_q, pos, -1))
    after = np.minimum.accumulate(np.where(is_q, pos, len(order))[::-1])[::-1]
    sl = loose[order]
    rpos = np.flatnonzero(~is_q)
    b, a = before[rpos], np.minimum(after[rpos], len(order) - 1)
    use = np.where((b >= 0) & (sl[np.maximum(b, 0)] == sl[rpos]), b, a)
    keys = np.concatenate([query_key[cand], np.zeros(len(resp_loose), dtype=np.uint64)])[order]
    out = np.empty(len(resp_loose), dtype=np.uint64)
    out[order[rpos] - len(cand)] = keys[use]
    return out


@dataclass
class TrackResult:
    state: np.ndarray            # uint8 per message (NONE for queries)
    rtt: np.ndarray              # float64 seconds per message, NaN unless ANSWERED
    leg: np.ndarray              # uint8 per message
    resolver: np.ndarray         # V16 per message: the resolver the message is counted for
    client: np.ndarray           # V16 per message: the querying side
    client_hash: np.ndarray      # uint64 per message: hash_columns of the client's two address words
    server_hash: np.ndarray      # uint64 per message: the same of the answering side's
    tracked: np.ndarray          # bool per message: took part (not multicast, question readable)
    server_is_resolver: np.ndarray  # bool per message: the answering side is one of the resolver's addresses
    multi: np.ndarray            # bool per message: a response to a query answered more than once
    raced: np.ndarray            # uint64 per message: for a MISMATCHED response, the key of the
                                 # query it raced (the latest before it with its question); else 0
    unanswered: np.ndarray       # UNANSWERED_DTYPE: queries that timed out in this step
    evicted: np.ndarray          # float64 ts of queries evicted from a full pending table


class Tracker:
    def __init__(self, limits: Limits = DEFAULT_LIMITS, resolver_addresses: frozenset[bytes] = frozenset()):
        self.limits = limits
        self.pending = np.empty(0, dtype=PENDING_DTYPE)
        self._buffer: np.ndarray | None = None      # the words the pending table is a view of
        self._start = 0                             # ... from this row of them
        self._spare: np.ndarray | None = None       # the other buffer (_spare_words)
        self.set_resolvers(resolver_addresses)
        self.totals = {"tracked_queries": 0, "answered": 0, "duplicate": 0, "unsolicited": 0,
                       "mismatched": 0, "unanswered": 0, "pending_evicted": 0}

    def set_resolvers(self, resolver_addresses: frozenset[bytes]) -> None:
        """The resolver's own addresses (16-byte keys); may change on reload."""
        keys = sorted(resolver_addresses)
        self._resolvers = (np.frombuffer(b"".join(keys), dtype="<u8").reshape(-1, 2)
                           if keys else np.empty((0, 2), dtype=np.uint64))

    def process(self, msgs: np.ndarray, now: float | None = None, ts: np.ndarray | None = None) -> TrackResult:
        """Match one batch against itself and the pending table; `now` (data time,
        default the batch's latest timestamp) decides which queries timed out. `ts` is the
        messages' ts column where the caller has it already (Batch.column)."""
        n = len(msgs)
        msgs = np.ascontiguousarray(msgs)
        (key, loose, client_w, resolver_w, leg, tracked, server_is_resolver, is_response, client_hash,
         server_hash) = _core.track_columns(msgs, self._resolvers, UNTRACKABLE)
        client = client_w.view("V16").reshape(-1)
        resolver = resolver_w.view("V16").reshape(-1)
        if ts is None:
            ts = msgs["ts"]
        if now is None:
            now = float(ts.max()) if n else 0.0

        queries = tracked & (is_response == 0)
        p = self.pending
        # (every message tracked, as nearly always: its columns are taken whole, not gathered)
        every = bool(tracked.all())
        ti = np.arange(n) if every else np.flatnonzero(tracked)
        sel = slice(None) if every else ti
        # Only the pending queries whose key comes up in this batch can be answered or
        # superseded by it (a key is pending once at most). When the batch comes after the
        # pending table in time, those alone take part and the rest stay open as they are:
        # the table (up to max_pending_queries rows under a flood of unanswered or spoofed
        # traffic) is scanned and copied once, not hashed again with every batch.
        follows = not len(p) or not len(ti) or ts[ti[0]] >= p["ts"][-1]
        part = _core.positions_among(p["key"], key[sel]) if follows and len(p) and len(ti) else None
        matched = self._match(p, part, key, ts, is_response, sel)
        if matched is None:         # not in time order after all: every pending query takes part
            part = None
            matched = self._match(p, part, key, ts, is_response, sel)
        ev_state, ev_rtt, ev_multi, unmatched_ev, open_ev = matched
        np_ = len(p) if part is None else len(part)
        state = np.zeros(n, dtype=np.uint8)
        rtt = np.full(n, np.nan)
        multi = np.zeros(n, dtype=bool)
        state[sel], rtt[sel], multi[sel] = ev_state[np_:], ev_rtt[np_:], ev_multi[np_:]
        unmatched = ti[unmatched_ev - np_]          # responses: never a pending event
        raced = np.zeros(n, dtype=np.uint64)
        if len(unmatched):
            qi = np.flatnonzero(queries)
            query_loose = np.concatenate([p["loose"], loose[qi]])
            query_key = np.concatenate([p["key"], key[qi]])
            query_ts = np.concatenate([p["ts"], ts[qi]])
            found = _core.race_lookup(query_loose, query_key, query_ts, loose[unmatched], ts[unmatched])
            if found is None:           # not in time order: sorted by question and time
                asked = isin_keys(loose[unmatched], query_loose)
                found = asked, np.zeros(len(unmatched), dtype=np.uint64)
                if np.any(asked):
                    found[1][asked] = _raced_queries(loose[unmatched[asked]], ts[unmatched[asked]],
                                                     query_loose, query_key, query_ts)
            asked, raced_key = found
            # A blind spoofer races the answer over UDP; over TCP it cannot get in, and a
            # response whose query is missing is the capture's loss (a gap, a mid-stream start).
            mismatch = asked & (msgs["transport"][unmatched] == UDP)
            state[unmatched[mismatch]] = MISMATCHED
            state[unmatched[~mismatch]] = UNSOLICITED
            raced[unmatched[mismatch]] = raced_key[mismatch]

        # Queries still open (neither answered nor superseded by a newer one with their
        # key), in time order: the order they were taken in.
        from_pending = open_ev < np_
        batch_open = ti[open_ev[~from_pending] - np_]
        fresh = len(batch_open)

        def put_fresh(out: np.ndarray) -> None:         # the batch's open queries as pending rows
            _core.pending_rows(out, key, loose, np.ascontiguousarray(ts, dtype=np.float64), resolver_w, leg,
                               batch_open)

        words = _pending_words(p)
        if part is None:
            at = np.empty(len(open_ev), dtype=np.int64)
            at[from_pending] = open_ev[from_pending]
            at[~from_pending] = len(p) + np.arange(fresh)
            joined = self._spare_words(len(at))
            fresh_words = np.empty((fresh, PENDING_DTYPE.itemsize // 8), dtype=np.uint64)
            put_fresh(fresh_words)
            np.take(np.concatenate([words, fresh_words]), at, axis=0, out=joined)
            in_place = False
        else:
            # The pending queries that took part leave (each was answered or superseded, by a
            # batch that comes after it in time): the rows after each close up in place (a
            # part means pending rows, which lie in the buffer). The batch's open queries go
            # in after the table where the buffer has room; under a flood of unanswered
            # queries none leaves, and the table is not moved at all.
            if len(part):
                words = words[:_core.drop_rows(words, part)]
            end = self._start + len(words)
            in_place = end + fresh <= len(self._buffer)
            if in_place:
                put_fresh(self._buffer[end:end + fresh])
                joined = self._buffer[self._start:end + fresh]
            else:
                joined = self._spare_words(len(words) + fresh)
                joined[:len(words)] = words
                put_fresh(joined[len(words):])
        if not in_place:
            self._buffer, self._spare = self._spare, self._buffer    # the one read from is written next
            self._start = 0
        new_pending = _pending_rows(joined)

        # in time order, so the expired and the evicted are the oldest rows
        expired = int(np.searchsorted(new_pending["ts"], now - self.limits.query_timeout_s, side="left"))
        unanswered = self._unanswered(new_pending[:expired])
        new_pending = new_pending[expired:]
        evicted = np.empty(0)
        excess = len(new_pending) - self.limits.max_pending_queries
        if excess > 0:
            evicted = new_pending["ts"][:excess].copy()
            new_pending = new_pending[excess:]
        self._start += expired + len(evicted)
        self.pending = new_pending

        t = self.totals
        t["tracked_queries"] += int(np.count_nonzero(queries))
        for name, code in (("answered", ANSWERED), ("duplicate", DUPLICATE),
                           ("unsolicited", UNSOLICITED), ("mismatched", MISMATCHED)):
            t[name] += int(np.count_nonzero(state == code))
        t["unanswered"] += len(unanswered)
        t["pending_evicted"] += len(evicted)
        return TrackResult(state=state, rtt=rtt, leg=leg, resolver=resolver, client=client,
                           client_hash=client_hash, server_hash=server_hash, tracked=tracked,
                           server_is_resolver=server_is_resolver, multi=multi, raced=raced,
                           unanswered=unanswered, evicted=evicted)

    @staticmethod
    def _match(p: np.ndarray, part: np.ndarray | None, key: np.ndarray, ts: np.ndarray,
               is_response: np.ndarray, tracked: np.ndarray | slice) -> tuple | None:
        """_core.match_events over the pending queries (those in `part`, or all of them),
        then this batch's tracked messages (their indexes, or a slice of all) in capture
        order. With `part` given, the events must already be in (time, kind) order (else
        None); with all of them they are sorted when they are not, ties as captured."""
        p_key, p_ts = (p["key"], p["ts"]) if part is None else (p["key"][part], p["ts"][part])
        if len(p_key):
            ev_key = np.concatenate([p_key, key[tracked]])
            ev_ts = np.concatenate([p_ts, ts[tracked]])
            ev_resp = np.concatenate([np.zeros(len(p_key), dtype=np.uint8), is_response[tracked]])
        else:           # no pending query takes part: the batch's columns as they are
            ev_key, ev_ts, ev_resp = (np.ascontiguousarray(c[tracked]) for c in (key, ts, is_response))
        matched = _core.match_events(ev_key, ev_ts, ev_resp)
        if matched is None and part is None:
            matched = _core.match_events(ev_key, ev_ts, ev_resp, np.lexsort((ev_resp, ev_ts)))
        return matched

    def _spare_words(self, rows: int) -> np.ndarray:
        """`rows` rows of the buffer the pending table is not in: the table is rewritten
        every batch, and two buffers kept for it (grown when too small) spare the heap a
        new block of up to max_pending_queries rows each time, which fragments it."""
        have = -1 if self._spare is None else len(self._spare)
        if have < rows:
            # room for as many more: the open queries of later batches go in after the table
            # in place until it is full
            self._spare = np.empty((max(2 * rows, 2 * have), PENDING_DTYPE.itemsize // 8), dtype=np.uint64)
        return self._spare[:rows]

    def drain(self) -> np.ndarray:
        """End of input: every query still pending is unanswered."""
        out = self._unanswered(self.pending)
        self.totals["unanswered"] += len(out)
        self.pending = np.empty(0, dtype=PENDING_DTYPE)
        self._start = 0
        return out

    @staticmethod
    def _unanswered(rows: np.ndarray) -> np.ndarray:
        out = np.empty(len(rows), dtype=UNANSWERED_DTYPE)
        out["ts"], out["resolver"], out["leg"] = rows["ts"], rows["resolver"], rows["leg"]
        return out

"""The local SQLite store: one writer, WAL, registered migrations, batched writes.

Only the writer process opens it read-write (`Store`); analysts' commands open
it read-only (`open_readonly`). Every write goes through `Store.transaction()`
so a batch lands whole or not at all.
"""
from __future__ import annotations

import json
import operator
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain
from typing import Any

import sqlite_utils
from sqlite_utils.migrations import Migrations

from sensor.errors import SensorError
from sensor.store.schema import (ANOMALIES, BASELINES, BREAKDOWN, BY_NAME, CLIENTS, PDNS, PDNS_NXDOMAIN, STATS,
                                 TABLES, VERDICTS, WORKERS)

SQL_TYPES = {"INTEGER": int, "REAL": float, "TEXT": str, "BLOB": bytes}
RETENTION_CHUNK_ROWS = 5000
"""Rows deleted per transaction while enforcing retention, so the writer never holds
the database for long."""
BUSY_TIMEOUT_MS = 5000
"""Readers (analysts) wait this long for a checkpoint instead of failing."""
WRITER_CACHE_KIB = 65536
"""The writer's SQLite page cache (SQLite's default is 2 MiB): new passive-DNS rows land at
random places in three indexes, and with the default a million-row table makes each
insert read pages back from disk (about twice the time per row, measured)."""
PAGE_BYTES = 16384
"""Page size of a database the store creates (SQLite's default is 4096; an existing file
keeps its own). New passive-DNS rows land at random places in their indexes: with bigger
pages the b-trees are shallower and an insert touches fewer pages (about 15 % less time per
new row on a capture with 713 k distinct answer records, measured)."""

_IN_KEY_ORDER = operator.itemgetter(0)
"""Passive-DNS rows are upserted sorted by name: each one then lands beside the one before it
in the table's key index instead of at a random place of a b-tree larger than the page
cache. Measured with new rows only, sort included: into a 538 MB table, 10.7 us a row
instead of 23.8 with 460 k rows a flush, 25.5 instead of 35 with 50 k; below about 150 MB
the table fits the cache and it makes no difference (the sort is 0.5 us a row)."""

_MINUTE, _LABEL = operator.itemgetter(0), operator.itemgetter(1)


def _in_minute_key_order(rows: Sequence[tuple]) -> list[tuple]:
    """Per-minute counter rows (clients, breakdown) sorted by their key, (minute, label), for
    the same reason: a flush's rows, in order of first appearance, would otherwise land at
    random places of the minute's part of the key index. By label, then stably by minute:
    two sorts on one field each take 5 ms for 13 k rows, one on the pair 13 (tuple keys
    leave Python's fast string and integer comparisons). Six minutes of 13 k clients each,
    sort included: 21-37 ms a flush instead of 31-51 unsorted (measured in one run)."""
    return sorted(sorted(rows, key=_LABEL), key=_MINUTE)


ROWS_PER_STATEMENT = 200
"""Rows one upsert statement writes (a VALUES list of that many, at most 1 800 parameters).
Run once for each row, running the statement cost a third of writing passive DNS: 11 k new
rows, 36-40 ms one at a time, 25-28 ms 100 to 500 at a time (measured)."""


@dataclass(frozen=True)
class Upsert:
    """INSERT of whole rows into `table` that, on a key conflict, does `on_conflict`."""
    table: str
    width: int
    on_conflict: str

    def sql(self, rows: int = 1) -> str:
        """The statement for this many rows."""
        row = f"({', '.join('?' * self.width)})"
        return f"INSERT INTO {self.table} VALUES {', '.join([row] * rows)} {self.on_conflict}"

    def run(self, conn: sqlite3.Connection, rows: Sequence[Sequence[Any]]) -> None:
        """Write the rows, in their order, ROWS_PER_STATEMENT to a statement."""
        rows = list(rows)
        k = ROWS_PER_STATEMENT
        whole = len(rows) - len(rows) % k
        if whole:
            conn.executemany(self.sql(k), [tuple(chain.from_iterable(rows[i:i + k])) for i in range(0, whole, k)])
        if len(rows) > whole:
            conn.execute(self.sql(len(rows) - whole), tuple(chain.from_iterable(rows[whole:])))


def _seen_upsert(table: Any) -> Upsert:
    """A passive-DNS row that, on a key conflict, widens the stored row's first and last seen
    and adds to its count."""
    return Upsert(table.name, len(table.columns),
                  f"ON CONFLICT({', '.join(table.key)}) DO UPDATE SET "
                  "first_seen = min(first_seen, excluded.first_seen), "
                  "last_seen = max(last_seen, excluded.last_seen), count = count + excluded.count")


def _adding_upsert(table: Any) -> Upsert:
    """A whole row whose counters add to the stored row's on a key conflict."""
    counters = [c for c in table.column_names() if c not in table.key]
    return Upsert(table.name, len(table.columns),
                  f"ON CONFLICT({', '.join(table.key)}) DO UPDATE SET "
                  + ", ".join(f"{c} = {c} + excluded.{c}" for c in counters))


PDNS_UPSERT = _seen_upsert(PDNS)
NXDOMAIN_UPSERT = _seen_upsert(PDNS_NXDOMAIN)
CLIENTS_UPSERT = _adding_upsert(CLIENTS)
BREAKDOWN_UPSERT = _adding_upsert(BREAKDOWN)
ANOMALIES_UPSERT = _adding_upsert(ANOMALIES)

MIGRATIONS = Migrations("dnssensor")


def _create(db: sqlite_utils.Database, tables: Iterable[Any]) -> None:
    for table in tables:
        columns = {c.name: SQL_TYPES[c.type] for c in table.columns}
        if "id" in columns:
            db[table.name].create(columns, pk="id")
            db[table.name].create_index(list(table.key), unique=True)
        else:
            db[table.name].create(columns, pk=table.key if len(table.key) > 1 else table.key[0])
        for cols in table.indexes:
            db[table.name].create_index(list(cols))


@MIGRATIONS()
def m001_tables(db: sqlite_utils.Database) -> None:
    _create(db, [t for t in TABLES if t not in (BREAKDOWN, BASELINES)])


@MIGRATIONS()
def m002_series(db: sqlite_utils.Database) -> None:
    """Scoped per-minute counters and the series detectors' persisted baselines."""
    _create(db, [BREAKDOWN, BASELINES])


class StoreError(SensorError):
    pass


class Store:
    """The writer's handle on the database."""

    def __init__(self, path: str) -> None:
        self.path = path
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise StoreError(f"{path}: directory {parent} does not exist")
        try:
            self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self.conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self.conn.execute(f"PRAGMA page_size = {PAGE_BYTES}")      # before WAL, or it is ignored
            self.conn.execute("PRAGMA journal_mode = WAL")
            self.conn.execute("PRAGMA synchronous = NORMAL")
            self.conn.execute(f"PRAGMA cache_size = -{WRITER_CACHE_KIB}")
            self.db = sqlite_utils.Database(self.conn)
            MIGRATIONS.apply(self.db)
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{path}: {e}{_full_disk_hint(parent)}") from None

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT; rolled back (and re-raised) on any error."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            # SQLite may already have rolled back itself (a full disk does that), and
            # a second ROLLBACK would replace the real error with "no transaction".
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # Writers below run inside a transaction the caller opened.

    def add_pdns(self, conn: sqlite3.Connection, rows: Sequence[tuple]) -> None:
        """rows: (rrname, rrtype, rdata, first_seen, last_seen, count), counts added; written in
        name order (see _IN_KEY_ORDER)."""
        PDNS_UPSERT.run(conn, sorted(rows, key=_IN_KEY_ORDER))

    def add_nxdomain(self, conn: sqlite3.Connection, rows: Sequence[tuple]) -> None:
        """rows: (qname, qtype, first_seen, last_seen, count), counts added; written in name order."""
        NXDOMAIN_UPSERT.run(conn, sorted(rows, key=_IN_KEY_ORDER))

    def add_clients(self, conn: sqlite3.Connection, rows: Sequence[tuple]) -> None:
        """rows: (minute, client, queries, responses, nxdomain, servfail, bytes_q, bytes_r), added;
        written in key order (_in_minute_key_order)."""
        CLIENTS_UPSERT.run(conn, _in_minute_key_order(rows))

    def add_breakdown(self, conn: sqlite3.Connection, scope: str, rows: Sequence[tuple]) -> None:
        """rows: (minute, key, queries, responses, nxdomain, servfail, bytes_q, bytes_r), added."""
        BREAKDOWN_UPSERT.run(conn, [(r[0], scope, *r[1:]) for r in _in_minute_key_order(rows)])

    def put_baseline(self, conn: sqlite3.Connection, series: str, fitted_to: int, seasonality: str,
                     profile: str | None, model: bytes | None) -> None:
        conn.execute("INSERT OR REPLACE INTO baselines VALUES (?, ?, ?, ?, ?)",
                     (series, fitted_to, seasonality, profile, model))

    def add_anomalies(self, conn: sqlite3.Connection, rows: Sequence[tuple]) -> None:
        """rows: (minute, name, count), counts added."""
        ANOMALIES_UPSERT.run(conn, rows)

    def put_stats(self, conn: sqlite3.Connection, rows: Sequence[dict[str, Any]]) -> None:
        """Whole stats rows, replacing what is there (the writer merges before writing)."""
        names = STATS.column_names()
        sql = (f"INSERT OR REPLACE INTO stats ({', '.join(names)}) "
               f"VALUES ({', '.join('?' * len(names))})")
        conn.executemany(sql, [tuple(_sql_value(r.get(n)) for n in names) for r in rows])

    def get_stats(self, minute: int, resolver: str, leg: str) -> dict[str, Any] | None:
        cur = self.conn.execute("SELECT * FROM stats WHERE minute = ? AND resolver = ? AND leg = ?",
                                (minute, resolver, leg))
        row = cur.fetchone()
        if row is None:
            return None
        out = dict(zip([d[0] for d in cur.description], row))
        for name in ("rcodes", "qtypes", "drops"):
            out[name] = json.loads(out[name]) if out[name] else {}
        return out

    def put_verdicts(self, conn: sqlite3.Connection, verdicts: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Insert or update the row of each verdict's entity and window, in one statement
        run over them all; the verdicts whose rows are new, with their row id (the last
        values written when one row was written twice)."""
        if not verdicts:
            return []
        names = [c for c in VERDICTS.column_names() if c != "id"]
        updated = [n for n in names if n not in VERDICTS.key]
        # Row ids only grow, so the rows created here are those above the largest before.
        before = conn.execute("SELECT coalesce(max(id), 0) FROM verdicts").fetchone()[0]
        conn.executemany(
            f"INSERT INTO verdicts ({', '.join(names)}) VALUES ({', '.join('?' * len(names))}) "
            f"ON CONFLICT({', '.join(VERDICTS.key)}) DO UPDATE SET "
            + ", ".join(f"{n} = excluded.{n}" for n in updated),
            [[_sql_value(v.get(n)) for n in names] for v in verdicts])
        new_ids = {tuple(row[1:]): row[0] for row in conn.execute(
            f"SELECT id, {', '.join(VERDICTS.key)} FROM verdicts WHERE id > ?", (before,))}
        if not new_ids:
            return []
        latest = {verdict_key(v): v for v in verdicts}
        return [{**v, "id": new_ids[key]} for key, v in latest.items() if key in new_ids]

    def stored_verdicts(self, keys: Iterable[tuple]) -> set[tuple]:
        """Which of these verdict keys (VERDICTS.key values, as verdict_key() gives
        them) have a row already; a read, so it works on a full disk too."""
        match = " AND ".join(f"{k} IS ?" for k in VERDICTS.key)
        return {key for key in keys
                if self.conn.execute(f"SELECT 1 FROM verdicts WHERE {match} LIMIT 1", key).fetchone()}

    def put_worker(self, conn: sqlite3.Connection, row: dict[str, Any]) -> None:
        names = WORKERS.column_names()
        conn.execute(f"INSERT OR REPLACE INTO workers ({', '.join(names)}) VALUES "
                     f"({', '.join('?' * len(names))})", [row.get(n) for n in names])

    def enforce_retention(self, now: float, days: dict[str, int]) -> dict[str, int]:
        """Delete rows older than each table's retention, a chunk per transaction."""
        deleted = {}
        for name, keep in days.items():
            table = BY_NAME[name]
            cutoff = now - keep * 86400
            total = 0
            while True:
                with self.transaction() as conn:
                    n = conn.execute(
                        f"DELETE FROM {name} WHERE rowid IN (SELECT rowid FROM {name} "
                        f"WHERE {table.time_column} < ? LIMIT {RETENTION_CHUNK_ROWS})", (cutoff,)).rowcount
                total += n
                if n < RETENTION_CHUNK_ROWS:
                    break
            deleted[name] = total
        return deleted

    def close(self) -> None:
        try:
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.DatabaseError:
            pass
        self.conn.close()


def _full_disk_hint(folder: str) -> str:
    """SQLite says "disk I/O error" when it cannot make its journal files on a full disk."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return ""
    # Some filesystems report no inode count; a virtual one (/proc, /sys) no blocks at all.
    full = st.f_blocks > 0 and (st.f_bavail == 0 or (st.f_files > 0 and st.f_favail == 0))
    return f" (no space left on {folder})" if full else ""


def verdict_key(verdict: dict[str, Any]) -> tuple:
    """The values that identify a verdict's row: its entity and window."""
    return tuple(_sql_value(verdict.get(k)) for k in VERDICTS.key)


def _sql_value(v: Any) -> Any:
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True)
    return v


ATTACH_REFUSED = "too many attached databases - max 0"
"""SQLite's words when a read-only connection refuses ATTACH or VACUUM INTO."""


def open_readonly(path: str) -> sqlite3.Connection:
    """The analysts' connection: read-only, so a query can never change the store, nor
    write any other file: mode=ro covers the store, and no database may be attached, which
    both ATTACH (it creates a missing file) and VACUUM INTO (it copies the store) need."""
    if not os.path.exists(path):
        raise StoreError(f"{path}: no such database (run `dnssensor replay` or `dnssensor run` first)")
    try:
        conn = sqlite3.connect(f"file:{os.path.abspath(path)}?mode=ro", uri=True)
        conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as e:
        raise StoreError(f"{path}: {e}") from None
    return conn


def rows(conn: sqlite3.Connection, sql: str, params: Iterable[Any] = ()) -> tuple[list[str], list[tuple]]:
    try:
        cur = conn.execute(sql, tuple(params))
    except sqlite3.DatabaseError as e:
        why = str(e)
        if why == ATTACH_REFUSED:
            why = "the store is opened read-only: ATTACH and VACUUM INTO, which write files, are refused"
        raise StoreError(f"query failed: {why}") from None
    names = [d[0] for d in cur.description] if cur.description else []
    return names, cur.fetchall()


__all__ = ["Store", "StoreError", "open_readonly", "rows", "ANOMALIES", "PDNS", "PDNS_NXDOMAIN",
           "STATS", "VERDICTS", "WORKERS"]

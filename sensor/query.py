"""What analysts ask the store, over a read-only connection (`sensor.store.open_readonly`)."""
from __future__ import annotations

import csv
import datetime
import io
import ipaddress
import json
import os
import re
import sqlite3
import time
from typing import Any

from sensor.config import address_key, spool_dir
from sensor.engine.channel import KEPT_SUFFIX, SET_ASIDE_SUFFIX, kept_files, set_aside_files
from sensor.errors import SensorError
from sensor.store import rows

FORMATS = ("table", "csv", "json")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_CELL = 80
"""Table cells are cut to this width (csv and json carry everything)."""
ONE_SIDED_MIN_MESSAGES = 100
"""Messages one way with none the other, per resolver and leg over the status window, before
status says so: a few unanswered queries are ordinary, a hundred with no answer at all are not."""
SILENT_AFTER_S = 120
"""A process the store lists as running that has not reported for this long (each reports
every flush interval) is stuck, died with no supervisor left to say so, or the store
refuses its writes (a full disk): status says so."""
LOW_DISK_SHARE = 0.05
"""Status warns when the store's filesystem has less than this share of its space free."""
DUPLICATED_SHARE = 0.5
"""Status warns of a span port that copies every packet when at least this share of the
answered queries (ONE_SIDED_MIN_MESSAGES at least) had their response twice: a resolver
retransmits rarely, a doubled capture does it for every one."""


def parse_time(text: str) -> float:
    """An instant as epoch seconds: a number of them, or ISO 8601 ('2026-11-21T14:00',
    '2026-11-21 14:00:30+01:00'); UTC unless an offset is given."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise SensorError(f"bad time {text!r} (expected ISO 8601, such as 2026-11-21T14:00 in UTC, "
                          "or epoch seconds)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when.timestamp()


def parse_duration(text: str) -> float:
    """'90s', '15m', '1h', '7d', '2w' -> seconds."""
    m = _DURATION.match(text.strip())
    if not m:
        raise SensorError(f"bad duration {text!r} (expected a number and one of s, m, h, d, w: 1h, 7d)")
    return float(m.group(1)) * _UNITS[m.group(2)]


def render(names: list[str], data: list[tuple], fmt: str) -> str:
    if any(isinstance(v, bytes) for r in data for v in r):      # a BLOB, as hex
        data = [tuple(v.hex() if isinstance(v, bytes) else v for v in r) for r in data]
    if fmt == "json":
        return "\n".join(json.dumps(dict(zip(names, r)), default=str) for r in data) + ("\n" if data else "")
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(names)
        w.writerows(data)
        return buf.getvalue()
    cells = [[_cell(v) for v in r] for r in data]
    widths = [max([len(n)] + [len(r[i]) for r in cells]) for i, n in enumerate(names)]
    lines = ["  ".join(n.ljust(widths[i]) for i, n in enumerate(names)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip() for r in cells]
    return "\n".join(lines) + "\n"


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        s = f"{v:.3f}" if abs(v) < 1e9 else f"{v:.0f}"
    else:
        s = str(v).translate(_CELL_ESCAPES)
    return s if len(s) <= MAX_CELL else s[:MAX_CELL - 1] + "…"


_CELL_ESCAPES = {ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"}
"""A table row stays one line."""


def _newest(conn: sqlite3.Connection, table: str, column: str) -> float:
    value = conn.execute(f"SELECT max({column}) FROM {table}").fetchone()[0]
    return float(value) if value is not None else 0.0


def verdicts(conn: sqlite3.Connection, since: str | None = None, kind: str | None = None,
             client: str | None = None, limit: int = 100,
             evidence: bool = False) -> tuple[list[str], list[tuple]]:
    """Newest verdicts first. `since` is relative to the newest verdict stored (the data's
    own clock, so a replayed capture from last year reads the same as live traffic);
    `evidence` adds each verdict's evidence, decoded, as the last column."""
    where, params = [], []
    if since:
        where.append("last_ts >= ?")
        params.append(_newest(conn, "verdicts", "last_ts") - parse_duration(since))
    if kind:
        where.append("kind = ?")
        params.append(kind)
    if client:
        where.append("client = ?")
        params.append(client)
    sql = ("SELECT id, datetime(first_ts, 'unixepoch') AS first, datetime(last_ts, 'unixepoch') AS last, "
           "kind, severity, client, server, domain, count, summary" + (", evidence" if evidence else "")
           + " FROM verdicts" + (" WHERE " + " AND ".join(where) if where else "")
           + " ORDER BY last_ts DESC, id DESC LIMIT ?")
    names, data = rows(conn, sql, params + [limit])
    if evidence:
        data = [(*r[:-1], json.loads(r[-1]) if r[-1] else None) for r in data]
    return names, data


def verdict_kinds(conn: sqlite3.Connection) -> list[str]:
    """The kinds of the verdicts stored, sorted."""
    return [k for (k,) in conn.execute("SELECT DISTINCT kind FROM verdicts ORDER BY kind")]


def verdict(conn: sqlite3.Connection, verdict_id: int) -> dict[str, Any]:
    """One verdict, every column, its evidence decoded."""
    cur = conn.execute("SELECT * FROM verdicts WHERE id = ?", (verdict_id,))
    row = cur.fetchone()
    if row is None:
        raise SensorError(f"no verdict with id {verdict_id}")
    out = dict(zip([d[0] for d in cur.description], row))
    out["evidence"] = json.loads(out["evidence"]) if out["evidence"] else None
    return out


def render_verdict(v: dict[str, Any]) -> str:
    """A verdict as an analyst reads it: a field a line, times in UTC, the evidence indented."""
    width = max(len(k) for k in v)
    lines = []
    for k, value in v.items():
        if k == "evidence":
            continue
        if k in ("ts", "first_ts", "last_ts", "window_start") and isinstance(value, (int, float)):
            value = f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(value))} UTC ({value})"
        lines.append(f"{k.ljust(width)}  {'' if value is None else value}")
    lines.append("evidence:")
    lines += ["  " + line for line in json.dumps(v["evidence"], indent=2, sort_keys=True).splitlines()]
    return "\n".join(lines) + "\n"


def pdns(conn: sqlite3.Connection, term: str, limit: int = 200) -> tuple[list[str], list[tuple]]:
    """DNSDB-style: an address gives the names that pointed at it, a network (CIDR) the names
    that pointed into it; a name ("*.example.com" for everything below, internationalised
    names in either form) gives what it resolved to, and when; NXDOMAIN answers included."""
    cols = ("rrname, rrtype, rdata, datetime(first_seen, 'unixepoch') AS first_seen, "
            "datetime(last_seen, 'unixepoch') AS last_seen, count")
    term = term.strip()
    if not term.rstrip("."):
        raise SensorError("give a name, an address or a network (CIDR) to look up")
    try:
        ip = ipaddress.ip_address(term)
    except ValueError:
        ip = None
    if ip is not None:
        # Spelt as the parser writes rdata (format_address: ::ffff:10.0.0.9, where str() gives
        # ::ffff:a00:9); an IPv4-mapped address, as a dual-stack socket logs an IPv4 peer, is
        # looked up as the IPv4 address too (address_text).
        from sensor.parse.batch import address_text, format_address

        raw = address_key(term)
        forms = tuple(dict.fromkeys((format_address(raw, ip.version), address_text(raw))))
        return rows(conn, f"SELECT {cols} FROM pdns WHERE rdata IN ({', '.join('?' * len(forms))}) "
                          "AND rrtype IN ('A', 'AAAA') ORDER BY last_seen DESC LIMIT ?", (*forms, limit))
    if "/" in term:
        return _pdns_network(conn, cols, term, limit)
    name = _ascii_name(term.rstrip(".").lower())
    if name.startswith("*."):
        base = name[2:]
        cond, params = "(rrname = ? OR rrname LIKE ? ESCAPE '\\')", [base, "%." + _like(base)]
        nx_cond = "(qname = ? OR qname LIKE ? ESCAPE '\\')"
    else:
        cond, params = "rrname = ?", [name]
        nx_cond = "qname = ?"
    sql = (f"SELECT {cols} FROM pdns WHERE {cond} UNION ALL "
           f"SELECT qname, qtype, 'NXDOMAIN', datetime(first_seen, 'unixepoch'), "
           f"datetime(last_seen, 'unixepoch'), count FROM pdns_nxdomain WHERE {nx_cond} "
           "ORDER BY last_seen DESC LIMIT ?")
    return rows(conn, sql, params + params + [limit])


def _ascii_name(name: str) -> str:
    """The name as stored (the wire's A-labels): bücher.example is xn--bcher-kva.example."""
    if name.isascii():
        return name
    try:
        return ".".join(label if label.isascii() else label.encode("idna").decode("ascii")
                        for label in name.split("."))
    except UnicodeError as e:
        raise SensorError(f"{name!r} is not a valid internationalised domain name: {e}") from None


def _pdns_network(conn: sqlite3.Connection, cols: str, term: str, limit: int) -> tuple[list[str], list[tuple]]:
    """A and AAAA records whose address lies in the network. Addresses are stored as text, so
    the rdata index narrows the scan to the text every address of the network begins with
    (the octets, or the first group, that its prefix fixes) and each candidate is checked."""
    try:
        net = ipaddress.ip_network(term.strip(), strict=False)
    except ValueError as e:
        raise SensorError(f"{term!r} is neither a name, an address nor a network: {e}") from None
    if net.version == 4:
        fixed = min(net.prefixlen // 8, 3)      # "a.b.c." at most: the last octet has no dot after it
        lead = "".join(f"{octet}." for octet in net.network_address.packed[:fixed])
        rrtype = "A"
    else:
        first_group = int.from_bytes(net.network_address.packed[:2], "big")
        lead = f"{first_group:x}:" if net.prefixlen >= 16 and first_group else ""
        rrtype = "AAAA"

    def inside(rdata: str) -> bool:
        try:
            return ipaddress.ip_address(rdata) in net
        except ValueError:
            return False

    conn.create_function("in_network", 1, inside, deterministic=True)
    # ';' sorts right after ':' and '/' right after '.': the end of the range of texts that begin with `lead`
    end = lead[:-1] + chr(ord(lead[-1]) + 1) if lead else None
    bounds, params = ("AND rdata >= ? AND rdata < ? ", [lead, end]) if end else ("", [])
    return rows(conn, f"SELECT {cols} FROM pdns WHERE rrtype = ? {bounds}AND in_network(rdata) "
                      "ORDER BY last_seen DESC LIMIT ?", [rrtype, *params, limit])


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def status(conn: sqlite3.Connection, minutes: int = 15, db_path: str | None = None,
           now: float | None = None) -> dict[str, Any]:
    """Rates, losses per stage and worker health over the newest `minutes` of data; with
    db_path, the store's size and the room left on its filesystem."""
    now = time.time() if now is None else now
    newest = _newest(conn, "stats", "minute")
    start = newest - (minutes - 1) * 60
    traffic = conn.execute(
        "SELECT count(DISTINCT minute), sum(queries), sum(responses), sum(nxdomain), sum(servfail), "
        "sum(answered), sum(unanswered), sum(unsolicited), sum(mismatched), sum(duplicate), "
        "sum(rtt_ms_sum), sum(rtt_count) FROM stats WHERE minute >= ? AND leg != 'sensor'", (start,)).fetchone()
    mins = traffic[0] or 0
    q, r, nx, sf, ans, unans, unsol, mism, dup, rtt_sum, rtt_n = (x or 0 for x in traffic[1:])
    sensor = conn.execute(
        "SELECT sum(packets), sum(kernel_received), sum(kernel_dropped) FROM stats "
        "WHERE minute >= ? AND leg = 'sensor'", (start,)).fetchone()
    drops: dict[str, int] = {}
    for (text,) in conn.execute("SELECT drops FROM stats WHERE minute >= ? AND leg = 'sensor' "
                                "AND drops IS NOT NULL", (start,)):
        for k, v in json.loads(text).items():
            drops[k] = drops.get(k, 0) + v
    if sensor[2]:
        drops["kernel"] = int(sensor[2])
    resolvers = conn.execute(
        "SELECT resolver, leg, sum(queries) AS q, sum(responses), sum(nxdomain), sum(servfail), "
        "sum(unanswered) FROM stats WHERE minute >= ? AND leg != 'sensor' GROUP BY resolver, leg "
        "ORDER BY q DESC LIMIT 10", (start,)).fetchall()
    talkers = conn.execute(
        "SELECT client, sum(queries) AS q, sum(nxdomain), sum(bytes_queries) FROM clients "
        "WHERE minute >= ? GROUP BY client ORDER BY q DESC LIMIT 10", (start,)).fetchall()
    # A resolver that got queries and sent nothing back is down, or the capture sees one
    # direction only (an asymmetric span port); responses and no queries are the latter
    # (or reflected traffic). Either way its tracking, loss estimate and verdicts mislead.
    one_sided = conn.execute(
        "SELECT resolver, leg, sum(queries) AS q, sum(responses) AS r FROM stats "
        "WHERE minute >= ? AND leg != 'sensor' GROUP BY resolver, leg "
        "HAVING (q >= ? AND r = 0) OR (r >= ? AND q = 0) ORDER BY q + r DESC LIMIT 10",
        (start, ONE_SIDED_MIN_MESSAGES, ONE_SIDED_MIN_MESSAGES)).fetchall()
    workers = conn.execute("SELECT worker, pid, state, restarts, packets, kernel_dropped, "
                           "datetime(last_seen, 'unixepoch'), last_seen FROM workers ORDER BY worker").fetchall()
    silent = [{"worker": w[0], "silent_s": now - w[7]} for w in workers
              if w[2] == "running" and w[7] is not None and now - w[7] > SILENT_AFTER_S]
    tracked = ans + unans
    return {
        "window_minutes": mins, "newest_minute": newest,
        "queries_per_min": q / mins if mins else 0.0, "responses_per_min": r / mins if mins else 0.0,
        "nxdomain_share": nx / r if r else 0.0, "servfail_share": sf / r if r else 0.0,
        "answered": ans, "unanswered": unans, "unsolicited": unsol, "mismatched": mism, "duplicate": dup,
        "rtt_ms_avg": rtt_sum / rtt_n if rtt_n else None,
        # Queries whose response never showed, and responses whose query never did, are what a
        # tap that loses packets produces: a DNS-native loss estimate next to the kernel's.
        "dns_loss_estimate": (unans + unsol) / (tracked + unsol) if tracked + unsol else 0.0,
        "packets": int(sensor[0] or 0), "kernel_received": int(sensor[1] or 0),
        "kernel_dropped": int(sensor[2] or 0), "drops": drops,
        "resolvers": [dict(zip(("resolver", "leg", "queries", "responses", "nxdomain", "servfail",
                                "unanswered"), r)) for r in resolvers],
        "top_talkers": [dict(zip(("client", "queries", "nxdomain", "bytes_queries"), t)) for t in talkers],
        "one_sided": [dict(zip(("resolver", "leg", "queries", "responses"), o)) for o in one_sided],
        "workers": [dict(zip(("worker", "pid", "state", "restarts", "packets", "kernel_dropped",
                              "last_seen"), w)) for w in workers],
        "silent": silent,
        "doubled_capture": ans >= ONE_SIDED_MIN_MESSAGES and dup >= DUPLICATED_SHARE * ans,
        "store": _store_space(db_path) if db_path else None,
    }


def _store_space(db_path: str) -> dict[str, Any]:
    """The database's size (its write-ahead log included), its filesystem's room, and the
    shipments kept beside it at a stop that no writer has stored yet."""
    size = sum(os.path.getsize(p) for p in (db_path, db_path + "-wal") if os.path.exists(p))
    st = os.statvfs(os.path.dirname(os.path.abspath(db_path)))
    kept = kept_files(spool_dir(db_path))
    return {"path": db_path, "bytes": size, "free_bytes": st.f_bavail * st.f_frsize,
            "filesystem_bytes": st.f_blocks * st.f_frsize,
            "kept_files": len(kept), "kept_bytes": sum(file_bytes for _, file_bytes in kept),
            "kept_unreadable": len(set_aside_files(spool_dir(db_path)))}


def _size_text(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    return ""


def render_status(s: dict[str, Any]) -> str:
    out = [f"last {s['window_minutes']} minute(s) of data, newest minute "
           f"{_minute_text(s['newest_minute'])}",
           f"  queries/min {s['queries_per_min']:,.0f}   responses/min {s['responses_per_min']:,.0f}   "
           f"NXDOMAIN {s['nxdomain_share']:.1%}   SERVFAIL {s['servfail_share']:.1%}",
           f"  answered {s['answered']:,}   unanswered {s['unanswered']:,}   unsolicited "
           f"{s['unsolicited']:,}   id/port mismatched {s['mismatched']:,}   duplicate {s['duplicate']:,}"
           + (f"   rtt avg {s['rtt_ms_avg']:.1f} ms" if s["rtt_ms_avg"] is not None else ""),
           f"  loss: DNS-estimated {s['dns_loss_estimate']:.2%}   kernel dropped {s['kernel_dropped']:,} "
           f"of {s['kernel_received']:,}   packets read {s['packets']:,}",
           "  drops by stage: " + (", ".join(f"{k} {v:,}" for k, v in sorted(s["drops"].items()) if v)
                                   or "none")]
    for o in s["one_sided"]:
        if o["responses"]:
            out.append(f"  WARNING {o['resolver']} ({o['leg']}): {o['responses']:,} responses and no query: "
                       "the capture sees one direction only, or this is reflected traffic")
        else:
            out.append(f"  WARNING {o['resolver']} ({o['leg']}): {o['queries']:,} queries and no response: "
                       "the resolver is down, or the capture sees one direction only")
    if s["doubled_capture"]:
        out.append(f"  WARNING {s['duplicate']:,} duplicate responses for {s['answered']:,} answered queries: "
                   "a span port that copies both directions of a link sends every packet twice, "
                   "doubling every count; capture.dedup_window_ms = 1 drops the copies")
    for w in s["silent"]:
        out.append(f"  WARNING {w['worker']} is listed as running but has not reported for "
                   f"{w['silent_s'] / 60:,.0f} min: it is stuck or gone, or the store refuses writes "
                   "(a full disk; see the sensor's log)")
    store = s.get("store")
    if store:
        out.append(f"  store {store['path']}: {_size_text(store['bytes'])}, "
                   f"{_size_text(store['free_bytes'])} free of {_size_text(store['filesystem_bytes'])}")
        if store["filesystem_bytes"] and store["free_bytes"] < LOW_DISK_SHARE * store["filesystem_bytes"]:
            out.append(f"  WARNING the store's filesystem is {1 - store['free_bytes'] / store['filesystem_bytes']:.0%} "
                       "full: once it is, the database stops growing (verdicts still go to syslog); "
                       "shorten retention or make room")
        if store.get("kept_files"):
            out.append(f"  WARNING {store['kept_files']} file(s) of shipments ({_size_text(store['kept_bytes'])}) "
                       "that the writer could not take at the last stop are not stored yet: the sensor's "
                       "next start stores them first")
        if store.get("kept_unreadable"):
            out.append(f"  WARNING {store['kept_unreadable']} file(s) of shipments kept at a stop could not be "
                       f"read and were set aside (spool/*{KEPT_SUFFIX}{SET_ASIDE_SUFFIX}); what they held is not in the store")
    if s["resolvers"]:
        out.append("busiest resolvers:")
        out += [f"  {r['resolver']:<40} {r['leg']:<8} {r['queries'] or 0:>10,} q  "
                f"{r['nxdomain'] or 0:>8,} nx  {r['servfail'] or 0:>8,} servfail  "
                f"{r['unanswered'] or 0:>8,} unanswered" for r in s["resolvers"]]
    if s["top_talkers"]:
        out.append("top talkers (clients):")
        out += [f"  {t['client']:<40} {t['queries'] or 0:>10,} q  {t['nxdomain'] or 0:>8,} nx  "
                f"{t['bytes_queries'] or 0:>12,} bytes out" for t in s["top_talkers"]]
    if s["workers"]:
        out.append("workers:")
        out += [f"  {w['worker']:<16} pid {w['pid'] or '-':<8} {w['state']:<10} restarts {w['restarts'] or 0}"
                + (f"  packets {w['packets'] or 0:,}  kernel dropped {w['kernel_dropped'] or 0:,}"
                   if w["worker"] != "writer" else "")          # the writer captures nothing
                + f"  last seen {w['last_seen']}" for w in s["workers"]]
    return "\n".join(out) + "\n"


def _minute_text(minute: float) -> str:
    import datetime as dt
    if not minute:
        return "-"
    return dt.datetime.fromtimestamp(minute, tz=dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

"""The local database's tables, each column documented here and nowhere else.

Migrations (sensor/store/__init__.py) create tables from these definitions;
the README's store reference and `dnssensor query --schema` are generated
from them. Times are epoch seconds (UTC); `minute` is the start of a minute.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Column:
    name: str
    type: str          # SQLite type affinity: INTEGER, REAL, TEXT, BLOB
    doc: str


@dataclass(frozen=True)
class Table:
    name: str
    doc: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    """Columns that identify a row (primary key, or unique key when there is an id)."""
    indexes: tuple[tuple[str, ...], ...] = ()
    time_column: str = ""
    """Column retention compares with the cut-off."""

    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]


C = Column

VERDICTS = Table(
    "verdicts", "What a detector concluded, with its evidence: one row per entity per window, "
    "updated while the episode lasts.",
    (C("id", "INTEGER", "row id"),
     C("ts", "REAL", "when the row was last written"),
     C("kind", "TEXT", "stable verdict kind (tunnel, cache_poisoning, anomaly, ...)"),
     C("severity", "TEXT", "info, low, medium, high or critical"),
     C("client", "TEXT", "client address the verdict is about ('' when none)"),
     C("server", "TEXT", "server (resolver or authoritative) address ('' when none)"),
     C("domain", "TEXT", "registered domain or name the verdict is about ('' when none)"),
     C("detector", "TEXT", "detector (rule) that produced it"),
     C("summary", "TEXT", "one line for humans"),
     C("evidence", "TEXT", "JSON: feature values against thresholds, samples, counts, window"),
     C("count", "INTEGER", "messages that contributed"),
     C("first_ts", "REAL", "first contributing message"),
     C("last_ts", "REAL", "last contributing message"),
     C("window_start", "INTEGER", "start of the detector's window; part of the row's identity"),
     C("sensor", "TEXT", "sensor name from the configuration")),
    key=("kind", "detector", "client", "server", "domain", "window_start"),
    indexes=(("ts",), ("kind", "ts"), ("client", "ts"), ("domain",)),
    time_column="last_ts")

PDNS = Table(
    "pdns", "Classic passive DNS: every answer record seen in a successful response.",
    (C("rrname", "TEXT", "owner name, lower case, no trailing dot"),
     C("rrtype", "TEXT", "record type mnemonic (A, AAAA, CNAME, ...)"),
     C("rdata", "TEXT", "record data in presentation form"),
     C("first_seen", "REAL", "first response that carried it"),
     C("last_seen", "REAL", "last response that carried it"),
     C("count", "INTEGER", "responses that carried it")),
    key=("rrname", "rrtype", "rdata"),
    indexes=(("rdata",), ("last_seen",)),
    time_column="last_seen")

PDNS_NXDOMAIN = Table(
    "pdns_nxdomain", "Names answered with NXDOMAIN, kept apart from the records that exist.",
    (C("qname", "TEXT", "queried name"),
     C("qtype", "TEXT", "queried type mnemonic"),
     C("first_seen", "REAL", "first NXDOMAIN response"),
     C("last_seen", "REAL", "last NXDOMAIN response"),
     C("count", "INTEGER", "NXDOMAIN responses")),
    key=("qname", "qtype"),
    indexes=(("last_seen",),),
    time_column="last_seen")

STATS_COUNTERS = (
    ("queries", "queries seen"),
    ("responses", "responses seen"),
    ("noerror", "responses with rcode NOERROR"),
    ("nxdomain", "responses with rcode NXDOMAIN"),
    ("servfail", "responses with rcode SERVFAIL"),
    ("refused", "responses with rcode REFUSED"),
    ("bytes_queries", "DNS payload bytes of queries"),
    ("bytes_responses", "DNS payload bytes of responses"),
    ("answered", "responses matched to their query (first response only)"),
    ("unanswered", "queries with no response within the query timeout"),
    ("unsolicited", "responses matching no outstanding query (over TCP: whenever the query is missing)"),
    ("mismatched", "UDP responses whose question matches an outstanding query but whose id or "
                   "port does not (spoofing attempts)"),
    ("duplicate", "further responses to a query already answered"),
    ("rtt_count", "matched responses with a round-trip time"),
)

MINUTE_COUNTERS = (
    ("queries", "queries"),
    ("responses", "responses"),
    ("nxdomain", "NXDOMAIN responses"),
    ("servfail", "SERVFAIL responses"),
    ("bytes_queries", "DNS payload bytes of queries"),
    ("bytes_responses", "DNS payload bytes of responses"),
)
"""Counters per minute of one client (clients) or one client network or domain (breakdown)."""

STATS = Table(
    "stats", "Per minute and per resolver. The row with resolver '*' and leg 'sensor' holds the "
    "capture's own counters (kernel and every internal stage).",
    (C("minute", "INTEGER", "start of the minute"),
     C("resolver", "TEXT", "resolver address (the server on the client leg, the querying "
                           "resolver on the upstream leg); '*' for the sensor row"),
     C("leg", "TEXT", "client (clients to resolver), upstream (resolver to authoritatives) or sensor"),
     *(C(name, "INTEGER", doc) for name, doc in STATS_COUNTERS),
     C("rtt_ms_sum", "REAL", "sum of round-trip times (ms) of matched responses"),
     C("unique_clients", "INTEGER", "distinct client addresses"),
     C("rcodes", "TEXT", "JSON: responses by rcode name"),
     C("qtypes", "TEXT", "JSON: queries by qtype name"),
     C("packets", "INTEGER", "sensor row: frames the workers read"),
     C("kernel_received", "INTEGER", "sensor row: packets the kernel passed the filter"),
     C("kernel_dropped", "INTEGER", "sensor row: packets the kernel dropped (ring full)"),
     C("drops", "TEXT", "sensor row: JSON, what was lost per internal stage (the drop stages below)")),
    key=("minute", "resolver", "leg"),
    indexes=(("resolver", "minute"),),
    time_column="minute")

DROP_STAGES: dict[str, str] = {
    "duplicate_frames": "span-port copies of a frame dropped (capture.dedup_window_ms)",
    "frag_limit": "IP datagrams given up for a reassembly bound: the oldest pushed out by "
                  "limits.max_fragment_datagrams, or more fragments than limits.max_fragments_per_datagram",
    "frag_timeout": "IP datagrams whose fragments did not all come within limits.fragment_timeout_s, "
                    "or before the capture ended or the sensor stopped",
    "tcp_limit": "TCP half-connections given up for a reassembly bound (limits.max_tcp_flows, "
                 "max_tcp_buffer, max_tcp_pending_segments)",
    "tcp_unfinished": "TCP half-connections that ended inside a DNS message (FIN, RST, idle past "
                      "limits.tcp_idle_timeout_s, the end of the capture, a stop): its part was given up",
    "pdns_overflow": "passive-DNS records beyond limits.max_pdns_rows in one flush",
    "anomaly_sources": "malformed messages from clients beyond limits.max_anomaly_sources in one window",
    "rule_groups_overflow": "rule groups (entity and window) beyond limits.max_rule_groups",
    "verdicts_capped": "verdicts beyond limits.max_verdicts_per_rule in one flush",
    "syslog_dropped": "syslog messages a target's spool could not keep (full, or its disk refused)",
    "shipments_torn": "worker shipments lost on the way to the writer (cut off, or not shipments)",
    "shipments_refused": "connections to the writer from a process of another user, refused",
    "worker_restarts": "capture workers that died and were restarted (what they held is lost)",
    "writer_restarts": "writers that died and were restarted",
}
"""Every name the `drops` column of a sensor row can hold, and what it counts; the counts
are in the minute of the traffic lost where that is known, else in the minute it was found."""


CLIENTS = Table(
    "clients", "Per minute and per client (the querying side): the analysts' top talkers.",
    (C("minute", "INTEGER", "start of the minute"),
     C("client", "TEXT", "client address; 'other' collects clients beyond the per-minute limit"),
     *(C(name, "INTEGER", doc) for name, doc in MINUTE_COUNTERS)),
    key=("minute", "client"),
    indexes=(("client", "minute"),),
    time_column="minute")

BREAKDOWN = Table(
    "breakdown", "Per minute counters on the client leg by client network and by registered "
    "domain (the busiest per minute): the scoped series of `dnssensor series --network/--domain`.",
    (C("minute", "INTEGER", "start of the minute"),
     C("scope", "TEXT", "network or domain"),
     C("key", "TEXT", "a configured client network (its /24 or /48 when none is configured) or a "
                      "registered domain; 'other' collects the rest beyond the per-minute limit"),
     *(C(name, "INTEGER", doc) for name, doc in MINUTE_COUNTERS)),
    key=("minute", "scope", "key"),
    indexes=(("scope", "key", "minute"),),
    time_column="minute")

BASELINES = Table(
    "baselines", "What the series detectors learnt from the history, so a restart (or pruned "
    "per-minute rows) does not forget weeks of it: one row per series.",
    (C("series", "TEXT", "series name: counter, and @scope=key for a network or domain"),
     C("fitted_to", "INTEGER", "last minute of history the profile was learnt from"),
     C("seasonality", "TEXT", "weekly, daily or none (with the days of history)"),
     C("profile", "TEXT", "JSON: seasonal index, spreads, averages and residual histogram per "
                          "hour of the week"),
     C("model", "BLOB", "pickled streaming model (Half-Space Trees) with its recent scores, or null")),
    key=("series",),
    time_column="fitted_to")

ANOMALIES = Table(
    "anomalies", "Per minute counts of each named anomaly (sensor.schema.ANOMALIES, tracking).",
    (C("minute", "INTEGER", "start of the minute"),
     C("name", "TEXT", "anomaly name"),
     C("count", "INTEGER", "messages (or events) with it")),
    key=("minute", "name"),
    time_column="minute")

WORKERS = Table(
    "workers", "Health of the capture workers and the writer, written by the writer.",
    (C("worker", "TEXT", "interface and index, or 'writer'"),
     C("pid", "INTEGER", "process id"),
     C("started", "REAL", "when the current process started"),
     C("restarts", "INTEGER", "times the supervisor restarted it"),
     C("last_seen", "REAL", "last report from it"),
     C("packets", "INTEGER", "frames read since the sensor started"),
     C("kernel_received", "INTEGER", "kernel counter, running 64-bit total"),
     C("kernel_dropped", "INTEGER", "kernel counter, running 64-bit total"),
     C("state", "TEXT", "running, restarting, stopped or died (exit status)")),
    key=("worker",))

TABLES: tuple[Table, ...] = (VERDICTS, PDNS, PDNS_NXDOMAIN, STATS, CLIENTS, BREAKDOWN, ANOMALIES, WORKERS,
                             BASELINES)
BY_NAME = {t.name: t for t in TABLES}
SEVERITIES = ("info", "low", "medium", "high", "critical")


def reference_markdown() -> str:
    out = []
    for t in TABLES:
        out.append(f"#### `{t.name}`\n\n{t.doc}\n\n| column | type | meaning |\n|---|---|---|")
        out += [f"| `{c.name}` | {c.type} | {c.doc} |" for c in t.columns]
        out.append("")
        if t is STATS:
            out.append("Drop stages, the keys of `drops`:\n\n| stage | what it counts |\n|---|---|")
            out += [f"| `{name}` | {doc} |" for name, doc in DROP_STAGES.items()]
            out.append("")
    return "\n".join(out)

"""The dnssensor command: a thin layer over the library.

Library errors (sensor.errors.SensorError) become one-line messages and exit
status 2; nothing else is caught here.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from sensor.errors import SensorError

EXIT_USAGE = 2


def _ports(text: str) -> int:
    port = int(text)
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"port out of range: {text}")
    return port


def _at_least(low: int, high: int | None = None, why_high: str = "") -> Callable[[str], int]:
    """An argparse type: an integer no lower than `low` (and no higher than `high`)."""
    def number(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"{text}: at least {low}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"{text}: at most {high}{why_high}")
        return value
    number.__name__ = "number"          # argparse names the type in its message
    return number


def _workers(text: str) -> int:
    from sensor.limits import MAX_WORKERS

    return _at_least(0, MAX_WORKERS, " (the sockets of a fanout group)")(text)


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text}: must be above 0")
    return value


def _address(text: str) -> str:
    """An IP address spelt as the store writes it (inet_ntop; an IPv4-mapped IPv6 address as
    its IPv4 address), however it was typed."""
    from sensor.config import address_key
    from sensor.parse.batch import address_text

    try:
        return address_text(address_key(text.strip()))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IP address") from None


CAPTURE_FILE_HELP = "pcap or pcapng capture, plain or compressed (gzip, bzip2, xz); - for standard input"


def build_parser() -> argparse.ArgumentParser:
    from sensor.detectors.series_anomalies import METHODS as SERIES_METHODS
    from sensor.dump import FORMATS
    from sensor.limits import DEFAULT_PORTS
    from sensor.parse import BACKENDS

    top = argparse.ArgumentParser(
        prog="dnssensor", description="Passive DNS sensor.",
        epilog="Example: dnssensor dump capture.pcap --format table")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    dump = sub.add_parser(
        "dump", help="decode DNS messages from pcap/pcapng files",
        description="Decode every DNS message in the capture files, in order, one JSON object "
                    "per message (or a table). Fields are documented in the README.",
        epilog="Example: dnssensor dump tests/data/dnscap-baseline-udp-82-msgs.pcap --format table",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    dump.add_argument("files", nargs="+", metavar="FILE", help=CAPTURE_FILE_HELP)
    dump.add_argument("--format", choices=FORMATS, default="jsonl", help="output format (default jsonl)")
    dump.add_argument("--port", type=_ports, action="append", default=[], metavar="N",
                      help=f"also treat port N as DNS (repeatable; always {', '.join(map(str, DEFAULT_PORTS))})")
    dump.add_argument("--backend", choices=BACKENDS, default="compiled",
                      help="parser implementation (twin: the slow pure-Python reference)")
    dump.add_argument("--summary", action="store_true",
                      help="print frame, message and anomaly counters to stderr at the end")

    replay = sub.add_parser(
        "replay", help="run the whole pipeline over capture files into the database",
        description="Parse, track and store the DNS traffic of capture files (merged by time "
                    "across files) exactly as live capture would, with a progress bar on a "
                    "terminal. Verdicts also go to the configured syslog targets.",
        epilog="Example: dnssensor replay --db demo.db tests/data/dnscap-baseline-udp-82-msgs.pcap")
    replay.add_argument("files", nargs="+", metavar="FILE", help=CAPTURE_FILE_HELP)
    _config_args(replay)
    replay.add_argument("--port", type=_ports, action="append", default=[], metavar="N",
                        help="also treat port N as DNS (repeatable)")
    replay.add_argument("--from", dest="start", metavar="TIME",
                        help="only frames at or after TIME (ISO 8601, UTC unless an offset is given, "
                             "e.g. 2026-11-21T14:00; or epoch seconds)")
    replay.add_argument("--until", dest="end", metavar="TIME", help="only frames before TIME")

    run = sub.add_parser(
        "run", help="capture live on the configured interfaces (root or CAP_NET_RAW)",
        description="Start one capture worker per core on each interface (PACKET_FANOUT), "
                    "and one writer. SIGTERM flushes and stops; SIGHUP reloads configuration "
                    "and rules.",
        epilog="Example: dnssensor run --config /etc/dnssensor/dnssensor.toml")
    _config_args(run)
    run.add_argument("--interface", "-i", action="append", default=[], metavar="IFACE",
                     help="capture on IFACE (repeatable; replaces the configured list)")
    run.add_argument("--workers", type=_workers, metavar="N", help="workers per interface (0: one per core)")

    query = sub.add_parser(
        "query", help="run an SQL query against the database (read-only)",
        description="Run one SQL statement on a read-only connection. Tables and columns are "
                    "documented in the README (store reference).",
        epilog="Example: dnssensor query \"SELECT rrname, count FROM pdns ORDER BY count DESC LIMIT 10\"")
    query.add_argument("sql", help="SQL statement")
    _config_args(query, output=True)

    verdicts = sub.add_parser(
        "verdicts", help="list verdicts, newest first",
        description="Verdicts with their summary (with their evidence in JSON); --since counts back "
                    "from the newest verdict; --id shows one verdict whole, its evidence included.",
        epilog="Example: dnssensor verdicts --since 1h --kind anomaly; dnssensor verdicts --id 3")
    verdicts.add_argument("--since", metavar="DURATION", help="e.g. 15m, 1h, 7d")
    verdicts.add_argument("--kind", help="only this verdict kind")
    verdicts.add_argument("--client", type=_address, metavar="IP", help="only verdicts about this client")
    verdicts.add_argument("--limit", type=_at_least(1), default=100, help="at most this many rows (default 100)")
    verdicts.add_argument("--id", type=int, metavar="N", help="one verdict, every field and its evidence")
    _config_args(verdicts, output=True)

    pdns = sub.add_parser(
        "pdns", help="passive DNS: what a name resolved to, or which names pointed at an address",
        description="NAME gives its records and NXDOMAIN answers with first/last seen and "
                    "counts; *.NAME everything below it (internationalised names in either "
                    "form); an IP address the names that resolved to it; a network (CIDR) the "
                    "names that resolved into it.",
        epilog="Example: dnssensor pdns www.example.com; dnssensor pdns 192.0.2.0/24")
    pdns.add_argument("term", metavar="NAME|IP|CIDR")
    pdns.add_argument("--limit", type=_at_least(1), default=200, help="at most this many rows (default 200)")
    _config_args(pdns, output=True)

    status = sub.add_parser(
        "status", help="rates, losses per stage and worker health",
        description="Summary of the newest minutes in the database: traffic, answered and "
                    "unanswered queries, the DNS-native loss estimate, kernel and internal drops, workers.",
        epilog="Example: dnssensor status --minutes 60")
    status.add_argument("--minutes", type=_at_least(1), default=15, help="window (default 15)")
    status.add_argument("--json", action="store_true", help="print JSON instead of text")
    _config_args(status)
    series = sub.add_parser(
        "series", help="a per-minute series with its seasonal baseline and its anomalies",
        description="Fits the baseline (level x time-of-day / day-of-week profile) on all the "
                    "history in the store and prints the last --since of it, minute by minute, "
                    "with the expected value, the band and a mark where it departs; then the "
                    "episodes found in that window.",
        epilog="Example: dnssensor series nxdomain --since 2d --png nxdomain.png")
    series.add_argument("name", metavar="NAME", help="queries, responses, nxdomain, servfail, refused, "
                                                     "bytes_queries, bytes_responses, unanswered, ...")
    series.add_argument("--since", default="1h", metavar="DURATION", help="window to print (default 1h)")
    series.add_argument("--resolver", type=_address, metavar="IP", help="one resolver (default: all)")
    scope = series.add_mutually_exclusive_group()
    scope.add_argument("--network", metavar="CIDR", help="one client network's series (breakdown table)")
    scope.add_argument("--domain", metavar="DOMAIN", help="one registered domain's series (breakdown table)")
    series.add_argument("--method", choices=SERIES_METHODS, default="mad",
                        help="deviation test (default mad: robust distance from the seasonal baseline; "
                             "hst: Half-Space Trees over queries, nxdomain, servfail and this series)")
    series.add_argument("--k", type=_positive_float, metavar="K", help="the method's threshold (default: its own)")
    series.add_argument("--png", metavar="FILE", help="also draw the window, baseline, band and anomalies")
    _config_args(series)

    rules = sub.add_parser(
        "rules", help="validate rule files, or run them over their sample captures",
        description="check: load every rule file of DIR and report the first error with its file "
                    "and line. test: also replay each rule's positive and negative samples and "
                    "report any positive that gives no verdict or negative that gives one. Without "
                    "DIR, the folder `run` and `replay` would judge with (the configuration's "
                    "[rules] dir, else ./rules, else the rules that come with the sensor).",
        epilog="Example: dnssensor rules check rules/; dnssensor rules check --config /etc/dnssensor/dnssensor.toml")
    rules.add_argument("action", choices=("check", "test"))
    rules.add_argument("directory", metavar="DIR", nargs="?")
    rules.add_argument("--config", "-c", metavar="FILE", help="configuration file whose [rules] dir to check")
    return top


def _config_args(p: argparse.ArgumentParser, output: bool = False) -> None:
    p.add_argument("--config", "-c", metavar="FILE", help="configuration file (TOML); defaults otherwise")
    p.add_argument("--db", metavar="PATH", help="database file (overrides the configuration)")
    if output:
        from sensor.query import FORMATS
        p.add_argument("--format", choices=FORMATS, default="table", help="output format (default table)")


def load_config(args: argparse.Namespace):
    from dataclasses import replace

    from sensor import config as cfg

    conf = cfg.load(args.config) if args.config else cfg.Config()
    conf = cfg.resolve_paths(conf)
    if getattr(args, "db", None):
        conf = replace(conf, db_path=args.db)
    if getattr(args, "port", None):
        conf = replace(conf, ports=tuple(dict.fromkeys(conf.ports + tuple(args.port))))
    return conf


def cmd_dump(args: argparse.Namespace) -> int:
    from sensor import dump
    from sensor.limits import DEFAULT_PORTS
    from sensor.parse import Parser

    parser = Parser(ports=tuple(DEFAULT_PORTS) + tuple(args.port), backend=args.backend)
    totals = dump.write(dump.batches_of(args.files, parser), args.format, sys.stdout)
    if args.summary:
        print(dump.summary(totals), file=sys.stderr)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from sensor.engine.replay import replay
    from sensor.errors import CaptureError

    from sensor.query import parse_time

    conf = load_config(args)
    start = parse_time(args.start) if args.start else None
    end = parse_time(args.end) if args.end else None
    r = replay(args.files, conf, start=start, end=end)
    if r.capture_error and not r.packets:
        raise CaptureError(r.capture_error)
    rate = r.messages / r.seconds if r.seconds else 0.0
    print(f"replayed {r.files} file(s): {r.packets:,} packets, {r.messages:,} DNS messages in "
          f"{r.seconds:.2f} s ({rate:,.0f} msgs/s); {r.verdicts} new verdict(s) -> {conf.db_path}")
    print(f"rules: {r.rules} from {r.rules_dir}")
    t = r.tracking
    print(f"tracking: {t['answered']:,} answered, {t['unanswered']:,} unanswered, "
          f"{t['unsolicited']:,} unsolicited, {t['mismatched']:,} id/port mismatched, "
          f"{t['duplicate']:,} duplicate")
    for label, c in r.syslog.items():
        print(f"syslog {label}: {c['sent']} sent, {c['spooled']} spooled, {c['dropped']} dropped")
    if r.capture_error:
        print(f"dnssensor: error: {r.capture_error}; the {r.packets:,} frames read before are stored",
              file=sys.stderr)
        return EXIT_USAGE
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from sensor.engine.live import run

    conf = load_config(args)
    if args.interface:
        conf = replace(conf, interfaces=tuple(args.interface))
    if args.workers is not None:
        conf = replace(conf, workers=args.workers)
    return run(conf)


def _open(args: argparse.Namespace):
    from sensor.store import open_readonly
    return open_readonly(load_config(args).db_path)


def cmd_query(args: argparse.Namespace) -> int:
    from sensor.query import render
    from sensor.store import rows

    if not args.sql.strip():
        raise SensorError("no SQL statement given")
    names, data = rows(_open(args), args.sql)
    sys.stdout.write(render(names, data, args.format))
    return 0


def cmd_verdicts(args: argparse.Namespace) -> int:
    from sensor import query

    conn = _open(args)
    if args.id is not None:
        v = query.verdict(conn, args.id)
        sys.stdout.write(query.render([*v], [tuple(v.values())], "json") if args.format == "json"
                         else query.render_verdict(v))
        return 0
    names, data = query.verdicts(conn, args.since, args.kind, args.client, args.limit,
                                 evidence=args.format == "json")
    sys.stdout.write(query.render(names, data, args.format))
    if args.kind and not data:
        kinds = query.verdict_kinds(conn)
        if args.kind not in kinds:      # a mistyped kind, told apart from a quiet one
            print(f"dnssensor: no verdict of kind {args.kind!r} is stored; the kinds stored: "
                  f"{', '.join(kinds) or 'none'}", file=sys.stderr)
    return 0


def cmd_pdns(args: argparse.Namespace) -> int:
    from sensor import query

    names, data = query.pdns(_open(args), args.term, args.limit)
    sys.stdout.write(query.render(names, data, args.format))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    import json

    from sensor import query

    s = query.status(_open(args), args.minutes, db_path=load_config(args).db_path)
    sys.stdout.write(json.dumps(s, indent=2) + "\n" if args.json else query.render_status(s))
    return 0


def cmd_series(args: argparse.Namespace) -> int:
    import datetime as dt

    import numpy as np

    from sensor import series
    from sensor.query import parse_duration
    from sensor.series import hst, methods

    conn = _open(args)
    scope, key = ("network", args.network) if args.network else ("domain", args.domain) if args.domain else (None, None)
    minutes, values = series.load(conn, args.name, args.resolver, scope=scope, key=key)
    title = series.series_id(args.name, scope, key) + (f" for {args.resolver}" if args.resolver else "")
    if not len(minutes):
        print(f"no {title} data in the store")
        return 0
    scores = None
    if args.method == "hst":
        columns = {n: series.load(conn, n, args.resolver, until=int(minutes[-1]))[1][-len(minutes):]
                   for n in ("queries", "nxdomain", "servfail") if n != args.name or scope}
        # companions that never move add nothing but dilute the trees' splits
        columns = {n: np.concatenate([np.zeros(len(values) - len(v)), v]) for n, v in columns.items() if np.ptp(v)}
        columns[title] = values
        flags, which, scores, bases = hst.flags_over(minutes, columns, args.k or hst.DEFAULT_THRESHOLD)
        flags = np.where(which == list(columns).index(title), flags, 0)
        base = bases[title]
    else:
        base = series.fit(minutes, values)
        flags = methods.flags(args.method, values, base, args.k)
    band_k = methods.METHODS["mad"].k
    lo, hi = np.maximum(base.expected - band_k * base.scale, 0), base.expected + band_k * base.scale
    first = int(np.searchsorted(minutes, minutes[-1] - parse_duration(args.since), side="left"))
    print(f"{title}: baseline seasonality {base.seasonality}, method {args.method}")
    from sensor.detectors.series_anomalies import MIN_HISTORY_DAYS
    if base.profile is not None and base.profile.days < MIN_HISTORY_DAYS:
        print(f"note: {base.profile.days * 24:.1f} hours of history; the sensor writes series verdicts "
              f"after {MIN_HISTORY_DAYS:.0f} days, so the marks below are only indicative")
    print(f"{'minute (UTC)':<17} {'value':>10} {'expected':>10} {'band':>21}  ")
    for i in range(first, len(minutes)):
        if i > first and minutes[i] - minutes[i - 1] > 60:
            print(f"{'':<17} ({(minutes[i] - minutes[i - 1]) // 60 - 1} minute(s) the sensor did not observe)")
        t = dt.datetime.fromtimestamp(int(minutes[i]), tz=dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
        mark = {1: "  ^ above", -1: "  v below"}.get(int(flags[i]), "")
        print(f"{t:<17} {values[i]:>10.0f} {base.expected[i]:>10.1f} {lo[i]:>10.1f}-{hi[i]:<10.1f}{mark}")
    found = [e for e in series.episodes(flags, values, base.expected) if e.end > first]
    for e in found:
        t = dt.datetime.fromtimestamp(int(minutes[e.start]), tz=dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
        print(f"episode: {'spike' if e.direction > 0 else 'drop'} from {t} for {e.end - e.start} min, "
              f"peak {values[e.peak]:.0f} against {base.expected[e.peak]:.1f} expected")
    if args.png:
        from sensor.series.plot import plot
        plot(args.png, title, minutes[first:], values[first:], base.expected[first:], lo[first:], hi[first:],
             flags[first:], args.method, base.seasonality)
        print(f"plot written to {args.png}")
    return 0


def cmd_rules(args: argparse.Namespace) -> int:
    from sensor import config as cfg
    from sensor import rules

    directory = args.directory or cfg.resolve_rules_dir(load_config(args)).rules_dir
    if not args.directory:
        print(f"rules of {directory}")
    for line in rules.check(directory):
        print(line)
    if args.action == "test":
        from sensor.detectors.samples import check_samples

        problems = [p for r in rules.load_dir(directory) for p in check_samples(r)]
        for p in problems:
            print(f"FAIL {p}")
        if problems:
            return 1
        print("samples: every positive fires, no negative does")
    return 0


COMMANDS = {"dump": cmd_dump, "rules": cmd_rules, "series": cmd_series, "replay": cmd_replay, "run": cmd_run, "query": cmd_query,
            "verdicts": cmd_verdicts, "pdns": cmd_pdns, "status": cmd_status}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except SensorError as e:
        print(f"dnssensor: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        sys.stderr.close()          # reader went away (| head): not an error
        return 0


if __name__ == "__main__":
    sys.exit(main())

"""The dnssensor command: a thin layer over the library.

Library errors (sensor.errors.SensorError) become one-line messages and exit
status 2; nothing else is caught here.
"""
from __future__ import annotations

import argparse
import sys

from sensor.errors import SensorError

EXIT_USAGE = 2


def _ports(text: str) -> int:
    port = int(text)
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"port out of range: {text}")
    return port


def build_parser() -> argparse.ArgumentParser:
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
    dump.add_argument("files", nargs="+", metavar="FILE", help="pcap or pcapng capture")
    dump.add_argument("--format", choices=FORMATS, default="jsonl", help="output format (default jsonl)")
    dump.add_argument("--port", type=_ports, action="append", default=[], metavar="N",
                      help=f"also treat port N as DNS (repeatable; always {', '.join(map(str, DEFAULT_PORTS))})")
    dump.add_argument("--backend", choices=BACKENDS, default="compiled",
                      help="parser implementation (twin: the slow pure-Python reference)")
    dump.add_argument("--summary", action="store_true",
                      help="print frame, message and anomaly counters to stderr at the end")
    return top


def cmd_dump(args: argparse.Namespace) -> int:
    from sensor import dump
    from sensor.limits import DEFAULT_PORTS
    from sensor.parse import Parser

    parser = Parser(ports=tuple(DEFAULT_PORTS) + tuple(args.port), backend=args.backend)
    totals = dump.write(dump.batches_of(args.files, parser), args.format, sys.stdout)
    if args.summary:
        print(dump.summary(totals), file=sys.stderr)
    return 0


COMMANDS = {"dump": cmd_dump}


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

"""Rendering parsed batches for people and pipes: JSON lines and a fixed-width table."""
from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from typing import TextIO

from sensor.parse import Parser
from sensor.parse.batch import Batch

FORMATS = ("jsonl", "table")
TABLE_HEADER = (f"{'time (UTC)':<26} {'source':<41} {'destination':<41} {'t':1} {'id':>5} "
                f"{'qr':2} {'qtype':<6} {'rcode':<9} {'an/ns/ar':<10} qname  [anomalies]")


def batches_of(paths: Iterable[str], parser: Parser) -> Iterator[Batch]:
    """The captures' batches, one parser over all (a TCP stream or a fragmented datagram
    may go on in the next rotated file), then the counts of what was left unfinished."""
    for path in paths:
        yield from parser.parse_file(path)
    parser.drain()
    yield parser.take()


def _endpoint(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def table_line(r: dict) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r["ts"])) + f".{int(r['ts'] % 1 * 1e6):06d}"
    counts = f"{r['ancount']}/{r['nscount']}/{r['arcount']}"
    line = (f"{stamp:<26} {_endpoint(r['src'], r['sport']):<41} {_endpoint(r['dst'], r['dport']):<41} "
            f"{r['transport'][0]} {r['id']:>5} {'R' if r['qr'] else 'Q':2} {r['qtype_name']:<6} "
            f"{r['rcode_name'] if r['qr'] else '-':<9} {counts:<10} {r['qname'] or '-'}")
    if r["anomalies"]:
        line += "  [" + ",".join(r["anomalies"]) + "]"
    return line


def write(batches: Iterable[Batch], fmt: str, out: TextIO) -> dict[str, int]:
    """Write every message; return the summed counters of all batches."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}")
    totals: dict[str, int] = {}
    if fmt == "table":
        out.write(TABLE_HEADER + "\n")
    for batch in batches:
        for record in batch.records():
            if fmt == "jsonl":
                out.write(json.dumps(record, separators=(",", ":")) + "\n")
            else:
                out.write(table_line(record) + "\n")
        for key, value in batch.counters.items():
            totals[key] = totals.get(key, 0) + value
        for key, value in batch.anomaly_counts().items():
            totals["anomaly." + key] = totals.get("anomaly." + key, 0) + value
    return totals


def summary(totals: dict[str, int]) -> str:
    """A few lines a person reads after a dump: frames, messages, what was odd."""
    lines = [
        f"frames read        {totals.get('packets', 0):>10}  ({totals.get('bytes', 0)} bytes)",
        f"DNS messages       {totals.get('messages', 0):>10}",
        f"  via fast path    {totals.get('dns_udp', 0) - totals.get('empty_payload', 0):>10}"
        f"   via reassembly (fragments, TCP) {totals.get('slow_path', 0)} frames",
        f"frames not DNS     {totals.get('not_dns', 0) + totals.get('not_ip', 0):>10}"
        f"   cut short {totals.get('link_truncated', 0)}",
    ]
    odd = {k[8:]: v for k, v in totals.items() if k.startswith("anomaly.")}
    lines.append("anomalies          " + (", ".join(f"{k} {v}" for k, v in sorted(odd.items())) or "none"))
    skipped = {k: v for k, v in totals.items()
               if k.startswith(("frag_", "tcp_")) and v}
    if skipped:
        lines.append("reassembly         " + ", ".join(f"{k} {v}" for k, v in sorted(skipped.items())))
    return "\n".join(lines)

"""Reassembly state given up (fragments that never all came, a TCP stream that ends inside a
message, a bound reached) is counted as a drop, in the minute of the traffic it held: at the
end of a capture, when a quiet link's timeout passes, and however the captures are merged."""
from __future__ import annotations

import io
import json
import sqlite3
from dataclasses import replace
from pathlib import Path

import numpy as np

from conftest import REPO
from pcapgen import TCP_FIN, TCP_SYN, answer, ipv4_fragments, query, tcp_frame, udp_frame, write_pcap
from sensor import dump
from sensor.capture.offline import FrameBatch
from sensor.config import Config
from sensor.detectors import anomaly_burst
from sensor.engine.pipeline import Pipeline
from sensor.engine.replay import replay
from sensor.limits import DEFAULT_LIMITS
from sensor.parse import Parser, parse_file

CLIENT, RESOLVER = "192.0.2.10", "192.0.2.53"
T0 = 1_700_000_040.0        # the start of a minute


def big_response(txid: int) -> bytes:
    q = query("big.example", "TXT", txid=txid)
    return answer(q, *(f'big.example 60 TXT "{"x" * 60}{i}"' for i in range(4)))


def fragment_frames(ts: float, txid: int, keep: slice = slice(None)) -> list[tuple[float, bytes]]:
    """A response in IPv4 fragments (the ones `keep` picks), 1 ms apart."""
    pieces = ipv4_fragments(big_response(txid), RESOLVER, CLIENT, 53, 40000 + txid, ident=txid)
    assert len(pieces) >= 3
    return [(ts + i / 1000, f) for i, f in enumerate(pieces)][keep]


def sensor_drops(db: str) -> dict[int, dict[str, int]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT minute, drops FROM stats WHERE leg = 'sensor'").fetchall()
    return {minute: json.loads(d) for minute, d in rows if d and json.loads(d)}


def config(tmp_path: Path, name: str = "sensor.db") -> Config:
    rules = tmp_path / "engine-rules"
    if not rules.exists():
        rules.mkdir()
        (rules / "anomaly_burst.toml").write_text((REPO / "rules" / "anomaly_burst.toml").read_text())
    return replace(Config(), db_path=str(tmp_path / name), rules_dir=str(rules))


def test_a_datagram_whose_last_fragment_never_came_is_counted_at_the_end_in_its_minute(tmp_path):
    frames = (fragment_frames(T0, 1)                              # whole: one message
              + fragment_frames(T0 + 120, 2, slice(0, -1))        # its last fragment is missing
              + [(T0 + 200, udp_frame(query("after.example", txid=3).pack(), CLIENT, RESOLVER, 40003, 53))])
    path = write_pcap(tmp_path / "frags.pcap", frames)

    batch = parse_file(str(path))
    assert len(batch) == 2
    assert batch.counters["frag_datagrams"] == 1 and batch.counters["frag_timeout"] == 1

    conf = config(tmp_path)
    replay([str(path)], conf, progress_to=None)
    assert sensor_drops(conf.db_path) == {int(T0 + 120): {"frag_timeout": 1}}

    # Merged with a capture a day later, the loss stays in its minute (the batch's
    # newest minute is a day later) and is counted once.
    later = write_pcap(tmp_path / "later.pcap", [
        (T0 + 86400, udp_frame(query("later.example", txid=4).pack(), CLIENT, RESOLVER, 40004, 53))])
    merged = config(tmp_path, "merged.db")
    replay([str(later), str(path)], merged, progress_to=None)
    assert sensor_drops(merged.db_path) == {int(T0 + 120): {"frag_timeout": 1}}


def test_the_fragment_bound_counts_the_datagram_it_pushes_out(tmp_path):
    limits = replace(DEFAULT_LIMITS, max_fragment_datagrams=2)
    frames = []
    for k, at in enumerate((50, 65, 70)):    # three unfinished datagrams, within the timeout
        frames += fragment_frames(T0 + at, 10 + k, slice(0, 1))
    path = write_pcap(tmp_path / "bound.pcap", frames)
    parser = Parser(limits=limits)
    counters = [b.counters for b in parser.parse_file(str(path))]
    assert parser.take_losses() == {int(T0): {"frag_limit": 1}}
    parser.drain()
    assert parser.take_losses() == {int(T0 + 60): {"frag_timeout": 2}}
    counters.append(parser.take().counters)
    assert sum(c.get("frag_limit", 0) for c in counters) == 1
    assert sum(c.get("frag_timeout", 0) for c in counters) == 2


def test_a_quiet_link_gives_up_fragments_once_their_timeout_passes():
    """Live capture: no later fragment comes to expire the state, the worker's tick does."""
    pipeline = Pipeline(Config(), anomaly_burst.AnomalyBurstRule())
    pipeline.feed(_frame_batch(fragment_frames(T0, 5, slice(0, 1))), now=T0)
    pipeline.tick(T0 + 10)
    assert not any(row["drops"] for row in pipeline.take().sensor.values())
    pipeline.tick(T0 + DEFAULT_LIMITS.fragment_timeout_s + 1)
    assert {m: dict(row["drops"]) for m, row in pipeline.take().sensor.items() if row["drops"]} == \
        {int(T0): {"frag_timeout": 1}}


def test_tcp_streams_that_end_inside_a_message_are_counted(tmp_path):
    q = query("tcp.example", "TXT", txid=7).pack()
    framed = len(q).to_bytes(2, "big") + q
    frames = [
        # A whole message, then a FIN: nothing lost.
        (T0 + 0.0, tcp_frame(b"", CLIENT, RESOLVER, 41000, 53, 100, TCP_SYN)),
        (T0 + 0.1, tcp_frame(framed, CLIENT, RESOLVER, 41000, 53, 101)),
        (T0 + 0.2, tcp_frame(b"", CLIENT, RESOLVER, 41000, 53, 101 + len(framed), TCP_FIN)),
        # Half a message, then a FIN.
        (T0 + 61.0, tcp_frame(b"", CLIENT, RESOLVER, 41001, 53, 500, TCP_SYN)),
        (T0 + 61.1, tcp_frame(framed[:10], CLIENT, RESOLVER, 41001, 53, 501)),
        (T0 + 61.2, tcp_frame(b"", CLIENT, RESOLVER, 41001, 53, 511, TCP_FIN)),
        # Half a message when the capture ends.
        (T0 + 125.0, tcp_frame(b"", CLIENT, RESOLVER, 41002, 53, 900, TCP_SYN)),
        (T0 + 125.1, tcp_frame(framed[:-1], CLIENT, RESOLVER, 41002, 53, 901)),
    ]
    path = write_pcap(tmp_path / "tcp.pcap", frames)
    batch = parse_file(str(path))
    assert len(batch) == 1 and batch.counters["tcp_unfinished"] == 2

    conf = config(tmp_path)
    replay([str(path)], conf, progress_to=None)
    assert sensor_drops(conf.db_path) == {int(T0 + 60): {"tcp_unfinished": 1}, int(T0 + 120): {"tcp_unfinished": 1}}

    totals = dump.write(dump.batches_of([str(path)], Parser()), "jsonl", io.StringIO())
    assert "tcp_unfinished 2" in dump.summary(totals)


def _frame_batch(frames: list[tuple[float, bytes]]) -> FrameBatch:
    blob, meta = b"", []
    for ts, frame in frames:
        meta.append((int(ts), round(ts % 1 * 1e6), len(blob), len(frame)))
        blob += frame
    return FrameBatch(blob, np.array(meta, dtype=np.uint32), 1, 1)

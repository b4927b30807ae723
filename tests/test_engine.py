"""The engine over captures: tracking, aggregation, the SQLite store, analyst commands."""
from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import resource
import struct
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import dnslib
import numpy as np
import pcapy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import DATA, REPO, SHARED_PCAPS
from pcapgen import Conversation, answer, query, udp_frame, write_pcap
from sensor import _core, cli
from sensor.capture import offline
from sensor.capture._frames import PLAIN_CAPLEN_MAX
from sensor.capture.offline import first_frame_time, read_frames
from sensor.errors import CaptureError
from sensor.config import Config, address_key
from sensor.detectors import anomaly_burst
from sensor.engine.aggregate import NXDOMAIN_COLUMNS, Accumulator
from sensor.engine.pipeline import Pipeline, merged_frames, within
from sensor.engine.replay import replay
from sensor.engine.writer import Writer
from sensor.limits import DEFAULT_LIMITS
from sensor.schema import MESSAGE_DTYPE
from sensor.parse import Parser, parse_file
from sensor.store import Store
from sensor.track import ANSWERED, DUPLICATE, LEG_CLIENT, MISMATCHED, UNSOLICITED, Tracker

CLIENT, RESOLVER, AUTH = "192.0.2.10", "192.0.2.53", "198.51.100.1"
RESOLVER_UP = "203.0.113.53"


def parsed(conv: Conversation, tmp_path: Path):
    return parse_file(str(conv.write(tmp_path / "c.pcap")))


def config(tmp_path: Path, **kw) -> Config:
    """The engine on its own: only the engine's anomaly rule (detectors have test_rules.py)."""
    rules = tmp_path / "engine-rules"
    if not rules.exists():
        rules.mkdir()
        (rules / "anomaly_burst.toml").write_text((REPO / "rules" / "anomaly_burst.toml").read_text())
    kw.setdefault("db_path", str(tmp_path / "sensor.db"))
    kw.setdefault("rules_dir", str(rules))
    return replace(Config(), **kw)


def db_rows(path: Path, sql: str, params=()) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql, params).fetchall()


# ------------------------------------------------------------------ tracking

def test_query_and_response_match_with_rtt(tmp_path):
    conv = Conversation()
    conv.exchange(CLIENT, RESOLVER, "www.example.com", "www.example.com 60 A 192.0.2.1", rtt=0.025)
    batch = parsed(conv, tmp_path)
    r = Tracker().process(batch.messages)
    assert r.state.tolist() == [0, ANSWERED]
    assert r.rtt[1] == pytest.approx(0.025, abs=1e-5)


def test_spoofed_responses_are_mismatched_and_extra_responses_duplicate(tmp_path):
    conv = Conversation()
    q = query("bank.example", txid=4242)
    conv.send(q.pack(), RESOLVER_UP, AUTH, 33333, 53)
    for txid in range(100, 150):         # a Kaminsky-style flood: right question, wrong ids
        spoof = q.reply()
        spoof.header.id = txid
        conv.send(spoof.pack(), AUTH, RESOLVER_UP, 53, 33333, after=0.0001)
    real = q.reply()
    conv.send(real.pack(), AUTH, RESOLVER_UP, 53, 33333)
    conv.send(real.pack(), AUTH, RESOLVER_UP, 53, 33333)
    stray = query("other.example", txid=7).reply()
    conv.send(stray.pack(), AUTH, RESOLVER_UP, 53, 40000)
    batch = parsed(conv, tmp_path)
    tracker = Tracker(resolver_addresses=frozenset({address_key(RESOLVER_UP)}))
    r = tracker.process(batch.messages)
    assert np.count_nonzero(r.state == MISMATCHED) == 50
    assert np.count_nonzero(r.state == ANSWERED) == 1
    assert np.count_nonzero(r.state == DUPLICATE) == 1
    assert np.count_nonzero(r.state == UNSOLICITED) == 1
    assert set(r.leg.tolist()) == {1}               # the resolver's own upstream queries
    spoofed = r.state == MISMATCHED                 # all race the one query, named by its key
    assert len(set(r.raced[spoofed].tolist())) == 1 and r.raced[spoofed][0] != 0
    assert not np.any(r.raced[~spoofed])


def test_answers_to_queries_the_capture_lost_each_race_another_query(tmp_path):
    """A busy client asks one name again and again; the capture loses some of its queries.
    Their answers meet other queries for the name outstanding: mismatched, but each races
    a different query, where a spoofer's flood races one. Across batches too."""
    conv = Conversation()
    lost = set(range(5, 60, 6))
    for i in range(60):
        q = query("www.news.example", txid=1000 + i)
        if i not in lost:
            conv.send(q.pack(), CLIENT, RESOLVER, 20000 + i, 53, after=0.01)
        else:
            conv.ts += 0.01
        # each answer comes after the next query went out
        conv.frames.append((conv.ts + 0.015, udp_frame(q.reply().pack(), RESOLVER, CLIENT, 53, 20000 + i)))
    conv.frames.sort(key=lambda f: f[0])
    msgs = parsed(conv, tmp_path).messages
    tracker = Tracker()
    halves = [tracker.process(msgs[:50]), tracker.process(msgs[50:])]
    state = np.concatenate([h.state for h in halves])
    raced = np.concatenate([h.raced for h in halves])
    spoofed = state == MISMATCHED
    assert np.count_nonzero(spoofed) == len(lost)
    assert len(set(raced[spoofed].tolist())) == len(lost) and 0 not in raced[spoofed]


def test_responses_over_tcp_without_their_query_are_unsolicited_not_spoofed(tmp_path):
    """A TCP stream whose capture lost some queries (a gap, a mid-stream start): the
    answers to them are capture loss, not a spoofing race, even when the same question
    is outstanding under another id."""
    conv = Conversation()
    q = query("1.2.0.192.in-addr.arpa", "PTR", txid=1)
    conv.send(q.pack(), CLIENT, RESOLVER, 41000, 53)
    for txid in range(2, 14):                  # their queries fell into the gap
        lost = q.reply()
        lost.header.id = txid
        conv.send(lost.pack(), RESOLVER, CLIENT, 53, 41000)
    msgs = parsed(conv, tmp_path).messages.copy()
    assert np.count_nonzero(Tracker().process(msgs).state == MISMATCHED) == 12     # as UDP
    msgs["transport"] = 6
    r = Tracker().process(msgs)
    assert np.count_nonzero(r.state == UNSOLICITED) == 12 and not np.any(r.state == MISMATCHED)


def test_pending_queries_carry_over_time_out_and_are_bounded(tmp_path):
    conv = Conversation()
    q = query("slow.example", txid=9)
    conv.send(q.pack(), CLIENT, RESOLVER, 41000, 53)
    first = parsed(conv, tmp_path)
    conv2 = Conversation(start=conv.ts + 2.0)
    conv2.send(q.reply().pack(), RESOLVER, CLIENT, 53, 41000)
    second = parse_file(str(conv2.write(tmp_path / "c2.pcap")))
    tracker = Tracker()
    tracker.process(first.messages)
    assert len(tracker.pending) == 1
    assert tracker.process(second.messages).state.tolist() == [ANSWERED]

    limits = replace(DEFAULT_LIMITS, max_pending_queries=10, query_timeout_s=5.0)
    conv3 = Conversation()
    for i in range(25):
        conv3.send(query(f"n{i}.example", txid=i).pack(), CLIENT, RESOLVER, 42000 + i, 53)
    tracker = Tracker(limits)
    r = tracker.process(parse_file(str(conv3.write(tmp_path / "c3.pcap"))).messages)
    assert len(r.evicted) == 15 and len(tracker.pending) == 10
    late = tracker.process(np.empty(0, dtype=first.messages.dtype), now=conv3.ts + 6.0)
    assert len(late.unanswered) == 10 and len(tracker.pending) == 0
    assert tracker.totals["pending_evicted"] == 15 and tracker.totals["unanswered"] == 10


# ------------------------------------------------------------------ replay into the store

def test_replay_stats_and_pdns_agree_with_the_parsed_messages(tmp_path):
    path = DATA / "dnscap-baseline-udp-82-msgs.pcap"
    conf = config(tmp_path)
    result = replay([str(path)], conf, progress_to=None)
    batch = parse_file(str(path))
    queries = int(np.count_nonzero(batch.messages["qr"] == 0))
    responses = len(batch) - queries
    assert result.messages == len(batch)
    got = db_rows(conf.db_path, "SELECT sum(queries), sum(responses), sum(answered), sum(unanswered), "
                                "sum(bytes_queries) + sum(bytes_responses) FROM stats WHERE leg != 'sensor'")[0]
    assert got == (queries, responses, responses, 0, int(batch.messages["size"].sum()))
    expected = set()
    for rec in batch.records():
        if rec["qr"] and rec["rcode"] == 0:
            expected |= {(a["name"], a["type_name"], a["data"]) for a in rec["answers"]}
    stored = set(db_rows(conf.db_path, "SELECT rrname, rrtype, rdata FROM pdns"))
    assert stored == expected and stored
    packets = db_rows(conf.db_path, "SELECT sum(packets) FROM stats WHERE leg = 'sensor'")[0][0]
    assert packets == batch.counters["packets"]


def test_replay_gives_the_sensor_row_of_every_minute_its_captures_observed(tmp_path):
    """Frames read are counted in the minute of their timestamp (a batch used to put them all
    in its last minute); every minute inside a capture has the sensor's row, silent or not,
    up to CAPTURE_SILENCE_S; the time between two captures has none."""
    from collections import Counter

    from timeshift import read_pcap, write_pcap as write_frames
    from sensor.engine.pipeline import CAPTURE_SILENCE_S

    frames = [raw for _, raw in read_pcap(DATA / "dnscap-baseline-udp-82-msgs.pcap")]
    t0 = 1_767_225_600                       # a minute start
    silent = range(1, 6)                     # minutes after t0 without a frame
    assert len(silent) * 60 <= CAPTURE_SILENCE_S
    first = [(t0 + i * 0.5, raw) for i, raw in enumerate(frames[:50])] + \
        [(t0 + 60 * (silent[-1] + 1) + i * 0.5, raw) for i, raw in enumerate(frames[50:])]
    later = t0 + 60 * (silent[-1] + 1) + CAPTURE_SILENCE_S + 600
    second = [(later + i * 0.5, raw) for i, raw in enumerate(frames)]
    conf = config(tmp_path)
    replay([str(write_frames(tmp_path / "b.pcap", second)), str(write_frames(tmp_path / "a.pcap", first))],
           conf, progress_to=None)
    rows = dict(db_rows(conf.db_path, "SELECT minute, packets FROM stats WHERE leg = 'sensor'"))
    want = Counter(int(ts // 60 * 60) for ts, _ in first + second)
    want.update({t0 + 60 * m: 0 for m in silent})
    assert rows == dict(want) and len(want) == 2 + len(silent) + 2 and len(frames) > 100


def test_small_reads_are_gathered_into_batches_before_tracking(tmp_path):
    """libpcap is read a few frames at a time; tracking and rules run once a batch is
    full, and the partial batch when the aggregate is taken. What the store gets is
    what one big batch gives."""
    from sensor.engine.pipeline import Pipeline
    from sensor.limits import Limits
    path = str(DATA / "demo-office-resolver.pcap")
    small = replace(config(tmp_path), limits=Limits(frames_per_read=7, messages_per_batch=50))
    pipeline = Pipeline(small, anomaly_burst.AnomalyBurstRule())
    processed = []
    for frames in merged_frames([path], small.limits.frames_per_read):
        assert frames.meta.shape[0] <= 7
        before = pipeline.parser.pending
        processed.append(pipeline.feed(frames))
        if processed[-1]:
            assert before + frames.meta.shape[0] >= processed[-1] >= 50 and pipeline.parser.pending == 0
        else:
            assert 0 < pipeline.parser.pending < 50
    assert sum(processed) == pipeline.messages < len(parse_file(path))      # a partial batch is left
    agg = pipeline.take()
    assert pipeline.messages == len(parse_file(path)) and pipeline.parser.pending == 0

    whole = Pipeline(replace(config(tmp_path), limits=Limits(frames_per_read=100000)), anomaly_burst.AnomalyBurstRule())
    for frames in merged_frames([path], 100000):
        whole.feed(frames)
    expected = whole.take()
    assert whole.packets == pipeline.packets
    assert agg.pdns.keys is not None and sorted(agg.pdns.keys.tolist()) == sorted(expected.pdns.keys.tolist())
    assert {k: dict(v) for k, v in agg.stats.items()} == {k: dict(v) for k, v in expected.stats.items()}


def test_parse_file_gathers_reads_into_batches():
    from sensor.limits import Limits
    path = str(DATA / "dnscap-baseline-udp-82-msgs.pcap")
    batches = list(Parser(limits=Limits(frames_per_read=3, messages_per_batch=20)).parse_file(path))
    sizes = [len(b) for b in batches]
    assert all(20 <= n < 23 for n in sizes[:-1]) and sizes[-1] < 23 and len(sizes) > 2
    whole = parse_file(path)
    assert sum(b.counters["packets"] for b in batches) == whole.counters["packets"]
    assert [r for b in batches for r in b.records()] == list(whole.records())


def test_stats_rcode_counters_agree_with_the_responses(tmp_path):
    path = DATA / "demo-office-resolver.pcap"
    conf = config(tmp_path)
    replay([str(path)], conf, progress_to=None)
    m = parse_file(str(path)).messages
    responses = m["qr"] == 1
    want = tuple(int(np.count_nonzero(responses & (m["rcode"] == code))) for code in (0, 3, 2, 5))
    got = db_rows(conf.db_path, "SELECT sum(noerror), sum(nxdomain), sum(servfail), sum(refused) FROM stats "
                                "WHERE leg != 'sensor'")[0]
    assert got == want and want[1] and want[0]
    rcodes = [json.loads(r[0]) for r in db_rows(conf.db_path, "SELECT rcodes FROM stats WHERE leg != 'sensor'")]
    assert sum(r.get("NXDOMAIN", 0) for r in rcodes) == want[1]


def test_breakdown_by_network_and_domain_adds_up_to_the_client_leg(tmp_path):
    """The scoped series' counters: per configured client network ('other' outside them),
    per registered domain with only the busiest of each minute kept apart; every message of
    the client leg is counted once in each scope."""
    from sensor.limits import DEFAULT_LIMITS

    path = DATA / "demo-office-resolver.pcap"
    conf = replace(config(tmp_path), client_networks=("10.1.0.0/25",),
                   limits=replace(DEFAULT_LIMITS, max_domains_per_minute=2))
    replay([str(path)], conf, progress_to=None)
    client_leg = db_rows(conf.db_path, "SELECT sum(queries), sum(responses), sum(nxdomain) FROM stats "
                                       "WHERE leg = 'client'")[0]
    for scope in ("network", "domain"):
        assert db_rows(conf.db_path, "SELECT sum(queries), sum(responses), sum(nxdomain) FROM breakdown "
                                     "WHERE scope = ?", (scope,))[0] == client_leg
    networks = dict(db_rows(conf.db_path, "SELECT key, sum(queries) FROM breakdown WHERE scope = 'network' "
                                          "GROUP BY key"))
    assert set(networks) == {"10.1.0.0/25", "other"}       # the off-net clients of the demo
    rows = db_rows(conf.db_path, "SELECT minute, count(*) FROM breakdown WHERE scope = 'domain' AND key != 'other' "
                                 "GROUP BY minute")
    assert rows and all(n <= 2 for _, n in rows)             # bounded per minute
    assert db_rows(conf.db_path, "SELECT count(*) FROM breakdown WHERE scope = 'domain' AND key = 'other'")[0][0] > 0
    # each domain kept apart has its own queries, counted from the messages themselves
    batch = parse_file(str(path))
    leg = Tracker(DEFAULT_LIMITS, conf.resolver_set()).process(batch.messages).leg
    offsets, lengths = batch.regdom_spans
    want: dict[tuple[int, str], int] = {}
    for i in np.flatnonzero((leg == LEG_CLIENT) & (batch.messages["qr"] == 0)).tolist():
        key = (int(batch.messages["ts"][i] // 60 * 60), batch.arena[offsets[i]:offsets[i] + lengths[i]].decode() or ".")
        want[key] = want.get(key, 0) + 1
    kept = db_rows(conf.db_path, "SELECT minute, key, queries FROM breakdown WHERE scope = 'domain' AND key != 'other'")
    assert len(kept) > 2 and {(m, k): q for m, k, q in kept} == {(m, k): want[(m, k)] for m, k, _ in kept}


def test_client_internal_from_the_accumulators_lookup_is_the_networks_own():
    """The accumulator looks each message's client network up once, for the breakdown and
    the rules' client_internal / client_external: the same as the features' own lookup."""
    from sensor.features import NetworkSet, build

    batch = parse_file(str(DATA / "demo-office-resolver.pcap"))
    track = Tracker(DEFAULT_LIMITS, Config(resolver_addresses=("10.1.0.53", "198.51.100.53")).resolver_set()
                    ).process(batch.messages)
    networks = NetworkSet(("10.1.0.0/25",))
    given = build(batch, track, networks, client_network=networks.index(track.client)).columns
    looked_up = build(batch, track, networks).columns
    for name in ("client_internal", "client_external"):
        assert np.array_equal(given[name], looked_up[name])
    assert given["client_internal"].any() and given["client_external"].any()


def test_replay_twice_adds_counts_and_keeps_first_and_last_seen(tmp_path):
    path = DATA / "dnscap-baseline-udp-82-msgs.pcap"
    conf = config(tmp_path)
    replay([str(path)], conf, progress_to=None)
    once = dict(((n, t, d), (f, l, c)) for n, t, d, f, l, c in db_rows(conf.db_path, "SELECT * FROM pdns"))
    replay([str(path)], conf, progress_to=None)
    twice = dict(((n, t, d), (f, l, c)) for n, t, d, f, l, c in db_rows(conf.db_path, "SELECT * FROM pdns"))
    assert once.keys() == twice.keys()
    for key, (f, l, c) in once.items():
        assert twice[key] == (f, l, 2 * c)


def test_nxdomain_names_are_kept_apart(tmp_path):
    conv = Conversation()
    for i in range(3):
        conv.exchange(CLIENT, RESOLVER, f"missing{i}.example.com", rcode=3, txid=i, sport=40000 + i)
    conv.exchange(CLIENT, RESOLVER, "missing0.example.com", rcode=3, txid=9, sport=41000)
    conf = config(tmp_path)
    replay([str(conv.write(tmp_path / "nx.pcap"))], conf, progress_to=None)
    assert db_rows(conf.db_path, "SELECT count(*) FROM pdns")[0][0] == 0
    rows = dict((q, c) for q, c in db_rows(conf.db_path, "SELECT qname, count FROM pdns_nxdomain"))
    assert rows == {"missing0.example.com": 2, "missing1.example.com": 1, "missing2.example.com": 1}
    assert db_rows(conf.db_path, "SELECT sum(nxdomain) FROM stats")[0][0] == 4


def _malformed_capture(tmp_path: Path, count: int, client: str = CLIENT) -> Path:
    conv = Conversation()
    for i in range(count):
        # qname is a compression pointer to itself: bad_pointer
        payload = bytes([0, i & 255, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xC0, 12, 0, 1, 0, 1])
        conv.send(payload, client, RESOLVER, 50000 + i, 53, after=0.01)
    return conv.write(tmp_path / f"bad{count}-{client}.pcap")


def test_malformed_burst_gives_one_anomaly_verdict_per_window(tmp_path):
    conf = config(tmp_path)
    rule = anomaly_burst.load(conf.rules_dir)
    replay([str(_malformed_capture(tmp_path, rule.threshold - 1, "192.0.2.99"))], conf, progress_to=None)
    assert db_rows(conf.db_path, "SELECT count(*) FROM verdicts")[0][0] == 0
    assert db_rows(conf.db_path, "SELECT count FROM anomalies WHERE name = 'bad_pointer'")[0][0] == rule.threshold - 1
    burst = _malformed_capture(tmp_path, rule.threshold + 5)
    result = replay([str(burst)], conf, progress_to=None)
    assert result.verdicts == 1
    (kind, client, server, count, evidence, detector), = db_rows(
        conf.db_path, "SELECT kind, client, server, count, evidence, detector FROM verdicts")
    assert (kind, client, server, count, detector) == ("anomaly", CLIENT, RESOLVER, rule.threshold + 5,
                                                       "anomaly_burst")
    ev = json.loads(evidence)
    assert ev["anomalies"]["bad_pointer"] == rule.threshold + 5 and ev["threshold"] == rule.threshold


def test_full_database_keeps_the_backlog_until_it_can_write(tmp_path):
    conf = config(tmp_path)
    store = Store(conf.db_path)
    rule = anomaly_burst.load(conf.rules_dir)
    writer = Writer(conf, store, rule)
    agg = _burst_aggregate(conf, rule, [_many_answers(tmp_path), _malformed_capture(tmp_path, 40)])
    pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
    store.conn.execute(f"PRAGMA max_page_count = {pages}")      # SQLITE_FULL from here on
    writer.apply(agg)
    assert writer.flush() == 0
    assert writer.counters["store_errors"] == 1
    assert db_rows(conf.db_path, "SELECT count(*) FROM verdicts")[0][0] == 0
    store.conn.execute("PRAGMA max_page_count = 1073741823")
    assert writer.flush(final=True) == 1                      # the verdict was kept, not lost
    assert db_rows(conf.db_path, "SELECT count(*) FROM pdns")[0][0] == 500
    assert db_rows(conf.db_path, "SELECT sum(queries) FROM stats")[0][0] == 500 + 40
    store.close()


def test_a_store_that_refuses_writes_keeps_a_bounded_backlog_of_clients(tmp_path):
    """Spoofed sources: every query a new client. While the store refuses writes the
    writer merges each shipment into its backlog, which kept every client of every
    shipment; compacted after each failed write it holds at most max_clients_per_minute
    labels and one 'other' row a minute, and stores the same totals once it can write."""
    conf = replace(config(tmp_path), limits=replace(config(tmp_path).limits, max_clients_per_minute=50))
    store = Store(conf.db_path)
    rule = anomaly_burst.load(conf.rules_dir)
    writer = Writer(conf, store, rule)
    pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
    store.conn.execute(f"PRAGMA max_page_count = {pages}")      # SQLITE_FULL from here on
    for k in range(4):
        conv = Conversation()
        for i in range(200):      # answers too: new passive-DNS rows that cannot be written
            name = f"www{i}.s{k}.example.org"
            conv.exchange(f"198.18.{k}.{i}", RESOLVER, name, f"{name} 60 A 192.0.2.{i}", txid=i, sport=20000 + i)
        captures = [conv.write(tmp_path / f"spoofed{k}.pcap")] + ([_many_answers(tmp_path)] if k == 0 else [])
        writer.apply(_burst_aggregate(conf, rule, captures))
        assert writer.flush() == 0 and writer.counters["store_errors"] == k + 1
        assert len(writer.backlog.clients) <= 50 + 1
    store.conn.execute("PRAGMA max_page_count = 1073741823")
    writer.flush(final=True)
    rows = db_rows(conf.db_path, "SELECT client, queries FROM clients")
    assert sum(q for _, q in rows) == 800 + 500
    assert len(rows) <= 50 + 1 and ("other", 1300 - sum(q for c, q in rows if c != "other")) in rows
    store.close()


def test_a_flood_of_new_clients_keeps_the_per_minute_tables_bounded_between_takes(tmp_path):
    """Spoofed sources, each in a /24 of its own: between two takes every query brings a new
    client and a new network. The accumulator holds at most about twice each table's
    per-minute limit (plus one batch) instead of a row per source, and what the writer
    stores adds up to every query, with each minute's busiest client keeping its row."""
    limits = replace(config(tmp_path).limits, max_clients_per_minute=20, max_networks_per_minute=10)
    conf = replace(config(tmp_path), limits=limits)
    rule = anomaly_burst.load(conf.rules_dir)
    conv = Conversation()
    for i in range(300):
        conv.exchange(f"198.{18 + i // 250}.{i % 250}.7", RESOLVER, f"www{i}.example.org",
                      f"www{i}.example.org 60 A 192.0.2.1", txid=i, sport=20000 + i)
    for i in range(30):                     # one busy client among them
        conv.exchange("192.0.2.99", RESOLVER, "busy.example.org", "busy.example.org 60 A 192.0.2.1",
                      txid=i, sport=30000 + i)
    acc = Accumulator(conf.limits, rule.mask, rule.window_s)
    parser, tracker = Parser(), Tracker()
    held = []
    for fb in read_frames(str(conv.write(tmp_path / "spoofed.pcap")), 50):
        parser.feed(fb)
        batch = parser.take()
        acc.add(batch, tracker.process(batch.messages))
        held.append((len(acc.agg.clients), len(acc.agg.networks)))
    assert max(c for c, _ in held) <= 2 * 20 + 50 and max(n for _, n in held) <= 2 * 10 + 50
    assert held[-1][0] < 100                # without the bound: 301 clients
    store = Store(conf.db_path)
    writer = Writer(conf, store, rule)
    writer.apply(acc.take())
    writer.flush(final=True)
    rows = db_rows(conf.db_path, "SELECT client, queries FROM clients")
    assert sum(q for _, q in rows) == 330
    assert ("192.0.2.99", 30) in rows and len([c for c, _ in rows if c != "other"]) <= 20
    networks = db_rows(conf.db_path, "SELECT key, queries FROM breakdown WHERE scope = 'network'")
    assert sum(q for _, q in networks) == 330 and len(networks) <= 10 + 1
    store.close()


def test_the_writer_takes_a_shipment_into_an_empty_backlog_without_copying_it(tmp_path):
    """The first aggregate after a flush becomes the backlog itself (a copy would hold a
    flood's second twice); later ones merge into it, and everything is stored."""
    conf = config(tmp_path)
    rule = anomaly_burst.load(conf.rules_dir)
    store = Store(conf.db_path)
    writer = Writer(conf, store, rule)
    first = _burst_aggregate(conf, rule, [_many_answers(tmp_path)])
    writer.apply(first)
    assert writer.backlog is first and first.messages == 1000
    second = _burst_aggregate(conf, rule, [_malformed_capture(tmp_path, 3)])
    writer.apply(second)
    assert writer.backlog is first and first.messages == 1000 + 3
    writer.flush(final=True)
    assert writer.backlog is not first and writer.backlog.is_empty()
    assert db_rows(conf.db_path, "SELECT sum(queries) FROM stats WHERE leg != 'sensor'")[0][0] == 500 + 3
    store.close()


def test_shipments_kept_at_a_stop_are_stored_by_the_next_writer_once(tmp_path, capsys):
    """A worker that stopped while the writer lagged kept its shipments in a file (the
    channel's keep()); the next writer stores them before anything else, removes the file
    only once a flush has stored them (the disk may be full), and sets aside a file that
    is not whole, counted."""
    import pickle

    from sensor.config import spool_dir
    from sensor.engine.channel import keep
    from sensor.engine.live import KeptShipments

    conf = config(tmp_path)
    rule = anomaly_burst.load(conf.rules_dir)
    agg = _burst_aggregate(conf, rule, [_many_answers(tmp_path), _malformed_capture(tmp_path, 40)])
    half = _burst_aggregate(conf, rule, [_malformed_capture(tmp_path, 7, "192.0.2.77")])
    folder = spool_dir(conf.db_path)
    whole = keep(folder, "eth0/0", [pickle.dumps(agg), pickle.dumps(half)])
    damaged = keep(folder, "eth0/1", [pickle.dumps(half)])
    with open(damaged, "r+b") as f:
        f.truncate(os.path.getsize(damaged) - 1)
    gone = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True).stdout.strip()
    unfinished = os.path.join(folder, f"shipments-eth0_2-{gone}-1.kept.part")     # its writer was killed
    writing = os.path.join(folder, f"shipments-eth0_3-{os.getpid()}-1.kept.part")  # its writer lives
    for path in (unfinished, writing):
        with open(path, "wb") as f:
            f.write(b"\0\0")

    store = Store(conf.db_path)
    writer = Writer(conf, store, rule)
    assert cli.main(["status", "--db", conf.db_path]) == 0
    assert "WARNING 2 file(s) of shipments" in capsys.readouterr().out
    kept = KeptShipments(folder)
    assert kept.take(writer) == 2
    assert kept.unreadable == 2 and os.path.exists(damaged + ".bad") and not os.path.exists(damaged)
    assert not os.path.exists(unfinished) and os.path.exists(writing)
    err = capsys.readouterr().err
    assert "cut off" in err and "stopped while it kept shipments" in err
    pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
    store.conn.execute(f"PRAGMA max_page_count = {pages}")      # SQLITE_FULL
    writer.flush()
    kept.after_flush(writer)
    assert os.path.exists(whole)                                # not stored yet: still kept
    store.conn.execute("PRAGMA max_page_count = 1073741823")
    assert writer.flush(final=True) == 1
    kept.after_flush(writer)
    assert not os.path.exists(whole)
    assert cli.main(["status", "--db", conf.db_path, "--minutes", "100000000"]) == 0
    shown = capsys.readouterr().out
    assert "file(s) of shipments (" not in shown and "WARNING 1 file(s) of shipments kept at a stop could not" in shown
    assert db_rows(conf.db_path, "SELECT count(*) FROM pdns")[0][0] == 500
    assert db_rows(conf.db_path, "SELECT sum(queries) FROM stats")[0][0] == 500 + 40 + 7
    store.close()

    again = KeptShipments(folder)                               # the start after: nothing twice
    assert again.take(Writer(conf, Store(conf.db_path), rule)) == 0 and again.unreadable == 0


def test_kept_shipments_of_another_version_are_merged_or_set_aside(tmp_path, capsys):
    """A file kept at a stop is read by the version started after it, perhaps an upgrade:
    a passive-DNS table pickled before rows had a registered-domain group still merges;
    one whose merge fails is set aside instead of stopping every writer that starts."""
    import pickle

    from sensor.config import spool_dir
    from sensor.engine.aggregate import Aggregate
    from sensor.engine.channel import keep
    from sensor.engine.live import KeptShipments

    conf = config(tmp_path)
    rule = anomaly_burst.load(conf.rules_dir)
    older = _burst_aggregate(conf, rule, [_many_answers(tmp_path)])
    del older.pdns.group                      # as a table was pickled before it had one
    broken = Aggregate()
    broken.stats = [("not", "a", "mapping")]  # merges into nothing this version knows
    folder = spool_dir(conf.db_path)
    keep(folder, "eth0/0", [pickle.dumps(older)])
    time.sleep(0.01)
    bad = keep(folder, "eth0/1", [pickle.dumps(broken)])
    store = Store(conf.db_path)
    writer = Writer(conf, store, rule)
    kept = KeptShipments(folder)
    assert kept.take(writer) == 1 and kept.unreadable == 1
    assert os.path.exists(bad + ".bad") and bad in capsys.readouterr().err
    writer.flush(final=True)
    kept.after_flush(writer)
    assert db_rows(conf.db_path, "SELECT count(*) FROM pdns")[0][0] == 500
    store.close()


def _store_and_writer_with_syslog(tmp_path, receiver):
    from sensor.config import SyslogTarget
    from sensor.sinks.syslog import SyslogSender

    conf = config(tmp_path)
    store = Store(conf.db_path)
    rule = anomaly_burst.load(conf.rules_dir)
    sender = SyslogSender(SyslogTarget("127.0.0.1", receiver.port, "tcp", "json"), str(tmp_path / "spool"), "s1")
    return conf, store, Writer(conf, store, rule, [sender]), sender, rule


def _many_answers(tmp_path) -> Path:
    many = Conversation()
    for i in range(500):      # enough rows that the tables must grow
        many.exchange(CLIENT, RESOLVER, f"host{i}.example.org", f"host{i}.example.org 60 A 192.0.2.{i % 250}",
                      txid=i, sport=20000 + i)
    return many.write(tmp_path / "many.pcap")


def _burst_aggregate(conf, rule, captures):
    acc = Accumulator(conf.limits, rule.mask, rule.window_s)
    parser, tracker = Parser(), Tracker()
    for path in captures:
        for fb in read_frames(str(path), 1000):
            parser.feed(fb)
            batch = parser.take()
            acc.add(batch, tracker.process(batch.messages))
    return acc.take()


def test_verdicts_reach_syslog_while_the_store_refuses_them_and_only_once(tmp_path, capsys):
    from realparts import Rsyslog

    receiver = Rsyslog(tmp_path / "rsyslog").start()
    try:
        conf, store, writer, sender, rule = _store_and_writer_with_syslog(tmp_path, receiver)
        pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
        store.conn.execute(f"PRAGMA max_page_count = {pages}")      # SQLITE_FULL from here on
        writer.apply(_burst_aggregate(conf, rule, [_many_answers(tmp_path), _malformed_capture(tmp_path, 40)]))
        assert writer.flush() == 0 and writer.store_error is not None
        writer.apply(_burst_aggregate(conf, rule, [_malformed_capture(tmp_path, 3)]))
        assert writer.flush() == 0                          # still full: not sent a second time
        assert writer.counters["store_errors"] == 2 and writer.counters["verdicts_sent_unstored"] == 1
        err = capsys.readouterr().err
        assert err.count("database or disk is full") == 1   # said once, not at every flush
        lines = receiver.wait_for(lambda ls: len(ls) >= 1)
        assert json.loads(lines[0].split("] ", 1)[1])["client"] == CLIENT
        assert 'id="' not in lines[0]                       # no row id yet
        store.conn.execute("PRAGMA max_page_count = 1073741823")
        assert writer.flush(final=True) == 1                # stored now, with every message
        assert "writing again after 2 failed write(s)" in capsys.readouterr().err
        assert db_rows(conf.db_path, "SELECT count FROM verdicts")[0][0] == 43
        sender.close(10)
        time.sleep(0.5)
        assert len(receiver.lines()) == 1                   # and syslog did not hear of it twice
        assert writer.store_error is None and writer.unstored == [] and not writer.sent_unstored
    finally:
        receiver.stop()
    store.close()


def test_a_final_write_that_fails_prints_its_verdicts(tmp_path, capsys):
    conf = config(tmp_path)
    store = Store(conf.db_path)
    rule = anomaly_burst.load(conf.rules_dir)
    writer = Writer(conf, store, rule)
    pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
    store.conn.execute(f"PRAGMA max_page_count = {pages}")
    writer.apply(_burst_aggregate(conf, rule, [_many_answers(tmp_path), _malformed_capture(tmp_path, 40)]))
    assert writer.flush(final=True) == 0
    (v,) = writer.unstored
    assert v["client"] == CLIENT and v["count"] == 40
    err = capsys.readouterr().err
    assert "nothing more will be written" in err
    printed = [json.loads(line.split(": ", 2)[2]) for line in err.splitlines()
               if line.startswith("dnssensor: verdict not stored: ")]
    assert [(p["kind"], p["client"], p["count"]) for p in printed] == [("anomaly", CLIENT, 40)]
    store.close()


def test_retention_deletes_only_old_rows(tmp_path):
    store = Store(str(tmp_path / "r.db"))
    with store.transaction() as conn:
        store.add_pdns(conn, [("old.example", "A", "192.0.2.1", 1000.0, 1000.0, 1),
                              ("new.example", "A", "192.0.2.2", 100 * 86400.0, 100 * 86400.0, 1)])
        store.add_anomalies(conn, [(60, "truncated", 1), (100 * 86400, "truncated", 2)])
        store.add_breakdown(conn, "domain", [(60, "old.example", 1, 1, 0, 0, 40, 60)])
        store.put_baseline(conn, "nxdomain@domain=old.example", 60, "daily", "{}", None)
        store.put_baseline(conn, "queries", 100 * 86400, "weekly", "{}", None)
    deleted = store.enforce_retention(100 * 86400.0, {**Config().retention_days, "pdns": 30})
    assert {k: v for k, v in deleted.items() if v} == {"pdns": 1, "anomalies": 1, "breakdown": 1, "baselines": 1}
    assert [r[0] for r in store.conn.execute("SELECT series FROM baselines")] == ["queries"]
    assert [r[0] for r in store.conn.execute("SELECT rrname FROM pdns")] == ["new.example"]
    store.close()



@pytest.mark.parametrize("rows_per_statement", [1, 7, 200])
def test_upserts_written_many_rows_to_a_statement_add_up_as_row_by_row(tmp_path, monkeypatch, rows_per_statement):
    """Passive-DNS, client and anomaly rows written several to a statement, a flush's rows
    repeating keys among themselves and with the rows stored before: first and last seen
    widen and counts add exactly as the rows one by one would."""
    import random
    import sensor.store as store_module
    monkeypatch.setattr(store_module, "ROWS_PER_STATEMENT", rows_per_statement)
    rng = random.Random(rows_per_statement)
    store = Store(str(tmp_path / "u.db"))
    want_pdns: dict = {}
    want_clients: dict = {}
    want_anomalies: dict = {}
    for flush in range(4):
        pdns, clients, anomalies = [], [], []
        for _ in range(rng.randint(0, 40)):
            key = (f"n{rng.randint(0, 15)}.example", rng.choice(["A", "AAAA"]), f"192.0.2.{rng.randint(1, 3)}")
            first = float(rng.randint(0, 1000))
            row = (*key, first, first + rng.randint(0, 50), rng.randint(1, 9))
            pdns.append(row)
            have = want_pdns.get(key)
            want_pdns[key] = row[3:] if have is None else (min(have[0], row[3]), max(have[1], row[4]),
                                                           have[2] + row[5])
        for _ in range(rng.randint(0, 30)):
            key = (60 * rng.randint(0, 3), f"192.0.2.{rng.randint(1, 9)}")
            counts = tuple(rng.randint(0, 5) for _ in range(6))
            clients.append((*key, *counts))
            want_clients[key] = tuple(a + b for a, b in zip(want_clients.get(key, (0,) * 6), counts))
        for _ in range(rng.randint(0, 10)):
            key = (60 * rng.randint(0, 2), rng.choice(["truncated", "bad_pointer"]))
            anomalies.append((*key, 1))
            want_anomalies[key] = want_anomalies.get(key, 0) + 1
        with store.transaction() as conn:
            store.add_pdns(conn, pdns)
            store.add_clients(conn, clients)
            store.add_anomalies(conn, anomalies)
    got = {tuple(r[:3]): tuple(r[3:]) for r in store.conn.execute("SELECT * FROM pdns")}
    assert got == want_pdns
    assert {tuple(r[:2]): tuple(r[2:]) for r in store.conn.execute("SELECT * FROM clients")} == want_clients
    assert {tuple(r[:2]): r[2] for r in store.conn.execute("SELECT * FROM anomalies")} == want_anomalies
    assert len(want_pdns) > 20 and len(want_clients) > 10
    store.close()

def test_a_new_database_gets_big_pages_and_an_existing_one_keeps_its_own(tmp_path):
    from sensor.store import PAGE_BYTES
    Store(str(tmp_path / "new.db")).close()
    old = sqlite3.connect(tmp_path / "old.db")
    old.execute("CREATE TABLE t (x)")
    old.close()
    store = Store(str(tmp_path / "old.db"))
    with store.transaction() as conn:
        store.add_pdns(conn, [("a.example", "A", "192.0.2.1", 1.0, 1.0, 1)])
    store.close()
    assert db_rows(tmp_path / "new.db", "PRAGMA page_size") == [(PAGE_BYTES,)]
    assert db_rows(tmp_path / "old.db", "PRAGMA page_size") == [(4096,)]
    assert db_rows(tmp_path / "old.db", "SELECT rrname FROM pdns") == [("a.example",)]


def _verdict(domain: str, window_start: int, count: int) -> dict:
    return {"ts": float(window_start), "kind": "tunnel", "severity": "high", "client": CLIENT,
            "server": RESOLVER, "domain": domain, "detector": "test", "summary": f"{domain} {count}",
            "evidence": {"count": count}, "count": count, "first_ts": float(window_start),
            "last_ts": float(window_start + 1), "window_start": window_start, "sensor": "s"}


def test_verdicts_are_upserted_per_entity_and_window(tmp_path):
    store = Store(str(tmp_path / "v.db"))
    with store.transaction() as conn:
        created = store.put_verdicts(conn, [_verdict("a.example", 0, 1), _verdict("b.example", 0, 2),
                                            _verdict("a.example", 0, 3)])
    # One row per entity and window; a row written twice in one batch keeps the last values.
    assert sorted((v["domain"], v["count"]) for v in created) == [("a.example", 3), ("b.example", 2)]
    ids = {v["domain"]: v["id"] for v in created}
    with store.transaction() as conn:
        created = store.put_verdicts(conn, [_verdict("b.example", 0, 5), _verdict("a.example", 60, 6)])
    # Only the new window is new; the update keeps its row id and takes the new values.
    assert [(v["domain"], v["window_start"]) for v in created] == [("a.example", 60)]
    assert created[0]["id"] not in ids.values()
    rows = store.conn.execute("SELECT id, domain, window_start, count, evidence FROM verdicts "
                              "ORDER BY id").fetchall()
    assert rows == [(ids["a.example"], "a.example", 0, 3, '{"count": 3}'),
                    (ids["b.example"], "b.example", 0, 5, '{"count": 5}'),
                    (created[0]["id"], "a.example", 60, 6, '{"count": 6}')]
    with store.transaction() as conn:
        assert store.put_verdicts(conn, []) == []
    store.close()


def test_captures_are_merged_by_time_across_files(tmp_path):
    frames = [(1_700_000_000 + i * 0.5, udp_frame(query(f"q{i}.example", txid=i).pack(), CLIENT, RESOLVER,
                                                  40000 + i, 53)) for i in range(40)]
    a = write_pcap(tmp_path / "a.pcap", frames[0::2])
    b = write_pcap(tmp_path / "b.pcap", frames[1::2])
    out = list(merged_frames([str(b), str(a)], 7))
    ts = np.concatenate([fb.meta[:, 0] + fb.meta[:, 1] / 1e6 for fb in out])
    assert len(ts) == 40 and np.all(np.diff(ts) > 0)
    p = Parser()
    names = []
    for fb in out:
        p.feed(fb)
        names += p.take().qnames()
    assert names == [f"q{i}.example" for i in range(40)]


def _open_files_under(folder: Path) -> int:
    fds = Path("/proc/self/fd")
    count = 0
    for fd in fds.iterdir():
        try:
            count += os.readlink(fd).startswith(str(folder))
        except OSError:
            continue            # the listing's own descriptor, gone already
    return count


def test_rotated_captures_are_opened_one_after_another(tmp_path):
    # tcpdump -G: each file starts where the one before ended. All 30 open at once
    # ran a replay of a month of hourly files out of descriptors.
    folder = tmp_path / "rotated"
    folder.mkdir()
    paths = []
    for k in range(30):
        frames = [(1_700_000_000 + k * 10 + i, udp_frame(query(f"f{k}-{i}.example", txid=i).pack(), CLIENT,
                                                        RESOLVER, 40000 + i, 53)) for i in range(5)]
        paths.append(str(write_pcap(folder / f"cap-{k:02d}.pcap", frames)))
    most_open = 0
    names = []
    p = Parser()
    for fb in merged_frames(paths[::-1], 3):
        most_open = max(most_open, _open_files_under(folder))
        p.feed(fb)
        names += p.take().qnames()
    assert names == [f"f{k}-{i}.example" for k in range(30) for i in range(5)]
    assert 1 <= most_open <= 2


def test_replay_of_more_files_than_descriptors(tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    paths = [str(write_pcap(folder / f"cap-{k:03d}.pcap",
                            [(1_700_000_000 + k, udp_frame(query(f"n{k}.example", txid=k).pack(), CLIENT,
                                                           RESOLVER, 40000 + k, 53))]))
             for k in range(200)]
    db = str(tmp_path / "many.db")

    def few_descriptors() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    out = subprocess.run([sys.executable, "-m", "sensor", "replay", "--db", db, *paths], capture_output=True,
                         text=True, cwd=REPO, timeout=120, preexec_fn=few_descriptors)
    assert out.returncode == 0, out.stderr
    assert db_rows(db, "SELECT count(*) FROM pdns_nxdomain") == [(0,)]
    assert db_rows(db, "SELECT sum(queries) FROM stats WHERE leg = 'client'") == [(200,)]


BASELINE = DATA / "dnscap-baseline-udp-82-msgs.pcap"
COMPRESSORS = {"gzip": gzip.compress, "bzip2": bz2.compress, "xz": lzma.compress}


def _children() -> set[int]:
    out: set[int] = set()
    for task in Path("/proc/self/task").iterdir():
        out.update(int(pid) for pid in (task / "children").read_text().split())
    return out


@pytest.mark.parametrize("compression", sorted(COMPRESSORS))
@pytest.mark.parametrize("small_archive_bytes", [offline.SMALL_ARCHIVE_BYTES, 0], ids=["in-memory", "child"])
def test_compressed_captures_read_as_they_are(tmp_path, monkeypatch, compression, small_archive_bytes):
    monkeypatch.setattr(offline, "SMALL_ARCHIVE_BYTES", small_archive_bytes)
    plain = list(read_frames(str(BASELINE), 10))
    packed = tmp_path / f"baseline.pcap.{compression}"
    packed.write_bytes(COMPRESSORS[compression](BASELINE.read_bytes()))
    before = _children()
    frames = list(read_frames(str(packed), 10))

    def each(batches):
        return [fb.blob[o:o + c] for fb in batches for o, c in zip(fb.meta[:, 2].tolist(), fb.meta[:, 3].tolist())]
    assert each(frames) == each(plain) and len(each(plain)) == 133
    assert np.array_equal(np.concatenate([fb.meta[:, [0, 1, 3]] for fb in frames]),
                          np.concatenate([fb.meta[:, [0, 1, 3]] for fb in plain]))
    # progress counts the file on disk: compressed bytes for the archive
    assert sum(fb.source_bytes for fb in plain) == BASELINE.stat().st_size - 24
    assert 0 < sum(fb.source_bytes for fb in frames) <= packed.stat().st_size
    assert _children() == before
    assert parse_file(str(packed)).qnames() == parse_file(str(BASELINE)).qnames()


def test_replay_of_rotated_gzip_captures_and_its_child_stops_with_it(tmp_path, monkeypatch):
    conv = Conversation()
    for i in range(60):
        conv.exchange(CLIENT, RESOLVER, f"n{i}.example", f"n{i}.example 60 A 192.0.2.{i}", txid=i)
    whole = conv.write(tmp_path / "whole.pcap").read_bytes()
    cut = 24 + sum(16 + len(f) for _, f in conv.frames[:60])     # 30 exchanges in each file
    first = tmp_path / "a.pcap.gz"
    first.write_bytes(gzip.compress(whole[:cut]))
    second = tmp_path / "b.pcap.gz"
    second.write_bytes(gzip.compress(whole[:24] + whole[cut:]))
    assert first_frame_time(str(first)) == conv.frames[0][0]
    assert first_frame_time(str(second)) == pytest.approx(conv.frames[60][0], abs=1e-6)
    empty = tmp_path / "empty.pcap.gz"
    empty.write_bytes(gzip.compress(whole[:24]))
    assert first_frame_time(str(empty)) == float("inf")
    conf = config(tmp_path)
    result = replay([str(second), str(empty), str(first)], conf, progress_to=None)
    assert result.messages == 120 and result.tracking["answered"] == 60
    assert db_rows(conf.db_path, "SELECT count(*) FROM pdns") == [(60,)]
    # a reader given up after its first batch leaves no decompressing child behind
    monkeypatch.setattr(offline, "SMALL_ARCHIVE_BYTES", 0)
    before = _children()
    frames = read_frames(str(first), 4)
    next(frames)
    assert len(_children() - before) == 1
    frames.close()
    assert _children() == before


@pytest.mark.parametrize("small_archive_bytes", [offline.SMALL_ARCHIVE_BYTES, 0], ids=["in-memory", "child"])
def test_broken_archives_give_their_frames_then_a_clear_error(tmp_path, monkeypatch, small_archive_bytes):
    monkeypatch.setattr(offline, "SMALL_ARCHIVE_BYTES", small_archive_bytes)
    packed = gzip.compress(BASELINE.read_bytes())
    cut = tmp_path / "cut.pcap.gz"
    cut.write_bytes(packed[:len(packed) // 2])
    got = []
    with pytest.raises(CaptureError, match="gzip: Compressed file ended before the end-of-stream marker"):
        for fb in read_frames(str(cut), 10):
            got.append(fb)
    assert 20 <= sum(len(fb.meta) for fb in got) < 133
    text = tmp_path / "notes.gz"
    text.write_bytes(gzip.compress(b"not a capture\n"))
    with pytest.raises(CaptureError, match="notes.gz: gzip-compressed, but unknown file format"):
        list(read_frames(str(text), 10))
    zstd = tmp_path / "cap.pcap.zst"
    zstd.write_bytes(b"\x28\xb5\x2f\xfd" + b"\0" * 16)
    with pytest.raises(CaptureError, match=r"zstd-compressed.*zstd -dc .*cap.pcap.zst \| dnssensor replay -"):
        list(read_frames(str(zstd), 10))


@pytest.mark.parametrize("buffer_bytes", [offline.SAVEFILE_BUFFER_BYTES, 777])
def test_capture_files_read_through_a_larger_buffer_give_the_same_frames(tmp_path, monkeypatch, buffer_bytes):
    """libpcap's FILE of a plain capture gets a buffer of its own, set after libpcap read
    the file header, and no lock: every frame must still come out as libpcap's own
    buffered, locked FILE gives it, and a named pipe, which cannot give back what a buffer
    held, keeps libpcap's."""
    monkeypatch.setattr(offline, "SAVEFILE_BUFFER_BYTES", buffer_bytes)
    conv = Conversation()
    for i in range(3000):        # past 1 MiB, so the large buffer is refilled too
        conv.exchange(CLIENT, RESOLVER, f"host-{i}.example", f"host-{i}.example 60 TXT {'x' * 200}", txid=i)
    big = conv.write(tmp_path / "big.pcap")
    assert big.stat().st_size > (1 << 20)
    captures = [big, BASELINE, DATA / "dnscap-tcp-msgs-straddle-segments.pcap"]
    captures += sorted(SHARED_PCAPS.glob("chrissanders-*.pcapng"))[:2]

    def frames(path):       # through pcap_next_ex: read in place, a stretch is read past the buffer
        got = list(read_frames(str(path), 100, records_in_place=False))
        return b"".join(fb.blob for fb in got), np.concatenate([fb.meta[:, [0, 1, 3]] for fb in got])

    enlarged = {path: frames(path) for path in captures}
    enlarge = offline._tune_stdio
    reader = pcapy.open_offline(str(big))
    pcap, libc = offline._libpcap_calls()
    stream = pcap.pcap_file(offline._handle(reader))
    assert libc.__fsetlocking(stream, 0) == 1          # 0: query; 1: stdio locks each call
    assert enlarge(reader, str(big)) is not None
    assert libc.__fsetlocking(stream, 0) == offline.FSETLOCKING_BYCALLER
    reader.close()
    monkeypatch.setattr(offline, "_tune_stdio", lambda reader, path: None)
    for path in captures:
        blob, meta = frames(path)
        assert enlarged[path][0] == blob and np.array_equal(enlarged[path][1], meta), path.name
    fifo = tmp_path / "capture.fifo"
    os.mkfifo(fifo)
    writer = subprocess.Popen(["sh", "-c", f"cat {big} > {fifo}"])
    try:
        reader = pcapy.open_offline(str(fifo))
        assert enlarge(reader, str(fifo)) is None
        reader.close()
    finally:
        writer.kill()
        writer.wait()


def _next_batch_frames(path: Path) -> tuple[list[bytes], np.ndarray]:
    """Every frame of a capture and its (seconds, microseconds, caplen), as pcapy-ng's own
    next_batch() gives them."""
    reader = pcapy.open_offline(str(path))
    frames, rows = [], []
    while True:
        blob, meta = reader.next_batch(5)
        if not meta:
            break
        table = np.frombuffer(meta, dtype=np.uint32).reshape(-1, 4)
        frames += [blob[off:off + caplen] for off, caplen in zip(table[:, 2], table[:, 3])]
        rows.append(table[:, [0, 1, 3]])
    reader.close()
    return frames, np.concatenate(rows)


def _read_frames_split(path: Path, frames_per_read: int) -> tuple[list[bytes], np.ndarray, list[int]]:
    """The frames as the copying reader (pcap_next_ex) gives them, checked back to back."""
    got = list(read_frames(str(path), frames_per_read, records_in_place=False))
    frames = [fb.blob[off:off + caplen] for fb in got for off, caplen in zip(fb.meta[:, 2], fb.meta[:, 3])]
    for fb in got:      # the frames lie back to back, each batch's from its blob's start
        assert isinstance(fb.blob, bytes) and fb.meta.dtype == np.uint32
        assert list(fb.meta[:, 2]) == list(np.cumsum(fb.meta[:, 3]) - fb.meta[:, 3])
        assert len(fb.blob) == int(fb.meta[:, 3].sum())
    return frames, np.concatenate([fb.meta[:, [0, 1, 3]] for fb in got]), [(len(fb.meta), len(fb.blob)) for fb in got]


@pytest.mark.parametrize("batch_bytes", [offline.FRAME_BATCH_BYTES, 300])
def test_frames_read_on_the_libpcap_handle_are_next_batchs(monkeypatch, batch_bytes):
    """read_frames() calls pcap_next_ex on the handle pcapy-ng opened and copies each frame
    once. Every frame, timestamp and length must be what next_batch() gives, also when a
    batch's bytes run out: a frame larger than what is left opens the next batch, and one
    larger than a whole batch gets a batch of its own."""
    monkeypatch.setattr(offline, "FRAME_BATCH_BYTES", batch_bytes)
    captures = [BASELINE, DATA / "dnscap-tcp-msgs-straddle-segments.pcap", DATA / "lab-resolver.pcap"]
    captures += sorted(SHARED_PCAPS.glob("chrissanders-*.pcapng"))[:2]
    for path in captures:
        reader = pcapy.open_offline(str(path))
        assert offline.FrameSource(reader).frame_reader is not None, "the libpcap handle was not found"
        reader.close()
        want, want_meta = _next_batch_frames(path)
        frames, meta, batches = _read_frames_split(path, 64)
        assert frames == want and np.array_equal(meta, want_meta), path.name
        assert all(0 < count <= 64 and (size <= batch_bytes or count == 1) for count, size in batches)
        if int(want_meta[:, 2].max()) > batch_bytes:
            assert (1, int(want_meta[:, 2].max())) in batches, path.name     # the largest frame sat alone
        if batch_bytes > 1000:
            assert [count for count, _ in batches[:-1]] == [64] * (len(batches) - 1)
    assert batch_bytes > 1000 or len(batches) > len(want) / 64 + 1     # bytes cut the batches


def test_frames_read_through_next_batch_where_the_handle_is_not_found(monkeypatch, tmp_path):
    """A pcapy-ng of another layout leaves only next_batch(): the same frames, and a capture
    cut short still gives every frame before the cut (next_batch drops those, so they are
    read again one by one)."""
    cut = tmp_path / "cut.pcap"
    cut.write_bytes((DATA / "lab-resolver.pcap").read_bytes()[:-10])

    def all_frames(path):
        got = []
        with pytest.raises(CaptureError, match=r"cut.pcap: truncated dump file.*\(after frame (\d+)\)") as error:
            for fb in read_frames(str(path), 100):
                got.append(fb)
        return [fb.blob[o:o + c] for fb in got for o, c in zip(fb.meta[:, 2], fb.meta[:, 3])], str(error.value)

    direct, direct_error = all_frames(cut)
    monkeypatch.setattr(offline, "_handle", lambda reader: None)
    reader = pcapy.open_offline(str(BASELINE))
    assert offline.FrameSource(reader).frame_reader is None
    reader.close()
    frames, meta, batches = _read_frames_split(BASELINE, 7)
    want, want_meta = _next_batch_frames(BASELINE)
    assert frames == want and np.array_equal(meta, want_meta)
    assert [count for count, _ in batches[:-1]] == [7] * (len(batches) - 1)
    fallback, fallback_error = all_frames(cut)
    assert fallback == direct and fallback_error == direct_error
    assert len(direct) > 1800


def _frames_and_error(path: Path, frames_per_read: int, records_in_place: bool) -> tuple:
    """Every frame of a capture, its (seconds, microseconds, caplen) rows and the error that
    ended it (None: none), read in place or through pcap_next_ex."""
    frames, rows, error = [], [np.empty((0, 3), np.uint32)], None
    try:
        for fb in read_frames(str(path), frames_per_read, records_in_place=records_in_place):
            frames += [fb.blob[o:o + c] for o, c in zip(fb.meta[:, 2].tolist(), fb.meta[:, 3].tolist())]
            rows.append(fb.meta[:, [0, 1, 3]])
    except CaptureError as e:
        error = str(e)
    return frames, np.concatenate(rows), error


def _assert_read_alike(path: Path, frames_per_read: int) -> None:
    in_place = _frames_and_error(path, frames_per_read, True)
    libpcap = _frames_and_error(path, frames_per_read, False)
    assert in_place[0] == libpcap[0], path.name
    assert np.array_equal(in_place[1], libpcap[1]), path.name
    assert in_place[2] == libpcap[2], path.name


def _classic_pcap(path: Path, records: list[tuple[int, int, bytes, int]], snaplen: int = 65535,
                  nanoseconds: bool = False, order: str = "<", version: tuple[int, int] = (2, 4)) -> Path:
    """A classic pcap file of (seconds, fraction, data, original length) records, in the
    byte order given; each record's caplen is its data's length."""
    magic = 0xA1B23C4D if nanoseconds else 0xA1B2C3D4
    out = [struct.pack(order + "IHHiIII", magic, *version, 0, 0, snaplen, 1)]
    for sec, frac, data, orig in records:
        out.append(struct.pack(order + "IIII", sec, frac, len(data), orig) + data)
    path.write_bytes(b"".join(out))
    return path


@pytest.mark.parametrize("batch_bytes", [offline.FRAME_BATCH_BYTES, 300])
def test_records_read_in_place_are_the_frames_pcap_next_ex_gives(monkeypatch, tmp_path, batch_bytes):
    """A classic pcap file is read a stretch at a time, its records in place: every frame,
    timestamp and length, and every error, must be what pcap_next_ex gives, whatever the
    frames a read and the bytes a batch (a frame larger than a batch comes whole). The
    batch's bytes are the file's own, record headers and all."""
    monkeypatch.setattr(offline, "FRAME_BATCH_BYTES", batch_bytes)
    captures = sorted(DATA.glob("*.pcap")) + sorted(SHARED_PCAPS.glob("*.pcap"))
    assert len(captures) > 40
    for path in captures:
        for frames_per_read in (1, 7, 8192):
            _assert_read_alike(path, frames_per_read)
    first = next(read_frames(str(BASELINE), 10))
    whole = BASELINE.read_bytes()
    assert first.meta[0, 2] == offline.PCAP_RECORD_HEADER and first.blob == whole[24:24 + len(first.blob)]
    seconds, fraction, caplen = struct.unpack_from("<III", first.blob)
    assert (seconds, fraction, caplen) == tuple(first.meta[0, [0, 1, 3]])
    cut = tmp_path / "cut.pcap"
    for end in (len(whole) - 10, len(whole) - 100, 24 + 16 + 3, 24 + 7):      # in a frame, in a header
        cut.write_bytes(whole[:end])
        for frames_per_read in (1, 5, 100):
            _assert_read_alike(cut, frames_per_read)
    assert "truncated dump file" in _frames_and_error(cut, 5, True)[2]


def test_records_libpcap_would_change_or_refuse_are_left_to_it(tmp_path):
    """A record longer than the file's snapshot length is cut to it by libpcap, and one
    longer than any frame libpcap accepts ends the file with its error: read in place, those
    records go to pcap_next_ex, which reads them as ever, and reading goes on in place after
    them. Nanosecond fractions come out as libpcap's microseconds, a negative one included."""
    plain = [(1_700_000_000 + i, 1000 * i + 999, bytes([i]) * (60 + i), 60 + i) for i in range(40)]
    longer = plain[:10] + [(1_700_000_100, 5, b"L" * 300, 300)] + plain[10:]
    path = _classic_pcap(tmp_path / "snapped.pcap", longer, snaplen=200)
    for frames_per_read in (1, 3, 8, 100):
        _assert_read_alike(path, frames_per_read)
    frames, rows, error = _frames_and_error(path, 8, True)
    assert error is None and len(frames) == 41 and frames[10] == b"L" * 200     # cut to the snapshot
    huge = plain[:5] + [(1_700_000_100, 5, b"H" * (PLAIN_CAPLEN_MAX + 1), 300_000)] + plain[5:]
    path = _classic_pcap(tmp_path / "huge.pcap", huge, snaplen=1 << 20)
    _assert_read_alike(path, 4)
    frames, rows, error = _frames_and_error(path, 4, True)
    assert len(frames) == 5 and "invalid packet capture length" in error
    nano = plain[:3] + [(1_700_000_200, 0x8000_0000, b"n" * 70, 70), (1_700_000_201, 999_999_999, b"m" * 70, 70)]
    path = _classic_pcap(tmp_path / "nano.pcap", nano, nanoseconds=True)
    _assert_read_alike(path, 2)
    rows = _frames_and_error(path, 2, True)[1]
    assert rows[:3, 1].tolist() == [0, 1, 2] and rows[4, 1] == 999_999
    assert rows[3, 1] == np.uint32(np.int32(-0x8000_0000) // 1000 + 1)     # C's division truncates


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(0, 1500), min_size=1, max_size=60), data=st.data())
def test_any_classic_pcap_reads_in_place_as_pcap_next_ex_reads_it(tmp_path_factory, sizes, data):
    """Random records (some longer than the snapshot length), either fraction, cut anywhere,
    read a random number of frames at a time into batches of a random size."""
    snaplen = data.draw(st.sampled_from([65535, 1000, 200]))
    records = [(1_600_000_000 + i, data.draw(st.integers(0, 0xFFFF_FFFF)), bytes([i % 251]) * n, n + 5)
               for i, n in enumerate(sizes)]
    path = _classic_pcap(tmp_path_factory.mktemp("pcap") / "random.pcap", records, snaplen=snaplen,
                         nanoseconds=data.draw(st.booleans()))
    whole = path.read_bytes()
    path.write_bytes(whole[:data.draw(st.integers(24, len(whole)))])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(offline, "FRAME_BATCH_BYTES", data.draw(st.sampled_from([offline.FRAME_BATCH_BYTES, 2000, 100])))
        _assert_read_alike(path, data.draw(st.integers(1, 20)))


def test_other_capture_formats_are_read_through_pcap_next_ex(tmp_path):
    """Only a plain regular file of classic pcap 2.4 in this machine's byte order is read in
    place: the other byte order (whose pseudo-headers libpcap may rewrite), an older
    version, pcapng and a pipe are read frame by frame by libpcap."""
    records = [(1_700_000_000 + i, i, bytes([i]) * 80, 80) for i in range(30)]
    plain = _classic_pcap(tmp_path / "plain.pcap", records)
    swapped = _classic_pcap(tmp_path / "swapped.pcap", records, order=">")
    older = _classic_pcap(tmp_path / "older.pcap", records, version=(2, 3))
    pcapng = sorted(SHARED_PCAPS.glob("*.pcapng"))[:1]

    def in_place(path):
        reader = pcapy.open_offline(str(path))
        try:
            return offline._in_place_format(reader, str(path))
        finally:
            reader.close()

    assert in_place(plain) is not None
    assert all(in_place(path) is None for path in [swapped, older, *pcapng])
    for path in [swapped, older, *pcapng]:
        assert next(read_frames(str(path), 10)).meta[0, 2] == 0      # frames copied back to back
        _assert_read_alike(path, 7)
    assert _frames_and_error(swapped, 7, True)[0] == _frames_and_error(plain, 7, True)[0]
    fifo = tmp_path / "capture.fifo"
    os.mkfifo(fifo)
    writer = subprocess.Popen(["sh", "-c", f"cat {plain} > {fifo}"])
    try:
        reader = pcapy.open_offline(str(fifo))
        assert offline._in_place_format(reader, str(fifo)) is None
        reader.close()
    finally:
        writer.kill()
        writer.wait()


def test_a_capture_cut_short_among_others_ends_alone(tmp_path):
    """Merged with two whole captures, one cut short midway: the others are replayed to their
    end, the cut one up to its cut, and the result names it."""
    cut = tmp_path / "cut.pcap"
    cut.write_bytes((DATA / "demo-office-resolver.pcap").read_bytes()[:-10])
    whole = [str(DATA / "lab-resolver.pcap"), str(BASELINE)]
    conf = config(tmp_path)
    result = replay([whole[0], str(cut), whole[1]], conf, progress_to=None)
    assert result.capture_error is not None and "cut.pcap: truncated" in result.capture_error
    frames = sum(len(fb.meta) for path in whole for fb in read_frames(path, 1000))
    cut_frames = int(result.capture_error.split("(after frame ")[1].rstrip(")"))
    assert cut_frames > 2000 and result.packets == frames + cut_frames
    assert db_rows(conf.db_path, "SELECT sum(packets) FROM stats WHERE leg = 'sensor'")[0][0] == result.packets


def test_replay_of_a_time_window(tmp_path, capsys):
    conv = Conversation(start=1_767_254_400.0)         # 2026-01-01 08:00 UTC
    for i in range(90):
        conv.exchange(CLIENT, RESOLVER, f"n{i}.example", f"n{i}.example 60 A 192.0.2.{i}", txid=i)
        conv.ts += 1.0
    whole = conv.write(tmp_path / "whole.pcap")
    parts = []
    for k in range(3):                                  # three rotated files, 30 s each
        parts.append(str(write_pcap(tmp_path / f"part{k}.pcap", conv.frames[k * 60:(k + 1) * 60])))
    # frames keep their numbers in the capture; a batch's bytes on disk stay with it
    batches = list(within(read_frames(str(whole), 7), 1_767_254_410.0, 1_767_254_420.0))
    kept = [(fb.first_frame, len(fb.meta)) for fb in batches if len(fb.meta)]
    assert kept[0][0] == 21 and sum(n for _, n in kept) == 20
    assert sum(fb.source_bytes for fb in batches) == whole.stat().st_size - 24
    conf = config(tmp_path)
    assert cli.main(["replay", "--db", conf.db_path, "--from", "2026-01-01T08:00:40",
                     "--until", "2026-01-01 09:00:50+01:00", *parts]) == 0
    assert "20 DNS messages" in capsys.readouterr().out
    assert db_rows(conf.db_path, "SELECT rrname FROM pdns ORDER BY rrname") == \
        [(f"n{i}.example",) for i in sorted(range(40, 50), key=str)]
    # a file that starts at or after the end is not read at all
    def frames_of(batches):
        return [(fb.blob, fb.meta.tolist()) for fb in batches]
    assert frames_of(merged_frames(parts, 100, end=1_767_254_430.0)) == frames_of(merged_frames(parts[:1], 100))
    assert cli.main(["replay", "--db", conf.db_path, "--from", "soon", *parts]) == 2
    assert "bad time 'soon'" in capsys.readouterr().err


def test_upstream_leg_is_counted_for_the_resolver(tmp_path):
    conv = Conversation()
    conv.exchange(CLIENT, RESOLVER, "a.example", "a.example 60 A 192.0.2.1", txid=1)
    conv.exchange(RESOLVER_UP, AUTH, "a.example", "a.example 60 A 192.0.2.1", txid=2, sport=30000)
    conf = config(tmp_path, resolver_addresses=(RESOLVER, RESOLVER_UP))
    replay([str(conv.write(tmp_path / "legs.pcap"))], conf, progress_to=None)
    rows = db_rows(conf.db_path, "SELECT resolver, leg, queries, answered FROM stats WHERE leg != 'sensor' "
                                 "ORDER BY leg")
    assert rows == [(RESOLVER, "client", 1, 1), (RESOLVER_UP, "upstream", 1, 1)]


# ------------------------------------------------------------------ analyst commands

@pytest.fixture
def filled_db(tmp_path):
    conf = config(tmp_path)
    replay([str(DATA / "dnscap-baseline-udp-82-msgs.pcap"), str(_malformed_capture(tmp_path, 30))],
           conf, progress_to=None)
    return conf.db_path


def test_query_formats_and_read_only(filled_db, capsys):
    assert cli.main(["query", "--db", filled_db, "--format", "json",
                     "SELECT rrname, count FROM pdns ORDER BY count DESC, rrname LIMIT 1"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["rrname"] == "google.com"
    assert cli.main(["query", "--db", filled_db, "--format", "csv", "SELECT 1 AS a, 'x' AS b"]) == 0
    assert capsys.readouterr().out == "a,b\n1,x\n"
    assert cli.main(["query", "--db", filled_db, "DELETE FROM pdns"]) == 2
    assert "readonly" in capsys.readouterr().err.replace(" ", "").lower()
    assert db_rows(filled_db, "SELECT count(*) FROM pdns")[0][0] > 0
    # Nor can it write any other file.
    elsewhere = Path(filled_db).parent / "elsewhere.db"
    for sql in (f"ATTACH DATABASE '{elsewhere}' AS other", f"VACUUM INTO '{elsewhere}'"):
        assert cli.main(["query", "--db", filled_db, sql]) == 2
        assert "ATTACH and VACUUM INTO, which write files, are refused" in capsys.readouterr().err
        assert not elsewhere.exists()
    # A table row stays one line, a BLOB is hex in every format.
    assert cli.main(["query", "--db", filled_db, "SELECT x'00ff' AS b, 'a' || char(10) || 'b' AS t"]) == 0
    assert capsys.readouterr().out.splitlines()[2] == "00ff  a\\nb"
    assert cli.main(["query", "--db", filled_db, "--format", "json", "SELECT x'00ff' AS b"]) == 0
    assert json.loads(capsys.readouterr().out) == {"b": "00ff"}
    assert cli.main(["query", "--db", filled_db, "  "]) == 2
    assert "no SQL statement given" in capsys.readouterr().err


def test_verdicts_pdns_and_status_commands(filled_db, capsys):
    assert cli.main(["verdicts", "--db", filled_db, "--since", "1h", "--kind", "anomaly",
                     "--format", "json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 1 and rows[0]["client"] == CLIENT and rows[0]["count"] == 30
    assert isinstance(rows[0]["evidence"], dict) and rows[0]["evidence"]
    assert cli.main(["verdicts", "--db", filled_db, "--id", str(rows[0]["id"])]) == 0
    whole = capsys.readouterr().out
    assert f"summary       {rows[0]['summary']}" in whole and "\nevidence:\n  {" in whole
    assert json.dumps(rows[0]["evidence"], indent=2, sort_keys=True).replace("\n", "\n  ") in whole
    assert cli.main(["verdicts", "--db", filled_db, "--id", str(rows[0]["id"]), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["evidence"] == rows[0]["evidence"]
    assert cli.main(["verdicts", "--db", filled_db, "--id", "9999"]) == 2
    assert "no verdict with id 9999" in capsys.readouterr().err
    assert cli.main(["verdicts", "--db", filled_db, "--client", "203.0.113.200"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2           # header and rule only
    # The client as the store writes it, however it was typed; a mistyped one is an error.
    assert cli.main(["verdicts", "--db", filled_db, "--client", f"::FFFF:{CLIENT}", "--format", "json"]) == 0
    assert [json.loads(line)["client"] for line in capsys.readouterr().out.splitlines()] == [CLIENT]
    with pytest.raises(SystemExit) as exit_:
        cli.main(["verdicts", "--db", filled_db, "--client", "192.0.2"])
    assert exit_.value.code == 2 and "'192.0.2' is not an IP address" in capsys.readouterr().err
    # A kind nothing is stored under is told apart from a kind with no verdict in the window.
    assert cli.main(["verdicts", "--db", filled_db, "--kind", "anomalies"]) == 0
    assert "no verdict of kind 'anomalies' is stored; the kinds stored: anomaly" in capsys.readouterr().err
    assert cli.main(["verdicts", "--db", filled_db, "--kind", "anomaly", "--client", "203.0.113.200"]) == 0
    assert capsys.readouterr().err == ""
    for args in (["verdicts", "--limit", "-5"], ["pdns", "google.com", "--limit", "0"],
                 ["status", "--minutes", "-1"], ["series", "queries", "--k", "0"]):
        with pytest.raises(SystemExit) as exit_:
            cli.main([*args, "--db", filled_db])
        assert exit_.value.code == 2, args
        capsys.readouterr()
    assert cli.main(["pdns", "--db", filled_db, "google.com", "--format", "json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {(r["rrtype"], r["rdata"]) for r in rows} == {("A", "216.58.218.206")}
    assert cli.main(["pdns", "--db", filled_db, "216.58.218.206", "--format", "json"]) == 0
    assert {json.loads(line)["rrname"] for line in capsys.readouterr().out.splitlines()} == {"google.com"}
    assert cli.main(["status", "--db", filled_db, "--json", "--minutes", "100000000"]) == 0
    s = json.loads(capsys.readouterr().out)
    frames = parse_file(str(DATA / "dnscap-baseline-udp-82-msgs.pcap")).counters["packets"]
    # the 30 malformed queries are counted but not tracked (their question is unreadable)
    assert s["answered"] == 41 and s["unanswered"] == 0 and s["packets"] == frames + 30
    assert cli.main(["status", "--db", filled_db]) == 0
    assert "loss: DNS-estimated" in capsys.readouterr().out


def test_pdns_looks_up_networks_and_internationalised_names(tmp_path, capsys):
    store = Store(str(tmp_path / "p.db"))
    records = [("a.example", "A", "10.0.0.1"), ("b.example", "A", "10.255.255.255"), ("c.example", "A", "100.0.0.1"),
               ("d.example", "A", "11.0.0.0"), ("e.example", "A", "192.168.1.7"), ("f.example", "A", "192.168.2.7"),
               ("g.example", "AAAA", "2001:db8::1"), ("h.example", "AAAA", "2001:db9::1"),
               ("i.example", "AAAA", "::ffff:10.0.0.9"), ("j.example", "CNAME", "10.0.0.2.example"),
               ("xn--bcher-kva.example", "A", "192.0.2.1")]
    with store.transaction() as conn:
        store.add_pdns(conn, [(n, t, d, 1000.0, 1000.0 + i, 1) for i, (n, t, d) in enumerate(records)])
    store.close()
    db = str(tmp_path / "p.db")

    def names(term: str) -> list[str]:
        assert cli.main(["pdns", "--db", db, term, "--format", "json"]) == 0
        return sorted(json.loads(line)["rrname"] for line in capsys.readouterr().out.splitlines())

    assert names("10.0.0.0/8") == ["a.example", "b.example"]
    assert names("192.168.0.0/23") == ["e.example"]
    assert names("192.168.1.7/32") == ["e.example"]
    assert names("0.0.0.0/0") == ["a.example", "b.example", "c.example", "d.example", "e.example", "f.example",
                                  "xn--bcher-kva.example"]
    assert names("2001:db8::/32") == ["g.example"]
    assert names("::/0") == ["g.example", "h.example", "i.example"]
    assert names("::ffff:10.0.0.0/104") == ["i.example"]
    assert names("Bücher.example.") == ["xn--bcher-kva.example"]
    assert names("*.example") == sorted(n for n, _, _ in records)
    assert cli.main(["pdns", "--db", db, "10.0.0.0/33"]) == 2
    assert "neither a name, an address nor a network" in capsys.readouterr().err
    # An address as a dual-stack socket logs an IPv4 peer finds both forms; any spelling of
    # an IPv6 address finds it.
    assert names("::FFFF:10.0.0.9") == ["i.example"]
    assert names("::ffff:192.168.1.7") == ["e.example"]
    assert names("2001:DB8:0:0:0:0:0:0001") == ["g.example"]
    assert cli.main(["pdns", "--db", db, " . "]) == 2
    assert "give a name, an address or a network" in capsys.readouterr().err


def test_status_warns_of_a_capture_that_sees_one_direction(tmp_path, capsys):
    """An asymmetric span port: the resolver's answers to one network and the queries of
    another, never both ways."""
    conv = Conversation()
    other_client, other_resolver = "192.0.2.11", "192.0.2.54"
    for i in range(120):
        q = query(f"host{i}.example", txid=i)
        conv.send(answer(q, f"host{i}.example 60 A 192.0.2.{i}"), RESOLVER, CLIENT, 53, 40000 + i)
        conv.send(q.pack(), other_client, other_resolver, 41000 + i, 53)
    conv.send(query("seen.example", txid=999).pack(), CLIENT, AUTH, 42000, 53)    # a few: no warning
    conf = config(tmp_path)
    replay([str(conv.write(tmp_path / "one-way.pcap"))], conf, progress_to=None)
    assert cli.main(["status", "--db", conf.db_path, "--json", "--minutes", "100000000"]) == 0
    one_sided = json.loads(capsys.readouterr().out)["one_sided"]
    assert [(o["resolver"], o["queries"], o["responses"]) for o in one_sided] == \
        [(RESOLVER, 0, 120), (other_resolver, 120, 0)]
    assert cli.main(["status", "--db", conf.db_path, "--minutes", "100000000"]) == 0
    text = capsys.readouterr().out
    assert f"WARNING {RESOLVER} (client): 120 responses and no query" in text
    assert f"WARNING {other_resolver} (client): 120 queries and no response" in text
    assert AUTH not in text.split("busiest resolvers:")[0]


def test_span_port_copies_are_warned_of_then_dropped(tmp_path, capsys):
    conv = Conversation()
    for i in range(150):
        conv.exchange(CLIENT, RESOLVER, f"n{i}.example", f"n{i}.example 60 A 192.0.2.{i % 250}", txid=i)
    doubled = write_pcap(tmp_path / "doubled.pcap",
                         [copy for ts, f in conv.frames for copy in ((ts, f), (ts + 2e-6, f))])
    conf = config(tmp_path)
    replay([str(doubled)], conf, progress_to=None)
    assert cli.main(["status", "--db", conf.db_path, "--minutes", "100000000"]) == 0
    assert "WARNING 150 duplicate responses for 150 answered queries" in capsys.readouterr().out
    deduped = replace(conf, db_path=str(tmp_path / "deduped.db"), dedup_window_ms=1.0)
    replay([str(doubled)], deduped, progress_to=None)
    assert db_rows(deduped.db_path, "SELECT sum(queries), sum(responses), sum(answered), sum(duplicate) FROM stats "
                                     "WHERE leg = 'client'") == [(150, 150, 150, 0)]
    assert db_rows(deduped.db_path, "SELECT sum(count) FROM pdns") == [(150,)]
    assert cli.main(["status", "--db", deduped.db_path, "--json", "--minutes", "100000000"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["drops"] == {"duplicate_frames": 300} and not s["doubled_capture"]


def test_a_reload_turns_span_port_dedup_on_and_off(tmp_path):
    conv = Conversation()
    for i in range(10):
        conv.exchange(CLIENT, RESOLVER, f"n{i}.example", f"n{i}.example 60 A 192.0.2.{i}", txid=i)
    doubled = write_pcap(tmp_path / "doubled.pcap",
                         [copy for ts, f in conv.frames for copy in ((ts, f), (ts + 2e-6, f))])
    frames = next(read_frames(str(doubled), 1000))
    conf = config(tmp_path)
    rule = anomaly_burst.load(conf.rules_dir)
    pipe = Pipeline(conf, rule, [])
    counted = []
    for window_ms in (0.0, 1.0, 0.0):
        pipe.reconfigure(replace(conf, dedup_window_ms=window_ms), rule, [])
        before = pipe.messages
        pipe.feed(frames)
        pipe.process()
        counted.append(pipe.messages - before)
    assert counted == [40, 20, 40]


def test_status_warns_of_a_process_that_stopped_reporting_and_shows_the_stores_room(tmp_path, capsys):
    conf = config(tmp_path)
    replay([str(DATA / "dnscap-baseline-udp-82-msgs.pcap")], conf, progress_to=None)
    now = time.time()
    store = Store(conf.db_path)
    with store.transaction() as conn:
        for worker, state, ago in (("eth0/0", "running", 600), ("eth0/1", "running", 5),
                                   ("eth1/0", "stopped", 3600), ("writer", "running", 900)):
            store.put_worker(conn, {"worker": worker, "pid": 1, "started": now - 7200, "restarts": 0,
                                    "last_seen": now - ago, "state": state})
    store.close()
    assert cli.main(["status", "--db", conf.db_path, "--json", "--minutes", "100000000"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert [w["worker"] for w in s["silent"]] == ["eth0/0", "writer"]
    assert s["store"]["bytes"] >= os.path.getsize(conf.db_path) > 0
    assert 0 < s["store"]["free_bytes"] <= s["store"]["filesystem_bytes"]
    assert cli.main(["status", "--db", conf.db_path, "--minutes", "100000000"]) == 0
    text = capsys.readouterr().out
    assert "WARNING eth0/0 is listed as running but has not reported for 10 min" in text
    assert "WARNING writer is listed as running but has not reported for 15 min" in text
    assert "eth0/1 is listed" not in text and "eth1/0 is listed" not in text
    assert f"store {conf.db_path}: " in text


def test_missing_database_is_a_one_line_error(tmp_path, capsys):
    assert cli.main(["status", "--db", str(tmp_path / "none.db")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such database" in err


def test_a_store_on_a_filesystem_with_no_blocks_is_not_called_full(capsys):
    """/proc has no blocks at all, free or used: a store there cannot be opened, and the
    reason given is not a full disk."""
    assert cli.main(["replay", "--db", "/proc/sensor.db", str(DATA / "dnscap-baseline-udp-82-msgs.pcap")]) == 2
    err = capsys.readouterr().err
    assert "/proc/sensor.db" in err and "no space left" not in err


def test_replay_cli_prints_a_summary(tmp_path, capsys):
    db = tmp_path / "cli.db"
    assert cli.main(["replay", "--db", str(db), str(DATA / "dnscap-baseline-udp-82-msgs.pcap")]) == 0
    out = capsys.readouterr().out
    assert "82 DNS messages" in out and "41 answered" in out
    assert db_rows(db, "PRAGMA integrity_check") == [("ok",)]


def test_spoofed_answers_stay_out_of_passive_dns(tmp_path):
    conv = Conversation()
    q = query("bank.example", txid=4242)
    conv.send(q.pack(), RESOLVER_UP, AUTH, 33333, 53)
    spoof = q.reply()
    spoof.header.id = 999
    spoof.add_answer(*dnslib.RR.fromZone("bank.example 86400 A 198.18.0.66"))
    conv.send(spoof.pack(), AUTH, RESOLVER_UP, 53, 33333)
    real = q.reply()
    real.add_answer(*dnslib.RR.fromZone("bank.example 300 A 192.0.2.80"))
    conv.send(real.pack(), AUTH, RESOLVER_UP, 53, 33333)
    conf = config(tmp_path, resolver_addresses=(RESOLVER_UP,))
    replay([str(conv.write(tmp_path / "spoof.pcap"))], conf, progress_to=None)
    assert db_rows(conf.db_path, "SELECT rdata FROM pdns") == [("192.0.2.80",)]
    assert db_rows(conf.db_path, "SELECT sum(mismatched), sum(answered) FROM stats")[0] == (1, 1)


def test_clients_table_adds_up_to_the_stats(tmp_path):
    conf = config(tmp_path, resolver_addresses=("10.1.0.53", "198.51.100.53"))
    replay([str(DATA / "demo-office-resolver.pcap")], conf, progress_to=None)
    per_client = dict(db_rows(conf.db_path, "SELECT client, sum(queries) FROM clients GROUP BY client"))
    total = db_rows(conf.db_path, "SELECT sum(queries) FROM stats WHERE leg != 'sensor'")[0][0]
    assert sum(per_client.values()) == total
    assert per_client["10.1.0.66"] == 25                   # the malformed burst's sender
    assert per_client["198.51.100.53"] == db_rows(
        conf.db_path, "SELECT sum(queries) FROM stats WHERE leg = 'upstream'")[0][0]


@pytest.mark.parametrize("per_batch", [7, 65536])
def test_unique_clients_are_the_distinct_clients_of_each_stats_row(tmp_path, per_batch):
    """Batch after batch, a stats row's unique clients are the distinct querying addresses
    of its minute, resolver and leg, as counted from the parsed capture directly: a client
    that comes back in a later batch is not counted again, and a new one is counted."""
    from sensor.parse.batch import address_text
    from sensor.track import LEG_NAMES
    conf = config(tmp_path, resolver_addresses=("10.1.0.53", "198.51.100.53"))
    conf = replace(conf, limits=replace(conf.limits, messages_per_batch=per_batch, frames_per_read=per_batch))
    replay([str(DATA / "demo-office-resolver.pcap")], conf, progress_to=None)
    want: dict[tuple, set] = {}
    tracker = Tracker(resolver_addresses=conf.resolver_set())
    batch = parse_file(str(DATA / "demo-office-resolver.pcap"))
    track = tracker.process(batch.messages)
    for ts, resolver, leg, client in zip(batch.messages["ts"].tolist(), track.resolver.tolist(),
                                         track.leg.tolist(), track.client.tolist()):
        key = (int(ts // 60 * 60), address_text(resolver), LEG_NAMES[leg])
        want.setdefault(key, set()).add(client)
    got = {(m, r, leg): n for m, r, leg, n in db_rows(
        conf.db_path, "SELECT minute, resolver, leg, unique_clients FROM stats WHERE leg != 'sensor'")}
    assert got == {key: len(clients) for key, clients in want.items()}
    assert max(got.values()) > 1                       # several clients share a row


def test_unique_clients_stop_at_the_limit_of_each_stats_row(tmp_path):
    """With max_clients_per_group, a row's set takes the clients of each batch while it holds
    fewer: a row with fewer distinct clients counts them all, a row with more counts at
    least the limit (the batch that reached it may add more), never more than it had, and
    rows that filled up stop taking clients while the others go on."""
    from sensor.parse.batch import address_text
    from sensor.track import LEG_NAMES
    limit = 2
    conf = config(tmp_path, resolver_addresses=("10.1.0.53", "198.51.100.53"))
    conf = replace(conf, limits=replace(conf.limits, messages_per_batch=7, frames_per_read=7,
                                        max_clients_per_group=limit))
    replay([str(DATA / "demo-office-resolver.pcap")], conf, progress_to=None)
    want: dict[tuple, set] = {}
    track = Tracker(resolver_addresses=conf.resolver_set()).process(
        parse_file(str(DATA / "demo-office-resolver.pcap")).messages)
    batch = parse_file(str(DATA / "demo-office-resolver.pcap"))
    for ts, resolver, leg, client in zip(batch.messages["ts"].tolist(), track.resolver.tolist(),
                                         track.leg.tolist(), track.client.tolist()):
        want.setdefault((int(ts // 60 * 60), address_text(resolver), LEG_NAMES[leg]), set()).add(client)
    got = {(m, r, leg): n for m, r, leg, n in db_rows(
        conf.db_path, "SELECT minute, resolver, leg, unique_clients FROM stats WHERE leg != 'sensor'")}
    assert got.keys() == want.keys()
    over = [key for key, clients in want.items() if len(clients) > limit]
    assert over and len(over) < len(want)
    for key, clients in want.items():
        if len(clients) <= limit:
            assert got[key] == len(clients), key
        else:
            assert limit <= got[key] <= len(clients), key


def test_demo_capture_is_rebuilt_byte_identical(tmp_path):
    import subprocess
    import sys
    out = tmp_path / "demo.pcap"
    subprocess.run([sys.executable, str(REPO / "tools" / "demo_capture.py"), str(out)], check=True,
                   capture_output=True)
    assert out.read_bytes() == (DATA / "demo-office-resolver.pcap").read_bytes()


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(st.integers(0, 2**64 - 1) | st.integers(0, 40), max_size=120), max_size=8))
def test_key_index_numbers_keys_by_arrival_across_batches(batches):
    """The compiled key index that tables hold across batches numbers each key by its first
    arrival, finds held keys and only those, and survives a pickle (a shipment)."""
    import pickle
    index, rows = _core.KeyIndex(), {}
    for values in batches:
        v = np.array(values, dtype=np.uint64)
        before = len(rows)
        got, first = index.add(v)
        new_positions = []
        for i, x in enumerate(values):
            if x not in rows:
                rows[x] = len(rows)
                new_positions.append(i)
        assert got.tolist() == [rows[x] for x in values]
        assert first.tolist() == new_positions and len(index) == len(rows) >= before
        assert index.keys.tolist() == list(rows)
    probe = np.array(list(rows) + [7, 2**63 + 5], dtype=np.uint64)
    want = [rows.get(x, -1) for x in probe.tolist()]
    assert index.find(probe).tolist() == want
    assert pickle.loads(pickle.dumps(index)).find(probe).tolist() == want
    with pytest.raises(ValueError):
        _core.KeyIndex(np.array([3, 4, 3], dtype=np.uint64))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 2**64 - 1) | st.integers(0, 20), max_size=300))
def test_group_u64_agrees_with_numpy(values):
    from sensor import _core
    keys = np.array(values, dtype=np.uint64)
    ts = np.arange(len(keys), dtype=np.float64)[::-1].copy()
    first, inverse, counts, tmin, tmax = _core.group_u64(keys, ts)
    uniq, ucounts = np.unique(keys, return_counts=True)
    assert sorted(keys[first].tolist()) == uniq.tolist()
    assert np.array_equal(keys[first][inverse], keys)
    assert dict(zip(keys[first].tolist(), counts.tolist())) == dict(zip(uniq.tolist(), ucounts.tolist()))
    for g, k in enumerate(keys[first].tolist()):
        assert tmin[g] == ts[keys == k].min() and tmax[g] == ts[keys == k].max()
    assert first.tolist() == sorted(first.tolist())          # order of first appearance


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 40), max_size=200))
def test_first_occurrences_are_each_values_first_index(values):
    from sensor import _core
    rows = np.array(values, dtype=np.int64)
    _, at = np.unique(rows, return_index=True)
    assert _core.first_occurrences(rows, 41).tolist() == sorted(at.tolist())
    if values:
        with pytest.raises(ValueError, match="outside"):
            _core.first_occurrences(rows, max(values))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 9), st.integers(-5, 1000)), min_size=1, max_size=60), st.data())
def test_sum_row_runs_agrees_with_reduceat(cells, data):
    """The per-minute tables sum the rows they fold into 'other' run by run."""
    from sensor import _core
    table = np.array([[v, v * 3, -v] for _, v in cells], dtype=np.int64)
    rows = np.array(data.draw(st.lists(st.integers(0, len(cells) - 1), min_size=1, max_size=40)), dtype=np.int64)
    cuts = sorted(set(data.draw(st.lists(st.integers(1, len(rows) - 1), max_size=5)) if len(rows) > 1 else []))
    starts = np.array([0, *cuts], dtype=np.int64)
    want = np.add.reduceat(table[rows], starts, axis=0)
    assert _core.sum_row_runs(table, rows, starts).tolist() == want.tolist()
    with pytest.raises(ValueError):
        _core.sum_row_runs(table, rows, np.array([0, 0], dtype=np.int64))        # an empty run
    with pytest.raises(ValueError):
        _core.sum_row_runs(table, np.array([len(cells)], dtype=np.int64), starts[:1])


def test_pending_rows_are_the_pending_dtype_rows_of_the_messages():
    from sensor import _core
    from sensor.track import PENDING_DTYPE
    rng = np.random.default_rng(3)
    n = 50
    key, loose = rng.integers(0, 2**64, n, dtype=np.uint64), rng.integers(0, 2**64, n, dtype=np.uint64)
    ts = rng.random(n) * 1e9
    resolver = rng.integers(0, 2**64, (n, 2), dtype=np.uint64)
    leg = rng.integers(0, 2, n).astype(np.uint8)
    messages = np.array([7, 0, 49, 7, 12], dtype=np.int64)
    want = np.zeros(len(messages), dtype=PENDING_DTYPE)
    want["key"], want["loose"], want["ts"] = key[messages], loose[messages], ts[messages]
    want["resolver"], want["leg"] = resolver.view("V16").reshape(-1)[messages], leg[messages]
    out = np.full((len(messages), PENDING_DTYPE.itemsize // 8), 0xFF, dtype=np.uint64)
    _core.pending_rows(out, key, loose, ts, resolver, leg, messages)
    assert out.tobytes() == want.tobytes()
    with pytest.raises(ValueError, match="outside"):
        _core.pending_rows(out[:1], key, loose, ts, resolver, leg, np.array([n], dtype=np.int64))


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 40), st.data())
def test_drop_rows_keeps_the_other_rows_in_order(n, data):
    from sensor import _core
    rows = np.arange(n * 6, dtype=np.uint64).reshape(n, 6)
    drop = sorted(data.draw(st.sets(st.integers(0, n - 1), max_size=n)) if n else [])
    want = np.delete(rows, drop, axis=0)
    left = _core.drop_rows(rows, np.array(drop, dtype=np.int64))
    assert left == len(want) and rows[:left].tolist() == want.tolist()
    if n >= 2:
        with pytest.raises(ValueError, match="ascend"):
            _core.drop_rows(rows, np.array([1, 1], dtype=np.int64))


def test_group_u64_table_grows_with_the_groups():
    """More distinct keys than the table starts with: it grows (several times) and loses
    no group, with keys that differ in their high bits only among them."""
    from sensor import _core
    rng = np.random.default_rng(7)
    distinct = np.r_[rng.integers(0, 2**63, 30_000, dtype=np.uint64),
                     np.arange(5_000, dtype=np.uint64) << np.uint64(40)]
    keys = distinct[rng.integers(0, len(distinct), 120_000)]
    ts = rng.random(len(keys))
    first, inverse, counts, tmin, tmax = _core.group_u64(keys, ts)
    uniq, at, ucounts = np.unique(keys, return_index=True, return_counts=True)
    order = np.argsort(at)
    assert first.tolist() == at[order].tolist()
    assert counts.tolist() == ucounts[order].tolist()
    assert np.array_equal(keys[first][inverse], keys)
    by_group = np.argsort(inverse, kind="stable")
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    assert np.array_equal(tmin, np.minimum.reduceat(ts[by_group], starts))
    assert np.array_equal(tmax, np.maximum.reduceat(ts[by_group], starts))


_ADDRESS_BYTES = st.binary(min_size=16, max_size=16) | st.binary(min_size=4, max_size=4).map(
    lambda v4: bytes(10) + b"\xff\xff" + v4) | st.lists(st.sampled_from([0, 0, 0, 1, 0xFF]), min_size=16,
                                                     max_size=16).map(bytes)


@settings(max_examples=200, deadline=None)
@given(st.lists(_ADDRESS_BYTES, max_size=50))
def test_address_texts_agree_with_address_text(raws):
    """The compiled formatting of a table of address keys writes each as address_text does
    (inet_ntop): IPv4-mapped keys dotted, IPv6 with the longest zero run shortened."""
    from sensor import _core
    from sensor.parse.batch import address_text
    table = np.frombuffer(b"".join(raws), dtype=np.uint8).reshape(-1, 16)
    assert _core.address_texts(table) == [address_text(r) for r in raws]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 2**64 - 1) | st.integers(0, 20), max_size=200),
       st.lists(st.integers(0, 2**64 - 1) | st.integers(0, 20), max_size=200))
def test_isin_keys_agrees_with_numpy(values, keys):
    from sensor.track import isin_keys
    v, k = np.array(values, dtype=np.uint64), np.array(keys, dtype=np.uint64)
    assert np.array_equal(isin_keys(v, k), np.isin(v, k))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 2**64 - 1) | st.integers(0, 20), max_size=200),
       st.lists(st.integers(0, 2**64 - 1) | st.integers(0, 20), max_size=200))
def test_positions_among_keys_agree_with_numpy_on_a_column_read_in_place(values, keys):
    """The tracker looks its pending queries' keys up in place, a column of their rows."""
    from sensor import _core
    from sensor.track import PENDING_DTYPE
    rows = np.zeros(len(values), dtype=PENDING_DTYPE)
    rows["key"] = np.array(values, dtype=np.uint64)
    k = np.array(keys, dtype=np.uint64)
    assert len(values) < 2 or rows["key"].strides[0] == PENDING_DTYPE.itemsize
    assert _core.positions_among(rows["key"], k).tolist() == np.flatnonzero(np.isin(rows["key"], k)).tolist()

@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 2**64 - 1) | st.integers(0, 20), max_size=200),
       st.lists(st.integers(0, 2**64 - 1) | st.integers(0, 20), max_size=200))
def test_index_keys_finds_first_occurrence(values, keys):
    from sensor.track import index_keys
    v, k = np.array(values, dtype=np.uint64), np.array(keys, dtype=np.uint64)
    expected = [keys.index(x) if x in keys else -1 for x in values]
    assert index_keys(v, k).tolist() == expected



@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 2**64 - 1) | st.integers(0, 30), max_size=20),
       st.lists(st.integers(0, 2**64 - 1) | st.integers(0, 30), min_size=200, max_size=400))
def test_index_keys_among_many_more_keys_finds_first_occurrence(values, keys):
    """Keys that outnumber the values (a batch's looked up among those held) are looked up
    through a table of the values: same answers, duplicates on either side included."""
    from sensor.track import index_keys, isin_keys
    v, k = np.array(values, dtype=np.uint64), np.array(keys, dtype=np.uint64)
    expected = [keys.index(x) if x in keys else -1 for x in values]
    assert index_keys(v, k).tolist() == expected
    assert np.array_equal(isin_keys(v, k), np.isin(v, k))

def _matching_by_definition(key: list[int], ts: list[float], is_response: list[bool]):
    """Query/response matching as defined, by brute force: events in (time, kind, capture)
    order; a response goes to the latest query before it with its key; the first response
    to a query answers it, later ones are duplicates; a query is open when no response went
    to it and no later query has its key."""
    n = len(key)
    taken = sorted(range(n), key=lambda e: (ts[e], is_response[e], e))
    rank = {e: r for r, e in enumerate(taken)}
    query_of = {}
    for r in (e for e in taken if is_response[e]):
        before = [q for q in taken[:rank[r]] if not is_response[q] and key[q] == key[r]]
        query_of[r] = before[-1] if before else None
    replies = {q: [r for r in taken if query_of.get(r) == q and q is not None] for q in range(n)
               if not is_response[q]}
    state = [0] * n
    rtt = [None] * n
    multi = [False] * n
    for q, rs in replies.items():
        for i, r in enumerate(rs):
            state[r] = 1 if i == 0 else 2
            multi[r] = len(rs) > 1
        if rs:
            rtt[rs[0]] = ts[rs[0]] - ts[q]
    unmatched = [e for e in taken if is_response[e] and query_of[e] is None]
    superseded = {q for q in replies if any(not is_response[o] and key[o] == key[q] and rank[o] > rank[q]
                                           for o in range(n))}
    open_ = [q for q in taken if q in replies and not replies[q] and q not in superseded]
    return state, rtt, multi, unmatched, open_


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 6), st.booleans()), max_size=60), st.booleans())
def test_event_matching_follows_its_definition(events, time_ordered):
    """The core's one-pass matching answers, duplicates, multi-answered, unmatched and open
    exactly as the definition says, for events in time order and out of it (which it
    refuses to take as given, and takes in the order the tracker sorts them)."""
    if time_ordered:
        events = sorted(events, key=lambda e: (e[1], e[2]))
    key = np.array([e[0] for e in events], dtype=np.uint64)
    ts = np.array([e[1] for e in events], dtype=np.float64) / 7      # not whole seconds
    kind = np.array([e[2] for e in events], dtype=np.uint8)
    want = _matching_by_definition(key.tolist(), ts.tolist(), [bool(k) for k in kind])
    got = _core.match_events(key, ts, kind)
    in_order = all((ts[i], kind[i]) >= (ts[i - 1], kind[i - 1]) for i in range(1, len(events)))
    assert (got is not None) == in_order
    if got is None:
        got = _core.match_events(key, ts, kind, np.lexsort((kind, ts)))
    state, rtt, multi, unmatched, open_ = got
    assert state.tolist() == want[0]
    assert [None if np.isnan(x) else x for x in rtt.tolist()] == want[1]
    assert multi.tolist() == want[2]
    assert unmatched.tolist() == want[3]
    assert open_.tolist() == want[4]


def _raced_by_definition(q_loose: list[int], q_key: list[int], q_ts: list[float], loose: int, ts: float) -> int:
    """The query a response with the wrong id or port raced: of the queries with its
    question, the latest at or before it (queries first at equal times, later in the list
    later), else the earliest after it; 0 when none."""
    mine = [(q_ts[j], j) for j in range(len(q_loose)) if q_loose[j] == loose]
    before = [m for m in mine if m[0] <= ts]
    pick = max(before) if before else min(mine, default=None)
    return q_key[pick[1]] if pick else 0


_TRACKED_ADDRESSES = [address_key(a) for a in ("192.0.2.1", "192.0.2.2", "192.0.2.53")]


@settings(max_examples=250, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 1), st.integers(0, 1), st.integers(0, 2),
                          st.booleans(), st.sampled_from([0.0, 0.5, 1.0, 2.5, 7.0, -1.5]),
                          st.sampled_from([17] * 5 + [6]), st.integers(0, 3)), max_size=70),
       st.integers(1, 12))
def test_tracker_over_batches_follows_the_definition(rows, max_pending):
    """Batch after batch, the tracker answers, duplicates, mismatches, races, times out and
    evicts as the definition says over every pending query and the batch's messages, also
    when a batch goes back in time: only the pending queries a batch's keys touch take
    part in its matching, and that must change nothing."""
    limits = replace(DEFAULT_LIMITS, query_timeout_s=5.0, max_pending_queries=max_pending)
    tracker = Tracker(limits)
    msgs = np.zeros(len(rows), dtype=MESSAGE_DTYPE)
    t = 1000.0
    for i, (client, port, txid, name, is_response, step, transport, _) in enumerate(rows):
        t = max(0.0, t + step)
        ends = (_TRACKED_ADDRESSES[client], _TRACKED_ADDRESSES[2], 40000 + port, 53)
        src, dst, sport, dport = (ends[1], ends[0], 53, ends[2]) if is_response else ends
        msgs[i] = np.zeros(1, dtype=MESSAGE_DTYPE)[0]
        for field, value in (("ts", t), ("src", src), ("dst", dst), ("sport", sport), ("dport", dport),
                             ("id", txid), ("qr", is_response), ("qtype", 1), ("qclass", 1),
                             ("name_hash", 1 + name), ("transport", transport)):
            msgs[field][i] = value
    cuts = [0] + [i + 1 for i, r in enumerate(rows) if r[7] == 0] + [len(rows)]
    pending: list[tuple[int, int, float]] = []          # (key, loose, ts) in time order
    for a, b in zip(cuts, cuts[1:]):
        batch = msgs[a:b]
        got = tracker.process(batch)
        key, loose, *_ = _core.track_columns(np.ascontiguousarray(batch), np.empty((0, 2), dtype=np.uint64), 0)
        key, loose, ts = key.tolist(), loose.tolist(), batch["ts"].tolist()
        resp = [bool(x) for x in batch["qr"]]
        np_ = len(pending)
        state, rtt, multi, unmatched, open_ = _matching_by_definition(
            [p[0] for p in pending] + key, [p[2] for p in pending] + ts, [False] * np_ + resp)
        want_state = state[np_:]
        queries = [i for i in range(len(key)) if not resp[i]]
        q_loose = [p[1] for p in pending] + [loose[i] for i in queries]
        q_key = [p[0] for p in pending] + [key[i] for i in queries]
        q_ts = [p[2] for p in pending] + [ts[i] for i in queries]
        want_raced = [0] * len(key)
        for e in unmatched:
            i = e - np_
            if loose[i] in q_loose and batch["transport"][i] == 17:
                want_state[i] = MISMATCHED
                want_raced[i] = _raced_by_definition(q_loose, q_key, q_ts, loose[i], ts[i])
            else:
                want_state[i] = UNSOLICITED
        assert got.state.tolist() == want_state
        assert [None if np.isnan(x) else x for x in got.rtt.tolist()] == rtt[np_:]
        assert got.multi.tolist() == multi[np_:]
        assert got.raced.tolist() == want_raced
        rows_of = pending + [(key[i], loose[i], ts[i]) for i in range(len(key))]
        pending = [rows_of[e] for e in open_]
        now = max(ts) if ts else 0.0
        expired = [p for p in pending if p[2] < now - 5.0]
        pending = [p for p in pending if p[2] >= now - 5.0]
        evicted = pending[:max(0, len(pending) - max_pending)]
        pending = pending[len(evicted):]
        assert got.unanswered["ts"].tolist() == [p[2] for p in expired]
        assert got.evicted.tolist() == [p[2] for p in evicted]
        assert list(zip(tracker.pending["key"].tolist(), tracker.pending["loose"].tolist(),
                        tracker.pending["ts"].tolist())) == pending


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 8)), max_size=40),
       st.lists(st.tuples(st.integers(0, 4), st.integers(0, 8)), max_size=30), st.booleans())
def test_race_lookup_finds_the_query_each_answer_raced(queries, responses, time_ordered):
    """The compiled lookup says, for each unmatched response, whether its question is
    outstanding and which query it raced, as the definition does; it refuses queries or
    responses out of time order (the tracker then sorts them)."""
    if time_ordered:
        queries, responses = sorted(queries, key=lambda q: q[1]), sorted(responses, key=lambda r: r[1])
    q_loose = np.array([q[0] for q in queries], dtype=np.uint64)
    q_key = np.arange(100, 100 + len(queries), dtype=np.uint64)
    q_ts = np.array([q[1] for q in queries], dtype=np.float64) / 3
    r_loose = np.array([r[0] for r in responses], dtype=np.uint64)
    r_ts = np.array([r[1] for r in responses], dtype=np.float64) / 3
    got = _core.race_lookup(q_loose, q_key, q_ts, r_loose, r_ts)
    in_order = bool(np.all(np.diff(q_ts) >= 0) and np.all(np.diff(r_ts) >= 0))
    assert (got is not None) == in_order
    if got is None:
        return
    asked, raced = got
    assert asked.tolist() == [r in q_loose.tolist() for r in r_loose.tolist()]
    assert raced.tolist() == [_raced_by_definition(q_loose.tolist(), q_key.tolist(), q_ts.tolist(), lo, t)
                              for lo, t in zip(r_loose.tolist(), r_ts.tolist())]
    if np.any(asked):           # the sorting path the tracker falls back on agrees
        from sensor.track import _raced_queries
        assert np.array_equal(_raced_queries(r_loose[asked], r_ts[asked], q_loose, q_key, q_ts), raced[asked])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(st.tuples(st.integers(0, 12), st.integers(1, 5)), max_size=30), max_size=6))
def test_keyed_counts_fold_batches_like_a_dict(batches):
    """Per-(minute, label) counters fold batch after batch (keys repeating within a batch
    and across batches) into what one dict of sums says."""
    from sensor.engine.aggregate import CLIENT_COLUMNS, KeyedCounts
    table, want = KeyedCounts(label_dtype=np.int64), {}
    for rows in batches:
        keys = np.array([k for k, _ in rows], dtype=np.uint64)
        counts = np.array([[n * (c + 1) for c in range(len(CLIENT_COLUMNS))] for _, n in rows],
                          dtype=np.int64).reshape(-1, len(CLIENT_COLUMNS))
        table.add(keys, keys.astype(np.int64) * 60, keys.astype(np.int64) + 100, counts)
        for k, n in rows:
            want[k] = want.get(k, 0) + n
    assert sorted(table.keys.tolist()) == sorted(want)
    for k, minute, label, c in zip(table.keys.tolist(), table.minute.tolist(), table.label.tolist(),
                                   table.counts.tolist()):
        assert (minute, label) == (k * 60, k + 100)
        assert c == [want[k] * (j + 1) for j in range(len(CLIENT_COLUMNS))]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(st.tuples(st.integers(0, 12), st.integers(0, 100), st.integers(1, 4)), max_size=20),
                max_size=6),
       st.integers(0, 14))
def test_seen_counts_keep_first_last_and_count_up_to_the_limit(batches, limit):
    """Passive-DNS rows: first and last seen are the extremes, counts add up, and once
    `limit` rows are held new keys are dropped and counted while held keys go on counting."""
    from sensor.engine.aggregate import SeenCounts
    table, held, dropped = SeenCounts(), {}, 0
    for rows in batches:
        by_key: dict[int, list] = {}
        for k, t, n in rows:                  # a batch arrives grouped: distinct keys
            e = by_key.setdefault(k, [t, t, 0])
            e[0], e[1], e[2] = min(e[0], t), max(e[1], t), e[2] + n
        keys = np.array(list(by_key), dtype=np.uint64)
        cols = np.array(list(by_key.values()), dtype=np.float64).reshape(-1, 3)
        got, appended = table.add(keys, cols[:, 0], cols[:, 1], cols[:, 2].astype(np.int64), limit)
        lost, now_held = 0, []
        for k, (first, last, n) in by_key.items():
            if k in held:
                h = held[k]
                h[0], h[1], h[2] = min(h[0], first), max(h[1], last), h[2] + n
            elif len(held) < limit:
                held[k] = [first, last, n]
                now_held.append(k)
            else:
                lost += n
        assert got == lost
        assert keys[appended].tolist() == now_held
        dropped += got
    assert {k: [f, l, c] for k, f, l, c in zip(table.keys.tolist(), table.first.tolist(),
                                               table.last.tolist(), table.count.tolist())} == held
    assert dropped + sum(h[2] for h in held.values()) == sum(n for rows in batches for _, _, n in rows)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(st.tuples(st.integers(0, 12), st.integers(0, 100)), max_size=30), max_size=6),
       st.integers(0, 14))
def test_seen_counts_fold_sightings_of_held_keys_in_place(batches, limit):
    """A batch's sightings (one row each, keys repeating) of keys the table holds are
    counted into their rows in one pass, first and last widened by each; the positions of
    the others come back in order, and grouped and added they leave the table as grouping
    every sighting first did."""
    from sensor.engine.aggregate import SeenCounts, _group_times
    table, held = SeenCounts(), {}
    for rows in batches:
        keys = np.array([k for k, _ in rows], dtype=np.uint64)
        ts = np.array([t for _, t in rows], dtype=np.float64)
        rest = table.fold(keys, ts)
        assert rest.tolist() == [i for i, (k, _) in enumerate(rows) if k not in held]
        for k, t in rows:
            if k in held:
                h = held[k]
                h[0], h[1], h[2] = min(h[0], t), max(h[1], t), h[2] + 1
        grouped, _, counts, first, last = _group_times(keys[rest], ts[rest])
        table.add(grouped, first, last, counts, limit)
        for k in grouped.tolist():
            if len(held) < limit:
                mine = [t for key, t in rows if key == k]
                held[k] = [min(mine), max(mine), len(mine)]
    assert {k: [f, l, c] for k, f, l, c in zip(table.keys.tolist(), table.first.tolist(),
                                               table.last.tolist(), table.count.tolist())} == held
    index = table._key_index()
    with pytest.raises(ValueError, match="one entry each"):
        index.fold_times(np.zeros(2, dtype=np.uint64), np.zeros(1), table.first, table.last, table.count)
    if len(table):
        with pytest.raises(ValueError, match="a row for every key held"):
            index.fold_times(table.keys, table.first, table.first[:-1], table.last, table.count)


def test_merged_seen_counts_keep_text_only_for_the_rows_they_hold():
    """A worker whose writer lags merges each shipment into the one it holds: rows beyond
    the limit are dropped and counted, and their text must go with them (it was kept, and
    the held table grew by every shipment's text)."""
    from sensor.engine.aggregate import SeenCounts

    def shipment(keys: range) -> SeenCounts:
        t = SeenCounts()
        k = np.array(list(keys), dtype=np.uint64)
        t.add(k, np.full(len(k), 1.0), np.full(len(k), 2.0), np.ones(len(k), dtype=np.int64), 10**6)
        t.text = {key: (f"n{key}.example", "A", "192.0.2.1") for key in k.tolist()}
        return t

    carry, dropped = SeenCounts(), 0
    for n in range(20):
        dropped += carry.merge(shipment(range(n * 100, n * 100 + 150)), limit=500)
    assert len(carry) == 500
    assert sorted(carry.text) == sorted(carry.keys.tolist())
    assert carry.text[120] == ("n120.example", "A", "192.0.2.1")
    assert dropped == 20 * 150 - sum(carry.count.tolist())
    assert len(carry.rows()) == 500


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 6), max_size=80), st.integers(0, 60))
def test_a_fair_share_cuts_only_the_largest_groups_to_a_common_cap(groups, limit):
    from sensor.engine.aggregate import fair_share
    keep = fair_share(np.array(groups, dtype=np.uint64), limit)
    assert int(keep.sum()) == min(len(groups), limit)
    kept = {g: int(keep[[x == g for x in groups]].sum()) for g in set(groups)}
    for g in kept:
        rows = [i for i, x in enumerate(groups) if x == g]
        assert keep[rows].tolist() == sorted(keep[rows].tolist(), reverse=True)    # a group's first rows
        if kept[g] < len(rows):             # cut: to the cap, which no group passes by more than one
            assert all(kept[h] <= kept[g] + 1 for h in kept)
    if len(set(groups)) == 1:
        assert keep.tolist() == [i < limit for i in range(len(groups))]            # first come


def test_a_flood_under_one_domain_leaves_room_for_the_records_of_others(tmp_path):
    """A wildcard answering random subdomains: every answer a new passive-DNS record under
    one registered domain, beyond what the table may hold. The records of other domains,
    seen after the flood filled the table, still get their places (first come, they were
    dropped); the flood's rows are cut and counted, and no count is lost unaccounted."""
    conf = config(tmp_path)
    conf = replace(conf, limits=replace(conf.limits, max_pdns_rows=100))
    rule = anomaly_burst.load(conf.rules_dir)
    conv = Conversation()
    for i in range(300):
        name = f"r{i:04x}q.wild.example"
        conv.exchange(f"198.18.0.{i % 200 + 1}", RESOLVER, name, f"{name} 60 A 192.0.2.7", txid=i, sport=20000 + i)
    for i, other in enumerate(("www.bank.example", "mail.school.example", "cdn.news.example")):
        conv.exchange(CLIENT, RESOLVER, other, f"{other} 300 A 203.0.113.{i + 1}", txid=1000 + i, sport=30000 + i)
    agg = _burst_aggregate(conf, rule, [conv.write(tmp_path / "wild.pcap")])
    held = {row[0] for row in agg.pdns.rows()}
    assert {"www.bank.example", "mail.school.example", "cdn.news.example"} <= held
    assert len(agg.pdns) == 100
    assert agg.dropped["pdns_overflow"] == 303 - sum(agg.pdns.count.tolist())

    # the same when a lagging writer's worker merges shipments: a held flood gives way
    from sensor.engine.aggregate import SeenCounts
    carry, other = SeenCounts(), SeenCounts()
    flood = np.arange(100, dtype=np.uint64)
    carry.add(flood, np.ones(100), np.ones(100), np.ones(100, dtype=np.int64), 100, np.full(100, 7, dtype=np.uint64))
    carry.text = {k: (f"r{k}.wild.example", "A", "192.0.2.7") for k in flood.tolist()}
    news = np.arange(1000, 1005, dtype=np.uint64)
    other.add(news, np.ones(5), np.ones(5), np.full(5, 2, dtype=np.int64), 100, news)
    other.text = {k: (f"n{k}.example", "A", "192.0.2.8") for k in news.tolist()}
    assert carry.merge(other, 100) == 5                 # five flood rows evicted
    assert set(news.tolist()) <= set(carry.keys.tolist()) and len(carry) == 100
    assert sorted(carry.text) == sorted(carry.keys.tolist())


def test_keyed_count_rows_keep_the_busiest_labels_per_minute_and_sum_the_rest():
    from sensor.engine.aggregate import CLIENT_COLUMNS, KeyedCounts
    table = KeyedCounts()
    addresses = [bytes(10) + b"\xff\xff" + bytes([192, 0, 2, i]) for i in range(5)]
    queries = {(0, 0): 5, (0, 1): 9, (0, 2): 1, (0, 3): 7, (60, 4): 2, (60, 0): 3}
    keys = np.arange(len(queries), dtype=np.uint64)
    counts = np.zeros((len(queries), len(CLIENT_COLUMNS)), dtype=np.int64)
    counts[:, 0] = list(queries.values())
    counts[:, 1] = 1
    table.add(keys, np.array([m for m, _ in queries], dtype=np.int64),
              np.array([addresses[a] for _, a in queries], dtype="V16"), counts)
    extra = [0] * (len(CLIENT_COLUMNS) - 2)
    assert sorted(table.rows(2)) == sorted([
        (0, "192.0.2.1", 9, 1, *extra), (0, "192.0.2.3", 7, 1, *extra),
        (0, "other", 6, 2, *extra),                            # 192.0.2.0 and 192.0.2.2
        (60, "192.0.2.0", 3, 1, *extra), (60, "192.0.2.4", 2, 1, *extra)])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 40), st.integers(0, 9)), max_size=40),
                min_size=1, max_size=6),
       st.integers(1, 5))
def test_a_compacted_keyed_table_writes_what_the_whole_one_would(shipments, limit):
    """A worker whose writer lags merges every shipment into the one it holds, and a flood
    from spoofed sources brings a new client with every query: compacted after each merge
    the table stays within `limit` labels and one 'other' row a minute, and the rows the
    writer stores from it are those it would have stored from everything merged."""
    from sensor.engine.aggregate import CLIENT_COLUMNS, KeyedCounts
    from sensor.track import hash_columns

    def table(rows) -> KeyedCounts:
        t = KeyedCounts()
        if rows:
            minute = np.array([m * 60 for m, _, _ in rows], dtype=np.int64)
            client = np.array([c for _, c, _ in rows], dtype=np.uint64)
            label = np.array([bytes(10) + b"\xff\xff" + bytes([10, 0, 0, c]) for _, c, _ in rows], dtype="V16")
            counts = np.zeros((len(rows), len(CLIENT_COLUMNS)), dtype=np.int64)
            counts[:, 0] = [q for _, _, q in rows]
            counts[:, 1] = 1
            t.add(hash_columns(minute.astype(np.uint64), client), minute, label, counts)
        return t

    def stored(rows: list[tuple]) -> dict:
        out: dict = {}
        for minute, label, *counts in rows:
            mine = out.setdefault((minute, label), [0] * len(counts))
            out[(minute, label)] = [a + b for a, b in zip(mine, counts)]
        return out

    whole, held = KeyedCounts(), KeyedCounts()
    for k, rows in enumerate(shipments):
        whole.merge(table(rows))
        held.merge(table(rows))
        held.compact(limit, bytes(16))
        assert max(np.unique(held.minute, return_counts=True)[1].tolist(), default=0) <= limit + 1
        if k == 0:           # compacted once: exactly what the writer would store anyway
            assert stored(held.rows(limit)) == stored(whole.rows(limit))
    # labels folded early may come back with later counts, so which labels keep a row may
    # differ; what is stored adds up the same minute by minute, within the bound
    want, got = stored(whole.rows(limit)), stored(held.rows(limit))
    for minute in {m for m, _ in want} | {m for m, _ in got}:
        totals = [[sum(col) for col in zip(*(v for (m, _), v in rows.items() if m == minute))]
                  for rows in (got, want)]
        assert totals[0] == totals[1]
        assert len([1 for (m, label) in got if m == minute and label != "other"]) <= limit


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 1), st.sampled_from([0, 2, 3, 5, 3841]),
                          st.integers(0, 70000)), max_size=80))
def test_minute_counts_agree_with_masks(rows):
    from sensor import _core
    keys = np.array([r[0] for r in rows], dtype=np.uint64)
    qr = np.array([r[1] for r in rows], dtype=np.uint8)
    rcode = np.array([r[2] for r in rows], dtype=np.uint16)
    size = np.array([r[3] for r in rows], dtype=np.uint32)
    first, counts = _core.minute_counts(keys, qr, rcode, size)
    assert keys[first].tolist() == list(dict.fromkeys(keys.tolist()))
    for k, got in zip(keys[first].tolist(), counts.tolist()):
        mine = keys == k
        q, r = mine & (qr == 0), mine & (qr == 1)
        assert got == [int(q.sum()), int(r.sum()), int((r & (rcode == 3)).sum()), int((r & (rcode == 2)).sum()),
                       int(size[q].sum()), int(size[r].sum())]


_ADDRESSES = [address_key(a) for a in ("192.0.2.10", "192.0.2.53", "224.0.0.251", "239.255.255.250",
                                       "2001:db8::1", "ff02::fb", "0.0.0.0", "fe80::1")]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 7), st.integers(0, 7), st.integers(0, 1), st.integers(0, 65535),
                          st.integers(0, 65535), st.integers(0, 65535), st.integers(0, 300), st.integers(0, 255),
                          st.integers(0, 2**64 - 1), st.integers(0, 2**20)), max_size=60),
       st.sets(st.integers(0, 7), max_size=3))
def test_track_columns_agree_with_column_arithmetic(rows, resolver_picks):
    """The tracker's one pass over the rows gives what the column-by-column numpy
    formulation gives: keys, the querying side, legs, multicast and untrackable rows."""
    from sensor import _core, schema
    from sensor.track import UNTRACKABLE, address_words, hash_columns
    msgs = np.zeros(len(rows), dtype=schema.MESSAGE_DTYPE)
    for i, (s, d, qr, sport, dport, mid, qtype, qclass, name_hash, anomalies) in enumerate(rows):
        msgs[i]["src"], msgs[i]["dst"] = _ADDRESSES[s], _ADDRESSES[d]
        msgs[i]["qr"], msgs[i]["sport"], msgs[i]["dport"], msgs[i]["id"] = qr, sport, dport, mid
        msgs[i]["qtype"], msgs[i]["qclass"], msgs[i]["name_hash"], msgs[i]["anomalies"] = (
            qtype, qclass, name_hash, anomalies)
    resolvers = sorted(_ADDRESSES[k] for k in resolver_picks)
    res_words = (np.frombuffer(b"".join(resolvers), dtype="<u8").reshape(-1, 2) if resolvers
                 else np.empty((0, 2), dtype=np.uint64))
    key, loose, client, resolver, leg, tracked, server_res, is_response, client_hash, server_hash = (
        _core.track_columns(msgs, res_words, UNTRACKABLE))

    def multicast(w):
        mapped = (w[:, 0] == 0) & ((w[:, 1] & np.uint64(0xFFFFFFFF)) == np.uint64(0xFFFF0000))
        octet = (w[:, 1] >> np.uint64(32)) & np.uint64(0xFF)
        return (mapped & (octet >= 224) & (octet <= 239)) | (~mapped & ((w[:, 0] & np.uint64(0xFF)) == 0xFF))

    def is_resolver(w):
        out = np.zeros(len(w), dtype=bool)
        for w0, w1 in res_words:
            out |= (w[:, 0] == w0) & (w[:, 1] == w1)
        return out

    sw, dw = address_words(msgs["src"]), address_words(msgs["dst"])
    isq = msgs["qr"] == 0
    cw, vw = np.where(isq[:, None], sw, dw), np.where(isq[:, None], dw, sw)
    cport = np.where(isq, msgs["sport"], msgs["dport"]).astype(np.uint64)
    vport = np.where(isq, msgs["dport"], msgs["sport"]).astype(np.uint64)
    question = (msgs["qtype"].astype(np.uint64) << np.uint64(16)) | msgs["qclass"].astype(np.uint64)
    assert key.tolist() == hash_columns(cw[:, 0], cw[:, 1], vw[:, 0], vw[:, 1], (cport << np.uint64(16)) | vport,
                                        (msgs["id"].astype(np.uint64) << np.uint64(32)) | question,
                                        msgs["name_hash"]).tolist()
    assert loose.tolist() == hash_columns(cw[:, 0], cw[:, 1], vw[:, 0], vw[:, 1], question,
                                          msgs["name_hash"]).tolist()
    up = is_resolver(cw)
    assert client.tolist() == cw.tolist()
    assert resolver.tolist() == np.where(up[:, None], cw, vw).tolist()
    assert leg.tolist() == up.astype(np.uint8).tolist()
    assert server_res.tolist() == is_resolver(vw).tolist()
    assert tracked.tolist() == (~multicast(sw) & ~multicast(dw)
                                & ((msgs["anomalies"] & np.uint64(UNTRACKABLE)) == 0)).tolist()
    assert is_response.tolist() == (~isq).astype(np.uint8).tolist()
    assert client_hash.tolist() == hash_columns(cw[:, 0], cw[:, 1]).tolist()
    assert server_hash.tolist() == hash_columns(vw[:, 0], vw[:, 1]).tolist()


@pytest.mark.parametrize("capture", ["dnscap-baseline-udp-82-msgs.pcap", "gdc-baseline-udp-33-msgs.pcap",
                                     "demo-office-resolver.pcap"])
def test_answer_records_agree_with_column_masks(capture):
    """Passive DNS's one pass over the records picks the rows and keys the column masks
    pick: answers (OPT aside) of NOERROR responses, spoofed (mismatched) ones left out."""
    from sensor import _core
    from sensor.track import hash_columns
    batch = parse_file(str(DATA / capture))
    msgs, rrs = batch.messages, batch.rrs
    state = np.random.default_rng(7).integers(0, 5, len(msgs)).astype(np.uint8)
    columns = [np.ascontiguousarray(msgs[name]) for name in ("qr", "rcode", "ts")]
    rows, keys, ts = _core.answer_records(rrs, batch.arena, *columns, state, MISMATCHED)
    owner = rrs["msg"]
    answered = (msgs["qr"] == 1) & (msgs["rcode"] == 0) & (state != MISMATCHED)
    ok = (rrs["section"] == 1) & (rrs["type"] != 41) & answered[owner]
    assert ok.any() and (~ok).any()
    assert rows.tolist() == np.flatnonzero(ok).tolist()
    arena = batch.arena
    nh = _core.span_hashes(arena, rrs["name_off"][ok].copy(), rrs["name_len"][ok].astype(np.uint32))
    rh = _core.span_hashes(arena, rrs["rdata_off"][ok].copy(), rrs["rdata_len"][ok].copy())
    assert keys.tolist() == hash_columns(nh, rh, rrs["type"][ok]).tolist()
    assert ts.tolist() == msgs["ts"][owner[ok]].tolist()
    with pytest.raises(ValueError):
        _core.answer_records(rrs, arena[:10], *columns, state, MISMATCHED)
    with pytest.raises(ValueError):
        _core.answer_records(rrs, arena, *columns, state[:-1], MISMATCHED)


@pytest.mark.parametrize("capture", ["dnscap-baseline-udp-82-msgs.pcap", "demo-office-resolver.pcap"])
def test_nxdomain_records_agree_with_column_masks(capture):
    """Passive DNS's NXDOMAIN pass picks the responses the column masks pick (rcode 3,
    a question, not spoofed), keyed by name hash and qtype."""
    from sensor import _core
    from sensor.track import hash_columns
    msgs = parse_file(str(DATA / capture)).messages
    msgs["rcode"][::3] = 3          # enough NXDOMAIN among queries and responses alike
    msgs["qdcount"][::7] = 0
    state = np.random.default_rng(3).integers(0, 5, len(msgs)).astype(np.uint8)
    columns = [np.ascontiguousarray(msgs[name]) for name in NXDOMAIN_COLUMNS]
    rows, keys, ts = _core.nxdomain_records(*columns, state, MISMATCHED)
    nx = (msgs["qr"] == 1) & (msgs["rcode"] == 3) & (msgs["qdcount"] > 0) & (state != MISMATCHED)
    assert nx.any() and (~nx & (msgs["rcode"] == 3)).any()
    assert rows.tolist() == np.flatnonzero(nx).tolist()
    assert keys.tolist() == hash_columns(msgs["name_hash"][nx], msgs["qtype"][nx]).tolist()
    assert ts.tolist() == msgs["ts"][nx].tolist()
    with pytest.raises(ValueError):
        _core.nxdomain_records(*columns, state[:-1], MISMATCHED)
    with pytest.raises(ValueError):
        _core.nxdomain_records(*columns[:2], columns[2][:-1], *columns[3:], state, MISMATCHED)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.sampled_from([0, 2, 3, 5, 31, 32, 3841]),
                          st.sampled_from([1, 28, 255, 256, 65535]), st.integers(0, 70000), st.integers(0, 3),
                          st.integers(0, 6), st.floats(0, 5) | st.just(float("nan"))), max_size=80))
def test_stats_counts_agree_with_masks(rows):
    from sensor import _core, schema
    n = len(rows)
    msgs = np.zeros(n, dtype=schema.MESSAGE_DTYPE)
    for i, (qr, rcode, qtype, size, _, _, _) in enumerate(rows):
        msgs[i]["qr"], msgs[i]["rcode"], msgs[i]["qtype"], msgs[i]["size"] = qr, rcode, qtype, size
    group = np.array([r[4] for r in rows], dtype=np.int64)
    state = np.array([r[5] for r in rows], dtype=np.uint8)
    rtt = np.array([r[6] for r in rows], dtype=np.float64)
    columns = [np.ascontiguousarray(msgs[name]) for name in ("qr", "rcode", "qtype", "size")]
    totals, rcodes, qtypes, states, rtt_ms, rare = _core.stats_counts(*columns, group, 4, state, rtt)
    isq, isr = msgs["qr"] == 0, msgs["qr"] == 1
    for g in range(4):
        mine = group == g
        assert totals[g].tolist() == [int((mine & isq).sum()), int((mine & isr).sum()),
                                      int(msgs["size"][mine & isq].sum()), int(msgs["size"][mine & isr].sum())]
        for code in (0, 2, 3, 5, 31):
            assert rcodes[g, code] == int((mine & isr & (msgs["rcode"] == code)).sum())
        for code in (1, 28, 255):
            assert qtypes[g, code] == int((mine & isq & (msgs["qtype"] == code)).sum())
        for s in range(7):
            assert states[g, s] == int((mine & (state == s)).sum())
        assert rtt_ms[g] == pytest.approx(float(np.nansum(rtt[mine]) * 1000.0))
    assert rcodes.sum() + qtypes.sum() + int(rare.sum()) == n
    assert rare.tolist() == ((isr & (msgs["rcode"] >= 32)) | (isq & (msgs["qtype"] >= 256))).tolist()
    with pytest.raises(ValueError):
        _core.stats_counts(*columns, group, 3 if n and group.max() == 3 else -1, state, rtt)
    if n:
        with pytest.raises(ValueError):
            _core.stats_counts(*columns[:3], columns[3][:-1], group, 4, state, rtt)


def _numpy_hash_columns(*columns):
    """sensor.track.hash_columns as numpy spells it: each column astype(uint64), mixed in."""
    mix, finish = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9)
    h = np.full(len(columns[0]), 0x243F6A8885A308D3, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for c in columns:
            h = (h ^ np.broadcast_to(np.asarray(c), h.shape).astype(np.uint64)) * mix
            h ^= h >> np.uint64(31)
        return (h ^ (h >> np.uint64(29))) * finish


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 40), st.lists(st.sampled_from(["u8", "i8", "u4", "i4", "u2", "i2", "u1", "i1", "?", "f8",
                                                     ">u4", "words", "scalar"]), min_size=1, max_size=7),
       st.integers(0, 2**32))
def test_hash_columns_read_every_integer_width_in_place_as_astype_would(n, kinds, seed):
    """The core mixes columns of any integer width and stride in place: the keys are those
    of converting each column with astype(uint64) first (signed values wrap, and a
    big-endian column is converted, not read as it lies)."""
    from sensor.track import hash_columns
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 2**64, size=(n, 2), dtype=np.uint64)
    columns = [rng.integers(0, 2**64, n, dtype=np.uint64)]
    for kind in kinds:
        if kind == "words":
            columns.append(raw[:, 1])                       # a strided view
        elif kind == "scalar":
            columns.append(7)
        elif kind == "f8":
            columns.append(rng.random(n) * 1e6)
        else:
            columns.append((raw[:, 0] & np.uint64(1)).astype(bool) if kind == "?" else raw[:, 0].astype(kind))
    assert hash_columns(*columns).tolist() == _numpy_hash_columns(*columns).tolist()


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 2e9) | st.sampled_from([59.99999999999999, 119.99999999999999, 1e9 - 1e-7,
                                                                 60.0, 0.0]),
                          st.integers(0, 7), st.integers(0, 1)), max_size=60), st.booleans())
def test_minute_keys_agree_with_column_arithmetic(rows, tagged):
    from sensor import _core, schema
    from sensor.track import address_words, hash_columns
    msgs = np.zeros(len(rows), dtype=schema.MESSAGE_DTYPE)
    for i, (ts, a, _) in enumerate(rows):
        msgs[i]["ts"], msgs[i]["src"] = ts, _ADDRESSES[a]
    words = address_words(msgs["src"])
    tag = np.array([r[2] for r in rows], dtype=np.uint8)
    expected = (msgs["ts"] // 60).astype(np.int64) * 60
    ts = np.ascontiguousarray(msgs["ts"])
    minute = _core.message_windows(ts, 60)
    assert minute.tolist() == expected.tolist()
    keys = _core.minute_keys(minute, words, tag if tagged else None)
    assert _core.message_windows(ts, 300).tolist() == ((msgs["ts"] // 300).astype(np.int64) * 300).tolist()
    # in time order, as a batch mostly is: runs within one window reuse it
    assert _core.message_windows(np.sort(ts), 60).tolist() == sorted(expected.tolist())
    columns = [expected.astype(np.uint64), words[:, 0], words[:, 1]] + ([tag] if tagged else [])
    assert keys.tolist() == hash_columns(*columns).tolist()


@pytest.mark.parametrize("capture", ["demo-office-resolver.pcap", "dnscap-linux-sll2-nxdomain-dnssec.pcap"])
def test_registered_domain_columns_agree_with_column_arithmetic(capture):
    from sensor import _core
    batch = parse_file(str(DATA / capture))
    m = batch.messages
    off, length, hashes = _core.regdom_columns(m, batch.arena)
    assert off.tolist() == (m["qname_off"] + m["regdom_off"]).tolist()
    assert length.tolist() == (m["qname_len"].astype(np.int64) - m["regdom_off"]).clip(0).tolist()
    assert hashes.tolist() == _core.span_hashes(batch.arena, off, length).tolist()
    for i in range(len(m)):                  # the registered domain ends the question name
        assert batch.qname(i).encode().endswith(batch.arena[off[i]:off[i] + length[i]])
    with pytest.raises(ValueError):
        _core.regdom_columns(m, batch.arena[:8])


@pytest.mark.parametrize("capture, read, at_least", [
    ("demo-office-resolver.pcap", 4, 12),                 # more than the batch's first capacity
    ("demo-office-resolver.pcap", 100_000, 1000),         # many chunks copied in one read
    ("suricata-tcp-pipelined-20-query-response-pairs.pcap", 4, 12),  # messages added after the frames
    ("gdc-ipv4-fragmented-response-dnskey.pcap", 4, 2),
    ("suricata-malformed-tcp1053-1500-questions-overlong-qnames.pcap", 4, 1),
    ("generated-out-of-bailiwick.pcap", 3, 4),
])
def test_hot_columns_are_the_fields_of_the_rows(capture, read, at_least):
    """The columns the compiled parser copies out while parsing are each message's own
    fields, registered domain and records out of bailiwick, also for messages reassembled
    outside add_frames() and reordered into frame order, and across a batch that outgrows
    its first capacity."""
    from sensor.schema import HOT_COLUMNS
    limits = replace(DEFAULT_LIMITS, messages_per_batch=8, frames_per_read=read)   # room for 8 + read
    parser = Parser(ports=(53, 1053), limits=limits, hot_columns=HOT_COLUMNS)
    for frames in read_frames(str(DATA / capture), read):
        parser.feed(frames)                   # no take() in between: the batch grows
    parser.drain()
    batch = parser.take()
    assert len(batch) >= at_least
    m = batch.messages
    assert set(batch.columns) == set(HOT_COLUMNS) | set(_core.DERIVED_COLUMNS)
    for name in HOT_COLUMNS:
        assert batch.columns[name].tolist() == m[name].tolist(), name
    expected = _core.regdom_columns(m, batch.arena)
    for name, column in zip(_core.REGDOM_COLUMNS, expected):
        assert batch.columns[name].tolist() == column.tolist(), name
    strays = _core.out_of_bailiwick(m, batch.rrs, batch.arena)
    assert batch.columns[_core.BAILIWICK_COLUMN].tolist() == strays.tolist()
    assert batch.bailiwick_strays is batch.columns[_core.BAILIWICK_COLUMN]
    if capture == "generated-out-of-bailiwick.pcap":
        assert strays.max() > 0
    # a parser without them copies the same columns out of the finished rows
    parser.core.set_hot_columns(())
    parser.feed(next(read_frames(str(DATA / capture), 4)))
    cold = parser.take()
    assert cold.columns == {}
    assert cold.column("ts").tolist() == m["ts"][:len(cold)].tolist()
    assert cold.regdom_hash.tolist() == expected[2][:len(cold)].tolist()
    assert cold.bailiwick_strays.tolist() == strays[:len(cold)].tolist()


def test_records_out_of_bailiwick_counted_while_parsing_are_those_counted_after():
    """Every capture of tests/data, parsed in small reads with the hot columns: the records
    the parser found out of bailiwick are those out_of_bailiwick() finds in the finished batch."""
    from sensor.schema import HOT_COLUMNS
    strays_seen = to_explain = 0
    for path in sorted(DATA.glob("*.pcap*")):
        parser = Parser(ports=(53, 1053, 5353), hot_columns=HOT_COLUMNS)
        for batch in parser.parse_file(str(path)):
            expected = _core.out_of_bailiwick(batch.messages, batch.rrs, batch.arena)
            assert batch.columns[_core.BAILIWICK_COLUMN].tolist() == expected.tolist(), path.name
            strays_seen += int(expected.sum())
            rrs = batch.rrs
            to_explain += len(np.unique(rrs["msg"][(rrs["section"] > 1) & ~np.isin(rrs["type"], (41, 250, 24))]))
    assert strays_seen > 0 and to_explain > 100


def test_hot_columns_follow_messages_put_back_into_frame_order(tmp_path):
    """TCP messages are parsed after the UDP ones read with them, then the batch is put in
    frame order: the hot columns move with their rows."""
    from pcapgen import TCP_SYN, tcp_frame
    from sensor.schema import HOT_COLUMNS
    frames = [(1.0, tcp_frame(b"", CLIENT, RESOLVER, 40000, 53, seq=0, flags=TCP_SYN))]
    seq = 1
    for i in range(6):
        wire = query(f"tcp{i}.example.com", "TXT", txid=100 + i).pack()
        segment = struct.pack("!H", len(wire)) + wire
        frames.append((2.0 + i, tcp_frame(segment, CLIENT, RESOLVER, 40000, 53, seq=seq)))
        seq += len(segment)
        frames.append((2.5 + i, udp_frame(query(f"udp{i}.example.org", txid=i).pack(), CLIENT, RESOLVER,
                                          30000 + i, 53)))
    parser = Parser(hot_columns=HOT_COLUMNS)
    for read in read_frames(str(write_pcap(tmp_path / "mixed.pcap", frames)), 100):
        parser.feed(read)
    batch = parser.take()
    m = batch.messages
    assert [batch.qname(i)[:3] for i in range(len(m))] == ["tcp", "udp"] * 6
    for name in HOT_COLUMNS:
        assert batch.columns[name].tolist() == m[name].tolist(), name
    assert batch.regdom_hash.tolist() == _core.regdom_columns(m, batch.arena)[2].tolist()
    assert (batch.columns[_core.BAILIWICK_COLUMN].tolist()
            == _core.out_of_bailiwick(m, batch.rrs, batch.arena).tolist())


def test_the_engine_parser_copies_out_what_the_engine_reads(tmp_path):
    from sensor.rules import load_dir
    from sensor.schema import HOT_COLUMNS
    pipeline = Pipeline(config(tmp_path), anomaly_burst.AnomalyBurstRule())
    assert pipeline.parser.core.hot_names == HOT_COLUMNS
    assert Parser().core.hot_names == ()          # a parser on its own copies nothing out
    # records out of bailiwick are counted while parsing only for a rule that reads them
    assert not pipeline.parser.core.count_bailiwick
    rules = load_dir(REPO / "rules")
    reading = [r for r in rules if "out_of_bailiwick" in r.reads]
    assert reading and len(reading) < len(rules)
    pipeline.reconfigure(config(tmp_path), anomaly_burst.AnomalyBurstRule(), reading)
    assert pipeline.parser.core.count_bailiwick
    for frames in read_frames(str(DATA / "generated-out-of-bailiwick.pcap"), 100):
        pipeline.parser.feed(frames)
    batch = pipeline.parser.take()
    assert batch.columns[_core.BAILIWICK_COLUMN].max() > 0
    pipeline.reconfigure(config(tmp_path), anomaly_burst.AnomalyBurstRule(), [r for r in rules if r not in reading])
    assert not pipeline.parser.core.count_bailiwick
    for frames in read_frames(str(DATA / "generated-out-of-bailiwick.pcap"), 100):
        pipeline.parser.feed(frames)
    cold = pipeline.parser.take()
    assert _core.BAILIWICK_COLUMN not in cold.columns
    assert cold.bailiwick_strays.tolist() == batch.columns[_core.BAILIWICK_COLUMN].tolist()



def test_the_shipped_rules_read_only_fields_the_parser_copies_out(tmp_path, monkeypatch):
    """A message field a rule reads that is not a hot column is copied out of the finished
    rows, pulling the whole batch through the cache for each batch: the shipped rules read
    none such (a rule that starts to must add its field to schema.HOT_COLUMNS)."""
    from sensor.parse.batch import Batch
    from sensor.rules import load_dir
    copied: list[str] = []
    column = Batch.column

    def recording(self, name):
        if name not in self.columns:
            copied.append(name)
        return column(self, name)
    monkeypatch.setattr(Batch, "column", recording)
    rules = load_dir(REPO / "rules")
    pipeline = Pipeline(config(tmp_path), anomaly_burst.AnomalyBurstRule(), rules)
    for name in ("demo-office-resolver.pcap", "generated-water-torture.pcap", "generated-dga-client.pcap"):
        for frames in read_frames(str(DATA / name), 1000):
            pipeline.feed(frames)
    assert pipeline.process() > 0
    assert pipeline.acc.agg.rules          # the rules ran and some kept groups
    assert copied == []


@pytest.mark.parametrize("backend", ["compiled", "twin"])
def test_dns_ports_are_the_configured_ones_after_a_change_too(tmp_path, backend):
    """A frame is DNS when either port is one of the parser's, the edges of the port range
    and of each byte of the compiled core's bitmap included, and set_ports() replaces them."""
    ports = [1, 7, 8, 53, 5353, 65535]
    others = [2, 6, 9, 54, 5352, 65534]
    frames = [(1.0 + i, udp_frame(query(f"p{port}.example", txid=i).pack(), CLIENT, RESOLVER, 40000 + i % 2, port))
              for i, port in enumerate(ports + others)]
    capture = write_pcap(tmp_path / "ports.pcap", frames)

    def dns_ports(parser):
        for read in read_frames(str(capture), 100):
            parser.feed(read)
        batch = parser.take()
        return sorted(int(p) for p in batch.messages["dport"]), batch.counters.get("not_dns", 0)

    parser = Parser(ports=ports, backend=backend)
    assert dns_ports(parser) == (sorted(ports), len(others))
    parser.set_ports(others)
    assert dns_ports(parser) == (sorted(others), len(ports))

def test_hot_columns_take_only_scalar_message_fields():
    core = Parser().core
    core.set_hot_columns(("id", "min_ttl"))
    for bad in (("no_such_field",), ("qr", "src"), ("qr",) * 25):
        with pytest.raises(ValueError):
            core.set_hot_columns(bad)            # refused whole: the columns set before stay
    wire = dnslib.DNSRecord(dnslib.DNSHeader(id=4242), q=dnslib.DNSQuestion("a.example.com")).pack()
    core.add_message(wire, 1.0, 1, 4, bytes(16), bytes(16), 53000, 53, 17)
    msgs, _, _, _, columns = core.finish()
    assert set(columns) == {"id", "min_ttl", *_core.DERIVED_COLUMNS}
    assert columns["id"].tolist() == msgs["id"].tolist() == [4242]
    assert columns["min_ttl"].dtype == np.int64 and columns["min_ttl"].tolist() == msgs["min_ttl"].tolist()


@pytest.mark.parametrize("capture", ["demo-office-resolver.pcap", "dnscap-linux-sll2-nxdomain-dnssec.pcap"])
def test_span_texts_are_the_arena_slices(capture):
    from sensor import _core
    batch = parse_file(str(DATA / capture))
    rrs, arena = batch.rrs, batch.arena
    for off, length in (("name_off", "name_len"), ("rdata_off", "rdata_len")):
        offsets, lengths = rrs[off].astype(np.int64), rrs[length].astype(np.int64)
        assert _core.span_texts(arena, offsets, lengths) == [
            arena[o:o + n].decode("ascii") for o, n in zip(offsets.tolist(), lengths.tolist())]
    assert _core.span_texts(arena, np.zeros(1, np.int64), np.zeros(1, np.int64)) == [""]
    with pytest.raises(ValueError):
        _core.span_texts(arena, np.array([len(arena) - 1], np.int64), np.array([2], np.int64))
    with pytest.raises(UnicodeDecodeError):
        _core.span_texts(b"a\xffb", np.array([0], np.int64), np.array([3], np.int64))


def test_series_steps_with_no_traffic_in_their_lookback_are_skipped_and_would_judge_nothing(tmp_path):
    """Captures weeks apart: the series steps in between read empty windows. The writer skips
    exactly those, and judging one of them would have given nothing and stored nothing."""
    rules = tmp_path / "series-rules"
    rules.mkdir()
    for name in ("anomaly_burst.toml", "series.toml"):
        (rules / name).write_text((REPO / "rules" / name).read_text())
    conf = config(tmp_path, rules_dir=str(rules))
    paths = []
    for day, start in ((0, 1_767_225_600.0), (20, 1_767_225_600.0 + 20 * 86400)):
        conv = Conversation(start)
        for i in range(300):                       # five minutes of traffic
            conv.exchange(CLIENT, RESOLVER, f"h{i}.example.org", f"h{i}.example.org 60 A 192.0.2.{i % 250}",
                          txid=i, sport=20000 + i, rtt=0.5)
            conv.ts += 0.5
        paths.append(str(conv.write(tmp_path / f"day{day}.pcap")))
    replay(paths, conf, progress_to=None)
    store = Store(conf.db_path)
    writer = Writer(conf, store, anomaly_burst.load(conf.rules_dir))
    data = [r[0] for r in store.conn.execute("SELECT DISTINCT minute FROM stats WHERE leg != 'sensor'")]
    assert len(data) >= 8
    span = writer.series_rule.lookback_min * 60
    steps = list(range(min(data), max(data) + 2 * span, 900))
    kept = writer._steps_with_data(steps)
    assert kept == [s for s in steps if any(s - span < m <= s for m in data)]
    assert 0 < len(kept) <= 2 * (span // 900 + 2) < len(steps) // 5     # the weeks between left out
    baselines = db_rows(Path(conf.db_path), "SELECT * FROM baselines")
    for end in [s for s in steps if s not in kept][::97]:
        assert writer.series_rule.verdicts(store, "s", end) == []
    assert db_rows(Path(conf.db_path), "SELECT * FROM baselines") == baselines
    store.close()


def test_a_process_that_keeps_dying_at_start_is_restarted_ever_more_slowly(monkeypatch):
    """Workers and the writer alike: RESTART_BACKOFF_S after a death soon after a start,
    doubled for each further one, up to RESTART_BACKOFF_MAX_S; the shortest wait again once
    a process lived STABLE_AFTER_S. (The writer used to be restarted at every supervisor tick.)"""
    from sensor.engine import live

    clock = [1000.0]
    monkeypatch.setattr(live.time, "monotonic", lambda: clock[0])
    state = {"started": clock[0]}
    waits = []
    for _ in range(7):
        clock[0] += 0.5                                # it died half a second after its start
        waited = 0.0
        while not live.Supervisor._restart_due(state):
            clock[0] += 0.25
            waited += 0.25
        waits.append(waited)
        state["started"] = clock[0]                    # restarted
    assert waits == [live.RESTART_BACKOFF_S * 2 ** k for k in range(5)] + [live.RESTART_BACKOFF_MAX_S] * 2
    clock[0] += live.STABLE_AFTER_S + 1                # this time it ran a while
    assert not live.Supervisor._restart_due(state)
    clock[0] += live.RESTART_BACKOFF_S
    assert live.Supervisor._restart_due(state)


def test_every_drop_stage_the_code_counts_is_documented():
    """The names stored in stats.drops come from the one registry of drop stages (and the
    README's table of them): a stage counted under a name nobody documented is a defect."""
    import re

    from sensor.engine.pipeline import PARSER_DROP_COUNTERS
    from sensor.store.schema import DROP_STAGES

    patterns = (r'dropped\["(\w+)"\]', r'_lose\("(\w+)"', r'stage(?:: str)? ?= ?"(\w+)"', r"\b(shipments_\w+)=")
    used = set(PARSER_DROP_COUNTERS)
    for path in (REPO / "sensor").rglob("*.py"):
        text = path.read_text()
        for pattern in patterns:
            used |= set(re.findall(pattern, text))
    assert len(used) >= 12
    assert used <= set(DROP_STAGES), used - set(DROP_STAGES)
    assert set(DROP_STAGES) <= used, set(DROP_STAGES) - used

"""The series detectors through a whole replay: a real capture's frames shifted minute after
minute to build two and a half days of history (quiet days and nights, no events), then the
authoritative side failing for twenty minutes. One kind of verdict must come out: a
servfail_spike during the outage; nothing before it."""
from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace

import dnslib
import numpy as np

from conftest import DATA, REPO
from timeshift import as_servfail, dns_payload, is_udp_dns, read_pcap, write_pcap

BASE = DATA / "dnscap-baseline-udp-82-msgs.pcap"      # 41 real query/response pairs (BSD-3, dnscap)
START = 1_767_225_600                                   # 2026-01-01 00:00 UTC
MINUTES = 2 * 1440 + 14 * 60                            # to 14:00 on the third day
OUTAGE = range(2 * 1440 + 12 * 60, 2 * 1440 + 12 * 60 + 20)


def _traffic(minutes: int, silent: range = range(0), servfail: range = range(0)):
    """(ts, frame) of each message a minute at a time, busier by day; none in the `silent`
    minutes, the answers turned to SERVFAIL in the `servfail` ones (also returned apart)."""
    frames = [f for f in read_pcap(BASE) if is_udp_dns(f[1])]
    assert len(frames) == 82
    t0 = frames[0][0]
    squeeze = 50.0 / (frames[-1][0] - t0)               # one copy of the capture fits in a minute
    ids = [dnslib.DNSRecord.parse(dns_payload(raw)[0]).header.id for _, raw in frames]
    failed = {i: as_servfail(raw) for i, (_, raw) in enumerate(frames)}
    rng = np.random.default_rng(5)
    normal, outage = [], []
    for m in range(minutes):
        hour = (m % 1440) / 60
        share = 0.55 + 0.4 * max(math.sin((hour - 6) / 24 * 2 * math.pi), 0.0)   # busier by day
        keep = {i for i in set(ids) if rng.random() < share}
        if m in silent:
            continue
        for i, ((t, raw), txid) in enumerate(zip(frames, ids)):
            if txid not in keep:
                continue
            ts = START + 60 * m + (t - t0) * squeeze
            if m in servfail:
                outage.append((ts, failed[i]))
            else:
                normal.append((ts, raw))
    return normal, outage


def _build(tmp_path):
    history, outage = _traffic(MINUTES, servfail=OUTAGE)
    return write_pcap(tmp_path / "history.pcap", history), write_pcap(tmp_path / "outage.pcap", outage)


def test_replayed_history_then_an_outage_gives_one_servfail_spike_and_no_other_series_verdict(tmp_path):
    from realparts import Rsyslog
    from sensor.config import Config, SyslogTarget
    from sensor.engine.replay import replay
    from sensor.store import open_readonly

    rules = tmp_path / "rules"
    rules.mkdir()
    shutil.copy(REPO / "rules" / "series.toml", rules)
    history, outage = _build(tmp_path)
    db = tmp_path / "replay.db"
    receiver = Rsyslog(tmp_path / "rsyslog").start()
    try:
        config = replace(Config(), db_path=str(db), rules_dir=str(rules),
                         syslog=(SyslogTarget("127.0.0.1", receiver.port, "tcp", "json"),))
        result = replay([str(outage), str(history)], config, progress_to=None)
        assert result.messages > 150_000
        # the verdicts reach the SIEM too, with their evidence
        lines = receiver.wait_for(lambda got: any("servfail_spike" in line for line in got))
    finally:
        receiver.stop()
    sent = [json.loads(line[line.index("{"):]) for line in lines if "{" in line]
    assert "series:servfail" in {v["detector"] for v in sent}
    assert {v["kind"] for v in sent} == {"servfail_spike"}       # and nothing else went out

    conn = open_readonly(str(db))
    minutes = conn.execute("SELECT count(DISTINCT minute) FROM stats WHERE leg = 'client'").fetchone()[0]
    assert minutes == MINUTES
    rows = conn.execute("SELECT kind, detector, first_ts, last_ts, evidence, summary FROM verdicts "
                        "WHERE detector LIKE 'series:%' ORDER BY first_ts").fetchall()
    outage_start, outage_end = START + 60 * OUTAGE[0], START + 60 * (OUTAGE[-1] + 1)
    before = [r for r in rows if r[3] <= outage_start]
    assert before == [], before                          # two and a half quiet days: nothing
    assert {r[0] for r in rows} == {"servfail_spike"}, rows
    (kind, detector, first_ts, last_ts, evidence, summary), = [r for r in rows if r[1] == "series:servfail"]
    ev = json.loads(evidence)
    assert outage_start <= first_ts < outage_start + 300 and last_ts <= outage_end + 60
    assert ev["minutes"] >= 15 and ev["observed"] > ev["band"][1]
    assert ev["seasonality"] == "daily" and "seasonality daily from 2." in summary and 2 <= ev["history_days"] < 3
    baselines = dict(conn.execute("SELECT series, seasonality FROM baselines").fetchall())
    assert baselines["servfail"] == "daily" and "queries@network=172.17.0.0/24" in baselines


def _series_verdicts(tmp_path, name: str, captures: list) -> tuple[list[tuple], set[int]]:
    from sensor.config import Config
    from sensor.engine.replay import replay
    from sensor.store import open_readonly

    rules = tmp_path / "rules"
    if not rules.exists():
        rules.mkdir()
        shutil.copy(REPO / "rules" / "series.toml", rules)
    db = tmp_path / f"{name}.db"
    replay([str(c) for c in captures], replace(Config(), db_path=str(db), rules_dir=str(rules)), progress_to=None)
    conn = open_readonly(str(db))
    rows = conn.execute("SELECT kind, detector, first_ts, summary FROM verdicts WHERE detector LIKE 'series:%' "
                        "ORDER BY first_ts").fetchall()
    sensor_minutes = {r[0] for r in conn.execute("SELECT minute FROM stats WHERE leg = 'sensor'")}
    return rows, sensor_minutes


def test_hours_the_sensor_did_not_observe_are_no_volume_drop_but_a_silent_capture_is(tmp_path):
    """Six hours with no capture between two files (the sensor was stopped): the series leave
    them out, and nothing fires. Before, they counted as minutes without traffic and made a
    96-minute volume_drop. Twenty silent minutes inside one capture are minutes observed
    without traffic: still a drop."""
    minutes = 2 * 1440 + 20 * 60
    stopped = range(2 * 1440 + 8 * 60, 2 * 1440 + 14 * 60)
    traffic, _ = _traffic(minutes, silent=stopped)
    cut = START + 60 * stopped[0]
    first = write_pcap(tmp_path / "before.pcap", [f for f in traffic if f[0] < cut])
    second = write_pcap(tmp_path / "after.pcap", [f for f in traffic if f[0] >= cut])
    rows, sensor_minutes = _series_verdicts(tmp_path, "stopped", [second, first])
    assert rows == []
    assert not sensor_minutes & {START + 60 * m for m in stopped}
    assert {START + 60 * m for m in (stopped[0] - 1, stopped[-1] + 1)} <= sensor_minutes

    quiet = range(stopped[0], stopped[0] + 20)
    traffic, _ = _traffic(minutes, silent=quiet)
    rows, sensor_minutes = _series_verdicts(tmp_path, "quiet", [write_pcap(tmp_path / "quiet.pcap", traffic)])
    assert {START + 60 * m for m in quiet} <= sensor_minutes
    assert rows and {(kind, detector) for kind, detector, _, _ in rows} <= {("volume_drop", "series:queries")}
    assert all(START + 60 * quiet[0] <= first_ts < START + 60 * quiet[-1] for _, _, first_ts, _ in rows)

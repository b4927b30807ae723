"""Per-minute series and their seasonal baseline: generated weeks with known events."""
from __future__ import annotations

import numpy as np
import pytest

from seriesgen import START, generate, score
from sensor import cli, series

HISTORY = 14 * 1440          # events are scored after two weeks of history


@pytest.fixture(scope="module")
def weeks():
    return generate()


@pytest.mark.parametrize("method, precision_floor, recall_floor", [
    ("mad", 0.8, 1.0),
    ("moving_average", 0.6, 0.85),
    ("ks", 0.75, 0.85),
])
def test_methods_find_the_injected_events(weeks, method, precision_floor, recall_floor):
    minutes, values, events = weeks
    base = series.fit(minutes, values)
    assert base.seasonality == "weekly"
    flags = series.flags(method, values, base)
    precision, recall = score(series.episodes(flags, values, base.expected, min_minutes=3 if method == "ks" else 2),
                              events, HISTORY)
    assert precision >= precision_floor and recall >= recall_floor, (precision, recall)


def test_drops_are_found_as_drops_and_quiet_nights_are_not(weeks):
    minutes, values, events = weeks
    base = series.fit(minutes, values)
    found = series.episodes(series.flags_mad(values, base), values, base.expected)
    for e in events:
        if e.kind == "drop":
            assert any(f.direction == -1 and f.start < e.end and f.end > e.start for f in found)
    nights = ((minutes // 3600) % 24 < 5)[HISTORY:]
    flagged_nights = sum(1 for f in found if f.start >= HISTORY and nights[f.start - HISTORY])
    assert flagged_nights == 0


def test_a_slow_trend_moves_the_baseline_instead_of_flagging():
    rng = np.random.default_rng(3)
    n = 14 * 1440
    minutes = START + 60 * np.arange(n, dtype=np.int64)
    values = rng.poisson(100 * (1 + np.arange(n) / n)).astype(float)       # doubles over two weeks
    base = series.fit(minutes, values)
    assert series.episodes(series.flags_mad(values, base), values, base.expected) == []
    assert base.expected[-60:].mean() == pytest.approx(values[-1440:].mean(), rel=0.1)


def test_short_history_says_so():
    minutes = START + 60 * np.arange(600, dtype=np.int64)
    base = series.fit(minutes, np.full(600, 50.0))
    assert base.seasonality.startswith("none (1 day(s) of history)")


def test_series_command_prints_the_baseline_and_marks(tmp_path, capsys):
    import sqlite3
    from sensor.store import Store
    minutes, values, events = generate(weeks=3)
    db = tmp_path / "s.db"
    store = Store(str(db))
    with store.transaction() as conn:
        conn.executemany("INSERT INTO stats (minute, resolver, leg, queries) VALUES (?, '10.0.0.53', 'client', ?)",
                         list(zip(minutes.tolist(), values.tolist())))
    store.close()
    spike = next(e for e in events if e.kind == "spike")
    with sqlite3.connect(db) as conn:                  # end the series just after the first spike
        conn.execute("DELETE FROM stats WHERE minute > ?", (int(minutes[spike.end + 5]),))
    assert cli.main(["series", "queries", "--db", str(db), "--since", "1h"]) == 0
    out = capsys.readouterr().out
    assert "baseline seasonality weekly" in out
    assert out.count("^ above") >= (spike.end - spike.start) // 2
    assert "episode: spike" in out


def test_an_outage_upstream_gives_one_servfail_spike_verdict_and_quiet_weeks_none(tmp_path):
    """Three weeks of stored history, then SERVFAIL jumps for a quarter of an hour (the
    authoritative server is down): one servfail_spike verdict with its evidence, updated
    while it lasts; the same history without the outage gives nothing."""
    import json
    import shutil
    from dataclasses import replace

    from conftest import REPO
    from sensor.config import Config
    from sensor.detectors.anomaly_burst import AnomalyBurstRule
    from sensor.engine.writer import Writer
    from sensor.store import Store

    rules = tmp_path / "rules"
    rules.mkdir()
    shutil.copy(REPO / "rules" / "series.toml", rules)
    rng = np.random.default_rng(11)
    n = 21 * 1440 + 120
    minutes = START + 60 * np.arange(n, dtype=np.int64)
    hour = (minutes // 3600) % 24
    queries = rng.poisson(300 * np.where((hour > 7) & (hour < 20), 1.0, 0.3)).astype(int)
    servfail = rng.poisson(queries * 0.002).astype(int)

    def run(with_outage: bool) -> list[tuple]:
        sf = servfail.copy()
        if with_outage:
            sf[-40:-25] = (queries[-40:-25] * 0.6).astype(int)
        db = tmp_path / f"outage-{with_outage}.db"
        conf = replace(Config(), db_path=str(db), rules_dir=str(rules))
        store = Store(str(db))
        with store.transaction() as conn:
            conn.executemany("INSERT INTO stats (minute, resolver, leg, queries, responses, servfail) "
                             "VALUES (?, '10.0.0.53', 'client', ?, ?, ?)",
                             list(zip(minutes.tolist(), queries.tolist(), queries.tolist(), sf.tolist())))
        writer = Writer(conf, store, AnomalyBurstRule())
        writer.latest = float(minutes[-1])
        writer.flush(final=True)
        found = store.conn.execute("SELECT kind, detector, evidence, summary FROM verdicts").fetchall()
        store.close()
        return found

    assert run(False) == []
    (kind, detector, evidence, summary), = run(True)
    assert (kind, detector) == ("servfail_spike", "series:servfail")
    ev = json.loads(evidence)
    assert ev["observed"] > ev["band"][1] and ev["seasonality"] == "weekly" and ev["minutes"] >= 10
    assert "expected" in summary and "seasonality weekly" in summary


def test_query_type_shift_fires_on_an_outbreak_not_on_noise(tmp_path):
    import json
    import shutil
    from dataclasses import replace

    from conftest import REPO
    from sensor.config import Config
    from sensor.detectors.anomaly_burst import AnomalyBurstRule
    from sensor.engine.writer import Writer
    from sensor.store import Store

    rules = tmp_path / "rules"
    rules.mkdir()
    shutil.copy(REPO / "rules" / "series.toml", rules)
    rng = np.random.default_rng(5)
    n = 1440 + 10
    minutes = START + 60 * np.arange(n, dtype=np.int64)

    def run(outbreak: bool) -> list[tuple]:
        rows = []
        for i, m in enumerate(minutes.tolist()):
            mix = {"A": 0.6, "AAAA": 0.3, "PTR": 0.1}
            if outbreak and i >= n - 10:
                mix = {"A": 0.3, "AAAA": 0.15, "PTR": 0.05, "TXT": 0.5}
            counts = {k: int(v) for k, v in zip(mix, rng.multinomial(100, list(mix.values())))}
            rows.append((m, 100, json.dumps(counts)))
        db = tmp_path / f"q-{outbreak}.db"
        store = Store(str(db))
        with store.transaction() as conn:
            conn.executemany("INSERT INTO stats (minute, resolver, leg, queries, qtypes) "
                             "VALUES (?, '10.0.0.53', 'client', ?, ?)", rows)
        writer = Writer(replace(Config(), db_path=str(db), rules_dir=str(rules)), store, AnomalyBurstRule())
        writer.latest = float(minutes[-1])
        writer.flush(final=True)
        found = store.conn.execute("SELECT kind, evidence, summary FROM verdicts").fetchall()
        store.close()
        return found

    assert run(False) == []
    (kind, evidence, summary), = run(True)
    ev = json.loads(evidence)
    assert kind == "qtype_shift" and ev["chi2"] > ev["critical"] and ev["cramers_v"] >= 0.15
    assert ev["recent_shares"]["TXT"] == pytest.approx(0.5, abs=0.1) and "TXT" not in ev["reference_shares"]
    assert "TXT 0% -> 5" in summary

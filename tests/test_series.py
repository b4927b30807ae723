"""Per-minute series and their seasonal baseline: generated weeks with known events."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from seriesgen import START, generate, generate_resolver, score
from sensor import cli, series
from sensor.series import hst, methods

HISTORY = 14 * 1440          # events are scored after two weeks of history


@pytest.fixture(scope="module")
def weeks():
    return generate()


@pytest.mark.parametrize("method, precision_floor, recall_floor", [
    ("mad", 0.85, 0.85),
    ("average", 0.9, 0.5),
    ("moving_average", 0.65, 0.75),
    ("least_squares", 0.75, 0.75),
    ("cusum", 0.85, 0.75),
    ("histogram", 0.85, 0.85),
    ("grubbs", 0.9, 0.75),
    ("ks", 0.85, 0.75),
])
def test_methods_find_the_injected_events(weeks, method, precision_floor, recall_floor):
    """Measured on four generated weeks with spikes, drops, a level shift and slow drifts;
    the floors sit just under what each method scores (bench/series.py averages seeds)."""
    minutes, values, events = weeks
    base = series.fit(minutes, values)
    assert base.seasonality == "weekly"
    flags = methods.flags(method, values, base)
    found = series.episodes(flags, values, base.expected, methods.METHODS[method].min_minutes)
    precision, recall = score(found, events, HISTORY)
    assert precision >= precision_floor and recall >= recall_floor, (precision, recall)
    spikes = [e for e in events if e.kind == "spike"]
    assert score(found, spikes, HISTORY)[1] >= (0.75 if method == "average" else 1.0)


def test_half_space_trees_over_several_series_find_the_events():
    minutes, columns, events = generate_resolver()
    flags, which, scores, bases = hst.flags_over(minutes, columns)
    on_queries = np.where(which == 0, flags, 0)
    found = series.episodes(on_queries, columns["queries"], bases["queries"].expected)
    precision, recall = score(found, events, HISTORY)
    assert precision >= 0.85 and recall >= 0.85, (precision, recall)
    # a SERVFAIL burst alone (queries steady) is named as the servfail series
    sf = columns["servfail"].copy()
    sf[-30:-10] += 80
    flags, which, scores, bases = hst.flags_over(minutes, {**columns, "servfail": sf})
    assert (flags[-30:-10] == 1).sum() >= 10 and set(which[-30:-10][flags[-30:-10] == 1].tolist()) == {2}


def test_cusum_finds_more_slow_drifts_than_single_minute_tests():
    """Drifts up to three times the rate over six hours: the level follows them, so a test
    of single minutes sees little; cumulated residuals do (measured over four generated months)."""
    hits = {"cusum": 0, "mad": 0, "moving_average": 0}
    total = 0
    for seed in (1, 2, 3, 7):
        minutes, values, events = generate(seed=seed)
        base = series.fit(minutes, values)
        drifts = [e for e in events if e.kind == "drift"]
        total += len(drifts)
        for method in hits:
            found = series.episodes(methods.flags(method, values, base), values, base.expected)
            hits[method] += sum(any(f.start < e.end and f.end > e.start for f in found) for e in drifts)
    assert total == 8
    assert hits["cusum"] >= 6 and hits["cusum"] > hits["mad"] > hits["moving_average"], hits


def test_drops_are_found_as_drops_and_quiet_nights_are_not(weeks):
    minutes, values, events = weeks
    base = series.fit(minutes, values)
    found = series.episodes(methods.flags_mad(values, base), values, base.expected)
    for e in events:
        if e.kind == "drop":
            assert any(f.direction == -1 and f.start < e.end and f.end > e.start for f in found)
    nights = ((minutes // 3600) % 24 < 5)[HISTORY:]
    flagged_nights = [f for f in found if f.start >= HISTORY and nights[f.start - HISTORY]
                      and not any(f.start < e.end + 120 and f.end > e.start for e in events)]
    assert flagged_nights == []


def test_a_stored_profile_judges_later_minutes_like_the_full_fit(weeks):
    minutes, values, events = weeks
    cut = 20 * 1440 + 600                    # after the first drift has faded; then a spike, a drop
                                             # and a spike before the last drift
    stop = next(e.start for e in events if e.kind == "drift" and e.start > cut)
    profile = series.fit(minutes[:cut], values[:cut]).profile
    again = series.Profile.from_json(profile.to_json())
    assert again.seasonality == "weekly" and np.allclose(again.index, profile.index, atol=1e-4)
    window = slice(cut - series.LEVEL_WINDOW_MIN, stop)
    base = series.apply(again, minutes[window], values[window])
    found = series.episodes(methods.flags_mad(values[window], base), values[window], base.expected)
    later = [e for e in events if cut <= e.start < stop]
    assert [e.kind for e in later] == ["spike", "drop", "spike"]
    shifted = [type(e)(e.kind, e.start - window.start, e.end - window.start) for e in later]
    precision, recall = score(found, shifted, series.LEVEL_WINDOW_MIN)
    assert recall == 1.0 and precision >= 0.75, (precision, recall)


def test_a_slow_trend_moves_the_baseline_instead_of_flagging():
    rng = np.random.default_rng(3)
    n = 14 * 1440
    minutes = START + 60 * np.arange(n, dtype=np.int64)
    values = rng.poisson(100 * (1 + np.arange(n) / n)).astype(float)       # doubles over two weeks
    base = series.fit(minutes, values)
    assert series.episodes(methods.flags_mad(values, base), values, base.expected) == []
    assert base.expected[-60:].mean() == pytest.approx(values[-1440:].mean(), rel=0.1)


def test_short_history_says_so():
    minutes = START + 60 * np.arange(600, dtype=np.int64)
    base = series.fit(minutes, np.full(600, 50.0))
    assert base.seasonality == "none (10 hour(s) of history)"


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

    rules = _series_rules(tmp_path)
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
        store, writer = _writer(tmp_path / f"outage-{with_outage}.db", rules)
        with store.transaction() as conn:
            conn.executemany("INSERT INTO stats (minute, resolver, leg, queries, responses, servfail) "
                             "VALUES (?, '10.0.0.53', 'client', ?, ?, ?)",
                             list(zip(minutes.tolist(), queries.tolist(), queries.tolist(), sf.tolist())))
        found = [(kind, detector, evidence, summary) for kind, detector, _, _, evidence, summary
                 in _evaluate(store, writer)]
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

    rules = _series_rules(tmp_path)
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
        store, writer = _writer(tmp_path / f"q-{outbreak}.db", rules)
        with store.transaction() as conn:
            conn.executemany("INSERT INTO stats (minute, resolver, leg, queries, qtypes) "
                             "VALUES (?, '10.0.0.53', 'client', ?, ?)", rows)
        found = [(kind, evidence, summary) for kind, _, _, _, evidence, summary in _evaluate(store, writer)]
        store.close()
        return found

    assert run(False) == []
    (kind, evidence, summary), = run(True)
    ev = json.loads(evidence)
    assert kind == "qtype_shift" and ev["chi2"] > ev["critical"] and ev["cramers_v"] >= 0.15
    assert ev["recent_shares"]["TXT"] == pytest.approx(0.5, abs=0.1) and "TXT" not in ev["reference_shares"]
    assert "TXT 0% -> 5" in summary


def _series_rules(tmp_path, text: str | None = None):
    import shutil

    from conftest import REPO

    rules = tmp_path / "rules"
    rules.mkdir(exist_ok=True)
    if text is None:
        shutil.copy(REPO / "rules" / "series.toml", rules)
    else:
        (rules / "series.toml").write_text(text)
    return rules


def _writer(db, rules, series_every_s: float = 60):
    from dataclasses import replace

    from sensor.config import Config
    from sensor.detectors.anomaly_burst import AnomalyBurstRule
    from sensor.engine.writer import Writer
    from sensor.store import Store

    store = Store(str(db))
    return store, Writer(replace(Config(), db_path=str(db), rules_dir=str(rules)), store, AnomalyBurstRule(),
                         series_every_s=series_every_s)


def _evaluate(store, writer, final: bool = True) -> list[tuple]:
    """The writer's evaluation as if it had been running since the newest minute it first saw."""
    writer.latest = float(store.conn.execute("SELECT max(minute) FROM stats").fetchone()[0])
    writer.first_minute = writer.first_minute or int(writer.latest)
    writer.flush(final=final)
    return store.conn.execute("SELECT kind, detector, client, domain, evidence, summary FROM verdicts "
                              "ORDER BY id").fetchall()


def _office(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    minutes = START + 60 * np.arange(n, dtype=np.int64)
    hour = (minutes // 3600) % 24
    return minutes, rng.poisson(300 * np.where((hour > 7) & (hour < 20), 1.0, 0.3)).astype(int)


def test_the_baseline_survives_a_restart_and_pruned_history(tmp_path):
    """The profile learnt from three weeks is kept in `baselines`: after a restart with the
    per-minute history pruned to a day, the outage is still judged against the weekly profile."""
    import json

    rules = _series_rules(tmp_path)
    n = 21 * 1440 + 120
    minutes, queries = _office(n, 11)
    servfail = np.random.default_rng(12).poisson(queries * 0.002)
    db = tmp_path / "restart.db"
    store, writer = _writer(db, rules)
    with store.transaction() as conn:
        conn.executemany("INSERT INTO stats (minute, resolver, leg, queries, responses, servfail) "
                         "VALUES (?, '10.0.0.53', 'client', ?, ?, ?)",
                         list(zip(minutes[:-60].tolist(), queries[:-60].tolist(), queries[:-60].tolist(),
                                  servfail[:-60].tolist())))
    assert _evaluate(store, writer) == []
    stored = dict(store.conn.execute("SELECT series, seasonality FROM baselines").fetchall())
    assert stored["servfail"] == "weekly" and stored["queries"] == "weekly"
    store.close()

    store, writer = _writer(db, rules)                  # restart; stats retention kept one day
    with store.transaction() as conn:
        conn.execute("DELETE FROM stats WHERE minute < ?", (int(minutes[-1440]),))
        sf = servfail[-60:].copy()
        sf[-40:-25] = (queries[-40:-25] * 0.6).astype(int)
        conn.executemany("INSERT INTO stats (minute, resolver, leg, queries, responses, servfail) "
                         "VALUES (?, '10.0.0.53', 'client', ?, ?, ?)",
                         list(zip(minutes[-60:].tolist(), queries[-60:].tolist(), queries[-60:].tolist(),
                                  sf.tolist())))
    (kind, detector, _, _, evidence, _), = _evaluate(store, writer)
    assert (kind, detector) == ("servfail_spike", "series:servfail")
    assert json.loads(evidence)["seasonality"] == "weekly"     # one day of stats alone would say "none"
    store.close()


def test_half_space_trees_in_the_writer_learn_across_evaluations(tmp_path):
    """method = "hst": the writer feeds each new minute to the forest once, keeps it in the
    store between evaluations, and names the series that moved."""
    import json

    rules = _series_rules(tmp_path, """method = "hst"
min_minutes = 3
[hst]
threshold = 0.9
[[series]]
name = "queries"
spike = "volume_spike"
drop = "volume_drop"
[[series]]
name = "servfail"
spike = "servfail_spike"
""")
    n = 3 * 1440
    minutes, queries = _office(n, 21)
    servfail = np.random.default_rng(22).poisson(queries * 0.002)
    servfail[-40:-25] = (queries[-40:-25] * 0.6).astype(int)
    store, writer = _writer(tmp_path / "hst.db", rules, series_every_s=900)
    found = []
    for stop in range(240, n + 1, 240):                 # the writer evaluates as the data arrive
        with store.transaction() as conn:
            conn.executemany("INSERT INTO stats (minute, resolver, leg, queries, responses, servfail) "
                             "VALUES (?, '10.0.0.53', 'client', ?, ?, ?)",
                             list(zip(minutes[stop - 240:stop].tolist(), queries[stop - 240:stop].tolist(),
                                      queries[stop - 240:stop].tolist(), servfail[stop - 240:stop].tolist())))
        found = _evaluate(store, writer)
        if stop < n:
            assert found == [], stop
    (kind, detector, _, _, evidence, summary), = found
    ev = json.loads(evidence)
    assert (kind, detector, ev["method"]) == ("servfail_spike", "series:servfail", "hst")
    assert ev["score"] > 0.9 and ev["minutes"] >= 10 and "(hst)" in summary
    model, last = store.conn.execute("SELECT model, fitted_to FROM baselines WHERE series = 'hst'").fetchone()
    forest = hst.HalfSpaceForest.loads(model)
    assert forest.names == ("queries", "servfail") and last == int(minutes[-1])
    store.close()


def test_a_water_torture_on_one_domain_is_its_own_nxdomain_spike(tmp_path):
    """Per registered domain (the busiest ones): a burst of NXDOMAIN under one domain
    becomes a verdict about that domain, while the resolver-wide series stays in its band."""
    import json

    rules = _series_rules(tmp_path)
    n = 3 * 1440
    minutes, queries = _office(n, 31)
    rng = np.random.default_rng(32)
    store, writer = _writer(tmp_path / "domains.db", rules)
    rows, stats = [], []
    for i, m in enumerate(minutes.tolist()):
        total_nx = 0
        for d, share in (("example.com", 0.5), ("example.net", 0.3), ("victim.org", 0.2)):
            q = int(queries[i] * share)
            nx = int(rng.binomial(q, 0.05))
            if d == "victim.org" and i >= n - 20:
                nx += 40                                 # a third more NXDOMAIN than the resolver sees
            total_nx += nx
            rows.append((m, d, q, q, nx, 0, 0, 0))
        stats.append((m, int(queries[i]), int(queries[i]), total_nx))
    with store.transaction() as conn:
        store.add_breakdown(conn, "domain", rows)
        conn.executemany("INSERT INTO stats (minute, resolver, leg, queries, responses, nxdomain) "
                         "VALUES (?, '10.0.0.53', 'client', ?, ?, ?)", stats)
    found = [f for f in _evaluate(store, writer) if f[3]]
    (kind, detector, client, domain, evidence, summary), = found
    assert (kind, domain) == ("nxdomain_spike", "victim.org")
    assert json.loads(evidence)["series"] == "nxdomain@domain=victim.org" and "for domain victim.org" in summary
    store.close()


def test_response_code_shift_names_servfail(tmp_path):
    import json

    rules = _series_rules(tmp_path)
    rng = np.random.default_rng(41)
    n = 1440 + 10
    minutes = START + 60 * np.arange(n, dtype=np.int64)
    store, writer = _writer(tmp_path / "rcodes.db", rules)
    rows = []
    for i, m in enumerate(minutes.tolist()):
        mix = {"NOERROR": 0.9, "NXDOMAIN": 0.1}
        if i >= n - 10:
            mix = {"NOERROR": 0.6, "NXDOMAIN": 0.1, "SERVFAIL": 0.3}
        counts = {k: int(v) for k, v in zip(mix, rng.multinomial(100, list(mix.values())))}
        rows.append((m, 100, json.dumps(counts)))
    with store.transaction() as conn:
        conn.executemany("INSERT INTO stats (minute, resolver, leg, responses, rcodes) "
                         "VALUES (?, '10.0.0.53', 'client', ?, ?)", rows)
    found = [f for f in _evaluate(store, writer) if f[1] == "series:rcodes"]
    (kind, detector, _, _, evidence, summary), = found
    ev = json.loads(evidence)
    assert kind == "servfail_spike" and ev["recent_shares"]["SERVFAIL"] == pytest.approx(0.3, abs=0.08)
    assert "response codes shifted" in summary
    store.close()


def test_series_command_draws_a_png_and_reads_scoped_series(tmp_path, capsys):
    from sensor.store import Store

    minutes, values, events = generate(weeks=3)
    db = tmp_path / "png.db"
    store = Store(str(db))
    with store.transaction() as conn:
        conn.executemany("INSERT INTO stats (minute, resolver, leg, queries, nxdomain, servfail) "
                         "VALUES (?, '10.0.0.53', 'client', ?, 0, 0)", list(zip(minutes.tolist(), values.tolist())))
        store.add_breakdown(conn, "network", [(m, "10.1.0.0/16", int(v), int(v), 0, 0, 0, 0)
                                              for m, v in zip(minutes.tolist(), values.tolist())])
    store.close()
    png = tmp_path / "q.png"
    assert cli.main(["series", "queries", "--db", str(db), "--since", "2d", "--png", str(png)]) == 0
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    assert f"plot written to {png}" in capsys.readouterr().out
    # Written at the path given, or a one-line error: a name without .png had it added (and
    # the message named the path not written), a missing folder raised a traceback.
    bare = tmp_path / "plot"
    assert cli.main(["series", "queries", "--db", str(db), "--since", "1h", "--png", str(bare)]) == 0
    assert bare.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not (tmp_path / "plot.png").exists()
    capsys.readouterr()
    assert cli.main(["series", "queries", "--db", str(db), "--since", "1h", "--png", str(tmp_path / "no" / "q.png")]) == 2
    assert "q.png: cannot write the plot: No such file or directory" in capsys.readouterr().err
    assert cli.main(["series", "queries", "--db", str(db), "--network", "10.1.0.0/16", "--since", "1d",
                     "--method", "cusum"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("queries@network=10.1.0.0/16: baseline seasonality weekly, method cusum")
    assert cli.main(["series", "queries", "--db", str(db), "--method", "hst", "--since", "3d"]) == 0
    out = capsys.readouterr().out
    assert "method hst" in out and "episode: spike" in out


def test_a_replay_backfills_every_step_and_a_live_writer_only_what_can_still_report(tmp_path):
    """An outage two days before the newest minute: a replay (backfill) judges each quarter
    hour as it was and reports it; a live writer catching up after a quiet spell judges only
    the last RECENT_MIN minutes, where nothing happened."""
    rules = _series_rules(tmp_path)
    n = 5 * 1440
    minutes, queries = _office(n, 51)
    servfail = np.random.default_rng(52).poisson(queries * 0.002)
    servfail[3 * 1440 + 600:3 * 1440 + 620] = (queries[3 * 1440 + 600:3 * 1440 + 620] * 0.6).astype(int)

    def run(backfill: bool) -> list[tuple]:
        store, writer = _writer(tmp_path / f"backfill-{backfill}.db", rules, series_every_s=900 if backfill else 60)
        writer.series_backfill = backfill
        with store.transaction() as conn:
            conn.executemany("INSERT INTO stats (minute, resolver, leg, queries, responses, servfail) "
                             "VALUES (?, '10.0.0.53', 'client', ?, ?, ?)",
                             list(zip(minutes.tolist(), queries.tolist(), queries.tolist(), servfail.tolist())))
        writer.first_minute = int(minutes[0])
        found = _evaluate(store, writer)
        profiles = store.conn.execute("SELECT count(*) FROM baselines").fetchone()[0]
        store.close()
        return found, profiles

    found, _ = run(True)
    assert {(k, d) for k, d, *_ in found} == {("servfail_spike", "series:servfail")}
    found, profiles = run(False)
    assert found == [] and profiles > 0                  # judged, and quiet in the last minutes


def test_a_broken_series_file_is_refused_on_reload_and_names_the_key(tmp_path, capsys):
    from dataclasses import replace

    from sensor.config import Config
    from sensor.engine.live import _reload

    rules = _series_rules(tmp_path)
    conf = replace(Config(), rules_dir=str(rules), db_path=str(tmp_path / "r.db"))
    loaded = _reload(conf)
    assert loaded is not None and loaded[1][2].method == "mad"
    (rules / "series.toml").write_text((rules / "series.toml").read_text().replace('method = "mad"',
                                                                                   'method = "median"'))
    assert _reload(conf) is None
    err = capsys.readouterr().err
    assert "reload refused" in err and "series.toml:5: method: expected one of mad, average" in err


@pytest.mark.parametrize("missing", [False, True])
def test_rolling_level_is_the_median_of_the_block_medians_before(missing):
    """Both ways of computing it (counts, and series with missing minutes) against its definition."""
    from sensor.series import LEVEL_BLOCKS, _rolling_median
    rng = np.random.default_rng(5)
    for n, window in ((1, 180), (29, 180), (30, 180), (1000, 180), (4321, 1440), (17, 1)):
        x = rng.poisson(30, n).astype(np.float64)
        if missing:
            x[rng.random(n) < 0.2] = np.nan
        block = max(window // LEVEL_BLOCKS, 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            medians = [np.nanmedian(x[i:i + block]) for i in range(0, n, block)]
            want = [medians[0] if b == 0 else np.nanmedian(medians[max(0, b - LEVEL_BLOCKS):b])
                    for b in range(len(medians))]
        assert np.array_equal(_rolling_median(x, window), np.repeat(want, block)[:n], equal_nan=True)


def test_a_restarted_sensor_is_no_volume_event_but_a_tap_gone_silent_is(tmp_path):
    """A live sensor writes its own stats row every minute it runs. Hours without any row (it
    was stopped for an upgrade) are left out of the series: the traffic it finds at the
    restart is judged against the level before the stop. Before, those hours were zeros and
    the traffic coming back was a volume spike against 0 expected. An hour with the sensor's
    rows and no traffic is a tap gone silent: a volume drop."""
    rules = _series_rules(tmp_path)
    n = 3 * 1440 + 8 * 60
    minutes, queries = _office(n, seed=9)
    stopped = (minutes >= minutes[-1] - 3 * 3600) & (minutes < minutes[-1] - 1200)     # then 20 min of traffic
    silent = minutes >= minutes[-1] - 3600                                               # the last hour

    def run(name: str, traffic: np.ndarray, heartbeat: np.ndarray) -> list[tuple]:
        store, writer = _writer(tmp_path / f"{name}.db", rules)
        with store.transaction() as conn:
            conn.executemany("INSERT INTO stats (minute, resolver, leg, queries, responses) "
                             "VALUES (?, '10.0.0.53', 'client', ?, ?)",
                             [(m, q, q) for m, q in zip(minutes[traffic].tolist(), queries[traffic].tolist())])
            conn.executemany("INSERT INTO stats (minute, resolver, leg, packets) VALUES (?, '*', 'sensor', 0)",
                             [(m,) for m in minutes[heartbeat].tolist()])
        found = [(kind, detector) for kind, detector, *_ in _evaluate(store, writer)]
        store.close()
        return found

    assert run("restarted", ~stopped, ~stopped) == []
    assert ("volume_drop", "series:queries") in run("silent", ~silent, np.ones(n, dtype=bool))


def test_a_plot_breaks_its_lines_where_the_sensor_did_not_observe():
    from sensor.series.plot import with_breaks
    minutes = START + 60 * np.array([0, 1, 2, 300, 301])
    at, (values,) = with_breaks(minutes, np.array([5, 6, 7, 8, 9]))
    assert at.tolist() == (START + 60 * np.array([0, 1, 2, 3, 300, 301])).tolist()
    assert np.array_equal(values, [5, 6, 7, np.nan, 8, 9], equal_nan=True)
    at, (values,) = with_breaks(minutes[:3], np.array([5, 6, 7]))
    assert at.tolist() == minutes[:3].tolist() and values.tolist() == [5, 6, 7]


def test_series_command_says_where_the_sensor_did_not_observe(tmp_path, capsys):
    from sensor.store import Store

    db = tmp_path / "gap.db"
    store = Store(str(db))
    kept = [0, 1, 2, 93, 94]                      # the sensor stopped for 90 minutes
    with store.transaction() as conn:
        conn.executemany("INSERT INTO stats (minute, resolver, leg, queries) VALUES (?, '10.0.0.53', 'client', 40)",
                         [(START + 60 * m,) for m in kept])
    store.close()
    assert cli.main(["series", "queries", "--db", str(db), "--since", "3h"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [i for i, line in enumerate(lines) if line[:4] == "2026"]
    assert len(rows) == len(kept)
    assert lines[rows[3] - 1].strip() == "(90 minute(s) the sensor did not observe)" and rows[3] - 1 == rows[2] + 1

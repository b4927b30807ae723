"""Rules as files: the language, errors with file and line, samples, verdicts in the store."""
from __future__ import annotations

import json
import pickle
import re
import shutil
import sqlite3
from dataclasses import replace

import dnslib
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from conftest import DATA, REPO
from sensor import cli
from sensor.config import Config
from sensor.detectors.rule_table import EXACT_UNIQUE_LIMIT, RuleTable
from sensor.detectors.samples import SAMPLE_PORTS, check_samples, run_rules
from sensor.engine.replay import replay
from sensor.rules import RuleError, load_dir, load_rule
from sensor.rules.expr import ExprError, compile_expr

RULES = REPO / "rules"
TUNNEL_CAPTURE = DATA / "suricata-tunnel-dns2tcp-txt-bug1158.pcap"


# ------------------------------------------------------------------ the expression language

def test_expressions_evaluate_on_arrays_and_scalars():
    fn, used = compile_expr("qtype in (TXT, NULL) and size > 100 or not rd", {"qtype", "size", "rd"})
    cols = {"qtype": np.array([16, 1, 10]), "size": np.array([200, 500, 50]), "rd": np.array([True, True, False])}
    assert fn(cols).tolist() == [True, False, True]
    assert used == {"qtype", "size", "rd"}
    ratio, _ = compile_expr("a / b >= 0.5 and 1 < a <= 10", {"a", "b"})
    assert not bool(ratio({"a": 5, "b": 0}))                  # x / 0 is 0, not an error
    assert bool(ratio({"a": 5, "b": 8})) is True


def test_and_or_stop_once_the_rest_cannot_change_the_result():
    """A rule's costlier columns (name lists, tags, patterns) are not computed for a batch
    where the terms before them already decide every row; the result is what evaluating
    every term gives."""
    class Columns(dict):
        def __missing__(self, name):
            raise AssertionError(f"{name} was computed")

    fn, _ = compile_expr("rd and size > 100 and costly", {"rd", "size", "costly"})
    assert fn(Columns(rd=np.zeros(3, dtype=bool), size=np.array([1, 2, 300]))).tolist() == [False] * 3
    fn, _ = compile_expr("rd or costly", {"rd", "costly"})
    assert fn(Columns(rd=np.ones(3, dtype=bool))).tolist() == [True] * 3
    rng = np.random.default_rng(3)
    fn, _ = compile_expr("a and (b or not c) and size > 5 or not (a or c)", {"a", "b", "c", "size"})
    for _ in range(200):
        n = int(rng.integers(1, 6))
        cols = {k: rng.random(n) < rng.random() for k in "abc"} | {"size": rng.integers(0, 10, n)}
        a, b, c = cols["a"], cols["b"], cols["c"]
        want = (a & (b | ~c) & (cols["size"] > 5)) | ~(a | c)
        assert fn(cols).tolist() == want.tolist()


class _SelectableColumns(dict):
    """Columns that can be selected, as the feature columns can, recording the rows each
    column was read for (None: the whole batch)."""

    def __init__(self, full: dict, reads: list, rows: np.ndarray | None = None) -> None:
        super().__init__()
        self.full, self.reads, self.rows = full, reads, rows

    def __missing__(self, name):
        self.reads.append((name, None if self.rows is None else self.rows.tolist()))
        column = self.full[name] if self.rows is None else self.full[name][self.rows]
        self[name] = column
        return column

    def select(self, rows):
        return _SelectableColumns(self.full, self.reads, rows if self.rows is None else self.rows[rows])


def test_later_terms_are_read_for_the_few_rows_the_first_ones_leave():
    """Once an 'and' has fewer than SELECT_BELOW of the rows left true (an 'or': false), its
    later terms read those rows alone, so a costly late column (a model, a list) is worked
    out for a filter's candidates only; with more left they read the whole batch. The
    result is what evaluating every term on every row gives."""
    from sensor.rules.expr import SELECT_BELOW
    n = 100
    few = int(SELECT_BELOW * n) - 1
    rng = np.random.default_rng(11)
    full = {"nx": np.arange(n) < few, "costly": rng.integers(0, 10, n), "rd": rng.random(n) < 0.7,
            "many": np.arange(n) < int(SELECT_BELOW * n) + 1}
    fn, _ = compile_expr("nx and rd and costly > 4", set(full))
    reads: list = []
    got = fn(_SelectableColumns(full, reads))
    assert got.tolist() == (full["nx"] & full["rd"] & (full["costly"] > 4)).tolist()
    assert reads[0] == ("nx", None)
    assert ("rd", list(range(few))) in reads
    assert dict(reads)["costly"] == list(range(few))      # rd left most of those: no new selection
    reads.clear()
    fn, _ = compile_expr("not nx or costly > 4", set(full))
    got = fn(_SelectableColumns(full, reads))
    assert got.tolist() == (~full["nx"] | (full["costly"] > 4)).tolist()
    assert dict(reads)["costly"] == list(range(few))
    reads.clear()
    fn, _ = compile_expr("many and costly > 4", set(full))
    assert fn(_SelectableColumns(full, reads)).tolist() == (full["many"] & (full["costly"] > 4)).tolist()
    assert dict(reads)["costly"] is None
    rng = np.random.default_rng(5)
    fn, _ = compile_expr("a and (b or not c) and size > 5 or not (a or c)", {"a", "b", "c", "size"})
    for _ in range(300):
        n = int(rng.integers(1, 40))
        cols = {k: rng.random(n) < rng.random() ** 3 for k in "abc"} | {"size": rng.integers(0, 10, n)}
        a, b, c = cols["a"], cols["b"], cols["c"]
        want = (a & (b | ~c) & (cols["size"] > 5)) | ~(a | c)
        assert fn(_SelectableColumns(cols, [])).tolist() == want.tolist()


@pytest.mark.parametrize("text, message", [
    ("__import__('os')", "not allowed"),
    ("size.real > 1", "not allowed"),
    ("qtype in size", "parenthesised list"),
    ("nosuch > 1", "unknown name 'nosuch'"),
    ("size >", "syntax error"),
    ("size ** 2 > 1", "only + - * /"),
    ("qtype in (size,)", "numbers and constants"),
])
def test_expressions_outside_the_language_are_rejected(text, message):
    with pytest.raises(ExprError, match=re.escape(message)):
        compile_expr(text, {"size", "qtype"})


# ------------------------------------------------------------------ rule files

GOOD = """\
kind = "tunnel"
severity = "high"
where = "is_query"
group_by = ["client", "regdom"]
window_s = 60
summary = "{n} from {client}"

[aggregate]
n = "count()"

[threshold]
when = "n >= 3"

[samples]
positive = ["data:x.pcap"]
negative = ["data:y.pcap"]
"""


@pytest.mark.parametrize("old, new, where", [
    ('where = "is_query"', 'where = "is_query and nosuch"', ":3: where: unknown name 'nosuch'"),
    ('kind = "tunnel"', 'kind = "tunel"', ":1: kind: 'tunel' is too close to the standard kind 'tunnel'"),
    ('kind = "tunnel"', 'kind = "nxdomain_spikes"', "too close to the standard kind 'nxdomain_spike'"),
    ('kind = "tunnel"', 'kind = "DoH bypass"', ":1: kind: expected one of tunnel"),
    ('kind = "tunnel"', f'kind = "{"k" * 33}"', "or a kind of the site's own: lower-case letters, digits and _, at most 32"),
    ('where = "is_query"', 'where = "is_query and qname == \'evil.example\'"',
     ":3: where: no text constants ('evil.example'): names are matched by a list"),
    ('window_s = 60', 'window_s = 0', ":5: window_s: expected an integer"),
    ('group_by = ["client", "regdom"]', 'group_by = ["clients"]', ":4: group_by: expected a list of"),
    ('n = "count()"', 'n = "median(size)"', ":9: aggregate.n: unknown function 'median'"),
    ('when = "n >= 3"', 'when = "m >= 3"', ":12: threshold.when: unknown name 'm'"),
    ('summary = "{n} from {client}"', 'summary = "{nope}"', ":6: summary: unknown field"),
    ('positive = ["data:x.pcap"]', 'positive = ["x.pcap"]', ":15: samples.positive: entries are"),
    ('severity = "high"', 'severity = "high"\nmystery = 1', ":3: mystery: unknown key"),
    ('window_s = 60', 'window_s = 60\n[[oops', "not valid TOML"),
])
def test_broken_rule_names_file_and_line(tmp_path, old, new, where):
    path = tmp_path / "r.toml"
    path.write_text(GOOD.replace(old, new))
    with pytest.raises(RuleError) as e:
        load_rule(path)
    assert str(e.value).startswith(str(path))
    assert where in str(e.value)


def test_a_new_use_case_may_have_a_kind_of_its_own(tmp_path):
    """A site's use case no standard kind names is a rule file, not code: its verdicts carry
    its own kind, in the store as in syslog."""
    from sensor.sinks.syslog import SyslogTarget, format_message

    folder = tmp_path / "rules"
    shutil.copytree(RULES, folder)
    (folder / "tunnel.toml").write_text(
        (RULES / "tunnel.toml").read_text().replace('kind = "tunnel"', 'kind = "lab_tunnel"'))
    conf = replace(Config(), db_path=str(tmp_path / "s.db"), rules_dir=str(folder), ports=SAMPLE_PORTS)
    replay([str(DATA / "suricata-tunnel-dns2tcp-txt-bug1158.pcap")], conf, progress_to=None)
    with sqlite3.connect(conf.db_path) as conn:
        conn.row_factory = sqlite3.Row
        stored = [dict(r) for r in conn.execute("SELECT * FROM verdicts WHERE detector = 'tunnel'")]
    assert stored and {v["kind"] for v in stored} == {"lab_tunnel"}
    line = format_message(stored[0], SyslogTarget(host="127.0.0.1", port=514), "sensor-1").decode()
    assert " lab_tunnel " in line


def test_a_broken_file_fails_the_whole_directory_so_a_reload_keeps_the_old_rules(tmp_path):
    folder = tmp_path / "rules"
    shutil.copytree(RULES, folder)
    before = load_dir(folder)
    (folder / "tunnel.toml").write_text((RULES / "tunnel.toml").read_text().replace("nunique(qname)", "nunique(x)"))
    with pytest.raises(RuleError, match="tunnel.toml:.*aggregate.unique_names"):
        load_dir(folder)
    assert [r.name for r in before] == [r.name for r in load_dir(RULES)]


def test_rules_check_and_test_commands(tmp_path, capsys):
    assert cli.main(["rules", "check", str(RULES)]) == 0
    out = capsys.readouterr().out
    assert all(f"ok  {p.name}" in out for p in RULES.glob("*.toml"))
    bad = tmp_path / "rules"
    shutil.copytree(RULES, bad)
    (bad / "amplification.toml").write_text("kind = \n")
    assert cli.main(["rules", "check", str(bad)]) == 2
    assert "amplification.toml" in capsys.readouterr().err


# ------------------------------------------------------------------ samples (the meta-test)

@pytest.mark.parametrize("rule", load_dir(RULES), ids=lambda r: r.name)
def test_every_rule_has_samples_and_they_hold(rule):
    assert rule.positive and rule.negative, f"{rule.path} needs positive and negative samples"
    assert any(s.capture.startswith("data:") for s in rule.positive + rule.negative), \
        f"{rule.path}: at least one sample must ship in tests/data (the shared corpus may be absent)"
    assert check_samples(rule) == []


def test_every_tunnel_and_exfiltration_capture_is_a_positive_sample():
    """Each tunnel or exfiltration capture of the shared corpus (by its name) is held as a
    positive sample by a tunnel or exfil rule, so the samples test proves it is flagged."""
    from conftest import SHARED_PCAPS

    if not SHARED_PCAPS.is_dir():
        pytest.skip("the shared corpus is absent")
    captures = {p.name for p in SHARED_PCAPS.iterdir() if re.search(r"-(tunnel|exfil)-", p.name)}
    assert len(captures) >= 10
    held = {s.capture.split(":", 1)[1] for r in load_dir(RULES) if r.kind in ("tunnel", "exfil")
            for s in r.positive}
    assert captures - held == set()


def test_no_rule_fires_on_the_shared_captures_that_are_not_attacks():
    """Every shared capture replayed on its own, with every rule and no site settings: only
    the tunnels, exfiltration and amplification (by their names) give verdicts. The rest is
    baselines, DNSSEC, TCP, fragments, mDNS, dynamic updates, TSIG and malformed packets: a
    rule that fires on one of them is a false positive (the spoofing captures hold single
    packets, below any threshold)."""
    from conftest import SHARED_PCAPS

    if not SHARED_PCAPS.is_dir():
        pytest.skip("the shared corpus is absent")
    rules = load_dir(RULES)
    fired = {}
    for path in sorted(SHARED_PCAPS.glob("*.pcap*")):
        if re.search(r"-(tunnel|exfil|amplification)-", path.name):
            continue
        verdicts = run_rules(rules, [str(path)])
        if verdicts:
            fired[path.name] = sorted({v["detector"] for v in verdicts})
    assert fired == {}


def test_a_rule_that_stops_firing_fails_its_samples(tmp_path):
    text = (RULES / "tunnel.toml").read_text().replace("unique_names >= 5", "unique_names >= 100000")
    shutil.copytree(RULES / "lists", tmp_path / "lists")      # the rule reads list_reputation
    (tmp_path / "tunnel.toml").write_text(text)
    problems = check_samples(load_rule(tmp_path / "tunnel.toml"))
    assert any("positive sample data:suricata-tunnel-dns2tcp-txt-bug1158.pcap gave no verdict" in p for p in problems)


def test_a_rule_that_fires_on_legitimate_traffic_fails_its_samples(tmp_path):
    # per-name entropy alone (what naive detectors do) trips on hash lookups
    rule = (RULES / "tunnel.toml").read_text()
    start, end = rule.index('when = """'), rule.index('"""', rule.index('when = """') + 10) + 3
    text = rule[:start] + 'when = "unique_names >= 5 and mean_entropy >= 2.8"' + rule[end:]
    shutil.copytree(RULES / "lists", tmp_path / "lists")
    (tmp_path / "tunnel.toml").write_text(text)
    problems = check_samples(load_rule(tmp_path / "tunnel.toml"))
    assert any("negative sample data:generated-av-reputation-lookups.pcap" in p for p in problems)


SITE_RULE = """\
kind = "lab_txt"
where = "is_query and qtype == TXT"
group_by = ["client"]
window_s = 60
[aggregate]
n = "count()"
[threshold]
when = "n >= 3"
[samples]
positive = ["file:samples/txt.pcap"]
negative = ["file:samples/a.pcap", "data:dnscap-baseline-udp-82-msgs.pcap"]
"""


def test_a_site_rule_is_tested_on_captures_of_its_own(tmp_path, capsys):
    """file: samples lie beside the rule file, so a site's own use case passes (or fails)
    `dnssensor rules test` on the site's captures; a rule needs samples to pass it."""
    from pcapgen import Conversation

    folder = tmp_path / "rules"
    (folder / "samples").mkdir(parents=True)
    (folder / "lab_txt.toml").write_text(SITE_RULE)
    for name, qtype in (("txt", "TXT"), ("a", "A")):
        conv = Conversation()
        for i in range(4):
            conv.exchange("192.0.2.10", "192.0.2.53", f"n{i}.example", qtype=qtype, txid=i, sport=40000 + i)
        conv.write(folder / "samples" / f"{name}.pcap")
    assert cli.main(["rules", "test", str(folder)]) == 0
    assert "ok  lab_txt.toml" in capsys.readouterr().out
    (folder / "lab_txt.toml").write_text(SITE_RULE.replace("n >= 3", "n >= 5"))
    assert cli.main(["rules", "test", str(folder)]) == 1
    assert "positive sample file:samples/txt.pcap gave no verdict" in capsys.readouterr().out
    (folder / "lab_txt.toml").write_text(SITE_RULE.replace("samples/txt.pcap", "samples/gone.pcap"))
    assert cli.main(["rules", "test", str(folder)]) == 1
    assert f"sample file:samples/gone.pcap: no such file {folder / 'samples' / 'gone.pcap'}" in capsys.readouterr().out


def test_an_installed_sensor_carries_the_captures_its_rules_are_tested_on(tmp_path, monkeypatch):
    """A wheel installs tests/data beside the rules, and data: samples resolve to it where
    no source tree is: `dnssensor rules test` on an installed sensor failed every rule, each
    of its data: samples 'no such file .../site-packages/tests/data/...'."""
    import ast
    import sys
    from pathlib import Path

    from sensor.detectors import samples

    tree = ast.parse((REPO / "setup.py").read_text())
    function = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "rule_files")
    namespace = {"Path": Path}
    exec(compile(ast.Module([function], []), "setup.py", "exec"), namespace)
    monkeypatch.chdir(REPO)
    data_files = dict(namespace["rule_files"]())
    shipped = {Path(f).name for f in data_files[str(Path("share", "dnssensor", "samples"))]}
    named = {s.capture.split(":", 1)[1] for r in load_dir(RULES) for s in (*r.positive, *r.negative)
             if s.capture.startswith("data:")}
    assert named and named <= shipped and "PROVENANCE.md" in shipped

    installed = tmp_path / samples.SHIPPED_SAMPLES
    installed.mkdir(parents=True)
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    monkeypatch.setattr(samples, "REPO", tmp_path / "lib" / "site-packages")
    assert samples.sample_data_dir() == installed
    monkeypatch.setattr(samples, "REPO", REPO)
    assert samples.sample_data_dir() == REPO / "tests" / "data"


# ------------------------------------------------------------------ verdicts with evidence

def test_tunnel_verdict_in_the_store_with_its_evidence(tmp_path):
    conf = replace(Config(), db_path=str(tmp_path / "s.db"), rules_dir=str(RULES))
    result = replay([str(TUNNEL_CAPTURE)], conf, progress_to=None)
    assert result.verdicts >= 1
    with sqlite3.connect(conf.db_path) as conn:
        rows = conn.execute("SELECT kind, detector, domain, client, evidence, summary FROM verdicts "
                            "WHERE kind = 'tunnel'").fetchall()
    assert rows and len({r[3] for r in rows}) == 1          # one client; a row per 300 s window
    kind, detector, domain, client, evidence, summary = rows[0]
    assert (kind, detector, domain) == ("tunnel", "tunnel", "tunnel.com") and client
    ev = json.loads(evidence)
    assert ev["values"]["unique_names"] >= 5 and ev["values"]["data_types"] == ev["values"]["queries"]
    assert ev["threshold"].startswith("unique_names >= 5") and ev["window_s"] == 300
    assert all(name.endswith("tunnel.com") for name in ev["sample_qnames"]) and ev["sample_qnames"]
    assert "under tunnel.com" in summary


def test_one_verdict_per_entity_and_window_updated_while_it_lasts(tmp_path):
    conf = replace(Config(), db_path=str(tmp_path / "s.db"), rules_dir=str(RULES))
    replay([str(DATA / "generated-water-torture.pcap")], conf, progress_to=None)
    replay([str(DATA / "generated-water-torture.pcap")], conf, progress_to=None)   # same window again
    with sqlite3.connect(conf.db_path) as conn:
        rows = conn.execute("SELECT domain, count, window_start FROM verdicts WHERE kind = 'random_subdomain'"
                            ).fetchall()
    assert len(rows) == 1 and rows[0][0] == "victim.example"


def test_verdicts_come_from_the_rule_only_above_its_threshold():
    verdicts = run_rules(load_dir(RULES), [str(DATA / "demo-office-resolver.pcap")])
    assert [v["kind"] for v in verdicts] == ["cache_poisoning"]
    v = verdicts[0]
    assert v["domain"] == "bank.example.com" and v["evidence"]["values"]["spoofed"] == 30


# ------------------------------------------------------------------ bounded unique counts

def _one_group(values) -> RuleTable:
    t = RuleTable((), ("u",))
    t.keys, t.window, t.count = np.array([7], dtype=np.uint64), np.array([0]), np.array([len(values)])
    t.client = t.server = np.zeros(1, dtype="V16")
    t.domain, t.samples = np.zeros(1, dtype="S253"), np.zeros((1, 2), dtype="S128")
    t.first, t.last, t.values = np.zeros(1), np.zeros(1), np.zeros((1, 0))
    t._merge_pairs("u", np.full(len(values), 7, dtype=np.uint64), np.asarray(values, dtype=np.uint64))
    return t


def test_unique_counts_are_exact_then_a_sketch_and_merge_across_processes():
    small = _one_group(list(range(100)) * 3)
    assert small.unique_counts("u").tolist() == [100] and not small.sketches["u"]
    n = EXACT_UNIQUE_LIMIT * 10
    big = _one_group(range(n))
    assert big.sketches["u"] and len(big.pairs["u"][0]) == 0         # memory stays bounded
    assert abs(big.unique_counts("u")[0] - n) < n * 0.05
    other = pickle.loads(pickle.dumps(_one_group(range(n // 2, n + n // 2))))
    big.add(other, limit=10)
    assert abs(big.unique_counts("u")[0] - 1.5 * n) < 1.5 * n * 0.05
    assert big.count.tolist() == [n + n]



def test_a_sketch_merged_into_a_group_counted_exactly_keeps_the_exact_values():
    """A group one table still counts exactly and another had to sketch (another worker's,
    or a later flush's, past EXACT_UNIQUE_LIMIT): the merged count is of both tables' values."""
    exact = _one_group(range(EXACT_UNIQUE_LIMIT - 96))
    assert not exact.sketches["u"]
    n = EXACT_UNIQUE_LIMIT + 100
    sketched = _one_group(range(10 ** 6, 10 ** 6 + n))
    assert sketched.sketches["u"]
    exact.add(sketched, limit=10)
    want = EXACT_UNIQUE_LIMIT - 96 + n
    assert abs(exact.unique_counts("u")[0] - want) < want * 0.05
    assert len(exact.pairs["u"][0]) == len(exact.pair_keys["u"]) == 0   # counted by the sketch alone
    exact.add(_one_group(range(5)), limit=10)                           # values it has: no change
    assert abs(exact.unique_counts("u")[0] - want) < want * 0.05

@settings(max_examples=150, deadline=None)
@given(batches=st.lists(st.dictionaries(st.integers(0, 10), st.tuples(st.integers(1, 5), st.integers(0, 50),
                                                                      st.integers(-9, 9)), max_size=6),
                        max_size=6),
       limit=st.integers(0, 12))
def test_rule_groups_fold_batch_by_batch(batches, limit):
    """Groups folded in batch after batch: counts and sums add, first/min and last/max keep
    their extremes, a group keeps the text of the batch it first came in, and past the
    group limit new groups are dropped (their rows counted) while held ones go on."""
    numeric = (("s", "sum"), ("hi", "max"), ("lo", "min"))
    t, want, dropped = RuleTable(numeric, ()), {}, 0
    for b, groups in enumerate(batches):
        other = RuleTable(numeric, ())
        keys = list(groups)
        rows = [groups[k] for k in keys]
        other.keys = np.array(keys, dtype=np.uint64)
        other.window = np.array(keys, dtype=np.int64) * 60
        other.client = other.server = np.zeros(len(keys), dtype="V16")
        other.domain = np.array([f"{k}.b{b}".encode() for k in keys], dtype="S128")
        other.samples = np.zeros((len(keys), 2), dtype="S96")
        other.count = np.array([c for c, _, _ in rows], dtype=np.int64)
        other.first = np.array([float(ts) for _, ts, _ in rows])
        other.last = other.first + 1
        other.values = np.array([[v, v, v] for _, _, v in rows], dtype=np.float64).reshape(-1, 3)
        lost = 0
        for k, (c, ts, v) in zip(keys, rows):
            if k in want:
                w = want[k]
                w.update(count=w["count"] + c, first=min(w["first"], ts), last=max(w["last"], ts + 1),
                         s=w["s"] + v, hi=max(w["hi"], v), lo=min(w["lo"], v))
            elif len(want) < limit:
                want[k] = dict(count=c, first=ts, last=ts + 1, s=v, hi=v, lo=v, domain=f"{k}.b{b}")
            else:
                lost += c
        assert t.add(other, limit) == lost
        dropped += lost
        if b % 2:                     # handed to another process: its key index is made again
            t = pickle.loads(pickle.dumps(t))
    got = {k: dict(count=c, first=f, last=l, s=v[0], hi=v[1], lo=v[2], domain=d.decode())
           for k, c, f, l, v, d in zip(t.keys.tolist(), t.count.tolist(), t.first.tolist(), t.last.tolist(),
                                       t.values.tolist(), t.domain.tolist())}
    assert got == want
    assert t.window.tolist() == [k * 60 for k in t.keys.tolist()]


def _random_table(rng: np.random.Generator, numeric, part: int, unique_values: int, pairs: int,
                  key_range: int) -> RuleTable:
    """A batch table of up to 6 groups among keys below `key_range`, with up to `pairs`
    (group, value) pairs of one unique aggregate, values below `unique_values`."""
    t = RuleTable(numeric, ("u",))
    keys = rng.choice(key_range, size=int(rng.integers(0, min(key_range, 6) + 1)), replace=False)
    g = len(keys)
    t.keys = keys.astype(np.uint64)
    t.window = keys.astype(np.int64) * 60
    t.client = np.array([bytes([k]) * 16 for k in keys.tolist()], dtype="V16").reshape(g)
    t.server = np.zeros(g, dtype="V16")
    t.domain = np.array([f"{k}.p{part}".encode() for k in keys.tolist()], dtype="S128").reshape(g)
    t.samples = np.array([[f"a{part}".encode(), f"b{k}".encode()] for k in keys.tolist()], dtype="S96").reshape(g, 2)
    t.count = rng.integers(1, 9, g)
    t.first = rng.integers(0, 100, g).astype(np.float64)
    t.last = t.first + rng.integers(0, 5, g)
    t.values = rng.normal(size=(g, len(numeric))).round(3)
    groups = rng.choice(t.keys, size=int(rng.integers(0, pairs + 1))) if g else np.zeros(0, np.uint64)
    t._merge_pairs("u", groups.astype(np.uint64), rng.integers(0, unique_values, len(groups)).astype(np.uint64))
    return t


@pytest.mark.parametrize("seed", range(40))
def test_tables_combined_at_once_are_tables_added_one_by_one(monkeypatch, seed):
    """RuleTable.combined (held-back batch tables in one grouping) gives what adding them to
    the first one after another gives: groups in order of first appearance with that part's
    texts, counts and sums added, extremes kept, the same distinct pairs, and the same
    groups moved to a sketch past the exact limit (some seeds start with a sketch)."""
    import sensor.detectors.rule_table as rule_table
    monkeypatch.setattr(rule_table, "EXACT_UNIQUE_LIMIT", 12)
    numeric = (("s", "sum"), ("m", "mean"), ("hi", "max"), ("lo", "min"))
    rng = np.random.default_rng(seed)
    # a quarter of the seeds give parts that sketch on their own, a quarter parts on
    # three keys whose union may pass the limit, the rest parts that never reach it
    shape = ((30, 90, 10), (200, 11, 3), (8, 24, 10), (8, 24, 10))[seed % 4]
    parts = [_random_table(rng, numeric, p, *shape) for p in range(int(rng.integers(1, 6)))]
    copies = pickle.loads(pickle.dumps(parts))
    one_by_one = copies[0]
    for part in copies[1:]:
        one_by_one.add(part, 10**6)
    at_once = RuleTable.combined(parts)
    for attr in ("keys", "window", "client", "server", "domain", "samples", "count", "first", "last", "values"):
        assert np.array_equal(getattr(at_once, attr), getattr(one_by_one, attr)), attr
    assert at_once.count.dtype == np.int64
    assert set(at_once.sketches["u"]) == set(one_by_one.sketches["u"])
    assert at_once.unique_counts("u").tolist() == one_by_one.unique_counts("u").tolist()
    assert (sorted(zip(*(c.tolist() for c in at_once.pairs["u"])))
            == sorted(zip(*(c.tolist() for c in one_by_one.pairs["u"]))))
    assert sorted(at_once.pair_keys["u"].tolist()) == sorted(one_by_one.pair_keys["u"].tolist())


def test_unique_counts_merge_batch_by_batch(monkeypatch):
    """Pairs folded in over many batches (repeats within and across batches, several
    groups, one growing past the exact limit part-way) count what a set of them counts."""
    import sensor.detectors.rule_table as rule_table
    monkeypatch.setattr(rule_table, "EXACT_UNIQUE_LIMIT", 40)
    rng = np.random.default_rng(5)
    t = _one_group([])
    t.keys = np.array([1, 2, 3], dtype=np.uint64)
    truth: dict[int, set] = {1: set(), 2: set(), 3: set()}
    for b in range(30):
        groups = rng.choice([1, 2, 3], size=25, p=[0.6, 0.3, 0.1]).astype(np.uint64)
        values = np.where(groups == 1, rng.integers(0, 100, 25), rng.integers(0, 20, 25)).astype(np.uint64)
        t._merge_pairs("u", groups, values)
        if b % 7 == 6:                # handed to another process: its pair index is made again
            t = pickle.loads(pickle.dumps(t))
        for g, v in zip(groups.tolist(), values.tolist()):
            truth[g].add(v)
    counts = dict(zip(t.keys.tolist(), t.unique_counts("u").tolist()))
    assert len(truth[1]) > 40 and 1 in t.sketches["u"]                 # moved to a sketch
    assert abs(counts[1] - len(truth[1])) <= 2
    assert set(t.sketches["u"]) == {1}
    assert counts[2] == len(truth[2]) and counts[3] == len(truth[3])  # still exact
    assert 1 not in t.pairs["u"][0].tolist()
    assert len(t.pair_keys["u"]) == len(t.pairs["u"][0])


@pytest.mark.parametrize("per_batch", [5, 64, 100000])
def test_unique_counts_of_folded_batches_count_each_groups_distinct_values(tmp_path, per_batch):
    """A rule's nunique aggregates, folded batch by batch from a real capture, count the
    distinct names and registered domains each client asked for in each window."""
    from dataclasses import replace
    from sensor.detectors.rules_engine import fold
    from sensor.features import NetworkSet, build
    from sensor.limits import DEFAULT_LIMITS
    from sensor.parse import Parser
    from sensor.parse.batch import address_text
    from sensor.rules import load_rule
    from sensor.track import Tracker
    (tmp_path / "names.toml").write_text(
        'kind = "x"\nseverity = "low"\nwhere = "is_query"\ngroup_by = ["client"]\nwindow_s = 60\n'
        'summary = "{client}"\n[aggregate]\nnames = "nunique(qname)"\ndomains = "nunique(regdom)"\n'
        '[threshold]\nwhen = "names >= 1"\n')
    rule = load_rule(tmp_path / "names.toml", lists={}, dga_model=None, tags={})
    parser = Parser(limits=replace(DEFAULT_LIMITS, messages_per_batch=per_batch, frames_per_read=per_batch))
    tracker, partials, truth, batches = Tracker(), {}, {}, 0
    for batch in parser.parse_file(str(DATA / "generated-water-torture.pcap")):
        batches += 1
        track = tracker.process(batch.messages)
        fold([rule], build(batch, track, NetworkSet(())), partials, 10**6, {})
        m = batch.messages
        for i in np.flatnonzero(m["qr"] == 0).tolist():
            name = batch.qname(i)
            entry = truth.setdefault((int(m["ts"][i] // 60 * 60), address_text(bytes(track.client[i]))),
                                     (set(), set()))
            entry[0].add(name)
            entry[1].add(name[int(m["regdom_off"][i]):])
    table = partials[rule.name]
    results = table.results(rule.aggregations)
    got = {(int(w), address_text(bytes(c))): (int(n), int(d)) for w, c, n, d in zip(
        table.window.tolist(), table.client, results["names"].tolist(), results["domains"].tolist())}
    assert got == {k: (len(names), len(domains)) for k, (names, domains) in truth.items()}
    assert max(n for n, _ in got.values()) > 10          # groups with many distinct values
    assert batches > 1 if per_batch < 4800 else batches == 1



def _per_client_and_domain(tmp_path, aggregates: str, captures: tuple[str, ...]):
    """A rule over queries grouped by client and registered domain with these [aggregate]
    lines, and the feature tables of the captures (tests/data) in batches of 50 messages."""
    from dataclasses import replace
    from sensor.features import NetworkSet, build
    from sensor.limits import DEFAULT_LIMITS
    from sensor.parse import Parser
    from sensor.rules import load_rule
    from sensor.track import Tracker
    (tmp_path / "names.toml").write_text(
        'kind = "x"\nseverity = "low"\nwhere = "is_query"\ngroup_by = ["client", "regdom"]\nwindow_s = 60\n'
        f'summary = "{{client}}"\n[aggregate]\n{aggregates}\n[threshold]\nwhen = "names >= 1"\n')
    rule = load_rule(tmp_path / "names.toml", lists={}, dga_model=None, tags={})
    parser = Parser(limits=replace(DEFAULT_LIMITS, messages_per_batch=50, frames_per_read=50))
    tracker = Tracker()

    def feature_tables():
        for capture in captures:
            for batch in parser.parse_file(str(DATA / capture)):
                yield build(batch, tracker.process(batch.messages), NetworkSet(()))
    return rule, feature_tables()


@pytest.mark.parametrize("max_groups, pending_rows", [(5, 16384), (10**6, 16384), (10**6, 60)])
def test_batch_tables_held_back_fold_as_one_by_one(tmp_path, monkeypatch, max_groups, pending_rows):
    """A rule's batch tables folded PENDING_BATCH_TABLES at a time, or once they hold
    PENDING_ROWS rows (and the rest settled at the end), give the groups, counts, texts,
    aggregates and dropped rows that folding each batch as it comes gives, past the group
    limit too."""
    import sensor.detectors.rules_engine as rules_engine
    from sensor.detectors.rules_engine import PENDING_BATCH_TABLES, fold, settle
    monkeypatch.setattr(rules_engine, "PENDING_ROWS", pending_rows)
    rule, feature_tables = _per_client_and_domain(
        tmp_path, 'names = "nunique(qname)"\nlongest = "max(left_len)"\nbytes = "sum(size)"',
        ("generated-water-torture.pcap", "generated-dga-client.pcap", "demo-office-resolver.pcap"))
    one_by_one, held_back, pending = {}, {}, {}
    dropped_one, dropped_held = {}, {}
    batches = held_most = 0
    for features in feature_tables:
        batches += 1
        fold([rule], features, one_by_one, max_groups, dropped_one)
        fold([rule], features, held_back, max_groups, dropped_held, pending)
        waiting = pending.get(rule.name, [])
        assert len(waiting) < PENDING_BATCH_TABLES and sum(int(w.count.sum()) for w in waiting) < pending_rows
        held_most = max(held_most, len(waiting))
    # the count bound held tables back in the first case, the rows bound first in the second
    assert (held_most == PENDING_BATCH_TABLES - 1) == (pending_rows > 1000)
    if pending_rows > 1000 and max_groups > 5:     # (a full table takes rows of its own groups only)
        assert batches % PENDING_BATCH_TABLES and pending[rule.name]      # some still waiting
    settle(held_back, pending, max_groups, dropped_held)
    assert not pending
    a, b = one_by_one[rule.name], held_back[rule.name]
    for attr in ("keys", "window", "client", "server", "domain", "samples", "count", "first", "last", "values"):
        assert np.array_equal(getattr(a, attr), getattr(b, attr)), attr
    assert np.array_equal(a.unique_counts("names"), b.unique_counts("names"))
    assert dropped_one == dropped_held
    assert (dropped_one.get("rule_groups_overflow", 0) > 0) == (max_groups == 5)


def test_a_full_rule_table_takes_the_rows_of_its_own_groups_only(tmp_path, monkeypatch):
    """Once a rule holds max_groups groups, a batch's rows of other groups are dropped (and
    counted) before its groups are made: the table and the counts are those that making
    every group and dropping the new ones as they went in gave."""
    import sensor.detectors.rules_engine as rules_engine
    from sensor.detectors.rules_engine import _add, batch_table, fold, new_table
    made_when_full = []

    def recording(rule, table, idx, known=None, grouped=None):
        part = batch_table(rule, table, idx, known, grouped)
        if known is not None and len(known) >= max_groups:
            made_when_full.append(bool(np.isin(part.keys, known).all()))
        return part
    monkeypatch.setattr(rules_engine, "batch_table", recording)
    rule, feature_tables = _per_client_and_domain(tmp_path, 'names = "nunique(qtype)"\nbytes = "sum(size)"',
                                                  ("generated-water-torture.pcap", "demo-office-resolver.pcap"))
    max_groups = 12
    folded, made = {}, {}
    dropped_folded, dropped_made = {}, {}
    for features in feature_tables:
        fold([rule], features, folded, max_groups, dropped_folded)
        idx = np.flatnonzero(np.broadcast_to(np.asarray(rule.where(features.columns), dtype=bool), (len(features),)))
        if len(idx):
            mine = made.setdefault(rule.name, new_table(rule))
            _add(mine, batch_table(rule, features, idx, mine.keys), max_groups, dropped_made)
    a, b = folded[rule.name], made[rule.name]
    assert len(a) == max_groups
    for attr in ("keys", "window", "client", "server", "domain", "samples", "count", "first", "last", "values"):
        assert np.array_equal(getattr(a, attr), getattr(b, attr)), attr
    assert np.array_equal(a.unique_counts("names"), b.unique_counts("names"))
    assert dropped_folded == dropped_made and dropped_made["rule_groups_overflow"] > 100
    assert a.count.sum() > max_groups         # held groups kept counting once the table was full
    assert made_when_full and all(made_when_full)

def test_generated_samples_are_rebuilt_byte_identical(tmp_path):
    import subprocess
    import sys
    subprocess.run([sys.executable, str(REPO / "tools" / "rule_samples.py"), str(tmp_path)], check=True,
                   capture_output=True)
    for name in ("generated-water-torture.pcap", "generated-av-reputation-lookups.pcap",
                 "generated-malware-lookups.pcap", "generated-dga-client.pcap", "generated-slow-exfil.pcap",
                 "generated-poisoned-race.pcap", "generated-out-of-bailiwick.pcap",
                 "generated-browser-intranet-probes.pcap", "generated-odd-but-legitimate.pcap",
                 "generated-one-way-validating-resolver.pcap", "generated-mail-authentication.pcap",
                 "generated-service-names.pcap", "generated-av-cloud-lookups.pcap",
                 "generated-cluster-search-domains.pcap", "generated-lossy-nat-client.pcap"):
        assert (tmp_path / name).read_bytes() == (DATA / name).read_bytes(), name


# ------------------------------------------------------------------ name lists

def test_list_formats_and_what_they_match(tmp_path):
    from sensor.features.lists import load_list, load_lists
    from sensor.parse import Parser
    (tmp_path / "zone.rpz").write_text("$TTL 30\n@ IN SOA localhost. root.localhost. 1 2 3 4 5\n NS localhost.\n"
                                       "bad.example CNAME .\n*.wild.example CNAME .\nother.example A 192.0.2.1\n")
    (tmp_path / "x.hosts").write_text("# comment\n0.0.0.0 host.example\n127.0.0.1 Second.Example.\n")
    (tmp_path / "d.txt").write_text("domain.example\nnot a name at all\n")
    names = ["bad.example", "a.bad.example", "x.wild.example", "wild.example", "host.example",
             "sub.host.example", "second.example", "domain.example", "deep.sub.domain.example", "other.example"]
    batch = Parser().parse_payloads([__import__("dnslib").DNSRecord.question(n).pack() for n in names])
    m = batch.messages
    hit = {}
    for f in ("zone.rpz", "x.hosts", "d.txt"):
        lst = load_list(tmp_path / f)
        hit[f] = [n for n, h in zip(names, lst.mask(batch.arena, m["qname_off"], m["qname_len"])) if h]
    assert hit["zone.rpz"] == ["bad.example", "x.wild.example"]       # exact, and below a wildcard
    assert hit["x.hosts"] == ["host.example", "second.example"]        # hosts: exact names only
    assert hit["d.txt"] == ["domain.example", "deep.sub.domain.example"]   # domains: and below
    assert load_list(tmp_path / "d.txt").skipped == 1
    assert load_list(tmp_path / "zone.rpz").skipped == 2               # SOA and the A record
    # the lists of one directory share one table: each matches as it did alone
    together = load_lists(tmp_path)
    assert sorted(together) == ["list_d", "list_x", "list_zone"]
    assert len({id(lst.lists) for lst in together.values()}) == 1
    for f, feature in (("zone.rpz", "list_zone"), ("x.hosts", "list_x"), ("d.txt", "list_d")):
        got = together[feature].mask(batch.arena, m["qname_off"], m["qname_len"])
        assert [n for n, h in zip(names, got) if h] == hit[f], f


def test_a_directory_holds_at_most_max_name_lists_lists(tmp_path):
    from sensor.errors import ConfigError
    from sensor.features.lists import MAX_NAME_LISTS, load_lists
    for i in range(MAX_NAME_LISTS):
        (tmp_path / f"l{i}.txt").write_text(f"n{i}.example\n")
    lists = load_lists(tmp_path)
    assert len(lists) == MAX_NAME_LISTS
    assert sorted(lst.bit for lst in lists.values()) == list(range(MAX_NAME_LISTS))
    (tmp_path / "one-more.txt").write_text("more.example\n")
    with pytest.raises(ConfigError, match=f"more than {MAX_NAME_LISTS} name lists"):
        load_lists(tmp_path)


_LABEL = st.sampled_from(["a", "b", "ex", "com", "x-1", "we\\.ird", "\\255z", "_t", "ird", "b\\\\"])


@settings(max_examples=300, deadline=None)
@given(names=st.lists(st.lists(_LABEL, min_size=1, max_size=5).map(".".join), min_size=1, max_size=30),
       entries=st.lists(st.tuples(st.lists(_LABEL.filter(lambda s: "\\" not in s), min_size=1,
                                           max_size=3).map(".".join),
                                  st.sampled_from(["exact", "and_below", "below"]),
                                  st.sampled_from([0, 1, 31])), max_size=8))
def test_listed_names_agree_with_sets(names, entries):
    """The compiled one-pass walk against the definition, for three lists in one table: a
    name is on a list that holds it exactly or as a domain, or holds a parent of it (after an
    unescaped dot) as a domain or a wildcard."""
    from sensor import _core
    lists = sorted({bit for _, _, bit in entries})
    sets = {(bit, kind): {n for n, k, b in entries if k == kind and b == bit}
            for bit in lists for kind in ("exact", "and_below", "below")}
    own_kinds, below_kinds = ("exact", "and_below"), ("and_below", "below")
    table = _core.name_list_table(
        np.array([_core.name_list_key(n.encode()) for n, _, _ in entries], dtype=np.uint64),
        np.array([(k in own_kinds) << b for _, k, b in entries], dtype=np.uint32),
        np.array([(k in below_kinds) << b for _, k, b in entries], dtype=np.uint32))
    arena = "".join(names).encode()
    lengths = np.array([len(n) for n in names], dtype=np.uint16)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.uint32)
    got = _core.names_listed(arena, offsets, lengths, table).tolist()

    def parents(name: str) -> list[str]:
        out, i = [], 0
        while i < len(name):
            if name[i] == "\\":
                i += 2
            elif name[i] == ".":
                out.append(name[i + 1:])
                i += 1
            else:
                i += 1
        return out

    def on(name: str, bit: int) -> bool:
        return (name in sets[bit, "exact"] or name in sets[bit, "and_below"]
                or any(p in sets[bit, "and_below"] or p in sets[bit, "below"] for p in parents(name)))

    want = [sum(on(name, bit) << bit for bit in lists) for name in names]
    assert got == want


def test_malware_verdicts_follow_the_list_on_reload(tmp_path):
    folder = tmp_path / "rules"
    shutil.copytree(RULES, folder)
    capture = str(DATA / "generated-malware-lookups.pcap")
    fired = run_rules([r for r in load_dir(folder) if r.kind == "malware_domain"], [capture])
    listed = [line.split()[1] for line in (RULES / "lists" / "urlhaus.hosts").read_text().splitlines()
              if line and not line.startswith("#")][:3]
    assert sorted(v["domain"] for v in fired) == sorted(listed)
    assert all(v["client"] == "10.3.0.77" and v["evidence"]["values"]["lookups"] == 1 for v in fired)
    hosts = folder / "lists" / "urlhaus.hosts"
    hosts.write_text("\n".join(line for line in hosts.read_text().splitlines() if listed[0] not in line))
    fired = run_rules([r for r in load_dir(folder) if r.kind == "malware_domain"], [capture])
    assert sorted(v["domain"] for v in fired) == sorted(listed[1:])


# ------------------------------------------------------------------ the DGA model

def test_compiled_dga_score_matches_the_reference_scorer():
    import dnslib

    from sensor.features.dga import load_model, score_label
    from sensor.parse import Parser
    model = load_model(RULES / "models")
    names = ["www.google.com", "qwhxkzpvbnrt.com", "mail.example.co.uk", "k8a7-d6f5g4.net", "a.b",
             "x" * 63 + ".org", "bbc.co.uk", "."]
    batch = Parser().parse_payloads([dnslib.DNSRecord.question(n).pack() for n in names])
    got = model.scores(batch.arena, batch.messages)
    labels = ["google", "qwhxkzpvbnrt", "example", "k8a7-d6f5g4", "a", "x" * 63, "bbc", None]
    for g, label in zip(got.tolist(), labels):
        assert g == pytest.approx(score_label(label, model.table) if label else 0.0, abs=1e-9)
    assert got[1] > model.threshold > got[0]


@pytest.mark.parametrize("capture", ["demo-office-resolver.pcap", "generated-malware-lookups.pcap",
                                     "dnscap-baseline-udp-82-msgs.pcap"])
def test_name_features_per_distinct_name_equal_those_per_message(capture):
    """Features of the question name alone are worked out once per distinct name and
    spread back: each message gets what its own name gives."""
    from sensor import _core
    from sensor.features import LAZY, _ENCODING_TABLE, build, NetworkSet
    from sensor.features.dga import load_model
    from sensor.features.lists import NamePattern, load_lists
    from sensor.parse import parse_file
    from sensor.track import Tracker
    batch = parse_file(str(DATA / capture))
    m, arena = batch.messages, batch.arena
    assert len(np.unique(m["name_hash"])) < len(m)    # names repeat: the sharing is exercised
    texts = [batch.qname(i) for i in range(len(m))]
    table = build(batch, Tracker().process(m), NetworkSet(()))
    cols = table.columns
    offsets, lengths = np.ascontiguousarray(m["qname_off"]), np.ascontiguousarray(m["qname_len"])
    for name, column in zip(LAZY, _core.first_label_stats(arena, offsets, lengths)):
        assert cols[name].tolist() == column.tolist(), name
    assert cols["encoding_chars"].tolist() == _core.count_in_spans(
        arena, offsets, lengths.astype(np.uint32), _ENCODING_TABLE).astype(np.float64).tolist()
    from sensor.parse.psl import load_rules as load_suffix_rules
    tlds = {t for t in load_suffix_rules().rules if "." not in t}
    assert cols["public_tld"].tolist() == [name.rsplit(".", 1)[-1] in tlds for name in texts]
    assert cols["service_labels"].tolist() == [sum(label.startswith("_") for label in name.split("."))
                                               for name in texts]
    regdom_at = m["regdom_off"].tolist()
    assert cols["inner_tlds"].tolist() == [sum(label in tlds for label in name[:at].split(".")[1:-1])
                                           for name, at in zip(texts, regdom_at)]
    model = load_model(RULES / "models")
    cols.dga_model = model
    assert cols["dga_score"].tolist() == model.scores(arena, m).tolist()
    lists = load_lists(RULES / "lists")
    pattern = NamePattern("digit_or_w", r"[0-9]|^w", re.compile(r"[0-9]|^w"))
    cols.sources.update(lists, pattern_digit_or_w=pattern)
    for name, source in [*lists.items(), ("pattern_digit_or_w", pattern)]:
        assert cols[name].tolist() == source.mask(arena, offsets, lengths).tolist(), name
    assert any(cols["pattern_digit_or_w"]) and not all(cols["pattern_digit_or_w"])


def test_selected_messages_get_their_own_features_and_only_their_names_are_worked_out():
    """Columns.select: a filter's later terms read the messages its first ones left; each
    gets the value the whole-batch column gives it, and a feature of the name alone is
    worked out for those messages' names only (the rest later, when a rule asks)."""
    from sensor.features import NetworkSet, build
    from sensor.features.lists import NamePattern
    from sensor.parse import parse_file
    from sensor.track import Tracker
    batch = parse_file(str(DATA / "demo-office-resolver.pcap"))
    track = Tracker().process(batch.messages)
    pattern = NamePattern("p", r"^www", re.compile(r"^www"))
    full = build(batch, track, NetworkSet(())).columns
    full.sources["pattern_p"] = pattern
    rows = np.flatnonzero(full["nxdomain"])
    assert 0 < len(rows) < len(batch) / 4
    worked_out: list[int] = []

    class Counting(NamePattern):
        def mask(self, arena, offsets, lengths):
            worked_out.extend(offsets.tolist())
            return super().mask(arena, offsets, lengths)

    cols = build(batch, track, NetworkSet(())).columns
    cols.sources["pattern_p"] = Counting("p", r"^www", re.compile(r"^www"))
    chosen = cols.select(rows)
    for name in ("pattern_p", "first_label_len", "rd", "client", "qtype", "out_of_bailiwick", "nxdomain"):
        assert chosen[name].tolist() == full[name][rows].tolist(), name
    names_chosen = set(batch.messages["name_hash"][rows].tolist())
    assert len(worked_out) == len(names_chosen) < len(set(batch.messages["name_hash"].tolist()))
    assert "pattern_p" not in cols                  # no whole-batch column was made for it
    inner = chosen.select(np.arange(0, len(rows), 2))
    assert inner["first_label_len"].tolist() == full["first_label_len"][rows[::2]].tolist()
    assert cols["pattern_p"].tolist() == full["pattern_p"].tolist()   # the rest, when asked


def test_selected_messages_get_their_list_features_from_one_walk_of_their_names(tmp_path):
    """A name list read for some messages (Columns.select) walks their names only, once for
    every list of its directory, and each gets what the whole-batch column gives it."""
    from sensor.features import NetworkSet, build
    from sensor.features.lists import NameListSet, load_lists
    from sensor.parse import parse_file
    from sensor.track import Tracker
    batch = parse_file(str(DATA / "demo-office-resolver.pcap"))
    track = Tracker().process(batch.messages)
    names = sorted({batch.qname(i) for i in range(len(batch))})
    (tmp_path / "a.txt").write_text("\n".join(names[::3]) + "\n")
    (tmp_path / "b.hosts").write_text("".join(f"0.0.0.0 {n}\n" for n in names[1::4]))
    lists = load_lists(tmp_path)
    full = build(batch, track, NetworkSet(())).columns
    full.sources.update(lists)
    walked: list[int] = []

    class Counting(NameListSet):
        def bits(self, arena, offsets, lengths):
            walked.extend(offsets.tolist())
            return super().bits(arena, offsets, lengths)

    counting = Counting(lists["list_a"].lists.table)
    cols = build(batch, track, NetworkSet(())).columns
    cols.sources.update({name: replace(lst, lists=counting) for name, lst in lists.items()})
    rows = np.flatnonzero(full["nxdomain"])
    chosen = cols.select(rows)
    for name in ("list_a", "list_b"):
        assert chosen[name].tolist() == full[name][rows].tolist(), name
        assert 0 < np.count_nonzero(full[name]) < len(batch), name
    names_chosen = set(batch.messages["name_hash"][rows].tolist())
    assert len(walked) == len(names_chosen)              # both lists from one walk of their names
    assert "list_a" not in cols and "list_b" not in cols
    assert cols["list_b"].tolist() == full["list_b"].tolist()
    assert len(walked) == len(set(batch.messages["name_hash"].tolist()))   # the rest, once


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.sampled_from(["a1.example", "www.example", "b.example", "c2.test", "x.y.z",
                                          "_dmarc.b.example", "e==.example", "."]),
                         max_size=12), max_size=6), st.integers(1, 5))
# a name first met in a batch that did not ask for the second feature, asked for later
@example([["a1.example"], ["b.example"], [], ["a1.example"]], 5)
def test_name_memo_gives_each_message_its_own_names_features_across_batches(batches, limit):
    """Name features remembered across batches (sensor.features.memo) equal those worked out
    from each message's own name, whichever batch first asked, also once the memo has
    started over; it holds at most its limit plus one batch's names."""
    from sensor import _core
    from sensor.features.lists import NamePattern
    from sensor.features.memo import NameMemo
    regex = r"[0-9]|^w"
    pattern = NamePattern("p", regex, re.compile(regex))
    memo = NameMemo(limit)
    asked: list[int] = []
    for b, names in enumerate(batches):
        texts = [n.encode() for n in names]
        arena = b"".join(texts)
        lengths = np.array([len(t) for t in texts], dtype=np.uint16)
        offsets = (np.cumsum(lengths, dtype=np.int64) - lengths).astype(np.uint32)
        rows = memo.rows(np.array([_core.fnv1a64(t) for t in texts], dtype=np.uint64))
        assert len(memo) <= limit + len(set(names))

        def matches(messages: np.ndarray) -> np.ndarray:
            asked.extend(messages.tolist())
            return pattern.mask(arena, offsets[messages], lengths[messages])

        def services(messages: np.ndarray) -> np.ndarray:
            return _core.service_label_counts(arena, offsets[messages], lengths[messages]) + lengths[messages]

        asked.clear()
        assert memo.column("pattern_p", rows, matches).tolist() == [re.search(regex, n) is not None for n in names]
        assert len(asked) == len(set(asked)) <= len(set(names))          # once per name at most
        if b % 2:               # a feature not asked for in every batch (a rule's filter cut short)
            assert memo.column("service_labels_and_length", rows, services).tolist() == [
                sum(label.startswith("_") for label in n.split(".")) + len(n) for n in names]


def test_reloaded_rules_start_a_new_name_memo():
    """A reload may bring a changed pattern or list under the same feature name: what the
    worker remembered of each name under the old one must not answer for the new one."""
    from sensor.engine.aggregate import Accumulator
    from sensor.features import NetworkSet, build
    from sensor.features.lists import NamePattern
    from sensor.parse import parse_file
    from sensor.track import Tracker
    batch = parse_file(str(DATA / "demo-office-resolver.pcap"))
    track = Tracker().process(batch.messages)
    texts = [batch.qname(i) for i in range(len(batch))]
    acc = Accumulator()
    for regex in (r"^www", r"^(api|mail)"):
        if regex != r"^www":
            acc.rules = []                       # what Pipeline.reconfigure does on SIGHUP
        cols = build(batch, track, NetworkSet(()), acc.names).columns
        cols.sources["pattern_p"] = NamePattern("p", regex, re.compile(regex))
        expected = [re.search(regex, t) is not None for t in texts]
        assert any(expected) and not all(expected)
        assert cols["pattern_p"].tolist() == expected, regex


def test_dga_model_figures_hold_on_the_held_out_split():
    from conftest import SHARED_PCAPS
    datasets = SHARED_PCAPS.parent / "datasets"
    if not (datasets / "dga_labeled_multifamily.csv").exists():
        pytest.skip("the shared datasets are absent")
    import subprocess
    import sys
    out = subprocess.run([sys.executable, str(REPO / "tools" / "train_dga.py"), "--check"], check=True,
                         capture_output=True, text=True).stdout
    measured = json.loads(out)
    claimed = json.loads((RULES / "models" / "dga.json").read_text())["held_out"]
    for key in ("false_positive_rate", "recall", "precision"):
        assert measured[key] == pytest.approx(claimed[key], abs=1e-4), key
    assert measured["false_positive_rate"] <= 0.02 and measured["precision"] >= 0.9


def test_address_tags_drive_policy_rules(tmp_path):
    folder = tmp_path / "rules"
    shutil.copytree(RULES, folder)
    site = replace(Config(), ports=SAMPLE_PORTS, client_networks=("172.17.0.0/16",))
    capture = [str(DATA / "dnscap-baseline-udp-82-msgs.pcap")]
    policy = [r for r in load_dir(folder) if r.kind == "policy_violation"]
    fired = run_rules(policy, capture, site)
    assert {(v["client"], v["server"]) for v in fired} == {("172.17.0.10", "8.8.8.8")}
    assert run_rules(policy, capture) == []          # whose clients these are is not known
    tags = folder / "tags.toml"
    tags.write_text(tags.read_text().replace('"198.51.100.53/32"]', '"198.51.100.53/32", "8.8.8.8/32"]'))
    policy = [r for r in load_dir(folder) if r.kind == "policy_violation"]
    assert run_rules(policy, capture, site) == []
    tags.write_text('[tags]\nresolvers = ["10.0.0.300/32"]\n')
    with pytest.raises(RuleError, match=r"tags.toml:2: tags.resolvers: .*10.0.0.300"):
        load_dir(folder)


def test_answer_hash_is_the_xor_of_each_messages_answers():
    from conftest import capture
    from sensor.parse import parse_file
    with_answers = sum(_check_answer_hashes(parse_file(str(capture(name)), ports=(53, 5353, 8053, 1053)))
                       for name in ("dnscap-baseline-udp-82-msgs.pcap",
                                    "suricata-tcp-pipelined-20-query-response-pairs.pcap"))
    assert with_answers > 0


def _check_answer_hashes(batch):
    from sensor import _core, features
    from sensor.track import Tracker, hash_columns
    table = features.build(batch, Tracker().process(batch.messages), features.NetworkSet(()))
    got = table.columns["answer_hash"]
    for i in range(len(batch)):
        m = batch.messages[i]
        rows = batch.rrs[int(m["rr_start"]):int(m["rr_start"]) + int(m["rr_count"])]
        rows = rows[rows["section"] == 1]
        want = np.uint64(0)
        if len(rows):
            data = _core.span_hashes(batch.arena, np.ascontiguousarray(rows["rdata_off"]),
                                     np.ascontiguousarray(rows["rdata_len"]))
            want = np.bitwise_xor.reduce(hash_columns(data, rows["type"]))
        assert got[i] == want, i
    return int((got != 0).sum())


def test_the_recorded_lab_capture_gives_its_verdicts_and_spares_the_benign(tmp_path):
    """tests/data/lab-resolver.pcap is real tool traffic (tools/record_lab.py): the regression
    twin of the root lab test, for machines without root."""
    from sensor import config as cfg
    conf = replace(cfg.resolve_paths(cfg.load(REPO / "deploy" / "demo.toml")), db_path=str(tmp_path / "d.db"))
    replay([str(DATA / "lab-resolver.pcap")], conf, progress_to=None)
    with sqlite3.connect(conf.db_path) as conn:
        found = set(conn.execute("SELECT kind, client, domain FROM verdicts"))
    assert {("tunnel", "10.77.0.2", d) for d in ("t1.test", "t2.test", "t3.test")} <= found
    assert ("exfil", "", "exfil.test") in found
    assert ("cache_poisoning", "10.78.0.1", "www.slow.test") in found
    assert ("open_resolver", "10.77.1.9", "") in found
    assert not [v for v in found if v[1] == "10.77.0.5" or v[2].endswith("corp.test")]


def test_a_resolver_is_not_its_clients_tunnel_where_its_addresses_are_not_configured():
    """With no site settings the resolver's upstream leg is unknown, but its queries are
    iterative (RD clear): the tunnels in the lab capture are its client's, not its own.
    The resolver stays the victim of the poisoning race, which is about its upstream."""
    resolver_up = "10.78.0.1"
    fired = {(v["detector"], v["client"]) for v in run_rules(load_dir(RULES), [str(DATA / "lab-resolver.pcap")])}
    assert ("tunnel", "10.77.0.2") in fired and ("exfil_encoded", "10.77.0.2") in fired
    assert {d for d, client in fired if client == resolver_up} == {"cache_poisoning"}


def test_public_tld_tells_real_top_level_domains_from_made_up_ones(tmp_path):
    """public_tld: the last label is a TLD of the Public Suffix List. Local TLDs, reserved
    ones, data in place of a TLD and the root are not."""
    from pcapgen import Conversation
    from sensor import features
    from sensor.parse import parse_file
    from sensor.track import Tracker

    names = {"www.example.com": True, "x.bbc.co.uk": True, "a.b.xn--p1ai": True, "shop.museum": True,
             "printer.corp": False, "host.example": False, "nas.home.arpa": True, "svc.local": False,
             "dnscat.546b03f50000.5a03b5b1e1aa8f8fdb1bbe8d5e049521": False, "com": True, ".": False}
    conv = Conversation()
    for i, name in enumerate(names):
        conv.exchange("10.0.0.7", "10.0.0.53", name, txid=i + 1)
    batch = parse_file(str(conv.write(tmp_path / "tlds.pcap")))
    table = features.build(batch, Tracker().process(batch.messages), features.NetworkSet(()))
    assert dict(zip(batch.qnames(), table.columns["public_tld"].tolist())) == names


def test_service_labels_count_the_labels_that_begin_with_an_underscore():
    from sensor import _core

    texts = [b"_ldap._tcp.site._sites.dc._msdcs.corp.example", b"sel._domainkey.example.com",
             b"a_b.c_d.example", b"\\_x._y", b"_", b"", b"www.example.com", b"x\\._y.example"]
    arena = b"".join(texts)
    offsets = np.cumsum([0] + [len(t) for t in texts[:-1]]).astype(np.uint32)
    lengths = np.array([len(t) for t in texts], dtype=np.uint16)
    assert _core.service_label_counts(arena, offsets, lengths).tolist() == [4, 1, 0, 1, 1, 0, 0, 0]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.sampled_from(["_x", "_", "a", "abcdefg", "_ldap", "x_y", "\\_z", "we\\.ird",
                                          "\\255z", "", "_tcp01234567"]), min_size=1, max_size=9)
                .map(".".join), min_size=1, max_size=20))
def test_service_labels_agree_with_a_walk_of_the_name(names):
    """Labels are found eight bytes at a time where a name has no escape, a byte at a time
    where it has: both against the byte-serial definition, dots at every word boundary."""
    from sensor import _core

    def underscored(name: str) -> int:
        count, label_start, i = 0, True, 0
        while i < len(name):
            if name[i] == "\\":                    # an escaped byte is never a label's first underscore
                label_start, i = False, i + 2
                continue
            count += label_start and name[i] == "_"
            label_start = name[i] == "."
            i += 1
        return min(count, 255)

    texts = [n.encode() for n in names]
    arena = b"".join(texts)
    offsets = np.cumsum([0] + [len(t) for t in texts[:-1]]).astype(np.uint32)
    lengths = np.array([len(t) for t in texts], dtype=np.uint16)
    assert _core.service_label_counts(arena, offsets, lengths).tolist() == [underscored(n) for n in names]


def test_inner_tlds_find_a_whole_name_under_another():
    """Search-domain expansion puts a whole name under another: a TLD among the labels
    between the first and the registered domain. The first label and the registered
    domain's own labels are not counted, nor a label holding an escape."""
    from sensor import _core
    from sensor.parse.psl import load_rules as load_suffix_rules

    cases = {"api3.payments-cloud.com.corp.example": ("corp.example", 1),
             "www.xyzzy-shop.co.uk.svc.corp.example": ("corp.example", 2),   # co is a TLD too
             "com.x7k2q.victim.example": ("victim.example", 0),           # the first label
             "x7k2q9.victim.example": ("victim.example", 0), "victim.com": ("victim.com", 0),
             "a.b.c\\.com.victim.example": ("victim.example", 0), "a.net.org.example.com": ("example.com", 2)}
    texts = [name.encode() for name in cases]
    arena = b"".join(texts)
    offsets = np.cumsum([0] + [len(t) for t in texts[:-1]]).astype(np.uint32)
    lengths = np.array([len(t) for t in texts], dtype=np.uint16)
    regdom = np.array([len(n) - len(reg) for n, (reg, _) in cases.items()], dtype=np.uint16)
    got = _core.inner_tld_counts(arena, offsets, lengths, regdom, load_suffix_rules().table()).tolist()
    assert got == [want for _, want in cases.values()]


def test_public_tld_of_escaped_names():
    """A name's text escapes a dot or an odd byte inside a label: the TLD is what follows
    the last real dot, and a label holding an escape is no TLD."""
    from sensor import _core
    from sensor.parse.psl import load_rules as load_suffix_rules

    texts = [b"odd\\.name.com", b"x.c\\111m", b"a.com\\.", b"com", b"", b"x.", b"no-dot-here"]
    arena = b"".join(texts)
    offsets = np.cumsum([0] + [len(t) for t in texts[:-1]]).astype(np.uint32)
    lengths = np.array([len(t) for t in texts], dtype=np.uint16)
    got = _core.public_tlds(arena, offsets, lengths, load_suffix_rules().table()).tolist()
    assert got == [1, 0, 0, 1, 0, 0, 0]
    beyond = (np.array([2], dtype=np.uint32), np.array([5], dtype=np.uint16))
    for check in (lambda: _core.public_tlds(b"abc", *beyond, load_suffix_rules().table()),
                  lambda: _core.service_label_counts(b"abc", *beyond),
                  lambda: _core.inner_tld_counts(b"abc", *beyond, np.zeros(1, np.uint16),
                                                 load_suffix_rules().table())):
        with pytest.raises(ValueError, match="span outside the arena"):
            check()


def test_name_patterns_and_encoded_names_flag_one_query_exfiltration(tmp_path):
    """patterns.toml gives pattern_<name>; encoding_chars counts base64 and escaped bytes.
    One Browsertunnel-shaped name, one base64 name: their clients, and no one else."""
    from pcapgen import Conversation

    conv = Conversation()
    conv.exchange("10.0.0.5", "10.0.0.53", "k3x9qa.12.0.a8f3b2c1d4e5.tunnel.example.com", rcode=3, txid=1)
    conv.exchange("10.0.0.6", "10.0.0.53", "h4sicn03*2qaa3rlc3qudhh0aavjycxwakjehelu5=-.4s2fgaaaa==-.drop.example.net",
                  txid=2)
    for i, name in enumerate(["node01.10.0.cluster.local", "www.example.com", "_dmarc.example.org",
                              "k3x9qa.example.com", "a8f3b2c1d4e5a8f3b2c1d4e5a8f3b2c1d4e5.av.example.com"]):
        conv.exchange("10.0.0.7", "10.0.0.53", name, txid=10 + i)
    pcap = conv.write(tmp_path / "one-query-exfil.pcap")
    from sensor import features
    from sensor.parse import parse_file
    from sensor.track import Tracker
    batch = parse_file(str(pcap))
    table = features.build(batch, Tracker().process(batch.messages), features.NetworkSet(()))
    assert table.columns["encoding_chars"].tolist() == [
        float(sum(rec["qname"].count(ch) for ch in "=+/*\\")) for rec in batch.records()]
    assert table.columns["encoding_chars"].max() == 4      # one *, three =
    rules = [r for r in load_dir(RULES) if r.name in ("browsertunnel", "exfil_encoded")]
    fired = {(v["detector"], v["client"]) for v in run_rules(rules, [str(pcap)])}
    assert fired == {("browsertunnel", "10.0.0.5"), ("exfil_encoded", "10.0.0.6")}


def test_a_broken_pattern_names_file_and_line(tmp_path):
    folder = tmp_path / "rules"
    shutil.copytree(RULES, folder)
    (folder / "patterns.toml").write_text('[patterns]\nok = "^a"\nbroken = "(unclosed"\n')
    with pytest.raises(RuleError, match=r"patterns.toml:3: patterns.broken: missing \)"):
        load_dir(folder)


def test_out_of_bailiwick_records_and_what_explains_the_others(tmp_path):
    """Records for another domain are counted; glue of a referral, the NS set of a CNAME
    target's zone and an NSEC3 proof from the zone above are explained."""
    from pcapgen import Conversation, query
    from sensor.parse import parse_file

    fired = run_rules([r for r in load_dir(RULES) if r.name == "cache_poisoning_bailiwick"],
                      [str(DATA / "generated-out-of-bailiwick.pcap")])
    assert [(v["server"], v["domain"], v["evidence"]["values"]["strays"]) for v in fired] == \
        [("198.18.0.53", "attacker.example", 2)]

    conv = Conversation()

    def respond(name: str, build) -> None:
        q = query(name, txid=len(conv.frames) + 1)
        conv.send(q.pack(), "10.0.0.53", "192.0.2.53", 40000, 53)
        r = q.reply()
        build(r)
        conv.send(r.pack(), "192.0.2.53", "10.0.0.53", 53, 40000)

    def cname_chain(r) -> None:
        r.add_answer(dnslib.RR("www.shop.example", dnslib.QTYPE.CNAME, rdata=dnslib.CNAME("shop.cdn.example")))
        r.add_answer(dnslib.RR("shop.cdn.example", rdata=dnslib.A("192.0.2.80")))
        r.add_auth(dnslib.RR("cdn.example", dnslib.QTYPE.NS, rdata=dnslib.NS("ns.cdn.example")))
        r.add_ar(dnslib.RR("ns.cdn.example", rdata=dnslib.A("192.0.2.81")))

    def tld_referral(r) -> None:
        r.add_auth(dnslib.RR("shop.example", dnslib.QTYPE.NS, rdata=dnslib.NS("ns.hoster.test")))
        r.add_auth(dnslib.RR("ck0pojmg874ljref7efn8430qvit8bsm.example", dnslib.QTYPE.TXT,
                             rdata=dnslib.TXT("stands in for an NSEC3 owner: not a proof type")))
        r.add_ar(dnslib.RR("ns.hoster.test", rdata=dnslib.A("192.0.2.82")))

    def mx_glue_and_a_stray(r) -> None:
        r.add_answer(dnslib.RR("shop.example", dnslib.QTYPE.MX, rdata=dnslib.MX("mail.hoster.test")))
        r.add_ar(dnslib.RR("mail.hoster.test", rdata=dnslib.A("192.0.2.83")))
        r.add_ar(dnslib.RR("www.bank.test", rdata=dnslib.A("198.18.0.66")))

    def edns_only(r) -> None:
        r.add_answer(dnslib.RR("shop.example", rdata=dnslib.A("192.0.2.84")))
        r.add_ar(dnslib.EDNS0(udp_len=1232))

    def edns_and_a_stray(r) -> None:
        edns_only(r)
        r.add_ar(dnslib.RR("www.bank.test", rdata=dnslib.A("198.18.0.67")))

    def opt_misplaced_and_a_stray(r) -> None:
        # one additional record and an OPT: but the OPT sits among the answers, and the
        # additional record is a stray
        r.add_answer(dnslib.EDNS0(udp_len=1232))
        r.add_ar(dnslib.RR("www.bank.test", rdata=dnslib.A("198.18.0.68")))

    respond("www.shop.example", cname_chain)
    respond("www.shop.example", tld_referral)
    respond("shop.example", mx_glue_and_a_stray)
    announce = query("printer.local", txid=0).reply()     # mDNS: bailiwick does not apply
    mx_glue_and_a_stray(announce)
    conv.send(announce.pack(), "192.0.2.60", "224.0.0.251", 5353, 5353)
    for build in (edns_only, edns_and_a_stray, opt_misplaced_and_a_stray):
        respond("shop.example", build)
    batch = parse_file(str(conv.write(tmp_path / "bailiwick.pcap")))
    strays = batch.bailiwick_strays[batch.messages["qr"] == 1].tolist()
    # the TXT under the TLD zone, the address of www.bank.test (each time)
    assert strays == [0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0]

    # Rows pointing outside the record table or the arena are refused, not read.
    from sensor import _core
    m = batch.messages
    last = int(np.flatnonzero((m["rr_count"] > 0) & (m["sport"] != 5353) & (m["dport"] != 5353))[-1])
    record = int(m["rr_start"][last] + m["rr_count"][last] - 1)
    block = np.arange(m["rr_start"][last], record + 1)
    # the record through which the message is reached: its first in need of explaining
    reached = int(block[(batch.rrs["section"][block] != 1) & (batch.rrs["type"][block] != 41)][0])
    for table, row, field, value in [("messages", last, "rr_start", len(batch.rrs)),
                                     ("messages", last, "qname_off", len(batch.arena)),
                                     ("rrs", record, "rdata_off", len(batch.arena)),
                                     ("rrs", record, "name_len", len(batch.arena)),
                                     ("rrs", reached, "msg", len(m)),       # no such message
                                     ("rrs", reached, "msg", 0)]:           # a message it is not in
        messages, rrs = batch.messages.copy(), batch.rrs.copy()
        (messages if table == "messages" else rrs)[row][field] = value
        with pytest.raises(ValueError, match="outside"):
            _core.out_of_bailiwick(messages, rrs, batch.arena)


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=300), spans=st.lists(st.tuples(st.integers(0, 300), st.integers(-2, 300)), max_size=20),
       width=st.integers(1, 40))
def test_gathered_text_is_the_arena_slice_cut_at_the_width(data, spans, width):
    from sensor.detectors.rule_table import gather_text
    spans = [(o, n) for o, n in spans if o + max(n, 0) <= len(data)]
    got = gather_text(data, np.array([o for o, _ in spans], dtype=np.int64),
                      np.array([n for _, n in spans], dtype=np.int64), width)
    assert got.dtype == np.dtype(f"S{width}")
    assert got.tolist() == [data[o:o + min(max(n, 0), width)].rstrip(b"\0") for o, n in spans]
    with pytest.raises(ValueError):
        gather_text(data, np.array([len(data)], dtype=np.int64), np.array([1], dtype=np.int64), width)


def test_every_documented_feature_is_a_column_of_the_messages():
    """Each feature a rule may name is there for every message, and the ones that are a
    message field (or derive from one) equal that field."""
    from sensor.features import FEATURES, LAZY_ANSWERS, build, NetworkSet
    from sensor.features.dga import load_model
    from sensor.parse import parse_file
    from sensor.track import Tracker
    batch = parse_file(str(DATA / "demo-office-resolver.pcap"))
    m = batch.messages
    table = build(batch, Tracker().process(m), NetworkSet(("10.77.0.0/16",)))
    cols = table.columns
    cols.dga_model = load_model(RULES / "models")
    for name in FEATURES:
        assert len(np.broadcast_to(cols[name], (len(m),))) == len(m), name
    isr = m["qr"] == 1
    expected = {
        "ts": m["ts"], "qr": m["qr"], "is_query": ~isr, "is_response": isr, "opcode": m["opcode"],
        "rcode": m["rcode"], "nxdomain": isr & (m["rcode"] == 3), "servfail": isr & (m["rcode"] == 2),
        "qtype": m["qtype"], "size": m["size"], "ip_ttl": m["ip_ttl"], "ancount": m["ancount"],
        "nscount": m["nscount"], "arcount": m["arcount"], "edns_udp_size": m["edns_udp_size"],
        "aa": (m["flags"] & 0x0400) != 0, "tc": (m["flags"] & 0x0200) != 0,
        "rd": (m["flags"] & 0x0100) != 0, "ra": (m["flags"] & 0x0080) != 0,
        "qname_len": m["qname_len"], "labels": m["labels"], "longest_label": m["longest_label"],
        "entropy": m["entropy"].astype(np.float64), "digits": m["digits"], "hexchars": m["hexchars"],
        "uppers": m["uppers"], "left_len": np.maximum(m["regdom_off"].astype(np.int64) - 1, 0),
        "qname": m["name_hash"], "txid": m["id"], "anomalous": m["anomalies"] != 0,
    }
    for name, column in expected.items():
        assert cols[name].tolist() == column.tolist(), name
    assert cols["rd"].any() and cols["ra"].any() and cols["nxdomain"].any()
    assert cols[LAZY_ANSWERS].any()


def test_the_tcp_feature_tells_the_transport_apart(tmp_path):
    """`tcp` is what amplification leaves out: a TCP capture's messages all have it,
    a UDP capture's none."""
    folder = tmp_path / "rules"
    folder.mkdir()
    (folder / "by_transport.toml").write_text(GOOD.replace('where = "is_query"', 'where = "tcp"')
                                              .replace('group_by = ["client", "regdom"]', 'group_by = ["client"]')
                                              .replace('when = "n >= 3"', 'when = "n >= 1"'))
    from sensor.parse import parse_file
    rule = load_dir(folder)
    tcp = DATA / "dnscap-tcp-msgs-straddle-segments.pcap"
    counted = sum(v["count"] for v in run_rules(rule, [str(tcp)]))
    assert counted == len(parse_file(str(tcp), ports=SAMPLE_PORTS)) > 0
    assert run_rules(rule, [str(DATA / "dnscap-baseline-udp-82-msgs.pcap")]) == []


@settings(max_examples=100, deadline=None)
@given(networks=st.lists(st.sampled_from([
           "10.0.0.0/8", "10.1.0.0/16", "192.168.0.0/19", "0.0.0.0/0", "198.51.100.7/32", "2001:db8::/32",
           "2001:db8:1::/64", "::/0", "fe80::/10", "::ffff:0:0/96"]), max_size=5),
       addresses=st.lists(st.sampled_from([
           "10.1.2.3", "10.200.0.1", "192.168.31.255", "192.168.32.0", "198.51.100.7", "198.51.100.8",
           "2001:db8:1::5", "2001:db8:2::1", "fe80::1", "::1", "0.0.0.0"]) | st.ip_addresses().map(str),
           max_size=30))
def test_network_sets_find_the_first_network_each_address_is_in(networks, addresses):
    """Overlapping networks of both families: each address gets the first it is in."""
    import ipaddress
    from sensor.config import address_key
    from sensor.features import NetworkSet
    nets = NetworkSet(networks)
    raw = np.frombuffer(b"".join(address_key(a) for a in addresses), dtype="V16")
    # in the 16-byte form the sensor keys addresses by: IPv4 mapped into ::ffff:0:0/96
    mapped = [n if n.version == 6 else ipaddress.ip_network(f"::ffff:{n.network_address}/{96 + n.prefixlen}")
              for n in map(ipaddress.ip_network, networks)]

    def first(a: str) -> int:
        ip = ipaddress.IPv6Address(address_key(a))
        return next((i for i, n in enumerate(mapped) if ip in n), -1)
    expected = [first(a) for a in addresses]
    assert nets.index(raw).tolist() == expected
    assert nets.mask(raw).tolist() == [i >= 0 for i in expected]

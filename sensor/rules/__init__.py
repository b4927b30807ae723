"""Detection rules as files: filter, group, window, aggregate, threshold.

One TOML file per rule in rules/ (anomaly_burst.toml, the engine's own
malformed-traffic rule, has its own format). Example:

    kind = "random_subdomain"
    severity = "high"
    description = "Water torture: many unique NXDOMAIN names under one domain"
    where = "nxdomain and labels >= 3"
    group_by = ["regdom"]
    window_s = 60
    summary = "{unique_names} unique NXDOMAIN names under {domain} in {window_s} s"

    [aggregate]
    responses = "count()"
    unique_names = "nunique(qname)"

    [threshold]
    when = "unique_names >= 100"

    [samples]
    positive = ["data:some-capture.pcap"]
    negative = ["data:dnscap-baseline-udp-82-msgs.pcap"]

Aggregates: count(), sum(expr), min(expr), max(expr), mean(expr), nunique(column).
Expressions: sensor.rules.expr. A broken file is a RuleError naming the file
and line; a directory loads whole or not at all, so a reload with a broken
file keeps the old rules in force.
"""
from __future__ import annotations

import ast
import difflib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sensor.config import line_of, read_toml
from sensor.detectors.series_anomalies import KINDS as SERIES_KINDS
from sensor.errors import ConfigError
from sensor.features import FEATURES, GROUP_KEYS
from sensor.features.dga import load_model
from sensor.features.lists import load_lists
from sensor.rules.expr import Evaluator, ExprError, compile_expr
from sensor.store.schema import SEVERITIES

KINDS = ("tunnel", "exfil", "cache_poisoning", "open_resolver", "amplification", "random_subdomain",
         "dga", "malware_domain", "policy_violation", "anomaly")
"""The standard kinds of the rule files; the series kinds (volume_spike, ...) live in series.toml."""
SITE_KIND = re.compile(r"[a-z][a-z0-9_]{0,31}")
"""A kind of the site's own (a use case none of KINDS names): a lower-case identifier of at
most 32 characters, the most a syslog MSGID, which it becomes, can hold."""
KIND_TYPO_SIMILARITY = 0.8
"""A site kind this close to a standard one (difflib's ratio: 'exfill', 'tunnels') is taken
for a typo of it and refused, so that a SIEM's rule for the standard kind does not miss it."""
AGGREGATE_FUNCTIONS = ("count", "sum", "min", "max", "mean", "nunique")
SPECIAL_FILES = ("anomaly_burst.toml", "tags.toml", "series.toml", "patterns.toml")
"""Rule files with a format of their own, read by their detector module."""
MAX_WINDOW_S = 7 * 86400
SAMPLE_PREFIXES = ("data:", "shared:", "file:")
"""A sample capture is the sensor's own (data:, tests/data or its installed copy), one of the
shared corpus (shared:), or the site's own (file:, a path relative to the rule file)."""
TAGS_FILE = "tags.toml"
"""Named address ranges beside the rule files: [tags] NAME = ["10.0.0.0/8", ...] gives the
features client_in_NAME and server_in_NAME."""
MODELS_DIR = "models"
"""Models trained offline (tools/train_dga.py) beside the rule files."""
PATTERNS_FILE = "patterns.toml"
"""Name patterns beside the rule files: [patterns] NAME = "regex" gives feature pattern_<name>."""
LISTS_DIR = "lists"
"""Name lists beside the rule files: rules/lists/<name>.txt|.hosts|.rpz gives feature list_<name>."""


class RuleError(ConfigError):
    pass


@dataclass(frozen=True)
class Aggregation:
    name: str
    function: str
    argument: str                      # expression text, or the column for nunique
    evaluate: Evaluator | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Rule:
    name: str
    path: str
    kind: str
    severity: str
    description: str
    where_text: str
    where: Evaluator = field(compare=False)
    group_by: tuple[str, ...]
    window_s: int
    aggregations: tuple[Aggregation, ...]
    threshold_text: str
    threshold: Evaluator = field(compare=False)
    summary: str
    positive: tuple["Sample", ...]
    negative: tuple["Sample", ...]
    sources: dict[str, Any] = field(default_factory=dict, compare=False)
    """Site data the rule reads, by feature name: name lists (rules/lists/), address tags
    (rules/tags.toml)."""
    dga_model: Any = field(default=None, compare=False)
    """The DGA model (rules/models/) when the rule reads dga_score."""
    reads: frozenset[str] = frozenset()
    """The features its filter and aggregates read."""


def load_rule(path: str | Path, lists: dict[str, Any] | None = None, dga_model: Any = False,
              tags: dict[str, Any] | None = None) -> Rule:
    """One rule file; `lists` are the name lists it may use (list_<name> features), `dga_model`
    the DGA model, `tags` the named address ranges (all read from beside the rule when not given)."""
    path = Path(path)
    lists = lists if lists is not None else {**load_lists(path.parent / LISTS_DIR),
                                             **load_patterns(path.parent / PATTERNS_FILE)}
    tags = tags if tags is not None else load_tags(path.parent / TAGS_FILE)
    sources = {**lists, **tags}
    if dga_model is False:
        dga_model = load_model(path.parent / MODELS_DIR)
    features = (set(FEATURES) | set(sources)) - ({"dga_score"} if dga_model is None else set())
    constants = {"dga_threshold": dga_model.threshold} if dga_model is not None else {}
    used: set[str] = set()
    doc, text = read_toml(path, RuleError)

    def fail(key: str, why: str) -> RuleError:
        line = line_of(text, key.split(".")[-1])
        return RuleError(f"{path}:{line}: {key}: {why}" if line else f"{path}: {key}: {why}")

    known = {"kind", "severity", "description", "where", "group_by", "window_s", "summary",
             "aggregate", "threshold", "samples"}
    for key in doc:
        if key not in known:
            raise fail(key, "unknown key")
    for key in ("kind", "where", "group_by", "window_s", "aggregate", "threshold"):
        if key not in doc:
            raise RuleError(f"{path}: {key}: missing")
    kind = doc["kind"]
    if kind not in KINDS:
        if not isinstance(kind, str) or not SITE_KIND.fullmatch(kind):
            raise fail("kind", f"expected one of {', '.join(KINDS)}, or a kind of the site's own: "
                               "lower-case letters, digits and _, at most 32")
        near = difflib.get_close_matches(kind, KINDS + SERIES_KINDS, n=1, cutoff=KIND_TYPO_SIMILARITY)
        if near:
            raise fail("kind", f"{kind!r} is too close to the standard kind {near[0]!r}: a typo? "
                               "(a kind of the site's own must differ more)")
    severity = doc.get("severity", "medium")
    if severity not in SEVERITIES:
        raise fail("severity", f"expected one of {', '.join(SEVERITIES)}")
    window = doc["window_s"]
    if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= MAX_WINDOW_S:
        raise fail("window_s", f"expected an integer 1..{MAX_WINDOW_S}")
    group_by = doc["group_by"]
    if not isinstance(group_by, list) or not group_by or any(g not in GROUP_KEYS for g in group_by):
        raise fail("group_by", f"expected a list of {', '.join(GROUP_KEYS)}")
    try:
        where, names = compile_expr(_string(doc["where"], fail, "where"), features, constants)
        used |= names
    except ExprError as e:
        raise fail("where", _expr_message(e)) from None
    if not isinstance(doc["aggregate"], dict) or not doc["aggregate"]:
        raise fail("aggregate", "expected a table of name = \"function(argument)\"")
    aggregations = []
    for name, spec in doc["aggregate"].items():
        if name in FEATURES or name in ("window_s", "client", "server", "domain"):
            raise fail(f"aggregate.{name}", "name taken by a feature column")
        aggregations.append(_aggregation(name, _string(spec, fail, f"aggregate.{name}"), fail, features, used,
                                         constants))
    threshold_doc = doc["threshold"]
    if not isinstance(threshold_doc, dict) or set(threshold_doc) != {"when"}:
        raise fail("threshold", 'expected a table with one key: when = "..."')
    threshold_text = _string(threshold_doc["when"], fail, "threshold.when")
    try:
        threshold, _ = compile_expr(threshold_text, {a.name for a in aggregations} | {"window_s"})
    except ExprError as e:
        raise fail("threshold.when", _expr_message(e)) from None
    summary = _string(doc.get("summary", "{kind}: {count} in {window_s} s"), fail, "summary")
    try:
        summary.format(**{a.name: 0 for a in aggregations}, kind=kind, client="c", server="s", domain="d",
                       window_s=window, count=0)
    except (KeyError, IndexError, ValueError) as e:
        raise fail("summary", f"unknown field {e}") from None
    samples = doc.get("samples", {})
    if not isinstance(samples, dict) or set(samples) - {"positive", "negative"}:
        raise fail("samples", "expected a table with positive and negative lists")
    parsed: dict[str, list[Sample]] = {"positive": [], "negative": []}
    for key in ("positive", "negative"):
        for item in samples.get(key, []):
            try:
                parsed[key].append(_sample(item))
            except ValueError as e:
                raise fail(f"samples.{key}", str(e)) from None
    return Rule(name=path.stem, path=str(path), kind=kind, severity=severity,
                description=str(doc.get("description", "")), where_text=doc["where"], where=where,
                group_by=tuple(group_by), window_s=window, aggregations=tuple(aggregations),
                threshold_text=threshold_text, threshold=threshold, summary=summary,
                positive=tuple(parsed["positive"]), negative=tuple(parsed["negative"]),
                sources={name: sources[name] for name in used if name in sources},
                dga_model=dga_model if "dga_score" in used else None, reads=frozenset(used))


@dataclass(frozen=True)
class Sample:
    """A capture a rule must (positive) or must not (negative) fire on, and the site
    settings to replay it with (which networks are the resolver's clients, ...)."""
    capture: str
    client_networks: tuple[str, ...] = ()
    resolver_addresses: tuple[str, ...] = ()

    def __str__(self) -> str:
        return self.capture


def _sample(item: Any) -> Sample:
    """"data:FILE", "shared:FILE" or "file:PATH", or a table with capture = ... and site settings."""
    if isinstance(item, dict):
        extra = set(item) - {"capture", "client_networks", "resolver_addresses"}
        if extra or "capture" not in item:
            raise ValueError("a sample table has capture and optionally client_networks, resolver_addresses")
        sample = Sample(item["capture"], tuple(item.get("client_networks", ())),
                        tuple(item.get("resolver_addresses", ())))
    else:
        sample = Sample(item)
    if not isinstance(sample.capture, str) or not sample.capture.startswith(SAMPLE_PREFIXES):
        raise ValueError("entries are data:FILE (the sensor's sample captures), shared:FILE (../shared/pcaps) "
                         f"or file:PATH (a capture of the site's own, relative to the rule file), got {item!r}")
    return sample


def _string(value: Any, fail, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise fail(key, "expected a non-empty string")
    return value


def _expr_message(e: ExprError) -> str:
    return f"{e} (at column {e.col + 1})" if e.col is not None else str(e)


def _aggregation(name: str, spec: str, fail, features: set[str], used: set[str],
                 constants: dict[str, float]) -> Aggregation:
    key = f"aggregate.{name}"
    try:
        call = ast.parse(spec.strip(), mode="eval").body
    except SyntaxError as e:
        raise fail(key, f"syntax error: {e.msg}") from None
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and not call.keywords):
        raise fail(key, f"expected one of {', '.join(f + '(...)' for f in AGGREGATE_FUNCTIONS)}")
    function = call.func.id
    if function not in AGGREGATE_FUNCTIONS:
        raise fail(key, f"unknown function {function!r} (one of {', '.join(AGGREGATE_FUNCTIONS)})")
    if function == "count":
        if call.args:
            raise fail(key, "count() takes no argument")
        return Aggregation(name, function, "")
    if len(call.args) != 1:
        raise fail(key, f"{function}() takes one argument")
    argument = ast.get_source_segment(spec.strip(), call.args[0]) or ""
    if function == "nunique":
        if not isinstance(call.args[0], ast.Name) or call.args[0].id not in features:
            raise fail(key, "nunique() takes one feature column, e.g. nunique(qname)")
        used.add(call.args[0].id)
        return Aggregation(name, function, call.args[0].id)
    try:
        evaluate, names = compile_expr(argument, features, constants)
        used |= names
    except ExprError as e:
        raise fail(key, _expr_message(e)) from None
    return Aggregation(name, function, argument, evaluate)


def load_dir(directory: str | Path) -> list[Rule]:
    """Every rule file of a directory; the first broken one raises (nothing half-loaded)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise RuleError(f"{directory}: not a directory")
    lists = {**load_lists(directory / LISTS_DIR), **load_patterns(directory / PATTERNS_FILE)}
    model = load_model(directory / MODELS_DIR)
    tags = load_tags(directory / TAGS_FILE)
    rules = [load_rule(p, lists, model, tags) for p in sorted(directory.glob("*.toml"))
             if p.name not in SPECIAL_FILES]
    seen: dict[str, str] = {}
    for r in rules:
        if r.name in seen:
            raise RuleError(f"{r.path}: rule name {r.name!r} also used by {seen[r.name]}")
        seen[r.name] = r.path
    return rules


def _named_entries(path: Path, table: str, expected: str) -> Iterator[tuple[str, Any, str]]:
    """(name, value, "file:line") of each entry of the one table of a site file such as
    tags.toml ([tags] NAME = ...); names are checked, values are the caller's to check."""
    doc, text = read_toml(path, RuleError)
    if set(doc) - {table} or not isinstance(doc.get(table, {}), dict):
        raise RuleError(f"{path}: expected one table, [{table}], of NAME = {expected}")
    for name, value in doc.get(table, {}).items():
        line = line_of(text, name)
        where = f"{path}:{line}" if line else str(path)
        if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            raise RuleError(f"{where}: {table}.{name}: names are lower-case letters, digits and _")
        yield name, value, where


def load_patterns(path: str | Path) -> dict[str, Any]:
    """patterns.toml: feature name (pattern_X) -> NamePattern."""
    from sensor.features.lists import NamePattern

    path = Path(path)
    if not path.exists():
        return {}
    out: dict[str, Any] = {}
    for name, regex, where in _named_entries(path, "patterns", '"regular expression"'):
        if not isinstance(regex, str):
            raise RuleError(f"{where}: patterns.{name}: expected a regular expression in a string")
        try:
            out[f"pattern_{name}"] = NamePattern(name, regex, re.compile(regex))
        except re.error as e:
            raise RuleError(f"{where}: patterns.{name}: {e}") from None
    return out


def load_tags(path: str | Path) -> dict[str, Any]:
    """tags.toml: feature name (client_in_X, server_in_X) -> AddressTag."""
    from sensor.features import AddressTag

    path = Path(path)
    if not path.exists():
        return {}
    out: dict[str, Any] = {}
    for name, networks, where in _named_entries(path, "tags", "[networks]"):
        if not isinstance(networks, list) or not networks:
            raise RuleError(f"{where}: tags.{name}: expected a list of networks")
        try:
            tag = AddressTag(name, tuple(networks))
        except ValueError as e:
            raise RuleError(f"{where}: tags.{name}: {e}") from None
        out[f"client_in_{name}"] = out[f"server_in_{name}"] = tag
    return out


def load_rules_dir(directory: str | Path) -> list[Rule]:
    """The engine's view: no rules directory means no rules (the anomaly rule has defaults)."""
    return load_dir(directory) if Path(directory).is_dir() else []


def check(directory: str | Path) -> list[str]:
    """What `dnssensor rules check` prints: one line per rule, or raises RuleError."""
    from sensor.detectors import anomaly_burst

    out = []
    burst = anomaly_burst.load(directory)
    out.append(f"ok  {Path(burst.path).name:<28} anomaly          window {burst.window_s} s, "
               f"threshold {burst.threshold}")
    from sensor.detectors import series_anomalies
    watched = series_anomalies.load(directory)
    if watched is not None:
        k = "the method's default" if watched.k is None else watched.k
        out.append(f"ok  {Path(watched.path).name:<28} series           {watched.method}, k {k}: "
                   + ", ".join(w.name + "".join(f" (per {p})" for p in w.per) for w in watched.watched))
    tags = load_tags(Path(directory) / TAGS_FILE)
    for tag in {t.name: t for t in tags.values()}.values():
        out.append(f"ok  {TAGS_FILE:<28} tag {tag.name:<12} {', '.join(tag.networks)}")
    for name, pattern in load_patterns(Path(directory) / PATTERNS_FILE).items():
        out.append(f"ok  {PATTERNS_FILE:<28} {name:<16} {pattern.regex}")
    for name, lst in load_lists(Path(directory) / LISTS_DIR).items():
        out.append(f"ok  lists/{Path(lst.path).name:<22} {name:<16} {lst.entries} names"
                   + (f", {lst.skipped} lines skipped" if lst.skipped else ""))
    for r in load_dir(directory):
        out.append(f"ok  {Path(r.path).name:<28} {r.kind:<16} by {'+'.join(r.group_by)} per {r.window_s} s, "
                   f"when {' '.join(r.threshold_text.split())}")
    return out

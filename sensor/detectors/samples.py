"""Running rules over sample captures: the rule files' own positive and negative samples
(`dnssensor rules test`, and the meta-test that every rule has samples that pass)."""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from sensor.config import Config, shipped_candidates
from sensor.detectors import anomaly_burst
from sensor.detectors.rules_engine import verdicts
from sensor.engine.pipeline import Pipeline, merged_frames
from sensor.rules import Rule, Sample

REPO = Path(__file__).resolve().parent.parent.parent
SHIPPED_SAMPLES = Path("share") / "dnssensor" / "samples"
"""Where an installed wheel puts the captures of tests/data, under its prefix (setup.py)."""


def sample_data_dir() -> Path:
    """The captures data: samples name: tests/data of the source tree the package runs from,
    else the copy a wheel installed under its prefix."""
    source, installed = shipped_candidates(REPO / "tests" / "data", SHIPPED_SAMPLES)
    return installed if installed.is_dir() and not source.is_dir() else source


DATA_DIR = sample_data_dir()
SHARED_DIR = Path(os.environ.get("DNSSENSOR_SHARED_PCAPS", REPO.parent / "shared" / "pcaps"))
SAMPLE_PORTS = (53, 5353, 8053, 1053)


def sample_path(spec: str, data_dir: Path = DATA_DIR, shared_dir: Path = SHARED_DIR,
                rule_dir: Path | None = None) -> Path | None:
    """data:FILE, shared:FILE or file:PATH (relative to rule_dir, the rule file's folder) ->
    a path, or None when the shared corpus is absent."""
    prefix, name = spec.split(":", 1)
    if prefix == "file":
        return Path(rule_dir or ".") / name
    folder = data_dir if prefix == "data" else shared_dir
    path = folder / name
    if prefix == "shared" and not path.exists():
        return None
    return path


def run_rules(rules: list[Rule], captures: list[str], config: Config | None = None) -> list[dict[str, Any]]:
    """Every verdict the rules give on the captures, replayed as one stream."""
    config = config or replace(Config(), ports=SAMPLE_PORTS)
    pipeline = Pipeline(config, anomaly_burst.AnomalyBurstRule(), rules)
    for frames in merged_frames(list(captures), config.limits.frames_per_read):
        pipeline.feed(frames)
    pipeline.drain()
    agg = pipeline.take()
    by_name = {r.name: r for r in rules}
    out = []
    for name, groups in agg.rules.items():
        out += verdicts(by_name[name], groups, config.sensor_name)
    return out


def sample_config(sample: Sample) -> Config:
    return replace(Config(), ports=SAMPLE_PORTS, client_networks=sample.client_networks,
                   resolver_addresses=sample.resolver_addresses)


def check_samples(rule: Rule, data_dir: Path = DATA_DIR, shared_dir: Path = SHARED_DIR) -> list[str]:
    """Problems with one rule's samples (empty when every positive fires and no negative does).
    Each sample is replayed on its own. Shared samples are skipped when the corpus is absent."""
    problems = []
    if not rule.positive or not rule.negative:
        problems.append(f"{rule.path}: needs positive and negative samples")
    for expected, specs in ((True, rule.positive), (False, rule.negative)):
        for sample in specs:
            spec = sample.capture
            path = sample_path(spec, data_dir, shared_dir, Path(rule.path).parent)
            if path is None:
                continue
            if not path.exists():
                problems.append(f"{rule.path}: sample {spec}: no such file {path}")
                continue
            fired = run_rules([rule], [str(path)], sample_config(sample))
            if expected and not fired:
                problems.append(f"{rule.path}: positive sample {spec} gave no verdict")
            if not expected and fired:
                problems.append(f"{rule.path}: negative sample {spec} gave {len(fired)} verdict(s), "
                                f"first: {fired[0]['summary']}")
    return problems

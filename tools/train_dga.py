"""Train (or check) the lexical DGA model in rules/models/: character trigram scores of
registered labels, high for algorithmically generated ones and low for popular ones.

Data (not shipped, read from ../shared/datasets, see its MANIFEST.md):
- benign: alexa_top100k_data_hacking.csv (popular registered domains, about 2013);
- DGA: dga_labeled_multifamily.csv (about 124 k domains of 33 families).
Only the derived table is shipped: rules/models/dga_trigrams.npy (float32, 39^3 entries)
and rules/models/dga.json (threshold, sources, measured precision and recall).

The label scored is the registered label: the one left of the public suffix
(example in www.example.co.uk), as the sensor's parser finds it. Its score is the mean,
over the trigrams of "^label$", of -log P(trigram | popular) + DGA_WEIGHT * log P(trigram | DGA):
how unlike popular names the label is (trigrams popular names never use count heavily,
which a plain likelihood ratio would miss for random alphanumerics), pulled towards the
families seen. Split, seeded: 70 % to count trigrams, 10 % to set the threshold (the one
that keeps TARGET_FPR of popular labels above it), 20 % held out for the figures.
Dictionary DGAs (matsnu, suppobox, gozi, the word-list rovnix samples) look like popular
names to any character model: their recall is near zero, and the per-family figures say so.

    python tools/train_dga.py            # train, write the model, print the metrics
    python tools/train_dga.py --check    # score the shipped model on the held-out split
"""
from __future__ import annotations

import argparse
import csv
import json
import random
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sensor.features.dga import SYMBOLS, TABLE_SIZE, score_label, trigram_indexes  # noqa: E402
from sensor.parse.psl import load_rules  # noqa: E402

DATASETS = REPO.parent / "shared" / "datasets"
MODEL_DIR = REPO / "rules" / "models"
TARGET_FPR = 0.01
SMOOTHING = 0.01
DGA_WEIGHT = 0.5
SEED = 2026


def registered_label(domain: str, rules) -> str | None:
    labels = domain.strip().lower().rstrip(".").split(".")
    if len(labels) < 2:
        return None
    i = rules.registered_label(labels)
    return labels[i] if 0 <= i < len(labels) else None


def load(rules) -> tuple[list[str], list[tuple[str, str]]]:
    benign = []
    with open(DATASETS / "alexa_top100k_data_hacking.csv") as f:
        for row in csv.reader(f):
            label = registered_label(row[1], rules)
            if label:
                benign.append(label)
    dga = []
    with open(DATASETS / "dga_labeled_multifamily.csv") as f:
        for row in csv.DictReader(f):
            label = registered_label(row["domain"], rules)
            if label:
                dga.append((label, row["family"]))
    return benign, dga


def split(items: list, rng: random.Random) -> tuple[list, list, list]:
    """(counting 70 %, calibration 10 %, held out 20 %)."""
    items = list(items)
    rng.shuffle(items)
    a, b = int(len(items) * 0.7), int(len(items) * 0.8)
    return items[:a], items[a:b], items[b:]


def train(benign: list[str], dga: list[str]) -> np.ndarray:
    counts = [np.zeros(TABLE_SIZE), np.zeros(TABLE_SIZE)]
    for c, labels in zip(counts, (dga, benign)):
        for label in labels:
            np.add.at(c, trigram_indexes(label), 1)
    p_dga = (counts[0] + SMOOTHING) / (counts[0].sum() + SMOOTHING * TABLE_SIZE)
    p_benign = (counts[1] + SMOOTHING) / (counts[1].sum() + SMOOTHING * TABLE_SIZE)
    return (DGA_WEIGHT * np.log(p_dga) - np.log(p_benign)).astype(np.float32)


def metrics(table: np.ndarray, threshold: float, benign: list[str], dga: list[tuple[str, str]]) -> dict:
    fp = sum(score_label(x, table) >= threshold for x in benign)
    per_family: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for label, family in dga:
        per_family[family][1] += 1
        per_family[family][0] += score_label(label, table) >= threshold
    tp = sum(v[0] for v in per_family.values())
    return {"held_out_popular": len(benign), "held_out_dga": len(dga),
            "false_positive_rate": round(fp / len(benign), 4),
            "recall": round(tp / len(dga), 4),
            "precision": round(tp / (tp + fp), 4) if tp + fp else 0.0,
            "recall_by_family": {k: round(v[0] / v[1], 3) for k, v in sorted(per_family.items()) if v[1] >= 20}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="score the shipped model instead of training")
    args = ap.parse_args()
    if not DATASETS.is_dir():
        print(f"{DATASETS} is missing: the training data is not shipped", file=sys.stderr)
        return 2
    rules = load_rules()
    benign, dga = load(rules)
    rng = random.Random(SEED)
    benign_train, benign_calibration, benign_test = split(benign, rng)
    dga_train, _, dga_test = split(dga, rng)
    if args.check:
        meta = json.loads((MODEL_DIR / "dga.json").read_text())
        table = np.load(MODEL_DIR / "dga_trigrams.npy")
        print(json.dumps(metrics(table, meta["threshold"], benign_test, dga_test), indent=1))
        return 0
    table = train(benign_train, [x for x, _ in dga_train])
    scores = np.array([score_label(x, table) for x in benign_calibration])
    threshold = float(np.quantile(scores, 1 - TARGET_FPR))
    result = metrics(table, threshold, benign_test, dga_test)
    MODEL_DIR.mkdir(parents=True, exist_ok=True)
    np.save(MODEL_DIR / "dga_trigrams.npy", table)
    meta = {"threshold": round(threshold, 4), "symbols": SYMBOLS, "smoothing": SMOOTHING,
            "dga_weight": DGA_WEIGHT, "seed": SEED,
            "target_false_positive_rate": TARGET_FPR,
            "sources": {"popular": "shared/datasets/alexa_top100k_data_hacking.csv",
                        "dga": "shared/datasets/dga_labeled_multifamily.csv"},
            "trained_on": {"popular": len(benign_train), "dga": len(dga_train)},
            "held_out": result}
    (MODEL_DIR / "dga.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(json.dumps(meta, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

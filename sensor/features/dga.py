"""The lexical DGA score: mean character-trigram log-likelihood ratio (DGA vs popular) of a
name's registered label. The table is trained offline (tools/train_dga.py) and shipped in
rules/models/; the compiled core computes the score per message (`_core.dga_scores`), this
module holds the symbol mapping and the pure-Python scorer both are checked against."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sensor import _core
from sensor.errors import ConfigError

SYMBOLS = "^abcdefghijklmnopqrstuvwxyz0123456789-"
"""Index 0 is the label boundary; a character not listed maps to len(SYMBOLS)."""
ALPHABET = len(SYMBOLS) + 1
TABLE_SIZE = ALPHABET ** 3
MODEL_FILE, META_FILE = "dga_trigrams.npy", "dga.json"
_INDEX = {ch: i for i, ch in enumerate(SYMBOLS)}


def trigram_indexes(label: str) -> list[int]:
    codes = [0] + [_INDEX.get(ch, ALPHABET - 1) for ch in label] + [0]
    return [(codes[i] * ALPHABET + codes[i + 1]) * ALPHABET + codes[i + 2] for i in range(len(codes) - 2)]


def score_label(label: str, table: np.ndarray) -> float:
    idx = trigram_indexes(label)
    return float(np.mean(table[idx].astype(np.float64))) if idx else 0.0


@dataclass
class DgaModel:
    table: np.ndarray
    threshold: float
    path: str

    def scores(self, arena: bytes, messages: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """The score of each message's question name (of messages[rows] only, when given)."""
        columns = [messages[name] if rows is None else messages[name][rows]
                   for name in ("qname_off", "regdom_off", "qname_len")]
        return _core.dga_scores(arena, *(np.ascontiguousarray(c) for c in columns), self.table)


def load_model(directory: str | Path) -> DgaModel | None:
    directory = Path(directory)
    if not (directory / MODEL_FILE).exists():
        return None
    try:
        table = np.load(directory / MODEL_FILE)
        meta = json.loads((directory / META_FILE).read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{directory / MODEL_FILE}: {e}") from None
    if table.dtype != np.float32 or table.shape != (TABLE_SIZE,) or meta.get("symbols") != SYMBOLS:
        raise ConfigError(f"{directory / MODEL_FILE}: not a trigram table for this sensor "
                          f"(expected float32[{TABLE_SIZE}] over {SYMBOLS!r})")
    return DgaModel(np.ascontiguousarray(table), float(meta["threshold"]), str(directory / MODEL_FILE))

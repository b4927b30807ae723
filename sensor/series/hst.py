"""Half-Space Trees over several series at once (river's streaming implementation).

Each minute is one point whose features are the residuals of the watched series against
their baselines (queries, NXDOMAIN, SERVFAIL, ...), squashed into [0, 1] as the trees
expect. The forest scores the minute, then learns it, so it adapts to what is normal for
this resolver without a training phase; a minute is flagged when its score passes the
threshold and at least one residual is large enough to name the series that moved. The
model pickles into the store so a restart keeps what it learnt.
"""
from __future__ import annotations

import pickle
from collections.abc import Sequence

import numpy as np

from sensor import series

TREES = 25
"""Trees in the forest (river's default)."""
HEIGHT = 8
"""Depth of each tree: 2^8 cells per tree over the residual space."""
WINDOW_MIN = 360
"""Minutes per reference window: the mass profile the score compares with is the last six hours'."""
SQUASH = 8.0
"""Residual (in spreads) mapped to 0.5 + tanh(z / SQUASH) / 2: normal minutes fill the middle,
a spike of any size stays inside [0, 1]."""
SEED = 7
"""Fixed seed: the same traffic gives the same verdicts."""
DEFAULT_THRESHOLD = 0.9
MIN_Z = 4.0
"""A flagged minute also has one residual beyond this many spreads: it names the series
(and direction) the verdict is about."""


class HalfSpaceForest:
    """river.anomaly.HalfSpaceTrees with the residual squashing and the naming of the series."""

    def __init__(self, names: Sequence[str]) -> None:
        from river import anomaly

        self.names = tuple(names)
        self.model = anomaly.HalfSpaceTrees(n_trees=TREES, height=HEIGHT, window_size=WINDOW_MIN, seed=SEED)
        self.last_minute = 0
        """Start of the last minute learnt (the writer feeds each minute once)."""
        self.recent: dict[int, tuple[int, int, float]] = {}
        """minute -> (flag, series index, score) of the minutes still inside the writer's window."""

    def score_learn(self, z: np.ndarray) -> np.ndarray:
        """Scores of the rows of z (minutes x series residuals), learning each after scoring it."""
        squashed = 0.5 + np.tanh(z / SQUASH) / 2
        out = np.empty(len(z))
        for i, row in enumerate(squashed.tolist()):
            x = dict(zip(self.names, row))
            out[i] = self.model.score_one(x)
            self.model.learn_one(x)
        return out

    def flags(self, z: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(flags, series index, scores) per minute: +1/-1 as the sign of the largest residual
        when the score passes `threshold` and that residual is beyond MIN_Z."""
        scores = self.score_learn(z)
        which = np.argmax(np.abs(z), axis=1) if z.size else np.zeros(0, dtype=np.int64)
        largest = z[np.arange(len(z)), which] if z.size else np.zeros(0)
        flagged = (scores > threshold) & (np.abs(largest) > MIN_Z)
        return np.where(flagged, np.sign(largest), 0).astype(np.int64), which, scores

    def dumps(self) -> bytes:
        return pickle.dumps(self)

    @staticmethod
    def loads(blob: bytes) -> "HalfSpaceForest":
        return pickle.loads(blob)


def flags_over(minutes: np.ndarray, columns: dict[str, np.ndarray], threshold: float = DEFAULT_THRESHOLD):
    """Half-Space Trees over whole series given at once (the benchmark, `dnssensor series`):
    (flags, index of the series each flag is about, scores, baselines by name)."""
    bases = {name: series.fit(minutes, values) for name, values in columns.items()}
    z = np.stack([bases[name].z(values) for name, values in columns.items()], axis=1)
    flags, which, scores = HalfSpaceForest(list(columns)).flags(z, threshold)
    return flags, which, scores, bases

"""Ways to turn a series and its baseline into flags: +1 above, -1 below, 0 in the band.

Each method reads the per-minute values and the Baseline (expected value, robust spread,
the stored profile) and judges every minute from what came before it, so the same code runs
over a month in a benchmark and over the last hours in the writer. `METHODS` names them for
rules/series.toml and `dnssensor series --method`; `k` is each one's threshold, in the unit
its line says.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sensor.series import HIST_EDGES, Baseline

WINDOW_MIN = 60
"""Trailing window (minutes) of the moving-average, least-squares and Grubbs methods."""
KS_RECENT_MIN, KS_REFERENCE_MIN = 10, 60
"""Kolmogorov-Smirnov compares the last 10 minutes with the hour before them."""
KS_C_ALPHA = 2.69
"""Kolmogorov-Smirnov critical constant c(alpha) = sqrt(-ln(alpha / 2) / 2) for alpha = 1e-6:
a month holds 43,200 minutes to test, so a looser alpha would flag every day by chance."""
KS_MIN_SHIFT = 3.0
"""...and the medians must have moved by this many robust spreads."""
CUSUM_DRIFT = 3.0
"""Cumulative sums count only what exceeds this many spreads per minute."""
HIST_MIN_SHARE = 1e-3
"""Histogram bins holding less than this share of the history are rare."""
GRUBBS_ALPHA = 1e-4
"""Significance of the Grubbs test, per minute."""


def _sign(z: np.ndarray, k: float) -> np.ndarray:
    return np.where(z > k, 1, np.where(z < -k, -1, 0))


def flags_mad(values: np.ndarray, base: Baseline, k: float = 5.0) -> np.ndarray:
    """Distance from the seasonal baseline in robust spreads (median absolute deviation)."""
    return _sign(base.z(values), k)


def flags_average(values: np.ndarray, base: Baseline, k: float = 3.0) -> np.ndarray:
    """Distance from the average of the same hour of the week in the history, in its
    standard deviations: no level, so a trend widens the band instead of moving it."""
    p, b = base.profile, base.buckets
    return _sign((values - p.mean[b]) / p.std[b], k)


def _trailing_sums(v: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each minute i: (count, sum, sum of squares) of v over the `window` minutes before i."""
    c = np.concatenate([[0.0], np.cumsum(v)])
    c2 = np.concatenate([[0.0], np.cumsum(v * v)])
    idx = np.arange(len(v))
    lo = np.maximum(idx - window, 0)
    return np.maximum(idx - lo, 1).astype(np.float64), c[idx] - c[lo], c2[idx] - c2[lo]


def flags_moving_average(values: np.ndarray, base: Baseline, k: float = 4.0) -> np.ndarray:
    """Deviation from the trailing hour's moving average, in its standard deviations."""
    v = values.astype(np.float64)
    count, s, s2 = _trailing_sums(v, WINDOW_MIN)
    mean = s / count
    std = np.maximum(np.sqrt(np.maximum(s2 / count - mean * mean, 0.0)), np.sqrt(np.maximum(mean, 1.0)))
    z = (v - mean) / std
    z[:WINDOW_MIN] = 0.0                                   # no judgement before a full window
    return _sign(z, k)


def flags_least_squares(values: np.ndarray, base: Baseline, k: float = 5.0) -> np.ndarray:
    """Distance from the least-squares line through the trailing hour, extrapolated to this
    minute, in the line's residual standard deviations (a morning ramp is not an event)."""
    v = values.astype(np.float64)
    n, w = len(v), WINDOW_MIN
    if n <= w:
        return np.zeros(n, dtype=np.int64)
    j = np.arange(n, dtype=np.float64)
    c = np.concatenate([[0.0], np.cumsum(v)])
    cj = np.concatenate([[0.0], np.cumsum(j * v)])
    c2 = np.concatenate([[0.0], np.cumsum(v * v)])
    i = np.arange(w, n)
    sy, sjy, syy = c[i] - c[i - w], cj[i] - cj[i - w], c2[i] - c2[i - w]
    # positions relative to minute i: t = j - i runs over -w .. -1
    t = np.arange(-w, 0, dtype=np.float64)
    st, stt = t.sum(), (t * t).sum()
    sty = sjy - i * sy
    slope = (w * sty - st * sy) / (w * stt - st * st)
    intercept = (sy - slope * st) / w                      # the line's value at t = 0: the prediction
    sse = syy - 2 * intercept * sy - 2 * slope * sty + w * intercept ** 2 + 2 * intercept * slope * st \
        + slope ** 2 * stt
    std = np.maximum(np.sqrt(np.maximum(sse, 0.0) / (w - 2)), np.sqrt(np.maximum(intercept, 1.0)))
    z = np.zeros(n)
    z[w:] = (v[w:] - intercept) / std
    return _sign(z, k)


def flags_cusum(values: np.ndarray, base: Baseline, k: float = 20.0) -> np.ndarray:
    """Mean-subtraction cumulation: sums of the residuals beyond CUSUM_DRIFT spreads, up and
    down apart; flagged while a sum exceeds k spreads (capped at 2k so it lets go once the
    series is back). Finds slow drifts and level shifts that no single minute shows."""
    z = base.z(values)
    out = np.zeros(len(z), dtype=np.int64)
    up = down = 0.0
    cap = 2 * k
    for i, x in enumerate(z.tolist()):
        up = min(max(0.0, up + x - CUSUM_DRIFT), cap)
        down = min(max(0.0, down - x - CUSUM_DRIFT), cap)
        if up > k:
            out[i] = 1
        elif down > k:
            out[i] = -1
    return out


def flags_histogram(values: np.ndarray, base: Baseline, k: float = 4.0) -> np.ndarray:
    """Histogram bins: a residual that falls in a bin holding less than HIST_MIN_SHARE of the
    history's residuals, and at least k spreads from the baseline."""
    z = base.z(values)
    hist = base.profile.histogram
    share = hist[np.searchsorted(HIST_EDGES, z)] / max(hist.sum(), 1.0)
    return np.where(share < HIST_MIN_SHARE, _sign(z, k), 0)


def grubbs_critical(n: int, alpha: float = GRUBBS_ALPHA) -> float:
    """Two-sided Grubbs critical value for a sample of n."""
    from scipy.stats import t as student_t
    t = float(student_t.ppf(1 - alpha / (2 * n), n - 2))
    return (n - 1) / np.sqrt(n) * np.sqrt(t * t / (n - 2 + t * t))


def flags_grubbs(values: np.ndarray, base: Baseline, k: float = 3.0) -> np.ndarray:
    """Grubbs' test: is this minute's residual an outlier among the trailing hour's (the
    window includes it)? Also at least k spreads from the baseline, so a quiet hour's small
    wobble is not an event."""
    z = base.z(values)
    n = len(z)
    if n <= WINDOW_MIN:
        return np.zeros(n, dtype=np.int64)
    count, s, s2 = _trailing_sums(np.concatenate([z, [0.0]]), WINDOW_MIN)
    count, s, s2 = count[1:], s[1:], s2[1:]              # windows ending at i, inclusive
    mean = s / count
    std = np.sqrt(np.maximum(s2 / count - mean * mean, 1e-12) * count / np.maximum(count - 1, 1))
    g = np.abs(z - mean) / std
    out = np.where(g > grubbs_critical(WINDOW_MIN), _sign(z, k), 0)
    out[:WINDOW_MIN - 1] = 0
    return out


def flags_ks(values: np.ndarray, base: Baseline, k: float = KS_MIN_SHIFT) -> np.ndarray:
    """Kolmogorov-Smirnov: the distribution of the last KS_RECENT_MIN minutes' residuals
    against the KS_REFERENCE_MIN minutes before them; flagged (+1 up, -1 down by the medians)
    when D exceeds the KS_C_ALPHA critical value and the medians moved by at least k
    spreads. Residuals, not raw counts, so the morning rise of a daily rhythm is not an event."""
    recent, reference = KS_RECENT_MIN, KS_REFERENCE_MIN
    v = base.z(values)
    n = len(v)
    out = np.zeros(n, dtype=np.int64)
    critical = KS_C_ALPHA * np.sqrt((recent + reference) / (recent * reference))
    for i in range(recent + reference - 1, n):
        new = np.sort(v[i - recent + 1:i + 1])
        old = np.sort(v[i - recent - reference + 1:i - recent + 1])
        both = np.concatenate([new, old])
        f_new = np.searchsorted(new, both, side="right") / recent
        f_old = np.searchsorted(old, both, side="right") / reference
        if np.max(np.abs(f_new - f_old)) > critical:
            shift = np.median(new) - np.median(old)
            if abs(shift) >= k:
                out[i] = 1 if shift > 0 else -1
    return out


@dataclass(frozen=True)
class Method:
    name: str
    flags: Callable[[np.ndarray, Baseline, float], np.ndarray]
    k: float                    # default threshold
    min_minutes: int            # default episode length
    unit: str                   # what k measures


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("mad", flags_mad, 5.0, 2, "robust spreads from the seasonal baseline"),
    Method("average", flags_average, 3.0, 2, "standard deviations from the hour-of-week average"),
    Method("moving_average", flags_moving_average, 4.0, 2, "standard deviations from the last hour's mean"),
    Method("least_squares", flags_least_squares, 5.0, 2, "residual deviations from the last hour's line"),
    Method("cusum", flags_cusum, 20.0, 2, "spreads summed beyond the drift"),
    Method("histogram", flags_histogram, 4.0, 2, "spreads, in a bin rarer than 0.1 % of the history"),
    Method("grubbs", flags_grubbs, 3.0, 2, "spreads, and an outlier of the last hour by Grubbs' test"),
    Method("ks", flags_ks, KS_MIN_SHIFT, 3, "spreads the median moved, with KS significant"),
)}
"""Half-Space Trees (several series at once) live in sensor.series.hst."""


def flags(method: str, values: np.ndarray, base: Baseline, k: float | None = None) -> np.ndarray:
    """Flags of the named method with threshold k (its default when None)."""
    m = METHODS.get(method)
    if m is None:
        raise ValueError(f"unknown method {method!r} (one of {', '.join(METHODS)})")
    return m.flags(values, base, m.k if k is None else k)

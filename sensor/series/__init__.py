"""Per-minute series from the store, a seasonal baseline, and deviations from it.

A series is one counter of the `stats` table (queries, nxdomain, servfail, ...) per minute,
for one resolver or all of them, with missing minutes as zeros (a silent resolver or a dead
tap is news). The baseline models it as level x seasonal index:

- the seasonal index of a minute is the median, over the history, of the series divided by
  its one-day rolling median, in the same (day of week, hour) bucket; when fewer than
  MIN_WEEKS of history exist, the (hour) bucket over all days stands in, and with less than
  MIN_DAYS no seasonality is assumed (the verdict says which);
- the level is the rolling median over the past LEVEL_WINDOW_MIN minutes of the
  de-seasonalised series, so a slow trend moves the baseline and a spike does not.

Methods turn observed against expected (for Kolmogorov-Smirnov, the last minutes' residuals
against the hour before) into flags; `episodes` groups consecutive flagged
minutes into one event with its peak, for one verdict per episode.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MINUTES_PER_DAY = 1440
MIN_DAYS = 2
"""Days of history before a daily profile is used."""
MIN_WEEKS = 2
"""Weeks of history before a day-of-week x hour profile is used."""
LEVEL_WINDOW_MIN = 180
"""Rolling-median window (minutes) for the level: long enough to ignore a spike of an hour."""
SERIES = ("queries", "responses", "nxdomain", "servfail", "refused", "bytes_queries", "bytes_responses",
          "unanswered", "unsolicited", "mismatched")


@dataclass
class Baseline:
    expected: np.ndarray        # per minute
    scale: np.ndarray           # robust spread of the residual, per minute
    seasonality: str            # "weekly", "daily" or "none (N days of history)"


def _rolling_median(x: np.ndarray, window: int) -> np.ndarray:
    """Trailing median over `window` samples (shorter at the start), strided blocks."""
    n = len(x)
    out = np.empty(n)
    if n == 0:
        return out
    # medians of non-overlapping blocks, then the median of the last few blocks: a cheap,
    # robust stand-in for a full rolling median that keeps the cost linear
    block = max(window // 6, 1)
    nblocks = (n + block - 1) // block
    padded = np.full(nblocks * block, np.nan)
    padded[:n] = x
    medians = np.nanmedian(padded.reshape(nblocks, block), axis=1)
    for b in range(nblocks):
        lo = max(0, b - 6)
        level = np.nanmedian(medians[lo:b]) if b > lo else medians[b]
        out[b * block:(b + 1) * block] = level
    return out[:n]


def fit(minutes: np.ndarray, values: np.ndarray) -> Baseline:
    """Baseline for a series of per-minute values (minutes: epoch seconds of minute starts)."""
    values = values.astype(np.float64)
    n = len(values)
    # history that counts: days on which the series saw anything at all
    days = float(len(np.unique((minutes[values > 0] // 86400)))) if n else 0.0
    dow = ((minutes // 86400) + 4) % 7            # 1970-01-01 was a Thursday: 0 = Monday
    hour = (minutes // 3600) % 24
    daily_level = _rolling_median(values, MINUTES_PER_DAY) if days >= MIN_DAYS else None
    if days >= 7 * MIN_WEEKS:
        buckets, seasonality = dow * 24 + hour, "weekly"
    elif days >= MIN_DAYS:
        buckets, seasonality = hour, "daily"
    else:
        buckets, seasonality = np.zeros(n, dtype=np.int64), f"none ({days:.0f} day(s) of history)"
    index = np.ones(n)
    if daily_level is not None:
        ratio = np.where(daily_level > 0, values / np.maximum(daily_level, 1e-9), 1.0)
        for b in np.unique(buckets):
            sel = buckets == b
            index[sel] = np.median(ratio[sel])
    index = np.where(index > 0, index, 1.0)
    deseasoned = values / index
    level = _rolling_median(deseasoned, LEVEL_WINDOW_MIN)
    expected = level * index
    residual = values - expected
    # robust spread per bucket, relative to the expected level (Poisson-like counts spread
    # with their size), with a floor so quiet series do not flag every blip
    rel = residual / np.maximum(np.sqrt(np.maximum(expected, 1.0)), 1.0)
    scale = np.empty(n)
    for b in np.unique(buckets):
        sel = buckets == b
        mad = np.median(np.abs(rel[sel] - np.median(rel[sel]))) * 1.4826
        scale[sel] = max(mad, 1.0)
    scale = scale * np.maximum(np.sqrt(np.maximum(expected, 1.0)), 1.0)
    return Baseline(expected, scale, seasonality)


def flags_mad(values: np.ndarray, base: Baseline, k: float = 5.0) -> np.ndarray:
    """+1 above, -1 below expected by more than k robust spreads, else 0."""
    z = (values - base.expected) / base.scale
    return np.where(z > k, 1, np.where(z < -k, -1, 0))


def flags_moving_average(values: np.ndarray, window: int = 60, k: float = 4.0) -> np.ndarray:
    """Deviation from the trailing moving average, in trailing standard deviations."""
    v = values.astype(np.float64)
    c = np.concatenate([[0.0], np.cumsum(v)])
    c2 = np.concatenate([[0.0], np.cumsum(v * v)])
    idx = np.arange(len(v))
    lo = np.maximum(idx - window, 0)
    count = np.maximum(idx - lo, 1)
    mean = (c[idx] - c[lo]) / count
    var = np.maximum((c2[idx] - c2[lo]) / count - mean * mean, 0.0)
    std = np.maximum(np.sqrt(var), np.sqrt(np.maximum(mean, 1.0)))
    z = (v - mean) / std
    z[:window] = 0.0                                   # no judgement before a full window
    return np.where(z > k, 1, np.where(z < -k, -1, 0))


KS_C_ALPHA = 2.69
"""Kolmogorov-Smirnov critical constant c(alpha) = sqrt(-ln(alpha / 2) / 2) for alpha = 1e-6:
a month holds 43,200 minutes to test, so a looser alpha would flag every day by chance."""


def flags_ks(values: np.ndarray, base: Baseline, recent: int = 10, reference: int = 60,
             min_shift: float = 3.0) -> np.ndarray:
    """Kolmogorov-Smirnov: the distribution of the last `recent` minutes' residuals (observed
    minus expected, in robust spreads) against the `reference` minutes before them; flagged
    (+1 up, -1 down by the medians) when D exceeds the KS_C_ALPHA critical value and the
    medians moved by at least `min_shift` spreads. Residuals, not raw counts, so the morning
    rise of a daily rhythm is not an event."""
    v = (values.astype(np.float64) - base.expected) / base.scale
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
            if abs(shift) >= min_shift:
                out[i] = 1 if shift > 0 else -1
    return out


@dataclass
class Episode:
    start: int                  # index of the first flagged minute
    end: int                    # index after the last
    direction: int              # +1 spike, -1 drop
    peak: int                   # index of the largest deviation


def episodes(flags: np.ndarray, values: np.ndarray, base_expected: np.ndarray, min_minutes: int = 2,
             gap: int = 2) -> list[Episode]:
    """Runs of same-direction flags at least `min_minutes` long, merging gaps up to `gap`."""
    out: list[Episode] = []
    i, n = 0, len(flags)
    while i < n:
        if flags[i] == 0:
            i += 1
            continue
        d, start, last = flags[i], i, i
        j = i + 1
        while j < n and (flags[j] == d or (flags[j] == 0 and j - last <= gap)):
            if flags[j] == d:
                last = j
            j += 1
        if last - start + 1 >= min_minutes:
            seg = slice(start, last + 1)
            peak = start + int(np.argmax(np.abs(values[seg] - base_expected[seg])))
            out.append(Episode(start, last + 1, int(d), peak))
        i = last + 1
    return out


def load(conn, name: str, resolver: str | None = None, since_s: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(minute starts, values) of one counter from `stats`, zeros where a minute is missing."""
    if name not in SERIES:
        from sensor.errors import SensorError
        raise SensorError(f"unknown series {name!r} (one of {', '.join(SERIES)})")
    where, params = ["leg != 'sensor'"], []
    if resolver:
        where.append("resolver = ?")
        params.append(resolver)
    rows = conn.execute(f"SELECT minute, sum({name}) FROM stats WHERE {' AND '.join(where)} "
                        "GROUP BY minute ORDER BY minute", params).fetchall()
    if not rows:
        return np.empty(0, dtype=np.int64), np.empty(0)
    minutes = np.array([r[0] for r in rows], dtype=np.int64)
    values = np.array([r[1] or 0 for r in rows], dtype=np.float64)
    if since_s is not None:
        keep = minutes >= minutes[-1] - since_s
        minutes, values = minutes[keep], values[keep]
    full = np.arange(minutes[0], minutes[-1] + 60, 60, dtype=np.int64)
    filled = np.zeros(len(full))
    filled[(minutes - full[0]) // 60] = values
    return full, filled


QTYPE_CATEGORIES = ("A", "AAAA", "PTR", "MX", "TXT", "HTTPS", "SRV", "NS", "SOA", "CNAME", "ANY", "NULL")
"""Query types compared one by one by the qtype-shift test; the rest count as "other"."""


def load_qtypes(conn, since_s: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(minute starts, counts[minute, category]) of queries by type from `stats`."""
    import json

    rows = conn.execute("SELECT minute, qtypes FROM stats WHERE leg != 'sensor' AND qtypes IS NOT NULL "
                        "ORDER BY minute").fetchall()
    index = {name: i for i, name in enumerate(QTYPE_CATEGORIES)}
    per_minute: dict[int, np.ndarray] = {}
    for minute, text in rows:
        counts = per_minute.setdefault(minute, np.zeros(len(QTYPE_CATEGORIES) + 1))
        for name, n in json.loads(text).items():
            counts[index.get(name, len(QTYPE_CATEGORIES))] += n
    if not per_minute:
        return np.empty(0, dtype=np.int64), np.empty((0, len(QTYPE_CATEGORIES) + 1))
    minutes = np.array(sorted(per_minute), dtype=np.int64)
    if since_s is not None:
        minutes = minutes[minutes >= minutes[-1] - since_s]
    return minutes, np.array([per_minute[m] for m in minutes.tolist()])


def chi2_critical(df: int, z: float) -> float:
    """Upper quantile of chi-squared with `df` degrees of freedom at standard-normal `z`
    (Wilson-Hilferty): no statistics library needed for a threshold."""
    a = 2.0 / (9.0 * df)
    return df * (1.0 - a + z * np.sqrt(a)) ** 3


@dataclass
class Shift:
    chi2: float
    critical: float
    effect: float               # Cramer's V of the recent window against the reference
    recent: dict[str, float]    # shares
    reference: dict[str, float]


def qtype_shift(minutes: np.ndarray, counts: np.ndarray, recent_minutes: int, reference_minutes: int,
                min_queries: int, z: float = 4.75) -> Shift | None:
    """Chi-squared test of the query-type mix of the last `recent_minutes` against the
    `reference_minutes` before them; None when either has too few queries."""
    if not len(minutes):
        return None
    end = minutes[-1] + 60
    recent = counts[minutes >= end - recent_minutes * 60].sum(axis=0)
    ref_mask = (minutes < end - recent_minutes * 60) & (minutes >= end - (recent_minutes + reference_minutes) * 60)
    reference = counts[ref_mask].sum(axis=0)
    if recent.sum() < min_queries or reference.sum() < min_queries:
        return None
    ref_share = (reference + 0.5) / (reference.sum() + 0.5 * len(reference))
    expected = ref_share * recent.sum()
    chi2 = float(((recent - expected) ** 2 / expected).sum())
    df = len(recent) - 1
    effect = float(np.sqrt(chi2 / (recent.sum() * df)))
    names = QTYPE_CATEGORIES + ("other",)
    return Shift(chi2, chi2_critical(df, z), effect,
                 {n: round(float(v / recent.sum()), 4) for n, v in zip(names, recent) if v},
                 {n: round(float(v / reference.sum()), 4) for n, v in zip(names, reference) if v})


def flags(method: str, values: np.ndarray, base: Baseline, k: float = 5.0) -> np.ndarray:
    """Flags of the named method: mad, moving_average or ks."""
    if method == "mad":
        return flags_mad(values, base, k)
    if method == "moving_average":
        return flags_moving_average(values, k=k)
    if method == "ks":
        return flags_ks(values, base)
    raise ValueError(f"unknown method {method!r}")


METHODS = ("mad", "moving_average", "ks")

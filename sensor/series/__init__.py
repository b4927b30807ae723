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

import warnings
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

MINUTES_PER_DAY = 1440
MIN_DAYS = 1
"""Days of history before a daily profile is used."""
MIN_WEEKS = 2
"""Weeks of history before a day-of-week x hour profile is used."""
LEVEL_WINDOW_MIN = 180
"""Rolling-median window (minutes) for the level: long enough to ignore a spike of an hour."""
LEVEL_BLOCKS = 6
"""The rolling median is the median of this many block medians, each over 1/LEVEL_BLOCKS of
the window."""
SERIES = ("queries", "responses", "nxdomain", "servfail", "refused", "bytes_queries", "bytes_responses",
          "unanswered", "unsolicited", "mismatched")


BUCKETS = 7 * 24
"""Seasonal buckets: (day of week, hour)."""
HIST_EDGES = np.linspace(-40.0, 40.0, 81)
"""Bins of the residual (in robust spreads) for the histogram method; two more bins take
whatever falls outside."""


@dataclass
class Profile:
    """What the history taught about a series, persisted in the `baselines` table so a
    restart (or pruned `stats`) does not forget weeks of history."""
    seasonality: str            # "weekly", "daily" or "none (N hour(s) of history)"
    days: float                 # days of history
    index: np.ndarray           # BUCKETS seasonal factors
    spread: np.ndarray          # BUCKETS robust spreads of the residual, in sqrt(expected) units
    mean: np.ndarray            # BUCKETS raw means (the "average" method)
    std: np.ndarray             # BUCKETS raw standard deviations
    histogram: np.ndarray       # residual counts over HIST_EDGES (+ the two outer bins)
    fitted_to: int = 0          # start of the last minute of history it learnt from

    def to_json(self) -> str:
        import json
        return json.dumps({"seasonality": self.seasonality, "days": self.days, "fitted_to": self.fitted_to,
                           **{k: np.round(getattr(self, k), 5).tolist()
                              for k in ("index", "spread", "mean", "std", "histogram")}})

    @classmethod
    def from_json(cls, text: str) -> "Profile":
        import json
        d = json.loads(text)
        return cls(d["seasonality"], d["days"], *(np.array(d[k], dtype=np.float64)
                                                  for k in ("index", "spread", "mean", "std", "histogram")),
                   fitted_to=d["fitted_to"])


@dataclass
class Baseline:
    expected: np.ndarray        # per minute
    scale: np.ndarray           # robust spread of the residual, per minute
    seasonality: str            # "weekly", "daily" or "none (N days of history)"
    profile: Profile | None = None
    buckets: np.ndarray | None = None

    def z(self, values: np.ndarray) -> np.ndarray:
        """Residuals in robust spreads."""
        return (values - self.expected) / self.scale


def bucket_of(minutes: np.ndarray) -> np.ndarray:
    dow = ((minutes // 86400) + 4) % 7            # 1970-01-01 was a Thursday: 0 = Monday
    return dow * 24 + (minutes // 3600) % 24


def _rolling_median(x: np.ndarray, window: int) -> np.ndarray:
    """Trailing median over `window` samples (shorter at the start), strided blocks."""
    n = len(x)
    out = np.empty(n)
    if n == 0:
        return out
    # medians of non-overlapping blocks, then the median of the LEVEL_BLOCKS blocks before
    # each: a cheap, robust stand-in for a full rolling median that keeps the cost linear
    block = max(window // LEVEL_BLOCKS, 1)
    nblocks = (n + block - 1) // block
    if np.isnan(x).any():
        padded = np.full(nblocks * block, np.nan)
        padded[:n] = x
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)         # an all-missing block is NaN
            medians = np.nanmedian(padded.reshape(nblocks, block), axis=1)
            behind = np.concatenate([np.full(LEVEL_BLOCKS, np.nan), medians])
            level = np.nanmedian(sliding_window_view(behind, LEVEL_BLOCKS)[:nblocks], axis=1)
    else:                     # counts: np.median, several times faster than np.nanmedian
        full = n // block
        medians = np.empty(nblocks)
        medians[:full] = np.median(x[:full * block].reshape(full, block), axis=1)
        if full < nblocks:
            medians[full] = np.median(x[full * block:])
        level = np.empty(nblocks)
        for b in range(1, min(LEVEL_BLOCKS, nblocks)):
            level[b] = np.median(medians[:b])
        if nblocks > LEVEL_BLOCKS:
            level[LEVEL_BLOCKS:] = np.median(sliding_window_view(medians[:-1], LEVEL_BLOCKS), axis=1)
    level[0] = medians[0]                # nothing before the first block
    return np.repeat(level, block)[:n]


def fit(minutes: np.ndarray, values: np.ndarray) -> Baseline:
    """Baseline for a series of per-minute values (minutes: epoch seconds of minute starts),
    learnt from the series itself; its `profile` can be stored and applied to later minutes."""
    values = values.astype(np.float64)
    n = len(values)
    # history: the minutes given (`load` starts at the first minute the store has for the
    # series, so a counter that stayed zero all along still has a history, and leaves out
    # the minutes the sensor did not observe, so a week with two days of it is two days)
    days = n * 60 / 86400
    week_bucket = bucket_of(minutes)
    daily_level = _rolling_median(values, MINUTES_PER_DAY) if days >= MIN_DAYS else None
    if days >= 7 * MIN_WEEKS:
        buckets, seasonality, of = week_bucket, "weekly", np.arange(BUCKETS)
    elif days >= MIN_DAYS:
        buckets, seasonality, of = week_bucket % 24, "daily", np.arange(BUCKETS) % 24
    else:
        buckets, seasonality, of = np.zeros(n, dtype=np.int64), f"none ({days * 24:.0f} hour(s) of history)", \
            np.zeros(BUCKETS, dtype=np.int64)
    nb = int(of.max()) + 1              # every bucket, observed or not (a gap leaves some empty)
    by_bucket = [buckets == b for b in range(nb)]
    index_b = np.ones(nb)
    if daily_level is not None:
        ratio = np.where(daily_level > 0, values / np.maximum(daily_level, 1e-9), 1.0)
        # the first day's daily level has less than a day behind it (a night alone makes the
        # morning look huge): leave it out once there is a full day after it
        settled = np.arange(n) >= MINUTES_PER_DAY if n >= 2 * MINUTES_PER_DAY else np.ones(n, dtype=bool)
        for b, sel in enumerate(by_bucket):
            sel = sel & settled
            if sel.any():
                index_b[b] = np.median(ratio[sel])
    index_b = np.where(index_b > 0, index_b, 1.0)
    index = index_b[buckets] if n else np.ones(0)
    expected = _rolling_median(values / index, LEVEL_WINDOW_MIN) * index
    # robust spread per bucket, relative to the expected level (Poisson-like counts spread
    # with their size), with a floor so quiet series do not flag every blip
    root = np.maximum(np.sqrt(np.maximum(expected, 1.0)), 1.0)
    rel = (values - expected) / root
    spread_b, mean_b, std_b = np.ones(nb), np.zeros(nb), np.ones(nb)
    for b, sel in enumerate(by_bucket):
        if sel.any():
            r = rel[sel]
            spread_b[b] = max(np.median(np.abs(r - np.median(r))) * 1.4826, 1.0)
            mean_b[b] = values[sel].mean()
            std_b[b] = max(values[sel].std(), np.sqrt(max(mean_b[b], 1.0)))
    scale = spread_b[buckets] * root if n else np.ones(0)
    z = (values - expected) / scale
    histogram = np.bincount(np.searchsorted(HIST_EDGES, z), minlength=len(HIST_EDGES) + 1).astype(np.float64)
    profile = Profile(seasonality, days, index_b[of], spread_b[of], mean_b[of], std_b[of], histogram,
                      int(minutes[-1]) if n else 0)
    return Baseline(expected, scale, seasonality, profile, week_bucket)


def apply(profile: Profile, minutes: np.ndarray, values: np.ndarray) -> Baseline:
    """Baseline of recent minutes from a stored profile: the level is the rolling median of
    the de-seasonalised values given (pass LEVEL_WINDOW_MIN minutes before the ones judged)."""
    values = values.astype(np.float64)
    buckets = bucket_of(minutes)
    index = profile.index[buckets]
    expected = _rolling_median(values / index, LEVEL_WINDOW_MIN) * index
    scale = profile.spread[buckets] * np.maximum(np.sqrt(np.maximum(expected, 1.0)), 1.0)
    return Baseline(expected, scale, profile.seasonality, profile, buckets)


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


SCOPES = ("network", "domain")
SCOPED_SERIES = ("queries", "responses", "nxdomain", "servfail", "bytes_queries", "bytes_responses")
"""Counters the `breakdown` table keeps per client network and per registered domain."""


def series_id(name: str, scope: str | None = None, key: str | None = None) -> str:
    """How a series is named in the `baselines` table and in verdicts: nxdomain@domain=example.com."""
    return f"{name}@{scope}={key}" if scope else name


def last_minute(conn) -> int | None:
    """The newest minute of data in the store (the sensor's own row counts: a silent resolver
    still has a clock)."""
    row = conn.execute("SELECT max(minute) FROM stats").fetchone()
    return int(row[0]) if row and row[0] is not None else None


def load(conn, name: str, resolver: str | None = None, since_s: float | None = None, scope: str | None = None,
         key: str | None = None, until: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(minute starts, values) of one counter from `stats` (all resolvers or one) or from
    `breakdown` (scope network or domain, and its key), over `since_s` seconds up to minute
    `until` (default: the newest in the store). A minute the sensor observed without this
    counter's traffic is a zero; a minute it did not observe is left out (see observed_minutes)."""
    from sensor.errors import SensorError
    if scope:
        if scope not in SCOPES:
            raise SensorError(f"unknown scope {scope!r} (one of {', '.join(SCOPES)})")
        if name not in SCOPED_SERIES:
            raise SensorError(f"series {name!r} is not kept per {scope} (one of {', '.join(SCOPED_SERIES)})")
        table, where, params = "breakdown", ["scope = ?", "key = ?"], [scope, key]
    else:
        if name not in SERIES:
            raise SensorError(f"unknown series {name!r} (one of {', '.join(SERIES)})")
        table, where, params = "stats", ["leg != 'sensor'"], []
        if resolver:
            where.append("resolver = ?")
            params.append(resolver)
    if until is None:
        until = last_minute(conn)
        if until is None:
            return np.empty(0, dtype=np.int64), np.empty(0)
    where.append("minute <= ?")
    params.append(until)
    if since_s is not None:
        where.append("minute > ?")
        params.append(until - since_s)
    rows = conn.execute(f"SELECT minute, sum({name}) FROM {table} WHERE {' AND '.join(where)} "
                        "GROUP BY minute ORDER BY minute", params).fetchall()
    if not rows:
        return np.empty(0, dtype=np.int64), np.empty(0)
    minutes = np.array([r[0] for r in rows], dtype=np.int64)
    values = np.array([r[1] or 0 for r in rows], dtype=np.float64)
    seen = np.union1d(observed_minutes(conn, int(minutes[0]), until), minutes)
    filled = np.zeros(len(seen))
    filled[np.searchsorted(seen, minutes)] = values
    return seen, filled


def observed_minutes(conn, first: int, last: int) -> np.ndarray:
    """The minutes in [first, last] that the sensor observed: those with any `stats` row. Live
    capture writes the sensor's own row every minute it runs, traffic or not, and a replay
    one for every minute its captures span; the hours a sensor was stopped, or the days
    between two unrelated captures, have none. Series leave those out instead of counting
    them as minutes without traffic, which made every restart after a night a volume drop
    (and the traffic that came back a spike)."""
    rows = conn.execute("SELECT DISTINCT minute FROM stats WHERE minute >= ? AND minute <= ? ORDER BY minute",
                        (first, last)).fetchall()
    return np.array([r[0] for r in rows], dtype=np.int64)


def busiest(conn, scope: str, since_minute: int, limit: int) -> list[str]:
    """The keys of a scope with the most queries since a minute ('other' left out)."""
    rows = conn.execute("SELECT key FROM breakdown WHERE scope = ? AND minute >= ? AND key != 'other' "
                        "GROUP BY key ORDER BY sum(queries) DESC, key LIMIT ?", (scope, since_minute, limit))
    return [r[0] for r in rows]


QTYPE_CATEGORIES = ("A", "AAAA", "PTR", "MX", "TXT", "HTTPS", "SRV", "NS", "SOA", "CNAME", "ANY", "NULL")
"""Query types compared one by one by the qtype-shift test; the rest count as "other"."""
RCODE_CATEGORIES = ("NOERROR", "NXDOMAIN", "SERVFAIL", "REFUSED", "FORMERR", "NOTIMP")
"""Response codes compared one by one by the rcode-shift test; the rest count as "other"."""
MIXES = {"qtypes": QTYPE_CATEGORIES, "rcodes": RCODE_CATEGORIES}


def load_mix(conn, column: str, since_s: float | None = None, until: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(minute starts, counts[minute, category]) of queries by type (column qtypes) or
    responses by rcode (column rcodes) from `stats`, the categories of MIXES plus "other",
    over `since_s` seconds up to minute `until` (default: the newest in the store)."""
    import json

    categories = MIXES[column]
    where, params = f"leg != 'sensor' AND {column} IS NOT NULL", []
    end = last_minute(conn) if until is None else until
    if end is not None:
        where += " AND minute <= ?"
        params.append(end)
    if since_s is not None and end is not None:
        where += " AND minute > ?"
        params.append(end - since_s)
    rows = conn.execute(f"SELECT minute, {column} FROM stats WHERE {where} ORDER BY minute", params).fetchall()
    index = {name: i for i, name in enumerate(categories)}
    per_minute: dict[int, np.ndarray] = {}
    for minute, text in rows:
        counts = per_minute.setdefault(minute, np.zeros(len(categories) + 1))
        for name, n in json.loads(text).items():
            counts[index.get(name, len(categories))] += n
    if not per_minute:
        return np.empty(0, dtype=np.int64), np.empty((0, len(categories) + 1))
    minutes = np.array(sorted(per_minute), dtype=np.int64)
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


def mix_shift(minutes: np.ndarray, counts: np.ndarray, categories: tuple[str, ...], recent_minutes: int,
              reference_minutes: int, min_count: int, z: float = 4.75) -> Shift | None:
    """Chi-squared test of a mix (query types, rcodes: `categories` plus "other") in the last
    `recent_minutes` against the `reference_minutes` before them; None when either holds
    fewer than `min_count`."""
    if not len(minutes):
        return None
    end = minutes[-1] + 60
    recent = counts[minutes >= end - recent_minutes * 60].sum(axis=0)
    ref_mask = (minutes < end - recent_minutes * 60) & (minutes >= end - (recent_minutes + reference_minutes) * 60)
    reference = counts[ref_mask].sum(axis=0)
    if recent.sum() < min_count or reference.sum() < min_count:
        return None
    ref_share = (reference + 0.5) / (reference.sum() + 0.5 * len(reference))
    expected = ref_share * recent.sum()
    chi2 = float(((recent - expected) ** 2 / expected).sum())
    df = len(recent) - 1
    effect = float(np.sqrt(chi2 / (recent.sum() * df)))
    names = categories + ("other",)
    return Shift(chi2, chi2_critical(df, z), effect,
                 {n: round(float(v / recent.sum()), 4) for n, v in zip(names, recent) if v},
                 {n: round(float(v / reference.sum()), 4) for n, v in zip(names, reference) if v})

"""Generated per-minute series for the baseline tests and bench/series.py: four weeks of
query counts with a daily and a weekly rhythm, a slow trend, Poisson noise, and injected
events (spikes, drops to zero, level shifts, slow drifts) whose minutes are known."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

START = 1_767_225_600            # 2026-01-01 00:00 UTC, a Thursday


@dataclass
class Event:
    kind: str                    # spike, drop, shift, drift
    start: int                   # minute index
    end: int


def generate(weeks: int = 4, base: float = 200.0, seed: int = 7) -> tuple[np.ndarray, np.ndarray, list[Event]]:
    rng = np.random.default_rng(seed)
    n = weeks * 7 * 1440
    minutes = START + 60 * np.arange(n, dtype=np.int64)
    hour = (np.arange(n) // 60) % 24 + (np.arange(n) % 60) / 60
    dow = ((minutes // 86400) + 4) % 7
    daily = 0.35 + 0.65 * np.clip(np.sin((hour - 6) / 24 * 2 * np.pi) * 1.2, 0, None)   # busy days, quiet nights
    weekly = np.where(dow >= 5, 0.45, 1.0)                                              # quiet weekends
    trend = 1.0 + 0.25 * np.arange(n) / n
    rate = base * daily * weekly * trend + 5
    events: list[Event] = []
    # evenly spread, after the first two weeks so the baseline has history
    for i, kind in enumerate(["spike", "drop", "spike", "shift", "drift", "spike", "drop", "spike", "drift"]):
        start = 15 * 1440 + i * 1440 + int(rng.integers(8 * 60, 18 * 60))
        length = {"spike": int(rng.integers(10, 40)), "drop": int(rng.integers(15, 45)), "shift": 6 * 60, "drift": 8 * 60}[kind]
        events.append(Event(kind, start, start + length))
    events = [e for e in events if e.end <= n]        # shorter runs keep the events that fit
    for e in events:
        if e.kind == "spike":
            rate[e.start:e.end] *= 4.0
        elif e.kind == "drop":
            rate[e.start:e.end] = 0.0
        elif e.kind == "shift":
            rate[e.start:e.end] *= 2.5
        else:                    # up to three times the rate over six hours, back in two
            ramp = np.concatenate([np.linspace(1.0, 3.0, 6 * 60), np.linspace(3.0, 1.0, 2 * 60)])
            rate[e.start:e.end] *= ramp
    return minutes, rng.poisson(rate).astype(np.float64), events


def score(found: list, events: list[Event], first: int) -> tuple[float, float]:
    """(precision, recall) of episodes against events, counting only from minute `first`."""
    found = [f for f in found if f.end > first]
    hit = [e for e in events if any(f.start < e.end and f.end > e.start for f in found)]
    true = [f for f in found if any(f.start < e.end and f.end > e.start for e in events)]
    precision = len(true) / len(found) if found else 1.0
    return precision, len(hit) / len(events)


def generate_resolver(weeks: int = 4, seed: int = 7) -> tuple[np.ndarray, dict[str, np.ndarray], list[Event]]:
    """A resolver's queries (as `generate`, events included) with NXDOMAIN and SERVFAIL as
    steady shares of them: the several series Half-Space Trees look at together."""
    minutes, queries, events = generate(weeks=weeks, seed=seed)
    rng = np.random.default_rng(seed + 1000)
    q = queries.astype(np.int64)
    return minutes, {"queries": queries, "nxdomain": rng.binomial(q, 0.05).astype(np.float64),
                     "servfail": rng.binomial(q, 0.004).astype(np.float64)}, events

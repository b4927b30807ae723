"""`dnssensor series --png`: the series, its baseline and band, and the flagged minutes."""
from __future__ import annotations

import numpy as np


def plot(path: str, title: str, minutes: np.ndarray, values: np.ndarray, expected: np.ndarray, low: np.ndarray,
         high: np.ndarray, flags: np.ndarray, method: str, seasonality: str) -> None:
    import datetime as dt

    import matplotlib
    matplotlib.use("Agg")                       # files only: no display on a sensor
    import matplotlib.pyplot as plt

    times = [dt.datetime.fromtimestamp(int(m), tz=dt.timezone.utc) for m in minutes.tolist()]
    fig, ax = plt.subplots(figsize=(12, 4.5), dpi=100)
    ax.fill_between(times, low, high, color="tab:blue", alpha=0.15, linewidth=0, label="band")
    ax.plot(times, expected, color="tab:blue", linewidth=1.2, label="expected")
    ax.plot(times, values, color="black", linewidth=0.8, label="observed")
    for sign, colour, label in ((1, "tab:red", "above"), (-1, "tab:orange", "below")):
        sel = flags == sign
        if sel.any():
            ax.scatter([t for t, s in zip(times, sel.tolist()) if s], values[sel], color=colour, s=14, zorder=3,
                       label=f"anomaly ({label})")
    ax.set_title(f"{title}: method {method}, baseline seasonality {seasonality}")
    ax.set_xlabel("UTC")
    ax.set_ylabel("per minute")
    ax.legend(loc="upper left", fontsize="small")
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)

"""`dnssensor series --png`: the series, its baseline and band, and the flagged minutes."""
from __future__ import annotations

import numpy as np

from sensor.errors import SensorError


def with_breaks(minutes: np.ndarray, *columns: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """The columns with a NaN after each minute that the next one does not follow: a series
    leaves out the minutes the sensor did not observe, and a line drawn across them would
    show traffic nobody saw."""
    gaps = np.flatnonzero(np.diff(minutes) > 60)
    at = gaps + 1
    return (np.insert(minutes, at, minutes[gaps] + 60),
            [np.insert(np.asarray(c, dtype=np.float64), at, np.nan) for c in columns])


def plot(path: str, title: str, minutes: np.ndarray, values: np.ndarray, expected: np.ndarray, low: np.ndarray,
         high: np.ndarray, flags: np.ndarray, method: str, seasonality: str) -> None:
    import datetime as dt

    import matplotlib
    matplotlib.use("Agg")                       # files only: no display on a sensor
    import matplotlib.pyplot as plt

    times = [dt.datetime.fromtimestamp(int(m), tz=dt.timezone.utc) for m in minutes.tolist()]
    fig, ax = plt.subplots(figsize=(12, 4.5), dpi=100)
    line_minutes, (line_low, line_high, line_expected, line_values) = with_breaks(minutes, low, high, expected, values)
    line_times = [dt.datetime.fromtimestamp(int(m), tz=dt.timezone.utc) for m in line_minutes.tolist()]
    ax.fill_between(line_times, line_low, line_high, color="tab:blue", alpha=0.15, linewidth=0, label="band")
    ax.plot(line_times, line_expected, color="tab:blue", linewidth=1.2, label="expected")
    ax.plot(line_times, line_values, color="black", linewidth=0.8, label="observed")
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
    try:
        fig.savefig(path, format="png")          # at that path: no ".png" added to a name without it
    except OSError as e:
        raise SensorError(f"{path}: cannot write the plot: {e.strerror or e}") from None
    finally:
        plt.close(fig)

"""The regime of every day at a glance (`python main.py regime --history`): a table, a CSV and a chart.

The rows come from `classify.compute_regimes` over the window, so each day's label is the one the model gave online
that day (data after it never enters). matplotlib is imported only when a chart is drawn, with the non-interactive
Agg backend: it costs a noticeable part of a second, and cron has no display.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from common.errors import ConfigError

COLOURS = {"TREND_BULL": "#cfe8cf", "TREND_NEUTRAL": "#f2e6b8", "TREND_BEAR": "#f4c7a1", "CRASH": "#e06666"}
BEAR_OR_CRASH = ("TREND_BEAR", "CRASH")


def table(rows: pd.DataFrame) -> pd.DataFrame:
    """date, regime, factor, crash_override and SPY's close of each row of `compute_regimes` (plus spy_close)."""
    out = pd.DataFrame({"date": rows.index.strftime("%Y-%m-%d"), "regime": rows["regime"].to_numpy(),
                        "factor": rows["factor"].to_numpy(), "crash_override": rows["crash_override"].to_numpy()})
    if "spy_close" in rows.columns:
        out["spy_close"] = rows["spy_close"].round(4).to_numpy()
    return out


def summary(rows: pd.DataFrame) -> str:
    """One line: the window, the share of each regime, bull/bear switches a year and the CRASH episodes."""
    labels = rows["regime"]
    years = max((labels.index[-1] - labels.index[0]).days / 365.25, 1 / 365.25)
    bear = labels.isin(BEAR_OR_CRASH)
    switches = int((bear != bear.shift(1)).iloc[1:].sum())
    crash = labels == "CRASH"
    episodes = int((crash & ~crash.shift(1, fill_value=False)).sum())
    shares = ", ".join(f"{name} {(labels == name).mean():.0%}" for name in COLOURS if (labels == name).any())
    return (f"{labels.index[0].date()}..{labels.index[-1].date()}, {len(labels)} sessions: {shares}; "
            f"{switches / years:.2f} bull/bear switches a year, {episodes} CRASH episode(s)")


def write(rows: pd.DataFrame, out: str | Path) -> tuple[Path, Path]:
    """The CSV `out` (date, regime, factor, crash_override, spy_close) and a PNG beside it (same name, .png) of SPY's
    close with each day shaded by its regime. ConfigError when the folder does not exist."""
    target = Path(out)
    if not target.parent.is_dir():
        raise ConfigError(f"--out {target}: directory {target.parent} does not exist")
    table(rows).to_csv(target, index=False)
    chart = target.with_suffix(".png")
    draw(rows, chart)
    return target, chart


def draw(rows: pd.DataFrame, path: Path) -> None:
    """SPY's close on a log scale over bands of the regime's colour, one band per run of equal labels."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.patches import Patch

    labels = rows["regime"]
    days = labels.index
    fig, ax = plt.subplots(figsize=(12, 4.5), dpi=110)
    starts = [0] + [i for i in range(1, len(labels)) if labels.iat[i] != labels.iat[i - 1]]
    for k, first in enumerate(starts):
        last = starts[k + 1] if k + 1 < len(starts) else len(labels) - 1
        ax.axvspan(days[first], days[last], color=COLOURS[labels.iat[first]], linewidth=0)
    if "spy_close" in rows.columns and rows["spy_close"].notna().any():
        ax.plot(days, rows["spy_close"], color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_ylabel("SPY close (log scale)")
    ax.set_xlim(days[0], days[-1])
    ax.set_title(f"Market regime, online label of each day ({days[0].date()}..{days[-1].date()})")
    ax.legend(handles=[Patch(facecolor=colour, edgecolor="0.4", label=name) for name, colour in COLOURS.items()],
              loc="upper left", ncol=4, fontsize=8, framealpha=0.9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)

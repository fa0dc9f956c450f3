"""The equity-vs-SPY chart (PNG) sent with the weekly report.

matplotlib is imported inside the function, with the non-interactive Agg backend: importing it costs a noticeable
part of a second, which commands that draw nothing should not pay, and cron has no display.
"""
from __future__ import annotations

import logging
import os
from datetime import date
from pathlib import Path

from common.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def normalised_series(rows: list[dict]) -> tuple[list[date], list[float], list[float | None]]:
    """Dates, equity and SPY close each scaled to 100 at the first snapshot (SPY None where unknown)."""
    first_equity = rows[0]["equity"]
    first_spy = next((row["spy_close"] for row in rows if row["spy_close"]), None)
    days = [date.fromisoformat(row["date"]) for row in rows]
    equity = [row["equity"] / first_equity * 100 for row in rows]
    spy = [row["spy_close"] / first_spy * 100 if first_spy and row["spy_close"] else None for row in rows]
    return days, equity, spy


def equity_chart(rt, path: str | Path) -> Path:
    """Draw normalised equity against SPY from the daily snapshots into the PNG file `path`."""
    target = Path(path)
    if not target.parent.is_dir():
        raise ConfigError(f"--chart {target}: directory {target.parent} does not exist")
    rows = rt.journal.query("SELECT date, equity, spy_close FROM daily_performance WHERE equity > 0 ORDER BY date")
    if not rows:
        raise DataError("no daily snapshots to chart yet: run `jobs daily-snapshot` after a session")
    days, equity, spy = normalised_series(rows)
    # drawn to a temporary name and moved, so a chart being sent is never half written
    temporary = target.with_name(f".{target.name}.tmp.png")
    _draw(days, equity, spy, temporary)
    os.replace(temporary, target)
    log.info("equity chart written", extra={"path": str(target), "points": len(days)})
    return target


def _draw(days: list[date], equity: list[float], spy: list[float | None], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(9, 4.5), dpi=100)
    try:
        axes.plot(days, equity, label="agent equity", color="tab:blue", linewidth=2,
                  marker="o" if len(days) < 40 else None, markersize=3)
        axes.plot(days, [float("nan") if v is None else v for v in spy], label="SPY", color="tab:gray",
                  linewidth=1.5, linestyle="--")
        axes.axhline(100, color="black", linewidth=0.5)
        axes.set_title(f"Equity vs SPY, {days[0]} .. {days[-1]} (100 = first snapshot)")
        axes.set_ylabel("normalised value")
        axes.grid(alpha=0.3)
        axes.legend(loc="best")
        figure.autofmt_xdate()
        figure.tight_layout()
        figure.savefig(path, format="png")
    finally:
        plt.close(figure)

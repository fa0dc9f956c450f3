"""The equity-vs-SPY chart (PNG) sent with the weekly report, and a backtest's equity beside its benchmarks.

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
BENCHMARK_COLOURS = ("tab:gray", "tab:orange", "tab:green", "tab:purple")  # the agent's own curve is blue


def normalised_series(rows: list[dict]) -> tuple[list[date], list[float], list[float | None]]:
    """Dates, equity and SPY close each scaled to 100 before the first snapshot's day, the baseline the reports
    use: equity less that day's P&L, SPY's previous close (SPY None where unknown)."""
    first_equity = rows[0]["equity"] - (rows[0].get("day_pnl") or 0.0)
    first = rows[0]
    first_spy = (first["spy_close"] / (1 + first["spy_change_pct"] / 100) if first.get("spy_close")
                 and first.get("spy_change_pct") is not None else
                 next((row["spy_close"] for row in rows if row["spy_close"]), None))
    days = [date.fromisoformat(row["date"]) for row in rows]
    equity = [row["equity"] / first_equity * 100 for row in rows]
    spy = [row["spy_close"] / first_spy * 100 if first_spy and row["spy_close"] else None for row in rows]
    return days, equity, spy


def equity_chart(rt, path: str | Path, curves: dict[str, list[float]] | None = None,
                 days: list[date] | None = None) -> Path:
    """Draw normalised equity against SPY from the daily snapshots into the PNG file `path`; with `curves` (label ->
    values on `days`, the agent's equity first, each from the same baseline), draw those instead (a backtest's
    account beside its benchmarks)."""
    target = Path(path)
    if not target.parent.is_dir():
        raise ConfigError(f"--chart {target}: directory {target.parent} does not exist")
    if curves:
        series = {label: [v / values[0] * 100 for v in values] for label, values in curves.items()}
        title = f"Equity vs benchmarks, {days[0]} .. {days[-1]} (100 = the close of {days[0]})"
    else:
        rows = rt.journal.query("SELECT date, equity, day_pnl, spy_close, spy_change_pct FROM daily_performance "
                                "WHERE equity > 0 "
                                "ORDER BY date")
        if not rows:
            raise DataError("no daily snapshots to chart yet: run `jobs daily-snapshot` after a session")
        days, equity, spy = normalised_series(rows)
        series = {"agent equity": equity, "SPY": spy}
        title = f"Equity vs SPY, {days[0]} .. {days[-1]} (100 = the close before {days[0]})"
    # drawn to a temporary name and moved, so a chart being sent is never half written
    temporary = target.with_name(f".{target.name}.tmp.png")
    _draw(days, series, title, temporary)
    os.replace(temporary, target)
    log.info("equity chart written", extra={"path": str(target), "points": len(days)})
    return target


def _draw(days: list[date], series: dict[str, list[float | None]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(9, 4.5), dpi=100)
    try:
        for n, (label, values) in enumerate(series.items()):
            shown = [float("nan") if v is None else v for v in values]
            if n == 0:  # the agent's own curve
                axes.plot(days, shown, label=label, color="tab:blue", linewidth=2,
                          marker="o" if len(days) < 40 else None, markersize=3)
            else:
                axes.plot(days, shown, label=label, linewidth=1.5, linestyle="--",
                          color=BENCHMARK_COLOURS[(n - 1) % len(BENCHMARK_COLOURS)])
        axes.axhline(100, color="black", linewidth=0.5)
        axes.set_title(title)
        axes.set_ylabel("normalised value")
        axes.grid(alpha=0.3)
        axes.legend(loc="best")
        figure.autofmt_xdate()
        figure.tight_layout()
        figure.savefig(path, format="png")
    finally:
        plt.close(figure)

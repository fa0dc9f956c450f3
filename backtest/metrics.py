"""Backtest figures from the backtest's own journal, beside SPY buy-and-hold over the same sessions.

Equity is the `daily_performance` series written by the nightly `daily-snapshot` job, preceded by the starting
cash at the close before the first session; SPY buy-and-hold is the SPY close series of the market port over the
same dates, scaled to the same starting value. Returns are daily; annualisation uses 252 sessions a year.

- CAGR: (end / start) ^ (252 / sessions) - 1; volatility: stdev of daily returns x sqrt(252); Sharpe: mean / stdev
  x sqrt(252) (risk-free rate 0); Sortino: mean / downside deviation x sqrt(252); max drawdown from the running peak.
- win rate and profit factor over closed trades (a flat trade counts as a loss); trades = closed trades.
- exposure: average invested value / equity at the nightly snapshots; turnover: filled order value (buys and sells)
  / average equity, per year.
- replay mode: `daily: decisions on completed bars` (daily data: a decision during a session sees the completed
  sessions and today's open, its market orders fill at the open) or `intraday: real bars at each moment`.
- realised P&L of closed trades by entry slot (the scan that bought: open, midday, close; a rebalance; an option
  signal) and by exit reason: with daily data every slot sees the same open, so a P&L that flips sign by time of
  day points at a leak.
"""
from __future__ import annotations

import json
import logging
import math
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from flows.reports import TRADING_DAYS_PER_YEAR, return_stats, trade_stats

if TYPE_CHECKING:  # annotations only: the runtime module wires every port
    from flows.runtime import Runtime

log = logging.getLogger(__name__)
STARTING_CASH = 100_000.0


def series_metrics(values: list[float]) -> dict[str, Any]:
    """CAGR, volatility, Sharpe, Sortino and max drawdown of an equity curve (first value = the baseline)."""
    out = {"start_value": values[0] if values else None, "end_value": values[-1] if values else None,
           "total_return_pct": None, "cagr_pct": None}
    if len(values) >= 2 and values[0] > 0:
        growth = values[-1] / values[0]
        out["total_return_pct"] = (growth - 1) * 100
        years = (len(values) - 1) / TRADING_DAYS_PER_YEAR
        out["cagr_pct"] = (growth ** (1 / years) - 1) * 100 if growth > 0 else -100.0
    stats = return_stats(values)
    out.update({"volatility_pct": stats["volatility_pct"], "sharpe": stats["sharpe"], "sortino": stats["sortino"],
                "max_drawdown_pct": stats["max_drawdown_pct"]})
    return out


def _traded_value(rt: Runtime) -> float:
    row = rt.journal.one("SELECT COALESCE(SUM(filled_qty * filled_avg_price), 0) AS value FROM orders "
                         "WHERE filled_qty > 0 AND filled_avg_price IS NOT NULL")
    return float(row["value"])


def spy_curve(rt: Runtime, days: list[str]) -> list[float]:
    """SPY buy-and-hold from the close before the first day, scaled to the starting cash; gaps carry forward."""
    first = date.fromisoformat(days[0])
    before = rt.calendar.previous_session(first)
    series = rt.market.market_series(before, date.fromisoformat(days[-1]))["spy_close"]
    closes = {index.date().isoformat(): float(value) for index, value in series.items() if np.isfinite(value)}
    base = closes.get(before.isoformat())
    if not base:
        return []
    curve, last = [STARTING_CASH], base
    for day in days:
        last = closes.get(day, last)
        curve.append(STARTING_CASH * last / base)
    return curve


DAILY_MODE = "daily: decisions on completed bars"
INTRADAY_MODE = "intraday: real bars at each moment"
FILLS = {DAILY_MODE: "market orders at today's open (every decision of a session sees only the open), stops and "
                     "limits on the day's real high and low settled at the close (the worse outcome inside a day)",
         INTRADAY_MODE: "market orders at the close of the last bar ended, stops and limits on each bar's high and "
                        "low as it ends (the worse outcome inside a bar)"}
COSTS = ("half the cap tier's spread (0.05% large, 0.10% mid, 0.20% small) + 2 bp slippage per market fill; "
         "no commission")


def replay_mode(market) -> str:
    """Which replay a market gives: intraday when it serves a session's bars, else daily."""
    return INTRADAY_MODE if hasattr(market, "session_bars") else DAILY_MODE


def entry_slot(trade: dict) -> str:
    """The scan slot that bought a trade (from its entry order id, ma-e-SYMBOL-YYYYMMDD-SLOT), else its strategy."""
    parts = (trade.get("entry_order_id") or "").split("-")
    if len(parts) >= 5 and parts[:2] == ["ma", "e"]:
        slot = parts[-1]
        return "rebalance" if slot == "rebal" else slot
    return trade.get("strategy") or "unknown"


def pnl_breakdown(trades: list[dict], key) -> dict[str, dict[str, Any]]:
    """Realised P&L, trade count and win rate per group of closed trades."""
    groups: dict[str, list[float]] = {}
    for trade in trades:
        groups.setdefault(key(trade), []).append(float(trade["pnl"]))
    out = {}
    for name in sorted(groups):
        stats = trade_stats(groups[name])
        out[name] = {"trades": stats["trades"], "pnl": stats["realised_pnl"], "win_rate_pct": stats["win_rate_pct"]}
    return out


def compute(rt: Runtime, result) -> dict[str, Any]:
    """The metrics of a finished replay: the system's, SPY's, and the run's facts."""
    rows = rt.journal.query("SELECT date, equity, exposure, exposure_pct FROM daily_performance ORDER BY date")
    days = [row["date"] for row in rows]
    equity = [STARTING_CASH] + [row["equity"] for row in rows]
    system = series_metrics(equity) if rows else series_metrics([])
    trades = rt.journal.query("SELECT pnl, entry_order_id, strategy, exit_reason FROM trades "
                              "WHERE status IN ('closed', 'unknown') AND pnl IS NOT NULL")
    stats = trade_stats([t["pnl"] for t in trades])
    average_equity = float(np.mean(equity)) if rows else STARTING_CASH
    years = len(rows) / TRADING_DAYS_PER_YEAR if rows else 0.0
    exposures = [row["exposure"] / row["equity"] for row in rows if row["equity"]]
    system.update({
        "win_rate_pct": stats["win_rate_pct"], "profit_factor": stats["profit_factor"], "trades": stats["trades"],
        "realised_pnl": stats["realised_pnl"],
        "exposure_pct": float(np.mean(exposures)) * 100 if exposures else None,
        "turnover": _traded_value(rt) / average_equity / years if years else None,
        "open_trades_at_end": len(rt.journal.held_trades("id")),
    })
    spy = series_metrics(spy_curve(rt, days)) if rows else series_metrics([])
    spy.update({"win_rate_pct": None, "profit_factor": None, "trades": 0, "exposure_pct": 100.0,
                "turnover": 0.0})
    mode = replay_mode(rt.market)
    return {"replay_mode": mode, "fills": FILLS[mode], "costs": COSTS,
            "system": result.system, "start": str(result.start), "end": str(result.end),
            "sessions": result.sessions, "steps": result.steps, "failed_steps": len(result.failures),
            "metrics": _clean(system), "spy_buy_and_hold": _clean(spy),
            "pnl_by_entry_slot": pnl_breakdown(trades, entry_slot),
            "pnl_by_exit_reason": pnl_breakdown(trades, lambda t: t["exit_reason"] or "unknown")}


def _clean(values: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()}


def text(data: dict[str, Any]) -> str:
    """The metrics table: the system beside SPY buy-and-hold."""
    labels = {"cagr_pct": "CAGR %", "volatility_pct": "volatility %", "sharpe": "Sharpe", "sortino": "Sortino",
              "max_drawdown_pct": "max drawdown %", "win_rate_pct": "win rate %", "profit_factor": "profit factor",
              "exposure_pct": "exposure %", "turnover": "turnover / year", "trades": "trades",
              "total_return_pct": "total return %", "end_value": "end equity"}
    lines = [f"replay mode: {data.get('replay_mode', DAILY_MODE)}",
             f"backtest {data['system']} {data['start']} .. {data['end']}: {data['sessions']} sessions, "
             f"{data['steps']} steps, {data['failed_steps']} failed",
             f"fills: {data.get('fills', FILLS[DAILY_MODE])}; costs: {data.get('costs', COSTS)}",
             f"{'metric':<18}{data['system']:>16}{'SPY buy&hold':>16}"]
    for key, label in labels.items():
        lines.append(f"{label:<18}{_fmt(data['metrics'].get(key)):>16}{_fmt(data['spy_buy_and_hold'].get(key)):>16}")
    for title, key in (("entry slot", "pnl_by_entry_slot"), ("exit reason", "pnl_by_exit_reason")):
        groups = data.get(key) or {}
        if groups:
            lines.append(f"realised P&L by {title}:")
            lines += [f"  {name:<22}{g['trades']:>6} trades {g['pnl']:>12,.2f}  win {_fmt(g['win_rate_pct'])}%"
                      for name, g in groups.items()]
    return "\n".join(lines)


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:,.2f}"


def write(rt: Runtime, result) -> None:
    """DIR/metrics.json, DIR/metrics.txt and DIR/equity.png beside the journal."""
    from ports import charts  # lazy: matplotlib costs a second of start-up

    out_dir = Path(result.out_dir)
    (out_dir / "metrics.json").write_text(json.dumps(result.metrics, indent=2) + "\n")
    (out_dir / "metrics.txt").write_text(text(result.metrics) + "\n")
    if rt.journal.one("SELECT 1 AS n FROM daily_performance WHERE equity > 0 LIMIT 1"):
        charts.equity_chart(rt, out_dir / "equity.png")

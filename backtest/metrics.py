"""Backtest figures from the backtest's own journal, for the whole account and for each system in it, beside the
benchmarks of backtest/benchmarks.py over the same sessions.

The span measured starts at the close before the first TRADABLE session (the first session the system could have
bought anything; see `first_tradable_session`), for the account and every benchmark alike: a system that must
wait a year of history before it can rank is not measured over the months it could only hold cash.

- account: its equity is the `daily_performance` series written by the nightly `daily-snapshot` job (the starting
  cash before the first snapshot). A system's curve is the starting cash plus that system's realised and unrealised
  P&L, rebuilt from the sim broker's fills (systems from `trades.strategy` through each order's trade) marked at
  each session's close; the systems' P&L adds up to the account's (`systems_check`).
- CAGR: (end / start) ^ (252 / sessions) - 1; volatility: stdev of daily returns x sqrt(252); Sharpe: mean / stdev
  x sqrt(252) (risk-free rate 0); Sortino: mean / downside deviation x sqrt(252); max drawdown from the running peak.
- win rate and profit factor over closed trades (a flat trade counts as a loss); trades = closed trades.
- exposure: average invested value / equity at the nightly snapshots; turnover: filled order value (buys and sells)
  / average equity, per year.
- costs paid: per fill, from the sim broker's order `cost_rate` (half the cap tier's spread + 2 bp slippage): a fill
  that paid them is price x (1 +- rate), so it paid |fill - fill / (1 +- rate)| x qty (to a cent's rounding); limit
  fills pay none, except a marketable limit filled on arrival beyond its limit (it trades as a market order).
- dividends: the stock data carries none, so the account (and the equal-weighted benchmark) receives none.
- replay mode: `daily: decisions on completed bars` (daily data: a decision during a session sees the completed
  sessions and today's open, its market orders fill at the open) or `intraday: real bars at each moment`.
- realised P&L of closed trades by entry slot (the scan that bought: open, midday, close; a rebalance; an option
  signal), by exit reason and by the calendar year of the exit: with daily data every slot sees the same open, so a
  P&L that flips sign by time of day points at a leak.
"""
from __future__ import annotations

import itertools
import json
import logging
import math
import sqlite3
from contextlib import closing
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from backtest import benchmarks as bench
from common import render
from common.clock import NY
from common.errors import MomentumError
from core.option_math import multiplier
from flows.reports import CLOSED_STATUSES, TRADING_DAYS_PER_YEAR, annualised_caution, return_stats, trade_stats
from ports.sim_fills import SLIPPAGE

if TYPE_CHECKING:  # annotations only: the runtime module wires every port
    from flows.runtime import Runtime

log = logging.getLogger(__name__)
STARTING_CASH = 100_000.0
UNATTRIBUTED = "unattributed"  # a fill whose order names no trade
ACCOUNT_CURVE = "the journal's daily_performance equity (nightly snapshots)"
SYSTEM_CURVE = ("the starting cash plus the system's realised and unrealised P&L, marked at each session's close "
                "(costs are in the fill prices)")
NO_DIVIDENDS = "the stock data carries no dividends"
COSTS_PAID = ("reconstructed per fill from the sim broker's cost_rate: |fill - fill / (1 +- rate)| x qty for market "
              "and stop fills (and marketable limits filled beyond their limit); limit fills at their limit pay none")


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


def by_year(days: list[date], values: list[float]) -> dict[str, dict[str, float]]:
    """Change and return of a curve per calendar year (`values[0]` at the baseline close before `days[0]`)."""
    out, previous = {}, values[0] if values else None
    for year, group in itertools.groupby(zip(days, values[1:]), key=lambda pair: pair[0].year):
        last = list(group)[-1][1]
        out[str(year)] = {"pnl": round(last - previous, 2), "return_pct": (last / previous - 1) * 100}
        previous = last
    return out


def spy_curve(rt: Runtime, days: list[str]) -> list[float]:
    """SPY total return from the close before the first day, scaled to the starting cash; gaps carry forward."""
    sessions = [date.fromisoformat(day) for day in days]
    baseline = rt.calendar.previous_session(sessions[0])
    series = rt.market.market_series(baseline, sessions[-1])
    return bench.spy_total_return(series, baseline, sessions, STARTING_CASH).values


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


def exit_year(trade: dict) -> str:
    """The New York calendar year a trade closed in."""
    return str(_ny_day(trade["exit_time"]).year) if trade.get("exit_time") else "unknown"


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


def _ny_day(moment: str) -> date:
    return datetime.fromisoformat(moment).astimezone(NY).date()


# --- the span measured ----------------------------------------------------------------------------------------------

FROM_START = "window start (a momentum scan can run from its first session)"


def first_tradable_session(rt: Runtime, result, given: date | dict[str, date] | None = None,
                           system: str | None = None) -> tuple[date, str]:
    """(first tradable session, where it comes from) of the account (`system` None) or of one system: `given` (one
    date, or one per system), else the replay's (`result.first_tradable_sessions` per system,
    `result.first_tradable_session` for the account), else for momentum the window's first session (a backtest
    refuses a start without the 120 sessions of history a scan reads), else the first session with an order of
    the system (a rebalance that could rank but found nothing to buy starts later than it could have)."""
    if isinstance(given, dict):
        given = given.get(system) if system else min(given.values(), default=None)
    if given is not None:
        return _inside(given, result), "given"
    from_replay = ((getattr(result, "first_tradable_sessions", None) or {}).get(system) if system
                   else getattr(result, "first_tradable_session", None))
    if from_replay is not None:
        return _inside(from_replay, result), "replay"
    if (system or result.system) in ("momentum", "all"):
        return result.start, FROM_START
    row = rt.journal.one("SELECT MIN(o.created_at) AS at FROM orders o LEFT JOIN trades t ON t.id = o.trade_id "
                         "WHERE ? IS NULL OR t.strategy = ?", [system, system])
    if row and row["at"]:
        return _inside(_ny_day(row["at"]), result), "first session with an order"
    return result.start, "window start (no order was sent)"


def _inside(day: date, result) -> date:
    return min(max(day, result.start), result.end)


# --- fills, costs, dividends and the systems' P&L -------------------------------------------------------------------

def _broker_rows(rt: Runtime, sql: str, table: str) -> list[dict]:
    path = Path(rt.config.sim_broker_path())
    if not path.is_file():
        return []
    with closing(sqlite3.connect(path)) as conn:
        conn.row_factory = sqlite3.Row
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", [table]).fetchone():
            return []
        return [dict(row) for row in conn.execute(sql)]


def broker_fills(rt: Runtime) -> list[dict]:
    """Every fill of the sim broker with its order's type, cost rate and limit, its system and New York day."""
    rows = _broker_rows(rt, "SELECT f.id, f.symbol, f.side, f.qty, f.price, f.at, o.client_order_id, o.type, "
                            "o.cost_rate, o.limit_price, o.submitted_at FROM fills f JOIN orders o "
                            "ON o.id = f.order_id ORDER BY f.id", "fills")
    systems = {row["client_order_id"]: row["strategy"] for row in rt.journal.query(
        "SELECT o.client_order_id, t.strategy FROM orders o LEFT JOIN trades t ON t.id = o.trade_id")}
    return [{**row, "system": systems.get(row["client_order_id"]) or UNATTRIBUTED, "day": _ny_day(row["at"])}
            for row in rows]


def broker_dividends(rt: Runtime) -> list[dict]:
    """The dividends the sim broker paid (when the market data carries them), each with its ex-date as a date."""
    rows = _broker_rows(rt, "SELECT session, symbol, amount FROM dividends ORDER BY session, symbol", "dividends")
    return [{**row, "day": date.fromisoformat(row["session"])} for row in rows]


def paid_costs(fill: dict) -> bool:
    """A market, stop or trailing-stop fill, or a limit that traded on arrival beyond its limit (a market order
    then); a limit filled at its limit, or at a gapped open, paid none."""
    if fill["type"] != "limit":
        return True
    return fill["at"] == fill["submitted_at"] and fill["price"] != fill["limit_price"]


def fill_cost(fill: dict) -> tuple[float, float]:
    """(spread, slippage) in dollars one fill paid."""
    rate = fill["cost_rate"] or 0.0
    if rate <= 0 or not paid_costs(fill):
        return 0.0, 0.0
    before = fill["price"] / (1.0 + rate if fill["side"] == "buy" else 1.0 - rate)
    cost = abs(fill["price"] - before) * fill["qty"] * multiplier(fill["symbol"])
    slippage = cost * min(SLIPPAGE, rate) / rate
    return cost - slippage, slippage


def _traded_value(fills: list[dict]) -> float:
    return sum(f["qty"] * f["price"] * multiplier(f["symbol"]) for f in fills)


def costs_paid(fills: list[dict]) -> dict[str, Any]:
    parts = [fill_cost(fill) for fill in fills]
    spread, slippage = sum(p[0] for p in parts), sum(p[1] for p in parts)
    with_costs, traded = sum(paid_costs(fill) for fill in fills), _traded_value(fills)
    return {"total": round(spread + slippage, 2), "spread": round(spread, 2), "slippage": round(slippage, 2),
            "fills": len(fills), "fills_with_costs": with_costs, "fills_without_costs": len(fills) - with_costs,
            "traded_value": round(traded, 2),
            "pct_of_traded_value": (spread + slippage) / traded * 100 if traded else None}


def _holdings(fills: list[dict], columns: dict[str, int], day_index: np.ndarray, shape: tuple[int, int]
              ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(cash flow per day, shares held at each close, symbols without a column) of one system's fills; fills
    before the first day count on it, fills after the last are left out."""
    rows = np.searchsorted(day_index, np.array([f["day"] for f in fills], dtype="datetime64[D]"))
    signed = np.array([f["qty"] * multiplier(f["symbol"]) * (1 if f["side"] == "buy" else -1) for f in fills])
    prices = np.array([f["price"] for f in fills], dtype=float)
    cols = np.array([columns.get(f["symbol"], -1) for f in fills], dtype=np.int64)
    inside = rows < shape[0]
    cash, shares = np.zeros(shape[0]), np.zeros(shape)
    np.add.at(cash, rows[inside], -signed[inside] * prices[inside])
    known = inside & (cols >= 0)
    np.add.at(shares, (rows[known], cols[known]), signed[known])
    unknown = sorted({f["symbol"] for f, ok, late in zip(fills, known, ~inside) if not ok and not late})
    return cash, np.cumsum(shares, axis=0), unknown


def pnl_curves(fills: list[dict], index: np.ndarray, symbols: list[str], closes: np.ndarray, days: list[date],
               dividends: list[dict] = ()) -> dict[str, dict[str, Any]]:
    """Per system: its realised + unrealised P&L and the value it holds at the close of each of `days`, from its
    fills, the closes (dates `index` x `symbols`) and the dividends paid (to the systems holding the symbol at the
    open of the ex-date, in proportion); `missing` names a held symbol without a close (no curve then)."""
    marks = bench.carried_forward(index, closes, days)
    columns = {symbol: j for j, symbol in enumerate(symbols)}
    day_index = np.array(days, dtype="datetime64[D]")
    books = {system: _holdings([f for f in fills if f["system"] == system], columns, day_index,
                             (len(days), len(symbols))) for system in sorted({f["system"] for f in fills})}
    received = {system: np.zeros(len(days)) for system in books}
    for paid in dividends:
        row, j = int(np.searchsorted(day_index, np.datetime64(paid["day"], "D"))), columns.get(paid["symbol"])
        holders = {s: (b[1][row - 1, j] if row > 0 and j is not None and row <= len(days) else 0.0)
                   for s, b in books.items()}
        total = sum(holders.values())
        for system, shares in holders.items():
            if total > 0 and row < len(days):
                received[system][row] += paid["amount"] * shares / total
    out = {}
    for system, (cash, held, unknown) in books.items():
        unmarked = (held != 0) & ~np.isfinite(marks)
        value = (held * np.nan_to_num(marks)).sum(axis=1)
        out[system] = {"pnl": np.cumsum(cash + received[system]) + value, "value": value,
                       "dividends": float(received[system].sum()),
                       "missing": sorted({symbols[j] for j in np.flatnonzero(unmarked.any(axis=0))}) + unknown}
    return out


def _system_ledger(rt: Runtime, fills: list[dict], dividends: list[dict], days: list[date]
                   ) -> dict[str, dict[str, Any]]:
    if not fills or not days:
        return {}
    symbols = sorted({fill["symbol"] for fill in fills})
    panel = rt.market.bars(symbols, min(days[0], min(fill["day"] for fill in fills)), days[-1])
    return pnl_curves(fills, panel.dates, list(panel.symbols), np.asarray(panel.close, dtype=float), days,
                      dividends)


def _dividend_note(rt: Runtime) -> str:
    if getattr(rt.market, "carries_dividends", False):
        return "paid by the sim broker on each ex-date to the shares held at the open (in the equity)"
    return NO_DIVIDENDS


# --- the figures ----------------------------------------------------------------------------------------------------

def _closed_trades(rt: Runtime) -> list[dict]:
    return rt.journal.query(
        f"SELECT pnl, entry_order_id, strategy, exit_reason, exit_time FROM trades WHERE status IN "
        f"({', '.join('?' * len(CLOSED_STATUSES))}) AND pnl IS NOT NULL", list(CLOSED_STATUSES))


def _trade_figures(trades: list[dict]) -> dict[str, Any]:
    stats = trade_stats([t["pnl"] for t in trades])
    return {"win_rate_pct": stats["win_rate_pct"], "profit_factor": stats["profit_factor"],
            "trades": stats["trades"], "realised_pnl": stats["realised_pnl"]}


def _breakdowns(trades: list[dict], days: list[date], curve: list[float] | None) -> dict[str, Any]:
    years = {year: {"pnl": None, "return_pct": None} for year in
             sorted({str(d.year) for d in days} | {exit_year(t) for t in trades})}
    for year, change in (by_year(days, curve) if curve else {}).items():
        years[year].update(change)
    for year, realised in pnl_breakdown(trades, exit_year).items():
        years[year].update(realised_pnl=realised["pnl"], closed_trades=realised["trades"])
    return {"pnl_by_entry_slot": pnl_breakdown(trades, entry_slot),
            "pnl_by_exit_reason": pnl_breakdown(trades, lambda t: t["exit_reason"] or "unknown"),
            "pnl_by_year": years}


def _account(rt: Runtime, rows: list[dict], equity: list[float], days: list[date], trades: list[dict],
             fills: list[dict], dividends: list[dict]) -> dict[str, Any]:
    figures = series_metrics(equity)
    years = len(rows) / TRADING_DAYS_PER_YEAR
    exposures = [row["exposure"] / row["equity"] for row in rows if row["equity"]]
    traded = _traded_value([f for f in fills if days and f["day"] >= days[0]])
    figures.update(_trade_figures(trades))
    figures.update({"exposure_pct": float(np.mean(exposures)) * 100 if exposures else None,
                    "turnover": traded / float(np.mean(equity)) / years if years else None,
                    "open_trades_at_end": len(rt.journal.held_trades("id"))})
    return {"curve": ACCOUNT_CURVE, "metrics": _clean(figures), **_breakdowns(trades, days, equity),
            "costs_paid": costs_paid(fills),
            "dividends_received": {"amount": round(float(sum(d["amount"] for d in dividends)), 2),
                                   "note": _dividend_note(rt)}}


class _Span:
    """The sessions measured from one first tradable session: the account's equity on them and the benchmarks."""

    def __init__(self, rt: Runtime, start: date, source: str):
        self.start, self.source = start, source
        self.baseline = rt.calendar.previous_session(start)
        self.rows, self.days, self.equity = measured_equity(rt, self.baseline)
        self.benchmarks = bench.benchmarks(rt, self.baseline, self.days, self.equity[0]) if self.days else []

    def facts(self, source: str | None = None) -> dict[str, Any]:
        return {"first_tradable_session": str(self.start), "first_tradable_source": source or self.source,
                "measured_from": f"the close of {self.baseline}", "measured_sessions": len(self.days)}


def _system(rt: Runtime, name: str, entry: dict | None, account: _Span, span: _Span, source: str,
            trades: list[dict], fills: list[dict]) -> dict[str, Any]:
    """One system's figures over its own span: from its P&L curve when the journal gives one, else its trades."""
    figures: dict[str, Any] = series_metrics([])
    curve = None
    if entry is not None and not entry["missing"]:
        at = len(account.days) - len(span.days)  # the system's baseline in the account's sessions
        curve = [STARTING_CASH + float(v) for v in entry["pnl"][at:]]
        figures = series_metrics(curve)
        value = entry["value"][at + 1:]
        figures["exposure_pct"] = float(np.mean(value / np.asarray(span.equity[1:]))) * 100 if len(value) else None
        years = len(span.days) / TRADING_DAYS_PER_YEAR
        traded = _traded_value([f for f in fills if f["day"] >= span.start])
        figures["turnover"] = traded / float(np.mean(span.equity)) / years if years else None
    figures.update(_trade_figures(trades))
    figures["open_trades_at_end"] = len(rt.journal.held_trades("id", "strategy = ?", [name]))
    out = {**span.facts(source), "curve": SYSTEM_CURVE if curve else None, "metrics": _clean(figures),
           "benchmarks": {b.key: _clean(series_metrics([v / b.values[0] * (curve or [STARTING_CASH])[0]
                                                         for v in b.values]))
                          for b in span.benchmarks if not b.missing},
           **_breakdowns(trades, span.days, curve), "costs_paid": costs_paid(fills),
           "dividends_received": {"amount": round(entry["dividends"], 2) if entry else 0.0,
                                  "note": _dividend_note(rt)}}
    if curve is None:
        out["note"] = ("trade statistics only: no P&L curve (" + (
            "no close to mark " + ", ".join(entry["missing"][:5]) if entry else "no fills") + ")")
    return out


def _benchmark_block(benchmark: bench.Benchmark, days: list[date]) -> dict[str, Any]:
    out: dict[str, Any] = {"label": benchmark.label, "note": benchmark.note, "available": not benchmark.missing}
    if benchmark.missing:
        out["missing"] = benchmark.missing
        return out
    out["metrics"] = _clean(series_metrics(benchmark.values))
    out["return_by_year"] = {year: change["return_pct"] for year, change in by_year(days, benchmark.values).items()}
    out.update(benchmark.facts)
    return out


def measured_equity(rt: Runtime, baseline: date) -> tuple[list[dict], list[date], list[float]]:
    """The snapshots after the `baseline` close, their days, and the equity from the baseline on (the starting cash
    when no snapshot precedes it)."""
    all_rows = rt.journal.query("SELECT date, equity, exposure, exposure_pct FROM daily_performance ORDER BY date")
    before = [row for row in all_rows if row["date"] <= baseline.isoformat()]
    rows = [row for row in all_rows if row["date"] > baseline.isoformat()]
    equity = [before[-1]["equity"] if before else STARTING_CASH] + [row["equity"] for row in rows]
    return rows, [date.fromisoformat(row["date"]) for row in rows], equity


def compute(rt: Runtime, result, first_tradable: date | dict[str, date] | None = None) -> dict[str, Any]:
    """The metrics of a finished replay: the account's and each system's, the benchmarks', the run's facts.
    `first_tradable`: the first tradable session (one, or one per system) when the result does not carry it."""
    account_span = _Span(rt, *first_tradable_session(rt, result, first_tradable))
    trades, fills, dividends = _closed_trades(rt), broker_fills(rt), broker_dividends(rt)
    account = _account(rt, account_span.rows, account_span.equity, account_span.days, trades, fills, dividends)
    ledger = _system_ledger(rt, fills, dividends, [account_span.baseline, *account_span.days])
    spans = {account_span.start: account_span}
    systems = {}
    for name in sorted({t["strategy"] or UNATTRIBUTED for t in trades} | set(ledger)):
        start, source = first_tradable_session(rt, result, first_tradable, name)
        start = max(start, account_span.start)
        span = spans.get(start) or spans.setdefault(start, _Span(rt, start, source))
        systems[name] = _system(rt, name, ledger.get(name), account_span, span, source,
                                [t for t in trades if (t["strategy"] or UNATTRIBUTED) == name],
                                [f for f in fills if f["system"] == name])
    spy = next((b for b in account_span.benchmarks if b.key == "spy_total_return" and not b.missing), None)
    spy_block = series_metrics(spy.values if spy else [])
    spy_block.update({"win_rate_pct": None, "profit_factor": None, "trades": 0, "exposure_pct": 100.0,
                      "turnover": 0.0, "label": bench.SPY_TOTAL_RETURN})
    mode = replay_mode(rt.market)
    return {"replay_mode": mode, "fills": FILLS[mode], "costs": COSTS,
            "system": result.system, "start": str(result.start), "end": str(result.end),
            "sessions": result.sessions, "steps": result.steps, "failed_steps": len(result.failures),
            "settings": getattr(result, "settings", {}) or {},
            "data_through": str(result.data_through) if getattr(result, "data_through", None) else None,
            **account_span.facts(), "universe": _universe(rt),
            "metrics": account["metrics"], "spy_buy_and_hold": _clean(spy_block),
            "pnl_by_entry_slot": account["pnl_by_entry_slot"], "pnl_by_exit_reason": account["pnl_by_exit_reason"],
            "pnl_by_year": account["pnl_by_year"], "costs_paid": account["costs_paid"],
            "costs_paid_method": COSTS_PAID, "dividends_received": account["dividends_received"],
            "benchmarks": {b.key: _benchmark_block(b, account_span.days) for b in account_span.benchmarks},
            "account": account, "systems": systems, "systems_check": _systems_check(ledger, account_span.equity)}


def _systems_check(ledger: dict[str, dict], equity: list[float]) -> dict[str, Any]:
    """How far the systems' P&L added up lies from the account's equity change (dollars, worst session)."""
    if not ledger or any(entry["missing"] for entry in ledger.values()):
        return {"max_difference": None, "note": "not every system's curve could be built"}
    total = sum(entry["pnl"] for entry in ledger.values())
    difference = np.asarray(equity) - STARTING_CASH - total
    return {"max_difference": round(float(np.max(np.abs(difference))), 2),
            "note": "account equity - starting cash - the systems' P&L, at each measured close"}


def _universe(rt: Runtime) -> str:
    try:
        return bench.universe_text(rt)
    except MomentumError as err:  # a universe that cannot be read must not lose the metrics
        log.warning("universe not described: %s", err)
        return f"not described ({err})"


def _clean(values: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()}


# --- text -----------------------------------------------------------------------------------------------------------

# each figure of the comparison: its label and how it prints (common/render's convention: a change signed with its
# % sign, a level unsigned with it, money in dollars, a ratio or a count as a plain number; no label carries the %)
LABELS = {"cagr_pct": ("CAGR", render.pct), "volatility_pct": ("volatility", render.level),
          "sharpe": ("Sharpe", None), "sortino": ("Sortino", None),
          "max_drawdown_pct": ("max drawdown", render.pct), "win_rate_pct": ("win rate", render.level),
          "profit_factor": ("profit factor", None), "exposure_pct": ("exposure", render.level),
          "turnover": ("turnover / year", None), "trades": ("closed trades", None),
          "total_return_pct": ("total return", render.pct), "end_value": ("end equity", render.money)}
SHORT_NAMES = {"spy_total_return": "SPY buy&hold", "spy_price_return": "SPY price only",
               "equal_weighted_universe": "EW universe"}


def text(data: dict[str, Any]) -> str:
    """The metrics: the account beside the benchmarks, each system, calendar years, costs, P&L breakdowns."""
    lines = [f"replay mode: {data.get('replay_mode', DAILY_MODE)}",
             (f"backtest {data['system']} {data['start']} .. {data['end']}: {data['sessions']} sessions, "
             f"{data['steps']} steps, {data['failed_steps']} failed"),
             f"fills: {data.get('fills', FILLS[DAILY_MODE])}; costs: {data.get('costs', COSTS)}"]
    if "first_tradable_session" in data:
        lines.append(f"measured from {data['measured_from']} ({data['measured_sessions']} sessions): first "
                     f"tradable session {data['first_tradable_session']} ({data['first_tradable_source']})")
        lines.append(f"universe: {data['universe']}")
    caution = annualised_caution(data.get("measured_sessions") or data.get("sessions") or 0,
                                 "CAGR, volatility, Sharpe, Sortino and turnover are annualised")
    if caution:
        lines.append(f"CAUTION: {caution}")
    lines += _comparison_lines(data) + _system_lines(data) + _year_lines(data) + _cost_lines(data)
    for title, key in (("entry slot", "pnl_by_entry_slot"), ("exit reason", "pnl_by_exit_reason")):
        groups = data.get(key) or {}
        if groups:
            lines.append(f"realised P&L by {title}:")
            lines += _columns([title, "trades", "realised", "win rate"],
                              [[name, str(g["trades"]), render.money(g["pnl"]), render.level(g["win_rate_pct"])]
                               for name, g in groups.items()])
    return "\n".join(lines)


def _columns(headers: list[str], rows: list[list[str]], indent: str = "  ", gap: int = 3) -> list[str]:
    """Formatted figures under their headers: the first column left-aligned, the others right-aligned."""
    return render.aligned(headers, rows, [False] + [True] * (len(headers) - 1), indent=indent, gap=gap)


def _comparison_lines(data: dict[str, Any]) -> list[str]:
    shown = {key: b for key, b in (data.get("benchmarks") or {}).items() if b.get("available")}
    columns = [("SPY buy&hold", data["spy_buy_and_hold"])] + [
        (SHORT_NAMES.get(key, key), b["metrics"]) for key, b in shown.items() if key != "spy_total_return"]
    lines = _columns(["metric", data["system"], *[name for name, _ in columns]],
                     [[label, (form or _fmt)(data["metrics"].get(key)),
                       *[(form or _fmt)(values.get(key)) for _, values in columns]]
                      for key, (label, form) in LABELS.items()],
                     indent="", gap=4)
    for key, b in (data.get("benchmarks") or {}).items():
        name = SHORT_NAMES.get(key, key)
        if not b.get("available"):
            lines.append(f"{b['label']}: {b.get('missing')}")
            continue
        extra = (f" ({b['symbols']} of {b['universe_symbols']} universe symbols, {b['data_ended']} sold at their "
                 f"last close when their data ended)" if "symbols" in b else "")
        lines.append(f"{name}: {b['label']}: {b['note']}{extra}")
    return lines


def _system_lines(data: dict[str, Any]) -> list[str]:
    systems = data.get("systems") or {}
    if not systems:
        return []
    check = (data.get("systems_check") or {}).get("max_difference")
    lines = [("by system: each from its own first tradable session, its curve the starting cash + its P&L marked at "
             f"each close (the systems' P&L adds up to the account's within {render.money(check)}):")]
    rows, notes = [], {}
    for name, system in systems.items():
        m, b = system["metrics"], system.get("benchmarks") or {}
        rows.append([name, system["first_tradable_session"], render.pct(m.get("total_return_pct")),
                     render.pct(m.get("cagr_pct")), render.pct(m.get("max_drawdown_pct")),
                     render.pct(b.get("spy_total_return", {}).get("total_return_pct")),
                     render.pct(b.get("equal_weighted_universe", {}).get("total_return_pct")), str(m["trades"]),
                     render.level(m.get("win_rate_pct")), render.money(m.get("realised_pnl")),
                     render.money(system["costs_paid"]["total"])])
        if system.get("note"):
            notes[len(rows)] = f"    {system['note']}"  # under its system's line
    table = _columns(["system", "from", "total", "CAGR", "max dd", "SPY TR", "EW", "trades", "win rate",
                      "realised", "costs"], rows, gap=2)
    lines.append(table[0])
    for n, row_line in enumerate(table[1:], start=1):
        lines.append(row_line)
        if n in notes:
            lines.append(notes[n])
    return lines


def _year_lines(data: dict[str, Any]) -> list[str]:
    years = data.get("pnl_by_year") or {}
    if not years:
        return []
    shown = [(SHORT_NAMES.get(key, key), b["return_by_year"]) for key, b in (data.get("benchmarks") or {}).items()
             if b.get("available")]
    return ["calendar years (returns, realised P&L of the trades closed in the year):"] + _columns(
        ["year", "account", *[name for name, _ in shown], "realised"],
        [[year, render.pct(row.get("return_pct")), *[render.pct(returns.get(year)) for _, returns in shown],
          render.money(row.get("realised_pnl"))] for year, row in years.items()], gap=4)


def _cost_lines(data: dict[str, Any]) -> list[str]:
    costs = data.get("costs_paid")
    if not costs:
        return []
    dividends = data.get("dividends_received") or {}
    return [(f"costs paid: {render.money(costs['total'])} (spread {render.money(costs['spread'])}, slippage "
            f"{render.money(costs['slippage'])}) on {costs['fills_with_costs']} of {costs['fills']} fills, "
            f"{render.level(costs['pct_of_traded_value'], 2)} of the value traded"),
            f"dividends received: {render.money(dividends.get('amount'))} ({dividends.get('note')})"]


def _fmt(value) -> str:
    """A ratio or a count: a plain number."""
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    shown = f"{value:,.2f}"
    return "0.00" if shown == "-0.00" else shown  # a loss that rounds to nothing is no loss on the page


def write(rt: Runtime, result) -> None:
    """DIR/metrics.json, DIR/metrics.txt and DIR/equity.png beside the journal."""
    from ports import charts  # lazy: matplotlib costs a second of start-up

    out_dir = Path(result.out_dir)
    (out_dir / "metrics.json").write_text(json.dumps(result.metrics, indent=2) + "\n")
    (out_dir / "metrics.txt").write_text(text(result.metrics) + "\n")
    if rt.journal.one("SELECT 1 AS n FROM daily_performance WHERE equity > 0 LIMIT 1"):
        days, curves = chart_curves(rt, result.metrics)
        charts.equity_chart(rt, out_dir / "equity.png", curves=curves, days=days)


def chart_curves(rt: Runtime, data: dict[str, Any]) -> tuple[list[date], dict[str, list[float]]]:
    """The account's equity and every available benchmark from the close before the first tradable session."""
    baseline = rt.calendar.previous_session(date.fromisoformat(data["first_tradable_session"]))
    _, days, equity = measured_equity(rt, baseline)
    if not days:
        return [], {}
    curves = {f"account ({data['system']})": equity}
    for benchmark in bench.benchmarks(rt, baseline, days, equity[0]):
        if not benchmark.missing:
            curves[benchmark.label] = benchmark.values
    return [baseline, *days], curves

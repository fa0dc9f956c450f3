"""What a backtest is measured against, over the sessions it could trade, each scaled to the same starting value.

Every curve starts at the close before the system's first TRADABLE session (the first session it could have
bought anything: for momentum the first session a scan can run, for the rebalance its first rebalance day with a
year of history to rank), so months a system must sit in cash are not counted against it, nor for the benchmark.
Values are taken at each session's close; a missing close carries the last one forward. No benchmark pays costs.

- SPY total return: the market file's `spy_close`, which is split- AND dividend-adjusted (dividends reinvested).
- SPY price return: only from a source that carries it, a raw close (`spy_close_raw`) or the cash dividends
  (`spy_dividend`, per share on the ex-date, beside a back-adjusted `spy_close`); otherwise unavailable, and said so.
  It is never imitated from the adjusted series.
- equal-weighted universe (price only): every universe symbol (a point-in-time universe: its members on that day)
  with a bar at the first tradable session, bought at equal weight (fractional shares) at the close before it and
  held; a symbol whose data ends is sold at its last close into cash. The stock data is split-adjusted but carries
  no dividends, exactly like the prices the system trades on, so this is the like-for-like benchmark of the stock
  picking. (Stock data with a `dividend` column is
  paid to the account by the sim broker; the benchmark then keeps the same dividends as cash, and says so.)
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from common.errors import MomentumError

if TYPE_CHECKING:  # annotations only: the runtime module wires every port
    from flows.runtime import Runtime

log = logging.getLogger(__name__)

SPY_TOTAL_RETURN = "SPY total return"
SPY_PRICE_RETURN = "SPY price return"
EQUAL_WEIGHTED = "equal-weighted universe (price only)"
EQUAL_WEIGHTED_CASH = "equal-weighted universe (dividends kept as cash)"
SPY_TOTAL_NOTE = "the market file's spy_close: split- and dividend-adjusted, dividends reinvested; no costs"
SPY_PRICE_MISSING = "not in the data (the SPY series is dividend-adjusted)"
EQUAL_WEIGHTED_NOTE = ("every universe symbol with a bar at the first tradable session, equal weight at the close "
                       "before it, held (a symbol whose data ends is sold at its last close into cash); prices "
                       "split-adjusted without dividends, like the prices the system trades on; no costs")
PRICE_LOOKBACK_DAYS = 45  # calendar days searched back for a symbol's last close before the baseline (data gaps)


@dataclass
class Benchmark:
    """One benchmark curve: `values[0]` at the baseline close, then one value per session of `days`; no values
    and a `missing` reason when the data cannot give it."""

    key: str
    label: str
    note: str
    values: list[float] = field(default_factory=list)
    missing: str | None = None
    facts: dict[str, Any] = field(default_factory=dict)


# --- pure curves ----------------------------------------------------------------------------------------------------

def carried_forward(index: np.ndarray, values: np.ndarray, days: list[date]) -> np.ndarray:
    """Rows of `values` (dates `index` x columns) at each of `days`: the last finite value at or before the day
    (NaN before the first)."""
    filled = pd.DataFrame(values).ffill().to_numpy()
    at = np.searchsorted(np.asarray(index, dtype="datetime64[D]"),
                         np.array(days, dtype="datetime64[D]"), side="right") - 1
    out = filled[np.maximum(at, 0)]
    out[at < 0] = np.nan
    return out


def scaled_curve(index: np.ndarray, closes: np.ndarray, baseline: date, days: list[date],
                 start_value: float) -> list[float]:
    """A buy-and-hold of one series from the baseline close, worth `start_value` there; [] without a baseline."""
    at = carried_forward(index, np.asarray(closes, dtype=float).reshape(-1, 1), [baseline, *days])[:, 0]
    if not np.isfinite(at[0]) or at[0] <= 0:
        return []
    return [float(v) for v in start_value * at / at[0]]


def raw_from_adjusted(adjusted: np.ndarray, dividend: np.ndarray) -> np.ndarray:
    """Raw closes from back-adjusted closes and the cash dividend per share on each ex-date (0 elsewhere), the last
    row being unadjusted. Before an ex-date t the adjustment multiplies by (1 - D_t / raw_{t-1}), which gives
    raw_{t-1} = adjusted_{t-1} / factor_t + D_t, walking back from the end."""
    raw = np.empty(len(adjusted))
    factor = 1.0
    for t in range(len(adjusted) - 1, -1, -1):
        raw[t] = adjusted[t] / factor
        if t > 0 and dividend[t] > 0:
            before = adjusted[t - 1] / factor + dividend[t]
            factor *= 1.0 - dividend[t] / before
    return raw


def equal_weighted(index: np.ndarray, symbols: list[str], closes: np.ndarray, baseline: date, days: list[date],
                   start_value: float, dividends: dict[tuple[str, date], float] | None = None) -> Benchmark:
    """The equal-weighted buy-and-hold of `symbols` (closes: dates `index` x symbols), see the module text; with
    `dividends` (cash per share on each ex-date, when the data carries them) they are kept as cash."""
    index = np.asarray(index, dtype="datetime64[D]")
    first_row = np.flatnonzero(index == np.datetime64(days[0], "D"))
    traded_first = (np.isfinite(closes[first_row[0]]) if len(first_row)
                    else np.zeros(len(symbols), dtype=bool))
    marks = carried_forward(index, closes, [baseline, *days])
    bought = traded_first & np.isfinite(marks[0]) & (marks[0] > 0)
    out = Benchmark("equal_weighted_universe", EQUAL_WEIGHTED, EQUAL_WEIGHTED_NOTE)
    if not bought.any():
        out.missing = f"no universe symbol has a bar on {days[0]} and a close before it"
        return out
    shares = start_value / bought.sum() / marks[0, bought]
    cash = np.zeros(len(days) + 1)
    if dividends is not None:
        out.label, out.note = EQUAL_WEIGHTED_CASH, EQUAL_WEIGHTED_NOTE.replace("without dividends", "with the "
                                                                             "data's dividends kept as cash")
        held = dict(zip(np.asarray(symbols)[bought], shares))
        for (symbol, day), per_share in dividends.items():
            if symbol in held and baseline < day <= days[-1]:
                cash[1 + np.searchsorted(np.array(days, dtype="datetime64[D]"), np.datetime64(day, "D"))] += (
                    held[symbol] * per_share)
    out.values = [float(v) for v in marks[:, bought] @ shares + np.cumsum(cash)]
    last_seen = _last_finite_dates(index, closes[:, bought])
    ended = [s for s, last in zip(np.asarray(symbols)[bought], last_seen) if last < np.datetime64(days[-1], "D")]
    out.facts = {"symbols": int(bought.sum()), "universe_symbols": len(symbols),
                 "left_out": int(len(symbols) - bought.sum()), "data_ended": len(ended),
                 "data_ended_symbols": sorted(str(s) for s in ended)}
    return out


def _last_finite_dates(index: np.ndarray, closes: np.ndarray) -> np.ndarray:
    finite = np.isfinite(closes)
    last_row = len(index) - 1 - np.argmax(finite[::-1], axis=0)
    return index[last_row]


def spy_total_return(series: pd.DataFrame, baseline: date, days: list[date], start_value: float) -> Benchmark:
    out = Benchmark("spy_total_return", SPY_TOTAL_RETURN, SPY_TOTAL_NOTE)
    out.values = scaled_curve(series.index.values, series["spy_close"].to_numpy(), baseline, days, start_value)
    if not out.values:
        out.missing = f"no SPY close on or before {baseline}"
    return out


def spy_price_return(series: pd.DataFrame, baseline: date, days: list[date], start_value: float) -> Benchmark:
    """From `spy_close_raw`, else from `spy_dividend` beside the adjusted close (the series must run to the last
    row of its file, whose close is unadjusted), else unavailable."""
    out = Benchmark("spy_price_return", SPY_PRICE_RETURN, "")
    if "spy_close_raw" in series:
        raw, out.note = series["spy_close_raw"].to_numpy(dtype=float), "the market file's spy_close_raw; no costs"
    elif "spy_dividend" in series:
        adjusted = series["spy_close"].to_numpy(dtype=float)
        dividend = np.nan_to_num(series["spy_dividend"].to_numpy(dtype=float))
        raw = raw_from_adjusted(adjusted, dividend)
        out.note = "spy_close with the market file's spy_dividend taken back out; no costs"
    else:
        out.missing = SPY_PRICE_MISSING
        return out
    out.values = scaled_curve(series.index.values, raw, baseline, days, start_value)
    if not out.values:
        out.missing = f"no raw SPY close on or before {baseline}"
    return out


# --- from the runtime -----------------------------------------------------------------------------------------------

def universe_text(rt: Runtime) -> str:
    """What the universe is: its own description when it has one (a point-in-time universe), else the file."""
    universe = rt.universe
    describe = getattr(universe, "describe", None)
    if callable(describe):
        return str(describe())
    return (f"today's members: {rt.config.universe_file} ({len(universe.symbols('all'))} symbols), not the "
            f"membership of the day (survivors only)")


def universe_on(universe, day: date) -> list[str]:
    """The universe's symbols on `day`: a point-in-time universe's members of that day (not of the day the metrics
    are computed on), a fixed universe's one list."""
    if getattr(universe, "point_in_time", False):
        return universe.symbols("all", on=day)
    return universe.symbols("all")


def benchmarks(rt: Runtime, baseline: date, days: list[date], start_value: float) -> list[Benchmark]:
    """SPY total return, SPY price return and the equal-weighted universe over `days` from the `baseline` close."""
    series = _market_series(rt, baseline, days[-1])
    if series is None:
        spy = [Benchmark(key, label, "", missing="no SPY series in the market data")
               for key, label in (("spy_total_return", SPY_TOTAL_RETURN), ("spy_price_return", SPY_PRICE_RETURN))]
    else:
        spy = [spy_total_return(series, baseline, days, start_value),
               spy_price_return(series, baseline, days, start_value)]
    return [*spy, _equal_weighted(rt, baseline, days, start_value)]


def _market_series(rt: Runtime, baseline: date, last: date) -> pd.DataFrame | None:
    try:
        series = rt.market.market_series(baseline - timedelta(days=PRICE_LOOKBACK_DAYS), last)
        if "spy_dividend" in series and "spy_close_raw" not in series:
            # undoing the adjustment walks back from the file's last row, which only the whole series reaches
            series = rt.market.market_series(baseline - timedelta(days=PRICE_LOOKBACK_DAYS), date(9999, 12, 31))
    except MomentumError as err:
        log.warning("benchmarks: no SPY series (%s)", err)
        return None
    return series


def _equal_weighted(rt: Runtime, baseline: date, days: list[date], start_value: float) -> Benchmark:
    try:
        symbols = universe_on(rt.universe, days[0])
        panel = rt.market.bars(symbols, baseline - timedelta(days=PRICE_LOOKBACK_DAYS), days[-1])
        dividends = (rt.market.dividends(symbols, baseline, days[-1])
                     if getattr(rt.market, "carries_dividends", False) else None)
    except MomentumError as err:
        return Benchmark("equal_weighted_universe", EQUAL_WEIGHTED, EQUAL_WEIGHTED_NOTE, missing=str(err))
    return equal_weighted(panel.dates, list(panel.symbols), np.asarray(panel.close, dtype=float), baseline, days,
                          start_value, dividends)

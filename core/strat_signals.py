"""STRAT signals (SPEC section 12): bar types, the four patterns and their quality filters, on daily or weekly bars.

Bar types, each bar against the bar before it (vectorised over a days x symbols panel):
  1  inside   high <= previous high and low >= previous low (equal counts as inside)
  2U          high >  previous high and low >= previous low
  2D          low  <  previous low  and high <= previous high
  3  outside  high >  previous high and low <  previous low

Patterns end on a trigger bar t of type 2U (bullish) or 2D (bearish):
  2-1-2, 3-1-2   bar t-2 is 2U/2D (or 3), bar t-1 is an inside bar, bar t breaks out of it;
  2-2, 3-2       bar t-1 is 2U/2D (or 3), bar t breaks out of it.
The levels, alike for every pattern: the entry trigger is the extreme of bar t-1 that bar t broke (its high for a
bullish signal, its low for a bearish one), the stop is the other extreme of bar t-1, and the target (magnitude) is
the first earlier high above the entry (bullish) or low below it (bearish), looking back from bar t-2 over at most
TARGET_LOOKBACK bars. A pattern is a continuation when its first bar points the trigger's way and a reversal when it
points the other way; a 3 bar points the way of its own candle (close >= open is up).
Quality filters: magnitude (|target - entry| / entry) >= 0.5% and reward:risk (|target - entry| / |entry - stop|)
>= 1.0; a pattern without a target inside the lookback is no signal.

Weekly bars (1W) are built from the daily bars of completed sessions, Monday to Friday; the week being traded is
left out until its last session has closed. A weekly bar is dated by its last session.

The last signal reads BARS_READ bars: the trigger bar t, the bar t-1 that gives entry and stop, and the target's look
back from t-2 (bar t-2's type also reads t-3, inside that span). A split, spin-off, special dividend or bad print in
those bars makes its levels lie (ARNC's spin-off of 2016-11-01 gave a weekly target 53.8% away at R:R 4.65), so
`data_faults` names the symbols whose daily bars show one there (core/corporate_actions.py), and the scan skips them.

The `strat scan` run that stores, alerts and trades these signals is flows/strat_scan.py.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date
from typing import Sequence

import numpy as np

from common.clock import calendar
from common.types import Panel
from core import corporate_actions

log = logging.getLogger(__name__)

UNKNOWN, INSIDE, UP, DOWN, OUTSIDE = 0, 1, 2, -2, 3
LABELS = {INSIDE: "1", UP: "2U", DOWN: "2D", OUTSIDE: "3", UNKNOWN: "-"}
TIMEFRAMES = ("1D", "1W")
TARGET_LOOKBACK = 20
MIN_MAGNITUDE_PCT = 0.5
MIN_REWARD_RISK = 1.0
HISTORY_SESSIONS = {"1D": 60, "1W": 160}
BARS_READ = TARGET_LOOKBACK + 2  # the bars t-21 .. t that the last signal reads
BULLISH, BEARISH = "bullish", "bearish"


# --- bar types ----------------------------------------------------------------------------------------------------

def classify(high: np.ndarray, low: np.ndarray) -> np.ndarray:
    """Bar types (codes INSIDE, UP, DOWN, OUTSIDE) of a days x symbols panel; UNKNOWN for the first row and NaNs."""
    high, low = np.asarray(high, dtype=float), np.asarray(low, dtype=float)
    types = np.zeros(high.shape, dtype=np.int8)
    if high.shape[0] < 2:
        return types
    higher = high[1:] > high[:-1]
    lower = low[1:] < low[:-1]
    body = np.where(higher & lower, OUTSIDE, np.where(higher, UP, np.where(lower, DOWN, INSIDE)))
    known = np.isfinite(high[1:]) & np.isfinite(low[1:]) & np.isfinite(high[:-1]) & np.isfinite(low[:-1])
    types[1:] = np.where(known, body, UNKNOWN)
    return types


def labels(types: np.ndarray) -> np.ndarray:
    return np.vectorize(LABELS.get, otypes=[object])(types)


# --- patterns -----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Signal:
    symbol: str
    timeframe: str
    pattern: str  # 2-1-2, 3-1-2, 2-2, 3-2
    direction: str  # bullish or bearish
    kind: str  # continuation or reversal
    bar_date: str  # the trigger bar's date (ISO)
    entry_trigger: float
    target: float
    stop: float
    magnitude_pct: float
    reward_risk: float

    @property
    def bullish(self) -> bool:
        return self.direction == BULLISH


def _shift(values: np.ndarray, by: int, fill=np.nan) -> np.ndarray:
    """values[t - by] at row t (rows before `by` get `fill`)."""
    out = np.full_like(values, fill)
    if by < values.shape[0]:
        out[by:] = values[:values.shape[0] - by]
    return out


def _targets(high: np.ndarray, low: np.ndarray, entry: np.ndarray, bullish: np.ndarray,
             lookback: int) -> np.ndarray:
    """The first high above (bullish) / low below (bearish) the entry, scanning back from bar t-2."""
    target = np.full(entry.shape, np.nan)
    for back in range(2, 2 + lookback):
        earlier_high, earlier_low = _shift(high, back), _shift(low, back)
        beyond = np.where(bullish, earlier_high > entry, earlier_low < entry)
        take = np.isnan(target) & beyond
        target = np.where(take, np.where(bullish, earlier_high, earlier_low), target)
    return target


def pattern_table(open_: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray,
                  lookback: int = TARGET_LOOKBACK) -> dict[str, np.ndarray]:
    """Every pattern at every bar of a days x symbols panel, as arrays of the same shape.

    `pattern` holds "" where none ends; the two families cannot both match one bar (bar t-1 is an inside bar in
    one and a 2 or 3 in the other).
    """
    types = classify(high, low)
    up_candle = close >= open_
    prev1, prev2 = _shift(types, 1, 0), _shift(types, 2, 0)
    trigger_up, trigger_down = types == UP, types == DOWN
    triggered = trigger_up | trigger_down
    inside_family = triggered & (prev1 == INSIDE) & np.isin(prev2, (UP, DOWN, OUTSIDE))
    two_family = triggered & np.isin(prev1, (UP, DOWN, OUTSIDE))
    first = np.where(inside_family, prev2, prev1)
    first_candle_up = np.where(inside_family, _shift(up_candle, 2, False), _shift(up_candle, 1, False))
    first_up = np.where(first == OUTSIDE, first_candle_up, first == UP)
    pattern = np.full(types.shape, "", dtype=object)
    pattern[inside_family & (np.abs(prev2) == 2)] = "2-1-2"
    pattern[inside_family & (prev2 == OUTSIDE)] = "3-1-2"
    pattern[two_family & (np.abs(prev1) == 2)] = "2-2"
    pattern[two_family & (prev1 == OUTSIDE)] = "3-2"
    high1, low1 = _shift(high, 1), _shift(low, 1)
    entry = np.where(trigger_up, high1, low1)
    stop = np.where(trigger_up, low1, high1)
    target = _targets(high, low, entry, trigger_up, lookback)
    with np.errstate(invalid="ignore", divide="ignore"):
        magnitude_pct = np.abs(target - entry) / entry * 100.0
        reward_risk = np.abs(target - entry) / np.abs(entry - stop)
    return {"types": types, "pattern": pattern, "bullish": trigger_up, "continuation": first_up == trigger_up,
            "entry": entry, "stop": stop, "target": target, "magnitude_pct": magnitude_pct,
            "reward_risk": reward_risk}


def find_signals(dates: np.ndarray, symbols: Sequence[str], open_: np.ndarray, high: np.ndarray,
                 low: np.ndarray, close: np.ndarray, timeframe: str, *, last_only: bool = True,
                 min_magnitude_pct: float = MIN_MAGNITUDE_PCT,
                 min_reward_risk: float = MIN_REWARD_RISK) -> list[Signal]:
    """Signals that pass the quality filters, on the last bar only (the scan) or on every bar."""
    table = pattern_table(open_, high, low, close)
    with np.errstate(invalid="ignore"):
        passes = ((table["pattern"] != "") & np.isfinite(table["target"])
                  & (table["magnitude_pct"] >= min_magnitude_pct - 1e-9)
                  & (table["reward_risk"] >= min_reward_risk - 1e-9))
    if last_only:
        passes[:-1] = False
    found = []
    for i, j in zip(*np.nonzero(passes)):
        bullish = bool(table["bullish"][i, j])
        found.append(Signal(
            symbol=symbols[j], timeframe=timeframe, pattern=str(table["pattern"][i, j]),
            direction=BULLISH if bullish else BEARISH,
            kind="continuation" if table["continuation"][i, j] else "reversal",
            bar_date=str(np.datetime64(dates[i], "D")), entry_trigger=round(float(table["entry"][i, j]), 4),
            target=round(float(table["target"][i, j]), 4), stop=round(float(table["stop"][i, j]), 4),
            magnitude_pct=round(float(table["magnitude_pct"][i, j]), 4),
            reward_risk=round(float(table["reward_risk"][i, j]), 4)))
    return sorted(found, key=lambda s: (s.bar_date, s.symbol, s.pattern))


# --- weekly bars --------------------------------------------------------------------------------------------------

def weekly_panel(daily: Panel, complete_through: date | None = None) -> Panel:
    """Monday-Friday bars from daily bars; a week whose last session is after `complete_through` is left out.

    `complete_through` is the last completed session; None keeps every week whose data reaches its Friday (or the
    last session before it).
    """

    if len(daily.dates) == 0:
        return daily
    days = daily.dates.astype("datetime64[D]").astype(date)
    weeks = np.array([d.isocalendar()[:2] for d in days])
    starts = np.flatnonzero(np.r_[True, np.any(weeks[1:] != weeks[:-1], axis=1)])
    ends = np.r_[starts[1:] - 1, len(days) - 1]
    last_day = days[ends[-1]]
    week_done = calendar().next_session(last_day).isocalendar()[:2] != last_day.isocalendar()[:2]
    if complete_through is not None:
        week_done = week_done and last_day <= complete_through
    if not week_done:
        starts, ends = starts[:-1], ends[:-1]
    if len(starts) == 0:
        return Panel(daily.dates[:0], daily.symbols, *(getattr(daily, n)[:0] for n in
                                                          ("open", "high", "low", "close", "volume")))
    with np.errstate(invalid="ignore"):
        high = np.fmax.reduceat(daily.high, starts, axis=0)
        low = np.fmin.reduceat(daily.low, starts, axis=0)
    volume = np.add.reduceat(np.nan_to_num(daily.volume), starts, axis=0)
    return Panel(daily.dates[ends], daily.symbols, daily.open[starts], high, low, daily.close[ends], volume)


# --- data that lies -----------------------------------------------------------------------------------------------

def data_faults(daily: Panel, bars: Panel) -> dict[str, str]:
    """Symbols whose last signal would read a corporate action or a bad print, each with the reason.

    `bars` are the scan's bars (daily, or weekly bars built from `daily`); the events are found in `daily` over the
    sessions after the bar before the last BARS_READ bars, so a week still trading counts too. The first sessions of
    `daily` serve as the events' baselines.
    """
    if len(bars.dates) == 0 or len(daily.dates) == 0:
        return {}
    if len(bars.dates) > BARS_READ:
        lookback = int((daily.dates > bars.dates[-BARS_READ - 1]).sum())
    else:
        lookback = len(daily.dates)
    reasons = corporate_actions.recent_reasons(daily, lookback)
    return {symbol: reason for symbol, reason in zip(daily.symbols, reasons) if reason is not None}

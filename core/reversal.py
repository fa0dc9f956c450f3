"""The 0-13 reversal score of held positions (SPEC section 8), vectorised across symbols.

Today's bar is the snapshot: "close" means the current price, today's high and low are the high and low so far,
and the volume is time-normalised by the intraday profile before it is compared with the 20-day average (before
the close of a DAILY snapshot, which has no volume so far, the last completed session's volume surge stands in, as
in the scanner; its high and low so far are the open). SMAs,
RSI14 and the MACD histogram are computed over the daily history plus today's price as the latest value (the same
convention as the scanner); yesterday is the last completed session of the history. A signal whose inputs are
missing (too little history, a missing bar) is False, so broken data never raises a score by itself; a symbol
without a valid price today scores 0 and carries a skip_reason.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from common.types import Panel, Snapshot
from core import indicators
from scanner import (
    above,
    align_history,
    at_least,
    at_most,
    average_volume,
    below,
    intraday_strength,
    last_session_surge,
    prepared_for,
    volume_surge,
    window_min_count,
)

REVERSAL_WEIGHTS: dict[str, int] = {
    "below_sma5": 1,
    "below_sma10": 1,
    "below_sma20": 2,
    "lower_high_lower_low": 1,
    "close_bottom_quartile": 1,
    "bearish_engulfing": 1,
    "rsi_below_45": 1,
    "macd_turned_negative": 1,
    "down_day_high_volume": 2,
    "gap_down": 1,
    "off_peak": 1,
}
MAX_REVERSAL_SCORE = sum(REVERSAL_WEIGHTS.values())  # 13
HIGH_VOLUME_MULTIPLE = 1.5
GAP_DOWN_FACTOR = 0.98
OFF_PEAK_FACTOR = 0.97
RSI_WEAK = 45.0
BOTTOM_QUARTILE = 0.25


def _peaks(highest_close_since_entry: Mapping[str, float] | np.ndarray | list, symbols: list[str]) -> np.ndarray:
    """Highest close since entry per snapshot symbol (NaN for a symbol the mapping does not name)."""
    if isinstance(highest_close_since_entry, Mapping):
        return np.array([highest_close_since_entry.get(symbol, np.nan) for symbol in symbols], dtype=float)
    return np.asarray(highest_close_since_entry, dtype=float)


@dataclass(frozen=True)
class History:
    """What the reversal score needs from the completed sessions before `session`, per symbol of `symbols`
    (prepared once a session, then combined with each snapshot, as the scanner's history)."""

    session: date
    symbols: list[str]
    rows: int
    sma5: indicators.SmaTail
    sma10: indicators.SmaTail
    sma20: indicators.SmaTail
    macd: indicators.MacdState
    rsi: indicators.RsiState
    yesterday_open: np.ndarray
    yesterday_high: np.ndarray
    yesterday_low: np.ndarray
    yesterday_close: np.ndarray
    avg_volume: np.ndarray
    last_surge: np.ndarray


def prepare(history: Panel, session: date, symbols: Sequence[str]) -> History:
    bars = align_history(history, session, symbols)
    rows = bars.close.shape[0]
    yesterday = {name: getattr(bars, name)[-1] if rows else np.full(len(symbols), np.nan)
                 for name in ("open", "high", "low", "close")}
    return History(session=session, symbols=list(symbols), rows=rows,
                   sma5=indicators.sma_tail(bars.close, 5), sma10=indicators.sma_tail(bars.close, 10),
                   sma20=indicators.sma_tail(bars.close, 20), macd=indicators.macd_state(bars.close),
                   rsi=indicators.rsi_state(bars.close, 14), avg_volume=average_volume(bars),
                   last_surge=last_session_surge(bars),
                   **{f"yesterday_{name}": values for name, values in yesterday.items()})


def _trend_signals(history: History, price: np.ndarray) -> dict[str, np.ndarray]:
    moving_average = {n: indicators.sma_step(tail, price, window_min_count(n))
                      for n, tail in ((5, history.sma5), (10, history.sma10), (20, history.sma20))}
    histogram = indicators.macd_step(history.macd, price)
    previous_two = (history.macd.recent_histogram if history.rows >= 2
                    else np.full((2, len(price)), np.nan))
    with np.errstate(invalid="ignore"):
        turned = (histogram < 0) & (previous_two >= 0).any(axis=0)
    return {
        "below_sma5": below(price, moving_average[5]),
        "below_sma10": below(price, moving_average[10]),
        "below_sma20": below(price, moving_average[20]),
        "rsi_below_45": below(indicators.rsi_step(history.rsi, price), RSI_WEAK),
        "macd_turned_negative": turned,
    }


def _candle_signals(history: History, snap: Snapshot) -> dict[str, np.ndarray]:
    price, open_ = np.asarray(snap.price, dtype=float), np.asarray(snap.open, dtype=float)
    high, low = np.asarray(snap.high, dtype=float), np.asarray(snap.low, dtype=float)
    yesterday_up = above(history.yesterday_close, history.yesterday_open)
    return {
        "lower_high_lower_low": below(high, history.yesterday_high) & below(low, history.yesterday_low),
        "close_bottom_quartile": at_most(intraday_strength(price, high, low), BOTTOM_QUARTILE),
        "bearish_engulfing": (yesterday_up & below(price, open_) & at_least(open_, history.yesterday_close)
                              & at_most(price, history.yesterday_open)),
    }


def _session_signals(history: History, snap: Snapshot, peaks: np.ndarray) -> dict[str, np.ndarray]:
    price, open_ = np.asarray(snap.price, dtype=float), np.asarray(snap.open, dtype=float)
    prev_close = np.asarray(snap.prev_close, dtype=float)
    volume_ratio = volume_surge(history, snap)
    return {
        "down_day_high_volume": below(price, prev_close) & at_least(volume_ratio, HIGH_VOLUME_MULTIPLE),
        "gap_down": at_most(open_, prev_close * GAP_DOWN_FACTOR),
        "off_peak": at_most(price, peaks * OFF_PEAK_FACTOR),
    }


def reversal_scores(history: Panel | History, snap: Snapshot,
                    highest_close_since_entry: Mapping[str, float] | np.ndarray | list) -> pd.DataFrame:
    """Reversal signals and score for every snapshot symbol (the held positions), indexed by symbol.

    history: completed daily bars before the snapshot's session, or the same prepared for this session and these
    symbols. highest_close_since_entry: per symbol, a mapping or an array in snapshot order.
    Columns: one bool per signal of REVERSAL_WEIGHTS (below_sma5 .. off_peak), score (0-13, the sum of the weights
    of the triggered signals), signals (list of triggered names, JSON-ready), skip_reason (None, or why no signal
    could be evaluated).
    """
    history = prepared_for(history, snap, prepare)
    price = np.asarray(snap.price, dtype=float)
    with np.errstate(invalid="ignore"):
        usable = price > 0
    triggered = {**_trend_signals(history, price), **_candle_signals(history, snap),
                 **_session_signals(history, snap, _peaks(highest_close_since_entry, list(snap.symbols)))}
    names = list(REVERSAL_WEIGHTS)
    flags = np.column_stack([triggered[name] & usable for name in names]) if len(price) else np.zeros((0, len(names)),
                                                                                                     dtype=bool)
    signals = np.empty(len(flags), dtype=object)
    signals[:] = [[name for name, on in zip(names, row) if on] for row in flags]
    weights = np.array([REVERSAL_WEIGHTS[name] for name in names])
    return pd.DataFrame({**{name: flags[:, k] for k, name in enumerate(names)},
                         "score": (flags * weights).sum(axis=1).astype(int),
                         "signals": signals, "skip_reason": np.where(usable, None, "no valid price today")},
                        index=pd.Index(snap.symbols, name="symbol"))


def peak_closes(history: Panel, snap: Snapshot, trades: list[dict]) -> dict[str, float]:
    """Highest CLOSE since entry for each held symbol: the closes of the completed sessions from the entry day on
    (the entry day's close came after the entry). Not the entry fill, not an intraday price: NaN until a session
    has closed with the position held."""
    peaks: dict[str, float] = {}
    for trade in trades:
        symbol = trade["symbol"]
        values: list[float] = []
        if symbol in history.symbols and trade["entry_time"]:
            entry_day = np.datetime64(trade["entry_time"][:10], "D")
            closes = history.close[history.dates >= entry_day, history.column(symbol)]
            values += [float(c) for c in closes if np.isfinite(c)]
        peaks[symbol] = max(values) if values else np.nan
    return peaks

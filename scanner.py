"""The two-stage momentum scanner (SPEC section 5), vectorised across symbols, plus the market context.

`scan(history, snap, rules)` returns one row per snapshot symbol. Stage 1 is the quick filter (price > $5,
change > +0.5%, RVOL >= 1.2); stage 2 the momentum breakout with the cap's minimum ROC; the composite score (0-20)
is computed for every symbol that is not skipped, so setups that fail stage 2 can still be studied.

Conventions (all ratios and *_pct values are fractions: 0.01 means 1%):
- Today's partial bar (snapshot open, high and low so far, current price, volume so far) is appended to the daily
  history as its latest row. SMA20, SMA50, RSI14 and ATR14 are computed over history plus that row, so they move
  with the current price; the 20-day average volume uses the 20 completed sessions before today only.
- RSI14 and ATR14 are Wilder's, seeded with the simple mean of the first 14 changes / true ranges of the history
  passed in, so the caller should pass the same depth of history from scan to scan (the Wilder average forgets the
  seed after about 100 bars).
- Volume so far is time-normalised by the U-shaped intraday profile (core/volume_profile.py); the session
  fraction is floored at one minute so that a scan at the opening bell does not divide by zero.
- A DAILY snapshot (daily bars only, common/types.py) shows today's open and nothing else of today before the
  close, so the intraday-only signals are replaced by what is knowable: price, high and low so far are the open
  (change_pct is the gap, follow_through is False, breakout_5d compares the open); RVOL and volume surge are the
  LAST COMPLETED session's volume over the 20-session average before it; intraday_strength is unknown (NaN, earns
  no points). From the close on, a daily snapshot is the whole bar and every signal reads it as usual.
- Thresholds compare with a tolerance of 1e-9, so a value equal to a threshold up to float rounding counts as equal:
  "at least 3%" accepts 103 / 100 - 1, "above +0.5%" refuses 100.5 / 100 - 1.
- A history row with no usable bar for a symbol (close, high or low missing or non-positive, or volume missing or
  negative) is a missing session. Rolling means use the sessions present: at most MAX_MISSING_SESSIONS of the
  last LOOKBACK may be missing, beyond that the symbol is skipped. The close 10 sessions ago falls back to the last
  close present before it. A missing open in history is tolerated (the scanner uses only today's open).
- A symbol with broken data is skipped (stage1 False, flags False, score 0, skip_reason set), never raised; so is
  one whose last 60 sessions hold a corporate action or a bad print detected from the bars (core/corporate_actions.py:
  a split, a spin-off or special dividend, a print the market did not make), with that event as the reason.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Sequence

import numpy as np
import pandas as pd

from common import render
from common.types import DAILY, Panel, Snapshot
from core import corporate_actions, indicators
from core.volume_profile import volume_fraction

HISTORY_SESSIONS = 120  # bars read before today: a fixed depth keeps Wilder RSI/ATR identical from scan to scan
LOOKBACK = 60  # daily bars required before today
MIN_PRICE = 5.0
MIN_CHANGE = 0.005
MIN_RVOL = 1.2
VOLUME_AVERAGE_SESSIONS = 20
MAX_MISSING_SESSIONS = 3  # missing sessions tolerated inside the lookback window
MAX_ONE_DAY_MOVE = 0.5
JUMP_VOLUME_MULTIPLE = 3.0  # a move beyond 50% is believed only on this multiple of average volume
BREAKOUT_SESSIONS = 5
ROC_SESSIONS = 10
ONE_MINUTE = 1.0 / 390.0
TOLERANCE = 1e-9

COLUMNS = ("price", "prev_close", "change_pct", "rvol", "volume_surge", "stage1", "gap_up", "follow_through",
           "breakout_5d", "roc_10d", "sma20", "sma50", "sma_aligned", "intraday_strength", "rsi_14", "atr_14",
           "momentum_breakout", "stage2", "score", "skip_reason")


@dataclass(frozen=True)
class CapRules:
    """Stage-2 thresholds of one market-cap tier (fractions: 0.01 = 1%)."""

    min_volume_surge: float
    min_gap_up: float
    min_roc_10d: float


CAP_RULES: dict[str, CapRules] = {
    "large": CapRules(min_volume_surge=1.3, min_gap_up=0.01, min_roc_10d=0.03),
    "mid": CapRules(min_volume_surge=1.3, min_gap_up=0.01, min_roc_10d=0.03),
    "small": CapRules(min_volume_surge=1.5, min_gap_up=0.03, min_roc_10d=0.05),
}


def stage2_miss(row, rules: CapRules) -> str:
    """Which stage-2 condition a stage-1 candidate (a scan frame row) failed, in words, e.g. "no breakout (gap
    +0.40% < +1.00%, no 5-day high); volume surge 1.12 < 1.30"."""
    misses = []
    if not row["momentum_breakout"]:
        gap, gapped = row["gap_up"], row["gap_up"] >= rules.min_gap_up - TOLERANCE
        if not (row["breakout_5d"] or (gapped and row["follow_through"])):
            why = ("gap without follow-through" if gapped else "no gap" if gap != gap
                   else f"gap {render.pct(gap * 100)} < {render.pct(rules.min_gap_up * 100)}")
            misses.append(f"no breakout ({why}, no 5-day high)")
        surge = row["volume_surge"]
        if not surge >= rules.min_volume_surge - TOLERANCE:
            misses.append(f"volume surge {'-' if surge != surge else f'{surge:.2f}'} < {rules.min_volume_surge:.2f}")
    roc = row["roc_10d"]
    if not roc >= rules.min_roc_10d - TOLERANCE:
        misses.append(f"10-day ROC {render.pct(roc * 100)} < {render.pct(rules.min_roc_10d * 100)}")
    return "; ".join(misses) or "stage 1 not passed"


# ---- threshold comparisons (NaN never passes) -------------------------------------------------------------------

def at_least(values: np.ndarray, threshold: float) -> np.ndarray:
    return np.asarray(values) >= threshold - TOLERANCE


def at_most(values: np.ndarray, threshold: float) -> np.ndarray:
    return np.asarray(values) <= threshold + TOLERANCE


def above(values: np.ndarray, threshold: float | np.ndarray) -> np.ndarray:
    return np.asarray(values) > np.asarray(threshold) + TOLERANCE


def below(values: np.ndarray, threshold: float | np.ndarray) -> np.ndarray:
    return np.asarray(values) < np.asarray(threshold) - TOLERANCE


def window_min_count(n: int) -> int:
    """Present values a rolling window of n sessions needs (a fifth may be missing, at most MAX_MISSING_SESSIONS)."""
    return n - min(MAX_MISSING_SESSIONS, n // 5)


# ---- input preparation --------------------------------------------------------------------------------------------

def _column_order(history: Panel, symbols: Sequence[str]) -> np.ndarray | None:
    """Column of each wanted symbol in the history (-1 when absent), or None when already in that order."""
    if list(history.symbols) == list(symbols):
        return None
    position = {symbol: column for column, symbol in enumerate(history.symbols)}
    return np.array([position.get(symbol, -1) for symbol in symbols], dtype=int)


def _select(field: np.ndarray, rows: slice, columns: np.ndarray | None) -> np.ndarray:
    block = np.asarray(field, dtype=float)[rows]
    if columns is None:
        return block.copy()
    picked = block[:, np.maximum(columns, 0)]
    picked[:, columns < 0] = np.nan
    return picked


def align_history(history: Panel, session: date, symbols: Sequence[str]) -> Panel:
    """History restricted to sessions strictly before `session`, with the columns of `symbols` in that order.

    Rows on or after the session are dropped (no look-ahead even when the caller passes too much); an unknown
    symbol gets all-NaN columns; a row without a usable bar is blanked in every field (a missing session).
    """
    cutoff = int(np.searchsorted(np.asarray(history.dates).astype("datetime64[D]"), np.datetime64(session, "D")))
    rows, columns = slice(0, cutoff), _column_order(history, symbols)
    open_, high, low, close, volume = (_select(getattr(history, name), rows, columns)
                                       for name in ("open", "high", "low", "close", "volume"))
    with np.errstate(invalid="ignore"):
        usable = (close > 0) & (high > 0) & (low > 0) & (volume >= 0)
        open_ = np.where(usable & (open_ > 0), open_, np.nan)
    high, low, close, volume = (np.where(usable, values, np.nan) for values in (high, low, close, volume))
    return Panel(dates=np.asarray(history.dates)[rows].astype("datetime64[D]"), symbols=list(symbols),
                 open=open_, high=high, low=low, close=close, volume=volume)


def normalised_volume(snap: Snapshot) -> np.ndarray:
    """Volume so far scaled to a full-day equivalent by the intraday volume profile."""
    share_of_day = max(float(volume_fraction(snap.fraction)), float(volume_fraction(ONE_MINUTE)))
    return np.asarray(snap.volume, dtype=float) / share_of_day


def volume_surge(history: "History", snap: Snapshot) -> np.ndarray:
    """RVOL / volume surge as knowable at the snapshot's moment: volume so far scaled to a day over the 20-day
    average, or, before the close of a DAILY snapshot (no volume so far), the last completed session's surge."""
    if snap.view == DAILY and snap.fraction < 1.0:
        return history.last_surge
    return ratio(normalised_volume(snap), history.avg_volume)


def last_session_surge(bars: Panel, sessions: int = VOLUME_AVERAGE_SESSIONS) -> np.ndarray:
    """The last completed session's volume over the mean volume of the `sessions` before it."""
    if bars.volume.shape[0] < 2:
        return np.full(len(bars.symbols), np.nan)
    before = bars.volume[:-1][-sessions:]
    return ratio(bars.volume[-1], indicators.sma(before, sessions, window_min_count(sessions))[-1])


def average_volume(bars: Panel, sessions: int = VOLUME_AVERAGE_SESSIONS) -> np.ndarray:
    """Mean volume of the last `sessions` completed sessions (NaN when too many are missing)."""
    if bars.volume.shape[0] == 0:
        return np.full(len(bars.symbols), np.nan)
    tail = bars.volume[-sessions:]
    return indicators.sma(tail, sessions, window_min_count(sessions))[-1]


def ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, NaN where the denominator is missing or not positive."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / denominator, np.nan)


# ---- data quality -------------------------------------------------------------------------------------------------

def _latest_date(flags: np.ndarray, dates: np.ndarray) -> np.ndarray:
    """For each column, the ISO date of the latest row flagged True (columns without a flag get the last date)."""
    latest_row = flags.shape[0] - 1 - np.argmax(flags[::-1], axis=0)
    return np.datetime_as_string(dates[latest_row], unit="D")


def _record(reasons: np.ndarray, mask: np.ndarray, text: str | np.ndarray) -> None:
    """Set a reason where the mask holds and no earlier (higher-priority) reason was recorded."""
    open_slots = mask & np.equal(reasons, None)
    reasons[open_slots] = text[open_slots] if isinstance(text, np.ndarray) else text


def _today_faults(reasons: np.ndarray, snap: Snapshot) -> None:
    price, open_, prev_close = (np.asarray(a, dtype=float) for a in (snap.price, snap.open, snap.prev_close))
    high, low = np.asarray(snap.high, dtype=float), np.asarray(snap.low, dtype=float)
    with np.errstate(invalid="ignore"):
        _record(reasons, ~(price > 0), "no valid price today")
        _record(reasons, ~(open_ > 0), "no valid open today")
        _record(reasons, ~(prev_close > 0), "no valid previous close")
        _record(reasons, ~(np.isfinite(high) & np.isfinite(low)), "no intraday high/low today")
        _record(reasons, high < low, "high < low today")


def _coverage_faults(reasons: np.ndarray, bars: Panel) -> None:
    present = np.isfinite(bars.close)
    valid_bars = present.sum(axis=0)
    _record(reasons, valid_bars < LOOKBACK,
            np.char.add(np.char.add("fewer than 60 valid bars (", valid_bars.astype(str)), ")"))
    missing_recent = LOOKBACK - present[-LOOKBACK:].sum(axis=0)
    _record(reasons, missing_recent > MAX_MISSING_SESSIONS,
            np.char.add(missing_recent.astype(str), " of the last 60 sessions missing"))


def _bar_faults(reasons: np.ndarray, bars: Panel) -> None:
    """high < low, and one-day close moves beyond 50% without the volume to match, in the last 60 sessions."""
    window = slice(-LOOKBACK, None)
    dates = bars.dates[window]
    with np.errstate(invalid="ignore"):
        inverted = bars.high[window] < bars.low[window]
    _record(reasons, inverted.any(axis=0), np.char.add("high < low on ", _latest_date(inverted, dates)))
    # the average before each day, over the sessions available (a jump early in the window still gets a check)
    prior_average = indicators.previous_present(indicators.sma(bars.volume, VOLUME_AVERAGE_SESSIONS, 1))[window]
    move = (bars.close / indicators.previous_present(bars.close) - 1.0)[window]
    with np.errstate(invalid="ignore"):
        unbacked = ~(bars.volume[window] >= JUMP_VOLUME_MULTIPLE * prior_average)
        jump = above(np.abs(move), MAX_ONE_DAY_MOVE) & unbacked
    _record(reasons, jump.any(axis=0), np.char.add("suspect price jump on ", _latest_date(jump, dates)))


def _today_jump_fault(reasons: np.ndarray, change: np.ndarray, surge: np.ndarray) -> None:
    with np.errstate(invalid="ignore"):
        unbacked = ~(surge >= JUMP_VOLUME_MULTIPLE)
    _record(reasons, above(np.abs(change), MAX_ONE_DAY_MOVE) & unbacked, "suspect price jump today")


def history_reasons(bars: Panel) -> np.ndarray:
    """Why each symbol's completed sessions cannot be trusted (None when they can), the most basic fault first."""
    reasons = np.full(len(bars.symbols), None, dtype=object)
    if bars.close.shape[0] < LOOKBACK:
        _record(reasons, np.ones(len(reasons), dtype=bool), f"fewer than 60 valid bars ({bars.close.shape[0]})")
        return reasons
    _coverage_faults(reasons, bars)
    _bar_faults(reasons, bars)
    actions = corporate_actions.recent_reasons(bars, LOOKBACK)  # splits, spin-offs, bad prints (the bars that lie)
    _record(reasons, ~np.equal(actions, None), actions)
    return reasons


def skip_reasons(history: "History", snap: Snapshot, change: np.ndarray, surge: np.ndarray) -> np.ndarray:
    """One reason per symbol (None when the data is usable), the most basic fault first: today's bar, then the
    history, then today's move against the volume, then the volume average."""
    reasons = np.full(len(snap.symbols), None, dtype=object)
    _today_faults(reasons, snap)
    _record(reasons, ~np.equal(history.reasons, None), history.reasons)
    if history.rows < LOOKBACK:
        return reasons
    _today_jump_fault(reasons, change, surge)
    _record(reasons, ~(history.avg_volume > 0), "no volume in the last 20 sessions")
    return reasons


# ---- signals ------------------------------------------------------------------------------------------------------

def _snapshot_arrays(snap: Snapshot) -> dict[str, np.ndarray]:
    return {name: np.asarray(getattr(snap, name), dtype=float)
            for name in ("open", "high", "low", "price", "volume", "prev_close")}


def intraday_strength(price: np.ndarray, high: np.ndarray, low: np.ndarray) -> np.ndarray:
    """Where the price sits in the day's range so far, 0 (low) .. 1 (high); 0.5 when the range is empty."""
    span = high - low
    with np.errstate(invalid="ignore", divide="ignore"):
        position = np.where(span > 0, (price - low) / span, 0.5)
    position = np.where(np.isfinite(span), position, np.nan)
    return np.clip(position, 0.0, 1.0)  # a last trade a tick outside a lagging high/low counts as at the edge


def _roc_and_sma20(history: "History", price: np.ndarray) -> dict[str, np.ndarray]:
    return {"roc_10d": ratio(price, history.reference_close) - 1.0,
            "sma20": indicators.sma_step(history.sma20, price, window_min_count(20))}


def _price_signals(history: "History", today: dict[str, np.ndarray], range_known: bool) -> dict[str, np.ndarray]:
    price = today["price"]
    strength = (intraday_strength(price, today["high"], today["low"]) if range_known
                else np.full(price.shape, np.nan))
    return {
        "change_pct": ratio(price, today["prev_close"]) - 1.0,
        "gap_up": ratio(today["open"], today["prev_close"]) - 1.0,
        "follow_through": above(price, today["open"]),
        "breakout_5d": above(price, history.prior_high),
        **_roc_and_sma20(history, price),
        "sma50": indicators.sma_step(history.sma50, price, window_min_count(50)),
        "intraday_strength": strength,
        "rsi_14": indicators.rsi_step(history.rsi, price),
        "atr_14": indicators.atr_step(history.atr, today["high"], today["low"], price),
    }


def _tier_points(values: np.ndarray, thresholds: Sequence[float], points: Sequence[int]) -> np.ndarray:
    """Points of the highest threshold reached (0 below the first)."""
    earned = np.zeros(np.shape(values), dtype=int)
    for threshold, tier_points in zip(thresholds, points):
        earned = np.where(at_least(values, threshold), tier_points, earned)
    return earned


def composite_score(roc_10d: np.ndarray, volume_surge: np.ndarray, momentum_breakout: np.ndarray,
                    breakout_5d: np.ndarray, gap_with_follow_through: np.ndarray, sma_aligned: np.ndarray,
                    rsi_14: np.ndarray, intraday_strength_: np.ndarray) -> np.ndarray:
    """The 0-20 setup score of SPEC section 5 (integers; a missing input earns nothing)."""
    rsi_points = np.where(at_least(rsi_14, 75.0) & at_most(rsi_14, 85.0), 1,
                          np.where(at_least(rsi_14, 50.0) & ~at_least(rsi_14, 75.0), 2, 0))
    return (_tier_points(roc_10d, (0.03, 0.06, 0.10, 0.20), (2, 3, 4, 5))
            + _tier_points(volume_surge, (1.3, 2.0, 3.0), (2, 3, 4))
            + 3 * np.asarray(momentum_breakout, dtype=int)
            + np.asarray(breakout_5d, dtype=int)
            + np.asarray(gap_with_follow_through, dtype=int)
            + 2 * np.asarray(sma_aligned, dtype=int)
            + rsi_points
            + _tier_points(intraday_strength_, (0.5, 0.7), (1, 2))).astype(int)


def _decide(signals: dict[str, np.ndarray], usable: np.ndarray, rules: CapRules) -> dict[str, np.ndarray]:
    """Stage flags and score from the signals; a skipped symbol gets False flags and score 0."""
    price = signals["price"]
    signals["sma_aligned"] = above(price, signals["sma20"]) & above(signals["sma20"], signals["sma50"]) & usable
    gap_with_follow_through = at_least(signals["gap_up"], rules.min_gap_up) & signals["follow_through"] & usable
    breakout = (gap_with_follow_through | signals["breakout_5d"]) & usable
    signals["follow_through"] &= usable
    signals["breakout_5d"] &= usable
    signals["momentum_breakout"] = breakout & at_least(signals["volume_surge"], rules.min_volume_surge)
    signals["stage1"] = (above(price, MIN_PRICE) & above(signals["change_pct"], MIN_CHANGE)
                         & at_least(signals["rvol"], MIN_RVOL) & usable)
    signals["stage2"] = signals["stage1"] & signals["momentum_breakout"] & at_least(signals["roc_10d"],
                                                                                    rules.min_roc_10d)
    score = composite_score(signals["roc_10d"], signals["volume_surge"], signals["momentum_breakout"],
                            signals["breakout_5d"], gap_with_follow_through, signals["sma_aligned"],
                            signals["rsi_14"], signals["intraday_strength"])
    signals["score"] = np.where(usable, score, 0)
    return signals


@dataclass(frozen=True)
class History:
    """What a scan needs from the completed sessions before `session`, one entry per symbol of `symbols`.

    Every value depends on completed sessions only, so it is prepared once (`prepare`) and combined with each
    intraday snapshot of the session; the recursive indicators and the moving averages hold the state they reached
    after the last completed session, and one more step with today's partial bar gives exactly the values a
    computation over the whole history plus today gives (indicators' resume functions).
    """

    session: date
    symbols: list[str]
    rows: int  # completed sessions in the window
    reasons: np.ndarray  # why the history cannot be trusted (None when it can), per symbol
    avg_volume: np.ndarray  # mean volume of the last 20 completed sessions
    last_surge: np.ndarray  # the last completed session's volume over the 20-session average before it
    prior_high: np.ndarray  # highest high of the last 5 completed sessions
    reference_close: np.ndarray  # the close 10 sessions before today (the last one present before it)
    sma20: indicators.SmaTail
    sma50: indicators.SmaTail
    rsi: indicators.RsiState
    atr: indicators.AtrState


def prepare(history: Panel, session: date, symbols: Sequence[str]) -> History:
    """The completed-session part of a scan of `symbols` on `session` (rows on or after it are ignored)."""
    bars = align_history(history, session, symbols)
    rows, n_symbols = bars.close.shape
    return History(
        session=session, symbols=list(symbols), rows=rows, reasons=history_reasons(bars),
        avg_volume=average_volume(bars), last_surge=last_session_surge(bars),
        prior_high=(np.fmax.reduce(bars.high[-BREAKOUT_SESSIONS:], axis=0) if rows
                    else np.full(n_symbols, np.nan)),
        reference_close=(indicators.last_present(bars.close[:rows - ROC_SESSIONS + 1]) if rows >= ROC_SESSIONS
                         else np.full(n_symbols, np.nan)),
        sma20=indicators.sma_tail(bars.close, 20), sma50=indicators.sma_tail(bars.close, 50),
        rsi=indicators.rsi_state(bars.close, 14), atr=indicators.atr_state(bars.high, bars.low, bars.close, 14))


def scan(history: Panel | History, snap: Snapshot, rules: CapRules) -> pd.DataFrame:
    """Both scanner stages for every snapshot symbol: one row per symbol, indexed by symbol in snapshot order.

    `history` holds completed daily bars before `snap.session` (at least LOOKBACK sessions; more is fine, rows on
    or after the session are ignored), or the same prepared for this session and these symbols. Columns (fractions,
    not percent):
    price, prev_close; change_pct = price / prev_close - 1; rvol and volume_surge = time-normalised volume / 20-day
    average volume (the same ratio, used by stage 1 and stage 2); stage1; gap_up = open / prev_close - 1;
    follow_through = price > open; breakout_5d = price > highest high of the 5 prior sessions; roc_10d = price /
    close 10 sessions before today - 1; sma20, sma50 (including today's price); sma_aligned = price > sma20 > sma50;
    intraday_strength = (price - low) / (high - low); rsi_14, atr_14 (Wilder, including today's partial bar);
    momentum_breakout; stage2; score (0-20, every non-skipped symbol); skip_reason (None, or why the symbol's data
    was not trusted).
    """
    history = prepared_for(history, snap, prepare)
    today = _snapshot_arrays(snap)
    surge = volume_surge(history, snap)
    signals = _price_signals(history, today, range_known=not (snap.view == DAILY and snap.fraction < 1.0))
    signals.update(price=today["price"], prev_close=today["prev_close"], rvol=surge, volume_surge=surge.copy())
    reasons = skip_reasons(history, snap, signals["change_pct"], surge)
    usable = np.equal(reasons, None)
    signals = _decide(signals, usable, rules)
    columns = {name: signals[name] for name in COLUMNS[:-1]}
    return pd.DataFrame({**columns, "skip_reason": reasons}, index=pd.Index(snap.symbols, name="symbol"))


def holding_signals(history: Panel | History, snap: Snapshot) -> dict[str, np.ndarray]:
    """What the exit rules read of held symbols (roc_10d, sma20, volume_surge), exactly as `scan` computes them,
    without the rest of the scan."""
    history = prepared_for(history, snap, prepare)
    price = np.asarray(snap.price, dtype=float)
    return {**_roc_and_sma20(history, price), "volume_surge": volume_surge(history, snap)}


def prepared_for(history, snap: Snapshot, prepare_history):
    """`history` prepared for the snapshot's session and symbols (a Panel is prepared here; a prepared history
    must already be for exactly that session and those symbols)."""
    if isinstance(history, Panel):
        return prepare_history(history, snap.session, snap.symbols)
    if history.session != snap.session or list(history.symbols) != list(snap.symbols):
        raise ValueError(f"history prepared for {history.session} and {len(history.symbols)} symbols does not match "
                         f"the snapshot of {snap.session} with {len(snap.symbols)} symbols")
    return history


# ---- market context -----------------------------------------------------------------------------------------------

def _spy_closes(spy_history: pd.DataFrame | pd.Series | Sequence[float] | np.ndarray) -> np.ndarray:
    """Completed SPY closes, oldest first, from a frame (column spy_close or close) or any 1-D sequence."""
    if isinstance(spy_history, pd.DataFrame):
        column = "spy_close" if "spy_close" in spy_history.columns else "close"
        spy_history = spy_history[column]
    closes = np.asarray(spy_history, dtype=float).ravel()
    return closes[np.isfinite(closes) & (closes > 0)]


def _trend(price: float, sma20: float | None, sma50: float | None) -> str:
    if sma20 is None or sma50 is None:
        return "sideways"
    if price > sma20 > sma50:
        return "up"
    if price < sma20 < sma50:
        return "down"
    return "sideways"


def _optional(value: float | None) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def market_context(spy_history: pd.DataFrame | pd.Series | Sequence[float] | np.ndarray, spy_today_price: float,
                   vix_value: float | None, snap_change_pct: np.ndarray) -> dict:
    """The market backdrop of a scan, JSON-ready.

    spy_history: SPY's completed daily closes before today (a frame with `spy_close` or `close`, or a sequence).
    Returns spy_price, spy_prev_close, spy_change_pct (fraction), spy_sma20 / spy_sma50 (including today's price,
    None without enough history), trend ("up" when price > SMA20 > SMA50, "down" when price < SMA20 < SMA50, else
    "sideways"), vix (None when unknown), advancing / valid_symbols counts and breadth = advancing / valid (None
    when no symbol has a change).
    """
    closes = np.append(_spy_closes(spy_history), float(spy_today_price))
    prev_close = closes[-2] if closes.size >= 2 else np.nan
    sma20 = float(closes[-20:].mean()) if closes.size >= 20 else None
    sma50 = float(closes[-50:].mean()) if closes.size >= 50 else None
    changes = np.asarray(snap_change_pct, dtype=float)
    changes = changes[np.isfinite(changes)]
    advancing = int((changes > 0).sum())
    return {
        "spy_price": float(spy_today_price),
        "spy_prev_close": _optional(prev_close),
        "spy_change_pct": _optional(spy_today_price / prev_close - 1.0 if prev_close > 0 else np.nan),
        "spy_sma20": sma20,
        "spy_sma50": sma50,
        "trend": _trend(float(spy_today_price), sma20, sma50),
        "vix": _optional(vix_value),
        "advancing": advancing,
        "valid_symbols": int(changes.size),
        "breadth": advancing / changes.size if changes.size else None,
    }

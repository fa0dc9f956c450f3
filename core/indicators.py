"""Technical indicators on 2-D float arrays (rows = sessions, oldest first; columns = symbols).

Every function takes and returns arrays of the same shape and works on all symbols at once: the only Python loop
is over rows (sessions), each step is one numpy operation across every symbol.

Missing values (NaN) are allowed anywhere, typically at the start of a column for a symbol listed late:
- `sma` averages the values present in its window and is NaN when fewer than `min_count` are present.
- `roc` looks exactly n rows back and is NaN when either end is missing.
- The recursive indicators (`ema`, `wilder_rsi`, `wilder_atr`, `macd_histogram`) skip a missing row: the smoothing
  state carries over the gap, the output at that row is NaN, and a price change or true range is measured from the
  last close that was present. For a column without gaps this is the textbook definition; with gaps it equals the
  textbook definition applied to the column's present values only.

Seeding convention (Wilder, and the EMA alike): the first output is the simple mean of the first n inputs
(price changes for RSI, true ranges for ATR, values for the EMA); after that Wilder uses
avg = (prev * (n - 1) + x) / n and the EMA uses avg = prev + 2 / (n + 1) * (x - prev). RSI and ATR need a previous
close, so with no gaps their first value is at row n (the (n+1)-th bar), as in TA-Lib.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

Update = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _as_2d(values: np.ndarray) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    return array[:, None] if array.ndim == 1 else array


def _shaped_like(result: np.ndarray, original: np.ndarray) -> np.ndarray:
    return result[:, 0] if np.ndim(original) == 1 else result


def forward_fill(values: np.ndarray) -> np.ndarray:
    """Each cell replaced by the last finite value at or above it in its column (NaN before the first one)."""
    array = _as_2d(values)
    rows = np.arange(array.shape[0])[:, None]
    last_present_row = np.maximum.accumulate(np.where(np.isfinite(array), rows, 0), axis=0)
    filled = np.take_along_axis(array, last_present_row, axis=0)
    return _shaped_like(filled, values)


def previous_present(values: np.ndarray) -> np.ndarray:
    """The last finite value strictly above each cell in its column (NaN when there is none)."""
    filled = _as_2d(forward_fill(values))
    previous = np.full_like(filled, np.nan)
    previous[1:] = filled[:-1]
    return _shaped_like(previous, values)


def sma(values: np.ndarray, n: int, min_count: int | None = None) -> np.ndarray:
    """Simple moving average of the last n rows, ignoring missing values.

    NaN where the window holds fewer than `min_count` present values (default n: a full window is required).
    """
    array = _as_2d(values)
    required = n if min_count is None else min_count
    present = np.isfinite(array)
    zero_row = np.zeros((1, array.shape[1]))
    running_sum = np.concatenate([zero_row, np.cumsum(np.where(present, array, 0.0), axis=0)])
    running_count = np.concatenate([zero_row, np.cumsum(present, axis=0)])
    window_start = np.maximum(np.arange(1, array.shape[0] + 1) - n, 0)
    window_sum = running_sum[1:] - running_sum[window_start]
    window_count = running_count[1:] - running_count[window_start]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(window_count >= max(required, 1), window_sum / window_count, np.nan)
    return _shaped_like(mean, values)


def _seeded_smoothing(inputs: np.ndarray, n: int, update: Update) -> np.ndarray:
    """Mean of the first n present inputs per column, then `update(prev, x)` on each later present input.

    The seeding bookkeeping (how many inputs each column has seen, their running sum) is cumulative, so it is
    computed for all rows at once; only the recursion itself steps row by row. np.cumsum adds in row order, so the
    seed is the same float as a row-by-row sum.
    """
    return _smoothed(inputs, n, update)[0]


def _smoothed(inputs: np.ndarray, n: int, update: Update) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The smoothed rows, with the per-row count of present inputs and the running seed sum."""
    present = np.isfinite(inputs)
    seen = np.cumsum(present, axis=0)
    seed_sum = np.cumsum(np.where(present & (seen <= n), inputs, 0.0), axis=0)
    return _smooth(inputs, n, update, present, seen, seed_sum), seen, seed_sum


def _smooth(inputs: np.ndarray, n: int, update: Update, present: np.ndarray, seen: np.ndarray,
            seed_sum: np.ndarray) -> np.ndarray:
    rows, columns = inputs.shape
    output = np.full((rows, columns), np.nan)
    running = present & (seen > n)
    seeded_now = present & (seen == n)
    emitting = present & (seen >= n)
    if columns <= _COLUMN_LOOP_MAX:
        return _recurse_by_column(inputs, n, update, seed_sum, emitting)
    any_running, any_seeded = running.any(axis=1), seeded_now.any(axis=1)
    state = np.full(columns, np.nan)
    for row in np.flatnonzero(emitting.any(axis=1)):
        if any_running[row]:
            state = np.where(running[row], update(state, inputs[row]), state)
        if any_seeded[row]:
            state = np.where(seeded_now[row], seed_sum[row] / n, state)
        output[row] = state
    return np.where(emitting, output, np.nan)


# Up to this many columns the recursion runs per column on Python floats: a handful of held positions (monitor,
# reversal) would otherwise pay numpy's per-row call overhead on every row. Python and numpy float64 arithmetic are
# both IEEE double with the same operations in the same order, so both paths give the same floats.
_COLUMN_LOOP_MAX = 16


def _recurse_by_column(inputs: np.ndarray, n: int, update: Update, seed_sum: np.ndarray,
                       emitting: np.ndarray) -> np.ndarray:
    """_seeded_smoothing's recursion, one column at a time: each emitting cell either seeds the state (the mean of
    the first n inputs) or updates it with its input; every other cell is NaN."""
    output = np.full(inputs.shape, np.nan)
    for column in range(inputs.shape[1]):
        rows = np.flatnonzero(emitting[:, column])
        if not len(rows):
            continue
        # The first emitting cell of a column is the one where its n-th input arrives (the seed); every later one
        # updates the state with its input.
        first = rows[0]
        state = float(seed_sum[first, column] / n)
        results = [state]
        append = results.append
        values = inputs[rows[1:], column].tolist()
        if isinstance(update, _Wilder):
            kept = n - 1
            for value in values:
                state = (state * kept + value) / n
                append(state)
        elif isinstance(update, _Ema):
            alpha = update.alpha
            for value in values:
                state = state + alpha * (value - state)
                append(state)
        else:
            for value in values:
                state = update(state, value)
                append(state)
        output[rows, column] = results
    return output


class _Wilder:
    """Wilder's update (prev * (n - 1) + x) / n, recognisable so the column loop can inline it."""

    def __init__(self, n: int):
        self.n = n

    def __call__(self, prev, x):
        return (prev * (self.n - 1) + x) / self.n


class _Ema:
    """The EMA update prev + alpha * (x - prev), recognisable so the column loop can inline it."""

    def __init__(self, alpha: float):
        self.alpha = alpha

    def __call__(self, prev, x):
        return prev + self.alpha * (x - prev)


def _wilder(inputs: np.ndarray, n: int) -> np.ndarray:
    return _seeded_smoothing(inputs, n, _Wilder(n))


# --- resuming a computation: the state after the completed rows, then one more row ------------------------------
#
# A scan appends today's partial bar to the same completed history many times a session. The recursive indicators
# keep, per column, the state they reached after the last completed row; one step from that state with today's
# input performs exactly the operations (same values, same order) a computation over history plus today performs
# for its last row, so it gives the same floats. Sums are carried the same way: np.cumsum adds row after row.

@dataclass(frozen=True)
class Smoothing:
    """A seeded smoothing after the rows seen so far, per column: its value (NaN until seeded), how many inputs were
    present, and the running sum of the first n of them (the seed in the making)."""

    value: np.ndarray
    seen: np.ndarray
    seed_sum: np.ndarray


def smoothing_state(inputs: np.ndarray, n: int, update: Update) -> tuple[np.ndarray, Smoothing]:
    """The smoothed rows of `inputs` (as `_seeded_smoothing`) and the state after the last one."""
    array = _as_2d(inputs)
    output, seen, seed_sum = _smoothed(array, n, update)
    if array.shape[0] == 0:
        columns = array.shape[1]
        return output, Smoothing(np.full(columns, np.nan), np.zeros(columns, dtype=int), np.zeros(columns))
    return output, Smoothing(last_present(output), seen[-1], seed_sum[-1])


def smoothing_step(state: Smoothing, inputs: np.ndarray, n: int, update: Update) -> tuple[np.ndarray, Smoothing]:
    """One more row: its smoothed value per column (NaN where the input is missing or the seed is not complete yet)
    and the new state."""
    inputs = np.asarray(inputs, dtype=float)
    present = np.isfinite(inputs)
    seen = state.seen + present
    seed_sum = state.seed_sum + np.where(present & (seen <= n), inputs, 0.0)
    with np.errstate(invalid="ignore"):
        updated = update(state.value, inputs)
    value = np.where(present & (seen > n), updated, np.where(present & (seen == n), seed_sum / n, np.nan))
    return value, Smoothing(np.where(present & (seen >= n), value, state.value), seen, seed_sum)


def wilder_update(n: int) -> Update:
    return _Wilder(n)


def ema_update(n: int) -> Update:
    return _Ema(2.0 / (n + 1.0))


@dataclass(frozen=True)
class SmaTail:
    """Sum and count of the present values among the last n - 1 rows: an n-row mean ending on the next row."""

    n: int
    total: np.ndarray
    count: np.ndarray


def sma_tail(values: np.ndarray, n: int) -> SmaTail:
    array = _as_2d(values)[-(n - 1):] if n > 1 else _as_2d(values)[:0]
    present = np.isfinite(array)
    if array.shape[0] == 0:
        return SmaTail(n, np.zeros(array.shape[1]), np.zeros(array.shape[1]))
    return SmaTail(n, np.cumsum(np.where(present, array, 0.0), axis=0)[-1],
                   np.cumsum(present, axis=0)[-1].astype(float))


def sma_step(tail: SmaTail, values: np.ndarray, min_count: int | None = None) -> np.ndarray:
    """`sma` of the tail's rows plus `values` as the next row, at that row."""
    values = np.asarray(values, dtype=float)
    present = np.isfinite(values)
    total = tail.total + np.where(present, values, 0.0)
    count = tail.count + present
    required = tail.n if min_count is None else min_count
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count >= max(required, 1), total / count, np.nan)


def ema(values: np.ndarray, n: int) -> np.ndarray:
    """Exponential moving average, alpha = 2 / (n + 1), seeded with the simple mean of the first n values."""
    alpha = 2.0 / (n + 1.0)
    smoothed = _seeded_smoothing(_as_2d(values), n, _Ema(alpha))
    return _shaped_like(smoothed, values)


def _close_changes(close: np.ndarray) -> np.ndarray:
    """Change from the last present close; NaN on rows without a close or without an earlier one."""
    return close - previous_present(close)


def _gains_losses(changes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    missing = np.isnan(changes)
    return np.where(missing, np.nan, np.maximum(changes, 0.0)), np.where(missing, np.nan, np.maximum(-changes, 0.0))


def _rsi_from_averages(average_gain: np.ndarray, average_loss: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        rsi = 100.0 - 100.0 / (1.0 + average_gain / average_loss)
    rsi = np.where(average_loss == 0.0, np.where(average_gain > 0.0, 100.0, 50.0), rsi)
    return np.where(np.isnan(average_gain) | np.isnan(average_loss), np.nan, rsi)


def wilder_rsi(close: np.ndarray, n: int = 14) -> np.ndarray:
    """Wilder's RSI (0..100). With no losses in the average it is 100; with neither gains nor losses, 50."""
    gains, losses = _gains_losses(_close_changes(_as_2d(close)))
    return _shaped_like(_rsi_from_averages(_wilder(gains, n), _wilder(losses, n)), close)


@dataclass(frozen=True)
class RsiState:
    """Wilder's RSI after the completed rows: both averages and the last close present."""

    n: int
    gain: Smoothing
    loss: Smoothing
    last_close: np.ndarray


def rsi_state(close: np.ndarray, n: int = 14) -> RsiState:
    closes = _as_2d(close)
    gains, losses = _gains_losses(_close_changes(closes))
    update = _Wilder(n)
    return RsiState(n, smoothing_state(gains, n, update)[1], smoothing_state(losses, n, update)[1],
                    last_present(closes))


def rsi_step(state: RsiState, close: np.ndarray) -> np.ndarray:
    """The RSI at one more row whose close is `close` (what `wilder_rsi` gives for that row)."""
    gains, losses = _gains_losses(np.asarray(close, dtype=float) - state.last_close)
    update = _Wilder(state.n)
    average_gain = smoothing_step(state.gain, gains, state.n, update)[0]
    average_loss = smoothing_step(state.loss, losses, state.n, update)[0]
    return _rsi_from_averages(average_gain, average_loss)


def last_present(values: np.ndarray) -> np.ndarray:
    """The last finite value of each column (NaN when it has none): `forward_fill(values)[-1]` without filling."""
    array = _as_2d(values)
    finite = np.isfinite(array)
    if array.shape[0] == 0:
        return np.full(array.shape[1], np.nan)
    last_row = array.shape[0] - 1 - np.argmax(finite[::-1], axis=0)
    return np.where(finite.any(axis=0), array[last_row, np.arange(array.shape[1])], np.nan)


def _ranges(highs: np.ndarray, lows: np.ndarray, closes: np.ndarray, previous_close: np.ndarray) -> np.ndarray:
    ranges = np.maximum.reduce([highs - lows, np.abs(highs - previous_close), np.abs(lows - previous_close)])
    missing = ~(np.isfinite(highs) & np.isfinite(lows) & np.isfinite(closes) & np.isfinite(previous_close))
    return np.where(missing, np.nan, ranges)


def true_range(high: np.ndarray, low: np.ndarray, close: np.ndarray) -> np.ndarray:
    """max(high - low, |high - prev close|, |low - prev close|); NaN where a field or the previous close is missing."""
    highs, lows, closes = _as_2d(high), _as_2d(low), _as_2d(close)
    return _shaped_like(_ranges(highs, lows, closes, previous_present(closes)), close)


def wilder_atr(high: np.ndarray, low: np.ndarray, close: np.ndarray, n: int = 14) -> np.ndarray:
    """Wilder's average true range, seeded with the mean of the first n true ranges."""
    return _shaped_like(_wilder(_as_2d(true_range(high, low, close)), n), close)


@dataclass(frozen=True)
class AtrState:
    n: int
    average: Smoothing
    last_close: np.ndarray


def atr_state(high: np.ndarray, low: np.ndarray, close: np.ndarray, n: int = 14) -> AtrState:
    ranges = _as_2d(true_range(high, low, close))
    return AtrState(n, smoothing_state(ranges, n, _Wilder(n))[1], last_present(close))


def atr_step(state: AtrState, high: np.ndarray, low: np.ndarray, close: np.ndarray) -> np.ndarray:
    """The ATR at one more row with this high, low and close (what `wilder_atr` gives for that row)."""
    highs, lows, closes = (np.asarray(a, dtype=float) for a in (high, low, close))
    ranges = _ranges(highs, lows, closes, state.last_close)
    return smoothing_step(state.average, ranges, state.n, _Wilder(state.n))[0]


def roc(close: np.ndarray, n: int) -> np.ndarray:
    """Rate of change as a fraction: close / close n rows earlier - 1 (NaN for the first n rows)."""
    closes = _as_2d(close)
    change = np.full_like(closes, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        change[n:] = closes[n:] / closes[:-n] - 1.0
    return _shaped_like(change, close)


def macd_histogram(close: np.ndarray, fast: int = 12, slow: int = 26, signal: int = 9) -> np.ndarray:
    """MACD line (EMA fast - EMA slow) minus its signal line (EMA of the MACD line)."""
    closes = _as_2d(close)
    macd_line = ema(closes, fast) - ema(closes, slow)
    histogram = macd_line - ema(macd_line, signal)
    return _shaped_like(histogram, close)


@dataclass(frozen=True)
class MacdState:
    """The MACD after the completed rows: both EMAs, the signal EMA, and the histogram of the last two rows."""

    fast: Smoothing
    slow: Smoothing
    signal: Smoothing
    recent_histogram: np.ndarray  # the last min(2, rows) rows
    periods: tuple[int, int, int]


def macd_state(close: np.ndarray, fast: int = 12, slow: int = 26, signal: int = 9) -> MacdState:
    closes = _as_2d(close)
    fast_rows, fast_state = smoothing_state(closes, fast, ema_update(fast))
    slow_rows, slow_state = smoothing_state(closes, slow, ema_update(slow))
    macd_line = fast_rows - slow_rows
    signal_rows, signal_state = smoothing_state(macd_line, signal, ema_update(signal))
    return MacdState(fast_state, slow_state, signal_state, (macd_line - signal_rows)[-2:], (fast, slow, signal))


def macd_step(state: MacdState, close: np.ndarray) -> np.ndarray:
    """The MACD histogram at one more row whose close is `close` (what `macd_histogram` gives for that row)."""
    fast, slow, signal = state.periods
    macd_line = (smoothing_step(state.fast, close, fast, ema_update(fast))[0]
                 - smoothing_step(state.slow, close, slow, ema_update(slow))[0])
    return macd_line - smoothing_step(state.signal, macd_line, signal, ema_update(signal))[0]

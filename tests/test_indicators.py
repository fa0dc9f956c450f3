"""Indicators against hand-computed values and plain-loop reference implementations."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from core import indicators

# ---- plain-loop references (one series, a Python list, no numpy) -------------------------------------------------

def loop_wilder(inputs: list[float], n: int) -> list[float]:
    """Wilder smoothing of a gap-free list: mean of the first n, then (prev * (n - 1) + x) / n."""
    out = [math.nan] * len(inputs)
    if len(inputs) < n:
        return out
    average = sum(inputs[:n]) / n
    out[n - 1] = average
    for i in range(n, len(inputs)):
        average = (average * (n - 1) + inputs[i]) / n
        out[i] = average
    return out


def loop_rsi(closes: list[float], n: int = 14) -> list[float]:
    changes = [closes[i] - closes[i - 1] for i in range(1, len(closes))]
    gains = loop_wilder([max(c, 0.0) for c in changes], n)
    losses = loop_wilder([max(-c, 0.0) for c in changes], n)
    out = [math.nan]
    for gain, loss in zip(gains, losses):
        if math.isnan(gain):
            out.append(math.nan)
        elif loss == 0:
            out.append(100.0 if gain > 0 else 50.0)
        else:
            out.append(100.0 - 100.0 / (1.0 + gain / loss))
    return out


def loop_atr(highs: list[float], lows: list[float], closes: list[float], n: int = 14) -> list[float]:
    ranges = [max(highs[i] - lows[i], abs(highs[i] - closes[i - 1]), abs(lows[i] - closes[i - 1]))
              for i in range(1, len(closes))]
    return [math.nan] + loop_wilder(ranges, n)


def loop_ema(values: list[float], n: int) -> list[float]:
    alpha = 2.0 / (n + 1.0)
    out = [math.nan] * len(values)
    first = next(i for i, v in enumerate(values) if not math.isnan(v))
    if len(values) - first < n:
        return out
    average = sum(values[first:first + n]) / n
    out[first + n - 1] = average
    for i in range(first + n, len(values)):
        average = average + alpha * (values[i] - average)
        out[i] = average
    return out


def random_bars(days: int, symbols: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    close = 50.0 * np.exp(np.cumsum(rng.normal(0.0, 0.02, (days, symbols)), axis=0))
    high = close * (1.0 + rng.uniform(0.0, 0.03, (days, symbols)))
    low = close * (1.0 - rng.uniform(0.0, 0.03, (days, symbols)))
    return high, low, close


def assert_same(actual, expected, rel: float = 1e-12) -> None:
    actual, expected = np.asarray(actual, dtype=float), np.asarray(expected, dtype=float)
    assert np.array_equal(np.isnan(actual), np.isnan(expected))
    np.testing.assert_allclose(actual[~np.isnan(actual)], expected[~np.isnan(expected)], rtol=rel, atol=0)


# ---- hand-computed values ----------------------------------------------------------------------------------------

def test_rsi_hand_values_period_3():
    # changes +1, -0.5, +1, -0.5, +1; seed gain 2/3, loss 1/6 -> RS 4; then gain 4/9, loss 5/18 -> RS 1.6;
    # then gain 17/27, loss 5/27 -> RS 3.4
    rsi = indicators.wilder_rsi(np.array([10.0, 11.0, 10.5, 11.5, 11.0, 12.0]), 3)
    assert np.isnan(rsi[:3]).all()
    assert rsi[3:] == pytest.approx([80.0, 100.0 - 100.0 / 2.6, 100.0 - 100.0 / 4.4], rel=1e-12)


def test_atr_hand_values_period_2():
    # true ranges from the second bar: 1.5, 0.8, 1.4; seed (1.5 + 0.8) / 2, then (1.15 + 1.4) / 2
    high = np.array([10.0, 11.0, 10.8, 10.4])
    low = np.array([9.0, 9.5, 10.0, 9.0])
    close = np.array([9.5, 10.5, 10.2, 9.2])
    atr = indicators.wilder_atr(high, low, close, 2)
    assert np.isnan(atr[:2]).all()
    assert atr[2:] == pytest.approx([1.15, 1.275], rel=1e-12)


def test_rsi_without_losses_is_100_and_flat_is_50():
    closes = np.column_stack([np.arange(1.0, 21.0), np.full(20, 7.0)])
    rsi = indicators.wilder_rsi(closes, 14)
    assert rsi[14:, 0] == pytest.approx([100.0] * 6)
    assert rsi[14:, 1] == pytest.approx([50.0] * 6)
    assert np.isnan(rsi[:14]).all()


def test_sma_full_window_and_min_count():
    values = np.array([1.0, 2.0, np.nan, 4.0, 5.0])
    assert_same(indicators.sma(values, 2), [np.nan, 1.5, np.nan, np.nan, 4.5])
    assert_same(indicators.sma(values, 2, min_count=1), [1.0, 1.5, 2.0, 4.0, 4.5])
    assert_same(indicators.sma(values, 3, min_count=2), [np.nan, 1.5, 1.5, 3.0, 4.5])


def test_roc_looks_exactly_n_rows_back():
    close = np.array([100.0, 101.0, np.nan, 103.0, 110.0])
    assert_same(indicators.roc(close, 2), [np.nan, np.nan, np.nan, 103.0 / 101.0 - 1.0, np.nan])


def test_ema_seeded_with_simple_mean():
    ema = indicators.ema(np.array([1.0, 2.0, 3.0, 10.0]), 3)
    # seed mean(1, 2, 3) = 2; then 2 + 0.5 * (10 - 2) = 6
    assert_same(ema, [np.nan, np.nan, 2.0, 6.0])


# ---- against the loops on random data -----------------------------------------------------------------------------

def test_rsi_atr_match_loops_on_random_panel():
    high, low, close = random_bars(90, 6, seed=3)
    rsi, atr = indicators.wilder_rsi(close, 14), indicators.wilder_atr(high, low, close, 14)
    assert rsi.shape == close.shape and atr.shape == close.shape
    for j in range(close.shape[1]):
        assert_same(rsi[:, j], loop_rsi(close[:, j].tolist()), rel=1e-10)
        assert_same(atr[:, j], loop_atr(high[:, j].tolist(), low[:, j].tolist(), close[:, j].tolist()), rel=1e-10)


def test_sma_matches_loop_mean():
    _, _, close = random_bars(70, 3, seed=5)
    sma = indicators.sma(close, 20)
    for j in range(3):
        column = close[:, j].tolist()
        expected = [math.nan] * 19 + [sum(column[i - 19:i + 1]) / 20 for i in range(19, 70)]
        assert_same(sma[:, j], expected, rel=1e-12)


def test_macd_histogram_matches_loops():
    _, _, close = random_bars(80, 2, seed=11)
    histogram = indicators.macd_histogram(close)
    for j in range(2):
        column = close[:, j].tolist()
        macd_line = [a - b for a, b in zip(loop_ema(column, 12), loop_ema(column, 26))]
        expected = [m - s for m, s in zip(macd_line, loop_ema(macd_line, 9))]
        assert_same(histogram[:, j], expected, rel=1e-10)
    assert np.isnan(histogram[:33]).all() and np.isfinite(histogram[33:]).all()


# ---- missing values -----------------------------------------------------------------------------------------------

def test_late_listed_symbol_equals_its_own_series():
    high, low, close = random_bars(60, 2, seed=7)
    late = 17
    for field in (high, low, close):
        field[:late, 1] = np.nan
    rsi, atr = indicators.wilder_rsi(close), indicators.wilder_atr(high, low, close)
    assert np.isnan(rsi[:late + 14, 1]).all() and np.isfinite(rsi[late + 14:, 1]).all()
    assert_same(rsi[late:, 1], loop_rsi(close[late:, 1].tolist()), rel=1e-10)
    assert_same(atr[late:, 1], loop_atr(high[late:, 1].tolist(), low[late:, 1].tolist(), close[late:, 1].tolist()),
                rel=1e-10)
    assert_same(rsi[:, 0], loop_rsi(close[:, 0].tolist()), rel=1e-10)  # the other column is untouched


def test_gap_inside_series_skips_the_row_and_carries_the_state():
    high, low, close = random_bars(50, 1, seed=9)
    gap_row = 30
    close_with_gap = close.copy()
    close_with_gap[gap_row] = np.nan
    rsi = indicators.wilder_rsi(close_with_gap)[:, 0]
    present = np.delete(close[:, 0], gap_row).tolist()
    expected = loop_rsi(present)
    assert np.isnan(rsi[gap_row])
    assert_same(np.delete(rsi, gap_row), expected, rel=1e-10)


def test_all_nan_column_stays_nan_without_warnings():
    close = np.full((30, 2), np.nan)
    close[:, 0] = np.linspace(10, 20, 30)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        outputs = [indicators.wilder_rsi(close), indicators.wilder_atr(close, close, close), indicators.sma(close, 5),
                   indicators.roc(close, 3), indicators.macd_histogram(close)]
    for output in outputs:
        assert output.shape == close.shape
        assert np.isnan(output[:, 1]).all()


def test_forward_fill_and_previous_present():
    values = np.array([[np.nan, 1.0], [2.0, np.nan], [np.nan, 3.0]])
    assert_same(indicators.forward_fill(values), [[np.nan, 1.0], [2.0, 1.0], [2.0, 3.0]])
    assert_same(indicators.previous_present(values), [[np.nan, np.nan], [np.nan, 1.0], [2.0, 1.0]])

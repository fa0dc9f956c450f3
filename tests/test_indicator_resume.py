"""Resuming an indicator from the state after the completed rows gives exactly the floats of a computation over all
rows (the scanner relies on this to add today's bar to a history prepared once per session)."""
from __future__ import annotations

import numpy as np
import pytest

from core import indicators

SHAPES = [(0, 3), (1, 3), (5, 3), (13, 3), (14, 3), (15, 3), (40, 3), (130, 3), (14, 40), (130, 40)]


def _panel(rows: int, columns: int, seed: int, gaps: float = 0.08) -> dict[str, np.ndarray]:
    """Random walks with missing cells (late listings, holes) and a missing last row in some columns."""
    rng = np.random.default_rng(seed)
    close = 50 * np.exp(np.cumsum(rng.normal(0, 0.02, (rows + 1, columns)), axis=0))
    high = close * (1 + rng.uniform(0, 0.03, close.shape))
    low = close * (1 - rng.uniform(0, 0.03, close.shape))
    holes = rng.random(close.shape) < gaps
    holes[: rng.integers(0, rows + 1), 0] = True  # a late listing
    for array in (close, high, low):
        array[holes] = np.nan
    if columns > 1:
        close[-1, 1] = np.nan  # no price today for one symbol
    return {"close": close, "high": high, "low": low}


@pytest.mark.parametrize("rows,columns", SHAPES)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_rsi_atr_macd_sma_resume_exactly(rows, columns, seed):
    data = _panel(rows, columns, seed)
    history = {name: values[:-1] for name, values in data.items()}
    today = {name: values[-1] for name, values in data.items()}

    full_rsi = indicators.wilder_rsi(data["close"], 14)[-1]
    np.testing.assert_array_equal(indicators.rsi_step(indicators.rsi_state(history["close"], 14), today["close"]),
                                  full_rsi)
    full_atr = indicators.wilder_atr(data["high"], data["low"], data["close"], 14)[-1]
    atr = indicators.atr_state(history["high"], history["low"], history["close"], 14)
    np.testing.assert_array_equal(indicators.atr_step(atr, today["high"], today["low"], today["close"]), full_atr)
    full_macd = indicators.macd_histogram(data["close"])
    state = indicators.macd_state(history["close"])
    np.testing.assert_array_equal(indicators.macd_step(state, today["close"]), full_macd[-1])
    np.testing.assert_array_equal(state.recent_histogram, full_macd[:-1][-2:])
    for n in (5, 20, 50):
        full_sma = indicators.sma(data["close"][-n:], n, n - 3)[-1]
        tail = indicators.sma_tail(history["close"], n)
        np.testing.assert_array_equal(indicators.sma_step(tail, today["close"], n - 3), full_sma)


def test_a_resumed_state_is_not_a_fresh_one():
    """The step really depends on the state: the same input after different histories gives different values."""
    data = _panel(60, 4, 7, gaps=0.0)
    rising = indicators.rsi_state(np.cumsum(np.ones((30, 4)), axis=0) + 10, 14)
    falling = indicators.rsi_state(100 - np.cumsum(np.ones((30, 4)), axis=0), 14)
    assert not np.array_equal(indicators.rsi_step(rising, data["close"][-1]),
                              indicators.rsi_step(falling, data["close"][-1]))


def test_smoothing_seeds_on_the_nth_input_of_the_step():
    state = indicators.smoothing_state(np.array([[1.0], [np.nan], [2.0]]), 3, indicators.wilder_update(3))[1]
    value, after = indicators.smoothing_step(state, np.array([6.0]), 3, indicators.wilder_update(3))
    assert value.tolist() == [3.0] and after.seen.tolist() == [3]
    value, _ = indicators.smoothing_step(after, np.array([9.0]), 3, indicators.wilder_update(3))
    assert value.tolist() == [(3.0 * 2 + 9.0) / 3]

"""A scan or reversal score from a history prepared once per session equals, float for float, the same indicators
computed over the whole history with today's partial bar appended; the per-session store hands out the same
prepared columns whatever order and batches the symbols are asked in."""
from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest

import scanner
from core import indicators, reversal
from flows.prepared_history import HistoryCache, join_columns, take_columns

from test_scanner_realdata import daily, history_before, snapshot_of  # noqa: F401 - the real-data fixture

pytestmark = pytest.mark.slow  # real-data validation of the prepared histories

SESSIONS = [date(2013, 9, 3), date(2014, 10, 30), date(2015, 8, 24), date(2016, 11, 9), date(2018, 2, 5)]
FRACTIONS = [1.0 / 390.0, 0.4, 1.0]


def _appended(history_field: np.ndarray, today: np.ndarray) -> np.ndarray:
    return np.vstack([history_field, np.asarray(today, dtype=float)[None, :]])


def whole_array_signals(history, snap) -> dict[str, np.ndarray]:
    """The scanner's indicator columns computed over history plus today's bar, the direct way."""
    bars = scanner.align_history(history, snap.session, snap.symbols)
    price = np.asarray(snap.price, dtype=float)
    close = _appended(bars.close, price)
    high, low = _appended(bars.high, snap.high), _appended(bars.low, snap.low)
    reference = indicators.forward_fill(bars.close)[-10]
    return {
        "sma20": indicators.sma(close[-20:], 20, scanner.window_min_count(20))[-1],
        "sma50": indicators.sma(close[-50:], 50, scanner.window_min_count(50))[-1],
        "rsi_14": indicators.wilder_rsi(close, 14)[-1],
        "atr_14": indicators.wilder_atr(high, low, close, 14)[-1],
        "roc_10d": np.where(reference > 0, price / reference, np.nan) - 1.0,
        "macd": indicators.macd_histogram(close)[-1],
        "sma5": indicators.sma(close[-5:], 5, scanner.window_min_count(5))[-1],
    }


@pytest.mark.parametrize("session", SESSIONS)
def test_prepared_scan_equals_the_whole_array_computation(daily, session):  # noqa: F811
    history = history_before(daily, session)
    for fraction in FRACTIONS:
        snap = snapshot_of(daily, session, fraction)
        frame = scanner.scan(scanner.prepare(history, session, snap.symbols), snap, scanner.CAP_RULES["small"])
        expected = whole_array_signals(history, snap)
        for name in ("sma20", "sma50", "rsi_14", "atr_14", "roc_10d"):
            np.testing.assert_array_equal(frame[name].to_numpy(), expected[name], err_msg=f"{name} {fraction}")
        assert frame["rsi_14"].notna().sum() > 400  # real values were compared, not only NaN


@pytest.mark.parametrize("session", SESSIONS[:3])
def test_prepared_reversal_state_equals_the_whole_array_computation(daily, session):  # noqa: F811
    history = history_before(daily, session)
    snap = snapshot_of(daily, session, 0.5)
    prepared = reversal.prepare(history, session, snap.symbols)
    price = np.asarray(snap.price, dtype=float)
    expected = whole_array_signals(history, snap)
    np.testing.assert_array_equal(indicators.macd_step(prepared.macd, price), expected["macd"])
    np.testing.assert_array_equal(indicators.sma_step(prepared.sma5, price, scanner.window_min_count(5)),
                                  expected["sma5"])


def test_a_panel_and_its_prepared_history_give_the_same_frames(daily):  # noqa: F811
    session = date(2016, 11, 9)
    history = history_before(daily, session)
    snap = snapshot_of(daily, session, 0.25)
    held = snap.symbols[::40]
    peaks = {symbol: 1e9 for symbol in held}
    pd.testing.assert_frame_equal(scanner.scan(history, snap, scanner.CAP_RULES["mid"]),
                                  scanner.scan(scanner.prepare(history, session, snap.symbols), snap,
                                               scanner.CAP_RULES["mid"]))
    held_snap = snap.select(held)
    pd.testing.assert_frame_equal(reversal.reversal_scores(history, held_snap, peaks),
                                  reversal.reversal_scores(reversal.prepare(history, session, held), held_snap, peaks))


def test_a_history_prepared_for_other_symbols_is_refused(daily):  # noqa: F811
    session = date(2016, 11, 9)
    history = history_before(daily, session)
    snap = snapshot_of(daily, session, 0.25)
    with pytest.raises(ValueError, match="does not match"):
        scanner.scan(scanner.prepare(history, session, snap.symbols[:10]), snap, scanner.CAP_RULES["mid"])


def assert_same_prepared(first, second) -> None:
    """Two prepared histories hold the same values, array by array and bit by bit."""
    for name in first.__dataclass_fields__:
        a, b = getattr(first, name), getattr(second, name)
        if hasattr(a, "__dataclass_fields__"):
            assert_same_prepared(a, b)
        elif isinstance(a, np.ndarray):
            assert a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), name
        else:
            assert a == b, name


@pytest.mark.parametrize("prepare", [scanner.prepare, reversal.prepare])
def test_the_store_gives_the_columns_a_direct_preparation_gives(daily, prepare):  # noqa: F811
    session = date(2015, 3, 2)
    history = history_before(daily, session)
    symbols = daily.symbols
    cache = HistoryCache()
    first, second = symbols[:200:3], symbols[150:300] + symbols[:5]
    for wanted in (first, second, first[::-1], symbols[:40:2]):
        assert_same_prepared(cache.get(prepare, history.select(wanted), session, wanted), prepare(history, session, wanted))


def test_the_store_forgets_earlier_sessions(daily):  # noqa: F811
    cache = HistoryCache()
    for session in SESSIONS[:3]:
        history = history_before(daily, session)
        cache.get(scanner.prepare, history, session, daily.symbols[:20])
    assert {key[2] for key in cache._entries} == {SESSIONS[2]}


def test_join_refuses_histories_of_different_windows(daily):  # noqa: F811
    session = date(2015, 3, 2)
    long, short = history_before(daily, session), history_before(daily, session, sessions=70)
    with pytest.raises(ValueError, match="disagree"):
        join_columns(scanner.prepare(long, session, daily.symbols[:3]), scanner.prepare(short, session,
                                                                                         daily.symbols[3:6]))
    one = scanner.prepare(long, session, daily.symbols[:3])
    assert take_columns(one, np.array([2, 0])).symbols == [daily.symbols[2], daily.symbols[0]]


def test_holding_signals_are_the_scan_columns(daily):  # noqa: F811
    session = date(2015, 8, 24)
    history = history_before(daily, session)
    snap = snapshot_of(daily, session, 0.3).select(daily.symbols[::7])
    frame = scanner.scan(history, snap, scanner.CAP_RULES["large"])
    signals = scanner.holding_signals(history, snap)
    for name in ("roc_10d", "sma20", "volume_surge"):
        np.testing.assert_array_equal(signals[name], frame[name].to_numpy())
    assert np.isfinite(signals["volume_surge"]).sum() > 50

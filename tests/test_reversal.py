"""Reversal score: each signal alone on hand-made bars, threshold edges, the full 13 and broken data."""
from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest

from common.types import Panel, Snapshot
from core import indicators
from core.volume_profile import volume_fraction
from core.reversal import MAX_REVERSAL_SCORE, REVERSAL_WEIGHTS, reversal_scores

SESSION = date(2024, 6, 3)
# Against a flat history at 100 (high 101, low 99, volume 1e6) this bar triggers nothing: price above every SMA,
# a higher high, the top of its range, RSI 100, an up day on average volume, no gap.
NEUTRAL_TODAY = {"open": 100.0, "high": 101.5, "low": 99.5, "price": 101.0, "volume": 1e6, "prev_close": 100.0}


def make_history(closes, opens=None) -> Panel:
    close = np.asarray(closes, dtype=float)[:, None]
    open_ = close.copy() if opens is None else np.asarray(opens, dtype=float)[:, None]
    dates = np.datetime64(SESSION, "D") - np.arange(close.shape[0], 0, -1)
    return Panel(dates=dates, symbols=["S0"], open=open_, high=close + 1.0, low=close - 1.0, close=close,
                 volume=np.full(close.shape, 1e6))


def make_snapshot(fraction: float = 1.0, **fields) -> Snapshot:
    values = {name: np.array([value], dtype=float) for name, value in {**NEUTRAL_TODAY, **fields}.items()}
    return Snapshot(session=SESSION, fraction=fraction, symbols=["S0"], bid=values["price"], ask=values["price"],
                    **values)


def score_row(history: Panel | None = None, peak: float | None = None, fraction: float = 1.0,
              **today) -> pd.Series:
    history = history if history is not None else make_history(np.full(60, 100.0))
    peaks = {} if peak is None else {"S0": peak}  # no peak known: off_peak cannot fire
    return reversal_scores(history, make_snapshot(fraction, **today), peaks).iloc[0]


def assert_only(row: pd.Series, *names: str) -> None:
    assert row["signals"] == list(names)
    assert row["score"] == sum(REVERSAL_WEIGHTS[name] for name in names)
    assert [name for name in REVERSAL_WEIGHTS if row[name]] == list(names)


def test_weights_sum_to_13():
    assert MAX_REVERSAL_SCORE == 13 == sum(REVERSAL_WEIGHTS.values())


def test_neutral_bar_scores_zero():
    row = score_row(peak=101.0)
    assert_only(row)
    assert row["skip_reason"] is None


# ---- each signal alone --------------------------------------------------------------------------------------------

def test_below_sma5_alone():
    closes = np.full(60, 100.0)
    closes[-4:] = 104.0
    # SMA5 (4 * 104 + 102) / 5 = 103.6 > 102; SMA10 101.8 and SMA20 100.9 stay below the price
    row = score_row(make_history(closes), open=104.0, high=105.2, low=98.0, price=102.0, prev_close=104.0)
    assert_only(row, "below_sma5")


def test_below_sma10_alone():
    closes = np.full(60, 99.0)
    closes[-9:-4], closes[-4:] = 102.0, 100.0
    # SMA5 100.2, SMA10 (5 * 102 + 4 * 100 + 101) / 10 = 101.1, SMA20 100.05 against a price of 101
    assert_only(score_row(make_history(closes)), "below_sma10")


def test_below_sma20_alone_weighs_2():
    closes = np.full(60, 100.0)
    closes[-20:-14] = 110.0
    # SMA20 (6 * 110 + 13 * 100 + 101) / 20 = 103.05 > 101; SMA10 100.1
    assert_only(score_row(make_history(closes)), "below_sma20")


def test_lower_high_and_lower_low_alone():
    assert_only(score_row(high=100.9, low=98.9, price=100.8, open=99.0), "lower_high_lower_low")
    assert_only(score_row(high=101.0, low=98.9, price=100.8, open=99.0))  # an equal high is not lower


@pytest.mark.parametrize("price, fires", [(101.0, True), (101.01, False)])
def test_close_in_bottom_quartile_edge(price, fires):
    # (101 - 100) / (104 - 100) = 0.25 exactly: the bottom quarter includes its edge
    row = score_row(open=100.0, high=104.0, low=100.0, price=price)
    assert_only(row, *(["close_bottom_quartile"] if fires else []))


def test_bearish_engulfing_alone():
    closes = np.full(60, 80.0)
    closes[-2:] = [85.0, 100.0]
    opens = closes.copy()
    opens[-1] = 88.0  # yesterday: up candle 88 -> 100
    history = make_history(closes, opens)
    history.low[-1, 0] = 87.5
    # today opens at yesterday's close and falls to yesterday's open
    row = score_row(history, open=100.0, high=101.5, low=80.0, price=88.0, prev_close=100.0)
    assert_only(row, "bearish_engulfing")
    not_engulfing = score_row(history, open=100.0, high=101.5, low=80.0, price=88.01, prev_close=100.0)
    assert not not_engulfing["bearish_engulfing"]


def test_rsi_below_45_alone():
    closes = np.full(60, 100.0)
    closes[-19:] = 70.0  # a 30-point loss 19 changes ago outweighs today's 3-point gain: RSI about 29
    row = score_row(make_history(closes), open=70.5, high=73.5, low=70.0, price=73.0, prev_close=70.0)
    assert_only(row, "rsi_below_45")


def accelerating_then_flat(flat_sessions: int) -> np.ndarray:
    closes = 100.0 * 1.01 ** np.arange(60)
    closes[-flat_sessions:] = closes[-flat_sessions - 1]
    return closes


@pytest.mark.parametrize("flat_sessions, negative_sessions, fires", [
    (1, 0, False),  # histogram still positive today
    (2, 1, True),  # turned negative today
    (3, 2, True),  # turned negative yesterday: still within 2 days
    (4, 3, False),  # negative for three sessions: old news
])
def test_macd_turned_negative_within_two_days(flat_sessions, negative_sessions, fires):
    closes = accelerating_then_flat(flat_sessions)
    level = closes[-1]
    histogram = indicators.macd_histogram(np.append(closes, level))
    assert (histogram[-4:] < 0).tolist() == [False] * (4 - negative_sessions) + [True] * negative_sessions
    row = score_row(make_history(closes), open=level, high=level + 0.5, low=level - 0.5, price=level,
                    prev_close=level)
    assert_only(row, *(["macd_turned_negative"] if fires else []))


@pytest.mark.parametrize("volume, fires", [(1.5e6, True), (1.4999e6, False)])
def test_down_day_on_high_volume_edge_weighs_2(volume, fires):
    closes = 100.0 * 1.01 ** np.arange(60)
    last = closes[-1]
    row = score_row(make_history(closes), open=last, high=last + 1.5, low=last - 1.2, price=last - 0.5,
                    prev_close=last, volume=volume)
    assert_only(row, *(["down_day_high_volume"] if fires else []))


def test_down_day_volume_is_time_normalised():
    closes = 100.0 * 1.01 ** np.arange(60)
    last, fraction = closes[-1], 60.0 / 390.0
    row = score_row(make_history(closes), fraction=fraction, open=last, high=last + 1.5, low=last - 1.2,
                    price=last - 0.5, prev_close=last, volume=1.5e6 * float(volume_fraction(fraction)))
    assert_only(row, "down_day_high_volume")


@pytest.mark.parametrize("open_, fires", [(98.0, True), (98.01, False)])
def test_gap_down_edge(open_, fires):
    row = score_row(open=open_, low=97.5, high=101.5, price=101.0)
    assert_only(row, *(["gap_down"] if fires else []))


@pytest.mark.parametrize("peak, fires", [(101.0 / 0.97, True), (104.1, False)])
def test_off_peak_edge(peak, fires):
    assert_only(score_row(peak=peak), *(["off_peak"] if fires else []))


def test_peaks_as_array_in_snapshot_order():
    history = make_history(np.full(60, 100.0))
    row = reversal_scores(history, make_snapshot(), np.array([110.0])).iloc[0]
    assert_only(row, "off_peak")


# ---- the full score ------------------------------------------------------------------------------------------------

def breakdown_history() -> Panel:
    """A steady rise to 110 whose last session is an up candle 108 -> 110 with a high of 113."""
    closes = 80.5 + 0.5 * np.arange(60)
    history = make_history(closes, opens=closes - 0.25)
    history.open[-1, 0], history.high[-1, 0], history.low[-1, 0] = 108.0, 113.0, 107.5
    return history


BREAKDOWN_TODAY = dict(high=112.5, low=99.5, price=100.0, volume=1.5e6)


def test_every_signal_scores_13():
    # The feed's previous close (115) differs from the last daily bar (110), as when the bars and the quote come
    # from different adjustments: only then can a 2% gap down and an engulfing open above yesterday's close coexist.
    row = score_row(breakdown_history(), peak=110.0, open=112.0, prev_close=115.0, **BREAKDOWN_TODAY)
    assert_only(row, *REVERSAL_WEIGHTS)
    assert row["score"] == 13


@pytest.mark.parametrize("open_, missing", [(112.0, "gap_down"), (107.0, "bearish_engulfing")])
def test_with_a_consistent_previous_close_gap_down_and_engulfing_exclude_each_other(open_, missing):
    row = score_row(breakdown_history(), peak=110.0, open=open_, prev_close=110.0, **BREAKDOWN_TODAY)
    assert_only(row, *[name for name in REVERSAL_WEIGHTS if name != missing])
    assert row["score"] == 12


# ---- broken or short data ------------------------------------------------------------------------------------------

def test_missing_price_scores_zero_with_a_reason():
    row = score_row(peak=200.0, price=float("nan"))
    assert_only(row)
    assert row["skip_reason"] == "no valid price today"


def test_short_history_leaves_long_window_signals_false():
    closes = np.full(6, 100.0)  # with today 7 closes: enough for SMA5 (4 of 5), too few for SMA10 (8 of 10) and up
    row = score_row(make_history(closes), open=100.0, high=100.5, low=90.0, price=91.0, prev_close=100.0,
                    volume=5e6)
    # the candle signals need only yesterday; the 20-day volume average cannot be formed, so no volume signal
    assert_only(row, "below_sma5", "lower_high_lower_low", "close_bottom_quartile")
    assert row["skip_reason"] is None


def test_frame_shape_for_several_holdings():
    closes = np.column_stack([np.full(60, 100.0), np.full(60, 50.0)])
    history = Panel(dates=np.datetime64(SESSION, "D") - np.arange(60, 0, -1), symbols=["B", "A"], open=closes,
                    high=closes + 1.0, low=closes - 1.0, close=closes, volume=np.full((60, 2), 1e6))
    snap = Snapshot(session=SESSION, fraction=1.0, symbols=["A", "B"], open=np.array([50.0, 100.0]),
                    high=np.array([51.5, 101.5]), low=np.array([49.5, 99.5]), price=np.array([51.0, 101.0]),
                    volume=np.array([1e6, 1e6]), prev_close=np.array([50.0, 100.0]), bid=np.zeros(2), ask=np.zeros(2))
    frame = reversal_scores(history, snap, {"A": 60.0, "B": 101.0})
    assert list(frame.index) == ["A", "B"]
    assert list(frame.columns) == [*REVERSAL_WEIGHTS, "score", "signals", "skip_reason"]
    assert frame.loc["A", "signals"] == ["off_peak"] and frame.loc["B", "signals"] == []
    assert frame["score"].tolist() == [1, 0]

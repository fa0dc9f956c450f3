"""Scanner signals, stages, score and data-quality skips on hand-made bars."""
from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest

import scanner
from common.types import Panel, Snapshot
from core.volume_profile import volume_fraction
from scanner import CAP_RULES, CapRules, composite_score, market_context, scan

SESSION = date(2024, 6, 3)
LARGE, SMALL = CAP_RULES["large"], CAP_RULES["small"]
BASE_TODAY = {"open": 101.0, "high": 106.0, "low": 100.5, "price": 105.0, "volume": 2e6, "prev_close": 100.0}


def per_day(given, shape: tuple[int, int]) -> np.ndarray:
    """A per-day (1-D) or per-day-and-symbol (2-D) array broadcast to the panel's shape."""
    values = np.asarray(given, dtype=float)
    return np.broadcast_to(values[:, None] if values.ndim == 1 else values, shape).copy()


def make_history(closes, highs=None, lows=None, volumes=None, symbols=None) -> Panel:
    """Daily bars ending the day before SESSION; high/low default to close +/- 1, volume to 1e6, open to close."""
    close = np.asarray(closes, dtype=float)
    close = close[:, None] if close.ndim == 1 else close
    shape = close.shape
    high = per_day(highs, shape) if highs is not None else close + 1.0
    low = per_day(lows, shape) if lows is not None else close - 1.0
    volume = per_day(volumes, shape) if volumes is not None else np.full(shape, 1e6)
    dates = np.datetime64(SESSION, "D") - np.arange(shape[0], 0, -1)
    names = symbols or [f"S{j}" for j in range(shape[1])]
    return Panel(dates=dates, symbols=names, open=close.copy(), high=high, low=low, close=close, volume=volume)


def make_snapshot(symbols, fraction: float = 1.0, **fields) -> Snapshot:
    values = {name: np.broadcast_to(np.asarray(value, dtype=float), (len(symbols),)).copy()
              for name, value in {**BASE_TODAY, **fields}.items()}
    return Snapshot(session=SESSION, fraction=fraction, symbols=list(symbols), bid=values["price"],
                    ask=values["price"], **values)


def flat_closes(days: int = 60, level: float = 100.0) -> np.ndarray:
    return np.full(days, level)


def scan_one(history: Panel | None = None, rules: CapRules = LARGE, fraction: float = 1.0, **today) -> pd.Series:
    history = history if history is not None else make_history(flat_closes())
    return scan(history, make_snapshot(history.symbols, fraction, **today), rules).iloc[0]


# ---- the base setup, every column -------------------------------------------------------------------------------

def test_base_setup_every_column():
    row = scan_one()
    assert row["price"] == 105.0 and row["prev_close"] == 100.0
    assert row["change_pct"] == pytest.approx(0.05)
    assert row["rvol"] == pytest.approx(2.0) and row["volume_surge"] == pytest.approx(2.0)
    assert row["gap_up"] == pytest.approx(0.01)
    assert row["roc_10d"] == pytest.approx(0.05)
    assert row["sma20"] == pytest.approx((19 * 100 + 105) / 20)
    assert row["sma50"] == pytest.approx((49 * 100 + 105) / 50)
    assert row["intraday_strength"] == pytest.approx(4.5 / 5.5)
    assert row["rsi_14"] == pytest.approx(100.0)  # no loss in the whole window
    # true range 2 on every history bar, 6 today (106 - previous close 100): (2 * 13 + 6) / 14
    assert row["atr_14"] == pytest.approx(32.0 / 14.0)
    flags = ["stage1", "follow_through", "breakout_5d", "sma_aligned", "momentum_breakout", "stage2"]
    assert all(bool(row[name]) for name in flags)
    # roc 5% 2 + surge 2.0 3 + breakout 3 + breakout_5d 1 + gap&follow 1 + aligned 2 + rsi 100 0 + strength 2
    assert row["score"] == 14
    assert row["skip_reason"] is None


def test_output_shape_order_and_types():
    history = make_history(np.full((60, 3), 100.0), symbols=["B", "A", "C"])
    frame = scan(history, make_snapshot(["C", "A", "B"]), LARGE)
    assert list(frame.index) == ["C", "A", "B"] and frame.index.name == "symbol"
    assert tuple(frame.columns) == scanner.COLUMNS
    assert frame["stage1"].dtype == bool and frame["stage2"].dtype == bool
    assert frame["score"].dtype.kind == "i"


def test_cap_defaults():
    assert CAP_RULES["large"] == CapRules(1.3, 0.01, 0.03) == CAP_RULES["mid"]
    assert CAP_RULES["small"] == CapRules(1.5, 0.03, 0.05)
    assert (scanner.MIN_PRICE, scanner.MIN_CHANGE, scanner.MIN_RVOL, scanner.LOOKBACK) == (5.0, 0.005, 1.2, 60)


# ---- ROC and its score edges ------------------------------------------------------------------------------------

def test_roc_exactly_3pct_earns_2_points_and_just_below_earns_0():
    # price 103 vs 102.997: everything else scores the same (strength stays below 0.5 in both)
    at_edge, below_edge = scan_one(price=103.0), scan_one(price=102.997)
    assert at_edge["roc_10d"] == pytest.approx(0.03) and below_edge["roc_10d"] == pytest.approx(0.02997)
    assert at_edge["score"] == 12 and below_edge["score"] == 10
    assert at_edge["stage2"] and not below_edge["stage2"]


def test_roc_uses_close_ten_sessions_before_today():
    closes = flat_closes()
    closes[-10] = 50.0  # ten sessions before today (today counts as one session)
    closes[-11] = closes[-9] = 100.0
    row = scan_one(make_history(closes, volumes=np.full(60, 1e6)), volume=3.1e6)
    assert row["roc_10d"] == pytest.approx(105.0 / 50.0 - 1.0)


def test_small_cap_needs_5pct_roc():
    assert scan_one(rules=SMALL, price=105.0)["stage2"]
    assert not scan_one(rules=SMALL, price=104.99)["stage2"]


# ---- volume surge, RVOL and time normalisation ------------------------------------------------------------------

def test_volume_surge_exactly_1_3_is_a_breakout_for_large_but_not_small_cap():
    large, small = scan_one(rules=LARGE, volume=1.3e6), scan_one(rules=SMALL, volume=1.3e6)
    assert large["volume_surge"] == pytest.approx(1.3)
    assert large["momentum_breakout"] and large["stage2"]
    assert not small["momentum_breakout"] and not small["stage2"]
    # surge points 2 in both; the breakout's 3 points and the gap-with-follow-through point (1% gap: enough for a
    # large cap, not for a small cap's 3%) only for the large cap
    assert large["score"] - small["score"] == 3 + 1


def test_volume_surge_just_below_1_3_earns_no_points():
    at_edge, below_edge = scan_one(volume=1.3e6), scan_one(volume=1.2999e6)
    assert not below_edge["momentum_breakout"]
    assert at_edge["score"] - below_edge["score"] == 2 + 3


def test_volume_is_time_normalised_by_the_intraday_profile():
    fraction = 60.0 / 390.0
    row = scan_one(fraction=fraction, volume=2e6 * float(volume_fraction(fraction)))
    assert row["rvol"] == pytest.approx(2.0)


def test_scan_at_the_opening_bell_does_not_divide_by_zero():
    row = scan_one(fraction=0.0, volume=0.0)
    assert row["rvol"] == 0.0 and not row["stage1"] and row["skip_reason"] is None


# ---- stage 1 edges --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("today, passes", [
    ({"price": 100.5}, False),  # change exactly +0.5% is not above it
    ({"price": 100.51}, True),
    ({"volume": 1.2e6}, True),  # RVOL exactly 1.2 passes
    ({"volume": 1.1999e6}, False),
])
def test_stage1_change_and_rvol_edges(today, passes):
    assert bool(scan_one(**today)["stage1"]) is passes


def test_stage1_price_must_be_above_5_dollars():
    history = make_history(flat_closes(level=4.8), highs=flat_closes(level=4.85), lows=flat_closes(level=4.75))
    cheap = dict(open=4.85, high=5.2, low=4.8, prev_close=4.8)
    at_five, above_five = scan_one(history, price=5.0, **cheap), scan_one(history, price=5.01, **cheap)
    assert not at_five["stage1"] and above_five["stage1"]
    # the setup itself is a breakout with enough ROC: only the price filter keeps stage 2 closed
    assert at_five["momentum_breakout"] and at_five["roc_10d"] >= 0.03 and not at_five["stage2"]


# ---- breakout signals -----------------------------------------------------------------------------------------------

def history_with_recent_highs(level: float) -> Panel:
    highs = flat_closes() + 1.0
    highs[-5:] = level  # the 5 sessions before today
    highs[-6] = 112.0  # six sessions back: outside the breakout window
    return make_history(flat_closes(), highs=highs)


def test_breakout_5d_needs_price_above_the_prior_5_day_high():
    assert not scan_one(history_with_recent_highs(105.0))["breakout_5d"]  # equal is not above
    assert scan_one(history_with_recent_highs(104.99))["breakout_5d"]


@pytest.mark.parametrize("rules, open_, breakout", [
    (LARGE, 101.0, True),  # gap exactly 1%
    (LARGE, 100.999, False),
    (SMALL, 103.0, True),  # gap exactly 3% (surge 2.0 >= 1.5)
    (SMALL, 102.99, False),
])
def test_gap_up_with_follow_through_edges(rules, open_, breakout):
    row = scan_one(history_with_recent_highs(110.0), rules=rules, open=open_)
    assert not row["breakout_5d"]
    assert bool(row["momentum_breakout"]) is breakout


def test_follow_through_requires_price_above_open():
    history = history_with_recent_highs(110.0)
    assert not scan_one(history, open=105.0)["follow_through"]
    assert not scan_one(history, open=105.0)["momentum_breakout"]
    assert scan_one(history, open=104.99)["follow_through"]


def test_gap_with_follow_through_earns_its_own_point():
    with_gap = scan_one(history_with_recent_highs(110.0), open=101.0)
    without_gap = scan_one(history_with_recent_highs(110.0), open=100.99)
    # gap point 1 + breakout 3
    assert with_gap["score"] - without_gap["score"] == 4


# ---- trend, RSI, strength -------------------------------------------------------------------------------------------

def test_sma_aligned_false_when_sma20_below_sma50():
    closes = np.concatenate([np.full(30, 120.0), np.full(30, 100.0)])
    row = scan_one(make_history(closes))
    assert row["sma20"] < row["sma50"] and row["price"] > row["sma20"]
    assert not row["sma_aligned"]


def rsi_75_history() -> Panel:
    """Flat at 100, then a 14-point loss on the last session: avg loss 1, then 13/14 after today's gain."""
    closes = flat_closes()
    closes[-1] = 86.0
    history = make_history(closes)
    history.open[-1], history.high[-1] = 100.0, 101.0  # sold off during the day: a gap down would read as a spin-off
    return history


def test_rsi_exactly_75_earns_1_point_and_just_below_earns_2():
    today = dict(open=90.0, high=126.0, low=89.0, prev_close=86.0)
    # today's gain 39 gives avg gain 39/14 against avg loss 13/14: RS 3, RSI 75
    at_75 = scan_one(rsi_75_history(), price=125.0, **today)
    below_75 = scan_one(rsi_75_history(), price=124.9, **today)
    assert at_75["rsi_14"] == pytest.approx(75.0) and below_75["rsi_14"] < 75.0
    # roc 25% 5 + surge 3 + breakout 3 + breakout_5d 1 + gap 1 + aligned 2 + strength 2, plus rsi 1 or 2
    assert at_75["score"] == 18 and below_75["score"] == 19


@pytest.mark.parametrize("low, high, price, strength, points", [
    (100.0, 110.0, 107.0, 0.7, 2),
    (100.0, 110.0, 106.99, 0.699, 1),
    (100.0, 110.0, 105.0, 0.5, 1),
    (100.0, 110.0, 104.99, 0.499, 0),
    (105.0, 105.0, 105.0, 0.5, 1),  # empty range
])
def test_intraday_strength_edges(low, high, price, strength, points):
    history = history_with_recent_highs(110.0)  # no 5-day breakout, so only strength moves the score
    row = scan_one(history, low=low, high=high, price=price, open=100.0)
    assert row["intraday_strength"] == pytest.approx(strength)
    baseline = scan_one(history, low=low, high=high, price=price, open=100.0, volume=1.0e6)
    # with the surge gone, the score is roc + aligned + rsi + strength + gap-with-follow-through
    roc_points = 3 if price >= 106.0 else 2  # 7% or 5%
    assert baseline["score"] == roc_points + 2 + 0 + points + 0


# ---- composite score, every tier edge ------------------------------------------------------------------------------

def score_of(**components) -> int:
    neutral = dict(roc_10d=np.nan, volume_surge=np.nan, momentum_breakout=False, breakout_5d=False,
                   gap_with_follow_through=False, sma_aligned=False, rsi_14=np.nan, intraday_strength_=np.nan)
    neutral.update(components)
    return int(composite_score(**{k: np.array([v]) for k, v in neutral.items()})[0])


@pytest.mark.parametrize("value, points", [
    (-0.05, 0), (0.02999, 0), (0.03, 2), (103.0 / 100.0 - 1.0, 2), (0.05999, 2), (0.06, 3), (0.09999, 3),
    (0.10, 4), (0.19999, 4), (0.20, 5), (0.9, 5)])
def test_roc_tiers(value, points):
    assert score_of(roc_10d=value) == points


@pytest.mark.parametrize("value, points", [
    (1.2999, 0), (1.3, 2), (1.3e6 / float(volume_fraction(1.0)) / 1e6, 2), (1.9999, 2), (2.0, 3), (2.9999, 3),
    (3.0, 4), (10.0, 4)])
def test_volume_surge_tiers(value, points):
    assert score_of(volume_surge=value) == points


@pytest.mark.parametrize("value, points", [
    (49.999, 0), (50.0, 2), (74.999, 2), (75.0, 1), (100.0 - 100.0 / 4.0, 1), (85.0, 1), (85.001, 0), (100.0, 0)])
def test_rsi_tiers(value, points):
    assert score_of(rsi_14=value) == points


@pytest.mark.parametrize("value, points", [(0.0, 0), (0.4999, 0), (0.5, 1), (0.6999, 1), (0.7, 2), (1.0, 2)])
def test_intraday_strength_tiers(value, points):
    assert score_of(intraday_strength_=value) == points


def test_flag_points_and_maximum_score():
    assert score_of(momentum_breakout=True) == 3
    assert score_of(breakout_5d=True) == 1
    assert score_of(gap_with_follow_through=True) == 1
    assert score_of(sma_aligned=True) == 2
    assert score_of(roc_10d=0.25, volume_surge=3.5, momentum_breakout=True, breakout_5d=True,
                    gap_with_follow_through=True, sma_aligned=True, rsi_14=60.0, intraday_strength_=0.9) == 20


def test_score_is_computed_for_stage1_symbols_that_fail_stage2():
    row = scan_one(price=102.997)
    assert row["stage1"] and not row["stage2"] and row["score"] == 10


# ---- dirty data -----------------------------------------------------------------------------------------------------

def two_symbol_history(days: int = 60) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """closes, highs, lows, volumes for a clean S0 and a second column each test breaks."""
    closes = np.full((days, 2), 100.0)
    return closes, closes + 1.0, closes - 1.0, np.full((days, 2), 1e6)


def scan_broken(closes, highs, lows, volumes, **today) -> pd.DataFrame:
    history = make_history(closes, highs, lows, volumes)
    frame = scan(history, make_snapshot(history.symbols, **today), LARGE)
    clean = frame.iloc[0]
    assert clean["skip_reason"] is None and clean["stage2"] and clean["score"] == 14  # the clean symbol is unharmed
    return frame


def assert_skipped(row: pd.Series, reason: str) -> None:
    assert row["skip_reason"] == reason
    assert not row["stage1"] and not row["stage2"] and not row["momentum_breakout"] and row["score"] == 0


def test_late_listed_symbol_with_too_few_bars_is_skipped():
    closes, highs, lows, volumes = two_symbol_history()
    closes[:5, 1] = highs[:5, 1] = lows[:5, 1] = volumes[:5, 1] = np.nan
    assert_skipped(scan_broken(closes, highs, lows, volumes).iloc[1], "fewer than 60 valid bars (55)")


def test_history_shorter_than_lookback_skips_everything():
    history = make_history(flat_closes(59))
    assert_skipped(scan(history, make_snapshot(history.symbols), LARGE).iloc[0], "fewer than 60 valid bars (59)")


def test_up_to_three_missing_sessions_are_averaged_over_four_are_skipped():
    closes, highs, lows, volumes = two_symbol_history(days=80)
    closes[[-2, -7, -30], 1] = np.nan  # three missing sessions inside the window
    row = scan_broken(closes, highs, lows, volumes).iloc[1]
    assert row["skip_reason"] is None and row["score"] == 14 and row["rvol"] == pytest.approx(2.0)
    closes[-40, 1] = np.nan
    assert_skipped(scan_broken(closes, highs, lows, volumes).iloc[1], "4 of the last 60 sessions missing")


def test_missing_volume_counts_as_a_missing_session():
    closes, highs, lows, volumes = two_symbol_history()
    volumes[-3, 1] = np.nan
    assert_skipped(scan_broken(closes, highs, lows, volumes).iloc[1], "fewer than 60 valid bars (59)")


@pytest.mark.parametrize("field, value, reason", [
    ("price", np.nan, "no valid price today"),
    ("price", 0.0, "no valid price today"),
    ("open", np.nan, "no valid open today"),
    ("prev_close", -1.0, "no valid previous close"),
    ("high", np.nan, "no intraday high/low today"),
    ("low", 107.0, "high < low today"),
])
def test_broken_snapshot_values_are_skipped(field, value, reason):
    closes, highs, lows, volumes = two_symbol_history()
    today = {field: np.array([BASE_TODAY[field], value])}
    assert_skipped(scan_broken(closes, highs, lows, volumes, **today).iloc[1], reason)


def test_high_below_low_in_the_window_is_skipped_older_is_not():
    closes, highs, lows, volumes = two_symbol_history(days=80)
    highs[-3, 1], lows[-3, 1] = 99.0, 101.0
    assert_skipped(scan_broken(closes, highs, lows, volumes).iloc[1], "high < low on 2024-05-31")
    highs[-3, 1], lows[-3, 1] = 101.0, 99.0
    highs[-61, 1], lows[-61, 1] = 99.0, 101.0  # 61 sessions back: outside the checked window
    assert scan_broken(closes, highs, lows, volumes).iloc[1]["skip_reason"] is None


def test_one_day_jump_beyond_50pct_without_volume_is_suspect():
    closes, highs, lows, volumes = two_symbol_history(days=80)
    closes[-20:, 1] = 160.0  # +60% 20 sessions ago, on normal volume
    highs[-20:, 1], lows[-20:, 1] = 161.0, 159.0
    frame = scan_broken(closes, highs, lows, volumes, open=np.array([101.0, 161.0]), high=np.array([106.0, 166.0]),
                        low=np.array([100.5, 160.5]), price=np.array([105.0, 165.0]),
                        prev_close=np.array([100.0, 160.0]))
    assert_skipped(frame.iloc[1], "suspect price jump on 2024-05-14")
    volumes[-20, 1] = 3e6  # the move came on 3x the prior 20-day average: believed
    frame = scan_broken(closes, highs, lows, volumes, open=np.array([101.0, 161.0]), high=np.array([106.0, 166.0]),
                        low=np.array([100.5, 160.5]), price=np.array([105.0, 165.0]),
                        prev_close=np.array([100.0, 160.0]))
    assert frame.iloc[1]["skip_reason"] is None


def test_drop_of_49pct_on_normal_volume_reads_as_a_split_and_is_skipped():
    closes, highs, lows, volumes = two_symbol_history(days=80)
    closes[-20:, 1], highs[-20:, 1], lows[-20:, 1] = 51.0, 52.0, 50.0
    frame = scan_broken(closes, highs, lows, volumes, open=np.array([101.0, 52.0]), high=np.array([106.0, 54.0]),
                        low=np.array([100.5, 51.5]), price=np.array([105.0, 53.0]), prev_close=np.array([100.0, 51.0]))
    # within the 50% rule, but a move to 0.51x on ordinary volume is what a 2:1 split looks like
    assert frame.iloc[1]["skip_reason"].startswith("split 2:1 on ")


def test_todays_jump_beyond_50pct_needs_three_times_volume():
    closes, highs, lows, volumes = two_symbol_history()
    jump = dict(open=np.array([101.0, 150.0]), high=np.array([106.0, 161.0]), low=np.array([100.5, 149.0]),
                price=np.array([105.0, 160.0]))
    assert_skipped(scan_broken(closes, highs, lows, volumes, **jump).iloc[1], "suspect price jump today")
    backed = scan_broken(closes, highs, lows, volumes, volume=np.array([2e6, 3e6]), **jump).iloc[1]
    assert backed["skip_reason"] is None and backed["stage2"]


def test_no_volume_in_the_last_20_sessions_is_skipped():
    closes, highs, lows, volumes = two_symbol_history()
    volumes[-20:, 1] = 0.0
    assert_skipped(scan_broken(closes, highs, lows, volumes).iloc[1], "no volume in the last 20 sessions")


def test_symbol_missing_from_history_is_skipped():
    history = make_history(flat_closes(), symbols=["S0"])
    frame = scan(history, make_snapshot(["S0", "NEW"]), LARGE)
    assert frame.loc["S0", "score"] == 14
    assert_skipped(frame.loc["NEW"], "fewer than 60 valid bars (0)")


def test_history_rows_on_or_after_the_session_are_ignored():
    clean = make_history(flat_closes())
    leaked = Panel(dates=np.append(clean.dates, np.datetime64(SESSION, "D")), symbols=clean.symbols,
                   **{name: np.vstack([getattr(clean, name), [[500.0]]])
                      for name in ("open", "high", "low", "close", "volume")})
    snap = make_snapshot(clean.symbols)
    pd.testing.assert_frame_equal(scan(leaked, snap, LARGE), scan(clean, snap, LARGE))


# ---- market context ------------------------------------------------------------------------------------------------

def test_market_context_up_trend_and_breadth():
    closes = np.linspace(400.0, 460.0, 60)
    context = market_context(closes, 462.0, 14.5, np.array([0.01, -0.02, 0.0, np.nan, 0.03]))
    assert context["trend"] == "up"
    assert context["spy_prev_close"] == 460.0
    assert context["spy_change_pct"] == pytest.approx(462.0 / 460.0 - 1.0)
    assert context["spy_sma20"] == pytest.approx((closes[-19:].sum() + 462.0) / 20.0)
    assert context["vix"] == 14.5
    assert (context["advancing"], context["valid_symbols"], context["breadth"]) == (2, 4, 0.5)


def test_market_context_down_sideways_and_frame_input():
    falling = pd.DataFrame({"spy_close": np.linspace(460.0, 400.0, 60)})
    assert market_context(falling, 398.0, float("nan"), np.array([]))["trend"] == "down"
    down = market_context(falling, 398.0, float("nan"), np.array([]))
    assert down["vix"] is None and down["breadth"] is None
    assert market_context(falling, 450.0, None, np.array([0.01]))["trend"] == "sideways"
    assert market_context([100.0] * 10, 101.0, 20.0, np.array([0.01]))["trend"] == "sideways"  # too short

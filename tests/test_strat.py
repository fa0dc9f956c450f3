"""STRAT bar types and patterns on hand-made bars and on real SPY bars (checked by hand), weekly bars, and the
`strat scan` command: stored once, alerted once."""
from __future__ import annotations

import csv
import json
from datetime import date

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from common.types import Panel
from core import strat_signals
from main import cli as command

from conftest import require_shared_data
from crafted import run_ok as run
from crafted import use_csv_journal
from realdata import rows


def bars(rows):
    """(open, high, low, close) rows of one symbol as days x 1 arrays."""
    o, h, lo, c = (np.array([[r[k]] for r in rows], dtype=float) for k in range(4))
    dates = np.arange(np.datetime64("2020-01-06"), np.datetime64("2020-01-06") + len(rows))
    return dates, o, h, lo, c


def signals(rows, **kw):
    dates, o, h, lo, c = bars(rows)
    return strat_signals.find_signals(dates, ["X"], o, h, lo, c, "1D", last_only=False, **kw)


# --- bar types --------------------------------------------------------------------------------------------------

def test_bar_types_against_the_previous_bar_with_equal_extremes_counting_as_inside():
    high = np.array([[10.0, 5], [11, 5], [11, 6], [10, 6], [12, 7], [12, np.nan], [11.5, 7]])
    low = np.array([[9.0, 4], [9.5, 4], [9.5, 3], [9.0, 4], [8.0, 2], [8.5, 1], [8.5, 1]])
    types = strat_signals.classify(high, low)
    # column 0: -, 2U (higher high), 1 (equal high and low), 2D (lower low), 3 (both), 1 (equal high), 1
    s = strat_signals
    assert types[:, 0].tolist() == [s.UNKNOWN, s.UP, s.INSIDE, s.DOWN, s.OUTSIDE, s.INSIDE, s.INSIDE]
    # column 1: -, 1, 3, 2D... with a missing high: that bar and the next are unknown
    assert types[:, 1].tolist() == [s.UNKNOWN, s.INSIDE, s.OUTSIDE, s.INSIDE, s.OUTSIDE, s.UNKNOWN, s.UNKNOWN]
    assert strat_signals.labels(types[:5, 0]).tolist() == ["-", "2U", "1", "2D", "3"]


# --- patterns on hand-made bars ------------------------------------------------------------------------------------

REFERENCE = (100.0, 106.0, 99.0, 105.0)  # an earlier bar whose high/low is the magnitude target


@pytest.mark.parametrize("rows, expected", [
    # 2-1-2 bullish continuation: 2U, inside, 2U. Entry = inside high 103, stop = inside low 101, target = the first
    # earlier high above 103 looking back from the 2U bar (its own high is 104). Magnitude 1/103, R:R 0.5 -> the
    # target is the 2U bar's 104 only if above: 104 > 103 so target 104, R:R = 1/2 < 1: filtered. See next row.
    ([REFERENCE, (100, 101, 98, 100), (100, 104, 99, 103), (102, 103, 101, 102), (102, 105, 101.5, 104.5)], None),
    # the same with a tighter inside bar: entry 103, stop 102.5, target 104: magnitude 0.9709%, R:R 2.0
    ([REFERENCE, (100, 101, 98, 100), (100, 104, 99, 103), (102.8, 103, 102.5, 102.9), (103, 105, 102.6, 104.5)],
     ("2-1-2", "bullish", "continuation", 103.0, 104.0, 102.5)),
    # 2-1-2 bearish reversal: 2U, inside, 2D: entry = inside low 102, stop = inside high 103, target = first low
    # below 102 looking back from the 2U bar: the 2U bar's low 99 -> magnitude 2.9412%, R:R 3.0
    ([REFERENCE, (100, 101, 98, 100), (100, 104, 99, 103), (102.5, 103, 102, 102.5), (102, 102.9, 100, 100.5)],
     ("2-1-2", "bearish", "reversal", 102.0, 99.0, 103.0)),
    # 3-1-2 bullish reversal: a red outside bar, inside, 2U: entry 102, stop 101.5, target 106 (REFERENCE's high,
    # the outside bar's own high 104 is above too and comes first looking back: target 104)
    ([REFERENCE, (100, 101, 99, 100), (103, 104, 98, 99), (101.8, 102, 101.5, 101.9), (102, 103, 101.6, 102.8)],
     ("3-1-2", "bullish", "reversal", 102.0, 104.0, 101.5)),
    # 2-2 bearish reversal: 2U then 2D: entry = the 2U bar's low 100.5, stop = its high 101.5, target = first low
    # below 100.5 looking back from the bar before the 2U: 99 -> magnitude 1.4925%, R:R 1.5
    ([REFERENCE, (100, 101, 99, 100), (100.6, 101.5, 100.5, 101.4), (101, 101.2, 100, 100.1)],
     ("2-2", "bearish", "reversal", 100.5, 99.0, 101.5)),
    # 3-2 bullish continuation: a green outside bar then 2U: entry = its high 102, stop = its low 99.5, target =
    # first high above 102 looking back from the bar before the outside bar: REFERENCE's 106 -> R:R 1.6
    ([REFERENCE, (100, 101, 99.8, 100.5), (100, 102, 99.5, 101.8), (101.9, 103, 100, 102.9)],
     ("3-2", "bullish", "continuation", 102.0, 106.0, 99.5)),
])
def test_patterns_levels_and_filters_on_hand_made_bars(rows, expected):
    found = [s for s in signals(rows) if s.bar_date == str(np.datetime64("2020-01-06") + len(rows) - 1)]
    if expected is None:
        assert found == []
        return
    assert len(found) == 1
    s = found[0]
    assert (s.pattern, s.direction, s.kind, s.entry_trigger, s.target, s.stop) == expected
    assert s.magnitude_pct == pytest.approx(abs(s.target - s.entry_trigger) / s.entry_trigger * 100, abs=1e-4)
    assert s.reward_risk == pytest.approx(abs(s.target - s.entry_trigger) / abs(s.entry_trigger - s.stop), abs=1e-4)


def test_quality_filters_magnitude_and_reward_risk():
    # 2-2 bullish: 2D then 2U; entry 100 (the 2D high), stop 99, target 100.4 (the earlier high): magnitude 0.4%
    rows = [(100, 100.4, 99.5, 100), (100, 100.0, 99.0, 99.2), (99.5, 100.3, 99.1, 100.2)]
    assert signals(rows) == []
    assert [s.magnitude_pct for s in signals(rows, min_magnitude_pct=0.3, min_reward_risk=0.3)] == [0.4]
    # no earlier high above the entry in the lookback: no target, no signal
    rows = [(100, 100, 99.5, 100), (100, 100.0, 99.0, 99.2), (99.5, 101, 99.1, 100.8)]
    assert signals(rows, min_magnitude_pct=0, min_reward_risk=0) == []


def test_last_only_reports_just_the_last_bar():
    rows = [REFERENCE, (100, 101, 99, 100), (100.6, 101.5, 100.5, 101.4), (101, 101.2, 100, 100.1)]
    dates, o, h, lo, c = bars(rows)
    assert [s.bar_date for s in strat_signals.find_signals(dates, ["X"], o, h, lo, c, "1D")] == ["2020-01-09"]
    assert strat_signals.find_signals(dates[:-1], ["X"], o[:-1], h[:-1], lo[:-1], c[:-1], "1D") == []


def test_classification_is_vectorised_across_symbols():
    rng = np.random.default_rng(7)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, (300, 50)), axis=0))
    high, low = close * (1 + rng.uniform(0, 0.01, close.shape)), close * (1 - rng.uniform(0, 0.01, close.shape))
    together = strat_signals.pattern_table(close, high, low, close)
    for j in (0, 17, 49):
        alone = strat_signals.pattern_table(close[:, [j]], high[:, [j]], low[:, [j]], close[:, [j]])
        assert (alone["types"][:, 0] == together["types"][:, j]).all()
        assert (alone["pattern"][:, 0] == together["pattern"][:, j]).all()
        np.testing.assert_array_equal(alone["target"][:, 0], together["target"][:, j])


# --- real SPY bars -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def spy():
    frame = pd.read_csv(require_shared_data("spy_vix_daily_1993_2018.csv"))
    return frame[(frame.date >= "2016-10-01") & (frame.date <= "2017-12-31")].reset_index(drop=True)


def spy_signals(spy):
    dates = spy.date.values.astype("datetime64[D]")
    o, h, lo, c = (spy[f"spy_{k}"].values[:, None] for k in ("open", "high", "low", "close"))
    return {s.bar_date: s for s in strat_signals.find_signals(dates, ["SPY"], o, h, lo, c, "1D", last_only=False)}


def test_real_spy_bars_checked_by_hand(spy):
    found = spy_signals(spy)
    # 2017-03-28 H 217.4145 > 215.6719, L 214.9528 >= 213.5422: 2U. 03-29 H 217.4145 (equal), L 216.4188: inside.
    # 03-30 H 218.0691 > 217.4145, L 216.9166 >= 216.4188: 2U. -> 2-1-2 bullish continuation, entry 217.4145,
    # stop 216.4188; back from 03-28 the first high above the entry is 03-21's 219.0741 (03-22..03-28: 216.31,
    # 216.98, 216.70, 215.67, 217.41). Magnitude 1.6596 / 217.4145 = 0.7633%, R:R 1.6596 / 0.9957 = 1.6668.
    s = found["2017-03-30"]
    assert (s.pattern, s.direction, s.kind) == ("2-1-2", "bullish", "continuation")
    assert (s.entry_trigger, s.stop, s.target, s.magnitude_pct, s.reward_risk) == (
        217.4145, 216.4188, 219.0741, 0.7633, 1.6668)
    # 2017-03-22 H 216.3081 <= 219.0741, L 214.8698 < 215.3585: 2D. 03-23 H 216.9812 > 216.3081, L 215.3769 >=
    # 214.8698: 2U -> 2-2 bullish reversal, entry 216.3081, stop 214.8698, target 03-21's high 219.0741.
    # Magnitude 2.7660 / 216.3081 = 1.2787%, R:R 2.7660 / 1.4383 = 1.9231.
    s = found["2017-03-23"]
    assert (s.pattern, s.direction, s.kind, s.entry_trigger, s.stop, s.target) == (
        "2-2", "bullish", "reversal", 216.3081, 214.8698, 219.0741)
    assert (s.magnitude_pct, s.reward_risk) == (1.2787, 1.9231)
    # 2017-06-09 H 225.8968 > 225.2699 and L 223.0755 < 224.2004: 3, red (close 224.4216 < open 225.0486).
    # 06-12 H 224.4309, L 223.4720: inside. 06-13 H 225.5280 > 224.4309, L 224.5784: 2U -> 3-1-2 bullish reversal,
    # entry 224.4309, stop 223.4720, target the 3 bar's high 225.8968: magnitude 0.6532%, R:R 1.5287.
    s = found["2017-06-13"]
    assert (s.pattern, s.direction, s.kind, s.entry_trigger, s.stop, s.target, s.magnitude_pct, s.reward_risk) == (
        "3-1-2", "bullish", "reversal", 224.4309, 223.472, 225.8968, 0.6532, 1.5287)
    # 2017-01-04 H 208.1540 > 207.3095, L 207.1075 >= 205.5194: 2U. 01-05 H 207.9980, L 206.9882 < 207.1075: 2D ->
    # 2-2 bearish reversal, entry 207.1075, stop 208.1540, target 01-03's low 205.5194: 0.7668%, R:R 1.5175.
    s = found["2017-01-05"]
    assert (s.pattern, s.direction, s.kind, s.entry_trigger, s.stop, s.target, s.magnitude_pct, s.reward_risk) == (
        "2-2", "bearish", "reversal", 207.1075, 208.154, 205.5194, 0.7668, 1.5175)
    # 2017-03-29 is an inside bar: no pattern ends on it.
    assert "2017-03-29" not in found


def test_weekly_bars_from_real_daily_bars(spy):
    dates = spy.date.values.astype("datetime64[D]")
    fields = [spy[f"spy_{k}"].values[:, None] for k in ("open", "high", "low", "close", "volume")]
    daily = Panel(dates, ["SPY"], *fields)
    weekly = strat_signals.weekly_panel(daily)
    i = list(weekly.dates.astype(str)).index("2017-03-31")
    # 2017-03-27..31: open = Monday's open 213.8372, high = the week's highest high, low = Monday's 213.5422,
    # close = Friday's close; the bar is dated by its last session
    week = spy[(spy.date >= "2017-03-27") & (spy.date <= "2017-03-31")]
    assert weekly.open[i, 0] == 213.8372
    assert weekly.high[i, 0] == week.spy_high.max() and weekly.low[i, 0] == 213.5422
    assert weekly.close[i, 0] == week.spy_close.iloc[-1]
    # a week still trading is left out: through Wednesday 2017-03-29 the last weekly bar is the week of 03-24
    through = int((dates <= np.datetime64("2017-03-29")).sum())
    cut = Panel(dates[:through], ["SPY"], *(f[:through] for f in fields))
    assert str(strat_signals.weekly_panel(cut, date(2017, 3, 29)).dates[-1]) == "2017-03-24"


# --- the command ---------------------------------------------------------------------------------------------------

@pytest.fixture
def spy_env(tmp_path, monkeypatch, spy):
    stocks = tmp_path / "stocks.csv"
    with open(stocks, "w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["date", "symbol", "open", "high", "low", "close", "volume"])
        for row in spy.itertuples():
            out.writerow([row.date, "SPY", row.spy_open, row.spy_high, row.spy_low, row.spy_close, row.spy_volume])
    spy.to_csv(tmp_path / "spy_vix_daily_test.csv", index=False)
    return use_csv_journal(monkeypatch, tmp_path, stocks)


def test_strat_scan_stores_and_alerts_once_and_sends_nothing_while_options_trading_is_off(spy_env):
    # At 17:00 on 2017-03-23 that day's bar is complete: the 2-2 bullish reversal checked by hand above.
    out = run("--asof", "2017-03-23T17:00", "strat", "scan", "--timeframe", "1D", "--symbols", "SPY")
    assert "2-2 bullish reversal" in out and "1 new" in out and "options_trading is off" in out
    # During the session of 2017-03-24 the last completed bar is still 03-23: a re-run stores nothing new.
    out = run("--asof", "2017-03-24T10:00", "strat", "scan", "--timeframe", "1D", "--symbols", "SPY")
    assert "0 new" in out
    stored = rows(spy_env, "SELECT symbol, timeframe, pattern, direction, kind, bar_date, entry_trigger, target, "
                           "stop, status, alerted FROM strat_signals")
    assert stored == [{"symbol": "SPY", "timeframe": "1D", "pattern": "2-2", "direction": "bullish",
                       "kind": "reversal", "bar_date": "2017-03-23", "entry_trigger": 216.3081, "target": 219.0741,
                       "stop": 214.8698, "status": "new", "alerted": 1}]
    alerts = rows(spy_env, "SELECT message, detail FROM events WHERE kind = 'alert' AND source = 'strat'")
    assert len(alerts) == 1 and alerts[0]["message"].startswith("STRAT 1D SPY 2-2 bullish reversal (2017-03-23)")
    assert json.loads(alerts[0]["detail"])["kind"] == "strat_signal"
    assert rows(spy_env, "SELECT COUNT(*) AS n FROM orders")[0]["n"] == 0


def test_strat_scan_weekly_json(spy_env):
    out = run("--asof", "2017-04-01T12:00", "strat", "scan", "--timeframe", "1W", "--symbols", "SPY", "--json")
    data = json.loads(out)
    assert data["timeframe"] == "1W" and data["bar_date"] == "2017-03-31"


def test_strat_scan_refuses_data_that_does_not_reach_the_last_completed_session(spy_env):
    # the stocks file ends on 2017-12-29: a scan after it would classify that old bar as the latest
    result = CliRunner().invoke(command, ["--asof", "2018-01-10T12:00", "strat", "scan", "--symbols", "SPY"])
    assert result.exit_code == 2
    assert result.stderr.strip() == ("error: strat scan: no bars for 2018-01-09, the last completed session (the data "
                                     "ends on 2017-12-29)")
    assert rows(spy_env, "SELECT COUNT(*) AS n FROM strat_signals")[0]["n"] == 0


def test_strat_scan_rejects_a_bad_timeframe(spy_env):
    result = CliRunner().invoke(command, ["strat", "scan", "--timeframe", "4H"])
    assert result.exit_code == 2

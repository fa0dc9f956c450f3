"""The benchmarks of a backtest (backtest/benchmarks.py) on a crafted market: each starts at the close before the first
tradable session, the equal-weighted universe is computed exactly (gaps, a symbol whose data ends, symbols left
out), SPY total return is the adjusted close, and SPY price return is derived only from data that carries it."""
from __future__ import annotations

from datetime import date
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from backtest import benchmarks as bench
from ports.market_sources import CsvMarket

DAYS = ["2016-01-04", "2016-01-05", "2016-01-06", "2016-01-07", "2016-01-08", "2016-01-11"]
FIRST_TRADABLE = date(2016, 1, 6)
BASELINE = date(2016, 1, 5)
MEASURED = [date(2016, 1, 6), date(2016, 1, 7), date(2016, 1, 8), date(2016, 1, 11)]
CLOSES = {  # None: no row that day
    "AAA": [10, 11, 12, 13, 12, 14],
    "BBB": [20, 20, 21, None, 24, 22],  # a gap after the first tradable session: the last close carries forward
    "CCC": [40, 40, 38, 36, None, None],  # its data ends: sold at its last close (36) into cash
    "DDD": [None, None, None, 5, 6, 7],  # listed after the first tradable session: left out
    "FFF": [None, None, 9, 9, 9, 9],  # listed ON the first tradable session: nothing to buy it at the close before
}
SPY = [200.0, 201.0, 199.0, 202.0, 204.0, 203.0]
UNIVERSE = ["AAA", "BBB", "CCC", "DDD", "EEE", "FFF"]  # EEE has no data at all


def write_market(folder: Path) -> CsvMarket:
    lines = ["date,symbol,open,high,low,close,volume"]
    for symbol, closes in CLOSES.items():
        lines += [f"{day},{symbol},{c},{c},{c},{c},1000000" for day, c in zip(DAYS, closes) if c is not None]
    (folder / "stocks.csv").write_text("\n".join(lines) + "\n")
    spy = ["date,spy_open,spy_high,spy_low,spy_close,spy_volume,vix_open,vix_high,vix_low,vix_close"]
    spy += [f"{day},{c},{c},{c},{c},1000,15,15,15,15" for day, c in zip(DAYS, SPY)]
    (folder / "spy_vix_daily_crafted.csv").write_text("\n".join(spy) + "\n")
    return CsvMarket(folder / "stocks.csv", cache_dir=folder / "cache")


@pytest.fixture
def rt(tmp_path):
    universe = SimpleNamespace(symbols=lambda cap: list(UNIVERSE))
    return SimpleNamespace(market=write_market(tmp_path), universe=universe,
                           config=SimpleNamespace(universe_file="/data/universe.json"))


def by_key(curves: list[bench.Benchmark]) -> dict[str, bench.Benchmark]:
    return {curve.key: curve for curve in curves}


def test_the_equal_weighted_universe_buys_at_the_close_before_the_first_tradable_session_and_holds(rt):
    ew = by_key(bench.benchmarks(rt, BASELINE, MEASURED, 90_000.0))["equal_weighted_universe"]
    assert ew.label == "equal-weighted universe (price only)" and ew.missing is None
    # AAA, BBB and CCC have a bar on 2016-01-06 and a close on 2016-01-05: 30,000 each at 11, 20 and 40
    aaa, bbb, ccc = 30_000 / 11, 30_000 / 20, 30_000 / 40
    assert ew.values == pytest.approx([
        90_000.0,
        aaa * 12 + bbb * 21 + ccc * 38,
        aaa * 13 + bbb * 21 + ccc * 36,  # BBB has no row on 01-07: its 21 carries forward
        aaa * 12 + bbb * 24 + ccc * 36,  # CCC's data ended on 01-07: sold at 36 into cash
        aaa * 14 + bbb * 22 + ccc * 36], rel=1e-12)
    assert ew.facts == {"symbols": 3, "universe_symbols": 6, "left_out": 3, "data_ended": 1,
                        "data_ended_symbols": ["CCC"]}


def test_spy_total_return_starts_at_the_close_before_the_first_tradable_session(rt):
    curves = by_key(bench.benchmarks(rt, BASELINE, MEASURED, 90_000.0))
    spy = curves["spy_total_return"]
    assert spy.label == "SPY total return" and "dividend-adjusted" in spy.note
    assert spy.values == pytest.approx([90_000.0 * c / 201.0 for c in (201.0, 199.0, 202.0, 204.0, 203.0)])
    price = curves["spy_price_return"]
    assert price.values == [] and price.missing == "not in the data (the SPY series is dividend-adjusted)"


def test_a_later_first_tradable_session_moves_every_benchmark_baseline(rt):
    curves = by_key(bench.benchmarks(rt, date(2016, 1, 7), MEASURED[2:], 100_000.0))
    assert curves["spy_total_return"].values == pytest.approx([100_000.0, 100_000 * 204 / 202, 100_000 * 203 / 202])
    ew = curves["equal_weighted_universe"]
    # a bar on 01-08 and a close at or before 01-07: AAA (13), BBB (its 01-06 close, 21), DDD (5) and FFF (9);
    # CCC has no bar on 01-08 (its data ended), EEE none at all
    assert ew.facts["symbols"] == 4 and ew.facts["data_ended"] == 0
    shares = {"AAA": 25_000 / 13, "BBB": 25_000 / 21, "DDD": 25_000 / 5, "FFF": 25_000 / 9}
    assert ew.values == pytest.approx([100_000.0, shares["AAA"] * 12 + shares["BBB"] * 24 + shares["DDD"] * 6
                                       + shares["FFF"] * 9, shares["AAA"] * 14 + shares["BBB"] * 22
                                       + shares["DDD"] * 7 + shares["FFF"] * 9])


def test_spy_price_return_from_a_raw_close_column():
    index = pd.DatetimeIndex([pd.Timestamp(d) for d in DAYS[:4]])
    frame = pd.DataFrame({"spy_close": [95.0, 96.0, 97.0, 98.0], "spy_close_raw": [100.0, 101.0, 100.0, 102.0]},
                         index=index)
    curve = bench.spy_price_return(frame, date(2016, 1, 5), [date(2016, 1, 6), date(2016, 1, 7)], 1_000.0)
    assert curve.missing is None and curve.label == "SPY price return"
    assert curve.values == pytest.approx([1_000.0, 1_000 * 100 / 101, 1_000 * 102 / 101])


def test_raw_closes_are_recovered_from_back_adjusted_closes_and_cash_dividends():
    raw = np.array([100.0, 101.0, 99.0, 100.0])
    dividend = np.array([0.0, 0.0, 1.0, 0.0])  # ex-date on row 2: rows before it are scaled by 1 - 1 / 101
    adjusted = np.array([100.0 * 100 / 101, 101.0 * 100 / 101, 99.0, 100.0])
    assert bench.raw_from_adjusted(adjusted, dividend) == pytest.approx(raw)
    index = pd.DatetimeIndex([pd.Timestamp(d) for d in DAYS[:4]])
    frame = pd.DataFrame({"spy_close": adjusted, "spy_dividend": dividend}, index=index)
    curve = bench.spy_price_return(frame, date(2016, 1, 4), [date(2016, 1, 5), date(2016, 1, 6)], 100.0)
    assert curve.values == pytest.approx([100.0, 101.0, 99.0]) and "spy_dividend" in curve.note


def test_dividends_kept_as_cash_when_the_data_carries_them():
    index = np.array(DAYS[:3], dtype="datetime64[D]")
    closes = np.array([[10.0, 20.0], [10.0, 20.0], [9.0, 21.0]])
    curve = bench.equal_weighted(index, ["AAA", "BBB"], closes, date(2016, 1, 4), [date(2016, 1, 5),
                                 date(2016, 1, 6)], 1_000.0, dividends={("AAA", date(2016, 1, 6)): 0.5,
                                                                         ("AAA", date(2016, 1, 4)): 9.0})
    # 50 AAA and 25 BBB; AAA pays 0.5 a share on 01-06 (the 01-04 dividend went ex before the purchase)
    assert curve.values == pytest.approx([1_000.0, 1_000.0, 50 * 9.0 + 25 * 21.0 + 50 * 0.5])
    assert curve.label == "equal-weighted universe (dividends kept as cash)"


def test_last_values_carry_forward_and_nothing_is_known_before_the_first():
    index = np.array(["2016-01-05", "2016-01-07"], dtype="datetime64[D]")
    values = np.array([[1.0, np.nan], [2.0, 3.0]])
    out = bench.carried_forward(index, values, [date(2016, 1, 4), date(2016, 1, 6), date(2016, 1, 8)])
    assert np.isnan(out[0]).all() and out[1, 0] == 1.0 and np.isnan(out[1, 1]) and list(out[2]) == [2.0, 3.0]


def test_the_universe_is_described_by_itself_or_as_todays_members_of_its_file():
    pit = SimpleNamespace(universe=SimpleNamespace(describe=lambda: "point-in-time members, 20 periods"))
    assert bench.universe_text(pit) == "point-in-time members, 20 periods"
    fixed = SimpleNamespace(universe=SimpleNamespace(symbols=lambda cap: ["AAA", "BBB"]),
                            config=SimpleNamespace(universe_file="/data/universe.json"))
    assert bench.universe_text(fixed) == ("today's members: /data/universe.json (2 symbols), not the membership of "
                                          "the day (survivors only)")


def test_a_point_in_time_universe_gives_its_members_of_the_first_tradable_session(rt):
    asked = []

    def symbols(cap, on=None):
        asked.append(on)
        return ["AAA", "BBB"] if on == FIRST_TRADABLE else list(UNIVERSE)

    rt.universe = SimpleNamespace(point_in_time=True, symbols=symbols)
    ew = by_key(bench.benchmarks(rt, BASELINE, MEASURED, 60_000.0))["equal_weighted_universe"]
    assert asked == [FIRST_TRADABLE] and ew.facts["symbols"] == 2 and ew.facts["universe_symbols"] == 2
    assert ew.values[-1] == pytest.approx(30_000 * 14 / 11 + 30_000 * 22 / 20)


def test_a_market_file_with_spy_s_raw_close_gives_the_price_return_benchmark(tmp_path, rt):
    path = tmp_path / "spy_vix_daily_crafted.csv"
    lines = path.read_text().splitlines()
    raw = [c + 10.0 for c in SPY]  # a price-only series (crafted: its own figures, checked exactly)
    path.write_text("\n".join([lines[0] + ",spy_close_raw"] + [f"{line},{r}" for line, r in zip(lines[1:], raw)])
                    + "\n")
    market = CsvMarket(tmp_path / "stocks.csv", cache_dir=tmp_path / "cache2")
    assert "spy_close_raw" in market.market_series(date(2016, 1, 4), date(2016, 1, 11)).columns
    price = by_key(bench.benchmarks(SimpleNamespace(**{**vars(rt), "market": market}), BASELINE, MEASURED,
                                    90_000.0))["spy_price_return"]
    assert price.missing is None
    assert price.values == pytest.approx([90_000.0 * c / 211.0 for c in (211.0, 209.0, 212.0, 214.0, 213.0)])

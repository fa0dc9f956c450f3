"""Market-data ports: the synthetic sim market and the csv replay (real data where ../shared/data is present)."""
from __future__ import annotations

import csv
import gzip
import json
import logging
import time
from datetime import date
from pathlib import Path

import numpy as np
import pytest

from common.clock import calendar
from common.errors import ConfigError, DataError
from common.types import DAILY
from ports import market_sources
from ports.market_factory import open_market
from ports.market_sources import CsvMarket, SimMarket

from conftest import ROOT, require_shared_data

STOCKS_FILE = "sp500_daily_2013_2018.csv.gz"
MARKET_FILE = "spy_vix_daily_1993_2018.csv"
MIDDAY = 180 / 390  # 12:30 in a full session


def universe_symbols() -> list[str]:
    caps = json.loads((ROOT / "data" / "universe.json").read_text())["symbols"]
    return caps["large"] + caps["mid"] + caps["small"]


# --------------------------------------------------------------------------------------------------------- sim

def test_sim_bar_is_the_same_whatever_else_is_requested():
    sim = SimMarket()
    wide = sim.bars(["AAPL", "MSFT", "ZZZZ"], date(2015, 1, 2), date(2016, 12, 30))
    narrow = SimMarket().bars(["QQQQ", "AAPL"], date(2016, 3, 1), date(2016, 3, 31))
    rows = np.isin(wide.dates, narrow.dates)
    assert rows.sum() == len(narrow.dates) == 22
    for name in ("open", "high", "low", "close", "volume"):
        assert np.array_equal(getattr(wide, name)[rows, 0], getattr(narrow, name)[:, 1]), name


def test_sim_snapshot_agrees_with_bars():
    sim = SimMarket()
    session = date(2016, 3, 15)
    panel = sim.bars(["AAPL", "SPY"], date(2016, 3, 14), session)
    whole_day = sim.snapshot(["SPY", "AAPL"], session, 1.0)
    assert whole_day.price.tolist() == panel.close[1, ::-1].tolist()
    assert whole_day.high.tolist() == panel.high[1, ::-1].tolist()
    assert whole_day.volume.tolist() == panel.volume[1, ::-1].tolist()
    assert whole_day.prev_close.tolist() == panel.close[0, ::-1].tolist()
    assert whole_day.view == DAILY
    midday = sim.snapshot(["AAPL"], session, 0.5)  # daily bars: only the open is knowable before the close
    o = panel.open[1, 0]
    assert (midday.price[0], midday.high[0], midday.low[0], midday.open[0]) == (o, o, o, o)
    assert np.isnan(midday.volume[0]) and midday.view == DAILY
    assert midday.ask[0] - midday.bid[0] == pytest.approx(midday.price[0] * 0.001)


def test_sim_bars_are_sane_ohlcv():
    panel = SimMarket().bars(universe_symbols(), date(2020, 1, 2), date(2021, 3, 31))
    sessions = calendar().sessions(date(2020, 1, 2), date(2021, 3, 31))
    assert panel.close.shape == (len(sessions), len(universe_symbols())) == (314, 205)
    assert np.isfinite(panel.close).all() and (panel.low > 0).all()
    assert (panel.high >= np.maximum(panel.open, panel.close)).all()
    assert (panel.low <= np.minimum(panel.open, panel.close)).all()
    assert (panel.volume >= 1).all() and np.array_equal(panel.volume, np.rint(panel.volume))
    returns = np.diff(np.log(panel.close), axis=0)
    assert 0.01 < returns.std() < 0.04
    kurtosis = ((returns - returns.mean()) ** 4).mean() / returns.var() ** 2
    assert kurtosis > 4  # fat tails
    gaps = panel.open[1:] / panel.close[:-1] - 1
    assert 0.005 < (gaps > 0.02).mean() < 0.05


def test_sim_dates_are_nyse_sessions_and_start_at_the_epoch():
    sim = SimMarket()
    panel = sim.bars(["AAPL"], date(2016, 11, 20), date(2016, 11, 30))
    expected = calendar().sessions(date(2016, 11, 20), date(2016, 11, 30))
    assert [d.astype(date) for d in panel.dates] == expected  # Thanksgiving 11-24 absent
    with pytest.raises(DataError, match="starts on 2010-01-04"):
        sim.bars(["AAPL"], date(2009, 12, 1), date(2010, 2, 1))
    with pytest.raises(DataError, match="not an NYSE session"):
        sim.snapshot(["AAPL"], date(2016, 11, 24), 0.5)


def test_sim_spy_and_vix_behave_like_an_index_and_its_fear_gauge():
    sim = SimMarket(["AAPL"])
    series = sim.market_series(date(2010, 1, 4), date(2019, 12, 31))
    spy_returns = np.diff(np.log(series["spy_close"].to_numpy()))
    vix = series["vix_close"].to_numpy()
    assert 0.006 < spy_returns.std() < 0.013
    assert series["spy_close"].iloc[-1] > series["spy_close"].iloc[0]
    assert 14 < np.median(vix) < 20 and vix.min() > 8 and vix.max() < 90
    assert np.corrcoef(spy_returns, np.diff(np.log(vix)))[0, 1] < -0.5
    worst_day = int(np.argmin(spy_returns))
    assert vix[worst_day + 1] / vix[worst_day] > 1.2  # a sell-off spikes VIX
    spy_bars = sim.bars(["SPY"], date(2012, 5, 1), date(2012, 5, 31))
    assert np.array_equal(spy_bars.close[:, 0], series.loc["2012-05-01":"2012-05-31", "spy_close"].to_numpy())
    assert sim.known_symbols() == ["AAPL"]


def _quick_rule_passes(sim: SimMarket, symbols: list[str], sessions: list[date]) -> np.ndarray:
    """How many symbols pass the scanner's stage 1 and the momentum-breakout stage 2 (mid-cap limits) per session."""
    panel = sim.bars(symbols, calendar().sessions_back(sessions[0], 30), sessions[-1])
    day_index = {d.astype(date): i for i, d in enumerate(panel.dates)}
    counts = []
    for session in sessions:
        i = day_index[session]
        snap = sim.snapshot(symbols, session, MIDDAY)  # the open, and yesterday's relative volume
        rvol = panel.volume[i - 1] / panel.volume[i - 21:i - 1].mean(axis=0)
        stage1 = (snap.price > 5) & (snap.price / snap.prev_close - 1 > 0.005) & (rvol >= 1.2)
        gap_up = snap.open / panel.close[i - 1] - 1
        breakout = snap.price > panel.high[i - 5:i].max(axis=0)
        momentum = (((gap_up >= 0.01) & (snap.price > snap.open)) | breakout) & (rvol >= 1.3)
        roc_10d = snap.price / panel.close[i - 10] - 1
        counts.append(int((stage1 & momentum & (roc_10d >= 0.03)).sum()))
    return np.array(counts)


def test_sim_offers_a_handful_of_setups_on_most_sessions():
    sessions = calendar().sessions(date(2016, 1, 1), date(2016, 6, 30))[-60:]
    passes = _quick_rule_passes(SimMarket(), universe_symbols(), sessions)
    # Seen at midday through daily bars (the open and yesterday's volume), most sessions still offer a setup.
    assert (passes >= 1).mean() >= 0.6
    assert (passes >= 2).mean() >= 0.4
    assert 1 <= np.median(passes) <= 15  # a handful, not the whole universe


def test_sim_is_vectorised_fast():
    sim = SimMarket()
    symbols = universe_symbols()
    sim.bars(symbols, date(2019, 1, 2), date(2020, 3, 31))  # calendar load
    started = time.perf_counter()
    panel = sim.bars(symbols, date(2019, 1, 2), date(2020, 3, 31))
    assert panel.close.shape == (314, len(symbols))
    assert time.perf_counter() - started < 0.3  # typically ~20 ms


# ---------------------------------------------------------------------------------------------- csv (small files)

HEADER = "date,symbol,open,high,low,close,volume\n"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def small_csv(tmp_path) -> Path:
    rows = ["2016-03-01,AAA,10,11,9.5,10.5,1000", "2016-03-01,BBB,20,21,19,20.5,2000",
            "2016-03-02,AAA,10.5,12,10.4,11.8,3000",  # BBB missing this day
            "2016-03-03,AAA,11.8,12.2,11,11.2,1500", "2016-03-03,BBB,21,22,20.8,21.9,2500"]
    return write(tmp_path / "stocks.csv", HEADER + "\n".join(rows) + "\n")


def test_csv_bars_pivot_with_nan_for_absent_rows_and_unknown_symbols(small_csv, tmp_path):
    data = CsvMarket(small_csv, cache_dir=tmp_path / "cache")
    panel = data.bars(["BBB", "NOPE", "AAA"], date(2016, 3, 2), date(2016, 3, 31))
    assert [str(d) for d in panel.dates] == ["2016-03-02", "2016-03-03"]
    assert np.isnan(panel.close[0, 0]) and panel.close[1, 0] == 21.9
    assert np.isnan(panel.close[:, 1]).all()
    assert panel.volume[:, 2].tolist() == [3000.0, 1500.0]
    assert (data.first_date, data.last_date) == (date(2016, 3, 1), date(2016, 3, 3))
    assert data.known_symbols() == ["AAA", "BBB"]


def test_csv_bars_repeat_from_memory_and_cannot_be_changed_through_a_caller(small_csv, tmp_path):
    data = CsvMarket(small_csv, cache_dir=tmp_path / "cache")
    first = data.bars(["AAA", "BBB"], date(2016, 3, 1), date(2016, 3, 3))
    again = data.bars(["AAA", "BBB"], date(2016, 3, 1), date(2016, 3, 3))
    assert again.close is first.close  # served from the memo, not gathered again
    with pytest.raises(ValueError, match="read-only"):
        first.close[0, 0] = 1.0
    assert data.bars(["BBB", "AAA"], date(2016, 3, 1), date(2016, 3, 3)).close[:, 1].tolist() == \
        first.close[:, 0].tolist()


def test_csv_snapshot_uses_the_last_close_before_the_session(small_csv, tmp_path):
    data = CsvMarket(small_csv, cache_dir=tmp_path / "cache")
    snap = data.snapshot(["AAA", "BBB"], date(2016, 3, 3), 0.5)
    assert snap.prev_close.tolist() == [11.8, 20.5]  # BBB skipped 03-02
    assert snap.price[0] == snap.high[0] == snap.low[0] == 11.8  # the open: nothing later is knowable at midday
    assert np.isnan(snap.volume).all()
    closed = data.snapshot(["AAA", "BBB"], date(2016, 3, 3), 1.0)  # from the close on, the whole bar
    assert (closed.price[0], closed.high[0], closed.low[0], closed.volume[1]) == (11.2, 12.2, 11, 2500)
    with pytest.raises(DataError) as caught:
        data.snapshot(["AAA"], date(2016, 3, 4), 0.5)
    assert str(caught.value) == f"no data for session 2016-03-04 in {small_csv} (covers 2016-03-01 .. 2016-03-03)"


def test_csv_missing_columns_is_one_line_naming_file_and_columns(tmp_path):
    bad = write(tmp_path / "bad.csv", "Date,Symbol,open,high,low,close\n2016-03-01,AAA,1,2,0.5,1.5\n")
    with pytest.raises(DataError) as caught:
        CsvMarket(bad, cache_dir=tmp_path / "cache")
    message = str(caught.value)
    assert "\n" not in message and str(bad) in message
    assert "missing column(s) date, symbol, volume" in message


@pytest.mark.parametrize("content", [None, "", b"\x1f\x8b\x08 not really gzip"])
def test_csv_unreadable_file_is_a_data_error(tmp_path, content):
    path = tmp_path / ("stocks.csv.gz" if isinstance(content, bytes) else "stocks.csv")
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(DataError) as caught:
        CsvMarket(path, cache_dir=tmp_path / "cache")
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)


def test_csv_conflicting_duplicate_rows_are_refused_naming_them(tmp_path):
    path = write(tmp_path / "dup.csv", HEADER + "2016-03-01,AAA,1,2,0.5,1.5,10\n2016-03-01,BBB,1,2,0.5,1.5,10\n"
                                                "2016-03-01,AAA,1,2,0.5,1.7,20\n")
    with pytest.raises(DataError) as caught:
        CsvMarket(path, cache_dir=tmp_path / "cache")
    assert str(caught.value) == (f"{path}: conflicting duplicate rows for AAA on 2016-03-01 (close 1.5 vs 1.7, "
                                 f"volume 10 vs 20); keep one row per key in the file")
    assert not (tmp_path / "cache").exists()  # nothing of a refused file is cached


def test_csv_identical_duplicate_rows_are_dropped_with_a_named_warning(tmp_path, caplog):
    rows = ["2016-03-01,AAA,1,2,0.5,1.5,", "2016-03-02,AAA,1.5,2,1,1.9,30", "2016-03-01,AAA,1,2,0.5,1.5,"]
    path = write(tmp_path / "twice.csv", HEADER + "\n".join(rows) + "\n")
    with caplog.at_level(logging.WARNING, logger="ports.market_sources"):
        data = CsvMarket(path, cache_dir=tmp_path / "cache")
    assert data.bars(["AAA"], date(2016, 3, 1), date(2016, 3, 2)).close[:, 0].tolist() == [1.5, 1.9]
    assert f"{path}: 1 repeated row(s) dropped (identical duplicates: AAA on 2016-03-01)" in caplog.text


def test_csv_text_in_a_number_column_reads_as_missing(tmp_path, caplog):
    path = write(tmp_path / "text.csv", HEADER + "2016-03-01,AAA,abc,2,0.5,1.5,10\n2016-03-02,AAA,1.5,2,1,1.9,30\n")
    with caplog.at_level(logging.WARNING, logger="market"):
        panel = CsvMarket(path, cache_dir=tmp_path / "cache").bars(["AAA"], date(2016, 3, 1), date(2016, 3, 2))
    assert np.isnan(panel.open[0, 0]) and panel.open[1, 0] == 1.5 and panel.close[:, 0].tolist() == [1.5, 1.9]
    assert "1 non-numeric value(s) in column open" in caplog.text


def test_csv_gzip_source_and_cache_round_trip(tmp_path, monkeypatch):
    source = tmp_path / "stocks.csv.gz"
    with gzip.open(source, "wt") as out:
        out.write(HEADER + "2016-03-01,AAA,1,2,0.5,1.5,10\n2016-03-02,AAA,1.5,2,1,1.9,30\n")
    cache = tmp_path / "cache"
    first = CsvMarket(source, cache_dir=cache)
    assert len(list(cache.glob("*.npz"))) == 1 and not list(cache.glob("*.tmp"))

    def no_parsing(path):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(market_sources, "parse_stock_file", no_parsing)
    second = CsvMarket(source, cache_dir=cache)
    for name in ("open", "high", "low", "close", "volume"):
        assert np.array_equal(first._fields[name], second._fields[name], equal_nan=True)
    assert second.symbols == first.symbols and np.array_equal(second.dates, first.dates)


def test_csv_cache_is_refreshed_when_the_source_changes_and_survives_corruption(tmp_path, small_csv):
    cache = tmp_path / "cache"
    CsvMarket(small_csv, cache_dir=cache)
    write(small_csv, HEADER + "2016-03-01,AAA,10,11,9.5,10.25,1000\n2016-03-02,AAA,10,11,9.5,10.75,1000\n")
    assert CsvMarket(small_csv, cache_dir=cache).bars(["AAA"], date(2016, 3, 1), date(2016, 3, 2)
                                                       ).close[:, 0].tolist() == [10.25, 10.75]
    (cache_file,) = cache.glob("*.npz")
    cache_file.write_bytes(b"garbage")
    assert CsvMarket(small_csv, cache_dir=cache).known_symbols() == ["AAA"]


def test_csv_without_market_file_fails_only_when_spy_vix_is_asked(small_csv, tmp_path):
    data = CsvMarket(small_csv, cache_dir=tmp_path / "cache")
    assert np.isnan(data.bars(["SPY"], date(2016, 3, 1), date(2016, 3, 3)).close).all()
    with pytest.raises(DataError, match="no SPY/VIX data for .*give --market PATH"):
        data.market_series(date(2016, 3, 1), date(2016, 3, 3))
    with pytest.raises(DataError, match="not found"):
        CsvMarket(small_csv, market_path=tmp_path / "absent.csv", cache_dir=tmp_path / "cache")


# --------------------------------------------------------------------------------------------------------- factory

def test_open_market_sources(small_csv, tmp_path):
    sim = open_market("sim", universe_symbols=["AAPL", "MSFT"])
    assert isinstance(sim, SimMarket) and sim.known_symbols() == ["AAPL", "MSFT"]
    replay = open_market(f"csv:{small_csv}", cache_dir=tmp_path / "cache")
    assert isinstance(replay, CsvMarket) and replay.known_symbols() == ["AAA", "BBB"]
    with pytest.raises(ConfigError) as caught:
        open_market("foo")
    assert str(caught.value) == "--data: unknown source 'foo' (use sim, csv:PATH or alpaca)"
    with pytest.raises(ConfigError, match="alpaca market data needs API keys"):
        open_market("alpaca")
    with pytest.raises(DataError, match="not found"):
        open_market(f"csv:{tmp_path / 'absent.csv.gz'}", cache_dir=tmp_path / "cache")


# ------------------------------------------------------------------------------------------------ csv (real data)

@pytest.fixture(scope="module")
def real(tmp_path_factory) -> CsvMarket:
    path = require_shared_data(STOCKS_FILE)
    return CsvMarket(path, cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def raw_rows() -> dict[tuple[str, str], dict[str, str]]:
    """The raw CSV rows the tests compare against, read with the plain csv module."""
    wanted = {("2016-06-01", "AAPL"), ("2016-05-31", "AAPL"), ("2014-05-19", "AOS"), ("2013-04-25", "BMY"),
              ("2013-04-29", "BMY"), ("2016-05-19", "LNT")}
    found = {}
    with gzip.open(require_shared_data(STOCKS_FILE), "rt", newline="") as handle:
        for row in csv.DictReader(handle):
            if (row["date"], row["symbol"]) in wanted:
                found[(row["date"], row["symbol"])] = row
    return found


@pytest.mark.slow
def test_real_bars_match_the_raw_rows(real, raw_rows):
    panel = real.bars(["AAPL", "LNT", "AOS"], date(2014, 5, 19), date(2016, 6, 1))
    row_of = {str(d): i for i, d in enumerate(panel.dates)}
    compared = [(day, symbol) for day, symbol in raw_rows if symbol in panel.symbols]
    assert len(compared) == 4
    for day, symbol in compared:
        raw, j = raw_rows[(day, symbol)], panel.column(symbol)
        for name in ("open", "high", "low", "close", "volume"):
            assert getattr(panel, name)[row_of[day], j] == float(raw[name]), (day, symbol, name)
    assert panel.high[row_of["2014-05-19"], 2] < panel.low[row_of["2014-05-19"], 2]  # dirty row kept as is
    assert len(real.known_symbols()) == 505 and (real.first_date, real.last_date) == (date(2013, 2, 8),
                                                                                      date(2018, 2, 7))


def test_real_snapshot_shows_only_what_was_knowable(real, raw_rows):
    snap = real.snapshot(["AAPL", "BMY", "AOS", "DHR"], date(2016, 6, 1), 0.4)
    today, before = raw_rows[("2016-06-01", "AAPL")], raw_rows[("2016-05-31", "AAPL")]
    o = float(today["open"])
    assert (snap.price[0], snap.high[0], snap.low[0]) == (o, o, o)
    assert np.isnan(snap.volume).all() and snap.view == DAILY
    assert snap.prev_close[0] == float(before["close"])
    assert snap.bid[0] == pytest.approx(snap.price[0] * (1 - 0.0005))
    gap_day = real.snapshot(["BMY"], date(2013, 4, 29), 0.5)  # BMY has no row on 2013-04-26
    assert gap_day.prev_close[0] == float(raw_rows[("2013-04-25", "BMY")]["close"])


def test_real_dirty_rows_load_without_crashing(real):
    missing_open = real.snapshot(["DHR", "ES", "O", "AAPL"], date(2015, 7, 17), 0.5)
    assert np.isnan(missing_open.open[:3]).all() and np.isfinite(missing_open.price[3])
    aos = real.snapshot(["AOS"], date(2014, 5, 19), 0.5)
    assert np.isfinite(aos.price[0]) and aos.low[0] <= aos.price[0] <= aos.high[0]
    lnt = real.bars(["LNT"], date(2016, 5, 19), date(2016, 5, 19))
    assert lnt.close[0, 0] == 17.87  # the bad close stays; the scanner decides


def test_real_companion_spy_vix_file_is_picked_up(real):
    assert real.market_path is not None and real.market_path.name == MARKET_FILE
    series = real.market_series(date(2018, 2, 1), date(2018, 2, 7))
    assert series.loc["2018-02-05", "vix_close"] == 37.32
    assert series.loc["2018-02-02", "vix_close"] == 17.31
    with open(require_shared_data(MARKET_FILE), newline="") as handle:
        raw = {row["date"]: row for row in csv.DictReader(handle)}
    spy = real.bars(["SPY", "AAPL"], date(2009, 3, 6), date(2009, 3, 10))
    assert [str(d) for d in spy.dates] == ["2009-03-06", "2009-03-09", "2009-03-10"]
    assert spy.close[:, 0].tolist() == [float(raw[d]["spy_close"]) for d in ("2009-03-06", "2009-03-09",
                                                                               "2009-03-10")]
    assert np.isnan(spy.close[:, 1]).all()
    snap = real.snapshot(["SPY"], date(2016, 6, 1), 1.0)
    assert snap.price[0] == float(raw["2016-06-01"]["spy_close"])
    assert snap.prev_close[0] == float(raw["2016-05-31"]["spy_close"])


def test_real_session_outside_the_file_is_one_clear_line(real):
    with pytest.raises(DataError) as caught:
        real.snapshot(["AAPL"], date(2019, 1, 2), 0.5)
    assert str(caught.value).endswith("(covers 2013-02-08 .. 2018-02-07)")
    assert str(caught.value).startswith("no data for session 2019-01-02 in ")


def test_real_warm_load_is_fast(real):
    started = time.perf_counter()
    warm = CsvMarket(real.path, cache_dir=real.cache_dir)
    assert time.perf_counter() - started < 0.5  # typically ~15 ms
    assert np.array_equal(warm._fields["close"], real._fields["close"], equal_nan=True)

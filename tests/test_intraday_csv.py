"""The intraday csv source: what a moment of a replayed session may know, from small hand-made bar files."""
from __future__ import annotations

import gzip
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pytest

from common.clock import calendar
from common.errors import DataError
from common.types import INTRADAY
from ports import intraday_csv
from ports.intraday_csv import IntradayCsvMarket, is_intraday_file

THU, FRI = date(2024, 6, 13), date(2024, 6, 14)  # regular sessions, 13:30Z-20:00Z
EARLY = date(2024, 7, 3)  # early close: 13:30Z-17:00Z
HEADER = "timestamp,symbol,open,high,low,close,volume\n"

# 5-minute bars. AAA trades from the open; BBB's first bar starts at 09:35. Rows before the open and at the close
# are extended hours and must not count. Order in the file is deliberately not sorted.
FIVE_MINUTE_ROWS = """\
2024-06-13T13:35:00Z,AAA,10.5,12,10.4,11.8,200
2024-06-13T12:00:00Z,AAA,9,30,1,9,5000
2024-06-13T13:30:00Z,AAA,10,11,9.5,10.5,100
2024-06-13T09:35:00-04:00,BBB,20,21,19,20.5,50
2024-06-13T19:55:00Z,AAA,11.8,11.9,11,11.2,300
2024-06-13T20:00:00Z,AAA,11.2,50,1,11.2,7000
2024-06-14T13:30:00Z,AAA,11.5,11.6,11.4,11.5,10
2024-06-14T13:35:00Z,AAA,11.5,11.7,11.3,11.6,20
"""

# 1-minute bars over an early close (13:00 New York): the 12:59 bar is the last regular one.
ONE_MINUTE_ROWS = """\
2024-07-03T13:30:00Z,CCC,50,50.5,49.8,50.2,1000
2024-07-03T13:31:00Z,CCC,50.2,50.9,50.1,50.8,500
2024-07-03T16:59:00Z,CCC,51,51.4,50.9,51.3,700
2024-07-03T17:00:00Z,CCC,51.3,60,40,51.3,9999
"""


def write(path: Path, rows: str, header: str = HEADER) -> Path:
    text = header + rows
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt") as handle:
            handle.write(text)
    else:
        path.write_text(text)
    return path


@pytest.fixture
def five(tmp_path) -> IntradayCsvMarket:
    return IntradayCsvMarket(write(tmp_path / "bars_5min.csv", FIVE_MINUTE_ROWS), cache_dir=tmp_path / "cache")


def at(day: date, hh: int, mm: int, ss: int = 0) -> float:
    """The session fraction of a UTC wall time, as the clock computes it."""
    return calendar().session(day).fraction(datetime(day.year, day.month, day.day, hh, mm, ss, tzinfo=UTC))


def view(snap, symbol: str) -> tuple:
    j = snap.index(symbol)
    return tuple(None if np.isnan(v) else float(v) for v in (snap.open[j], snap.price[j], snap.high[j], snap.low[j],
                                                              snap.volume[j]))


# -- snapshots ---------------------------------------------------------------------------------------------------

def test_at_the_opening_bell_only_the_opening_print_is_known(five):
    snap = five.snapshot(["AAA", "BBB"], THU, 0.0)
    assert snap.view == INTRADAY and snap.fraction == 0.0
    assert view(snap, "AAA") == (10.0, 10.0, 10.0, 10.0, 0.0)
    assert view(snap, "BBB") == (None, None, None, None, None)  # its first bar starts at 09:35


def test_inside_a_bar_the_bar_is_not_known_yet(five):
    snap = five.snapshot(["AAA", "BBB"], THU, at(THU, 13, 34, 59))
    assert view(snap, "AAA") == (10.0, 10.0, 10.0, 10.0, 0.0)
    assert view(snap, "BBB") == (None, None, None, None, None)


def test_exactly_at_a_bar_end_the_bar_is_known(five):
    snap = five.snapshot(["AAA", "BBB"], THU, at(THU, 13, 35))
    assert view(snap, "AAA") == (10.0, 10.5, 11.0, 9.5, 100.0)
    assert view(snap, "BBB") == (20.0, 20.0, 20.0, 20.0, 0.0)  # its opening print, at its first bar's start


def test_mid_session_shows_the_completed_bars_so_far(five):
    snap = five.snapshot(["AAA", "BBB"], THU, 0.5)
    assert view(snap, "AAA") == (10.0, 11.8, 12.0, 9.5, 300.0)
    assert view(snap, "BBB") == (20.0, 20.5, 21.0, 19.0, 50.0)
    j = snap.index("AAA")
    assert (snap.bid[j], snap.ask[j]) == pytest.approx((11.8 - 11.8 * 0.0005, 11.8 + 11.8 * 0.0005))


def test_the_last_bar_ends_at_the_close(five):
    assert view(five.snapshot(["AAA"], THU, at(THU, 19, 59)), "AAA")[1] == 11.8
    for fraction in (1.0, 1.7):
        snap = five.snapshot(["AAA"], THU, fraction)
        assert view(snap, "AAA") == (10.0, 11.2, 12.0, 9.5, 600.0)  # extended-hours rows left out
        assert snap.fraction == 1.0


def test_prev_close_is_the_last_close_of_an_earlier_session(five):
    first = five.snapshot(["AAA", "BBB"], THU, 0.5)
    assert np.isnan(first.prev_close).all()
    snap = five.snapshot(["AAA", "BBB"], FRI, 0.0)
    assert snap.prev_close.tolist() == [11.2, 20.5]
    assert view(snap, "BBB") == (None, None, None, None, None)  # no bar on Friday


def test_unknown_symbols_are_nan_and_a_missing_session_is_one_line(five):
    snap = five.snapshot(["ZZZ", "AAA"], FRI, 1.0)
    assert view(snap, "ZZZ") == (None, None, None, None, None) and np.isnan(snap.prev_close[0])
    assert view(snap, "AAA") == (11.5, 11.6, 11.7, 11.3, 30.0)
    with pytest.raises(DataError) as caught:
        five.snapshot(["AAA"], date(2024, 6, 12), 0.5)
    message = str(caught.value)
    assert "\n" not in message and "no data for session 2024-06-12" in message and "2024-06-13 .. 2024-06-14" in message
    with pytest.raises(DataError, match="no data for session 2024-06-15"):
        five.session_bars(["AAA"], date(2024, 6, 15))


def test_early_close_with_one_minute_bars(tmp_path):
    market = IntradayCsvMarket(write(tmp_path / "early.csv.gz", ONE_MINUTE_ROWS), cache_dir=tmp_path / "cache")
    assert market.bar_seconds == 60
    assert view(market.snapshot(["CCC"], EARLY, at(EARLY, 13, 31)), "CCC") == (50.0, 50.2, 50.5, 49.8, 1000.0)
    assert view(market.snapshot(["CCC"], EARLY, at(EARLY, 16, 59, 30)), "CCC")[1:] == (50.8, 50.9, 49.8, 1500.0)
    assert view(market.snapshot(["CCC"], EARLY, 1.0), "CCC") == (50.0, 51.3, 51.4, 49.8, 2200.0)
    bars = market.session_bars(["CCC"], EARLY)
    assert bars.ends.tolist() == [60 / 12600, 120 / 12600, 1.0]


# -- session bars and daily bars ---------------------------------------------------------------------------------

def test_session_bars_are_the_regular_bars_in_time_order(five):
    bars = five.session_bars(["BBB", "AAA", "ZZZ"], THU)
    assert bars.symbols == ["BBB", "AAA", "ZZZ"]
    assert bars.ends.tolist() == [300 / 23400, 600 / 23400, 1.0]
    assert bars.close[:, 1].tolist() == [10.5, 11.8, 11.2]
    assert np.isnan(bars.close[[0, 2], 0]).all() and bars.close[1, 0] == 20.5
    assert bars.volume[:, 1].tolist() == [100, 200, 300]
    assert np.isnan(bars.open[:, 2]).all()


def test_daily_bars_aggregate_the_regular_session(five):
    panel = five.bars(["AAA", "BBB", "ZZZ"], date(2024, 6, 1), date(2024, 6, 30))
    assert panel.dates.tolist() == [THU, FRI]
    assert panel.frame("AAA").loc["2024-06-13"].tolist() == [10.0, 12.0, 9.5, 11.2, 600.0]
    assert panel.frame("AAA").loc["2024-06-14"].tolist() == [11.5, 11.7, 11.3, 11.6, 30.0]
    assert panel.frame("BBB").loc["2024-06-13"].tolist() == [20.0, 21.0, 19.0, 20.5, 50.0]
    assert np.isnan(panel.frame("BBB").loc["2024-06-14"]).all() and np.isnan(panel.close[:, 2]).all()
    assert five.bars(["AAA"], FRI, FRI).close.tolist() == [[11.6]]
    assert (five.first_date, five.last_date, five.known_symbols()) == (THU, FRI, ["AAA", "BBB"])


def test_spy_comes_from_the_market_file_when_the_bars_have_none(tmp_path):
    (tmp_path / "spy_vix_daily.csv").write_text(
        "date,spy_open,spy_high,spy_low,spy_close,spy_volume,vix_open,vix_high,vix_low,vix_close\n"
        "2024-06-12,530,535,528,534,100,12,13,11,12.5\n"
        "2024-06-13,534,538,533,537,200,12.5,13,12,12.2\n")
    market = IntradayCsvMarket(write(tmp_path / "bars.csv", FIVE_MINUTE_ROWS), cache_dir=tmp_path / "cache")
    panel = market.bars(["AAA", "SPY"], date(2024, 6, 12), THU)
    assert panel.dates.tolist() == [date(2024, 6, 12), THU]
    assert panel.close[:, 1].tolist() == [534.0, 537.0] and np.isnan(panel.close[0, 0])
    midday = market.snapshot(["SPY"], THU, 0.5)
    assert view(midday, "SPY") == (534.0, 534.0, 534.0, 534.0, None) and midday.prev_close[0] == 534.0
    assert view(market.snapshot(["SPY"], THU, 1.0), "SPY") == (534.0, 537.0, 538.0, 533.0, 200.0)
    assert market.market_series(THU, THU)["vix_close"].tolist() == [12.2]
    assert market.market_first_date == date(2024, 6, 12)


# -- cache, detection and bad files ------------------------------------------------------------------------------

def test_the_parsed_file_is_cached(tmp_path, monkeypatch):
    path = write(tmp_path / "bars.csv", FIVE_MINUTE_ROWS)
    first = IntradayCsvMarket(path, cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("bars-*.npz"))) == 1

    def no_parse(_path):
        raise AssertionError("parsed again instead of using the cache")

    monkeypatch.setattr(intraday_csv, "parse_intraday_file", no_parse)
    second = IntradayCsvMarket(path, cache_dir=tmp_path / "cache")
    assert view(second.snapshot(["AAA"], THU, 0.5), "AAA") == view(first.snapshot(["AAA"], THU, 0.5), "AAA")


def test_is_intraday_file_reads_the_header(tmp_path):
    assert is_intraday_file(write(tmp_path / "a.csv", ""))
    assert is_intraday_file(write(tmp_path / "a.csv.gz", ""))
    assert not is_intraday_file(write(tmp_path / "d.csv", "", header="date,symbol,open,high,low,close,volume\n"))
    assert not is_intraday_file(tmp_path / "absent.csv")
    (tmp_path / "broken.csv.gz").write_bytes(b"not gzip at all")
    assert not is_intraday_file(tmp_path / "broken.csv.gz")


@pytest.mark.parametrize("name, content, fragment", [
    ("no_volume.csv", "timestamp,symbol,open,high,low,close\n2024-06-13T13:30:00Z,A,1,1,1,1\n",
     "missing column(s) volume"),
    ("naive.csv", HEADER + "2024-06-13T09:30:00,A,1,1,1,1,1\n2024-06-13T09:35:00,A,1,1,1,1,1\n", "no UTC offset"),
    ("garbled.csv", HEADER + "yesterday noonZ,A,1,1,1,1,1\n", "bad timestamp"),
    ("odd_gap.csv", HEADER + "2024-06-13T13:30:00Z,A,1,1,1,1,1\n2024-06-13T13:31:30Z,A,1,1,1,1,1\n",
     "bars must be 1 or 5 minutes"),
    ("single.csv", HEADER + "2024-06-13T13:30:00Z,A,1,1,1,1,1\n2024-06-13T13:30:00Z,B,1,1,1,1,1\n",
     "cannot tell the bar length"),
    ("night.csv", HEADER + "2024-06-13T02:00:00Z,A,1,1,1,1,1\n2024-06-13T02:05:00Z,A,1,1,1,1,1\n",
     "no regular-session bars"),
    ("empty.csv", HEADER, "no rows of intraday bars"),
    ("bad.csv.gz", None, "cannot read intraday bars"),
])
def test_bad_files_are_one_line_data_errors(tmp_path, name, content, fragment):
    path = tmp_path / name
    if content is None:
        path.write_bytes(b"\x1f\x8b\x08 this is not a real gzip stream")
    else:
        path.write_text(content)
    with pytest.raises(DataError) as caught:
        IntradayCsvMarket(path, cache_dir=tmp_path / "cache")
    message = str(caught.value)
    assert "\n" not in message and fragment in message and str(path) in message


def test_a_missing_file_or_market_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="market data file not found"):
        IntradayCsvMarket(tmp_path / "absent.csv", cache_dir=tmp_path / "cache")
    path = write(tmp_path / "bars.csv", FIVE_MINUTE_ROWS)
    with pytest.raises(DataError, match="market \\(SPY/VIX\\) file not found"):
        IntradayCsvMarket(path, market_path=tmp_path / "nope.csv", cache_dir=tmp_path / "cache")
    with pytest.raises(DataError, match="no SPY/VIX data"):
        IntradayCsvMarket(path, cache_dir=tmp_path / "cache").market_series(THU, FRI)

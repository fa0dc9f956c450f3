"""Bad input is never accepted silently: unknown symbols are named as unknown, a CSV source with conflicting rows or a
cut-off file is refused in one line (and no cache hides a changed file), an empty --out or --asof is an error."""
from __future__ import annotations

import gzip
import json
import logging
import os
import sqlite3
from datetime import date
from pathlib import Path

import pytest
from click.testing import CliRunner

from common.errors import DataError
from common.universe import UNKNOWN_REASON, unknown_symbols
from crafted import ENTRY, flat, use_csv_journal, write_market
from main import cli
from ports.intraday_csv import IntradayCsvMarket
from ports.market_sources import MARKET_COLUMNS, CsvMarket, SimMarket

HEADER = "date,symbol,open,high,low,close,volume\n"
ROWS = "2016-03-01,AAA,10,11,9.5,10.5,1000\n2016-03-01,BBB,20,21,19,20.5,2000\n2016-03-02,AAA,10.5,12,10.4,11.8,3000\n"
SCAN_AT = "2016-06-02T10:30"  # the session after crafted.ENTRY


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def one_error_line(result) -> str:
    """The single stderr line of a refused command (exit 2), without a traceback."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and len(result.stderr.splitlines()) == 1, result.stderr
    return result.stderr.strip()


# --- unknown symbols ----------------------------------------------------------------------------------------------

def test_a_file_source_names_the_symbols_it_does_not_hold(tmp_path):
    stocks = tmp_path / "stocks.csv"
    stocks.write_text(HEADER + ROWS)
    plain = CsvMarket(stocks, cache_dir=tmp_path / "cache")
    assert plain.unknown_symbols(["XYZ", "AAA", "SPY", "XYZ", "BBB"]) == ["XYZ", "SPY"]
    market = tmp_path / "spy_vix_daily_test.csv"
    market.write_text(",".join(MARKET_COLUMNS) + "\n2016-03-01,200,201,199,200.5,1,14,15,13,14\n")
    with_spy = CsvMarket(stocks, market_path=market, cache_dir=tmp_path / "cache")
    assert with_spy.unknown_symbols(["SPY", "XYZ"]) == ["XYZ"]  # SPY comes from the market file
    assert unknown_symbols(with_spy, ["AAA", "QQQQ"]) == ["QQQQ"]
    assert unknown_symbols(SimMarket(["AAA"]), ["QQQQ"], ask=True) == []  # the sim market draws any symbol


def test_a_remote_source_is_asked_for_its_list_only_for_typed_symbols():
    class Remote:
        name, asked = "alpaca", 0

        def known_symbols(self) -> list[str]:
            self.asked += 1
            return ["AAPL", "MSFT"]

    remote = Remote()
    assert unknown_symbols(remote, ["AAPL", "XYZ"]) == [] and remote.asked == 0  # a scan's universe: no request
    assert unknown_symbols(remote, ["AAPL", "XYZ", "ABC"], ask=True) == ["XYZ", "ABC"] and remote.asked == 1


@pytest.fixture
def crafted_env(tmp_path, monkeypatch) -> dict[str, str]:
    """Two symbols with bars; a universe that also lists two the file does not hold."""
    values = write_market(tmp_path / "market", {"AAA": [flat(50.0)], "BBB": [flat(50.0)]})
    universe = Path(values["UNIVERSE_FILE"])
    universe.write_text(json.dumps({"symbols": {"large": ["AAA", "XYZQ", "BBB", "QQQZ"], "mid": [], "small": []}}))
    env = use_csv_journal(monkeypatch, tmp_path, Path(values["DATA_SOURCE"][4:]))
    monkeypatch.setenv("UNIVERSE_FILE", str(universe))
    return env | {"UNIVERSE_FILE": str(universe)}


def journal_rows(env: dict[str, str], sql: str) -> list[tuple]:
    with sqlite3.connect(env["MOMENTUM_DB"]) as conn:
        return conn.execute(sql).fetchall()


def test_a_scan_names_unknown_universe_symbols_as_unknown_not_bad_data(crafted_env):
    assert ENTRY < date(2016, 6, 2)
    result = run("--asof", SCAN_AT, "scan", "--cap", "large", "--dry-run")
    assert result.exit_code == 0, result.output
    (summary,) = [line for line in result.stdout.splitlines() if line.startswith("large:")]
    assert "unknown symbols: XYZQ, QQQZ" in summary
    assert "XYZQ (" not in summary and "skipped for bad data" not in summary
    (skipped, count, recorded) = journal_rows(crafted_env, "SELECT skipped, skipped_count, summary FROM scans")[0]
    assert json.loads(skipped) == {"XYZQ": UNKNOWN_REASON, "QQQZ": UNKNOWN_REASON} and count == 0
    assert recorded == summary


def test_strat_scan_refuses_an_unknown_symbol_typed_on_the_command_line(crafted_env):
    stocks = crafted_env["DATA_SOURCE"][4:]
    result = run("--asof", SCAN_AT, "strat", "scan", "--symbols", "AAA,NOPE,ZZZZ")
    assert one_error_line(result) == (f"error: strat scan --symbols: unknown symbols: NOPE, ZZZZ (not in {stocks})")
    assert journal_rows(crafted_env, "SELECT COUNT(*) FROM strat_signals") == [(0,)]
    assert journal_rows(crafted_env, "SELECT status, exit_code FROM runs") == [("failed", 2)]


def test_strat_scan_names_unknown_universe_symbols_and_records_a_warning(crafted_env):
    result = run("--asof", SCAN_AT, "strat", "scan")
    assert result.exit_code == 0, result.output
    assert "  unknown symbols: XYZQ, QQQZ (in the universe, not in the data source)" in result.stdout.splitlines()
    assert json.loads(run("--asof", SCAN_AT, "strat", "scan", "--json").stdout)["unknown"] == ["XYZQ", "QQQZ"]
    assert journal_rows(crafted_env, "SELECT level, kind, message FROM events WHERE kind = 'data_quality'")[0] == (
        "warning", "data_quality", "strat scan 1D: unknown symbols: XYZQ, QQQZ in the universe")


# --- duplicate rows -----------------------------------------------------------------------------------------------

def test_a_market_file_with_two_different_rows_for_one_date_is_refused(tmp_path):
    stocks = tmp_path / "stocks.csv"
    stocks.write_text(HEADER + ROWS)
    market = tmp_path / "spy_vix.csv"
    market.write_text(",".join(MARKET_COLUMNS) + "\n2016-03-01,200,201,199,200.5,1,14,15,13,14\n"
                                                 "2016-03-02,200,201,199,200.5,1,14,15,13,14\n"
                                                 "2016-03-01,200,201,199,200.7,1,14,15,13,14\n")
    data = CsvMarket(stocks, market_path=market, cache_dir=tmp_path / "cache")
    with pytest.raises(DataError) as caught:
        data.market_series(date(2016, 3, 1), date(2016, 3, 2))
    assert str(caught.value) == (f"{market}: conflicting duplicate rows for 2016-03-01 (spy_close 200.5 vs 200.7); "
                                 f"keep one row per key in the file")


def test_identical_market_rows_are_dropped_and_the_series_is_whole(tmp_path, caplog):
    stocks = tmp_path / "stocks.csv"
    stocks.write_text(HEADER + ROWS)
    market = tmp_path / "spy_vix.csv"
    row = "2016-03-01,200,201,199,200.5,1,14,15,13,14\n"
    market.write_text(",".join(MARKET_COLUMNS) + "\n" + row + "2016-03-02,201,202,200,201.5,1,14,15,13,14\n" + row)
    with caplog.at_level(logging.WARNING, logger="ports.market_sources"):
        series = CsvMarket(stocks, market_path=market, cache_dir=tmp_path / "cache").market_series(
            date(2016, 3, 1), date(2016, 3, 2))
    assert series["spy_close"].tolist() == [200.5, 201.5]
    assert f"{market}: 1 repeated row(s) dropped (identical duplicates: 2016-03-01)" in caplog.text


def test_intraday_bars_repeated_with_other_values_are_refused_naming_the_bar(tmp_path, caplog):
    header = "timestamp,symbol,open,high,low,close,volume\n"
    rows = ["2024-06-14T13:30:00Z,AAA,10,11,9.5,10.5,100", "2024-06-14T13:35:00Z,AAA,10.5,12,10.4,11.8,200"]
    same = tmp_path / "same.csv"
    same.write_text(header + "\n".join([*rows, rows[0]]) + "\n")
    with caplog.at_level(logging.WARNING, logger="ports.market_sources"):
        market = IntradayCsvMarket(same, cache_dir=tmp_path / "cache")
    assert market.bars(["AAA"], date(2024, 6, 14), date(2024, 6, 14)).volume[0, 0] == 300
    assert "1 repeated row(s) dropped (identical duplicates: AAA at 2024-06-14T13:30:00Z)" in caplog.text
    other = tmp_path / "other.csv"
    other.write_text(header + "\n".join([*rows, "2024-06-14T09:35:00-04:00,AAA,10.5,12,10.4,11.9,200"]) + "\n")
    with pytest.raises(DataError) as caught:
        IntradayCsvMarket(other, cache_dir=tmp_path / "cache")
    assert str(caught.value) == (f"{other}: conflicting duplicate rows for AAA at 2024-06-14T13:35:00Z "
                                 f"(close 11.8 vs 11.9); keep one row per key in the file")


# --- cut-off files and the cache ----------------------------------------------------------------------------------

def test_a_truncated_gzip_source_is_one_line_and_exit_2_even_after_it_was_cached(crafted_env, tmp_path):
    stocks = Path(crafted_env["DATA_SOURCE"][4:])
    packed = stocks.with_name("stocks.csv.gz")
    packed.write_bytes(gzip.compress(stocks.read_bytes()))
    args = ("--data", f"csv:{packed}", "--asof", SCAN_AT, "scan", "--cap", "large", "--dry-run")
    assert run(*args).exit_code == 0  # parsed and cached
    whole = packed.read_bytes()
    before = packed.stat()
    packed.write_bytes(whole[: len(whole) * 2 // 3])
    os.utime(packed, ns=(before.st_atime_ns, before.st_mtime_ns))  # a copy that kept the file's time
    assert one_error_line(run(*args)) == (f"error: {packed}: cannot read market data (Compressed file ended before "
                                          f"the end-of-stream marker was reached)")


def test_a_plain_csv_cut_in_the_middle_of_a_row_is_refused(tmp_path):
    stocks = tmp_path / "stocks.csv"
    stocks.write_text(HEADER + ROWS + "2016-03-02,BBB,20.5,21")
    with pytest.raises(DataError) as caught:
        CsvMarket(stocks, cache_dir=tmp_path / "cache")
    assert str(caught.value) == (f"{stocks}: the file ends in the middle of a row ('2016-03-02,BBB,20.5,21'); "
                                 f"it looks truncated")
    stocks.write_text(HEADER + ROWS.rstrip("\n"))  # a last row without its line break is still whole
    assert CsvMarket(stocks, cache_dir=tmp_path / "cache").known_symbols() == ["AAA", "BBB"]


def test_the_cache_does_not_hide_a_file_changed_with_the_same_size_and_time(tmp_path):
    stocks = tmp_path / "stocks.csv"
    stocks.write_text(HEADER + ROWS)
    cache = tmp_path / "cache"
    first = CsvMarket(stocks, cache_dir=cache).bars(["AAA"], date(2016, 3, 2), date(2016, 3, 2))
    assert first.close[0, 0] == 11.8
    before = stocks.stat()
    stocks.write_text(HEADER + ROWS.replace("11.8", "11.9"))
    os.utime(stocks, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert stocks.stat().st_size == before.st_size and stocks.stat().st_mtime_ns == before.st_mtime_ns
    again = CsvMarket(stocks, cache_dir=cache).bars(["AAA"], date(2016, 3, 2), date(2016, 3, 2))
    assert again.close[0, 0] == 11.9


# --- empty --out and --asof ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["export", "trades", "--out", ""], "error: --out: empty value; give a path"),
    (["report", "weekly", "--chart", " "],
     "error: --chart: empty value; give a path, or leave --chart out for its default"),
    (["data", "download", "--timeframe", "1Day", "--symbols", "AAPL", "--start", "2024-06-03", "--end", "2024-06-04",
      "--out", ""], "error: --out: empty value; give a path, or leave --out out for its default"),
    (["--asof", "", "status"],
     "error: --asof: empty value; give a time such as 2016-11-09T10:30, or leave --asof out for real time"),
    (["--db", "", "status"], "error: --db: empty value; give a journal file such as data/trades.db, or leave --db "
                             "out for MOMENTUM_DB or data/trades.db"),
    (["--data", " ", "scan", "--cap", "small", "--dry-run"],
     "error: --data: empty value; give sim, csv:PATH or alpaca, or leave --data out for DATA_SOURCE or sim"),
    (["--market", "", "regime"], "error: --market: empty value; give a SPY/VIX daily CSV, or leave --market out for "
                                 "MARKET_DATA or the data source's own"),
    (["--broker", "", "positions"], "error: --broker: empty value; give sim or alpaca, or leave --broker out for "
                                    "BROKER or sim"),
    (["--universe", "", "scan", "--cap", "small"], "error: --universe: empty value; give a universe JSON such as "
                                                   "data/universe.json, or leave --universe out for UNIVERSE_FILE or "
                                                   "data/universe.json"),
])
def test_an_empty_path_or_time_is_refused_in_one_line(private_journal, monkeypatch, args, message):
    monkeypatch.chdir(private_journal)
    before = sorted(private_journal.iterdir())
    assert one_error_line(run(*args)) == message
    assert sorted(private_journal.iterdir()) == before  # nothing written, not even a journal


def test_an_empty_momentum_asof_in_the_environment_still_means_real_time(private_journal, monkeypatch):
    monkeypatch.setenv("MOMENTUM_ASOF", "")
    result = run("status")
    assert result.exit_code == 0, result.output
    assert "simulated time" not in result.stdout.splitlines()[0]
    assert "MOMENTUM_ASOF; unset or empty: real time" in " ".join(run("--help").stdout.split())

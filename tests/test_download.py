"""`data download` against the local fake Alpaca server: files the replay reads back, paging, 429s, resuming."""
from __future__ import annotations

import gzip
import json
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from common.clock import calendar
from common.errors import ConfigError, DataError, DataUnavailable
from config import load_config
from flows import download
from flows.runtime import Runtime
from main import cli
from ports.alpaca import transport
from ports.intraday_csv import IntradayCsvMarket
from ports.market_sources import CsvMarket

from conftest import FakeTime

KEY, SECRET = "PKDOWNLOADKEY12345", "downloadsecret1234567890"
NOW = datetime(2024, 7, 6, 12, 0, tzinfo=UTC)  # a Saturday: every session the tests ask for has closed
BARS_PATH = "/v2/stocks/bars"


@pytest.fixture(autouse=True)
def _whole_days(fake_alpaca):
    """The fake's "today" after every session asked for, so each session's bars are whole."""
    fake_alpaca.today = date(2024, 7, 8)


@pytest.fixture
def rt(tmp_path, fake_alpaca):
    config = load_config({"ALPACA_API_KEY": KEY, "ALPACA_SECRET_KEY": SECRET, "ALPACA_DATA_URL": fake_alpaca.url,
                          "MOMENTUM_DB": str(tmp_path / "trades.db")}, environ={},
                         dotenv_path=tmp_path / "no.env")
    runtime = Runtime(config, "test")
    yield runtime
    runtime.close()


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


def fetch(rt, fake_time, out: Path, *, symbols="AAPL,MSFT", timeframe="1Day", start="2024-06-03",
          end="2024-06-14", events=None, **options) -> download.DownloadResult:
    request = download.download_request(rt, timeframe=timeframe, symbols=symbols, universe=None, start=start, end=end,
                                        out=str(out), adjustment=options.get("adjustment", "split"),
                                        feed=options.get("feed", "iex"))
    client = download.bars_client(rt, sleep=fake_time.sleep, unix_time=fake_time.now)
    plan = download.plan_download(request, NOW)
    return download.run_download(plan, client, events.append if events is not None else None)


def lines(path: Path) -> list[str]:
    with gzip.open(path, "rt") as handle:
        return handle.read().splitlines()


def regular(fake, symbol: str, day: date, minutes: int) -> list[dict]:
    session = calendar().session(day)
    return [bar for bar in fake.minute_bars(symbol, day, minutes)
            if session.open <= datetime.fromisoformat(bar["t"]) < session.close]


# -- files the replay reads back ---------------------------------------------------------------------------------

def test_daily_bars_become_a_daily_file_csv_market_reads(rt, fake_alpaca, fake_time, tmp_path):
    fake_alpaca.missing_symbols = {"ZZZZ"}
    events: list = []
    out = tmp_path / "daily.csv.gz"
    result = fetch(rt, fake_time, out, symbols="msft,AAPL,ZZZZ", events=events)
    assert result.text() == (f"wrote {out}: 2 of 3 symbols with bars, 20 bars, 10 sessions "
                             f"(2024-06-03 .. 2024-06-14)")
    assert result.no_bars == ("ZZZZ",)
    assert result.unknown_text() == (f"unknown symbol: ZZZZ (Alpaca has no bars for it from 2024-06-03 to "
                                     f"2024-06-14; {out} holds the others)")
    rows = lines(out)
    assert rows[0] == "date,symbol,open,high,low,close,volume"
    first = fake_alpaca.bar("AAPL", date(2024, 6, 3))
    assert rows[1] == f"2024-06-03,AAPL,{first['o']},{first['h']},{first['l']},{first['c']},{first['v']}"
    assert [row.split(",")[1] for row in rows[1:]] == ["AAPL"] * 10 + ["MSFT"] * 10
    market = CsvMarket(out, cache_dir=tmp_path / "cache")
    panel = market.bars(["AAPL", "MSFT", "ZZZZ"], date(2024, 6, 1), date(2024, 6, 30))
    assert panel.dates.tolist() == calendar().sessions(date(2024, 6, 3), date(2024, 6, 14))
    for i, day in enumerate(panel.dates.tolist()):
        for j, symbol in enumerate(["AAPL", "MSFT"]):
            bar = fake_alpaca.bar(symbol, day)
            assert [getattr(panel, name)[i, j] for name in ("open", "high", "low", "close", "volume")] == [
                bar["o"], bar["h"], bar["l"], bar["c"], bar["v"]]
    assert np.isnan(panel.close[:, 2]).all()
    (asked,) = fake_alpaca.requests
    assert {k: asked.query[k] for k in ("symbols", "timeframe", "adjustment", "feed", "limit", "start", "end")} == {
        "symbols": "AAPL,MSFT,ZZZZ", "timeframe": "1Day", "adjustment": "split", "feed": "iex", "limit": "10000",
        "start": "2024-06-03T04:00:00Z", "end": "2024-06-15T03:59:59Z"}
    assert events[-1] == download.Progress(1, 1, 3, 3, 20, True)
    assert not (tmp_path / "daily.csv.gz.parts").exists() and not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("timeframe, minutes", [("5Min", 5), ("1Min", 1)])
def test_minute_bars_become_an_intraday_file_the_intraday_market_reads(rt, fake_alpaca, fake_time, tmp_path,
                                                                       timeframe, minutes):
    out = tmp_path / "intraday.csv.gz"
    result = fetch(rt, fake_time, out, timeframe=timeframe, start="2024-07-02", end="2024-07-05")
    per_symbol = (390 + 210 + 390) // minutes  # 07-03 closes at 13:00, 07-04 is a holiday
    assert (result.bars, result.sessions, result.symbols_with_bars) == (2 * per_symbol, 3, 2)
    rows = lines(out)
    assert rows[0] == "timestamp,symbol,open,high,low,close,volume"
    assert rows[1].startswith("2024-07-02T13:30:00Z,AAPL,")
    assert not [row for row in rows if "T12:00:00Z" in row or "T20:30:00Z" in row]  # extended hours left out
    market = IntradayCsvMarket(out, cache_dir=tmp_path / "cache")
    assert market.bar_seconds == 60 * minutes
    panel = market.bars(["AAPL", "MSFT"], date(2024, 7, 1), date(2024, 7, 31))
    assert panel.dates.tolist() == [date(2024, 7, 2), date(2024, 7, 3), date(2024, 7, 5)]
    for i, day in enumerate(panel.dates.tolist()):
        for j, symbol in enumerate(["AAPL", "MSFT"]):
            bar = fake_alpaca.bar(symbol, day)
            assert [getattr(panel, name)[i, j] for name in ("open", "high", "low", "close", "volume")] == [
                bar["o"], bar["h"], bar["l"], bar["c"], bar["v"]]
    assert len(market.session_bars(["AAPL"], date(2024, 7, 3)).ends) == 210 // minutes
    ten_am = calendar().session(date(2024, 7, 2)).fraction(datetime(2024, 7, 2, 14, 0, tzinfo=UTC))
    snap = market.snapshot(["AAPL"], date(2024, 7, 2), ten_am)
    so_far = regular(fake_alpaca, "AAPL", date(2024, 7, 2), minutes)[: 30 // minutes]
    assert (snap.price[0], snap.high[0], snap.low[0], snap.volume[0]) == (
        so_far[-1]["c"], max(b["h"] for b in so_far), min(b["l"] for b in so_far), sum(b["v"] for b in so_far))


def test_pages_run_across_symbols_and_join_up(rt, fake_alpaca, fake_time, tmp_path):
    whole = fetch(rt, fake_time, tmp_path / "one_page.csv.gz", symbols="AAPL,MSFT,NVDA", timeframe="5Min",
                  start="2024-06-13", end="2024-06-14")
    fake_alpaca.clear_log()
    fake_alpaca.bars_page_size = 100
    paged = fetch(rt, fake_time, tmp_path / "paged.csv.gz", symbols="AAPL,MSFT,NVDA", timeframe="5Min",
                  start="2024-06-13", end="2024-06-14")
    assert whole.bars == paged.bars == 3 * 2 * 78
    assert lines(tmp_path / "paged.csv.gz") == lines(tmp_path / "one_page.csv.gz")
    pages = [r.query for r in fake_alpaca.requests]
    assert len(pages) == 5  # 3 x 2 x (78 + 2 extended-hours bars) = 480 bars, 100 a page
    assert "page_token" not in pages[0] and all(page.get("page_token") for page in pages[1:])
    assert {page["symbols"] for page in pages} == {"AAPL,MSFT,NVDA"}


def test_a_429_waits_for_the_reset_and_goes_on(rt, fake_alpaca, fake_time, tmp_path):
    fake_alpaca.rate_limit(BARS_PATH, reset_at=False, retry_after=2)
    result = fetch(rt, fake_time, tmp_path / "daily.csv.gz")
    assert result.bars == 20
    assert fake_alpaca.count("GET", BARS_PATH) == 2 and fake_time.sleeps == [2.0]


# -- resuming ----------------------------------------------------------------------------------------------------

def test_a_failure_keeps_finished_batches_and_the_rerun_fetches_only_the_rest(rt, fake_alpaca, fake_time,
                                                                               tmp_path, monkeypatch):
    monkeypatch.setattr(download, "BATCH_SYMBOLS", 2)
    symbols = "AAPL,AMZN,GOOG,META,MSFT,NVDA"
    out = tmp_path / "daily.csv.gz"
    fake_alpaca.server_error(BARS_PATH, times=3, after=1)  # the second batch fails, read retries included
    with pytest.raises(DataUnavailable) as caught:
        fetch(rt, fake_time, out, symbols=symbols)
    message = str(caught.value)
    assert "\n" not in message and "HTTP 500" in message
    assert f"1 of 3 batches are saved in {out}.parts: run the same command again to resume" in message
    assert fake_time.sleeps == [0.5, 1.5]
    parts = tmp_path / "daily.csv.gz.parts"
    assert sorted(p.name for p in parts.iterdir()) == ["batch-00000.csv.gz", "state.json"]
    assert json.loads((parts / "state.json").read_text())["done"] == {
        "0": {"bars": 20, "symbols_with_bars": 2, "sessions": [str(d) for d in calendar().sessions(
            date(2024, 6, 3), date(2024, 6, 14))], "no_bars": []}}
    assert not out.exists()

    fake_alpaca.clear_log()
    events: list = []
    request = download.download_request(rt, timeframe="1Day", symbols=symbols, universe=None, start="2024-06-03",
                                        end="2024-06-14", out=str(out), adjustment="split", feed="iex")
    plan = download.plan_download(request, NOW)
    assert plan.resumed and list(plan.done) == [0]
    result = download.run_download(plan, download.bars_client(rt, sleep=fake_time.sleep), events.append)
    assert [r.query["symbols"] for r in fake_alpaca.requests] == ["GOOG,META", "MSFT,NVDA"]
    assert (result.bars, result.symbols_with_bars) == (60, 6)
    assert [e.batches_done for e in events if e.batch_finished] == [2, 3]
    assert [row.split(",")[1] for row in lines(out)[1::10]] == ["AAPL", "AMZN", "GOOG", "META", "MSFT", "NVDA"]
    assert not parts.exists()


def test_other_arguments_for_a_started_download_are_refused(rt, fake_alpaca, fake_time, tmp_path):
    out = tmp_path / "daily.csv.gz"
    fake_alpaca.server_error(BARS_PATH, times=3)
    with pytest.raises(DataUnavailable):
        fetch(rt, fake_time, out)
    with pytest.raises(ConfigError) as caught:
        fetch(rt, fake_time, out, end="2024-06-13")
    assert str(caught.value) == (f"{out}.parts holds a download of {out} with other arguments (end); "
                                 f"delete {out}.parts or choose another --out")
    fetch(rt, fake_time, out)
    with pytest.raises(ConfigError, match="already exists; delete it or choose another --out"):
        fetch(rt, fake_time, out)


@pytest.mark.parametrize("state", ["{not json", '{"format": 1}', None])
def test_a_damaged_parts_folder_is_refused_in_one_line(rt, fake_time, tmp_path, state):
    out = tmp_path / "daily.csv.gz"
    parts = tmp_path / "daily.csv.gz.parts"
    parts.mkdir()
    if state is None:  # the right arguments, a record that is not one
        request = download.download_request(rt, timeframe="1Day", symbols="AAPL,MSFT", universe=None,
                                            start="2024-06-03", end="2024-06-14", out=str(out), adjustment="split",
                                            feed="iex")
        state = json.dumps({"request": request.identity(), "done": {"0": {"bars": 1}}, "last_session": "2024-06-14",
                            "last_moment": "2024-06-14T23:59:59-04:00"})
    (parts / "state.json").write_text(state)
    with pytest.raises(ConfigError) as caught:
        fetch(rt, fake_time, out)
    assert str(caught.value) == f"{parts}/state.json is unreadable; delete {parts} or choose another --out"


# -- the command line --------------------------------------------------------------------------------------------

@pytest.fixture
def cli_env(private_journal, fake_alpaca, monkeypatch):
    monkeypatch.setenv("MOMENTUM_HOME", str(private_journal))
    monkeypatch.setenv("ALPACA_API_KEY", KEY)
    monkeypatch.setenv("ALPACA_SECRET_KEY", SECRET)
    monkeypatch.setenv("ALPACA_DATA_URL", fake_alpaca.url)
    monkeypatch.setattr(transport, "READ_BACKOFF_S", (0.0, 0.0))
    return private_journal


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_the_command_downloads_a_universe_end_to_end(cli_env, fake_alpaca):
    universe = cli_env / "universe.json"
    universe.write_text(json.dumps({"symbols": {"large": ["MSFT", "AAPL"], "mid": ["NVDA"], "small": []}}))
    result = run("--universe", str(universe), "--asof", "2024-06-14T12:00", "data", "download", "--timeframe",
                 "1Day", "--universe", "all", "--start", "2024-06-10", "--end", "2024-06-14")
    assert result.exit_code == 0, result.output
    out = cli_env / "data" / "bars_1Day_2024-06-10_2024-06-14.csv.gz"
    assert result.stdout.splitlines() == [
        f"wrote {out}: 3 of 3 symbols with bars, 12 bars, 4 sessions (2024-06-10 .. 2024-06-13)"]
    assert result.stderr.splitlines() == [
        "note: 2024-06-14 is not a completed session; downloading up to 2024-06-13",
        "batch 1/1: 3/3 symbols, 12 bars"]
    assert fake_alpaca.requests[0].query["symbols"] == "AAPL,MSFT,NVDA"
    assert len(lines(out)) == 13


def test_the_command_resumes_after_a_failure(cli_env, fake_alpaca, monkeypatch):
    monkeypatch.setattr(download, "BATCH_SYMBOLS", 1)
    args = ("data", "download", "--timeframe", "5Min", "--symbols", "AAPL,MSFT", "--start", "2024-06-14",
            "--end", "2024-06-14", "--out", str(cli_env / "five.csv"))
    fake_alpaca.server_error(BARS_PATH, times=3, after=1)
    failed = run(*args)
    assert failed.exit_code == 3
    assert failed.stderr.splitlines() == [
        "batch 1/2: 1/2 symbols, 78 bars",
        (f"error: alpaca bars for 1 symbols: HTTP 500 (empty body); 1 of 2 batches are saved in "
         f"{cli_env / 'five.csv.parts'}: run the same command again to resume")]
    resumed = run(*args)
    assert resumed.exit_code == 0, resumed.output
    assert resumed.stderr.splitlines()[0] == (f"resuming {cli_env / 'five.csv'}: 1 of 2 batches already downloaded "
                                              f"(in {cli_env / 'five.csv.parts'})")
    assert resumed.stdout.strip() == (f"wrote {cli_env / 'five.csv'}: 2 of 2 symbols with bars, 156 bars, "
                                      f"1 sessions (2024-06-14 .. 2024-06-14)")
    assert (cli_env / "five.csv").read_text().startswith("timestamp,symbol,open,high,low,close,volume\n")


@pytest.mark.parametrize("options, fragment", [
    (["--timeframe", "1Hour"], "--timeframe: unknown value '1Hour' (use 1Min, 5Min, 1Day)"),
    (["--start", "2024-13-01"], "--start: expected a date YYYY-MM-DD, got '2024-13-01'"),
    (["--start", "2024-06-14", "--end", "2024-06-03"], "--start 2024-06-14 is after --end 2024-06-03"),
    (["--symbols", None, "--universe", "huge"], "--universe: unknown universe 'huge'"),
    (["--universe", "large"], "give either --symbols A,B,C or --universe"),
    (["--symbols", "AAPL,bad$"], "--symbols: invalid symbol 'BAD$'"),
    (["--adjustment", "dividend"], "--adjustment: unknown value 'dividend' (use raw, split, all)"),
    (["--feed", "otc"], "--feed: unknown value 'otc' (use iex, sip)"),
    (["--start", "2024-06-15", "--end", "2024-06-16"], "no completed NYSE session from 2024-06-15 to 2024-06-16"),
    (["--no-keys"], "ALPACA_API_KEY and ALPACA_SECRET_KEY must be set for data download"),
])
def test_bad_arguments_are_one_line_and_exit_2(cli_env, fake_alpaca, monkeypatch, options, fragment):
    chosen = {"--timeframe": "1Day", "--symbols": "AAPL", "--start": "2024-06-03", "--end": "2024-06-14"}
    if options == ["--no-keys"]:
        monkeypatch.delenv("ALPACA_SECRET_KEY")
        options = []
    chosen.update(dict(zip(options[::2], options[1::2], strict=True)))
    args = [part for name, value in chosen.items() if value is not None for part in (name, value)]
    result = run("data", "download", *args)
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [result.stderr.strip()] and result.stderr.startswith("error: ")
    assert fragment in result.stderr and "Traceback" not in result.output
    assert fake_alpaca.count() == 0 and not (cli_env / "data").exists()


class InterruptedClient:
    """Serves the first batch, then the user presses Ctrl-C in the middle of the second."""

    def __init__(self, fake):
        self.fake, self.batches = fake, 0

    def bars(self, symbols, **query):
        from ports.alpaca.bars_download import RawBar

        self.batches += 1
        for symbol in symbols:
            bar = self.fake.bar(symbol, date(2024, 6, 3))
            yield RawBar(symbol, bar["t"], bar["o"], bar["h"], bar["l"], bar["c"], float(bar["v"]))
            if self.batches == 2:
                raise KeyboardInterrupt


def test_ctrl_c_keeps_the_finished_batches_and_no_half_file(rt, fake_alpaca, tmp_path, monkeypatch):
    monkeypatch.setattr(download, "BATCH_SYMBOLS", 2)
    out = tmp_path / "daily.csv.gz"
    request = download.download_request(rt, timeframe="1Day", symbols="AAPL,AMZN,GOOG,META", universe=None,
                                        start="2024-06-03", end="2024-06-03", out=str(out), adjustment="split",
                                        feed="iex")
    with pytest.raises(KeyboardInterrupt):
        download.run_download(download.plan_download(request, NOW), InterruptedClient(fake_alpaca))
    parts = tmp_path / "daily.csv.gz.parts"
    assert sorted(p.name for p in parts.iterdir()) == ["batch-00000.csv.gz", "state.json"]
    assert [row.split(",")[1] for row in lines(parts / "batch-00000.csv.gz")] == ["AAPL", "AMZN"]
    assert list(download.plan_download(request, NOW).done) == [0] and not out.exists()


def test_a_typed_symbol_without_bars_is_named_unknown_and_exits_2_after_the_others_are_written(cli_env, fake_alpaca):
    fake_alpaca.missing_symbols = {"ZZZZ", "QQQX"}
    out = cli_env / "daily.csv.gz"
    result = run("data", "download", "--timeframe", "1Day", "--symbols", "AAPL,ZZZZ,QQQX", "--start", "2024-06-03",
                 "--end", "2024-06-14", "--out", str(out))
    assert result.exit_code == 2, result.output
    assert result.stdout.splitlines() == [
        f"wrote {out}: 1 of 3 symbols with bars, 10 bars, 10 sessions (2024-06-03 .. 2024-06-14)"]
    assert result.stderr.splitlines()[-1] == (
        f"error: --symbols: unknown symbols: QQQX, ZZZZ (Alpaca has no bars for them from 2024-06-03 to 2024-06-14; "
        f"{out} holds the others)")
    assert len(lines(out)) == 11


def test_a_universe_symbol_without_bars_is_a_named_warning(cli_env, fake_alpaca):
    fake_alpaca.missing_symbols = {"NVDA"}
    universe = cli_env / "universe.json"
    universe.write_text(json.dumps({"symbols": {"large": ["MSFT", "AAPL"], "mid": ["NVDA"], "small": []}}))
    out = cli_env / "daily.csv.gz"
    result = run("--universe", str(universe), "data", "download", "--timeframe", "1Day", "--universe", "all",
                 "--start", "2024-06-03", "--end", "2024-06-14", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines()[-1] == (
        f"warning: --universe all: unknown symbol: NVDA (Alpaca has no bars for it from 2024-06-03 to 2024-06-14; "
        f"{out} holds the others)")


def test_a_damaged_batch_file_is_one_line_naming_it_and_no_output_is_written(rt, fake_alpaca, fake_time, tmp_path,
                                                                             monkeypatch):
    monkeypatch.setattr(download, "BATCH_SYMBOLS", 1)
    out = tmp_path / "daily.csv.gz"
    fake_alpaca.server_error(BARS_PATH, times=3, after=1)  # the first batch is saved, the second fails
    with pytest.raises(DataUnavailable):
        fetch(rt, fake_time, out)
    part = tmp_path / "daily.csv.gz.parts" / "batch-00000.csv.gz"
    part.write_bytes(part.read_bytes()[:-12])  # cut off since: its gzip trailer is gone
    with pytest.raises(DataError) as caught:
        fetch(rt, fake_time, out)
    assert str(caught.value) == (f"{part}: cannot read a downloaded batch (Compressed file ended before the "
                                 f"end-of-stream marker was reached); delete it and run the same command again to "
                                 f"download that batch again")
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))
    part.unlink()
    assert fetch(rt, fake_time, out).symbols_with_bars == 2

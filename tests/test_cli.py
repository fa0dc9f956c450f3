"""The command line as a user meets it: exit codes, one-line errors, commands on the sim with no configuration."""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from main import cli

from conftest import ROOT, require_shared_data


@pytest.fixture
def env(private_journal):
    return private_journal


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def assert_one_line_error(result, code: int, fragment: str) -> None:
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and fragment in lines[0], lines[0]
    assert "Traceback" not in result.output


def test_status_on_the_sim_with_no_configuration(env):
    result = run("--asof", "2016-11-09T10:30", "status")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("mode: SIM (embedded simulated broker, no real orders)")
    fields = {k: v.strip() for k, v in (line.split("  ", 1) for line in lines[1:])}
    assert fields["market"] == "OPEN until 2016-11-09 16:00 EST"
    assert fields["equity"] == "$100,000.00" and fields["cash"] == "$100,000.00"
    assert fields["day P&L"] == "$0.00 (0.00%)"
    assert fields["halted"] == "no"
    assert fields["positions"] == "0 at the broker, 0 open in the journal (0 unprotected)"
    assert [row[1:] for row in _rows(env, "SELECT command, status, exit_code FROM runs")] == [["done", 0]]


def test_status_shows_closed_market_and_next_session(env):
    result = run("--asof", "2016-11-24T12:00", "status")  # Thanksgiving
    assert result.exit_code == 0
    assert "CLOSED, next open 2016-11-25 09:30 EST (early close 13:00)" in result.stdout


def _rows(env: Path, sql: str) -> list[list]:
    import sqlite3

    with sqlite3.connect(env / "trades.db") as conn:
        return [list(row) for row in conn.execute(sql)]


def test_settings_and_set(env):
    assert run("set", "autoclose_threshold", "7").stdout.strip() == "autoclose_threshold = 7"
    assert run("set", "autoclose", "off").exit_code == 0
    listing = {line.split()[0]: line.split()[1] for line in run("settings").stdout.splitlines()[2:]}
    assert listing["autoclose_threshold"] == "7" and listing["autoclose"] == "off"
    assert_one_line_error(run("set", "autoclose_threshold", "seven"), 2, "set autoclose_threshold: expected a whole")
    assert_one_line_error(run("set", "autoclose_threshold", "2"), 2, "must be between 3 and 10")
    assert_one_line_error(run("set", "volume", "11"), 2, "unknown setting 'volume'")


def test_errors_lists_distinct_recent_errors(env):
    assert run("errors").stdout.strip() == "no errors recorded"
    assert_one_line_error(run("--data", "csv:/nowhere/bars.csv", "--asof", "2016-11-09T10:30", "scan", "--dry-run"),
                          2, "/nowhere/bars.csv")
    listed = run("errors")
    assert listed.exit_code == 0
    assert "run     scan failed (exit 2):" in listed.stdout and "/nowhere/bars.csv" in listed.stdout  # a failed run
    assert "2016-11-09 10:30 EST" in listed.stdout  # when, in New York time

    for day in range(1, 4):  # three more distinct failures: a limit of 2 hides two of the four, and says so
        run("--data", f"csv:/nowhere/bars{day}.csv", "--asof", f"2016-11-1{day}T10:30", "scan", "--dry-run")
    lines = run("errors", "--limit", "2").stdout.strip().splitlines()
    assert len(lines) == 2 + 2 + 1 and "bars3.csv" in lines[2] and "bars2.csv" in lines[3]
    assert lines[-1] == "(2 older distinct errors not shown: `errors --limit 4` lists them)"
    assert "not shown" not in run("errors").stdout


@pytest.mark.parametrize("args, fragment", [
    (["--data", "yahoo", "status"], "unknown source 'yahoo'"),
    (["--broker", "ibkr", "status"], "BROKER: must be one of sim, alpaca"),
    (["--asof", "next tuesday", "status"], "--asof: cannot parse 'next tuesday'"),
    (["--asof", "1999-01-04T10:00", "status"], "outside the NYSE calendar"),
    (["--data", f"csv:{ROOT / 'tests'}", "--asof", "2016-11-09T10:30", "scan", "--dry-run"],
     "tests: a folder, not a market data file"),
])
def test_bad_global_options_exit_2_with_one_line(env, args, fragment):
    assert_one_line_error(run(*args), 2, fragment)


def test_bad_environment_value_names_the_variable(env, monkeypatch):
    monkeypatch.setenv("MAX_POSITIONS", "lots")
    assert_one_line_error(run("status"), 2, "MAX_POSITIONS: expected an integer")


@pytest.mark.parametrize("content, fragment", [
    ("{not json", "malformed JSON"),
    ('{"symbols": {"large": ["AAPL"], "huge": ["MSFT"]}}', "huge"),
    ('{"symbols": {"large": ["AAPL"], "mid": ["AAPL"]}}', "duplicate symbol 'AAPL'"),
    ('{"symbols": {"large": ["aapl"]}}', "aapl"),
])
def test_malformed_universe_exits_2(env, content, fragment):
    path = env / "universe.json"
    path.write_text(content)
    result = run("--universe", str(path), "--asof", "2016-11-09T10:30", "scan", "--cap", "small", "--dry-run")
    assert_one_line_error(result, 2, fragment)


def test_csv_with_missing_columns_exits_2(env):
    path = env / "bars.csv.gz"
    with gzip.open(path, "wt") as handle:
        handle.write("date,symbol,open,high,close\n2016-11-08,AAPL,1,2,1.5\n")
    result = run("--data", f"csv:{path}", "--asof", "2016-11-09T10:30", "scan", "--cap", "small", "--dry-run")
    assert_one_line_error(result, 2, "low")


def test_an_earlier_asof_is_refused_by_the_sim_broker(env):
    assert run("--asof", "2016-11-10T11:00", "status").exit_code == 0
    assert_one_line_error(run("--asof", "2016-11-09T11:00", "status"), 2, "earlier than the broker's last processed")


@pytest.mark.parametrize("args, message", [
    (["scan", "--cap", "huge"], "error: Invalid value for '--cap': 'huge' is not one of 'large', 'mid', 'small', "
                                "'all'. (see `main.py scan --help`)"),
    (["frobnicate"], "error: No such command 'frobnicate'. (see `main.py --help`)"),
    (["set", "halt"], "error: Missing argument 'VALUE'. (see `main.py set --help`)"),
    (["report", "nope"], "error: No such command 'nope'. (see `main.py report --help`)"),
    (["report", "weekly", "--chart"], "error: Option '--chart' requires an argument."),
    (["--bogus", "status"], "error: No such option '--bogus'."),
    (["set", "autoclose_threshold", "-3"], "error: set autoclose_threshold: must be between 3 and 10 (got '-3')"),
])
def test_a_command_line_that_does_not_parse_is_one_line_and_exit_2(env, args, message):
    result = CliRunner().invoke(cli, args, prog_name="main.py", catch_exceptions=False)
    assert result.exit_code == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), result.stderr


def test_an_output_path_that_cannot_be_written_is_one_line_and_exit_2(env, tmp_path):
    # /proc is a folder no one can create a file in, not even root (the test machines run as root)
    assert_one_line_error(run("export", "trades", "--out", "/proc/momentum-trades.csv"), 2,
                          "cannot write a file in /proc: No such file or directory")
    assert_one_line_error(run("regime", "--history", "--start", "2016-01-04", "--end", "2016-01-29",
                              "--out", str(tmp_path)), 2, f"{tmp_path}: Is a directory")
    runs = _rows(env, "SELECT status, exit_code FROM runs ORDER BY started_at, rowid")
    assert runs[-2:] == [["failed", 2], ["failed", 2]]  # recorded as refused, not as unexpected failures


@pytest.mark.parametrize("args, message", [
    (["close", " "], "close: no symbol given (e.g. close AAPL)"),
    (["strat", "scan", "--symbols", ",,"], "--symbols: no symbols given"),
    (["learn", "fit", "--until", "2016-01-04", "--since", "2016-06-01"], "--since 2016-06-01 is after --until "
                                                                         "2016-01-04"),
])
def test_an_empty_or_reversed_argument_is_refused_not_widened(env, args, message):
    assert_one_line_error(run("--asof", "2016-11-09T10:30", *args), 2, message)


def test_a_cap_the_universe_leaves_empty_is_named_in_the_scan_summary(env, monkeypatch):
    shipped = json.loads((ROOT / "data" / "universe.json").read_text())
    shipped["symbols"]["small"] = []
    (env / "universe.json").write_text(json.dumps(shipped))
    monkeypatch.setenv("UNIVERSE_FILE", str(env / "universe.json"))
    result = run("--asof", "2016-11-09T12:30", "scan", "--cap", "small", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "WARNING: the universe has no small symbols to scan; small: 0 candidates" in result.stdout


def test_a_group_with_no_command_still_shows_its_help():
    result = run("research")
    assert "Commands:" in result.output and "sweep" in result.output


def test_corrupt_journal_exits_2(env):
    (env / "trades.db").write_bytes(b"garbage" * 1000)
    assert_one_line_error(run("status"), 2, "not a SQLite database")


def test_trading_scan_outside_hours_is_skipped_without_force(env):
    result = run("--asof", "2016-11-12T11:00", "scan", "--cap", "small")
    assert result.exit_code == 0
    assert "market closed" in result.stdout and "--force" in result.stdout


def test_a_forced_scan_outside_hours_decides_and_records_and_sends_nothing(env):
    assert run("set", "skip_buys", "off").exit_code == 0
    result = run("--asof", "2016-11-09T08:00", "scan", "--cap", "all", "--force")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0].endswith("| market closed: --force decides and records, no orders are sent")
    assert [row[:2] for row in _rows(env, "SELECT cap, dry_run FROM scans ORDER BY id")] == [
        ["large", 1], ["mid", 1], ["small", 1]]
    assert _rows(env, "SELECT SUM(buy_count) FROM scans")[0][0] > 0  # it decided to buy, and sent nothing
    assert _rows(env, "SELECT COUNT(*) FROM orders") == [[0]]
    assert _rows(env, "SELECT COUNT(*) FROM risk_events") == [[0]]
    assert _rows(env, "SELECT value FROM settings WHERE key = 'halt'") in ([], [["off"]])


def test_refusals_of_a_closed_market_never_halt_buying(env):
    from config import load_config
    from core.risk import GateResult, OrderProposal
    from flows.runtime import Runtime
    from flows.scan_orders import ExecutionReport, record_refusals

    rt = Runtime(load_config({"MOMENTUM_ASOF": "2016-11-09T08:00"}), "test")
    closed = GateResult(OrderProposal("AAA", "buy", 1, 10.0, "large"), False, "market_hours", "market is closed")
    for _ in range(6):
        record_refusals(rt, SimpleNamespace(scan_id=None), [closed], ExecutionReport())
    assert rt.journal.setting("halt") == "off"
    cash = GateResult(OrderProposal("AAA", "buy", 1, 10.0, "large"), False, "buying_power", "cost exceeds")
    for _ in range(5):
        record_refusals(rt, SimpleNamespace(scan_id=None), [cash], ExecutionReport())
    assert rt.journal.setting("halt") == "on"  # five refusals of another kind still halt
    rt.close()


def test_dry_run_scan_records_the_scan_and_every_candidate(env):
    result = run("--asof", "2016-11-09T12:30", "scan", "--cap", "small", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "DRY RUN" in result.stdout.splitlines()[0]
    scans = _rows(env, "SELECT type, cap, dry_run, status, stage1_count, buy_count FROM scans")
    assert scans[0][:4] == ["midday", "small", 1, "dry_run"]
    candidates = _rows(env, "SELECT symbol, decision, score, stage1 FROM candidates")
    assert len(candidates) == scans[0][4] > 0
    assert sum(1 for c in candidates if c[1] == "BUY") == scans[0][5] <= 2
    assert all(c[3] == 1 for c in candidates)
    assert _rows(env, "SELECT COUNT(*) FROM orders") == [[0]]


def test_a_second_scan_exits_75_while_the_lock_is_held(env):
    from common.locks import scan_lock

    with scan_lock(env / "trades.db"):
        result = run("--asof", "2016-11-09T12:30", "scan", "--cap", "small", "--dry-run")
    assert_one_line_error(result, 75, "another scan is running")


def test_help_lists_the_commands():
    result = CliRunner().invoke(cli, ["--help"])
    for command in ("status", "positions", "orders", "settings", "set", "errors", "reconcile", "scan", "universe"):
        assert f"  {command}" in result.stdout


def test_process_exit_codes_and_single_line_from_a_real_process(env):
    """The same contract from a real process: exit code and stderr, no traceback."""
    proc = subprocess.run([sys.executable, str(ROOT / "main.py"), "--asof", "not-a-time", "status"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: --asof: cannot parse 'not-a-time' (use e.g. "
                                                "2016-11-09T10:30 or 2016-11-09)"]


def test_universe_build_from_the_real_bars_file(env):
    source = require_shared_data("sp500_daily_2013_2018.csv.gz")
    out = env / "universe.json"
    result = run("universe", "build", "--from", str(source), "--by", "dollar-volume", "--out", str(out))
    assert result.exit_code == 0, result.output
    caps = json.loads(out.read_text())["symbols"]
    assert sorted(caps) == ["large", "mid", "small"]
    assert abs(len(caps["large"]) - len(caps["small"])) <= 1 and len(caps["large"]) > 150


def _small_bars(folder: Path) -> Path:
    lines = ["date,symbol,open,high,low,close,volume"]
    for day in range(1, 4):
        lines += [f"2016-01-0{day},{symbol},1,1,1,10,{(6 - rank) * 10}" for rank, symbol in enumerate("ABCDEF")]
    path = folder / "bars.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_universe_build_without_out_writes_the_homes_universe_never_the_shipped_copy(env, monkeypatch):
    """A home without a universe of its own reads the shipped one; building one must not overwrite that copy."""
    import os

    shipped = ROOT / "data" / "universe.json"
    before = (shipped.read_bytes(), shipped.stat().st_mtime_ns, shipped.stat().st_mode)
    home = Path(os.environ["MOMENTUM_HOME"])
    bars = _small_bars(env)
    mask = os.umask(0o022)
    try:
        result = run("universe", "build", "--from", str(bars), "--by", "dollar-volume")
        assert result.exit_code == 0, result.output
        target = home / "data" / "universe.json"
        assert result.stdout.startswith(f"wrote {target}: ")
        assert json.loads(target.read_text())["symbols"] == {"large": ["A", "B"], "mid": ["C", "D"],
                                                             "small": ["E", "F"]}
        assert target.stat().st_mode & 0o777 == 0o644  # like every other data file, not a temp file's 0600
        assert sorted(p.name for p in target.parent.iterdir()) == ["universe.json"]  # no temporary file left
        again = run("universe", "build", "--from", str(bars), "--by", "dollar-volume")  # the home has one now
        assert again.exit_code == 0 and again.stdout.startswith(f"wrote {target}: ")
        os.umask(0o077)  # a private umask is respected
        private = run("universe", "build", "--from", str(bars), "--by", "dollar-volume", "--out", str(env / "p.json"))
        assert private.exit_code == 0 and (env / "p.json").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(mask)
    assert (shipped.read_bytes(), shipped.stat().st_mtime_ns, shipped.stat().st_mode) == before
    monkeypatch.setenv("UNIVERSE_FILE", str(env / "chosen.json"))  # a configured universe file is the target
    result = run("universe", "build", "--from", str(bars), "--by", "dollar-volume")
    assert result.exit_code == 0 and result.stdout.startswith(f"wrote {env / 'chosen.json'}: ")
    result = run("--universe", str(env / "given.json"), "universe", "build", "--from", str(bars), "--by",
                 "dollar-volume")
    assert result.exit_code == 0 and result.stdout.startswith(f"wrote {env / 'given.json'}: ")


def test_status_and_positions_against_alpaca_paper(env, fake_alpaca, monkeypatch):
    """The alpaca broker port wired from configuration, talking to the local fake Alpaca server."""
    monkeypatch.setenv("ALPACA_API_KEY", "PKTESTKEY0123456789")
    monkeypatch.setenv("ALPACA_SECRET_KEY", "secretkey0123456789abcdef")
    monkeypatch.setenv("ALPACA_TRADING_URL", fake_alpaca.url)
    fake_alpaca.load_fixture_positions()
    result = run("--broker", "alpaca", "status")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "mode: PAPER (Alpaca paper account, no real money)"
    assert "PKTESTKEY0123456789" not in result.output and "secretkey0123456789abcdef" not in result.output
    positions = run("--broker", "alpaca", "positions")
    assert positions.exit_code == 0
    broker_symbols = {p["symbol"] for p in json.loads((ROOT.parent / "shared/alpaca/fixtures/positions.json")
                                                      .read_text())}
    listed = {line.split()[0] for line in positions.stdout.splitlines()[3:]}
    assert listed == broker_symbols


def test_alpaca_without_keys_is_a_config_error(env, monkeypatch):
    monkeypatch.delenv("ALPACA_API_KEY", raising=False)
    monkeypatch.delenv("ALPACA_SECRET_KEY", raising=False)
    assert_one_line_error(run("--broker", "alpaca", "status"), 2, "ALPACA_API_KEY and ALPACA_SECRET_KEY must be set")


@pytest.mark.parametrize("args", [
    ["backtest", "--start", "2016-03-01", "--end", "2016-03-31", "--out", ""],
    ["research", "sweep", "--start", "2016-03-01", "--end", "2016-03-31", "--param", "autoclose=on,off", "--out", ""],
    ["research", "walk-forward", "--start", "2016-03-01", "--end", "2016-03-31", "--param", "autoclose=on,off",
     "--out", ""],
    ["universe", "build", "--from", "bars.csv", "--by", "dollar-volume", "--out", ""],
    ["regime", "--history", "--out", ""],
    ["deploy", "systemd", "--out", ""],
    ["learn", "evaluate", "--start", "2016-03-01", "--end", "2016-03-31", "--out", ""],
], ids=lambda args: " ".join(args[:2]))
def test_an_empty_out_is_refused_in_one_line(env, args):
    assert_one_line_error(run(*args), 2, "--out: empty value")

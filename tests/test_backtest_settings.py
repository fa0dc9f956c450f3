"""`backtest --set NAME=VALUE` and `--data-until`: a strategy setting changes the run (and is recorded with its
metrics), a bad one stops the command before anything runs, and a cut data source is recorded."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from main import cli
from realdata import real_env, real_universe, shared_cache  # noqa: F401 - fixtures


@pytest.fixture
def crafted_market(tmp_path, monkeypatch) -> dict[str, str]:
    from crafted import flat, ramp, use_csv_journal, write_market

    market = write_market(tmp_path / "market", {"UP": [ramp(50.0, 52.0), ramp(52.0, 55.0), flat(55.0)],
                                                "REV": [flat(50.0)] * 3})
    use_csv_journal(monkeypatch, tmp_path, Path(market["DATA_SOURCE"][4:]))
    monkeypatch.setenv("UNIVERSE_FILE", market["UNIVERSE_FILE"])
    return market


def backtest(out: Path, *extra: str):
    return CliRunner().invoke(cli, ["backtest", "--start", "2016-06-02", "--end", "2016-06-06", "--out", str(out),
                                    *extra])


def stop_trails(out: Path) -> set[float]:
    with sqlite3.connect(out / "trades.db") as db:
        return {row[0] for row in db.execute("SELECT trail_percent FROM orders WHERE purpose = 'stop'")}


@pytest.mark.slow
def test_a_set_setting_changes_the_run_and_is_recorded_with_its_metrics(real_env, tmp_path):
    from realdata import cli as run

    out = tmp_path / "set"
    result = run("backtest", "--start", "2016-03-01", "--end", "2016-03-31", "--out", str(out),
                 "--set", "trailing_stop_pct=8", "--set", "AUTOCLOSE=off", "--data-until", "2016-04-15")
    assert result.exit_code == 0, result.output
    assert stop_trails(out) == {8.0}  # every momentum stop trails by the setting, not the default 5%
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["settings"] == {"trailing_stop_pct": 8.0, "autoclose": "off"}
    assert metrics["data_through"] == "2016-04-15"
    with sqlite3.connect(out / "trades.db") as db:
        assert db.execute("SELECT value FROM settings WHERE key = 'autoclose'").fetchone() == ("off",)


def test_without_set_the_metrics_record_no_setting_and_no_cut(crafted_market, tmp_path):
    assert backtest(tmp_path / "default").exit_code == 0
    metrics = json.loads((tmp_path / "default" / "metrics.json").read_text())
    assert (metrics["settings"], metrics["data_through"]) == ({}, None)


@pytest.mark.parametrize("extra, message", [
    (("--set", "trailing_stop_pct=0.1"), "TRAILING_STOP_PCT: must be between 0.5 and 50 (got '0.1')"),
    (("--set", "decider=llm"), "unknown strategy setting 'decider'"),
    (("--set", "trailing_stop_pct"), "--set: expected NAME=VALUE, got 'trailing_stop_pct'"),
    (("--set", "autoclose_threshold=11"), "autoclose_threshold: must be between 3 and 10"),
    (("--data-until", "2016-06-03"), "--data-until 2016-06-03 is before --end 2016-06-06"),
])
def test_a_bad_setting_is_one_line_and_exit_2_before_anything_runs(crafted_market, tmp_path, extra, message):
    result = backtest(tmp_path / "bad", *extra)
    assert result.exit_code == 2 and message in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()


# A refused run leaves nothing in --out: the corrected command runs into the same folder (instead of being told that
# it "already holds a backtest journal").
REFUSED = [
    (["--start", "2016-04-01", "--end", "2016-06-06"], "leaves too little history"),
    (["--start", "2016-06-02", "--end", "2016-06-08"], "--end 2016-06-08 is after the last date of the data"),
    (["--start", "2016-06-04", "--end", "2016-06-05"], "no NYSE session between --start 2016-06-04"),
    (["--start", "2016-06-02", "--end", "2016-06-06", "--data", "csv:/nonexistent/bars.csv"],
     "/nonexistent/bars.csv: market data file not found"),
    (["--start", "2016-06-02", "--end", "2016-06-06", "--models-from", "/nonexistent/models.db"],
     "--models-from: no such file /nonexistent/models.db"),
]


@pytest.mark.parametrize("args, message", REFUSED)
@pytest.mark.parametrize("existing", [False, True], ids=["new-out", "existing-out"])
def test_a_refused_backtest_leaves_nothing_behind_and_the_corrected_one_runs_into_the_same_out(
        crafted_market, tmp_path, args, message, existing):
    out = tmp_path / "bt"
    if existing:  # a folder of the user's: kept, with what it held
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    runs = [["backtest", *args, "--out", str(out)]]
    if "--models-from" not in args:  # the look-ahead check imports no models
        runs.append(["backtest", *args, "--check-lookahead", "--out", str(out)])
    for command in runs:
        result = CliRunner().invoke(cli, command)
        assert result.exit_code == 2, result.output
        assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
        if existing:
            assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"
        else:
            assert not out.exists(), sorted(str(p) for p in out.rglob("*"))
    corrected = backtest(out)
    assert corrected.exit_code == 0, corrected.output
    assert (out / "trades.db").exists() and (out / "metrics.json").exists()
    assert not existing or (out / "notes.txt").read_text() == "mine"

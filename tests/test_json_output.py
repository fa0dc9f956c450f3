"""`--json` of the commands (docs/json.md): stdout is exactly one JSON document with the documented keys, and its
values agree with the journal and with the text output. Run in-process on the embedded sim (a crafted csv market for
the backtest) with a private journal."""
from __future__ import annotations

import dataclasses
import enum
import json
import math
import sqlite3
from datetime import date, datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cli import json_output
from main import cli

HELD_AT = "2016-12-01T10:00"  # the month's first session: a rebalance of the large caps buys 18 names on the sim
POSITION_KEYS = ["symbol", "qty", "available", "entry", "price", "value", "pnl", "pnl_pct", "trade", "status", "stop",
                 "selling"]


@pytest.fixture
def env(private_journal) -> Path:
    return private_journal


@pytest.fixture
def held(env) -> Path:
    """A journal holding the rebalance's positions, each with its stop at the sim broker."""
    result = run("--asof", HELD_AT, "rebalance", "--universe", "large")
    assert result.exit_code == 0, result.output
    return env


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def run_json(*args: str) -> dict:
    """The command with --json appended: exit 0, stdout one JSON object (json.loads refuses anything around it)."""
    result = run(*args, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert isinstance(data, dict)
    return data


def rows(env: Path, sql: str, params=()) -> list[dict]:
    with sqlite3.connect(env / "trades.db") as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(sql, params)]


# --- the converter ------------------------------------------------------------------------------------------------

class Colour(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Sample:
    day: date
    moment: datetime
    price: float
    tags: set

    @property
    def weekend(self) -> bool:
        return self.day.weekday() >= 5


def test_to_jsonable_converts_every_kind_the_flows_return():
    from common.clock import calendar

    value = {
        "sample": Sample(date(2016, 12, 3), datetime(2016, 12, 3, 15, 0, tzinfo=timezone.utc), math.nan, {"b", "a"}),
        "numpy": [np.float64(1.5), np.int64(7), np.bool_(True), np.array([1.0, np.inf])],
        "path": Path("/tmp/x.db"), "colour": Colour.RED, "pair": ("AAPL", 2), "inf": -math.inf,
        date(2016, 12, 1): "a date key", "session": calendar().session(date(2016, 11, 25)), "other": object,
    }
    out = json_output.to_jsonable(value)
    assert out["sample"] == {"day": "2016-12-03", "moment": "2016-12-03T15:00:00+00:00", "price": None,
                             "tags": ["a", "b"], "weekend": True}
    assert out["numpy"] == [1.5, 7, True, [1.0, None]] and type(out["numpy"][1]) is int
    assert out["path"] == "/tmp/x.db" and out["colour"] == "red" and out["pair"] == ["AAPL", 2]
    assert out["inf"] is None and out["2016-12-01"] == "a date key"
    assert out["session"] == {"day": "2016-11-25", "open": "2016-11-25T14:30:00+00:00",
                              "close": "2016-11-25T18:00:00+00:00", "early_close": True}
    assert out["other"] == str(object)
    json.dumps(out, allow_nan=False)  # plain JSON: no NaN, no unknown type


# --- status, settings, positions, orders --------------------------------------------------------------------------

def test_status_dumps_every_key_the_flow_returns_with_a_later_key_included(env, monkeypatch):
    from flows import operator

    returned: dict = {}
    real_status = operator.status

    def status_with_a_new_key(rt):
        data = real_status(rt)
        data["last_runs"] = {"monitor": {"at": datetime(2016, 11, 9, 15, 25, tzinfo=timezone.utc), "late": math.nan}}
        returned.update(data)
        return data

    monkeypatch.setattr(operator, "status", status_with_a_new_key)
    data = run_json("--asof", "2016-11-09T10:30", "status")
    assert set(data) == set(returned) | {"command"}
    assert data["command"] == "status"
    assert data["last_runs"] == {"monitor": {"at": "2016-11-09T15:25:00+00:00", "late": None}}
    text = run("--asof", "2016-11-09T10:30", "status").stdout.splitlines()
    assert data["mode"] == text[0]
    assert data["market"]["now"] == "2016-11-09T15:30:00+00:00" and data["market"]["open"] is True
    assert data["account"]["equity"] == 100_000.0 and "equity           $100,000.00" in text
    assert data["positions"] == [] and data["halted"] is False and data["settings"]["halt"] == "off"


def test_settings_rows_are_the_text_table_rows(env):
    from config import RUNTIME_SETTINGS

    assert run("set", "autoclose_threshold", "7").exit_code == 0
    data = run_json("settings")
    assert data["command"] == "settings" and "mode" not in data
    assert [row["key"] for row in data["settings"]] == list(RUNTIME_SETTINGS)
    assert {row["key"]: row["value"] for row in data["settings"]}["autoclose_threshold"] == "7"
    assert all(set(row) == {"key", "value", "meaning"} for row in data["settings"])


def test_positions_list_the_symbols_of_the_text_table_with_their_stops(held):
    data = run_json("--asof", "2016-12-01T10:30", "positions")
    text = run("--asof", "2016-12-01T10:30", "positions").stdout.splitlines()
    assert data["mode"] == text[0]
    assert [row["symbol"] for row in data["positions"]] == [line.split()[0] for line in text[3:]]
    assert len(data["positions"]) == 18
    for row in data["positions"]:
        assert list(row) == POSITION_KEYS
        assert isinstance(row["stop"], float) and 0 < row["stop"] < row["entry"] and row["status"] == "open"
    trades = {r["symbol"]: r["id"] for r in rows(held, "SELECT symbol, id FROM trades WHERE status = 'open'")}
    assert {row["symbol"]: row["trade"] for row in data["positions"]} == trades
    from common import render

    assert text[1].split() == ["symbol", "qty", "available", "entry", "price", "value", "P&L", "return", "stop", "to",
                               "stop", "trade", "status"]
    for row, line in zip(data["positions"], text[3:]):  # money with $, return and distance to the stop as signed %
        assert line.split()[5:10] == [render.money(row["value"]), render.money(row["pnl"]), render.pct(row["pnl_pct"]),
                                      f"{row['stop']:.2f}", render.pct((row["stop"] / row["price"] - 1) * 100)]


def test_the_positions_table_puts_an_unprotected_position_first_with_no_stop():
    from flows.operator import positions_text

    held = {"qty": 10, "available": 0, "entry": 10.0, "price": 11.0, "value": 110.0, "pnl": 10.0, "pnl_pct": 10.0,
            "trade": 1, "status": "open"}
    lines = positions_text([{**held, "symbol": "SAFE", "stop": 10.45}, {**held, "symbol": "BARE", "stop": None},
                            {**held, "symbol": "SOLD", "stop": None, "selling": True}])
    assert [line.split()[0] for line in lines.splitlines()[2:]] == ["BARE", "SAFE", "SOLD"]
    assert lines.splitlines()[2].split()[8:10] == ["NONE", "-"]
    assert lines.splitlines()[3].split()[8:10] == ["10.45", "-5.00%"]
    assert lines.splitlines()[4].split()[8:10] == ["SELLING", "-"]  # its stop gave way to the sell that closes it


def test_orders_are_the_journal_orders_and_open_only_filters_them(held):
    from common.types import FINAL_OR_UNSENT
    from flows.operator import ORDER_COLUMNS

    everything = run_json("--asof", "2016-12-01T10:30", "orders")
    assert everything["open_only"] is False
    journal = rows(held, "SELECT client_order_id, status FROM orders")
    assert sorted(o["client_order_id"] for o in everything["orders"]) == sorted(o["client_order_id"] for o in journal)
    assert all(set(ORDER_COLUMNS) <= set(o) for o in everything["orders"])
    working = run_json("--asof", "2016-12-01T10:30", "orders", "--open")
    assert working["open_only"] is True
    assert len(working["orders"]) == sum(o["status"] not in FINAL_OR_UNSENT for o in journal) == 18
    assert {o["purpose"] for o in working["orders"]} == {"stop"}
    assert all(o["submitted_at"].endswith("+00:00") for o in everything["orders"])
    text = run("--asof", "2016-12-01T10:30", "orders").stdout  # the table shows the same moments in New York time
    assert all(o["submitted_at"][:10] in text for o in everything["orders"]) and " EST" in text and "+00:00" not in text


# --- the trading runs ---------------------------------------------------------------------------------------------

def test_a_dry_run_scan_lists_every_candidate_the_journal_recorded(env):
    from flows.scan import SUMMARY_COLUMNS

    data = run_json("--asof", "2016-11-09T12:30", "scan", "--cap", "small", "--dry-run")
    assert (data["command"], data["type"], data["cap"], data["dry_run"]) == ("scan", "midday", "small", True)
    assert data["mode"].startswith("mode: SIM") and "DRY RUN" not in data["mode"]
    [scan] = data["scans"]
    [row] = rows(env, "SELECT id, stage1_count, buy_count, regime, summary FROM scans")
    journal = {r["symbol"]: r["decision"] for r in rows(env, "SELECT symbol, decision FROM candidates "
                                                              "WHERE scan_id = ?", [row["id"]])}
    assert scan["scan_id"] == row["id"] and scan["session"] == "2016-11-09"
    assert len(scan["candidates"]) == len(journal) == scan["counts"]["stage1"] == row["stage1_count"] > 0
    assert {c["symbol"]: c["decision"] for c in scan["candidates"]} == journal
    assert all(list(c) == SUMMARY_COLUMNS for c in scan["candidates"])
    assert len(scan["buys"]) == row["buy_count"] and scan["summary"] == row["summary"]
    assert scan["market"]["regime"] == row["regime"] and scan["execution"] is None


def test_a_scan_outside_market_hours_is_a_skipped_document_and_errors_stay_one_line(env):
    data = run_json("--asof", "2016-11-12T11:00", "scan", "--cap", "small")
    assert set(data) == {"command", "mode", "skipped", "reason"} and data["skipped"] is True
    assert "market closed" in data["reason"] and "--force" in data["reason"]
    assert rows(env, "SELECT status, exit_code FROM runs ORDER BY rowid DESC LIMIT 1") == [
        {"status": "skipped", "exit_code": 0}]
    failed = run("--data", "csv:/nowhere/bars.csv", "--asof", "2016-11-09T10:30", "scan", "--dry-run", "--json")
    assert failed.exit_code == 2 and failed.stdout == ""
    assert failed.stderr.count("\n") == 1 and failed.stderr.startswith("error: ")


def test_monitor_names_each_checked_position_with_its_journal_check(held):
    data = run_json("--asof", "2016-12-01T11:00", "monitor")
    [run_row] = rows(held, "SELECT run_id FROM runs WHERE command LIKE '%monitor' ORDER BY rowid DESC LIMIT 1")
    checks = rows(held, "SELECT symbol, reversal_score, action FROM position_checks WHERE run_id = ? ORDER BY id",
                  [run_row["run_id"]])
    assert data["checked"] == [c["symbol"] for c in checks] and len(checks) == 18
    assert [(c["symbol"], c["reversal_score"], c["action"]) for c in data["checks"]] == [
        (c["symbol"], c["reversal_score"], c["action"]) for c in checks]
    alerts = rows(held, "SELECT message FROM events WHERE source = 'monitor' AND level = 'warning'")
    assert data["alerts"] == [a["message"] for a in alerts]
    assert data["circuit_breaker"] is False and data["exits_started"] == [] and data["dry_run"] is False


def test_reconcile_reports_each_list_by_name(held):
    data = run_json("--asof", "2016-12-01T11:05", "reconcile")
    assert data == {"command": "reconcile", "mode": data["mode"], "changed": False, "orders_refreshed": 0,
                    "orders_missing": [], "entries_filled": [], "trades_closed": [], "adopted": [],
                    "unknown_closed": [], "missing": [], "busy": [], "qty_corrected": [], "alerts": [],
                    "stops_placed": []}
    assert "nothing to do" in run("--asof", "2016-12-01T11:06", "reconcile").stdout


def test_rebalance_orders_are_the_rows_of_the_text_table(env):
    data = run_json("--asof", HELD_AT, "rebalance", "--universe", "large", "--dry-run")
    text = run("--asof", HELD_AT, "rebalance", "--universe", "large", "--dry-run").stdout.splitlines()
    plan = data["plan"]
    assert (data["universe"], data["dry_run"], data["daily"]) == ("large", True, False)
    assert (plan["mode"], plan["session"], plan["universe"]) == ("rebalance", "2016-12-01", "large")
    table_rows = [line.split() for line in text[4:4 + len(plan["orders"])]]
    assert [o["symbol"] for o in plan["orders"]] == [r[1] for r in table_rows] and len(plan["orders"]) == 18
    assert all(list(o) == ["action", "symbol", "side", "qty", "price", "value", "target", "current", "52w ratio",
                           "trade_id"] for o in plan["orders"])
    assert all(o["value"] == round(o["qty"] * o["price"], 2) <= o["target"] for o in plan["orders"])
    assert rows(env, "SELECT COUNT(*) AS n FROM orders") == [{"n": 0}]
    later = run_json("--asof", "2016-12-02T10:00", "rebalance", "--universe", "large", "--dry-run",
                     "--first-session-only")
    assert later["plan"] is None and "first session" in later["reason"]


# --- jobs and the backtest ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, asof, counted", [("daily-snapshot", "2016-12-01T16:05", "opened"),
                                                 ("update-outcomes", "2016-12-01T16:10", "candidates"),
                                                 ("update-tracking", "2016-12-01T16:15", "updated"),
                                                 ("cleanup", "2016-12-04T03:00", "vacuumed")])
def test_each_job_reports_its_result(held, name, asof, counted):
    data = run_json("--asof", asof, "jobs", name)
    assert (data["command"], data["job"], data["status"]) == (f"jobs {name}", name, "done")
    assert set(data) == {"command", "job", "status", "message", "counts", "seconds"}
    assert isinstance(data["counts"][counted], int) and data["seconds"] >= 0
    if name == "daily-snapshot":
        [day] = rows(held, "SELECT equity FROM daily_performance WHERE date = '2016-12-01'")
        assert f"equity ${day['equity']:,.2f}" in data["message"] and data["counts"]["opened"] == 18
    if name == "update-tracking":
        assert data["counts"]["updated"] == 18


def test_a_job_on_a_weekend_is_skipped(env):
    data = run_json("--asof", "2016-12-03T16:05", "jobs", "daily-snapshot")
    assert data["status"] == "skipped" and data["counts"] == {}


@pytest.fixture
def crafted_market(tmp_path, monkeypatch) -> dict[str, str]:
    from crafted import flat, ramp, use_csv_journal, write_market

    market = write_market(tmp_path / "market", {"UP": [ramp(50.0, 52.0), ramp(52.0, 55.0), flat(55.0)],
                                                "REV": [flat(50.0)] * 3})
    use_csv_journal(monkeypatch, tmp_path, Path(market["DATA_SOURCE"][4:]))
    monkeypatch.setenv("UNIVERSE_FILE", market["UNIVERSE_FILE"])
    return market


def test_backtest_carries_the_metrics_file_and_the_lookahead_cuts(crafted_market, tmp_path):
    out = tmp_path / "bt"
    data = run_json("backtest", "--start", "2016-06-02", "--end", "2016-06-06", "--out", str(out))
    assert (data["command"], data["system"], data["start"], data["end"]) == ("backtest", "momentum", "2016-06-02",
                                                                             "2016-06-06")
    assert data["sessions"] == 3 and data["failed_steps"] == 0 and data["failures"] == []
    assert data["metrics"] == json.loads((out / "metrics.json").read_text())
    assert data["journal"] == str(out / "trades.db") and data["first_tradable_session"] == "2016-06-02"
    check = run_json("backtest", "--start", "2016-06-02", "--end", "2016-06-06", "--out", str(tmp_path / "cut"),
                     "--check-lookahead", "--cuts", "1")
    assert check["check_lookahead"] is True and check["lookahead"] is False
    assert [c["moment"] for c in check["cuts"]] == [None, "2016-06-03T12:31:00-04:00"]
    assert all(c["cut"] == "2016-06-03" and c["identical"] and c["difference"] is None for c in check["cuts"])


def test_the_older_json_commands_print_one_object_named_by_its_command(env):
    schedule = run_json("schedule", "--date", "2024-11-29")
    assert schedule["command"] == "schedule" and schedule["sessions"][0]["early_close"] is True
    assert run_json("errors") == {"command": "errors", "errors": [], "not_shown": 0}
    assert run_json("--asof", "2024-06-14T10:30", "report", "metrics")["command"] == "report metrics"
    assert run_json("--asof", "2024-06-14T10:30", "options", "positions") == {"command": "options positions",
                                                                              "positions": []}

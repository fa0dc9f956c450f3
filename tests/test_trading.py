"""Trading scans on the sim broker over real history (csv replay): limits, stops, broker-side stop fills."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from common.clock import Clock, parse_asof
from ports.market_sources import CsvMarket
from ports.sim_broker import SimBroker

from realdata import BARS, cli, rows

SCANS = ["2016-11-09T10:30", "2016-11-10T12:30", "2016-11-11T15:30", "2016-11-14T10:30"]



def broker_at(env, asof: str) -> SimBroker:
    market = CsvMarket(BARS, cache_dir=Path(env["CACHE_DIR"]))
    return SimBroker(Path(env["MOMENTUM_DB"]).parent / "sim_broker.db", market, Clock(parse_asof(asof)))


def assert_protected(env, asof: str) -> None:
    broker = broker_at(env, asof)
    positions = {p.symbol: p.qty for p in broker.positions()}
    stops = Counter()
    stop_qty = {}
    for order in broker.orders("open"):
        if order.type == "trailing_stop":
            stops[order.symbol] += 1
            stop_qty[order.symbol] = order.qty
    open_trades = {r["symbol"]: r["qty"] for r in rows(env, "SELECT symbol, qty FROM trades WHERE status = 'open'")}
    assert open_trades == positions
    for symbol, qty in positions.items():
        assert stops[symbol] == 1 and stop_qty[symbol] == qty, symbol


def test_trading_scans_stay_within_every_limit_and_protect_each_position(real_env):
    assert cli("set", "skip_buys", "off").exit_code == 0
    for asof in SCANS:
        result = cli("--asof", asof, "scan", "--cap", "all")
        assert result.exit_code == 0, result.output
        assert_protected(real_env, asof)
    trades = rows(real_env, "SELECT * FROM trades ORDER BY id")
    opened = [t for t in trades if t["status"] in ("open", "closed")]
    assert len(opened) >= 4
    assert len([t for t in trades if t["status"] == "open"]) <= 6
    assert max(Counter(t["cap"] for t in trades if t["status"] == "open").values()) <= 2
    per_scan = Counter((t["run_id"], t["cap"]) for t in trades)
    assert max(per_scan.values()) <= 2
    for trade in opened:
        # fixed sizing: 10% of the equity at entry, whole shares
        equity = 100_000 * (1 + 0.05)  # generous upper bound of equity over these days
        assert trade["qty"] * trade["entry_price"] <= 0.10 * equity
        assert json.loads(trade["entry_signals"])["stage2"] is True
        assert trade["composite_score"] >= 12
    exposure = max(t["exposure_pct"] for t in trades)
    assert exposure <= 60.0 + 0.5


def test_broker_trailing_stop_fill_closes_the_trade_at_the_fill_price(real_env):
    cli("set", "skip_buys", "off")
    assert cli("--asof", "2016-11-09T10:30", "scan", "--cap", "large").exit_code == 0
    stops_before = rows(real_env, "SELECT client_order_id, trade_id FROM orders WHERE purpose = 'stop'")
    assert len(stops_before) == 1  # FCX
    result = cli("--asof", "2016-12-02T16:30", "reconcile")
    assert result.exit_code == 0, result.output
    closed = rows(real_env, "SELECT t.*, o.filled_avg_price AS fill, o.filled_qty FROM trades t JOIN orders o "
                            "ON o.trade_id = t.id AND o.purpose = 'stop' WHERE t.status = 'closed'")
    assert closed, result.output
    for trade in closed:
        assert trade["exit_reason"] == "trailing_stop"
        assert trade["exit_price"] == trade["fill"] and trade["filled_qty"] == trade["qty"]
        assert trade["pnl"] == pytest.approx((trade["exit_price"] - trade["entry_price"]) * trade["qty"], abs=0.01)
        assert "trade closed: " + trade["symbol"] in result.output


def test_rerunning_the_same_scan_sends_nothing_twice(real_env):
    cli("set", "skip_buys", "off")
    first = cli("--asof", "2016-11-09T10:30", "scan", "--cap", "large")
    second = cli("--asof", "2016-11-09T10:30", "scan", "--cap", "large")
    assert first.exit_code == second.exit_code == 0
    broker = broker_at(real_env, "2016-11-09T10:30")
    ids = [o.client_order_id for o in broker.orders("all")]
    assert len(ids) == len(set(ids)) == 2  # one entry (FCX), one stop


def test_close_command_cancels_the_stop_and_records_the_exit(real_env):
    cli("set", "skip_buys", "off")
    cli("--asof", "2016-11-09T10:30", "scan", "--cap", "large")
    symbol = rows(real_env, "SELECT symbol FROM trades WHERE status = 'open' ORDER BY id LIMIT 1")[0]["symbol"]
    result = cli("--asof", "2016-11-09T14:00", "close", symbol)
    assert result.exit_code == 0, result.output
    trade = rows(real_env, "SELECT * FROM trades WHERE symbol = ?", (symbol,))[0]
    assert trade["status"] == "closed" and trade["exit_reason"] == "manual"
    assert f"closed {symbol} {trade['qty']} sh at ${trade['exit_price']:,.2f} (P&L " in result.output
    exit_row = rows(real_env, "SELECT * FROM exits WHERE trade_id = ?", (trade["id"],))[0]
    assert exit_row["state"] == "filled" and exit_row["price"] == trade["exit_price"]
    stop = rows(real_env, "SELECT status FROM orders WHERE trade_id = ? AND purpose = 'stop'", (trade["id"],))[0]
    assert stop["status"] == "canceled"
    assert_protected(real_env, "2016-11-09T14:01")


def test_halt_blocks_buys_and_flatten_closes_everything(real_env):
    cli("set", "skip_buys", "off")
    cli("--asof", "2016-11-09T10:30", "scan", "--cap", "large")
    result = cli("--asof", "2016-11-09T11:00", "halt", "--flatten")
    assert result.exit_code == 0, result.output
    assert {r["exit_reason"] for r in rows(real_env, "SELECT exit_reason FROM trades")} == {"kill_switch"}
    scan = cli("--asof", "2016-11-10T12:30", "scan", "--cap", "all")
    assert scan.exit_code == 0
    assert rows(real_env, "SELECT COUNT(*) AS n FROM trades WHERE status = 'open'")[0]["n"] == 0
    assert "trading halted" in scan.output
    assert cli("resume").exit_code == 0
    assert rows(real_env, "SELECT value FROM settings WHERE key = 'halt'")[0]["value"] == "off"


@pytest.mark.slow
def test_two_scans_started_at_once_one_runs_one_exits_75(tmp_path, fake_alpaca):
    """The first scan is held inside the lock by a slow data source (a stalled bars request at the local fake
    Alpaca server); the second, started while the first provably holds the lock, exits 75 with one line."""
    import subprocess
    import sys
    import time

    from conftest import ROOT
    from realdata import process_env

    env = process_env({"MOMENTUM_DB": str(tmp_path / "trades.db"), "LOG_DIR": str(tmp_path / "logs"),
                       "DATA_SOURCE": "alpaca", "ALPACA_DATA_URL": fake_alpaca.url, "ALPACA_API_KEY": "PKLOCKTEST1234",
                       "ALPACA_SECRET_KEY": "locktestsecret123456", "ALPACA_TIMEOUT": "5"})
    fake_alpaca.stall("/v2/stocks/bars", seconds=3.0)
    argv = [sys.executable, str(ROOT / "main.py"), "--asof", "2024-06-14T11:00", "scan", "--cap", "small", "--dry-run"]
    first = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while fake_alpaca.count("GET", "/v2/stocks/bars") == 0 and time.monotonic() < deadline:
        time.sleep(0.05)  # the first scan has taken the lock and is waiting on its data
    second = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    first_out, first_err = first.communicate(timeout=120)
    assert second.returncode == 75
    assert second.stderr.strip().startswith("error: another scan is running on this journal (pid ")
    assert len(second.stderr.strip().splitlines()) == 1
    assert first.returncode == 0, first_err
    assert "[small]" in first_out


def test_every_order_and_fill_is_appended_to_the_daily_audit_csv(real_env):
    import csv

    cli("set", "skip_buys", "off")
    cli("--asof", "2016-11-09T10:30", "scan", "--cap", "large")
    path = Path(real_env["LOG_DIR"]) / "trades_2016-11-09.csv"
    with open(path, newline="") as handle:
        audit = list(csv.DictReader(handle))
    journal_orders = rows(real_env, "SELECT client_order_id, purpose FROM orders")
    assert {r["client_order_id"] for r in audit} == {o["client_order_id"] for o in journal_orders}
    fills = [r for r in audit if r["event"] == "fill"]
    entries = [o["client_order_id"] for o in journal_orders if o["purpose"] == "entry"]
    assert sorted(r["client_order_id"] for r in fills) == sorted(entries)
    assert all(float(r["filled_avg_price"]) > 0 for r in fills)

"""Each system trades by its own rules (core/systems.py): its exits, its stop, its sleeve; never another's positions."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import executor
from config import load_config
from core import reversal, systems
from flows import scan as scan_flow
from flows.runtime import Runtime
from main import cli as command

from crafted import ENTRY, flat, ramp, sessions_after, write_market
from realdata import rows

SCENARIOS = {
    "REV": [flat(50.0)] * 4,                                        # drifts under its averages: a momentum reversal
    "STP": [(48.40, 48.45, 48.35, 48.40, 1_000_000)],               # opens -3.2%: a momentum hard stop
    "CRB": [(47.75, 47.8, 47.7, 47.75, 1_000_000)],                 # -4.5% on a big position: the circuit breaker
    "UP": [ramp(50.0, 52.0), ramp(52.0, 55.0), flat(55.0)],
}


@pytest.fixture(scope="module")
def market_env(tmp_path_factory):
    return write_market(tmp_path_factory.mktemp("crafted"), SCENARIOS)


@pytest.fixture
def env(tmp_path, monkeypatch, market_env):
    values = {**market_env, "MOMENTUM_DB": str(tmp_path / "trades.db"), "LOG_DIR": str(tmp_path / "logs"),
              "CACHE_DIR": str(tmp_path / "cache"), "HARD_STOP_PCT": "3"}
    for name in ("MOMENTUM_ASOF", "MARKET_DATA", "BROKER"):
        monkeypatch.delenv(name, raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def buy(symbol: str, strategy: str, qty: int = 100) -> dict:
    rt = Runtime(load_config({"MOMENTUM_ASOF": f"{ENTRY}T15:00"}))
    trade = executor.open_position(rt, symbol=symbol, cap="large", qty=qty, session=str(ENTRY),
                                   scan_type="rebal" if strategy == "rebalance" else "close",
                                   trade_fields={"strategy": strategy, "composite_score": 14}, fill_timeout=1)
    rt.close()
    assert trade["status"] == "open"
    return trade


def monitor(asof: str) -> str:
    result = CliRunner().invoke(command, ["--asof", asof, "monitor"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def day(n: int) -> str:
    return str(sessions_after(n)[-1])


def test_a_rebalance_holding_is_never_closed_by_a_momentum_exit(env):
    for symbol in ("REV", "STP"):
        buy(symbol, "rebalance")
    for n in range(1, 4):
        monitor(f"{day(n)}T10:00")
    assert rows(env, "SELECT * FROM exits") == []  # no reversal, no hard stop: neither is a rebalance exit
    assert {t["status"] for t in rows(env, "SELECT status FROM trades")} == {"open"}
    checks = rows(env, "SELECT symbol, signals FROM position_checks WHERE symbol = 'STP' ORDER BY id")
    assert json.loads(checks[0]["signals"])["triggered"] == []


def test_the_same_positions_held_by_momentum_are_closed_by_its_exits(env):
    for symbol in ("REV", "STP"):
        buy(symbol, "momentum")
    for n in range(1, 4):
        monitor(f"{day(n)}T10:00")
    reasons = {e["symbol"]: e["reason"] for e in rows(env, "SELECT symbol, reason FROM exits")}
    assert reasons == {"STP": "stop_loss", "REV": "reversal"}


def test_the_circuit_breaker_does_not_sell_the_rebalance_portfolio(env):
    buy("CRB", "rebalance", qty=1500)
    output = monitor(f"{day(1)}T15:50")
    assert "CIRCUIT BREAKER" in output  # the account's day loss still trips it (no momentum buys today)
    assert rows(env, "SELECT * FROM exits") == []
    assert rows(env, "SELECT status FROM trades")[0]["status"] == "open"


def test_each_system_gets_its_own_broker_stop(env):
    buy("UP", "rebalance")
    buy("REV", "momentum")
    stops = {o["symbol"]: o["trail_percent"] for o in rows(env, "SELECT symbol, trail_percent FROM orders "
                                                                "WHERE purpose = 'stop'")}
    assert stops == {"UP": 15.0, "REV": 5.0}  # REBALANCE_STOP_PCT and TRAILING_STOP_PCT


def test_a_momentum_scan_decides_about_momentum_trades_only(env):
    rebalance_trade = buy("REV", "rebalance")
    momentum_trade = buy("STP", "momentum")
    rt = Runtime(load_config({"MOMENTUM_ASOF": f"{day(1)}T10:00"}))
    try:
        assert [t["id"] for t in scan_flow.open_trades(rt.journal)] == [momentum_trade["id"]]
        assert scan_flow.symbols_held(rt.journal) == {"REV", "STP"}  # neither is bought again by the scan
    finally:
        rt.close()
    assert rebalance_trade["strategy"] == "rebalance"


def test_option_positions_are_not_stock_positions_of_the_momentum_sleeve(env):
    rt = Runtime(load_config({"MOMENTUM_ASOF": f"{day(1)}T10:00"}))
    try:
        for k in range(5):
            rt.journal.insert_row("trades", {"symbol": f"SPY261218C0000{k}000", "strategy": systems.OPTIONS,
                                             "asset_class": "us_option", "qty": 1, "status": "open",
                                             "entry_price": 1.0})
        assert scan_flow.open_trades(rt.journal) == []  # five options leave all six stock slots free
        limits = scan_flow.limits_for(rt, "large", scan_flow.open_trades(rt.journal), None)
        assert limits.free_slots == rt.config.max_positions
    finally:
        rt.close()


def test_the_systems_are_declared_once_with_their_settings():
    config = load_config({"REBALANCE_STOP_PCT": "12", "REBALANCE_TOP_N": "10", "REBALANCE_SLEEVE_PCT": "40"},
                         environ={})
    declared = systems.declared(config)
    assert set(declared) == {"momentum", "rebalance", "strat_options"}
    assert declared["rebalance"].exits.trailing_stop_pct == 12.0
    assert declared["rebalance"].exits.conditions == {"kill_switch", "trailing_stop"}
    assert (declared["rebalance"].sleeve.equity_share, declared["rebalance"].sleeve.max_positions) == (0.4, 10)
    assert declared["momentum"].sleeve.equity_share == pytest.approx(0.6)
    assert "reversal" in declared["momentum"].exits.conditions
    assert declared["strat_options"].exits.engine == "options"
    assert systems.of_trade({"strategy": "external"}) == "momentum"


def test_a_momentum_entry_carries_the_profit_target():
    from flows.scan_orders import profit_target

    config = load_config({}, environ={})
    assert profit_target(config, 50.0) == 65.0  # 50 x (1 + 6 x 5%)
    assert profit_target(load_config({"PROFIT_TARGET_R": "0"}, environ={}), 50.0) is None


def test_the_highest_close_since_entry_uses_closes_only():
    import numpy as np

    from common.types import Panel, Snapshot

    dates = np.array(["2016-06-01", "2016-06-02", "2016-06-03"], dtype="datetime64[D]")
    close = np.array([[50.0], [53.0], [51.0]])
    history = Panel(dates, ["X"], close, close + 1, close - 1, close, np.full((3, 1), 1e6))
    snap = Snapshot(np.datetime64("2016-06-06", "D").astype(object), 0.5, ["X"], np.array([60.0]),
                    np.array([60.0]), np.array([60.0]), np.array([60.0]), np.array([1e5]), np.array([51.0]),
                    np.array([59.9]), np.array([60.1]))
    trade = {"symbol": "X", "entry_time": "2016-06-02T14:00:00+00:00", "peak_price": 58.0, "entry_price": 55.0}
    # the entry fill (55), the journal's intraday peak (58) and today's price (60) are not closes
    assert reversal.peak_closes(history, snap, [trade]) == {"X": 53.0}


def test_all_systems_side_by_side_run_both_schedules_and_share_the_account():
    from datetime import date, time

    from backtest import replay
    from common.clock import calendar

    steps = replay.session_steps(calendar().session(date(2016, 6, 1)), "all", "all", time(9, 45))
    kinds = [(s.kind, s.moment.strftime("%H:%M")) for s in steps]
    assert ("rebalance", "09:45") in kinds and ("scan", "09:35") in kinds and ("scan", "15:30") in kinds
    config = load_config({"REBALANCE_SLEEVE_PCT": "70"}, environ={})  # momentum's 60% leaves the rebalance 40%
    assert replay.sleeves_for(dict(config._values), config, "all")["REBALANCE_SLEEVE_PCT"] == 40.0
    assert replay.sleeves_for(dict(config._values), config, "rebalance")["REBALANCE_SLEEVE_PCT"] == 100.0
    assert replay.sleeves_for(dict(config._values), config, "momentum") == dict(config._values)


def test_the_rebalance_can_trade_only_once_a_year_of_history_is_behind_it(tmp_path):
    from datetime import date
    from types import SimpleNamespace

    from backtest import replay
    from common.clock import calendar

    cal = calendar()
    market = SimpleNamespace(first_date=date(2013, 2, 8))
    rt = SimpleNamespace(market=market, calendar=cal)
    sessions = [cal.session(d) for d in cal.sessions(date(2013, 8, 1), date(2014, 6, 30))]
    year_later = cal.sessions(date(2013, 2, 8), date(2014, 6, 30))[252]
    assert replay.first_tradable(rt, sessions, "rebalance") == year_later == date(2014, 2, 10)
    assert replay.first_tradable(rt, sessions, "momentum") == date(2013, 8, 1)

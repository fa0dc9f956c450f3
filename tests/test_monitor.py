"""Monitor scenarios on crafted price paths (csv replay with --asof steps): each exit condition as the product
meets it, with the exit row, reason, priority, quantity, price and P&L checked."""
from __future__ import annotations

import json
import sqlite3

import pytest
from click.testing import CliRunner

import executor
from config import load_config
from flows.runtime import Runtime
from main import cli as command

from crafted import ENTRY, flat, ramp, sessions_after, write_market
from realdata import rows

# With daily bars a run during a session sees today's open and nothing later (the information-set rule), so each
# scenario puts the move it tests into an open: the monitor sees it from 09:30 on.
SCENARIOS = {
    "PTG": [ramp(50.0, 58.0), ramp(58.0, 63.5), flat(63.5)],          # opens +16%, then +27%: both tranches
    "STP": [(48.40, 48.45, 48.35, 48.40, 1_000_000)],                  # opens -3.2% with a 3% hard stop
    "FLAT": [flat(50.5)] * 14,                                         # 10+ sessions going nowhere
    "GAP": [ramp(50.0, 55.0), (51.0, 51.2, 50.8, 51.0, 1_000_000)],   # broker stop gapped through
    "CRB": [(47.75, 47.8, 47.7, 47.75, 1_000_000)],                    # -4.5%: a 3.4% day loss on 75% of equity
    "REV": [flat(50.0)] * 4,                                           # drifting under its averages
    "LIQ": [(50.2, 50.3, 50.1, 50.2, 50_000), flat(50.2)],             # volume dries up to 5% of normal
    "TGT": [(52.6, 52.7, 52.5, 52.6, 1_000_000)],                      # opens above a signal's target of 52.50
    "TRL": [ramp(50.0, 56.0), (53.0, 53.1, 52.9, 53.0, 1_000_000)],    # opens 5.4% off its peak, no broker stop
}


@pytest.fixture(scope="module")
def market_env(tmp_path_factory):
    return write_market(tmp_path_factory.mktemp("crafted"), SCENARIOS)


@pytest.fixture
def env(tmp_path, monkeypatch, market_env):
    values = {**market_env, "MOMENTUM_DB": str(tmp_path / "trades.db"), "LOG_DIR": str(tmp_path / "logs"),
              "CACHE_DIR": str(tmp_path / "cache")}
    for name in ("MOMENTUM_ASOF", "MARKET_DATA", "BROKER"):
        monkeypatch.delenv(name, raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def buy(env, symbol: str, qty: int = 100) -> dict:
    rt = Runtime(load_config({"MOMENTUM_ASOF": f"{ENTRY}T15:00"}))
    trade = executor.open_position(rt, symbol=symbol, cap="large", qty=qty, session=str(ENTRY), scan_type="close",
                                   trade_fields={"strategy": "momentum", "composite_score": 14}, fill_timeout=1)
    rt.close()
    assert trade["status"] == "open"
    return trade


def monitor(asof: str):
    result = CliRunner().invoke(command, ["--asof", asof, "monitor"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output



def day(n: int) -> str:
    return str(sessions_after(n)[-1])


def test_partial_exits_happen_once_each_and_the_rest_keeps_trailing(env):
    trade = buy(env, "PTG", qty=101)
    monitor(f"{day(1)}T15:30")
    monitor(f"{day(1)}T15:45")  # a check later the same day takes nothing more
    monitor(f"{day(2)}T15:30")
    monitor(f"{day(3)}T12:00")
    exits = rows(env, "SELECT reason, priority, qty, partial, state, price, pnl FROM exits ORDER BY id")
    assert [(e["reason"], e["priority"], e["qty"], e["partial"], e["state"]) for e in exits] == [
        ("partial_exit_target", "MEDIUM", 50, 1, "filled"), ("partial_exit_target", "MEDIUM", 25, 1, "filled")]
    for e in exits:
        assert e["pnl"] == pytest.approx((e["price"] - trade["entry_price"]) * e["qty"], abs=0.01)
    after = rows(env, "SELECT * FROM trades")[0]
    assert after["status"] == "open" and after["qty"] == 26 and after["partial_15_done"] == after["partial_25_done"] == 1
    stops = rows(env, "SELECT qty FROM orders WHERE purpose = 'stop' AND status IN ('new', 'accepted')")
    assert stops == [{"qty": 26}]


def test_hard_stop_wins_over_other_conditions_and_all_are_recorded(env, monkeypatch):
    monkeypatch.setenv("HARD_STOP_PCT", "3")
    trade = buy(env, "STP")
    output = monitor(f"{day(1)}T15:50")
    assert "exit started: STP stop_loss (CRITICAL)" in output
    exit_row = rows(env, "SELECT * FROM exits")[0]
    triggered = [t["reason"] for t in json.loads(exit_row["triggered"])]
    assert triggered[0] == "stop_loss" and len(triggered) >= 3, triggered
    assert exit_row["state"] == "filled" and exit_row["qty"] == 100 and exit_row["partial"] == 0
    attempts = rows(env, "SELECT order_type, status FROM exit_attempts")
    assert attempts == [{"order_type": "market", "status": "filled"}]
    closed = rows(env, "SELECT * FROM trades")[0]
    assert closed["status"] == "closed" and closed["exit_reason"] == "stop_loss" and closed["exit_priority"] == "CRITICAL"
    assert closed["pnl"] == pytest.approx((closed["exit_price"] - trade["entry_price"]) * 100, abs=0.01)
    assert closed["exit_price"] < 48.5


def test_early_exit_walks_a_conservative_limit_across_runs(env):
    buy(env, "FLAT")
    for n in range(1, 10):
        monitor(f"{day(n)}T10:00")
    assert rows(env, "SELECT COUNT(*) AS n FROM exits")[0]["n"] == 0  # 9 sessions held: not yet
    monitor(f"{day(10)}T10:00")  # 10 sessions: a conservative limit above mid that the flat price never reaches
    monitor(f"{day(10)}T10:05")  # its 60 s are up: cancel, walk one tick, and the new limit fills
    exit_row = rows(env, "SELECT * FROM exits")[0]
    assert (exit_row["reason"], exit_row["priority"], exit_row["strategy"]) == ("early_exit", "LOW", "conservative")
    attempts = rows(env, "SELECT attempt, order_type, limit_price, status FROM exit_attempts ORDER BY attempt")
    assert [(a["attempt"], a["order_type"], a["limit_price"]) for a in attempts] == [(1, "limit", 50.51),
                                                                                    (2, "limit", 50.5)]
    assert [a["status"] for a in attempts] == ["canceled", "filled"]
    closed = rows(env, "SELECT * FROM trades")[0]
    assert closed["exit_reason"] == "early_exit" and closed["exit_price"] == 50.5


def test_a_broker_side_trailing_stop_fill_is_recorded_as_a_trailing_stop_exit(env):
    trade = buy(env, "GAP")
    monitor(f"{day(1)}T15:59")
    monitor(f"{day(2)}T10:00")
    exit_row = rows(env, "SELECT * FROM exits")[0]
    assert (exit_row["reason"], exit_row["priority"], exit_row["strategy"], exit_row["state"]) == (
        "trailing_stop", "HIGH", "broker_stop", "filled")
    assert exit_row["price"] == 50.98  # the gap through the stop: a market order at the open, 51 x (1 - 0.00045)
    assert exit_row["pnl"] == pytest.approx((50.98 - trade["entry_price"]) * 100, abs=0.01)
    assert rows(env, "SELECT exit_reason FROM trades")[0]["exit_reason"] == "trailing_stop"


def test_circuit_breaker_closes_everything_and_blocks_buys_until_the_next_session(env):
    buy(env, "CRB", qty=1500)
    output = monitor(f"{day(1)}T15:50")
    assert "CIRCUIT BREAKER" in output
    exit_row = rows(env, "SELECT * FROM exits")[0]
    assert (exit_row["reason"], exit_row["priority"], exit_row["state"]) == ("circuit_breaker", "CRITICAL", "filled")
    assert rows(env, "SELECT value FROM state WHERE key = 'circuit_breaker_session'")[0]["value"] == day(1)
    critical = [r["message"] for r in rows(env, "SELECT message FROM events WHERE level = 'critical'")]
    assert any(m.startswith("CIRCUIT BREAKER") for m in critical)


def test_position_checks_every_30_minutes_unless_urgent(env):
    buy(env, "FLAT")
    monitor(f"{day(1)}T10:00")
    assert "1 not due" in monitor(f"{day(1)}T10:10")
    assert "1 checked" in monitor(f"{day(1)}T10:30")
    checks = rows(env, "SELECT action, reversal_score, signals FROM position_checks")
    assert len(checks) == 2 and all(c["action"] == "monitor:HOLD" for c in checks)
    assert "reversal" in json.loads(checks[0]["signals"])


def test_reversal_auto_close_sells_at_the_bid_and_records_a_poor_signal(env):
    buy(env, "REV")
    for n in range(1, 4):
        monitor(f"{day(n)}T10:00")
    exit_row = rows(env, "SELECT * FROM exits")[0]
    assert (exit_row["reason"], exit_row["priority"], exit_row["strategy"], exit_row["state"]) == (
        "reversal", "HIGH", "aggressive", "filled")
    attempt = rows(env, "SELECT order_type, limit_price FROM exit_attempts")[0]
    assert attempt["order_type"] == "limit" and attempt["limit_price"] == pytest.approx(50.0 * (1 - 0.0005), abs=0.01)
    poor = rows(env, "SELECT * FROM poor_signals")
    assert len(poor) == 1 and poor[0]["exit_reason"] == "reversal" and poor[0]["reversal_score"] >= 5
    assert "below_sma5" in json.loads(poor[0]["reversal_signals"])


def test_with_auto_close_off_the_broken_edge_exits_instead(env):
    CliRunner().invoke(command, ["set", "autoclose", "off"], catch_exceptions=False)
    buy(env, "REV")
    for n in range(1, 4):
        monitor(f"{day(n)}T10:00")
    exit_row = rows(env, "SELECT * FROM exits")[0]
    assert (exit_row["reason"], exit_row["priority"], exit_row["strategy"]) == (
        "edge_disappeared", "LOW", "conservative")
    assert "reversal" not in [t["reason"] for t in json.loads(exit_row["triggered"])]


def test_liquidity_drying_up_is_a_high_priority_exit(env):
    buy(env, "LIQ")
    monitor(f"{day(1)}T14:00")  # daily bars: the thin volume of day 1 is known only after its close
    assert rows(env, "SELECT COUNT(*) AS n FROM exits")[0]["n"] == 0
    monitor(f"{day(2)}T10:00")
    exit_row = rows(env, "SELECT * FROM exits")[0]
    assert (exit_row["reason"], exit_row["priority"], exit_row["state"]) == ("liquidity_dried_up", "HIGH", "filled")


def test_a_signal_target_is_taken_at_a_fair_limit(env):
    trade = buy(env, "TGT")
    with sqlite3.connect(env["MOMENTUM_DB"]) as conn:
        conn.execute("UPDATE trades SET target_price = 52.5 WHERE id = ?", (trade["id"],))
    monitor(f"{day(1)}T15:59")
    exit_row = rows(env, "SELECT * FROM exits")[0]
    assert (exit_row["reason"], exit_row["priority"], exit_row["strategy"]) == ("profit_target", "MEDIUM", "fair")
    assert exit_row["qty"] == 100 and exit_row["partial"] == 0


class NoStopsBroker:
    """A broker that refuses every stop order (as a broker can, e.g. for a halted symbol)."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def submit(self, request):
        from common.errors import OrderRejected

        if request.type in ("stop", "trailing_stop"):
            raise OrderRejected("stop orders are not accepted for this symbol", status_code=422)
        return self._inner.submit(request)


def test_the_local_trailing_stop_backstops_an_unprotected_position(env):
    import monitor as position_monitor

    def runtime(asof):
        rt = Runtime(load_config({"MOMENTUM_ASOF": asof}))
        rt.broker = NoStopsBroker(rt.broker)
        return rt

    rt = runtime(f"{ENTRY}T15:00")
    trade = executor.open_position(rt, symbol="TRL", cap="large", qty=100, session=str(ENTRY), scan_type="close",
                                   trade_fields={"strategy": "momentum"}, fill_timeout=1)
    assert trade["status"] == "unprotected"
    rt.close()
    for asof in (f"{day(1)}T15:59", f"{day(2)}T15:59"):
        rt = runtime(asof)
        position_monitor.run_monitor(rt, dry_run=False, force=False)
        rt.close()
    exit_row = rows(env, "SELECT * FROM exits")[0]
    assert (exit_row["reason"], exit_row["priority"], exit_row["state"]) == ("trailing_stop", "HIGH", "filled")
    critical = [r["message"] for r in rows(env, "SELECT message FROM events WHERE level = 'critical'")]
    assert any("UNPROTECTED" in m for m in critical)


def test_a_scan_closing_on_a_reversal_records_the_poor_signal_of_its_closing_check(env):
    """The scan writes its position checks after its orders: the poor signal must carry the score and signals of
    the scan's CLOSE check, not those of the check before it (here the monitor's HOLD of day 1)."""
    buy(env, "REV")
    monitor(f"{day(1)}T10:00")
    result = CliRunner().invoke(command, ["--asof", f"{day(3)}T10:30", "scan", "--cap", "large"],
                                catch_exceptions=False)
    assert result.exit_code == 0 and "CLOSE REV: reversal score" in result.output, result.output
    hold, close = rows(env, "SELECT reversal_score, signals, action FROM position_checks ORDER BY id")
    assert (hold["action"], close["action"]) == ("monitor:HOLD", "scan:CLOSE")
    assert close["reversal_score"] >= 5 > hold["reversal_score"]
    poor = rows(env, "SELECT reversal_score, reversal_signals FROM poor_signals")
    assert poor == [{"reversal_score": close["reversal_score"], "reversal_signals": close["signals"]}]

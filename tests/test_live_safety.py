"""Live safety on crafted price paths and against the local fake Alpaca server: a refused or stranded exit never
stops the monitor, no command disowns an order another one is still sending, one positions answer never rewrites
the book, and every broker error after an entry leaves the position protected or flagged."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

import executor
from common.errors import BrokerUnavailable, InsufficientQty
from common.types import OrderRequest
from config import load_config
from flows import scan_orders
from flows.runtime import Runtime
from main import cli as command
from ports import sim_broker

from crafted import ENTRY, flat, sessions_after, write_market
from realdata import rows
from test_alpaca_cycle import SYMBOL, FakeExchange, rt  # noqa: F401 - the fake-Alpaca runtime fixture

SCENARIOS = {
    "FLAT": [flat(50.5)] * 14,                                         # goes nowhere: an early exit, LOW
    "STP": [(48.40, 48.45, 48.35, 48.40, 1_000_000)],                  # opens -3.2% with a 3% hard stop: CRITICAL
    "TGT": [(52.6, 52.7, 52.5, 52.6, 1_000_000)],                      # opens above its target: MEDIUM
    "HOLD": [flat(50.1)] * 14,
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


def buy(symbol: str, qty: int = 100, **fields) -> dict:
    rt = Runtime(load_config({"MOMENTUM_ASOF": f"{ENTRY}T15:00"}))
    trade = executor.open_position(rt, symbol=symbol, cap="large", qty=qty, session=str(ENTRY), scan_type="close",
                                   trade_fields={"strategy": "momentum", "composite_score": 14, **fields},
                                   fill_timeout=1)
    rt.close()
    assert trade["status"] == "open"
    return trade


def run(*args: str):
    return CliRunner().invoke(command, list(args), catch_exceptions=False)


def day(n: int) -> str:
    return str(sessions_after(n)[-1])


def working_stops(env, symbol: str) -> list[dict]:
    return rows(env, "SELECT client_order_id, qty FROM orders WHERE symbol = ? AND purpose = 'stop' "
                     "AND status IN ('new', 'accepted')", (symbol,))


def critical(env) -> list[str]:
    return [r["message"] for r in rows(env, "SELECT message FROM events WHERE level = 'critical' ORDER BY id")]


# --- 1. a refused or stranded exit ---------------------------------------------------------------------------------

def test_an_exit_limit_that_expired_overnight_walks_on_after_the_restored_stop_is_cancelled(env):
    buy("FLAT")
    assert run("--asof", f"{day(10)}T15:58", "monitor").exit_code == 0  # a LOW limit above mid, never reached
    attempts = rows(env, "SELECT attempt, status FROM exit_attempts ORDER BY attempt")
    assert [a["attempt"] for a in attempts] == [1]
    # the DAY limit expires at the close; the next run puts the stop back, then walks the exit on
    result = run("--asof", f"{day(11)}T10:00", "monitor")
    assert result.exit_code == 0, result.output
    result = run("--asof", f"{day(11)}T10:05", "monitor")
    assert result.exit_code == 0, result.output
    attempts = rows(env, "SELECT attempt, status, client_order_id FROM exit_attempts ORDER BY attempt")
    assert attempts[0]["status"] == "expired" and len(attempts) >= 2
    assert "rejected" not in {a["status"] for a in attempts}
    assert len({a["client_order_id"] for a in attempts}) == len(attempts)  # one client id per attempt row
    trade = rows(env, "SELECT * FROM trades")[0]
    assert trade["status"] == "closed" and trade["exit_reason"] == "early_exit"
    assert not working_stops(env, "FLAT")


def test_a_refused_exit_is_recorded_and_escalated_and_the_other_positions_are_still_evaluated(env, monkeypatch):
    buy("STP")
    buy("TGT", target_price=52.5)
    real_submit = sim_broker.SimBroker.submit

    def refuse_stp_sells(self, request: OrderRequest):
        if request.symbol == "STP" and request.side == "sell" and request.type != "trailing_stop":
            raise InsufficientQty("insufficient qty available for order (requested: 100, available: 0)",
                                  status_code=403, code=40310000)
        return real_submit(self, request)

    monkeypatch.setattr(sim_broker.SimBroker, "submit", refuse_stp_sells)
    result = run("--asof", f"{day(1)}T15:30", "monitor")
    assert result.exit_code == 0, result.output
    exits = {e["symbol"]: e for e in rows(env, "SELECT symbol, reason, state FROM exits")}
    assert exits["STP"]["reason"] == "stop_loss" and exits["STP"]["state"] == "given_up"
    assert exits["TGT"]["state"] == "filled"  # the refusal of one position stopped nothing else
    assert rows(env, "SELECT status FROM exit_attempts a JOIN exits e ON e.id = a.exit_id "
                     "WHERE e.symbol = 'STP'")[0]["status"] == "rejected"
    assert any("STP" in m and "given up" in m for m in critical(env))
    assert len(working_stops(env, "STP")) == 1  # protected again until the next run tries anew
    monkeypatch.setattr(sim_broker.SimBroker, "submit", real_submit)
    assert run("--asof", f"{day(1)}T15:35", "monitor").exit_code == 0
    trade = rows(env, "SELECT status, exit_reason FROM trades WHERE symbol = 'STP'")[0]
    assert (trade["status"], trade["exit_reason"]) == ("closed", "stop_loss")


def test_a_broker_outage_in_one_exit_still_lets_every_other_position_be_evaluated(env, monkeypatch):
    buy("STP")
    buy("HOLD")
    real_submit = sim_broker.SimBroker.submit

    def outage_for_stp_sells(self, request: OrderRequest):
        if request.symbol == "STP" and request.side == "sell" and request.type != "trailing_stop":
            raise BrokerUnavailable("POST /v2/orders: timed out")
        return real_submit(self, request)

    monkeypatch.setattr(sim_broker.SimBroker, "submit", outage_for_stp_sells)
    result = run("--asof", f"{day(1)}T15:30", "monitor")
    assert result.exit_code == 3  # the outage is reported as such, once every position was tried
    checked = {r["symbol"] for r in rows(env, "SELECT symbol FROM position_checks WHERE action LIKE 'monitor%'")}
    assert checked == {"STP", "HOLD"}
    assert len(working_stops(env, "HOLD")) == 1


# --- 2. an order in flight belongs to its submitter ----------------------------------------------------------------

def _hold_position_lock(journal: str, symbol: str) -> subprocess.Popen:
    code = ("import fcntl, os, sys, time; from pathlib import Path\n"
            f"folder = Path({journal!r} + '.locks'); folder.mkdir(parents=True, exist_ok=True)\n"
            f"fd = os.open(folder / '{symbol}.lock', os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_reconcile_leaves_an_order_whose_submitter_is_alive_and_resolves_it_once_it_is_gone(env):
    rt = Runtime(load_config({"MOMENTUM_ASOF": f"{ENTRY}T15:00"}))
    with rt.journal.atomic():
        trade_id = rt.journal.insert_row("trades", {"symbol": "FLAT", "cap": "large", "qty": 10, "original_qty": 10,
                                                    "status": "pending", "strategy": "momentum",
                                                    "entry_order_id": "ma-e-FLAT-x", "last_update": rt.journal.now()})
        executor.record_intent(rt.journal, OrderRequest("ma-e-FLAT-x", "FLAT", "buy", "market", 10), "entry",
                               trade_id)
    rt.close()
    holder = _hold_position_lock(env["MOMENTUM_DB"], "FLAT")  # the submitting scan, between its write and the POST
    try:
        result = run("--asof", f"{ENTRY}T15:01", "reconcile")
        assert result.exit_code == 0, result.output
        assert "left to the command acting on it: FLAT" in result.output
        assert rows(env, "SELECT status FROM orders")[0]["status"] == "pending_submit"
        assert rows(env, "SELECT status FROM trades")[0]["status"] == "pending"
    finally:
        holder.kill()
        holder.wait()
    result = run("--asof", f"{ENTRY}T15:02", "reconcile")
    assert "orders never sent" in result.output
    assert rows(env, "SELECT status FROM orders")[0]["status"] == "not_sent"
    assert rows(env, "SELECT status FROM trades")[0]["status"] == "canceled"


def test_a_command_acting_on_a_position_makes_close_wait_then_say_so(env, monkeypatch):
    buy("HOLD")
    monkeypatch.setattr(executor, "LOCK_WAIT_S", 0.2)
    holder = _hold_position_lock(env["MOMENTUM_DB"], "HOLD")
    try:
        result = CliRunner().invoke(command, ["--asof", f"{day(1)}T11:00", "close", "HOLD"])
    finally:
        holder.kill()
        holder.wait()
    assert result.exit_code == 3
    assert "NOT sent: another command is acting on this position" in result.stderr
    assert rows(env, "SELECT status FROM trades")[0]["status"] == "open"
    assert len(working_stops(env, "HOLD")) == 1


# --- 3. one positions answer never rewrites the book ---------------------------------------------------------------

def test_one_empty_positions_answer_changes_nothing(env, monkeypatch):
    trade = buy("HOLD")
    real_positions = sim_broker.SimBroker.positions
    answers = [[]]  # the first answer is an empty list, every later one the truth
    monkeypatch.setattr(sim_broker.SimBroker, "positions",
                        lambda self: answers.pop() if answers else real_positions(self))
    result = run("--asof", f"{day(1)}T11:00", "reconcile")
    assert result.exit_code == 0, result.output
    after = rows(env, "SELECT status, qty FROM trades")[0]
    assert (after["status"], after["qty"]) == ("open", trade["qty"])
    assert rows(env, "SELECT COUNT(*) AS n FROM trades")[0]["n"] == 1  # nothing closed, nothing re-adopted


def test_a_position_missing_on_every_read_is_flagged_not_closed_while_its_stop_works(env, monkeypatch):
    buy("HOLD")
    real_positions = sim_broker.SimBroker.positions
    monkeypatch.setattr(sim_broker.SimBroker, "positions", lambda self: [])
    for minute in ("11:00", "11:30", "12:30"):
        result = run("--asof", f"{day(1)}T{minute}", "reconcile")
        assert result.exit_code == 0, result.output
        assert "MISSING at the broker, not closed" in result.output
    assert rows(env, "SELECT status FROM trades")[0]["status"] == "open"
    assert sum("HOLD" in m and "NOT closed" in m for m in critical(env)) == 1  # raised once, not every run
    monkeypatch.setattr(sim_broker.SimBroker, "positions", real_positions)
    result = run("--asof", f"{day(1)}T12:35", "reconcile")
    assert "MISSING" not in result.output
    assert rows(env, "SELECT COUNT(*) AS n FROM state WHERE key LIKE 'missing:%'")[0]["n"] == 0


# --- 4. a broker error after the entry filled ----------------------------------------------------------------------

def test_a_broker_outage_right_after_the_entry_fill_leaves_it_flagged_with_a_critical_alert(rt, fake_alpaca):
    real_orders = rt.broker.orders
    calls = {"n": 0}

    def orders_then_outage(status="open", symbols=None):
        from common.errors import BrokerUnavailable

        calls["n"] += 1
        raise BrokerUnavailable("GET /v2/orders: 503 after 3 attempts")

    rt.broker.orders = orders_then_outage
    trade = executor.open_position(rt, symbol=SYMBOL, cap="large", qty=10, session="2024-06-14", scan_type="open",
                                   trade_fields={"strategy": "momentum"}, fill_timeout=5)
    rt.broker.orders = real_orders
    assert calls["n"] >= 1
    assert trade["status"] == "unprotected"
    messages = [r["message"] for r in rt.journal.query("SELECT message FROM events WHERE level = 'critical'")]
    assert any(SYMBOL in m and "UNPROTECTED" in m for m in messages)
    assert executor.protect_all(rt) == [SYMBOL]  # the next run protects it
    assert rt.journal.one("SELECT status FROM trades")["status"] == "open"


def test_an_unclear_entry_after_the_post_is_reported_before_the_error_goes_on(rt, fake_alpaca, monkeypatch):
    from common.errors import BrokerUnavailable

    def lookup_fails(client_order_id):
        raise BrokerUnavailable("GET /v2/orders:by_client_order_id: timed out")

    fake_alpaca.gateway_timeout("/v2/orders", method="POST", accept=True)
    monkeypatch.setattr(rt.broker, "get_order_by_client_id", lookup_fails)
    with pytest.raises(BrokerUnavailable):
        executor.open_position(rt, symbol=SYMBOL, cap="large", qty=10, session="2024-06-14", scan_type="open",
                               trade_fields={"strategy": "momentum"}, fill_timeout=5)
    messages = [r["message"] for r in rt.journal.query("SELECT message FROM events WHERE level = 'critical'")]
    assert any(SYMBOL in m and "unknown state" in m and "UNPROTECTED" in m for m in messages)


# --- 5. close reports exactly what happened ------------------------------------------------------------------------

def test_close_whose_stop_will_not_cancel_says_nothing_was_sent_and_leaves_the_position_flagged(rt, fake_alpaca):
    trade = executor.open_position(rt, symbol=SYMBOL, cap="large", qty=10, session="2024-06-14", scan_type="open",
                                   trade_fields={"strategy": "momentum"}, fill_timeout=5)
    assert trade["status"] == "open"
    fake_alpaca.cancel_after_reads = 10_000  # the stop stays pending_cancel
    result = scan_orders.close_symbol(rt, SYMBOL)
    assert not result.sent and not result.closed
    text = scan_orders.close_text(result)
    assert text.startswith(f"close of {SYMBOL} NOT sent")
    assert not [o for o in fake_alpaca.orders.values() if o["side"] == "sell" and o["type"] == "market"]
    after = rt.journal.one("SELECT status FROM trades WHERE id = ?", [trade["id"]])
    working = [o for o in fake_alpaca.orders.values() if o["type"] == "trailing_stop" and o["status"] == "new"]
    assert working or after["status"] == "unprotected"
    assert ("UNPROTECTED" in text) == (after["status"] == "unprotected")


def test_close_from_the_command_line_exits_3_when_no_sell_went_out(env, monkeypatch):
    buy("HOLD")
    monkeypatch.setattr(executor, "cancel_and_confirm", lambda rt, orders, timeout=0: False)
    result = CliRunner().invoke(command, ["--asof", f"{day(1)}T11:00", "close", "HOLD"])
    assert result.exit_code == 3
    assert "close of HOLD NOT sent: its stop did not cancel in time; its stop is in place" in result.stderr
    assert rows(env, "SELECT status FROM trades")[0]["status"] == "open"


# --- 6. partial entries --------------------------------------------------------------------------------------------

def test_a_partly_filled_entry_is_cancelled_for_the_rest_and_the_stop_covers_what_was_bought(rt, fake_alpaca):
    def fill_four(seconds: float) -> None:
        for order_id, order in list(fake_alpaca.orders.items()):
            if order["side"] == "buy" and order["status"] in ("accepted", "new"):
                fake_alpaca.fill(order_id, price=190.0, qty=4)

    rt.waiter = executor.Waiter(simulated=False, sleep=fill_four, monotonic=time.monotonic)
    trade = executor.open_position(rt, symbol=SYMBOL, cap="large", qty=10, session="2024-06-14", scan_type="open",
                                   trade_fields={"strategy": "momentum"}, fill_timeout=0.2)
    entry = next(o for o in fake_alpaca.orders.values() if o["side"] == "buy")
    assert entry["status"] == "canceled" and entry["filled_qty"] == "4"
    assert trade["status"] == "open" and trade["qty"] == 4
    stops = [o for o in fake_alpaca.orders.values() if o["type"] == "trailing_stop" and o["status"] == "new"]
    assert len(stops) == 1 and stops[0]["qty"] == "4"


# --- 8. a list answer that misses a stop ---------------------------------------------------------------------------

def test_protect_all_keeps_a_good_stop_that_an_empty_open_orders_answer_left_out(rt, fake_alpaca, monkeypatch):
    trade = executor.open_position(rt, symbol=SYMBOL, cap="large", qty=10, session="2024-06-14", scan_type="open",
                                   trade_fields={"strategy": "momentum"}, fill_timeout=5)
    posts = fake_alpaca.count("POST", "/v2/orders")
    monkeypatch.setattr(rt.broker, "orders", lambda status="open", symbols=None: [])
    assert executor.protect_all(rt) == []
    assert fake_alpaca.count("POST", "/v2/orders") == posts
    assert fake_alpaca.count("DELETE") == 0
    assert rt.journal.one("SELECT status FROM trades WHERE id = ?", [trade["id"]])["status"] == "open"


# --- 9. the stop the journal shows is the broker's -----------------------------------------------------------------

def test_reconcile_keeps_the_trades_trailing_stop_at_the_level_the_broker_has_now(rt, fake_alpaca):
    from journal import reconcile

    trade = executor.open_position(rt, symbol=SYMBOL, cap="large", qty=10, session="2024-06-14", scan_type="open",
                                   trade_fields={"strategy": "momentum"}, fill_timeout=5)
    before = rt.journal.one("SELECT trailing_stop_price FROM trades WHERE id = ?", [trade["id"]])["trailing_stop_price"]
    fake_alpaca.trade_at(SYMBOL, 220.0)  # the trailing stop rises with the price: 5% under 220
    reconcile.reconcile(rt)
    after = rt.journal.one("SELECT trailing_stop_price FROM trades WHERE id = ?", [trade["id"]])["trailing_stop_price"]
    assert before == pytest.approx(180.5) and after == pytest.approx(209.0)


# --- a close whose sell is still working when the monitor runs -----------------------------------------------------

def test_a_close_still_working_is_left_to_fill_and_never_stops_the_monitor(env):
    buy("HOLD")
    result = run("--asof", f"{day(1)}T17:00", "close", "HOLD", "--force")  # after the bell: the sell waits
    assert result.exit_code == 0, result.output
    assert "sent; not filled yet" in result.output
    for moment in (f"{day(1)}T17:05", f"{day(2)}T09:45"):
        result = run("--asof", moment, "monitor", "--force")
        assert result.exit_code == 0, result.output
    exit_row = rows(env, "SELECT reason, state, plan FROM exits")[0]
    assert (exit_row["reason"], exit_row["state"], exit_row["plan"]) == ("manual", "filled", None)
    assert rows(env, "SELECT status, exit_reason FROM trades")[0] == {"status": "closed", "exit_reason": "manual"}


def test_a_close_killed_before_its_sell_went_out_is_given_up_not_left_open(env):
    trade = buy("HOLD")
    rt = Runtime(load_config({"MOMENTUM_ASOF": f"{day(1)}T11:00"}))
    exit_id = executor._record_exit(rt.journal, trade, "manual", "HIGH", trade["qty"])
    with rt.journal.atomic():  # the sell's intent and attempt were written; the command died before the broker call
        executor.record_intent(rt.journal, OrderRequest("ma-x-1-1", "HOLD", "sell", "market", trade["qty"]), "exit",
                               trade["id"])
        rt.journal.insert_row("exit_attempts", {"exit_id": exit_id, "attempt": 1, "order_type": "market",
                                                "qty": trade["qty"], "status": "submitted",
                                                "client_order_id": "ma-x-1-1", "created_at": rt.journal.now()})
    rt.close()
    result = run("--asof", f"{day(1)}T11:05", "monitor")
    assert result.exit_code == 0, result.output
    assert rows(env, "SELECT state FROM exits")[0]["state"] == "given_up"
    assert rows(env, "SELECT status FROM orders WHERE client_order_id = 'ma-x-1-1'")[0]["status"] == "not_sent"
    assert rows(env, "SELECT status FROM trades")[0]["status"] == "open"
    assert len(working_stops(env, "HOLD")) == 1

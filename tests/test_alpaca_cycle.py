"""The buy -> stop -> close cycle through the real alpaca-py SDK against the local fake Alpaca server."""
from __future__ import annotations

import pytest

import executor
from common.errors import InsufficientQty
from config import load_config
from flows.runtime import Runtime

SYMBOL = "AAPL"


class FakeExchange:
    """Fills market orders resting at the fake broker whenever the executor polls (a tick of the exchange)."""

    def __init__(self, fake):
        self.fake = fake
        self.now = 0.0
        self.ticks = 0

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.ticks += 1
        for order_id, order in list(self.fake.orders.items()):
            if order["type"] == "market" and order["status"] in ("accepted", "new"):
                self.fake.fill(order_id, price=self.fake.price(order["symbol"]))

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def rt(tmp_path, fake_alpaca, monkeypatch):
    for name in ("MOMENTUM_ASOF", "DATA_SOURCE"):
        monkeypatch.delenv(name, raising=False)
    config = load_config({"BROKER": "alpaca", "ALPACA_API_KEY": "PKCYCLEKEY123456", "ALPACA_SECRET_KEY":
                          "cyclesecret1234567890", "ALPACA_TRADING_URL": fake_alpaca.url,
                          "MOMENTUM_DB": str(tmp_path / "trades.db"), "FILL_TIMEOUT_S": "5"}, environ={})
    runtime = Runtime(config, "test")
    exchange = FakeExchange(fake_alpaca)
    runtime.waiter = executor.Waiter(simulated=False, sleep=exchange.sleep, monotonic=exchange.monotonic)
    fake_alpaca.set_price(SYMBOL, 190.0)
    yield runtime
    runtime.close()


def _open(rt, qty=10):
    return executor.open_position(rt, symbol=SYMBOL, cap="large", qty=qty, session="2024-06-14",
                                  scan_type="open", trade_fields={"strategy": "momentum"}, fill_timeout=5)


def test_entry_fill_then_one_gtc_trailing_stop_for_the_whole_position(rt, fake_alpaca):
    trade = _open(rt)
    assert trade["status"] == "open" and trade["qty"] == 10 and trade["entry_price"] == 190.0
    stops = [o for o in fake_alpaca.orders.values() if o["type"] == "trailing_stop"]
    assert len(stops) == 1
    assert stops[0]["qty"] == "10" and stops[0]["time_in_force"] == "gtc" and float(stops[0]["trail_percent"]) == 5
    assert trade["stop_order_id"] == stops[0]["client_order_id"] == "ma-s-1-1"
    assert fake_alpaca.count("POST", "/v2/orders") == 2


def test_504_on_an_accepted_submission_is_not_sent_twice(rt, fake_alpaca):
    fake_alpaca.gateway_timeout("/v2/orders", method="POST", accept=True)
    trade = _open(rt)
    assert fake_alpaca.count("POST", "/v2/orders") == 2  # one entry (answered 504 but stored) + one stop
    entries = [o for o in fake_alpaca.orders.values() if o["side"] == "buy"]
    assert len(entries) == 1 and entries[0]["client_order_id"] == "ma-e-AAPL-20240614-open"
    assert trade["status"] == "open"


def test_the_same_entry_intent_is_never_sent_again(rt, fake_alpaca):
    _open(rt)
    assert _open(rt) is None
    assert len([o for o in fake_alpaca.orders.values() if o["side"] == "buy"]) == 1


def test_close_cancels_the_stop_waits_for_the_shares_and_sells(rt, fake_alpaca):
    trade = _open(rt)
    fake_alpaca.cancel_after_reads = 2  # the stop shows pending_cancel for two reads
    fake_alpaca.set_price(SYMBOL, 200.0)
    result = executor.close_position(rt, trade, reason="manual")
    closed = result.trade
    assert result.sent and result.closed
    assert closed["status"] == "closed" and closed["exit_price"] == 200.0 and closed["pnl"] == 100.0
    assert closed["exit_reason"] == "manual"
    stop = next(o for o in fake_alpaca.orders.values() if o["type"] == "trailing_stop")
    assert stop["status"] == "canceled"
    assert SYMBOL not in fake_alpaca.positions


def test_403_insufficient_qty_while_a_stop_holds_the_shares(rt, fake_alpaca, monkeypatch):
    """A stale read says the shares are free and the stop is gone: the broker answers 403 insufficient qty
    (its real body), the close cancels the stop it can now see, waits, and sells on the second attempt."""
    trade = _open(rt)
    with pytest.raises(InsufficientQty, match="insufficient qty available"):
        rt.broker.submit(executor.OrderRequest("probe-1", SYMBOL, "sell", "market", 10))
    real_stops, real_available = executor.working_stops, executor._available_qty
    reads = {"stops": 0, "qty": 0}

    def stale_stops(runtime, symbol):
        reads["stops"] += 1
        return [] if reads["stops"] == 1 else real_stops(runtime, symbol)

    def stale_qty(runtime, symbol):
        reads["qty"] += 1
        return trade["qty"] if reads["qty"] <= 2 else real_available(runtime, symbol)

    monkeypatch.setattr(executor, "working_stops", stale_stops)
    monkeypatch.setattr(executor, "_available_qty", stale_qty)
    closed = executor.close_position(rt, trade, reason="manual").trade
    attempts = rt.journal.query("SELECT attempt, status FROM exit_attempts ORDER BY attempt")
    assert [(a["attempt"], a["status"]) for a in attempts] == [(1, "rejected"), (2, "filled")]
    assert closed["status"] == "closed"
    assert [o["status"] for o in fake_alpaca.orders.values() if o["type"] == "trailing_stop"] == ["canceled"]


def test_reconcile_closes_a_trade_whose_stop_filled_at_the_broker(rt, fake_alpaca):
    from journal import reconcile

    trade = _open(rt)
    stop = next(o for o in fake_alpaca.orders.values() if o["type"] == "trailing_stop")
    fake_alpaca.fill(stop["id"], price=180.5)
    report = reconcile.reconcile(rt)
    closed = rt.journal.one("SELECT * FROM trades WHERE id = ?", [trade["id"]])
    assert closed["status"] == "closed" and closed["exit_reason"] == "trailing_stop"
    assert closed["exit_price"] == 180.5 and closed["pnl"] == pytest.approx(-95.0)
    assert report.trades_closed == [(SYMBOL, "trailing_stop", 180.5)]


def test_protect_all_replaces_a_missing_stop_and_flags_when_impossible(rt, fake_alpaca):
    trade = _open(rt)
    stop = next(o for o in fake_alpaca.orders.values() if o["type"] == "trailing_stop")
    rt.broker.cancel(stop["id"])
    assert executor.protect_all(rt) == [SYMBOL]
    working = [o for o in fake_alpaca.orders.values() if o["type"] == "trailing_stop" and o["status"] == "new"]
    assert len(working) == 1 and working[0]["qty"] == "10"
    for o in working:
        rt.broker.cancel(o["id"])
    fake_alpaca.server_error("/v2/orders", times=10, method="POST")
    executor.protect_all(rt)
    flagged = rt.journal.one("SELECT status FROM trades WHERE id = ?", [trade["id"]])
    assert flagged["status"] == "unprotected"
    critical = rt.journal.query("SELECT message FROM events WHERE level = 'critical'")
    assert any("UNPROTECTED" in e["message"] for e in critical)


class MovingClock:
    """Real-time behaviour (not simulated) with a time that moves only when the code waits."""

    simulated = False

    def __init__(self, start):
        self.start, self.offset = start, 0.0

    def now(self):
        from datetime import timedelta

        return self.start + timedelta(seconds=self.offset)

    def now_ny(self):
        from common.clock import NY

        return self.now().astimezone(NY)

    def today(self):
        return self.now_ny().date()


def test_a_high_priority_limit_exit_walks_twice_then_escalates_to_market(tmp_path, fake_alpaca, monkeypatch):
    """Limits are never filled by the fake exchange, only market orders: the aggressive exit must walk its limit
    twice, then sell at market within the same run, recording every attempt."""
    from datetime import datetime, timezone

    from core import exit_rules
    from flows import exit_runner

    for name in ("MOMENTUM_ASOF", "DATA_SOURCE"):
        monkeypatch.delenv(name, raising=False)
    config = load_config({"BROKER": "alpaca", "DATA_SOURCE": "alpaca", "ALPACA_API_KEY": "PKCYCLEKEY123456",
                          "ALPACA_SECRET_KEY": "cyclesecret1234567890", "ALPACA_TRADING_URL": fake_alpaca.url,
                          "ALPACA_DATA_URL": fake_alpaca.url, "MOMENTUM_DB": str(tmp_path / "trades.db")},
                         environ={})
    rt = Runtime(config, "test")
    rt.clock = MovingClock(datetime(2024, 6, 14, 15, 0, tzinfo=timezone.utc))  # 11:00 New York, the fake's today
    exchange = FakeExchange(fake_alpaca)

    def sleep(seconds):
        rt.clock.offset += seconds
        exchange.sleep(seconds)

    rt.waiter = executor.Waiter(simulated=False, sleep=sleep, monotonic=lambda: rt.clock.offset)
    trade = _open(rt)
    trigger = exit_rules.ExitTrigger("trailing_stop", exit_rules.HIGH, trade["qty"], False, "test backstop")
    state = exit_runner.start_exit(rt, trade, trigger, [trigger])
    assert state == "filled"
    attempts = rt.journal.query("SELECT attempt, order_type, limit_price, status FROM exit_attempts ORDER BY attempt")
    assert [(a["attempt"], a["order_type"], a["status"]) for a in attempts] == [
        (1, "limit", "canceled"), (2, "limit", "canceled"), (3, "limit", "canceled"), (4, "market", "filled")]
    limits = [a["limit_price"] for a in attempts[:3]]
    assert limits[0] > limits[1] > limits[2]  # walked down from the bid
    closed = rt.journal.one("SELECT * FROM trades WHERE id = ?", [trade["id"]])
    assert closed["status"] == "closed" and closed["exit_reason"] == "trailing_stop"
    exit_row = rt.journal.one("SELECT * FROM exits")
    assert exit_row["state"] == "filled" and exit_row["attempts"] == 4
    assert rt.clock.offset >= 30  # three 10 s limits before the market order
    rt.close()

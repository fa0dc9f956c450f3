"""Operator views (flows/operator.py) against the local fake Alpaca: what `positions` shows is the broker's state
now."""
from __future__ import annotations

import pytest

from common.types import OrderRequest
from config import load_config
from flows import operator
from flows.runtime import Runtime

ASOF = "2024-06-14T11:00"


@pytest.fixture
def rt(tmp_path, fake_alpaca):
    config = load_config(environ={
        "BROKER": "alpaca", "ALPACA_API_KEY": "PKOPSTEST123456", "ALPACA_SECRET_KEY": "opssecret1234567890",
        "ALPACA_TRADING_URL": fake_alpaca.url, "MOMENTUM_DB": str(tmp_path / "trades.db"),
        "LOG_DIR": str(tmp_path / "logs"), "CACHE_DIR": str(tmp_path / "cache"), "MOMENTUM_ASOF": ASOF,
    }, dotenv_path=tmp_path / "none.env")
    runtime = Runtime(config, "positions")
    yield runtime
    runtime.close()


def protected_trade(rt, fake, symbol: str, qty: int, entry: float, price: float) -> dict:
    """A journal trade whose broker trailing stop (5%) was placed at `price`; the journal notes that stop."""
    fake.set_price(symbol, price)
    fake.set_position(symbol, qty, entry)
    stop = rt.broker.submit(OrderRequest(f"s-{symbol}-1", symbol, "sell", "trailing_stop", qty, "gtc",
                                         trail_percent=5.0))
    trade_id = rt.journal.insert_row("trades", {
        "symbol": symbol, "qty": qty, "status": "open", "entry_price": entry, "entry_time": "2024-06-10T14:00:00+00:00",
        "trailing_stop_price": stop.stop_price, "stop_order_id": stop.id, "peak_price": price})
    return {"id": trade_id, "stop": stop}


def test_positions_show_each_stop_where_the_broker_has_it_now(rt, fake_alpaca):
    aapl = protected_trade(rt, fake_alpaca, "AAPL", 10, 100.0, 106.73)
    assert aapl["stop"].stop_price == 101.39  # what the journal noted when the stop was placed
    fake_alpaca.set_position("MSFT", 5, 400.0)  # held with no stop at the broker
    fake_alpaca.trade_at("AAPL", 116.19)  # the trailing stop follows the high at the broker
    fake_alpaca.clear_log()

    rows = operator.positions(rt)

    by_symbol = {row["symbol"]: row for row in rows}
    assert (by_symbol["AAPL"]["stop"], by_symbol["AAPL"]["trade"], by_symbol["AAPL"]["status"]) == (
        110.38, aapl["id"], "open")
    assert (by_symbol["MSFT"]["stop"], by_symbol["MSFT"]["status"]) == (None, "untracked")
    order_reads = [r for r in fake_alpaca.requests if r.path.startswith("/v2/orders")]
    assert [(r.path, r.query["status"], r.query["symbols"]) for r in order_reads] == [
        ("/v2/orders", "open", "AAPL,MSFT")]


def test_the_first_stop_to_fire_is_shown_and_a_canceled_one_is_not(rt, fake_alpaca):
    protected_trade(rt, fake_alpaca, "AAPL", 10, 100.0, 106.73)
    fake_alpaca.set_position("AAPL", 20, 100.0)
    fixed = rt.broker.submit(OrderRequest("s-AAPL-2", "AAPL", "sell", "stop", 10, "gtc", stop_price=104.5))
    assert [row["stop"] for row in operator.positions(rt)] == [104.5]
    rt.broker.cancel(fixed.id)
    assert [row["stop"] for row in operator.positions(rt)] == [101.39]


def test_no_positions_no_order_read(rt, fake_alpaca):
    assert rt.broker is not None  # built (and checked against the journal) before the log is cleared
    fake_alpaca.clear_log()
    assert operator.positions(rt) == []
    assert [r.path for r in fake_alpaca.requests] == ["/v2/positions"]

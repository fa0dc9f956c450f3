"""Reconciliation against the sim broker: adopted external positions, unknown closes, quantity corrections,
and the protection invariant restored afterwards."""
from __future__ import annotations

from pathlib import Path

import executor
from common.clock import Clock, parse_asof
from common.types import OrderRequest
from config import load_config
from flows.runtime import Runtime
from ports.market_sources import CsvMarket
from ports.sim_broker import SimBroker

from realdata import BARS, cli, rows


def broker_at(env, asof):
    return SimBroker(Path(env["MOMENTUM_DB"]).parent / "sim_broker.db",
                     CsvMarket(BARS, cache_dir=Path(env["CACHE_DIR"])), Clock(parse_asof(asof)))



def alerts(env):
    return [r["message"] for r in rows(env, "SELECT message FROM events WHERE kind = 'alert'")]


def test_untracked_broker_position_is_adopted_as_external_and_protected(real_env):
    broker = broker_at(real_env, "2016-11-09T11:00")
    broker.submit(OrderRequest("manual-buy-1", "MSFT", "buy", "market", 20))
    result = cli("--asof", "2016-11-09T11:05", "reconcile")
    assert result.exit_code == 0, result.output
    assert "adopted external position: MSFT" in result.output
    trade = rows(real_env, "SELECT * FROM trades WHERE symbol = 'MSFT'")[0]
    assert trade["status"] == "external" and trade["qty"] == 20 and trade["stop_order_id"]
    assert any("adopted external position MSFT x20" in m for m in alerts(real_env))
    stops = [o for o in broker_at(real_env, "2016-11-09T11:06").orders("open") if o.symbol == "MSFT"]
    assert len(stops) == 1 and stops[0].type == "trailing_stop" and stops[0].qty == 20


def test_a_position_sold_at_the_broker_by_hand_closes_its_trade_at_that_sale(real_env):
    cli("set", "skip_buys", "off")
    assert cli("--asof", "2016-11-09T10:30", "scan", "--cap", "large").exit_code == 0
    trade = rows(real_env, "SELECT * FROM trades WHERE status = 'open' ORDER BY id LIMIT 1")[0]
    broker = broker_at(real_env, "2016-11-09T11:00")
    for order in broker.orders("open", [trade["symbol"]]):
        broker.cancel(order.id)
    sold = broker.submit(OrderRequest("manual-sell-1", trade["symbol"], "sell", "market", trade["qty"]))
    result = cli("--asof", "2016-11-09T11:05", "reconcile")
    assert f"trade closed: {trade['symbol']} (sold_outside at ${sold.filled_avg_price:,.2f})" in result.output
    after = rows(real_env, "SELECT * FROM trades WHERE id = ?", (trade["id"],))[0]
    assert after["status"] == "closed" and after["exit_reason"] == "sold_outside"
    assert after["exit_price"] == sold.filled_avg_price
    assert any(trade["symbol"] in m and "manual-sell-1" in m for m in alerts(real_env))


def test_quantity_mismatch_is_corrected_and_the_stop_resized(real_env):
    cli("set", "skip_buys", "off")
    cli("--asof", "2016-11-09T10:30", "scan", "--cap", "large")
    trade = rows(real_env, "SELECT * FROM trades WHERE status = 'open' ORDER BY id LIMIT 1")[0]
    broker = broker_at(real_env, "2016-11-09T11:00")
    broker.submit(OrderRequest("manual-buy-2", trade["symbol"], "buy", "market", 5))
    result = cli("--asof", "2016-11-09T11:05", "reconcile")
    assert f"quantity corrected: {trade['symbol']} {trade['qty']} -> {trade['qty'] + 5}" in result.output
    stops = [o for o in broker_at(real_env, "2016-11-09T11:06").orders("open")
             if o.symbol == trade["symbol"] and o.type == "trailing_stop"]
    assert len(stops) == 1 and stops[0].qty == trade["qty"] + 5


def test_reconcile_is_idempotent(real_env):
    cli("set", "skip_buys", "off")
    cli("--asof", "2016-11-09T10:30", "scan", "--cap", "large")
    first = cli("--asof", "2016-11-09T11:00", "reconcile")
    second = cli("--asof", "2016-11-09T11:00", "reconcile")
    assert second.output.splitlines()[1] == "reconcile: journal and broker agree; nothing to do"
    assert first.exit_code == second.exit_code == 0


def test_five_refusals_in_five_minutes_halt_buying(real_env, monkeypatch):
    monkeypatch.setenv("MAX_EXPOSURE_PCT", "5")  # every buy is refused by the exposure gate
    monkeypatch.setenv("MAX_BUYS_LARGE", "5")
    monkeypatch.setenv("MAX_POSITIONS_LARGE", "5")
    cli("set", "skip_buys", "off")
    for asof in ("2016-11-09T10:30", "2016-11-09T10:31", "2016-11-09T10:32", "2016-11-09T10:33", "2016-11-09T10:34"):
        cli("--asof", asof, "scan", "--cap", "large", "--max-buys", "2")
    refusals = rows(real_env, "SELECT gate FROM risk_events")
    assert len(refusals) >= 5 and {r["gate"] for r in refusals} == {"exposure"}
    assert rows(real_env, "SELECT value FROM settings WHERE key = 'halt'")[0]["value"] == "on"
    assert any("five order refusals within five minutes" in m
               for m in (r["message"] for r in rows(real_env, "SELECT message FROM events WHERE level = 'critical'")))


def test_protect_all_reads_the_broker_once_and_restores_each_missing_stop(real_env):
    """Two positions that each lost their stop get exactly one again, the others are left alone; once all are
    protected, one broker read answers for every trade."""
    cli("set", "skip_buys", "off")
    assert cli("--asof", "2016-11-09T10:30", "scan", "--cap", "all").exit_code == 0
    trades = rows(real_env, "SELECT id, symbol, qty FROM trades WHERE status = 'open' ORDER BY id")
    assert len(trades) >= 3
    broker = broker_at(real_env, "2016-11-09T11:00")
    for trade in trades[:2]:
        for order in broker.orders("open", [trade["symbol"]]):
            broker.cancel(order.id)
    rt = Runtime(load_config({"MOMENTUM_ASOF": "2016-11-09T11:05"}))
    reads = []
    real_orders = rt.broker.orders
    rt.broker.orders = lambda *args, **kwargs: reads.append(args) or real_orders(*args, **kwargs)
    try:
        assert executor.protect_all(rt) == [trades[0]["symbol"], trades[1]["symbol"]]
        reads.clear()
        assert executor.protect_all(rt) == []
        assert reads == [("open", [t["symbol"] for t in trades])]
    finally:
        rt.close()
    stops = [o for o in broker_at(real_env, "2016-11-09T11:06").orders("open") if o.type == "trailing_stop"]
    assert sorted((o.symbol, o.qty) for o in stops) == sorted((t["symbol"], t["qty"]) for t in trades)

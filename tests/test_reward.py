"""A closed trade's `reward`: its realised return in R, multiples of the stop distance its system risked at entry
(journal/trade_book.py trade_reward), written wherever the trade book closes a trade."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from common.clock import Clock, calendar, parse_asof
from config import load_config
from db import open_journal
from journal import trade_book


@pytest.fixture
def rt(tmp_path):
    journal = open_journal(tmp_path / "trades.db", Clock(parse_asof("2016-06-10T15:00")))
    # The settings now: a 5% momentum trail, a 15% rebalance stop (the defaults, stated so the test reads alone).
    config = load_config({"TRAILING_STOP_PCT": 5.0, "REBALANCE_STOP_PCT": 15.0}, environ={},
                         dotenv_path=tmp_path / "absent.env")
    yield SimpleNamespace(journal=journal, config=config, calendar=calendar())
    journal.db.conn.close()


def _trade(rt, **fields) -> dict:
    row = {"symbol": "AAA", "qty": 10, "original_qty": 10, "entry_price": 100.0, "status": "open",
           "entry_time": "2016-06-06T14:00:00+00:00", "strategy": "momentum", **fields}
    trade_id = rt.journal.insert_row("trades", row)
    return rt.journal.one("SELECT * FROM trades WHERE id = ?", [trade_id])


def _config_at_entry(rt, trailing_stop_pct: float) -> int:
    settings = json.dumps({"TRAILING_STOP_PCT": trailing_stop_pct, "REBALANCE_STOP_PCT": 15.0})
    return rt.journal.insert_row("configs", {"created_at": rt.journal.now(), "hash": f"h{trailing_stop_pct}",
                                             "settings": settings})


def _closed(rt, trade: dict, **close) -> dict:
    trade_book.close_trade(rt, trade, reason="exit", **close)
    return rt.journal.one("SELECT * FROM trades WHERE id = ?", [trade["id"]])


@pytest.mark.parametrize("price, reward", [(106.0, 1.2), (95.0, -1.0), (100.0, 0.0)])
def test_reward_is_the_return_over_the_momentum_trail(rt, price, reward):
    row = _closed(rt, _trade(rt), price=price)
    assert row["pnl_pct"] == pytest.approx((price / 100 - 1) * 100)
    assert row["reward"] == pytest.approx(reward)


def test_the_trail_set_at_entry_is_the_risk_not_todays(rt):
    trade = _trade(rt, config_id=_config_at_entry(rt, 4.0))
    assert _closed(rt, trade, price=106.0)["reward"] == pytest.approx(1.5)  # 6% over the 4% trail of entry day


def test_partial_exits_count_in_the_reward(rt):
    # 5 shares sold at 110 earlier, the last 5 at 104: 50 + 20 = 70 on a 1,000 position = 7% = 1.4 R
    row = _closed(rt, _trade(rt), price=104.0, realized=70.0)
    assert (row["pnl"], row["pnl_pct"], row["reward"]) == (70.0, 7.0, pytest.approx(1.4))


def test_each_system_has_its_own_risk(rt):
    rebalance = _closed(rt, _trade(rt, strategy="rebalance"), price=106.0)
    assert rebalance["reward"] == pytest.approx(0.4)  # 6% over the 15% rebalance stop
    option = _closed(rt, _trade(rt, strategy="strat_options", asset_class="us_option", qty=1, original_qty=1,
                                entry_price=2.0), price=3.0)
    assert option["pnl"] == 100.0 and option["reward"] == pytest.approx(0.5)  # the whole premium is the risk


def test_a_trade_closed_as_unknown_has_no_reward(rt):
    row = _closed(rt, _trade(rt), price=None)
    assert row["pnl"] is None and row["reward"] is None


def test_a_sell_fill_that_closes_the_trade_writes_the_reward(rt):
    trade = _trade(rt)
    rt.journal.insert_row("orders", {"client_order_id": "stop-1", "trade_id": trade["id"], "symbol": "AAA",
                                     "side": "sell", "type": "trailing_stop", "qty": 10, "purpose": "stop",
                                     "status": "filled", "filled_qty": 10, "applied_qty": 0, "filled_avg_price": 97.0,
                                     "filled_at": "2016-06-09T15:00:00+00:00", "created_at": rt.journal.now()})
    report = SimpleNamespace(trades_closed=[], entries_filled=[], alerts=[])
    trade_book.apply_order_fills(rt, report)
    row = rt.journal.one("SELECT * FROM trades WHERE id = ?", [trade["id"]])
    assert (row["status"], row["exit_reason"], row["holding_days"]) == ("closed", "trailing_stop", 3)
    assert row["reward"] == pytest.approx(-0.6)  # -3% over the 5% trail

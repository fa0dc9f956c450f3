"""The sim broker's fill rules (ports/sim_fills.py) as pure functions, one rule per test, prices worked by hand.

Costs at the large-cap rate: 0.00025 (half the 0.05% spread) + 0.0002 slippage = 0.00045.
"""
from __future__ import annotations

import pytest

from common.types import BUY, LIMIT, MARKET, SELL, STOP, TRAILING_STOP
from ports.sim_fills import PRIORITY, Print, Resting, cost_rate, immediate_fill, settle

RATE = cost_rate("large")


def bar(open_: float, high: float, low: float, close: float) -> Print:
    return Print(1.0, open_, high, low, close)


def market(side: str) -> Resting:
    return Resting(MARKET, side, RATE)


def stop(price: float) -> Resting:
    return Resting(STOP, SELL, RATE, stop_price=price)


def limit(side: str, price: float) -> Resting:
    return Resting(LIMIT, side, RATE, limit_price=price)


def trail(hwm: float, percent: float = 5.0) -> Resting:
    return Resting(TRAILING_STOP, SELL, RATE, trail_percent=percent, hwm=hwm)


def test_a_market_order_waiting_for_the_open_fills_at_the_open_with_costs():
    assert settle(market(BUY), bar(96.0, 99.0, 90.0, 91.0)) == (96.04, None)  # 96 x 1.00045 = 96.0432
    assert settle(market(SELL), bar(96.0, 99.0, 90.0, 91.0)) == (95.96, None)  # 96 x 0.99955 = 95.9568


@pytest.mark.parametrize("prices, expected", [
    ((90.0, 92.0, 88.0, 91.0), 89.96),  # gapped through: the open less costs, 90 x 0.99955 = 89.9595
    ((96.0, 97.0, 95.0, 96.5), 95.96),  # opens on the stop: a gap too, 96 x 0.99955 = 95.9568
    ((104.0, 106.0, 95.0, 97.0), 95.96),  # the low crosses: the stop less costs, 96 x 0.99955 = 95.9568
    ((104.0, 106.0, 96.0, 97.0), 95.96),  # the low reaches the stop exactly: filled the same way
    ((104.0, 106.0, 96.01, 97.0), None),  # never reached
])
def test_stop(prices, expected):
    assert settle(stop(96.0), bar(*prices)) == (expected, None)


@pytest.mark.parametrize("side, prices, expected", [
    (BUY, (93.5, 96.0, 92.0, 95.5), 93.5),  # opens through the limit: the open, no costs
    (BUY, (99.0, 100.0, 95.0, 97.0), None),  # the low touches 95: not a fill
    (BUY, (99.0, 100.0, 94.99, 97.0), 95.0),  # trades through: the limit
    (SELL, (96.0, 98.0, 95.0, 97.0), 96.0),  # a sell limit at 95 the open is above: the open
    (SELL, (90.0, 95.0, 89.0, 94.0), None),  # the high touches 95
    (SELL, (90.0, 95.01, 89.0, 94.0), 95.0),
])
def test_limit(side, prices, expected):
    assert settle(limit(side, 95.0), bar(*prices)) == (expected, None)


def test_a_trailing_stop_takes_its_stop_from_the_mark_at_the_open_and_raises_it_by_the_high_after_the_bar():
    # mark max(100, 110) = 110, stop 104.50; the low 104.6 stays above it; the high 120 (stop 114) counts only after
    assert settle(trail(100.0), bar(110.0, 120.0, 104.6, 118.0)) == (None, 120.0)
    # the low reaches 104.50: 104.5 x 0.99955 = 104.452975 -> 104.45; the mark stays at the open's 110
    assert settle(trail(100.0), bar(110.0, 120.0, 104.5, 118.0)) == (104.45, 110.0)


def test_a_trailing_stop_gapped_through_fills_at_the_open_less_costs():
    # stop 104.50 from the mark 110; the open 101 is through it: 101 x 0.99955 = 100.95455 -> 100.95
    assert settle(trail(110.0), bar(101.0, 103.0, 98.0, 102.0)) == (100.95, 110.0)


def test_an_order_sent_in_session_trades_at_once_when_marketable_and_a_limit_never_beyond_its_limit():
    assert immediate_fill(market(BUY), 100.0) == 100.05  # 100 x 1.00045 = 100.045, half-up
    assert immediate_fill(market(SELL), 96.0) == 95.96
    assert immediate_fill(limit(BUY, 101.0), 100.0) == 100.05
    assert immediate_fill(limit(BUY, 100.02), 100.0) == 100.02  # capped at the limit
    assert immediate_fill(limit(BUY, 99.99), 100.0) is None  # rests
    assert immediate_fill(limit(SELL, 95.0), 96.0) == 95.96
    assert immediate_fill(limit(SELL, 95.99), 96.0) == 95.99  # floored at the limit
    assert immediate_fill(limit(SELL, 96.01), 96.0) is None
    assert immediate_fill(stop(96.0), 96.0) == 95.96  # at or below the stop: a market sell
    assert immediate_fill(stop(95.99), 96.0) is None
    assert immediate_fill(trail(110.0), 104.5) == 104.45  # stop 104.50
    assert immediate_fill(trail(110.0), 104.51) is None


def test_stops_go_before_market_orders_before_limits():
    assert PRIORITY[STOP] == PRIORITY[TRAILING_STOP] < PRIORITY[MARKET] < PRIORITY[LIMIT]

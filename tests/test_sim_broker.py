"""The simulated broker against hand-made daily bars, so every fill price can be worked out by hand.

Path of a bar (pathmodel): open -> nearer extreme -> other extreme -> close at session fractions 0, 1/3, 2/3, 1.
Sessions used: November 2016 (9:30-16:00 New York, 390 minutes; 1/3 of the session is 11:40, 2/3 is 13:50).
"""
from __future__ import annotations

import sqlite3
from datetime import date, datetime
from typing import Sequence

import numpy as np
import pandas as pd
import pytest

from common.clock import NY, Clock
from common.errors import (
    DataUnavailable,
    DuplicateClientOrderId,
    InsufficientQty,
    JournalError,
    OrderNotFound,
    OrderRejected,
    SimTimeError,
)
from common.types import BUY, LIMIT, MARKET, SELL, STOP, TRAILING_STOP, OrderRequest, Panel, Snapshot
from core import intraday_path
from ports.sim_broker import SimBroker
from ports.sim_fills import cost_rate, round_price

NOV = {d: date(2016, 11, d) for d in range(1, 30)}


def ny(day: int, hour: int, minute: int = 0, month: int = 11) -> datetime:
    return datetime(2016, month, day, hour, minute, tzinfo=NY)


class FakeMarket:
    """Daily bars from a dict {(symbol, day): (open, high, low, close)}; everything else is unused here."""

    name = "fake"

    def __init__(self, bars: dict[tuple[str, date], tuple[float, float, float, float]]):
        self._bars = bars
        self.down = False  # True: the source is unreachable

    def bars(self, symbols: Sequence[str], start: date, end: date) -> Panel:
        if self.down:
            raise DataUnavailable("fake market is down")
        days = sorted({day for (_, day) in self._bars if start <= day <= end})
        shape = (len(days), len(symbols))
        fields = {name: np.full(shape, np.nan) for name in ("open", "high", "low", "close")}
        for i, day in enumerate(days):
            for j, symbol in enumerate(symbols):
                bar = self._bars.get((symbol, day))
                for name, value in zip(("open", "high", "low", "close"), bar or ()):
                    fields[name][i, j] = value
        return Panel(dates=np.array(days, dtype="datetime64[D]"), symbols=list(symbols),
                     volume=np.full(shape, 1e6), **fields)

    def snapshot(self, symbols: Sequence[str], session: date, fraction: float) -> Snapshot:
        raise NotImplementedError

    def market_series(self, start: date, end: date) -> pd.DataFrame:
        raise NotImplementedError

    def known_symbols(self) -> list[str]:
        return sorted({symbol for (symbol, _) in self._bars})


# AAA on Nov 1: low first (open 100 is 6 from the low, 10 from the high): 100 -> 94 -> 110 -> 105.
# At 10:35 (1/6 of the session) the path is half way from 100 to 94: 97.00.
AAA_NOV1 = (100.0, 110.0, 94.0, 105.0)
CAPS = {"AAA": "large", "MMM": "mid", "SSS": "small"}


@pytest.fixture
def make(tmp_path):
    """make(bars, asof) -> (broker, clock) on one file per test; call again to reopen the same file."""
    def factory(bars, asof: datetime, path=None):
        clock = Clock(asof)
        broker = SimBroker(path or tmp_path / "sim.db", FakeMarket(bars), clock, cap_of=lambda s: CAPS.get(s, "?"))
        return broker, clock
    return factory


def request(cid: str, symbol: str, side: str, qty, type_: str = MARKET, **kw) -> OrderRequest:
    return OrderRequest(client_order_id=cid, symbol=symbol, side=side, type=type_, qty=qty, **kw)


def bought(make, bars, qty: int = 100):
    """A broker holding `qty` AAA bought at 10:35 on Nov 1 (path price 97.00, fill 97.04 with large-cap costs)."""
    broker, clock = make(bars, ny(1, 10, 35))
    order = broker.submit(request("buy-1", "AAA", BUY, qty))
    assert order.status == "filled" and order.filled_avg_price == 97.04
    return broker, clock


# ----- costs and market orders

@pytest.mark.parametrize("symbol, expected", [
    ("AAA", 97.04),  # large: 97 x (1 + 0.00025 + 0.0002) = 97.04365
    ("MMM", 97.07),  # mid: 97 x 1.0007 = 97.0679
    ("SSS", 97.12),  # small: 97 x 1.0012 = 97.1164
    ("UNK", 97.12),  # unknown cap counts as small
])
def test_market_buy_in_session_pays_half_spread_and_slippage(make, symbol, expected):
    broker, _ = make({(symbol, NOV[1]): AAA_NOV1}, ny(1, 10, 35))
    order = broker.submit(request("b1", symbol, BUY, 10))
    assert (order.id, order.status, order.filled_qty, order.filled_avg_price) == ("sim-000001", "filled", 10,
                                                                                  expected)
    assert order.filled_at == ny(1, 10, 35)
    assert broker.account().cash == round(100_000 - 10 * expected, 2)


def test_market_sell_receives_price_less_costs(make):
    broker, clock = bought(make, {("AAA", NOV[1]): AAA_NOV1})
    clock.set(ny(1, 12, 45))  # half way from 94 (11:40) to 110 (13:50): 102.00
    order = broker.submit(request("s1", "AAA", SELL, 100))
    assert order.filled_avg_price == 101.95  # 102 x (1 - 0.00045) = 101.9541
    assert broker.positions() == []
    assert broker.account().cash == round(100_000 - 9704 + 10195, 2)


def test_cost_rate_and_rounding():
    assert cost_rate("large") == pytest.approx(0.00045)
    assert cost_rate("Mid") == pytest.approx(0.0007)
    assert cost_rate(None) == pytest.approx(0.0012)
    assert round_price(100.045) == 100.05  # half-up on the decimal value, not on the binary float
    assert round_price(0.123456) == 0.1235


def test_market_order_outside_hours_is_accepted_and_fills_at_next_open(make):
    bars = {("SSS", NOV[1]): AAA_NOV1, ("SSS", NOV[2]): (102.0, 104.0, 101.0, 103.0)}
    broker, clock = make(bars, ny(1, 18, 0))
    order = broker.submit(request("b1", "SSS", BUY, 10))
    assert order.status == "accepted" and order.filled_qty == 0
    clock.set(ny(2, 9, 0))
    assert broker.get_order(order.id).status == "accepted"
    clock.set(ny(2, 9, 45))
    filled = broker.get_order(order.id)
    assert (filled.status, filled.filled_avg_price) == ("filled", 102.12)  # 102 x 1.0012 = 102.1224
    assert filled.filled_at == ny(2, 9, 30)


# ----- limit orders

LIMIT_BARS = {
    ("AAA", NOV[1]): AAA_NOV1,
    ("AAA", NOV[2]): (100.0, 101.0, 96.0, 99.0),  # never trades at 95
    # high first (open 99 is 1 from the high): 99 -> 100 (11:40) -> 93 (13:50) -> 97; 95 is crossed at 4/7.
    ("AAA", NOV[3]): (99.0, 100.0, 93.0, 97.0),
}


def test_limit_buy_fills_only_on_a_session_whose_path_crosses_it_at_the_limit(make):
    broker, clock = make(LIMIT_BARS, ny(1, 16, 30))
    order = broker.submit(request("l1", "AAA", BUY, 10, LIMIT, limit_price=95.0, time_in_force="gtc"))
    assert order.status == "accepted"
    clock.set(ny(2, 16, 5))
    assert broker.get_order(order.id).status == "new"
    clock.set(ny(3, 12, 0))  # fraction 150/390 < 4/7: the path is still above 95
    assert broker.get_order(order.id).status == "new"
    clock.set(ny(3, 14, 0))
    filled = broker.get_order(order.id)
    assert (filled.status, filled.filled_avg_price) == ("filled", 95.0)
    crossing = ny(3, 9, 30).timestamp() + 390 * 60 * 4 / 7
    assert abs(filled.filled_at.timestamp() - crossing) < 1
    assert broker.account().cash == 100_000 - 950


def test_limit_buy_when_the_session_opens_through_it_fills_at_the_open(make):
    bars = {("AAA", NOV[1]): AAA_NOV1, ("AAA", NOV[2]): (93.5, 96.0, 92.0, 95.5)}
    broker, clock = make(bars, ny(1, 17, 0))
    order = broker.submit(request("l1", "AAA", BUY, 10, LIMIT, limit_price=95.0, time_in_force="gtc"))
    clock.set(ny(2, 10, 0))
    assert broker.get_order(order.id).filled_avg_price == 93.5


def test_marketable_limit_in_session_fills_like_a_market_order_capped_at_the_limit(make):
    broker, _ = make({("AAA", NOV[1]): AAA_NOV1}, ny(1, 10, 35))
    cheap = broker.submit(request("l1", "AAA", BUY, 1, LIMIT, limit_price=98.0))
    capped = broker.submit(request("l2", "AAA", BUY, 1, LIMIT, limit_price=97.02))
    assert cheap.filled_avg_price == 97.04 and capped.filled_avg_price == 97.02


def test_limit_sell_fills_at_the_limit_when_the_path_rises_to_it(make):
    broker, clock = bought(make, {("AAA", NOV[1]): AAA_NOV1})
    order = broker.submit(request("ls", "AAA", SELL, 100, LIMIT, limit_price=108.0))
    assert order.status == "new"
    clock.set(ny(1, 15, 0))
    assert broker.get_order(order.id).filled_avg_price == 108.0
    assert broker.account().cash == 100_000 - 9704 + 10800


def test_day_order_expires_at_the_close_and_releases_buying_power(make):
    broker, clock = make(LIMIT_BARS, ny(1, 10, 35))
    day = broker.submit(request("d1", "AAA", BUY, 10, LIMIT, limit_price=50.0))
    gtc = broker.submit(request("g1", "AAA", BUY, 10, LIMIT, limit_price=50.0, time_in_force="gtc"))
    assert broker.account().buying_power == 99_000.0
    clock.set(ny(1, 15, 59))
    assert broker.get_order(day.id).status == "new"
    clock.set(ny(1, 16, 0))
    expired = broker.get_order(day.id)
    assert expired.status == "expired" and expired.extra["expired_at"] == ny(1, 16, 0)
    assert broker.get_order(gtc.id).status == "new"
    assert broker.account().buying_power == 99_500.0


def test_day_order_submitted_after_the_close_works_the_next_session(make):
    broker, clock = make(LIMIT_BARS, ny(1, 16, 30))
    order = broker.submit(request("d1", "AAA", BUY, 10, LIMIT, limit_price=50.0))
    clock.set(ny(2, 12, 0))
    assert broker.get_order(order.id).status == "new"
    clock.set(ny(2, 16, 1))
    assert broker.get_order(order.id).status == "expired"


def test_day_order_expires_at_an_early_close(make):
    bars = {("AAA", NOV[25]): (100.0, 101.0, 99.0, 100.5)}
    broker, clock = make(bars, ny(25, 10, 0))
    order = broker.submit(request("d1", "AAA", BUY, 10, LIMIT, limit_price=50.0))
    clock.set(ny(25, 13, 0))  # the day after Thanksgiving closes at 13:00
    assert broker.get_order(order.id).extra["expired_at"] == ny(25, 13, 0)


# ----- stops and trailing stops

def test_stop_gapped_through_fills_at_the_open(make):
    bars = {("AAA", NOV[1]): AAA_NOV1, ("AAA", NOV[2]): (90.0, 92.0, 88.0, 91.0)}
    broker, clock = bought(make, bars)
    clock.set(ny(1, 16, 30))
    stop = broker.submit(request("st", "AAA", SELL, 100, STOP, stop_price=96.0, time_in_force="gtc"))
    assert stop.status == "accepted"
    clock.set(ny(2, 10, 0))
    filled = broker.get_order(stop.id)
    assert (filled.status, filled.filled_avg_price, filled.filled_at) == ("filled", 90.0, ny(2, 9, 30))
    assert broker.positions() == []


def test_stop_crossed_inside_the_session_fills_at_the_stop(make):
    broker, clock = bought(make, {("AAA", NOV[1]): AAA_NOV1})
    stop = broker.submit(request("st", "AAA", SELL, 100, STOP, stop_price=95.5, time_in_force="gtc"))
    clock.set(ny(1, 12, 0))  # the path reaches 94 at 11:40
    assert broker.get_order(stop.id).filled_avg_price == 95.5


TRAIL_BARS = {
    ("AAA", NOV[1]): AAA_NOV1,  # from 97 at 10:35: down to 94, up to 110, close 105
    ("AAA", NOV[2]): (106.0, 112.0, 105.0, 111.0),  # low first: 106 -> 105 -> 112 -> 111
    ("AAA", NOV[3]): (111.0, 113.0, 100.0, 101.0),  # high first: 111 -> 113 -> 100 -> 101
}


def test_trailing_stop_follows_path_highs_across_sessions_and_fills_at_hwm_less_trail(make):
    broker, clock = bought(make, TRAIL_BARS)
    trail = broker.submit(request("ts", "AAA", SELL, 100, TRAILING_STOP, trail_percent=5.0, time_in_force="gtc"))
    assert (trail.status, trail.hwm, trail.stop_price) == ("new", 97.0, 92.15)
    clock.set(ny(1, 16, 30))
    seen = broker.get_order(trail.id)
    assert (seen.hwm, seen.stop_price) == (110.0, 104.5)  # the dip to 94 stayed above 92.15
    clock.set(ny(2, 16, 30))
    seen = broker.get_order(trail.id)
    assert (seen.status, seen.hwm, seen.stop_price) == ("new", 112.0, 106.4)
    clock.set(ny(3, 11, 0))  # 90 of 390 minutes: on the way from 111 to 113
    seen = broker.get_order(trail.id)
    assert seen.status == "new" and seen.hwm == pytest.approx(111 + 2 * 90 / 130)
    clock.set(ny(3, 15, 0))
    filled = broker.get_order(trail.id)
    assert (filled.status, filled.hwm, filled.filled_avg_price) == ("filled", 113.0, round(113.0 * 0.95, 2))
    assert filled.filled_avg_price == 107.35
    assert broker.account().cash == round(100_000 - 9704 + 10735, 2)


def test_trailing_stop_does_not_trigger_outside_hours_and_fills_at_the_gap_open(make):
    bars = {("AAA", NOV[1]): AAA_NOV1, ("AAA", NOV[2]): (100.0, 103.0, 98.0, 102.0)}
    broker, clock = bought(make, bars)
    trail = broker.submit(request("ts", "AAA", SELL, 100, TRAILING_STOP, trail_percent=5.0, time_in_force="gtc"))
    for moment in (ny(1, 20, 0), ny(2, 8, 0), ny(2, 9, 29)):
        clock.set(moment)
        assert broker.get_order(trail.id).status == "new"
        assert broker.positions()[0].qty == 100
    clock.set(ny(2, 9, 30))  # stop 104.50 after the 110 high; the open at 100 is through it
    filled = broker.get_order(trail.id)
    assert (filled.status, filled.filled_avg_price, filled.filled_at) == ("filled", 100.0, ny(2, 9, 30))


def test_missing_bar_means_no_trigger_that_session(make, caplog):
    bars = {("AAA", NOV[1]): AAA_NOV1, ("AAA", NOV[3]): (90.0, 91.0, 89.0, 90.5)}  # no bar on Nov 2
    broker, clock = bought(make, bars)
    clock.set(ny(1, 16, 30))
    stop = broker.submit(request("st", "AAA", SELL, 100, STOP, stop_price=96.0, time_in_force="gtc"))
    clock.set(ny(2, 16, 30))
    assert broker.get_order(stop.id).status == "new"
    assert "no AAA bar on 2016-11-02" in caplog.text
    assert broker.positions()[0].current_price == 105.0  # the last known price stands
    clock.set(ny(3, 10, 0))
    assert broker.get_order(stop.id).filled_avg_price == 90.0


# ----- time

def test_earlier_asof_is_refused_and_equal_asof_is_fine(make):
    broker, clock = make({}, ny(9, 15, 30))
    broker.account()
    broker.account()  # same time again: nothing to do
    clock.set(ny(8, 15, 0))
    with pytest.raises(SimTimeError) as refused:
        broker.account()
    assert str(refused.value) == ("sim broker: --asof 2016-11-08T15:00 is earlier than the broker's last processed "
                                  "time 2016-11-09T15:30 (use a fresh --db directory)")


# ----- validation

def test_duplicate_client_order_id_is_refused_even_after_cancel(make):
    broker, _ = make({("AAA", NOV[1]): AAA_NOV1}, ny(1, 10, 35))
    first = broker.submit(request("same", "AAA", BUY, 1, LIMIT, limit_price=50.0))
    broker.cancel(first.id)
    with pytest.raises(DuplicateClientOrderId, match="client_order_id must be unique"):
        broker.submit(request("same", "AAA", BUY, 2, LIMIT, limit_price=60.0))
    assert [o.id for o in broker.orders("all")] == ["sim-000001"]


def test_sell_beyond_qty_available_is_refused_until_the_stop_is_canceled(make):
    broker, _ = bought(make, {("AAA", NOV[1]): AAA_NOV1})
    stop = broker.submit(request("st", "AAA", SELL, 100, STOP, stop_price=80.0, time_in_force="gtc"))
    assert broker.positions()[0].qty_available == 0
    with pytest.raises(InsufficientQty) as refused:
        broker.submit(request("s1", "AAA", SELL, 50))
    assert str(refused.value) == "insufficient qty available for order (requested: 50, available: 0)"
    assert refused.value.status_code == 403 and refused.value.code == 40310000
    broker.cancel(stop.id)
    assert broker.positions()[0].qty_available == 100
    sold = broker.submit(request("s2", "AAA", SELL, 50))
    assert sold.status == "filled" and broker.positions()[0].qty == 50


@pytest.mark.parametrize("kwargs, message", [
    (dict(symbol="AAA", side=BUY, qty=0), "at least 1"),
    (dict(symbol="AAA", side=BUY, qty=1.5), "whole number"),
    (dict(symbol="AAA", side=BUY, qty=1, type_=LIMIT), "limit_price is required"),
    (dict(symbol="AAA", side=SELL, qty=1, type_=STOP), "stop_price is required"),
    (dict(symbol="AAA", side=SELL, qty=1, type_=TRAILING_STOP), "trail_percent"),
    (dict(symbol="AAA", side=BUY, qty=1, time_in_force="ioc"), "not supported"),
    (dict(symbol="BBB", side=SELL, qty=1), "does not sell short"),
    (dict(symbol="AAA", side=BUY, qty=1100), "insufficient buying power"),
    (dict(symbol="ZZZ", side=BUY, qty=1), "has no price"),
])
def test_invalid_orders_are_rejected(make, kwargs, message):
    broker, _ = make({("AAA", NOV[1]): AAA_NOV1, ("BBB", NOV[1]): AAA_NOV1}, ny(1, 10, 35))
    with pytest.raises(OrderRejected, match=message) as refused:
        broker.submit(request("bad", **kwargs))
    assert type(refused.value) is OrderRejected
    assert broker.orders("all") == [] and broker.account().cash == 100_000


def test_open_buy_orders_reserve_buying_power(make):
    broker, _ = make({("AAA", NOV[1]): AAA_NOV1}, ny(1, 10, 35))
    broker.submit(request("l1", "AAA", BUY, 1000, LIMIT, limit_price=90.0))
    assert broker.account().buying_power == 10_000.0
    with pytest.raises(OrderRejected, match="insufficient buying power"):
        broker.submit(request("b1", "AAA", BUY, 104))  # 104 x 97.04 = 10,092
    assert broker.submit(request("b2", "AAA", BUY, 103)).status == "filled"


# ----- account, persistence, cancel, queries

def test_account_equity_cash_and_last_equity(make):
    broker, clock = bought(make, {("AAA", NOV[1]): AAA_NOV1, ("AAA", NOV[2]): (104.0, 108.0, 103.0, 107.0)})
    account = broker.account()
    assert (account.cash, account.equity, account.last_equity) == (90_296.0, 99_996.0, 100_000.0)
    clock.set(ny(1, 16, 0))  # the close: 100 x 105
    assert broker.account().equity == 100_796.0
    assert broker.account().last_equity == 100_000.0  # still the same trading day
    clock.set(ny(2, 9, 0))
    assert broker.account().last_equity == 100_796.0
    clock.set(ny(2, 9, 30))
    account = broker.account()
    assert (account.equity, account.last_equity, account.buying_power) == (100_696.0, 100_796.0, 90_296.0)
    position = broker.positions()[0]
    assert (position.qty, position.current_price, position.market_value, position.unrealized_pl) == (
        100, 104.0, 10_400.0, 696.0)  # bought at 97.04


def test_state_survives_reopening_the_file(make, tmp_path):
    broker, clock = bought(make, TRAIL_BARS)
    trail = broker.submit(request("ts", "AAA", SELL, 100, TRAILING_STOP, trail_percent=5.0, time_in_force="gtc"))
    clock.set(ny(1, 16, 30))
    broker.account()
    broker.close()
    again, clock2 = make(TRAIL_BARS, ny(2, 16, 30))
    assert again.account().cash == 90_296.0
    assert again.get_order_by_client_id("ts").hwm == 112.0
    assert again.get_order(trail.id).id == "sim-000002"
    assert again.submit(request("l9", "AAA", BUY, 1, LIMIT, limit_price=50.0)).id == "sim-000003"
    clock2.set(ny(1, 16, 30))
    with pytest.raises(SimTimeError):
        again.account()


def test_cancel_semantics_and_order_queries(make):
    broker, _ = bought(make, {("AAA", NOV[1]): AAA_NOV1})
    resting = broker.submit(request("l1", "AAA", BUY, 1, LIMIT, limit_price=50.0))
    broker.cancel(resting.id)
    canceled = broker.get_order(resting.id)
    assert canceled.status == "canceled" and canceled.canceled_at == ny(1, 10, 35)
    with pytest.raises(OrderRejected, match="not cancelable"):
        broker.cancel(resting.id)
    with pytest.raises(OrderRejected, match="not cancelable"):
        broker.cancel("sim-000001")  # the filled buy
    with pytest.raises(OrderNotFound):
        broker.cancel("sim-999999")
    with pytest.raises(OrderNotFound):
        broker.get_order("nope")
    assert broker.get_order_by_client_id("nope") is None
    stop = broker.submit(request("st", "AAA", SELL, 100, STOP, stop_price=80.0, time_in_force="gtc"))
    assert [o.id for o in broker.orders()] == [stop.id]
    assert [o.id for o in broker.orders("closed")] == ["sim-000002", "sim-000001"]
    assert [o.id for o in broker.orders("all", symbols=["AAA"])] == ["sim-000003", "sim-000002", "sim-000001"]
    assert broker.orders("all", symbols=["BBB"]) == []


def test_fills_and_equity_marks_are_recorded_in_the_file(make, tmp_path):
    broker, clock = bought(make, {("AAA", NOV[1]): AAA_NOV1})
    clock.set(ny(2, 9, 0))
    broker.account()
    db = sqlite3.connect(tmp_path / "sim.db")
    assert db.execute("SELECT order_id, qty, price FROM fills").fetchall() == [("sim-000001", 100, 97.04)]
    assert db.execute("SELECT session, equity FROM equity_marks").fetchall() == [("2016-11-01", 100_796.0)]
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path):
    path = tmp_path / "sim.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(JournalError, match="cannot be used"):
        SimBroker(path, FakeMarket({}), Clock(ny(1, 10, 0)))


def test_a_new_file_starts_with_the_starting_cash(tmp_path):
    broker = SimBroker(tmp_path / "sub" / "sim.db", FakeMarket({}), Clock(ny(1, 10, 0)))
    account = broker.account()
    assert (account.cash, account.equity, account.buying_power, account.last_equity) == (100_000.0,) * 4
    assert broker.name == "sim" and broker.positions() == []


def test_a_call_that_fails_midway_leaves_the_file_as_it_was(make):
    bars = {("AAA", NOV[1]): AAA_NOV1, ("AAA", NOV[2]): (90.0, 92.0, 88.0, 91.0)}
    broker, clock = bought(make, bars)
    clock.set(ny(1, 16, 30))
    stop = broker.submit(request("st", "AAA", SELL, 100, STOP, stop_price=96.0, time_in_force="gtc"))
    clock.set(ny(2, 10, 0))
    broker.market.down = True
    with pytest.raises(DataUnavailable):
        broker.account()
    assert sqlite3.connect(broker.path).execute("SELECT last_processed FROM account").fetchone()[0].startswith(
        "2016-11-01T20:30")  # 16:30 New York (EDT)
    broker.market.down = False
    assert broker.get_order(stop.id).filled_avg_price == 90.0


# ----- the walk's own path arithmetic and what one connection sees of another's writes

def _bars_to_check() -> list[tuple[float, float, float, float]]:
    """Random bars plus every tie the path rule decides: open on either extreme, open half way, flat, bad rows."""
    rng = np.random.default_rng(7)
    bars = [tuple(float(x) for x in rng.uniform(1.0, 300.0, 4)) for _ in range(300)]
    bars += [tuple(float(x) for x in rng.uniform(0.01, 1.0, 4)) for _ in range(50)]
    bars += [(100.0, 110.0, 94.0, 105.0), (110.0, 110.0, 94.0, 100.0), (94.0, 110.0, 94.0, 100.0),
             (102.0, 110.0, 94.0, 100.0), (50.0, 50.0, 50.0, 50.0), (113.0, 112.0, 105.0, 111.0),
             (90.0, 112.0, 105.0, 111.0), (106.0, 112.0, 105.0, 120.0), (106.0, 105.0, 112.0, 111.0)]
    return bars


FRACTIONS = [0.0, 1e-9, 0.1, 1 / 6, 1 / 3, 0.4, 0.5, 2 / 3, 0.9, 389 / 390, 1.0, -0.2, 1.3]


def _array_path(bar, f_from: float, f_to: float) -> list[tuple[float, float]]:
    """The walk's points computed with pathmodel's array functions."""
    f_from, f_to = max(0.0, min(1.0, f_from)), max(0.0, min(1.0, f_to))
    points = [(f_from, float(intraday_path.price_at(*bar, f_from)))]
    points += [(float(t), float(p)) for t, p in zip(intraday_path.VERTEX_TIMES, intraday_path.vertices(*bar))
               if f_from < t < f_to]
    return points + ([(f_to, float(intraday_path.price_at(*bar, f_to)))] if f_to > f_from else [])


@pytest.mark.slow
def test_the_walks_path_is_the_snapshots_path_to_the_bit():
    """The sim broker walks bars with pathmodel's plain-float functions and snapshots use its array functions;
    they must not differ by one bit: every point, every vertex, every clamped fraction."""
    for bar in _bars_to_check():
        for f_from in FRACTIONS:
            assert intraday_path.bar_price(*bar, f_from) == float(intraday_path.price_at(*bar, f_from)), (bar, f_from)
            for f_to in FRACTIONS:
                assert intraday_path.path_points(*bar, f_from, f_to) == _array_path(bar, f_from, f_to), (bar, f_from,
                                                                                                      f_to)


def test_orders_changed_through_another_connection_are_seen_at_once(make, tmp_path):
    """Another process's cancel, and another process's walk of the trailing mark, reach a broker that has already
    read (and built) the same orders."""
    broker, clock = bought(make, TRAIL_BARS)
    trail = broker.submit(request("ts", "AAA", SELL, 100, TRAILING_STOP, trail_percent=5.0, time_in_force="gtc"))
    limit = broker.submit(request("l1", "AAA", BUY, 1, LIMIT, limit_price=50.0))
    assert [o.id for o in broker.orders("open")] == [limit.id, trail.id]
    other, other_clock = make(TRAIL_BARS, ny(1, 10, 35))
    other.cancel(limit.id)
    assert [o.id for o in broker.orders("open")] == [trail.id]
    assert broker.get_order(limit.id).status == "canceled"
    other_clock.set(ny(2, 16, 30))
    assert other.get_order(trail.id).hwm == 112.0  # the other process walked two sessions
    clock.set(ny(2, 16, 30))  # the same moment: nothing left to walk here
    seen = broker.orders("open")[0]
    assert (seen.id, seen.hwm, seen.stop_price) == (trail.id, 112.0, 106.4)
    assert broker.get_orders([trail.id])[trail.id] == seen
    assert broker.positions()[0].current_price == 111.0

"""The simulated broker against hand-made bars, so every fill price can be worked out by hand.

What the broker knows of a session (ports/sim_fills.py): with daily data the opening print at 09:30 (o=h=l=c=open)
and the rest of the day at the close (the day's real open, high, low and close); from a market with `session_bars`,
each intraday bar from its end on. During a session with daily data the current price is TODAY'S OPEN until the
close. Costs of a market fill: half the spread plus 2 bp (large 0.00045, mid 0.0007, small or unknown 0.0012),
rounded half-up to cents. Sessions used: November 2016 (9:30-16:00 New York, 390 minutes).
"""
from __future__ import annotations

import math
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
from common.types import BUY, LIMIT, MARKET, SELL, STOP, TRAILING_STOP, OrderRequest, Panel, SessionBars, Snapshot
from ports.sim_broker import SimBroker
from ports.sim_fills import cost_rate, round_price

NOV = {d: date(2016, 11, d) for d in range(1, 30)}
OHLC = ("open", "high", "low", "close")


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
        fields = {name: np.full(shape, np.nan) for name in OHLC}
        for i, day in enumerate(days):
            for j, symbol in enumerate(symbols):
                bar = self._bars.get((symbol, day))
                for name, value in zip(OHLC, bar or ()):
                    fields[name][i, j] = value
        return Panel(dates=np.array(days, dtype="datetime64[D]"), symbols=list(symbols),
                     volume=np.full(shape, 1e6), **fields)

    def snapshot(self, symbols: Sequence[str], session: date, fraction: float) -> Snapshot:
        raise NotImplementedError

    def market_series(self, start: date, end: date) -> pd.DataFrame:
        raise NotImplementedError

    def known_symbols(self) -> list[str]:
        return sorted({symbol for (symbol, _) in self._bars})


class IntradayMarket(FakeMarket):
    """A market with intraday data: 30-minute bars {(symbol, day): [(open, high, low, close), ...]} from 09:30 on
    (bar k ends at (k + 1) / 13 of a 390-minute session). The broker then never reads daily bars for stocks."""

    def __init__(self, intraday: dict[tuple[str, date], list[tuple[float, float, float, float]]]):
        super().__init__({})
        self._intraday = intraday

    def known_symbols(self) -> list[str]:
        return sorted({symbol for (symbol, _) in self._intraday})

    def session_bars(self, symbols: Sequence[str], session: date) -> SessionBars:
        count = max((len(rows) for (_, day), rows in self._intraday.items() if day == session), default=0)
        fields = {name: np.full((count, len(symbols)), np.nan) for name in OHLC}
        for j, symbol in enumerate(symbols):
            for k, row in enumerate(self._intraday.get((symbol, session), ())):
                for name, value in zip(OHLC, row):
                    fields[name][k, j] = value
        return SessionBars(session=session, symbols=list(symbols), ends=np.arange(1, count + 1) / 13.0,
                           volume=np.full((count, len(symbols)), 1e4), **fields)


# AAA on Nov 1: open 100, high 110, low 94, close 105. All day long the broker's price is the open, 100.
AAA_NOV1 = (100.0, 110.0, 94.0, 105.0)
CAPS = {"AAA": "large", "MMM": "mid", "SSS": "small"}


@pytest.fixture
def make(tmp_path):
    """make(bars, asof) -> (broker, clock) on one file per test; call again to reopen the same file. `market`
    replaces the daily FakeMarket(bars)."""
    def factory(bars, asof: datetime, path=None, market=None):
        clock = Clock(asof)
        broker = SimBroker(path or tmp_path / "sim.db", market or FakeMarket(bars), clock,
                           cap_of=lambda s: CAPS.get(s, "?"))
        return broker, clock
    return factory


def request(cid: str, symbol: str, side: str, qty, type_: str = MARKET, **kw) -> OrderRequest:
    return OrderRequest(client_order_id=cid, symbol=symbol, side=side, type=type_, qty=qty, **kw)


def bought(make, bars, qty: int = 100):
    """A broker holding `qty` AAA bought at 10:35 on Nov 1: the price is the open, 100, so the fill is
    100 x 1.00045 = 100.045, half-up 100.05 (cash after 100 shares: 100,000 - 10,005 = 89,995)."""
    broker, clock = make(bars, ny(1, 10, 35))
    order = broker.submit(request("buy-1", "AAA", BUY, qty))
    assert order.status == "filled" and order.filled_avg_price == 100.05
    return broker, clock


def fills(broker) -> list[tuple]:
    """(order id, side, qty, price, New York time) of every fill in the order they were booked."""
    rows = sqlite3.connect(broker.path).execute("SELECT order_id, side, qty, price, at FROM fills ORDER BY id")
    return [(oid, side, qty, price, datetime.fromisoformat(at).astimezone(NY)) for oid, side, qty, price, at in rows]


# ----- costs and market orders

@pytest.mark.parametrize("symbol, expected", [
    ("AAA", 100.05),  # large: 100 x (1 + 0.00025 + 0.0002) = 100.045, half-up 100.05
    ("MMM", 100.07),  # mid: 100 x 1.0007 = 100.07
    ("SSS", 100.12),  # small: 100 x 1.0012 = 100.12
    ("UNK", 100.12),  # unknown cap counts as small
])
def test_market_buy_in_session_fills_at_todays_open_plus_half_spread_and_slippage(make, symbol, expected):
    broker, _ = make({(symbol, NOV[1]): AAA_NOV1}, ny(1, 10, 35))
    order = broker.submit(request("b1", symbol, BUY, 10))
    assert (order.id, order.status, order.filled_qty, order.filled_avg_price) == ("sim-000001", "filled", 10,
                                                                                  expected)
    assert order.filled_at == ny(1, 10, 35)
    assert broker.account().cash == round(100_000 - 10 * expected, 2)


def test_market_sell_late_in_the_session_still_trades_at_the_open_less_costs(make):
    broker, clock = bought(make, {("AAA", NOV[1]): AAA_NOV1})
    clock.set(ny(1, 15, 59))  # the day's high, low and close are not known before 16:00: the price is still 100
    order = broker.submit(request("s1", "AAA", SELL, 100))
    assert (order.filled_avg_price, order.filled_at) == (99.96, ny(1, 15, 59))  # 100 x 0.99955 = 99.955 -> 99.96
    assert broker.positions() == []
    assert broker.account().cash == 100_000 - 10_005 + 9_996


def test_cost_rate_and_rounding():
    assert cost_rate("large") == pytest.approx(0.00045)
    assert cost_rate("Mid") == pytest.approx(0.0007)
    assert cost_rate(None) == pytest.approx(0.0012)
    assert round_price(100.045) == 100.05  # half-up on the decimal value, not on the binary float
    assert round_price(0.123456) == 0.1235


@pytest.mark.parametrize("sent", [ny(1, 18, 0), ny(2, 8, 0)], ids=["after-the-close", "before-the-open"])
def test_market_order_outside_hours_is_accepted_and_fills_at_the_next_open(make, sent):
    bars = {("SSS", NOV[1]): AAA_NOV1, ("SSS", NOV[2]): (102.0, 104.0, 101.0, 103.0)}
    broker, clock = make(bars, sent)
    order = broker.submit(request("b1", "SSS", BUY, 10))
    assert order.status == "accepted" and order.filled_qty == 0
    clock.set(ny(2, 9, 0))
    assert broker.get_order(order.id).status == "accepted"
    clock.set(ny(2, 9, 45))
    filled = broker.get_order(order.id)
    assert (filled.status, filled.filled_avg_price) == ("filled", 102.12)  # small: 102 x 1.0012 = 102.1224
    assert filled.filled_at == ny(2, 9, 30)


# ----- limit orders

LIMIT_BARS = {
    ("AAA", NOV[1]): AAA_NOV1,  # low 94, but a buy limit at 95 sent after the close is not held to it
    ("AAA", NOV[2]): (100.0, 101.0, 95.0, 99.0),  # the low touches 95: a touch is not a fill
    ("AAA", NOV[3]): (99.0, 100.0, 93.0, 97.0),  # opens above 95 and trades through it
}


def test_limit_buy_a_touch_is_not_a_fill_and_trading_through_fills_at_the_limit_at_the_close(make):
    broker, clock = make(LIMIT_BARS, ny(1, 16, 30))
    order = broker.submit(request("l1", "AAA", BUY, 10, LIMIT, limit_price=95.0, time_in_force="gtc"))
    assert order.status == "accepted"
    clock.set(ny(1, 17, 0))
    assert broker.get_order(order.id).status == "accepted"
    clock.set(ny(2, 16, 5))
    assert broker.get_order(order.id).status == "new"  # low 95 = the limit
    clock.set(ny(3, 14, 0))  # Nov 3's low is known only at the close
    assert broker.get_order(order.id).status == "new"
    clock.set(ny(3, 16, 0))
    filled = broker.get_order(order.id)
    assert (filled.status, filled.filled_avg_price, filled.filled_at) == ("filled", 95.0, ny(3, 16, 0))
    assert broker.account().cash == 100_000 - 950  # at the limit, no costs


def test_limit_buy_when_the_session_opens_through_it_fills_at_the_open(make):
    bars = {("AAA", NOV[1]): AAA_NOV1, ("AAA", NOV[2]): (93.5, 96.0, 92.0, 95.5)}
    broker, clock = make(bars, ny(1, 17, 0))
    order = broker.submit(request("l1", "AAA", BUY, 10, LIMIT, limit_price=95.0, time_in_force="gtc"))
    clock.set(ny(2, 10, 0))
    filled = broker.get_order(order.id)
    assert (filled.filled_avg_price, filled.filled_at) == (93.5, ny(2, 9, 30))  # the open, better than the limit


def test_marketable_limit_in_session_fills_like_a_market_order_capped_at_the_limit(make):
    broker, _ = make({("AAA", NOV[1]): AAA_NOV1}, ny(1, 10, 35))
    cheap = broker.submit(request("l1", "AAA", BUY, 1, LIMIT, limit_price=101.0))
    capped = broker.submit(request("l2", "AAA", BUY, 1, LIMIT, limit_price=100.02))
    assert cheap.filled_avg_price == 100.05 and capped.filled_avg_price == 100.02  # 100 x 1.00045 = 100.045


def test_limit_sell_sent_in_session_fills_at_the_limit_at_the_close_when_the_day_trades_through_it(make):
    broker, clock = bought(make, {("AAA", NOV[1]): AAA_NOV1})
    order = broker.submit(request("ls", "AAA", SELL, 100, LIMIT, limit_price=108.0))  # the price is 100
    assert order.status == "new"
    clock.set(ny(1, 15, 0))
    assert broker.get_order(order.id).status == "new" and broker.positions()[0].qty == 100
    clock.set(ny(1, 16, 0))  # the day's high 110 > 108 (the order was sent mid-session: held to the whole day)
    filled = broker.get_order(order.id)
    assert (filled.filled_avg_price, filled.filled_at) == (108.0, ny(1, 16, 0))
    assert broker.account().cash == 100_000 - 10_005 + 10_800


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

def test_stop_gapped_through_fills_at_the_open_less_costs(make):
    bars = {("AAA", NOV[1]): AAA_NOV1, ("AAA", NOV[2]): (90.0, 92.0, 88.0, 91.0)}
    broker, clock = bought(make, bars)
    clock.set(ny(1, 16, 30))
    stop = broker.submit(request("st", "AAA", SELL, 100, STOP, stop_price=96.0, time_in_force="gtc"))
    assert stop.status == "accepted"
    clock.set(ny(2, 10, 0))
    filled = broker.get_order(stop.id)
    # a gap below 96: a market order at the open, 90 x 0.99955 = 89.9595 -> 89.96
    assert (filled.status, filled.filled_avg_price, filled.filled_at) == ("filled", 89.96, ny(2, 9, 30))
    assert broker.positions() == []
    assert broker.account().cash == 89_995 + 8_996


def test_stop_triggered_inside_the_session_fills_at_the_stop_less_costs_at_the_close(make):
    bars = {("AAA", NOV[1]): AAA_NOV1, ("AAA", NOV[2]): (104.0, 106.0, 95.0, 97.0)}  # opens above 96, low 95
    broker, clock = bought(make, bars)
    clock.set(ny(1, 16, 30))
    stop = broker.submit(request("st", "AAA", SELL, 100, STOP, stop_price=96.0, time_in_force="gtc"))
    clock.set(ny(2, 11, 0))  # what a monitor sees during the session: the stop working, the position at the open
    assert broker.get_order(stop.id).status == "new"
    position = broker.positions()[0]
    assert (position.qty, position.qty_available, position.current_price) == (100, 0, 104.0)
    assert broker.account().equity == 89_995 + 10_400
    clock.set(ny(2, 16, 0))
    filled = broker.get_order(stop.id)
    # slippage beyond the stop: 96 x 0.99955 = 95.9568 -> 95.96, booked at the close
    assert (filled.status, filled.filled_avg_price, filled.filled_at) == ("filled", 95.96, ny(2, 16, 0))
    assert broker.positions() == []
    assert broker.account().cash == 89_995 + 9_596


def test_stop_sent_mid_session_is_held_to_the_whole_days_range(make):
    broker, clock = bought(make, {("AAA", NOV[1]): AAA_NOV1})
    stop = broker.submit(request("st", "AAA", SELL, 100, STOP, stop_price=95.5, time_in_force="gtc"))
    clock.set(ny(1, 12, 0))
    assert broker.get_order(stop.id).status == "new"
    clock.set(ny(1, 16, 0))  # the low 94 may have come before 10:35; the stop is held to it all the same
    filled = broker.get_order(stop.id)
    assert (filled.filled_avg_price, filled.filled_at) == (95.46, ny(1, 16, 0))  # 95.5 x 0.99955 = 95.457025


def test_an_order_canceled_during_the_session_is_not_held_to_that_days_range(make):
    broker, clock = bought(make, {("AAA", NOV[1]): AAA_NOV1})
    stop = broker.submit(request("st", "AAA", SELL, 100, STOP, stop_price=95.5, time_in_force="gtc"))
    clock.set(ny(1, 11, 0))
    broker.cancel(stop.id)
    clock.set(ny(1, 16, 30))  # the low 94 was under the stop, but the order was gone by the close
    assert broker.get_order(stop.id).status == "canceled"
    position = broker.positions()[0]
    assert (position.qty, position.current_price) == (100, 105.0)
    assert broker.account().cash == 89_995


def test_a_stop_and_a_limit_filling_in_one_bar_book_the_stop_first(make):
    # Nov 2 opens at 100 between the stop (96) and the limit (108) and trades through both (low 94, high 110).
    bars = {("AAA", NOV[1]): AAA_NOV1, ("AAA", NOV[2]): AAA_NOV1}
    broker, clock = bought(make, bars)
    clock.set(ny(1, 16, 30))
    limit = broker.submit(request("ls", "AAA", SELL, 50, LIMIT, limit_price=108.0, time_in_force="gtc"))
    stop = broker.submit(request("st", "AAA", SELL, 50, STOP, stop_price=96.0, time_in_force="gtc"))
    clock.set(ny(2, 16, 30))
    assert broker.positions() == []
    assert fills(broker)[1:] == [
        (stop.id, SELL, 50, 95.96, ny(2, 16, 0)),  # 96 x 0.99955 = 95.9568, though sent after the limit
        (limit.id, SELL, 50, 108.0, ny(2, 16, 0)),  # at the limit, no costs
    ]
    assert broker.account().cash == 89_995 + 4_798 + 5_400


TRAIL_BARS = {
    ("AAA", NOV[1]): (100.0, 110.0, 96.0, 105.0),  # trail sent at 10:35 from 100 (stop 95): low 96, high 110
    ("AAA", NOV[2]): (106.0, 112.0, 105.0, 111.0),  # stop 104.50 not reached; high 112
    ("AAA", NOV[3]): (111.0, 120.0, 107.0, 116.0),  # stop 106.40 not reached; high 120 (114 from it: see below)
    ("AAA", NOV[4]): (115.0, 116.0, 113.0, 114.0),  # opens above 114, low 113: fills at 114 less costs
}


def test_trailing_stop_follows_the_highs_across_sessions_and_fills_at_mark_less_trail_less_costs(make):
    broker, clock = bought(make, TRAIL_BARS)
    trail = broker.submit(request("ts", "AAA", SELL, 100, TRAILING_STOP, trail_percent=5.0, time_in_force="gtc"))
    assert (trail.status, trail.hwm, trail.stop_price) == ("new", 100.0, 95.0)  # the mark starts at the open
    clock.set(ny(1, 15, 0))
    assert broker.get_order(trail.id).hwm == 100.0  # the day's high is not known yet
    clock.set(ny(1, 16, 30))
    seen = broker.get_order(trail.id)
    assert (seen.status, seen.hwm, seen.stop_price) == ("new", 110.0, 104.5)  # the low 96 stayed above 95
    clock.set(ny(2, 16, 30))
    seen = broker.get_order(trail.id)
    assert (seen.status, seen.hwm, seen.stop_price) == ("new", 112.0, 106.4)
    clock.set(ny(3, 11, 0))  # the open 111 is below the mark
    assert broker.get_order(trail.id).hwm == 112.0
    clock.set(ny(3, 16, 30))  # low 107 is 10.8% under the high of 120, but that high may have come after the low
    seen = broker.get_order(trail.id)
    assert (seen.status, seen.hwm, seen.stop_price) == ("new", 120.0, 114.0)
    clock.set(ny(4, 16, 0))
    filled = broker.get_order(trail.id)
    # 120 x 0.95 = 114; 114 x 0.99955 = 113.9487 -> 113.95, at the close
    assert (filled.status, filled.hwm, filled.filled_avg_price, filled.filled_at) == (
        "filled", 120.0, 113.95, ny(4, 16, 0))
    assert broker.account().cash == 89_995 + 11_395


def test_a_trailing_stop_is_not_triggered_by_a_fall_from_its_own_bars_new_high_but_the_next_bar_uses_it(make):
    bars = {
        ("AAA", NOV[1]): (100.0, 101.0, 99.0, 100.0),
        ("AAA", NOV[2]): (100.0, 110.0, 96.0, 108.0),  # 12.7% down from 110, but only 4% from the mark 100
        ("AAA", NOV[3]): (106.0, 107.0, 104.0, 105.0),  # low 104 <= 104.50, the stop from the raised mark 110
    }
    broker, clock = bought(make, bars)
    clock.set(ny(1, 16, 30))
    trail = broker.submit(request("ts", "AAA", SELL, 100, TRAILING_STOP, trail_percent=5.0, time_in_force="gtc"))
    assert (trail.hwm, trail.stop_price) == (100.0, 95.0)  # from the close, 100
    clock.set(ny(2, 16, 30))
    seen = broker.get_order(trail.id)
    assert (seen.status, seen.hwm, seen.stop_price) == ("new", 110.0, 104.5)
    clock.set(ny(3, 16, 30))
    filled = broker.get_order(trail.id)
    # 104.5 x 0.99955 = 104.452975 -> 104.45
    assert (filled.status, filled.filled_avg_price, filled.filled_at) == ("filled", 104.45, ny(3, 16, 0))


def test_trailing_stop_does_not_trigger_outside_hours_and_fills_at_the_gap_open(make):
    bars = {("AAA", NOV[1]): TRAIL_BARS[("AAA", NOV[1])], ("AAA", NOV[2]): (101.0, 103.0, 98.0, 102.0)}
    broker, clock = bought(make, bars)
    trail = broker.submit(request("ts", "AAA", SELL, 100, TRAILING_STOP, trail_percent=5.0, time_in_force="gtc"))
    for moment in (ny(1, 20, 0), ny(2, 8, 0), ny(2, 9, 29)):
        clock.set(moment)
        assert broker.get_order(trail.id).status == "new"
        assert broker.positions()[0].qty == 100
    clock.set(ny(2, 9, 30))  # stop 104.50 after the 110 high; the open at 101 is through it
    filled = broker.get_order(trail.id)
    # 101 x 0.99955 = 100.95455 -> 100.95
    assert (filled.status, filled.filled_avg_price, filled.filled_at) == ("filled", 100.95, ny(2, 9, 30))


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
    assert broker.get_order(stop.id).filled_avg_price == 89.96  # gap: 90 x 0.99955 = 89.9595


# ----- a market with intraday bars

# AAA on Nov 1 in 30-minute bars (the 11:00 bar ends at 11:30, and so on).
INTRADAY = {("AAA", NOV[1]): [
    (100.0, 101.0, 99.5, 100.5),  # 09:30-10:00
    (100.5, 102.0, 100.0, 101.5),  # 10:00-10:30
    (101.5, 102.0, 99.0, 99.5),  # 10:30-11:00
    (99.5, 100.0, 98.5, 99.0),  # 11:00-11:30: low 98.5, above the stop at 98
    (99.0, 99.5, 97.0, 97.5),  # 11:30-12:00: opens above 98, low 97 crosses it
    (97.5, 98.0, 96.0, 96.5),  # 12:00-12:30, the last bar of the day here
]}


def bought_intraday(make):
    """100 AAA bought at 11:10 at the close of the last bar that ended (10:30-11:00): 99.5 x 1.00045 = 99.544775,
    99.54 (cash after: 100,000 - 9,954 = 90,046)."""
    broker, clock = make({}, ny(1, 11, 10), market=IntradayMarket(INTRADAY))
    order = broker.submit(request("buy-1", "AAA", BUY, 100))
    assert (order.status, order.filled_avg_price, order.filled_at) == ("filled", 99.54, ny(1, 11, 10))
    return broker, clock


def test_intraday_market_order_fills_at_the_last_ended_bars_close_and_marks_follow_the_bars(make):
    broker, clock = bought_intraday(make)
    assert broker.positions()[0].current_price == 99.5
    clock.set(ny(1, 11, 29))
    assert broker.positions()[0].current_price == 99.5  # the 11:00 bar has not ended
    clock.set(ny(1, 11, 30))
    assert broker.positions()[0].current_price == 99.0
    assert broker.account().equity == 90_046 + 9_900
    clock.set(ny(1, 16, 30))
    assert broker.positions()[0].current_price == 96.5  # the last bar's close
    clock.set(ny(2, 9, 0))
    assert broker.account().last_equity == 90_046 + 9_650


def test_intraday_stop_fills_in_the_bar_whose_low_crosses_it_at_that_bars_end(make):
    broker, clock = bought_intraday(make)
    stop = broker.submit(request("st", "AAA", SELL, 100, STOP, stop_price=98.0, time_in_force="gtc"))
    assert stop.status == "new"
    clock.set(ny(1, 11, 45))
    assert broker.get_order(stop.id).status == "new"
    position = broker.positions()[0]
    assert (position.qty, position.current_price) == (100, 99.0)
    clock.set(ny(1, 12, 5))
    filled = broker.get_order(stop.id)
    # 98 x 0.99955 = 97.9559 -> 97.96, at the end of the 11:30 bar
    assert (filled.status, filled.filled_avg_price, filled.filled_at) == ("filled", 97.96, ny(1, 12, 0))
    assert broker.positions() == []
    assert broker.account().cash == 90_046 + 9_796


# ----- time

def test_earlier_asof_is_refused_and_equal_asof_is_fine(make):
    broker, clock = make({}, ny(9, 15, 30))
    broker.account()
    broker.account()  # same time again: nothing to do
    clock.set(ny(8, 15, 0))
    with pytest.raises(SimTimeError) as refused:
        broker.account()
    assert str(refused.value) == ("sim broker: --asof 2016-11-08 15:00 EST is earlier than the broker's last processed "
                                  "time 2016-11-09 15:30 EST (use a fresh --db directory)")


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
    assert (sold.status, sold.filled_avg_price) == ("filled", 99.96)  # 100 x 0.99955 = 99.955 -> 99.96
    assert broker.positions()[0].qty == 50


@pytest.mark.parametrize("kwargs, message", [
    (dict(symbol="AAA", side=BUY, qty=0), "at least 1"),
    (dict(symbol="AAA", side=BUY, qty=1.5), "whole number"),
    (dict(symbol="AAA", side=BUY, qty=1, type_=LIMIT), "limit_price is required"),
    (dict(symbol="AAA", side=SELL, qty=1, type_=STOP), "stop_price is required"),
    (dict(symbol="AAA", side=SELL, qty=1, type_=TRAILING_STOP), "trail_percent"),
    (dict(symbol="AAA", side=BUY, qty=1, time_in_force="ioc"), "not supported"),
    (dict(symbol="BBB", side=SELL, qty=1), "does not sell short"),
    (dict(symbol="AAA", side=BUY, qty=1000), "insufficient buying power"),  # 1000 x 100.045 > 100,000
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
        broker.submit(request("b1", "AAA", BUY, 100))  # 100 x 100 x 1.00045 = 10,004.50
    assert broker.submit(request("b2", "AAA", BUY, 99)).status == "filled"  # 99 x 100.045 = 9,904.46
    assert broker.account().buying_power == round(10_000 - 99 * 100.05, 2)


# ----- account, persistence, cancel, queries

def test_account_equity_cash_and_last_equity(make):
    broker, clock = bought(make, {("AAA", NOV[1]): AAA_NOV1, ("AAA", NOV[2]): (104.0, 108.0, 103.0, 107.0)})
    account = broker.account()
    assert (account.cash, account.equity, account.last_equity) == (89_995.0, 99_995.0, 100_000.0)  # marked at 100
    clock.set(ny(1, 15, 59))
    assert broker.account().equity == 99_995.0  # still the open
    clock.set(ny(1, 16, 0))  # the close: 100 x 105
    assert broker.account().equity == 100_495.0
    assert broker.account().last_equity == 100_000.0  # still the same trading day
    clock.set(ny(2, 9, 0))
    assert broker.account().last_equity == 100_495.0
    clock.set(ny(2, 9, 30))
    account = broker.account()
    assert (account.equity, account.last_equity, account.buying_power) == (100_395.0, 100_495.0, 89_995.0)
    clock.set(ny(2, 13, 0))
    position = broker.positions()[0]
    assert (position.qty, position.current_price, position.market_value, position.unrealized_pl) == (
        100, 104.0, 10_400.0, 395.0)  # marked at the open all session; bought at 100.05


def test_state_survives_reopening_the_file(make, tmp_path):
    broker, clock = bought(make, TRAIL_BARS)
    trail = broker.submit(request("ts", "AAA", SELL, 100, TRAILING_STOP, trail_percent=5.0, time_in_force="gtc"))
    clock.set(ny(1, 16, 30))
    broker.account()
    account_id = broker.account_id()
    broker.close()
    again, clock2 = make(TRAIL_BARS, ny(2, 16, 30))
    assert again.account_id() == account_id
    assert again.account().cash == 89_995.0
    assert again.get_order_by_client_id("ts").hwm == 112.0
    assert again.get_order(trail.id).id == "sim-000002"
    assert again.submit(request("l9", "AAA", BUY, 1, LIMIT, limit_price=50.0)).id == "sim-000003"
    clock2.set(ny(1, 16, 30))
    with pytest.raises(SimTimeError):
        again.account()


def test_the_account_id_is_the_files_own_and_asking_for_it_never_moves_time(make, tmp_path):
    broker, clock = make({}, ny(1, 10, 0))
    account_id = broker.account_id()
    assert account_id and broker.account().id == account_id
    other, _ = make({}, ny(1, 10, 0), path=tmp_path / "other.db")
    assert other.account_id() != account_id
    clock.set(ny(1, 9, 0))  # earlier than the last processed time: only calls that advance refuse it
    assert broker.account_id() == account_id
    with pytest.raises(SimTimeError):
        broker.account()


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
    assert db.execute("SELECT order_id, qty, price FROM fills").fetchall() == [("sim-000001", 100, 100.05)]
    assert db.execute("SELECT session, equity FROM equity_marks").fetchall() == [("2016-11-01", 100_495.0)]
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
    assert broker.get_order(stop.id).filled_avg_price == 89.96  # the gap: 90 x 0.99955 = 89.9595


# ----- what one connection sees of another's writes

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


def test_intraday_opening_print_is_not_taken_from_a_later_bar(make):
    rows = [(math.nan,) * 4, (math.nan,) * 4, (50.0, 51.0, 49.0, 50.5)]  # the first trade is in the 10:30 bar
    broker, clock = make({}, ny(1, 9, 45), market=IntradayMarket({("AAA", NOV[1]): rows}))
    with pytest.raises(OrderRejected, match="no price"):
        broker.submit(request("b1", "AAA", BUY, 10))  # nothing has traded yet: no price to trade at
    clock.set(ny(1, 10, 40))  # the 10:30 bar has started: its open is the first price
    assert broker.submit(request("b2", "AAA", BUY, 10)).filled_avg_price == 50.02  # 50 x 1.00045


def test_a_limit_sent_mid_bar_does_not_get_that_bars_earlier_open(make):
    rows = list(INTRADAY[("AAA", NOV[1])])
    rows[3] = (98.0, 99.0, 97.5, 98.8)  # the 11:00 bar opens at 98; the price at 11:10 is 99.5 (10:30 bar's close)
    broker, clock = make({}, ny(1, 11, 10), market=IntradayMarket({("AAA", NOV[1]): rows}))
    order = broker.submit(request("l1", "AAA", BUY, 10, LIMIT, limit_price=98.5))
    clock.set(ny(1, 11, 30))
    assert broker.get_order(order.id).filled_avg_price == 98.5  # traded through the limit after it was sent

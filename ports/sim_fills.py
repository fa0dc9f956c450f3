"""The fill rules of the simulated broker, as pure functions over prices and bars.

What the broker knows of a session is a list of bars, each known from its end on (`Print`): from daily data the
opening print (the open, at 09:30) and the rest of the day (open, high, low, close, known at the close); from an
intraday source every intraday bar, after an opening print at the first bar's open. Orders never see a bar before
it ends, and a decision never sees a price that its own order then fills at after the fact.

Costs: a market order pays half the cap tier's quoted spread plus 2 bp of slippage on top of the current price
(0.05% spread for large caps, 0.10% mid, 0.20% small; an unknown cap counts as small). Commission is zero.

A working order over one bar it was working for (`settle`):
- market (waiting for the open): the bar's open, with the costs;
- stop and trailing stop (sell): a bar that opens at or through the stop fills at its open (a gap), otherwise a
  bar whose low reaches the stop fills at the stop less the costs: a triggered stop is a market order, so it gets
  slippage beyond its level;
- limit: a bar that opens through the limit fills at its open; otherwise the bar must trade THROUGH the limit (its
  low below a buy limit, its high above a sell limit; a touch is not a fill) and fills at the limit, no costs.
- Inside one bar the order of the high and the low is unknown, so the worse one for the holder is taken: a trailing
  stop's mark is raised by the bar's high only after the bar (its stop is the mark reached by the open), and when a
  stop and a limit could both have filled in one bar the stop goes first (`PRIORITY`).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from common.types import BUY, LIMIT, MARKET, SELL, STOP, TRAILING_STOP

SPREADS = {"large": 0.0005, "mid": 0.0010, "small": 0.0020}
SLIPPAGE = 0.0002


@dataclass(frozen=True)
class Resting:
    """What the fill rules need to know about one working order."""

    type: str
    side: str
    cost_rate: float
    limit_price: float | None = None
    stop_price: float | None = None
    trail_percent: float | None = None
    hwm: float | None = None


def cost_rate(cap: str | None) -> float:
    """Half the cap tier's spread plus slippage, as a fraction of the price."""
    spread = SPREADS.get((cap or "").strip().lower(), SPREADS["small"])
    return spread / 2.0 + SLIPPAGE


def round_price(price: float) -> float:
    """Cents, or 4 decimals below $1; half-up on the decimal value so 100.045 becomes 100.05, not 100.04."""
    places = Decimal("0.01") if abs(price) >= 1.0 else Decimal("0.0001")
    return float(Decimal(f"{price:.8f}").quantize(places, rounding=ROUND_HALF_UP))


def market_price(side: str, price: float, rate: float) -> float:
    """A market fill: the buyer pays up, the seller gives up, by the cost rate."""
    return round_price(price * (1.0 + rate) if side == BUY else price * (1.0 - rate))


@functools.lru_cache(maxsize=65536)  # a mark that has not moved is priced again and again
def trailing_stop_price(hwm: float, trail_percent: float) -> float:
    return round_price(hwm * (1.0 - trail_percent / 100.0))


@dataclass(frozen=True)
class Print:
    """One bar of a session as the broker sees it: it starts at session fraction `start` and is known from `end` on.
    """

    end: float
    open: float
    high: float
    low: float
    close: float
    start: float = 0.0


# Which working order of one bar fills first when several could: stops before market orders before limits, the
# worse outcome for the holder when the bar's order of prices is unknown.
PRIORITY = {STOP: 0, TRAILING_STOP: 0, MARKET: 1, LIMIT: 2}


def _stop_fill(stop: float, bar: Print, rate: float, from_open: bool) -> float | None:
    if from_open and bar.open <= stop:
        return market_price(SELL, bar.open, rate)  # gapped through: a market order at the open
    if bar.low <= stop:
        return market_price(SELL, stop, rate)
    return None


def settle(order: Resting, bar: Print, from_open: bool = True) -> tuple[float | None, float | None]:
    """(fill price or None, high-water mark after the bar) of a working order over one bar it was working for.

    `from_open` False: the order was sent during the bar, after its open, so the open is a price it never had a
    chance at; only the bar's high and low can fill it."""
    if order.type == MARKET:
        return market_price(order.side, bar.open, order.cost_rate), order.hwm
    if order.type == LIMIT and order.side == BUY:
        if from_open and bar.open <= order.limit_price:
            return round_price(bar.open), order.hwm
        return (order.limit_price if bar.low < order.limit_price else None), order.hwm
    if order.type == LIMIT:
        if from_open and bar.open >= order.limit_price:
            return round_price(bar.open), order.hwm
        return (order.limit_price if bar.high > order.limit_price else None), order.hwm
    if order.type == STOP:
        return _stop_fill(order.stop_price, bar, order.cost_rate, from_open), order.hwm
    if order.type == TRAILING_STOP:
        if from_open and bar.open <= trailing_stop_price(order.hwm, order.trail_percent):
            return market_price(SELL, bar.open, order.cost_rate), order.hwm
        mark = max(order.hwm, bar.open) if from_open else order.hwm
        filled = _stop_fill(trailing_stop_price(mark, order.trail_percent), bar, order.cost_rate, False)
        return filled, (mark if filled is not None else max(mark, bar.high))
    raise ValueError(f"unsupported order type {order.type!r}")


def immediate_fill(order: Resting, price: float) -> float | None:
    """The fill price of an order submitted during the session when the current price is `price`, or None to rest.

    A marketable order trades like a market order (paying the costs), but a limit never fills beyond its limit.
    """
    if order.type == MARKET:
        return market_price(order.side, price, order.cost_rate)
    if order.type == LIMIT and order.side == BUY and price <= order.limit_price:
        return min(order.limit_price, market_price(BUY, price, order.cost_rate))
    if order.type == LIMIT and order.side != BUY and price >= order.limit_price:
        return max(order.limit_price, market_price(order.side, price, order.cost_rate))
    if order.type == STOP and price <= order.stop_price:
        return market_price(order.side, price, order.cost_rate)
    if order.type == TRAILING_STOP and price <= trailing_stop_price(order.hwm, order.trail_percent):
        return market_price(order.side, price, order.cost_rate)
    return None

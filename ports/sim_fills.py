"""The fill rules of the simulated broker, as pure functions over prices and intraday path points.

Costs: a market order pays half the cap tier's quoted spread plus 2 bp of slippage on top of the current path
price (0.05% spread for large caps, 0.10% mid, 0.20% small; an unknown cap counts as small). Commission is zero.

Triggers: a resting order is checked along the straight path segments of `pathmodel.path_points`. When the first
point of a walk (the session open, after an overnight gap) is already through the order's level, the order fills at
that point's price; when the path crosses the level inside a segment, it fills at the level itself. A trailing
stop's high-water mark follows the path highs and its stop is the mark less the trail.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Sequence

from common.types import BUY, LIMIT, MARKET, STOP, TRAILING_STOP

SPREADS = {"large": 0.0005, "mid": 0.0010, "small": 0.0020}
SLIPPAGE = 0.0002

Point = tuple[float, float]  # (session fraction, price)


@dataclass(frozen=True)
class Trigger:
    """Where along a walk an order fills: the session fraction and the (rounded) fill price."""

    fraction: float
    price: float


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


@functools.lru_cache(maxsize=65536)  # a mark that has not moved is priced again at every walk
def trailing_stop_price(hwm: float, trail_percent: float) -> float:
    return round_price(hwm * (1.0 - trail_percent / 100.0))


def first_at_or_below(points: Sequence[Point], level: float) -> Trigger | None:
    """The first place the path trades at or below `level`."""
    f0, p0 = points[0]
    if p0 <= level:
        return Trigger(f0, round_price(p0))
    for (fa, pa), (fb, pb) in zip(points, points[1:]):
        if pb <= level:
            return Trigger(fa + (fb - fa) * (pa - level) / (pa - pb), round_price(level))
    return None


def first_at_or_above(points: Sequence[Point], level: float) -> Trigger | None:
    """The first place the path trades at or above `level`."""
    f0, p0 = points[0]
    if p0 >= level:
        return Trigger(f0, round_price(p0))
    for (fa, pa), (fb, pb) in zip(points, points[1:]):
        if pb >= level:
            return Trigger(fa + (fb - fa) * (level - pa) / (pb - pa), round_price(level))
    return None


def walk_trailing(points: Sequence[Point], hwm: float, trail_percent: float) -> tuple[Trigger | None, float]:
    """Follow a sell trailing stop along the path: (trigger or None, high-water mark reached).

    On a rising segment the price is at (or under) the new high and the stop trails below it, so only a falling
    segment can reach the stop, and while falling the mark, hence the stop, stays put.
    """
    f0, p0 = points[0]
    if p0 <= trailing_stop_price(hwm, trail_percent):
        return Trigger(f0, round_price(p0)), hwm
    hwm = max(hwm, p0)
    for (fa, pa), (fb, pb) in zip(points, points[1:]):
        if pb >= pa:
            hwm = max(hwm, pb)
            continue
        stop = trailing_stop_price(hwm, trail_percent)
        if pb <= stop:
            return Trigger(fa + (fb - fa) * (pa - stop) / (pa - pb), stop), hwm
    return None, hwm


def walk(order: Resting, points: Sequence[Point]) -> tuple[Trigger | None, float | None]:
    """Where a working order fills along `points` (None if it does not), and its high-water mark afterwards."""
    if order.type == MARKET:
        f0, p0 = points[0]
        return Trigger(f0, market_price(order.side, p0, order.cost_rate)), order.hwm
    if order.type == LIMIT and order.side == BUY:
        hit = first_at_or_below(points, order.limit_price)
        return (None if hit is None else Trigger(hit.fraction, min(hit.price, order.limit_price))), order.hwm
    if order.type == LIMIT:
        hit = first_at_or_above(points, order.limit_price)
        return (None if hit is None else Trigger(hit.fraction, max(hit.price, order.limit_price))), order.hwm
    if order.type == STOP:
        return first_at_or_below(points, order.stop_price), order.hwm
    if order.type == TRAILING_STOP:
        return walk_trailing(points, order.hwm, order.trail_percent)
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
    return None

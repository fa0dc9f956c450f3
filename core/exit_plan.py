"""How an exit is executed (SPEC section 8): a pure state machine over one exit's sell orders. No I/O, no clock.

The caller persists an `ExitState`, reports the working order's broker status and cumulative fill, and carries out
the `Action` that `next_action` returns, then stores `action.next_state`. Time always comes in as `now`, so the
same code runs live, in the simulator and in tests.

Strategies by priority (SPEC 8 table):
| priority | strategy     | first order                          | timeout | walks | after the walks      |
|----------|--------------|--------------------------------------|---------|-------|----------------------|
| CRITICAL | market       | market                               | 5 s     | -     | market re-sent       |
| HIGH     | aggressive   | limit at the bid                     | 10 s    | 2     | market               |
| MEDIUM   | fair         | limit at mid                         | 30 s    | 5     | market               |
| LOW      | conservative | limit a quarter spread above mid     | 60 s    | 10    | market               |

Decisions where the SPEC leaves room:
- A walk re-prices from the CURRENT quote: limit = start(quote) - walks_done x step, where step is a fixed fraction
  of the current spread and at least one tick. The fractions make the fair and conservative walks end exactly at the
  bid (fair: 5 x 0.1 spread from mid; conservative: 10 x 0.075 spread from mid + 0.25 spread); the aggressive walk
  goes half a spread below the bid per step, into the book, since a HIGH exit must get out within its run.
- After its last walk times out, every strategy escalates to a market order. By then the limit has sat at the bid
  without a fill, so waiting longer only lets the price run away from an exit the engine has already decided on.
- A market order is given MARKET_TIMEOUT_S (5 s) and is re-sent at most MAX_MARKET_ATTEMPTS times in all; a market
  order that still does not fill (a halted stock, a closed market) gives up, and the caller raises a critical alert.
- Changing an order is cancel, wait for the broker to confirm the final status and fill, then submit the remainder
  (state "canceling"): a replace could race a fill and sell twice.
- A limit needs a sound two-sided quote. Without one, CRITICAL and HIGH exits go to market at once (they must finish
  in the run); MEDIUM and LOW wait one timeout for a quote.
- An order rejected by the broker gives up (a rejection does not go away by sending the same order again). An order
  that expired or was canceled by someone else is followed by the next step for the remaining quantity.
- Limits are rounded to the tick: $0.01 at or above $1, $0.0001 below $1 (US equities, Reg NMS).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from common.types import OPEN_STATUSES
from core.exit_rules import CRITICAL, HIGH, LOW, MEDIUM

MARKET, LIMIT = "market", "limit"

# ExitState.state values.
NEW = "new"  # no order working: before the first order, or between two orders
SUBMITTED = "submitted"  # the first order is working
WALKED = "walked"  # a re-priced limit is working
ESCALATED = "escalated"  # a market order is working after limits (or a CRITICAL re-send)
CANCELING = "canceling"  # cancel requested; waiting for the broker's final status and fill
FILLED = "filled"
GIVEN_UP = "given_up"
WORKING_STATES = frozenset({SUBMITTED, WALKED, ESCALATED})
FINAL_STATES = frozenset({FILLED, GIVEN_UP})

# Action.kind values.
SUBMIT, WAIT, CANCEL, DONE, GIVE_UP = "submit", "wait", "cancel", "done", "give_up"

MARKET_TIMEOUT_S = 5.0
MAX_MARKET_ATTEMPTS = 3
CANCEL_POLL_S = 0.5
CANCEL_TIMEOUT_S = 10.0

@dataclass(frozen=True)
class Strategy:
    name: str
    first_order_type: str  # MARKET or LIMIT
    timeout_s: float  # how long each limit may work before the next step
    walks: int  # re-priced limits after the first one, before escalating to market
    start_offset_spreads: float  # first limit = mid + this x spread (-0.5 is the bid)
    walk_step_spreads: float  # each walk lowers the limit by this x spread (at least one tick)


STRATEGIES: dict[str, Strategy] = {
    CRITICAL: Strategy("market", MARKET, MARKET_TIMEOUT_S, 0, 0.0, 0.0),
    HIGH: Strategy("aggressive", LIMIT, 10.0, 2, -0.5, 0.5),
    MEDIUM: Strategy("fair", LIMIT, 30.0, 5, 0.0, 0.1),
    LOW: Strategy("conservative", LIMIT, 60.0, 10, 0.25, 0.075),
}


def strategy_for(priority: str) -> Strategy:
    try:
        return STRATEGIES[priority]
    except KeyError:
        raise ValueError(f"unknown exit priority {priority!r} (CRITICAL, HIGH, MEDIUM or LOW)") from None


def must_complete_in_run(priority: str) -> bool:
    """CRITICAL and HIGH exits reach a fill (or market, then give up) within the run that started them."""
    return priority in (CRITICAL, HIGH)


# --- prices -------------------------------------------------------------------------------------------------------

def price_tick(price: float) -> float:
    return 0.01 if price >= 1.0 else 0.0001


def round_price(price: float) -> float:
    """To the tick, halves away from zero: 12.345 -> 12.35, 0.12345 -> 0.1235."""
    tick = Decimal("0.01") if price >= 1.0 else Decimal("0.0001")
    return float(Decimal(repr(price)).quantize(tick, rounding=ROUND_HALF_UP))


def sound_quote(bid: float | None, ask: float | None) -> bool:
    """A two-sided quote a limit can be priced from: both sides known, positive and not crossed."""
    return (bid is not None and ask is not None and math.isfinite(bid) and math.isfinite(ask)
            and 0 < bid <= ask)


def limit_price_for(strategy: Strategy, walks_done: int, bid: float | None, ask: float | None) -> float | None:
    """The sell limit after `walks_done` walks, from the current quote; None without a sound quote.

    The step is at least one tick, so every walk moves even on a locked or one-cent market; passing below the bid
    only makes the order marketable.
    """
    if bid is None or ask is None or not sound_quote(bid, ask):
        return None
    spread, mid = ask - bid, (ask + bid) / 2
    start = mid + strategy.start_offset_spreads * spread
    step = max(strategy.walk_step_spreads * spread, price_tick(bid))
    raw_limit = start - walks_done * step
    floor = price_tick(raw_limit)  # a limit walked through zero still has to be a valid price
    return max(round_price(raw_limit), floor)


# --- state and actions --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ExitState:
    """One exit's execution, persisted between runs (exit_attempts rows are written from its actions)."""

    priority: str
    remaining_qty: int  # still to sell
    attempt: int = 0  # orders sent so far
    state: str = NEW
    order_type: str | None = None  # of the working (or last) order
    limit_price: float | None = None
    submitted_at: datetime | None = None
    filled_qty: int = 0  # sold so far across all orders, the working order's known fill included
    order_qty: int = 0  # quantity of the working (or last) order
    market_attempts: int = 0
    cancel_requested_at: datetime | None = None

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES


@dataclass(frozen=True)
class Action:
    """What the caller does now, and the state to store once it is done.

    submit: send a new sell order (order_type, limit_price for limits, qty).
    wait: come back at wait_until (or later) with the working order's status.
    cancel: cancel the working order and come back with its FINAL status and fill; the next order is priced then.
    done: everything sold. give_up: stop trying (reason); the caller alerts and leaves the rest to the next run.
    """

    kind: str
    next_state: ExitState
    order_type: str | None = None
    limit_price: float | None = None
    qty: int = 0
    wait_until: datetime | None = None
    reason: str = ""


def start_exit(priority: str, qty: int) -> ExitState:
    strategy_for(priority)  # an unknown priority fails here, not in the middle of an exit
    if qty <= 0:
        raise ValueError(f"an exit needs a positive quantity, got {qty}")
    return ExitState(priority=priority, remaining_qty=qty)


def _limit_order_count(strategy: Strategy) -> int:
    return 0 if strategy.first_order_type == MARKET else strategy.walks + 1


def _order_timeout(state: ExitState) -> timedelta:
    seconds = MARKET_TIMEOUT_S if state.order_type == MARKET else strategy_for(state.priority).timeout_s
    return timedelta(seconds=seconds)


# --- transitions --------------------------------------------------------------------------------------------------

def _with_order_fill(state: ExitState, order_status: str | None, order_filled_qty: int) -> ExitState:
    """Count the working order's new fills: its cumulative fill minus what this state already counted."""
    counted = state.order_qty - state.remaining_qty
    reported = state.order_qty if order_status == "filled" else min(max(order_filled_qty, 0), state.order_qty)
    new_fill = max(reported - counted, 0)
    return replace(state, filled_qty=state.filled_qty + new_fill, remaining_qty=state.remaining_qty - new_fill)


def _done(state: ExitState) -> Action:
    return Action(DONE, replace(state, state=FILLED), reason=f"sold {state.filled_qty}")


def _give_up(state: ExitState, reason: str) -> Action:
    return Action(GIVE_UP, replace(state, state=GIVEN_UP), reason=reason)


def _submit_market(state: ExitState, attempt: int, now: datetime, why: str) -> Action:
    if state.market_attempts >= MAX_MARKET_ATTEMPTS:
        return _give_up(state, f"market order unfilled after {state.market_attempts} attempts; "
                               f"{state.remaining_qty} left")
    first_of_exit = attempt == 1 and strategy_for(state.priority).first_order_type == MARKET
    sent = replace(state, attempt=attempt, state=SUBMITTED if first_of_exit else ESCALATED, order_type=MARKET,
                   limit_price=None, submitted_at=now, order_qty=state.remaining_qty,
                   market_attempts=state.market_attempts + 1, cancel_requested_at=None)
    return Action(SUBMIT, sent, MARKET, None, sent.order_qty, reason=why)


def _submit_limit(state: ExitState, attempt: int, limit: float, now: datetime) -> Action:
    walks_done = attempt - 1
    sent = replace(state, attempt=attempt, state=SUBMITTED if walks_done == 0 else WALKED, order_type=LIMIT,
                   limit_price=limit, submitted_at=now, order_qty=state.remaining_qty, cancel_requested_at=None)
    strategy = strategy_for(state.priority)
    why = f"{strategy.name} limit" if walks_done == 0 else f"{strategy.name} walk {walks_done} of {strategy.walks}"
    return Action(SUBMIT, sent, LIMIT, limit, sent.order_qty, reason=why)


def _send_next(state: ExitState, bid: float | None, ask: float | None, now: datetime) -> Action:
    """No order is working: send the next step of the strategy for what is left."""
    strategy = strategy_for(state.priority)
    attempt = state.attempt + 1
    if state.order_type == MARKET or attempt > _limit_order_count(strategy):
        # Once at market an exit never goes back to a limit.
        why = "market" if attempt == 1 else f"escalate to market after {state.attempt} orders"
        return _submit_market(state, attempt, now, why)
    limit = limit_price_for(strategy, attempt - 1, bid, ask)
    if limit is not None:
        return _submit_limit(state, attempt, limit, now)
    if must_complete_in_run(state.priority):
        return _submit_market(state, attempt, now, f"no usable quote (bid {bid}, ask {ask}): market")
    idle = replace(state, state=NEW)
    return Action(WAIT, idle, wait_until=now + timedelta(seconds=strategy.timeout_s),
                  reason=f"no usable quote (bid {bid}, ask {ask}) to price a limit")


def _follow_working(state: ExitState, bid: float | None, ask: float | None, now: datetime,
                    order_status: str | None, filled_qty: int) -> Action:
    state = _with_order_fill(state, order_status, filled_qty)
    if state.remaining_qty <= 0:
        return _done(state)
    if order_status == "rejected":
        return _give_up(state, f"{state.order_type} order rejected by the broker; {state.remaining_qty} left")
    if order_status is not None and order_status not in OPEN_STATUSES:
        # Expired or canceled by someone else: nothing is working, so go straight to the next step.
        return _send_next(replace(state, state=NEW), bid, ask, now)
    deadline = state.submitted_at + _order_timeout(state) if state.submitted_at else now
    if now < deadline:
        return Action(WAIT, state, wait_until=deadline, reason=f"{state.order_type} order working")
    canceling = replace(state, state=CANCELING, cancel_requested_at=now)
    return Action(CANCEL, canceling, reason=f"{state.order_type} order unfilled after {_order_timeout(state)}")


def _follow_cancel(state: ExitState, bid: float | None, ask: float | None, now: datetime,
                   order_status: str | None, filled_qty: int) -> Action:
    state = _with_order_fill(state, order_status, filled_qty)
    if state.remaining_qty <= 0:
        return _done(state)
    if order_status is None or order_status in OPEN_STATUSES:
        requested_at = state.cancel_requested_at or now
        give_up_at = requested_at + timedelta(seconds=CANCEL_TIMEOUT_S)
        if now >= give_up_at:
            return _give_up(state, f"cancel not confirmed within {CANCEL_TIMEOUT_S:g} s; reconcile the order")
        return Action(WAIT, state, wait_until=min(now + timedelta(seconds=CANCEL_POLL_S), give_up_at),
                      reason="waiting for the cancel to be confirmed")
    return _send_next(replace(state, state=NEW, cancel_requested_at=None), bid, ask, now)


def next_action(state: ExitState, bid: float | None, ask: float | None, now: datetime,
                order_status: str | None = None, filled_qty: int = 0) -> Action:
    """The next step of an exit.

    order_status and filled_qty describe the working order (the broker's status and its cumulative filled
    quantity); they are ignored when no order is working. None as a status means no news: the order is taken to be
    still working.
    """
    if state.state == FILLED:
        return _done(state)
    if state.state == GIVEN_UP:
        return _give_up(state, "exit already given up")
    if state.state in WORKING_STATES:
        return _follow_working(state, bid, ask, now, order_status, filled_qty)
    if state.state == CANCELING:
        return _follow_cancel(state, bid, ask, now, order_status, filled_qty)
    if state.state == NEW:
        return _send_next(state, bid, ask, now)
    raise ValueError(f"unknown exit state {state.state!r}")

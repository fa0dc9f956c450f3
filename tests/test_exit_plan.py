"""Exit execution state machine: each strategy's sequence over injected times, fills, failures and rounding."""
from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from core.exit_plan import (
    CANCEL,
    CANCELING,
    DONE,
    ESCALATED,
    FILLED,
    GIVE_UP,
    GIVEN_UP,
    LIMIT,
    MARKET,
    NEW,
    SUBMIT,
    SUBMITTED,
    WAIT,
    WALKED,
    ExitState,
    limit_price_for,
    must_complete_in_run,
    next_action,
    round_price,
    start_exit,
    strategy_for,
)
from core.exit_rules import CRITICAL, HIGH, LOW, MEDIUM

T0 = datetime(2024, 6, 3, 14, 0, tzinfo=timezone.utc)
BID, ASK = 99.80, 100.20  # mid 100.00, spread 0.40: every strategy's limits land on whole cents


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def drive(priority: str, qty: int = 100, bid: float | None = BID, ask: float | None = ASK,
          market_fills: bool = True) -> tuple[list[tuple[float, str, float | None, int]], ExitState]:
    """Run an exit against a broker that never fills a limit, confirms cancels at once and fills market orders
    (when market_fills). Returns the submitted orders as (seconds after start, type, limit, qty) and the end state."""
    state, now, status, filled = start_exit(priority, qty), T0, None, 0
    submitted = []
    for _ in range(200):
        action = next_action(state, bid, ask, now, status, filled)
        state = action.next_state
        if action.kind in (DONE, GIVE_UP):
            return submitted, state
        if action.kind == SUBMIT:
            submitted.append(((now - T0).total_seconds(), action.order_type, action.limit_price, action.qty))
            status = "filled" if market_fills and action.order_type == MARKET else "new"
            filled = action.qty if status == "filled" else 0
        elif action.kind == CANCEL:
            status = "canceled"
        elif action.kind == WAIT:
            now = action.wait_until
    raise AssertionError("the exit never ended")


def test_critical_sends_a_market_order_at_once():
    orders, state = drive(CRITICAL)
    assert orders == [(0.0, MARKET, None, 100)]
    assert (state.state, state.filled_qty, state.remaining_qty) == (FILLED, 100, 0)


def test_critical_resends_market_every_five_seconds_then_gives_up():
    orders, state = drive(CRITICAL, market_fills=False)
    assert orders == [(0.0, MARKET, None, 100), (5.0, MARKET, None, 100), (10.0, MARKET, None, 100)]
    assert (state.state, state.market_attempts, state.remaining_qty) == (GIVEN_UP, 3, 100)


def test_high_is_a_limit_at_the_bid_walked_twice_then_market_within_thirty_seconds():
    orders, state = drive(HIGH)
    assert orders == [(0.0, LIMIT, 99.80, 100), (10.0, LIMIT, 99.60, 100), (20.0, LIMIT, 99.40, 100),
                      (30.0, MARKET, None, 100)]
    assert (state.state, state.attempt, state.filled_qty) == (FILLED, 4, 100)


def test_medium_is_fair_at_mid_walking_five_times_to_the_bid_then_market():
    orders, state = drive(MEDIUM)
    assert orders == [(0.0, LIMIT, 100.00, 100), (30.0, LIMIT, 99.96, 100), (60.0, LIMIT, 99.92, 100),
                      (90.0, LIMIT, 99.88, 100), (120.0, LIMIT, 99.84, 100), (150.0, LIMIT, 99.80, 100),
                      (180.0, MARKET, None, 100)]
    assert state.state == FILLED


def test_low_is_conservative_above_mid_walking_ten_times_to_the_bid_then_market():
    orders, state = drive(LOW)
    limits = [limit for _, order_type, limit, _ in orders if order_type == LIMIT]
    assert limits == [100.10, 100.07, 100.04, 100.01, 99.98, 99.95, 99.92, 99.89, 99.86, 99.83, 99.80]
    assert [seconds for seconds, *_ in orders] == [60.0 * n for n in range(12)]
    assert orders[-1] == (660.0, MARKET, None, 100)
    assert state.state == FILLED


def test_states_name_each_step():
    state = start_exit(HIGH, 10)
    first = next_action(state, BID, ASK, T0)
    assert (first.kind, first.next_state.state, first.next_state.submitted_at) == (SUBMIT, SUBMITTED, T0)
    waiting = next_action(first.next_state, BID, ASK, at(9.9), "new", 0)
    assert (waiting.kind, waiting.wait_until, waiting.next_state.state) == (WAIT, at(10), SUBMITTED)
    cancel = next_action(first.next_state, BID, ASK, at(10), "new", 0)
    assert (cancel.kind, cancel.next_state.state, cancel.next_state.cancel_requested_at) == (CANCEL, CANCELING,
                                                                                              at(10))
    walk = next_action(cancel.next_state, BID, ASK, at(10.5), "canceled", 0)
    assert (walk.kind, walk.next_state.state, walk.next_state.attempt) == (SUBMIT, WALKED, 2)
    assert walk.reason == "aggressive walk 1 of 2"


def test_partial_fills_reduce_the_remaining_quantity():
    sent = next_action(start_exit(HIGH, 100), BID, ASK, T0).next_state
    waiting = next_action(sent, BID, ASK, at(5), "partially_filled", 30)
    assert (waiting.kind, waiting.next_state.filled_qty, waiting.next_state.remaining_qty) == (WAIT, 30, 70)
    cancel = next_action(waiting.next_state, BID, ASK, at(10), "partially_filled", 40)
    assert (cancel.kind, cancel.next_state.remaining_qty) == (CANCEL, 60)
    # Five more shares filled while the cancel was on its way: the walk sells only what is left.
    walk = next_action(cancel.next_state, BID, ASK, at(10.2), "canceled", 45)
    assert (walk.kind, walk.order_type, walk.limit_price, walk.qty) == (SUBMIT, LIMIT, 99.60, 55)
    assert (walk.next_state.filled_qty, walk.next_state.remaining_qty) == (45, 55)
    more = next_action(walk.next_state, BID, ASK, at(12), "partially_filled", 20)
    assert (more.next_state.filled_qty, more.next_state.remaining_qty) == (65, 35)
    done = next_action(more.next_state, BID, ASK, at(13), "filled", 55)
    assert (done.kind, done.next_state.state, done.next_state.filled_qty, done.next_state.remaining_qty) == (
        DONE, FILLED, 100, 0)


def test_a_repeated_fill_report_is_counted_once():
    sent = next_action(start_exit(MEDIUM, 10), BID, ASK, T0).next_state
    once = next_action(sent, BID, ASK, at(1), "partially_filled", 4).next_state
    twice = next_action(once, BID, ASK, at(2), "partially_filled", 4).next_state
    assert (twice.filled_qty, twice.remaining_qty) == (4, 6)


def test_a_filled_status_ends_the_exit_and_stays_done():
    sent = next_action(start_exit(LOW, 7), BID, ASK, T0).next_state
    done = next_action(sent, BID, ASK, at(3), "filled", 7)
    assert (done.kind, done.next_state.state, done.next_state.filled_qty) == (DONE, FILLED, 7)
    again = next_action(done.next_state, BID, ASK, at(100))
    assert (again.kind, again.next_state) == (DONE, done.next_state)


def test_fill_found_when_the_cancel_is_confirmed_ends_the_exit():
    sent = next_action(start_exit(MEDIUM, 10), BID, ASK, T0).next_state
    canceling = next_action(sent, BID, ASK, at(30), "new", 0).next_state
    done = next_action(canceling, BID, ASK, at(30.5), "filled", 10)
    assert (done.kind, done.next_state.filled_qty) == (DONE, 10)


def test_a_rejected_order_gives_up_with_a_reason():
    sent = next_action(start_exit(HIGH, 10), BID, ASK, T0).next_state
    action = next_action(sent, BID, ASK, at(1), "rejected", 0)
    assert (action.kind, action.next_state.state) == (GIVE_UP, GIVEN_UP)
    assert "rejected" in action.reason
    assert next_action(action.next_state, BID, ASK, at(2)).kind == GIVE_UP


def test_an_order_expired_elsewhere_goes_straight_to_the_next_step():
    sent = next_action(start_exit(MEDIUM, 10), BID, ASK, T0).next_state
    action = next_action(sent, BID, ASK, at(4), "expired", 3)
    assert (action.kind, action.limit_price, action.qty, action.next_state.attempt) == (SUBMIT, 99.96, 7, 2)


def test_an_unconfirmed_cancel_is_polled_then_given_up_after_ten_seconds():
    sent = next_action(start_exit(HIGH, 10), BID, ASK, T0).next_state
    canceling = next_action(sent, BID, ASK, at(10), "new", 0).next_state
    poll = next_action(canceling, BID, ASK, at(11), "pending_cancel", 0)
    assert (poll.kind, poll.wait_until) == (WAIT, at(11.5))
    assert next_action(canceling, BID, ASK, at(19.9), "pending_cancel", 0).wait_until == at(20)
    stuck = next_action(canceling, BID, ASK, at(20), "pending_cancel", 0)
    assert (stuck.kind, stuck.next_state.state) == (GIVE_UP, GIVEN_UP)


def test_no_quote_sends_high_to_market_and_stays_there():
    orders, state = drive(HIGH, bid=None, ask=None, market_fills=False)
    assert orders == [(0.0, MARKET, None, 100), (5.0, MARKET, None, 100), (10.0, MARKET, None, 100)]
    assert state.state == GIVEN_UP
    first = next_action(start_exit(HIGH, 5), float("nan"), 100.0, T0)
    canceled = replace(first.next_state, state=CANCELING, cancel_requested_at=at(5))
    # The quote came back, but an exit that went to market never returns to a limit.
    resend = next_action(canceled, BID, ASK, at(5.1), "canceled", 0)
    assert (resend.order_type, resend.next_state.state) == (MARKET, ESCALATED)


def test_no_quote_makes_medium_and_low_wait_for_one():
    action = next_action(start_exit(MEDIUM, 10), 100.5, 100.0, T0)  # crossed: bid above ask
    assert (action.kind, action.wait_until, action.next_state.state) == (WAIT, at(30), NEW)
    later = next_action(action.next_state, BID, ASK, at(30))
    assert (later.kind, later.order_type, later.limit_price) == (SUBMIT, LIMIT, 100.00)
    assert next_action(start_exit(LOW, 10), 0.0, 100.0, T0).wait_until == at(60)


def test_only_critical_and_high_must_complete_in_the_run():
    assert [must_complete_in_run(p) for p in (CRITICAL, HIGH, MEDIUM, LOW)] == [True, True, False, False]
    assert [strategy_for(p).name for p in (CRITICAL, HIGH, MEDIUM, LOW)] == [
        "market", "aggressive", "fair", "conservative"]


def test_start_exit_refuses_nonsense():
    with pytest.raises(ValueError, match="priority"):
        start_exit("URGENT", 10)
    with pytest.raises(ValueError, match="positive"):
        start_exit(HIGH, 0)


@pytest.mark.parametrize("raw, rounded", [
    (12.345, 12.35), (12.344, 12.34), (1.0, 1.0), (0.12345, 0.1235), (0.12344, 0.1234), (0.99995, 1.0),
    (100.004999, 100.0),
])
def test_round_price_to_cents_or_hundredths_of_a_cent_below_one_dollar(raw, rounded):
    assert round_price(raw) == rounded


def test_walks_move_at_least_one_tick_on_a_locked_market():
    fair = strategy_for(MEDIUM)
    assert [limit_price_for(fair, walks, 10.0, 10.0) for walks in range(3)] == [10.0, 9.99, 9.98]


def test_sub_dollar_limits_use_four_decimals():
    fair = strategy_for(MEDIUM)
    assert [limit_price_for(fair, walks, 0.5012, 0.5020) for walks in range(3)] == [0.5016, 0.5015, 0.5014]
    aggressive = strategy_for(HIGH)
    assert limit_price_for(aggressive, 1, 0.5012, 0.5020) == 0.5008


def test_limits_follow_the_current_quote():
    aggressive = strategy_for(HIGH)
    assert limit_price_for(aggressive, 0, 50.10, 50.30) == 50.10
    assert limit_price_for(aggressive, 1, 49.90, 50.10) == 49.80
    assert limit_price_for(aggressive, 0, None, 50.0) is None

"""One definition of an order's status, checked against every status Alpaca sends (REFERENCE.md, OrderStatus)."""
from __future__ import annotations

import pytest

import executor
from common.types import FINAL_OR_UNSENT, FINAL_STATUSES, OPEN_STATUSES, Order
from core import exit_plan

ALPACA_STATUSES = ("new", "partially_filled", "filled", "done_for_day", "canceled", "expired", "replaced",
                   "pending_cancel", "pending_replace", "pending_review", "accepted", "pending_new",
                   "accepted_for_bidding", "stopped", "rejected", "suspended", "calculated", "held")


def test_every_alpaca_status_is_open_or_final_and_never_both():
    assert set(ALPACA_STATUSES) == OPEN_STATUSES | FINAL_STATUSES
    assert not OPEN_STATUSES & FINAL_STATUSES
    assert set(FINAL_OR_UNSENT) == FINAL_STATUSES | {"not_sent"}


@pytest.mark.parametrize("status", ALPACA_STATUSES)
def test_each_part_reads_a_status_the_same_way(status):
    order = Order("id-1", "ma-x-1-1", "AAPL", "sell", "limit", 10, status)
    assert order.is_open == (status in OPEN_STATUSES)
    polls = []

    class Broker:
        def get_order_by_client_id(self, client_order_id):
            polls.append(client_order_id)
            return order

    class Runtime:
        broker, journal = Broker(), None
        waiter = executor.Waiter(simulated=False, sleep=lambda s: None, monotonic=iter(range(1000)).__next__)

    if status in FINAL_STATUSES:  # a final order is not polled again
        assert executor.wait_filled(Runtime(), order, timeout=5).status == status and polls == []
    state = exit_plan.ExitState(priority="MEDIUM", remaining_qty=10, attempt=1, state=exit_plan.SUBMITTED,
                                order_type="limit", limit_price=10.0, order_qty=10)
    action = exit_plan.next_action(state, 9.9, 10.1, exit_plan.datetime(2024, 6, 14, 15), status, 0)
    if status in OPEN_STATUSES:
        assert action.kind == exit_plan.WAIT or action.kind == exit_plan.CANCEL  # still working
    elif status == "filled":
        assert action.kind == exit_plan.DONE
    elif status == "rejected":
        assert action.kind == exit_plan.GIVE_UP
    else:
        assert action.kind == exit_plan.SUBMIT  # nothing works any more: the next step goes out

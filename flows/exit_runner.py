"""The exit runner: when a held position (stock or option) is due a check, and each exit carried out as a persisted
state machine (core/exit_plan.py decides each step; this module does the broker and journal side of it).

An exit holds its position's lock for every step. Before each order, whatever holds the shares (the stop put back
overnight, a stale sell) is cancelled and the cancel confirmed; the attempt, its order intent and the exit's new state
are written in one transaction before the broker hears of the order, so a command killed at any point resumes the
exit where it stood. A refused order is recorded and the plan gives the exit up with a critical alert.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from common.errors import InsufficientQty, OrderNotFound, OrderRejected
from common.types import LIMIT, MARKET, SELL, OrderRequest, finite
from core import exit_plan, exit_rules
from executor import (
    cancel_and_confirm,
    next_order_id,
    record_intent,
    refresh,
    require_position,
    settle_fills,
    submit,
    waiter_for,
)
from flows import quotes
from journal.reconcile import LIVE_ORDERS
from journal.schema import HELD_STATUSES

if TYPE_CHECKING:  # annotations only: the runtime module wires every port
    from flows.runtime import Runtime

log = logging.getLogger(__name__)
CHECK_INTERVAL = timedelta(minutes=30)


def last_check(journal, trade_id: int) -> datetime | None:
    row = journal.one("SELECT MAX(checked_at) AS at FROM position_checks WHERE trade_id = ? AND action LIKE "
                      "'monitor%'", [trade_id])
    return datetime.fromisoformat(row["at"]) if row and row["at"] else None


def exit_in_progress(journal, trade_id: int) -> bool:
    return journal.one("SELECT 1 FROM exits WHERE trade_id = ? AND state NOT IN ('filled', 'given_up')",
                       [trade_id]) is not None


def is_due(rt: Runtime, trade: dict, position: exit_rules.PositionState, rules: exit_rules.ExitRules) -> bool:
    """Checked every 30 minutes; every run while urgent, exiting or unprotected (stocks and options alike)."""
    last = last_check(rt.journal, trade["id"])
    return (last is None or rt.clock.now() - last >= CHECK_INTERVAL or exit_rules.is_urgent(position, rules)
            or trade["status"] == "unprotected" or exit_in_progress(rt.journal, trade["id"]))


MAX_STEPS_PER_RUN = 40


def _dump(state: exit_plan.ExitState) -> str:
    return json.dumps({k: (v.isoformat() if isinstance(v, datetime) else v)
                       for k, v in dataclasses.asdict(state).items()})


def _load(text: str) -> exit_plan.ExitState:
    raw = json.loads(text)
    for key in ("submitted_at", "cancel_requested_at"):
        raw[key] = datetime.fromisoformat(raw[key]) if raw[key] else None
    return exit_plan.ExitState(**raw)


def start_exit(rt: Runtime, trade: dict, trigger: exit_rules.ExitTrigger,
               triggers: list[exit_rules.ExitTrigger]) -> str:
    journal = rt.journal
    with _position(rt, trade["symbol"]):
        current = journal.one("SELECT status FROM trades WHERE id = ?", [trade["id"]])
        if current["status"] not in HELD_STATUSES or exit_in_progress(journal, trade["id"]):
            return "left to the command that changed it"  # another command closed or started exiting it meanwhile
        state = exit_plan.start_exit(trigger.priority, trigger.qty)
        with journal.atomic():
            exit_id = journal.db.table("exits").insert({
                "trade_id": trade["id"], "symbol": trade["symbol"], "reason": trigger.reason,
                "priority": trigger.priority, "qty": trigger.qty, "partial": int(trigger.partial),
                "tranche": trigger.tranche, "strategy": exit_plan.strategy_for(trigger.priority).name,
                "triggered": json.dumps([{"reason": t.reason, "priority": t.priority, "detail": t.detail}
                                         for t in triggers]),
                "state": state.state, "plan": _dump(state), "created_at": journal.now(),
                "updated_at": journal.now(), "run_id": journal.run_id}).last_pk
        journal.event("info" if trigger.priority in ("MEDIUM", "LOW") else "warning", "alert",
                      f"EXIT {trade['symbol']} x{trigger.qty}: {trigger.reason} ({trigger.priority}) - "
                      f"{trigger.detail}", source="monitor",
                      detail={"kind": "exit_start", "symbol": trade["symbol"], "reason": trigger.reason})
        return advance_exit(rt, journal.one("SELECT * FROM exits WHERE id = ?", [exit_id]))


def _position(rt: Runtime, symbol: str):
    """The position's lock, or PositionBusy: the position is left to the command acting on it, until next run."""

    return require_position(rt, symbol)


def _working_order(rt: Runtime, exit_id: int) -> tuple[dict | None, str | None, int]:
    """The exit's latest order attempt and the broker's status and fill of it. An attempt the broker does not
    know was never sent (its submitter holds no lock any more): `not_sent`, so the plan sends the next step; one it
    refused is `rejected`."""
    journal = rt.journal
    attempt = journal.one("SELECT * FROM exit_attempts WHERE exit_id = ? ORDER BY attempt DESC LIMIT 1", [exit_id])
    if attempt is None:
        return None, None, 0
    order = refresh(rt, attempt["client_order_id"])
    if order is None:
        row = journal.one("SELECT status FROM orders WHERE client_order_id = ?", [attempt["client_order_id"]])
        status = "rejected" if row is not None and row["status"] == "rejected" else "not_sent"
        if row is not None and row["status"] == "pending_submit":
            journal.update_row("orders", "client_order_id", attempt["client_order_id"],
                               {"status": "not_sent", "updated_at": journal.now()})
        journal.db.execute("UPDATE exit_attempts SET status = ? WHERE id = ?", [status, attempt["id"]])
        journal.db.conn.commit()
        return attempt, status, 0
    journal.db.execute("UPDATE exit_attempts SET status = ?, filled_qty = ? WHERE id = ?",
                       [order.status, order.filled_qty, attempt["id"]])
    journal.db.conn.commit()
    return attempt, order.status, order.filled_qty


def advance_exit(rt: Runtime, row: dict) -> str:
    """Advance one exit as far as this run allows, holding its position's lock; returns its state afterwards."""
    with _position(rt, row["symbol"]):
        return _advance_exit(rt, row)


def _advance_exit(rt: Runtime, row: dict) -> str:
    journal = rt.journal
    row = journal.one("SELECT * FROM exits WHERE id = ?", [row["id"]])  # as the last holder of the lock left it
    state = _load(row["plan"])
    trade = journal.one("SELECT * FROM trades WHERE id = ?", [row["trade_id"]])
    if trade["status"] not in HELD_STATUSES and not state.finished:
        state = dataclasses.replace(state, state=exit_plan.GIVEN_UP)
        _persist(journal, row["id"], state)
        return state.state
    for _ in range(MAX_STEPS_PER_RUN):
        attempt, status, filled = _working_order(rt, row["id"])
        snap = quotes.current(rt, [trade["symbol"]])
        action = exit_plan.next_action(state, finite(snap.bid[0]), finite(snap.ask[0]), rt.clock.now(), status, filled)
        if action.kind == exit_plan.SUBMIT:
            if not _submit_exit_order(rt, row, trade, action):
                break  # nothing was sent: the state stays as it was, and the next run tries again
            state = action.next_state
            continue
        keep_going = _carry_out(rt, row, trade, state, action, attempt)
        state = action.next_state
        _persist(journal, row["id"], state)
        if not keep_going:
            break
    _finish(rt, row, trade, state)
    return state.state


def _carry_out(rt: Runtime, row: dict, trade: dict, state: exit_plan.ExitState, action: exit_plan.Action,
               attempt: dict | None) -> bool:
    """Do what the plan says (anything but a submission); False when this run can do no more for the exit."""
    if action.kind == exit_plan.CANCEL:
        order = rt.journal.one("SELECT broker_order_id FROM orders WHERE client_order_id = ?",
                               [attempt["client_order_id"]])
        if order and order["broker_order_id"]:
            try:
                rt.broker.cancel(order["broker_order_id"])
            except (OrderNotFound, OrderRejected) as err:
                log.info("exit cancel: %s", err)
        return True
    if action.kind == exit_plan.WAIT:
        return _wait(rt, row["priority"], action.wait_until)
    if action.kind == exit_plan.GIVE_UP:
        rt.journal.event("critical", "alert", f"exit of {trade['symbol']} ({row['reason']}) given up: "
                         f"{action.reason}; its stop is restored and the position evaluated again next run",
                         source="monitor")
    return False


def _wait(rt: Runtime, priority: str, until: datetime | None) -> bool:
    """CRITICAL and HIGH exits wait inside the run (real time only); the others continue on the next run."""

    waiter = waiter_for(rt)
    if waiter.simulated or not exit_plan.must_complete_in_run(priority) or until is None:
        return False
    seconds = max(0.0, (until - rt.clock.now()).total_seconds())
    waiter.sleep(min(seconds, 15.0))
    return True


def _submit_exit_order(rt: Runtime, row: dict, trade: dict, action: exit_plan.Action) -> bool:
    """Send the plan's next sell. Whatever holds the shares (the stop protect_all put back overnight, a stale sell)
    is cancelled first and the cancel confirmed; then the attempt, its order intent and the exit's new state are
    written in one transaction before the broker hears of it. A refused order is recorded, and the plan gives the
    exit up with a critical alert. False when nothing could be sent (the state is left as it was)."""
    journal, symbol = rt.journal, trade["symbol"]
    holders = [o for o in rt.broker.orders("open", [symbol]) if o.side == SELL and o.symbol == symbol]
    if holders and not cancel_and_confirm(rt, holders):
        journal.event("warning", "alert", f"exit of {symbol} waits: the orders holding its shares did not cancel "
                      "in time", source="monitor")
        return False
    order_type = MARKET if action.order_type == exit_plan.MARKET else LIMIT
    request = OrderRequest(next_order_id(journal, "x", trade["id"]), symbol, SELL, order_type, action.qty,
                           time_in_force="day", limit_price=action.limit_price if order_type == LIMIT else None)
    purpose = "partial" if row["partial"] else "exit"
    with journal.atomic():
        record_intent(journal, request, purpose, trade["id"])
        journal.insert_row("exit_attempts", {
            "exit_id": row["id"], "attempt": action.next_state.attempt, "order_type": order_type,
            "limit_price": action.limit_price, "qty": action.qty, "status": "submitted",
            "client_order_id": request.client_order_id, "created_at": journal.now()})
        _persist(journal, row["id"], action.next_state)
    try:
        order = submit(rt, request, purpose, trade["id"])
    except InsufficientQty:
        order = None  # recorded as rejected by submit()
    if order is None:
        journal.db.execute("UPDATE exit_attempts SET status = 'rejected' WHERE client_order_id = ?",
                           [request.client_order_id])
        journal.db.conn.commit()
    return True


def _persist(journal, exit_id: int, state: exit_plan.ExitState) -> None:
    journal.db.table("exits").update(exit_id, {"state": state.state, "plan": _dump(state),
                                               "attempts": state.attempt, "updated_at": journal.now()})


def _finish(rt: Runtime, row: dict, trade: dict, state: exit_plan.ExitState) -> None:
    settle_fills(rt)  # applies fills to the trade and marks a filled tranche as taken


def settle_one_shot_exits(rt: Runtime) -> list[int]:
    """Exits sent whole by `close`, a scan's close or a flatten (no plan: they are not walked run by run) end here
    when their command could not finish them: given up once the trade is no longer held, or once none of their
    sells is working and they did not fill. A fill is recorded by the trade book as it is applied."""
    journal = rt.journal
    ended = []
    for row in journal.query("SELECT e.id, e.trade_id, t.status FROM exits e JOIN trades t ON t.id = e.trade_id "
                             "WHERE e.plan IS NULL AND e.state NOT IN ('filled', 'given_up')"):
        working = journal.one(f"SELECT 1 FROM exit_attempts a JOIN orders o ON o.client_order_id = a.client_order_id "
                              f"WHERE a.exit_id = ? AND o.{LIVE_ORDERS}", [row["id"]])
        if row["status"] in HELD_STATUSES and working is not None:
            continue
        journal.update_row("exits", "id", row["id"], {"state": "given_up", "updated_at": journal.now()})
        ended.append(row["id"])
    return ended

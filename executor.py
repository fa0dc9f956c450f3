"""Order execution: idempotent submission, entries, closes and stop protection.

Three rules keep a trader's money safe here:
1. Every order has a deterministic client_order_id and its journal row is committed BEFORE the broker call, so a
   process killed at any instant leaves a row that reconciliation can look up; an intent that already has a row is
   never sent again.
2. After an unclear outcome (timeout, 5xx, a duplicate-id rejection) the order is looked up by client_order_id
   before anything else; the broker adapters do this inside submit().
3. After every run each open position has exactly one working stop covering its whole quantity, or it is flagged
   `unprotected` with a critical alert (`protect_all`).
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator

from common.errors import BrokerUnavailable, InsufficientQty, MomentumError, OrderNotFound, OrderRejected, PositionBusy
from common.locks import position_locks
from common.types import BUY, FINAL_OR_UNSENT, MARKET, SELL, TRAILING_STOP, Order, OrderRequest, sql_list
from core import systems
from journal import exports, reconcile, trade_book
from journal.schema import HELD, HELD_STATUSES

if TYPE_CHECKING:  # annotations only: the runtime module wires every port
    from flows.runtime import Runtime

log = logging.getLogger(__name__)
STOP_RETRIES = 3
CLOSE_WAIT_S = 5.0
POLL_S = 0.5
LOCK_WAIT_S = 5.0  # how long a command waits for a position another command is acting on


@dataclass
class Waiter:
    """Polling with an injectable sleep. A simulated clock does not move while a command runs, so there is
    nothing to wait for: the sim answers at once and one look is enough."""

    simulated: bool
    sleep: Callable[[float], None] = time.sleep
    monotonic: Callable[[], float] = time.monotonic

    def until(self, check: Callable[[], bool], timeout: float) -> bool:
        if check():
            return True
        if self.simulated:
            return False
        deadline = self.monotonic() + timeout
        while self.monotonic() < deadline:
            self.sleep(POLL_S)
            if check():
                return True
        return False


def waiter_for(rt: Runtime) -> Waiter:
    return getattr(rt, "waiter", None) or Waiter(simulated=rt.clock.simulated)


# --- client order ids ---------------------------------------------------------------------------------------------

def entry_order_id(symbol: str, session: str, scan_type: str) -> str:
    """One entry per symbol, session and scan: re-running a crashed scan regenerates the same id."""
    return f"ma-e-{symbol}-{session.replace('-', '')}-{scan_type}"[:48]


def next_order_id(journal, kind: str, trade_id: int) -> str:
    """Stops and exits of a trade are numbered from the journal, so the id is the same after a crash."""
    count = journal.one("SELECT COUNT(*) AS n FROM orders WHERE trade_id = ? AND client_order_id LIKE ?",
                        [trade_id, f"ma-{kind}-{trade_id}-%"])["n"]
    return f"ma-{kind}-{trade_id}-{count + 1}"


# --- position locks -----------------------------------------------------------------------------------------------

def position_lock(rt: Runtime, symbol: str, wait: float | None = None):
    """Context manager yielding True while this command holds `symbol`'s position lock (common/locks.py
    PositionLocks); False when another command kept it for `wait` seconds (LOCK_WAIT_S unless given)."""
    return position_locks(rt.journal.path).hold(symbol, LOCK_WAIT_S if wait is None else wait)


@contextlib.contextmanager
def require_position(rt: Runtime, symbol: str, wait: float | None = None) -> Iterator[None]:
    """position_lock that raises PositionBusy (exit 75) when the position stays busy."""
    with position_lock(rt, symbol, wait) as mine:
        if not mine:
            raise PositionBusy(f"{symbol}: another command is acting on this position; try again shortly")
        yield


# --- submission ---------------------------------------------------------------------------------------------------

def record_intent(journal, request: OrderRequest, purpose: str, trade_id: int | None) -> None:
    """The journal row, committed before the broker hears of the order (insert_row is a transaction of its own)."""
    journal.insert_row("orders", {
        "client_order_id": request.client_order_id, "trade_id": trade_id, "symbol": request.symbol,
        "side": request.side, "type": request.type, "qty": request.qty, "time_in_force": request.time_in_force,
        "limit_price": request.limit_price, "stop_price": request.stop_price,
        "trail_percent": request.trail_percent, "purpose": purpose, "status": "pending_submit",
        "created_at": journal.now(), "run_id": journal.run_id})


def store_order(journal, order: Order) -> None:
    previous = journal.one("SELECT status, filled_qty FROM orders WHERE client_order_id = ?", [order.client_order_id])
    if previous is None or (previous["status"], previous["filled_qty"]) != (order.status, order.filled_qty):
        filled_more = previous is not None and order.filled_qty > previous["filled_qty"]
        _audit(journal, order, "fill" if filled_more or (previous is None and order.filled_qty) else "order")
    journal.update_row("orders", "client_order_id", order.client_order_id, {
        "broker_order_id": order.id, "status": order.status, "filled_qty": order.filled_qty,
        "filled_avg_price": order.filled_avg_price, "stop_price": order.stop_price,
        "filled_at": order.filled_at.isoformat() if order.filled_at else None,
        "submitted_at": journal.now(), "updated_at": journal.now()})


def _audit(journal, order: Order, event: str) -> None:
    """Every order state the broker reports, and every fill, also goes to logs/trades_YYYY-MM-DD.csv."""

    row = {"event": event, "client_order_id": order.client_order_id, "broker_order_id": order.id,
           "symbol": order.symbol, "side": order.side, "type": order.type, "qty": order.qty, "status": order.status,
           "filled_qty": order.filled_qty, "filled_avg_price": order.filled_avg_price,
           "limit_price": order.limit_price, "stop_price": order.stop_price, "run_id": journal.run_id}
    try:
        exports.audit_append(audit_dir(journal), row, journal.clock.now())
    except OSError as err:  # the journal still has the order; a full disk must not stop trading
        log.warning("audit CSV not written: %s", err)


def audit_dir(journal):
    return journal.log_dir


def submit(rt: Runtime, request: OrderRequest, purpose: str, trade_id: int | None) -> Order | None:
    """Record, then send. Returns the broker's order, or None when the broker refused it (recorded as rejected).

    BrokerUnavailable propagates with the row left `pending_submit`: the next reconciliation resolves it. The
    symbol's position lock is held from here until the broker has answered, so no reconciliation in another process
    can take the row for one whose submitter died.
    """
    with require_position(rt, request.symbol):
        return _submit(rt, request, purpose, trade_id)


def _submit(rt: Runtime, request: OrderRequest, purpose: str, trade_id: int | None) -> Order | None:
    journal = rt.journal
    existing = journal.one("SELECT status FROM orders WHERE client_order_id = ?", [request.client_order_id])
    if existing is None:
        record_intent(journal, request, purpose, trade_id)
    elif existing["status"] not in ("pending_submit", "not_sent"):
        return refresh(rt, request.client_order_id)  # already sent once: never a second time
    else:
        journal.update_row("orders", "client_order_id", request.client_order_id, {"status": "pending_submit"})
    try:
        order = rt.broker.submit(request)
    except OrderRejected as err:
        journal.update_row("orders", "client_order_id", request.client_order_id, {
            "status": "rejected", "error": str(err)[:300], "updated_at": journal.now()})
        journal.event("error", "order_rejected", f"{request.side} {request.symbol} x{request.qty} "
                      f"({purpose}) rejected: {err}", source="executor")
        if isinstance(err, InsufficientQty):
            raise
        return None
    store_order(journal, order)
    return order


def refresh(rt: Runtime, client_order_id: str) -> Order | None:
    order = rt.broker.get_order_by_client_id(client_order_id)
    if order is not None:
        store_order(rt.journal, order)
    return order


def wait_filled(rt: Runtime, order: Order, timeout: float) -> Order:
    latest = {"order": order}

    def done() -> bool:
        if latest["order"].status in FINAL_OR_UNSENT:
            return True
        latest["order"] = refresh(rt, order.client_order_id) or latest["order"]
        return latest["order"].status in FINAL_OR_UNSENT

    waiter_for(rt).until(done, timeout)
    return latest["order"]


# --- stops --------------------------------------------------------------------------------------------------------

def _protects(order: Order) -> bool:
    """A sell stop that still protects its position (an order being canceled no longer counts)."""
    return (order.side == SELL and order.type in ("stop", TRAILING_STOP) and order.is_open
            and order.status != "pending_cancel")


def working_stops(rt: Runtime, symbol: str) -> list[Order]:
    """The symbol's protecting stops, newest first."""
    return [o for o in rt.broker.orders("open", [symbol]) if _protects(o)]


def working_stops_by_symbol(rt: Runtime, symbols: list[str], open_orders: list[Order] | None = None
                            ) -> dict[str, list[Order]]:
    """working_stops of several symbols from one broker call (or from `open_orders`, that call's answer)."""
    found: dict[str, list[Order]] = {symbol: [] for symbol in symbols}
    if open_orders is None:
        open_orders = rt.broker.orders("open", list(found)) if found else []
    for order in open_orders:
        if order.symbol in found and _protects(order):
            found[order.symbol].append(order)
    return found


def cancel_and_confirm(rt: Runtime, orders: list[Order], timeout: float = CLOSE_WAIT_S) -> bool:
    """Request cancellation and poll until the broker reports every order final (cancellation is asynchronous)."""
    for order in orders:
        try:
            rt.broker.cancel(order.id)
        except (OrderNotFound, OrderRejected) as err:
            log.info("cancel of %s: %s", order.id, err)  # already final: the poll below tells which way
    pending = {o.id for o in orders}

    def all_final() -> bool:
        for order_id in list(pending):
            current = rt.broker.get_order(order_id)
            if rt.journal.one("SELECT 1 FROM orders WHERE client_order_id = ?", [current.client_order_id]):
                store_order(rt.journal, current)
            if current.status in FINAL_OR_UNSENT:
                pending.discard(order_id)
        return not pending

    return waiter_for(rt).until(all_final, timeout)


def place_stop(rt: Runtime, trade: dict) -> Order | None:
    """One GTC trailing stop for the whole position (its system's trail), after the symbol's existing stops are
    really canceled.

    Retried STOP_RETRIES times; when it still fails the trade is flagged unprotected with a critical alert, and
    every later run tries again (protect_all).
    """
    with position_lock(rt, trade["symbol"]) as mine:
        if not mine:
            log.info("stop of %s left to the command acting on it", trade["symbol"])
            return None
        try:
            return _place_stop(rt, trade)
        except MomentumError as err:  # the broker failed between the checks: flagged, never left silent
            return _unprotected(rt, trade, str(err))


def _place_stop(rt: Runtime, trade: dict) -> Order | None:
    journal = rt.journal
    needed = stop_qty(journal, trade)
    existing = working_stops(rt, trade["symbol"])
    if existing and covers(needed, existing):  # another command protected it meanwhile
        _record_stop(journal, trade, existing[0])
        return existing[0]
    if existing and not cancel_and_confirm(rt, existing):
        return _unprotected(rt, trade, "existing stops did not cancel in time")
    last_error = "unknown"
    for _ in range(STOP_RETRIES):
        request = OrderRequest(next_order_id(journal, "s", trade["id"]), trade["symbol"], SELL, TRAILING_STOP,
                               stop_qty(journal, trade), time_in_force="gtc", trail_percent=stop_trail_pct(rt, trade))
        try:
            order = submit(rt, request, "stop", trade["id"])
        except (BrokerUnavailable, InsufficientQty) as err:
            last_error = str(err)
            continue
        if order is not None and order.status not in FINAL_OR_UNSENT:
            _record_stop(journal, trade, order)
            return order
        last_error = "stop order rejected"
    return _unprotected(rt, trade, last_error)


def stop_trail_pct(rt: Runtime, trade: dict) -> float:
    """The broker trailing stop of the trade's system (core/systems.py): momentum's TRAILING_STOP_PCT, the
    rebalance's wide REBALANCE_STOP_PCT."""
    return systems.profile_for(rt.config, trade).trailing_stop_pct or rt.config.trailing_stop_pct


def _record_stop(journal, trade: dict, order: Order) -> None:
    journal.update_row("trades", "id", trade["id"], {
        "stop_order_id": order.client_order_id, "status": "external" if trade["status"] == "external" else "open",
        "trailing_stop_price": order.stop_price, "last_update": journal.now()})


def _unprotected(rt: Runtime, trade: dict, why: str) -> None:
    journal = rt.journal
    journal.update_row("trades", "id", trade["id"], {"status": "unprotected", "last_update": journal.now()})
    journal.event("critical", "alert", f"{trade['symbol']} is UNPROTECTED: no stop could be placed ({why}); "
                  "the monitor retries every run", source="executor")
    return None


# Shares of trade t already offered by working exit orders: they cannot also sit under a stop (the broker refuses).
EXIT_HELD_SQL = ("SELECT COALESCE(SUM(o.qty - o.filled_qty), 0) FROM orders o WHERE o.trade_id = t.id "
                 "AND o.side = 'sell' AND o.purpose IN ('exit', 'partial') "
                 f"AND o.status NOT IN {sql_list(FINAL_OR_UNSENT)}")


def exit_held_qty(journal, trade: dict) -> int:
    return int(journal.one(f"SELECT ({EXIT_HELD_SQL}) AS n FROM trades t WHERE t.id = ?", [trade["id"]])["n"])


def stop_qty(journal, trade: dict) -> int:
    """What the stop must cover: every share not already being sold by a working exit order."""
    return int(trade["qty"]) - exit_held_qty(journal, trade)


def covers(needed: int, stops: list[Order]) -> bool:
    """Exactly one stop for the `needed` shares, or none when no share needs one."""
    if needed <= 0:
        return not stops
    return len(stops) == 1 and stops[0].qty == needed


def protect_all(rt: Runtime) -> list[str]:
    """The invariant: each open position has exactly one working stop for its whole quantity, or it is flagged.

    The stops and exit quantities of all trades are read at once (one broker call, one query), and read again
    only after a fix has changed them. A trade row here holds only what place_stop reads (the other columns
    include the large JSON of the entry signals, and this runs twice in every scan and monitor run). A position
    another command is acting on is left to that command; one whose broker position is missing and not yet
    explained (journal/reconcile.py) has no shares a stop could hold.
    """
    fixed = []
    trades = rt.journal.query(f"SELECT t.id, t.symbol, t.qty, t.status, t.stop_order_id, ({EXIT_HELD_SQL}) AS "
                              f"exit_held_qty FROM trades t WHERE t.{HELD} "
                              "AND t.asset_class = 'us_equity' AND NOT EXISTS (SELECT 1 FROM state s "
                              "WHERE s.key = 'missing:' || t.id) ORDER BY t.id")
    held_by_trade = {trade["id"]: int(trade.pop("exit_held_qty")) for trade in trades}
    stops_by_symbol = None
    for trade in trades:
        if stops_by_symbol is None:
            stops_by_symbol = working_stops_by_symbol(rt, [t["symbol"] for t in trades])
        stops, needed = stops_by_symbol[trade["symbol"]], int(trade["qty"]) - held_by_trade[trade["id"]]
        if not stops and needed > 0:
            stops = _recorded_stop(rt, trade)  # a list answer can miss an order the broker still holds
        if covers(needed, stops):
            if trade["status"] == "unprotected":
                rt.journal.update_row("trades", "id", trade["id"], {"status": "open"})
            continue
        with position_lock(rt, trade["symbol"]) as mine:
            if not mine:
                continue
            if needed <= 0:
                cancel_and_confirm(rt, stops)  # every share is being sold by an exit order
            else:
                place_stop(rt, trade)
        fixed.append(trade["symbol"])
        stops_by_symbol = None  # the fix changed orders at the broker and in the journal
        held_by_trade = {t["id"]: exit_held_qty(rt.journal, t) for t in trades}
    return fixed


def _recorded_stop(rt: Runtime, trade: dict) -> list[Order]:
    """The trade's own stop looked up by its id, when the list of open orders did not show it."""
    if not trade.get("stop_order_id"):
        return []
    order = refresh(rt, trade["stop_order_id"])
    if order is None or not _protects(order) or order.symbol != trade["symbol"]:
        return []
    log.warning("stop %s of %s is working but was missing from the open orders list", order.client_order_id,
                trade["symbol"])
    return [order]


# --- entries and closes -------------------------------------------------------------------------------------------

def open_position(rt: Runtime, *, symbol: str, cap: str, qty: int, session: str, scan_type: str, trade_fields: dict,
                  fill_timeout: float) -> dict | None:
    """Market entry, wait for the fill, then the stop. Returns the trade row, or None when nothing was sent.

    The trade (pending) and its entry order (pending_submit) are written in one transaction before the broker
    call; an entry id that already exists in the journal is never sent again. An entry still working when the wait
    ends is cancelled, so the stop placed after it covers every share the entry will ever buy. Whatever the broker
    does after the order went out, the run leaves the position protected, or flagged UNPROTECTED with a critical
    alert, before the error goes on.
    """
    journal = rt.journal
    client_order_id = entry_order_id(symbol, session, scan_type)
    with position_lock(rt, symbol) as mine:
        if not mine:
            journal.event("warning", "alert", f"BUY {symbol} skipped: another command is acting on {symbol}",
                          source="executor")
            return None
        if journal.one("SELECT 1 FROM orders WHERE client_order_id = ?", [client_order_id]):
            log.info("entry %s already recorded; not sent again", client_order_id)
            return None
        request = OrderRequest(client_order_id, symbol, BUY, MARKET, qty, time_in_force="day")
        with journal.atomic():
            trade_id = journal.insert_row("trades", {
                **trade_fields, "symbol": symbol, "cap": cap, "qty": qty, "original_qty": qty, "status": "pending",
                "entry_order_id": client_order_id, "run_id": journal.run_id, "last_update": journal.now()})
            record_intent(journal, request, "entry", trade_id)
        try:
            order = submit(rt, request, "entry", trade_id)
            if order is not None and order.status not in FINAL_OR_UNSENT:
                order = _complete_entry(rt, wait_filled(rt, order, fill_timeout))
            settle_fills(rt)
        except MomentumError as err:
            _entry_failed(rt, trade_id, err)
            raise
        trade = journal.one("SELECT * FROM trades WHERE id = ?", [trade_id])
        if trade["status"] == "open":
            place_stop(rt, trade)
            journal.event("info", "alert", f"BUY {symbol} x{trade['qty']} at {trade['entry_price']:.2f}",
                          source="executor")
        return journal.one("SELECT * FROM trades WHERE id = ?", [trade_id])


def _complete_entry(rt: Runtime, order: Order) -> Order:
    """An entry not filled within the wait is cancelled for the rest: the stop then covers all it bought."""
    if order.status in FINAL_OR_UNSENT:
        return order
    if not cancel_and_confirm(rt, [order]):
        rt.journal.event("warning", "alert", f"entry {order.client_order_id} of {order.symbol} still working after "
                         "its cancel; the next run protects what it fills", source="executor")
    return refresh(rt, order.client_order_id) or order


def _entry_failed(rt: Runtime, trade_id: int, err: Exception) -> None:
    """A broker error after the entry was sent: protect what is known to be held, and say so loudly."""
    journal = rt.journal
    try:
        settle_fills(rt)
    except MomentumError:
        pass
    trade = journal.one("SELECT * FROM trades WHERE id = ?", [trade_id])
    if trade["status"] == "open":
        place_stop(rt, trade)  # protected, or flagged UNPROTECTED with a critical alert
    elif trade["status"] == "pending":
        journal.event("critical", "alert", f"{trade['symbol']}: entry {trade['entry_order_id']} in an unknown state "
                      f"after a broker error ({err}); shares it bought may be UNPROTECTED until the next run "
                      "reconciles and protects them", source="executor")


def settle_fills(rt: Runtime) -> None:
    """Apply finished entry, stop and exit orders to their trades (the same code reconciliation runs)."""

    trade_book.apply_order_fills(rt, reconcile.ReconcileReport())


def _available_qty(rt: Runtime, symbol: str) -> int:
    position = next((p for p in rt.broker.positions() if p.symbol == symbol), None)
    return position.qty_available if position else 0


def add_shares(rt: Runtime, trade: dict, qty: int, *, fill_timeout: float) -> dict:
    """Buy more of a held position (a rebalance adjustment); the fill ledger raises the trade's quantity."""
    request = OrderRequest(next_order_id(rt.journal, "a", trade["id"]), trade["symbol"], BUY, MARKET, qty)
    order = submit(rt, request, "rebalance", trade["id"])
    if order is not None and order.status not in FINAL_OR_UNSENT:
        wait_filled(rt, order, fill_timeout)
    settle_fills(rt)
    return rt.journal.one("SELECT * FROM trades WHERE id = ?", [trade["id"]])


@dataclass
class CloseResult:
    """What a close did: `sent` when a sell reached the broker, `trade` the trade row afterwards (closed once the
    sell filled), `detail` why nothing was sent."""

    trade: dict
    sent: bool
    detail: str = ""

    @property
    def closed(self) -> bool:
        return self.trade["status"] == "closed"


def close_position(rt: Runtime, trade: dict, *, reason: str, priority: str = "HIGH",
                   fill_timeout: float | None = None, qty: int | None = None) -> CloseResult:
    """Cancel the symbol's stops, wait until the shares are available, sell what is available at market (or only
    `qty` of it: a partial sale, after which protect_all re-places the stop for the rest).

    The exit and its order attempts are recorded in `exits` and `exit_attempts`, and the trade is closed with price,
    reason and P&L once the sell fills. When no sell goes out, the position gets its stop back before this returns.
    """
    journal, symbol = rt.journal, trade["symbol"]
    with position_lock(rt, symbol) as mine:
        if not mine:
            return CloseResult(trade, False, "another command is acting on this position")
        trade = journal.one("SELECT * FROM trades WHERE id = ?", [trade["id"]])
        if trade["status"] not in HELD_STATUSES:
            return CloseResult(trade, False, f"the trade is {trade['status']}")
        sent, detail = _close(rt, trade, reason, priority, fill_timeout, qty)
        if not sent:
            protect_all(rt)
        return CloseResult(journal.one("SELECT * FROM trades WHERE id = ?", [trade["id"]]), sent, detail)


def _close(rt: Runtime, trade: dict, reason: str, priority: str, fill_timeout: float | None,
           qty: int | None) -> tuple[bool, str]:
    journal, symbol = rt.journal, trade["symbol"]
    stops = working_stops(rt, symbol)
    if stops and not cancel_and_confirm(rt, stops):
        return False, "its stop did not cancel in time"
    waiter_for(rt).until(lambda: _available_qty(rt, symbol) >= trade["qty"], CLOSE_WAIT_S)
    qty = min(_available_qty(rt, symbol), qty or trade["qty"])
    if qty <= 0:
        journal.event("error", "alert", f"close {symbol}: no shares available at the broker", source="executor")
        return False, "no shares available at the broker"
    exit_id = _record_exit(journal, trade, reason, priority, qty)
    order, detail = _sell_available(rt, trade, exit_id, qty)
    if order is None:
        journal.update_row("exits", "id", exit_id, {"state": "given_up", "updated_at": journal.now()})
        return False, detail
    if order.status not in FINAL_OR_UNSENT:
        order = wait_filled(rt, order, rt.config.fill_timeout_s if fill_timeout is None else fill_timeout)
    settle_fills(rt)
    return True, ""


def _sell_attempt(rt: Runtime, trade: dict, exit_id: int, attempt: int, qty: int) -> Order | None:
    """One market sell of an exit: its order intent and attempt row are written together, then it is sent."""
    journal = rt.journal
    request = OrderRequest(next_order_id(journal, "x", trade["id"]), trade["symbol"], SELL, MARKET, qty)
    with journal.atomic():
        record_intent(journal, request, "exit", trade["id"])
        journal.insert_row("exit_attempts", {
            "exit_id": exit_id, "attempt": attempt, "order_type": MARKET, "qty": qty, "status": "submitted",
            "client_order_id": request.client_order_id, "created_at": journal.now()})
    try:
        order = submit(rt, request, "exit", trade["id"])
    except InsufficientQty:
        _attempt_refused(journal, request.client_order_id)
        raise
    if order is None:
        _attempt_refused(journal, request.client_order_id)
    return order


def _attempt_refused(journal, client_order_id: str) -> None:
    journal.db.execute("UPDATE exit_attempts SET status = 'rejected' WHERE client_order_id = ?", [client_order_id])
    journal.db.conn.commit()


def _sell_available(rt: Runtime, trade: dict, exit_id: int, qty: int) -> tuple[Order | None, str]:
    """Sell at market; when the broker says shares are still held by an order (a stop whose cancel has not
    completed), cancel the symbol's working stops again, wait, and sell what is available once more. Returns the
    order, or None and why nothing was sent."""
    symbol = trade["symbol"]
    try:
        order = _sell_attempt(rt, trade, exit_id, 1, qty)
        return order, "" if order is not None else "the broker refused the sell"
    except InsufficientQty as err:
        log.warning("close %s: %s; cancelling held orders and retrying", symbol, err)
    cancel_and_confirm(rt, working_stops(rt, symbol))
    waiter_for(rt).until(lambda: _available_qty(rt, symbol) >= trade["qty"], CLOSE_WAIT_S)
    available = min(_available_qty(rt, symbol), qty)
    if available <= 0:
        rt.journal.event("critical", "alert", f"close {symbol}: shares still held by open orders", source="executor")
        return None, "shares still held by open orders"
    try:
        order = _sell_attempt(rt, trade, exit_id, 2, available)
        return order, "" if order is not None else "the broker refused the sell"
    except InsufficientQty as err:
        rt.journal.event("critical", "alert", f"close {symbol} failed twice: {err}", source="executor")
        return None, f"the broker refused the sell twice ({err})"


def _record_exit(journal, trade: dict, reason: str, priority: str, qty: int) -> int:
    return journal.insert_row("exits", {
        "trade_id": trade["id"], "symbol": trade["symbol"], "reason": reason, "priority": priority,
        "triggered": None, "qty": qty, "partial": int(qty < trade["qty"]), "strategy": "market",
        "state": "submitted", "created_at": journal.now(), "updated_at": journal.now(),
        "run_id": journal.run_id})

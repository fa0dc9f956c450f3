"""Reconciliation: the broker is the truth about orders, fills and positions; the journal is brought in line.

Runs at the start of every scan and monitor run and as `reconcile`. Steps, in order:
1. every journal order not in a final state is refreshed from the broker (looked up by client_order_id when the
   broker id is unknown, which is the case after a crash between the journal write and the broker's answer);
2. fills are applied to trades: an entry fill opens its trade, a stop or exit fill closes it at the fill price;
3. broker positions and open trades are compared: an untracked broker position is adopted as `external`, and a
   quantity mismatch is corrected to the broker;
4. an open trade with no broker position is never closed on one answer: the positions are read a second time, a
   working stop for the symbol or a sell the journal does not know is looked for, and a disappearance nothing
   explains is flagged (critical alert, no stop placed for shares the broker does not show) and closed as `unknown`
   only when later runs, MISSING_CONFIRM later, still find it gone;
every change that a human should know about raises an alert event.

A position another command is acting on (it holds the symbol's position lock, locks.PositionLocks) is left to
that command: an order in flight there is not declared unsent, and its trade is not changed.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from common.clock import iso_utc
from common.errors import OrderNotFound
from common.locks import position_locks
from common.types import FINAL_OR_UNSENT, SELL, Order, sql_list
from journal import trade_book as trade_book
from journal.schema import HELD_STATUSES

log = logging.getLogger(__name__)
MISSING_CONFIRM = timedelta(minutes=15)  # how long a broker position must stay unexplained before it is closed


@dataclass
class ReconcileReport:
    orders_refreshed: int = 0
    orders_missing: list[str] = field(default_factory=list)
    entries_filled: list[str] = field(default_factory=list)
    trades_closed: list[tuple[str, str, float | None]] = field(default_factory=list)  # symbol, reason, price
    adopted: list[str] = field(default_factory=list)
    unknown_closed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # flagged, not closed: the broker shows no position
    busy: list[str] = field(default_factory=list)  # left to the command acting on them
    qty_corrected: list[tuple[str, int, int]] = field(default_factory=list)
    alerts: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.orders_refreshed or self.orders_missing or self.entries_filled or self.trades_closed
                    or self.adopted or self.unknown_closed or self.qty_corrected or self.missing or self.busy)


def _order_update(order: Order, now: str) -> dict[str, Any]:
    return {"broker_order_id": order.id, "status": order.status, "filled_qty": order.filled_qty,
            "filled_avg_price": order.filled_avg_price, "stop_price": order.stop_price,
            "filled_at": iso_utc(order.filled_at) if order.filled_at else None, "updated_at": now}


def _fetch(broker, row: dict, known: dict[str, Order]) -> Order | None:
    if row["broker_order_id"]:
        if row["broker_order_id"] in known:
            return known[row["broker_order_id"]]
        try:
            return broker.get_order(row["broker_order_id"])
        except OrderNotFound:
            pass
    return broker.get_order_by_client_id(row["client_order_id"])


def _known_orders(broker, rows: list[dict]) -> dict[str, Order]:
    """The rows' orders in one call when the broker can look up many at once (the sim broker: every open GTC stop
    is refreshed on every run); otherwise nothing, and each order is fetched on its own."""
    ids = [row["broker_order_id"] for row in rows if row["broker_order_id"]]
    if not ids or not hasattr(broker, "get_orders"):
        return {}
    return broker.get_orders(ids)


# Orders that are neither final nor known never to have been sent: the condition of the partial index orders_live
# (journal/schema.py, migration 0006), written out the same way so that SQLite can match it to the index.
LIVE_ORDERS = f"status NOT IN {sql_list(FINAL_OR_UNSENT)}"


def refresh_orders(rt, report: ReconcileReport) -> list[dict]:
    """Refresh every non-final journal order; returns the rows whose state changed (with the new state)."""
    journal, broker = rt.journal, rt.broker
    # the live rows found through the partial index orders_live, read in the order they were written
    rows = journal.query(f"SELECT * FROM orders WHERE rowid IN (SELECT rowid FROM orders WHERE {LIVE_ORDERS}) "
                         "ORDER BY rowid")
    changed = []
    known = _known_orders(broker, rows)
    now = journal.now()
    locks = position_locks(journal.path)
    for row in rows:
        order = _fetch(broker, row, known)
        if order is None:
            if row["status"] == "pending_submit":
                if locks.held_by_another(row["symbol"]):  # its submitter is alive and may still send it
                    report.busy.append(row["symbol"])
                    continue
                # The process stopped before the broker accepted it: it was never sent.
                journal.update_row("orders", "client_order_id", row["client_order_id"],
                                   {"status": "not_sent", "updated_at": now})
                report.orders_missing.append(row["client_order_id"])
            continue
        update = _order_update(order, now)
        if any(row.get(k) != v for k, v in update.items() if k != "updated_at"):
            with journal.atomic():
                journal.update_row("orders", "client_order_id", row["client_order_id"], update)
                if row["purpose"] == "stop" and update["stop_price"] != row["stop_price"]:
                    # a trailing stop rises with the price: the trade shows the level the broker has now
                    journal.db.execute("UPDATE trades SET trailing_stop_price = ? WHERE stop_order_id = ?",
                                       [update["stop_price"], row["client_order_id"]])
            report.orders_refreshed += 1
            changed.append({**row, **update})
    return changed


def _whole(journal, trade: dict) -> dict:
    return journal.one("SELECT * FROM trades WHERE id = ?", [trade["id"]])


def reconcile(rt) -> ReconcileReport:
    """Bring the journal in line with the broker. Safe to run any number of times."""

    report = ReconcileReport()
    journal = rt.journal
    refresh_orders(rt, report)
    trade_book.apply_order_fills(rt, report)
    broker_positions = {p.symbol: p for p in rt.broker.positions()}
    statuses = [*HELD_STATUSES, "pending"]
    # Only the columns the comparison needs (a whole trade row carries the large JSON of its entry signals); a
    # trade that must change is read whole.
    trades = journal.query(f"SELECT id, symbol, qty, status FROM trades WHERE status IN "
                           f"({','.join('?' * len(statuses))}) ORDER BY id", statuses)
    open_trades = [t for t in trades if t["status"] != "pending"]
    tracked = {t["symbol"] for t in open_trades}
    pending = {t["symbol"] for t in trades if t["status"] == "pending"}
    mismatched = [t for t in open_trades if broker_positions.get(t["symbol"]) is None
                  or broker_positions[t["symbol"]].qty != t["qty"]]
    untracked = [s for s in broker_positions if s not in tracked and s not in pending]
    if mismatched or untracked:  # one answer is not enough to change the book: read the positions again
        second = {p.symbol: p for p in rt.broker.positions()}
        broker_positions = {s: p for s, p in second.items() if s in broker_positions or s in tracked}
        untracked = [s for s in untracked if s in broker_positions]
    locks = position_locks(journal.path)
    for symbol in untracked:
        with locks.hold(symbol) as mine:
            if not mine:
                report.busy.append(symbol)
            elif _still_untracked(journal, symbol):
                trade_book.adopt_external(rt, broker_positions[symbol], report)
    flagged = {row["key"] for row in journal.query("SELECT key FROM state WHERE key LIKE 'missing:%'")}
    for trade in open_trades:
        position = broker_positions.get(trade["symbol"])
        if position is not None and position.qty == trade["qty"]:
            if _missing_key(trade) in flagged:
                _found_again(rt, trade)
            continue
        with locks.hold(trade["symbol"]) as mine:
            if not mine:
                report.busy.append(trade["symbol"])
                continue
            trade = _whole(journal, trade)
            if trade["status"] not in HELD_STATUSES:
                continue
            if position is None:
                _missing(rt, trade, report)
            else:
                _found_again(rt, trade)
                if position.qty != trade["qty"]:
                    trade_book.correct_qty(rt, trade, position.qty, report)
    for message in report.alerts:
        journal.event("warning", "alert", message, source="reconcile")
    return report


def _still_untracked(journal, symbol: str) -> bool:
    statuses = [*HELD_STATUSES, "pending"]
    return journal.one(f"SELECT 1 FROM trades WHERE symbol = ? AND status IN ({','.join('?' * len(statuses))})",
                       [symbol, *statuses]) is None


def _missing_key(trade: dict) -> str:
    return f"missing:{trade['id']}"


def _found_again(rt, trade: dict) -> None:
    if rt.journal.state(_missing_key(trade)) is not None:
        rt.journal.db.execute("DELETE FROM state WHERE key = ?", [_missing_key(trade)])
        rt.journal.db.conn.commit()
        rt.journal.event("warning", "alert", f"reconcile: {trade['symbol']} is at the broker again; tracked as before",
                         source="reconcile")


def _missing(rt, trade: dict, report: ReconcileReport) -> None:
    """An open trade the broker shows no position for, on two reads. Closed at once only when a sell the journal
    does not know explains it; otherwise flagged, and closed as unknown once it has stayed unexplained for
    MISSING_CONFIRM while a working stop at the broker does not contradict it."""

    journal = rt.journal
    sold = _unknown_sells(rt, trade)
    if sum(o.filled_qty for o in sold) >= trade["qty"]:
        last = max(sold, key=lambda o: o.filled_at or datetime.min.replace(tzinfo=rt.clock.now().tzinfo))
        trade_book.close_trade(rt, trade, price=last.filled_avg_price, reason="sold_outside",
                               when=iso_utc(last.filled_at) if last.filled_at else None)
        report.trades_closed.append((trade["symbol"], "sold_outside", last.filled_avg_price))
        report.alerts.append(f"reconcile: {trade['symbol']} was sold at the broker by an order the journal did not "
                             f"send ({', '.join(o.client_order_id or o.id for o in sold)}); trade closed at "
                             f"{last.filled_avg_price}")
        _found_again(rt, trade)
        return
    key, now = _missing_key(trade), rt.clock.now()
    first_seen = journal.state(key)
    stop_working = any(o.side == SELL and o.is_open for o in rt.broker.orders("open", [trade["symbol"]]))
    if first_seen is None or stop_working or now - datetime.fromisoformat(first_seen) < MISSING_CONFIRM:
        if first_seen is None:
            journal.set_state(key, journal.now())
            journal.event("critical", "alert", f"reconcile: {trade['symbol']} x{trade['qty']} is open in the journal "
                          "but the broker shows no position and no sell explains it; NOT closed, no stop placed — "
                          "check the broker", source="reconcile")
        report.missing.append(trade["symbol"])
        return
    trade_book.close_unknown(rt, trade, report)
    journal.db.execute("DELETE FROM state WHERE key = ?", [key])
    journal.db.conn.commit()


def _unknown_sells(rt, trade: dict) -> list[Order]:
    """Filled sells of the trade's symbol since its entry that the journal did not send."""
    entry = datetime.fromisoformat(trade["entry_time"]) if trade["entry_time"] else None
    found = []
    for order in rt.broker.orders("closed", [trade["symbol"]]):
        if order.side != SELL or not order.filled_qty or order.symbol != trade["symbol"]:
            continue
        if entry is not None and order.filled_at is not None and order.filled_at < entry:
            continue
        if rt.journal.one("SELECT 1 FROM orders WHERE client_order_id = ?", [order.client_order_id]) is None:
            found.append(order)
    return found


def report_text(report: ReconcileReport) -> str:
    if not report.changed:
        return "reconcile: journal and broker agree; nothing to do"
    lines = ["reconcile:"]
    if report.orders_refreshed:
        lines.append(f"  orders refreshed from the broker: {report.orders_refreshed}")
    if report.orders_missing:
        lines.append(f"  orders never sent (process stopped before submission): {', '.join(report.orders_missing)}")
    lines += [f"  entry filled: {s}" for s in report.entries_filled]
    lines += [f"  trade closed: {s} ({reason}{f' at ${price:,.2f}' if price else ''})"
              for s, reason, price in report.trades_closed]
    lines += [f"  adopted external position: {s}" for s in report.adopted]
    lines += [f"  closed as unknown (no broker position): {s}" for s in report.unknown_closed]
    lines += [f"  MISSING at the broker, not closed (critical alert raised): {s}" for s in report.missing]
    lines += [f"  left to the command acting on it: {s}" for s in report.busy]
    lines += [f"  quantity corrected: {s} {old} -> {new}" for s, old, new in report.qty_corrected]
    return "\n".join(lines)

"""Reconciliation: the broker is the truth about orders, fills and positions; the journal is brought in line.

Runs at the start of every scan and monitor run and as `reconcile`. Steps, in order:
1. every journal order not in a final state is refreshed from the broker (looked up by client_order_id when the
   broker id is unknown, which is the case after a crash between the journal write and the broker's answer);
2. fills are applied to trades: an entry fill opens its trade, a stop or exit fill closes it at the fill price;
3. broker positions and open trades are compared: an untracked broker position is adopted as `external`, an open
   trade with no broker position is closed as `unknown`, and a quantity mismatch is corrected to the broker;
every change that a human should know about raises an alert event.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from clock import iso_utc
from errors import OrderNotFound
from models import FINAL_STATUSES, Order

log = logging.getLogger(__name__)
LIVE_TRADE_STATUSES = ("open", "unprotected", "external")


@dataclass
class ReconcileReport:
    orders_refreshed: int = 0
    orders_missing: list[str] = field(default_factory=list)
    entries_filled: list[str] = field(default_factory=list)
    trades_closed: list[tuple[str, str, float | None]] = field(default_factory=list)  # symbol, reason, price
    adopted: list[str] = field(default_factory=list)
    unknown_closed: list[str] = field(default_factory=list)
    qty_corrected: list[tuple[str, int, int]] = field(default_factory=list)
    alerts: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.orders_refreshed or self.orders_missing or self.entries_filled or self.trades_closed
                    or self.adopted or self.unknown_closed or self.qty_corrected)


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


# Orders that are neither final (models.FINAL_STATUSES) nor known never to have been sent: the condition of the
# partial index orders_live (schema.py, migration 0006), written out so that SQLite can match it to the index.
FINAL_OR_UNSENT = (*sorted(FINAL_STATUSES), "not_sent")
LIVE_ORDERS = f"status NOT IN ({', '.join(repr(status) for status in FINAL_OR_UNSENT)})"


def refresh_orders(rt, report: ReconcileReport) -> list[dict]:
    """Refresh every non-final journal order; returns the rows whose state changed (with the new state)."""
    journal, broker = rt.journal, rt.broker
    # the live rows found through the partial index orders_live, read in the order they were written
    rows = journal.query(f"SELECT * FROM orders WHERE rowid IN (SELECT rowid FROM orders WHERE {LIVE_ORDERS}) "
                         "ORDER BY rowid")
    changed = []
    known = _known_orders(broker, rows)
    now = journal.now()
    for row in rows:
        order = _fetch(broker, row, known)
        if order is None:
            if row["status"] == "pending_submit":
                # The process stopped before the broker accepted it: it was never sent.
                journal.update_row("orders", "client_order_id", row["client_order_id"],
                                   {"status": "not_sent", "updated_at": now})
                report.orders_missing.append(row["client_order_id"])
            continue
        update = _order_update(order, now)
        if any(row.get(k) != v for k, v in update.items() if k != "updated_at"):
            journal.update_row("orders", "client_order_id", row["client_order_id"], update)
            report.orders_refreshed += 1
            changed.append({**row, **update})
    return changed


def _whole(journal, trade: dict) -> dict:
    return journal.one("SELECT * FROM trades WHERE id = ?", [trade["id"]])


def reconcile(rt) -> ReconcileReport:
    """Bring the journal in line with the broker. Safe to run any number of times."""
    import trades as trade_book

    report = ReconcileReport()
    journal = rt.journal
    refresh_orders(rt, report)
    trade_book.apply_order_fills(rt, report)
    broker_positions = {p.symbol: p for p in rt.broker.positions()}
    statuses = [*LIVE_TRADE_STATUSES, "pending"]
    # Only the columns the comparison needs (a whole trade row carries the large JSON of its entry signals); a
    # trade that must change is read whole.
    trades = journal.query(f"SELECT id, symbol, qty, status FROM trades WHERE status IN "
                           f"({','.join('?' * len(statuses))}) ORDER BY id", statuses)
    open_trades = [t for t in trades if t["status"] != "pending"]
    tracked = {t["symbol"] for t in open_trades}
    pending = {t["symbol"] for t in trades if t["status"] == "pending"}
    for symbol, position in broker_positions.items():
        if symbol not in tracked and symbol not in pending:
            trade_book.adopt_external(rt, position, report)
    for trade in open_trades:
        position = broker_positions.get(trade["symbol"])
        if position is None:
            trade_book.close_unknown(rt, _whole(journal, trade), report)
        elif position.qty != trade["qty"]:
            trade_book.correct_qty(rt, _whole(journal, trade), position.qty, report)
    for message in report.alerts:
        journal.event("warning", "alert", message, source="reconcile")
    return report


def report_text(report: ReconcileReport) -> str:
    if not report.changed:
        return "reconcile: journal and broker agree; nothing to do"
    lines = ["reconcile:"]
    if report.orders_refreshed:
        lines.append(f"  orders refreshed from the broker: {report.orders_refreshed}")
    if report.orders_missing:
        lines.append(f"  orders never sent (process stopped before submission): {', '.join(report.orders_missing)}")
    lines += [f"  entry filled: {s}" for s in report.entries_filled]
    lines += [f"  trade closed: {s} ({reason}{f' at {price:.2f}' if price else ''})"
              for s, reason, price in report.trades_closed]
    lines += [f"  adopted external position: {s}" for s in report.adopted]
    lines += [f"  closed as unknown (no broker position): {s}" for s in report.unknown_closed]
    lines += [f"  quantity corrected: {s} {old} -> {new}" for s, old, new in report.qty_corrected]
    return "\n".join(lines)

"""The trade book: how order fills and broker facts change trades in the journal.

Every function here is idempotent: it looks at the current rows and changes a trade only when its status says the
change has not happened yet, so a reconciliation that is interrupted and run again gives the same journal.
"""
from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from models import Position

log = logging.getLogger(__name__)
EXIT_REASON_BY_PURPOSE = {"stop": "trailing_stop", "exit": "exit", "rebalance": "rebalance"}


def _parse_time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def holding_sessions(rt, entry_time: str | None, exit_time: str | None) -> int | None:
    start, end = _parse_time(entry_time), _parse_time(exit_time)
    if start is None or end is None:
        return None
    from clock import NY

    days = rt.calendar.sessions(start.astimezone(NY).date(), end.astimezone(NY).date())
    return max(0, len(days) - 1)


def close_trade(rt, trade: dict, *, price: float | None, reason: str, priority: str | None = None,
                when: str | None = None, status: str = "closed") -> dict[str, Any]:
    """Mark a trade closed at `price` with P&L; returns the update applied."""
    when = when or rt.journal.now()
    entry = trade["entry_price"]
    pnl = (price - entry) * trade["qty"] if price is not None and entry else None
    pnl_pct = (price / entry - 1) * 100 if price is not None and entry else None
    update = {"status": status, "exit_time": when, "exit_price": price, "exit_reason": reason,
              "exit_priority": priority, "pnl": round(pnl, 2) if pnl is not None else None,
              "pnl_pct": round(pnl_pct, 4) if pnl_pct is not None else None,
              "holding_days": holding_sessions(rt, trade["entry_time"], when), "last_update": when}
    rt.journal.db.table("trades").update(trade["id"], update)
    return update


def _entry_filled(rt, trade: dict, order: dict, report) -> None:
    if order["filled_qty"] > 0:
        price = order["filled_avg_price"]
        rt.journal.db.table("trades").update(trade["id"], {
            "status": "open", "qty": order["filled_qty"], "original_qty": order["filled_qty"],
            "entry_price": price, "entry_time": order["filled_at"] or rt.journal.now(), "peak_price": price,
            "current_price": price, "last_update": rt.journal.now()})
        report.entries_filled.append(trade["symbol"])
    else:
        rt.journal.db.table("trades").update(trade["id"], {"status": "canceled", "last_update": rt.journal.now()})


def apply_order_fills(rt, report) -> None:
    """Apply final entry orders to pending trades, and stop or exit fills to live trades."""
    journal = rt.journal
    rows = journal.query(
        "SELECT o.*, t.status AS trade_status FROM orders o JOIN trades t ON t.id = o.trade_id "
        "WHERE (o.purpose = 'entry' AND t.status = 'pending' AND o.status IN "
        "       ('filled', 'canceled', 'expired', 'rejected', 'not_sent')) "
        "   OR (o.purpose IN ('stop', 'exit', 'rebalance') AND o.status = 'filled' "
        "       AND t.status IN ('open', 'unprotected', 'external')) ORDER BY o.filled_at, o.created_at")
    for order in rows:
        trade = journal.one("SELECT * FROM trades WHERE id = ?", [order["trade_id"]])
        with journal.atomic():
            if order["purpose"] == "entry":
                _entry_filled(rt, trade, order, report)
                continue
            reason, priority = _exit_reason(journal, order)
            update = close_trade(rt, trade, price=order["filled_avg_price"], reason=reason, priority=priority,
                                 when=order["filled_at"])
            _finish_exit(journal, order, update)
        report.trades_closed.append((trade["symbol"], reason, order["filled_avg_price"]))
        journal.event("info", "alert", f"{trade['symbol']} closed by {reason} at {order['filled_avg_price']}",
                      source="reconcile")


def _exit_reason(journal, order: dict) -> tuple[str, str | None]:
    """The reason an exit order was sent (from `exits`), or the purpose's default (a broker stop fill)."""
    row = journal.one("SELECT e.reason, e.priority FROM exit_attempts a JOIN exits e ON e.id = a.exit_id "
                      "WHERE a.client_order_id = ?", [order["client_order_id"]])
    if row:
        return row["reason"], row["priority"]
    reason = EXIT_REASON_BY_PURPOSE[order["purpose"]]
    return reason, "HIGH" if reason == "trailing_stop" else None


def _finish_exit(journal, order: dict, update: dict) -> None:
    attempt = journal.one("SELECT exit_id FROM exit_attempts WHERE client_order_id = ?", [order["client_order_id"]])
    if attempt is None:
        return
    journal.db.execute("UPDATE exit_attempts SET status = 'filled', filled_qty = ? WHERE client_order_id = ?",
                       [order["filled_qty"], order["client_order_id"]])
    journal.db.table("exits").update(attempt["exit_id"], {
        "state": "filled", "price": order["filled_avg_price"], "pnl": update["pnl"], "pnl_pct": update["pnl_pct"],
        "completed_at": update["exit_time"], "updated_at": update["exit_time"]})


def adopt_external(rt, position: Position, report) -> None:
    """A broker position the journal does not know: track it so the monitor protects and reports it."""
    now = rt.journal.now()
    rt.journal.db.table("trades").insert({
        "symbol": position.symbol, "cap": rt.cap_of(position.symbol), "strategy": "external",
        "asset_class": position.asset_class, "qty": position.qty, "original_qty": position.qty,
        "entry_time": now, "entry_price": position.avg_entry_price, "status": "external",
        "current_price": position.current_price, "peak_price": max(position.current_price,
                                                                   position.avg_entry_price),
        "last_update": now, "run_id": rt.journal.run_id, "notes": "adopted from the broker by reconciliation"})
    report.adopted.append(position.symbol)
    report.alerts.append(f"reconcile: adopted external position {position.symbol} x{position.qty} "
                         f"at {position.avg_entry_price:.2f}")


def close_unknown(rt, trade: dict, report) -> None:
    """An open trade with no broker position and no fill found: closed as unknown, price unknown."""
    close_trade(rt, trade, price=None, reason="unknown", status="unknown")
    report.unknown_closed.append(trade["symbol"])
    report.alerts.append(f"reconcile: {trade['symbol']} is open in the journal but not at the broker; "
                         "closed as unknown — check the broker's activity")


def correct_qty(rt, trade: dict, broker_qty: int, report) -> None:
    rt.journal.db.table("trades").update(trade["id"], {"qty": broker_qty, "last_update": rt.journal.now()})
    report.qty_corrected.append((trade["symbol"], trade["qty"], broker_qty))
    report.alerts.append(f"reconcile: {trade['symbol']} quantity corrected to the broker's {broker_qty} "
                         f"(journal had {trade['qty']})")

"""The trade book: how order fills and broker facts change trades in the journal.

Every function here is idempotent: it looks at the current rows and changes a trade only when its status says the
change has not happened yet, so a reconciliation that is interrupted and run again gives the same journal.
"""
from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

from common.clock import NY
from common.types import Position
from core import systems
from core.option_math import multiplier

log = logging.getLogger(__name__)
EXIT_REASON_BY_PURPOSE = {"stop": "trailing_stop", "exit": "exit", "rebalance": "rebalance"}


def _parse_time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def holding_sessions(rt, entry_time: str | None, exit_time: str | None) -> int | None:
    start, end = _parse_time(entry_time), _parse_time(exit_time)
    if start is None or end is None:
        return None

    days = rt.calendar.sessions(start.astimezone(NY).date(), end.astimezone(NY).date())
    return max(0, len(days) - 1)


def close_trade(rt, trade: dict, *, price: float | None, reason: str, priority: str | None = None,
                when: str | None = None, status: str = "closed", realized: float | None = None) -> dict[str, Any]:
    """Mark a trade closed at `price` with P&L (the realized total when partial exits came first)."""
    when = when or rt.journal.now()
    entry, size = trade["entry_price"], multiplier(trade.get("asset_class"))
    pnl = realized if realized is not None else (
        (price - entry) * trade["qty"] * size if price is not None and entry else None)
    pnl_pct = pnl / (entry * trade["qty"] * size) * 100 if pnl is not None and entry and trade["qty"] else None
    reward = trade_reward(rt, trade, pnl_pct)
    update = {"status": status, "qty": trade["qty"], "exit_time": when, "exit_price": price, "exit_reason": reason,
              "exit_priority": priority, "pnl": round(pnl, 2) if pnl is not None else None,
              "pnl_pct": round(pnl_pct, 4) if pnl_pct is not None else None,
              "reward": round(reward, 4) if reward is not None else None,
              "holding_days": holding_sessions(rt, trade["entry_time"], when), "last_update": when}
    rt.journal.update_row("trades", "id", trade["id"], update)
    return update


def trade_reward(rt, trade: dict, pnl_pct: float | None) -> float | None:
    """The trade's `reward`, the learning data's label: its realised return in R, multiples of the risk taken at
    entry, i.e. pnl_pct / the stop distance in percent (+1.0: won what the stop risked; -1.0: lost it).

    1R is the distance to the broker trailing stop the trade's system put under it at entry (TRAILING_STOP_PCT for
    momentum and adopted positions, REBALANCE_STOP_PCT for the rebalance), as set when the trade was entered (its
    `configs` snapshot) or, without one, as set now. An option has no stop: its whole premium is at risk, so its R
    is its return on premium. Why R rather than pnl_pct (which the trade keeps anyway): the systems risk different
    distances, and the risk engine budgets risk as exactly this distance (the portfolio-heat gate), so a learner
    that maximises R maximises return per unit of the risk the product spends. Not HARD_STOP_PCT: that stop sits
    beyond the trailing stop at entry, so it is not the loss the trade was first exposed to. None when the P&L or
    the stop is unknown (a trade closed as unknown)."""
    if pnl_pct is None:
        return None
    stop_pct = _stop_pct_at_entry(rt, trade)
    return pnl_pct / stop_pct if stop_pct else None


def _stop_pct_at_entry(rt, trade: dict) -> float | None:
    system = systems.of_trade(trade)
    if system == systems.OPTIONS:
        return 100.0
    name = "REBALANCE_STOP_PCT" if system == systems.REBALANCE else "TRAILING_STOP_PCT"
    if trade.get("config_id") is not None:
        row = rt.journal.one("SELECT settings FROM configs WHERE id = ?", [trade["config_id"]])
        try:
            value = json.loads(row["settings"]).get(name) if row else None
        except (ValueError, AttributeError):
            value = None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return float(value)
    value = rt.config.get(name)
    return float(value) if value else None


def _cancel_unfilled_entry(rt, trade: dict, order: dict) -> None:
    rt.journal.update_row("trades", "id", trade["id"], {"status": "canceled", "last_update": rt.journal.now()})
    rt.journal.update_row("orders", "client_order_id", order["client_order_id"], {"applied_qty": order["filled_qty"]})


def _apply_buy(rt, trade: dict, order: dict, qty: int, report) -> None:
    """Shares bought for a trade: an entry opens it, a later buy (rebalance) adds at the average price."""
    price = order["filled_avg_price"]
    if trade["status"] == "pending":
        update = {"status": "open", "qty": qty, "original_qty": qty, "entry_price": price,
                  "entry_time": order["filled_at"] or rt.journal.now(), "peak_price": price, "current_price": price}
        report.entries_filled.append(trade["symbol"])
    else:
        total = trade["qty"] + qty
        update = {"qty": total, "original_qty": max(trade["original_qty"] or 0, total),
                  "entry_price": round((trade["entry_price"] * trade["qty"] + price * qty) / total, 4)}
    rt.journal.update_row("trades", "id", trade["id"], {**update, "last_update": rt.journal.now()})


def _apply_sell(rt, trade: dict, order: dict, qty: int, report) -> None:
    """Shares sold from a trade: the position shrinks; when none are left the trade closes with its total P&L."""
    price = order["filled_avg_price"]
    realized = (trade["realized_pnl"] or 0.0) + (price - trade["entry_price"]) * qty * multiplier(trade["asset_class"])
    remaining = trade["qty"] - qty
    reason, priority = _exit_reason(rt.journal, order)
    if remaining > 0:
        rt.journal.update_row("trades", "id", trade["id"], {"qty": remaining, "realized_pnl": round(realized, 2),
                                                            "last_update": rt.journal.now()})
        return
    rt.journal.update_row("trades", "id", trade["id"], {"realized_pnl": round(realized, 2)})
    closed = {**trade, "qty": trade["original_qty"] or trade["qty"]}
    close_trade(rt, closed, price=price, reason=reason, priority=priority, when=order["filled_at"],
                realized=realized)
    report.trades_closed.append((trade["symbol"], reason, price))
    rt.journal.event("info", "alert", f"{trade['symbol']} closed by {reason} at {price}", source="trades",
                     detail={"kind": "exit", "symbol": trade["symbol"], "pnl": round(realized, 2)})


def apply_order_fills(rt, report) -> None:
    """Apply every fill not yet taken into the trade book, by quantity, exactly once; cancel entries that ended
    unfilled."""
    journal = rt.journal
    # Most runs have nothing to apply: no fill beyond what was applied (the partial index orders_unapplied) and no
    # pending trade. Both are one index probe; the query below reads every order.
    if (journal.one("SELECT 1 FROM orders WHERE filled_qty > applied_qty LIMIT 1") is None
            and journal.one("SELECT 1 FROM trades WHERE status = 'pending' LIMIT 1") is None):
        return
    rows = journal.query(
        "SELECT o.* FROM orders o JOIN trades t ON t.id = o.trade_id "
        "WHERE o.filled_qty > o.applied_qty OR (o.purpose IN ('entry', 'option') AND t.status = 'pending' "
        "AND o.filled_qty = 0 "
        "AND o.status IN ('canceled', 'expired', 'rejected', 'not_sent')) ORDER BY o.filled_at, o.created_at")
    for order in rows:
        with journal.atomic():
            # Claim the fill first: the conditional write takes the journal's write lock, so a command running
            # the same step at the same moment finds the fill already taken and applies nothing.
            claimed = journal.db.execute("UPDATE orders SET applied_qty = filled_qty WHERE client_order_id = ? "
                                         "AND applied_qty = ? AND filled_qty = ?",
                                         [order["client_order_id"], order["applied_qty"], order["filled_qty"]])
            if claimed.rowcount != 1:
                continue
            trade = journal.one("SELECT * FROM trades WHERE id = ?", [order["trade_id"]])
            if trade["status"] != "pending" and order["filled_qty"] == order["applied_qty"]:
                continue  # an unfilled entry another command has already cancelled
            qty = order["filled_qty"] - order["applied_qty"]
            if qty <= 0:
                _cancel_unfilled_entry(rt, trade, order)
                continue
            if trade["status"] in ("closed", "unknown", "canceled"):
                log.warning("fill of %s arrived for a finished trade %s", order["client_order_id"], trade["id"])
            elif order["side"] == "buy":
                _apply_buy(rt, trade, order, qty, report)
            else:
                if order["purpose"] == "stop":
                    record_stop_exit(journal, trade, order, qty)
                _apply_sell(rt, trade, order, qty, report)
            _finish_exit(journal, order)


def _exit_reason(journal, order: dict) -> tuple[str, str | None]:
    """The reason an exit order was sent (from `exits`), or the purpose's default (a broker stop fill)."""
    row = journal.one("SELECT e.reason, e.priority FROM exit_attempts a JOIN exits e ON e.id = a.exit_id "
                      "WHERE a.client_order_id = ?", [order["client_order_id"]])
    if row:
        return row["reason"], row["priority"]
    reason = EXIT_REASON_BY_PURPOSE.get(order["purpose"], order["purpose"])
    return reason, "HIGH" if reason == "trailing_stop" else None


def _finish_exit(journal, order: dict) -> None:
    """Mirror an exit order's fill onto its attempt and its exit (price, quantity, P&L of that quantity)."""
    attempt = journal.one("SELECT a.exit_id, e.qty AS exit_qty FROM exit_attempts a JOIN exits e ON e.id = a.exit_id "
                          "WHERE a.client_order_id = ?", [order["client_order_id"]])
    if attempt is None:
        return
    journal.db.execute("UPDATE exit_attempts SET status = ?, filled_qty = ? WHERE client_order_id = ?",
                       [order["status"], order["filled_qty"], order["client_order_id"]])
    filled = journal.one("SELECT COALESCE(SUM(filled_qty), 0) AS n FROM exit_attempts WHERE exit_id = ?",
                         [attempt["exit_id"]])["n"]
    trade = journal.one("SELECT entry_price, asset_class FROM trades WHERE id = ?", [order["trade_id"]])
    price = order["filled_avg_price"]
    update = {"price": price, "updated_at": journal.now(),
              "pnl": round((price - trade["entry_price"]) * filled * multiplier(trade["asset_class"]), 2),
              "pnl_pct": round((price / trade["entry_price"] - 1) * 100, 4)}
    if filled >= attempt["exit_qty"]:
        update.update(state="filled", completed_at=order["filled_at"] or journal.now())
        _mark_tranche(journal, attempt["exit_id"], order["trade_id"])
    journal.update_row("exits", "id", attempt["exit_id"], update)


def _mark_tranche(journal, exit_id: int, trade_id: int) -> None:
    """A filled partial-exit tranche is never taken again, however the fill was learned."""
    tranche = journal.one("SELECT tranche FROM exits WHERE id = ?", [exit_id])["tranche"]
    if tranche:
        journal.update_row("trades", "id", trade_id, {"partial_15_done" if tranche == 1 else "partial_25_done": 1})


def record_stop_exit(journal, trade: dict, order: dict, qty: int) -> None:
    """A broker-side stop fill is an exit like any other: reason trailing_stop, HIGH, in `exits`."""
    price = order["filled_avg_price"]
    journal.insert_row("exits", {
        "trade_id": trade["id"], "symbol": trade["symbol"], "reason": "trailing_stop", "priority": "HIGH",
        "triggered": None, "qty": qty, "partial": int(qty < trade["qty"]), "strategy": "broker_stop",
        "state": "filled", "price": price, "pnl": round((price - trade["entry_price"]) * qty, 2),
        "pnl_pct": round((price / trade["entry_price"] - 1) * 100, 4), "created_at": journal.now(),
        "updated_at": journal.now(), "completed_at": order["filled_at"] or journal.now(), "run_id": journal.run_id})


def adopt_external(rt, position: Position, report) -> None:
    """A broker position the journal does not know: track it so the monitor protects and reports it."""
    now = rt.journal.now()
    rt.journal.insert_row("trades", {
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
    rt.journal.update_row("trades", "id", trade["id"], {"qty": broker_qty, "last_update": rt.journal.now()})
    report.qty_corrected.append((trade["symbol"], trade["qty"], broker_qty))
    report.alerts.append(f"reconcile: {trade['symbol']} quantity corrected to the broker's {broker_qty} "
                         f"(journal had {trade['qty']})")


# The actions of a position check that closes its trade on a reversal: a scan's CLOSE decision, the monitor's
# reversal exit (monitor.py writes "monitor:" + the exit reason).
CLOSING_ACTIONS = ("scan:CLOSE", "monitor:reversal")


def closing_check(journal, trade: dict) -> dict | None:
    """The position check that closed `trade`: its last check whose action was the close; without one, its last
    check at or before the exit (None when it has no check).

    No check follows a close (only held trades are checked), so the last closing check is the one that closed the
    trade even when an earlier close did not go through; the check before it (a HOLD) is the wrong one, and so is a
    check made while the exit was working (EXITING), which scores the position after the decision."""
    row = journal.one(f"SELECT reversal_score, signals FROM position_checks WHERE trade_id = ? AND action IN "
                      f"({', '.join('?' * len(CLOSING_ACTIONS))}) ORDER BY id DESC LIMIT 1",
                      [trade["id"], *CLOSING_ACTIONS])
    if row is None:
        row = journal.one("SELECT reversal_score, signals FROM position_checks WHERE trade_id = ? "
                          "AND checked_at <= ? ORDER BY checked_at DESC, id DESC LIMIT 1",
                          [trade["id"], trade["exit_time"] or "9999"])
    return row


def _reversal_signals(signals: str | None) -> list:
    """The reversal signals of a stored check: the monitor stores {"reversal": [...], "triggered": [...]}, a scan
    the list itself."""
    value = json.loads(signals) if signals else []
    return value.get("reversal", []) if isinstance(value, dict) else value


def record_poor_signals(rt, closing: dict[int, dict] | None = None) -> int:
    """Trades closed for reversal become labelled examples: entry signals beside the signals that ended them, those
    of the check that closed the trade (closing_check).

    `closing` gives, by trade id, the check a caller is about to record for the closes it just made (a scan writes
    its position checks after its orders): {"reversal_score": int, "signals": [...]}."""
    journal = rt.journal
    closing = closing or {}
    closed = journal.query("SELECT * FROM trades WHERE exit_reason = 'reversal' AND id NOT IN "
                           "(SELECT trade_id FROM poor_signals WHERE trade_id IS NOT NULL)")
    for trade in closed:
        if trade["id"] in closing:
            score, signals = closing[trade["id"]]["reversal_score"], list(closing[trade["id"]]["signals"])
        else:
            check = closing_check(journal, trade)
            score = check["reversal_score"] if check else None
            signals = _reversal_signals(check["signals"]) if check else []
        journal.db.table("poor_signals").insert({
            "symbol": trade["symbol"], "trade_id": trade["id"], "entry_date": (trade["entry_time"] or "")[:10],
            "exit_date": (trade["exit_time"] or "")[:10], "entry_price": trade["entry_price"],
            "exit_price": trade["exit_price"], "pnl_pct": trade["pnl_pct"], "holding_days": trade["holding_days"],
            "exit_reason": "reversal", "reversal_score": score, "reversal_signals": json.dumps(signals),
            "entry_signals": trade["entry_signals"], "composite_score": trade["composite_score"]})
    return len(closed)

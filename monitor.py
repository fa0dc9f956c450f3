"""The position monitor (SPEC section 8): every 5 minutes from cron, each position checked when due.

A run: reconcile; retry protection of unprotected positions; trip the circuit breaker on a 3% day loss; advance
exits already in progress; evaluate every position that is due (30 minutes since its last check) or urgent (near a
stop or target, or exiting); record the check; alert on reversal scores 3-4; start the winning exit; restore stop
protection for what is left. The exit conditions (exits.py) and the execution plan (exit_plan.py) are pure; this
module does the I/O around them.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta


import agent
import exit_plan
import exits
import options_monitor
import quotes
import reconciler
from reconciler import LIVE_ORDERS
import reversal
import scanner
from errors import InsufficientQty, MomentumError, OrderNotFound, OrderRejected, Unavailable
from executor import cancel_and_confirm, next_order_id, record_intent, refresh, settle_fills, submit
from history_cache import prepared
from models import LIMIT, MARKET, SELL, OrderRequest

log = logging.getLogger(__name__)
CHECK_INTERVAL = timedelta(minutes=30)
REVERSAL_ALERT_SCORES = (3, 4)


@dataclass
class MonitorReport:
    checked: list[str] = field(default_factory=list)
    not_due: list[str] = field(default_factory=list)
    exits_started: list[tuple[str, str, str]] = field(default_factory=list)  # symbol, reason, priority
    exits_finished: list[tuple[str, str]] = field(default_factory=list)  # symbol, state
    alerts: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # positions left for the next run, and why
    circuit_breaker: bool = False
    failure: Exception | None = None  # the first outage or program error met, raised once every position was tried


def run_monitor(rt, *, dry_run: bool, force: bool) -> MonitorReport:
    """One monitor run. A position whose exit the broker refuses, or that another command is acting on, is
    recorded and left for the next run; it never stops the evaluation of the others. A broker that stops answering
    midway still ends the run with exit 3, after every position was tried. Exits with a plan are walked here, run by
    run; a one-shot exit its command could not finish is settled (settle_one_shot_exits)."""
    from executor import protect_all
    from ops import require_market_open

    if not dry_run:
        require_market_open(rt, force=force, what="monitor")
    report = MonitorReport()
    reconciler.reconcile(rt)
    if not dry_run:
        protect_all(rt)
    flags = portfolio_flags(rt, report)
    options_monitor.evaluate_option_positions(rt, flags, report, dry_run)  # also lets the market price OCC symbols
    if not dry_run:
        settle_one_shot_exits(rt)
        for row in rt.journal.query("SELECT * FROM exits WHERE state NOT IN ('filled', 'given_up') "
                                    "AND plan IS NOT NULL ORDER BY id"):
            state = _isolated(rt, report, row["symbol"], lambda row=row: advance_exit(rt, row))
            report.exits_finished.append((row["symbol"], state or "left for the next run"))
    evaluate_positions(rt, flags, report, dry_run)
    if not dry_run:
        settle_fills(rt)
        record_poor_signals(rt)
        protect_all(rt)
    if report.failure is not None:
        raise report.failure
    return report


def settle_one_shot_exits(rt) -> list[int]:
    """Exits sent whole by `close`, a scan's close or a flatten (no plan: they are not walked run by run) end here
    when their command could not finish them: given up once the trade is no longer held, or once none of their
    sells is working and they did not fill. A fill is recorded by the trade book as it is applied."""
    journal = rt.journal
    ended = []
    for row in journal.query("SELECT e.id, e.trade_id, t.status FROM exits e JOIN trades t ON t.id = e.trade_id "
                             "WHERE e.plan IS NULL AND e.state NOT IN ('filled', 'given_up')"):
        working = journal.one(f"SELECT 1 FROM exit_attempts a JOIN orders o ON o.client_order_id = a.client_order_id "
                              f"WHERE a.exit_id = ? AND o.{LIVE_ORDERS}", [row["id"]])
        if row["status"] in ("open", "unprotected", "external") and working is not None:
            continue
        journal.update_row("exits", "id", row["id"], {"state": "given_up", "updated_at": journal.now()})
        ended.append(row["id"])
    return ended


def _isolated(rt, report: MonitorReport, symbol: str, step):
    """Run one position's step; an error is recorded against that position and the run goes on with the others.
    A broker outage, or an error of the program itself, still ends the run with its exit code once all were tried."""
    level = "error"
    try:
        return step()
    except Unavailable as err:
        report.failure = report.failure or err
        message = f"{symbol}: broker or data unreachable ({err}); the next run tries again"
    except MomentumError as err:
        message = f"{symbol}: {err}; the next run tries again"
    except Exception as err:  # noqa: BLE001 - one position's fault must not cost the others their exits
        log.exception("monitor: %s failed", symbol)
        report.failure = report.failure or err
        level, message = "critical", f"{symbol}: unexpected failure ({type(err).__name__}: {err}); details in the log"
    rt.journal.event(level, "alert", message, source="monitor", detail={"symbol": symbol})
    report.errors.append(message)
    return None


def portfolio_flags(rt, report: MonitorReport) -> exits.PortfolioFlags:
    """Day P&L against start-of-day equity; a breach trips the circuit breaker until the next session."""
    account = rt.broker.account()
    day_pnl_frac = (account.equity - account.last_equity) / account.last_equity if account.last_equity else 0.0
    rules = exits.ExitRules.from_config(rt.config)
    today = str(rt.clock.today())
    if day_pnl_frac <= -rules.daily_loss_limit_frac and rt.journal.state("circuit_breaker_session") != today:
        rt.journal.set_state("circuit_breaker_session", today)
        rt.journal.event("critical", "alert", f"CIRCUIT BREAKER: day P&L {day_pnl_frac:+.2%} of start-of-day equity; "
                         "closing everything, no buys until the next session", source="monitor")
        report.circuit_breaker = True
    return exits.PortfolioFlags(day_pnl_frac=day_pnl_frac)


# --- evaluation ---------------------------------------------------------------------------------------------------

def last_check(journal, trade_id: int) -> datetime | None:
    row = journal.one("SELECT MAX(checked_at) AS at FROM position_checks WHERE trade_id = ? AND action LIKE "
                      "'monitor%'", [trade_id])
    return datetime.fromisoformat(row["at"]) if row and row["at"] else None


def exit_in_progress(journal, trade_id: int) -> bool:
    return journal.one("SELECT 1 FROM exits WHERE trade_id = ? AND state NOT IN ('filled', 'given_up')",
                       [trade_id]) is not None


def evaluate_positions(rt, flags: exits.PortfolioFlags, report: MonitorReport, dry_run: bool) -> None:
    trades = rt.journal.query("SELECT * FROM trades WHERE status IN ('open', 'unprotected', 'external') "
                              "AND asset_class = 'us_equity' ORDER BY id")
    if not trades:
        return
    symbols = [t["symbol"] for t in trades]
    session, _ = rt.calendar.current_or_last_session(rt.clock.now())
    snap = quotes.current(rt, symbols)
    history = rt.market.bars(symbols, rt.calendar.sessions_back(session.day, agent.HISTORY_SESSIONS),
                             rt.calendar.previous_session(session.day))
    signals = scanner.holding_signals(prepared(rt, scanner.prepare, history, snap.session, snap.symbols), snap)
    scores = reversal.reversal_scores(prepared(rt, reversal.prepare, history, snap.session, snap.symbols), snap,
                                      agent.peak_closes(history, snap, trades))
    rules = exits.ExitRules.from_config(rt.config)
    context = _portfolio_context(rt, trades)
    context["settings"] = rt.journal.settings()
    views = symbol_views(snap.symbols, signals, scores)
    for trade in trades:
        view = views[trade["symbol"]]
        position = position_state(rt, trade, snap, view, context)
        if position is None:
            continue
        due = is_due(rt, trade, position, rules)
        if not due:
            report.not_due.append(trade["symbol"])
            continue
        _isolated(rt, report, trade["symbol"],
                  lambda trade=trade, position=position, view=view: _check_one(rt, trade, position, flags, rules,
                                                                               view, report, dry_run))


def symbol_views(symbols: list[str], signals: dict, scores) -> dict[str, dict]:
    """What the exit rules read of each holding: its scanner values and reversal row."""
    columns = {name: signals[name].tolist() for name in ("roc_10d", "sma20", "volume_surge")}
    views = {symbol: {name: values[i] for name, values in columns.items()} for i, symbol in enumerate(symbols)}
    for symbol, score, triggered in zip(scores.index, scores["score"].tolist(), scores["signals"].tolist()):
        views.setdefault(symbol, {}).update(score=score, signals=triggered)
    return views


def is_due(rt, trade: dict, position: exits.PositionState, rules: exits.ExitRules) -> bool:
    """Checked every 30 minutes; every run while urgent, exiting or unprotected (stocks and options alike)."""
    last = last_check(rt.journal, trade["id"])
    return (last is None or rt.clock.now() - last >= CHECK_INTERVAL or exits.is_urgent(position, rules)
            or trade["status"] == "unprotected" or exit_in_progress(rt.journal, trade["id"]))


def _portfolio_context(rt, trades: list[dict]) -> dict:
    """Inputs of the rebalance condition: slots full, the weakest holding, the best recent candidate score."""
    weakest = min(trades, key=lambda t: (t["composite_score"] or 0, t["id"]))["id"]
    best = rt.journal.one("SELECT MAX(c.score) AS score FROM candidates c JOIN scans s ON s.id = c.scan_id "
                          "WHERE s.id = (SELECT MAX(id) FROM scans) AND c.decision != 'BUY'")
    return {"slots_full": len(trades) >= rt.config.max_positions, "weakest_id": weakest,
            "best_score": best["score"] if best else None}


def _num(value) -> float | None:
    number = float(value) if value is not None else math.nan
    return number if math.isfinite(number) else None


def position_state(rt, trade: dict, snap, view: dict, context: dict) -> exits.PositionState | None:
    symbol = trade["symbol"]
    i = snap.index(symbol)
    price = _num(snap.price[i])
    if price is None or not trade["entry_price"]:
        log.warning("monitor: no price for %s; skipped this run", symbol)
        return None
    settings = context["settings"]
    peak = max(v for v in (trade["peak_price"], trade["entry_price"], price) if v)
    entry_score = trade["composite_score"]
    return exits.PositionState(
        trade_id=trade["id"], symbol=symbol, qty=trade["qty"], original_qty=trade["original_qty"] or trade["qty"],
        entry_price=trade["entry_price"], price=price, bid=_num(snap.bid[i]), ask=_num(snap.ask[i]),
        peak_price=peak, sessions_held=_sessions_held(rt, trade),
        reversal_score=int(view["score"]), autoclose=settings["autoclose"] == "on",
        autoclose_threshold=int(settings["autoclose_threshold"]), roc_10d=_num(view["roc_10d"]),
        sma20=_num(view["sma20"]), projected_volume_ratio=_num(view["volume_surge"]),
        partial_15_done=bool(trade["partial_15_done"]), partial_25_done=bool(trade["partial_25_done"]),
        target_price=trade["target_price"], is_weakest=trade["id"] == context["weakest_id"],
        best_candidate_score_gap=(context["best_score"] - entry_score
                                  if context["best_score"] is not None and entry_score is not None else None),
        slots_full=context["slots_full"])


def _sessions_held(rt, trade: dict) -> int:
    from trades import holding_sessions

    return holding_sessions(rt, trade["entry_time"], rt.journal.now()) or 0


def _check_one(rt, trade: dict, position: exits.PositionState, flags: exits.PortfolioFlags,
               rules: exits.ExitRules, view: dict, report: MonitorReport, dry_run: bool) -> None:
    journal = rt.journal
    triggers = exits.evaluate(position, flags, rules)
    chosen = exits.choose(triggers)
    exiting = exit_in_progress(journal, trade["id"])
    action = "monitor:" + ("EXITING" if exiting else (chosen.reason if chosen else "HOLD"))
    with journal.atomic():  # the check and the trade's marks it records, together
        journal.insert_row("position_checks", {
            "trade_id": trade["id"], "symbol": trade["symbol"], "checked_at": journal.now(),
            "price": position.price, "pnl_pct": round(position.gain_frac * 100, 4),
            "reversal_score": position.reversal_score,
            "signals": json.dumps({"reversal": list(view["signals"]), "triggered": [t.reason for t in triggers]}),
            "urgent": int(exits.is_urgent(position, rules)), "action": action, "run_id": journal.run_id})
        journal.update_row("trades", "id", trade["id"], {
            "current_price": position.price, "peak_price": position.peak_price,
            "unrealized_pnl": round((position.price - position.entry_price) * position.qty, 2),
            "unrealized_pnl_pct": round(position.gain_frac * 100, 4), "last_update": journal.now()})
    report.checked.append(trade["symbol"])
    if position.reversal_score in REVERSAL_ALERT_SCORES:
        message = f"{trade['symbol']} reversal score {position.reversal_score}/13: watch it"
        journal.event("warning", "alert", message, source="monitor",
                      detail={"kind": "reversal", "symbol": trade["symbol"], "score": position.reversal_score})
        report.alerts.append(message)
    if chosen is None or exiting or dry_run:
        return
    start_exit(rt, trade, chosen, triggers)
    report.exits_started.append((trade["symbol"], chosen.reason, chosen.priority))


# --- exits as persisted state machines ----------------------------------------------------------------------------

MAX_STEPS_PER_RUN = 40


def _dump(state: exit_plan.ExitState) -> str:
    return json.dumps({k: (v.isoformat() if isinstance(v, datetime) else v)
                       for k, v in dataclasses.asdict(state).items()})


def _load(text: str) -> exit_plan.ExitState:
    raw = json.loads(text)
    for key in ("submitted_at", "cancel_requested_at"):
        raw[key] = datetime.fromisoformat(raw[key]) if raw[key] else None
    return exit_plan.ExitState(**raw)


def start_exit(rt, trade: dict, trigger: exits.ExitTrigger, triggers: list[exits.ExitTrigger]) -> str:
    journal = rt.journal
    with _position(rt, trade["symbol"]):
        current = journal.one("SELECT status FROM trades WHERE id = ?", [trade["id"]])
        if current["status"] not in ("open", "unprotected", "external") or exit_in_progress(journal, trade["id"]):
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


def _position(rt, symbol: str):
    """The position's lock, or PositionBusy: the position is left to the command acting on it, until next run."""
    from executor import require_position

    return require_position(rt, symbol)


def _working_order(rt, exit_id: int) -> tuple[dict | None, str | None, int]:
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


def advance_exit(rt, row: dict) -> str:
    """Advance one exit as far as this run allows, holding its position's lock; returns its state afterwards."""
    with _position(rt, row["symbol"]):
        return _advance_exit(rt, row)


def _advance_exit(rt, row: dict) -> str:
    journal = rt.journal
    row = journal.one("SELECT * FROM exits WHERE id = ?", [row["id"]])  # as the last holder of the lock left it
    state = _load(row["plan"])
    trade = journal.one("SELECT * FROM trades WHERE id = ?", [row["trade_id"]])
    if trade["status"] not in ("open", "unprotected", "external") and not state.finished:
        state = dataclasses.replace(state, state=exit_plan.GIVEN_UP)
        _persist(journal, row["id"], state)
        return state.state
    for _ in range(MAX_STEPS_PER_RUN):
        attempt, status, filled = _working_order(rt, row["id"])
        snap = quotes.current(rt, [trade["symbol"]])
        action = exit_plan.next_action(state, _num(snap.bid[0]), _num(snap.ask[0]), rt.clock.now(), status, filled)
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


def _carry_out(rt, row: dict, trade: dict, state: exit_plan.ExitState, action: exit_plan.Action,
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


def _wait(rt, priority: str, until: datetime | None) -> bool:
    """CRITICAL and HIGH exits wait inside the run (real time only); the others continue on the next run."""
    from executor import waiter_for

    waiter = waiter_for(rt)
    if waiter.simulated or not exit_plan.must_complete_in_run(priority) or until is None:
        return False
    seconds = max(0.0, (until - rt.clock.now()).total_seconds())
    waiter.sleep(min(seconds, 15.0))
    return True


def _submit_exit_order(rt, row: dict, trade: dict, action: exit_plan.Action) -> bool:
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


def _finish(rt, row: dict, trade: dict, state: exit_plan.ExitState) -> None:
    settle_fills(rt)  # applies fills to the trade and marks a filled tranche as taken


def record_poor_signals(rt) -> int:
    """Trades closed for reversal become labelled examples: entry signals beside the signals that ended them."""
    journal = rt.journal
    closed = journal.query("SELECT * FROM trades WHERE exit_reason = 'reversal' AND id NOT IN "
                           "(SELECT trade_id FROM poor_signals WHERE trade_id IS NOT NULL)")
    for trade in closed:
        check = journal.one("SELECT reversal_score, signals FROM position_checks WHERE trade_id = ? "
                            "ORDER BY id DESC LIMIT 1", [trade["id"]])
        signals = json.loads(check["signals"]) if check and check["signals"] else []
        journal.db.table("poor_signals").insert({
            "symbol": trade["symbol"], "trade_id": trade["id"], "entry_date": (trade["entry_time"] or "")[:10],
            "exit_date": (trade["exit_time"] or "")[:10], "entry_price": trade["entry_price"],
            "exit_price": trade["exit_price"], "pnl_pct": trade["pnl_pct"], "holding_days": trade["holding_days"],
            "exit_reason": "reversal", "reversal_score": check["reversal_score"] if check else None,
            "reversal_signals": json.dumps(signals.get("reversal", []) if isinstance(signals, dict) else signals),
            "entry_signals": trade["entry_signals"], "composite_score": trade["composite_score"]})
    return len(closed)


def report_text(report: MonitorReport) -> str:
    lines = [f"monitor: {len(report.checked)} checked, {len(report.not_due)} not due"]
    if report.circuit_breaker:
        lines.append("  CIRCUIT BREAKER tripped: closing everything, no buys until the next session")
    lines += [f"  exit started: {s} {reason} ({priority})" for s, reason, priority in report.exits_started]
    lines += [f"  exit in progress: {s} -> {state}" for s, state in report.exits_finished]
    lines += [f"  alert: {a}" for a in report.alerts]
    lines += [f"  left for the next run: {e}" for e in report.errors]
    return "\n".join(lines)

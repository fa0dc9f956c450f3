"""The position monitor (SPEC section 8): every 5 minutes from cron, each position checked when due.

A run: reconcile; retry protection of unprotected positions; trip the circuit breaker on a 3% day loss; advance
exits already in progress; evaluate every position that is due (30 minutes since its last check) or urgent (near a
stop or target, or exiting); record the check; alert on reversal scores 3-4; start the winning exit; restore stop
protection for what is left. The exit conditions (core/exit_rules.py) and the execution plan (core/exit_plan.py)
are pure; flows/exit_runner.py carries exits out; this module evaluates the positions.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import scanner
from common import render
from common.errors import MomentumError, Unavailable
from common.types import finite
from core import exit_rules, reversal, systems
from core.option_math import quantity_text
from executor import protect_all, settle_fills
from flows import option_exits, quotes
from flows.exit_runner import advance_exit, exit_in_progress, is_due, settle_one_shot_exits, start_exit
from flows.operator import require_market_open
from flows.prepared_history import prepared
from journal import reconcile
from journal.trade_book import holding_sessions, record_poor_signals

if TYPE_CHECKING:  # annotations only: the runtime module wires every port
    from flows.runtime import Runtime

log = logging.getLogger(__name__)
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
    closed: list[dict] = field(default_factory=list)  # trades held at the start that this run found closed
    failure: Exception | None = None  # the first outage or program error met, raised once every position was tried


def run_monitor(rt: Runtime, *, dry_run: bool, force: bool) -> MonitorReport:
    """One monitor run. A position whose exit the broker refuses, or that another command is acting on, is
    recorded and left for the next run; it never stops the evaluation of the others. A broker that stops answering
    midway still ends the run with exit 3, after every position was tried. Exits with a plan are walked here, run by
    run; a one-shot exit its command could not finish is settled (settle_one_shot_exits)."""

    if not dry_run:
        require_market_open(rt, force=force, what="monitor")
    report = MonitorReport()
    held_before = [t["id"] for t in rt.journal.held_trades("id")]
    reconcile.reconcile(rt)
    if not dry_run:
        protect_all(rt)
    flags = portfolio_flags(rt, report)
    option_exits.evaluate_option_positions(rt, flags, report, dry_run)  # also lets the market price OCC symbols
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
    report.closed = closed_since(rt, held_before)
    if report.failure is not None:
        raise report.failure
    return report


def closed_since(rt: Runtime, trade_ids: list[int]) -> list[dict]:
    """The trades among `trade_ids` that are closed now: a stop filled at the broker, an exit that filled, a
    flatten; what the run's output reports."""
    if not trade_ids:
        return []
    return rt.journal.query(
        f"SELECT symbol, original_qty, qty, exit_price, exit_reason, pnl, pnl_pct FROM trades WHERE status = 'closed' "
        f"AND id IN ({', '.join('?' * len(trade_ids))}) ORDER BY exit_time, id", trade_ids)


def _isolated(rt: Runtime, report: MonitorReport, symbol: str, step):
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


def portfolio_flags(rt: Runtime, report: MonitorReport) -> exit_rules.PortfolioFlags:
    """Day P&L against start-of-day equity; a breach trips the circuit breaker until the next session."""
    account = rt.broker.account()
    day_pnl_frac = (account.equity - account.last_equity) / account.last_equity if account.last_equity else 0.0
    rules = exit_rules.ExitRules.from_config(rt.config)
    today = str(rt.clock.today())
    if day_pnl_frac <= -rules.daily_loss_limit_frac and rt.journal.state("circuit_breaker_session") != today:
        rt.journal.set_state("circuit_breaker_session", today)
        rt.journal.event("critical", "alert", f"CIRCUIT BREAKER: day P&L {day_pnl_frac:+.2%} of start-of-day equity; "
                         "closing everything, no buys until the next session", source="monitor")
        report.circuit_breaker = True
    return exit_rules.PortfolioFlags(day_pnl_frac=day_pnl_frac)


# --- evaluation ---------------------------------------------------------------------------------------------------

def evaluate_positions(rt: Runtime, flags: exit_rules.PortfolioFlags, report: MonitorReport, dry_run: bool) -> None:
    trades = rt.journal.held_trades(where="asset_class = 'us_equity'")
    if not trades:
        return
    symbols = [t["symbol"] for t in trades]
    session, _ = rt.calendar.current_or_last_session(rt.clock.now())
    snap = quotes.current(rt, symbols)
    history = rt.market.bars(symbols, rt.calendar.sessions_back(session.day, scanner.HISTORY_SESSIONS),
                             rt.calendar.previous_session(session.day))
    signals = scanner.holding_signals(prepared(rt, scanner.prepare, history, snap.session, snap.symbols), snap)
    peaks = reversal.peak_closes(history, snap, trades)
    scores = reversal.reversal_scores(prepared(rt, reversal.prepare, history, snap.session, snap.symbols), snap,
                                      peaks)
    rules = exit_rules.ExitRules.from_config(rt.config)
    context = _portfolio_context(rt, [t for t in trades if systems.of_trade(t) == systems.MOMENTUM] or trades)
    context["settings"] = rt.journal.settings()
    context["peaks"] = peaks
    views = symbol_views(snap.symbols, signals, scores)
    for trade in trades:
        view = views[trade["symbol"]]
        position = position_state(rt, trade, snap, view, context)
        if position is None:
            continue
        profile = systems.profile_for(rt.config, trade)
        trade_rules = rules_of(rules, profile)
        due = is_due(rt, trade, position, trade_rules)
        if not due:
            report.not_due.append(trade["symbol"])
            continue
        _isolated(rt, report, trade["symbol"],
                  lambda trade=trade, position=position, view=view, trade_rules=trade_rules, profile=profile:
                  _check_one(rt, trade, position, flags, trade_rules, view, report, dry_run, profile))


def symbol_views(symbols: list[str], signals: dict, scores) -> dict[str, dict]:
    """What the exit rules read of each holding: its scanner values and reversal row."""
    columns = {name: signals[name].tolist() for name in ("roc_10d", "sma20", "volume_surge")}
    views = {symbol: {name: values[i] for name, values in columns.items()} for i, symbol in enumerate(symbols)}
    for symbol, score, triggered in zip(scores.index, scores["score"].tolist(), scores["signals"].tolist()):
        views.setdefault(symbol, {}).update(score=score, signals=triggered)
    return views


def _portfolio_context(rt: Runtime, trades: list[dict]) -> dict:
    """Inputs of the rebalance condition: slots full, the weakest holding, the best recent candidate score."""
    weakest = min(trades, key=lambda t: (t["composite_score"] or 0, t["id"]))["id"]
    best = rt.journal.one("SELECT MAX(c.score) AS score FROM candidates c JOIN scans s ON s.id = c.scan_id "
                          "WHERE s.id = (SELECT MAX(id) FROM scans) AND c.decision != 'BUY'")
    return {"slots_full": len(trades) >= rt.config.max_positions, "weakest_id": weakest,
            "best_score": best["score"] if best else None}


def position_state(rt: Runtime, trade: dict, snap, view: dict, context: dict) -> exit_rules.PositionState | None:
    symbol = trade["symbol"]
    i = snap.index(symbol)
    price = finite(snap.price[i])
    if price is None or not trade["entry_price"]:
        log.warning("monitor: no price for %s; skipped this run", symbol)
        return None
    settings = context["settings"]
    # the highest price seen since entry, and the closes of the sessions completed since (with daily bars a run
    # during the session sees only the open, so a close it never saw still raises the peak)
    peak = max(v for v in (trade["peak_price"], trade["entry_price"], price, context.get("peaks", {}).get(symbol))
               if v and math.isfinite(v))
    entry_score = trade["composite_score"]
    return exit_rules.PositionState(
        trade_id=trade["id"], symbol=symbol, qty=trade["qty"], original_qty=trade["original_qty"] or trade["qty"],
        entry_price=trade["entry_price"], price=price, bid=finite(snap.bid[i]), ask=finite(snap.ask[i]),
        peak_price=peak, sessions_held=_sessions_held(rt, trade),
        reversal_score=int(view["score"]), autoclose=settings["autoclose"] == "on",
        autoclose_threshold=int(settings["autoclose_threshold"]), roc_10d=finite(view["roc_10d"]),
        sma20=finite(view["sma20"]), projected_volume_ratio=finite(view["volume_surge"]),
        partial_15_done=bool(trade["partial_15_done"]), partial_25_done=bool(trade["partial_25_done"]),
        target_price=trade["target_price"], is_weakest=trade["id"] == context["weakest_id"],
        best_candidate_score_gap=(context["best_score"] - entry_score
                                  if context["best_score"] is not None and entry_score is not None else None),
        slots_full=context["slots_full"])


def _sessions_held(rt: Runtime, trade: dict) -> int:
    return holding_sessions(rt, trade["entry_time"], rt.journal.now()) or 0


def rules_of(rules: exit_rules.ExitRules, profile: systems.ExitProfile) -> exit_rules.ExitRules:
    """The exit thresholds of a system: its own trailing stop for the local backstop."""
    if profile.trailing_stop_pct is None:
        return rules
    return dataclasses.replace(rules, trailing_stop_frac=profile.trailing_stop_pct / 100)


def _check_one(rt: Runtime, trade: dict, position: exit_rules.PositionState, flags: exit_rules.PortfolioFlags,
               rules: exit_rules.ExitRules, view: dict, report: MonitorReport, dry_run: bool,
               profile: systems.ExitProfile) -> None:
    journal = rt.journal
    # only the exits of the trade's own system (core/systems.py): a rebalance holding is never sold by a momentum rule
    triggers = [t for t in exit_rules.evaluate(position, flags, rules) if t.reason in profile.conditions]
    chosen = exit_rules.choose(triggers)
    exiting = exit_in_progress(journal, trade["id"])
    action = "monitor:" + ("EXITING" if exiting else (chosen.reason if chosen else "HOLD"))
    with journal.atomic():  # the check and the trade's marks it records, together
        journal.insert_row("position_checks", {
            "trade_id": trade["id"], "symbol": trade["symbol"], "checked_at": journal.now(),
            "price": position.price, "pnl_pct": round(position.gain_frac * 100, 4),
            "reversal_score": position.reversal_score,
            "signals": json.dumps({"reversal": list(view["signals"]), "triggered": [t.reason for t in triggers]}),
            "urgent": int(exit_rules.is_urgent(position, rules)), "action": action, "run_id": journal.run_id})
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


def report_text(report: MonitorReport) -> str:
    lines = [f"monitor: {len(report.checked)} checked, {len(report.not_due)} not due"]
    if report.circuit_breaker:
        lines.append("  CIRCUIT BREAKER tripped: closing everything, no buys until the next session")
    lines += [f"  exit started: {s} {reason} ({priority})" for s, reason, priority in report.exits_started]
    lines += [f"  exit in progress: {s} -> {state}" for s, state in report.exits_finished]
    for trade in report.closed:
        qty = trade["original_qty"] or trade["qty"]
        pnl = (f", P&L {render.signed_money(trade['pnl'])} ({render.pct(trade['pnl_pct'])})" if trade["pnl"] is not None
               and trade["pnl_pct"] is not None else "")
        price = f" at {render.money(trade['exit_price'])}" if trade["exit_price"] is not None else ""
        reason = (trade["exit_reason"] or "closed").replace("_", " ")
        lines.append(f"  closed: {trade['symbol']} {quantity_text(trade['symbol'], qty)}{price} ({reason}){pnl}")
    lines += [f"  alert: {a}" for a in report.alerts]
    lines += [f"  left for the next run: {e}" for e in report.errors]
    return "\n".join(lines)

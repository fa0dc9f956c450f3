"""A trading scan's execution step: closes first, then buys that pass every risk gate.

The decider proposes; this module sizes each buy, runs the batch through risk.check_orders (whatever decider made
it, so no reply of a model can exceed a limit), records every refusal in `risk_events`, halts buying after five
refusals in five minutes, and sends the orders through executor.py.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np

import executor
from common import render
from common.errors import EXIT_UNREACHABLE, ConfigError, MomentumError
from common.types import BUY, Panel, Snapshot
from core import risk, systems
from core.option_math import quantity_text
from journal import reconcile, trade_book
from journal.schema import HELD

if TYPE_CHECKING:  # annotations only: the runtime module wires every port
    from flows.runtime import Runtime

log = logging.getLogger(__name__)


@dataclass
class ExecutionReport:
    closed: list[tuple[str, str]] = field(default_factory=list)  # (symbol, exit reason)
    bought: list[str] = field(default_factory=list)
    filled: dict[str, dict] = field(default_factory=dict)  # symbol -> qty, price, stop of the trade a buy opened
    pending: list[str] = field(default_factory=list)  # sent, not filled within the wait
    refused: list[tuple[str, str, str]] = field(default_factory=list)  # (symbol, gate, detail)
    halted_now: bool = False


def exit_reason_for(decider_reason: str) -> str:
    return "reversal" if decider_reason.startswith("reversal") else "edge_disappeared"


def execute(rt: Runtime, result, history: Panel, snap: Snapshot, scan_type: str) -> ExecutionReport:
    report = ExecutionReport()
    _closes(rt, result, report)
    if result.decision.buys:
        _buys(rt, result, history, snap, scan_type, report)
    return report


def _closes(rt: Runtime, result, report: ExecutionReport) -> None:
    for symbol, why in result.decision.closes:
        trade = rt.journal.one(f"SELECT * FROM trades WHERE symbol = ? AND {HELD} ORDER BY id DESC LIMIT 1", [symbol])
        if trade is None:
            continue
        reason = exit_reason_for(why)
        after = executor.close_position(rt, trade, reason=reason, priority="HIGH" if reason == "reversal" else "LOW")
        if after.closed:
            report.closed.append((symbol, reason))
    if report.closed:
        # the scan records its position checks after its orders: the poor signal takes the closing check's figures
        # from the views that check is written from (flows/scan.record_cap_scan), not the check before it
        closed = {symbol for symbol, _ in report.closed}
        trade_book.record_poor_signals(rt, {view["trade_id"]: view for view in result.positions
                                            if view["symbol"] in closed})


def returns_60d(history: Panel, symbols: list[str]) -> dict[str, np.ndarray]:
    closes = history.select(symbols).close[-61:]
    with np.errstate(invalid="ignore", divide="ignore"):
        returns = closes[1:] / closes[:-1] - 1.0
    return {symbol: returns[:, i] for i, symbol in enumerate(symbols)}


def portfolio_state(rt: Runtime, result, history: Panel, account, positions) -> risk.PortfolioState:
    journal = rt.journal
    stops = {o.symbol: o.stop_price for o in rt.broker.orders("open") if o.type in ("stop", "trailing_stop")}
    # a symbol another system holds is as taken as one with a working buy: one position and one stop per symbol
    others = {t["symbol"] for t in journal.held_trades("symbol")} - {p.symbol for p in positions}
    open_orders = {o.symbol for o in rt.broker.orders("open") if o.side == BUY} | others
    held = {p.symbol: risk.HeldPosition(p.symbol, p.qty, p.current_price, rt.cap_of(p.symbol), stops.get(p.symbol))
            for p in positions}
    settings = journal.settings()
    breaker = journal.state("circuit_breaker_session") == str(rt.clock.today())
    context = result.context
    symbols = list(dict.fromkeys(list(held) + result.decision.buys))
    return risk.PortfolioState(
        equity=account.equity, cash=account.cash, buying_power=account.buying_power,
        start_of_day_equity=account.last_equity, positions=held, open_order_symbols=open_orders,
        universe=set(rt.universe.symbols("all")), tradable=None,
        market_open=rt.calendar.is_open(rt.clock.now()), halted=settings["halt"] == "on", circuit_breaker=breaker,
        regime=context.get("regime"), regime_factor=context.get("exposure_factor", 1.0),
        returns_60d=returns_60d(history, symbols), buys_this_scan_by_cap={result.cap: 0})


def proposals_for(rt: Runtime, result, account, limits: risk.RiskLimits) -> list[risk.OrderProposal]:
    closed_returns = [r["pnl_pct"] / 100 for r in rt.journal.query(
        "SELECT pnl_pct FROM trades WHERE status = 'closed' AND pnl_pct IS NOT NULL AND strategy = 'momentum'")]
    proposals = []
    for symbol in result.decision.buys:
        row = result.frame.loc[symbol]
        price, atr = float(row["price"]), float(row["atr_14"])
        sizing = risk.size_position(limits.sizing_method, account.equity, price, atr, closed_returns, limits)
        proposals.append(risk.OrderProposal(symbol, BUY, sizing.qty, price, result.cap, atr_14=atr))
    return proposals


def record_refusals(rt: Runtime, result, refused: list[risk.GateResult], report: ExecutionReport) -> None:
    journal = rt.journal
    for gate_result in refused:
        p = gate_result.proposal
        journal.db.table("risk_events").insert({
            "created_at": journal.now(), "run_id": journal.run_id, "scan_id": result.scan_id, "symbol": p.symbol,
            "side": p.side, "qty": p.qty, "gate": gate_result.gate, "detail": gate_result.detail})
        report.refused.append((p.symbol, gate_result.gate, gate_result.detail))
    if refused and journal.setting("halt") != "on":
        # a closed market refuses every order by design; the storm guards against refusals that signal a fault
        times = [datetime.fromisoformat(r["created_at"]) for r in journal.query(
            "SELECT created_at FROM risk_events WHERE gate != 'market_hours' ORDER BY id DESC LIMIT ?",
            [risk.REFUSAL_STORM_COUNT])]
        if risk.refusal_storm(times, rt.clock.now()):
            journal.set_setting("halt", "on", by="risk")
            journal.event("critical", "alert", "buying HALTED: five order refusals within five minutes "
                          "(see risk_events); `resume` to trade again", source="risk")
            report.halted_now = True


def sleeve_positions(rt: Runtime, positions: list, system: str) -> list:
    """The broker positions that belong to `system`'s sleeve (core/systems.py): its held trades, and a position no
    trade explains counted against momentum, the conservative choice."""
    owner = {t["symbol"]: systems.of_trade(t) for t in rt.journal.held_trades("symbol, strategy")}
    return [p for p in positions if owner.get(p.symbol, systems.MOMENTUM) == system]


def _buys(rt: Runtime, result, history: Panel, snap: Snapshot, scan_type: str, report: ExecutionReport) -> None:
    account = rt.broker.account()
    # the momentum sleeve's gates count its own positions; the account's cash and buying power are the whole's
    positions = sleeve_positions(rt, rt.broker.positions(), systems.MOMENTUM)
    limits = risk.RiskLimits.from_config(rt.config)
    state = portfolio_state(rt, result, history, account, positions)
    checked = risk.check_orders(proposals_for(rt, result, account, limits), state, limits)
    record_refusals(rt, result, [g for g in checked if not g.allowed], report)
    config_id = rt.journal.config_id(rt.config)
    invested = sum(p.market_value for p in positions)
    for gate_result in (g for g in checked if g.allowed):
        p = gate_result.proposal
        trade = executor.open_position(
            rt, symbol=p.symbol, cap=p.cap, qty=p.qty, session=str(result.session), scan_type=scan_type,
            trade_fields=_entry_fields(rt.config, result, p.symbol, account, invested, config_id),
            fill_timeout=rt.config.fill_timeout_s)
        if trade is None:
            continue
        (report.bought if trade["status"] in ("open", "unprotected") else report.pending).append(p.symbol)
        report.filled[p.symbol] = {"qty": trade["qty"], "price": trade["entry_price"],
                                   "stop": trade["trailing_stop_price"] if trade["status"] == "open" else None}


def profit_target(config, price: float) -> float | None:
    """A momentum signal's target: PROFIT_TARGET_R times the trailing stop's distance above the signal price (6 x 5%
    = +30% by default, beyond both partial exits, so it takes the last quarter); None when R is 0."""
    if config.profit_target_r <= 0 or not np.isfinite(price):
        return None
    return round(price * (1 + config.profit_target_r * config.trailing_stop_pct / 100), 2)


def _entry_fields(config, result, symbol: str, account, invested: float, config_id: int) -> dict:
    row = result.frame.loc[symbol]
    signals = {k: (None if isinstance(v, float) and not np.isfinite(v) else
                   (bool(v) if isinstance(v, (bool, np.bool_)) else (float(v) if isinstance(v, (int, float, np.number))
                                                                     else v)))
               for k, v in row.items()}
    context = result.context
    return {"strategy": "momentum", "asset_class": "us_equity", "entry_signals": json.dumps(signals),
            "target_price": profit_target(config, float(row["price"])),
            "composite_score": int(row["score"]), "spy_price": context.get("spy_price"),
            "spy_trend": context.get("trend"), "vix": context.get("vix"), "regime": context.get("regime"),
            "cash_pct": account.cash / account.equity * 100 if account.equity else None,
            "exposure_pct": invested / account.equity * 100 if account.equity else None,
            "state_vector": json.dumps({"score": int(row["score"]), "rvol": signals.get("rvol"),
                                        "roc_10d": signals.get("roc_10d"), "rsi_14": signals.get("rsi_14"),
                                        "breadth": context.get("breadth"), "vix": context.get("vix")}),
            "config_id": config_id}


# --- operator actions ---------------------------------------------------------------------------------------------

class CloseNotSent(MomentumError):
    """`close` sent no sell (the stop would not cancel, the shares stayed held, the broker refused): retry later."""

    exit_code = EXIT_UNREACHABLE


def close_symbol(rt: Runtime, symbol: str, *, reason: str = "manual", priority: str = "HIGH") -> executor.CloseResult:
    """`close SYMBOL`: close the open trade in `symbol` (reconciling first so the journal is current)."""

    if not symbol.strip():
        raise ConfigError("close: no symbol given (e.g. close AAPL)")
    reconcile.reconcile(rt)
    trade = rt.journal.one(f"SELECT * FROM trades WHERE symbol = ? AND {HELD} "
                           "ORDER BY id DESC LIMIT 1", [symbol.upper()])
    if trade is None:
        raise ConfigError(f"close: no open position in {symbol.upper()}")
    return executor.close_position(rt, trade, reason=reason, priority=priority)


def close_text(result: executor.CloseResult) -> str:
    """One line saying exactly what a close did, for the command line and the bot."""
    trade = result.trade
    if result.closed:
        return (f"closed {trade['symbol']} {quantity_text(trade['symbol'], trade['qty'])} at "
                f"{render.money(trade['exit_price'])} "
                f"(P&L {render.signed_money(trade['pnl'])}, {render.pct(trade['pnl_pct'])})")
    if result.sent:
        return (f"close of {trade['symbol']} sent; not filled yet (trade {trade['status']}); reconciliation records "
                "the fill")
    protection = ("it is UNPROTECTED (critical alert raised)" if trade["status"] == "unprotected"
                  else "its stop is in place")
    return f"close of {trade['symbol']} NOT sent: {result.detail}; {protection}"


def halt(rt: Runtime, *, flatten: bool) -> list[executor.CloseResult]:
    """Stop buying; with flatten, also close every position at market (kill switch)."""

    rt.journal.set_setting("halt", "on", by="halt")
    rt.journal.event("critical", "alert", "trading HALTED by the operator" + (" with flatten" if flatten else ""),
                     source="halt")
    if not flatten:
        return []
    reconcile.reconcile(rt)
    trades = rt.journal.held_trades()
    return [executor.close_position(rt, t, reason="kill_switch", priority="CRITICAL") for t in trades]


def resume(rt: Runtime) -> None:
    rt.journal.set_setting("halt", "off", by="resume")
    rt.journal.event("warning", "alert", "trading resumed by the operator", source="resume")

"""The 52-week-high momentum rebalance (SPEC section 10), run monthly.

Rank the universe by price / 52-week high (closest to the high first) among names with a full year of history and
a price above $5, hold the top N at equal weight times the regime's allocation factor, and trade the difference:
OPEN new names, ADJUST a holding whose value drifted more than 2% of equity from its target, CLOSE names that
dropped out. Buying power is counted net of the sells; sells are sent first and their fills awaited before buys.
Rebalance positions are trades with strategy "rebalance" and, like every position, carry a trailing stop.
"""
from __future__ import annotations

import csv
import logging
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

import executor
from common.errors import ConfigError
from common.render import table
from core import corporate_actions
from flows.operator import require_market_open
from journal import reconcile, regime_labels

if TYPE_CHECKING:  # annotations only: the runtime module wires every port
    from flows.runtime import Runtime

log = logging.getLogger(__name__)
YEAR_SESSIONS = 252
MIN_PRICE = 5.0
DRIFT_FRAC = 0.02
CAPS = ("large", "mid", "small", "all")


@dataclass(frozen=True)
class PlannedOrder:
    action: str  # OPEN, ADJUST or CLOSE
    symbol: str
    side: str
    qty: int
    price: float
    target_value: float
    current_value: float
    ratio: float | None  # price / 52-week high
    trade_id: int | None = None


@dataclass
class RebalancePlan:
    session: str
    universe: str
    regime: str | None
    factor: float
    equity: float
    ranked: list[tuple[str, float]] = field(default_factory=list)  # (symbol, ratio), best first
    orders: list[PlannedOrder] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)
    executed: list[str] = field(default_factory=list)


def universe_symbols(rt: Runtime, name: str) -> list[str]:
    """A universe.json key, or a GICS sector from the constituents file (case-insensitive)."""
    if name.lower() in CAPS:
        return rt.universe.symbols(name.lower())
    path = constituents_path(rt)
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as err:
        raise ConfigError(f"rebalance: cannot read constituents file {path} ({err.strerror})") from None
    if not rows or "GICS Sector" not in rows[0] or "Symbol" not in rows[0]:
        raise ConfigError(f"rebalance: {path} needs Symbol and GICS Sector columns")
    symbols = [r["Symbol"].strip() for r in rows if r["GICS Sector"].strip().lower() == name.lower()]
    if not symbols:
        sectors = sorted({r["GICS Sector"] for r in rows})
        raise ConfigError(f"--universe: unknown universe {name!r} (use large, mid, small, all or a sector: "
                          f"{', '.join(sectors)})")
    return symbols


def constituents_path(rt: Runtime) -> Path:
    if rt.config.constituents_file:
        return Path(rt.config.constituents_file)
    source = rt.config.data_source
    if source.startswith("csv:"):
        return Path(source[4:]).parent / "sp500_constituents_sectors.csv"
    raise ConfigError("CONSTITUENTS_FILE: needed for a sector universe with this data source")


def rank_by_52_week_high(history, snap) -> list[tuple[str, float]]:
    """(symbol, price / 52-week high) for names with a full year of bars and price > $5, closest to the high first."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a symbol with no bars at all has no high: NaN
        year_high = np.nanmax(np.vstack([history.high[-YEAR_SESSIONS:], snap.high[None, :]]), axis=0)
    full_year = np.sum(np.isfinite(history.close[-YEAR_SESSIONS:]), axis=0) >= YEAR_SESSIONS
    price = np.asarray(snap.price, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = price / year_high
        eligible = full_year & (price > MIN_PRICE) & np.isfinite(ratio)
    order = sorted((i for i in np.flatnonzero(eligible)), key=lambda i: (-ratio[i], snap.symbols[i]))
    return [(snap.symbols[i], float(ratio[i])) for i in order]


def build_plan(rt: Runtime, universe: str, top_n: int) -> tuple[RebalancePlan, dict[str, float]]:
    """The order table for now: targets from the ranking and the regime, against current rebalance holdings."""
    if top_n < 1:
        raise ConfigError("--top-n: must be at least 1")
    symbols = universe_symbols(rt, universe)
    held = {t["symbol"]: t for t in _holdings(rt)}
    session, fraction = rt.calendar.current_or_last_session(rt.clock.now())
    cal = rt.calendar
    wanted = list(dict.fromkeys(symbols + list(held)))
    history = rt.market.bars(wanted, cal.sessions_back(session.day, YEAR_SESSIONS + 5),
                             cal.previous_session(session.day))
    history = corporate_actions.adjust_splits(history)  # a split inside the year would leave a stale high
    snap = rt.market.snapshot(wanted, session.day, fraction)
    regime = regime_labels.for_trading(rt, session.day)
    factor = regime["factor"] if regime else 1.0
    equity = rt.broker.account().equity
    ranked = rank_by_52_week_high(history.select(symbols), snap.select(symbols))
    prices = {s: float(p) for s, p in zip(snap.symbols, snap.price) if np.isfinite(p)}
    plan = RebalancePlan(str(session.day), universe, regime["regime"] if regime else None, factor, equity,
                         ranked=ranked)
    targets = {s: equity * factor / top_n for s, _ in ranked[:top_n]} if factor > 0 else {}
    plan.orders = _orders(targets, held, prices, dict(ranked), equity)
    return plan, prices


def _holdings(rt: Runtime) -> list[dict]:
    return rt.journal.query("SELECT * FROM trades WHERE strategy = 'rebalance' AND status IN "
                            "('open', 'unprotected') ORDER BY id")


def _orders(targets: dict[str, float], held: dict[str, dict], prices: dict[str, float], ratios: dict[str, float],
            equity: float) -> list[PlannedOrder]:
    orders = []
    for symbol, trade in held.items():
        if symbol not in targets:
            price = prices.get(symbol, trade["current_price"] or trade["entry_price"])
            orders.append(PlannedOrder("CLOSE", symbol, "sell", trade["qty"], price, 0.0, trade["qty"] * price,
                                       ratios.get(symbol), trade["id"]))
    for symbol, target in targets.items():
        price = prices[symbol]
        trade = held.get(symbol)
        current = trade["qty"] * price if trade else 0.0
        if trade is None:
            qty = math.floor(target / price)
            if qty > 0:
                orders.append(PlannedOrder("OPEN", symbol, "buy", qty, price, target, 0.0, ratios.get(symbol)))
        elif abs(target - current) > DRIFT_FRAC * equity:
            qty = math.floor(abs(target - current) / price)
            side = "buy" if target > current else "sell"
            if qty > 0:
                orders.append(PlannedOrder("ADJUST", symbol, side, qty, price, target, current, ratios.get(symbol),
                                           trade["id"]))
    return sorted(orders, key=lambda o: (o.side != "sell", o.symbol))  # sells first


def validate(rt: Runtime, plan: RebalancePlan) -> list[PlannedOrder]:
    """Buys are affordable with cash plus the proceeds of this plan's sells; the rest is refused and recorded."""
    account = rt.broker.account()
    available = account.buying_power + sum(o.qty * o.price for o in plan.orders if o.side == "sell")
    accepted = []
    for order in plan.orders:
        cost = order.qty * order.price
        if order.side == "buy" and cost > available + 0.01:
            plan.refused.append((order.symbol, f"cost {cost:,.2f} exceeds buying power net of sells "
                                               f"{available:,.2f}"))
            rt.journal.db.table("risk_events").insert({
                "created_at": rt.journal.now(), "run_id": rt.journal.run_id, "symbol": order.symbol, "side": "buy",
                "qty": order.qty, "gate": "buying_power", "detail": plan.refused[-1][1]})
            continue
        if order.side == "buy":
            available -= cost
        accepted.append(order)
    return accepted


def execute(rt: Runtime, plan: RebalancePlan, orders: list[PlannedOrder]) -> None:
    """Sells first (their fills awaited inside close_position), then buys sized in the plan."""
    for order in (o for o in orders if o.side == "sell"):
        trade = rt.journal.one("SELECT * FROM trades WHERE id = ?", [order.trade_id])
        qty = None if order.action == "CLOSE" else order.qty
        after = executor.close_position(rt, trade, reason="rebalance", priority="LOW", qty=qty)
        status = after.trade["status"] if after.sent else f"not sent ({after.detail})"
        plan.executed.append(f"{order.action} {order.symbol} -{order.qty}: {status}")
    for order in (o for o in orders if o.side == "buy"):
        if order.action == "OPEN":
            trade = executor.open_position(
                rt, symbol=order.symbol, cap=rt.cap_of(order.symbol), qty=order.qty, session=plan.session,
                scan_type="rebal", trade_fields={"strategy": "rebalance", "regime": plan.regime},
                fill_timeout=rt.config.fill_timeout_s)
            status = trade["status"] if trade else "already sent"
        else:
            trade = rt.journal.one("SELECT * FROM trades WHERE id = ?", [order.trade_id])
            status = executor.add_shares(rt, trade, order.qty, fill_timeout=rt.config.fill_timeout_s)["status"]
        plan.executed.append(f"{order.action} {order.symbol} +{order.qty}: {status}")
    executor.protect_all(rt)


def is_first_session_of_month(rt: Runtime) -> bool:
    today = rt.clock.today()
    if not rt.calendar.is_session(today):
        return False
    return rt.calendar.previous_session(today).month != today.month


def run_rebalance(rt: Runtime, universe: str, top_n: int, *, dry_run: bool, force: bool,
                  first_session_only: bool = False) -> RebalancePlan | None:

    if first_session_only and not is_first_session_of_month(rt):
        return None
    if not dry_run:
        require_market_open(rt, force=force, what="rebalance")
        if rt.journal.setting("halt") == "on":
            raise ConfigError("rebalance: trading is halted (`resume` first)")
    reconcile.reconcile(rt)
    plan, _ = build_plan(rt, universe, top_n)
    accepted = validate(rt, plan)
    if not dry_run:
        execute(rt, plan, accepted)
    rt.journal.event("info", "alert", f"rebalance {universe}: {len(accepted)} orders ({plan.regime or 'no regime'}, "
                     f"factor {plan.factor:g}){' DRY RUN' if dry_run else ''}", source="rebalance",
                     detail={"kind": "rebalance", "orders": [o.symbol for o in accepted]})
    return plan


def plan_text(plan: RebalancePlan, top_n: int) -> str:
    lines = [f"rebalance {plan.universe} on {plan.session}: regime {plan.regime or '-'} (allocation x{plan.factor:g}), "
             f"equity {plan.equity:,.2f}, top {top_n} by price / 52-week high"]
    rows = [{"action": o.action, "symbol": o.symbol, "side": o.side, "qty": o.qty, "price": o.price,
             "value": round(o.qty * o.price, 2), "target": round(o.target_value, 2),
             "current": round(o.current_value, 2), "52w ratio": o.ratio} for o in plan.orders]
    lines.append(table(rows, list(rows[0])) if rows else "no orders: the portfolio is on target")
    lines += [f"refused {symbol}: {why}" for symbol, why in plan.refused]
    lines += [f"  {line}" for line in plan.executed]
    return "\n".join(lines)

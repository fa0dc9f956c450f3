"""The 52-week-high momentum rebalance (SPEC section 10): monthly, with refills of emptied slots in between.

Ranking, on completed sessions only (README "What a decision can see"): among the universe's names with a full
year of bars (252 completed sessions) and a previous close above $5, the ratio previous close / highest high of the
252 completed sessions before today, higher first. Today's bar takes no part: during the session only its open is
known, and that open is the price the orders fill at, not an input of the decision. Ties (every name that closed
at its 52-week high has ratio 1.0, so they are frequent) go to the higher 12-month return, previous close / the
close 252 sessions before it: of two names at their high, the one that rose more over the year is the stronger
momentum name (and a name with no close a year back ranks after one with). Only a tie in both goes by ticker.

Holdings: the top REBALANCE_TOP_N names (`--top-n`), each at equity x REBALANCE_SLEEVE_PCT/100 x the regime's
allocation factor / N. A regime allocation of 0 (CRASH) makes every target 0: the full rebalance sells everything.
- The full rebalance (the month's first session): OPEN new names, ADJUST a holding whose value drifted more than 2%
  of equity from its target, CLOSE names that dropped out. Sells are sent first and their fills awaited before the
  buys; buying power counts the sells' proceeds.
- The refill (`refill_only`, the other sessions): when stops left fewer than N holdings, buy the best-ranked names
  not held, at the same per-name target, until N are held again. It sells and resizes nothing.
`run_scheduled` is the daily run at REBALANCE_TIME (cron, the replay): full on the month's first session, else refill.

The rebalance manages its own positions only (trades with strategy "rebalance"): it never sells or resizes a
momentum, option or adopted position, and it passes over a ranked name another system holds (the broker nets a
symbol into one position and the journal reconciles one trade per symbol), taking the next one instead.
A holding that the plan leaves above MAX_HOLDING_PCT of equity raises a warning event.
"""
from __future__ import annotations

import csv
import logging
import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

import executor
from common.clock import Session
from common.errors import ConfigError, OrderRejected
from common import render
from common.render import table
from common.types import Panel, sql_list
from core import corporate_actions
from flows.operator import require_market_open
from journal import reconcile, regime_labels
from journal.schema import HELD_STATUSES

if TYPE_CHECKING:  # annotations only: the runtime module wires every port
    from flows.runtime import Runtime

log = logging.getLogger(__name__)
YEAR_SESSIONS = 252
MIN_PRICE = 5.0
DRIFT_FRAC = 0.02
# A market buy fills above the price it was planned at (half the spread plus slippage: 0.045% to 0.12% at the sim
# broker) and a broker refuses a buy its cash cannot pay, so buying power counts buys this much dearer and sells this
# much cheaper; a buy that does not fit is trimmed to the whole shares that do. (Alpaca checks a market buy at a few
# percent above the price against buying power, margin included: a cash account fully invested may see its last buy
# refused, which is recorded while the other buys still go.)
COST_ALLOWANCE = 0.0025
CAPS = ("large", "mid", "small", "all")
STRATEGY = "rebalance"
FULL, REFILL = "rebalance", "refill"


@dataclass(frozen=True)
class Ranked:
    symbol: str
    ratio: float  # previous close / highest high of the 252 completed sessions before today
    return_12m: float  # previous close / the close 252 sessions before it - 1; NaN when unknown


@dataclass(frozen=True)
class PlannedOrder:
    action: str  # OPEN, ADJUST or CLOSE
    symbol: str
    side: str
    qty: int
    price: float
    target_value: float
    current_value: float
    ratio: float | None  # previous close / 52-week high
    trade_id: int | None = None


@dataclass
class RebalancePlan:
    session: str
    universe: str
    regime: str | None
    factor: float
    equity: float
    top_n: int
    mode: str = FULL  # FULL or REFILL
    target_value: float = 0.0  # per name
    ranked: list[Ranked] = field(default_factory=list)  # best first
    orders: list[PlannedOrder] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)
    trimmed: list[tuple[str, str]] = field(default_factory=list)
    oversized: list[tuple[str, float]] = field(default_factory=list)  # (symbol, % of equity after the plan)
    executed: list[str] = field(default_factory=list)


# --- the universe -------------------------------------------------------------------------------------------------

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


# --- pure decisions -----------------------------------------------------------------------------------------------

def rank_by_52_week_high(history: Panel) -> list[Ranked]:
    """The eligible names of `history` (completed sessions, the last row the session before today), best first:
    previous close / 252-session high, then the 12-month return, both higher first, then the ticker."""
    close, high = np.asarray(history.close, dtype=float), np.asarray(history.high, dtype=float)
    if close.shape[0] == 0:
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a symbol with no bars at all has no high: NaN
        year_high = np.nanmax(high[-YEAR_SESSIONS:], axis=0)
    full_year = np.sum(np.isfinite(close[-YEAR_SESSIONS:]), axis=0) >= YEAR_SESSIONS
    previous = close[-1]
    year_ago = close[-YEAR_SESSIONS - 1] if close.shape[0] > YEAR_SESSIONS else np.full_like(previous, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = previous / year_high
        return_12m = previous / year_ago - 1.0
        eligible = full_year & (previous > MIN_PRICE) & np.isfinite(ratio)
    chosen = np.flatnonzero(eligible)
    tie_break = np.where(np.isfinite(return_12m[chosen]), return_12m[chosen], -np.inf)
    tickers = np.array(history.symbols, dtype=str)[chosen]
    order = chosen[np.lexsort((tickers, -tie_break, -ratio[chosen]))]  # the last key sorts first
    return [Ranked(history.symbols[i], float(ratio[i]), float(return_12m[i])) for i in order]


def pick(ranked: Iterable[Ranked], count: int, *, skip: set[str], priced: set[str]) -> list[str]:
    """The `count` best-ranked names not in `skip` that have a price to trade at today."""
    picks = [r.symbol for r in ranked if r.symbol not in skip and r.symbol in priced]
    return picks[:max(count, 0)]


def plan_orders(targets: dict[str, float], held: dict[str, dict], prices: dict[str, float],
                ratios: dict[str, float], equity: float) -> list[PlannedOrder]:
    """OPEN, ADJUST (drift > 2% of equity) and CLOSE orders taking `held` (rebalance trades by symbol) to `targets`
    (value by symbol), sells first."""
    orders = []
    for symbol, trade in held.items():
        if symbol not in targets:
            price = prices.get(symbol, trade["current_price"] or trade["entry_price"])
            orders.append(PlannedOrder("CLOSE", symbol, "sell", trade["qty"], price, 0.0, trade["qty"] * price,
                                       ratios.get(symbol), trade["id"]))
    for symbol, target in targets.items():
        trade = held.get(symbol)
        price = prices.get(symbol)
        if price is None:  # a holding with no price today stays as it is
            continue
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


def values_after(orders: list[PlannedOrder], held: dict[str, dict], prices: dict[str, float]) -> dict[str, float]:
    """Value of each rebalance holding once `orders` filled at their planned prices."""
    shares = {symbol: trade["qty"] for symbol, trade in held.items()}
    for order in orders:
        shares[order.symbol] = shares.get(order.symbol, 0) + (order.qty if order.side == "buy" else -order.qty)
    values = {}
    for symbol, qty in shares.items():
        price = prices.get(symbol) or held.get(symbol, {}).get("current_price") or 0.0
        if qty > 0:
            values[symbol] = qty * price
    return values


def oversized(values: dict[str, float], equity: float, max_pct: float) -> list[tuple[str, float]]:
    """(symbol, % of equity) of each holding above `max_pct` of equity, largest first."""
    if equity <= 0:
        return []
    shares = [(symbol, value / equity * 100) for symbol, value in values.items()]
    return sorted(((s, pct) for s, pct in shares if pct > max_pct), key=lambda pair: -pair[1])


# --- the plan -----------------------------------------------------------------------------------------------------

def build_plan(rt: Runtime, universe: str, top_n: int | None = None, *, refill_only: bool = False
               ) -> tuple[RebalancePlan, dict[str, float]]:
    """The order table for now: targets from the ranking and the regime, against current rebalance holdings."""
    top_n = rt.config.rebalance_top_n if top_n is None else top_n
    if top_n < 1:
        raise ConfigError("--top-n: must be at least 1")
    symbols = universe_symbols(rt, universe)
    held = {t["symbol"]: t for t in _holdings(rt)}
    slots_full = refill_only and len(_occupied(rt)) >= top_n  # nothing to buy: the daily run needs no ranking
    session, ranked, prices = _market_view(rt, [] if slots_full else symbols, list(held))
    regime = regime_labels.for_trading(rt, session.day)
    factor = regime["factor"] if regime else 1.0
    equity = rt.broker.account().equity
    plan = RebalancePlan(str(session.day), universe, regime["regime"] if regime else None, factor, equity, top_n,
                         mode=REFILL if refill_only else FULL, ranked=ranked,
                         target_value=equity * rt.config.rebalance_sleeve_pct / 100 * factor / top_n)
    plan.orders = _orders_for(rt, plan, held, prices)
    plan.oversized = oversized(values_after(plan.orders, held, prices), equity, rt.config.max_holding_pct)
    return plan, prices


def _market_view(rt: Runtime, symbols: list[str], held: list[str]) -> tuple[Session, list[Ranked], dict[str, float]]:
    """The session, the ranking of `symbols` on the completed sessions before it, and today's prices of them and of
    the holdings (what the orders fill at, no input of the ranking)."""
    cal = rt.calendar
    session, fraction = cal.current_or_last_session(rt.clock.now())
    wanted = list(dict.fromkeys(symbols + held))
    if not wanted:
        return session, [], {}
    history = rt.market.bars(wanted, cal.sessions_back(session.day, YEAR_SESSIONS + 5),
                             cal.previous_session(session.day))
    history = corporate_actions.adjust_splits(history)  # a split inside the year would leave a stale high
    snap = rt.market.snapshot(wanted, session.day, fraction)
    prices = {s: float(p) for s, p in zip(snap.symbols, snap.price) if np.isfinite(p) and p > 0}
    return session, rank_by_52_week_high(history.select(symbols)), prices


def _orders_for(rt: Runtime, plan: RebalancePlan, held: dict[str, dict], prices: dict[str, float]
                ) -> list[PlannedOrder]:
    """The full rebalance's orders, or the refill's buys into the slots not in use (none at allocation 0)."""
    ratios = {r.symbol: r.ratio for r in plan.ranked}
    others = _held_by_other_systems(rt)
    slots = plan.top_n if plan.factor > 0 else 0
    if plan.mode == REFILL:
        occupied = _occupied(rt)
        names = pick(plan.ranked, slots - len(occupied), skip=others | occupied, priced=set(prices))
        return plan_orders(dict.fromkeys(names, plan.target_value), {}, prices, ratios, plan.equity)
    # a holding with no price today keeps its slot (and is not traded)
    names = pick(plan.ranked, slots, skip=others, priced=set(prices) | set(held))
    return plan_orders(dict.fromkeys(names, plan.target_value), held, prices, ratios, plan.equity)


def _holdings(rt: Runtime) -> list[dict]:
    return rt.journal.query("SELECT * FROM trades WHERE strategy = ? AND status IN ('open', 'unprotected') "
                            "ORDER BY id", [STRATEGY])


def _occupied(rt: Runtime) -> set[str]:
    """Symbols of the rebalance's slots in use: held, or bought and not filled yet."""
    return {row["symbol"] for row in rt.journal.query(
        f"SELECT DISTINCT symbol FROM trades WHERE strategy = ? AND status IN {sql_list(('pending', *HELD_STATUSES))}",
        [STRATEGY])}


def _held_by_other_systems(rt: Runtime) -> set[str]:
    """Symbols held or being bought by another system (momentum, options, an adopted position)."""
    return {row["symbol"] for row in rt.journal.query(
        f"SELECT DISTINCT symbol FROM trades WHERE strategy != ? AND status IN {sql_list(('pending', *HELD_STATUSES))}",
        [STRATEGY])}


# --- validation and execution -------------------------------------------------------------------------------------

def validate(rt: Runtime, plan: RebalancePlan) -> list[PlannedOrder]:
    """The rebalance's order check (halt and market hours are checked before the plan): no buy after the account's
    circuit breaker tripped today; buys affordable with cash plus the proceeds of this plan's sells, both counted
    with COST_ALLOWANCE, a buy that does not fit trimmed to the shares that do, and refused and recorded when none
    do. The sleeve's limits (REBALANCE_TOP_N slots of REBALANCE_SLEEVE_PCT) hold by construction of the plan."""
    account = rt.broker.account()
    available = account.buying_power + sum(o.qty * o.price for o in plan.orders if o.side == "sell") * (
        1 - COST_ALLOWANCE)
    breaker = rt.journal.state("circuit_breaker_session") == str(rt.clock.today())
    accepted = []
    for order in plan.orders:
        if order.side == "buy" and breaker:  # the account's day loss stops every system's buys, not its sells
            _refuse(rt, plan, order, "the circuit breaker tripped today: no buys until the next session",
                    gate="halted_or_circuit_breaker")
            continue
        if order.side == "buy":
            unit = order.price * (1 + COST_ALLOWANCE)
            fits = min(order.qty, math.floor((available + 0.01) / unit))
            if fits < 1:
                _refuse(rt, plan, order, f"cost {render.money(order.qty * unit)} exceeds buying power net "
                                         f"of sells {render.money(available)}")
                continue
            if fits < order.qty:
                why = f"{order.qty} -> {fits} shares: buying power net of sells {render.money(available)}"
                plan.trimmed.append((order.symbol, why))
                order = replace(order, qty=fits)
            available -= order.qty * unit
        accepted.append(order)
    return accepted


def _refuse(rt: Runtime, plan: RebalancePlan, order: PlannedOrder, why: str, gate: str = "buying_power") -> None:
    plan.refused.append((order.symbol, why))
    rt.journal.db.table("risk_events").insert({
        "created_at": rt.journal.now(), "run_id": rt.journal.run_id, "symbol": order.symbol, "side": "buy",
        "qty": order.qty, "gate": gate, "detail": why})


def execute(rt: Runtime, plan: RebalancePlan, orders: list[PlannedOrder]) -> None:
    """Sells first (their fills awaited inside close_position), then buys sized in the plan; a buy the broker refuses
    is recorded and the others still go."""
    for order in (o for o in orders if o.side == "sell"):
        trade = rt.journal.one("SELECT * FROM trades WHERE id = ?", [order.trade_id])
        qty = None if order.action == "CLOSE" else order.qty
        after = executor.close_position(rt, trade, reason="rebalance", priority="LOW", qty=qty)
        status = after.trade["status"] if after.sent else f"not sent ({after.detail})"
        plan.executed.append(f"{order.action} {order.symbol} -{order.qty}: {status}")
    for order in (o for o in orders if o.side == "buy"):
        try:
            status = _buy(rt, plan, order)
        except OrderRejected as err:
            status = f"rejected ({err})"
            rt.journal.event("warning", "alert", f"rebalance {order.action} {order.symbol} +{order.qty} rejected: "
                             f"{err}", source="rebalance")
        plan.executed.append(f"{order.action} {order.symbol} +{order.qty}: {status}")
    executor.protect_all(rt)


def _buy(rt: Runtime, plan: RebalancePlan, order: PlannedOrder) -> str:
    if order.action == "OPEN":
        trade = executor.open_position(
            rt, symbol=order.symbol, cap=rt.cap_of(order.symbol), qty=order.qty, session=plan.session,
            scan_type="rebal", trade_fields={"strategy": STRATEGY, "regime": plan.regime},
            fill_timeout=rt.config.fill_timeout_s)
        return trade["status"] if trade else "already sent"
    trade = rt.journal.one("SELECT * FROM trades WHERE id = ?", [order.trade_id])
    return executor.add_shares(rt, trade, order.qty, fill_timeout=rt.config.fill_timeout_s)["status"]


# --- the runs -----------------------------------------------------------------------------------------------------

def is_first_session_of_month(rt: Runtime) -> bool:
    today = rt.clock.today()
    if not rt.calendar.is_session(today):
        return False
    return rt.calendar.previous_session(today).month != today.month


def run_rebalance(rt: Runtime, universe: str, top_n: int | None = None, *, dry_run: bool, force: bool,
                  first_session_only: bool = False, refill_only: bool = False) -> RebalancePlan | None:
    """The full rebalance, or with `refill_only` the refill of emptied slots; None when `first_session_only` and
    today is not the month's first session. `top_n` defaults to REBALANCE_TOP_N."""
    if first_session_only and not is_first_session_of_month(rt):
        return None
    if not dry_run:
        require_market_open(rt, force=force, what="rebalance")
        if rt.journal.setting("halt") == "on":
            raise ConfigError("rebalance: trading is halted (`resume` first)")
    reconcile.reconcile(rt)
    plan, _ = build_plan(rt, universe, top_n, refill_only=refill_only)
    accepted = validate(rt, plan)
    if not dry_run:
        execute(rt, plan, accepted)
    for symbol, pct in plan.oversized:
        rt.journal.event("warning", "alert", f"rebalance {universe}: {symbol} would be {pct:.1f}% of equity, above "
                         f"MAX_HOLDING_PCT {rt.config.max_holding_pct:g}%", source="rebalance",
                         detail={"kind": "max_holding", "symbol": symbol, "pct": round(pct, 2)})
    rt.journal.event("info", "alert", f"{plan.mode} {universe}: {len(accepted)} orders ({plan.regime or 'no regime'},"
                     f" factor {plan.factor:g}){' DRY RUN' if dry_run else ''}", source="rebalance",
                     detail={"kind": plan.mode, "orders": [o.symbol for o in accepted]})
    return plan


def crash_to_cash(rt: Runtime) -> bool:
    """The regime's allocation is zero (CRASH) and the rebalance still holds something: it goes to cash today."""
    regime = regime_labels.for_trading(rt, rt.clock.today())  # None with the regime filter off
    return bool(regime) and regime["factor"] <= 0 and bool(_holdings(rt))


def run_scheduled(rt: Runtime, universe: str, top_n: int | None = None, *, dry_run: bool, force: bool
                  ) -> RebalancePlan | None:
    """The daily run at REBALANCE_TIME (cron and the replay): the full rebalance on the month's first session and on
    the first day of a CRASH (the allocation is zero: everything is sold), the refill on the others."""
    full = is_first_session_of_month(rt) or crash_to_cash(rt)
    return run_rebalance(rt, universe, top_n, dry_run=dry_run, force=force, refill_only=not full)


def plan_text(plan: RebalancePlan, top_n: int | None = None) -> str:
    what = "refill of emptied slots" if plan.mode == REFILL else "rebalance"
    header = (f"{what} {plan.universe} on {plan.session}: regime {plan.regime or '-'} (allocation x{plan.factor:g}), "
              f"equity {render.money(plan.equity)}, top {plan.top_n if top_n is None else top_n} by previous close / "
              f"52-week high, {render.money(plan.target_value)} a name")
    lines = [header]
    rows = [{"action": o.action, "symbol": o.symbol, "side": o.side, "qty": o.qty, "price": o.price,
             "value": render.as_money(o.qty * o.price), "target": render.as_money(o.target_value),
             "current": render.as_money(o.current_value), "52w ratio": o.ratio} for o in plan.orders]
    empty = "no orders: every slot is held" if plan.mode == REFILL else "no orders: the portfolio is on target"
    lines.append(table(rows, list(rows[0])) if rows else empty)
    lines += [f"trimmed {symbol}: {why}" for symbol, why in plan.trimmed]
    lines += [f"refused {symbol}: {why}" for symbol, why in plan.refused]
    lines += [f"warning: {symbol} would be {render.level(pct)} of equity" for symbol, pct in plan.oversized]
    lines += [f"  {line}" for line in plan.executed]
    return "\n".join(lines)

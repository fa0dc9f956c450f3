"""STRAT signals executed as options (SPEC section 12), through the same journal and executor as the stocks.

For each untraded signal of the scanned bar, in the order given (best reward:risk first):
1. gates: halt, today's circuit breaker, market hours (unless --force), at most OPTIONS_MAX_POSITIONS open or
   pending option trades, one option position per underlying; the underlying must still sit between the signal's
   stop and target (a signal already stopped out or already at its target is not traded);
2. the chain (from where the orders go: the sim's Black-Scholes chain, or Alpaca's listed contracts) and the
   contract choice (option_math.choose_contract: 7-21 days, |delta| 0.40-0.55, calls for bullish, puts for bearish);
3. whole contracts within OPTIONS_MAX_CAPITAL, checked against buying power (premium x 100);
4. one DAY limit buy at the ask (rounded up to the tick) with the client_order_id `ma-o-<signal id>`: the trade
   (pending, asset_class us_option, strategy strat_options), its order (purpose option) and the signal's status
   `ordered` are committed in one transaction BEFORE the broker call, so a signal is never bought twice; the fill
   opens the trade through the shared fill ledger (journal/trade_book.py), and a DAY order that expires unfilled
   cancels it.
A risk-gate refusal (slots, duplicate underlying, buying power) is recorded in `risk_events`, the others as info
events. A gate that may clear later (halt, market closed, no free slot, buying power) leaves the signal `new`; a
refusal about the signal itself (stopped out, at target, underlying already held, no fitting contract) marks it
`skipped`.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from common import render
from common.types import BUY, FINAL_STATUSES, LIMIT, OrderRequest
from core import option_math
from executor import record_intent, settle_fills, submit, wait_filled
from flows import quotes

if TYPE_CHECKING:  # annotations only: the runtime module wires every port
    from flows.runtime import Runtime

log = logging.getLogger(__name__)
LIVE_OPTION_STATUSES = ("pending", "open", "unprotected", "external")
STRATEGY = "strat_options"


@dataclass
class Execution:
    signal_id: int
    underlying: str
    status: str  # filled, ordered, skipped, waiting
    reason: str
    contract: str | None = None
    qty: int = 0
    limit_price: float | None = None
    trade_id: int | None = None
    fill_price: float | None = None  # the average fill of the contracts bought (filled only)

    @property
    def cost(self) -> float | None:
        """Premium paid: fill x contracts x 100."""
        return self.fill_price * self.qty * option_math.OPTION_MULTIPLIER if self.fill_price is not None else None

    def text(self) -> str:
        """What happened to the signal: a fill at its price (the limit only as the limit), else the order or why
        nothing was sent."""
        head = f"signal {self.signal_id} {self.underlying}: {self.status}"
        if not self.contract:
            return f"{head} - {self.underlying}; {self.reason}"
        if self.fill_price is not None:
            what = (f"{self.contract} x{self.qty} at {premium_text(self.fill_price)} (limit {self.limit_price:.2f}), "
                    f"cost {render.money(self.cost)}")
        else:
            what = f"{self.contract} x{self.qty}, limit {self.limit_price:.2f}"
            if self.status == "ordered":
                what += ", not filled yet (reconciliation records the fill)"
        return f"{head} {what}; {self.reason}"


def premium_text(price: float) -> str:
    """A premium as dollars per share: two decimals, more when a fill carries more (a sim fill with its costs)."""
    return f"{price:.2f}" if abs(price - round(price, 2)) < 1e-9 else f"{price:.4f}".rstrip("0")


def order_id_for(signal_id: int) -> str:
    return f"ma-o-{signal_id}"


def contract_rules(config) -> option_math.ContractRules:
    return option_math.ContractRules(max_capital=float(config.options_max_capital),
                                 max_positions=int(config.options_max_positions))


def chain_source(rt: Runtime):
    """Where contracts come from: the broker's own listing (Alpaca) or the simulated Black-Scholes chain."""
    if rt.config.broker == "alpaca":
        from ports.alpaca import options  # lazy: alpaca-py loads only when options trade through Alpaca

        return options.AlpacaChain(options.client_for(rt))
    from ports import option_market  # lazy: the option chain is read only when a signal is traded

    return option_market.SimChain(rt.market)


# --- gates --------------------------------------------------------------------------------------------------------

def _refuse(rt: Runtime, signal: dict, gate: str, detail: str, *, final: bool, risk_gate: bool = False) -> Execution:
    """A signal not traded now. Risk-gate refusals go to risk_events (they count towards the refusal storm);
    the rest (no contract, signal no longer valid) is an info event."""
    journal = rt.journal
    with journal.atomic():
        if risk_gate:
            journal.db.table("risk_events").insert({"created_at": journal.now(), "run_id": journal.run_id,
                                                    "symbol": signal["symbol"], "side": BUY,
                                                    "gate": f"options_{gate}", "detail": detail})
        else:
            journal.event("info", "options", f"STRAT signal {signal['id']} {signal['symbol']} not traded: "
                          f"{gate}: {detail}", source="options")
        if final:
            journal.db.execute("UPDATE strat_signals SET status = 'skipped' WHERE id = ? AND status = 'new'",
                               [signal["id"]])
    return Execution(signal["id"], signal["symbol"], "skipped" if final else "waiting", f"{gate}: {detail}")


def _session_gate(rt: Runtime, force: bool) -> tuple[str, str] | None:
    """A reason no option may be bought in this run at all, or None."""
    journal = rt.journal
    if journal.setting("halt") == "on":
        return "halted", "trading is halted (`resume` to allow buys)"
    if journal.state("circuit_breaker_session") == str(rt.clock.today()):
        return "circuit_breaker", "circuit breaker tripped today: no buys until the next session"
    if not force and not rt.calendar.is_open(rt.clock.now()):
        return "market_hours", "market closed (use --force to send anyway)"
    return None


def live_option_trades(journal) -> list[dict]:
    marks = ",".join("?" * len(LIVE_OPTION_STATUSES))
    return journal.query(f"SELECT * FROM trades WHERE asset_class = ? AND status IN ({marks}) ORDER BY id",
                         [option_math.OPTION, *LIVE_OPTION_STATUSES])


def _underlying_of(trade: dict) -> str | None:
    try:
        return json.loads(trade["entry_signals"] or "{}").get("underlying")
    except ValueError:
        return None


def signal_still_valid(signal: dict, price: float) -> str | None:
    """Why the underlying's price makes the signal untradeable (stopped out, target reached), or None."""
    stop, target = signal["stop"], signal["target"]
    if signal["direction"] == "bullish":
        if price <= stop:
            return f"underlying {price:.2f} at or below the stop {stop:.2f}"
        if price >= target:
            return f"underlying {price:.2f} already at the target {target:.2f}"
    else:
        if price >= stop:
            return f"underlying {price:.2f} at or above the stop {stop:.2f}"
        if price <= target:
            return f"underlying {price:.2f} already at the target {target:.2f}"
    return None


# --- execution ----------------------------------------------------------------------------------------------------

def execute_signals(rt: Runtime, signals: list[dict], *, force: bool = False) -> list[Execution]:
    """Trade each signal as an option where every gate allows it; returns what happened to each."""
    if not signals:
        return []
    blocked = _session_gate(rt, force)
    if blocked:
        return [Execution(s["id"], s["symbol"], "waiting", f"{blocked[0]}: {blocked[1]}") for s in signals]

    snap = quotes.current(rt, sorted({s["symbol"] for s in signals}))
    source = chain_source(rt)
    return [_execute_one(rt, signal, float(snap.price[snap.index(signal["symbol"])]), source, force=force)
            for signal in signals]


def _execute_one(rt: Runtime, signal: dict, price: float, source, *, force: bool) -> Execution:
    journal, rules = rt.journal, contract_rules(rt.config)
    if journal.one("SELECT 1 FROM orders WHERE client_order_id = ?", [order_id_for(signal["id"])]):
        return Execution(signal["id"], signal["symbol"], "ordered", "already ordered; not sent again")
    live = live_option_trades(journal)
    if len(live) >= rules.max_positions:
        return _refuse(rt, signal, "max_positions", f"{len(live)} option positions open or pending "
                                                    f"(max {rules.max_positions})", final=False,
                       risk_gate=True)
    if any(_underlying_of(t) == signal["symbol"] for t in live):
        return _refuse(rt, signal, "duplicate", f"an option on {signal['symbol']} is already held", final=True,
                       risk_gate=True)
    if not math.isfinite(price):
        return _refuse(rt, signal, "no_price", f"no current price for {signal['symbol']}", final=False)
    invalid = signal_still_valid(signal, price)
    if invalid:
        return _refuse(rt, signal, "signal_invalid", invalid, final=True)
    bullish = signal["direction"] == "bullish"
    today = rt.clock.today()
    choice = option_math.choose_contract(source.chain(signal["symbol"], price, today, bullish), bullish, today, price,
                                     rules)
    if choice.quote is None:
        return _refuse(rt, signal, "no_contract", choice.reason, final=True)
    cost = choice.qty * choice.limit_price * option_math.OPTION_MULTIPLIER
    buying_power = rt.broker.account().buying_power
    if cost > buying_power + 1e-9:
        return _refuse(rt, signal, "buying_power", f"{render.money(cost)} needed, {render.money(buying_power)} "
                       "available", final=False, risk_gate=True)
    return _buy(rt, signal, choice, price)


def _entry_signals(signal: dict, choice: option_math.Choice, underlying_price: float) -> str:
    quote = choice.quote
    return json.dumps({
        "signal_id": signal["id"], "underlying": signal["symbol"], "timeframe": signal["timeframe"],
        "pattern": signal["pattern"], "direction": signal["direction"], "kind": signal["kind"],
        "bar_date": signal["bar_date"], "entry_trigger": signal["entry_trigger"], "stop": signal["stop"],
        "target": signal["target"], "underlying_price": round(underlying_price, 4),
        "contract": {"symbol": quote.symbol, "type": quote.kind, "strike": quote.strike,
                     "expiry": str(quote.expiry), "delta": quote.delta, "iv": quote.iv, "bid": quote.bid,
                     "ask": quote.ask}})


def _buy(rt: Runtime, signal: dict, choice: option_math.Choice, underlying_price: float) -> Execution:
    journal = rt.journal
    quote = choice.quote
    request = OrderRequest(order_id_for(signal["id"]), quote.symbol, BUY, LIMIT, choice.qty, time_in_force="day",
                           limit_price=choice.limit_price)
    with journal.atomic():
        trade_id = journal.db.table("trades").insert({
            "symbol": quote.symbol, "cap": None, "strategy": STRATEGY, "asset_class": option_math.OPTION,
            "qty": choice.qty, "original_qty": choice.qty, "status": "pending",
            "entry_order_id": request.client_order_id, "entry_signals": _entry_signals(signal, choice,
                                                                                        underlying_price),
            "config_id": journal.config_id(rt.config), "run_id": journal.run_id,
            "last_update": journal.now()}).last_pk
        record_intent(journal, request, "option", trade_id)
        journal.db.execute("UPDATE strat_signals SET status = 'ordered' WHERE id = ?", [signal["id"]])
    order = submit(rt, request, "option", trade_id)
    if order is not None and order.status not in FINAL_STATUSES:
        order = wait_filled(rt, order, rt.config.fill_timeout_s)
    settle_fills(rt)
    trade = journal.one("SELECT * FROM trades WHERE id = ?", [trade_id])
    status = "filled" if trade["status"] == "open" else ("ordered" if order is not None else "rejected")
    if trade["status"] != "open":
        return Execution(signal["id"], signal["symbol"], status, choice.reason, quote.symbol, choice.qty,
                         choice.limit_price, trade_id)
    # what was bought is the trade's: the contracts filled at their average fill price, under the limit sent
    execution = Execution(signal["id"], signal["symbol"], status, choice.reason, quote.symbol, trade["qty"],
                          choice.limit_price, trade_id, fill_price=trade["entry_price"])
    journal.event("info", "alert", f"BUY OPTION {quote.symbol} x{trade['qty']} at {premium_text(trade['entry_price'])} "
                  f"({signal['symbol']} {signal['pattern']} {signal['direction']}; cost "
                  f"{render.money(execution.cost)})", source="options",
                  detail={"kind": "entry", "symbol": quote.symbol, "signal_id": signal["id"]})
    return execution

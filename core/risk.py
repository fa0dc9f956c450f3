"""Position sizing and the pre-trade risk gates (SPEC section 7): pure functions, no I/O, no clock.

Conventions: every limit in RiskLimits is a FRACTION (0.10 means 10% of equity); the configuration holds percents
and `RiskLimits.from_config` divides them by 100. Quantities are whole shares, prices are dollars.

The gates judge a whole batch of proposed orders the way the executor will send it: sells first, then buys in
the decider's ranking. Every accepted order updates a running copy of the portfolio, so later orders in the batch
see it; no batch, however long, can take the portfolio past a limit. The decider proposes, the gates dispose:
this holds for the rules decider and for any reply of the model decider.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Callable, Sequence

import numpy as np

from common.types import BUY, SELL

CAPS = ("large", "mid", "small")
CRASH = "CRASH"
MIN_PRICE = 5.0  # dollars; the scanner's floor too, so a cheaper buy can only come from an untrusted decider
POSITION_SIZE_TOLERANCE = 0.005  # relative: a 10% limit admits 10.05%, room for a price tick between sizing and gate
KELLY_MIN_TRADES = 20
KELLY_FRACTION = 0.25  # quarter Kelly: full Kelly is far too volatile on a noisy estimate of the edge
ATR_STOP_MULTIPLE = 2.0  # the atr method assumes the stop sits 2 x ATR14 below the entry
MIN_CORRELATION_DAYS = 20  # fewer overlapping days than this say too little to refuse an order on
REFUSAL_STORM_COUNT = 5
REFUSAL_STORM_WINDOW_S = 300


# --- limits -------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RiskLimits:
    """Every risk limit, as fractions of equity (SPEC section 4 defaults). Not hashable: it holds dicts."""

    sizing_method: str = "fixed"  # fixed, atr or kelly
    position_size_frac: float = 0.10  # one position's value, fraction of equity
    atr_risk_frac: float = 0.01  # atr sizing: equity fraction lost if the 2 x ATR14 stop is hit
    max_positions: int = 6
    max_exposure_frac: float = 0.60  # invested value, before the regime factor
    trailing_stop_frac: float = 0.05
    hard_stop_frac: float = 0.08
    daily_loss_limit_frac: float = 0.03  # of start-of-day equity
    max_heat_frac: float = 0.06  # open risk to stops, fraction of equity
    max_correlation: float = 0.70  # Pearson coefficient of 60-day daily returns
    max_positions_by_cap: dict[str, int] = field(default_factory=lambda: {cap: 2 for cap in CAPS})
    max_buys_by_cap: dict[str, int] = field(default_factory=lambda: {cap: 2 for cap in CAPS})

    @classmethod
    def from_config(cls, config: Any) -> "RiskLimits":
        """Limits from a validated Config (percent settings become fractions)."""
        return cls(
            sizing_method=config.position_sizing,
            position_size_frac=config.position_size_pct / 100,
            atr_risk_frac=config.atr_risk_pct / 100,
            max_positions=config.max_positions,
            max_exposure_frac=config.max_exposure_pct / 100,
            trailing_stop_frac=config.trailing_stop_pct / 100,
            hard_stop_frac=config.hard_stop_pct / 100,
            daily_loss_limit_frac=config.daily_loss_limit_pct / 100,
            max_heat_frac=config.max_portfolio_heat_pct / 100,
            max_correlation=config.max_correlation,
            max_positions_by_cap={cap: config.get(f"MAX_POSITIONS_{cap.upper()}") for cap in CAPS},
            max_buys_by_cap={cap: config.get(f"MAX_BUYS_{cap.upper()}") for cap in CAPS},
        )


def _at_most(value: float, limit: float) -> bool:
    """value <= limit, forgiving the binary rounding that percent-to-fraction arithmetic leaves behind."""
    return value <= limit + 1e-9 * max(1.0, abs(limit))


def _pct(value: float, of: float) -> float:
    return 100.0 * value / of if of > 0 else math.inf


# --- position sizing ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Sizing:
    qty: int  # whole shares, never negative
    method_used: str  # the method that produced qty (fixed when atr or kelly had to fall back)
    reason: str


def _whole_shares(dollars: float, price: float) -> int:
    if not (math.isfinite(dollars) and math.isfinite(price)) or dollars <= 0 or price <= 0:
        return 0
    return int(math.floor(dollars / price + 1e-9))  # 0.1 * 1000 / 10 must give 10 shares, not 9.999...


def fixed_size(equity: float, price: float, limits: RiskLimits) -> Sizing:
    qty = _whole_shares(equity * limits.position_size_frac, price)
    return Sizing(qty, "fixed", f"{limits.position_size_frac:.1%} of equity ${equity:,.2f} at ${price:,.2f}")


def atr_size(equity: float, price: float, atr_14: float | None, limits: RiskLimits) -> Sizing:
    """Risk atr_risk_frac of equity with the stop 2 x ATR14 away, never more shares than the fixed size.

    The cap matters on quiet stocks: a tiny ATR would otherwise put most of the account into one name.
    """
    fixed = fixed_size(equity, price, limits)
    if atr_14 is None or not math.isfinite(atr_14) or atr_14 <= 0:
        return replace(fixed, reason=f"no usable ATR14 ({atr_14}): fixed size, {fixed.reason}")
    stop_distance = ATR_STOP_MULTIPLE * atr_14
    risk_dollars = equity * limits.atr_risk_frac
    by_risk = _whole_shares(risk_dollars, stop_distance)
    if by_risk > fixed.qty:
        return Sizing(fixed.qty, "atr", f"risk ${risk_dollars:,.2f} / stop distance ${stop_distance:,.2f} gives "
                                        f"{by_risk} shares, capped at the fixed size {fixed.qty}")
    return Sizing(by_risk, "atr", f"risk ${risk_dollars:,.2f} / stop distance ${stop_distance:,.2f}")


def kelly_fraction(closed_returns: Sequence[float]) -> tuple[float, str]:
    """Full Kelly f = W - (1 - W) / R from closed trades' returns, with the numbers that produced it.

    A breakeven trade counts as a trade but not as a win. With no losing trade R is infinite and f = W.
    """
    returns = np.asarray([r for r in closed_returns if math.isfinite(r)], dtype=float)
    wins, losses = returns[returns > 0], returns[returns < 0]
    if len(returns) == 0 or len(wins) == 0:
        return 0.0, f"{len(returns)} trades, no winner"
    win_rate = len(wins) / len(returns)
    if len(losses) == 0:
        return win_rate, f"W={win_rate:.2f}, no loser"
    payoff = wins.mean() / abs(losses.mean())
    return win_rate - (1 - win_rate) / payoff, f"W={win_rate:.2f}, R={payoff:.2f}"


def kelly_size(equity: float, price: float, closed_returns: Sequence[float], limits: RiskLimits) -> Sizing:
    """Quarter Kelly of equity, never above the fixed fraction; fewer than 20 trades fall back to fixed."""
    if len(closed_returns) < KELLY_MIN_TRADES:
        fixed = fixed_size(equity, price, limits)
        return replace(fixed, reason=f"kelly needs {KELLY_MIN_TRADES} closed trades, have {len(closed_returns)}: "
                                     f"fixed size, {fixed.reason}")
    full_kelly, stats = kelly_fraction(closed_returns)
    if full_kelly <= 0:
        return Sizing(0, "kelly", f"negative edge: Kelly f={full_kelly:.3f} ({stats})")
    quarter_kelly = KELLY_FRACTION * full_kelly
    fraction = min(quarter_kelly, limits.position_size_frac)
    capped = " capped at the fixed size" if quarter_kelly > limits.position_size_frac else ""
    return Sizing(_whole_shares(equity * fraction, price), "kelly",
                  f"quarter Kelly {quarter_kelly:.2%} of equity{capped} (f={full_kelly:.3f}, {stats})")


def size_position(method: str, equity: float, price: float, atr_14: float | None = None,
                  closed_returns: Sequence[float] = (), limits: RiskLimits | None = None) -> Sizing:
    """Shares to buy by the configured method: fixed, atr or kelly."""
    limits = limits or RiskLimits()
    if method == "fixed":
        return fixed_size(equity, price, limits)
    if method == "atr":
        return atr_size(equity, price, atr_14, limits)
    if method == "kelly":
        return kelly_size(equity, price, closed_returns, limits)
    raise ValueError(f"unknown sizing method {method!r} (fixed, atr or kelly)")


# --- batch state --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class OrderProposal:
    symbol: str
    side: str  # BUY or SELL
    qty: int
    price: float  # the price the order is expected to fill at
    cap: str  # large, mid or small
    atr_14: float | None = None  # carried for the record; the initial stop is the trailing stop (SPEC 7)
    kind: str = "entry"  # entry opens a position; adjust adds to a held one (rebalance); exit for sells


@dataclass(frozen=True)
class HeldPosition:
    symbol: str
    qty: int
    price: float  # current price
    cap: str
    stop_price: float | None  # the working stop; None when unprotected


@dataclass
class PortfolioState:
    """The account as the executor sees it before the batch; check_orders never modifies it."""

    equity: float
    cash: float
    buying_power: float
    start_of_day_equity: float
    positions: dict[str, HeldPosition]
    open_order_symbols: set[str]  # symbols with a working order; a held symbol's own stop may be among them
    universe: set[str]
    tradable: set[str] | None  # None when the broker's asset list is unknown
    market_open: bool
    halted: bool
    circuit_breaker: bool
    regime: str | None
    regime_factor: float  # allocation factor: BULL 1.0, NEUTRAL 0.7, BEAR 0.3, CRASH 0
    returns_60d: dict[str, np.ndarray]  # daily returns, aligned, same length for every symbol
    buys_this_scan_by_cap: dict[str, int]  # buys already sent earlier in this scan (--cap all)


@dataclass(frozen=True)
class GateResult:
    proposal: OrderProposal
    allowed: bool
    gate: str | None  # the first gate that refused; None when allowed
    detail: str


@dataclass
class _Book:
    """The running portfolio while a batch is judged: what the account will look like if accepted orders fill."""

    state: PortfolioState
    positions: dict[str, HeldPosition]
    buying_power: float
    buys_by_cap: dict[str, int]
    batch_buy_symbols: set[str] = field(default_factory=set)

    @classmethod
    def open(cls, state: PortfolioState) -> "_Book":
        return cls(state, dict(state.positions), state.buying_power, dict(state.buys_this_scan_by_cap))

    def invested_value(self) -> float:
        return sum(position.qty * position.price for position in self.positions.values())

    def positions_in_cap(self, cap: str) -> int:
        return sum(1 for position in self.positions.values() if position.cap == cap)

    def open_risk(self, trailing_stop_frac: float) -> float:
        return sum(_position_risk(position, trailing_stop_frac) for position in self.positions.values())


def _position_risk(position: HeldPosition, trailing_stop_frac: float) -> float:
    """Dollars lost if the position's stop is hit; an unprotected one is assumed to sit a trailing stop away."""
    stop = position.stop_price if position.stop_price is not None else position.price * (1 - trailing_stop_frac)
    return max(0.0, position.price - stop) * position.qty


def _apply_sell(book: _Book, order: OrderProposal, limits: RiskLimits) -> None:
    held = book.positions[order.symbol]
    remaining = held.qty - order.qty
    if remaining > 0:
        book.positions[order.symbol] = replace(held, qty=remaining)
    else:
        del book.positions[order.symbol]
    book.buying_power += order.qty * order.price


def _apply_buy(book: _Book, order: OrderProposal, limits: RiskLimits) -> None:
    held = book.positions.get(order.symbol)
    initial_stop = order.price * (1 - limits.trailing_stop_frac)
    qty = order.qty + (held.qty if held else 0)
    # One trailing stop covers the whole position after a fill, so the whole position trails from this price.
    book.positions[order.symbol] = HeldPosition(order.symbol, qty, order.price, order.cap, initial_stop)
    book.buying_power -= order.qty * order.price
    book.buys_by_cap[order.cap] = book.buys_by_cap.get(order.cap, 0) + 1


# --- gates --------------------------------------------------------------------------------------------------------
# Each gate returns (passed, detail): a refusal's detail is one line naming the numbers; a pass may carry a note.

Check = tuple[bool, str]
PASS: Check = (True, "")


def _gate_halted_or_circuit_breaker(order: OrderProposal, book: _Book, limits: RiskLimits) -> Check:
    state = book.state
    if state.halted:
        return False, "trading is halted by the operator"
    # The breaker is re-derived from equity too, so a caller that forgot to set the flag is still covered.
    if state.circuit_breaker or daily_loss_breached(state.equity, state.start_of_day_equity, limits):
        day_pnl = _pct(state.equity - state.start_of_day_equity, state.start_of_day_equity)
        return False, (f"circuit breaker tripped: day P&L {day_pnl:+.2f}% "
                       f"(limit -{limits.daily_loss_limit_frac:.1%})")
    return PASS


def _gate_market_hours(order: OrderProposal, book: _Book, limits: RiskLimits) -> Check:
    return PASS if book.state.market_open else (False, "market is closed")


def _gate_regime(order: OrderProposal, book: _Book, limits: RiskLimits) -> Check:
    state = book.state
    if state.regime == CRASH or state.regime_factor <= 0:
        return False, f"regime {state.regime} (allocation factor {state.regime_factor:g}): no buys"
    return PASS


def _gate_symbol_valid(order: OrderProposal, book: _Book, limits: RiskLimits) -> Check:
    state = book.state
    if order.symbol not in state.universe:
        return False, f"{order.symbol} is not in the universe"
    if state.tradable is not None and order.symbol not in state.tradable:
        return False, f"{order.symbol} is not tradable at the broker"
    if not (math.isfinite(order.price) and order.price > MIN_PRICE):
        return False, f"price ${order.price:,.2f} is not above ${MIN_PRICE:,.2f}"
    if order.qty < 1:
        return False, f"quantity {order.qty} is below 1 share"
    return PASS


def _gate_duplicate(order: OrderProposal, book: _Book, limits: RiskLimits) -> Check:
    held = order.symbol in book.positions or order.symbol in book.state.positions
    if held and order.kind == "entry":
        return False, f"{order.symbol} is already held"
    if order.symbol in book.state.open_order_symbols:
        return False, f"{order.symbol} already has an open order"
    if order.symbol in book.batch_buy_symbols:
        return False, f"{order.symbol} is already bought earlier in this batch"
    return PASS


def _opens_position(order: OrderProposal, book: _Book) -> int:
    return 0 if order.symbol in book.positions else 1


def _gate_max_positions(order: OrderProposal, book: _Book, limits: RiskLimits) -> Check:
    after = len(book.positions) + _opens_position(order, book)
    if after > limits.max_positions:
        return False, f"{after} positions would exceed the maximum of {limits.max_positions}"
    return PASS


def _gate_max_positions_cap(order: OrderProposal, book: _Book, limits: RiskLimits) -> Check:
    cap_limit = limits.max_positions_by_cap.get(order.cap)
    if cap_limit is None:
        return False, f"unknown cap {order.cap!r} (known: {', '.join(limits.max_positions_by_cap)})"
    after = book.positions_in_cap(order.cap) + _opens_position(order, book)
    if after > cap_limit:
        return False, f"{after} {order.cap}-cap positions would exceed the maximum of {cap_limit}"
    return PASS


def _gate_max_buys_scan(order: OrderProposal, book: _Book, limits: RiskLimits) -> Check:
    buys_limit = limits.max_buys_by_cap.get(order.cap, 0)
    after = book.buys_by_cap.get(order.cap, 0) + 1
    if after > buys_limit:
        return False, f"{after} {order.cap}-cap buys this scan would exceed the maximum of {buys_limit}"
    return PASS


def _gate_position_size(order: OrderProposal, book: _Book, limits: RiskLimits) -> Check:
    held = book.positions.get(order.symbol)
    # An adjust adds to a held position: what must stay under the limit is the whole position.
    position_value = order.qty * order.price + (held.qty * held.price if held else 0.0)
    allowed = book.state.equity * limits.position_size_frac * (1 + POSITION_SIZE_TOLERANCE)
    if not _at_most(position_value, allowed):
        return False, (f"position ${position_value:,.2f} = {_pct(position_value, book.state.equity):.2f}% of equity "
                       f"would exceed {limits.position_size_frac:.1%} (+{POSITION_SIZE_TOLERANCE:.1%} tolerance)")
    return PASS


def _gate_exposure(order: OrderProposal, book: _Book, limits: RiskLimits) -> Check:
    state = book.state
    invested_after = book.invested_value() + order.qty * order.price
    allowed = state.equity * limits.max_exposure_frac * state.regime_factor
    if not _at_most(invested_after, allowed):
        return False, (f"exposure {_pct(invested_after, state.equity):.1f}% would exceed "
                       f"{limits.max_exposure_frac:.1%} x regime factor {state.regime_factor:.1f}")
    return PASS


def _gate_buying_power(order: OrderProposal, book: _Book, limits: RiskLimits) -> Check:
    cost = order.qty * order.price
    if not _at_most(cost, book.buying_power):
        return False, (f"cost ${cost:,.2f} exceeds buying power ${book.buying_power:,.2f} "
                       f"(net of this batch's accepted sells and buys)")
    return PASS


def _gate_portfolio_heat(order: OrderProposal, book: _Book, limits: RiskLimits) -> Check:
    equity = book.state.equity
    # A new entry's stop starts one trailing-stop distance below the fill.
    heat_after = book.open_risk(limits.trailing_stop_frac) + order.qty * order.price * limits.trailing_stop_frac
    allowed = equity * limits.max_heat_frac
    if not _at_most(heat_after, allowed):
        return False, (f"portfolio heat ${heat_after:,.2f} = {_pct(heat_after, equity):.2f}% of equity "
                       f"would exceed {limits.max_heat_frac:.1%}")
    return PASS


def pearson_correlation(returns_a: np.ndarray, returns_b: np.ndarray) -> float | None:
    """Correlation over the days both series have, or None when there is too little to judge.

    The series should already be aligned; if their lengths differ, the most recent days are paired.
    """
    days = min(len(returns_a), len(returns_b))
    a = np.asarray(returns_a, dtype=float)[len(returns_a) - days:]
    b = np.asarray(returns_b, dtype=float)[len(returns_b) - days:]
    both = np.isfinite(a) & np.isfinite(b)
    if both.sum() < MIN_CORRELATION_DAYS:
        return None
    a, b = a[both], b[both]
    if a.std() == 0 or b.std() == 0:
        return None  # a flat series has no defined correlation
    return float(np.corrcoef(a, b)[0, 1])


def _gate_correlation(order: OrderProposal, book: _Book, limits: RiskLimits) -> Check:
    returns = book.state.returns_60d
    held_symbols = sorted(symbol for symbol in book.positions if symbol != order.symbol)
    if not held_symbols:
        return PASS
    if returns.get(order.symbol) is None:
        return True, f"no 60-day returns for {order.symbol}: correlation not checked"
    correlations: dict[str, float] = {}
    unchecked: list[str] = []
    for symbol in held_symbols:
        value = pearson_correlation(returns[order.symbol], returns[symbol]) if symbol in returns else None
        if value is None:
            unchecked.append(symbol)
        else:
            correlations[symbol] = value
    if correlations:
        closest = max(correlations, key=lambda symbol: correlations[symbol])
        if not _at_most(correlations[closest], limits.max_correlation):
            return False, (f"60-day return correlation {correlations[closest]:.2f} with {closest} "
                           f"would exceed {limits.max_correlation:.2f}")
    return True, f"correlation not checked against {', '.join(unchecked)} (missing data)" if unchecked else ""


def _gate_symbol_held(order: OrderProposal, book: _Book, limits: RiskLimits) -> Check:
    return PASS if order.symbol in book.positions else (False, f"{order.symbol} is not held")


def _gate_sell_qty(order: OrderProposal, book: _Book, limits: RiskLimits) -> Check:
    held_qty = book.positions[order.symbol].qty
    if order.qty < 1 or order.qty > held_qty:
        return False, f"sell of {order.qty} shares but {held_qty} held"
    return PASS


Gate = Callable[[OrderProposal, _Book, RiskLimits], Check]

# Cheap, absolute refusals first, so a refused order names the most basic reason.
BUY_GATES: tuple[tuple[str, Gate], ...] = (
    ("halted_or_circuit_breaker", _gate_halted_or_circuit_breaker),
    ("market_hours", _gate_market_hours),
    ("regime", _gate_regime),
    ("symbol_valid", _gate_symbol_valid),
    ("duplicate", _gate_duplicate),
    ("max_positions", _gate_max_positions),
    ("max_positions_cap", _gate_max_positions_cap),
    ("max_buys_scan", _gate_max_buys_scan),
    ("position_size", _gate_position_size),
    ("exposure", _gate_exposure),
    ("buying_power", _gate_buying_power),
    ("portfolio_heat", _gate_portfolio_heat),
    ("correlation", _gate_correlation),
)
# Selling only reduces risk, so halts, the breaker and the regime never stop it.
SELL_GATES: tuple[tuple[str, Gate], ...] = (
    ("market_hours", _gate_market_hours),
    ("symbol_held", _gate_symbol_held),
    ("sell_qty", _gate_sell_qty),
)


def _judge(order: OrderProposal, book: _Book, limits: RiskLimits, gates: tuple[tuple[str, Gate], ...],
           apply: Callable[[_Book, OrderProposal, RiskLimits], None]) -> GateResult:
    notes: list[str] = []
    for name, gate in gates:
        passed, detail = gate(order, book, limits)
        if not passed:
            return GateResult(order, False, name, detail)
        if detail:
            notes.append(detail)
    apply(book, order, limits)
    return GateResult(order, True, None, "; ".join(notes) or "passed every gate")


def check_orders(proposals: Sequence[OrderProposal], state: PortfolioState,
                 limits: RiskLimits) -> list[GateResult]:
    """Judge a batch: sells first, then buys in the given (decider's ranking) order. result[i] is proposals[i]'s.

    `state` is not modified; accepted orders update a running copy that later orders are judged against.
    """
    book = _Book.open(state)
    results: dict[int, GateResult] = {}
    for index, order in enumerate(proposals):
        if order.side not in (BUY, SELL):
            results[index] = GateResult(order, False, "side", f"unknown side {order.side!r}")
    for index, order in enumerate(proposals):
        if order.side == SELL:
            results[index] = _judge(order, book, limits, SELL_GATES, _apply_sell)
    for index, order in enumerate(proposals):
        if order.side == BUY:
            results[index] = _judge(order, book, limits, BUY_GATES, _apply_buy)
            # A symbol proposed twice is refused the second time even if the first was refused: the batch is wrong.
            book.batch_buy_symbols.add(order.symbol)
    return [results[index] for index in range(len(proposals))]


# --- halts --------------------------------------------------------------------------------------------------------

def daily_loss_breached(equity: float, start_of_day_equity: float, limits: RiskLimits) -> bool:
    """True when the day's P&L is at or below -daily_loss_limit_frac of start-of-day equity."""
    if start_of_day_equity <= 0:
        return False  # no reference for the day: nothing to measure a loss against
    day_loss = start_of_day_equity - equity
    return _at_most(limits.daily_loss_limit_frac * start_of_day_equity, day_loss)


def refusal_storm(refusal_times: Sequence[datetime], now: datetime, count: int = REFUSAL_STORM_COUNT,
                  window_s: float = REFUSAL_STORM_WINDOW_S) -> bool:
    """True when at least `count` refusals fall within the last `window_s` seconds (both ends included)."""
    recent = [moment for moment in refusal_times if 0 <= (now - moment).total_seconds() <= window_s]
    return len(recent) >= count

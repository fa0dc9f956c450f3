"""Exit conditions of one held position (SPEC sections 8 and 12): pure functions, no I/O, no clock.

`evaluate` returns every condition that fires, all of them to be recorded, sorted so that the first one is the
exit to execute; `choose` picks it. The order is: priority (CRITICAL > HIGH > MEDIUM > LOW), then a full exit before
a partial of the same priority, then the table's order within the priority.

Decisions where the SPEC leaves room:
- Options (asset_class us_option) are judged by the option rows only (SPEC 12): DTE, the underlying's stop, max loss,
  the underlying's target, the premium gain; plus the portfolio-wide circuit breaker and kill switch. The equity
  rules (8% hard stop on the premium, trailing stop, spread, partials, early exit, rebalance) do not apply: an
  option's premium moves several times faster than its underlying and its spread is routinely above 1% of mid, so
  those rules would close every option within hours of buying it.
- "The underlying reaches the signal's stop" is reason stop_loss at priority HIGH (the option table rows are HIGH and
  MEDIUM). Its order among the options is DTE first, then the stop, then max loss (SPEC 12). The direction of the
  option comes from the signal itself: a target above the stop is a bullish signal (a call, stopped at or below the
  stop), a target below the stop a bearish one (a put, stopped at or above the stop).
- Partial targets: at most one tranche per run. When one evaluation finds both the +15% and the +25% levels undone
  and reached (a gap up), the +15% tranche (50% of the original quantity) goes first, since it takes the larger
  amount of risk off; the +25% tranche still fires at the next evaluation if the gain holds. A tranche that would
  sell the whole remaining position is a full exit (partial=False) under the same reason.
- A position with a non-positive quantity or entry price has nothing to exit and yields no trigger.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeGuard

CRITICAL, HIGH, MEDIUM, LOW = "CRITICAL", "HIGH", "MEDIUM", "LOW"
PRIORITY_RANK: dict[str, int] = {CRITICAL: 0, HIGH: 1, MEDIUM: 2, LOW: 3}  # lower rank = more urgent, sorts first

EQUITY, OPTION = "us_equity", "us_option"

# The SPEC 8 table's order; also the order of the checks below.
EXIT_REASONS = (
    "stop_loss", "circuit_breaker", "kill_switch", "trailing_stop", "reversal", "time_based_urgent", "max_loss",
    "liquidity_dried_up", "partial_exit_target", "profit_target", "edge_disappeared", "early_exit", "rebalance",
)
FIRST_TRANCHE, SECOND_TRANCHE = 1, 2
_EPSILON = 1e-9  # relative slack so 100 x (1 - 8%) is "at" 92.00 despite binary rounding


@dataclass(frozen=True)
class ExitRules:
    """Exit thresholds (SPEC 8 defaults). Percentages are fractions: 0.08 means 8%."""

    hard_stop_frac: float = 0.08  # below entry
    trailing_stop_frac: float = 0.05  # below the peak since entry
    daily_loss_limit_frac: float = 0.03  # of start-of-day equity
    first_target_gain_frac: float = 0.15
    first_target_sell_frac: float = 0.50  # of the original quantity
    second_target_gain_frac: float = 0.25
    second_target_sell_frac: float = 0.25  # of the original quantity
    early_exit_sessions: int = 10
    early_exit_min_gain_frac: float = 0.02
    max_spread_frac: float = 0.01  # of mid
    min_volume_ratio: float = 0.20  # projected volume / 20-day average
    rebalance_score_gap: float = 5.0
    option_exit_dte: int = 3
    option_max_loss_frac: float = 0.50  # of the premium paid
    option_profit_frac: float = 1.00  # gain on the premium paid
    urgent_band_frac: float = 0.02  # within 2% of a stop or target: evaluate every run

    @classmethod
    def from_config(cls, config: Any) -> "ExitRules":
        """Rules from a validated Config (its stop settings are percents)."""
        return cls(hard_stop_frac=config.hard_stop_pct / 100,
                   trailing_stop_frac=config.trailing_stop_pct / 100,
                   daily_loss_limit_frac=config.daily_loss_limit_pct / 100)


@dataclass(frozen=True)
class PositionState:
    """One held position as the monitor sees it now. Prices are dollars (premium per share for options)."""

    trade_id: int
    symbol: str
    qty: int  # current quantity
    original_qty: int  # quantity bought; the partial tranches are fractions of it
    entry_price: float
    price: float  # current price
    asset_class: str = EQUITY
    bid: float | None = None
    ask: float | None = None
    peak_price: float | None = None  # highest price since entry (None: not tracked yet)
    sessions_held: int = 0
    reversal_score: int | None = None
    autoclose: bool = True
    autoclose_threshold: int = 5
    roc_10d: float | None = None  # fraction
    sma20: float | None = None
    projected_volume_ratio: float | None = None  # time-normalised volume / 20-day average volume
    partial_15_done: bool = False
    partial_25_done: bool = False
    target_price: float | None = None  # a signal's target for the stock itself
    is_weakest: bool = False
    best_candidate_score_gap: float | None = None  # best candidate's score minus this holding's entry score
    slots_full: bool = False
    days_to_expiry: int | None = None  # options only, like the three fields below
    underlying_price: float | None = None
    underlying_stop: float | None = None
    underlying_target: float | None = None

    @property
    def gain_frac(self) -> float:
        """Unrealised P&L as a fraction of the entry price (every position is long)."""
        return (self.price - self.entry_price) / self.entry_price


@dataclass(frozen=True)
class PortfolioFlags:
    day_pnl_frac: float  # day P&L / start-of-day equity
    kill_switch: bool = False  # `halt` with flatten


@dataclass(frozen=True)
class ExitTrigger:
    reason: str  # one of EXIT_REASONS
    priority: str  # CRITICAL, HIGH, MEDIUM or LOW
    qty: int  # shares (contracts) to sell
    partial: bool
    detail: str
    tranche: int | None = None  # partial_exit_target only: FIRST_TRANCHE (+15%) or SECOND_TRANCHE (+25%)


# --- comparisons that forgive binary rounding ---------------------------------------------------------------------

def _slack(level: float) -> float:
    return _EPSILON * max(1.0, abs(level))


def _at_or_below(value: float, level: float) -> bool:
    return value <= level + _slack(level)


def _at_or_above(value: float, level: float) -> bool:
    return value >= level - _slack(level)


def _known(value: float | None) -> TypeGuard[float]:
    return value is not None and math.isfinite(value)


def _full(position: PositionState, reason: str, priority: str, detail: str) -> ExitTrigger:
    return ExitTrigger(reason, priority, position.qty, False, detail)


# --- equity checks (SPEC 8 table, in its order) -------------------------------------------------------------------

Check = Callable[[PositionState, PortfolioFlags, ExitRules], ExitTrigger | None]


def hard_stop_price(position: PositionState, rules: ExitRules) -> float:
    return position.entry_price * (1 - rules.hard_stop_frac)


def trailing_stop_price(position: PositionState, rules: ExitRules) -> float:
    """The local trailing-stop backstop; the peak is never below the entry or the current price."""
    known_peak = position.peak_price if _known(position.peak_price) else position.entry_price
    peak = max(known_peak, position.entry_price, position.price)
    return peak * (1 - rules.trailing_stop_frac)


def _stop_loss(position: PositionState, flags: PortfolioFlags, rules: ExitRules) -> ExitTrigger | None:
    stop = hard_stop_price(position, rules)
    if not _at_or_below(position.price, stop):
        return None
    return _full(position, "stop_loss", CRITICAL, f"price {position.price:.4g} <= hard stop {stop:.4g} "
                                                  f"(entry {position.entry_price:.4g} -{rules.hard_stop_frac:.1%})")


def _circuit_breaker(position: PositionState, flags: PortfolioFlags, rules: ExitRules) -> ExitTrigger | None:
    if not _at_or_below(flags.day_pnl_frac, -rules.daily_loss_limit_frac):
        return None
    return _full(position, "circuit_breaker", CRITICAL,
                 f"day P&L {flags.day_pnl_frac:+.2%} <= -{rules.daily_loss_limit_frac:.1%}: close all")


def _kill_switch(position: PositionState, flags: PortfolioFlags, rules: ExitRules) -> ExitTrigger | None:
    return _full(position, "kill_switch", CRITICAL, "halt with flatten") if flags.kill_switch else None


def _trailing_stop(position: PositionState, flags: PortfolioFlags, rules: ExitRules) -> ExitTrigger | None:
    stop = trailing_stop_price(position, rules)
    if not _at_or_below(position.price, stop):
        return None
    return _full(position, "trailing_stop", HIGH,
                 f"price {position.price:.4g} <= trailing stop {stop:.4g} (-{rules.trailing_stop_frac:.1%} of peak)")


def _reversal(position: PositionState, flags: PortfolioFlags, rules: ExitRules) -> ExitTrigger | None:
    score = position.reversal_score
    if not position.autoclose or score is None or score < position.autoclose_threshold:
        return None
    return _full(position, "reversal", HIGH, f"reversal score {score} >= {position.autoclose_threshold}")


def spread_frac(position: PositionState) -> float | None:
    """Bid-ask spread as a fraction of mid; None without a sound two-sided quote."""
    bid, ask = position.bid, position.ask
    if not _known(bid) or not _known(ask) or bid <= 0 or ask < bid:
        return None
    return (ask - bid) / ((ask + bid) / 2)


def _liquidity(position: PositionState, flags: PortfolioFlags, rules: ExitRules) -> ExitTrigger | None:
    reasons = []
    spread = spread_frac(position)
    if spread is not None and spread > rules.max_spread_frac + _slack(rules.max_spread_frac):
        reasons.append(f"spread {spread:.2%} of mid > {rules.max_spread_frac:.1%}")
    volume = position.projected_volume_ratio
    if _known(volume) and volume < rules.min_volume_ratio - _slack(rules.min_volume_ratio):
        reasons.append(f"projected volume {volume:.0%} of average < {rules.min_volume_ratio:.0%}")
    return _full(position, "liquidity_dried_up", HIGH, "; ".join(reasons)) if reasons else None


def tranche_qty(position: PositionState, sell_frac: float) -> int:
    """A tranche of the ORIGINAL quantity: rounded down, at least one share, never more than is held."""
    wanted = math.floor(position.original_qty * sell_frac + _EPSILON)
    return min(max(wanted, 1), position.qty)


def _partial_target(position: PositionState, flags: PortfolioFlags, rules: ExitRules) -> ExitTrigger | None:
    gain = position.gain_frac
    tranches = ((FIRST_TRANCHE, position.partial_15_done, rules.first_target_gain_frac, rules.first_target_sell_frac),
                (SECOND_TRANCHE, position.partial_25_done, rules.second_target_gain_frac,
                 rules.second_target_sell_frac))
    for tranche, done, gain_level, sell_frac in tranches:
        if done or not _at_or_above(gain, gain_level):
            continue
        qty = tranche_qty(position, sell_frac)
        detail = (f"gain {gain:+.2%} >= +{gain_level:.0%}: sell {qty} "
                  f"({sell_frac:.0%} of the original {position.original_qty}); the rest trails")
        return ExitTrigger("partial_exit_target", MEDIUM, qty, qty < position.qty, detail, tranche)
    return None


def _profit_target(position: PositionState, flags: PortfolioFlags, rules: ExitRules) -> ExitTrigger | None:
    target = position.target_price
    if not _known(target) or not _at_or_above(position.price, target):
        return None
    return _full(position, "profit_target", MEDIUM, f"price {position.price:.4g} >= target {target:.4g}")


def _edge_disappeared(position: PositionState, flags: PortfolioFlags, rules: ExitRules) -> ExitTrigger | None:
    roc, sma20 = position.roc_10d, position.sma20
    if not _known(roc) or not _known(sma20) or not (roc < 0 and position.price < sma20):
        return None
    return _full(position, "edge_disappeared", LOW,
                 f"roc_10d {roc:+.2%} < 0 and price {position.price:.4g} < SMA20 {sma20:.4g}")


def _early_exit(position: PositionState, flags: PortfolioFlags, rules: ExitRules) -> ExitTrigger | None:
    gain, level = position.gain_frac, rules.early_exit_min_gain_frac
    if position.sessions_held < rules.early_exit_sessions or gain >= level - _slack(level):
        return None
    return _full(position, "early_exit", LOW,
                 f"held {position.sessions_held} sessions with gain {gain:+.2%} < +{level:.0%}")


def _rebalance(position: PositionState, flags: PortfolioFlags, rules: ExitRules) -> ExitTrigger | None:
    gap = position.best_candidate_score_gap
    if not (position.slots_full and position.is_weakest and _known(gap)):
        return None
    if not _at_or_above(gap, rules.rebalance_score_gap):
        return None
    return _full(position, "rebalance", LOW, f"slots full and a candidate outscores this weakest holding by "
                                             f"{gap:g} >= {rules.rebalance_score_gap:g}")


EQUITY_CHECKS: tuple[Check, ...] = (
    _stop_loss, _circuit_breaker, _kill_switch, _trailing_stop, _reversal, _liquidity, _partial_target,
    _profit_target, _edge_disappeared, _early_exit, _rebalance,
)


# --- option checks (SPEC 12, in its order) ------------------------------------------------------------------------

def option_is_bullish(position: PositionState) -> bool | None:
    """True for a bullish signal (target above stop, a call), False for a bearish one, None when unknown."""
    stop, target = position.underlying_stop, position.underlying_target
    if not (_known(stop) and _known(target)) or stop == target:
        return None
    return target > stop


def _underlying_beyond(position: PositionState, level: float, toward_target: bool) -> bool:
    """Whether the underlying has reached `level` in the direction that matters for this option."""
    rising_is_good = option_is_bullish(position)
    if rising_is_good is None or not _known(position.underlying_price):
        return False
    moving_up = rising_is_good == toward_target
    price = position.underlying_price
    return _at_or_above(price, level) if moving_up else _at_or_below(price, level)


def _option_expiry(position: PositionState, flags: PortfolioFlags, rules: ExitRules) -> ExitTrigger | None:
    dte = position.days_to_expiry
    if dte is None or dte > rules.option_exit_dte:
        return None
    return _full(position, "time_based_urgent", HIGH, f"{dte} days to expiry <= {rules.option_exit_dte}")


def _option_underlying_stop(position: PositionState, flags: PortfolioFlags, rules: ExitRules) -> ExitTrigger | None:
    stop = position.underlying_stop
    if not _known(stop) or not _underlying_beyond(position, stop, toward_target=False):
        return None
    return _full(position, "stop_loss", HIGH, f"underlying {position.underlying_price:.4g} reached the signal's "
                                              f"stop {stop:.4g}")


def _option_max_loss(position: PositionState, flags: PortfolioFlags, rules: ExitRules) -> ExitTrigger | None:
    loss_level = -rules.option_max_loss_frac
    if not _at_or_below(position.gain_frac, loss_level):
        return None
    return _full(position, "max_loss", HIGH,
                 f"premium {position.gain_frac:+.1%} <= -{rules.option_max_loss_frac:.0%} of the premium paid")


def _option_underlying_target(position: PositionState, flags: PortfolioFlags, rules: ExitRules) -> ExitTrigger | None:
    target = position.underlying_target
    if not _known(target) or not _underlying_beyond(position, target, toward_target=True):
        return None
    return _full(position, "profit_target", MEDIUM, f"underlying {position.underlying_price:.4g} reached the "
                                                    f"signal's target {target:.4g}")


def _option_profit(position: PositionState, flags: PortfolioFlags, rules: ExitRules) -> ExitTrigger | None:
    if not _at_or_above(position.gain_frac, rules.option_profit_frac):
        return None
    return _full(position, "profit_target", MEDIUM,
                 f"premium {position.gain_frac:+.1%} >= +{rules.option_profit_frac:.0%}")


OPTION_CHECKS: tuple[Check, ...] = (
    _circuit_breaker, _kill_switch, _option_expiry, _option_underlying_stop, _option_max_loss,
    _option_underlying_target, _option_profit,
)


# --- resolution ---------------------------------------------------------------------------------------------------

def _exit_order(trigger: ExitTrigger) -> tuple[int, bool]:
    # sorted() is stable, so the checks' own order decides among triggers of equal rank and kind.
    return PRIORITY_RANK[trigger.priority], trigger.partial


def evaluate(position: PositionState, flags: PortfolioFlags, rules: ExitRules | None = None) -> list[ExitTrigger]:
    """Every exit condition that fires for this position, the one to execute first."""
    rules = rules or ExitRules()
    if position.qty <= 0 or not (_known(position.entry_price) and position.entry_price > 0):
        return []
    if not _known(position.price):
        # No price: only the portfolio-wide conditions can still be judged.
        checks: Sequence[Check] = (_circuit_breaker, _kill_switch)
    else:
        checks = OPTION_CHECKS if position.asset_class == OPTION else EQUITY_CHECKS
    fired = [trigger for check in checks if (trigger := check(position, flags, rules)) is not None]
    return sorted(fired, key=_exit_order)


def choose(triggers: Sequence[ExitTrigger]) -> ExitTrigger | None:
    """The exit to execute: the highest priority, a full exit before a partial of the same priority."""
    return min(triggers, key=_exit_order) if triggers else None


# --- urgency ------------------------------------------------------------------------------------------------------

def _near_stop(price: float, stop: float, band: float) -> bool:
    return _at_or_below(price, stop * (1 + band))


def _near_target(price: float, target: float, band: float) -> bool:
    return _at_or_above(price, target * (1 - band))


def _equity_is_urgent(position: PositionState, rules: ExitRules) -> bool:
    band, price = rules.urgent_band_frac, position.price
    stops = (hard_stop_price(position, rules), trailing_stop_price(position, rules))
    targets = [position.target_price] if _known(position.target_price) else []
    # The next undone partial level is a target too: it sells half the position.
    if not position.partial_15_done:
        targets.append(position.entry_price * (1 + rules.first_target_gain_frac))
    elif not position.partial_25_done:
        targets.append(position.entry_price * (1 + rules.second_target_gain_frac))
    return (any(_near_stop(price, stop, band) for stop in stops)
            or any(_near_target(price, target, band) for target in targets))


def _option_is_urgent(position: PositionState, rules: ExitRules) -> bool:
    band, entry = rules.urgent_band_frac, position.entry_price
    premium_near = (_near_stop(position.price, entry * (1 - rules.option_max_loss_frac), band)
                    or _near_target(position.price, entry * (1 + rules.option_profit_frac), band))
    bullish, underlying = option_is_bullish(position), position.underlying_price
    stop, target = position.underlying_stop, position.underlying_target
    if bullish is None or not (_known(underlying) and _known(stop) and _known(target)):
        return premium_near
    if bullish:
        underlying_near = _near_stop(underlying, stop, band) or _near_target(underlying, target, band)
    else:  # a put: its stop is above the underlying, its target below
        underlying_near = _near_target(underlying, stop, band) or _near_stop(underlying, target, band)
    return premium_near or underlying_near


def is_urgent(position: PositionState, rules: ExitRules | None = None) -> bool:
    """Within urgent_band_frac (2%) of a stop, the trailing stop or a target (at or past it counts too).

    An urgent position is evaluated on every monitor run instead of every 30 minutes. An exit in progress makes a
    position urgent as well; the caller knows that from the journal.
    """
    rules = rules or ExitRules()
    if position.qty <= 0 or not (_known(position.price) and _known(position.entry_price)):
        return False
    if position.asset_class == OPTION:
        return _option_is_urgent(position, rules)
    return _equity_is_urgent(position, rules)

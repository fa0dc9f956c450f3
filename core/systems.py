"""The trading systems, each declared once: what it buys and when, with how much of the account, how it exits.

Every trade carries its system in `trades.strategy`. The monitor applies the exit profile of the trade's system, the
executor gives a new position its system's broker stop, each system's orders pass the risk gates against its own
sleeve (and the account's cash), and no system closes or resizes another system's position.

- momentum: the three daily scans of the cap-tiered universe; a sleeve of MAX_EXPOSURE_PCT of equity (times the
  regime factor), MAX_POSITIONS positions, MAX_POSITIONS_<CAP> per cap; every exit condition of the exit table
  (SPEC 8) with a TRAILING_STOP_PCT broker trailing stop; benchmark SPY.
- rebalance: the 52-week-high portfolio (flows/rebalance.py), rebalanced on the month's first session and refilled on
  the others at REBALANCE_TIME; a sleeve of REBALANCE_SLEEVE_PCT of equity in REBALANCE_TOP_N equal slots; held to
  the next rebalance except for a wide REBALANCE_STOP_PCT broker trailing stop (and its local backstop), the
  operator's kill switch and the regime's CRASH to cash (the rebalance itself sells then); benchmark the
  equal-weighted universe and SPY.
- strat_options: STRAT signals bought as short-dated options (flows/option_entries.py); a sleeve of
  OPTIONS_MAX_POSITIONS positions of at most OPTIONS_MAX_CAPITAL premium each, apart from the stock sleeves; its own
  exit engine (flows/option_exits.py), no broker stop.
A position the journal adopted from the broker (`external`) is protected like a momentum one: it has no system of
its own, and the momentum exits are the conservative ones.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.exit_rules import EXIT_REASONS

MOMENTUM, REBALANCE, OPTIONS, EXTERNAL = "momentum", "rebalance", "strat_options", "external"
CAPS = ("large", "mid", "small")


@dataclass(frozen=True)
class Sleeve:
    """The share of the account a system trades with."""

    equity_share: float | None  # fraction of equity its holdings may take (None: bounded by positions and premium)
    max_positions: int
    per_cap: dict[str, int] | None = None  # most positions per cap tier (None: no per-cap limit)


@dataclass(frozen=True)
class ExitProfile:
    """Which exits the monitor applies to a system's positions, and the broker stop each position carries."""

    conditions: frozenset[str]  # exit_rules reasons that apply (stock engine)
    trailing_stop_pct: float | None  # the broker trailing stop on every position, % (None: no broker stop)
    engine: str = "stock"  # "stock": exit_rules through the monitor; "options": flows/option_exits.py


@dataclass(frozen=True)
class System:
    name: str
    entries: str  # when it buys, for people
    universe: str
    sleeve: Sleeve
    exits: ExitProfile
    benchmark: str


def declared(config: Any) -> dict[str, System]:
    """Every system with the thresholds of `config` (a validated Config)."""
    momentum = System(
        MOMENTUM, "scans at 09:35, 12:30 and 15:30 New York time", "the cap-tiered universe",
        Sleeve(config.max_exposure_pct / 100, config.max_positions,
               {cap: config.get(f"MAX_POSITIONS_{cap.upper()}") for cap in CAPS}),
        ExitProfile(frozenset(EXIT_REASONS), config.trailing_stop_pct), "SPY")
    rebalance = System(
        REBALANCE, f"the month's first session at {config.rebalance_time} (refills on the others)",
        "the whole universe",
        Sleeve(config.rebalance_sleeve_pct / 100, config.rebalance_top_n),
        ExitProfile(frozenset({"kill_switch", "trailing_stop"}), config.rebalance_stop_pct),
        "the equal-weighted universe and SPY")
    options = System(
        OPTIONS, "STRAT signals of the daily and weekly scans", "the cap-tiered universe",
        Sleeve(None, config.options_max_positions),
        ExitProfile(frozenset(), None, engine="options"), "SPY")
    return {system.name: system for system in (momentum, rebalance, options)}


def of_trade(trade: dict) -> str:
    """The system a trade belongs to (an adopted position is treated as momentum's)."""
    strategy = trade.get("strategy") or MOMENTUM
    return strategy if strategy in (MOMENTUM, REBALANCE, OPTIONS) else MOMENTUM


def profile_for(config: Any, trade: dict) -> ExitProfile:
    return declared(config)[of_trade(trade)].exits

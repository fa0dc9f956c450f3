"""The monitor's view of option positions (SPEC sections 8 and 12): exit checks through the shared exit engine.

`evaluate_option_positions` runs inside a monitor run, beside the stock positions' evaluation. For every open
us_option trade it builds an exit_rules.PositionState with the contract's premium (bid, ask, last), the days to expiry
(from the OCC expiry and the clock's New York date), the underlying's current price and the signal's stop and
target (from strat_signals), records the check in position_checks, updates the trade's current price and
unrealised P&L (premium x contracts x 100), and starts the winning exit with exit_runner.start_exit: DTE <= 3 first,
then the underlying's stop, a 50% loss of premium, the underlying's target, a 100% gain (core/exit_rules.py). A
position is checked every 30 minutes, or on every run while urgent (exit_rules.is_urgent) or while its exit is in
progress.

Option quotes come through the runtime's market made option-aware (option_market.with_options): Black-Scholes
prices on the sim and csv sources, Alpaca's option snapshots with the Alpaca broker.
"""
from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

import numpy as np

from common import render
from core import exit_rules, option_math
from flows import exit_runner, quotes
from journal.schema import HELD_STATUSES

if TYPE_CHECKING:  # annotations only: the runtime module wires every port
    from flows.runtime import Runtime

log = logging.getLogger(__name__)


def use_option_quotes(rt: Runtime) -> None:
    """Make rt.market answer for OCC symbols too (idempotent), with the prices of the broker in use."""
    from ports import option_market  # lazy: most runs hold no option

    if isinstance(rt.market, option_market.OptionAwareMarket):
        return
    prices = None
    if rt.config.broker == "alpaca":
        from ports.alpaca import options  # lazy: alpaca-py loads only for Alpaca

        prices = options.AlpacaOptionPrices(options.client_for(rt))
    rt.market = option_market.with_options(rt.market, prices)


def _number(value) -> float | None:
    number = float(value) if value is not None else np.nan
    return number if np.isfinite(number) else None


def _signal_levels(journal, trade: dict) -> tuple[str | None, float | None, float | None]:
    """(underlying, stop, target) of the signal the option was bought for."""
    try:
        entry = json.loads(trade["entry_signals"] or "{}")
    except ValueError:
        entry = {}
    underlying = entry.get("underlying")
    row = journal.one("SELECT symbol, stop, target FROM strat_signals WHERE id = ?", [entry.get("signal_id")])
    if row is not None:
        return row["symbol"], row["stop"], row["target"]
    if underlying is None and option_math.is_occ(trade["symbol"]):
        underlying = option_math.parse_occ(trade["symbol"]).root
    return underlying, entry.get("stop"), entry.get("target")


def option_position_state(rt: Runtime, trade: dict, snap) -> exit_rules.PositionState | None:
    """The exit engine's view of one option trade from a snapshot holding the contract and its underlying."""
    symbol = trade["symbol"]
    underlying, stop, target = _signal_levels(rt.journal, trade)
    i = snap.index(symbol)
    price = _number(snap.price[i])
    if price is None or not trade["entry_price"]:
        log.warning("options monitor: no price for %s; skipped this run", symbol)
        return None
    under_price = _number(snap.price[snap.index(underlying)]) if underlying in snap.symbols else None
    return exit_rules.PositionState(
        trade_id=trade["id"], symbol=symbol, qty=trade["qty"], original_qty=trade["original_qty"] or trade["qty"],
        entry_price=trade["entry_price"], price=price, asset_class=exit_rules.OPTION, bid=_number(snap.bid[i]),
        ask=_number(snap.ask[i]), peak_price=max(v for v in (trade["peak_price"], trade["entry_price"], price) if v),
        days_to_expiry=option_math.days_to_expiry(symbol, rt.clock.today()), underlying_price=under_price,
        underlying_stop=stop, underlying_target=target)


def _record_check(rt: Runtime, trade: dict, position: exit_rules.PositionState, triggers: list[exit_rules.ExitTrigger],
                  action: str, urgent: bool) -> None:
    journal = rt.journal
    size = option_math.OPTION_MULTIPLIER
    with journal.atomic():
        journal.db.table("position_checks").insert({
            "trade_id": trade["id"], "symbol": trade["symbol"], "checked_at": journal.now(), "price": position.price,
            "pnl_pct": round(position.gain_frac * 100, 4), "reversal_score": None,
            "signals": json.dumps({"days_to_expiry": position.days_to_expiry,
                                   "underlying_price": position.underlying_price,
                                   "triggered": [t.reason for t in triggers]}),
            "urgent": int(urgent), "action": action, "run_id": journal.run_id})
        journal.db.table("trades").update(trade["id"], {
            "current_price": position.price, "peak_price": position.peak_price,
            "unrealized_pnl": round((position.price - position.entry_price) * position.qty * size, 2),
            "unrealized_pnl_pct": round(position.gain_frac * 100, 4), "last_update": journal.now()})


def evaluate_option_positions(rt: Runtime, flags: exit_rules.PortfolioFlags, report, dry_run: bool) -> None:
    """Check every due option position and start its exit (not in a dry run); fills `report` like the monitor."""

    trades = rt.journal.query(f"SELECT * FROM trades WHERE asset_class = ? AND status IN "
                              f"({','.join('?' * len(HELD_STATUSES))}) ORDER BY id",
                              [exit_rules.OPTION, *HELD_STATUSES])
    if not trades:
        return
    use_option_quotes(rt)
    underlyings = [u for u in dict.fromkeys(_signal_levels(rt.journal, t)[0] for t in trades) if u]
    snap = quotes.current(rt, list(dict.fromkeys([t["symbol"] for t in trades] + underlyings)))
    rules = exit_rules.ExitRules.from_config(rt.config)
    for trade in trades:
        position = option_position_state(rt, trade, snap)
        if position is None:
            continue
        if not exit_runner.is_due(rt, trade, position, rules):
            report.not_due.append(trade["symbol"])
            continue
        triggers = exit_rules.evaluate(position, flags, rules)
        chosen = exit_rules.choose(triggers)
        exiting = exit_runner.exit_in_progress(rt.journal, trade["id"])
        action = "monitor:" + ("EXITING" if exiting else (chosen.reason if chosen else "HOLD"))
        _record_check(rt, trade, position, triggers, action, exit_rules.is_urgent(position, rules))
        report.checked.append(trade["symbol"])
        if chosen is None or exiting or dry_run:
            continue
        exit_runner.start_exit(rt, trade, chosen, triggers)
        report.exits_started.append((trade["symbol"], chosen.reason, chosen.priority))


# --- the `options positions` view ---------------------------------------------------------------------------------

POSITION_COLUMNS = ["trade", "contract", "underlying", "type", "strike", "expiry", "dte", "qty", "entry", "price",
                    "value", "pnl", "pnl_pct", "under_price", "stop", "target", "status"]


def option_positions_text(rows: list[dict]) -> str:
    """The `options positions` table: premiums per share, value and P&L in dollars, the return a signed percent."""
    shown = [{**row, "value": render.as_money(row["value"]), "pnl": render.as_money(row["pnl"]),
              "pnl_pct": render.as_pct(row["pnl_pct"])} for row in rows]
    headers = [{"pnl": "P&L", "pnl_pct": "return", "under_price": "underlying price"}.get(c, c)
               for c in POSITION_COLUMNS]
    return render.table(shown, POSITION_COLUMNS, headers) if shown else "no open option positions"


def open_option_rows(rt: Runtime) -> list[dict]:
    """One row per open option trade, priced now; value and P&L in dollars (premium x contracts x 100)."""
    trades = rt.journal.query(f"SELECT * FROM trades WHERE asset_class = ? AND status IN "
                              f"({','.join('?' * len(HELD_STATUSES))}) ORDER BY id",
                              [exit_rules.OPTION, *HELD_STATUSES])
    if not trades:
        return []

    use_option_quotes(rt)
    levels = {t["id"]: _signal_levels(rt.journal, t) for t in trades}
    symbols = list(dict.fromkeys([t["symbol"] for t in trades] + [lv[0] for lv in levels.values() if lv[0]]))
    snap = quotes.current(rt, symbols)
    rows = []
    for trade in trades:
        contract = option_math.parse_occ(trade["symbol"])
        underlying, stop, target = levels[trade["id"]]
        price = _number(snap.price[snap.index(trade["symbol"])]) or trade["current_price"]
        entry, qty, size = trade["entry_price"], trade["qty"], option_math.OPTION_MULTIPLIER
        pnl = (price - entry) * qty * size if price is not None and entry else None
        rows.append({
            "trade": trade["id"], "contract": trade["symbol"], "underlying": underlying, "type": contract.kind,
            "strike": contract.strike, "expiry": str(contract.expiry),
            "dte": option_math.days_to_expiry(trade["symbol"], rt.clock.today()), "qty": qty, "entry": entry,
            "price": round(price, 4) if price is not None else None,
            "value": round(price * qty * size, 2) if price is not None else None,
            "pnl": round(pnl, 2) if pnl is not None else None,
            "pnl_pct": round((price / entry - 1) * 100, 2) if pnl is not None else None,
            "under_price": _number(snap.price[snap.index(underlying)]) if underlying in snap.symbols else None,
            "stop": stop, "target": target, "status": trade["status"]})
    return rows

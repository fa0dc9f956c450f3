"""Operator commands: status, positions, orders, settings, errors. Each returns data; *_text() formats it."""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from common import render
from common.clock import NY
from common.errors import EXIT_OK, MomentumError
from common.types import FINAL_OR_UNSENT, Order, sql_list
from core.option_math import multiplier
from executor import working_stops_by_symbol
from flows.runtime import Runtime

MODE_LINES = {
    "SIM": "mode: SIM (embedded simulated broker, no real orders)",
    "PAPER": "mode: PAPER (Alpaca paper account, no real money)",
    "LIVE": "mode: LIVE (Alpaca live account, REAL MONEY)",
}


class MarketClosed(MomentumError):
    """Outside regular hours without --force: nothing to do, which is a normal outcome for cron."""

    exit_code = EXIT_OK


def mode_line(rt: Runtime) -> str:
    line = MODE_LINES[rt.mode]
    if rt.clock.simulated:
        line += f" | simulated time {render.ny_time(rt.clock.now())}"
    return line


def require_market_open(rt: Runtime, *, force: bool, what: str) -> None:
    """The market-hours guard: outside the regular session a trading command stops unless --force."""
    now = rt.clock.now()
    if force or rt.calendar.is_open(now):
        return
    raise MarketClosed(f"{what}: market closed at {render.ny_time(now)}; next open "
                       f"{render.ny_time(rt.calendar.next_open(now))} (use --force to run anyway)")


def market_state(rt: Runtime) -> dict[str, Any]:
    now = rt.clock.now()
    cal = rt.calendar
    state: dict[str, Any] = {"now": now, "open": cal.is_open(now)}
    today = now.astimezone(NY).date()
    if state["open"]:
        session = cal.session(today)
        state.update(session_close=session.close, early_close=session.early_close)
    state["next_open"] = cal.next_open(now)
    state["next_session"] = cal.session(state["next_open"].astimezone(NY).date())
    return state


def status(rt: Runtime) -> dict[str, Any]:
    journal = rt.journal
    account = rt.broker.account()
    positions = rt.broker.positions()
    settings = journal.settings()
    last_scan = journal.one("SELECT type, cap, asof, status, dry_run FROM scans ORDER BY id DESC LIMIT 1")
    checks = journal.one("SELECT COUNT(*) AS n, MAX(checked_at) AS last FROM position_checks")
    held = journal.held_trades("status")
    open_trades = {"n": len(held), "unprotected": sum(t["status"] == "unprotected" for t in held)}
    breaker = journal.state("circuit_breaker_session")
    return {
        "mode": rt.mode, "market": market_state(rt), "account": account, "positions": positions,
        "settings": settings, "halted": settings["halt"] == "on",
        "circuit_breaker": breaker == str(rt.clock.today()), "last_scan": last_scan,
        "position_checks": checks, "open_trades": open_trades,
        "journal": str(journal.path), "data_source": rt.config.data_source, "schedule": schedule_state(rt),
    }


TICK_OVERDUE_AFTER = timedelta(minutes=5)


def schedule_state(rt: Runtime) -> dict[str, Any]:
    """Whether `tick` keeps the schedule, when it last ran, the last run of each scheduled command and the planned
    runs that are overdue (the dead-man view)."""
    from flows import tick

    now = rt.clock.now()
    started = tick.schedule_started(rt)
    last_tick = rt.journal.state(tick.LAST_TICK_KEY)
    last_tick = datetime.fromisoformat(last_tick) if last_tick else None
    overdue = tick.overdue(rt, now)
    lines = tick.grouped(overdue)
    if last_tick is not None and rt.calendar.is_open(now) and now - last_tick > TICK_OVERDUE_AFTER:
        lines.insert(0, f"tick: none since {render.ny_time(last_tick)} during the session (is cron or the timer "
                        "running?)")
    return {"kept_by_tick": started is not None, "started_at": started, "last_tick_at": last_tick,
            "last_runs": tick.last_runs(rt), "overdue": [item.as_dict() for item in overdue], "overdue_lines": lines}


def status_text(data: dict[str, Any]) -> str:
    market = data["market"]
    account = data["account"]
    if market["open"]:
        market_line = f"OPEN until {render.ny_time(market['session_close'])}"
        market_line += " (early close)" if market.get("early_close") else ""
    else:
        market_line = f"CLOSED, next open {render.ny_time(market['next_open'])}"
        if market["next_session"].early_close:
            market_line += f" (early close {market['next_session'].close.astimezone(NY):%H:%M})"
    day_pnl = account.equity - account.last_equity
    day_pct = day_pnl / account.last_equity * 100 if account.last_equity else None
    last_scan = data["last_scan"]
    scan_line = "none yet" if not last_scan else (
        f"{last_scan['type']} {last_scan['cap']} at {render.ny_stamp(last_scan['asof'])} ({last_scan['status']}"
        f"{', dry run' if last_scan['dry_run'] and last_scan['status'] != 'dry_run' else ''})")
    trades = data["open_trades"]
    checks = data["position_checks"]
    halt = "HALTED (buying stopped)" if data["halted"] else "no"
    if data["circuit_breaker"]:
        halt += " | CIRCUIT BREAKER tripped today"
    pairs = [
        ("clock", render.ny_time(market["now"])),
        ("market", market_line),
        ("data source", data["data_source"]),
        ("journal", data["journal"]),
        ("equity", render.money(account.equity)),
        ("cash", render.money(account.cash)),
        ("buying power", render.money(account.buying_power)),
        ("day P&L", f"{render.signed_money(day_pnl)} ({render.pct(day_pct)})"),
        ("positions", f"{len(data['positions'])} at the broker, {trades['n']} open in the journal"
                      f" ({trades['unprotected'] or 0} unprotected)"),
        ("halted", halt),
        ("auto-close", f"{data['settings']['autoclose']} at reversal score >= "
                       f"{data['settings']['autoclose_threshold']}"),
        ("skip-buy mode", data["settings"]["skip_buys"] + (" (no buys anyway: HALTED)" if data["halted"] else "")),
        ("last scan", scan_line),
        ("position checks", f"{checks['n']} recorded, last {render.ny_stamp(checks['last'])}"),
    ]
    schedule = data["schedule"]
    if schedule["kept_by_tick"]:
        pairs.append(("schedule", f"kept by tick since {render.ny_time(schedule['started_at'])}, last tick "
                                  f"{render.ny_time(schedule['last_tick_at'])}"))
    else:
        pairs.append(("schedule", "no tick has run on this journal (see `python main.py deploy crontab`)"))
    lines = schedule["overdue_lines"]
    pairs.append(("overdue", f"{len(schedule['overdue'])} planned run(s) did not run" if lines else "nothing"))
    pairs += [("", line) for line in lines]
    for run in schedule["last_runs"]:
        code = f" (exit {run['exit_code']})" if run["exit_code"] not in (0, None) else ""
        pairs.append((f"last {run['command'].split(' ', 1)[-1]} run",
                      f"{render.ny_stamp(run['started_at'])} {run['status']}{code}"))
    return render.key_values(pairs)


def positions(rt: Runtime) -> list[dict[str, Any]]:
    """Broker positions joined with their journal trade and the stop the broker holds now.

    The stop is the broker's: a trailing stop's price rises with the market at the broker, and the price the
    journal noted when the stop was placed says nothing about where it stands today. One orders call serves every
    position; a position with no working stop at the broker shows none."""
    trades = {row["symbol"]: row for row in rt.journal.held_trades("symbol, id, status")}
    held = rt.broker.positions()
    symbols = [pos.symbol for pos in held]
    working = rt.broker.orders("open", symbols) if symbols else []
    stops = working_stops_by_symbol(rt, symbols, working)
    selling = {o.symbol for o in working if o.side == "sell" and o.type in ("market", "limit")}
    rows = []
    for pos in held:
        trade = trades.get(pos.symbol, {})
        cost = pos.avg_entry_price * pos.qty * multiplier(pos.symbol)
        rows.append({
            "symbol": pos.symbol, "qty": pos.qty, "available": pos.qty_available,
            "entry": pos.avg_entry_price, "price": pos.current_price, "value": pos.market_value,
            "pnl": pos.unrealized_pl, "pnl_pct": pos.unrealized_pl / cost * 100 if cost else None,
            "trade": trade.get("id"), "status": trade.get("status", "untracked"),
            "stop": protecting_stop_price(stops[pos.symbol]), "selling": pos.symbol in selling,
        })
    return rows


def protecting_stop_price(stops: list[Order]) -> float | None:
    """The price at which the first of a position's working stops fires (the highest, for sell stops)."""
    prices = [order.stop_price for order in stops if order.stop_price is not None]
    return max(prices) if prices else None


POSITION_COLUMNS = ["symbol", "qty", "available", "entry", "price", "value", "pnl", "pnl_pct", "trade", "status",
                    "stop"]


def stop_state(row: dict[str, Any]) -> str:
    """A position row's protection: "stop" (a working stop), "selling" (its stop gave way to a working sell that
    closes it) or "none" (unprotected)."""
    return "stop" if row["stop"] is not None else "selling" if row.get("selling") else "none"


def unprotected_first(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda row: stop_state(row) != "none")


def distance_to_stop(row: dict[str, Any]) -> float | None:
    """How far the stop is from the price, in percent (negative: under it)."""
    return (row["stop"] / row["price"] - 1) * 100 if row["stop"] and row["price"] else None


def positions_text(rows: list[dict[str, Any]]) -> str:
    """The positions table: value and P&L in dollars, the return and the distance to the stop as signed percents
    (the stop under the price reads negative), the unprotected first with "NONE" for their stop ("SELLING" when
    a sell that closes it is working instead)."""
    shown = [{"symbol": row["symbol"], "qty": row["qty"], "available": row["available"], "entry": row["entry"],
              "price": row["price"], "value": render.as_money(row["value"]), "P&L": render.as_money(row["pnl"]),
              "return": render.as_pct(row["pnl_pct"]),
              "stop": row["stop"] if stop_state(row) == "stop" else stop_state(row).upper(),
              "to stop": render.as_pct(distance_to_stop(row)), "trade": row["trade"], "status": row["status"]}
             for row in unprotected_first(rows)]
    return render.table(shown, list(shown[0])) if shown else "no open positions"


def orders(rt: Runtime, open_only: bool) -> list[dict[str, Any]]:
    where = f"WHERE status NOT IN {sql_list(FINAL_OR_UNSENT)}" if open_only else ""
    return rt.journal.query(
        f"SELECT client_order_id, symbol, side, type, qty, limit_price, stop_price, trail_percent, purpose, "
        f"status, filled_qty, filled_avg_price, submitted_at FROM orders {where} ORDER BY created_at DESC LIMIT 200")


ORDER_COLUMNS = ["client_order_id", "symbol", "side", "type", "qty", "purpose", "status", "filled_qty",
                 "filled_avg_price", "submitted_at"]


def orders_text(rows: list[dict[str, Any]]) -> str:
    """The orders table, submission times in New York time."""
    shown = [{**{key: row[key] for key in ORDER_COLUMNS[:-3]}, "filled": row["filled_qty"],
              "avg price": row["filled_avg_price"],
              "submitted": render.ny_stamp(row["submitted_at"])} for row in rows]
    return render.table(shown, list(shown[0])) if shown else "no orders"


"""The browser dashboard: what the journal knows, gathered for the pages a trader looks at instead of reading tables.

Cron starts short-lived commands, so there is no server to ask: after every command that changes the journal (scan,
monitor, jobs, rebalance, reconcile, close, halt, resume) the product writes one self-contained HTML file,
`dashboard/index.html` beside the journal (DASHBOARD_DIR moves it, `off` switches it off). It holds three pages:
Now (mode, account, exposure against its limit, regime, halt, every position with its stop, unprotected ones first),
Performance (equity against SPY, drawdown, daily P&L, each system's realised P&L) and Runs (the last scans with
every candidate and why it was bought, watched or rejected, the monitor's exits, errors and critical alerts).
A backtest writes a tearsheet into its --out folder, a research study a page of its trials (write_study_page).

Everything here reads; ports/dashboard_html.py renders (Jinja2, autoescaped, secrets redacted, SVG charts drawn by
hand) and replaces the file atomically. Writing a page never fails a run: write_after_run logs a failure and records
it as a warning event, and the command's exit code stays what it was.
"""
from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Protocol

from common.clock import NY
from common.types import FINAL_OR_UNSENT, sql_list
from core.option_math import OPTION_MULTIPLIER, multiplier
from core.systems import MOMENTUM, OPTIONS, REBALANCE, of_trade
from journal.schema import HELD

log = logging.getLogger(__name__)

PAGE = "index.html"
OFF = "off"
SCANS_SHOWN = 6  # the last scans on the Runs page, each with every candidate it recorded
EXITS_SHOWN = 30
EVENTS_SHOWN = 25
CHECKS_SHOWN = 60
RUNS_SHOWN = 15
TRADES_SHOWN = 3000  # a tearsheet's trade list beyond this says how many it leaves out
LIVE_ORDERS = f"status NOT IN {sql_list(FINAL_OR_UNSENT)}"  # word for word the condition of the orders_live index
MODE_TEXT = {"SIM": "simulated broker: no real orders", "PAPER": "Alpaca paper account: no real money",
             "LIVE": "Alpaca LIVE account: REAL MONEY"}


class Reader(Protocol):
    """Anything that answers a read with rows as dicts: the open Journal, or a plain connection (ReadOnly)."""

    def query(self, sql: str, params: Any = None) -> list[dict]: ...


class ReadOnly:
    """A SQLite file opened only to read it (a finished backtest's journal, a study's research.db)."""

    def __init__(self, path: Path):
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
        self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        self.conn.row_factory = sqlite3.Row

    def query(self, sql: str, params: Any = None) -> list[dict]:
        return [dict(row) for row in self.conn.execute(sql, params or [])]

    def close(self) -> None:
        self.conn.close()


# --- where, and the hook ----------------------------------------------------------------------------------------

def dashboard_dir(config, journal_path: str | Path | None = None) -> Path | None:
    """The folder of the dashboard (None when DASHBOARD_DIR is off): DASHBOARD_DIR, else dashboard/ beside the
    journal, so each install (and each test's private journal) has its own."""
    setting = str(config.dashboard_dir or "").strip()
    if setting.lower() == OFF:
        return None
    if setting:
        return Path(setting).expanduser()
    return Path(journal_path or config.momentum_db).parent / "dashboard"


def enabled(config) -> bool:
    return str(config.dashboard_dir or "").strip().lower() != OFF


def write_after_run(rt, *, ask_broker: bool = True) -> Path | None:
    """Write the dashboard at the end of a command; never raises. The broker is asked for the account only when the
    command already reached it (its port is built) and ask_broker: a failed run is not held up by a broker that may
    be what failed it. A failure is logged and recorded as a warning event, nothing more."""
    if dashboard_dir(rt.config) is None:
        return None
    started = time.perf_counter()
    try:
        account = current_account(rt) if ask_broker and "broker" in rt.__dict__ and budget_has_room(rt) else None
        path = write_dashboard(rt, account=account)
    except Exception as err:  # noqa: BLE001 - the page is a view: it must never change how a run ends
        from config import redact

        log.warning("dashboard not written: %s", err, exc_info=True)
        try:
            rt.journal.event("warning", "dashboard", redact(f"dashboard not written: {type(err).__name__}: {err}"),
                             source="dashboard")
        except Exception:  # noqa: BLE001 - a journal that cannot take the event has told its own story already
            log.warning("could not record the dashboard failure", exc_info=True)
        return None
    log.info("dashboard %s written in %.3f s", path, time.perf_counter() - started)
    return path


def budget_has_room(rt) -> bool:
    """Whether one more Alpaca request fits the shared request budget without waiting (the sim broker has none): the
    end of a run never waits for the page's sake, and the scans and monitors of other processes keep their share."""
    if rt.config.broker != "alpaca":
        return True
    try:
        return rt._budget().used() < rt.config.alpaca_requests_per_min * 0.8
    except Exception:  # noqa: BLE001 - an unreadable budget file: do not add to the trouble
        return False


def current_account(rt):
    """The broker's account now, or None when the broker cannot say (the page then shows the journal's last daily
    snapshot, with its date)."""
    try:
        return rt.broker.account()
    except Exception as err:  # noqa: BLE001 - the dashboard falls back to what the journal knows
        log.info("dashboard: no account from the broker (%s); using the last daily snapshot", err)
        return None


def write_dashboard(rt, *, account=None) -> Path:
    """Gather the journal's view and write DIR/index.html atomically; raises on failure (the `dashboard` command
    shows it, the hook records it)."""
    from ports import dashboard_html

    folder = dashboard_dir(rt.config)
    if folder is None:
        raise ValueError("DASHBOARD_DIR is off")
    return dashboard_html.write_dashboard(folder / PAGE, gather(rt, account))


# --- the three pages of a trading journal ----------------------------------------------------------------------

def gather(rt, account=None) -> dict[str, Any]:
    """Everything the Now, Performance and Runs pages show, read from the journal in one go."""
    journal = rt.journal
    now = rt.clock.now()
    daily = journal.query("SELECT date, equity, cash, exposure, exposure_pct, day_pnl, day_pnl_pct, cum_return_pct, "
                          "spy_cum_return_pct FROM daily_performance ORDER BY date")
    closed = journal.query("SELECT id, symbol, strategy, cap, qty, original_qty, entry_time, entry_price, exit_time, "
                           "exit_price, exit_reason, exit_priority, pnl, pnl_pct, holding_days FROM trades "
                           "WHERE status IN ('closed', 'unknown') AND exit_time IS NOT NULL ORDER BY exit_time, id")
    positions = held_positions(journal)
    settings = journal.settings()
    regime = journal.query("SELECT date, regime, factor, reason, crash_override FROM regimes WHERE date <= ? "
                           "ORDER BY date DESC LIMIT 1", [str(now.astimezone(NY).date())])
    figures = account_figures(account, daily, positions)
    factor = regime[0]["factor"] if regime else 1.0
    return {
        "mode": rt.mode, "mode_text": MODE_TEXT.get(rt.mode, rt.mode), "now": now, "simulated": rt.clock.simulated,
        "journal": str(journal.path), "data_source": rt.config.data_source, "account": figures,
        "exposure": exposure_rows(rt.config, positions, figures["equity"], factor),
        "regime": regime[0] if regime else None, "halted": settings["halt"] == "on",
        "circuit_breaker": journal.state("circuit_breaker_session") == str(now.astimezone(NY).date()),
        "settings": settings, "positions": positions,
        "unprotected": [p for p in positions if p["alert"]],
        "performance": performance(daily, closed),
        "scans": recent_scans(journal), "exits": recent_exits(journal), "checks": recent_checks(journal),
        "events": alert_events(journal), "runs": recent_runs(journal),
    }


def held_positions(journal: Reader) -> list[dict[str, Any]]:
    """Every held trade with its last price, P&L, working stop and distance to it, and its last reversal score;
    unprotected ones first. A stock position is unprotected when the journal says so or no working stop covers all
    its shares (an option position carries no broker stop by design)."""
    trades = journal.query(f"SELECT * FROM trades WHERE {HELD} ORDER BY id")
    if not trades:
        return []
    ids = [t["id"] for t in trades]
    marks = ",".join("?" * len(ids))
    stops: dict[int, dict] = {}
    for order in journal.query(f"SELECT trade_id, type, stop_price, trail_percent, qty FROM orders WHERE rowid IN "
                               f"(SELECT rowid FROM orders WHERE {LIVE_ORDERS}) AND purpose = 'stop' "
                               f"AND trade_id IN ({marks})", ids):
        best = stops.get(order["trade_id"])
        if best is None or (order["stop_price"] or 0) > (best["stop_price"] or 0):
            stops[order["trade_id"]] = order
    checks = {}
    for trade_id in ids:
        row = journal.query("SELECT checked_at, price, reversal_score, signals, action FROM position_checks "
                            "WHERE trade_id = ? ORDER BY checked_at DESC, id DESC LIMIT 1", [trade_id])
        if row:
            checks[trade_id] = row[0]
    rows = []
    for t in trades:
        check = checks.get(t["id"], {})
        stop_order = stops.get(t["id"])
        price = t["current_price"] or check.get("price") or t["entry_price"]
        # the working stop's level (a trailing stop's as reconciliation last saw it); none without a working stop
        stop = (stop_order["stop_price"] or t["trailing_stop_price"]) if stop_order else None
        option = multiplier(t["asset_class"]) != 1 or multiplier(t["symbol"]) != 1
        short = not option and stop_order is not None and (stop_order["qty"] or 0) < (t["qty"] or 0)
        unprotected = t["status"] == "unprotected" or (not option and stop_order is None) or short
        units = (OPTION_MULTIPLIER if option else 1) * (t["qty"] or 0)
        pnl = (price - t["entry_price"]) * units if price and t["entry_price"] else t["unrealized_pnl"]
        rows.append({
            "id": t["id"], "symbol": t["symbol"], "system": t["strategy"] or MOMENTUM, "cap": t["cap"],
            "status": t["status"], "qty": t["qty"], "entry_time": t["entry_time"], "entry": t["entry_price"],
            "price": price, "value": price * units if price else None, "pnl": pnl,
            "pnl_pct": (price / t["entry_price"] - 1) * 100 if price and t["entry_price"] else None,
            "stop": None if option else stop, "stop_type": stop_order["type"] if stop_order else None,
            "stop_distance_pct": (price - stop) / price * 100 if price and stop and not option else None,
            "reversal": check.get("reversal_score"), "checked_at": check.get("checked_at"),
            "signals": signal_text(check.get("signals")), "action": check.get("action"),
            "target": t["target_price"], "option": option, "alert": unprotected,
            "why": ("the journal flags it UNPROTECTED" if t["status"] == "unprotected"
                    else f"its stop covers {stop_order['qty']} of {t['qty']} shares" if short
                    else "no working stop order covers it" if unprotected else None),
        })
    rows.sort(key=lambda r: (not r["alert"], r["id"]))
    return rows


def account_figures(account, daily: list[dict], positions: list[dict]) -> dict[str, Any]:
    """Equity and cash from the broker when it was asked, else from the last daily snapshot (dated on the page)."""
    invested = sum(p["value"] or 0 for p in positions)
    if account is not None:
        day_pnl = account.equity - account.last_equity if account.last_equity else None
        return {"equity": account.equity, "cash": account.cash, "buying_power": account.buying_power,
                "day_pnl": day_pnl, "day_pnl_pct": day_pnl / account.last_equity * 100 if day_pnl is not None
                else None, "invested": invested, "source": "the broker, at the end of this run", "as_of": None}
    if daily:
        last = daily[-1]
        return {"equity": last["equity"], "cash": last["cash"], "buying_power": None, "day_pnl": last["day_pnl"],
                "day_pnl_pct": last["day_pnl_pct"], "invested": invested,
                "source": "the journal's daily snapshot", "as_of": last["date"]}
    return {"equity": None, "cash": None, "buying_power": None, "day_pnl": None, "day_pnl_pct": None,
            "invested": invested, "source": "nothing yet (no daily snapshot, broker not asked)", "as_of": None}


def exposure_rows(config, positions: list[dict], equity: float | None, factor: float) -> list[dict[str, Any]]:
    """Each stock system's invested share of equity beside its limit (the sleeve times the regime's factor)."""
    by_system: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for p in positions:
        system = of_trade({"strategy": p["system"]})
        by_system[system] += p["value"] or 0
        counts[system] += 1
    limits = {MOMENTUM: (config.max_exposure_pct * factor, config.max_positions),
              REBALANCE: (config.rebalance_sleeve_pct * factor, config.rebalance_top_n),
              OPTIONS: (None, config.options_max_positions)}
    rows = []
    for system, (limit_pct, max_positions) in limits.items():
        value = by_system.get(system, 0.0)
        pct = value / equity * 100 if equity else None
        rows.append({"system": system, "value": value, "pct": pct, "limit_pct": limit_pct, "positions": counts[system],
                     "max_positions": max_positions,
                     "over": pct is not None and limit_pct is not None and pct > limit_pct + 0.5})
    total = sum(by_system.values())
    rows.append({"system": "account", "value": total, "pct": total / equity * 100 if equity else None,
                 "limit_pct": None, "positions": sum(counts.values()), "max_positions": None, "over": False})
    return rows


def performance(daily: list[dict], closed: list[dict]) -> dict[str, Any]:
    """The account's curve against SPY, its drawdown and daily P&L, each system's cumulative realised P&L, the
    monthly returns and the P&L by system and by exit reason."""
    days = [row["date"] for row in daily]
    equity = [row["equity"] for row in daily]
    return {
        "days": days, "equity": equity,
        "account_pct": [row["cum_return_pct"] for row in daily],
        "spy_pct": [row["spy_cum_return_pct"] for row in daily],
        "drawdown_pct": drawdown_pct(equity), "day_pnl": [row["day_pnl"] for row in daily],
        "systems": realised_by_system(closed, days),
        "monthly": monthly_returns(daily), "by_system": breakdown(closed, lambda t: t["strategy"] or MOMENTUM),
        "by_exit": breakdown(closed, lambda t: t["exit_reason"] or "unknown"),
        "closed_count": len(closed),
    }


def drawdown_pct(equity: list[float | None]) -> list[float | None]:
    peak, out = None, []
    for value in equity:
        if value is None:
            out.append(None)
            continue
        peak = value if peak is None else max(peak, value)
        out.append((value / peak - 1) * 100 if peak else None)
    return out


def realised_by_system(closed: list[dict], days: list[str]) -> dict[str, Any]:
    """Each system's own curve as far as the journal knows it: its realised P&L, summed by exit day, on the
    account's days (or on the exit days when there are no daily snapshots)."""
    axis = days or sorted({(t["exit_time"] or "")[:10] for t in closed})
    per_day: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for t in closed:
        per_day[t["strategy"] or MOMENTUM][(t["exit_time"] or "")[:10]] += t["pnl"] or 0.0
    curves = {}
    for system, by_day in sorted(per_day.items()):
        total, curve, pending = 0.0, [], sorted(by_day.items())
        i = 0
        for day in axis:
            while i < len(pending) and pending[i][0] <= day:
                total += pending[i][1]
                i += 1
            curve.append(round(total, 2))
        curves[system] = curve
    return {"days": axis, "curves": curves}


def monthly_returns(daily: list[dict]) -> list[dict[str, Any]]:
    """Rows of a year with twelve monthly returns (% from the previous month's last close) and the year's."""
    last_of_month: dict[tuple[int, int], float] = {}
    for row in daily:
        if row["cum_return_pct"] is not None:
            year, month = int(row["date"][:4]), int(row["date"][5:7])
            last_of_month[(year, month)] = 1 + row["cum_return_pct"] / 100
    years: dict[int, dict[str, Any]] = {}
    previous = 1.0
    year_start: dict[int, float] = {}
    for (year, month), level in sorted(last_of_month.items()):
        year_start.setdefault(year, previous)
        entry = years.setdefault(year, {"year": year, "months": [None] * 12, "total": None})
        entry["months"][month - 1] = (level / previous - 1) * 100 if previous else None
        entry["total"] = (level / year_start[year] - 1) * 100
        previous = level
    return [years[y] for y in sorted(years)]


def breakdown(trades: list[dict], key) -> list[dict[str, Any]]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for t in trades:
        groups[key(t)].append(t)
    rows = []
    for name, members in groups.items():
        pnls = [t["pnl"] or 0.0 for t in members]
        wins = sum(p > 0 for p in pnls)
        rows.append({"name": name, "trades": len(members), "pnl": sum(pnls),
                     "win_rate_pct": wins / len(members) * 100, "avg_pnl_pct": _mean(t["pnl_pct"] for t in members)})
    rows.sort(key=lambda r: -r["trades"])
    return rows


def recent_scans(journal: Reader) -> list[dict[str, Any]]:
    """The last scans, newest first, each with its market context, every candidate (signals, score, decision,
    reason), the risk gates that refused its buys, the decider's fallback and the symbols skipped for bad data."""
    scans = journal.query(f"SELECT * FROM scans ORDER BY id DESC LIMIT {SCANS_SHOWN}")
    if not scans:
        return []
    ids = [s["id"] for s in scans]
    marks = ",".join("?" * len(ids))
    candidates: dict[int, list[dict]] = defaultdict(list)
    for row in journal.query(f"SELECT * FROM candidates WHERE scan_id IN ({marks}) ORDER BY scan_id, "
                             "COALESCE(score, -1) DESC, id", ids):
        candidates[row["scan_id"]].append(row)
    since = min(s["started_at"] for s in scans)
    refusals: dict[int, list[dict]] = defaultdict(list)
    for row in journal.query(f"SELECT * FROM risk_events WHERE created_at >= ? AND scan_id IN ({marks}) ORDER BY id",
                             [since, *ids]):
        refusals[row["scan_id"]].append(row)
    decisions = {row["scan_id"]: row for row in journal.query(
        f"SELECT scan_id, decider, valid, fallback_reason FROM decisions WHERE scan_id IN ({marks})", ids)}
    out = []
    for scan in scans:
        refused = {r["symbol"]: r for r in refusals[scan["id"]]}
        rows = []
        for c in candidates[scan["id"]]:
            gate = refused.get(c["symbol"])
            rows.append({**c, "refused_by": gate["gate"] if gate else None,
                         "refusal": gate["detail"] if gate else None, "outcome": outcome_of(c, gate)})
        skipped = _json_dict(scan["skipped"])
        out.append({**scan, "candidates": rows, "refusals": refusals[scan["id"]], "skipped_symbols": skipped,
                    "decision": decisions.get(scan["id"])})
    return out


def outcome_of(candidate: dict, refusal: dict | None) -> str:
    """bought, refused (a risk gate stopped the buy), watched or rejected: the CSS class and word of a row."""
    decision = (candidate["decision"] or "").upper()
    if decision == "BUY":
        return "refused" if refusal else "bought"
    if decision == "WATCH":
        return "watched"
    return "rejected"


def recent_exits(journal: Reader) -> list[dict[str, Any]]:
    exits = journal.query(f"SELECT * FROM exits ORDER BY id DESC LIMIT {EXITS_SHOWN}")
    if not exits:
        return []
    ids = [e["id"] for e in exits]
    attempts: dict[int, list[dict]] = defaultdict(list)
    for row in journal.query(f"SELECT * FROM exit_attempts WHERE exit_id IN ({','.join('?' * len(ids))}) "
                             "ORDER BY exit_id, attempt", ids):
        attempts[row["exit_id"]].append(row)
    return [{**e, "attempt_rows": attempts[e["id"]]} for e in exits]


def recent_checks(journal: Reader) -> list[dict[str, Any]]:
    """The position checks of the last run that made any (a monitor or a scan): the newest rows, read backwards
    by id (position_checks has no index on run_id, and a long journal holds hundreds of thousands)."""
    rows = journal.query(f"SELECT * FROM position_checks ORDER BY id DESC LIMIT {CHECKS_SHOWN}")
    if not rows:
        return []
    last_run = rows[0]["run_id"]
    return [{**row, "signals": signal_text(row["signals"])} for row in reversed(rows) if row["run_id"] == last_run]


def alert_events(journal: Reader) -> list[dict[str, Any]]:
    """The last errors and critical alerts, newest first (through the events_level_time index)."""
    return journal.query("SELECT id, created_at, level, kind, source, message FROM events WHERE level IN "
                         f"('error', 'critical') ORDER BY created_at DESC, id DESC LIMIT {EVENTS_SHOWN}")


def recent_runs(journal: Reader) -> list[dict[str, Any]]:
    """The last commands that ran (tick's own runs left out: it starts the others), and failed ones first."""
    return journal.query("SELECT run_id, command, started_at, asof, finished_at, status, exit_code, detail FROM runs "
                         f"WHERE command NOT LIKE '% tick' ORDER BY rowid DESC LIMIT {RUNS_SHOWN}")


# --- a backtest's tearsheet --------------------------------------------------------------------------------------

def write_tearsheet(out_dir: str | Path, config=None, journal: Reader | None = None,
                    page: Path | None = None) -> Path | None:
    """DIR/dashboard/index.html (or `page`) for the backtest in `out_dir` (its metrics.json and trades.db): metrics
    beside SPY, equity and drawdown, monthly returns, P&L by system and by exit reason, the trade list. None when
    DASHBOARD_DIR is off in `config`."""
    from ports import dashboard_html

    if config is not None and not enabled(config):
        return None
    out_dir = Path(out_dir)
    own = journal is None
    reader = ReadOnly(out_dir / "trades.db") if own else journal
    try:
        data = tearsheet(out_dir, reader)
    finally:
        if own:
            reader.close()
    return dashboard_html.write_tearsheet(page or out_dir / "dashboard" / PAGE, data)


def tearsheet_after_backtest(rt, out_dir: str | Path) -> Path | None:
    """The backtest's tearsheet, written from its still open journal; never raises (a failure is logged and recorded
    in that journal as a warning event, the backtest's outputs and exit code stay as they are)."""
    started = time.perf_counter()
    try:
        path = write_tearsheet(out_dir, rt.config, rt.journal)
    except Exception as err:  # noqa: BLE001 - the tearsheet is a view of results already written
        log.warning("tearsheet not written: %s", err, exc_info=True)
        try:
            rt.journal.event("warning", "dashboard", f"tearsheet not written: {type(err).__name__}: {err}",
                             source="dashboard")
        except Exception:  # noqa: BLE001
            log.warning("could not record the tearsheet failure", exc_info=True)
        return None
    if path is not None:
        log.info("tearsheet %s written in %.3f s", path, time.perf_counter() - started)
    return path


def tearsheet(out_dir: Path, journal: Reader) -> dict[str, Any]:
    metrics_path = out_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.exists() else {}
    daily = journal.query("SELECT date, equity, cash, exposure, exposure_pct, day_pnl, day_pnl_pct, cum_return_pct, "
                          "spy_cum_return_pct FROM daily_performance ORDER BY date")
    closed = journal.query("SELECT id, symbol, strategy, cap, qty, original_qty, entry_time, entry_price, exit_time, "
                           "exit_price, exit_reason, exit_priority, pnl, pnl_pct, holding_days FROM trades "
                           "WHERE status IN ('closed', 'unknown') AND exit_time IS NOT NULL ORDER BY exit_time, id")
    held = journal.query(f"SELECT id, symbol, strategy, qty, entry_time, entry_price, current_price, "
                         f"unrealized_pnl FROM trades WHERE {HELD} ORDER BY id")
    from flows.reports import annualised_caution

    sessions = metrics.get("measured_sessions") or metrics.get("sessions") or len(daily)
    caution = annualised_caution(sessions, "CAGR, volatility, Sharpe, Sortino and turnover are annualised")
    return {"out_dir": str(out_dir), "metrics": metrics, "comparison": comparison(metrics), "caution": caution,
            "systems": system_metrics(metrics), "performance": performance(daily, closed),
            "trades": closed[-TRADES_SHOWN:][::-1], "trades_left_out": max(0, len(closed) - TRADES_SHOWN),
            "open_at_end": held}


METRIC_ROWS = (("total_return_pct", "total return", "pct"), ("cagr_pct", "CAGR", "pct"),
               ("volatility_pct", "volatility", "rate"), ("sharpe", "Sharpe", "ratio"), ("sortino", "Sortino", "ratio"),
               ("max_drawdown_pct", "max drawdown", "pct"), ("win_rate_pct", "win rate", "rate"),
               ("profit_factor", "profit factor", "ratio"), ("trades", "trades", "count"),
               ("exposure_pct", "time invested (exposure)", "rate"), ("turnover", "turnover", "ratio"),
               ("end_value", "end value", "money"))


def comparison(metrics: dict[str, Any]) -> dict[str, Any]:
    """The strategy's metrics beside each benchmark metrics.json carries (SPY total return first); a benchmark the
    data cannot give is named with the reason instead of a column of dashes."""
    columns = [("strategy", metrics.get("metrics") or {})]
    missing = []
    benchmarks = metrics.get("benchmarks") or {}
    for key, block in benchmarks.items():
        if not isinstance(block, dict):
            continue
        label = block.get("label") or key.replace("_", " ")
        if block.get("available", True) and block.get("metrics"):
            columns.append((label, block["metrics"]))
        else:
            missing.append(f"{label}: {block.get('missing') or 'not available'}")
    if not benchmarks and metrics.get("spy_buy_and_hold"):
        spy = metrics["spy_buy_and_hold"]
        columns.append((spy.get("label") or "SPY total return", spy))
    rows = [{"label": label, "kind": kind, "values": [c[1].get(key) for c in columns]} for key, label, kind
            in METRIC_ROWS]
    return {"columns": [c[0] for c in columns], "rows": rows, "missing": missing}


def system_metrics(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for name, block in (metrics.get("systems") or {}).items():
        values = (block or {}).get("metrics") or {}
        rows.append({"name": name, **{key: values.get(key) for key, _, _ in METRIC_ROWS}})
    return rows


# --- a research study's page -------------------------------------------------------------------------------------

def write_study_page(out_dir: str | Path, config=None) -> Path | None:
    """DIR/dashboard/index.html for the research study in `out_dir` (its research.db): the study, every trial with
    its parameters and metrics, each parameter's effect on the objective and, for a walk-forward, the folds and the
    test windows stitched beside the defaults and SPY. None when DASHBOARD_DIR is off in `config`."""
    from ports import dashboard_html

    if config is not None and not enabled(config):
        return None
    out_dir = Path(out_dir)
    reader = ReadOnly(out_dir / "research.db")
    try:
        data = study(reader)
    finally:
        reader.close()
    data["out_dir"] = str(out_dir)
    return dashboard_html.write_study(out_dir / "dashboard" / PAGE, data)


def study_page_after_run(out_dir: str | Path, config=None) -> Path | None:
    """write_study_page for the end of a study: never raises (a failure is logged; the study's results in
    research.db and its summary are what counts)."""
    try:
        return write_study_page(out_dir, config)
    except Exception as err:  # noqa: BLE001 - the page is a view of results already kept
        log.warning("study page not written: %s", err, exc_info=True)
        return None

def study(db: Reader) -> dict[str, Any]:
    found = db.query("SELECT * FROM study WHERE id = 1")
    spec = json.loads(found[0]["spec"]) if found else {}
    trials = []
    for row in db.query("SELECT * FROM trials ORDER BY number"):
        metrics = (json.loads(row["metrics"]) if row["metrics"] else {}) or {}
        trials.append({**row, "params": json.loads(row["params"] or "{}"), "figures": metrics.get("metrics") or {}})
    names = sorted({name for t in trials for name in t["params"]})
    search = [t for t in trials if t["role"] == "search"]
    default = next((t for t in trials if t["role"] == "default" and t["status"] == "done"), None)
    effects = [parameter_effect(name, search) for name in names]
    folds = [{**f, "chosen_params": json.loads(f["chosen_params"]) if f["chosen_params"] else None}
             for f in db.query("SELECT * FROM folds ORDER BY fold")]
    curves = walk_forward_curves(db, trials, folds) if folds else None
    ranked = sorted(search, key=lambda t: (t["objective"] is None, -(t["objective"] or 0), t["number"]))
    return {"study": found[0] if found else None, "spec": spec, "objective": spec.get("objective", "objective"),
            "params": names, "trials": trials, "ranked": ranked, "default": default, "effects": effects,
            "folds": folds, "curves": curves,
            "tried": len(search), "failed": sum(t["status"] == "failed" for t in search)}


def parameter_effect(name: str, trials: list[dict]) -> dict[str, Any]:
    """One parameter's values against the objective, for a scatter; text values are placed in their order."""
    done = [t for t in trials if t["status"] == "done" and t["objective"] is not None and name in t["params"]]
    values = [t["params"][name] for t in done]
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    labels = None if numeric else sorted({str(v) for v in values})
    xs = [float(v) if numeric else labels.index(str(v)) for v in values]
    return {"name": name, "points": list(zip(xs, [t["objective"] for t in done])), "labels": labels}


def walk_forward_curves(db: Reader, trials: list[dict], folds: list[dict]) -> dict[str, Any] | None:
    """The test windows chained in fold order from 100: the chosen settings, the defaults and SPY (each window's
    SPY from its first close, as the research store keeps it). None until every fold's test run finished."""
    series: dict[str, list[float]] = {}
    days: list[str] = []
    for role, label in (("test", "chosen settings (out of sample)"), ("test-default", "default settings")):
        values, axis, spy = [100.0], [], [100.0]
        for fold in folds:
            run = next((t for t in trials if t["fold"] == fold["fold"] and t["role"] == role
                        and t["status"] == "done"), None)
            if run is None:
                break
            previous = run["figures"].get("start_value")
            curve = db.query("SELECT date, equity, spy_close FROM equity WHERE trial = ? ORDER BY date",
                             [run["number"]])
            previous_spy = curve[0]["spy_close"] if curve else None
            for point in curve:
                if previous:
                    values.append(values[-1] * point["equity"] / previous)
                    axis.append(point["date"])
                previous = point["equity"]
                if point["spy_close"] and previous_spy:
                    spy.append(spy[-1] * point["spy_close"] / previous_spy)
                    previous_spy = point["spy_close"]
        else:
            series[label] = values
            if role == "test":
                days = axis
                if len(spy) == len(values):
                    series["SPY total return"] = spy
    if not series or not days:
        return None
    return {"days": ["start", *days], "series": series}


# --- small helpers ----------------------------------------------------------------------------------------------

def signal_text(text: str | None) -> str:
    """A position check's signals (JSON: a list, or names to lists such as reversal and triggered) for people:
    `reversal: down_day_high_volume; triggered: trailing_stop`, empty lists left out."""
    try:
        value = json.loads(text) if text else []
    except ValueError:
        return str(text)
    if isinstance(value, dict):
        parts = [f"{key}: {', '.join(map(str, items)) if isinstance(items, list) else items}"
                 for key, items in value.items() if items not in ([], None, "")]
        return "; ".join(parts)
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)


def _json_dict(text: str | None) -> dict:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {"?": text}
    return value if isinstance(value, dict) else {"?": str(value)}


def _mean(values: Iterable[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


"""Nightly and periodic bookkeeping jobs (SPEC section 9): daily-snapshot, update-outcomes, update-tracking, cleanup.

Every job is idempotent: it recomputes its figures from the broker, the market data and the journal, and writes a row
only where the stored values differ, so a cron retry or a manual second run leaves the same tables. The three
session-bound jobs do nothing on a weekend or NYSE holiday; cleanup runs on any day (cron runs it on Sunday).
daily-snapshot reconciles the journal with the broker first (a stop that filled at the close is in the day's row),
and measures the day's P&L from the previous session's close, never from an older snapshot.

Run from cron as `python main.py jobs NAME` or `python jobs.py NAME`; the latter accepts the global options after
the job name too, e.g. `python jobs.py daily-snapshot --asof 2016-11-09T16:05 --db data/trades.db`.
"""
from __future__ import annotations

import logging
import os
import sqlite3
import sys
import time
import warnings
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from common import render
from common.clock import day_bounds_utc
from common.errors import ConfigError
from core.option_math import multiplier
from flows.reports import start_of_first_day
from journal import reconcile

if TYPE_CHECKING:  # annotations only: the runtime module wires every port
    from flows.runtime import Runtime

log = logging.getLogger(__name__)

JOB_NAMES = ("daily-snapshot", "update-outcomes", "update-tracking", "cleanup")
NOT_A_TRADING_DAY = "not a trading day: nothing to do"
OUTCOME_HORIZONS = (1, 3, 5, 10)
OUTCOME_WINDOW = 10
OUTCOME_COLUMNS = (*(f"price_{k}d" for k in OUTCOME_HORIZONS), "max_gain_10d", "max_drawdown_10d")
# A candidate whose 10-session outcome stays unknown (missing bars) is retried this many sessions, then left alone.
OUTCOME_RETRY_SESSIONS = 20
RETENTION_DAYS = 90
LOG_ROTATE_BYTES = 10 * 1024 * 1024


@dataclass
class JobResult:
    name: str
    status: str  # done | skipped
    message: str
    counts: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def text(self) -> str:
        details = ", ".join(f"{key} {value}" for key, value in self.counts.items())
        return f"{self.name}: {self.message}" + (f" ({details})" if details else "")


# --- shared helpers ------------------------------------------------------------------------------------------------

def _changed(old: dict, new: dict, tolerance: float = 1e-9) -> bool:
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, float) and isinstance(before, (int, float)):
            if abs(value - before) > tolerance:
                return True
        elif value != before:
            return True
    return False


def _finite(value: float) -> float | None:
    return float(value) if value is not None and np.isfinite(value) else None


# --- daily-snapshot ------------------------------------------------------------------------------------------------

def _spy_today(rt: Runtime, today: date) -> tuple[float | None, float | None]:
    """SPY close today and its change from the previous session's close, percent."""
    previous = rt.calendar.previous_session(today)
    series = rt.market.market_series(previous, today)
    closes = {idx.date(): value for idx, value in series["spy_close"].items()}
    close, before = _finite(closes.get(today)), _finite(closes.get(previous))
    change = (close / before - 1) * 100 if close is not None and before else None
    return close, change


def _trades_opened_closed(rt: Runtime, today: date) -> tuple[int, int]:
    start, end = day_bounds_utc(today)
    opened = rt.journal.one(
        "SELECT COUNT(*) AS n FROM trades WHERE entry_time >= ? AND entry_time < ? "
        "AND status NOT IN ('pending', 'canceled')", [start, end])["n"]
    closed = rt.journal.one(
        "SELECT COUNT(*) AS n FROM trades WHERE exit_time >= ? AND exit_time < ? AND status IN ('closed', 'unknown')",
        [start, end])["n"]
    return opened, closed


def day_baseline(rt: Runtime, today: date, account) -> tuple[float | None, str]:
    """The equity today's P&L is measured from, and where it came from: the snapshot of the previous session when
    there is one (the rows then chain, day by day), else the broker's equity at the previous close (last_equity).

    After days without a snapshot the last stored row is older than the previous session; measuring from it would
    give one day the P&L of every session since, so the broker's previous close is used. Without either the day's
    P&L is unknown (None), and the row says so rather than guessing."""
    previous_session = rt.calendar.previous_session(today)
    previous = rt.journal.one("SELECT date, equity FROM daily_performance WHERE date = ?",
                              [previous_session.isoformat()])
    if previous is not None and previous["equity"]:
        return previous["equity"], "snapshot"
    if account.last_equity:
        return account.last_equity, "broker"
    return None, "unknown"


def snapshot_row(rt: Runtime, today: date) -> tuple[dict[str, Any], str]:
    """Today's daily_performance row from the broker, the journal and the SPY series, and where its day P&L was
    measured from: 'snapshot', 'broker' (no snapshot of the previous session), 'first' (the first row) or
    'unknown'."""
    account = rt.broker.account()
    exposure = round(sum(p.market_value for p in rt.broker.positions()), 2)
    journal = rt.journal
    first = journal.one("SELECT date, equity, day_pnl, spy_close, spy_change_pct FROM daily_performance "
                        "ORDER BY date LIMIT 1")
    if first is not None and first["date"] >= today.isoformat():
        first = None  # today's own row (a re-run) or a later one is no baseline for today: today's figures are
    base_equity, source = day_baseline(rt, today, account)
    day_pnl = round(account.equity - base_equity, 2) if base_equity else None
    spy_close, spy_change = _spy_today(rt, today)
    opened, closed = _trades_opened_closed(rt, today)
    # cumulative figures count from before the first snapshot's day (its equity less its day's P&L), the baseline
    # of the reports and the chart (flows/reports.start_of_first_day); today's row is the first when none is older
    first_equity = start_of_first_day(first) if first else account.equity - (day_pnl or 0.0)
    first_close, first_change = (first["spy_close"], first["spy_change_pct"]) if first else (spy_close, spy_change)
    first_spy = first_close / (1 + first_change / 100) if first_close and first_change is not None else first_close
    return {
        "date": today.isoformat(), "equity": account.equity, "cash": account.cash, "exposure": exposure,
        "exposure_pct": exposure / account.equity * 100 if account.equity else None,
        "day_pnl": day_pnl, "day_pnl_pct": day_pnl / base_equity * 100 if day_pnl is not None else None,
        "trades_opened": opened, "trades_closed": closed, "spy_close": spy_close, "spy_change_pct": spy_change,
        "cum_return_pct": (account.equity / first_equity - 1) * 100 if first_equity else None,
        "spy_cum_return_pct": (spy_close / first_spy - 1) * 100 if spy_close and first_spy else None,
    }, source if first else "first"


def _brought_up_to_date(report: reconcile.ReconcileReport) -> str:
    """What the reconciliation before the snapshot changed in the journal, for the job's line ('' if nothing)."""
    parts = [f"{symbol} closed ({reason.replace('_', ' ')}{f' at {render.money(price)}' if price else ''})"
             for symbol, reason, price in report.trades_closed]
    parts += [f"{symbol} entry filled" for symbol in report.entries_filled]
    parts += [f"{symbol} closed as unknown" for symbol in report.unknown_closed]
    parts += [f"{symbol} adopted" for symbol in report.adopted]
    return f"; journal brought up to date with the broker: {', '.join(parts)}" if parts else ""


def daily_snapshot(rt: Runtime) -> JobResult:
    """Reconcile first, so the day's closed trades (a broker stop that filled at the close, learned of by no
    monitor run yet), realised P&L and equity are the broker's; then write the day's row."""
    today = rt.clock.today()
    reconciled = reconcile.reconcile(rt)
    row, source = snapshot_row(rt, today)
    stored = rt.journal.one("SELECT * FROM daily_performance WHERE date = ?", [row["date"]])
    if stored is None or _changed(stored, row):
        rt.journal.upsert_rows("daily_performance", [{**row, "created_at": rt.journal.now()}], key="date")
    if row["day_pnl"] is None:
        day = "day P&L unknown (no snapshot of the previous session and no previous close from the broker)"
    else:
        day = f"day P&L {render.signed_money(row['day_pnl'])}"
        if source == "broker":  # days without a snapshot before today: none of their P&L is counted as today's
            day += " (from the broker's previous close: no snapshot of the previous session)"
    message = (f"{row['date']} equity {render.money(row['equity'])}, {day}, "
               f"cumulative {render.pct(row['cum_return_pct'])}")
    if row["spy_cum_return_pct"] is not None:
        message += f" vs SPY {render.pct(row['spy_cum_return_pct'])}"
    message += _brought_up_to_date(reconciled)
    from flows import tick

    late = tick.raise_dead_man(rt, rt.clock.now())  # the session's planned runs that did not run
    if late:
        message += f"; DEAD-MAN alert: {len(late)} planned run(s) did not run"
    return JobResult("daily-snapshot", "done", message,
                     {"opened": row["trades_opened"], "closed": row["trades_closed"], "not run": len(late)})


# --- update-outcomes -----------------------------------------------------------------------------------------------

@dataclass
class PendingOutcomes:
    """Candidates whose outcome is still open, column by column; a stored NULL outcome is NaN in `stored`."""
    ids: list[int]
    symbols: list[str]
    sessions: np.ndarray  # datetime64[D]
    price: np.ndarray
    stored: np.ndarray  # one row per candidate, one column per OUTCOME_COLUMNS
    stamped: np.ndarray  # bool: its outcome has been measured at least once

    def __len__(self) -> int:
        return len(self.ids)


# Parameters: the last completed session, the oldest session still retried. ORDER BY session, id is the order of the
# partial index candidates_outcome_pending (migration 0005), so SQLite reads just the open rows through it rather
# than scanning the whole table, which grows by every candidate of every scan.
PENDING_OUTCOMES_SQL = (
    f"SELECT id, symbol, session, price, {', '.join(OUTCOME_COLUMNS)}, outcome_updated_at IS NOT NULL "
    "FROM candidates WHERE price_10d IS NULL AND price > 0 AND session < ? "
    "AND (outcome_updated_at IS NULL OR session >= ?) ORDER BY session, id")


def _pending_candidates(rt: Runtime, last_session: date) -> PendingOutcomes | None:
    oldest_retry = rt.calendar.sessions_back(last_session, OUTCOME_RETRY_SESSIONS).isoformat()
    # tuples straight into arrays: a dict per row would cost more than the query
    rows = rt.journal.db.execute(PENDING_OUTCOMES_SQL, [last_session.isoformat(), oldest_retry]).fetchall()
    if not rows:
        return None
    ids, symbols, sessions, price, *stored, stamped = zip(*rows)
    return PendingOutcomes(list(ids), list(symbols), np.array(sessions, dtype="datetime64[D]"),
                           np.array(price, dtype=float), np.array(stored, dtype=float).T,
                           np.array(stamped, dtype=bool))


def candidate_outcomes(close: np.ndarray, high: np.ndarray, low: np.ndarray, row: np.ndarray, col: np.ndarray,
                       price: np.ndarray, last_row: int) -> dict[str, np.ndarray]:
    """Outcome columns for candidates at panel rows `row` (their session) and columns `col`, all at once.

    Row offsets past `last_row` (sessions not completed yet) are unknown: NaN prices, and the max gain / drawdown
    cover only the sessions known so far (NaN when none is).
    """
    offsets = np.arange(1, OUTCOME_WINDOW + 1)
    rows = row[:, None] + offsets[None, :]
    known = rows <= last_row
    safe_rows = np.minimum(rows, last_row)
    cols = np.broadcast_to(col[:, None], rows.shape)
    closes = np.where(known, close[safe_rows, cols], np.nan)
    highs = np.where(known, high[safe_rows, cols], np.nan)
    lows = np.where(known, low[safe_rows, cols], np.nan)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a row with nothing known yet is all-NaN, as intended
        out = {f"price_{k}d": closes[:, k - 1] for k in OUTCOME_HORIZONS}
        out["max_gain_10d"] = np.nanmax(highs, axis=1) / price - 1
        out["max_drawdown_10d"] = np.nanmin(lows, axis=1) / price - 1
    return out


def outcomes_changed(new: np.ndarray, stored: np.ndarray, tolerance: float = 1e-9) -> np.ndarray:
    """Per row, whether any value differs from the stored one (NaN = unknown): `_changed` over whole arrays."""
    new_known, stored_known = ~np.isnan(new), ~np.isnan(stored)
    with np.errstate(invalid="ignore"):
        moved = np.abs(new - stored) > tolerance
    return ((new_known != stored_known) | (new_known & stored_known & moved)).any(axis=1)


def _measured_outcomes(rt: Runtime, pending: PendingOutcomes, last_session: date) -> np.ndarray | None:
    """Every pending candidate's OUTCOME_COLUMNS as they stand after `last_session`, NaN where unknown."""
    symbols = sorted(set(pending.symbols))
    panel = rt.market.bars(symbols, pending.sessions.min().item(), last_session)
    days = panel.dates.astype("datetime64[D]")
    if len(days) == 0:
        return None
    row = np.searchsorted(days, pending.sessions)
    on_axis = (row < len(days)) & (days[np.minimum(row, len(days) - 1)] == pending.sessions)
    column_of = {symbol: i for i, symbol in enumerate(panel.symbols)}
    col = np.array([column_of[symbol] for symbol in pending.symbols])
    last_row = int(np.searchsorted(days, np.datetime64(last_session, "D"), side="right")) - 1
    values = candidate_outcomes(panel.close, panel.high, panel.low, row, col, pending.price, last_row)
    measured = np.column_stack([values[name] for name in OUTCOME_COLUMNS])
    # without a bar on the candidate's own session nothing can be measured yet; the row is still stamped, so the
    # retry window (OUTCOME_RETRY_SESSIONS) bounds how long it is looked at
    return np.where(on_axis[:, None] & np.isfinite(measured), measured, np.nan)


def _outcome_updates(rt: Runtime, pending: PendingOutcomes, last_session: date) -> list[tuple[int, list]]:
    """(id, OUTCOME_COLUMNS values) of the candidates never stamped before or whose outcome moved."""
    measured = _measured_outcomes(rt, pending, last_session)
    if measured is None:
        return []
    chosen = np.flatnonzero(~pending.stamped | outcomes_changed(measured, pending.stored))
    values = measured[chosen].astype(object)  # Python floats, and None for SQL NULL
    values[np.isnan(measured[chosen])] = None
    return [(pending.ids[i], row) for i, row in zip(chosen.tolist(), values.tolist())]


def _write_outcomes(rt: Runtime, updates: list[tuple[int, list]], now: str) -> int:
    """Store the updates, stamped `now`, in one transaction; returns how many outcomes they complete.

    A candidate still open leaves price_10d (NULL before and after) out of its UPDATE: SQLite then keeps its entry in
    the partial index candidates_outcome_pending as it is, where setting the column would delete and re-insert it.
    """
    if not updates:
        return 0
    tenth = OUTCOME_COLUMNS.index("price_10d")
    completed = [(candidate_id, values) for candidate_id, values in updates if values[tenth] is not None]
    still_open = [(candidate_id, values[:tenth] + values[tenth + 1:])
                  for candidate_id, values in updates if values[tenth] is None]
    open_columns = OUTCOME_COLUMNS[:tenth] + OUTCOME_COLUMNS[tenth + 1:]
    with rt.journal.atomic():
        for columns, batch in ((OUTCOME_COLUMNS, completed), (open_columns, still_open)):
            if batch:  # one statement a batch; the rows are many on a busy day
                assignments = ", ".join(f"{name} = ?" for name in (*columns, "outcome_updated_at"))
                rt.journal.db.conn.executemany(f"UPDATE candidates SET {assignments} WHERE id = ?",
                                               [[*values, now, candidate_id] for candidate_id, values in batch])
    return len(completed)


def update_outcomes(rt: Runtime) -> JobResult:
    last_session = rt.calendar.last_completed_session(rt.clock.now())
    pending = _pending_candidates(rt, last_session)
    if pending is None:
        return JobResult("update-outcomes", "done", "no candidate outcomes to update", {"candidates": 0})
    updates = _outcome_updates(rt, pending, last_session)
    complete = _write_outcomes(rt, updates, rt.journal.now())
    return JobResult("update-outcomes", "done", f"outcomes up to {last_session}",
                     {"checked": len(pending), "updated": len(updates), "completed": complete})


# --- update-tracking -----------------------------------------------------------------------------------------------

def tracking_update(trade: dict, price: float) -> dict[str, Any]:
    """Unrealised P&L, peak and the best / worst excursion since entry (percent) of one open trade at `price`."""

    entry, qty = trade["entry_price"], trade["qty"]
    pnl_pct = (price / entry - 1) * 100
    size = multiplier(trade.get("asset_class") or "us_equity")  # option premiums are per share, 100 a contract
    return {
        "current_price": price, "unrealized_pnl": round((price - entry) * qty * size, 2),
        "unrealized_pnl_pct": round(pnl_pct, 4),
        "peak_price": max(trade["peak_price"] or entry, price),
        "max_gain_pct": round(max(trade["max_gain_pct"] or 0.0, pnl_pct), 4),
        "max_drawdown_pct": round(min(trade["max_drawdown_pct"] or 0.0, pnl_pct), 4),
    }


def update_tracking(rt: Runtime) -> JobResult:
    trades = rt.journal.held_trades("id, symbol, asset_class, qty, entry_price, current_price, unrealized_pnl, "
                                    "unrealized_pnl_pct, peak_price, max_gain_pct, max_drawdown_pct",
                                    where="entry_price > 0")
    prices = {p.symbol: p.current_price for p in rt.broker.positions()} if trades else {}
    now = rt.journal.now()
    updated, missing = 0, []
    with rt.journal.atomic():
        for trade in trades:
            price = prices.get(trade["symbol"])
            if price is None:
                missing.append(trade["symbol"])  # reconciliation decides what happened to it
                continue
            values = tracking_update(trade, price)
            if _changed(trade, values):
                rt.journal.db.table("trades").update(trade["id"], {**values, "last_update": now})
                updated += 1
    counts: dict[str, Any] = {"open": len(trades), "updated": updated}
    if missing:
        counts["without position"] = ",".join(missing)
    return JobResult("update-tracking", "done", f"{len(trades)} open trade(s) tracked", counts)


# --- cleanup -------------------------------------------------------------------------------------------------------

def _delete_old_rows(rt: Runtime, cutoff: date) -> dict[str, int]:
    cutoff_utc = day_bounds_utc(cutoff)[0]
    with rt.journal.atomic():
        candidates = rt.journal.db.execute("DELETE FROM candidates WHERE session < ?", [cutoff.isoformat()]).rowcount
        checks = rt.journal.db.execute("DELETE FROM position_checks WHERE checked_at < ?", [cutoff_utc]).rowcount
        slots = rt.journal.db.execute("DELETE FROM schedule_slots WHERE session < ?", [cutoff.isoformat()]).rowcount
    return {"candidates deleted": candidates, "position checks deleted": checks, "schedule slots deleted": slots}


def _optimise(rt: Runtime) -> int:
    """Refresh the planner's statistics and give deleted pages back to the file system; 1 when vacuumed.

    VACUUM needs the journal to itself; if another command holds it beyond the busy timeout, the deletes already
    committed stand and the vacuum waits for next week rather than failing the job.
    """
    conn = rt.journal.db.conn
    conn.commit()  # VACUUM refuses to run inside a transaction
    conn.execute("PRAGMA optimize")
    try:
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.OperationalError as err:
        log.warning("journal vacuum skipped: %s", err)
        return 0
    return 1


def rotate_logs(log_dir: Path, today: date) -> dict[str, int]:
    """Delete audit CSVs older than the retention, and roll momentum.jsonl and cron.log (the output cron appends)
    over to .1 when they grow too big. Cron reopens cron.log for every command it starts, so the next line lands in
    a new file."""
    cutoff = today - timedelta(days=RETENTION_DAYS)
    deleted = 0
    for path in sorted(Path(log_dir).glob("trades_*.csv")):
        try:
            day = date.fromisoformat(path.stem.removeprefix("trades_"))
        except ValueError:
            continue  # not one of ours
        if day < cutoff:
            path.unlink()
            deleted += 1
    rotated = 0
    for name in ("momentum.jsonl", "cron.log"):
        path = Path(log_dir) / name
        if path.exists() and path.stat().st_size > LOG_ROTATE_BYTES:
            os.replace(path, path.with_name(path.name + ".1"))
            _reopen_log_handlers(path)
            rotated += 1
    return {"audit files deleted": deleted, "logs rotated": rotated}


def _reopen_log_handlers(path: Path) -> None:
    """A closed FileHandler reopens its file on the next record, so this process writes to the new file too."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename) == path.resolve():
            handler.close()


def cleanup(rt: Runtime) -> JobResult:
    today = rt.clock.today()
    cutoff = today - timedelta(days=RETENTION_DAYS)
    counts = _delete_old_rows(rt, cutoff)
    counts["vacuumed"] = _optimise(rt)
    counts.update(rotate_logs(Path(rt.config.log_dir), today))
    return JobResult("cleanup", "done", f"kept everything from {cutoff} on; trades, orders and exits kept forever",
                     counts)


# --- entry points --------------------------------------------------------------------------------------------------

JOBS: dict[str, tuple[Callable[[Any], JobResult], bool]] = {
    # name: (function, runs only on a trading day)
    "daily-snapshot": (daily_snapshot, True),
    "update-outcomes": (update_outcomes, True),
    "update-tracking": (update_tracking, True),
    "cleanup": (cleanup, False),
}


def run_job(rt: Runtime, name: str) -> JobResult:
    """Run one job by name; a session-bound job on a weekend or holiday returns a 'skipped' result."""
    if name not in JOBS:
        raise ConfigError(f"unknown job {name!r} (one of {', '.join(JOB_NAMES)})")
    function, session_bound = JOBS[name]
    started = time.perf_counter()
    if session_bound and not rt.calendar.is_session(rt.clock.today()):
        result = JobResult(name, "skipped", NOT_A_TRADING_DAY)
    else:
        result = function(rt)
    result.seconds = time.perf_counter() - started
    log.info("job finished", extra={"job": name, "status": result.status, "counts": result.counts,
                                    "seconds": round(result.seconds, 3)})
    return result


_GLOBAL_WITH_VALUE = ("--db", "--data", "--market", "--broker", "--asof", "--universe")


def cli_arguments(argv: list[str]) -> list[str]:
    """`NAME [options]` as main.py's `[global options] jobs NAME [options]`: global options move to the front."""
    front: list[str] = []
    rest: list[str] = []
    tokens = iter(argv)
    for token in tokens:
        if token in _GLOBAL_WITH_VALUE:
            front += [token, next(tokens, "")]
        elif token.split("=", 1)[0] in _GLOBAL_WITH_VALUE or token in ("-v", "--verbose"):
            front.append(token)
        else:
            rest.append(token)
    return [*front, "jobs", *rest]


if __name__ == "__main__":
    from main import cli

    cli(cli_arguments(sys.argv[1:]), prog_name="jobs.py")

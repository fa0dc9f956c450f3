"""update-outcomes and daily-snapshot as the backtest calls them, once a session on a journal that keeps growing.

update-outcomes reads only the open candidates (through the partial index of migration 0005) and decides what to
write over whole arrays; the rules are the row-by-row ones it replaced, kept here as the oracle: the same rows are
written, with the same values and the same stamps. daily-snapshot writes its row with a plain upsert.
"""
from __future__ import annotations

import math
from datetime import date, datetime, time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

import db as journal_db
import jobs
from common.clock import NY, Clock, calendar, parse_asof
from common.types import Account, Panel, Position
from journal.schema import MIGRATIONS

FIRST, LAST = date(2016, 5, 2), date(2016, 7, 29)
SYMBOLS = ("AAA", "BBB", "CCC", "GAP", "ZZZ")
INDEX = "candidates_outcome_pending"


class FakeMarket:
    """Seeded random-walk bars on every session FIRST..LAST; GAP has no bar on a few sessions (NaN)."""

    def __init__(self, seed: int = 7):
        rng = np.random.default_rng(seed)
        self.days = np.array(calendar().sessions(FIRST, LAST), dtype="datetime64[D]")
        shape = (len(self.days), len(SYMBOLS))
        self.close = 50 * np.exp(np.cumsum(rng.normal(0, 0.02, shape), axis=0))
        self.high = self.close * (1 + rng.uniform(0, 0.03, shape))
        self.low = self.close * (1 - rng.uniform(0, 0.03, shape))
        for field in (self.close, self.high, self.low):
            field[[20, 21, 33], SYMBOLS.index("GAP")] = np.nan
        self.requests: list[tuple[tuple[str, ...], date, date]] = []

    def bars(self, symbols, start: date, end: date) -> Panel:
        self.requests.append((tuple(symbols), start, end))
        rows = (self.days >= np.datetime64(start)) & (self.days <= np.datetime64(end))
        cols = [SYMBOLS.index(s) for s in symbols]
        close, high, low = (field[rows][:, cols] for field in (self.close, self.high, self.low))
        return Panel(self.days[rows], list(symbols), close, high, low, close, np.ones_like(close))


def _runtime(path: Path, market) -> SimpleNamespace:
    clock = Clock(parse_asof("2016-05-02T09:00"))
    return SimpleNamespace(clock=clock, calendar=calendar(), journal=journal_db.open_journal(path, clock),
                           market=market)


def _add_candidates(journal, session: str, rows: list[tuple[str, float | None]]) -> None:
    scan_id = journal.insert_row("scans", {"type": "full", "cap": "large", "asof": f"{session}T14:30:00+00:00",
                                           "session": session, "started_at": "x", "dry_run": 0})
    journal.insert_rows("candidates", [{"scan_id": scan_id, "symbol": symbol, "session": session, "asof": "x",
                                        "price": price} for symbol, price in rows])


def _candidates_of(session: date, i: int) -> list[tuple[str, float | None]]:
    rows = [(symbol, round(40 + 3 * j + i % 7, 2)) for j, symbol in enumerate(SYMBOLS)]
    if i % 5 == 0:
        rows += [("AAA", 0.0), ("BBB", None)]  # never measured: no price to measure against
    return rows


def reference_update_outcomes(rt) -> dict[str, int]:
    """The row-by-row job (a dict per candidate, scalar rules): what update-outcomes must keep writing."""
    last_session = rt.calendar.last_completed_session(rt.clock.now())
    oldest_retry = rt.calendar.sessions_back(last_session, jobs.OUTCOME_RETRY_SESSIONS).isoformat()
    pending = rt.journal.query(
        f"SELECT id, symbol, session, price, {', '.join(jobs.OUTCOME_COLUMNS)}, outcome_updated_at FROM candidates "
        "WHERE price_10d IS NULL AND price > 0 AND session < ? AND (outcome_updated_at IS NULL OR session >= ?) "
        "ORDER BY id", [last_session.isoformat(), oldest_retry])
    if not pending:
        return {"candidates": 0}
    panel = rt.market.bars(sorted({c["symbol"] for c in pending}),
                           date.fromisoformat(min(c["session"] for c in pending)), last_session)
    days = [d.isoformat() for d in panel.dates.astype("datetime64[D]").tolist()]
    known_rows = [i for i, day in enumerate(days) if day <= last_session.isoformat()]
    updates = []
    for c in pending:
        new = dict.fromkeys(jobs.OUTCOME_COLUMNS)
        if c["session"] in days:
            col, start = panel.symbols.index(c["symbol"]), days.index(c["session"])
            window = [r for r in range(start + 1, start + 11) if r in known_rows]
            for k in jobs.OUTCOME_HORIZONS:
                new[f"price_{k}d"] = float(panel.close[start + k, col]) if start + k in window else None
            highs = [panel.high[r, col] for r in window if not math.isnan(panel.high[r, col])]
            lows = [panel.low[r, col] for r in window if not math.isnan(panel.low[r, col])]
            new["max_gain_10d"] = float(max(highs) / c["price"] - 1) if highs else None
            new["max_drawdown_10d"] = float(min(lows) / c["price"] - 1) if lows else None
            new = {name: None if value is None or not math.isfinite(value) else value for name, value in new.items()}
        if c["outcome_updated_at"] is None or jobs._changed(c, new):
            updates.append((c["id"], new))
    now = rt.journal.now()
    with rt.journal.atomic():
        for candidate_id, new in updates:
            rt.journal.update_row("candidates", "id", candidate_id, {**new, "outcome_updated_at": now})
    completed = sum(1 for _, new in updates if new["price_10d"] is not None)
    return {"checked": len(pending), "updated": len(updates), "completed": completed}


def _table(journal) -> list[tuple]:
    return [tuple(row.values()) for row in journal.query("SELECT * FROM candidates ORDER BY rowid")]


def _disturb(journal) -> None:
    """Stored values a little (inside the tolerance) and clearly (outside it) off, and one infinite."""
    with journal.atomic():
        journal.db.execute("UPDATE candidates SET max_gain_10d = max_gain_10d + 4e-10 WHERE id % 4 = 0")
        journal.db.execute("UPDATE candidates SET max_drawdown_10d = max_drawdown_10d - 3e-9 WHERE id % 4 = 1")
        journal.db.execute("UPDATE candidates SET price_1d = 9e999 WHERE id % 9 = 2 AND price_1d IS NOT NULL")


def test_update_outcomes_writes_what_the_row_by_row_job_wrote(tmp_path):
    market = FakeMarket()
    product, oracle = _runtime(tmp_path / "product.db", market), _runtime(tmp_path / "oracle.db", market)
    sessions = calendar().sessions(FIRST, date(2016, 7, 15))
    results = []
    for i, session in enumerate(sessions):
        for rt in (product, oracle):
            _add_candidates(rt.journal, session.isoformat(), _candidates_of(session, i))
            if i == 3:  # a candidate dated on a Saturday: not on the bar axis, never measurable
                _add_candidates(rt.journal, "2016-05-07", [("CCC", 45.0)])
            if i in (25, 40):
                _disturb(rt.journal)
            rt.clock.set(datetime.combine(session, time(16, 10), tzinfo=NY))
        counts = jobs.update_outcomes(product).counts
        assert counts == reference_update_outcomes(oracle), session
        assert _table(product.journal) == _table(oracle.journal), session
        results.append(counts)
    # the run went through every case: first stamps, completions, and rows left alone within the tolerance
    assert sum(r.get("completed", 0) for r in results) > 0
    assert any(0 < r["updated"] < r["checked"] for r in results if "checked" in r)
    # a candidate scanned after the last disturbance, complete by the end: its outcome from the bars themselves
    probe = sessions[41]
    day = list(market.days).index(np.datetime64(probe))
    row = product.journal.one("SELECT * FROM candidates WHERE session = ? AND symbol = 'AAA' AND price > 0",
                              [probe.isoformat()])
    assert row["price_1d"] == market.close[day + 1, 0] and row["price_10d"] == market.close[day + 10, 0]
    assert row["max_gain_10d"] == market.high[day + 1: day + 11, 0].max() / row["price"] - 1
    # the partial index holds exactly the candidates whose outcome is still open
    open_ids = [r["id"] for r in product.journal.query("SELECT id FROM candidates WHERE price_10d IS NULL")]
    indexed = product.journal.query(f"SELECT id FROM candidates INDEXED BY {INDEX} WHERE price_10d IS NULL "
                                    "ORDER BY id")
    assert [r["id"] for r in indexed] == sorted(open_ids) and len(open_ids) > 20
    assert product.journal.query("PRAGMA integrity_check") == [{"integrity_check": "ok"}]


def test_candidate_without_a_bar_on_its_session_is_stamped_then_retried_until_the_window_closes(tmp_path):
    rt = _runtime(tmp_path / "trades.db", FakeMarket())
    _add_candidates(rt.journal, "2016-05-07", [("CCC", 45.0)])  # a Saturday
    stamps = []
    for session in calendar().sessions(date(2016, 5, 9), date(2016, 6, 15)):
        rt.clock.set(datetime.combine(session, time(16, 10), tzinfo=NY))
        stamps.append((jobs.update_outcomes(rt).counts, rt.journal.one("SELECT * FROM candidates")))
    counts, row = stamps[0]
    assert counts == {"checked": 1, "updated": 1, "completed": 0}
    assert row["outcome_updated_at"] == "2016-05-09T20:10:00+00:00"
    assert [row[name] for name in jobs.OUTCOME_COLUMNS] == [None] * 6
    assert stamps[1][0] == {"checked": 1, "updated": 0, "completed": 0}  # looked at again, nothing new to write
    retried = [counts for counts, _ in stamps if counts.get("checked")]
    assert len(retried) == jobs.OUTCOME_RETRY_SESSIONS  # then left alone
    assert stamps[-1] == ({"candidates": 0}, row)


@pytest.mark.parametrize("new, stored, changed", [
    (None, None, False),
    (1.25, None, True),
    (None, 1.25, True),
    (1.25, 1.25, False),
    (1.25, 1.25 + 4e-10, False),  # within the tolerance: the stored value stands
    (1.25, 1.25 - 3e-9, True),
    (1.25, math.inf, True),
    (None, math.inf, True),
])
def test_outcomes_changed_follows_the_scalar_rule(new, stored, changed):
    names = jobs.OUTCOME_COLUMNS
    for column in range(len(names)):
        new_row = [0.5] * len(names)
        stored_row = [0.5] * len(names)
        new_row[column], stored_row[column] = new, stored
        arrays = np.array([new_row], dtype=float), np.array([stored_row], dtype=float)
        assert jobs.outcomes_changed(*arrays).tolist() == [changed]
        assert jobs._changed(dict(zip(names, stored_row)), dict(zip(names, new_row))) is changed


# --- the index -----------------------------------------------------------------------------------------------------

def _journal_with_history(path: Path, migrations=MIGRATIONS):
    """2,380 candidates with complete outcomes, then 60 open ones (the last 12 sessions)."""
    journal = journal_db.open_journal(path, Clock(parse_asof("2016-07-29T17:00")))
    sessions = calendar().sessions(date(2014, 1, 2), date(2016, 7, 28))[-250:]
    for i, session in enumerate(sessions):
        rows = [(symbol, 40.0 + i) for symbol in SYMBOLS] * (2 if i < 238 else 1)
        _add_candidates(journal, session.isoformat(), rows)
    with journal.atomic():
        journal.db.execute("UPDATE candidates SET price_10d = price, outcome_updated_at = 'x' WHERE session < ?",
                           [sessions[238].isoformat()])
    return journal


@pytest.mark.parametrize("analyzed", [False, True], ids=["fresh journal", "after ANALYZE"])
def test_pending_candidates_are_read_through_the_partial_index(tmp_path, analyzed):
    journal = _journal_with_history(tmp_path / "trades.db")
    if analyzed:  # cleanup's PRAGMA optimize may gather statistics; the plan must not change with them
        journal.db.execute("ANALYZE")
    plan = [row["detail"] for row in journal.query("EXPLAIN QUERY PLAN " + jobs.PENDING_OUTCOMES_SQL,
                                                   ["2016-07-29", "2016-06-30"])]
    assert any(f"USING INDEX {INDEX}" in step for step in plan), plan
    assert not any(step.startswith("SCAN") or "TEMP B-TREE" in step for step in plan), plan
    rows = journal.db.execute(jobs.PENDING_OUTCOMES_SQL, ["2016-07-29", "2016-06-30"]).fetchall()
    assert len(rows) == 60 and [(r[2], r[0]) for r in rows] == sorted((r[2], r[0]) for r in rows)


def test_migration_0005_indexes_the_open_candidates_of_an_existing_journal(tmp_path, monkeypatch):
    path = tmp_path / "trades.db"
    monkeypatch.setattr(journal_db, "MIGRATIONS", MIGRATIONS[:4])
    _journal_with_history(path).db.conn.close()
    monkeypatch.setattr(journal_db, "MIGRATIONS", MIGRATIONS)
    journal = journal_db.open_journal(path, Clock(parse_asof("2016-07-29T17:00")))
    index = journal.one("SELECT sql FROM sqlite_master WHERE type = 'index' AND name = ?", [INDEX])
    assert index["sql"].endswith("ON candidates(session) WHERE price_10d IS NULL")
    indexed = journal.one(f"SELECT COUNT(*) AS n FROM candidates INDEXED BY {INDEX} WHERE price_10d IS NULL")
    assert indexed["n"] == 60
    assert [p.name.split(".before-")[1] for p in (tmp_path / "backups").iterdir()] == [
        "0005_pending_outcomes_index.db"]


# --- daily-snapshot ------------------------------------------------------------------------------------------------

def _snapshot_runtime(path: Path, equity: float, last_equity: float = 100_000.0) -> SimpleNamespace:
    clock = Clock(parse_asof("2016-07-29T16:05"))
    spy = pd.DataFrame({"spy_close": [216.0, 217.08]},
                       index=pd.DatetimeIndex(["2016-07-28", "2016-07-29"], name="date"))
    broker = SimpleNamespace(
        account=lambda: Account(equity=equity, cash=equity - 5_000.0, buying_power=0.0, last_equity=last_equity),
        positions=lambda: [Position("AAA", 100, 100, 48.0, 50.0, 5_000.0, 200.0)])
    journal = journal_db.open_journal(path, clock)
    if journal.one("SELECT 1 FROM trades WHERE symbol = 'AAA'") is None:  # the journal knows the broker's position,
        journal.insert_row("trades", {  # so the reconciliation the snapshot starts with changes nothing
            "symbol": "AAA", "qty": 100, "original_qty": 100, "entry_price": 48.0, "status": "open",
            "entry_time": "2016-07-20T14:00:00+00:00", "strategy": "momentum"})
    return SimpleNamespace(clock=clock, calendar=calendar(), journal=journal,
                           broker=broker, market=SimpleNamespace(market_series=lambda start, end: spy))


def test_daily_snapshot_inserts_then_updates_its_row_in_place(tmp_path):
    path = tmp_path / "trades.db"
    rt = _snapshot_runtime(path, 101_000.0)
    yesterday = {"date": "2016-07-28", "equity": 100_000.0, "spy_close": 216.0, "created_at": "earlier"}
    rt.journal.insert_row("daily_performance", yesterday)
    jobs.daily_snapshot(rt)
    first = rt.journal.query("SELECT rowid, * FROM daily_performance WHERE date = '2016-07-29'")
    spy_change = (217.08 / 216.0 - 1) * 100
    assert first == [{"rowid": 2, "date": "2016-07-29", "equity": 101_000.0, "cash": 96_000.0, "exposure": 5_000.0,
                      "exposure_pct": 5_000.0 / 101_000.0 * 100, "day_pnl": 1_000.0,
                      "day_pnl_pct": 1_000.0 / 100_000.0 * 100, "trades_opened": 0, "trades_closed": 0,
                      "spy_close": 217.08, "spy_change_pct": spy_change,
                      "cum_return_pct": (101_000.0 / 100_000.0 - 1) * 100, "spy_cum_return_pct": spy_change,
                      "created_at": "2016-07-29T20:05:00+00:00"}]
    rt.clock.set(datetime(2016, 7, 29, 16, 6, tzinfo=NY))
    jobs.daily_snapshot(rt)  # the same figures: nothing written, the first stamp stays
    assert rt.journal.query("SELECT rowid, * FROM daily_performance WHERE date = '2016-07-29'") == first
    rt.journal.db.conn.close()
    rt = _snapshot_runtime(path, 101_500.0)  # the equity moved (a late fill): the row is updated where it is
    rt.clock.set(datetime(2016, 7, 29, 16, 7, tzinfo=NY))
    jobs.daily_snapshot(rt)
    assert rt.journal.query("SELECT rowid, * FROM daily_performance ORDER BY rowid") == [
        {"rowid": 1, **yesterday, **dict.fromkeys(("cash", "exposure", "exposure_pct", "day_pnl", "day_pnl_pct",
                                                   "trades_opened", "trades_closed", "spy_change_pct",
                                                   "cum_return_pct", "spy_cum_return_pct"))},
        {**first[0], "equity": 101_500.0, "cash": 96_500.0, "exposure_pct": 5_000.0 / 101_500.0 * 100,
         "day_pnl": 1_500.0, "day_pnl_pct": 1_500.0 / 100_000.0 * 100,
         "cum_return_pct": (101_500.0 / 100_000.0 - 1) * 100, "created_at": "2016-07-29T20:07:00+00:00"}]


@pytest.mark.parametrize("last_equity, day_pnl, said", [
    (100_200.0, 800.0, "day P&L +$800.00 (from the broker's previous close: no snapshot of the previous session)"),
    (0.0, None, "day P&L unknown (no snapshot of the previous session and no previous close from the broker)")])
def test_after_days_without_a_snapshot_the_day_is_measured_from_the_previous_close(tmp_path, last_equity, day_pnl,
                                                                                     said):
    """The last row is 2016-07-26, three sessions before: its equity is not the start of 2016-07-29. The broker's
    previous close is (last_equity); without one the day's P&L is unknown and the line says so."""
    rt = _snapshot_runtime(tmp_path / "trades.db", 101_000.0, last_equity)
    rt.journal.insert_row("daily_performance", {"date": "2016-07-26", "equity": 99_000.0, "day_pnl": -1_000.0,
                                                "created_at": "earlier"})
    result = jobs.daily_snapshot(rt)
    row = rt.journal.one("SELECT * FROM daily_performance WHERE date = '2016-07-29'")
    assert row["day_pnl"] == day_pnl and said in result.message
    assert row["day_pnl_pct"] == (pytest.approx(day_pnl / last_equity * 100) if day_pnl is not None else None)
    assert row["cum_return_pct"] == pytest.approx((101_000.0 / 100_000.0 - 1) * 100)  # from before 2016-07-26
    rt.journal.db.conn.close()

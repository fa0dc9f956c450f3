"""Bookkeeping jobs over a journal produced by a real sequence of sim runs on the real S&P 500 history.

The journal is built once: trading scans (skip_buys off) on six sessions of November 2016, and on every session from
2016-11-09 to 2016-12-02 update-tracking at 13:00, reconcile at 16:01 (broker trailing stops close trades),
daily-snapshot at 16:05 and update-outcomes at 16:10, exactly as cron would. While it runs, the test reads the sim
broker itself at the moment of each job, so the journal's figures are checked against independently taken values.
Tests that change the journal work on a copy.
"""
from __future__ import annotations

import csv
import shutil
import sqlite3
import subprocess
import sys
from contextlib import closing
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest

from common.clock import Clock, calendar, parse_asof

from conftest import ROOT, SHARED_DATA
from realdata import BARS, cli, process_env

NY = ZoneInfo("America/New_York")
SPY_FILE = SHARED_DATA / "spy_vix_daily_1993_2018.csv"
SCANS = {"2016-11-09": "10:30", "2016-11-10": "12:30", "2016-11-11": "15:30", "2016-11-14": "10:30",
         "2016-11-16": "10:30", "2016-11-21": "10:30"}
FIRST, LAST = date(2016, 11, 9), date(2016, 12, 2)
_PRODUCED: dict[str, dict] = {}


def _env_for(folder: Path, universe: Path, cache: Path) -> dict[str, str]:
    return {"MOMENTUM_DB": str(folder / "trades.db"), "UNIVERSE_FILE": str(universe),
            "DATA_SOURCE": f"csv:{BARS}", "LOG_DIR": str(folder / "logs"), "CACHE_DIR": str(cache), "BROKER": "sim"}


def _ok(*args: str) -> str:
    result = cli(*args)
    assert result.exit_code == 0, (args, result.output)
    return result.output


def _broker_view(env: dict[str, str], market, asof: str) -> dict:
    """The sim broker's account and positions at `asof`, read directly (not through the product's jobs)."""
    from ports.sim_broker import SimBroker

    broker = SimBroker(Path(env["MOMENTUM_DB"]).parent / "sim_broker.db", market, Clock(parse_asof(asof)))
    try:
        account = broker.account()
        positions = {p.symbol: (p.qty, p.current_price, p.market_value) for p in broker.positions()}
    finally:
        broker.close()
    return {"equity": account.equity, "cash": account.cash, "last_equity": account.last_equity,
            "positions": positions}


def _produce(folder: Path, universe: Path, cache: Path) -> dict:
    from ports.market_sources import CsvMarket

    env = _env_for(folder, universe, cache)
    market = CsvMarket(BARS, cache_dir=cache)
    captured: dict = {"snapshot": {}, "tracking": {}}
    with pytest.MonkeyPatch.context() as patch:
        for name in ("MOMENTUM_ASOF", "MARKET_DATA"):
            patch.delenv(name, raising=False)
        for name, value in env.items():
            patch.setenv(name, value)
        _ok("set", "skip_buys", "off")
        for day in calendar().sessions(FIRST, LAST):
            iso = day.isoformat()
            if iso in SCANS:
                _ok("--asof", f"{iso}T{SCANS[iso]}", "scan", "--cap", "all")
            if iso not in SCANS or SCANS[iso] < "13:00":
                _ok("--asof", f"{iso}T13:00", "jobs", "update-tracking")
                captured["tracking"][iso] = _broker_view(env, market, f"{iso}T13:00")["positions"]
            _ok("--asof", f"{iso}T16:01", "reconcile")
            _ok("--asof", f"{iso}T16:05", "jobs", "daily-snapshot")
            captured["snapshot"][iso] = _broker_view(env, market, f"{iso}T16:05")
            _ok("--asof", f"{iso}T16:10", "jobs", "update-outcomes")
    return {"folder": folder, "env": env, **captured}


@pytest.fixture
def produced(tmp_path_factory, real_universe, shared_cache) -> dict:  # noqa: F811
    """The produced journal (built on first use in this test session; read it, do not change it)."""
    if "journal" not in _PRODUCED:
        _PRODUCED["journal"] = _produce(tmp_path_factory.mktemp("produced"), real_universe, shared_cache)
    return _PRODUCED["journal"]


def copy_journal(produced: dict, target: Path, monkeypatch) -> dict[str, str]:
    """A private copy of the produced journal and sim broker in `target`, exported as the environment."""
    source = produced["folder"]
    for name in ("trades.db", "sim_broker.db"):
        with closing(sqlite3.connect(source / name)) as src, closing(sqlite3.connect(target / name)) as dst:
            src.backup(dst)
    if (source / "logs").is_dir():  # logging is configured once per process, maybe into another test's folder
        shutil.copytree(source / "logs", target / "logs", dirs_exist_ok=True)
    (target / "logs").mkdir(exist_ok=True)
    env = {**produced["env"], "MOMENTUM_DB": str(target / "trades.db"), "LOG_DIR": str(target / "logs")}
    for name in ("MOMENTUM_ASOF", "MARKET_DATA"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def rows(db_path: str | Path, sql: str, params=()) -> list[dict]:
    with closing(sqlite3.connect(db_path)) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(sql, params)]


def dump(db_path: str | Path, tables=("daily_performance", "candidates", "trades", "orders", "exits",
                                      "position_checks", "poor_signals", "scans")) -> dict[str, list]:
    return {table: rows(db_path, f"SELECT * FROM {table} ORDER BY rowid") for table in tables}


def spy_closes() -> dict[str, float]:
    with open(SPY_FILE, newline="") as handle:
        return {row["date"]: float(row["spy_close"]) for row in csv.DictReader(handle)}


def ny_date(stamp: str) -> str:
    return datetime.fromisoformat(stamp).astimezone(NY).date().isoformat()


# --- daily-snapshot ------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_daily_snapshot_matches_the_broker_the_journal_and_spy(produced):
    db = produced["folder"] / "trades.db"
    snapshots = rows(db, "SELECT * FROM daily_performance ORDER BY date")
    sessions = [d.isoformat() for d in calendar().sessions(FIRST, LAST)]
    assert [s["date"] for s in snapshots] == sessions  # one row per session, none for Thanksgiving
    trades = rows(db, "SELECT entry_time, exit_time, status FROM trades WHERE status NOT IN ('pending', 'canceled')")
    spy = spy_closes()
    first = snapshots[0]
    previous_equity = produced["snapshot"][first["date"]]["last_equity"]
    baseline = previous_equity  # cumulative figures count from before the first day, as the reports do
    spy_baseline = spy[calendar().previous_session(date.fromisoformat(first["date"])).isoformat()]
    for snap in snapshots:
        broker = produced["snapshot"][snap["date"]]
        market_value = sum(mv for _, _, mv in broker["positions"].values())
        assert snap["equity"] == pytest.approx(broker["cash"] + market_value, abs=0.011)
        assert snap["cash"] == broker["cash"] and snap["exposure"] == pytest.approx(market_value, abs=0.005)
        assert snap["exposure_pct"] == pytest.approx(market_value / snap["equity"] * 100)
        assert snap["day_pnl"] == pytest.approx(snap["equity"] - previous_equity, abs=0.005)
        assert snap["day_pnl_pct"] == pytest.approx((snap["equity"] / previous_equity - 1) * 100)
        previous_equity = snap["equity"]
        assert snap["trades_opened"] == sum(1 for t in trades if t["entry_time"] and
                                            ny_date(t["entry_time"]) == snap["date"])
        assert snap["trades_closed"] == sum(1 for t in trades if t["exit_time"] and
                                            ny_date(t["exit_time"]) == snap["date"])
        prior = calendar().previous_session(date.fromisoformat(snap["date"])).isoformat()
        assert snap["spy_close"] == spy[snap["date"]]
        assert snap["spy_change_pct"] == pytest.approx((spy[snap["date"]] / spy[prior] - 1) * 100)
        assert snap["cum_return_pct"] == pytest.approx((snap["equity"] / baseline - 1) * 100, abs=1e-6)
        assert snap["spy_cum_return_pct"] == pytest.approx((spy[snap["date"]] / spy_baseline - 1) * 100)
    # the sequence really traded: positions opened on several days and broker stops closed some of them
    assert sum(s["trades_opened"] for s in snapshots) >= 6 and sum(s["trades_closed"] for s in snapshots) >= 3
    assert first["cum_return_pct"] == pytest.approx(first["day_pnl_pct"])  # the first day counts
    assert first["spy_cum_return_pct"] == pytest.approx(first["spy_change_pct"])


def test_the_snapshot_takes_in_the_days_stop_fills_and_measures_the_day_from_the_previous_close(real_env):
    """No monitor or reconcile runs between the buy and the snapshots, and no snapshot on 2016-11-10: the
    2016-11-11 snapshot must learn of the broker stop that filled at that day's close by itself, and its day P&L is
    that one day's, from the broker's 2016-11-10 close, not the two sessions since the 2016-11-09 row."""
    _ok("--asof", "2016-11-09T10:30", "scan", "--cap", "large")
    bought = rows(real_env["MOMENTUM_DB"], "SELECT id, symbol FROM trades WHERE status = 'open'")
    assert bought, "the scan bought nothing to protect"
    _ok("--asof", "2016-11-09T16:05", "jobs", "daily-snapshot")
    output = _ok("--asof", "2016-11-11T16:05", "jobs", "daily-snapshot")
    db = real_env["MOMENTUM_DB"]
    closed = rows(db, "SELECT symbol, exit_time, exit_reason FROM trades WHERE status = 'closed'")
    assert closed and all(ny_date(t["exit_time"]) == "2016-11-11" and t["exit_reason"] == "trailing_stop"
                          for t in closed), closed
    snaps = {r["date"]: r for r in rows(db, "SELECT * FROM daily_performance")}
    day = snaps["2016-11-11"]
    assert day["trades_closed"] == len(closed) and f"closed {len(closed)}" in output
    assert "journal brought up to date with the broker: " + closed[0]["symbol"] + " closed (trailing stop" in output
    broker = _broker_view(real_env, _csv_market(real_env), "2016-11-11T16:05")
    assert day["equity"] == broker["equity"] and broker["positions"].keys().isdisjoint(t["symbol"] for t in closed)
    assert day["day_pnl"] == pytest.approx(broker["equity"] - broker["last_equity"], abs=0.005)
    assert day["day_pnl_pct"] == pytest.approx((broker["equity"] / broker["last_equity"] - 1) * 100)
    assert abs(day["day_pnl"] - (day["equity"] - snaps["2016-11-09"]["equity"])) > 1  # not two sessions' P&L
    assert "from the broker's previous close: no snapshot of the previous session" in output
    # cumulative figures still count from before the first snapshot's day
    base = snaps["2016-11-09"]["equity"] - snaps["2016-11-09"]["day_pnl"]
    assert day["cum_return_pct"] == pytest.approx((day["equity"] / base - 1) * 100)
    # the next session's row chains from this one again
    output = _ok("--asof", "2016-11-14T16:05", "jobs", "daily-snapshot")
    after = rows(db, "SELECT * FROM daily_performance WHERE date = '2016-11-14'")[0]
    assert after["day_pnl"] == pytest.approx(after["equity"] - day["equity"], abs=0.005)
    assert "previous close" not in output and after["trades_closed"] == 0


def _csv_market(env: dict[str, str]):
    from ports.market_sources import CsvMarket

    return CsvMarket(BARS, cache_dir=Path(env["CACHE_DIR"]))


# --- update-outcomes -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def raw_bars() -> pd.DataFrame:
    frame = pd.read_csv(BARS, usecols=["date", "symbol", "high", "low", "close"])
    return frame[(frame["date"] >= "2016-11-01") & (frame["date"] <= "2016-12-31")].set_index(["symbol", "date"])


def _expected_outcome(raw: pd.DataFrame, candidate: dict, known_until: date) -> dict:
    later = calendar().sessions(date.fromisoformat(candidate["session"]) + timedelta(days=1), date(2016, 12, 31))
    window = [d.isoformat() for d in later[:10] if d <= known_until]
    bars = raw.loc[candidate["symbol"]].reindex(window)
    expected = {f"price_{k}d": float(bars["close"].iloc[k - 1]) if k <= len(window) else None for k in (1, 3, 5, 10)}
    expected["max_gain_10d"] = bars["high"].max() / candidate["price"] - 1
    expected["max_drawdown_10d"] = bars["low"].min() / candidate["price"] - 1
    return expected


def test_update_outcomes_prices_match_the_raw_csv(produced, raw_bars):
    db = produced["folder"] / "trades.db"
    candidates = rows(db, "SELECT * FROM candidates ORDER BY id")
    by_session = {}
    for c in candidates:
        by_session.setdefault(c["session"], []).append(c)
    assert set(by_session) == set(SCANS)
    # complete outcomes (10 sessions known) for the early scans, partial ones for the late scan
    for session in ("2016-11-09", "2016-11-14", "2016-11-21"):
        for candidate in by_session[session][:: max(1, len(by_session[session]) // 4)]:
            expected = _expected_outcome(raw_bars, candidate, LAST)
            for name, value in expected.items():
                assert candidate[name] == pytest.approx(value, rel=1e-12) if value is not None \
                    else candidate[name] is None, (candidate["symbol"], session, name)
            assert candidate["outcome_updated_at"] is not None
    late = by_session["2016-11-21"][0]
    assert late["price_5d"] is not None and late["price_10d"] is None  # 8 sessions known by 2016-12-02
    assert all(c["price_10d"] is not None for c in by_session["2016-11-09"] + by_session["2016-11-14"])


def test_outcomes_of_one_candidate_fill_in_session_by_session():
    """The pure computation: sessions not yet completed stay unknown; extremes cover what is known."""
    from jobs import candidate_outcomes

    closes = np.arange(1.0, 16.0)[:, None]  # 15 sessions, one symbol
    values = candidate_outcomes(closes, closes + 0.5, closes - 0.5, row=np.array([0, 0]), col=np.array([0, 0]),
                                price=np.array([1.0, 1.0]), last_row=3)
    assert values["price_1d"].tolist() == [2.0, 2.0] and values["price_3d"].tolist() == [4.0, 4.0]
    assert np.isnan(values["price_5d"]).all() and np.isnan(values["price_10d"]).all()
    assert values["max_gain_10d"][0] == pytest.approx(4.5 / 1.0 - 1)
    assert values["max_drawdown_10d"][0] == pytest.approx(1.5 / 1.0 - 1)


# --- update-tracking -----------------------------------------------------------------------------------------------

def test_update_tracking_follows_the_broker_prices(produced):
    db = produced["folder"] / "trades.db"
    tracked = produced["tracking"]
    open_trades = rows(db, "SELECT * FROM trades WHERE status = 'open'")
    assert open_trades
    last_day = max(tracked)
    for trade in open_trades:
        qty, price, _ = tracked[last_day][trade["symbol"]]
        assert trade["current_price"] == price
        assert trade["unrealized_pnl"] == pytest.approx((price - trade["entry_price"]) * trade["qty"], abs=0.005)
        samples = [view[trade["symbol"]][1] for view in tracked.values() if trade["symbol"] in view]
        pnl_pcts = [(p / trade["entry_price"] - 1) * 100 for p in samples]
        assert trade["peak_price"] == max([trade["entry_price"], *samples])
        assert trade["max_gain_pct"] == pytest.approx(max([0.0, *pnl_pcts]), abs=1e-4)
        assert trade["max_drawdown_pct"] == pytest.approx(min([0.0, *pnl_pcts]), abs=1e-4)
        assert trade["last_update"].startswith("2016-12-02T18:00")  # 13:00 New York


# --- idempotency and calendar --------------------------------------------------------------------------------------

@pytest.mark.parametrize("job, asof", [("update-tracking", "2016-12-05T13:00"), ("daily-snapshot", "2016-12-05T16:05"),
                                       ("update-outcomes", "2016-12-05T16:10"), ("cleanup", "2017-02-12T00:00")])
def test_running_a_job_twice_gives_identical_tables(produced, tmp_path, monkeypatch, job, asof):
    env = copy_journal(produced, tmp_path, monkeypatch)
    before = dump(env["MOMENTUM_DB"])
    first = _ok("--asof", asof, "jobs", job)
    after_first = dump(env["MOMENTUM_DB"])
    second = _ok("--asof", asof, "jobs", job)
    assert dump(env["MOMENTUM_DB"]) == after_first, second
    assert after_first != before, first  # the first run did change something


@pytest.mark.parametrize("asof", ["2016-11-24T16:05", "2016-11-26T16:05"])  # Thanksgiving, a Saturday
def test_session_jobs_do_nothing_on_a_holiday_or_weekend(produced, tmp_path, monkeypatch, asof):
    env = copy_journal(produced, tmp_path, monkeypatch)
    before = dump(env["MOMENTUM_DB"])
    for job in ("daily-snapshot", "update-outcomes", "update-tracking"):
        assert _ok("--asof", asof, "jobs", job).strip() == f"{job}: not a trading day: nothing to do"
    assert dump(env["MOMENTUM_DB"]) == before
    runs = rows(env["MOMENTUM_DB"], "SELECT status, exit_code FROM runs WHERE command LIKE '% jobs %' "
                                    "ORDER BY rowid DESC LIMIT 3")
    assert runs == [{"status": "skipped", "exit_code": 0}] * 3


# --- cleanup -------------------------------------------------------------------------------------------------------

def test_cleanup_removes_only_old_candidates_checks_and_audit_files(produced, tmp_path, monkeypatch):
    env = copy_journal(produced, tmp_path, monkeypatch)
    db = env["MOMENTUM_DB"]
    with sqlite3.connect(db) as conn:
        trade_id = conn.execute("SELECT MIN(id) FROM trades").fetchone()[0]
        for checked in ("2016-11-10T15:00:00+00:00", "2016-11-30T15:00:00+00:00"):
            conn.execute("INSERT INTO position_checks (trade_id, symbol, checked_at) VALUES (?, 'X', ?)",
                         (trade_id, checked))
    logs = Path(env["LOG_DIR"])
    (logs / "trades_2016-11-09.csv").write_text("old\n")
    (logs / "trades_2017-02-10.csv").write_text("new\n")
    (logs / "notes.csv").write_text("not an audit file\n")
    with open(logs / "momentum.jsonl", "ab") as handle:
        handle.write(b"x" * (10 * 1024 * 1024 + 1))
    kept = dump(db, ("trades", "orders", "exits", "daily_performance"))
    audit_files_before = [p.name for p in logs.iterdir() if p.name.startswith("trades_")]  # the run's own audit CSVs
    candidates = rows(db, "SELECT id, session FROM candidates")
    checks = [r["checked_at"] for r in rows(db, "SELECT checked_at FROM position_checks ORDER BY id")]
    output = _ok("--asof", "2017-02-12T00:00", "jobs", "cleanup")  # a Sunday; cutoff 2016-11-14
    survivors = rows(db, "SELECT id, session FROM candidates")
    assert survivors == [c for c in candidates if c["session"] >= "2016-11-14"]
    deleted = len(candidates) - len(survivors)
    assert 0 < deleted < len(candidates) and f"candidates deleted {deleted}" in output
    kept_checks = [r["checked_at"] for r in rows(db, "SELECT checked_at FROM position_checks ORDER BY id")]
    assert kept_checks == [c for c in checks if c >= "2016-11-14T05:00:00+00:00"]  # midnight in New York
    assert "2016-11-30T15:00:00+00:00" in kept_checks and "2016-11-10T15:00:00+00:00" not in kept_checks
    assert dump(db, ("trades", "orders", "exits", "daily_performance")) == kept
    audit_before = sorted(audit_files_before)
    expected = ["notes.csv"] + [name for name in audit_before if name[7:17] >= "2016-11-14"]
    assert sorted(p.name for p in logs.iterdir() if p.name.endswith(".csv")) == expected
    assert (logs / "momentum.jsonl.1").stat().st_size > 10 * 1024 * 1024
    old_audit = sum(1 for name in audit_before if name[7:17] < "2016-11-14")
    assert old_audit >= 1 and "logs rotated 1" in output and f"audit files deleted {old_audit}" in output


# --- entry points --------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_jobs_py_runs_a_job_with_global_options_after_the_name(produced, tmp_path, monkeypatch):
    env = copy_journal(produced, tmp_path, monkeypatch)
    proc = subprocess.run([sys.executable, str(ROOT / "jobs.py"), "daily-snapshot", "--asof", "2016-11-24T16:05"],
                          env=process_env(env), capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "daily-snapshot: not a trading day: nothing to do"
    bad = subprocess.run([sys.executable, str(ROOT / "jobs.py"), "daily-snapshot", "--asof", "soon"],
                         env=process_env(env), capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: --asof: cannot parse 'soon'")


@pytest.mark.parametrize("argv, expected", [
    (["cleanup"], ["jobs", "cleanup"]),
    (["daily-snapshot", "--asof", "2016-11-09T16:05", "--db", "x.db"],
     ["--asof", "2016-11-09T16:05", "--db", "x.db", "jobs", "daily-snapshot"]),
    (["--data=sim", "update-tracking", "-v"], ["--data=sim", "-v", "jobs", "update-tracking"]),
])
def test_jobs_py_moves_global_options_before_the_command(argv, expected):
    from jobs import cli_arguments

    assert cli_arguments(argv) == expected


def test_job_timings_on_the_produced_journal(produced, tmp_path, monkeypatch):
    """Each job on the produced journal stays well inside its cron slot (measured in-process)."""
    import time

    copy_journal(produced, tmp_path, monkeypatch)
    for job, asof in (("update-tracking", "2016-12-05T13:00"), ("daily-snapshot", "2016-12-05T16:05"),
                      ("update-outcomes", "2016-12-05T16:10"), ("cleanup", "2016-12-11T00:00")):
        started = time.perf_counter()
        _ok("--asof", asof, "jobs", job)
        elapsed = time.perf_counter() - started
        print(f"{job}: {elapsed * 1000:.0f} ms")
        assert elapsed < 2.0, (job, elapsed)


def test_cleanup_rolls_cron_log_over_like_the_json_log(tmp_path, monkeypatch):
    import jobs

    monkeypatch.setattr(jobs, "LOG_ROTATE_BYTES", 1000)
    (tmp_path / "cron.log").write_text("x" * 1001)
    (tmp_path / "momentum.jsonl").write_text("{}\n")  # small: stays
    counts = jobs.rotate_logs(tmp_path, date(2024, 6, 16))
    assert counts["logs rotated"] == 1
    assert (tmp_path / "cron.log.1").stat().st_size == 1001 and not (tmp_path / "cron.log").exists()
    assert (tmp_path / "momentum.jsonl").exists() and not (tmp_path / "momentum.jsonl.1").exists()

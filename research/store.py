"""research.db: one SQLite file per study, readable with `sqlite3`.

    study   the study's kind (sweep, walk-forward), its spec as JSON, status (running, stopped, done), times
    trials  one row per trial: its fold and role (search: chosen by the sampler; default: the default settings;
            test: a fold's chosen settings on its test window; test-default: the defaults there), parameters,
            status (running, done, failed, interrupted), objective, the metrics of its backtest, the daily-return
            statistics the deflated Sharpe ratio needs, wall time, attempts, worker, its journal, the error
    folds   walk-forward folds: the windows, the trial chosen on the training window and its parameters
    equity  each finished trial's daily equity (and SPY's close, total return) for the charts and the stitched curve

A study stopped (Ctrl-C, a crash) keeps every finished trial; `--resume` reads them back and runs only the rest.
"""
from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from common.errors import ConfigError

SCHEMA = """
CREATE TABLE IF NOT EXISTS study (
    id INTEGER PRIMARY KEY CHECK (id = 1), kind TEXT NOT NULL, spec TEXT NOT NULL, status TEXT NOT NULL,
    created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS trials (
    number INTEGER PRIMARY KEY, fold INTEGER, role TEXT NOT NULL, params TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed', 'interrupted')),
    objective REAL, metrics TEXT, daily_sharpe REAL, skew REAL, kurtosis REAL, observations INTEGER,
    window_start TEXT, window_end TEXT, data_through TEXT, wall_s REAL, attempts INTEGER NOT NULL DEFAULT 0,
    worker TEXT, journal TEXT, error TEXT, started_at TEXT, finished_at TEXT);
CREATE INDEX IF NOT EXISTS trials_fold ON trials(fold, role);
CREATE TABLE IF NOT EXISTS folds (
    fold INTEGER PRIMARY KEY, train_start TEXT NOT NULL, train_end TEXT NOT NULL, test_start TEXT NOT NULL,
    test_end TEXT NOT NULL, chosen_trial INTEGER, chosen_params TEXT, status TEXT NOT NULL DEFAULT 'pending');
CREATE TABLE IF NOT EXISTS equity (
    trial INTEGER NOT NULL, date TEXT NOT NULL, equity REAL NOT NULL, spy_close REAL,
    PRIMARY KEY (trial, date));
"""
FINISHED = ("done", "failed")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Store:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    # --- the study ------------------------------------------------------------------------------------------------
    def study(self) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM study WHERE id = 1").fetchone()
        return {**dict(row), "spec": json.loads(row["spec"])} if row else None

    def begin(self, kind: str, spec: dict[str, Any], *, resume: bool) -> None:
        """Start a study, or continue the one in the file with --resume (its spec must be the same, but for the
        number of trials, which may grow)."""
        stored = self.study()
        if stored is None:
            if resume:
                raise ConfigError(f"--resume: {self.path} holds no study to resume")
            self.db.execute("INSERT INTO study (id, kind, spec, status, created_at, updated_at) VALUES "
                            "(1, ?, ?, 'running', ?, ?)", [kind, json.dumps(spec, sort_keys=True), _now(), _now()])
            return
        if not resume:
            raise ConfigError(f"--out: {self.path} already holds a study; use --resume to continue it or a new --out")
        same = {k: v for k, v in stored["spec"].items() if k != "trials"} == {k: v for k, v in spec.items()
                                                                             if k != "trials"}
        if stored["kind"] != kind or not same:
            changed = sorted(k for k in set(spec) | set(stored["spec"])
                             if k != "trials" and spec.get(k) != stored["spec"].get(k))
            raise ConfigError(f"--resume: the study in {self.path} was started with other settings "
                              f"({', '.join(changed) or kind}); resume it with the same options")
        self.db.execute("UPDATE trials SET status = 'interrupted' WHERE status = 'running'")
        self.db.execute("UPDATE study SET status = 'running', spec = ?, updated_at = ? WHERE id = 1",
                        [json.dumps(spec, sort_keys=True), _now()])

    def set_status(self, status: str) -> None:
        self.db.execute("UPDATE study SET status = ?, updated_at = ? WHERE id = 1", [status, _now()])

    # --- trials ---------------------------------------------------------------------------------------------------
    def new_trial(self, *, role: str, params: dict[str, Any], fold: int | None, window: tuple[str, str]) -> int:
        cursor = self.db.execute(
            "INSERT INTO trials (fold, role, params, status, window_start, window_end, started_at) "
            "VALUES (?, ?, ?, 'running', ?, ?, ?)", [fold, role, json.dumps(params), *window, _now()])
        return int(cursor.lastrowid)

    def finish_trial(self, number: int, outcome: dict[str, Any], objective: float | None) -> None:
        """Record a trial's outcome (research.trial.run_trial's dict) and its equity curve. Its attempts are those
        the worker counted (a retry after a worker died is invisible to the study otherwise), at least one."""
        stats = outcome.get("stats") or {}
        self.db.execute(
            "UPDATE trials SET status = ?, objective = ?, metrics = ?, daily_sharpe = ?, skew = ?, kurtosis = ?, "
            "observations = ?, data_through = ?, wall_s = ?, attempts = MAX(attempts + 1, ?), worker = ?, "
            "journal = ?, error = ?, finished_at = ? WHERE number = ?",
            [outcome["status"], objective, json.dumps(outcome.get("metrics")) if outcome.get("metrics") else None,
             stats.get("daily_sharpe"), stats.get("skew"), stats.get("kurtosis"), stats.get("observations"),
             outcome.get("data_through"), outcome.get("wall_s"), outcome.get("attempts") or 0, outcome.get("worker"),
             outcome.get("journal"), outcome.get("error"), _now(), number])
        curve = outcome.get("curve") or []
        if curve:
            self.db.executemany("INSERT OR REPLACE INTO equity (trial, date, equity, spy_close) VALUES (?, ?, ?, ?)",
                                [(number, day, equity, spy) for day, equity, spy in curve])

    def interrupt_running(self) -> int:
        return self.db.execute("UPDATE trials SET status = 'interrupted', finished_at = ? WHERE status = 'running'",
                               [_now()]).rowcount

    def trials(self, *, fold: int | None = None, role: str | None = None, finished: bool = False) -> list[dict]:
        where, args = ["1"], []
        if fold is not None:
            where.append("fold = ?")
            args.append(fold)
        if role is not None:
            where.append("role = ?")
            args.append(role)
        if finished:
            where.append("status IN ('done', 'failed')")
        rows = self.db.execute(f"SELECT * FROM trials WHERE {' AND '.join(where)} ORDER BY number", args).fetchall()
        return [{**dict(row), "params": json.loads(row["params"]),
                 "metrics": json.loads(row["metrics"]) if row["metrics"] else None} for row in rows]

    def curve(self, trial: int) -> list[tuple[str, float, float | None]]:
        return [tuple(row) for row in self.db.execute(
            "SELECT date, equity, spy_close FROM equity WHERE trial = ? ORDER BY date", [trial])]

    # --- folds ----------------------------------------------------------------------------------------------------
    def save_fold(self, fold: int, train: tuple[str, str], test: tuple[str, str]) -> None:
        self.db.execute("INSERT OR IGNORE INTO folds (fold, train_start, train_end, test_start, test_end) "
                        "VALUES (?, ?, ?, ?, ?)", [fold, *train, *test])

    def choose(self, fold: int, trial: int, params: dict[str, Any]) -> None:
        self.db.execute("UPDATE folds SET chosen_trial = ?, chosen_params = ?, status = 'chosen' WHERE fold = ?",
                        [trial, json.dumps(params), fold])

    def folds(self) -> list[dict]:
        rows = self.db.execute("SELECT * FROM folds ORDER BY fold").fetchall()
        return [{**dict(row), "chosen_params": json.loads(row["chosen_params"]) if row["chosen_params"] else None}
                for row in rows]

"""One trial: one `python main.py backtest` in a process of its own, started by a Dask worker.

Each trial runs as its own process because a backtest forks its prefetch worker, which a daemonic worker process
(Dask's, multiprocessing.Pool's) may not do; a process of its own also gives every trial fresh memory and its own
scratch journal. Its process group dies with the worker that started it: if the worker is killed mid-trial, the
backtest notices its parent is gone and stops, so a retried trial never races an orphan.

Run as `python -m research.trial MAIN_ARGS...`, it is main.py with that watch added.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
ERROR_TAIL = 400  # characters of a failed backtest's last error line kept in research.db
PARENT_ENV = "RESEARCH_TRIAL_PARENT"  # the pid of the worker that started the trial, for the trial's parent watch
WANTED_POLL_S = 1.0  # how often a running trial asks its worker whether the study still wants it


def run_trial(task: dict[str, Any]) -> dict[str, Any]:
    """Run the backtest `task` describes and return its outcome (a plain dict: it travels back over the network).

    task: "folder" (where this trial's attempts live), "args" (main.py's global options, then `backtest` and its
    options but --out), "env" (environment additions). The outcome: "status" (done or failed), "metrics" (the
    backtest's metrics.json), "curve" ([date, equity, SPY close] per session), "stats" (daily-return figures),
    "data_through", "journal", "worker", "wall_s", "attempts" (this trial's attempt folders: a worker that died
    mid-trial left one), "error"."""
    started = time.perf_counter()
    out = Path(task["folder"]) / f"attempt-{uuid.uuid4().hex[:8]}"  # a retried trial never reuses a folder
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "research.trial", *task["args"], "--out", str(out)]
    worker = f"{socket.gethostname()}:{os.getpid()}"
    wanted = _still_wanted()
    # the trial's log goes into its own folder: many trials at once never share a log file, and a worker started
    # with no settings never writes into the checkout it runs from
    environment = {**os.environ, **task.get("env", {}), "LOG_DIR": str(out / "logs"), PARENT_ENV: str(os.getpid())}
    with subprocess.Popen(command, cwd=ROOT, env=environment,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True) as done:
        while True:
            try:
                stdout, stderr = done.communicate(timeout=WANTED_POLL_S)  # a retry loses no output
                break
            except subprocess.TimeoutExpired:
                if not wanted():  # the study let go of it (Ctrl-C): a worker that lives on stops its backtest
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(done.pid, signal.SIGKILL)
    outcome: dict[str, Any] = {"worker": worker, "journal": str(out / "trades.db"),
                               "wall_s": round(time.perf_counter() - started, 3),
                               "attempts": len(list(out.parent.glob("attempt-*")))}
    if done.returncode != 0:
        lines = [line for line in (stderr or stdout).strip().splitlines() if line.strip()]
        reason = lines[-1] if lines else f"backtest exited {done.returncode}"
        return {**outcome, "status": "failed", "error": f"exit {done.returncode}: {reason}"[:ERROR_TAIL]}
    metrics = json.loads((out / "metrics.json").read_text())
    curve = equity_curve(out / "trades.db")
    start_value = (metrics.get("metrics") or {}).get("start_value")
    return {**outcome, "status": "done", "metrics": metrics, "curve": curve,
            "stats": daily_stats([start_value, *(equity for _, equity, _ in curve)] if start_value else []),
            "data_through": metrics.get("data_through")}


def _still_wanted() -> Callable[[], bool]:
    """Whether the study still wants this trial. On a Dask worker: while the task is not cancelled or released, which
    happens when the study's client lets go of it (Ctrl-C, a crash) on a cluster that keeps running; Dask cannot
    stop a running task's thread, so the trial stops its backtest itself. Outside a worker: always."""
    try:
        from distributed import get_worker

        worker = get_worker()
        key = worker.get_current_task()
    except (ImportError, ValueError, KeyError):
        return lambda: True

    def wanted() -> bool:
        state = worker.state.tasks.get(key)
        return state is not None and state.state not in ("cancelled", "released", "forgotten")

    return wanted


def equity_curve(journal: Path) -> list[tuple[str, float, float | None]]:
    with sqlite3.connect(f"file:{journal}?mode=ro", uri=True) as db:
        return [tuple(row) for row in db.execute(
            "SELECT date, equity, spy_close FROM daily_performance ORDER BY date")]


def daily_stats(equity: list[float]) -> dict[str, Any]:
    """What the deflated Sharpe ratio needs of a trial: the per-day (not annualised) Sharpe ratio of its daily
    returns, their skewness and (non-excess) kurtosis, and how many there are."""
    values = np.asarray(equity, dtype=float)
    returns = values[1:] / values[:-1] - 1 if len(values) > 1 else np.array([])
    out: dict[str, Any] = {"observations": int(len(returns)), "daily_sharpe": None, "skew": None, "kurtosis": None}
    if len(returns) < 3:
        return out
    centred = returns - returns.mean()
    m2 = float(np.mean(centred ** 2))
    std = float(np.std(returns, ddof=1))
    if std > 0 and m2 > 0:
        out["daily_sharpe"] = float(returns.mean() / std)
        out["skew"] = float(np.mean(centred ** 3) / m2 ** 1.5)
        out["kurtosis"] = float(np.mean(centred ** 4) / m2 ** 2)
    return out


# --- the trial's own process ---------------------------------------------------------------------------------------

def _die_with_parent(poll_s: float = 1.0) -> None:
    """Kill this process group (the backtest and its prefetch worker) once the process that started it is gone. That
    process is named by the worker (PARENT_ENV): a worker killed before this watch starts is noticed too."""
    parent = int(os.environ.get(PARENT_ENV) or os.getppid())

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent:
                os.killpg(os.getpgrp(), signal.SIGKILL)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


if __name__ == "__main__":
    _die_with_parent()
    sys.path.insert(0, str(ROOT))
    from main import cli

    cli(sys.argv[1:], prog_name="main.py")

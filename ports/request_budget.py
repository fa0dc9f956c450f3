"""One request budget shared by every process that talks to the same API.

Cron starts many short-lived processes (scan, monitor, jobs) that may overlap, and Alpaca counts requests per
account, not per process. So the budget lives in a small SQLite file: a table of recent request timestamps and a
table holding a server-imposed pause. `acquire()` takes one slot inside a BEGIN IMMEDIATE transaction (one writer at
a time across processes) and waits while the last `window` seconds already hold `per_minute` requests or while a
pause recorded by `block_until()` (from a 429's X-RateLimit-Reset) is still running.
"""
from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Callable

from common.errors import Unavailable

log = logging.getLogger(__name__)

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS request_log (ts REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS request_log_ts ON request_log (ts)",
    "CREATE TABLE IF NOT EXISTS pause (id INTEGER PRIMARY KEY CHECK (id = 1), until REAL NOT NULL)",
)
# SQLite waits this long for another process's transaction; ours are a few statements, so 10 s means trouble.
_BUSY_TIMEOUT_S = 10.0
# A locked file can outlast one busy timeout (e.g. a process paused in a debugger); try a few times, then give up.
_LOCK_ATTEMPTS = 3


class RequestBudget:
    """At most `per_minute` requests in any `window`-second span, counted across processes sharing `path`."""

    def __init__(self, path: Path, per_minute: int = 180, *, now: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep, window: float = 60.0,
                 busy_timeout: float = _BUSY_TIMEOUT_S):
        if per_minute < 1:
            raise ValueError("per_minute must be at least 1")
        if window <= 0:
            raise ValueError("window must be positive")
        self.path = Path(path)
        self.per_minute = per_minute
        self.window = window
        self.busy_timeout = busy_timeout
        self._now = now
        self._sleep = sleep
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._conn_pid = 0

    def acquire(self) -> float:
        """Take one request slot, sleeping first if the budget is spent or paused. Returns the seconds waited."""
        waited = 0.0
        while True:
            wait = self._locked(self._try_take)
            if wait <= 0:
                return waited
            log.info("request budget: waiting %.2f s", wait)
            self._sleep(wait)
            waited += wait

    def block_until(self, unix_ts: float) -> None:
        """Record a server-imposed pause: no process using this budget sends a request before `unix_ts`."""
        def record(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO pause (id, until) VALUES (1, ?) "
                "ON CONFLICT (id) DO UPDATE SET until = max(until, excluded.until)", (float(unix_ts),))
        self._locked(record)

    def used(self) -> int:
        """Requests counted in the current window (for logs and tests)."""
        def count(conn: sqlite3.Connection) -> int:
            since = self._now() - self.window
            return conn.execute("SELECT count(*) FROM request_log WHERE ts > ?", (since,)).fetchone()[0]
        return self._locked(count)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._conn_pid == os.getpid():
                self._conn.close()
            self._conn = None

    # -- internals -------------------------------------------------------------------------------------------

    def _try_take(self, conn: sqlite3.Connection) -> float:
        """Inside the write transaction: record a request now and return 0, or return how long to wait."""
        now = self._now()
        conn.execute("DELETE FROM request_log WHERE ts <= ?", (now - self.window,))
        row = conn.execute("SELECT until FROM pause WHERE id = 1").fetchone()
        if row is not None and row[0] > now:
            return row[0] - now
        recent = conn.execute(
            "SELECT ts FROM request_log WHERE ts > ? ORDER BY ts DESC LIMIT ?",
            (now - self.window, self.per_minute)).fetchall()
        if len(recent) < self.per_minute:
            conn.execute("INSERT INTO request_log (ts) VALUES (?)", (now,))
            return 0.0
        # The slot frees when the oldest of the newest `per_minute` requests leaves the window.
        oldest_counted = recent[-1][0]
        return max(oldest_counted + self.window - now, 1e-3)

    def _locked(self, work: Callable[[sqlite3.Connection], object]):
        """Run `work` inside one BEGIN IMMEDIATE transaction, riding out a briefly locked file."""
        with self._lock:
            for attempt in range(1, _LOCK_ATTEMPTS + 1):
                conn = self._connection()
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        result = work(conn)
                    except BaseException:
                        conn.execute("ROLLBACK")
                        raise
                    conn.execute("COMMIT")
                    return result
                except sqlite3.OperationalError as exc:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    if "locked" not in str(exc) and "busy" not in str(exc):
                        raise Unavailable(f"request budget file {self.path}: {exc}") from None
                    log.warning("request budget file %s locked (attempt %d/%d)", self.path, attempt, _LOCK_ATTEMPTS)
            raise Unavailable(f"request budget file {self.path} stayed locked; try again later")

    def _connection(self) -> sqlite3.Connection:
        # A connection must not cross a fork: a child process opens its own.
        if self._conn is None or self._conn_pid != os.getpid():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                                   check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            # WAL lets a commit finish while another process reads, so writers only queue behind writers.
            conn.execute("PRAGMA journal_mode = WAL")
            for statement in _SCHEMA:
                conn.execute(statement)
            self._conn, self._conn_pid = conn, os.getpid()
        return self._conn

"""The journal: one SQLite file shared by every short-lived command.

Opening it checks the file's health (PRAGMA quick_check), applies pending numbered migrations (in one transaction,
after a backup copy of the file), makes sure the SQL views match journal/schema.py, and switches on WAL and a busy
timeout so commands running side by side wait for each other instead of failing. Commands starting together on a new or
upgraded journal take turns on a lock file beside it (`<journal>.migrate.lock`), so the schema is changed exactly
once. A file that is not a journal, is damaged, is read-only, stays locked, or was written by a newer version of the
program ends the command with a clear one-line error (JournalError exit 2, JournalBusy exit 3); `journal_fault`
gives the same errors for a SQLite failure met later in a command.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import sqlite_utils
from sqlite_utils.migrations import Migrations

from common.clock import Clock, iso_utc
from common.errors import JournalBusy, JournalError, MomentumError
from common.locks import exclusive_within
from config import RUNTIME_SETTINGS, Config, parse_runtime_setting
from journal.schema import HELD, MIGRATIONS, VIEWS

log = logging.getLogger(__name__)
SQLITE_HEADER = b"SQLite format 3\x00"
MIGRATION_SET = "momentum"
EVENT_LEVELS = ("debug", "info", "warning", "error", "critical")
BUSY_TIMEOUT_S = 10.0  # how long a command waits for another one holding the journal (or its migration lock)
# PRAGMA quick_check reads every page: about 2 ms per MB with the file in the page cache, 5-8 ms for the 3.8 MB
# journal of a one-quarter backtest at nine scans a day (a live journal prunes candidates and position checks after
# 90 days and stays near that size), against about 1.5 ms for the rest of the open. Larger files check on open only
# the tables every command writes (under 1 ms on an 86 MB journal, where the whole check takes 130 ms); damage
# elsewhere is reported the same way (exit 2) by the command that reads it.
QUICK_CHECK_MAX_BYTES = 8 * 2**20
TABLES_WRITTEN_BY_EVERY_COMMAND = ("runs", "events", "settings", "state")
# every error the journal holds: error and critical events, and the runs that failed with their one line
ERRORS = ("SELECT message, level, source, created_at AS at FROM events WHERE level IN ('error', 'critical') "
          "UNION ALL "
          "SELECT substr(command, instr(command, ' ') + 1) || ' failed (exit ' || exit_code || '): ' "
          "|| COALESCE(detail, '-'), 'error', 'run', COALESCE(finished_at, started_at) FROM runs "
          "WHERE status = 'failed'")


def _statements(script: str) -> Iterator[str]:
    """Split a script into complete statements, so they can run inside one transaction."""
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            if pending.strip():
                yield pending.strip()
            pending = ""
    if pending.strip():
        raise ValueError(f"incomplete SQL statement in schema: {pending[:60]!r}")


def _migrations() -> Migrations:
    migrations = Migrations(MIGRATION_SET)
    for name, script in MIGRATIONS:
        def apply(db: sqlite_utils.Database, script: str = script) -> None:
            for statement in _statements(script):
                db.execute(statement)
        migrations(name=name)(apply)
    return migrations


def _check_file(path: Path) -> None:
    if path.exists() and path.is_dir():
        raise JournalError(f"journal {path} is a directory")
    if path.exists() and path.stat().st_size > 0:
        with open(path, "rb") as handle:
            if handle.read(16) != SQLITE_HEADER:
                raise JournalError(f"journal {path} is not a SQLite database (corrupt or wrong file)")


def _backup(conn: sqlite3.Connection, path: Path, clock: Clock, before: str) -> Path:
    """A consistent copy of the journal (SQLite backup API), taken before a migration changes it."""
    folder = path.parent / "backups"
    folder.mkdir(parents=True, exist_ok=True)
    stamp = clock.now().strftime("%Y%m%dT%H%M%SZ")
    target = folder / f"{path.stem}.{stamp}.before-{before}.db"
    with sqlite3.connect(target) as copy:
        conn.backup(copy)
    copy.close()
    log.info("journal backup written", extra={"backup": str(target)})
    return target


def _stale_views(db: sqlite_utils.Database) -> dict[str, str]:
    """CREATE VIEW statements of the views whose SQL differs from journal/schema.py (a read, nothing changed)."""
    existing = {row["name"]: row["sql"] for row in db.query("SELECT name, sql FROM sqlite_master WHERE type='view'")}
    wanted = {name: f"CREATE VIEW {name} AS {body.strip()}" for name, body in VIEWS.items()}
    return {name: sql for name, sql in wanted.items() if existing.get(name) != sql}


def _pending(db: sqlite_utils.Database, path: Path) -> list[str]:
    """Names of the migrations this journal still needs (a read); JournalError when it is from a newer program."""
    known = {name for name, _ in MIGRATIONS}
    applied = [m.name for m in _migrations().applied(db)]
    newer = [name for name in applied if name not in known]
    if newer:
        raise JournalError(f"journal {path} has schema {newer[-1]}, newer than this program understands; "
                           "upgrade the program or use another --db")
    return [name for name, _ in MIGRATIONS if name not in applied]


def _needs_upgrade(db: sqlite_utils.Database, path: Path) -> bool:
    """Whether opening must change the file (WAL not on yet, migrations pending, views out of date); reads only,
    so that opening an up-to-date journal never waits for the migration lock."""
    mode = db.execute("PRAGMA journal_mode").fetchone()[0]
    return mode != "wal" or bool(_pending(db, path)) or bool(_stale_views(db))


def _upgrade(db: sqlite_utils.Database, path: Path, clock: Clock) -> None:
    """Switch on WAL, then apply pending migrations and view changes in one write transaction: all or nothing.

    The caller holds the migration lock; what is pending is read again here, because the command that held the
    lock before may have applied it already."""
    db.execute("PRAGMA journal_mode = WAL")  # outside the transaction: SQLite refuses to change it inside one
    pending = _pending(db, path)
    stale_views = _stale_views(db)
    if not pending and not stale_views:
        return
    if pending and db.table_names():
        _backup(db.conn, path, clock, pending[0])
    db.execute("BEGIN IMMEDIATE")
    try:
        _migrations().apply(db)  # each migration in a savepoint of this transaction
        for name, create in stale_views.items():
            db.execute(f"DROP VIEW IF EXISTS {name}")
            db.execute(create)
        db.execute("COMMIT")
    except BaseException:
        if db.conn.in_transaction:
            db.conn.rollback()
        raise
    if pending:
        log.info("journal migrated", extra={"applied": pending})


@contextlib.contextmanager
def _migration_lock(path: Path, wait: float) -> Iterator[None]:
    """Hold `<journal>.migrate.lock`, waiting up to `wait` seconds for another command that holds it."""
    lock_file = path.with_name(path.name + ".migrate.lock")
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        try:
            descriptor = stack.enter_context(exclusive_within(lock_file, wait))
        except OSError as err:
            raise JournalError(f"journal {path} needs an upgrade but its lock file {lock_file} cannot be created "
                               f"({err.strerror}); is its folder read-only?") from None
        if descriptor is None:
            raise JournalBusy(f"journal {path} is being upgraded by another command (gave up after "
                              f"{time.monotonic() - started:.1f} s); try again")
        yield


def _check_health(db: sqlite_utils.Database, path: Path) -> None:
    """JournalError when PRAGMA quick_check finds damage (the whole file, or on a large one the hot tables)."""
    if not path.exists() or path.stat().st_size <= QUICK_CHECK_MAX_BYTES:
        checks = ["PRAGMA quick_check(1)"]
    else:
        present = set(db.table_names())
        checks = [f"PRAGMA quick_check([{name}])" for name in TABLES_WRITTEN_BY_EVERY_COMMAND if name in present]
    for check in checks:
        verdict = db.execute(check).fetchone()[0]
        if verdict != "ok":
            raise JournalError(_damaged_message(path, verdict))


def _damaged_message(path: Path, detail: str) -> str:
    detail = " ".join(str(detail).split())[:120]
    backups = path.parent / "backups"
    copies = sorted(backups.glob(f"{path.stem}.*.db")) if backups.is_dir() else []
    if copies:
        return f"journal {path} is damaged ({detail}); restore it from the newest copy in {backups}"
    return (f"journal {path} is damaged ({detail}); no backup copy of it exists (one is taken in {backups} before "
            "each schema migration): restore it from your own backup or start a new journal")


# SQLite failures that are about the journal file rather than the program, by primary result code (Python sets
# sqlite_errorname) or, for an error without one, by SQLite's message.
_FAULT_BY_CODE = {"SQLITE_BUSY": "locked", "SQLITE_CORRUPT": "damaged", "SQLITE_NOTADB": "damaged",
                  "SQLITE_READONLY": "read-only", "SQLITE_CANTOPEN": "unopenable"}
_FAULT_BY_TEXT = (("database is locked", "locked"), ("busy", "locked"), ("malformed", "damaged"),
                  ("disk image", "damaged"), ("not a database", "damaged"), ("readonly", "read-only"),
                  ("unable to open", "unopenable"))


def _fault_kind(err: sqlite3.DatabaseError) -> str | None:
    name = getattr(err, "sqlite_errorname", None)
    if name:
        return _FAULT_BY_CODE.get("_".join(name.split("_")[:2]))  # SQLITE_BUSY_SNAPSHOT -> SQLITE_BUSY
    text = str(err).lower()
    return next((kind for fragment, kind in _FAULT_BY_TEXT if fragment in text), None)


def journal_fault(err: BaseException, path: str | Path, *, waited: float | None = None) -> MomentumError | None:
    """The product error for a SQLite failure of the journal at `path` (also one given as the explicit cause of
    `err`), or None when it is not about the file: locked by another command (JournalBusy, exit 3), damaged,
    read-only or impossible to open (JournalError, exit 2). `waited` is the time spent before giving up, if known."""
    cause: BaseException | None = err
    while cause is not None and not isinstance(cause, sqlite3.DatabaseError):
        cause = cause.__cause__
    kind = _fault_kind(cause) if cause is not None else None
    path = Path(path)
    if kind == "locked":
        spent = f" (gave up after {waited:.1f} s)" if waited is not None else ""
        return JournalBusy(f"journal {path} is locked by another command{spent}; try again")
    if kind == "damaged":
        return JournalError(_damaged_message(path, str(cause)))
    if kind == "read-only":
        return JournalError(f"journal {path} is read-only (the file or its folder cannot be written); "
                            "check their permissions")
    if kind == "unopenable":
        return JournalError(f"journal {path} cannot be opened ({cause}); check that the file and its folder "
                            "can be read and written")
    return None


_PLAIN = (str, int, float, type(None))


def _stored(value: Any) -> Any:
    """A value as sqlite_utils stores it (dicts and lists as JSON, dates as ISO text...); plain values as they are."""
    return value if type(value) in _PLAIN else sqlite_utils.db.jsonify_if_needed(value)


class Journal:
    """The open journal plus the small helpers every command needs."""

    def __init__(self, db: sqlite_utils.Database, path: Path, clock: Clock, run_id: str):
        self.db = db
        self.path = path
        self.clock = clock
        self.run_id = run_id
        self.log_dir = path.parent.parent / "logs"  # the runtime sets the configured LOG_DIR

    def now(self) -> str:
        return iso_utc(self.clock.now())

    def atomic(self):
        return self.db.atomic()

    def query(self, sql: str, params: Any = None) -> list[dict]:
        """Rows of a read as dicts (duplicate column names deduplicated as sqlite_utils does: id, id_2).

        Reads go straight to the connection: sqlite_utils' query() wraps each statement in a savepoint so that it
        can refuse a write, which costs three statements for one on the journal's most frequent call."""
        cursor = self.db.conn.execute(sql, params or [])
        if cursor.description is None:
            raise ValueError(f"journal query returned no rows description (not a read?): {sql[:80]}")
        names = [column[0] for column in cursor.description]
        if len(set(names)) != len(names):
            names = list(sqlite_utils.utils.dedupe_keys(names))
        return [dict(zip(names, row)) for row in cursor.fetchall()]

    def one(self, sql: str, params: Any = None) -> dict | None:
        rows = self.query(sql, params)
        return rows[0] if rows else None

    def held_trades(self, columns: str = "*", where: str = "", params: Any = None) -> list[dict]:
        """The held trades (schema.HELD_STATUSES: the position is, or should be, at the broker), oldest first;
        `where` narrows them with one more SQL condition."""
        return self.query(f"SELECT {columns} FROM trades WHERE {HELD}{f' AND ({where})' if where else ''} ORDER BY id",
                          params)

    # --- plain row writes on the hot paths ------------------------------------------------------------------
    # sqlite_utils' Table.insert / update read the schema (table list, columns, primary keys) on every call, which
    # adds up on rows written every run; these do the same write, in a transaction of its own just as sqlite_utils
    # does (a savepoint inside an open one), with values converted the way sqlite_utils converts them (dicts and
    # lists to JSON, dates to ISO text, Decimal to float).

    def insert_row(self, table: str, row: dict[str, Any]) -> int:
        """INSERT one row; returns its rowid."""
        names = ", ".join(f"[{name}]" for name in row)
        marks = ", ".join("?" * len(row))
        with self.db.atomic():
            cursor = self.db.execute(f"INSERT INTO [{table}] ({names}) VALUES ({marks})",
                                     [_stored(value) for value in row.values()])
        return cursor.lastrowid

    def insert_rows(self, table: str, rows: list[dict[str, Any]]) -> None:
        """INSERT many rows in order (a column a row lacks is NULL), in one transaction."""
        if not rows:
            return
        columns = list(dict.fromkeys(name for row in rows for name in row))
        names = ", ".join(f"[{name}]" for name in columns)
        marks = ", ".join("?" * len(columns))
        with self.db.atomic():
            self.db.conn.executemany(f"INSERT INTO [{table}] ({names}) VALUES ({marks})",
                                     [[_stored(row.get(name)) for name in columns] for row in rows])

    def upsert_rows(self, table: str, rows: list[dict[str, Any]], key: str) -> None:
        """INSERT each row, or UPDATE the columns it names where a row with its primary key `key` exists."""
        with self.db.atomic():
            for row in rows:
                names = ", ".join(f"[{name}]" for name in row)
                marks = ", ".join("?" * len(row))
                sets = ", ".join(f"[{name}] = excluded.[{name}]" for name in row if name != key)
                conflict = f"DO UPDATE SET {sets}" if sets else "DO NOTHING"
                self.db.execute(f"INSERT INTO [{table}] ({names}) VALUES ({marks}) ON CONFLICT([{key}]) {conflict}",
                                [_stored(value) for value in row.values()])

    def update_row(self, table: str, key: str, value: Any, updates: dict[str, Any]) -> None:
        """UPDATE the row whose primary key `key` is `value`; NotFoundError when there is no such row."""
        sets = ", ".join(f"[{name}] = ?" for name in updates)
        with self.db.atomic():
            count = self.db.execute(f"UPDATE [{table}] SET {sets} WHERE [{key}] = ?",
                                    [*map(_stored, updates.values()), value]).rowcount
            if count != 1:
                raise sqlite_utils.db.NotFoundError(f"no row in {table} with {key} = {value!r}")

    # --- events: errors and alerts ---------------------------------------------------------------------------
    def event(self, level: str, kind: str, message: str, *, source: str | None = None,
              detail: Any = None) -> int:
        if level not in EVENT_LEVELS:
            raise ValueError(f"unknown event level {level!r}")
        row = {"created_at": self.now(), "level": level, "kind": kind, "source": source, "message": message,
               "detail": json.dumps(detail, default=str) if detail is not None else None, "run_id": self.run_id}
        return self.insert_row("events", row)

    def recent_errors(self, limit: int = 10) -> list[dict]:
        """The last `limit` distinct error messages, newest first, with how often each occurred: error and critical
        events, and the runs that failed (a command that exited 1, 2 or 3 records its one line there, not always
        as an event)."""
        return self.query(f"SELECT message, level, source, COUNT(*) AS count, MAX(at) AS last_seen FROM ({ERRORS}) "
                          "GROUP BY message ORDER BY last_seen DESC LIMIT ?", [limit])

    def distinct_error_count(self) -> int:
        """How many distinct error messages `recent_errors` could list."""
        return self.one(f"SELECT COUNT(DISTINCT message) AS n FROM ({ERRORS})")["n"]

    # --- runtime settings ------------------------------------------------------------------------------------
    def settings(self) -> dict[str, str]:
        stored = {row["key"]: row["value"] for row in self.query("SELECT key, value FROM settings")}
        return {key: stored.get(key, spec.default) for key, spec in RUNTIME_SETTINGS.items()}

    def setting(self, key: str) -> str:
        return self.settings()[key]

    def set_setting(self, key: str, raw: str, *, by: str = "cli") -> str:
        value = parse_runtime_setting(key, raw)
        self.db.execute(
            "INSERT INTO settings (key, value, updated_at, updated_by) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at, "
            "updated_by = excluded.updated_by", [key, value, self.now(), by])
        self.db.conn.commit()
        return value

    # --- internal state (offsets, breaker) -------------------------------------------------------------------
    def state(self, key: str, default: str | None = None) -> str | None:
        row = self.one("SELECT value FROM state WHERE key = ?", [key])
        return row["value"] if row else default

    def set_state(self, key: str, value: str | None) -> None:
        self.db.execute(
            "INSERT INTO state (key, value, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            [key, value, self.now()])
        self.db.conn.commit()

    # --- configs and runs ------------------------------------------------------------------------------------
    def config_id(self, config: Config) -> int:
        """Id of the snapshot of every effective setting (secrets hidden), created on first use."""
        snapshot = {**config.public(), "runtime": self.settings()}
        text = json.dumps(snapshot, sort_keys=True, default=str)
        digest = hashlib.sha256(text.encode()).hexdigest()
        row = self.one("SELECT id FROM configs WHERE hash = ?", [digest])
        if row:
            return row["id"]
        with self.atomic():
            return self.db.table("configs").insert(
                {"created_at": self.now(), "hash": digest, "settings": text}).last_pk

    def start_run(self, command: str) -> None:
        self.db.table("runs").insert({"run_id": self.run_id, "command": command, "started_at": self.now(),
                                      "asof": self.now() if self.clock.simulated else None, "status": "running"})
        self.db.conn.commit()

    def finish_run(self, status: str, exit_code: int, detail: str | None = None) -> None:
        self.db.execute("UPDATE runs SET finished_at = ?, status = ?, exit_code = ?, detail = ? WHERE run_id = ?",
                        [self.now(), status, exit_code, detail, self.run_id])
        self.db.conn.commit()


def open_journal(path: str | Path, clock: Clock, *, busy_timeout: float | None = None,
                 run_id: str | None = None) -> Journal:
    """Open (creating if needed), check and migrate the journal at `path`; busy_timeout defaults to BUSY_TIMEOUT_S."""
    path = Path(path)
    busy_timeout = BUSY_TIMEOUT_S if busy_timeout is None else busy_timeout
    _check_file(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise JournalError(f"journal {path}: its folder cannot be created ({err.strerror})") from None
    started = time.monotonic()
    conn = None
    try:
        conn = sqlite3.connect(str(path), timeout=busy_timeout)
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        db = sqlite_utils.Database(conn)
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute("PRAGMA foreign_keys = ON")
        _check_health(db, path)
        if _needs_upgrade(db, path):
            with _migration_lock(path, busy_timeout):
                _upgrade(db, path, clock)
    except (MomentumError, sqlite3.DatabaseError) as err:
        if conn is not None:
            conn.close()
        if isinstance(err, MomentumError):
            raise
        raise (journal_fault(err, path, waited=time.monotonic() - started)
               or JournalError(f"journal {path}: {err}")) from None
    return Journal(db, path, clock, run_id or uuid.uuid4().hex[:12])


@contextlib.contextmanager
def journal(path: str | Path, clock: Clock, **kwargs) -> Iterator[Journal]:
    opened = open_journal(path, clock, **kwargs)
    try:
        yield opened
    finally:
        opened.db.conn.close()

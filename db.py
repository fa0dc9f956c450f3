"""The journal: one SQLite file shared by every short-lived command.

Opening it applies pending numbered migrations (each in a transaction, after a backup copy of the file), makes sure
the SQL views match schema.py, and switches on WAL and a busy timeout so commands running side by side wait for each
other instead of failing. A file that is not a journal, is damaged, stays locked, or was written by a newer version
of the program ends the command with a clear one-line error (JournalError exit 2, JournalBusy exit 3).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import sqlite3
import uuid
from pathlib import Path
from typing import Any, Iterator

import sqlite_utils
from sqlite_utils.migrations import Migrations

from clock import Clock, iso_utc
from config import RUNTIME_SETTINGS, Config, parse_runtime_setting
from errors import JournalBusy, JournalError
from schema import MIGRATIONS, VIEWS

log = logging.getLogger(__name__)
SQLITE_HEADER = b"SQLite format 3\x00"
MIGRATION_SET = "momentum"
EVENT_LEVELS = ("debug", "info", "warning", "error", "critical")


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


def _ensure_views(db: sqlite_utils.Database) -> None:
    """Create or replace views whose SQL differs from schema.py (idempotent, no write when unchanged)."""
    existing = {row["name"]: row["sql"] for row in db.query("SELECT name, sql FROM sqlite_master WHERE type='view'")}
    for name, body in VIEWS.items():
        wanted = f"CREATE VIEW {name} AS {body.strip()}"
        if existing.get(name) != wanted:
            with db.atomic():
                db.execute(f"DROP VIEW IF EXISTS {name}")
                db.execute(wanted)


def _migrate(db: sqlite_utils.Database, path: Path, clock: Clock) -> None:
    migrations = _migrations()
    known = {name for name, _ in MIGRATIONS}
    applied = [m.name for m in migrations.applied(db)]
    newer = [name for name in applied if name not in known]
    if newer:
        raise JournalError(f"journal {path} has schema {newer[-1]}, newer than this program understands; "
                           "upgrade the program or use another --db")
    pending = migrations.pending(db)
    if not pending:
        return
    if applied or db.table_names():
        _backup(db.conn, path, clock, pending[0].name)
    migrations.apply(db)
    log.info("journal migrated", extra={"applied": [m.name for m in pending]})


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
        """The last `limit` distinct error messages, newest first, with how often each occurred."""
        return self.query(
            "SELECT message, level, source, COUNT(*) AS count, MAX(created_at) AS last_seen FROM events "
            "WHERE level IN ('error', 'critical') GROUP BY message ORDER BY last_seen DESC, MAX(id) DESC LIMIT ?",
            [limit])

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


def open_journal(path: str | Path, clock: Clock, *, busy_timeout: float = 10.0,
                 run_id: str | None = None) -> Journal:
    """Open (creating if needed) and migrate the journal at `path`."""
    path = Path(path)
    _check_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        conn = sqlite3.connect(str(path), timeout=busy_timeout)
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        db = sqlite_utils.Database(conn)
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute("PRAGMA foreign_keys = ON")
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        _migrate(db, path, clock)
        _ensure_views(db)
    except sqlite3.OperationalError as err:
        if "locked" in str(err) or "busy" in str(err):
            raise JournalBusy(f"journal {path} stayed locked for more than {busy_timeout:g} s; "
                              "another command holds it — try again") from None
        raise JournalError(f"journal {path}: {err}") from None
    except sqlite3.DatabaseError as err:
        raise JournalError(f"journal {path} is damaged ({err}); restore it from {path.parent / 'backups'}") from None
    return Journal(db, path, clock, run_id or uuid.uuid4().hex[:12])


@contextlib.contextmanager
def journal(path: str | Path, clock: Clock, **kwargs) -> Iterator[Journal]:
    opened = open_journal(path, clock, **kwargs)
    try:
        yield opened
    finally:
        opened.db.conn.close()

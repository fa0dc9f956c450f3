import sqlite3
import threading
import time

import pytest

import db as journal_db
from common.clock import Clock, parse_asof
from common.errors import ConfigError, JournalBusy, JournalError
from common.locks import exclusive
from config import load_config
from journal.schema import MIGRATIONS, VIEWS

CLOCK = Clock(parse_asof("2016-11-09T10:30"))


def test_new_journal_has_every_table_and_view(tmp_path):
    j = journal_db.open_journal(tmp_path / "trades.db", CLOCK)
    tables = set(j.db.table_names())
    for name in ("trades", "configs", "orders", "scans", "candidates", "decisions", "watchlist",
                 "position_checks", "exits", "exit_attempts", "poor_signals", "daily_performance", "regimes",
                 "risk_events", "settings", "events", "bot_commands", "strat_signals"):
        assert name in tables
    assert set(j.db.view_names()) == set(VIEWS)
    assert j.query("PRAGMA journal_mode")[0]["journal_mode"] == "wal"
    assert [m["name"] for m in j.query("SELECT name FROM _sqlite_migrations")] == [n for n, _ in MIGRATIONS]


def test_reopening_is_idempotent_and_takes_no_backup(tmp_path):
    path = tmp_path / "trades.db"
    journal_db.open_journal(path, CLOCK).db.conn.close()
    journal_db.open_journal(path, CLOCK).db.conn.close()
    assert not (tmp_path / "backups").exists()


def test_backup_is_written_before_a_pending_migration(tmp_path, monkeypatch):
    path = tmp_path / "trades.db"
    j = journal_db.open_journal(path, CLOCK)
    j.event("info", "note", "before the upgrade")
    j.db.conn.close()
    extra = MIGRATIONS + [("0099_test_column", "ALTER TABLE trades ADD COLUMN test_only TEXT;")]
    monkeypatch.setattr(journal_db, "MIGRATIONS", extra)
    j = journal_db.open_journal(path, CLOCK)
    assert "test_only" in j.db.table("trades").columns_dict
    backups = list((tmp_path / "backups").iterdir())
    assert len(backups) == 1 and "before-0099_test_column" in backups[0].name
    copy = sqlite3.connect(backups[0])
    assert copy.execute("SELECT message FROM events").fetchall() == [("before the upgrade",)]
    assert "test_only" not in [r[1] for r in copy.execute("PRAGMA table_info(trades)")]


def test_failed_migration_rolls_back(tmp_path, monkeypatch):
    path = tmp_path / "trades.db"
    journal_db.open_journal(path, CLOCK).db.conn.close()
    broken = MIGRATIONS + [("0099_broken", "ALTER TABLE trades ADD COLUMN x TEXT;\nSELECT * FROM nowhere;")]
    monkeypatch.setattr(journal_db, "MIGRATIONS", broken)
    with pytest.raises(JournalError):
        journal_db.open_journal(path, CLOCK)
    monkeypatch.setattr(journal_db, "MIGRATIONS", MIGRATIONS)
    j = journal_db.open_journal(path, CLOCK)
    assert "x" not in j.db.table("trades").columns_dict


def test_journal_from_a_newer_program_is_refused(tmp_path):
    path = tmp_path / "trades.db"
    j = journal_db.open_journal(path, CLOCK)
    j.db.execute("INSERT INTO _sqlite_migrations (migration_set, name, applied_at) VALUES ('momentum', "
                 "'0500_future', 'x')")
    j.db.conn.commit()
    j.db.conn.close()
    with pytest.raises(JournalError, match="newer than this program") as err:
        journal_db.open_journal(path, CLOCK)
    assert err.value.exit_code == 2


@pytest.mark.parametrize("content", [b"this is not a database at all" * 100, b"SQLite format 3\x00" + b"\xff" * 4000])
def test_corrupt_file_gives_a_clear_error(tmp_path, content):
    path = tmp_path / "trades.db"
    path.write_bytes(content)
    with pytest.raises(JournalError) as err:
        journal_db.open_journal(path, CLOCK)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_locked_journal_times_out_with_exit_3(tmp_path):
    path = tmp_path / "trades.db"
    journal_db.open_journal(path, CLOCK).db.conn.close()
    holder = sqlite3.connect(path)
    holder.execute("PRAGMA locking_mode = EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        with pytest.raises(JournalBusy) as err:
            journal_db.open_journal(path, CLOCK, busy_timeout=0.3)
        elapsed = time.monotonic() - started
        assert err.value.exit_code == 3 and elapsed < 10
        waited = float(str(err.value).split("gave up after ")[1].split(" s")[0])  # the time it really waited
        assert 0.3 <= waited <= elapsed + 0.05
    finally:
        holder.rollback()
        holder.close()


def test_events_settings_state_and_configs(tmp_path):
    j = journal_db.open_journal(tmp_path / "trades.db", CLOCK)
    for message in ("feed down", "feed down", "stop rejected"):
        j.event("error", "error", message, source="test")
    j.event("info", "alert", "not an error")
    errors = j.recent_errors()
    assert [(e["message"], e["count"]) for e in errors] == [("stop rejected", 1), ("feed down", 2)]
    assert j.setting("autoclose_threshold") == "5"
    assert j.set_setting("autoclose_threshold", "8") == "8"
    with pytest.raises(ConfigError):
        j.set_setting("autoclose_threshold", "eight")
    assert j.setting("autoclose_threshold") == "8"
    j.set_state("bot_offset", "42")
    assert j.state("bot_offset") == "42" and j.state("missing", "d") == "d"
    cfg = load_config(environ={"ALPACA_API_KEY": "SUPERSECRET123"})
    first = j.config_id(cfg)
    assert j.config_id(cfg) == first
    stored = j.one("SELECT settings FROM configs WHERE id = ?", [first])["settings"]
    assert "SUPERSECRET123" not in stored and '"MAX_POSITIONS": 6' in stored


def test_concurrent_writers_wait_instead_of_failing(tmp_path):
    path = tmp_path / "trades.db"
    journal_db.open_journal(path, CLOCK).db.conn.close()
    failures = []

    def write(n):
        try:
            j = journal_db.open_journal(path, CLOCK)
            for i in range(20):
                j.event("info", "note", f"writer {n} event {i}")
            j.db.conn.close()
        except Exception as err:  # noqa: BLE001 - collected and asserted below
            failures.append(err)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    j = journal_db.open_journal(path, CLOCK)
    assert j.one("SELECT COUNT(*) AS n FROM events")["n"] == 80


def test_pending_migrations_are_applied_all_or_none(tmp_path, monkeypatch):
    path = tmp_path / "trades.db"
    monkeypatch.setattr(journal_db, "MIGRATIONS", MIGRATIONS[:-1])
    journal_db.open_journal(path, CLOCK).db.conn.close()
    broken = MIGRATIONS + [("0099_broken", "SELECT * FROM nowhere;")]
    monkeypatch.setattr(journal_db, "MIGRATIONS", broken)
    with pytest.raises(JournalError, match="no such table: nowhere"):
        journal_db.open_journal(path, CLOCK)
    with sqlite3.connect(path) as conn:
        applied = [name for (name,) in conn.execute("SELECT name FROM _sqlite_migrations ORDER BY id")]
    assert applied == [name for name, _ in MIGRATIONS[:-1]]


def test_an_up_to_date_journal_opens_while_another_command_holds_the_migration_lock(tmp_path):
    path = tmp_path / "trades.db"
    journal_db.open_journal(path, CLOCK).db.conn.close()
    with exclusive(tmp_path / "trades.db.migrate.lock") as fd:
        assert fd is not None
        started = time.monotonic()
        journal_db.open_journal(path, CLOCK, busy_timeout=2).db.conn.close()
        assert time.monotonic() - started < 1


def _sqlite_error(message: str, name: str | None) -> sqlite3.DatabaseError:
    err = (sqlite3.OperationalError if "locked" in message or "write" in message or "open" in message
           else sqlite3.DatabaseError)(message)
    if name:
        err.sqlite_errorname = name
    return err


@pytest.mark.parametrize("message, name, exit_code, says", [
    ("database is locked", "SQLITE_BUSY", 3, "is locked by another command; try again"),
    ("database is locked", "SQLITE_BUSY_SNAPSHOT", 3, "is locked by another command; try again"),
    ("database is locked", None, 3, "is locked by another command; try again"),
    ("database disk image is malformed", "SQLITE_CORRUPT", 2,
     "is damaged (database disk image is malformed); no backup copy of it exists (one is taken in /j/backups"),
    ("file is not a database", None, 2, "is damaged (file is not a database); no backup copy"),
    ("attempt to write a readonly database", "SQLITE_READONLY", 2, "is read-only"),
    ("unable to open database file", "SQLITE_CANTOPEN", 2, "cannot be opened (unable to open database file)"),
])
def test_journal_fault_maps_sqlite_failures_of_the_file(message, name, exit_code, says):
    fault = journal_db.journal_fault(_sqlite_error(message, name), "/j/trades.db")
    assert fault.exit_code == exit_code and str(fault).startswith("journal /j/trades.db ") and says in str(fault)
    assert "\n" not in str(fault)


def test_journal_fault_follows_an_explicit_cause_and_ignores_the_rest():
    try:
        try:
            raise _sqlite_error("database is locked", "SQLITE_BUSY")
        except sqlite3.OperationalError as err:
            raise RuntimeError("saving the scan failed") from err
    except RuntimeError as wrapped:
        assert journal_db.journal_fault(wrapped, "/j/trades.db").exit_code == 3
    assert journal_db.journal_fault(sqlite3.IntegrityError("UNIQUE constraint failed: x.y"), "/j/trades.db") is None
    assert journal_db.journal_fault(_sqlite_error("no such table: x", "SQLITE_ERROR"), "/j/trades.db") is None
    assert journal_db.journal_fault(ValueError("database is locked"), "/j/trades.db") is None
    assert "gave up after 1.5 s" in str(journal_db.journal_fault(_sqlite_error("database is locked", None),
                                                                 "/j/trades.db", waited=1.5))

"""The journal's faults as a user meets them: exit codes and one-line errors of commands on a journal that another
process locks or upgrades at the same moment, that has damaged pages, or that cannot be written."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest
from click.testing import CliRunner

import db as journal_db
from common.clock import Clock, parse_asof
from common.errors import JournalError
from main import cli

from conftest import ROOT

ASOF = "2016-11-09T10:30"
CLOCK = Clock(parse_asof(ASOF))


@pytest.fixture
def env(private_journal):
    return private_journal


def run(*args: str):
    return CliRunner().invoke(cli, ["--asof", ASOF, *args], catch_exceptions=False)


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


# --- commands starting together on a new or upgraded journal ----------------------------------------------------

# Forks after one import, so that every racer is a separate process running `main.py --db X settings` and all of
# them start the command at the same instant (a pipe closing is their starting gun).
RACE = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, {root!r})
    import db
    import main
    from common.clock import Clock, parse_asof
    from journal.schema import MIGRATIONS

    def racer(journal, gun, out):
        os.dup2(os.open(out, os.O_WRONLY | os.O_CREAT, 0o644), 2)
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        os.read(gun, 1)
        code = 0
        try:
            main.cli(["--db", journal, "--asof", "2016-11-09T10:30", "settings"], prog_name="main.py")
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else int(done.code is not None)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    results = []
    for number, (racers, kind) in enumerate({rounds!r}):
        folder = os.path.join({folder!r}, f"round{{number}}")
        os.makedirs(folder)
        journal = os.path.join(folder, "trades.db")
        if kind == "upgraded":  # a journal written by the previous version: the last migration is pending
            db.MIGRATIONS = MIGRATIONS[:-1]
            db.open_journal(journal, Clock(parse_asof("2016-11-08T10:30"))).db.conn.close()
            db.MIGRATIONS = MIGRATIONS
        gun, fire = os.pipe()
        children = []
        for index in range(racers):
            out = os.path.join(folder, f"racer{{index}}.err")
            pid = os.fork()
            if pid == 0:
                os.close(fire)
                racer(journal, gun, out)
            children.append((pid, out))
        os.close(gun)
        os.close(fire)
        for pid, out in children:
            code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
            results.append({{"round": number, "kind": kind, "code": code, "stderr": open(out).read()}})
        applied = db.open_journal(journal, Clock(parse_asof("2016-11-09T10:31"))).query(
            "SELECT name FROM _sqlite_migrations ORDER BY id")
        results.append({{"round": number, "kind": kind, "applied": [row["name"] for row in applied],
                         "backups": sorted(os.listdir(os.path.join(folder, "backups")))
                         if os.path.isdir(os.path.join(folder, "backups")) else []}})
    print(json.dumps(results))
""")


@pytest.mark.slow
def test_commands_starting_together_on_a_new_or_upgraded_journal_all_succeed(tmp_path):
    from journal.schema import MIGRATIONS

    rounds = [(2 + number % 3, "new" if number % 2 == 0 else "upgraded") for number in range(10)]
    env = {**os.environ, "LOG_DIR": str(tmp_path / "logs"), "CACHE_DIR": str(tmp_path / "cache")}
    for name in ("MOMENTUM_DB", "MOMENTUM_ASOF", "DATA_SOURCE", "BROKER"):
        env.pop(name, None)
    script = RACE.format(root=str(ROOT), folder=str(tmp_path), rounds=rounds)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    runs = [r for r in results if "code" in r]
    assert len(runs) == sum(racers for racers, _ in rounds)
    failures = [r for r in runs if r["code"] != 0 or r["stderr"].strip()]
    assert failures == []
    for journal in (r for r in results if "applied" in r):
        assert journal["applied"] == [name for name, _ in MIGRATIONS]  # each applied exactly once
        if journal["kind"] == "upgraded":  # and one backup taken before the upgrade, by whoever applied it
            assert journal["backups"] == [f"trades.20161109T153000Z.before-{MIGRATIONS[-1][0]}.db"]
        else:
            assert journal["backups"] == []


def test_a_command_waiting_on_another_ones_upgrade_says_how_long_it_waited(env, monkeypatch):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, os, sys
        fd = os.open({str(env / "trades.db.migrate.lock")!r}, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        print("held", flush=True)
        sys.stdin.readline()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(journal_db, "BUSY_TIMEOUT_S", 0.4)
        started = time.monotonic()
        result = run("status")
        elapsed = time.monotonic() - started
    finally:
        holder.communicate("")
    assert result.exit_code == 3, result.output
    line = one_error_line(result.stderr)
    waited = float(line.split("gave up after ")[1].split(" s")[0])
    assert "being upgraded by another command" in line and 0.4 <= waited <= elapsed
    assert (env / "trades.db").stat().st_size == 0  # it created nothing without the lock


# --- a journal write-locked by another process ------------------------------------------------------------------

HOLD = textwrap.dedent("""
    import sqlite3, sys
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.execute(sys.argv[2])
    print("held", flush=True)
    sys.stdin.readline()
""")


@pytest.mark.parametrize("begin", ["BEGIN EXCLUSIVE", "BEGIN IMMEDIATE"])
def test_journal_held_by_another_process_gives_exit_3_after_the_busy_timeout(env, monkeypatch, begin):
    journal_db.open_journal(env / "trades.db", CLOCK).db.conn.close()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(env / "trades.db"), begin],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(journal_db, "BUSY_TIMEOUT_S", 0.5)
        started = time.monotonic()
        result = run("status")
        elapsed = time.monotonic() - started
    finally:
        holder.communicate("")
    assert result.exit_code == 3, result.output
    line = one_error_line(result.stderr)
    assert line == f"error: journal {env / 'trades.db'} is locked by another command; try again"
    assert 0.5 <= elapsed < 1.0 + 0.5  # one busy timeout: the failed run is not recorded by waiting again
    assert "Traceback" not in result.output


# --- damaged pages ------------------------------------------------------------------------------------------------

def _damage_a_page_of(path, table: str) -> None:
    """Fill `table` with rows, then write garbage over one of its pages in the middle of the file (header intact)."""
    journal = journal_db.open_journal(path, CLOCK)
    if table == "events":
        journal.insert_rows("events", [{"created_at": journal.now(), "level": "info", "kind": "note",
                                        "message": f"note {n} " + "x" * 200} for n in range(2000)])
    else:
        journal.insert_rows("bot_commands", [{"update_id": n, "command": "/status", "authorised": 1,
                                              "status": "done", "response": "y" * 200, "created_at": journal.now()}
                                             for n in range(2000)])
    journal.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    pages = [row["pageno"] for row in journal.query(
        "SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'leaf' ORDER BY pageno", [table])]
    page_size = journal.query("PRAGMA page_size")[0]["page_size"]
    journal.db.conn.close()
    victim = pages[len(pages) // 2]
    with open(path, "r+b") as handle:
        handle.seek((victim - 1) * page_size)
        handle.write(bytes(range(256)) * (page_size // 256))


def _integrity(path) -> str:
    try:
        with contextlib.closing(sqlite3.connect(path)) as check:
            return check.execute("PRAGMA integrity_check").fetchone()[0]
    except sqlite3.DatabaseError as err:
        return str(err)


@pytest.mark.parametrize("table", ["events", "bot_commands"])  # read by status, and by no command below
@pytest.mark.parametrize("command", [["status"], ["scan", "--dry-run"]])
def test_damaged_pages_give_exit_2_and_nothing_is_written(env, table, command):
    path = env / "trades.db"
    _damage_a_page_of(path, table)
    assert _integrity(path) != "ok"
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    result = run(*command)
    assert result.exit_code == 2, result.output
    line = one_error_line(result.stderr)
    assert f"journal {path} is damaged" in line
    assert f"no backup copy of it exists (one is taken in {env / 'backups'} before each schema migration)" in line
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert not os.path.exists(f"{path}-wal") or os.path.getsize(f"{path}-wal") == 0


def test_on_a_large_journal_open_checks_the_tables_every_command_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(journal_db, "QUICK_CHECK_MAX_BYTES", 0)  # every journal counts as large
    _damage_a_page_of(tmp_path / "a.db", "events")
    with pytest.raises(JournalError, match="is damaged"):
        journal_db.open_journal(tmp_path / "a.db", CLOCK)
    _damage_a_page_of(tmp_path / "b.db", "bot_commands")
    journal_db.open_journal(tmp_path / "b.db", CLOCK).db.conn.close()  # left to the command that reads it


def test_damage_met_in_the_middle_of_a_command_gives_exit_2(env, monkeypatch):
    from flows import operator

    def read_a_damaged_page(rt):
        raise sqlite3.DatabaseError("database disk image is malformed")

    monkeypatch.setattr(operator, "status", read_a_damaged_page)
    result = run("status")
    assert result.exit_code == 2, result.output
    assert "is damaged (database disk image is malformed); no backup copy" in one_error_line(result.stderr)


# --- a read-only journal ------------------------------------------------------------------------------------------

def _as_plain_user() -> list[str]:
    """A command prefix under which file permissions apply: root ignores them unless it drops its DAC override."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root and setpriv is not available to drop the permission override")
    drop = "-dac_override,-dac_read_search"
    return ["setpriv", "--bounding-set", drop, "--inh-caps", drop]


@pytest.mark.parametrize("readonly", ["file", "folder"])
def test_read_only_journal_gives_exit_2_naming_the_file(tmp_path, readonly):
    folder = tmp_path / "data"
    path = folder / "trades.db"
    journal_db.open_journal(path, CLOCK).db.conn.close()
    (path if readonly == "file" else folder).chmod(0o444 if readonly == "file" else 0o555)
    env = {**os.environ, "LOG_DIR": str(tmp_path / "logs"), "CACHE_DIR": str(tmp_path / "cache"),
           "SIM_BROKER_DB": str(tmp_path / "sim_broker.db")}
    try:
        done = subprocess.run([*_as_plain_user(), sys.executable, "main.py", "--db", str(path), "--asof", ASOF,
                               "status"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    finally:
        folder.chmod(0o755)
        path.chmod(0o644)
    assert done.returncode == 2, done.stderr
    line = one_error_line(done.stderr)
    assert line.startswith(f"error: journal {path} is read-only"), line


def test_a_damaged_journal_with_a_migration_backup_points_to_it(env):
    path = env / "trades.db"
    _damage_a_page_of(path, "events")
    (env / "backups").mkdir()
    (env / "backups" / "trades.20250101T000000Z.before-0009.db").write_bytes(b"")
    line = one_error_line(run("status").stderr)
    assert f"restore it from the newest copy in {env / 'backups'}" in line

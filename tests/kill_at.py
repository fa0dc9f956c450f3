"""Run main.py commands with the journal's writes and the broker's order calls traced as named events, and SIGKILL
the first command as a chosen event starts.

    python tests/kill_at.py SPEC [--record FILE] -- MAIN_ARGS [--then MAIN_ARGS]...

SPEC applies to the first command:
    census:FILE   append each event of the command to FILE ("name<TAB>detail", one flushed line each); no kill
    kill:N        SIGKILL the command as its Nth event (counted from 1) starts
    run           trace nothing, kill nothing
Every command after a `--then` runs to completion (they are the re-run and the next scheduled command). The
product is imported once; each command runs in a process of its own forked from this one, so a kill takes only
that command down, and the next one starts without paying for the imports again.

Events:
    journal:<insert|update|delete>:<table>   a write statement on the journal starts
    journal:commit:<tables>                  the COMMIT (or the release of the outermost savepoint) of a transaction
                                             that wrote <tables> (joined by "+") starts: nothing of it is durable yet
    journal:committed:<tables>               the first thing the command does after that commit returned: a kill
                                             here is "just after the write"
    broker:<submit|cancel>:<before|after>    around the broker adapter's call (the sim broker, or the Alpaca one)
The statements come from sqlite3's trace callback on the journal's connection, which is called as each statement
starts executing.

--record FILE gets JSON lines: {"sent": client_order_id, "held": bool | null, "command": i} as each order is
submitted (held: whether the sim broker already had that client_order_id; null with Alpaca, whose fake server keeps
its own log), {"killed_at": N, "event": name, "detail": ...} just before a kill, and {"command": i, "exit": code}
(or "SIGKILL") as each command ends.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import re
import signal
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WRITE = re.compile(r"\s*(INSERT|REPLACE|UPDATE|DELETE)\b(?:\s+OR\s+\w+)?\s*(?:INTO|FROM)?\s*[\[\"`]?(\w+)",
                   re.IGNORECASE)
FIRST_WORD = re.compile(r"\s*(\w+)")
BROKER_METHODS = ("submit", "cancel")


class Recorder:
    """Counts the events of the running command, writes the census, and kills at the chosen one."""

    def __init__(self) -> None:
        self.mode = "run"
        self.census: Any = None
        self.kill_at = 0
        self.count = 0
        self.record: Any = None
        self.command = 0
        self._written: set[str] = set()  # tables written by the open transaction
        self._savepoints = 0
        self._began = False
        self._committed: str | None = None  # a commit whose "committed" event is still due

    def start_command(self, index: int, spec: str) -> None:
        """Called in the forked process of command `index`: SPEC applies to the first command only."""
        self.command, self.count = index, 0
        self.mode, _, argument = spec.partition(":") if index == 0 else ("run", "", "")
        if self.mode == "census":
            self.census = open(argument, "a", buffering=1)
        elif self.mode == "kill":
            self.kill_at = int(argument)

    def write_record(self, entry: dict) -> None:
        if self.record is not None:
            self.record.write(json.dumps(entry) + "\n")
            self.record.flush()

    def emit(self, name: str, detail: str = "") -> None:
        if self.mode == "run":
            return
        self.count += 1
        if self.census is not None:
            self.census.write(f"{name}\t{detail}\n")
        if self.mode == "kill" and self.count == self.kill_at:
            self.write_record({"killed_at": self.count, "event": name, "detail": detail})
            os.kill(os.getpid(), signal.SIGKILL)

    def end_command(self) -> None:
        self._due_committed()

    def _due_committed(self) -> None:
        if self._committed is not None:
            name, self._committed = self._committed, None
            self.emit(f"journal:committed:{name}")

    # -- the journal ----------------------------------------------------------------------------------------------

    def statement(self, sql: str) -> None:
        """sqlite3 trace callback: `sql` is about to run on the journal's connection."""
        self._due_committed()
        write = WRITE.match(sql)
        if write:
            table = write.group(2)
            self._written.add(table)
            self.emit(f"journal:{write.group(1).lower()}:{table}")
            return
        first = FIRST_WORD.match(sql)
        word = first.group(1).upper() if first else ""
        if word == "BEGIN":
            self._began = True
        elif word == "SAVEPOINT":
            self._savepoints += 1
        elif word == "RELEASE":
            self._savepoints -= 1
            if self._savepoints == 0 and not self._began:
                self._commit()
        elif word in ("COMMIT", "END"):
            self._commit()
        elif word == "ROLLBACK" and "TO" not in sql.upper().split():
            self._written.clear()
            self._began, self._savepoints = False, 0

    def _commit(self) -> None:
        tables = "+".join(sorted(self._written))
        self._written.clear()
        self._began, self._savepoints = False, 0
        if tables:
            self.emit(f"journal:commit:{tables}")
            self._committed = tables

    # -- the broker -----------------------------------------------------------------------------------------------

    def broker_call(self, method: str, moment: str, detail: str) -> None:
        self._due_committed()
        self.emit(f"broker:{method}:{moment}", detail)


RECORDER = Recorder()


def _describe(args: tuple) -> str:
    request = args[0] if args else None
    if hasattr(request, "client_order_id"):
        return f"{request.client_order_id} {request.side} {request.type} {request.qty} {request.symbol}"
    return str(request)


def _sim_holds(broker, client_order_id: str) -> bool | None:
    """Whether the sim broker's file already holds this client_order_id (a read outside any transaction)."""
    db = getattr(broker, "_db", None)
    if db is None:
        return None
    return db.execute("SELECT 1 FROM orders WHERE client_order_id = ?", (client_order_id,)).fetchone() is not None


def _traced(method: str, real: Callable) -> Callable:
    @functools.wraps(real)
    def call(self, *args, **kwargs):
        detail = _describe(args)
        if method == "submit" and args:
            RECORDER.write_record({"sent": args[0].client_order_id, "held": _sim_holds(self, args[0].client_order_id),
                                   "command": RECORDER.command})
        RECORDER.broker_call(method, "before", detail)
        try:
            return real(self, *args, **kwargs)
        finally:
            RECORDER.broker_call(method, "after", detail)

    return call


def install_hooks() -> None:
    """Trace every journal the product opens, and the order calls of both broker adapters."""
    import db
    from flows import runtime
    from ports import sim_broker
    from ports.alpaca import broker

    real_open = db.open_journal

    @functools.wraps(real_open)
    def open_journal(*args, **kwargs):
        journal = real_open(*args, **kwargs)
        journal.db.conn.set_trace_callback(RECORDER.statement)
        return journal

    db.open_journal = runtime.open_journal = open_journal
    for cls in (sim_broker.SimBroker, broker.AlpacaBroker):
        for method in BROKER_METHODS:
            setattr(cls, method, _traced(method, getattr(cls, method)))


def preload() -> None:
    """Import what the commands import, once, before the forks."""
    import main  # noqa: F401
    import monitor  # noqa: F401
    from flows import (
        scan,  # noqa: F401
        scan_orders,  # noqa: F401
    )
    from journal import reconcile  # noqa: F401


def run_command(index: int, spec: str, argv: list[str]) -> int:
    """Run one main.py command in this (forked) process; returns its exit code."""
    import main

    RECORDER.start_command(index, spec)
    try:
        main.cli.main(args=argv, prog_name="main.py")
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    RECORDER.end_command()
    return code


def run_forked(index: int, spec: str, argv: list[str]) -> int | str:
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = run_command(index, spec, argv)
        except BaseException:  # noqa: BLE001 - shown, and the command counts as failed (exit 1)
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            logging.shutdown()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return signal.Signals(os.WTERMSIG(status)).name
    return os.WEXITSTATUS(status)


def parse(arguments: list[str]) -> tuple[str, str | None, list[list[str]]]:
    if "--" not in arguments:
        raise SystemExit("usage: kill_at.py SPEC [--record FILE] -- MAIN_ARGS [--then MAIN_ARGS]...")
    split = arguments.index("--")
    options, rest = arguments[:split], arguments[split + 1:]
    spec, record = options[0], None
    if "--record" in options:
        record = options[options.index("--record") + 1]
    commands: list[list[str]] = [[]]
    for word in rest:
        if word == "--then":
            commands.append([])
        else:
            commands[-1].append(word)
    return spec, record, commands


def main(arguments: list[str]) -> int:
    spec, record, commands = parse(arguments)
    preload()
    install_hooks()
    RECORDER.record = open(record, "a", buffering=1) if record else None
    for index, argv in enumerate(commands):
        RECORDER.write_record({"command": index, "exit": run_forked(index, spec, argv)})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

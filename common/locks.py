"""Process locks: exclusive, non-blocking fcntl locks on files beside the journal.

The kernel drops a lock when its holder exits for any reason (even SIGKILL), so a crashed command never leaves one
stuck. The scan lock keeps two scans of one journal from overlapping; position locks keep two commands from acting
on one position at once; alert delivery and the Telegram poll use the same mechanism so that two overlapping runs
never send the same thing twice.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
import time
from pathlib import Path
from typing import Iterator

from common.errors import CommandLocked, ScanLocked


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[int | None]:
    """Yields the locked file's descriptor, or None when another process holds the lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield None
            return
        yield fd
    finally:
        os.close(fd)  # closing the descriptor releases the lock


class PositionLocks:
    """One lock per symbol per journal: whoever sends or changes orders of a position holds its symbol's lock.

    This is what keeps two commands (a scan and the monitor, `close` and the bot) from acting on one position at
    once, and it is the lease of an order in flight: a `pending_submit` order whose symbol lock another process
    holds may still reach the broker, so reconciliation leaves it alone; once the lock is free, its submitter has
    finished or died (the kernel releases a dead holder's lock), and the row can be resolved from the broker alone.
    Locks are reentrant within a process; a lock's file is open only while it is held.
    """

    POLL_S = 0.05

    def __init__(self, journal_path: Path):
        self.folder = Path(journal_path).with_name(Path(journal_path).name + ".locks")
        self._depth: dict[str, int] = {}
        self._folder_made = False

    def _open(self, symbol: str) -> int:
        if not self._folder_made:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._folder_made = True
        name = re.sub(r"[^A-Za-z0-9._-]", "_", symbol) or "_"
        return os.open(self.folder / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o644)

    @contextlib.contextmanager
    def hold(self, symbol: str, wait: float = 0.0) -> Iterator[bool]:
        """Yields True while this process holds `symbol`'s lock, or False when another process kept it for `wait`
        seconds; the caller then leaves the position alone."""
        if symbol in self._depth:
            self._depth[symbol] += 1
            try:
                yield True
            finally:
                self._depth[symbol] -= 1
            return
        fd = self._open(symbol)
        try:
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        yield False
                        return
                    time.sleep(self.POLL_S)
            self._depth[symbol] = 1
            try:
                yield True
            finally:
                if self._depth.pop(symbol) != 1:
                    raise RuntimeError(f"lock of {symbol} released out of order")
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def held_by_another(self, symbol: str) -> bool:
        """Whether another live process holds `symbol`'s lock now."""
        with self.hold(symbol) as mine:
            return not mine


_POSITION_LOCKS: dict[Path | str, PositionLocks] = {}


def position_locks(journal_path: Path) -> PositionLocks:
    """This process's position locks of the journal at `journal_path` (found by the path as given first: resolving
    it costs system calls on every order and every reconciliation)."""
    locks = _POSITION_LOCKS.get(journal_path)
    if locks is None:
        resolved = Path(journal_path).resolve()
        locks = _POSITION_LOCKS.get(resolved) or PositionLocks(resolved)
        _POSITION_LOCKS[resolved] = _POSITION_LOCKS[journal_path] = locks
    return locks


# The commands that run under a lock of their own: one of each at a time per journal. A second one exits 75 (cron
# tries again at its next slot); `tick` never starts one whose lock is held.
LOCKED_COMMANDS = ("scan", "monitor", "jobs", "rebalance", "reconcile", "tick")


def lock_path(journal_path: Path, command: str = "scan") -> Path:
    return journal_path.with_name(f"{journal_path.name}.{command}.lock")


def holder(journal_path: Path, command: str) -> str | None:
    """The pid holding `command`'s lock on this journal, or None when it is free (a read: the lock is not kept)."""
    path = lock_path(Path(journal_path), command)
    if not path.exists():
        return None
    with exclusive(path) as fd:
        if fd is not None:
            return None
    return path.read_text(errors="replace").strip() or "unknown"


@contextlib.contextmanager
def command_lock(journal_path: Path, command: str, error: type[CommandLocked] = CommandLocked) -> Iterator[Path]:
    """One `command` at a time per journal; the pid written inside is for the refusal message only."""
    if command not in LOCKED_COMMANDS:
        raise ValueError(f"no lock for command {command!r}")
    path = lock_path(Path(journal_path), command)
    with exclusive(path) as fd:
        if fd is None:
            pid = path.read_text(errors="replace").strip() or "unknown"
            raise error(f"another {command} is running on this journal (pid {pid}); skipped")
        pid = str(os.getpid()).encode()
        if os.pread(fd, len(pid) + 1, 0) != pid:  # a process running it again (a backtest) already wrote its pid
            os.ftruncate(fd, 0)
            os.pwrite(fd, pid, 0)
        yield path


def scan_lock(journal_path: Path) -> contextlib.AbstractContextManager[Path]:
    """One scan at a time per journal."""
    return command_lock(journal_path, "scan", ScanLocked)


@contextlib.contextmanager
def exclusive_within(path: Path, wait: float, poll: float = 0.05) -> Iterator[int | None]:
    """Like `exclusive`, but waits up to `wait` seconds for the holder to let go; None if it still holds the lock."""
    deadline = time.monotonic() + wait
    while True:
        with exclusive(path) as fd:
            if fd is not None or time.monotonic() >= deadline:
                yield fd
                return
        time.sleep(poll)

"""Process locks: exclusive, non-blocking fcntl locks on files beside the journal.

The kernel drops a lock when its holder exits for any reason (even SIGKILL), so a crashed command never leaves one
stuck. The scan lock keeps two scans of one journal from overlapping; alert delivery and the Telegram poll use the
same mechanism so that two overlapping runs never send the same thing twice.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

from errors import ScanLocked


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


def lock_path(journal_path: Path) -> Path:
    return journal_path.with_name(journal_path.name + ".scan.lock")


@contextlib.contextmanager
def scan_lock(journal_path: Path) -> Iterator[Path]:
    """One scan at a time per journal; the pid written inside is for the refusal message only."""
    path = lock_path(Path(journal_path))
    with exclusive(path) as fd:
        if fd is None:
            holder = path.read_text(errors="replace").strip() or "unknown"
            raise ScanLocked(f"another scan is running on this journal (pid {holder}); skipped")
        pid = str(os.getpid()).encode()
        if os.pread(fd, len(pid) + 1, 0) != pid:  # a process scanning again (a backtest) already wrote its pid
            os.ftruncate(fd, 0)
            os.pwrite(fd, pid, 0)
        yield path

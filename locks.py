"""The scan lock: one scan at a time per journal.

An exclusive, non-blocking fcntl lock on a file beside the journal. The kernel drops it when the holder exits for
any reason (even SIGKILL), so a crashed scan never leaves it stuck; the pid written inside is for the message only.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

from errors import ScanLocked


def lock_path(journal_path: Path) -> Path:
    return journal_path.with_name(journal_path.name + ".scan.lock")


@contextlib.contextmanager
def scan_lock(journal_path: Path) -> Iterator[Path]:
    path = lock_path(Path(journal_path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise ScanLocked(f"another scan is running on this journal (pid {holder}); skipped") from None
        pid = str(os.getpid()).encode()
        if os.pread(fd, len(pid) + 1, 0) != pid:  # a process scanning again (a backtest) already wrote its pid
            os.ftruncate(fd, 0)
            os.pwrite(fd, pid, 0)
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the lock

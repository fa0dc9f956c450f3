"""What a test run leaves in the checkout: the files git does not track (untracked or ignored: journals, logs, audit
CSVs, parsed-data caches, backups), before and after.

Tests write into temporary folders only (tests/conftest.py points the journal, logs and cache there when a test
names none); a file that appears here was written by a test that escaped them. Tool caches are left out. Only new
files count: in a fresh checkout (CI) every output is new, and in a working tree a command run by hand beside the
tests appends to logs/momentum.jsonl or a journal without making the run fail.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

TOOL_CACHES = frozenset({".git", "__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache"})

Snapshot = set[str]  # paths relative to the checkout


def snapshot(root: Path) -> Snapshot | None:
    """Every untracked or ignored file under `root`, or None when `root` is not a git checkout (an unpacked
    release: nothing to compare with)."""
    try:
        listed = subprocess.run(["git", "status", "--porcelain=v1", "-z", "--ignored=matching", "-uall"], cwd=root,
                                capture_output=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found: Snapshot = set()
    for entry in listed.decode("utf-8", errors="replace").split("\0"):
        if entry[:3] in ("?? ", "!! "):
            _add(root, entry[3:], found)
    return found


def _add(root: Path, relative: str, found: Snapshot) -> None:
    """The file, or every file under the folder (git names an ignored folder once), but the tool caches."""
    path = root / relative
    if TOOL_CACHES & set(Path(relative).parts):
        return
    if path.is_dir():
        for folder, subfolders, files in os.walk(path):
            subfolders[:] = [name for name in subfolders if name not in TOOL_CACHES]
            for name in files:
                _add_file(root, Path(folder) / name, found)
    else:
        _add_file(root, path, found)


def _add_file(root: Path, path: Path, found: Snapshot) -> None:
    if path.suffix != ".pyc":
        found.add(str(path.relative_to(root)))


def written(before: Snapshot, after: Snapshot) -> list[str]:
    """Files that appeared between the two snapshots, sorted."""
    return sorted(after - before)

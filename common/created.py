"""What a command creates in its output folder, so that a refused run can take exactly that back.

A backtest or a study refused after it started writing (dates the data cannot carry, a missing --models-from, a
cluster that does not answer) would otherwise leave a journal or research.db in --out, and the corrected command,
run into the same folder, would be refused again for finding it. Only what the run created goes: the folder itself
when the run created it, else the entries that were not in it before; never a file or folder that was there.
"""
from __future__ import annotations

import shutil
from pathlib import Path


class CreatedFiles:
    """Taken before the run writes anything into `folder`; remove() deletes what it has written since."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.existed = self.folder.exists()
        self.before = {entry.name for entry in self.folder.iterdir()} if self.folder.is_dir() else set()

    def remove(self) -> None:
        """Delete the folder when the run created it, else only the entries that appeared in it."""
        if not self.folder.is_dir() or self.folder.is_symlink():
            return
        if not self.existed:
            shutil.rmtree(self.folder, ignore_errors=True)
            return
        for entry in self.folder.iterdir():
            if entry.name in self.before:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)

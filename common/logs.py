"""Logging, configured once per process: JSON lines in LOG_DIR, secrets masked in every record."""
from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from pathlib import Path

from config import redact

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
_configured = False


class JsonLines(logging.Formatter):
    """One JSON object per line: time (UTC), level, logger, message, extra fields, traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")})
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return redact(json.dumps(entry, default=str))


class Redacting(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class LazyFile(logging.FileHandler):
    """A log file, its folder and the file itself created by the first record, so a command refused at its input
    (exit 2) leaves nothing behind. A folder that cannot be written is one warning on stderr and no file log: a
    read-only install must still trade, and the journal keeps its errors and alerts."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, encoding="utf-8", delay=True)

    def _open(self):
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()

    def emit(self, record: logging.LogRecord) -> None:
        if self.stream is None:
            try:
                self.stream = self._open()
            except OSError as err:
                print(f"warning: cannot write logs to {Path(self.baseFilename).parent} ({err.strerror})",
                      file=sys.stderr)
                logging.getLogger().removeHandler(self)
                return
        super().emit(record)


def configure_logging(log_dir: Path, level: str = "INFO", *, verbose: bool = False) -> Path | None:
    """Send records to logs/momentum.jsonl (and to stderr with --verbose). Safe to call twice."""
    global _configured
    if _configured:
        return None
    root = logging.getLogger()
    root.setLevel(level)
    path = Path(log_dir) / "momentum.jsonl"
    handler = LazyFile(path)
    handler.setFormatter(JsonLines())
    root.addHandler(handler)
    if verbose:
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(Redacting("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(console)
    for noisy in ("urllib3", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _configured = True
    return path

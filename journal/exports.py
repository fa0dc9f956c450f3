"""CSV out of the journal: full-table exports for spreadsheets, and the daily order/fill audit files in logs/.

Exports are written to a temporary file beside the target and moved into place, so a reader never sees half a file
and an interrupted export leaves the previous one intact.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable

from common.clock import NY, iso_utc
from common.errors import ConfigError

log = logging.getLogger(__name__)

EXPORTS = {"trades": "id", "candidates": "id", "exits": "id"}  # table: order of the rows
AUDIT_COLUMNS = ("time", "event", "client_order_id", "broker_order_id", "trade_id", "symbol", "side", "type", "qty",
                 "limit_price", "stop_price", "trail_percent", "purpose", "status", "filled_qty", "filled_avg_price",
                 "run_id", "extra")


def table_columns(db, table: str) -> list[str]:
    return [row[1] for row in db.execute(f"PRAGMA table_info({table})").fetchall()]


def _check_target(path: Path) -> None:
    if path.is_dir():
        raise ConfigError(f"--out {path} is a directory; give a file name such as {path / 'export.csv'}")
    if not path.parent.is_dir():
        raise ConfigError(f"--out {path}: directory {path.parent} does not exist")


def write_csv_atomically(path: Path, header: list[str], rows: Iterable[Iterable[Any]]) -> int:
    """Write header and rows to `path` through a temporary file in the same directory; returns the row count."""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    count = 0
    try:
        with os.fdopen(handle, "w", newline="", encoding="utf-8") as stream:
            writer = csv.writer(stream)
            writer.writerow(header)
            for row in rows:
                writer.writerow(row)
                count += 1
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return count


def export_csv(rt, what: str, path: str | Path) -> int:
    """Every column of every row of `what` (trades, candidates or exits) to a CSV file; returns the row count."""
    if what not in EXPORTS:
        raise ConfigError(f"export: unknown table {what!r} (one of {', '.join(EXPORTS)})")
    target = Path(path)
    _check_target(target)
    db = rt.journal.db
    columns = table_columns(db, what)
    cursor = db.execute(f"SELECT * FROM {what} ORDER BY {EXPORTS[what]}")
    count = write_csv_atomically(target, columns, cursor)
    log.info("export written", extra={"table": what, "rows": count, "path": str(target)})
    return count


def audit_path(log_dir: str | Path, moment: datetime) -> Path:
    """The audit file of the New York trading day of `moment`."""
    return Path(log_dir) / f"trades_{moment.astimezone(NY).date().isoformat()}.csv"


def _audit_values(row: dict[str, Any], moment: datetime) -> list[Any]:
    known = {key: row[key] for key in AUDIT_COLUMNS if key in row}
    extra = {key: value for key, value in row.items() if key not in AUDIT_COLUMNS}
    known.setdefault("time", iso_utc(moment))
    known["extra"] = json.dumps(extra, default=str, sort_keys=True) if extra else ""
    return ["" if known.get(key) is None else known.get(key) for key in AUDIT_COLUMNS]


def audit_append(log_dir: str | Path, row: dict[str, Any], moment: datetime) -> Path:
    """Append one order or fill event to logs/trades_YYYY-MM-DD.csv (header written when the file is created).

    Keys outside AUDIT_COLUMNS are kept as JSON in the `extra` column, so the header never changes within a file.
    Each row goes out in a single append, so rows written by processes running side by side never interleave.
    """
    path = audit_path(log_dir, moment)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        _create_with_header(path)
    line = _csv_line(_audit_values(row, moment))
    with open(path, "a", newline="", encoding="utf-8") as stream:
        stream.write(line)
    return path


def _create_with_header(path: Path) -> None:
    """Create the file already holding its header (link of a finished temporary file), so a writer in another
    process can never append a row to a file whose header is not there yet; the first creator wins."""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", newline="", encoding="utf-8") as stream:
            stream.write(_csv_line(list(AUDIT_COLUMNS)))
        os.link(temporary, path)
    except FileExistsError:
        pass
    finally:
        Path(temporary).unlink(missing_ok=True)


def _csv_line(values: list[Any]) -> str:
    import io

    buffer = io.StringIO()
    csv.writer(buffer).writerow(values)
    return buffer.getvalue()

"""Turns the data that commands return into text for a terminal (one place for formatting)."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Iterable, Sequence

from common.clock import NY


def money(value: float | None) -> str:
    return "-" if value is None else f"${value:,.2f}"


def pct(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:+.{digits}f}%"


def ny_time(moment: datetime | None) -> str:
    return "-" if moment is None else moment.astimezone(NY).strftime("%Y-%m-%d %H:%M %Z")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1 else f"{value:,.2f}"
    return str(value)


def table(rows: Sequence[dict], columns: Sequence[str], headers: Sequence[str] | None = None) -> str:
    """A plain aligned text table; numbers right-aligned."""
    headers = list(headers or columns)
    cells = [[_cell(row.get(col)) for col in columns] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    numeric = [all(isinstance(row.get(col), (int, float)) or row.get(col) is None for row in rows) and rows
               for col in columns]

    def line(values: Iterable[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "  ".join(parts).rstrip()

    out = [line(headers), line("-" * w for w in widths)]
    out.extend(line(r) for r in cells)
    return "\n".join(out)


def key_values(pairs: Sequence[tuple[str, Any]]) -> str:
    width = max(len(k) for k, _ in pairs)
    return "\n".join(f"{k.ljust(width)}  {_cell(v)}" for k, v in pairs)

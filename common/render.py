"""Turns the data that commands return into text for a terminal (one place for formatting).

One convention throughout:
- money is dollars with cents ($1,234.56, a loss -$3.20, a P&L in a sentence +$611.46); a share price in a sentence is
  money too (bought 10 sh @ $12.92), in a table a plain number under its header;
- a percentage is in percent units (1.5 is 1.5%) and is always printed with its % sign, signed when it is a change (a
  return, a P&L, a gap, a distance: +1.50%) and unsigned when it is a level (a share of equity or of a limit, a win
  rate, breadth: 41.0%); nothing has no sign (0.00%); a table's header names the figure and never carries the % sign;
- times are New York time with their zone (EDT/EST) unless marked UTC.
"""
from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Iterable, Sequence

from common.clock import NY


def money(value: float | None) -> str:
    """Dollars with cents, the sign in front: -$1,234.50."""
    if not _finite(value):
        return "-"
    shown = f"${abs(value):,.2f}"
    return f"-{shown}" if value < 0 and shown != "$0.00" else shown


def signed_money(value: float | None) -> str:
    """A P&L in a sentence, its sign always shown: +$611.46, -$3.20."""
    shown = money(value)
    return shown if shown in ("-", "$0.00") or shown.startswith("-") else f"+{shown}"


def pct(value: float | None, digits: int = 2) -> str:
    """A change in percent units, signed: 1.5 -> '+1.50%' (none, or one that rounds to none: '0.00%')."""
    return "-" if not _finite(value) else _zero_unsigned(f"{value:+.{digits}f}%")


def level(value: float | None, digits: int = 1) -> str:
    """A level in percent units, unsigned: 41 -> '41.0%'."""
    return "-" if not _finite(value) else _zero_unsigned(f"{value:.{digits}f}%")


class Pct(float):
    """A change in percent units that a table or key/value list prints signed with its % sign (see `pct`).

    It is a float, so JSON output and arithmetic see the plain number."""
    digits = 2

    def __str__(self) -> str:
        return pct(float(self), self.digits)


class Level(Pct):
    """A level in percent units that a table prints unsigned with its % sign (see `level`)."""
    digits = 1

    def __str__(self) -> str:
        return level(float(self), self.digits)


class Money(float):
    """An amount in dollars that a table prints as `money` does; a plain float to JSON."""

    def __str__(self) -> str:
        return money(float(self))


def as_money(value: float | None) -> Money | None:
    return Money(value) if _finite(value) else None


def as_pct(value: float | None, fraction: bool = False) -> Pct | None:
    """`value` (percent units, or a fraction with fraction=True) as a Pct; None when it is missing or not finite."""
    return Pct(value * 100 if fraction else value) if _finite(value) else None


def as_level(value: float | None, fraction: bool = False) -> Level | None:
    return Level(value * 100 if fraction else value) if _finite(value) else None


def _finite(value: Any) -> bool:
    return value is not None and not isinstance(value, bool) and math.isfinite(value)


def _zero_unsigned(shown: str) -> str:
    """Nothing has no sign: '+0.00%' and a loss that rounds to nothing, '-0.00%', are shown as '0.00%'."""
    return shown[1:] if shown[0] in "+-" and float(shown[1:-1]) == 0 else shown


def ny_time(moment: datetime | None) -> str:
    return "-" if moment is None else moment.astimezone(NY).strftime("%Y-%m-%d %H:%M %Z")


def ny_stamp(stamp: str | None) -> str:
    """A time the journal stores (ISO, UTC) in New York time; "-" when there is none."""
    return ny_time(datetime.fromisoformat(stamp)) if stamp else "-"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (Pct, Money)):
        return str(value)
    if isinstance(value, float):
        return f"{value:.3g}" if 0 < abs(value) < 0.01 else f"{value:,.2f}"  # two decimals unless that shows 0
    return str(value)


def table(rows: Sequence[dict], columns: Sequence[str], headers: Sequence[str] | None = None) -> str:
    """A plain aligned text table; numbers right-aligned."""
    cells = [[_cell(row.get(col)) for col in columns] for row in rows]
    numeric = [bool(rows) and all(isinstance(row.get(col), (int, float)) or row.get(col) is None for row in rows)
               for col in columns]
    return "\n".join(aligned(list(headers or columns), cells, numeric, rule=True))


def aligned(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool], *, indent: str = "",
            gap: int = 2, rule: bool = False) -> list[str]:
    """Lines of already formatted cells under their headers, each column as wide as its widest cell and
    right-aligned where `right` says; with `rule`, a line of dashes under the headers."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(values: Iterable[str]) -> str:
        parts = [v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right)]
        return (indent + (" " * gap).join(parts)).rstrip()

    return [line(headers)] + ([line("-" * w for w in widths)] if rule else []) + [line(r) for r in rows]


def key_values(pairs: Sequence[tuple[str, Any]]) -> str:
    width = max(len(k) for k, _ in pairs)
    return "\n".join(f"{k.ljust(width)}  {_cell(v)}" for k, v in pairs)

"""Current quotes for held symbols, cached in the journal for QUOTE_TTL_S seconds across processes.

The cache is keyed by the clock's time, so a simulated `--asof` never sees a quote from another moment.
"""
from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import numpy as np

from common.clock import iso_utc
from common.types import DAILY, Snapshot
from flows.prepared_history import market_snapshot

if TYPE_CHECKING:  # annotations only: the runtime module wires every port
    from flows.runtime import Runtime

QUOTE_TTL_S = 10.0
FIELDS = ("open", "high", "low", "price", "volume", "prev_close", "bid", "ask")


def _cached(journal, symbols: list[str], now: datetime, session: str) -> dict[str, dict] | None:
    if not symbols:
        return {}
    oldest = iso_utc(now - timedelta(seconds=QUOTE_TTL_S))
    marks = ",".join("?" * len(symbols))
    rows = journal.query(f"SELECT * FROM quote_cache WHERE symbol IN ({marks}) AND session = ? AND fetched_at >= ? "
                         "AND fetched_at <= ?", [*symbols, session, oldest, iso_utc(now)])
    found = {row["symbol"]: row for row in rows}
    return found if len(found) == len(symbols) else None


def current(rt: Runtime, symbols: list[str]) -> Snapshot:
    """The snapshot of `symbols` now: from the cache when every symbol is fresh, else one fetch for all."""
    now = rt.clock.now()
    session, fraction = rt.calendar.current_or_last_session(now)
    cached = _cached(rt.journal, symbols, now, str(session.day))
    if cached is not None:
        arrays = {name: np.array([float(cached[s][name]) if cached[s][name] is not None else np.nan
                                  for s in symbols]) for name in FIELDS}
        return Snapshot(session.day, float(cached[symbols[0]]["fraction"]) if symbols else fraction, list(symbols),
                        **arrays, view=cached[symbols[0]]["view"] if symbols else DAILY)
    snap = market_snapshot(rt, symbols, session.day, fraction)
    stamp = iso_utc(now)
    columns = {name: [_plain(value) for value in np.asarray(getattr(snap, name)).tolist()] for name in FIELDS}
    rows = [{"symbol": s, "session": str(session.day), "fraction": fraction, "fetched_at": stamp, "view": snap.view,
             **{name: columns[name][i] for name in FIELDS}} for i, s in enumerate(snap.symbols)]
    rt.journal.upsert_rows("quote_cache", rows, "symbol")  # one transaction
    return snap


def _plain(value) -> float | None:
    number = float(value)
    return number if math.isfinite(number) else None

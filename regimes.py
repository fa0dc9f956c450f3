"""The regime as the trading loop sees it: the label of the last COMPLETED session, stored per day in `regimes`.

An intraday scan must not use today's close, so it uses the previous session's label; after the close (and in the
`regime` command) the day itself is complete. Labels are computed once per day and kept in the journal; the
regime model is online, so a stored label never changes when later data arrives.
"""
from __future__ import annotations

import json
import logging
from datetime import date, timedelta

from errors import DataError

log = logging.getLogger(__name__)
HISTORY_YEARS = 12  # the model refits on a rolling 10-year window; z-scores expand from the series start


def completed_session(rt) -> date:
    """The latest session whose close is at or before now."""
    now = rt.clock.now()
    session, fraction = rt.calendar.current_or_last_session(now)
    if session.close <= now:
        return session.day
    return rt.calendar.previous_session(session.day)


def series_start(market, day: date) -> date:
    """Where the SPY history starts. It must not move from day to day: the z-scores expand from it."""
    first = getattr(market, "market_first_date", None)
    return first if first is not None else day - timedelta(days=365 * HISTORY_YEARS)


def regime_on(rt, day: date) -> dict | None:
    """The stored or newly computed regime row for `day`, or None when no SPY history is available."""
    stored = rt.journal.one("SELECT * FROM regimes WHERE date = ?", [str(day)])
    if stored:
        return {**stored, "features": json.loads(stored["features"] or "{}"),
                "params": json.loads(stored["params"] or "{}")}
    import regime

    try:
        start = series_start(rt.market, day)
        series = rt.market.market_series(start, day)
        row = regime.regime_for_day(series, day)
    except DataError as err:
        log.warning("no regime for %s: %s", day, err)
        return None
    record = {"date": str(day), "regime": row["regime"], "factor": row["factor"], "reason": row["reason"],
              "crash_override": int(bool(row["crash_override"])), "features": json.dumps(row["features"]),
              "params": json.dumps(row["params"]), "created_at": rt.journal.now()}
    with rt.journal.atomic():
        rt.journal.db.table("regimes").insert(record, replace=True)
    return {**record, "features": row["features"], "params": row["params"]}


def for_trading(rt, session_day: date) -> dict | None:
    """The regime a scan on `session_day` may use: the label of the session before it.

    None when the runtime's regime filter is off (a backtest comparison run): no label, allocation factor 1.
    """
    if not getattr(rt, "regime_filter", True):
        return None
    return regime_on(rt, rt.calendar.previous_session(session_day))

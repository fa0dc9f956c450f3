"""The regime as the trading loop sees it: the label of the last COMPLETED session, stored per day in `regimes`.

An intraday scan must not use today's close, so it uses the previous session's label; after the close (and in the
`regime` command) the day itself is complete. Labels are computed once per day and kept in the journal; the
regime model is online, so a stored label never changes when later data arrives. A stored label made by another
model version or another CRASH rule (REGIME_CRASH_RULE) is recomputed under the settings in force and replaced.

A label is made only from a series that has the day's own SPY and VIX closes: one carried over from an earlier day
is stale, and one without the day's VIX could never see the spike that makes it CRASH. Trading with the regime
filter on needs the label (`for_trading` raises DataError naming what is missing); only a backtest comparison run
switches the filter off on purpose.

SPY and VIX come from the market port's `market_series`: a named market file (--market) with the csv and sim
sources (ports/market_factory.py).
"""
from __future__ import annotations

import json
import logging
from datetime import date, timedelta

import numpy as np
import pandas as pd

from common.errors import DataError
from core.regime import classify

log = logging.getLogger(__name__)
HISTORY_YEARS = 12  # the model refits on a rolling 10-year window; z-scores expand from the series start


def settings(rt) -> classify.Settings:
    """The model's settings under the run's configuration (REGIME_CRASH_RULE)."""
    config = getattr(rt, "config", None)
    rule = getattr(config, "regime_crash_rule", None) or classify.CRASH_RULE
    return classify.Settings(crash_rule=rule)


def series_start(market, day: date) -> date:
    """Where the SPY history starts. It must not move from day to day: the z-scores expand from it."""
    first = getattr(market, "market_first_date", None)
    return first if first is not None else day - timedelta(days=365 * HISTORY_YEARS)


def regime_on(rt, day: date) -> dict | None:
    """The stored or newly computed regime row for `day`, or None when the SPY/VIX series cannot label it."""
    try:
        return required_regime(rt, day)
    except DataError as err:
        log.warning("no regime for %s: %s", day, err)
        return None


def _current(params: dict, wanted: classify.Settings) -> bool:
    """Was a stored label made by this model version under this CRASH rule?"""
    return params.get("version") == classify.MODEL_VERSION and params.get("crash_rule") == wanted.crash_rule


def required_regime(rt, day: date) -> dict:
    """The stored or newly computed regime row for `day`; DataError naming the missing series when there is none."""
    wanted = settings(rt)
    stored = rt.journal.one("SELECT * FROM regimes WHERE date = ?", [str(day)])
    params = json.loads(stored["params"] or "{}") if stored else {}
    if stored and _current(params, wanted):
        features = json.loads(stored["features"] or "{}")
        if features.get("vix_close") is None:
            raise DataError(f"the stored regime of {day} was labelled without a VIX close")
        return {**stored, "features": features, "params": params}

    source = rt.market
    series = source.market_series(series_start(source, day), day)
    require_closes(series, day, source_name(source))
    row = classify.regime_for_day(series, day, wanted)
    record = {"date": str(day), "regime": row["regime"], "factor": row["factor"], "reason": row["reason"],
              "crash_override": int(bool(row["crash_override"])), "features": json.dumps(row["features"]),
              "params": json.dumps(row["params"]), "created_at": rt.journal.now()}
    with rt.journal.atomic():
        rt.journal.db.table("regimes").insert(record, replace=True)
    return {**record, "features": row["features"], "params": row["params"]}


def history(rt, start: date | None, end: date) -> pd.DataFrame:
    """The online label of every session from `start` (default: the series' first day) to `end`, from one pass of
    the model over the series (each row uses data up to its own day only), with SPY's close beside it. Nothing is
    stored. DataError when the series has no session in the window."""
    source = rt.market
    series = source.market_series(series_start(source, start or end), end)
    if (series.loc[pd.Timestamp(start):] if start else series).empty:
        raise DataError(f"no SPY/VIX sessions from {start or 'the start'} to {end} in {source_name(source)}")
    rows = classify.compute_regimes(series, start, end, settings(rt))
    return rows.assign(spy_close=series["spy_close"].reindex(rows.index))


def require_closes(series: pd.DataFrame, day: date, source: str) -> None:
    """DataError naming SPY or VIX when `series` has no positive close of it on `day` itself."""
    on_day = series[pd.DatetimeIndex(series.index).normalize() == pd.Timestamp(day)] if len(series) else series
    for name, column in (("SPY", "spy_close"), ("VIX", "vix_close")):
        closes = on_day[column].to_numpy(dtype=float) if column in on_day.columns else np.zeros(0)
        if not (closes > 0).any():
            raise DataError(f"no {name} close for {day} in {source}")


def source_name(market) -> str:
    """Where the SPY/VIX series comes from, for messages: the market file, else the port's name."""
    path = getattr(market, "market_path", None)
    if path is not None:
        return str(path)
    name = getattr(market, "name", "market")
    return "Alpaca's SPY and VIXY bars (VIXY stands in for VIX)" if name == "alpaca" else f"the {name} SPY/VIX series"


def for_trading(rt, session_day: date) -> dict | None:
    """The regime a scan on `session_day` may use: the label of the session before it.

    None when the runtime's regime filter is off (a backtest comparison run): no label, allocation factor 1. With
    the filter on, a missing label raises DataError naming the missing series: without it neither the CRASH block
    nor the allocation factor can be applied, so nothing may be bought.
    """
    if not getattr(rt, "regime_filter", True):
        return None
    return required_regime(rt, rt.calendar.previous_session(session_day))

"""The learned ranking's life in the journal: fit a model from the recorded candidates, keep it versioned in the
`models` table, give each scan the model it may use, and measure it walk-forward.

Point-in-time discipline: a model fitted until DATE learned from candidates scanned up to DATE, whose outcomes were
measured up to HORIZON sessions later; so it is usable only from the HORIZON-th session after DATE (`usable_from`),
and a scan takes the newest model usable on its session. `check_point_in_time` refuses any other use (a model
from the future is a leak, not a feature), and the scan runs it on every model it is given.
"""
from __future__ import annotations

import json
import logging
import pickle
from dataclasses import dataclass
from datetime import date
from typing import Any

import numpy as np
import pandas as pd

from common.errors import ConfigError, MomentumError
from core import learned_ranking as lr
from flows.runtime import Runtime

log = logging.getLogger(__name__)

RANKINGS = ("score", "learned")
CANDIDATE_COLUMNS = ("session", "cap", "symbol", "price", *lr.NUMERIC, "atr_14", "sma20", "sma50", *lr.FLAGS,
                     f"price_{lr.HORIZON}d")


class NotEnoughCandidates(ConfigError):
    """Too few labelled candidates to fit anything but noise."""


class LookAheadLeak(MomentumError):
    """A model would be used before its labels were all knowable."""


@dataclass(frozen=True)
class Model:
    version: int
    fitted_until: date
    usable_from: date
    features: tuple[str, ...]
    estimator: Any
    validation: dict[str, Any]

    def predict(self, x: pd.DataFrame) -> np.ndarray:
        return self.estimator.predict(x[list(self.features)])


def labelled_candidates(source, until: date, since: date | None = None) -> pd.DataFrame:
    """Stage-1 candidates scanned from `since` to `until` whose forward return is recorded, from a Runtime's journal
    or from another journal's file (a backtest's)."""
    import sqlite3
    from pathlib import Path

    sql = (f"SELECT {', '.join(CANDIDATE_COLUMNS)} FROM candidates WHERE stage1 = 1 AND session <= ? AND session >= ? "
           f"AND price_{lr.HORIZON}d IS NOT NULL AND price > 0 ORDER BY session, id")
    params = [until.isoformat(), (since or date.min).isoformat()]
    if isinstance(source, (str, Path)):
        if not Path(source).is_file():
            raise ConfigError(f"--from: no such journal {source}")
        try:
            with sqlite3.connect(f"file:{source}?mode=ro", uri=True) as db:
                rows = db.execute(sql, params).fetchall()
        except sqlite3.DatabaseError as err:
            raise ConfigError(f"--from {source}: not a journal with candidates ({err})") from None
        return pd.DataFrame(rows, columns=list(CANDIDATE_COLUMNS))
    return pd.DataFrame(source.journal.query(sql, params), columns=list(CANDIDATE_COLUMNS))


def usable_from(rt: Runtime, until: date) -> date:
    """The first session on which every label a model fitted until `until` used was knowable."""
    day = until
    for _ in range(lr.HORIZON):
        day = rt.calendar.next_session(day)
    return day


def fit_model(rt: Runtime, until: date, *, since: date | None = None, source: str | None = None,
              store: bool = True) -> dict[str, Any]:
    """Fit on the labelled candidates up to `until` (of this journal, or of the journal file `source`) and store the
    model as the next version (unless `store` is False); its row."""
    import sklearn

    rows = labelled_candidates(source or rt, until, since)
    if len(rows) < lr.MIN_LABELLED:
        raise NotEnoughCandidates(
            f"learn fit: {len(rows)} labelled candidates up to {until}, at least {lr.MIN_LABELLED} are needed (run "
            f"scans and the nightly update-outcomes job, or a backtest, to record more)")
    fitted = lr.fit(lr.features(rows), lr.target(rows), rows["session"], pd.to_numeric(rows["score"]))
    row = {"created_at": rt.journal.now(), "kind": "HistGradientBoostingRegressor", "target": lr.TARGET,
           "fitted_until": until.isoformat(), "usable_from": usable_from(rt, until).isoformat(),
           "horizon": lr.HORIZON, "features": json.dumps(list(fitted.features)),
           "train_start": str(rows["session"].iloc[0]), "train_end": str(rows["session"].iloc[-1]),
           "rows": fitted.rows, "validation": json.dumps(fitted.validation),
           "library": f"scikit-learn {sklearn.__version__}", "model": pickle.dumps(fitted.model),
           "source": str(source) if source else None}
    if not store:
        return row
    row["version"] = rt.journal.insert_row("models", row)
    log.info("model fitted", extra={"version": row["version"], "rows": fitted.rows, "until": str(until)})
    return row


def models(rt: Runtime) -> list[dict]:
    return rt.journal.query("SELECT version, created_at, fitted_until, usable_from, horizon, train_start, train_end, "
                            "rows, validation, library, source FROM models ORDER BY version")


_LOADED: dict[tuple[str, int], Model] = {}


def active_model(rt: Runtime, session: date) -> Model | None:
    """The newest model usable on `session` (None when there is none)."""
    row = rt.journal.one("SELECT version FROM models WHERE usable_from <= ? ORDER BY version DESC LIMIT 1",
                         [session.isoformat()])
    return load(rt, row["version"]) if row else None


def load(rt: Runtime, version: int) -> Model:
    key = (str(rt.journal.path), version)
    if key not in _LOADED:
        row = rt.journal.one("SELECT * FROM models WHERE version = ?", [version])
        if row is None:
            raise ConfigError(f"learn: no model version {version} in {rt.journal.path}")
        _LOADED[key] = Model(row["version"], date.fromisoformat(row["fitted_until"]),
                             date.fromisoformat(row["usable_from"]), tuple(json.loads(row["features"])),
                             pickle.loads(row["model"]), json.loads(row["validation"]))
    return _LOADED[key]


def check_point_in_time(rt: Runtime, model: Model, session: date) -> None:
    """Refuse a model on a session before all of its labels were knowable."""
    if model.usable_from > session or usable_from(rt, model.fitted_until) > session:
        raise LookAheadLeak(f"model version {model.version} (fitted until {model.fitted_until}, usable from "
                            f"{model.usable_from}) may not rank the candidates of {session}: its labels were not "
                            "all known by then")


def learned_figures(rt: Runtime, frame: pd.DataFrame, cap: str, session: date,
                    model: Model | None = None) -> tuple[pd.Series, int | None]:
    """The active model's figure (predicted forward return) for each stage-1 row of a scan frame, NaN elsewhere,
    and the model's version (None, with all NaN, when no model is usable on `session`)."""
    figures = pd.Series(np.nan, index=frame.index, dtype=float)
    model = model or active_model(rt, session)
    if model is None:
        return figures, None
    check_point_in_time(rt, model, session)
    stage1 = frame["stage1"].to_numpy(dtype=bool)
    if stage1.any():
        rows = frame[stage1]
        figures[stage1] = model.predict(lr.features(rows, cap))
    return figures, model.version


# --- portable model files (a backtest's journal starts empty) -------------------------------------------------------

MODEL_COLUMNS = ("version", "created_at", "kind", "target", "fitted_until", "usable_from", "horizon", "features",
                 "train_start", "train_end", "rows", "validation", "library", "model", "source")


def write_model_file(path, rows: list[dict]) -> None:
    """Model rows into a small SQLite file of their own (a `models` table), for `backtest --models-from`."""
    import sqlite3

    with sqlite3.connect(path) as db:
        db.execute(f"CREATE TABLE IF NOT EXISTS models ({', '.join(MODEL_COLUMNS)})")
        db.executemany(f"INSERT INTO models VALUES ({', '.join('?' * len(MODEL_COLUMNS))})",
                       [[row.get(name) for name in MODEL_COLUMNS] for row in rows])


def import_models(rt: Runtime, path) -> int:
    """Copy the models of a journal or model file into this journal (keeping their versions and dates); how many."""
    import sqlite3
    from pathlib import Path

    source = Path(path)
    if not source.is_file():
        raise ConfigError(f"--models-from: no such file {source}")
    try:
        with sqlite3.connect(f"file:{source}?mode=ro", uri=True) as db:
            rows = db.execute(f"SELECT {', '.join(MODEL_COLUMNS)} FROM models ORDER BY version").fetchall()
    except sqlite3.DatabaseError as err:
        raise ConfigError(f"--models-from {source}: not a journal or model file ({err})") from None
    rt.journal.insert_rows("models", [dict(zip(MODEL_COLUMNS, row)) for row in rows])
    return len(rows)


def signal_effects(rt: Runtime, start: date, end: date) -> dict[str, Any] | None:
    """How the model active at `end` weighs each entry signal on the candidates scanned start..end: for every flag,
    the mean learned figure of candidates with it minus those without. A negative effect is a signal the model now
    distrusts (the poor-signal loop in numbers). None without a model or candidates."""
    model = active_model(rt, end)
    if model is None:
        return None
    check_point_in_time(rt, model, end)
    rows = rt.journal.query(
        f"SELECT {', '.join(c for c in CANDIDATE_COLUMNS if c != f'price_{lr.HORIZON}d')} FROM candidates "
        "WHERE stage1 = 1 AND session >= ? AND session <= ? AND price > 0", [start.isoformat(), end.isoformat()])
    if not rows:
        return None
    frame = pd.DataFrame(rows)
    x = lr.features(frame)
    figure = model.predict(x)
    effects = []
    for flag in lr.FLAGS:
        on = x[flag].to_numpy() == 1
        if on.any() and (~on).any():
            effects.append({"signal": flag, "with": int(on.sum()), "effect": float(figure[on].mean()
                                                                                  - figure[~on].mean())})
    return {"version": model.version, "candidates": len(frame),
            "distrusted": sorted((e for e in effects if e["effect"] < 0), key=lambda e: e["effect"]),
            "trusted": sorted((e for e in effects if e["effect"] >= 0), key=lambda e: -e["effect"])}

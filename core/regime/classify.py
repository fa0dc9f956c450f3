"""Market regime (ATLAS) from SPY and VIX daily series: TREND_BULL / TREND_NEUTRAL / TREND_BEAR / CRASH.

How a day's label is made (every step uses rows up to and including that day only):

1. Features of SPY daily log returns: log EWM downside deviation (half-lives 10 and 20 sessions) and EWM Sortino
   ratios (half-lives 10, 20 and 60). The first `FEATURE_WARMUP_DAYS` returns only seed the averages: a Sortino ratio
   over a handful of returns is huge and would dominate the standardisation for ever after.
2. Each feature is standardised with an EXPANDING mean and standard deviation (from `STANDARDISE_MIN_DAYS` on) and
   clipped to +-`Z_CLIP`, so no later data ever enters a past z-score.
3. A two-state statistical jump model (`core/regime/jump_model.py`) is refitted on the first trading day of every month
   on
   the last `FIT_WINDOW_DAYS` standardised rows (or all there are, from `MIN_FIT_ROWS` on). The state with the higher
   mean SPY return in the window is the bull state. Between refits the day's state comes from ONLINE inference: the
   end state of the cheapest state path over the window's rows and the days since, none after the day itself.
4. Mapping: bull state -> TREND_BULL; bear state -> TREND_BEAR, unless the 20-session downside deviation z-score
   is already back below `NEUTRAL_DD_Z` (the storm has passed but the model has not turned bull yet), then
   TREND_NEUTRAL. Before any fit, see the fallback below.
5. CRASH override, from VIX alone: VIX close up >= 20% on the previous close, or >= 50% on the close three sessions
   earlier, starts it. It ends on the first close at least `CRASH_MIN_SESSIONS` sessions after the latest trigger at
   which VIX is back within `CRASH_EXIT_MARGIN` of its pre-spike close, and in any case `CRASH_MAX_SESSIONS`
   sessions after the latest trigger (a lasting sell-off is the bear state's job, not the override's). A new trigger
   while active restarts the count and keeps the first pre-spike level.

Short histories (e.g. a synthetic SPY starting a couple of years ago): before a model can be fitted the day is
labelled by a documented fallback rule (`_fallback_state`): the sign of the 60-session EWM return, TREND_NEUTRAL
when there are fewer than `MIN_RAW_DAYS` returns; `reason` says so.

How the penalty and the threshold were chosen (reproduce with `python bench/regime_study.py`):
`JUMP_PENALTY` is the penalty from `PENALTY_GRID` whose online bull/bear signal gave the best Sharpe ratio of a 0/1
SPY strategy (long in the bull state, cash in the bear state, signal traded the next session, cash earning nothing)
over `SELECTION_PERIOD` (1995-2006); 2007-2018 stays out of sample. With the penalty fixed, `NEUTRAL_DD_Z` is the
value from `NEUTRAL_GRID` (None: the model never says NEUTRAL) with the best Sharpe of the allocation-factor strategy
(position = the day's factor, traded the next session) over the same period. On the 1993-2018 file this gave
penalty 50 (Sharpe 0.84 in 1995-2006, 0.73 in 2007-2018) and NEUTRAL_DD_Z 0.0.

Known limit: the standardisation and the first fits rest on the unusually calm 1993-1996, so the choppier late
1990s read as the bear state (1997-2002 is almost all TREND_BEAR); with a fuller history the states track sell-offs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date

import numpy as np
import pandas as pd

from common.errors import DataError
from core.regime.jump_model import JumpFit, fit_jump_model, loss_difference, online_margin

FACTORS = {"TREND_BULL": 1.0, "TREND_NEUTRAL": 0.7, "TREND_BEAR": 0.3, "CRASH": 0.0}

DD_HALF_LIVES = (10, 20)
SORTINO_HALF_LIVES = (10, 20, 60)
FEATURES = tuple(f"dd_log_{hl}" for hl in DD_HALF_LIVES) + tuple(f"sortino_{hl}" for hl in SORTINO_HALF_LIVES)
DD_FLOOR = 0.01  # annualised; keeps log and ratio finite after a run of up days
FEATURE_WARMUP_DAYS = 63
STANDARDISE_MIN_DAYS = 126
Z_CLIP = 3.0
MIN_RAW_DAYS = 20

FIT_WINDOW_DAYS = 2520  # ten years of sessions
MIN_FIT_ROWS = 252
PENALTY_GRID = (5.0, 10.0, 20.0, 30.0, 50.0, 75.0, 100.0, 150.0)
NEUTRAL_GRID = (None, 1.0, 0.5, 0.0, -0.5, -1.0)
SELECTION_PERIOD = (date(1995, 1, 1), date(2006, 12, 31))
JUMP_PENALTY = 50.0
NEUTRAL_DD_Z: float | None = 0.0

VIX_ONE_DAY_JUMP = 0.20
VIX_THREE_DAY_JUMP = 0.50
CRASH_MIN_SESSIONS = 2
CRASH_MAX_SESSIONS = 10
CRASH_EXIT_MARGIN = 0.10

REQUIRED_COLUMNS = ("spy_close", "vix_close")


@dataclass(frozen=True)
class Settings:
    """The tunable numbers in one place, so the study can evaluate alternatives through the same code."""

    penalty: float = JUMP_PENALTY
    neutral_dd_z: float | None = NEUTRAL_DD_Z


# ---------------------------------------------------------------- features

def _log_returns(series: pd.DataFrame) -> pd.Series:
    """Daily SPY log returns; a missing or non-positive close counts as no move (the next close catches up)."""
    close = series["spy_close"].where(series["spy_close"] > 0).ffill()
    return np.log(close).diff().fillna(0.0).iloc[1:]


def raw_features(series: pd.DataFrame) -> pd.DataFrame:
    """EWM downside deviations (log, annualised) and Sortino ratios of SPY, one row per day from the second day."""
    returns = _log_returns(series)
    downside_sq = np.minimum(returns, 0.0) ** 2
    columns: dict[str, pd.Series] = {}
    for hl in sorted(set(DD_HALF_LIVES) | set(SORTINO_HALF_LIVES)):
        downside = np.maximum(np.sqrt(downside_sq.ewm(halflife=hl).mean() * 252.0), DD_FLOOR)
        if hl in DD_HALF_LIVES:
            columns[f"dd_log_{hl}"] = np.log(downside)
        if hl in SORTINO_HALF_LIVES:
            columns[f"sortino_{hl}"] = returns.ewm(halflife=hl).mean() * 252.0 / downside
    return pd.DataFrame(columns, index=returns.index)[list(FEATURES)]


def standardise(features: pd.DataFrame) -> pd.DataFrame:
    """Expanding-window z-scores clipped to +-Z_CLIP; NaN until enough history (warm-up rows excluded)."""
    usable = features.iloc[FEATURE_WARMUP_DAYS:]
    mean = usable.expanding(STANDARDISE_MIN_DAYS).mean()
    std = usable.expanding(STANDARDISE_MIN_DAYS).std()
    z = ((usable - mean) / std.where(std > 0)).clip(-Z_CLIP, Z_CLIP)
    return z.reindex(features.index)


# ---------------------------------------------------------------- CRASH override

def vix_override(vix_close: pd.Series) -> pd.DataFrame:
    """CRASH override state per day: active flag, trigger flag, pre-spike level and sessions since the trigger."""
    vix = vix_close.where(vix_close > 0)
    filled = vix.ffill().to_numpy(dtype=float)
    present = vix.notna().to_numpy()
    active_out, trigger_out = np.zeros(len(vix), bool), np.zeros(len(vix), bool)
    reference_out, since_out = np.full(len(vix), np.nan), np.full(len(vix), -1)
    active, reference, last_trigger = False, math.nan, -1
    for i in range(len(filled)):
        base = _spike_base(filled, i) if present[i] else None
        if base is not None:
            reference = min(reference, base) if active else base
            active, last_trigger = True, i
            trigger_out[i] = True
        elif active:
            since = i - last_trigger
            calm = present[i] and filled[i] <= reference * (1.0 + CRASH_EXIT_MARGIN)
            if since >= CRASH_MAX_SESSIONS or (since >= CRASH_MIN_SESSIONS and calm):
                active = False
        active_out[i] = active
        reference_out[i] = reference if active else math.nan
        since_out[i] = i - last_trigger if active else -1
    return pd.DataFrame({"active": active_out, "trigger": trigger_out, "reference": reference_out,
                         "sessions_since_trigger": since_out}, index=vix_close.index)


def _spike_base(filled: np.ndarray, i: int) -> float | None:
    """The pre-spike VIX level when day i triggers the override, else None."""
    bases = []
    if i >= 1 and filled[i] >= filled[i - 1] * (1.0 + VIX_ONE_DAY_JUMP):
        bases.append(filled[i - 1])
    if i >= 3 and filled[i] >= filled[i - 3] * (1.0 + VIX_THREE_DAY_JUMP):
        bases.append(filled[i - 3])
    return min(bases) if bases else None


# ---------------------------------------------------------------- jump model schedule

@dataclass(frozen=True)
class FittedModel:
    """One refit: the jump model fitted on a window ending at `refit_day`, with its bull state identified."""

    refit_position: int  # row of the refit day among the standardised rows
    window_start: int  # first row of the fit window among the standardised rows
    fit: JumpFit
    bull_state: int
    state_returns: tuple[float, float]  # annualised mean SPY log return of states 0 and 1 in the window


def refit_positions(days: pd.DatetimeIndex) -> np.ndarray:
    """Rows (of the standardised rows `days`) on which the model is refitted: first session of each month, once
    at least MIN_FIT_ROWS rows exist."""
    if len(days) == 0:
        return np.zeros(0, dtype=int)
    month = days.year * 12 + days.month
    first_of_month = np.r_[True, month[1:] != month[:-1]]
    positions = np.flatnonzero(first_of_month)
    return positions[positions >= MIN_FIT_ROWS - 1]


def fit_at(z_values: np.ndarray, returns: np.ndarray, position: int, penalty: float) -> FittedModel:
    """Fit on the FIT_WINDOW_DAYS rows ending at `position` (inclusive) and name the bull state."""
    start = max(0, position - FIT_WINDOW_DAYS + 1)
    window = z_values[start:position + 1]
    fit = fit_jump_model(window, penalty)
    window_returns = returns[start:position + 1]
    means = [float(window_returns[fit.labels == s].mean()) * 252.0 if (fit.labels == s).any() else math.nan
             for s in (0, 1)]
    if not any(math.isnan(m) for m in means) and means[0] != means[1]:
        bull = int(means[1] > means[0])
    else:  # one state never occurred in the window: the centroid with the better 20-day Sortino is the bull
        column = FEATURES.index("sortino_20")
        bull = int(fit.centers[1, column] > fit.centers[0, column])
    return FittedModel(position, start, fit, bull, (means[0], means[1]))


def online_states(z_values: np.ndarray, model: FittedModel, last: int) -> tuple[np.ndarray, np.ndarray]:
    """Bull flags and margins for rows model.refit_position..last, each from rows window_start..that row only."""
    rows = z_values[model.window_start:last + 1]
    margin = online_margin(loss_difference(rows, model.fit.centers), model.fit.penalty)
    state = (margin < 0).astype(int)
    offset = model.refit_position - model.window_start
    return state[offset:] == model.bull_state, margin[offset:]


# ---------------------------------------------------------------- one pass over the requested days

@dataclass(frozen=True)
class _Prepared:
    """Everything derived from the series that every day's label reads."""

    days: pd.DatetimeIndex
    raw: pd.DataFrame  # raw features per day (NaN on the first day)
    z: pd.DataFrame  # standardised features per day (NaN before enough history)
    returns: pd.Series
    crash: pd.DataFrame
    vix: pd.Series
    vix_filled: np.ndarray
    valid_days: pd.DatetimeIndex  # days with a full standardised feature row (the model's rows)


def _validated(series: pd.DataFrame) -> pd.DataFrame:
    if not isinstance(series.index, pd.DatetimeIndex):
        raise DataError("market series must be indexed by a DatetimeIndex of trading days")
    missing = [c for c in REQUIRED_COLUMNS if c not in series.columns]
    if missing:
        raise DataError(f"market series lacks column(s) {', '.join(missing)}")
    series = series[~series.index.duplicated(keep="last")].sort_index()
    if series.empty or not (series["spy_close"] > 0).any():
        raise DataError("market series has no usable SPY close")
    return series


def _prepare(series: pd.DataFrame) -> _Prepared:
    series = _validated(series)
    raw = raw_features(series)
    z = standardise(raw)
    returns = _log_returns(series)
    z = z.reindex(series.index)
    vix = series["vix_close"].astype(float)
    return _Prepared(series.index, raw.reindex(series.index), z, returns.reindex(series.index), vix_override(vix),
                     vix, vix.where(vix > 0).ffill().to_numpy(), series.index[z.notna().all(axis=1).to_numpy()])


ModelState = tuple[bool, float, FittedModel]  # bull flag, margin (D_t), the model in force


def _model_states(prepared: _Prepared, wanted: np.ndarray, settings: Settings) -> dict[int, ModelState]:
    """Jump-model bull flag, margin and model for each wanted day index that has a fitted model in force."""
    valid = np.flatnonzero(prepared.days.isin(prepared.valid_days))
    z_values = prepared.z.to_numpy()[valid]
    returns = prepared.returns.to_numpy()[valid]
    refits = refit_positions(prepared.valid_days)
    position_of = {day_index: p for p, day_index in enumerate(valid)}
    groups: dict[int, list[tuple[int, int]]] = {}
    for day_index in wanted:
        p = position_of.get(int(day_index))
        slot = int(np.searchsorted(refits, p, side="right")) - 1 if p is not None else -1
        if slot >= 0:
            groups.setdefault(slot, []).append((int(day_index), p))
    states: dict[int, ModelState] = {}
    for slot, members in groups.items():
        model = fit_at(z_values, returns, int(refits[slot]), settings.penalty)
        bull, margin = online_states(z_values, model, max(p for _, p in members))
        for day_index, p in members:
            offset = p - model.refit_position
            states[day_index] = (bool(bull[offset]), float(margin[offset]), model)
    return states


# ---------------------------------------------------------------- mapping and the row for one day

def trend_regime(bull: bool | None, dd_20_z: float, settings: Settings) -> str:
    """The documented mapping of the model's state (None: no opinion) to a trend regime."""
    if bull is None:
        return "TREND_NEUTRAL"
    if bull:
        return "TREND_BULL"
    threshold = settings.neutral_dd_z
    if threshold is not None and math.isfinite(dd_20_z) and dd_20_z < threshold:
        return "TREND_NEUTRAL"
    return "TREND_BEAR"


def _fallback_state(raw: pd.Series, returns_seen: int) -> bool | None:
    """Before any model fit: bull when the 60-session EWM return is positive; no opinion on under MIN_RAW_DAYS."""
    if returns_seen < MIN_RAW_DAYS or not math.isfinite(raw["sortino_60"]):
        return None
    return bool(raw["sortino_60"] > 0)


def _json_number(value: float, digits: int = 4) -> float | None:
    return round(float(value), digits) if value is not None and math.isfinite(value) else None


def _features_dict(prepared: _Prepared, i: int) -> dict:
    vix = prepared.vix_filled
    change = {lag: vix[i] / vix[i - lag] - 1.0 if i >= lag and vix[i - lag] > 0 else math.nan for lag in (1, 3)}
    raw, z = prepared.raw.iloc[i], prepared.z.iloc[i]
    return {"vix_close": _json_number(prepared.vix.iloc[i], 2),
            "vix_change_1d": _json_number(change[1]), "vix_change_3d": _json_number(change[3]),
            **{name: _json_number(raw[name]) for name in FEATURES},
            **{f"z_{name}": _json_number(z[name]) for name in FEATURES}}


def _thresholds(settings: Settings) -> dict:
    return {"neutral_dd_20_z": settings.neutral_dd_z, "vix_one_day_jump": VIX_ONE_DAY_JUMP,
            "vix_three_day_jump": VIX_THREE_DAY_JUMP, "crash_min_sessions": CRASH_MIN_SESSIONS,
            "crash_max_sessions": CRASH_MAX_SESSIONS, "crash_exit_margin": CRASH_EXIT_MARGIN}


def _model_params(prepared: _Prepared, model: FittedModel, margin: float, settings: Settings) -> dict:
    valid_days = prepared.valid_days
    bull, bear = model.bull_state, 1 - model.bull_state
    return {"model": "jump", "penalty": settings.penalty,
            "refit_date": valid_days[model.refit_position].date().isoformat(),
            "fit_window_start": valid_days[model.window_start].date().isoformat(),
            "fit_rows": model.refit_position - model.window_start + 1,
            "state_means": {"bull": dict(zip(FEATURES, (_json_number(v) for v in model.fit.centers[bull]))),
                            "bear": dict(zip(FEATURES, (_json_number(v) for v in model.fit.centers[bear])))},
            "state_return_ann": {"bull": _json_number(model.state_returns[bull]),
                                 "bear": _json_number(model.state_returns[bear])},
            "margin": _json_number(margin if bull == 0 else -margin),
            "thresholds": _thresholds(settings)}


def _crash_reason(prepared: _Prepared, i: int, features: dict) -> str:
    crash = prepared.crash.iloc[i]
    reference = float(crash["reference"])
    exit_rule = (f"it ends when VIX closes at or under {reference * (1 + CRASH_EXIT_MARGIN):.2f} (from "
                 f"{CRASH_MIN_SESSIONS} sessions after the spike) or {CRASH_MAX_SESSIONS} sessions after it")
    if crash["trigger"]:
        one_day, three_day = features["vix_change_1d"] or 0.0, features["vix_change_3d"] or 0.0
        move = f"up {one_day:.0%} in one session" if one_day >= VIX_ONE_DAY_JUMP else \
            f"up {three_day:.0%} in three sessions"
        return (f"CRASH override: VIX closed {features['vix_close']:.2f}, {move} (pre-spike level "
                f"{reference:.2f}); {exit_rule}.")
    return (f"CRASH override from a VIX spike {int(crash['sessions_since_trigger'])} session(s) ago (VIX "
            f"{features['vix_close']}, pre-spike {reference:.2f}); {exit_rule}.")


def _trend_reason(regime: str, features: dict, params: dict, returns_seen: int, settings: Settings) -> str:
    sortino_z, dd_z = features["z_sortino_60"], features["z_dd_log_20"]
    if params["model"] == "fallback":
        if regime == "TREND_NEUTRAL":
            return f"Only {returns_seen} SPY returns, too few for any signal: TREND_NEUTRAL by the fallback rule."
        trend = "positive" if regime == "TREND_BULL" else "not positive"
        return (f"Only {returns_seen} SPY returns, too few to fit the jump model: the 60-session EWM return is "
                f"{trend}, so {regime} by the fallback rule.")
    head = f"Jump model (penalty {settings.penalty:g}, refit {params['refit_date']})"
    if regime == "TREND_BEAR":
        return (f"{head} is in its bear state (20-day downside deviation z {dd_z:+.2f}, 20-day Sortino z "
                f"{features['z_sortino_20']:+.2f}): TREND_BEAR.")
    if regime == "TREND_NEUTRAL":
        return (f"{head} is in its bear state but the 20-day downside deviation z {dd_z:+.2f} is back below "
                f"{settings.neutral_dd_z:g}: TREND_NEUTRAL.")
    return f"{head} is in its bull state (60-day Sortino z {sortino_z:+.2f}): TREND_BULL."


def _row(prepared: _Prepared, i: int, state: ModelState | None, settings: Settings) -> dict:
    features = _features_dict(prepared, i)
    returns_seen = i  # day 0 has no return
    if state is None:
        bull = _fallback_state(prepared.raw.iloc[i], returns_seen) if i > 0 else None
        params = {"model": "fallback", "penalty": settings.penalty, "refit_date": None,
                  "rule": "bull when the 60-session EWM return > 0", "thresholds": _thresholds(settings)}
    else:
        bull, margin, model = state
        params = _model_params(prepared, model, margin, settings)
    dd_z = features["z_dd_log_20"]
    trend = trend_regime(bull, dd_z if dd_z is not None else math.nan, settings)
    params["model_state"] = None if bull is None else ("bull" if bull else "bear")
    params["trend_regime"] = trend
    crash = bool(prepared.crash["active"].iat[i])
    regime = "CRASH" if crash else trend
    reason = _crash_reason(prepared, i, features) if crash else _trend_reason(trend, features, params,
                                                                                 returns_seen, settings)
    return {"regime": regime, "factor": FACTORS[regime], "crash_override": crash, "reason": reason,
            "features": features, "params": params}


# ---------------------------------------------------------------- public API

def compute_regimes(series: pd.DataFrame, start: date | None = None, end: date | None = None,
                    settings: Settings | None = None) -> pd.DataFrame:
    """One row per day of `series` in [start, end]: regime, factor, crash_override, reason, features, params.

    Each row uses only rows of `series` up to and including its day, so appending later data never changes it.
    """
    settings = settings or Settings()
    prepared = _prepare(series)
    days = prepared.days
    lower = pd.Timestamp(start) if start is not None else days[0]
    upper = pd.Timestamp(end) if end is not None else days[-1]
    wanted = np.flatnonzero((days >= lower) & (days <= upper))
    states = _model_states(prepared, wanted, settings)
    rows = [_row(prepared, int(i), states.get(int(i)), settings) for i in wanted]
    columns = ["regime", "factor", "crash_override", "reason", "features", "params"]
    return pd.DataFrame(rows, index=pd.DatetimeIndex(days[wanted], name="date"), columns=columns)


def regime_for_day(series: pd.DataFrame, day: date | pd.Timestamp, settings: Settings | None = None) -> dict:
    """The regime of the last session at or before `day` (data after it is ignored), as a dict with its date."""
    cut = _validated(series).loc[:pd.Timestamp(day)]
    if cut.empty:
        raise DataError(f"market series has no session on or before {pd.Timestamp(day).date()}")
    last = cut.index[-1]
    row = compute_regimes(cut, last, last, settings).iloc[0].to_dict()
    return {"date": last.date().isoformat(), **row}

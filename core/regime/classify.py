"""Market regime (ATLAS) from SPY and VIX daily series: TREND_BULL / TREND_NEUTRAL / TREND_BEAR / CRASH.

How a day's label is made (every step uses rows up to and including that day only):

1. Features of SPY daily log returns: log EWM downside deviation (half-lives 10 and 20 sessions) and EWM Sortino
   ratios (half-lives 10, 20 and 60): risk and return from SPY's returns alone, after Shu, Yu and Mulvey (2024),
   the jump-model study this model follows. The first `FEATURE_WARMUP_DAYS` returns only seed the averages: a
   Sortino ratio over a handful of returns is huge and would dominate the standardisation for ever after.
2. Each feature is standardised with an EXPANDING mean and standard deviation (from `STANDARDISE_MIN_DAYS` on) and
   clipped to +-`Z_CLIP`, so no later data ever enters a past z-score. (`Settings.standardise_window` swaps in a
   rolling window; the study measures it and keeps the expanding one.)
3. A two-state statistical jump model (`core/regime/jump_model.py`) is refitted on the first trading day of every month
   on the last `FIT_WINDOW_DAYS` standardised rows (or all there are, from `MIN_FIT_ROWS` on). The state with the
   higher mean SPY return in the window is the bull state. Between refits the day's state comes from ONLINE
   inference: the end state of the cheapest state path over the window's rows and the days since, none after the
   day itself.
4. Warm-up: the jump model labels a day only once SPY's history up to that day holds a fall of at least
   `WARMUP_DRAWDOWN` from a running high. Fitted on a history without a sell-off, two states can only split calm
   from calmer, and the "bear" half of a calm history is still a bull market (without the warm-up the 1993-2018
   file reads 1995-96 as 44% bear). Until then the fallback rule below labels the day.
5. Mapping: bull state -> TREND_BULL; bear state -> TREND_BEAR, unless the 20-session downside deviation z-score
   is already back below `NEUTRAL_DD_Z` (the storm has passed but the model has not turned bull yet), then
   TREND_NEUTRAL.
6. CRASH override (REGIME_CRASH_RULE, `Settings.crash_rule`). A VIX spike is a close up >= 20% on the previous
   close, or >= 50% on the close three sessions earlier. Rule `shock` (the default) starts the override only on a
   spike that is a real shock: VIX closes in the top `1 - VIX_PERCENTILE` of its own closes up to that day (at
   least `VIX_HISTORY_MIN_DAYS` of them; a percentile, not VIX points, so the rule does not depend on the level of
   a calm decade) AND SPY closes at least `SPY_SHOCK_DRAWDOWN` under its highest close of the last
   `SPY_HIGH_SESSIONS` sessions. Rule `seed` starts it on any spike: a ratio of two small numbers fires on every
   wobble of a calm market (42 CRASH days in 2014). Exit, both rules: the override ends on the first close at
   least `CRASH_MIN_SESSIONS` sessions after the latest trigger at which VIX is back within `CRASH_EXIT_MARGIN` of
   its pre-spike close, and in any case `CRASH_MAX_SESSIONS` sessions after the latest trigger (a lasting
   sell-off is the bear state's job, not the override's). A new trigger while active restarts the count and keeps
   the first pre-spike level.

Short histories (e.g. a synthetic SPY starting a couple of years ago): before a model can be fitted, and during the
warm-up, the day is labelled by a documented fallback rule (`_fallback_state`): the sign of the 60-session EWM
return, TREND_NEUTRAL when there are fewer than `MIN_RAW_DAYS` returns; `reason` says which case applies.

How the numbers were chosen (reproduce with `python bench/regime_study.py`; everything on the 1993-2018 SPY/VIX file,
chosen on `SELECTION_PERIOD` = 1995-2006 only, judged on 2007-2018):
- `WARMUP_DRAWDOWN` and `JUMP_PENALTY` together: the pair from `WARMUP_GRID` x `PENALTY_GRID` whose online bull
  signal (the model's state, the fallback rule before it) gave the best Sharpe ratio of a 0/1 SPY strategy (long in
  the bull state, cash otherwise, traded the next session, cash earning nothing) over 1995-2006: 15% and 100
  (Sharpe 1.00 in 1995-2006, 0.69 in 2007-2018; the seed's choice, no warm-up and penalty 50: 0.84 and 0.73). With
  these fixed, `NEUTRAL_DD_Z` is the value from `NEUTRAL_GRID` (None: never NEUTRAL) with the best Sharpe of the
  allocation-factor strategy (position = the day's factor) over the same period: -0.5 (0.988; off: 0.987).
- The CRASH thresholds: in 1993-2006 the spike rule fired on 14 days. Four were shocks (1997-10-27, 1998-08-27,
  2001-09-17, 2002-09-03: VIX at or above its 99th percentile, SPY 11-16% under its 63-session high); ten were
  wobbles, with SPY at most 6.7% under it, and only two of those (1994-02-04 and 1996-03-08) had VIX in its top
  decile, with SPY 2.7% and 4.3% under its high. A top-decile VIX in a 5% SPY pullback is the pair of round numbers
  inside that gap. In the study's grid the percentile alone (0.80 and up) already leaves every calm year without a
  CRASH day; 0.90 with 5% keeps all nine known shocks of the file (a 7.5% pullback or a 95th percentile loses
  2010-05-06).
- Rolling standardisation windows (5 and 10 years), the `jumpmodels` library's own online prediction refitted
  yearly on a per-window standardisation, and other penalties are measured beside the chosen model in the study.
  Without the warm-up every option reads 1995-96 as 40-50% bear. With it, the library's prediction (penalty 100)
  also meets every target, with 1.09 switches a year against 1.18, but trails on the 0/1 Sharpe ratio in both
  periods (0.92 and 0.72 against 1.01 and 0.74) and would need scikit-learn at run time; a 5-year rolling window
  reads 2006 as 13% bear; penalty 50 reads 2004 as 17% bear (NEUTRAL at -0.5).

Figures on the 1993-2018 file (online labels; the seed model in brackets): bear-or-crash share 100% (100%) of
2002-07-01..10-09 and of 2008-09-15..2009-03-09, 93% (93%) of 2011-08-01..10-03; 0% in each of 2004-2006, 2013,
2014 and 2017 (up to 17%) with no CRASH day (up to 42 a year); 1% (44%) of 1995-96; 1.18 (3.60) bull/bear switches a
year over 1997-2018; the two-state label agrees with the `jumpmodels` reference (penalty 50, fitted on 1993-2006,
online over 2007-2018) on 93% (85%) of days, Cohen's kappa 0.85 (0.69).

Known limits: 1999-2002 reads as TREND_BEAR throughout, 1999's 20% rise included (the late 1990s were far more
volatile than the only history before them); after a crisis the model turns bull late (2003 is 73% bear, 2009
72%). Alpaca's VIXY proxy decays, so it rarely reaches the top decile of its own history and the `shock` rule seldom
fires on it (REGIME_CRASH_RULE=seed keeps the spike-only rule).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date

import numpy as np
import pandas as pd

from common.errors import DataError
from core.regime.jump_model import JumpFit, fit_jump_model, loss_difference, online_margin

MODEL_VERSION = 2  # stored labels of another version (or crash rule) are recomputed, not reused
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
PENALTY_GRID = (5.0, 10.0, 20.0, 30.0, 50.0, 75.0, 100.0, 150.0, 200.0)
WARMUP_GRID = (None, 0.10, 0.15, 0.20)
NEUTRAL_GRID = (None, 1.0, 0.5, 0.0, -0.5, -1.0)
SELECTION_PERIOD = (date(1995, 1, 1), date(2006, 12, 31))
JUMP_PENALTY = 100.0
WARMUP_DRAWDOWN: float | None = 0.15
NEUTRAL_DD_Z: float | None = -0.5

CRASH_RULES = ("shock", "seed")
CRASH_RULE = "shock"
VIX_ONE_DAY_JUMP = 0.20
VIX_THREE_DAY_JUMP = 0.50
VIX_PERCENTILE = 0.90
VIX_HISTORY_MIN_DAYS = 252
SPY_HIGH_SESSIONS = 63
SPY_SHOCK_DRAWDOWN = 0.05
CRASH_MIN_SESSIONS = 2
CRASH_MAX_SESSIONS = 10
CRASH_EXIT_MARGIN = 0.10

REQUIRED_COLUMNS = ("spy_close", "vix_close")


@dataclass(frozen=True)
class Settings:
    """The tunable choices in one place, so the study can evaluate alternatives through the same code."""

    penalty: float = JUMP_PENALTY
    neutral_dd_z: float | None = NEUTRAL_DD_Z
    crash_rule: str = CRASH_RULE
    warmup_drawdown: float | None = WARMUP_DRAWDOWN  # None: the model labels from its first fit
    standardise_window: int | None = None  # None: expanding z-scores; N: over the last N feature rows

    def __post_init__(self) -> None:
        if self.crash_rule not in CRASH_RULES:
            raise ValueError(f"crash rule {self.crash_rule!r} is not one of {', '.join(CRASH_RULES)}")


# The model as it was before the shock rule and the warm-up: the study's "before", and REGIME_CRASH_RULE=seed's rule.
SEED_SETTINGS = Settings(penalty=50.0, neutral_dd_z=0.0, crash_rule="seed", warmup_drawdown=None)


# ---------------------------------------------------------------- features

def _spy_close(series: pd.DataFrame) -> pd.Series:
    """SPY closes with a missing or non-positive close carried over from the day before."""
    return series["spy_close"].where(series["spy_close"] > 0).ffill()


def _log_returns(series: pd.DataFrame) -> pd.Series:
    """Daily SPY log returns; a missing or non-positive close counts as no move (the next close catches up)."""
    return np.log(_spy_close(series)).diff().fillna(0.0).iloc[1:]


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


def standardise(features: pd.DataFrame, window: int | None = None) -> pd.DataFrame:
    """Z-scores clipped to +-Z_CLIP over an expanding window (or the last `window` rows); NaN until enough history
    (warm-up rows excluded)."""
    usable = features.iloc[FEATURE_WARMUP_DAYS:]
    rolling = usable.expanding(STANDARDISE_MIN_DAYS) if window is None else usable.rolling(
        window, min_periods=STANDARDISE_MIN_DAYS)
    mean, std = rolling.mean(), rolling.std()
    z = ((usable - mean) / std.where(std > 0)).clip(-Z_CLIP, Z_CLIP)
    return z.reindex(features.index)


def warmed_up(spy_close: pd.Series, drawdown: float | None) -> np.ndarray:
    """Per day: has SPY, up to that day, closed at least `drawdown` under its running high? (All True for None.)"""
    if drawdown is None:
        return np.ones(len(spy_close), dtype=bool)
    fell = (spy_close / spy_close.cummax() - 1.0 <= -drawdown).to_numpy()
    return np.maximum.accumulate(fell) if len(fell) else fell


# ---------------------------------------------------------------- CRASH override

def vix_percentile(vix_close: pd.Series) -> pd.Series:
    """Share of VIX's closes up to each day at or below that day's close (NaN under VIX_HISTORY_MIN_DAYS closes)."""
    vix = vix_close.where(vix_close > 0)
    return vix.expanding(VIX_HISTORY_MIN_DAYS).rank(pct=True, method="max")


def spy_drawdown(spy_close: pd.Series) -> pd.Series:
    """SPY's close against its highest close of the last SPY_HIGH_SESSIONS sessions (0 at a high, -0.05 5% under)."""
    return spy_close / spy_close.rolling(SPY_HIGH_SESSIONS, min_periods=1).max() - 1.0


def vix_override(vix_close: pd.Series, spy_close: pd.Series | None = None, rule: str = CRASH_RULE, *,
                 percentile_at_least: float = VIX_PERCENTILE,
                 drawdown_at_least: float = SPY_SHOCK_DRAWDOWN) -> pd.DataFrame:
    """CRASH override state per day: active flag, trigger flag, pre-spike level, sessions since the trigger, and
    the two shock measures (VIX's percentile of its own history, SPY's drawdown from its recent high).

    Rule "shock" needs `spy_close` (aligned with `vix_close`); rule "seed" reads VIX alone. The two thresholds are
    keywords only so the study can try its grid through this code."""
    if rule not in CRASH_RULES:
        raise ValueError(f"crash rule {rule!r} is not one of {', '.join(CRASH_RULES)}")
    vix = vix_close.where(vix_close > 0)
    filled = vix.ffill().to_numpy(dtype=float)
    present = vix.notna().to_numpy()
    percentile = vix_percentile(vix_close)
    if spy_close is None:
        if rule == "shock":
            raise ValueError("the shock rule needs SPY closes beside VIX")
        drawdown = pd.Series(math.nan, index=vix_close.index)
    else:
        drawdown = spy_drawdown(spy_close.where(spy_close > 0).ffill())
    if rule == "shock":
        shock = ((percentile >= percentile_at_least) & (drawdown <= -drawdown_at_least)).to_numpy()
    else:
        shock = np.ones(len(vix), dtype=bool)
    active_out, trigger_out = np.zeros(len(vix), bool), np.zeros(len(vix), bool)
    reference_out, since_out = np.full(len(vix), np.nan), np.full(len(vix), -1)
    active, reference, last_trigger = False, math.nan, -1
    for i in range(len(filled)):
        base = _spike_base(filled, i) if present[i] and shock[i] else None
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
                         "sessions_since_trigger": since_out, "vix_percentile": percentile.to_numpy(),
                         "spy_drawdown": drawdown.to_numpy()}, index=vix_close.index)


def _spike_base(filled: np.ndarray, i: int) -> float | None:
    """The pre-spike VIX level when day i is a VIX spike, else None."""
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
    warmed_up: np.ndarray  # per day: the warm-up's SPY fall has happened by then


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


def _prepare(series: pd.DataFrame, settings: Settings) -> _Prepared:
    series = _validated(series)
    raw = raw_features(series)
    z = standardise(raw, settings.standardise_window).reindex(series.index)
    returns = _log_returns(series)
    spy = _spy_close(series)
    vix = series["vix_close"].astype(float)
    crash = vix_override(vix, spy, settings.crash_rule)
    return _Prepared(series.index, raw.reindex(series.index), z, returns.reindex(series.index), crash, vix,
                     vix.where(vix > 0).ffill().to_numpy(), series.index[z.notna().all(axis=1).to_numpy()],
                     warmed_up(spy, settings.warmup_drawdown))


ModelState = tuple[bool, float, FittedModel]  # bull flag, margin (D_t), the model in force


def _model_states(prepared: _Prepared, wanted: np.ndarray, settings: Settings) -> dict[int, ModelState]:
    """Jump-model bull flag, margin and model for each wanted day index that is past the warm-up and has a fitted
    model in force."""
    valid = np.flatnonzero(prepared.days.isin(prepared.valid_days))
    z_values = prepared.z.to_numpy()[valid]
    returns = prepared.returns.to_numpy()[valid]
    refits = refit_positions(prepared.valid_days)
    position_of = {day_index: p for p, day_index in enumerate(valid)}
    groups: dict[int, list[tuple[int, int]]] = {}
    for day_index in wanted:
        p = position_of.get(int(day_index))
        if p is None or not prepared.warmed_up[int(day_index)]:
            continue
        slot = int(np.searchsorted(refits, p, side="right")) - 1
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
    """Without a model: bull when the 60-session EWM return is positive; no opinion on under MIN_RAW_DAYS."""
    if returns_seen < MIN_RAW_DAYS or not math.isfinite(raw["sortino_60"]):
        return None
    return bool(raw["sortino_60"] > 0)


def _json_number(value: float, digits: int = 4) -> float | None:
    return round(float(value), digits) if value is not None and math.isfinite(value) else None


def _features_dict(prepared: _Prepared, i: int) -> dict:
    vix = prepared.vix_filled
    change = {lag: vix[i] / vix[i - lag] - 1.0 if i >= lag and vix[i - lag] > 0 else math.nan for lag in (1, 3)}
    raw, z, crash = prepared.raw.iloc[i], prepared.z.iloc[i], prepared.crash.iloc[i]
    return {"vix_close": _json_number(prepared.vix.iloc[i], 2),
            "vix_change_1d": _json_number(change[1]), "vix_change_3d": _json_number(change[3]),
            "vix_percentile": _json_number(crash["vix_percentile"]),
            "spy_drawdown_63": _json_number(crash["spy_drawdown"]),
            **{name: _json_number(raw[name]) for name in FEATURES},
            **{f"z_{name}": _json_number(z[name]) for name in FEATURES}}


def _thresholds(settings: Settings) -> dict:
    shock = settings.crash_rule == "shock"
    return {"neutral_dd_20_z": settings.neutral_dd_z, "warmup_drawdown": settings.warmup_drawdown,
            "vix_one_day_jump": VIX_ONE_DAY_JUMP, "vix_three_day_jump": VIX_THREE_DAY_JUMP,
            "vix_percentile": VIX_PERCENTILE if shock else None,
            "spy_shock_drawdown": SPY_SHOCK_DRAWDOWN if shock else None,
            "crash_min_sessions": CRASH_MIN_SESSIONS, "crash_max_sessions": CRASH_MAX_SESSIONS,
            "crash_exit_margin": CRASH_EXIT_MARGIN}


def _standardisation(settings: Settings) -> str:
    return "expanding" if settings.standardise_window is None else f"rolling {settings.standardise_window}"


def _model_params(prepared: _Prepared, model: FittedModel, margin: float, settings: Settings) -> dict:
    valid_days = prepared.valid_days
    bull, bear = model.bull_state, 1 - model.bull_state
    return {"model": "jump", "penalty": settings.penalty, "standardisation": _standardisation(settings),
            "refit_date": valid_days[model.refit_position].date().isoformat(),
            "fit_window_start": valid_days[model.window_start].date().isoformat(),
            "fit_rows": model.refit_position - model.window_start + 1,
            "state_means": {"bull": dict(zip(FEATURES, (_json_number(v) for v in model.fit.centers[bull]))),
                            "bear": dict(zip(FEATURES, (_json_number(v) for v in model.fit.centers[bear])))},
            "state_return_ann": {"bull": _json_number(model.state_returns[bull]),
                                 "bear": _json_number(model.state_returns[bear])},
            "margin": _json_number(margin if bull == 0 else -margin),
            "thresholds": _thresholds(settings)}


def _crash_reason(prepared: _Prepared, i: int, features: dict, settings: Settings) -> str:
    crash = prepared.crash.iloc[i]
    reference = float(crash["reference"])
    exit_rule = (f"it ends when VIX closes at or under {reference * (1 + CRASH_EXIT_MARGIN):.2f} (from "
                 f"{CRASH_MIN_SESSIONS} sessions after the spike) or {CRASH_MAX_SESSIONS} sessions after it")
    if crash["trigger"]:
        one_day, three_day = features["vix_change_1d"] or 0.0, features["vix_change_3d"] or 0.0
        move = f"up {one_day:.0%} in one session" if one_day >= VIX_ONE_DAY_JUMP else \
            f"up {three_day:.0%} in three sessions"
        shock = (f", at the {crash['vix_percentile']:.0%} point of its history, with SPY "
                 f"{-crash['spy_drawdown']:.1%} under its {SPY_HIGH_SESSIONS}-session high"
                 if settings.crash_rule == "shock" else "")
        return (f"CRASH override: VIX closed {features['vix_close']:.2f}, {move} (pre-spike level "
                f"{reference:.2f}){shock}; {exit_rule}.")
    return (f"CRASH override from a VIX spike {int(crash['sessions_since_trigger'])} session(s) ago (VIX "
            f"{features['vix_close']}, pre-spike {reference:.2f}); {exit_rule}.")


def _trend_reason(regime: str, features: dict, params: dict, returns_seen: int, settings: Settings) -> str:
    sortino_z, dd_z = features["z_sortino_60"], features["z_dd_log_20"]
    if params["model"] == "fallback":
        if regime == "TREND_NEUTRAL":
            return f"Only {returns_seen} SPY returns, too few for any signal: TREND_NEUTRAL by the fallback rule."
        trend = "positive" if regime == "TREND_BULL" else "not positive"
        if params.get("warmup"):
            return (f"SPY has not yet closed {settings.warmup_drawdown:.0%} under a high in this history, so the "
                    f"jump model has no sell-off to learn its bear state from: the 60-session EWM return is "
                    f"{trend}, so {regime} by the fallback rule.")
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
                  "warmup": not bool(prepared.warmed_up[i]) and returns_seen >= MIN_RAW_DAYS,
                  "rule": "bull when the 60-session EWM return > 0", "thresholds": _thresholds(settings)}
    else:
        bull, margin, model = state
        params = _model_params(prepared, model, margin, settings)
    dd_z = features["z_dd_log_20"]
    trend = trend_regime(bull, dd_z if dd_z is not None else math.nan, settings)
    params["version"] = MODEL_VERSION
    params["crash_rule"] = settings.crash_rule
    params["model_state"] = None if bull is None else ("bull" if bull else "bear")
    params["trend_regime"] = trend
    crash = bool(prepared.crash["active"].iat[i])
    regime = "CRASH" if crash else trend
    reason = _crash_reason(prepared, i, features, settings) if crash else _trend_reason(
        trend, features, params, returns_seen, settings)
    return {"regime": regime, "factor": FACTORS[regime], "crash_override": crash, "reason": reason,
            "features": features, "params": params}


# ---------------------------------------------------------------- public API

def compute_regimes(series: pd.DataFrame, start: date | None = None, end: date | None = None,
                    settings: Settings | None = None) -> pd.DataFrame:
    """One row per day of `series` in [start, end]: regime, factor, crash_override, reason, features, params.

    Each row uses only rows of `series` up to and including its day, so appending later data never changes it.
    """
    settings = settings or Settings()
    prepared = _prepare(series, settings)
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

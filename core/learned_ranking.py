"""The learned candidate ranking: a model of a stage-1 candidate's forward return from what the scan knew about it.

Features are the scanner's own signals at the scan moment (nothing measured later): the day's change, relative
volume and volume surge, gap, follow-through, 5-day breakout, 10-day rate of change, distance to the 20- and 50-day
averages, intraday strength, RSI, ATR as a share of price, the stage flags, the 0-20 composite score and the cap tier.
The target is the return from the scan price to the close `HORIZON` sessions later (the nightly job records it).

The model is scikit-learn's histogram gradient boosting regressor: it takes the signals as they come (missing
values such as the intraday strength a daily replay cannot know are handled natively, no imputation to get wrong),
finds the non-linear shapes a hand-weighted score cannot (an RSI that helps up to a point and hurts beyond it), and
is kept small and strongly regularised (shallow trees, large leaves, early stopping on the latest 20% of sessions)
because forward returns are mostly noise. Its validation figures are measured on the latest sessions it did not fit.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

HORIZON = 5  # sessions: the target is the return to the close this many sessions after the scan
TARGET = f"return from the scan price to the close {HORIZON} sessions later"
MIN_LABELLED = 500  # fewer labelled candidates than this are too few to fit anything but noise
VALIDATION_SHARE = 0.2  # the latest sessions held out to measure the model
CAPS = {"large": 0.0, "mid": 1.0, "small": 2.0}
FLAGS = ("follow_through", "breakout_5d", "sma_aligned", "momentum_breakout", "stage2")
NUMERIC = ("change_pct", "rvol", "volume_surge", "gap_up", "roc_10d", "intraday_strength", "rsi_14", "score")
FEATURES = (*NUMERIC, "atr_pct", "above_sma20", "above_sma50", *FLAGS, "cap")


def features(frame: pd.DataFrame, cap: str | pd.Series | None = None) -> pd.DataFrame:
    """The model's inputs from scan rows (a scan frame or candidate rows): one row per candidate, FEATURES columns,
    NaN where a signal is unknown."""
    price = pd.to_numeric(frame["price"], errors="coerce")
    out = pd.DataFrame({name: pd.to_numeric(frame[name], errors="coerce") for name in NUMERIC}, index=frame.index)
    out["atr_pct"] = pd.to_numeric(frame["atr_14"], errors="coerce") / price
    out["above_sma20"] = price / pd.to_numeric(frame["sma20"], errors="coerce") - 1
    out["above_sma50"] = price / pd.to_numeric(frame["sma50"], errors="coerce") - 1
    for flag in FLAGS:
        out[flag] = pd.to_numeric(frame[flag], errors="coerce").astype(float)
    tiers = frame["cap"] if cap is None else (cap if isinstance(cap, pd.Series) else pd.Series(cap, index=frame.index))
    out["cap"] = tiers.map(CAPS).astype(float)
    return out[list(FEATURES)].replace([np.inf, -np.inf], np.nan)


def target(frame: pd.DataFrame) -> pd.Series:
    return pd.to_numeric(frame[f"price_{HORIZON}d"], errors="coerce") / pd.to_numeric(frame["price"],
                                                                                       errors="coerce") - 1


def rank_correlation(a: pd.Series | np.ndarray, b: pd.Series | np.ndarray) -> float | None:
    """Spearman's rank correlation of two equally long series (None with fewer than 10 pairs)."""
    pair = pd.DataFrame({"a": np.asarray(a, dtype=float), "b": np.asarray(b, dtype=float)}).dropna()
    if len(pair) < 10 or pair["a"].nunique() < 2 or pair["b"].nunique() < 2:
        return None
    return float(pair["a"].rank().corr(pair["b"].rank()))


def decile_spread(figure: pd.Series | np.ndarray, outcome: pd.Series | np.ndarray) -> dict[str, float | None]:
    """Mean outcome of the top and the bottom tenth of candidates by `figure`."""
    pair = pd.DataFrame({"f": np.asarray(figure, dtype=float), "y": np.asarray(outcome, dtype=float)}).dropna()
    if len(pair) < 20:
        return {"top_decile": None, "bottom_decile": None, "spread": None}
    ordered = pair.sort_values("f", kind="mergesort")
    tenth = max(1, len(ordered) // 10)
    top, bottom = float(ordered["y"].iloc[-tenth:].mean()), float(ordered["y"].iloc[:tenth].mean())
    return {"top_decile": top, "bottom_decile": bottom, "spread": top - bottom}


@dataclass
class Fitted:
    model: Any
    validation: dict[str, Any]
    rows: int
    features: tuple[str, ...]  # the FEATURES that varied in the training rows (a daily replay knows no intraday one)


def fit(x: pd.DataFrame, y: pd.Series, sessions: pd.Series, score: pd.Series, *, seed: int = 0) -> Fitted:
    """Fit on all but the latest VALIDATION_SHARE of sessions, measure there (the model's rank correlation with
    the outcome beside the fixed score's), then refit on everything with the number of trees the first fit chose."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    used = tuple(name for name in x.columns if x[name].nunique(dropna=True) >= 2)
    x = x[list(used)]
    days = np.sort(sessions.unique())
    cut = days[int(len(days) * (1 - VALIDATION_SHARE))] if len(days) > 4 else days[-1]
    train, held = (sessions < cut).to_numpy(), (sessions >= cut).to_numpy()
    params = dict(learning_rate=0.05, max_iter=300, max_depth=3, min_samples_leaf=100, l2_regularization=1.0,
                  random_state=seed)
    first = HistGradientBoostingRegressor(early_stopping=True, validation_fraction=0.2, n_iter_no_change=20,
                                          **params).fit(x[train], y[train])
    predicted = first.predict(x[held])
    validation = {"validation_from": str(cut), "validation_rows": int(held.sum()), "trees": int(first.n_iter_),
                  "learned_rank_corr": rank_correlation(predicted, y[held]),
                  "score_rank_corr": rank_correlation(score[held], y[held]),
                  **{f"learned_{k}": v for k, v in decile_spread(predicted, y[held]).items()},
                  **{f"score_{k}": v for k, v in decile_spread(score[held], y[held]).items()}}
    final = HistGradientBoostingRegressor(early_stopping=False, **{**params, "max_iter": max(1, first.n_iter_)})
    return Fitted(final.fit(x, y), validation, int(len(x)), used)

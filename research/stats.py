"""Honest statistics for a study: the best of many trials is partly luck.

The deflated Sharpe ratio (Bailey and Lopez de Prado, "The Deflated Sharpe Ratio", 2014) is the probability that
the best trial's true Sharpe ratio is above zero once the selection is accounted for: its Sharpe ratio is compared
not with 0 but with the Sharpe ratio the best of N trials would be expected to show if none had any edge,

    SR0 = sqrt(V) * ((1 - g) * Z^-1(1 - 1/N) + g * Z^-1(1 - 1/(N e)))      g = Euler-Mascheroni constant

with V the variance of the trials' Sharpe ratios, and the estimate's error widened for the skewness and kurtosis
of the best trial's daily returns over its T observations:

    DSR = Phi((SR - SR0) * sqrt(T - 1) / sqrt(1 - skew * SR + (kurtosis - 1) / 4 * SR^2)).

All Sharpe ratios here are per day (not annualised), as the formula wants; the report shows them annualised too.
A DSR near 1 says the edge survives the number of trials; 0.5 or below says a trial this good is what luck alone
would give.
"""
from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

EULER_GAMMA = 0.5772156649015329
DAYS_PER_YEAR = 252
_NORMAL = NormalDist()


def expected_max_sharpe(variance: float, trials: int) -> float:
    """SR0: the Sharpe ratio the best of `trials` independent trials with no edge is expected to reach."""
    if trials < 2 or variance <= 0:
        return 0.0
    return math.sqrt(variance) * ((1 - EULER_GAMMA) * _NORMAL.inv_cdf(1 - 1 / trials)
                                  + EULER_GAMMA * _NORMAL.inv_cdf(1 - 1 / (trials * math.e)))


def probabilistic_sharpe(sharpe: float, benchmark: float, observations: int, skew: float, kurtosis: float) -> float:
    """The probability that the true per-day Sharpe ratio exceeds `benchmark`, given this estimate."""
    spread = 1 - skew * sharpe + (kurtosis - 1) / 4 * sharpe ** 2
    if observations < 2 or spread <= 0:
        return float("nan")
    return _NORMAL.cdf((sharpe - benchmark) * math.sqrt(observations - 1) / math.sqrt(spread))


def deflated_sharpe(best: dict[str, Any], trials: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The deflated Sharpe ratio of `best` among `trials` (rows with daily_sharpe, skew, kurtosis, observations);
    None when there is not enough to say (fewer than two trials with a Sharpe ratio, or none for the best)."""
    sharpes = [t["daily_sharpe"] for t in trials if t.get("daily_sharpe") is not None]
    if len(sharpes) < 2 or best.get("daily_sharpe") is None:
        return None
    mean = sum(sharpes) / len(sharpes)
    variance = sum((s - mean) ** 2 for s in sharpes) / (len(sharpes) - 1)
    sr0 = expected_max_sharpe(variance, len(sharpes))
    sr, t = best["daily_sharpe"], best["observations"]
    return {"trials": len(sharpes), "best_sharpe": sr * math.sqrt(DAYS_PER_YEAR),
            "expected_max_sharpe": sr0 * math.sqrt(DAYS_PER_YEAR),
            "deflated_sharpe": probabilistic_sharpe(sr, sr0, t, best["skew"], best["kurtosis"]),
            "probabilistic_sharpe": probabilistic_sharpe(sr, 0.0, t, best["skew"], best["kurtosis"])}

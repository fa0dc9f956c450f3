"""A two-state statistical jump model (Nystrup et al.; Shu, Yu and Mulvey 2024), in plain numpy.

The model clusters feature rows x_t into two states with centroids mu_0, mu_1 and charges a fixed penalty `lambda`
for every change of state, minimising

    sum_t 0.5 * ||x_t - mu_{s_t}||^2  +  lambda * #{t : s_t != s_(t-1)}

by coordinate descent: given the centroids, the best state path is found by dynamic programming (Viterbi); given
the path, each centroid is the mean of its rows. Several k-means++ starts are tried and the lowest objective wins.
This is the objective and algorithm of the `jumpmodels` library's discrete `JumpModel` (the tests check that both
give the same labels); it is written here because importing that library (scikit-learn) costs over a second per
process, and with two states the dynamic programme collapses to one scalar recursion that runs fast in Python:

With V_t(k) the best cost of a path ending in state k at t, let D_t = V_t(1) - V_t(0). Then
    D_t = (L_t(1) - L_t(0)) + clip(D_(t-1), -lambda, +lambda),
and the best state at t given rows up to t only (online inference) is 1 when D_t < 0, else 0. The clip is also why
the online label forgets the distant past: once D reaches a bound, earlier rows no longer matter.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

N_INIT = 10  # k-means++ starts per fit, as in `jumpmodels`
MAX_ITER = 100
SEED = 0  # fixed, so a fit is a pure function of its data


@dataclass(frozen=True)
class JumpFit:
    centers: np.ndarray  # (2, n_features)
    labels: np.ndarray  # in-sample best path, int 0/1
    objective: float
    penalty: float


def loss_difference(features: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """L_t(1) - L_t(0) with L_t(k) = 0.5 * ||x_t - mu_k||^2, for every row."""
    loss0 = 0.5 * ((features - centers[0]) ** 2).sum(axis=1)
    loss1 = 0.5 * ((features - centers[1]) ** 2).sum(axis=1)
    return loss1 - loss0


def online_margin(diff: np.ndarray, penalty: float) -> np.ndarray:
    """D_t for every row: negative means state 1 is the best state given rows up to t only."""
    margins: list[float] = []
    append = margins.append
    previous = 0.0
    high, low = penalty, -penalty
    for step in diff.tolist():  # plain floats: this loop is the hot path of every fit
        previous = step + (high if previous > high else low if previous < low else previous)
        append(previous)
    return np.array(margins)


def online_labels(features: np.ndarray, centers: np.ndarray, penalty: float) -> np.ndarray:
    """The filtered state of every row: the end state of the best path over rows 0..t (no later row used)."""
    return (online_margin(loss_difference(features, centers), penalty) < 0).astype(int)


def best_path(diff: np.ndarray, penalty: float) -> np.ndarray:
    """The Viterbi path over all rows (used in fitting: each row may look at later rows)."""
    margins = online_margin(diff, penalty).tolist()
    state = 1 if margins[-1] < 0 else 0
    path = [state]
    for previous in reversed(margins[:-1]):
        # step back: stay in `state` unless switching and paying the penalty is strictly cheaper
        state = (1 if previous < -penalty else 0) if state == 0 else (1 if previous < penalty else 0)
        path.append(state)
    return np.array(path[::-1], dtype=int)


def _objective(features: np.ndarray, centers: np.ndarray, path: np.ndarray, penalty: float) -> float:
    fitted = centers[path]
    return float(0.5 * ((features - fitted) ** 2).sum() + penalty * np.count_nonzero(np.diff(path)))


def _kmeans_plusplus(features: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Two starting centroids: one random row, then one drawn with probability proportional to squared distance."""
    first = features[rng.integers(len(features))]
    distance = ((features - first) ** 2).sum(axis=1)
    total = distance.sum()
    second = features[rng.choice(len(features), p=distance / total)] if total > 0 else first
    return np.vstack([first, second])


def _centroids(features: np.ndarray, path: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """Mean row of each state; a state left empty keeps its previous centroid."""
    centers = previous.copy()
    for state in (0, 1):
        members = path == state
        if members.any():
            centers[state] = features[members].mean(axis=0)
    return centers


def _descend(features: np.ndarray, centers: np.ndarray, penalty: float) -> tuple[np.ndarray, np.ndarray, float]:
    path = best_path(loss_difference(features, centers), penalty)
    objective = _objective(features, centers, path, penalty)
    for _ in range(MAX_ITER):
        centers = _centroids(features, path, centers)
        new_path = best_path(loss_difference(features, centers), penalty)
        new_objective = _objective(features, centers, new_path, penalty)
        converged = np.array_equal(new_path, path) or objective - new_objective <= 1e-10
        path, objective = new_path, new_objective
        if converged:
            break
    return _centroids(features, path, centers), path, objective


def fit_jump_model(features: np.ndarray, penalty: float, n_init: int = N_INIT, seed: int = SEED) -> JumpFit:
    """Best of `n_init` coordinate-descent runs from k-means++ starts (deterministic for given data)."""
    if len(features) < 2:
        raise ValueError("a jump model needs at least two rows")
    rng = np.random.default_rng(seed)
    best: tuple[np.ndarray, np.ndarray, float] | None = None
    for _ in range(n_init):
        result = _descend(features, _kmeans_plusplus(features, rng), penalty)
        if best is None or result[2] < best[2] - 1e-12:
            best = result
    centers, labels, objective = best
    return JumpFit(centers=centers, labels=labels, objective=objective, penalty=penalty)

"""The rules decider (SPEC section 6): which positions to close and which candidates to buy, watch or skip.

A pure function over plain data, so the same inputs always give the same decision. The risk gates of the executor
still apply after it: the decider proposes, the gates dispose.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import pandas as pd

HEALTHY_REVERSAL_SCORE = 3  # below this a position is healthy (skip-buy mode counts these)
WATCHLIST_SIZE = 5


@dataclass(frozen=True)
class Limits:
    """How many buys this scan may propose, before the executor's gates check them again."""

    free_slots: int  # max positions in total minus open positions
    free_cap_slots: int  # the cap's max positions minus its open positions
    max_buys: int  # the cap's max buys per scan
    buy_score_min: int = 12
    watch_score_min: int = 8
    autoclose: bool = True
    autoclose_threshold: int = 5
    skip_buys: bool = True
    halted: bool = False
    regime_blocks_buys: bool = False
    ranking: str = "score"  # or "learned": rank by the learned figure (a `learned` column) where the scan has one


@dataclass
class Decision:
    closes: list[tuple[str, str]] = field(default_factory=list)  # (symbol, reason)
    holds: list[str] = field(default_factory=list)
    buys: list[str] = field(default_factory=list)
    watch: list[str] = field(default_factory=list)
    candidate_decisions: dict[str, tuple[str, str]] = field(default_factory=dict)  # symbol -> (decision, reason)
    skip_mode: bool = False
    halted: bool = False  # buying halted (`halt`, a refusal storm): it comes before anything skip mode says


def decide_positions(positions: list[dict], limits: Limits) -> tuple[list[tuple[str, str]], list[str]]:
    """CLOSE on a reversal score at the auto-close threshold or a broken thesis; HOLD otherwise.

    Each position dict has symbol, reversal_score, and (when known) roc_10d, price and sma20.
    """
    closes, holds = [], []
    for pos in positions:
        score = pos.get("reversal_score")
        thesis_broken = (pos.get("roc_10d") is not None and pos.get("sma20") is not None
                         and pos["roc_10d"] < 0 and pos["price"] < pos["sma20"])
        if limits.autoclose and score is not None and score >= limits.autoclose_threshold:
            closes.append((pos["symbol"], f"reversal score {score} >= {limits.autoclose_threshold}"))
        elif thesis_broken:
            closes.append((pos["symbol"], "thesis broken: roc_10d < 0 and price < SMA20"))
        else:
            holds.append(pos["symbol"])
    return closes, holds


def in_skip_mode(positions: list[dict], limits: Limits) -> bool:
    """Positions exist and every one is healthy: let winners run instead of adding risk."""
    return (limits.skip_buys and bool(positions)
            and all((p.get("reversal_score") or 0) < HEALTHY_REVERSAL_SCORE for p in positions))


def buy_block_reason(limits: Limits, skip_mode: bool) -> str | None:
    """Why no buy may be proposed at all this scan, or None."""
    if limits.halted:
        return "trading halted"
    if limits.regime_blocks_buys:
        return "regime CRASH: no buys"
    if skip_mode:
        return "skip mode: every holding is healthy"
    return None


def decide(candidates: pd.DataFrame, positions: list[dict], held: set[str], limits: Limits) -> Decision:
    """Decide on positions and on every stage-1 candidate (scanner rows with stage1 True).

    BUY needs score >= buy_score_min and a passed stage 2 (momentum breakout plus the cap's ROC minimum), ranked
    by score, then volume surge, then symbol; WATCH takes scores from watch_score_min up and strong setups left
    without a slot; everything else is SKIP with the reason.

    With the learned ranking (limits.ranking "learned" and a `learned` column from an active model), candidates
    are ranked by the learned figure (the model's forward-return estimate) instead, and a buy needs a passed stage
    2, a score from watch_score_min up and a positive learned figure.
    """
    decision = Decision()
    decision.closes, decision.holds = decide_positions(positions, limits)
    decision.skip_mode = in_skip_mode(positions, limits)
    decision.halted = limits.halted
    block = buy_block_reason(limits, decision.skip_mode)
    slots = max(0, min(limits.free_slots, limits.free_cap_slots, limits.max_buys))
    # Only the score and the stage-2 flag decide; reading the columns once is much cheaper than a Series a row.
    learned = uses_learned(candidates, limits)
    order = rank_stage1(candidates, by_learned=learned)
    symbols, scores, stage2s = (np.asarray(candidates.index)[order].tolist(),
                                candidates["score"].to_numpy()[order].tolist(),
                                candidates["stage2"].to_numpy()[order].tolist())
    figures = candidates["learned"].to_numpy(dtype=float)[order].tolist() if learned else [None] * len(symbols)
    for symbol, score, stage2, figure in zip(symbols, scores, stage2s, figures):
        row = {"score": score, "stage2": stage2, "learned": figure}
        decision.candidate_decisions[symbol] = _decide_one(symbol, row, held, block, slots - len(decision.buys),
                                                           limits)
        if decision.candidate_decisions[symbol][0] == "BUY":
            decision.buys.append(symbol)
    watch = [s for s, (d, _) in decision.candidate_decisions.items() if d == "WATCH"]
    decision.watch = watch[:WATCHLIST_SIZE]
    for symbol in watch[WATCHLIST_SIZE:]:
        decision.candidate_decisions[symbol] = ("SKIP", "watchlist full")
    return decision


def uses_learned(candidates: pd.DataFrame, limits: Limits) -> bool:
    """The learned ranking is on and the scan has learned figures (a model was usable on its session)."""
    return (limits.ranking == "learned" and "learned" in candidates.columns
            and bool(np.isfinite(candidates["learned"].to_numpy(dtype=float)).any()))


def _decide_learned(score: int, row: Mapping[str, Any], block: str | None, slots_left: int,
                    limits: Limits) -> tuple[str, str]:
    figure = row["learned"]
    said = "learned -" if figure != figure else f"learned {figure * 100:+.2f}%"
    strong = bool(row["stage2"]) and score >= limits.watch_score_min and figure == figure and figure > 0
    if strong and block is None and slots_left > 0:
        return "BUY", f"{said}, score {score}, momentum breakout"
    if strong:
        return "WATCH", f"{said}, score {score} but {block or 'no free slot'}"
    if not row["stage2"]:
        return ("WATCH" if score >= limits.watch_score_min else "SKIP"), f"{said}, score {score}; stage 2 not passed"
    return ("WATCH" if score >= limits.watch_score_min else "SKIP"), f"{said}, score {score}"


def rank_stage1(candidates: pd.DataFrame, *, by_learned: bool = False) -> np.ndarray:
    """Row positions of the stage-1 candidates by score (or by the learned figure), then volume surge (both highest
    first, a missing value last), ties in their original order."""
    rows = np.flatnonzero(candidates["stage1"].to_numpy(dtype=bool))
    key = candidates["learned" if by_learned else "score"].to_numpy(dtype=float)[rows]
    surge = candidates["volume_surge"].to_numpy(dtype=float)[rows]
    # np.lexsort is stable and sorts by its last key first; negating makes both descending and leaves NaN last
    return rows[np.lexsort((-surge, np.where(np.isnan(key), np.inf, -key)))]


def _decide_one(symbol: str, row: Mapping[str, Any], held: set[str], block: str | None, slots_left: int,
                limits: Limits) -> tuple[str, str]:
    score = int(row["score"])
    if symbol in held:
        return "SKIP", "already held"
    if row.get("learned") is not None:
        return _decide_learned(score, row, block, slots_left, limits)
    strong = score >= limits.buy_score_min and bool(row["stage2"])
    if strong and block is None and slots_left > 0:
        return "BUY", f"score {score}, momentum breakout"
    if strong:
        return "WATCH", f"score {score} but {block or 'no free slot'}"
    if score >= limits.buy_score_min:
        return "WATCH", f"score {score} but stage 2 not passed"
    if score >= limits.watch_score_min:
        return "WATCH", f"score {score}"
    if not row["stage2"]:
        return "SKIP", f"score {score}; stage 2 not passed"
    return "SKIP", f"score {score} below {limits.watch_score_min}"

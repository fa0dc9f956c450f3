import numpy as np
import pandas as pd
import pytest

from core import rules_decider
from core.rules_decider import Limits, decide, decide_positions, in_skip_mode

LIMITS = Limits(free_slots=6, free_cap_slots=2, max_buys=2)


def frame(rows):
    """rows: (symbol, score, stage2, volume_surge); every row passed stage 1."""
    return pd.DataFrame([{"symbol": s, "score": sc, "stage1": True, "stage2": st2, "volume_surge": vs}
                         for s, sc, st2, vs in rows]).set_index("symbol")


def test_buys_the_best_scores_up_to_the_slots_and_watches_the_rest():
    candidates = frame([("A", 12, True, 2.0), ("B", 15, True, 1.5), ("C", 15, True, 3.0), ("D", 11, True, 2.0),
                        ("E", 8, False, 1.4), ("F", 7, True, 1.3)])
    decision = decide(candidates, [], set(), LIMITS)
    assert decision.buys == ["C", "B"]  # equal scores ranked by volume surge
    assert decision.candidate_decisions["A"] == ("WATCH", "score 12 but no free slot")
    assert decision.candidate_decisions["D"] == ("WATCH", "score 11")
    assert decision.candidate_decisions["E"] == ("WATCH", "score 8")
    assert decision.candidate_decisions["F"] == ("SKIP", "score 7 below 8")
    assert decision.watch == ["A", "D", "E"]


@pytest.mark.parametrize("score, stage2, expected", [(12, True, "BUY"), (11, True, "WATCH"), (12, False, "WATCH"),
                                                     (8, False, "WATCH"), (7, True, "SKIP")])
def test_score_edges(score, stage2, expected):
    decision = decide(frame([("X", score, stage2, 2.0)]), [], set(), LIMITS)
    assert decision.candidate_decisions["X"][0] == expected


@pytest.mark.parametrize("limits, reason", [
    (Limits(0, 2, 2), "no free slot"), (Limits(6, 0, 2), "no free slot"), (Limits(6, 2, 0), "no free slot"),
    (Limits(6, 2, 2, halted=True), "trading halted"), (Limits(6, 2, 2, regime_blocks_buys=True), "regime CRASH"),
])
def test_no_buy_without_a_slot_or_while_blocked(limits, reason):
    decision = decide(frame([("X", 16, True, 2.0)]), [], set(), limits)
    assert decision.buys == [] and reason in decision.candidate_decisions["X"][1]


def test_held_symbols_are_skipped_and_skip_mode_blocks_buys_while_every_holding_is_healthy():
    healthy = [{"symbol": "H", "reversal_score": 2}]
    decision = decide(frame([("H", 18, True, 2.0), ("X", 16, True, 2.0)]), healthy, {"H"}, LIMITS)
    assert decision.skip_mode and decision.buys == []
    assert decision.candidate_decisions["H"] == ("SKIP", "already held")
    assert "skip mode" in decision.candidate_decisions["X"][1]
    weakening = [{"symbol": "H", "reversal_score": 3}]
    assert not in_skip_mode(weakening, LIMITS)
    assert decide(frame([("X", 16, True, 2.0)]), weakening, {"H"}, LIMITS).buys == ["X"]
    assert not in_skip_mode(healthy, Limits(6, 2, 2, skip_buys=False))


def test_watchlist_keeps_five():
    rows = [(f"S{i}", 9, False, 1.0 + i / 10) for i in range(8)]
    decision = decide(frame(rows), [], set(), LIMITS)
    assert len(decision.watch) == 5
    assert sum(1 for d, r in decision.candidate_decisions.values() if r == "watchlist full") == 3


@pytest.mark.parametrize("position, expected", [
    ({"symbol": "A", "reversal_score": 5, "roc_10d": 0.02, "price": 10, "sma20": 9}, "reversal score 5 >= 5"),
    ({"symbol": "A", "reversal_score": 4, "roc_10d": -0.01, "price": 9, "sma20": 10}, "thesis broken"),
    ({"symbol": "A", "reversal_score": 4, "roc_10d": -0.01, "price": 11, "sma20": 10}, None),
    ({"symbol": "A", "reversal_score": 4, "roc_10d": 0.0, "price": 9, "sma20": 10}, None),
])
def test_position_close_rules(position, expected):
    closes, holds = decide_positions([position], LIMITS)
    if expected is None:
        assert closes == [] and holds == ["A"]
    else:
        assert closes[0][0] == "A" and expected in closes[0][1]


def test_autoclose_off_keeps_a_high_reversal_score():
    position = {"symbol": "A", "reversal_score": 9, "roc_10d": 0.05, "price": 11, "sma20": 10}
    assert decide_positions([position], Limits(6, 2, 2, autoclose=False)) == ([], ["A"])
    assert decide_positions([position], Limits(6, 2, 2, autoclose_threshold=10))[0] == []


@pytest.mark.parametrize("seed", range(5))
def test_stage1_ranking_matches_a_stable_sort_by_score_then_surge(seed):
    rng = np.random.default_rng(seed)
    n = 300
    surge = rng.choice([1.2, 1.5, 2.0, np.nan, 3.0], n)  # many ties, some missing
    frame = pd.DataFrame({"stage1": rng.random(n) < 0.6, "score": rng.integers(0, 6, n),
                          "volume_surge": surge}, index=[f"S{i:03d}" for i in range(n)])
    expected = frame[frame["stage1"]].sort_values(["score", "volume_surge"], ascending=[False, False],
                                                  kind="mergesort").index.tolist()
    assert frame.index[rules_decider.rank_stage1(frame)].tolist() == expected

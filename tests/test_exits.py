"""Exit conditions: each at its exact edge, resolution by priority, partial tranches, option order, urgency."""
from __future__ import annotations

from dataclasses import replace

import pytest

from config import load_config
from core.exit_rules import (
    CRITICAL,
    HIGH,
    LOW,
    MEDIUM,
    PRIORITY_RANK,
    ExitRules,
    ExitTrigger,
    PortfolioFlags,
    PositionState,
    choose,
    evaluate,
    is_urgent,
)

CALM = PortfolioFlags(day_pnl_frac=0.0)
# A held stock that triggers nothing: +1%, one session old, tight spread, healthy volume, no reversal.
HEALTHY = PositionState(trade_id=1, symbol="AAA", qty=100, original_qty=100, entry_price=100.0, price=101.0,
                        bid=100.99, ask=101.01, peak_price=101.0, sessions_held=1, reversal_score=0,
                        roc_10d=0.03, sma20=98.0, projected_volume_ratio=1.0)
# A call bought at $2.00 on a bullish signal (stop 95, target 110) with the underlying at 100, 10 days to expiry.
CALL = PositionState(trade_id=2, symbol="AAA240621C00100000", qty=1, original_qty=1, entry_price=2.0, price=2.2,
                     asset_class="us_option", bid=2.0, ask=2.4, days_to_expiry=10, underlying_price=100.0,
                     underlying_stop=95.0, underlying_target=110.0)
PUT = replace(CALL, symbol="AAA240621P00100000", underlying_stop=105.0, underlying_target=90.0)


def reasons(position: PositionState, flags: PortfolioFlags = CALM, rules: ExitRules | None = None) -> list[str]:
    return [trigger.reason for trigger in evaluate(position, flags, rules)]


def test_healthy_position_and_calm_option_trigger_nothing():
    assert evaluate(HEALTHY, CALM) == []
    assert evaluate(CALL, CALM) == []
    assert evaluate(PUT, CALM) == []


EQUITY_EDGES = [
    # reason, changes that just fire it, changes just inside the edge
    ("stop_loss", {"price": 92.0}, {"price": 92.01, "peak_price": 92.01}),
    ("trailing_stop", {"peak_price": 120.0, "price": 114.0}, {"peak_price": 120.0, "price": 114.01}),
    ("reversal", {"reversal_score": 5}, {"reversal_score": 4}),
    ("reversal", {"reversal_score": 7, "autoclose_threshold": 7}, {"reversal_score": 13, "autoclose": False}),
    ("liquidity_dried_up", {"bid": 99.49, "ask": 100.51}, {"bid": 99.5, "ask": 100.5}),
    ("liquidity_dried_up", {"projected_volume_ratio": 0.1999}, {"projected_volume_ratio": 0.20}),
    ("partial_exit_target", {"price": 115.0}, {"price": 114.99}),
    ("partial_exit_target", {"price": 125.0, "partial_15_done": True, "qty": 50},
     {"price": 124.99, "partial_15_done": True, "qty": 50}),
    ("profit_target", {"target_price": 101.0}, {"target_price": 101.01}),
    ("edge_disappeared", {"roc_10d": -0.0001, "sma20": 101.01}, {"roc_10d": 0.0, "sma20": 101.01}),
    ("edge_disappeared", {"roc_10d": -0.05, "sma20": 101.01}, {"roc_10d": -0.05, "sma20": 101.0}),
    ("early_exit", {"sessions_held": 10, "price": 101.99}, {"sessions_held": 10, "price": 102.0}),
    ("early_exit", {"sessions_held": 10, "price": 101.99}, {"sessions_held": 9, "price": 101.99}),
    ("rebalance", {"slots_full": True, "is_weakest": True, "best_candidate_score_gap": 5.0},
     {"slots_full": True, "is_weakest": True, "best_candidate_score_gap": 4.99}),
    ("rebalance", {"slots_full": True, "is_weakest": True, "best_candidate_score_gap": 6.0},
     {"slots_full": True, "is_weakest": False, "best_candidate_score_gap": 6.0}),
    ("rebalance", {"slots_full": True, "is_weakest": True, "best_candidate_score_gap": 6.0},
     {"slots_full": False, "is_weakest": True, "best_candidate_score_gap": 6.0}),
]


@pytest.mark.parametrize("reason, fires, inside", EQUITY_EDGES)
def test_equity_condition_fires_at_its_edge_and_not_just_inside(reason, fires, inside):
    assert reason in reasons(replace(HEALTHY, **fires))
    assert reason not in reasons(replace(HEALTHY, **inside))


@pytest.mark.parametrize("day_pnl, fires", [(-0.03, True), (-0.0299, False), (-0.05, True)])
def test_circuit_breaker_at_minus_three_percent_of_start_of_day_equity(day_pnl, fires):
    assert ("circuit_breaker" in reasons(HEALTHY, PortfolioFlags(day_pnl_frac=day_pnl))) is fires
    assert ("circuit_breaker" in reasons(CALL, PortfolioFlags(day_pnl_frac=day_pnl))) is fires


def test_kill_switch_closes_everything_at_market_priority():
    [trigger] = evaluate(HEALTHY, PortfolioFlags(day_pnl_frac=0.0, kill_switch=True))
    assert trigger == ExitTrigger("kill_switch", CRITICAL, 100, False, "halt with flatten")


def test_trailing_stop_peak_is_never_below_entry():
    # No peak recorded yet: the entry is the peak, so the backstop sits at 95.
    assert "trailing_stop" in reasons(replace(HEALTHY, peak_price=None, price=95.0))
    assert "trailing_stop" not in reasons(replace(HEALTHY, peak_price=None, price=95.01))


def test_priorities_and_reasons_are_exactly_the_spec_vocabulary():
    assert sorted(PRIORITY_RANK, key=PRIORITY_RANK.get) == [CRITICAL, HIGH, MEDIUM, LOW]
    crash = replace(HEALTHY, price=91.0, reversal_score=9, sessions_held=12, roc_10d=-0.1, sma20=100.0)
    triggers = evaluate(crash, PortfolioFlags(day_pnl_frac=-0.04, kill_switch=True))
    assert [(t.reason, t.priority) for t in triggers] == [
        ("stop_loss", CRITICAL), ("circuit_breaker", CRITICAL), ("kill_switch", CRITICAL),
        ("trailing_stop", HIGH), ("reversal", HIGH), ("edge_disappeared", LOW), ("early_exit", LOW)]


def test_three_conditions_at_once_are_all_recorded_and_the_highest_wins():
    # Down 8.5% from entry after 12 sessions, with a reversal score over the threshold.
    position = replace(HEALTHY, price=91.5, peak_price=104.0, reversal_score=6, sessions_held=12)
    triggers = evaluate(position, CALM)
    assert [t.reason for t in triggers] == ["stop_loss", "trailing_stop", "reversal", "early_exit"]
    winner = choose(triggers)
    assert (winner.reason, winner.priority, winner.qty, winner.partial) == ("stop_loss", CRITICAL, 100, False)
    assert choose(list(reversed(triggers))) == winner


def test_choose_of_nothing_is_none():
    assert choose([]) is None


def test_a_full_exit_wins_over_a_partial_of_the_same_priority():
    position = replace(HEALTHY, price=116.0, peak_price=116.0, target_price=112.0)
    triggers = evaluate(position, CALM)
    assert [(t.reason, t.partial) for t in triggers] == [("profit_target", False), ("partial_exit_target", True)]
    assert choose(triggers).qty == 100


def test_a_partial_of_higher_priority_wins_over_a_lower_full_exit():
    position = replace(HEALTHY, price=116.0, peak_price=116.0, roc_10d=-0.01, sma20=118.0)
    winner = choose(evaluate(position, CALM))
    assert (winner.reason, winner.qty, winner.partial, winner.tranche) == ("partial_exit_target", 50, True, 1)


def test_partials_each_fire_once_and_leave_the_rest_with_an_odd_original_quantity():
    position = replace(HEALTHY, qty=7, original_qty=7, price=115.0, peak_price=115.0)
    first = choose(evaluate(position, CALM))
    assert (first.reason, first.qty, first.partial, first.tranche) == ("partial_exit_target", 3, True, 1)
    # After the first tranche: 4 left, +25% sells 25% of the ORIGINAL 7, rounded down.
    after_first = replace(position, qty=7 - first.qty, partial_15_done=True, price=125.0, peak_price=125.0)
    assert evaluate(replace(after_first, price=124.0, peak_price=125.0), CALM) == []
    second = choose(evaluate(after_first, CALM))
    assert (second.reason, second.qty, second.partial, second.tranche) == ("partial_exit_target", 1, True, 2)
    after_second = replace(after_first, qty=after_first.qty - second.qty, partial_25_done=True, price=140.0,
                           peak_price=140.0)
    assert after_second.qty == 3
    assert evaluate(after_second, CALM) == []  # the rest trails


def test_gap_through_both_levels_sells_only_the_first_tranche_this_run():
    triggers = evaluate(replace(HEALTHY, qty=101, original_qty=101, price=130.0, peak_price=130.0), CALM)
    assert [(t.reason, t.qty, t.tranche) for t in triggers] == [("partial_exit_target", 50, 1)]


@pytest.mark.parametrize("qty, original_qty, partial_15_done, expected_qty, partial", [
    (1, 1, False, 1, False),  # half of one share is no share: at least one, so the whole position goes
    (1, 3, True, 1, False),  # 25% of 3 rounds to 0 -> one share, which is all that is held
    (2, 20, True, 2, False),  # 25% of 20 is 5, but only 2 are held
    (3, 3, False, 1, True),
])
def test_partial_quantity_is_floored_at_least_one_and_at_most_held(qty, original_qty, partial_15_done,
                                                                   expected_qty, partial):
    position = replace(HEALTHY, qty=qty, original_qty=original_qty, partial_15_done=partial_15_done, price=126.0,
                       peak_price=126.0)
    [trigger] = evaluate(position, CALM)
    assert (trigger.reason, trigger.qty, trigger.partial) == ("partial_exit_target", expected_qty, partial)


def test_full_exits_sell_the_current_quantity():
    [trigger] = evaluate(replace(HEALTHY, qty=37, reversal_score=5), CALM)
    assert (trigger.qty, trigger.partial) == (37, False)


def test_nothing_to_exit_without_shares():
    assert evaluate(replace(HEALTHY, qty=0, price=50.0), CALM) == []


def test_without_a_price_only_portfolio_conditions_are_judged():
    position = replace(HEALTHY, price=float("nan"))
    assert evaluate(position, CALM) == []
    assert reasons(position, PortfolioFlags(day_pnl_frac=-0.03)) == ["circuit_breaker"]


def test_rules_from_config_turn_percents_into_fractions(tmp_path):
    config = load_config({"HARD_STOP_PCT": "10", "TRAILING_STOP_PCT": "4", "DAILY_LOSS_LIMIT_PCT": "2"},
                         environ={}, dotenv_path=tmp_path / "none.env")
    rules = ExitRules.from_config(config)
    assert (rules.hard_stop_frac, rules.trailing_stop_frac, rules.daily_loss_limit_frac) == (0.10, 0.04, 0.02)
    assert "stop_loss" in reasons(replace(HEALTHY, price=90.0), rules=rules)
    assert "stop_loss" not in reasons(replace(HEALTHY, price=90.01), rules=rules)
    assert "trailing_stop" in reasons(replace(HEALTHY, price=96.0, peak_price=100.0), rules=rules)
    assert "circuit_breaker" in reasons(HEALTHY, PortfolioFlags(-0.02), rules)


# --- options ------------------------------------------------------------------------------------------------------

OPTION_EDGES = [
    ("time_based_urgent", CALL, {"days_to_expiry": 3}, {"days_to_expiry": 4}),
    ("stop_loss", CALL, {"underlying_price": 95.0}, {"underlying_price": 95.01}),
    ("stop_loss", PUT, {"underlying_price": 105.0}, {"underlying_price": 104.99}),
    ("max_loss", CALL, {"price": 1.0}, {"price": 1.01}),
    ("profit_target", CALL, {"underlying_price": 110.0}, {"underlying_price": 109.99}),
    ("profit_target", PUT, {"underlying_price": 90.0}, {"underlying_price": 90.01}),
    ("profit_target", CALL, {"price": 4.0}, {"price": 3.99}),
]


@pytest.mark.parametrize("reason, option, fires, inside", OPTION_EDGES)
def test_option_condition_fires_at_its_edge_and_not_just_inside(reason, option, fires, inside):
    assert reason in reasons(replace(option, **fires))
    assert reason not in reasons(replace(option, **inside))


def test_option_priorities_follow_spec_12_with_expiry_first():
    dying = replace(CALL, days_to_expiry=2, underlying_price=94.0, price=0.9)
    triggers = evaluate(dying, CALM)
    assert [(t.reason, t.priority) for t in triggers] == [
        ("time_based_urgent", HIGH), ("stop_loss", HIGH), ("max_loss", HIGH)]
    assert choose(triggers).reason == "time_based_urgent"
    winning = replace(CALL, days_to_expiry=3, underlying_price=111.0, price=4.5)
    assert [(t.reason, t.priority) for t in evaluate(winning, CALM)] == [
        ("time_based_urgent", HIGH), ("profit_target", MEDIUM), ("profit_target", MEDIUM)]


def test_equity_rules_do_not_apply_to_options():
    # Premium -20% with a 19% spread, ten sessions old at no gain: every equity row would fire, no option row does.
    position = replace(CALL, price=1.6, peak_price=2.4, bid=1.45, ask=1.75, sessions_held=12, reversal_score=13,
                       projected_volume_ratio=0.01, target_price=1.5)
    assert evaluate(position, CALM) == []


def test_option_without_a_known_direction_still_has_its_premium_exits():
    unknown = replace(CALL, underlying_target=None, underlying_price=50.0)
    assert reasons(unknown) == []
    assert reasons(replace(unknown, price=1.0)) == ["max_loss"]


# --- urgency ------------------------------------------------------------------------------------------------------

URGENCY_EDGES = [
    # position, urgent changes, not-urgent changes
    ("trailing stop", HEALTHY, {"price": 96.9, "peak_price": 100.0}, {"price": 96.91, "peak_price": 100.0}),
    ("first partial target", HEALTHY, {"price": 112.7}, {"price": 112.69}),
    ("second partial target", HEALTHY, {"price": 122.5, "peak_price": 122.5, "partial_15_done": True},
     {"price": 122.49, "peak_price": 122.5, "partial_15_done": True}),
    ("signal target", HEALTHY, {"target_price": 103.0, "price": 100.94}, {"target_price": 103.0, "price": 100.93}),
    ("call underlying stop", CALL, {"underlying_price": 96.9}, {"underlying_price": 96.91}),
    ("call underlying target", CALL, {"underlying_price": 107.8}, {"underlying_price": 107.79}),
    ("put underlying stop", PUT, {"underlying_price": 102.9}, {"underlying_price": 102.89}),
    ("put underlying target", PUT, {"underlying_price": 91.8}, {"underlying_price": 91.81}),
    ("option max loss", CALL, {"price": 1.02}, {"price": 1.03}),
    ("option gain", CALL, {"price": 3.92}, {"price": 3.91}),
]


@pytest.mark.parametrize("name, position, urgent, calm", URGENCY_EDGES, ids=[edge[0] for edge in URGENCY_EDGES])
def test_urgent_within_two_percent_of_a_stop_or_target(name, position, urgent, calm):
    assert is_urgent(replace(position, **urgent)) is True
    assert is_urgent(replace(position, **calm)) is False


def test_hard_stop_urgency_when_the_trailing_stop_is_wider():
    rules = ExitRules(trailing_stop_frac=0.20)
    assert is_urgent(replace(HEALTHY, price=93.84, peak_price=100.0), rules) is True  # 92 x 1.02
    assert is_urgent(replace(HEALTHY, price=93.85, peak_price=100.0), rules) is False


def test_past_a_level_is_urgent_too_and_both_partials_done_leave_only_stops():
    assert is_urgent(replace(HEALTHY, price=80.0)) is True
    assert is_urgent(replace(HEALTHY, price=130.0, peak_price=130.0)) is True
    done = replace(HEALTHY, price=130.0, peak_price=130.0, partial_15_done=True, partial_25_done=True)
    assert is_urgent(done) is False
    assert is_urgent(replace(done, qty=0)) is False

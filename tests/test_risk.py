"""Position sizing and the pre-trade gates: each gate at its exact edge, batches, halts."""
from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from common.types import BUY, SELL
from config import load_config
from core.risk import (
    BUY_GATES,
    GateResult,
    HeldPosition,
    OrderProposal,
    PortfolioState,
    RiskLimits,
    check_orders,
    daily_loss_breached,
    pearson_correlation,
    refusal_storm,
    size_position,
)

EQUITY = 100_000.0
UNIVERSE = {f"S{i:02d}" for i in range(60)} | {"AAA", "BBB", "CCC", "HELD", "HELD2"}
ROOMY = RiskLimits(max_positions_by_cap={"large": 50, "mid": 50, "small": 50},
                   max_buys_by_cap={"large": 50, "mid": 50, "small": 50})


def make_state(**changes) -> PortfolioState:
    state = PortfolioState(
        equity=EQUITY, cash=EQUITY, buying_power=EQUITY, start_of_day_equity=EQUITY, positions={},
        open_order_symbols=set(), universe=set(UNIVERSE), tradable=None, market_open=True, halted=False,
        circuit_breaker=False, regime="TREND_BULL", regime_factor=1.0, returns_60d={}, buys_this_scan_by_cap={})
    return replace(state, **changes)


def held(symbol: str, qty: int = 10, price: float = 100.0, cap: str = "large",
         stop_price: float | None = None) -> HeldPosition:
    # A stop at the price carries no open risk, so heat stays out of tests about other gates.
    return HeldPosition(symbol, qty, price, cap, price if stop_price is None else stop_price)


def holdings(*positions: HeldPosition) -> dict[str, HeldPosition]:
    return {position.symbol: position for position in positions}


def buy(symbol: str = "AAA", qty: int = 100, price: float = 100.0, cap: str = "large", **kw) -> OrderProposal:
    return OrderProposal(symbol, BUY, qty, price, cap, **kw)


def sell(symbol: str = "HELD", qty: int = 10, price: float = 100.0, cap: str = "large") -> OrderProposal:
    return OrderProposal(symbol, SELL, qty, price, cap, kind="exit")


def judge_one(order: OrderProposal, state: PortfolioState, limits: RiskLimits | None = None) -> GateResult:
    [result] = check_orders([order], state, limits or RiskLimits())
    return result


def correlated_pair(rho: float, days: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """Two return series whose sample correlation is exactly rho (orthonormal parts mixed)."""
    rng = np.random.default_rng(11)
    base, noise = rng.standard_normal((2, days))
    base -= base.mean()
    noise -= noise.mean()
    noise -= base * (noise @ base) / (base @ base)
    base, noise = base / np.linalg.norm(base), noise / np.linalg.norm(noise)
    return 0.01 * base, 0.01 * (rho * base + np.sqrt(1 - rho * rho) * noise)


# --- sizing -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method,price,atr,returns,qty,method_used,reason_part", [
    ("fixed", 33.0, None, [], 303, "fixed", "10.0% of equity"),
    ("fixed", 100.0, None, [], 100, "fixed", "10.0% of equity"),
    ("fixed", 0.0, None, [], 0, "fixed", ""),
    ("atr", 40.0, 2.5, [], 200, "atr", "risk $1,000.00 / stop distance $5.00"),
    ("atr", 40.0, 0.5, [], 250, "atr", "capped at the fixed size 250"),
    ("atr", 40.0, None, [], 250, "fixed", "no usable ATR14"),
    ("kelly", 50.0, None, [0.06] * 10 + [-0.04] * 9, 200, "fixed", "kelly needs 20 closed trades, have 19"),
    ("kelly", 50.0, None, [0.02] * 10 + [-0.05] * 10, 0, "kelly", "negative edge"),
    ("kelly", 50.0, None, [0.06] * 10 + [-0.04] * 10, 83, "kelly", "quarter Kelly 4.17%"),
    ("kelly", 50.0, None, [0.10] * 15 + [-0.05] * 5, 200, "kelly", "capped at the fixed size"),
])
def test_size_position(method, price, atr, returns, qty, method_used, reason_part):
    sizing = size_position(method, EQUITY, price, atr, returns, RiskLimits())
    assert (sizing.qty, sizing.method_used) == (qty, method_used)
    assert reason_part in sizing.reason


def test_size_position_rejects_an_unknown_method():
    with pytest.raises(ValueError, match="unknown sizing method"):
        size_position("martingale", EQUITY, 10.0)


def test_limits_from_config_are_fractions(tmp_path):
    defaults = load_config(environ={}, dotenv_path=tmp_path / "none.env")
    assert RiskLimits.from_config(defaults) == RiskLimits()
    custom = load_config(environ={"POSITION_SIZE_PCT": "5", "MAX_POSITIONS_SMALL": "1", "MAX_BUYS_MID": "3",
                                  "POSITION_SIZING": "atr"}, dotenv_path=tmp_path / "none.env")
    limits = RiskLimits.from_config(custom)
    assert limits.position_size_frac == pytest.approx(0.05)
    assert limits.max_positions_by_cap == {"large": 2, "mid": 2, "small": 1}
    assert limits.max_buys_by_cap == {"large": 2, "mid": 3, "small": 2}
    assert limits.sizing_method == "atr"


# --- each buy gate at its edge ------------------------------------------------------------------------------------

EDGE_CASES = [
    # (case id, state changes, order, limits, refusing gate or None)
    ("halted", dict(halted=True), buy(), None, "halted_or_circuit_breaker"),
    ("breaker flag", dict(circuit_breaker=True), buy(), None, "halted_or_circuit_breaker"),
    ("day loss at -3%", dict(equity=97_000.0), buy(qty=90), None, "halted_or_circuit_breaker"),
    ("day loss inside -3%", dict(equity=97_000.01), buy(qty=90), None, None),
    ("market closed", dict(market_open=False), buy(), None, "market_hours"),
    ("crash", dict(regime="CRASH", regime_factor=0.0), buy(), None, "regime"),
    ("factor 0", dict(regime=None, regime_factor=0.0), buy(), None, "regime"),
    ("bear allows small buys", dict(regime="TREND_BEAR", regime_factor=0.3), buy(), None, None),
    ("not in universe", {}, buy("ZZZ"), None, "symbol_valid"),
    ("not tradable", dict(tradable={"BBB"}), buy("AAA"), None, "symbol_valid"),
    ("tradable", dict(tradable={"AAA"}), buy("AAA"), None, None),
    ("price $5.00", {}, buy(qty=1, price=5.00), None, "symbol_valid"),
    ("price $5.01", {}, buy(qty=1, price=5.01), None, None),
    ("qty 0", {}, buy(qty=0), None, "symbol_valid"),
    ("qty 1", {}, buy(qty=1), None, None),
    ("already held", dict(positions=holdings(held("AAA"))), buy("AAA"), None, "duplicate"),
    ("open order", dict(open_order_symbols={"AAA"}), buy("AAA"), None, "duplicate"),
    ("7th position", dict(positions=holdings(*(held(f"S{i:02d}") for i in range(6)))), buy(), ROOMY,
     "max_positions"),
    ("6th position", dict(positions=holdings(*(held(f"S{i:02d}") for i in range(5)))), buy(), ROOMY, None),
    ("3rd large", dict(positions=holdings(held("S01"), held("S02"))), buy(), None, "max_positions_cap"),
    ("2nd large", dict(positions=holdings(held("S01"), held("S02", cap="mid"))), buy(), None, None),
    ("unknown cap", {}, buy(cap="micro"), None, "max_positions_cap"),
    ("3rd large buy this scan", dict(buys_this_scan_by_cap={"large": 2}), buy(), None, "max_buys_scan"),
    ("2nd large buy this scan", dict(buys_this_scan_by_cap={"large": 1, "mid": 2}), buy(), None, None),
    # 10% of $100,000 with the 0.5% rounding tolerance is $10,050.
    ("size $10,050.10", {}, buy(qty=100, price=100.501), None, "position_size"),
    ("size $10,050.00", {}, buy(qty=100, price=100.50), None, None),
    ("exposure 60% + 1 cent", dict(positions=holdings(held("HELD", qty=500, cap="mid"))),
     buy(qty=100, price=100.0001), None, "exposure"),
    ("exposure 60%", dict(positions=holdings(held("HELD", qty=500, cap="mid"))), buy(qty=100), None, None),
    ("exposure 42% x factor 0.7 + 1 cent", dict(regime_factor=0.7, positions=holdings(held("HELD", 320, cap="mid"))),
     buy(qty=100, price=100.0001), None, "exposure"),
    ("exposure 42% x factor 0.7", dict(regime_factor=0.7, positions=holdings(held("HELD", 320, cap="mid"))),
     buy(qty=100), None, None),
    ("buying power short 1 cent", dict(buying_power=10_000.0), buy(qty=100, price=100.0001), None, "buying_power"),
    ("buying power exact", dict(buying_power=10_000.0), buy(qty=100), None, None),
    # Held risk $5,500 (500 x $11) plus the entry's $500 (5% of $10,000) is exactly the 6% limit.
    ("heat 6% + 1 cent", dict(positions=holdings(held("HELD", 500, 50.0, "mid", stop_price=38.99998))), buy(),
     None, "portfolio_heat"),
    ("heat 6%", dict(positions=holdings(held("HELD", 500, 50.0, "mid", stop_price=39.0))), buy(), None, None),
    ("unprotected counts a trailing stop", dict(positions=holdings(
        held("HELD", 500, 50.0, "mid", stop_price=39.0), HeldPosition("HELD2", 100, 10.0, "small", None))),
     buy(), None, "portfolio_heat"),
]


@pytest.mark.parametrize("changes,order,limits,refused_by", [case[1:] for case in EDGE_CASES],
                         ids=[case[0] for case in EDGE_CASES])
def test_buy_gate_edges(changes, order, limits, refused_by):
    result = judge_one(order, make_state(**changes), limits)
    assert (result.allowed, result.gate) == (refused_by is None, refused_by), result.detail


def test_exposure_refusal_names_the_numbers():
    state = make_state(positions=holdings(held("HELD", qty=512, cap="mid")))
    result = judge_one(buy(qty=100), state)
    assert result.detail == "exposure 61.2% would exceed 60.0% x regime factor 1.0"


def test_tenfold_oversized_order_is_refused_by_position_size():
    result = judge_one(buy(qty=1000), make_state(buying_power=10 * EQUITY))
    assert (result.allowed, result.gate) == (False, "position_size")
    assert "100.00% of equity would exceed 10.0%" in result.detail


def test_symbol_twice_in_a_batch_refuses_the_second():
    first, second = check_orders([buy("AAA", qty=50), buy("AAA", qty=50)], make_state(), RiskLimits())
    assert first.allowed and (second.allowed, second.gate) == (False, "duplicate")


def test_gates_are_listed_in_the_documented_order():
    assert [name for name, _ in BUY_GATES] == [
        "halted_or_circuit_breaker", "market_hours", "regime", "symbol_valid", "duplicate", "max_positions",
        "max_positions_cap", "max_buys_scan", "position_size", "exposure", "buying_power", "portfolio_heat",
        "correlation"]


# --- correlation --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rho,allowed", [(0.9, False), (0.3, True), (0.7000001, False), (0.7, True)])
def test_correlation_gate(rho, allowed):
    held_returns, candidate_returns = correlated_pair(rho)
    assert pearson_correlation(held_returns, candidate_returns) == pytest.approx(rho, abs=1e-12)
    state = make_state(positions=holdings(held("HELD", cap="mid")),
                       returns_60d={"HELD": held_returns, "AAA": candidate_returns})
    result = judge_one(buy("AAA"), state)
    assert (result.allowed, result.gate) == (allowed, None if allowed else "correlation")
    if not allowed:
        assert result.detail == f"60-day return correlation {rho:.2f} with HELD would exceed 0.70"


def test_correlation_with_missing_data_passes_with_a_note():
    held_returns, _ = correlated_pair(0.9)
    state = make_state(positions=holdings(held("HELD", cap="mid")), returns_60d={"HELD": held_returns})
    result = judge_one(buy("AAA"), state)
    assert result.allowed and result.detail == "no 60-day returns for AAA: correlation not checked"
    state.returns_60d["AAA"] = np.full(60, np.nan)
    result = judge_one(buy("AAA"), state)
    assert result.allowed and result.detail == "correlation not checked against HELD (missing data)"


def test_a_buy_accepted_earlier_in_the_batch_counts_for_correlation():
    first_returns, second_returns = correlated_pair(0.9)
    state = make_state(returns_60d={"AAA": first_returns, "BBB": second_returns})
    first, second = check_orders([buy("AAA"), buy("BBB", cap="mid")], state, RiskLimits())
    assert first.allowed and (second.allowed, second.gate) == (False, "correlation")


# --- sells and batches --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("order,refused_by", [
    (sell("HELD", 10), None),
    (sell("HELD", 11), "sell_qty"),
    (sell("HELD", 0), "sell_qty"),
    (sell("AAA", 10), "symbol_held"),
])
def test_sell_gates(order, refused_by):
    result = judge_one(order, make_state(positions=holdings(held("HELD", qty=10))))
    assert (result.allowed, result.gate) == (refused_by is None, refused_by)


def test_sells_need_market_hours():
    result = judge_one(sell(), make_state(market_open=False, positions=holdings(held("HELD"))))
    assert (result.allowed, result.gate) == (False, "market_hours")


@pytest.mark.parametrize("changes", [dict(regime="CRASH", regime_factor=0.0), dict(halted=True),
                                     dict(circuit_breaker=True)], ids=["crash", "halted", "breaker"])
def test_crash_halt_and_breaker_block_buys_but_not_sells(changes):
    state = make_state(positions=holdings(held("HELD", qty=10)), **changes)
    buy_result, sell_result = check_orders([buy(), sell("HELD", 10)], state, RiskLimits())
    assert not buy_result.allowed and buy_result.gate in ("regime", "halted_or_circuit_breaker")
    assert sell_result.allowed


def test_sells_free_buying_power_for_later_buys():
    state = make_state(buying_power=5_000.0, positions=holdings(held("HELD", qty=100, cap="mid")))
    # Listed before the sell on purpose: the batch is judged sells first.
    first_buy, the_sell, second_buy = check_orders(
        [buy("AAA"), sell("HELD", 100), buy("BBB", cap="small")], state, RiskLimits())
    assert the_sell.allowed and first_buy.allowed
    assert (second_buy.allowed, second_buy.gate) == (False, "buying_power")
    assert second_buy.detail.startswith("cost $10,000.00 exceeds buying power $5,000.00")
    assert state.buying_power == 5_000.0 and "HELD" in state.positions  # the caller's state is untouched


def test_a_sold_position_frees_its_slot():
    state = make_state(positions=holdings(held("S01"), held("S02")))
    results = check_orders([buy("AAA"), sell("S01", 10)], state, RiskLimits())
    assert [result.allowed for result in results] == [True, True]


@pytest.mark.parametrize("limits,regime_factor,binding_gate", [
    (RiskLimits(), 1.0, "max_positions_cap"), (ROOMY, 1.0, "max_positions"), (ROOMY, 0.7, "exposure")],
    ids=["defaults", "roomy per-cap limits", "neutral regime"])
def test_a_batch_of_50_buys_never_exceeds_a_limit(limits, regime_factor, binding_gate):
    rng = np.random.default_rng(5)
    prices = rng.uniform(6, 300, 50).round(2)
    sizes = (EQUITY * 0.10 / prices * rng.uniform(0.5, 1.3, 50)).astype(int)  # some oversized on purpose
    caps = [("large", "mid", "small")[i % 3] for i in range(50)]
    proposals = [buy(f"S{i:02d}", int(sizes[i]), float(prices[i]), caps[i]) for i in range(50)]
    results = check_orders(proposals, make_state(regime_factor=regime_factor), limits)
    accepted = [result.proposal for result in results if result.allowed]
    values = [order.qty * order.price for order in accepted]
    assert 1 <= len(accepted) <= 6
    for cap in ("large", "mid", "small"):
        cap_limit = min(limits.max_positions_by_cap[cap], limits.max_buys_by_cap[cap])
        assert sum(order.cap == cap for order in accepted) <= cap_limit
    assert max(values) <= EQUITY * 0.1005
    assert sum(values) <= EQUITY * 0.60 * regime_factor
    refusing_gates = {result.gate for result in results}
    assert {"position_size", binding_gate} <= refusing_gates


def test_a_batch_of_50_buys_stops_at_six_positions():
    proposals = [buy(f"S{i:02d}", 50, 100.0, ("large", "mid", "small")[i % 3]) for i in range(50)]
    results = check_orders(proposals, make_state(), ROOMY)
    assert sum(result.allowed for result in results) == 6
    assert {result.gate for result in results if not result.allowed} == {"max_positions"}


def test_a_batch_stops_at_two_buys_per_cap():
    proposals = [buy(f"S{i:02d}", 50, 100.0, "small") for i in range(10)]
    results = check_orders(proposals, make_state(), RiskLimits(max_positions_by_cap={"small": 10}))
    assert [result.allowed for result in results] == [True, True] + [False] * 8
    assert results[2].detail == "3 small-cap buys this scan would exceed the maximum of 2"


# --- halts --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("equity,start,breached", [
    (97_000.0, 100_000.0, True), (97_000.01, 100_000.0, False), (90_000.0, 100_000.0, True),
    (101_000.0, 100_000.0, False), (50.0, 0.0, False)])
def test_daily_loss_breached(equity, start, breached):
    assert daily_loss_breached(equity, start, RiskLimits()) is breached


NOW = datetime(2024, 3, 4, 15, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("seconds_ago,storm", [
    ([0, 60, 120, 240, 300], True),
    ([0, 60, 120, 240], False),
    ([0, 75, 150, 225, 301], False),
    ([0, 10, 20, 30, 40, 400], True),
    ([-5, 10, 20, 30, 40], False),  # a time after `now` is not a refusal that has happened
])
def test_refusal_storm(seconds_ago, storm):
    times = [NOW - timedelta(seconds=s) for s in seconds_ago]
    assert refusal_storm(times, NOW) is storm

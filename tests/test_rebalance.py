"""The 52-week-high rebalance: the ranking on a crafted panel, and the rebalance, refill, sizing, warnings and the
other systems' positions on the real S&P 500 data."""
from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from common.types import Panel
from flows import rebalance
from flows.rebalance import PlannedOrder, RebalancePlan

from conftest import SHARED_DATA
from realdata import BARS, cli, rows

SECTOR = "Information Technology"


@pytest.fixture(autouse=True)
def _five_slots(monkeypatch):
    """These tests count five slots of the whole account (the defaults: 20 slots, chosen on the five-year evidence,
    in a 40% sleeve beside momentum's 60%)."""
    monkeypatch.setenv("REBALANCE_TOP_N", "5")
    monkeypatch.setenv("REBALANCE_SLEEVE_PCT", "100")


# --- the ranking on a crafted panel ---------------------------------------------------------------------------------

def _panel(closes: dict[str, list[float]], highs: dict[str, list[float]] | None = None) -> Panel:
    """Daily bars of equal length per symbol; the high is the close unless given."""
    symbols = list(closes)
    close = np.array([closes[s] for s in symbols], dtype=float).T
    high = np.array([(highs or {}).get(s, closes[s]) for s in symbols], dtype=float).T
    dates = np.arange(np.datetime64("2015-01-01"), np.datetime64("2015-01-01") + close.shape[0])
    return Panel(dates, symbols, close, high, close, close, np.full_like(close, 1e6))


def _rising(start: float, end: float, n: int = 253) -> list[float]:
    return list(np.linspace(start, end, n))


def test_names_at_their_high_are_ordered_by_the_12_month_return_then_by_ticker():
    history = _panel({"AAA": _rising(90, 100), "BBB": _rising(50, 100), "CCC": _rising(50, 100),
                      "DDD": [*_rising(100, 120, 200), *_rising(119, 110, 53)]})
    ranked = rebalance.rank_by_52_week_high(history)
    assert [r.symbol for r in ranked] == ["BBB", "CCC", "AAA", "DDD"]
    assert [r.ratio for r in ranked[:3]] == [1.0, 1.0, 1.0]  # a tie: the 12-month return decides
    assert ranked[0].return_12m == pytest.approx(1.0) and ranked[2].return_12m == pytest.approx(100 / 90 - 1)
    assert ranked[3].ratio == pytest.approx(110 / 120)


def test_the_ratio_is_previous_close_over_the_highest_high_of_the_252_completed_sessions():
    # a spike 253 sessions back is outside the year; the last row is the previous session, whose close is the price
    closes = _rising(40, 50)
    highs = [500.0, *[c * 1.02 for c in closes[1:]]]
    ranked = rebalance.rank_by_52_week_high(_panel({"XYZ": closes}, {"XYZ": highs}))
    assert ranked[0].ratio == pytest.approx(50 / (50 * 1.02))


@pytest.mark.parametrize("closes, why", [
    ([*[np.nan] * 2, *_rising(40, 50, 251)], "one session short of a full year"),
    (_rising(4, 4.9), "previous close at or below $5"),
    ([*_rising(40, 50, 252), np.nan], "no previous close"),
])
def test_a_name_without_a_full_year_or_under_5_dollars_is_not_ranked(closes, why):
    ranked = rebalance.rank_by_52_week_high(_panel({"OK": _rising(40, 50), "NO": closes}))
    assert [r.symbol for r in ranked] == ["OK"], why


def test_a_missing_year_ago_close_ranks_after_a_known_return_in_a_tie():
    ranked = rebalance.rank_by_52_week_high(_panel({"AAA": [np.nan, *_rising(90, 100, 252)],
                                                    "BBB": _rising(99, 100)}))
    assert [r.symbol for r in ranked] == ["BBB", "AAA"] and math.isnan(ranked[1].return_12m)


# --- validation (pure arithmetic over a fake account) ---------------------------------------------------------------

class _FakeJournal:
    run_id = "r1"

    def __init__(self, breaker_session: str | None = None):
        self.risk_events = []
        self.db = SimpleNamespace(table=lambda name: SimpleNamespace(insert=self.risk_events.append))
        self.breaker_session = breaker_session

    def now(self):
        return "2016-11-01T14:00:00+00:00"

    def state(self, key):
        return self.breaker_session if key == "circuit_breaker_session" else None


def _fake_rt(journal, buying_power: float):
    from datetime import date

    return SimpleNamespace(broker=SimpleNamespace(account=lambda: SimpleNamespace(buying_power=buying_power)),
                           journal=journal, clock=SimpleNamespace(today=lambda: date(2016, 11, 1)))


def order(action: str, symbol: str, side: str, qty: int) -> PlannedOrder:
    return PlannedOrder(action, symbol, side, qty, 100.0, 0.0, 0.0, None)


def test_buys_that_do_not_fit_are_trimmed_then_refused_with_the_sells_counted():
    journal = _FakeJournal()
    rt = _fake_rt(journal, 4_000.0)
    plan = RebalancePlan("2016-11-01", "all", None, 1.0, 20_000.0, 3, orders=[
        order("CLOSE", "OLD", "sell", 60), order("OPEN", "AAA", "buy", 50), order("OPEN", "BBB", "buy", 50),
        order("OPEN", "CCC", "buy", 10)])
    accepted = rebalance.validate(rt, plan)
    # available 4,000 + 6,000 x (1 - 0.25%) = 9,985; each share counts 100.25
    assert [(o.symbol, o.qty) for o in accepted] == [("OLD", 60), ("AAA", 50), ("BBB", 49)]
    assert plan.trimmed == [("BBB", "50 -> 49 shares: buying power net of sells $4,972.50")]
    assert [symbol for symbol, _ in plan.refused] == ["CCC"]
    assert journal.risk_events[0]["gate"] == "buying_power" and journal.risk_events[0]["symbol"] == "CCC"


def test_after_the_circuit_breaker_tripped_today_the_rebalance_sells_but_buys_nothing():
    journal = _FakeJournal(breaker_session="2016-11-01")
    plan = RebalancePlan("2016-11-01", "all", None, 1.0, 20_000.0, 3, orders=[
        order("CLOSE", "OLD", "sell", 60), order("OPEN", "AAA", "buy", 5)])
    accepted = rebalance.validate(_fake_rt(journal, 50_000.0), plan)
    assert [(o.symbol, o.side) for o in accepted] == [("OLD", "sell")]
    assert [(e["symbol"], e["gate"]) for e in journal.risk_events] == [("AAA", "halted_or_circuit_breaker")]
    yesterday = _FakeJournal(breaker_session="2016-10-31")
    assert len(rebalance.validate(_fake_rt(yesterday, 50_000.0), plan)) == 2


# --- on the real data -----------------------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _wide() -> tuple[pd.DataFrame, pd.DataFrame]:
    bars = pd.read_csv(BARS, parse_dates=["date"])
    return (bars.pivot(index="date", columns="symbol", values="close"),
            bars.pivot(index="date", columns="symbol", values="high"))


def expected_ranking(day: str, members: set[str]) -> list[str]:
    """Independent ranking from the raw file, completed sessions only: previous close / highest high of the 252
    sessions before `day`, ties by the 12-month return, then the ticker."""
    close, high = _wide()
    before = close.index < pd.Timestamp(day)
    closes, highs = close[before].iloc[-253:], high[before].iloc[-252:]
    columns = [s for s in closes.columns if s in members]
    year = closes[columns].iloc[-252:]
    previous = year.iloc[-1]
    ok = year.notna().all() & (previous > 5)
    frame = pd.DataFrame({"ratio": previous / highs[columns].max(), "ret": previous / closes[columns].iloc[0] - 1})
    frame = frame[ok].fillna({"ret": -np.inf}).rename_axis("symbol").reset_index()
    return frame.sort_values(["ratio", "ret", "symbol"], ascending=[False, False, True])["symbol"].tolist()


def sector_members() -> set[str]:
    sectors = pd.read_csv(SHARED_DATA / "sp500_constituents_sectors.csv")
    return set(sectors.loc[sectors["GICS Sector"] == SECTOR, "Symbol"])


def universe_members(env) -> set[str]:
    caps = json.loads(Path(env["UNIVERSE_FILE"]).read_text())["symbols"]
    return {symbol for symbols in caps.values() for symbol in symbols}


def opened(output: str) -> list[tuple[str, int, float, float]]:
    """(symbol, qty, price, target) of the OPEN rows of a printed order table."""
    found = []
    for line in (line for line in output.splitlines() if line.startswith("OPEN")):
        parts = line.split()
        found.append((parts[1], int(parts[3]), float(parts[4]), float(parts[6].lstrip("$").replace(",", ""))))
    return found


def runtime(asof: str, **settings):
    from config import load_config
    from flows.runtime import Runtime

    return Runtime(load_config({"MOMENTUM_ASOF": asof, **settings}), "test")


def test_dry_run_order_table_matches_an_independent_ranking_and_sends_nothing(real_env):
    result = cli("--asof", "2016-11-01T10:00", "rebalance", "--universe", SECTOR, "--dry-run")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "regime TREND_BULL (allocation x1)" in lines[1] and "$20,000.00 a name" in lines[1]
    orders = opened(result.output)
    assert sorted(symbol for symbol, *_ in orders) == sorted(expected_ranking("2016-11-01", sector_members())[:5])
    trimmed = {line.split()[1].rstrip(":"): int(line.split()[4]) for line in lines if line.startswith("trimmed")}
    for symbol, qty, price, target in orders:
        assert target == 20_000.0 and qty == int(target // price)
    # whole shares leave cash, and the buys are counted 0.25% dearer for their costs: at most the last one is trimmed
    assert set(trimmed) <= {max(symbol for symbol, *_ in orders)}
    spent = sum(trimmed.get(symbol, qty) * price * 1.0025 for symbol, qty, price, _ in orders)
    assert 99_000 < spent <= 100_000.01
    assert rows(real_env, "SELECT COUNT(*) AS n FROM orders")[0]["n"] == 0


def test_names_tied_at_their_high_go_to_the_best_12_month_return_not_the_first_tickers(real_env):
    # 2016-06-30 closed 21 names of the universe at their 52-week high: the ranking's first 21 tie at 1.0
    expected = expected_ranking("2016-07-01", universe_members(real_env))
    result = cli("--asof", "2016-07-01T10:00", "rebalance", "--universe", "all", "--dry-run")
    assert result.exit_code == 0, result.output
    assert sorted(symbol for symbol, *_ in opened(result.output)) == sorted(expected[:5])
    close, high = _wide()
    tied = [s for s in expected if close.loc["2016-06-30", s] >= high[close.index < "2016-07-01"][s].iloc[-252:].max()]
    assert len(tied) == 21 and sorted(expected[:5]) != sorted(tied)[:5]  # alphabetical would have chosen others


def test_a_month_later_sells_come_before_buys(real_env):
    assert cli("--asof", "2016-11-01T10:00", "rebalance", "--universe", SECTOR).exit_code == 0
    assert len(rows(real_env, "SELECT * FROM trades WHERE strategy = 'rebalance' AND status = 'open'")) == 5
    result = cli("--asof", "2016-12-01T10:00", "rebalance", "--universe", SECTOR)
    assert result.exit_code == 0, result.output
    executed = [line.strip() for line in result.output.splitlines() if line.startswith("  ")]
    sides = [line.split()[0] for line in executed]
    assert "CLOSE" in sides or "ADJUST" in sides
    first_buy = min(i for i, line in enumerate(executed) if "+" in line.split()[2])
    assert all("-" in line.split()[2] for line in executed[:first_buy])
    assert all("+" in line.split()[2] for line in executed[first_buy:])
    orders = rows(real_env, "SELECT side, created_at FROM orders WHERE created_at >= '2016-12-01' "
                            "AND purpose != 'stop' ORDER BY rowid")
    assert [o["side"] for o in orders] == sorted((o["side"] for o in orders), key=lambda s: s != "sell")


def test_a_crash_day_liquidates_the_portfolio_to_cash(real_env):
    assert cli("--asof", "2015-08-03T10:00", "rebalance", "--universe", SECTOR).exit_code == 0
    held = rows(real_env, "SELECT symbol FROM trades WHERE status = 'open'")
    result = cli("--asof", "2015-08-25T10:00", "rebalance", "--universe", SECTOR)  # 2015-08-24 was CRASH
    assert result.exit_code == 0, result.output
    assert "regime CRASH (allocation x0)" in result.output
    assert rows(real_env, "SELECT COUNT(*) AS n FROM trades WHERE status = 'open'")[0]["n"] == 0
    closed = rows(real_env, "SELECT exit_reason FROM trades WHERE exit_time >= '2015-08-25'")
    assert all(r["exit_reason"] in ("rebalance", "trailing_stop") for r in closed)
    assert held, "the August rebalance bought nothing to liquidate"


def test_the_refill_buys_the_best_ranked_names_not_held_into_emptied_slots_and_sells_nothing(real_env):
    assert cli("--asof", "2016-11-01T10:00", "rebalance", "--universe", SECTOR).exit_code == 0
    held = sorted(r["symbol"] for r in rows(real_env, "SELECT symbol FROM trades WHERE status = 'open'"))
    for symbol in held[:2]:  # two slots emptied, as two stops would
        assert cli("--asof", "2016-11-02T11:00", "close", symbol).exit_code == 0
    kept = held[2:]
    rt = runtime("2016-11-03T09:45")
    try:
        plan = rebalance.run_rebalance(rt, SECTOR, refill_only=True, dry_run=False, force=False)
        equity = plan.equity
    finally:
        rt.close()
    expected = [s for s in expected_ranking("2016-11-03", sector_members()) if s not in kept][:2]
    assert plan.mode == "refill" and [(o.action, o.side) for o in plan.orders] == [("OPEN", "buy")] * 2
    assert sorted(o.symbol for o in plan.orders) == sorted(expected)
    assert all(o.target_value == pytest.approx(equity / 5) for o in plan.orders)
    today = rows(real_env, "SELECT symbol, side, purpose FROM orders WHERE created_at >= '2016-11-03' "
                           "AND purpose != 'stop'")
    assert sorted((o["symbol"], o["side"]) for o in today) == sorted((s, "buy") for s in expected)
    now_held = rows(real_env, "SELECT symbol, qty FROM trades WHERE status = 'open' AND strategy = 'rebalance'")
    assert sorted(r["symbol"] for r in now_held) == sorted(kept + expected)


def test_the_refill_with_every_slot_held_sends_nothing(real_env):
    assert cli("--asof", "2016-11-01T10:00", "rebalance", "--universe", SECTOR).exit_code == 0
    before = rows(real_env, "SELECT COUNT(*) AS n FROM orders")[0]["n"]
    rt = runtime("2016-11-02T09:45")
    try:
        plan = rebalance.run_scheduled(rt, SECTOR, dry_run=False, force=False)
        text = rebalance.plan_text(plan)
    finally:
        rt.close()
    assert plan.mode == "refill" and plan.orders == [] and "no orders: every slot is held" in text
    assert rows(real_env, "SELECT COUNT(*) AS n FROM orders")[0]["n"] == before


def test_the_scheduled_run_is_the_full_rebalance_on_the_month_s_first_session(real_env):
    rt = runtime("2016-11-01T09:45")
    try:
        plan = rebalance.run_scheduled(rt, SECTOR, dry_run=True, force=False)
    finally:
        rt.close()
    assert plan.mode == "rebalance" and len(plan.orders) == 5


def test_it_never_sells_or_resizes_a_momentum_position_even_when_that_name_ranks_first(real_env):
    import executor

    top = expected_ranking("2016-11-01", sector_members())
    rt = runtime("2016-11-01T09:40")
    try:
        momentum = executor.open_position(rt, symbol=top[0], cap=rt.cap_of(top[0]), qty=7, session="2016-11-01",
                                          scan_type="open", trade_fields={"strategy": "momentum"}, fill_timeout=0)
    finally:
        rt.close()
    assert momentum["status"] == "open"
    result = cli("--asof", "2016-11-01T10:00", "rebalance", "--universe", SECTOR)
    assert result.exit_code == 0, result.output
    assert sorted(symbol for symbol, *_ in opened(result.output)) == sorted(top[1:6])  # the next name takes its slot
    # a full rebalance the next day, down to three names: it sells its own that dropped out, not that one
    assert expected_ranking("2016-11-02", sector_members())[0] == top[0]  # still the first name of the ranking
    result = cli("--asof", "2016-11-02T10:00", "rebalance", "--universe", SECTOR, "--top-n", "3")
    assert result.exit_code == 0, result.output
    kept = [s for s in expected_ranking("2016-11-02", sector_members()) if s != top[0]][:3]
    closed = {line.split()[1] for line in result.output.splitlines() if line.startswith("  CLOSE")}
    assert closed == set(top[1:6]) - set(kept) and len(closed) >= 2
    own = rows(real_env, "SELECT purpose, side, qty FROM orders WHERE symbol = ? AND purpose != 'stop'", [top[0]])
    assert own == [{"purpose": "entry", "side": "buy", "qty": 7}]
    trade = rows(real_env, "SELECT strategy, status, qty FROM trades WHERE id = ?", [momentum["id"]])[0]
    assert trade == {"strategy": "momentum", "status": "open", "qty": 7}
    assert rows(real_env, "SELECT COUNT(*) AS n FROM trades WHERE symbol = ?", [top[0]])[0]["n"] == 1


def test_targets_follow_rebalance_top_n_and_the_sleeve_when_no_top_n_is_given(real_env, monkeypatch):
    monkeypatch.setenv("REBALANCE_TOP_N", "4")
    monkeypatch.setenv("REBALANCE_SLEEVE_PCT", "50")
    rt = runtime("2016-11-01T10:00")
    try:
        plan = rebalance.run_rebalance(rt, SECTOR, dry_run=True, force=False)
    finally:
        rt.close()
    assert plan.top_n == 4 and plan.target_value == 12_500.0
    assert sorted(o.symbol for o in plan.orders) == sorted(expected_ranking("2016-11-01", sector_members())[:4])
    assert all(o.qty == int(12_500 // o.price) for o in plan.orders)  # 50,000 of 100,000: nothing trimmed


@pytest.mark.parametrize("top_n, warned", [("3", 3), ("5", 0)])
def test_a_holding_above_max_holding_pct_raises_a_warning(real_env, top_n, warned):
    result = cli("--asof", "2016-11-01T10:00", "rebalance", "--universe", SECTOR, "--top-n", top_n, "--dry-run")
    assert result.exit_code == 0, result.output
    events = rows(real_env, "SELECT message FROM events WHERE level = 'warning' AND source = 'rebalance'")
    assert len(events) == warned
    assert all("% of equity, above MAX_HOLDING_PCT 25%" in e["message"] for e in events)
    assert result.output.count("warning: ") == warned


@pytest.mark.parametrize("universe, fragment", [("Nonsense Sector", "unknown universe 'Nonsense Sector'")])
def test_unknown_universe_is_a_one_line_error(real_env, universe, fragment):
    result = cli("--asof", "2016-11-01T10:00", "rebalance", "--universe", universe, "--dry-run")
    assert result.exit_code == 2 and fragment in result.stderr


def test_first_session_only_does_nothing_on_other_days(real_env):
    result = cli("--asof", "2016-11-02T10:00", "rebalance", "--universe", "large", "--first-session-only")
    assert result.exit_code == 0 and "not the month's first session" in result.output
    assert rows(real_env, "SELECT COUNT(*) AS n FROM orders")[0]["n"] == 0

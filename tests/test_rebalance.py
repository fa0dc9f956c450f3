"""The 52-week-high rebalance on the real S&P 500 data."""
from __future__ import annotations

import pandas as pd
import pytest


from conftest import SHARED_DATA
from realdata import BARS, cli, rows

SECTOR = "Information Technology"



def expected_top(day: str, n: int = 5) -> list[str]:
    """Independent ranking from the raw file: what is knowable during the session (the day's open) / 52-week high."""
    sectors = pd.read_csv(SHARED_DATA / "sp500_constituents_sectors.csv")
    members = set(sectors.loc[sectors["GICS Sector"] == SECTOR, "Symbol"])
    bars = pd.read_csv(BARS, parse_dates=["date"])
    bars = bars[bars["symbol"].isin(members)]
    today = bars[bars["date"] == day].set_index("symbol")
    before = bars[bars["date"] < day]
    ratios = {}
    for symbol, row in today.iterrows():
        past = before[before["symbol"] == symbol].sort_values("date").tail(252)
        if len(past) < 252 or past["close"].isna().any():
            continue
        price = float(row["open"])
        if price > 5:
            ratios[symbol] = price / max(past["high"].max(), price)
    return sorted(ratios, key=lambda s: (-ratios[s], s))[:n]


def test_dry_run_order_table_matches_an_independent_ranking_and_sends_nothing(real_env):
    result = cli("--asof", "2016-11-01T10:00", "rebalance", "--universe", SECTOR, "--dry-run")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "regime TREND_BULL (allocation x1)" in lines[1]
    opened = sorted(line.split()[1] for line in lines if line.startswith("OPEN"))
    assert opened == sorted(expected_top("2016-11-01"))
    for line in (l for l in lines if l.startswith("OPEN")):
        qty, price, target = int(line.split()[3]), float(line.split()[4]), float(line.split()[6].replace(",", ""))
        assert target == 20_000.0 and qty == int(target // price)
    assert rows(real_env, "SELECT COUNT(*) AS n FROM orders")[0]["n"] == 0


def test_a_month_later_sells_come_before_buys(real_env):
    assert cli("--asof", "2016-11-01T10:00", "rebalance", "--universe", SECTOR).exit_code == 0
    assert len(rows(real_env, "SELECT * FROM trades WHERE strategy = 'rebalance' AND status = 'open'")) >= 1
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


@pytest.mark.parametrize("universe, fragment", [("Nonsense Sector", "unknown universe 'Nonsense Sector'")])
def test_unknown_universe_is_a_one_line_error(real_env, universe, fragment):
    result = cli("--asof", "2016-11-01T10:00", "rebalance", "--universe", universe, "--dry-run")
    assert result.exit_code == 2 and fragment in result.stderr


def test_first_session_only_does_nothing_on_other_days(real_env):
    result = cli("--asof", "2016-11-02T10:00", "rebalance", "--universe", "large", "--first-session-only")
    assert result.exit_code == 0 and "not the month's first session" in result.output
    assert rows(real_env, "SELECT COUNT(*) AS n FROM orders")[0]["n"] == 0

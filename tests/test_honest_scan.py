"""A scan on daily data records what was knowable at its moment: the day's open, and the last session's volume."""
from __future__ import annotations

from datetime import date

import numpy as np
import pytest

from ports.market_sources import CsvMarket

from realdata import BARS, cli, real_env, real_universe, rows, shared_cache  # noqa: F401 - fixtures

pytestmark = pytest.mark.slow  # scans of the real data set


@pytest.mark.parametrize("asof", ["2016-11-09T10:30", "2016-11-09T15:30"])
def test_a_dry_run_scan_prices_every_candidate_at_what_was_knowable(real_env, asof):  # noqa: F811
    result = cli("--asof", asof, "scan", "--cap", "all", "--dry-run")
    assert result.exit_code == 0, result.output
    candidates = rows(real_env, "SELECT symbol, price, prev_close, rvol, volume_surge, intraday_strength, "
                                "follow_through FROM candidates")
    assert len(candidates) > 20
    market = CsvMarket(BARS, cache_dir=real_env["CACHE_DIR"])
    symbols = [c["symbol"] for c in candidates]
    bars = market.bars(symbols, date(2016, 9, 1), date(2016, 11, 9))
    day = list(bars.dates.astype("datetime64[D]").astype(date)).index(date(2016, 11, 9))
    for c in candidates:
        j = bars.column(c["symbol"])
        assert c["price"] == bars.open[day, j]  # the open: the day's later prices were not knowable yet
        assert c["prev_close"] == bars.close[day - 1, j]
        surge = bars.volume[day - 1, j] / np.mean(bars.volume[day - 21:day - 1, j])  # the last completed session's
        assert c["rvol"] == pytest.approx(surge) and c["volume_surge"] == pytest.approx(surge)
        assert c["intraday_strength"] is None and c["follow_through"] == 0
    scan = rows(real_env, "SELECT spy_price FROM scans")[0]
    series = market.market_series(date(2016, 11, 9), date(2016, 11, 9))
    assert scan["spy_price"] == pytest.approx(float(series["spy_open"].iloc[0]))


def test_the_scan_says_when_it_sees_daily_bars_only(real_env):  # noqa: F811
    during = cli("--asof", "2016-11-09T10:30", "scan", "--cap", "large", "--dry-run").output.splitlines()[1]
    assert during.endswith("| daily bars: today's open and the sessions before it")
    assert "daily bars" not in cli("--asof", "2016-11-09T16:00", "scan", "--cap", "large", "--dry-run",
                                   "--force").output

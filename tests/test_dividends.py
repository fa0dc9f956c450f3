"""Dividends, when the data carries them: a daily file's optional `dividend` column is paid by the sim broker to the
shares held at the open of the ex-date. The S&P 500 file of ../shared/data carries none (price only)."""
from __future__ import annotations

import sqlite3
from contextlib import closing
from datetime import date, datetime

from common.clock import NY, Clock
from common.types import BUY, MARKET, OrderRequest
from ports.market_sources import CsvMarket
from ports.sim_broker import SimBroker

ROWS = [("2016-11-01", 100.0, 0.0), ("2016-11-02", 101.0, 0.0), ("2016-11-03", 99.0, 1.25), ("2016-11-04", 99.5, 0.0)]


def _market(tmp_path, with_dividends: bool) -> CsvMarket:
    path = tmp_path / ("div.csv" if with_dividends else "plain.csv")
    header = "date,symbol,open,high,low,close,volume" + (",dividend" if with_dividends else "")
    lines = [header] + [f"{d},AAA,{p},{p + 1},{p - 1},{p},1000000" + (f",{div}" if with_dividends else "")
                        for d, p, div in ROWS]
    path.write_text("\n".join(lines) + "\n")
    return CsvMarket(path, cache_dir=tmp_path / "cache")


def test_the_dividend_column_is_read_and_paid_on_the_ex_date_to_the_shares_held(tmp_path):
    market = _market(tmp_path, with_dividends=True)
    assert market.carries_dividends
    assert market.dividends(["AAA", "ZZZ"], date(2016, 11, 1), date(2016, 11, 4)) == {("AAA", date(2016, 11, 3)): 1.25}
    clock = Clock(datetime(2016, 11, 1, 10, 0, tzinfo=NY))
    broker = SimBroker(tmp_path / "sim.db", market, clock, cap_of=lambda s: "large")
    broker.submit(OrderRequest("b1", "AAA", BUY, MARKET, 100))  # 100 x 100.045 -> 100.05: cash 89,995
    clock.set(datetime(2016, 11, 2, 16, 30, tzinfo=NY))
    assert broker.account().cash == 89_995.0
    clock.set(datetime(2016, 11, 3, 9, 31, tzinfo=NY))
    assert broker.account().cash == 89_995.0 + 125.0  # 100 shares x 1.25 at the open of the ex-date
    clock.set(datetime(2016, 11, 4, 16, 30, tzinfo=NY))
    assert broker.account().cash == 90_120.0  # paid once
    with closing(sqlite3.connect(tmp_path / "sim.db")) as conn:
        assert conn.execute("SELECT session, symbol, qty, per_share, amount FROM dividends").fetchall() == [
            ("2016-11-03", "AAA", 100, 1.25, 125.0)]


def test_a_file_without_the_column_pays_nothing(tmp_path):
    market = _market(tmp_path, with_dividends=False)
    assert not market.carries_dividends and market.dividends(["AAA"], date(2016, 11, 1), date(2016, 11, 4)) == {}


import numpy as np

from config import load_config
from flows import quotes
from flows.runtime import Runtime


class CountingMarket:
    """Wraps a market and counts snapshot requests."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def snapshot(self, symbols, session, fraction):
        self.calls += 1
        return self.inner.snapshot(symbols, session, fraction)


def runtime(tmp_path, asof):
    rt = Runtime(load_config({"MOMENTUM_DB": str(tmp_path / "trades.db"), "MOMENTUM_ASOF": asof}, environ={}))
    rt.market = CountingMarket(rt.market)
    return rt


def test_quotes_are_cached_for_ten_seconds_across_processes(tmp_path):
    first = runtime(tmp_path, "2016-11-09T11:00:00")
    snap = quotes.current(first, ["AAPL", "MSFT"])
    assert first.market.calls == 1
    second = runtime(tmp_path, "2016-11-09T11:00:09")  # another process, 9 s later
    again = quotes.current(second, ["AAPL", "MSFT"])
    assert second.market.calls == 0
    np.testing.assert_allclose(again.price, snap.price)
    assert again.symbols == ["AAPL", "MSFT"]
    third = runtime(tmp_path, "2016-11-09T11:00:11")  # past the 10 s life
    quotes.current(third, ["AAPL", "MSFT"])
    assert third.market.calls == 1
    fourth = runtime(tmp_path, "2016-11-09T11:00:12")
    quotes.current(fourth, ["AAPL", "MSFT", "NVDA"])  # a symbol not cached: one fetch for all
    assert fourth.market.calls == 1


def test_a_quote_from_a_later_moment_is_never_used_for_an_earlier_one(tmp_path):
    later = runtime(tmp_path, "2016-11-09T11:00:05")
    quotes.current(later, ["AAPL"])
    earlier = runtime(tmp_path, "2016-11-09T11:00:00")
    quotes.current(earlier, ["AAPL"])
    assert earlier.market.calls == 1

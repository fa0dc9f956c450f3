"""Which market-data port a `--data` source names: `sim`, `csv:PATH` (daily or intraday bars, told apart by the
file's header) or `alpaca` (built by the runtime, which holds the keys).

`--market PATH` (MARKET_DATA) names a daily SPY/VIX file. The csv sources read it beside their bars; with the sim
source its SPY and VIX replace the synthetic ones in `market_series` (the regime, the scans' market context and
the benchmarks all read that), while the stocks stay synthetic: a user who names a market file gets it.
"""
from __future__ import annotations

from datetime import date
from pathlib import Path

import pandas as pd

from common.errors import ConfigError, DataError
from common.types import MarketData
from ports.intraday_csv import IntradayCsvMarket, is_intraday_file
from ports.market_sources import (MARKET_COLUMNS, OPTIONAL_MARKET_COLUMNS, CsvMarket, SimMarket, default_cache_dir,
                                  load_cached, parse_market_file, window)

class MarketFile:
    """The SPY/VIX part of a market port (`market_series`, `market_first_date`, `market_path`) read from a daily
    market file."""

    def __init__(self, market_path: str | Path, cache_dir: Path | None = None):
        self.market_path = Path(market_path)
        if not self.market_path.is_file():
            raise DataError(f"{market_path}: market (SPY/VIX) file not found")
        self._cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self._arrays: dict | None = None

    def _market(self) -> dict:
        if self._arrays is None:
            self._arrays = load_cached(self.market_path, self._cache_dir, parse_market_file, "market")
        return self._arrays

    @property
    def market_first_date(self) -> date:
        return self._market()["dates"][0].astype(date)

    def market_series(self, start: date, end: date) -> pd.DataFrame:
        market = self._market()
        rows = window(market["dates"], start, end)
        index = pd.DatetimeIndex(market["dates"][rows], name="date")
        return pd.DataFrame({name: market[name][rows] for name in (*MARKET_COLUMNS[1:], *OPTIONAL_MARKET_COLUMNS)
                             if name in market}, index=index)


class WithMarketFile:
    """A market port whose SPY and VIX (`market_series`) come from a daily market file (--market); everything else
    (bars, snapshots, the name) is the wrapped port's. The sim source wraps itself so when a file is named; the
    runtime may wrap any other port the same way."""

    def __init__(self, inner: MarketData, market_path: str | Path, cache_dir: Path | None = None):
        self.inner = inner
        self.name = inner.name
        self._file = MarketFile(market_path, cache_dir)
        self.market_path = self._file.market_path

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    @property
    def market_first_date(self) -> date:
        return self._file.market_first_date

    def market_series(self, start: date, end: date) -> pd.DataFrame:
        return self._file.market_series(start, end)


def open_market(source: str, *, market_path: str | None = None, universe_symbols: list[str] | None = None,
                cache_dir: Path | None = None) -> MarketData:
    """The market-data port named by `source`: "sim", "csv:PATH" (daily bars, or intraday bars when the file has a
    timestamp column) or "alpaca"."""
    text = (source or "").strip()
    if text == "sim":
        sim = SimMarket(universe_symbols)
        return WithMarketFile(sim, market_path, cache_dir) if market_path else sim
    if text.startswith("csv:"):
        path = text[4:].strip()
        if not path:
            raise ConfigError("--data: csv source needs a path (use csv:PATH)")
        if Path(path).is_file() and is_intraday_file(path):
            return IntradayCsvMarket(path, market_path=market_path, cache_dir=cache_dir)
        return CsvMarket(path, market_path=market_path, cache_dir=cache_dir)
    if text == "alpaca":
        raise ConfigError("--data alpaca: alpaca market data needs API keys and is built by the runtime "
                          "(alpaca_adapter.AlpacaMarket), not by open_market")
    raise ConfigError(f"--data: unknown source {source!r} (use sim, csv:PATH or alpaca)")

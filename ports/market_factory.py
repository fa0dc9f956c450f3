"""Which market-data port a `--data` source names: `sim`, `csv:PATH` (daily or intraday bars, told apart by the
file's header) or `alpaca` (built by the runtime, which holds the keys)."""
from __future__ import annotations

import logging
from pathlib import Path

from common.errors import ConfigError
from common.types import MarketData
from ports.intraday_csv import IntradayCsvMarket, is_intraday_file
from ports.market_sources import CsvMarket, SimMarket

log = logging.getLogger(__name__)


def open_market(source: str, *, market_path: str | None = None, universe_symbols: list[str] | None = None,
                cache_dir: Path | None = None) -> MarketData:
    """The market-data port named by `source`: "sim", "csv:PATH" (daily bars, or intraday bars when the file has a
    timestamp column) or "alpaca"."""
    text = (source or "").strip()
    if text == "sim":
        if market_path:
            log.warning("--market %s is ignored with the sim source (its SPY and VIX are synthetic)", market_path)
        return SimMarket(universe_symbols)
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

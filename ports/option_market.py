"""Option prices beside stock prices: a MarketData wrapper that also answers for OCC symbols, and the chain sources.

`with_options(market)` returns a market that serves stock symbols from `market` unchanged and OCC option symbols
from an option price source:
- `BlackScholesPrices` (the sim and csv sources, offline and in backtests): an option's daily bar is the
  Black-Scholes price at the underlying's open, high, low and close of that session (a call's high at the
  underlying's high, a put's high at the underlying's low), with the underlying's 20-day realised volatility
  measured up to the session before (no look-ahead) and calendar time to expiry counted from the session. Its
  snapshot is the DAILY view of that bar (the open premium before the close), like a stock's, so quotes, exits and
  the sim broker's fills all see the same premium. Bid and ask sit 2% of the premium either side (at least half a
  cent). After expiry a contract has no bars.
- `alpaca_options.AlpacaOptionPrices` (broker alpaca): latest trade and quote from Alpaca's option snapshots.

The chain for a contract choice comes from where the orders go: the sim broker trades the simulated Black-Scholes
chain (`SimChain`), the Alpaca broker trades Alpaca's listed contracts (`alpaca_options.AlpacaChain`).
"""
from __future__ import annotations

import logging
from datetime import date
from typing import Protocol, Sequence

import numpy as np
import pandas as pd

from common.clock import calendar
from common.types import BAR_FIELDS, DAILY, INTRADAY, MarketData, Panel, Snapshot
from core import option_math
from ports.market_sources import daily_snapshot

log = logging.getLogger(__name__)
VOL_WINDOW = 20
VOL_HISTORY_SESSIONS = 45  # sessions of underlying history fetched before a range, enough for the 20-day window


class OptionPrices(Protocol):
    def option_bars(self, symbols: Sequence[str], start: date, end: date) -> Panel: ...

    def option_snapshot(self, symbols: Sequence[str], session: date, fraction: float) -> Snapshot: ...


def _split(symbols: Sequence[str]) -> tuple[list[str], list[str]]:
    listed = list(symbols)
    return [s for s in listed if not option_math.is_occ(s)], [s for s in listed if option_math.is_occ(s)]


def _merge_panels(symbols: list[str], parts: list[Panel]) -> Panel:
    """One panel on the union of the parts' dates, columns in the order of `symbols`."""
    parts = [p for p in parts if p.symbols]
    if len(parts) == 1 and parts[0].symbols == symbols:
        return parts[0]
    dates = np.array(sorted(set().union(*(set(p.dates.tolist()) for p in parts))), dtype="datetime64[D]") \
        if parts else np.array([], dtype="datetime64[D]")
    arrays = {name: np.full((len(dates), len(symbols)), np.nan) for name in BAR_FIELDS}
    column = {s: j for j, s in enumerate(symbols)}
    for part in parts:
        rows = np.searchsorted(dates, part.dates)
        for j, symbol in enumerate(part.symbols):
            for name in BAR_FIELDS:
                arrays[name][rows, column[symbol]] = getattr(part, name)[:, j]
    return Panel(dates, symbols, **arrays)


def _merge_snapshots(symbols: list[str], session: date, fraction: float, parts: list[Snapshot]) -> Snapshot:
    fields = ("open", "high", "low", "price", "volume", "prev_close", "bid", "ask")
    arrays = {name: np.full(len(symbols), np.nan) for name in fields}
    column = {s: j for j, s in enumerate(symbols)}
    for part in parts:
        for i, symbol in enumerate(part.symbols):
            for name in fields:
                arrays[name][column[symbol]] = getattr(part, name)[i]
    # A merged view is only as good as its weakest part: one daily part makes the whole snapshot daily.
    view = DAILY if any(part.view == DAILY for part in parts) else INTRADAY
    return Snapshot(session, fraction, symbols, **arrays, view=view)


class OptionAwareMarket:
    """the MarketData protocol (common/types.py) for stocks and OCC option symbols alike."""

    def __init__(self, inner: MarketData, prices: OptionPrices):
        self.inner = inner
        self.prices = prices
        self.name = inner.name

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def bars(self, symbols: Sequence[str], start: date, end: date) -> Panel:
        stocks, contracts = _split(symbols)
        if not contracts:
            return self.inner.bars(symbols, start, end)
        parts = [self.prices.option_bars(contracts, start, end)]
        if stocks:
            parts.insert(0, self.inner.bars(stocks, start, end))
        return _merge_panels(list(symbols), parts)

    def snapshot(self, symbols: Sequence[str], session: date, fraction: float) -> Snapshot:
        stocks, contracts = _split(symbols)
        if not contracts:
            return self.inner.snapshot(symbols, session, fraction)
        parts = [self.prices.option_snapshot(contracts, session, fraction)]
        if stocks:
            parts.insert(0, self.inner.snapshot(stocks, session, fraction))
        return _merge_snapshots(list(symbols), session, fraction, parts)

    def market_series(self, start: date, end: date) -> pd.DataFrame:
        return self.inner.market_series(start, end)

    def known_symbols(self) -> list[str]:
        return self.inner.known_symbols()


def with_options(market: MarketData, prices: OptionPrices | None = None) -> MarketData:
    """`market` able to price OCC symbols too (idempotent); Black-Scholes prices unless `prices` is given."""
    if isinstance(market, OptionAwareMarket):
        return market
    return OptionAwareMarket(market, prices or BlackScholesPrices(market))


# --- Black-Scholes prices from the underlying's bars --------------------------------------------------------------

def vol_by_day(closes: np.ndarray) -> np.ndarray:
    """Per day, the realised volatility of the VOL_WINDOW returns that end the day BEFORE (NaN until known)."""
    out = np.full(len(closes), np.nan)
    for i in range(VOL_WINDOW + 1, len(closes)):
        vol = option_math.realised_vol(closes[i - VOL_WINDOW - 1:i].tolist(), VOL_WINDOW)
        out[i] = vol if vol is not None else np.nan
    return out


class BlackScholesPrices:
    """Option bars and snapshots computed from the underlying's bars (see the module doc)."""

    def __init__(self, market: MarketData):
        self.market = market

    def _underlying_panel(self, roots: list[str], start: date, end: date) -> Panel:
        return self.market.bars(roots, calendar().sessions_back(start, VOL_HISTORY_SESSIONS), end)

    def option_bars(self, symbols: Sequence[str], start: date, end: date) -> Panel:
        contracts = {s: option_math.parse_occ(s) for s in symbols}
        roots = sorted({c.root for c in contracts.values()})
        under = self._underlying_panel(roots, start, end)
        keep = under.dates >= np.datetime64(start, "D")
        dates = under.dates[keep]
        arrays = {name: np.full((len(dates), len(symbols)), np.nan) for name in BAR_FIELDS}
        for j, symbol in enumerate(symbols):
            contract = contracts[symbol]
            k = under.column(contract.root)
            vols = vol_by_day(under.close[:, k])[keep]
            bars = {name: getattr(under, name)[keep, k] for name in ("open", "high", "low", "close")}
            for i, day in enumerate(dates.astype("datetime64[D]").astype(date)):
                if day > contract.expiry or not np.isfinite(vols[i]):
                    continue
                years = option_math.years_to_expiry(contract.expiry, day)
                price = {name: option_math.black_scholes(contract.kind, float(bars[name][i]), contract.strike, years,
                                                     float(vols[i]))[0] for name in bars}
                rising = contract.kind == option_math.CALL
                arrays["open"][i, j], arrays["close"][i, j] = price["open"], price["close"]
                arrays["high"][i, j] = price["high"] if rising else price["low"]
                arrays["low"][i, j] = price["low"] if rising else price["high"]
                arrays["volume"][i, j] = 0.0
        return Panel(dates, list(symbols), **arrays)

    def option_snapshot(self, symbols: Sequence[str], session: date, fraction: float) -> Snapshot:
        previous = calendar().previous_session(session)
        panel = self.option_bars(symbols, previous, session)
        rows = {name: np.full(len(symbols), np.nan) for name in BAR_FIELDS}
        prev_close = np.full(len(symbols), np.nan)
        for i, day in enumerate(panel.dates.astype("datetime64[D]").astype(date)):
            if day == session:
                rows = {name: getattr(panel, name)[i].copy() for name in BAR_FIELDS}
            elif day == previous:
                prev_close = panel.close[i].copy()
        snap = daily_snapshot(session, fraction, list(symbols), rows, prev_close)
        half = np.where(np.isfinite(snap.price), np.maximum(snap.price * 0.02, 0.005), np.nan)
        return Snapshot(snap.session, snap.fraction, snap.symbols, snap.open, snap.high, snap.low, snap.price,
                        snap.volume, snap.prev_close, np.maximum(snap.price - half, 0.0), snap.price + half,
                        view=snap.view)


# --- chains -------------------------------------------------------------------------------------------------------

class SimChain:
    """The simulated Black-Scholes chain of an underlying on a day, with the volatility known that day."""

    def __init__(self, market: MarketData):
        self.market = market

    def chain(self, underlying: str, spot: float, today: date, bullish: bool) -> list[option_math.OptionQuote]:
        cal = calendar()
        last = cal.previous_session(today)
        panel = self.market.bars([underlying], cal.sessions_back(last, VOL_HISTORY_SESSIONS), last)
        vol = option_math.realised_vol(panel.close[:, 0].tolist(), VOL_WINDOW) if len(panel.dates) else None
        if vol is None:
            log.warning("options: not enough %s history for a volatility; no chain", underlying)
            return []
        kind = option_math.CALL if bullish else option_math.PUT
        return option_math.simulated_chain(underlying, spot, vol, today, cal.is_session, kinds=(kind,))

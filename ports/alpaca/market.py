"""Alpaca market data (the MarketData protocol of common/types.py, name "alpaca") on alpaca-py's
StockHistoricalDataClient.

- Daily bars are split-adjusted (adjustment="split": prices comparable across a split, dividends not folded in)
  from the feed given explicitly (default "iex", the free real-time feed; "sip" cannot be queried for its last
  15 minutes on the free plan). Symbols go in batches of at most 200 per request; the SDK follows
  next_page_token. Only completed sessions are returned: today's bar is dropped until today's close.
- A symbol with no bars is simply absent from Alpaca's answer; it becomes an all-NaN column.
- snapshot(): for today's session, Alpaca's /v2/stocks/snapshots (latest trade, today's daily bar, the previous
  daily bar, the latest quote). For a past session this adapter asks for daily bars only, so it serves the DAILY
  view of that session's bar (market_sources.daily_snapshot, as the csv replay does: the open before the close);
  real intraday history of a past session comes from `data download` and the intraday csv source.
- market_series(): SPY daily bars for spy_*, and the VIXY ETF's daily bars as the VIX proxy for vix_* (Alpaca
  serves no index data). VIXY holds short-term VIX futures, so its percent moves track the VIX's short-term
  moves, but its LEVELS ARE NOT VIX POINTS (and it decays over time); use vix_* from this source for changes and
  relative levels, never against absolute VIX thresholds such as "VIX > 30".
"""
from __future__ import annotations

import logging
import time
from datetime import date, datetime, timedelta
from datetime import time as dtime
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import requests
from alpaca.common.exceptions import APIError
from alpaca.data.enums import Adjustment, DataFeed
from alpaca.data.historical import StockHistoricalDataClient
from alpaca.data.requests import StockBarsRequest, StockSnapshotRequest
from alpaca.data.timeframe import TimeFrame
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import AssetClass, AssetStatus
from alpaca.trading.requests import GetAssetsRequest

from common.clock import NY, Clock, calendar
from common.errors import ConfigError, DataError, DataUnavailable, MomentumError
from common.types import BAR_FIELDS, Panel, Snapshot
from ports.alpaca.transport import MALFORMED, Redactor, batches, install_transport, translate, unique
from ports.market_sources import MARKET_COLUMNS, daily_snapshot
from ports.request_budget import RequestBudget

log = logging.getLogger(__name__)

SPY, VIX_PROXY = "SPY", "VIXY"
_BAR_KEYS = {"open": "o", "high": "h", "low": "l", "close": "c", "volume": "v"}
_MARKET_COLUMNS = list(MARKET_COLUMNS[1:])  # the layout every source uses (spy_open .. vix_close)


class AlpacaMarket:
    """the MarketData protocol (common/types.py) over Alpaca's market-data API (and the trading API's asset list)."""

    name = "alpaca"

    def __init__(self, api_key: str, secret_key: str, *, feed: str = "iex", url_override: str | None = None,
                 budget: RequestBudget | None = None, timeout: float = 10.0,
                 sleep: Callable[[float], None] = time.sleep, now: Callable[[], datetime] | None = None,
                 max_429_retries: int = 3, paper: bool = True, unix_time: Callable[[], float] = time.time):
        """`now` decides which session is "today" (the product's Clock); `unix_time` is the wall clock for 429
        waits; `paper` picks the trading host that serves the asset list."""
        if not api_key or not secret_key:
            raise ConfigError("alpaca: an API key and secret key are required")
        try:
            self.feed = DataFeed(feed.lower())
        except ValueError:
            raise ConfigError(f"alpaca: unknown data feed {feed!r} (use iex or sip)") from None
        self._timeout = timeout
        self._now = now or Clock().now
        self._redact = Redactor(api_key, secret_key)
        guard = dict(timeout=timeout, budget=budget, sleep=sleep, unix_time=unix_time,
                     max_429_retries=max_429_retries)
        self._data = StockHistoricalDataClient(api_key, secret_key, raw_data=True, url_override=url_override)
        install_transport(self._data, **guard)
        self._trading = TradingClient(api_key, secret_key, paper=paper, raw_data=True, url_override=url_override)
        install_transport(self._trading, **guard)

    def __repr__(self) -> str:
        return f"AlpacaMarket(feed={self.feed.value})"

    # -- bars ----------------------------------------------------------------------------------------------------

    def bars(self, symbols: Sequence[str], start: date, end: date) -> Panel:
        wanted = unique(symbols)
        last = min(end, self._last_completed_day())
        rows: dict[str, list[dict]] = {}
        if wanted and start <= last:
            for batch in batches(wanted):
                rows.update(self._fetch_bars(batch, start, last))
        return self._convert("bars", lambda: panel_from_rows(wanted, rows))

    def _fetch_bars(self, symbols: list[str], start: date, end: date) -> dict[str, list[dict]]:
        query = StockBarsRequest(
            symbol_or_symbols=symbols, timeframe=TimeFrame.Day, adjustment=Adjustment.SPLIT, feed=self.feed,
            # Daily bars are stamped at midnight New York time; the end bound covers the whole last day.
            start=datetime.combine(start, dtime(0, 0), NY), end=datetime.combine(end, dtime(23, 59, 59), NY))
        raw = self._call(f"bars for {len(symbols)} symbols", lambda: self._data.get_stock_bars(query))
        return raw or {}

    def _last_completed_day(self) -> date:
        """Today if today's session has closed (or today is no session), else yesterday."""
        now = self._now()
        today = now.astimezone(NY).date()
        if calendar().is_session(today) and now < calendar().session(today).close:
            return today - timedelta(days=1)
        return today

    # -- snapshots -----------------------------------------------------------------------------------------------

    def snapshot(self, symbols: Sequence[str], session: date, fraction: float) -> Snapshot:
        wanted = unique(symbols)
        today = self._now().astimezone(NY).date()
        if session > today:
            raise DataError(f"alpaca: no snapshot of {session}, a session after today ({today})")
        if session == today:
            return self._live_snapshot(wanted, session, fraction)
        return self._replayed_snapshot(wanted, session, fraction)

    def _live_snapshot(self, symbols: list[str], session: date, fraction: float) -> Snapshot:
        raw: dict[str, Any] = {}
        for batch in batches(symbols):
            query = StockSnapshotRequest(symbol_or_symbols=batch, feed=self.feed)
            raw.update(self._call(f"snapshots for {len(batch)} symbols",
                                  lambda: self._data.get_stock_snapshot(query)) or {})
        return self._convert("snapshots", lambda: snapshot_from_raw(symbols, raw, session, fraction))

    def _replayed_snapshot(self, symbols: list[str], session: date, fraction: float) -> Snapshot:
        """A past session: the DAILY view of its bar, exactly as the csv replay shows it."""
        previous = calendar().previous_session(session)
        panel = self.bars(symbols, previous, session)
        prev_close = _row(panel, previous, len(symbols))["close"]
        return daily_snapshot(session, fraction, symbols, _row(panel, session, len(symbols)), prev_close)

    # -- market series and symbols -------------------------------------------------------------------------------

    def market_series(self, start: date, end: date) -> pd.DataFrame:
        """SPY bars as spy_open..spy_volume and VIXY bars as vix_open..vix_close (a proxy: see the module doc)."""
        panel = self.bars([SPY, VIX_PROXY], start, end)
        frame = pd.DataFrame(index=pd.DatetimeIndex(panel.dates, name="date"), columns=_MARKET_COLUMNS, dtype=float)
        for prefix, symbol in (("spy", SPY), ("vix", VIX_PROXY)):
            j = panel.column(symbol)
            for name in BAR_FIELDS:
                column = f"{prefix}_{name}"
                if column in frame.columns:
                    frame[column] = getattr(panel, name)[:, j]
        return frame

    def known_symbols(self) -> list[str]:
        """Active, tradable US equities (one request)."""
        query = GetAssetsRequest(status=AssetStatus.ACTIVE, asset_class=AssetClass.US_EQUITY)
        raw = self._call("asset list", lambda: self._trading.get_all_assets(query))
        return self._convert("asset list", lambda: sorted(
            str(a["symbol"]) for a in raw if a.get("tradable") and a.get("status", "active") == "active"))

    # -- plumbing ------------------------------------------------------------------------------------------------

    def _call(self, action: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        # MALFORMED: the SDK's own unpacking of a body without the documented keys ("bars", a dict...).
        except (APIError, requests.RequestException, *MALFORMED) as exc:
            raise self._translate(exc, action) from None

    def _convert(self, action: str, build: Callable[[], Any]) -> Any:
        try:
            return build()
        except MALFORMED as exc:
            raise self._translate(exc, action) from None

    def _translate(self, exc: Exception, action: str) -> MomentumError:
        return translate(exc, action, unavailable=DataUnavailable, rejected=DataError, timeout=self._timeout,
                         redact=self._redact)


# -- conversions -------------------------------------------------------------------------------------------------

_day_cache: dict[str, date] = {}


def bar_day(stamp: str) -> date:
    """The session date of a daily bar: its timestamp (midnight New York, in UTC) seen in New York."""
    day = _day_cache.get(stamp)
    if day is None:
        day = datetime.fromisoformat(stamp.replace("Z", "+00:00")).astimezone(NY).date()
        if len(_day_cache) < 100_000:
            _day_cache[stamp] = day
    return day


def panel_from_rows(symbols: list[str], rows: dict[str, list[dict]]) -> Panel:
    """A Panel on the union of the bars' dates; symbols without bars get NaN columns."""
    column_of = {symbol: j for j, symbol in enumerate(symbols)}
    cols: list[int] = []
    days: list[date] = []
    values: dict[str, list[float]] = {name: [] for name in BAR_FIELDS}
    for symbol, bars in rows.items():
        j = column_of.get(symbol)
        if j is None or not bars:
            continue
        for bar in bars:
            cols.append(j)
            days.append(bar_day(bar["t"]))
            for name, key in _BAR_KEYS.items():
                values[name].append(bar[key])
    dates = np.array(sorted(set(days)), dtype="datetime64[D]")
    shape = (len(dates), len(symbols))
    arrays = {name: np.full(shape, np.nan) for name in BAR_FIELDS}
    if days:
        row_index = np.searchsorted(dates, np.array(days, dtype="datetime64[D]"))
        col_index = np.array(cols)
        for name in BAR_FIELDS:
            arrays[name][row_index, col_index] = np.asarray(values[name], dtype=float)
    return Panel(dates=dates, symbols=list(symbols), **arrays)


def _row(panel: Panel, day: date, width: int) -> dict[str, np.ndarray]:
    """One date's bar fields across the panel's symbols (NaN when the date is absent)."""
    i = np.searchsorted(panel.dates, np.datetime64(day, "D"))
    present = i < len(panel.dates) and panel.dates[i] == np.datetime64(day, "D")
    return {name: (getattr(panel, name)[i].copy() if present else np.full(width, np.nan)) for name in BAR_FIELDS}


def snapshot_from_raw(symbols: list[str], raw: dict[str, Any], session: date, fraction: float) -> Snapshot:
    """Alpaca snapshots as a Snapshot (common/types.py). Before a symbol's first trade of the session its dailyBar is
    still the previous session's: then the session's open/high/low are unknown and that bar's close is prev_close."""
    fields = {name: np.full(len(symbols), np.nan) for name in
              ("open", "high", "low", "price", "volume", "prev_close", "bid", "ask")}
    for j, symbol in enumerate(symbols):
        entry = raw.get(symbol)
        if not entry:
            continue  # unknown symbol: Alpaca answers null or leaves it out
        daily, prev = entry.get("dailyBar") or {}, entry.get("prevDailyBar") or {}
        if daily and bar_day(daily["t"]) == session:
            fields["open"][j], fields["high"][j], fields["low"][j] = daily["o"], daily["h"], daily["l"]
            fields["volume"][j] = daily["v"]
            fields["prev_close"][j] = _positive(prev.get("c"))
        else:
            fields["volume"][j] = 0.0
            fields["prev_close"][j] = _positive(daily.get("c"))
        fields["price"][j] = _positive((entry.get("latestTrade") or {}).get("p"))
        quote = entry.get("latestQuote") or {}
        fields["bid"][j], fields["ask"][j] = _positive(quote.get("bp")), _positive(quote.get("ap"))
    return Snapshot(session=session, fraction=fraction, symbols=list(symbols), **fields)


def _positive(value: Any) -> float:
    """A price, or NaN when it is missing or zero (IEX shows 0 for an empty side of the book)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return float("nan")
    return number if number > 0 else float("nan")

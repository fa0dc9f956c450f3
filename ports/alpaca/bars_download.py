"""Alpaca's historical bars endpoint, `GET /v2/stocks/bars`, one page at a time (for `data download`).

alpaca-py's get_stock_bars gathers every page of a request in memory before it returns; a year of minute bars of 50
symbols is millions of bars. So this client asks for one page at a time through the SDK's data client (its base URL
and auth headers) with the guarded transport of ports/alpaca/transport.py installed: the shared request budget,
waits on 429 until X-RateLimit-Reset, a couple of retries of a read on 5xx, timeouts and connection errors. Each page
is checked and its bars are yielded as they come, in the server's order (symbol, then time), so the caller can write
them out as it goes. Whatever still fails is one line in the product's errors: DataUnavailable (retry later),
ConfigError (keys or data plan refused), DataError (the request was refused).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import requests
from alpaca.common.exceptions import APIError
from alpaca.data.historical import StockHistoricalDataClient

from common.errors import ConfigError, DataError, DataUnavailable, MomentumError
from ports.alpaca.transport import MALFORMED, Redactor, install_transport, translate
from ports.request_budget import RequestBudget

TIMEFRAMES = ("1Min", "5Min", "1Day")  # as Alpaca spells them on the wire
ADJUSTMENTS = ("raw", "split", "all")
FEEDS = ("iex", "sip")
PAGE_LIMIT = 10_000  # the most bars Alpaca serves per page


@dataclass(frozen=True)
class RawBar:
    """One bar as Alpaca sent it: `t` is the bar's start, RFC-3339 UTC (daily bars: midnight New York)."""

    symbol: str
    t: str
    open: float
    high: float
    low: float
    close: float
    volume: float


class AlpacaBarsClient:
    """Pages of historical bars for many symbols."""

    def __init__(self, api_key: str, secret_key: str, *, url_override: str | None = None,
                 budget: RequestBudget | None = None, timeout: float = 10.0,
                 sleep: Callable[[float], None] = time.sleep, unix_time: Callable[[], float] = time.time,
                 max_429_retries: int = 3):
        if not api_key or not secret_key:
            raise ConfigError("alpaca: an API key and secret key are required")
        self._timeout = timeout
        self._redact = Redactor(api_key, secret_key)
        self._data = StockHistoricalDataClient(api_key, secret_key, raw_data=True, url_override=url_override)
        install_transport(self._data, timeout=timeout, budget=budget, sleep=sleep, unix_time=unix_time,
                          max_429_retries=max_429_retries)
        self.pages_fetched = 0

    def bars(self, symbols: Sequence[str], *, timeframe: str, start: datetime, end: datetime, adjustment: str,
             feed: str) -> Iterator[RawBar]:
        """Every bar of `symbols` starting within [start, end], page after page (symbol, then time)."""
        if timeframe not in TIMEFRAMES:
            raise ConfigError(f"--timeframe: unknown timeframe {timeframe!r} (use {', '.join(TIMEFRAMES)})")
        params: dict[str, Any] = {"symbols": ",".join(symbols), "timeframe": timeframe, "start": rfc3339(start),
                                  "end": rfc3339(end), "limit": PAGE_LIMIT, "adjustment": adjustment, "feed": feed}
        action = f"bars for {len(symbols)} symbols"
        token = None
        while True:
            page = self._page(action, {**params, "page_token": token} if token else params)
            yield from self._page_bars(action, page)
            token = page.get("next_page_token")
            if not token:
                return

    def _page(self, action: str, params: dict[str, Any]) -> dict:
        try:
            page = self._data.get("/stocks/bars", params)
        except (APIError, requests.RequestException) as exc:
            raise self._translate(exc, action) from None
        self.pages_fetched += 1
        if not isinstance(page, dict) or not isinstance(page.get("bars") or {}, dict):
            raise self._translate(ValueError("no \"bars\" object in the page"), action)
        return page

    def _page_bars(self, action: str, page: dict) -> Iterator[RawBar]:
        try:
            for symbol, bars in (page.get("bars") or {}).items():
                for bar in bars or ():
                    yield RawBar(str(symbol), str(bar["t"]), float(bar["o"]), float(bar["h"]), float(bar["l"]),
                                 float(bar["c"]), float(bar["v"]))
        except MALFORMED as exc:
            raise self._translate(exc, action) from None

    def _translate(self, exc: Exception, action: str) -> MomentumError:
        return translate(exc, action, unavailable=DataUnavailable, rejected=DataError, timeout=self._timeout,
                         redact=self._redact)


def rfc3339(moment: datetime) -> str:
    """An aware moment as Alpaca's query parameters take it: 2024-06-14T04:00:00Z."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

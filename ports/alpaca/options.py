"""Alpaca options data through alpaca-py: listed contracts (trading API) and option snapshots (market-data API).

- Contracts: TradingClient.get_option_contracts does not follow pages, so `contracts` loops on next_page_token
  itself (at most MAX_CONTRACT_PAGES pages of CONTRACTS_PAGE_SIZE), always with an explicit expiration window
  (without one the server only lists contracts expiring by the next weekend).
- Snapshots: OptionHistoricalDataClient.get_option_snapshot (/v1beta1/options/snapshots, paged by the SDK) in
  batches of 200 symbols, feed given explicitly (ALPACA_OPTIONS_FEED, default indicative). Greeks and implied
  volatility may be missing; a contract without a delta gets one from Black-Scholes at its implied volatility, and
  without either it cannot be chosen.
- Both clients go through the shared guarded transport (timeout, request budget, 429 waits, no SDK retries).
"""
from __future__ import annotations

import logging
import time
from datetime import date, timedelta
from typing import Any, Callable, Sequence

import numpy as np
import requests
from alpaca.common.exceptions import APIError
from alpaca.data.enums import OptionsFeed
from alpaca.data.historical.option import OptionHistoricalDataClient
from alpaca.data.requests import OptionSnapshotRequest
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import AssetStatus, ContractType
from alpaca.trading.requests import GetOptionContractsRequest

from common.errors import ConfigError, DataError, DataUnavailable, MomentumError
from common.types import BAR_FIELDS, Panel, Snapshot
from core import option_math
from ports.alpaca.transport import MALFORMED, Redactor, batches, install_transport, translate
from ports.request_budget import RequestBudget

log = logging.getLogger(__name__)
CONTRACTS_PAGE_SIZE = 1000
MAX_CONTRACT_PAGES = 20


class AlpacaOptionsClient:
    """Contracts and snapshots, as plain dicts in Alpaca's wire shape."""

    def __init__(self, api_key: str, secret_key: str, *, paper: bool = True, trading_url: str | None = None,
                 data_url: str | None = None, feed: str = "indicative", budget: RequestBudget | None = None,
                 timeout: float = 10.0, sleep: Callable[[float], None] = time.sleep,
                 unix_time: Callable[[], float] = time.time, max_429_retries: int = 3):
        if not api_key or not secret_key:
            raise ConfigError("alpaca: an API key and secret key are required for options")
        try:
            self.feed = OptionsFeed(feed.lower())
        except ValueError:
            raise ConfigError(f"alpaca: unknown options feed {feed!r} (use indicative or opra)") from None
        self._timeout = timeout
        self._redact = Redactor(api_key, secret_key)
        guard = dict(timeout=timeout, budget=budget, sleep=sleep, unix_time=unix_time,
                     max_429_retries=max_429_retries)
        self._trading = TradingClient(api_key, secret_key, paper=paper, raw_data=True, url_override=trading_url)
        install_transport(self._trading, **guard)
        self._data = OptionHistoricalDataClient(api_key, secret_key, raw_data=True, url_override=data_url)
        install_transport(self._data, **guard)

    def contracts(self, underlying: str, kind: str, expiry_from: date, expiry_to: date,
                  strike_from: float | None = None, strike_to: float | None = None) -> list[dict]:
        """Active contracts of one underlying and type expiring in [expiry_from, expiry_to], every page."""
        found: list[dict] = []
        token = None
        for _ in range(MAX_CONTRACT_PAGES):
            query = GetOptionContractsRequest(
                underlying_symbols=[underlying], status=AssetStatus.ACTIVE, type=ContractType(kind),
                expiration_date_gte=expiry_from, expiration_date_lte=expiry_to,
                strike_price_gte=None if strike_from is None else f"{strike_from:g}",
                strike_price_lte=None if strike_to is None else f"{strike_to:g}",
                limit=CONTRACTS_PAGE_SIZE, page_token=token)
            raw = self._call(f"option contracts of {underlying}", lambda: self._trading.get_option_contracts(query))
            try:
                found.extend(raw["option_contracts"] or [])
                token = raw.get("next_page_token")
            except MALFORMED as exc:
                raise self._translate(exc, "option contracts") from None
            if not token:
                return found
        log.warning("alpaca: more than %d pages of %s contracts; the rest is not listed", MAX_CONTRACT_PAGES,
                    underlying)
        return found

    def snapshots(self, symbols: Sequence[str]) -> dict[str, dict]:
        """Option snapshots by OCC symbol (symbols Alpaca does not know are absent)."""
        found: dict[str, dict] = {}
        for batch in batches(list(dict.fromkeys(symbols))):
            query = OptionSnapshotRequest(symbol_or_symbols=batch, feed=self.feed)
            raw = self._call(f"option snapshots for {len(batch)} symbols",
                             lambda: self._data.get_option_snapshot(query))
            found.update({k: v for k, v in (raw or {}).items() if isinstance(v, dict)})
        return found

    def _call(self, action: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except (APIError, requests.RequestException, *MALFORMED) as exc:
            raise self._translate(exc, action) from None

    def _translate(self, exc: Exception, action: str) -> MomentumError:
        return translate(exc, action, unavailable=DataUnavailable, rejected=DataError, timeout=self._timeout,
                         redact=self._redact)


def client_for(rt) -> AlpacaOptionsClient:
    """The options client of a runtime (one per process), configured like the broker and data adapters."""
    cached = getattr(rt, "_alpaca_options", None)
    if cached is not None:
        return cached
    key, secret = rt.config.alpaca_api_key, rt.config.alpaca_secret_key
    if not key or not secret:
        raise ConfigError("ALPACA_API_KEY and ALPACA_SECRET_KEY must be set for Alpaca options")
    client = AlpacaOptionsClient(key, secret, paper=rt.mode != "LIVE", trading_url=rt.config.alpaca_trading_url or None,
                                 data_url=rt.config.alpaca_data_url or None, feed=rt.config.alpaca_options_feed,
                                 budget=rt._budget(), timeout=rt.config.alpaca_timeout)
    rt._alpaca_options = client
    return client


# --- conversions --------------------------------------------------------------------------------------------------

def _positive(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) and number > 0 else None


def quote_from_raw(contract: dict, snapshot: dict | None, spot: float, today: date) -> option_math.OptionQuote | None:
    """A chain entry from a contract and its snapshot; None when it cannot be judged (no quote, no delta)."""
    symbol = str(contract["symbol"])
    parsed = option_math.parse_occ(symbol)
    snapshot = snapshot or {}
    quote = snapshot.get("latestQuote") or {}
    bid, ask = _positive(quote.get("bp")), _positive(quote.get("ap"))
    iv = _positive(snapshot.get("impliedVolatility"))
    delta = (snapshot.get("greeks") or {}).get("delta")
    if delta is None and iv is not None:
        years = option_math.years_to_expiry(parsed.expiry, today)
        delta = option_math.black_scholes(parsed.kind, spot, parsed.strike, years, iv)[1]
    if delta is None or ask is None:
        return None
    return option_math.OptionQuote(symbol, str(contract.get("underlying_symbol") or parsed.root), parsed.kind,
                               float(contract.get("strike_price") or parsed.strike), parsed.expiry, bid, ask,
                               float(delta), iv)


class AlpacaChain:
    """Alpaca's listed contracts in the DTE window and +-20% strikes, with their snapshots."""

    def __init__(self, client: AlpacaOptionsClient, rules: option_math.ContractRules = option_math.ContractRules()):
        self.client = client
        self.rules = rules

    def chain(self, underlying: str, spot: float, today: date, bullish: bool) -> list[option_math.OptionQuote]:
        kind = option_math.CALL if bullish else option_math.PUT
        contracts = self.client.contracts(underlying, kind, today + timedelta(days=self.rules.min_dte),
                                          today + timedelta(days=self.rules.max_dte),
                                          round(spot * (1 - option_math.STRIKE_RANGE), 2),
                                          round(spot * (1 + option_math.STRIKE_RANGE), 2))
        tradable = [c for c in contracts if c.get("tradable", True) and option_math.is_occ(str(c.get("symbol")))]
        snaps = self.client.snapshots([str(c["symbol"]) for c in tradable]) if tradable else {}
        quotes = [quote_from_raw(c, snaps.get(str(c["symbol"])), spot, today) for c in tradable]
        return [q for q in quotes if q is not None]


class AlpacaOptionPrices:
    """Option quotes for the monitor and exits from Alpaca's snapshots (no option bars: the sim broker is not
    used with Alpaca prices)."""

    def __init__(self, client: AlpacaOptionsClient):
        self.client = client

    def option_bars(self, symbols: Sequence[str], start: date, end: date) -> Panel:
        shape = (0, len(symbols))
        return Panel(np.array([], dtype="datetime64[D]"), list(symbols),
                     *(np.full(shape, np.nan) for _ in BAR_FIELDS))

    def option_snapshot(self, symbols: Sequence[str], session: date, fraction: float) -> Snapshot:
        raw = self.client.snapshots(symbols)
        fields = {name: np.full(len(symbols), np.nan) for name in
                  ("open", "high", "low", "price", "volume", "prev_close", "bid", "ask")}
        for j, symbol in enumerate(symbols):
            entry = raw.get(symbol) or {}
            quote, trade = entry.get("latestQuote") or {}, entry.get("latestTrade") or {}
            bid, ask = _positive(quote.get("bp")), _positive(quote.get("ap"))
            last = _positive(trade.get("p"))
            fields["bid"][j] = bid if bid is not None else np.nan
            fields["ask"][j] = ask if ask is not None else np.nan
            # The mid of a two-sided quote is a fairer mark than a possibly stale last trade.
            mark = (bid + ask) / 2 if bid is not None and ask is not None else last
            fields["price"][j] = mark if mark is not None else np.nan
        return Snapshot(session, fraction, list(symbols), **fields)


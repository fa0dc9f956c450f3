"""Wires one command's parts together from the configuration: clock, journal, market data, broker, universe.

Parts are built on first use, so `settings` never opens a data file and `status` never parses a universe it does
not need. main.py creates one Runtime per command and closes it at the end.

The broker is checked against the journal when it is built: the journal remembers the account it trades with (state
`broker_account`, "sim:<file id>" or "alpaca:<account id>"), and a broker showing another account stops the command
with a ConfigError. Otherwise a deleted sim broker file (a fresh $100,000 account) or other Alpaca keys would look
like positions closed behind the journal's back, and reconciling would rewrite the book. A journal without trades
or orders has nothing to protect: it simply takes the broker's account as its own.
"""
from __future__ import annotations

import logging
from functools import cached_property
from pathlib import Path

from common.clock import Calendar, Clock, calendar, parse_asof
from common.errors import ConfigError
from common.types import Broker, MarketData
from config import Config, register_secrets
from db import Journal, open_journal
from flows.prepared_history import HistoryCache

log = logging.getLogger(__name__)

BROKER_ACCOUNT_STATE = "broker_account"


class Runtime:
    # The trading loop applies the regime (allocation factor, no buys in CRASH) unless this is False; only the
    # backtest switches it off, to compare a system with and without the regime filter.
    regime_filter: bool = True

    def __init__(self, config: Config, command: str = ""):
        self.config = config
        self.command = command
        register_secrets(config.secrets())
        self.clock = Clock(parse_asof(config.momentum_asof) if config.momentum_asof else None)

    @property
    def mode(self) -> str:
        return self.config.mode

    @cached_property
    def calendar(self) -> Calendar:
        return calendar()

    @cached_property
    def journal(self) -> Journal:
        journal = open_journal(self.config.momentum_db, self.clock)
        journal.log_dir = Path(self.config.log_dir)
        return journal

    @cached_property
    def universe(self):
        from common.universe import load_universe, on_the_clock

        # a point-in-time universe answers symbols(cap) and cap_of(symbol) for the clock's day (simulated in a backtest)
        return on_the_clock(load_universe(Path(self.config.universe_file)), self.clock.today)

    def _universe_symbols(self) -> list[str]:
        try:
            return self.universe.symbols_in_any_period("all")  # the sim market serves every day's members
        except ConfigError:
            if self.config.data_source == "sim":
                raise
            return []

    @cached_property
    def market(self) -> MarketData:
        source = self.config.data_source
        if source == "alpaca":
            from ports.alpaca.market import AlpacaMarket

            key, secret = self._alpaca_keys("--data alpaca")
            market = AlpacaMarket(key, secret, feed=self.config.alpaca_feed,
                                  url_override=self.config.alpaca_data_url or None, budget=self._budget(),
                                  timeout=self.config.alpaca_timeout, now=self.clock.now)
            if self.config.market_data:  # --market: SPY and VIX from the file instead of the SPY/VIXY proxies
                from ports.market_factory import WithMarketFile

                return WithMarketFile(market, self.config.market_data, Path(self.config.cache_dir))
            return market
        from ports.market_factory import open_market

        return open_market(source, market_path=self.config.market_data or None,
                           universe_symbols=self._universe_symbols() if source == "sim" else None,
                           cache_dir=Path(self.config.cache_dir))

    @cached_property
    def history_cache(self):
        """Prepared scanner and reversal histories for the rest of a session (see flows/prepared_history.py); None over
        a market whose completed sessions may still change (a live feed)."""

        return HistoryCache() if getattr(self.market, "static_history", False) else None

    @cached_property
    def broker(self) -> Broker:
        broker = self._build_broker()
        check_broker_account(self.journal, broker, self._restore_hint())
        return broker

    def _build_broker(self) -> Broker:
        if self.config.broker == "alpaca":
            from ports.alpaca.broker import AlpacaBroker

            key, secret = self._alpaca_keys("--broker alpaca")
            return AlpacaBroker(key, secret, paper=self.mode != "LIVE",
                                url_override=self.config.alpaca_trading_url or None, budget=self._budget(),
                                timeout=self.config.alpaca_timeout)
        from ports.sim_broker import SimBroker

        return SimBroker(self.config.sim_broker_path(), self.market, self.clock, cap_of=self.cap_of)

    def _restore_hint(self) -> str:
        if self.config.broker == "alpaca":
            return "use the Alpaca account it traded with (ALPACA_API_KEY, ALPACA_PAPER)"
        return f"restore the sim broker file {self.config.sim_broker_path()} it traded with"

    def cap_of(self, symbol: str) -> str:
        try:
            return self.universe.cap_of(symbol) or "small"
        except ConfigError:
            return "small"

    def _alpaca_keys(self, what: str) -> tuple[str, str]:
        key, secret = self.config.alpaca_api_key, self.config.alpaca_secret_key
        if not key or not secret:
            raise ConfigError(f"ALPACA_API_KEY and ALPACA_SECRET_KEY must be set for {what}")
        return key, secret

    def _budget(self):
        from ports.request_budget import RequestBudget

        path = Path(self.config.momentum_db).parent / "alpaca_budget.db"
        return RequestBudget(path, per_minute=self.config.alpaca_requests_per_min)

    def close(self) -> None:
        if "journal" in self.__dict__:
            self.journal.db.conn.close()


def check_broker_account(journal: Journal, broker: Broker, restore_hint: str) -> None:
    """Refuse a broker whose account is not the one the journal traded with; a journal with no trades or orders
    yet (or from before accounts were remembered) takes the broker's account as its own."""
    account = f"{broker.name}:{broker.account_id()}"
    remembered = journal.state(BROKER_ACCOUNT_STATE)
    if remembered == account:
        return
    if remembered is not None and _has_history(journal):
        raise ConfigError(f"broker account {account} is not the account {remembered} that journal {journal.path} "
                          f"traded with: {restore_hint}, or use a fresh --db")
    journal.set_state(BROKER_ACCOUNT_STATE, account)
    log.info("journal %s trades with broker account %s", journal.path, account)


def _has_history(journal: Journal) -> bool:
    row = journal.one("SELECT EXISTS (SELECT 1 FROM trades) OR EXISTS (SELECT 1 FROM orders) AS traded")
    return bool(row["traded"])

"""Value types and the two port protocols (market data and broker) shared by every part.

Prices are floats in dollars, equity quantities are whole shares (int; option quantities are whole contracts).
Arrays in a Panel are days x symbols, float64, NaN where a symbol has no bar that day.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Protocol, Sequence

import numpy as np
import pandas as pd

BAR_FIELDS = ("open", "high", "low", "close", "volume")

# Order vocabulary, spelled as Alpaca spells it on the wire.
BUY, SELL = "buy", "sell"
MARKET, LIMIT, STOP, TRAILING_STOP = "market", "limit", "stop", "trailing_stop"
OPEN_STATUSES = frozenset(
    {"new", "accepted", "pending_new", "partially_filled", "pending_cancel", "pending_replace", "held",
     "accepted_for_bidding", "calculated", "pending_review", "done_for_day"}
)
FINAL_STATUSES = frozenset({"filled", "canceled", "expired", "rejected", "replaced", "stopped", "suspended"})
# A journal order is also final when it is known never to have reached the broker. In this order, the condition
# of the journal's partial index of live orders (journal/schema.py) is spelled word for word from it.
FINAL_OR_UNSENT = (*sorted(FINAL_STATUSES), "not_sent")


def sql_list(values) -> str:
    """Values as an SQL list in their order: `('a', 'b')`."""
    return "(" + ", ".join(repr(value) for value in values) + ")"


def _positions(have: Sequence[str], want: Sequence[str]) -> np.ndarray:
    """Where each wanted symbol is in `have` (-1 when it is not there)."""
    position = {symbol: i for i, symbol in enumerate(have)}
    return np.array([position.get(symbol, -1) for symbol in want], dtype=int)


def _take_at(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Columns `index` of a 2-D array, as a float copy (-1 gives a NaN column)."""
    out = values[:, np.maximum(index, 0)] if len(index) else np.empty((values.shape[0], 0))
    out = out.astype(float, copy=True)
    out[:, index < 0] = np.nan
    return out


@dataclass(frozen=True)
class Panel:
    """Daily bars for many symbols on a common ascending date axis."""

    dates: np.ndarray  # datetime64[D], ascending, unique
    symbols: list[str]
    open: np.ndarray  # shape (len(dates), len(symbols))
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray

    def column(self, symbol: str) -> int:
        return self.symbols.index(symbol)

    def select(self, symbols: Sequence[str]) -> "Panel":
        """The same dates for a subset of symbols (unknown symbols become all-NaN columns)."""
        index = _positions(self.symbols, symbols)
        return Panel(self.dates, list(symbols), *(_take_at(getattr(self, name), index) for name in BAR_FIELDS))

    def frame(self, symbol: str) -> pd.DataFrame:
        """One symbol's bars as a DataFrame indexed by date (for reports and tests, not hot paths)."""
        j = self.column(symbol)
        data = {name: getattr(self, name)[:, j] for name in BAR_FIELDS}
        return pd.DataFrame(data, index=pd.DatetimeIndex(self.dates, name="date"))


# What a Snapshot was built from (the information-set rule, README "Honest replay"):
# DAILY: daily bars only. Before the close it shows the completed sessions and today's open, nothing else: price,
#   high and low so far are the open, volume so far is unknown (NaN). From the close on it shows the whole bar.
# INTRADAY: real intraday bars (or a live quote): price, range and volume so far as they were at that moment.
DAILY, INTRADAY = "daily", "intraday"


@dataclass(frozen=True)
class Snapshot:
    """The intraday view of one session at a session fraction, one entry per symbol.

    `fraction` is the share of the regular session elapsed (0 at the open, 1 at the close). Arrays are NaN for a
    symbol with no bar that session. `view` says what the values are built from (DAILY or INTRADAY above).
    """

    session: date
    fraction: float
    symbols: list[str]
    open: np.ndarray
    high: np.ndarray  # high so far
    low: np.ndarray  # low so far
    price: np.ndarray  # current (last) price
    volume: np.ndarray  # volume so far
    prev_close: np.ndarray
    bid: np.ndarray
    ask: np.ndarray
    view: str = INTRADAY

    def index(self, symbol: str) -> int:
        return self.symbols.index(symbol)

    def select(self, symbols: Sequence[str]) -> "Snapshot":
        """The same session for a subset of symbols (unknown symbols get NaN)."""
        index = _positions(self.symbols, symbols)
        arrays = {name: _take_at(np.asarray(getattr(self, name))[None, :], index)[0]
                  for name in ("open", "high", "low", "price", "volume", "prev_close", "bid", "ask")}
        return Snapshot(self.session, self.fraction, list(symbols), **arrays, view=self.view)


@dataclass(frozen=True)
class SessionBars:
    """One session's intraday bars for many symbols, in time order (sources with intraday data only).

    `ends[k]` is the session fraction at which bar k ends (ascending, in (0, 1]); a bar is known from its end on.
    Arrays are (bars, symbols), NaN where a symbol did not trade in a bar.
    """

    session: date
    symbols: list[str]
    ends: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray


@dataclass(frozen=True)
class Account:
    equity: float
    cash: float
    buying_power: float
    last_equity: float  # equity at the previous close (start-of-day equity)
    status: str = "ACTIVE"
    trading_blocked: bool = False
    currency: str = "USD"
    id: str = ""  # the broker's identity of the account (Alpaca's account id; the sim broker file's own id)


@dataclass(frozen=True)
class Position:
    symbol: str
    qty: int
    qty_available: int  # qty less shares held by open sell orders
    avg_entry_price: float
    current_price: float
    market_value: float
    unrealized_pl: float
    asset_class: str = "us_equity"


@dataclass(frozen=True)
class OrderRequest:
    client_order_id: str
    symbol: str
    side: str  # BUY or SELL
    type: str  # MARKET, LIMIT, STOP, TRAILING_STOP
    qty: int
    time_in_force: str = "day"  # day or gtc
    limit_price: float | None = None
    stop_price: float | None = None
    trail_percent: float | None = None  # 5.0 means 5%


@dataclass(frozen=True)
class Order:
    id: str
    client_order_id: str
    symbol: str
    side: str
    type: str
    qty: int
    status: str
    filled_qty: int = 0
    filled_avg_price: float | None = None
    time_in_force: str = "day"
    limit_price: float | None = None
    stop_price: float | None = None
    trail_percent: float | None = None
    hwm: float | None = None
    submitted_at: datetime | None = None
    filled_at: datetime | None = None
    canceled_at: datetime | None = None
    asset_class: str = "us_equity"
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES


class MarketData(Protocol):
    """Where prices come from. Implementations: sim, csv:PATH, alpaca."""

    name: str

    def bars(self, symbols: Sequence[str], start: date, end: date) -> Panel:
        """Daily bars of completed sessions with start <= date <= end. Unknown symbols get all-NaN columns."""

    def snapshot(self, symbols: Sequence[str], session: date, fraction: float) -> Snapshot:
        """The intraday view of `session` at `fraction` of the regular session."""

    def market_series(self, start: date, end: date) -> pd.DataFrame:
        """SPY and VIX daily series indexed by date: spy_open..spy_volume, vix_open..vix_close (NaN if unknown)."""

    # Optional, for sources with intraday data: `session_bars(symbols, session) -> SessionBars`. A source without it
    # serves DAILY snapshots, and the sim broker settles each session from its daily bar (ports/sim_fills.py).

    def known_symbols(self) -> list[str]:
        """Every stock symbol the source can serve (for universe building and validation)."""


class Broker(Protocol):
    """Where orders go. Implementations: sim (own SQLite file), alpaca."""

    name: str

    def account(self) -> Account: ...

    def account_id(self) -> str:
        """The identity of the account behind this broker, stable for its life: Alpaca's account id, the sim
        broker file's id. A journal remembers the one it traded with (flows/runtime.py checks it)."""

    def positions(self) -> list[Position]: ...

    def submit(self, request: OrderRequest) -> Order:
        """Send an order. Raises OrderRejected (or a subclass) or BrokerUnavailable; never retries a POST blindly."""

    def get_order(self, order_id: str) -> Order: ...

    def get_order_by_client_id(self, client_order_id: str) -> Order | None:
        """The order with this client_order_id, or None when the broker has none."""

    def orders(self, status: str = "open", symbols: Sequence[str] | None = None) -> list[Order]:
        """Orders by status: "open", "closed" or "all"."""

    def cancel(self, order_id: str) -> None:
        """Request cancellation; cancellation may complete later (poll the order)."""


def finite(value) -> float | None:
    """A number as a float, or None when it is missing, not a number or not finite (NaN, inf)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None

"""The simulated broker: Alpaca-like order handling against the market-data port, state in its own SQLite file.

Time only moves forward. Every public call first advances the simulation from the file's last processed time to
the clock's now: for each NYSE session in between it settles the working orders against the bars of that session
that ended in the stretch (ports/sim_fills.py): from daily data the opening print at 09:30 and the rest of the day at
the close; from a source with intraday bars (`session_bars`) every bar as it ends. Orders waiting for the open fill
there, limits, stops and trailing stops trigger on the bars' real highs and lows (the worse outcome when a bar
cannot tell the order of its prices), DAY orders expire at the close and the equity at each close is recorded.

During a session the current price is the close of the last bar that has ended: with daily data, today's open
until the close. A marketable order sent then fills at once at that price plus the costs. With daily data every
decision of a session sees what was knowable at the open, so it trades as it could have at the open; what the rest
of the day did is settled only at the close, when it is known. A stop and its position stay as they are until then,
positions are marked at the open, and an order canceled during the session is not held to that day's range (daily
bars cannot say whether its low came before or after the cancel).

Each call is one SQLite transaction (WAL, busy timeout), so a process killed at any instant leaves the file as it
was before or after the whole call, and two processes sharing the file take turns. As in the journal, WAL commits
are not synced to disk one by one (synchronous NORMAL): a killed process loses nothing it committed, a power cut
may lose the last calls, never the file's consistency; a synced commit costs about twenty times the call itself.

Tables: `account` (one row: account id, cash, starting cash, last processed time), `positions` (qty, average
entry price, last known price), `orders` (Alpaca-shaped, client_order_id unique for good, cash reserved by open buys),
`fills`, `equity_marks` (equity at each session close, the source of `last_equity`) and `dividends` (cash paid on
each ex-date to the shares held at the open, when the market data carries dividends).

The account id is a random id created with the file (a file from before ids gets one when first opened). A journal
remembers the id of the account it traded with, so a deleted or replaced file, which would otherwise be a fresh
$100,000 account without the journal's positions, is refused rather than reconciled away (see flows/runtime.py).

OCC option symbols trade like stocks here, priced by option_market (Black-Scholes from the underlying's bars);
their cash, market value and P&L are premium x contracts x 100 (options.multiplier).
"""
from __future__ import annotations

import functools
import logging
import math
import sqlite3
import uuid
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import replace
from datetime import date, datetime
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from common.clock import NY, UTC, Clock, Session, calendar
from common.errors import (
    ConfigError,
    DuplicateClientOrderId,
    InsufficientQty,
    JournalBusy,
    JournalError,
    OrderNotFound,
    OrderRejected,
    SimTimeError,
)
from common.types import (
    BUY,
    LIMIT,
    MARKET,
    SELL,
    STOP,
    TRAILING_STOP,
    Account,
    MarketData,
    Order,
    OrderRequest,
    Position,
)
from core.option_math import EQUITY, OPTION, is_occ, multiplier
from ports.option_market import with_options
from ports.sim_fills import PRIORITY, Print, Resting, cost_rate, immediate_fill, settle, trailing_stop_price

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3  # 2: account.account_id; 3: dividends
WORKING = ("new", "accepted")  # the open statuses this broker uses
ORDER_TYPES = (MARKET, LIMIT, STOP, TRAILING_STOP)
TIME_IN_FORCE = ("day", "gtc")
Bar = tuple[float, float, float, float]
ORDER_MEMO_SIZE = 4096

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS account (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        cash REAL NOT NULL,
        starting_cash REAL NOT NULL,
        last_processed TEXT,
        account_id TEXT)""",
    """CREATE TABLE IF NOT EXISTS positions (
        symbol TEXT PRIMARY KEY,
        qty INTEGER NOT NULL CHECK (qty > 0),
        avg_entry_price REAL NOT NULL,
        last_price REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS orders (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        client_order_id TEXT NOT NULL UNIQUE,
        symbol TEXT NOT NULL,
        side TEXT NOT NULL,
        type TEXT NOT NULL,
        qty INTEGER NOT NULL,
        time_in_force TEXT NOT NULL,
        limit_price REAL,
        stop_price REAL,
        trail_percent REAL,
        hwm REAL,
        cost_rate REAL NOT NULL,
        reserved REAL NOT NULL DEFAULT 0,
        status TEXT NOT NULL,
        filled_qty INTEGER NOT NULL DEFAULT 0,
        filled_avg_price REAL,
        submitted_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        filled_at TEXT,
        canceled_at TEXT,
        expired_at TEXT)""",
    "CREATE INDEX IF NOT EXISTS orders_by_status ON orders (status, symbol)",
    """CREATE TABLE IF NOT EXISTS fills (
        id INTEGER PRIMARY KEY,
        order_id TEXT NOT NULL REFERENCES orders (id),
        symbol TEXT NOT NULL,
        side TEXT NOT NULL,
        qty INTEGER NOT NULL,
        price REAL NOT NULL,
        at TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS equity_marks (
        session TEXT PRIMARY KEY,
        equity REAL NOT NULL,
        cash REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS dividends (
        session TEXT NOT NULL,
        symbol TEXT NOT NULL,
        qty INTEGER NOT NULL,
        per_share REAL NOT NULL,
        amount REAL NOT NULL,
        PRIMARY KEY (session, symbol))""",
)


# _held_for_orders of position p, as a subquery of a positions query; parameters: SELL, *WORKING.
HELD_FOR_ORDERS_SQL = (f"SELECT COALESCE(SUM(o.qty - o.filled_qty), 0) FROM orders o WHERE o.symbol = p.symbol "
                       f"AND o.side = ? AND o.status IN ({','.join('?' * len(WORKING))})")


def _iso(moment: datetime) -> str:
    """Storage form: ISO-8601 UTC with a fixed layout, so stored times also compare correctly as text."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _parse(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def _shown(moment: datetime) -> str:
    """New York time for messages, to the minute unless seconds matter."""
    local = moment.astimezone(NY)
    return local.strftime("%Y-%m-%d %H:%M:%S %Z" if local.second else "%Y-%m-%d %H:%M %Z")


@functools.lru_cache(maxsize=256)
def _sessions_between(first: date, last: date) -> tuple[Session, ...]:
    """The NYSE sessions first..last (the calendar never changes while the program runs)."""
    cal = calendar()
    return tuple(map(cal.session, cal.sessions(first, last)))


def _moment(session: Session, fraction: float) -> datetime:
    return session.open + (session.close - session.open) * fraction


def _placeholders(values: Sequence) -> str:
    return ",".join("?" * len(values))


class SimBroker:
    """The the Broker protocol (common/types.py) protocol over a simulated account kept in the SQLite file at `path`."""

    name = "sim"

    def __init__(self, path: Path, market: MarketData, clock: Clock,
                 cap_of: Callable[[str], str] | None = None, starting_cash: float = 100_000.0):
        self.path = Path(path)
        self.market = market
        self._bar_source = with_options(market)  # OCC option symbols priced from their underlying (Black-Scholes)
        self.clock = clock
        self.cap_of = cap_of or (lambda symbol: "small")
        self._orders_built: dict[tuple, Order] = {}
        self._account_id = ""
        self._db = self._open(starting_cash)

    # ----- file and transactions

    def _open(self, starting_cash: float) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA busy_timeout = 10000")
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")  # see the module docstring
            self._db = db  # the transaction helper works on self._db
            with self._transaction():
                self._apply_schema(db, starting_cash)
        except sqlite3.DatabaseError as exc:
            raise self._file_error(exc) from exc
        return db

    def _apply_schema(self, db: sqlite3.Connection, starting_cash: float) -> None:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise JournalError(f"sim broker file {self.path} is from a newer version (schema {version})")
        for statement in SCHEMA:
            db.execute(statement)
        if "account_id" not in {row["name"] for row in db.execute("PRAGMA table_info(account)")}:
            db.execute("ALTER TABLE account ADD COLUMN account_id TEXT")  # a schema 1 file
        db.execute("INSERT OR IGNORE INTO account (id, cash, starting_cash) VALUES (1, ?, ?)",
                   (float(starting_cash), float(starting_cash)))
        db.execute("UPDATE account SET account_id = ? WHERE account_id IS NULL", (str(uuid.uuid4()),))
        self._account_id = db.execute("SELECT account_id FROM account").fetchone()[0]
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _file_error(self, exc: sqlite3.DatabaseError) -> JournalError | JournalBusy:
        if "locked" in str(exc) or "busy" in str(exc):
            return JournalBusy(f"sim broker file {self.path} stayed locked: {exc}")
        return JournalError(f"sim broker file {self.path} cannot be used: {exc}")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction per call; a refused order keeps the advance made before the refusal."""
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.DatabaseError as exc:
            raise self._file_error(exc) from exc
        try:
            yield db
        except (OrderRejected, OrderNotFound):
            db.execute("COMMIT")  # refusals are raised before the refused operation writes anything
            raise
        except sqlite3.DatabaseError as exc:
            db.execute("ROLLBACK")
            raise self._file_error(exc) from exc
        except BaseException:
            db.execute("ROLLBACK")
            raise
        else:
            db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()

    # ----- public API (the Broker protocol (common/types.py))

    def account(self) -> Account:
        with self._transaction() as db:
            now = self._advance(db)
            cash, starting = db.execute("SELECT cash, starting_cash FROM account").fetchone()
            equity = cash + self._market_value(db)
            return Account(equity=round(equity, 2), cash=round(cash, 2),
                           buying_power=round(max(0.0, self._buying_power(db)), 2),
                           last_equity=round(self._last_equity(db, now, starting), 2), id=self._account_id)

    def account_id(self) -> str:
        """The file's account id; read when the file is opened, so asking never moves simulated time."""
        return self._account_id

    def positions(self) -> list[Position]:
        with self._transaction() as db:
            self._advance(db)
            rows = db.execute(f"SELECT p.*, ({HELD_FOR_ORDERS_SQL}) AS held FROM positions p ORDER BY p.symbol",
                              (SELL, *WORKING)).fetchall()
            return [_to_position(row, int(row["held"])) for row in rows]

    def submit(self, request: OrderRequest) -> Order:
        with self._transaction() as db:
            now = self._advance(db)
            request = _validated(request)
            if db.execute("SELECT 1 FROM orders WHERE client_order_id = ?", (request.client_order_id,)).fetchone():
                raise DuplicateClientOrderId("client_order_id must be unique", status_code=422, code=40010001)
            price, live = self._quote(db, request.symbol, now)
            if price is None:
                raise OrderRejected(f'asset "{request.symbol}" has no price in the market data', status_code=422)
            rate = cost_rate(self.cap_of(request.symbol))
            reserved = self._check_funds_or_shares(db, request, price, rate)
            order_id = self._insert_order(db, request, now, price, live, rate, reserved)
            self._fill_on_arrival(db, order_id, price, live, now)
            return self._order_of(db, order_id)

    def get_order(self, order_id: str) -> Order:
        with self._transaction() as db:
            self._advance(db)
            return self._order_of(db, order_id)

    def get_orders(self, order_ids: Sequence[str]) -> dict[str, Order]:
        """Several orders by id in one call (one advance, one transaction), for the reconciler; ids the broker does
        not know are left out, so the caller looks them up the way it looks up a single unknown order."""
        wanted = list(dict.fromkeys(order_ids))
        with self._transaction() as db:
            self._advance(db)
            found: dict[str, Order] = {}
            for start in range(0, len(wanted), 500):  # stay far below SQLite's limit on bound parameters
                chunk = wanted[start:start + 500]
                for row in db.execute(f"SELECT * FROM orders WHERE id IN ({_placeholders(chunk)})", chunk):
                    found[row["id"]] = self._order(row)
            return found

    def get_order_by_client_id(self, client_order_id: str) -> Order | None:
        with self._transaction() as db:
            self._advance(db)
            row = db.execute("SELECT * FROM orders WHERE client_order_id = ?", (client_order_id,)).fetchone()
            return self._order(row) if row else None

    def orders(self, status: str = "open", symbols: Sequence[str] | None = None) -> list[Order]:
        """Newest first, like Alpaca; no page limit."""
        if status not in ("open", "closed", "all"):
            raise ConfigError(f"order status filter must be open, closed or all, not {status!r}")
        with self._transaction() as db:
            self._advance(db)
            if status == "open":  # the working orders only: the closed ones pile up over a long run
                rows = db.execute(f"SELECT * FROM orders WHERE status IN ({_placeholders(WORKING)}) "
                                  f"ORDER BY seq DESC", WORKING).fetchall()
            else:
                rows = db.execute("SELECT * FROM orders ORDER BY seq DESC").fetchall()
        wanted = set(symbols) if symbols is not None else None
        chosen = [row for row in rows if wanted is None or row["symbol"] in wanted]
        if status == "open":
            chosen = [row for row in chosen if row["status"] in WORKING]
        elif status == "closed":
            chosen = [row for row in chosen if row["status"] not in WORKING]
        return [self._order(row) for row in chosen]

    def cancel(self, order_id: str) -> None:
        """Cancels at once (Alpaca may take a moment; callers poll the order either way)."""
        with self._transaction() as db:
            now = self._advance(db)
            row = self._order_row(db, order_id)
            if row["status"] not in WORKING:
                raise OrderRejected(f"order is not cancelable (status {row['status']})", status_code=422,
                                    code=42210000)
            db.execute("UPDATE orders SET status = 'canceled', canceled_at = ?, updated_at = ?, reserved = 0 "
                       "WHERE id = ?", (_iso(now), _iso(now), order_id))
            log.info("sim broker: canceled %s (%s %s)", order_id, row["type"], row["symbol"])

    # ----- reads

    def _order_row(self, db: sqlite3.Connection, order_id: str) -> sqlite3.Row:
        row = db.execute("SELECT * FROM orders WHERE id = ?", (order_id,)).fetchone()
        if row is None:
            raise OrderNotFound(f"order not found: {order_id}")
        return row

    def _order_of(self, db: sqlite3.Connection, order_id: str) -> Order:
        return self._order(self._order_row(db, order_id))

    def _order(self, row: sqlite3.Row) -> Order:
        """The Order of a row, built once per distinct row content: the working stops are read again and again,
        unchanged, and building an Order costs more than the read. Keyed by every column, so a changed row is a
        new entry and the memo can never answer with another state of the order."""
        content = tuple(row)
        order = self._orders_built.get(content)
        if order is None:
            if len(self._orders_built) >= ORDER_MEMO_SIZE:
                self._orders_built.clear()
            order = self._orders_built[content] = _to_order(row)
        return order

    def _held_for_orders(self, db: sqlite3.Connection, symbol: str) -> int:
        """Shares reserved by open sell orders (Alpaca's held_for_orders)."""
        row = db.execute(f"SELECT COALESCE(SUM(qty - filled_qty), 0) FROM orders WHERE symbol = ? AND side = ? "
                         f"AND status IN ({_placeholders(WORKING)})", (symbol, SELL, *WORKING)).fetchone()
        return int(row[0])

    def _market_value(self, db: sqlite3.Connection) -> float:
        rows = db.execute("SELECT symbol, qty * last_price FROM positions").fetchall()
        return float(sum(value * multiplier(symbol) for symbol, value in rows))

    def _buying_power(self, db: sqlite3.Connection) -> float:
        """No margin: cash less what open buy orders have reserved."""
        cash = db.execute("SELECT cash FROM account").fetchone()[0]
        reserved = db.execute(f"SELECT COALESCE(SUM(reserved), 0) FROM orders "
                              f"WHERE status IN ({_placeholders(WORKING)})", WORKING).fetchone()[0]
        return float(cash - reserved)

    def _last_equity(self, db: sqlite3.Connection, now: datetime, starting_cash: float) -> float:
        """Equity at the last session close before today's New York date (start-of-day equity).

        Before the first recorded close it is the starting cash, since the account had nothing else.
        """
        today = now.astimezone(NY).date()
        row = db.execute("SELECT equity FROM equity_marks WHERE session < ? ORDER BY session DESC LIMIT 1",
                         (today.isoformat(),)).fetchone()
        return float(row[0]) if row else float(starting_cash)

    def _quote(self, db: sqlite3.Connection, symbol: str, now: datetime) -> tuple[float | None, bool]:
        """(price now, whether it is a live in-session price): the close of the last bar that has ended (with daily
        data the open during the session, the close after it); before any bar, the last mark."""
        cal = calendar()
        session, fraction = cal.current_or_last_session(now)
        prints = self._session_prints([symbol], (session,)).get((symbol, session.day), ())
        known = [bar for bar in prints if bar.end <= fraction]
        if known:
            return known[-1].close, cal.is_open(now)
        row = db.execute("SELECT last_price FROM positions WHERE symbol = ?", (symbol,)).fetchone()
        return (float(row[0]) if row else None), False

    def _session_prints(self, symbols: Sequence[str], sessions: Sequence[Session]
                        ) -> dict[tuple[str, date], tuple[Print, ...]]:
        """The bars of each (symbol, session) in time order: intraday bars where the market serves them (stocks
        only), else the opening print and the rest of the day from the daily bar."""
        if not symbols or not sessions:
            return {}
        intraday = getattr(self.market, "session_bars", None)
        stocks = [s for s in symbols if not is_occ(s)] if intraday is not None else []
        daily = self._daily_bars([s for s in symbols if s not in set(stocks)], sessions[0].day, sessions[-1].day)
        prints = {key: _daily_prints(bar) for key, bar in daily.items()}
        for session in sessions if stocks else ():
            bars = intraday(stocks, session.day)
            for j, symbol in enumerate(bars.symbols):
                prints[(symbol, session.day)] = _intraday_prints(bars, j)
        return prints

    def _daily_bars(self, symbols: Sequence[str], first: date, last: date) -> dict[tuple[str, date], Bar]:
        """(open, high, low, close) bars by (symbol, day) with at least an open (a day cut off inside the session
        has its open only: high, low and close are NaN)."""
        if not symbols:
            return {}
        panel = self._bar_source.bars(list(symbols), first, last)
        days = panel.dates.astype("datetime64[D]").tolist()  # datetime.date objects
        fields = [field.tolist() for field in (panel.open, panel.high, panel.low, panel.close)]
        bars: dict[tuple[str, date], Bar] = {}
        for i, day in enumerate(days):
            for j, symbol in enumerate(panel.symbols):
                bar = tuple(float(field[i][j]) for field in fields)
                if math.isfinite(bar[0]):
                    bars[(symbol, day)] = bar
        return bars

    # ----- submission

    def _check_funds_or_shares(self, db: sqlite3.Connection, request: OrderRequest, price: float,
                               rate: float) -> float:
        """Refuse what Alpaca would refuse; returns the cash a buy reserves while it is open."""
        if request.side == BUY:
            unit = request.limit_price if request.type == LIMIT else price * (1.0 + rate)
            cost = request.qty * unit * multiplier(request.symbol)
            if cost > self._buying_power(db) + 1e-9:
                raise OrderRejected("insufficient buying power", status_code=403, code=40310000)
            return cost
        row = db.execute("SELECT qty FROM positions WHERE symbol = ?", (request.symbol,)).fetchone()
        if row is None:
            raise OrderRejected(f"sim broker does not sell short: no position in {request.symbol}",
                                status_code=403, code=40310000)
        available = row[0] - self._held_for_orders(db, request.symbol)
        if request.qty > available:
            raise InsufficientQty(f"insufficient qty available for order (requested: {request.qty}, "
                                  f"available: {available})", status_code=403, code=40310000)
        return 0.0

    def _insert_order(self, db: sqlite3.Connection, request: OrderRequest, now: datetime, price: float,
                      live: bool, rate: float, reserved: float) -> str:
        seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM orders").fetchone()[0]
        order_id = f"sim-{seq:06d}"
        trailing = request.type == TRAILING_STOP
        hwm = price if trailing else None
        stop = trailing_stop_price(hwm, request.trail_percent) if trailing else request.stop_price
        db.execute(
            "INSERT INTO orders (seq, id, client_order_id, symbol, side, type, qty, time_in_force, limit_price, "
            "stop_price, trail_percent, hwm, cost_rate, reserved, status, submitted_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (seq, order_id, request.client_order_id, request.symbol, request.side, request.type, request.qty,
             request.time_in_force, request.limit_price if request.type == LIMIT else None, stop,
             request.trail_percent if trailing else None, hwm, rate, reserved,
             "new" if live else "accepted", _iso(now), _iso(now)))
        log.info("sim broker: %s %s %s %d %s (%s)", order_id, request.side, request.type, request.qty,
                 request.symbol, "working" if live else "accepted for the next open")
        return order_id

    def _fill_on_arrival(self, db: sqlite3.Connection, order_id: str, price: float, live: bool,
                         now: datetime) -> None:
        """During the session a marketable order trades at once; outside it everything waits for the open."""
        if not live:
            return
        row = self._order_row(db, order_id)
        fill_price = immediate_fill(_resting(row), price)
        if fill_price is not None:
            self._fill(db, row, fill_price, now, mark=price)

    # ----- advancing simulated time

    def _advance(self, db: sqlite3.Connection) -> datetime:
        """Bring the file from its last processed time to the clock's now; returns now."""
        now = self.clock.now().astimezone(UTC)
        last = _parse(db.execute("SELECT last_processed FROM account").fetchone()[0])
        if last is not None and now < last:
            raise SimTimeError(f"sim broker: --asof {_shown(now)} is earlier than the broker's last processed "
                               f"time {_shown(last)} (use a fresh --db directory)")
        if last is not None and now > last:
            self._walk_sessions(db, last, now)
        if last != now:
            db.execute("UPDATE account SET last_processed = ?", (_iso(now),))
        return now

    def _walk_sessions(self, db: sqlite3.Connection, start: datetime, end: datetime) -> None:
        sessions = [s for s in _sessions_between(start.astimezone(NY).date(), end.astimezone(NY).date())
                    if s.close > start and s.open <= end]
        if not sessions:
            return
        prints = self._session_prints(self._active_symbols(db), sessions)
        for session in sessions:
            self._run_session(db, session, start, end, prints)

    def _active_symbols(self, db: sqlite3.Connection) -> list[str]:
        rows = db.execute(f"SELECT symbol FROM orders WHERE status IN ({_placeholders(WORKING)}) "
                          f"UNION SELECT symbol FROM positions", WORKING).fetchall()
        return sorted(row[0] for row in rows)

    def _run_session(self, db: sqlite3.Connection, session: Session, start: datetime, end: datetime,
                     prints: dict[tuple[str, date], tuple[Print, ...]]) -> None:
        """Settle the bars of `session` that end after `start` and by `end` (the opening print too when `start` is
        before the open)."""
        f_from = session.fraction(start) if start >= session.open else -1.0
        f_to = session.fraction(min(end, session.close))
        if start < session.open:
            db.execute("UPDATE orders SET status = 'new', updated_at = ? WHERE status = 'accepted'",
                       (_iso(session.open),))
            self._pay_dividends(db, session)
        events, marks = self._settle_orders(db, session, f_from, f_to, prints)
        for bar_end, _, _, row, price, mark in sorted(events, key=lambda event: event[:3]):
            self._fill(db, row, price, _moment(session, bar_end), mark=mark)
        db.executemany("UPDATE positions SET last_price = ? WHERE symbol = ?",
                       [(price, symbol) for symbol, price in marks.items()])
        if session.close <= end:
            self._close_session(db, session)

    def _pay_dividends(self, db: sqlite3.Connection, session: Session) -> None:
        """On an ex-date (the market's `dividends`, when its data carries them) the shares held at the open are paid
        their dividend in cash."""
        dividends = getattr(self.market, "dividends", None)
        held = {row[0]: row[1] for row in db.execute("SELECT symbol, qty FROM positions")}
        if dividends is None or not held:
            return
        for (symbol, _), per_share in dividends(sorted(held), session.day, session.day).items():
            amount = round(held[symbol] * per_share * multiplier(symbol), 4)
            db.execute("UPDATE account SET cash = round(cash + ?, 4)", (amount,))
            db.execute("INSERT OR REPLACE INTO dividends (session, symbol, qty, per_share, amount) "
                       "VALUES (?, ?, ?, ?, ?)", (session.day.isoformat(), symbol, held[symbol], per_share, amount))
            log.info("sim broker: %s paid %.4f a share on %d shares (%.2f)", symbol, per_share, held[symbol], amount)

    def _settle_orders(self, db: sqlite3.Connection, session: Session, f_from: float, f_to: float,
                       prints: dict[tuple[str, date], tuple[Print, ...]]) -> tuple[list, dict[str, float]]:
        """Every working order's fill over the bars ending in (f_from, f_to], the trailing marks kept up to date,
        and each symbol's mark (the close of its last bar in the stretch)."""
        by_symbol: dict[str, list[sqlite3.Row]] = defaultdict(list)
        for row in db.execute(f"SELECT * FROM orders WHERE status IN ({_placeholders(WORKING)}) ORDER BY seq",
                              WORKING):
            by_symbol[row["symbol"]].append(row)
        held = [row[0] for row in db.execute("SELECT symbol FROM positions")]
        events: list[tuple] = []
        marks: dict[str, float] = {}
        for symbol in sorted(set(by_symbol) | set(held)):
            due = [bar for bar in prints.get((symbol, session.day), ()) if f_from < bar.end <= f_to]
            if not due:
                if by_symbol.get(symbol) and (symbol, session.day) not in prints:
                    log.warning("sim broker: no %s bar on %s; its orders do not trigger this session",
                                symbol, session.day)
                continue
            marks[symbol] = due[-1].close
            for row in by_symbol.get(symbol, []):
                event = self._settle_one(db, session, row, due)
                if event is not None:
                    events.append(event)
        return events, marks

    def _settle_one(self, db: sqlite3.Connection, session: Session, row: sqlite3.Row, due: list[Print]
                    ) -> tuple | None:
        """The fill event of one working order over the due bars it was working for (the first bar that fills it),
        or None; a trailing stop's mark is stored as it rises."""
        submitted = _parse(row["submitted_at"])
        order, hwm = _resting(row), row["hwm"]
        for bar in due:
            if submitted > _moment(session, bar.end):
                continue  # sent after this bar ended
            price, hwm = settle(replace(order, hwm=hwm), bar, from_open=submitted <= _moment(session, bar.start))
            if price is not None:
                self._store_mark(db, row, hwm)
                return bar.end, PRIORITY[row["type"]], row["seq"], row, price, bar.close
        self._store_mark(db, row, hwm)
        return None

    def _store_mark(self, db: sqlite3.Connection, row: sqlite3.Row, hwm: float | None) -> None:
        if row["type"] == TRAILING_STOP and hwm != row["hwm"]:
            db.execute("UPDATE orders SET hwm = ?, stop_price = ? WHERE seq = ?",
                       (hwm, trailing_stop_price(hwm, row["trail_percent"]), row["seq"]))

    def _close_session(self, db: sqlite3.Connection, session: Session) -> None:
        """DAY orders die at the close; the equity at the close becomes the next session's last_equity."""
        closed_at = _iso(session.close)
        expired = db.execute(
            f"UPDATE orders SET status = 'expired', expired_at = ?, updated_at = ?, reserved = 0 "
            f"WHERE status IN ({_placeholders(WORKING)}) AND time_in_force = 'day' AND submitted_at < ?",
            (closed_at, closed_at, *WORKING, closed_at)).rowcount
        if expired:
            log.info("sim broker: %d DAY order(s) expired at the %s close", expired, session.day)
        cash = db.execute("SELECT cash FROM account").fetchone()[0]
        db.execute("INSERT OR REPLACE INTO equity_marks (session, equity, cash) VALUES (?, ?, ?)",
                   (session.day.isoformat(), round(cash + self._market_value(db), 4), cash))

    # ----- fills

    def _fill(self, db: sqlite3.Connection, row: sqlite3.Row, price: float, at: datetime, mark: float) -> None:
        """Book a whole fill: cash, position, order and fill row. `mark` is the price known at that moment."""
        qty, symbol = row["qty"], row["symbol"]
        if row["side"] == BUY:
            self._add_shares(db, symbol, qty, price, mark)
            cash_change = -qty * price * multiplier(symbol)
        else:
            if not self._remove_shares(db, symbol, qty):
                log.warning("sim broker: %s sells %d %s but the position is smaller; canceled", row["id"], qty,
                            symbol)
                db.execute("UPDATE orders SET status = 'canceled', canceled_at = ?, updated_at = ? WHERE seq = ?",
                           (_iso(at), _iso(at), row["seq"]))
                return
            cash_change = qty * price * multiplier(symbol)
        db.execute("UPDATE account SET cash = round(cash + ?, 4)", (cash_change,))
        db.execute("UPDATE orders SET status = 'filled', filled_qty = ?, filled_avg_price = ?, filled_at = ?, "
                   "updated_at = ?, reserved = 0 WHERE seq = ?", (qty, price, _iso(at), _iso(at), row["seq"]))
        db.execute("INSERT INTO fills (order_id, symbol, side, qty, price, at) VALUES (?, ?, ?, ?, ?, ?)",
                   (row["id"], symbol, row["side"], qty, price, _iso(at)))
        log.info("sim broker: filled %s %s %d %s at %.4f", row["id"], row["side"], qty, symbol, price)

    def _add_shares(self, db: sqlite3.Connection, symbol: str, qty: int, price: float, mark: float) -> None:
        row = db.execute("SELECT qty, avg_entry_price FROM positions WHERE symbol = ?", (symbol,)).fetchone()
        if row is None:
            db.execute("INSERT INTO positions (symbol, qty, avg_entry_price, last_price) VALUES (?, ?, ?, ?)",
                       (symbol, qty, price, mark))
            return
        total = row[0] + qty
        average = (row[0] * row[1] + qty * price) / total
        db.execute("UPDATE positions SET qty = ?, avg_entry_price = ?, last_price = ? WHERE symbol = ?",
                   (total, average, mark, symbol))

    def _remove_shares(self, db: sqlite3.Connection, symbol: str, qty: int) -> bool:
        row = db.execute("SELECT qty FROM positions WHERE symbol = ?", (symbol,)).fetchone()
        if row is None or row[0] < qty:
            return False
        if row[0] == qty:
            db.execute("DELETE FROM positions WHERE symbol = ?", (symbol,))
        else:
            db.execute("UPDATE positions SET qty = ? WHERE symbol = ?", (row[0] - qty, symbol))
        return True


def _validated(request: OrderRequest) -> OrderRequest:
    """The request with a whole-share int qty, or OrderRejected with the reason Alpaca would give."""
    def reject(message: str) -> OrderRejected:
        return OrderRejected(message, status_code=422, code=40010001)

    if not request.client_order_id or len(request.client_order_id) > 128:
        raise reject("client_order_id must be 1 to 128 characters")
    symbol = (request.symbol or "").strip()
    if not symbol:
        raise reject("symbol is required")
    qty = request.qty
    if isinstance(qty, bool) or not isinstance(qty, (int, float)) or not math.isfinite(qty) or qty != int(qty):
        raise reject(f"qty must be a whole number of shares, not {qty!r}")
    if qty < 1:
        raise reject(f"qty must be at least 1, not {qty!r}")
    if request.side not in (BUY, SELL):
        raise reject(f"invalid side {request.side!r}")
    if request.type not in ORDER_TYPES:
        raise reject(f"invalid order type {request.type!r}")
    if request.time_in_force not in TIME_IN_FORCE:
        raise reject(f"time_in_force {request.time_in_force!r} is not supported (day or gtc)")
    _check_prices(request, reject)
    return replace(request, symbol=symbol, qty=int(qty))


def _check_prices(request: OrderRequest, reject: Callable[[str], OrderRejected]) -> None:
    def positive(value: float | None) -> bool:
        return value is not None and math.isfinite(value) and value > 0

    if request.type == LIMIT and not positive(request.limit_price):
        raise reject("limit_price is required for limit orders")
    if request.type == STOP and not positive(request.stop_price):
        raise reject("stop_price is required for stop orders")
    if request.type == TRAILING_STOP and not (positive(request.trail_percent) and request.trail_percent < 100):
        raise reject("trail_percent (between 0 and 100) is required for trailing stop orders")
    if request.type in (STOP, TRAILING_STOP) and request.side != SELL:
        raise reject("the sim broker supports stop and trailing stop orders on the sell side only")


@functools.lru_cache(maxsize=65536)
def _daily_prints(bar: Bar) -> tuple[Print, ...]:
    """What daily data tells the broker of a session: the opening print, then the whole bar at the close (only the
    opening print when the rest of the day is not known)."""
    open_, high, low, close = bar
    opening = Print(0.0, open_, open_, open_, open_)
    if not all(map(math.isfinite, bar)):
        return (opening,)
    top, bottom = max(bar), min(bar)  # a bad row's open or close outside its range is taken into the range
    return opening, Print(1.0, open_, top, bottom, close)


def _intraday_prints(bars, column: int) -> tuple[Print, ...]:
    """A symbol's intraday bars of a session (SessionBars column), after an opening print at its first trade's open,
    known when that bar starts."""
    fields = [np.asarray(getattr(bars, name))[:, column] for name in ("open", "high", "low", "close")]
    ends = np.asarray(bars.ends, dtype=float)
    starts = np.concatenate([[0.0], ends[:-1]])
    traded = np.flatnonzero(np.isfinite(fields[0]) & np.isfinite(fields[3]))
    if traded.size == 0:
        return ()
    first = traded[0]  # the symbol's first trade opens it, whenever in the session that is
    first_open, opened_at = float(fields[0][first]), float(starts[first])
    prints = [Print(opened_at, first_open, first_open, first_open, first_open, start=opened_at)]
    for k in traded:
        o, h, lo, c = (float(field[k]) for field in fields)
        prints.append(Print(float(ends[k]), o, max(o, h, lo, c), min(o, h, lo, c), c, start=float(starts[k])))
    return tuple(prints)


def _resting(row: sqlite3.Row) -> Resting:
    return Resting(type=row["type"], side=row["side"], cost_rate=row["cost_rate"], limit_price=row["limit_price"],
                   stop_price=row["stop_price"], trail_percent=row["trail_percent"], hwm=row["hwm"])


def _to_position(row: sqlite3.Row, held_for_orders: int) -> Position:
    qty, price, size = row["qty"], row["last_price"], multiplier(row["symbol"])
    return Position(symbol=row["symbol"], qty=qty, qty_available=qty - held_for_orders,
                    avg_entry_price=row["avg_entry_price"], current_price=price,
                    market_value=round(qty * price * size, 2),
                    unrealized_pl=round(qty * (price - row["avg_entry_price"]) * size, 2),
                    asset_class=OPTION if is_occ(row["symbol"]) else EQUITY)


def _to_order(row: sqlite3.Row) -> Order:
    return Order(
        id=row["id"], client_order_id=row["client_order_id"], symbol=row["symbol"], side=row["side"],
        type=row["type"], qty=row["qty"], status=row["status"], filled_qty=row["filled_qty"],
        filled_avg_price=row["filled_avg_price"], time_in_force=row["time_in_force"],
        limit_price=row["limit_price"], stop_price=row["stop_price"], trail_percent=row["trail_percent"],
        hwm=row["hwm"], submitted_at=_parse(row["submitted_at"]), filled_at=_parse(row["filled_at"]),
        canceled_at=_parse(row["canceled_at"]),
        extra={"updated_at": _parse(row["updated_at"]), "expired_at": _parse(row["expired_at"])},
    )

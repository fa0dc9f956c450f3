"""A local fake of Alpaca's trading and market-data REST APIs, driven through the real alpaca-py SDK in tests.

Start it with the `fake_alpaca` pytest fixture (import it into a test module or conftest:
`from fake_alpaca import fake_alpaca  # noqa: F401`), then point a client at it:
`AlpacaBroker("k", "s", url_override=fake.url)`. The server is a ThreadingHTTPServer on 127.0.0.1 (port 0) in a
daemon thread; one instance serves the trading paths (/v2/account, /v2/orders...) and the data paths
(/v2/stocks/...), as Alpaca's paths do not overlap. Any non-empty APCA-API-KEY-ID / APCA-API-SECRET-KEY headers are
accepted; requests without them get 401.

Request log (every request, faults included):
    fake.requests                      list of Recorded(method, path, query: dict[str, str], body)
    fake.count(method=None, path=None) number of requests matching (path is exact, without the query string)
    fake.clear_log()

Fault injection: each call arms the next `times` requests matching (method, path); method None matches any, path
None matches any path. With accept=True the request is applied first (e.g. the order IS stored) and only the answer
is replaced, which models "accepted, but the gateway answered 504". With after=N the fault lets the first N matching
requests through and hits the ones after them (e.g. the third page of a download).
    fake.rate_limit(path, times=1, *, method=None, reset_at=None, retry_after=None, after=0)
        429 with X-RateLimit-Limit/Remaining/Reset (reset_at unix seconds; default now + 1 s) and optional
        Retry-After (seconds). reset_at=False sends no X-RateLimit-Reset header.
    fake.gateway_timeout(path, times=1, *, method=None, accept=False, after=0)   504 with an nginx-style HTML body
    fake.server_error(path, times=1, *, method=None, accept=False, after=0)      500 with an empty body
    fake.stall(path, times=1, *, method=None, seconds=2.0, accept=False, after=0)
        holds the connection for `seconds` (longer than the client timeout); without accept the request never
        reaches the state and the late answer is a 504; with accept it is applied at once and answered late.
    fake.malformed(path, body, times=1, *, method=None, accept=False, after=0)
        200 whose body is `body` instead of the real answer (a dict or list as JSON, None for an empty body): an
        answer that does not have the documented shape.

Trading state (guarded by fake.lock; the attributes may be edited by tests):
    fake.account        dict served at /v2/account (default fixtures/account.json; use_account_fixture(name))
    fake.orders         dict id -> order dict in Alpaca's wire shape; POST /v2/orders stores orders, a reused
                        client_order_id answers 422 {"code":40010001,"message":"client_order_id must be unique"}
    fake.set_price(symbol, price)          current price used for fills and trailing-stop hwm (default: the
                                           deterministic bar path of `fake.today` at `fake.fraction`)
    fake.trade_at(symbol, price)           set_price, and the symbol's open sell trailing stops follow as Alpaca's
                                           do: hwm rises to a new high and stop_price is recomputed from it
    fake.set_position(symbol, qty, avg_entry_price)
    fake.load_fixture_positions(name="positions.json")   also serve fixture positions verbatim (not stateful)
    fake.fill(order_id, price=None, qty=None) -> order   fill (part of) an order; updates positions and cash
    fake.cancel_after_reads = 0   reads of a canceled order that still show pending_cancel (0: canceled at once)
    fake.enforce_buying_power = True   buys above account buying_power answer 403 "insufficient buying power"
    A sell needs a position: shares held by open sell orders are not available, and asking for more answers 403
    with the real insufficient-qty body (code 40310000, available, existing_qty, held_for_orders); a sell with no
    position answers the "account is not allowed to short" 403.
    /v2/clock and /v2/calendar serve the fixtures; /v2/assets serves `fake.assets` (default fixtures/assets.json,
    add more with fake.add_assets(symbols, **fields)), filtered by status and asset_class.

Market data (deterministic for ANY symbol; bar(symbol, day) gives the full-day bar):
    fake.today = date(2024, 6, 14), fake.fraction = 1.0   "now" for the data API: today's bar and snapshots show
                                   the session at that fraction (pathmodel path); no bars after today
    fake.missing_symbols          symbols with no data (absent from bars, null in snapshots)
    fake.bars_page_size = 10000   server-side page cap, so paging with next_page_token can be exercised
    GET /v2/stocks/bars (timeframe=1Day, 1Min or 5Min; symbols comma separated; bars whose start t is within
    [start, end]; sorted by symbol then time; pages of min(limit, 10000, bars_page_size) bars that run across
    symbols, as the real API's do) and GET /v2/stocks/snapshots (body keyed by symbol, no wrapper).

Intraday bars (timeframe=1Min or 5Min): fake.minute_bars(symbol, day, minutes) gives a session's bars, stamped at
their start in RFC-3339 UTC ("2024-06-14T13:30:00Z") like Alpaca's. The regular-session bars (09:30 to the close,
early closes included) aggregate exactly to bar(symbol, day): the price runs in straight lines from the open to
the nearer extreme (reached at the end of the first third of the bars), to the other extreme (end of the second
third) and to the close, rounded to cents, each bar spanning two consecutive points of that path; the day's volume
is spread over the bars in a U shape (whole shares, summing to the day's volume). With fake.extended_hours = True
(the default) the day also has one pre-market bar at 08:00 New York (at the open, 321 shares) and one after-hours
bar 30 minutes after the close (at the close, 123 shares), as a real response has; a reader of regular-session
bars must leave them out. Today's session shows the bars that have ended by `fake.fraction` (and the pre-market
bar), later days none.

Extension (options, other endpoints): fake.add_route(method, regex, handler) where handler(fake, match, query,
body) returns (status, body, headers); body may be a dict/list (JSON), a str (HTML/text) or None (empty).
"""
from __future__ import annotations

import base64
import json
import math
import re
import threading
import time
import uuid
import zlib
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from datetime import time as dtime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from common.clock import calendar
import old_path_model as intraday_path

from local_server import LocalServer

# The same place tests/conftest.py calls FIXTURES (../shared/alpaca/fixtures); computed here so that importing
# this module never imports conftest a second time under another name.
FIXTURES = Path(__file__).resolve().parent.parent.parent / "shared" / "alpaca" / "fixtures"

NY = ZoneInfo("America/New_York")
UTC = timezone.utc
Reply = tuple[int, Any, dict]
Handler = Callable[["FakeAlpaca", "re.Match[str]", dict, Any], Reply]

HTML_504 = ("<html>\r\n<head><title>504 Gateway Time-out</title></head>\r\n<body>\r\n"
            "<center><h1>504 Gateway Time-out</h1></center>\r\n</body>\r\n</html>\r\n")
OPEN_STATUSES = {"new", "accepted", "pending_new", "partially_filled", "pending_cancel", "pending_replace", "held",
                 "accepted_for_bidding", "calculated", "pending_review", "done_for_day"}


def fixture(name: str) -> Any:
    """A recorded Alpaca response body; the test is skipped, with the reason, when ../shared is not beside the
    checkout."""
    path = FIXTURES / name
    if not path.exists():
        import pytest

        pytest.skip(f"Alpaca fixture {path} is not present")
    return json.loads(path.read_text())


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    query: dict
    body: Any


@dataclass
class _Fault:
    kind: str  # rate_limit | gateway_timeout | server_error | stall | malformed
    method: str | None
    path: str | None
    remaining: int
    accept: bool = False
    reset_at: float | None | bool = None
    retry_after: float | None = None
    seconds: float = 2.0
    body: Any = None
    after: int = 0  # matching requests still to let through before the fault applies

    def matches(self, method: str, path: str) -> bool:
        return (self.remaining > 0 and (self.method is None or self.method == method)
                and (self.path is None or self.path == path))


def _num(value: float) -> str:
    """Alpaca's string form of a number ("10", "237.67")."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse_time(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _bar_stamp(day: date) -> str:
    """Daily bars are stamped at midnight New York time."""
    return _iso(datetime.combine(day, dtime(0, 0), NY))


class FakeAlpaca(LocalServer):
    """State, routes and faults of the fake server; see the module docstring for the API."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.requests: list[Recorded] = []
        self.account: dict = fixture("account.json")
        self.orders: dict[str, dict] = {}
        self.positions: dict[str, dict] = {}  # symbol -> {"qty": int, "avg_entry_price": float}
        self.fixture_positions: list[dict] = []
        self.assets: list[dict] = fixture("assets.json")
        self.prices: dict[str, float] = {}
        self.today = date(2024, 6, 14)
        self.fraction = 1.0
        self.missing_symbols: set[str] = set()
        self.bars_page_size = 10_000
        self.extended_hours = True
        self.cancel_after_reads = 0
        self.enforce_buying_power = True
        self.clock: Callable[[], datetime] = lambda: datetime.now(UTC)
        self._faults: list[_Fault] = []
        self._routes: list[tuple[str, re.Pattern, Handler]] = []
        self._pending_reads: dict[str, int] = {}
        self._seq = 0
        self._init_server()
        self._install_routes()

    # -- lifecycle -----------------------------------------------------------------------------------------

    # -- request log ---------------------------------------------------------------------------------------

    def count(self, method: str | None = None, path: str | None = None) -> int:
        with self.lock:
            return sum(1 for r in self.requests
                       if (method is None or r.method == method) and (path is None or r.path == path))

    def clear_log(self) -> None:
        with self.lock:
            self.requests.clear()

    # -- faults --------------------------------------------------------------------------------------------

    def rate_limit(self, path: str | None, times: int = 1, *, method: str | None = None,
                   reset_at: float | None | bool = None, retry_after: float | None = None, after: int = 0) -> None:
        self._arm(_Fault("rate_limit", method, path, times, reset_at=reset_at, retry_after=retry_after, after=after))

    def gateway_timeout(self, path: str | None, times: int = 1, *, method: str | None = None,
                        accept: bool = False, after: int = 0) -> None:
        self._arm(_Fault("gateway_timeout", method, path, times, accept=accept, after=after))

    def server_error(self, path: str | None, times: int = 1, *, method: str | None = None,
                     accept: bool = False, after: int = 0) -> None:
        self._arm(_Fault("server_error", method, path, times, accept=accept, after=after))

    def stall(self, path: str | None, times: int = 1, *, method: str | None = None, seconds: float = 2.0,
              accept: bool = False, after: int = 0) -> None:
        self._arm(_Fault("stall", method, path, times, accept=accept, seconds=seconds, after=after))

    def malformed(self, path: str | None, body: Any, times: int = 1, *, method: str | None = None,
                  accept: bool = False, after: int = 0) -> None:
        self._arm(_Fault("malformed", method, path, times, accept=accept, body=body, after=after))

    def _arm(self, fault: _Fault) -> None:
        with self.lock:
            self._faults.append(fault)

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        """The first armed fault that applies to this request; every matching fault still waiting (after=N)
        counts the request."""
        chosen = None
        with self.lock:
            for fault in self._faults:
                if not fault.matches(method, path):
                    continue
                if fault.after > 0:
                    fault.after -= 1
                elif chosen is None:
                    chosen = fault
            if chosen is not None:
                chosen.remaining -= 1
        return chosen

    def _fault_reply(self, fault: _Fault) -> Reply:
        if fault.kind == "rate_limit":
            headers = {"X-RateLimit-Limit": "200", "X-RateLimit-Remaining": "0"}
            reset_at = fault.reset_at
            if reset_at is None and fault.retry_after is None:
                reset_at = int(time.time()) + 1
            if reset_at not in (None, False):
                headers["X-RateLimit-Reset"] = str(int(reset_at))
            if fault.retry_after is not None:
                headers["Retry-After"] = _num(fault.retry_after)
            return 429, {"code": 42910000, "message": "rate limit exceeded"}, headers
        if fault.kind == "server_error":
            return 500, None, {}
        if fault.kind == "malformed":
            return 200, fault.body, {}
        return 504, HTML_504, {}  # gateway_timeout, and a stall's late answer

    # -- trading state -------------------------------------------------------------------------------------

    def use_account_fixture(self, name: str) -> None:
        with self.lock:
            self.account = fixture(name)

    def load_fixture_positions(self, name: str = "positions.json") -> None:
        with self.lock:
            self.fixture_positions = fixture(name)

    def set_position(self, symbol: str, qty: int, avg_entry_price: float) -> None:
        with self.lock:
            if qty == 0:
                self.positions.pop(symbol, None)
            else:
                self.positions[symbol] = {"qty": int(qty), "avg_entry_price": float(avg_entry_price)}

    def set_price(self, symbol: str, price: float) -> None:
        with self.lock:
            self.prices[symbol] = float(price)

    def trade_at(self, symbol: str, price: float) -> None:
        with self.lock:
            self.set_price(symbol, price)
            for order in self.orders.values():
                if (order["symbol"] == symbol and order["type"] == "trailing_stop" and order["side"] == "sell"
                        and order["status"] in OPEN_STATUSES and price > float(order["hwm"])):
                    order["hwm"] = _num(price)
                    order["stop_price"] = _num(_trailing_stop_price(order, price))
                    order["updated_at"] = _iso(self.clock())

    def add_assets(self, symbols: list[str], **fields: Any) -> None:
        with self.lock:
            for symbol in symbols:
                asset = {"id": str(uuid.uuid5(uuid.NAMESPACE_DNS, symbol)), "class": "us_equity",
                         "exchange": "NYSE", "symbol": symbol, "name": f"{symbol} Inc.", "status": "active",
                         "tradable": True, "marginable": True, "shortable": True, "easy_to_borrow": True,
                         "fractionable": True}
                asset.update(fields)
                self.assets.append(asset)

    def price(self, symbol: str) -> float:
        """The current price: set_price, else today's bar path at `fraction`."""
        with self.lock:
            if symbol in self.prices:
                return self.prices[symbol]
        bar = self.bar(symbol, self._last_session(self.today))
        return round(float(intraday_path.price_at(bar["o"], bar["h"], bar["l"], bar["c"], self._day_fraction())), 2)

    def fill(self, order_id: str, price: float | None = None, qty: int | None = None) -> dict:
        """Fill `qty` (default: the rest) of an open order at `price` (default: its limit/stop or the price)."""
        with self.lock:
            order = self.orders[order_id]
            remaining = int(float(order["qty"])) - int(float(order["filled_qty"]))
            qty = remaining if qty is None else min(int(qty), remaining)
            if price is None:
                price = float(order["limit_price"] or order["stop_price"] or self.price(order["symbol"]))
            done = int(float(order["filled_qty"]))
            old_avg = float(order["filled_avg_price"] or 0.0)
            new_avg = (old_avg * done + price * qty) / (done + qty)
            order["filled_qty"] = _num(done + qty)
            order["filled_avg_price"] = _num(round(new_avg, 4))
            order["status"] = "filled" if done + qty == int(float(order["qty"])) else "partially_filled"
            now = _iso(self.clock())
            order["updated_at"] = now
            if order["status"] == "filled":
                order["filled_at"] = now
            self._apply_fill(order["symbol"], order["side"], qty, price)
            return dict(order)

    def _apply_fill(self, symbol: str, side: str, qty: int, price: float) -> None:
        held = self.positions.get(symbol, {"qty": 0, "avg_entry_price": 0.0})
        signed = qty if side == "buy" else -qty
        new_qty = held["qty"] + signed
        if side == "buy" and new_qty > 0:
            avg = (held["avg_entry_price"] * held["qty"] + price * qty) / new_qty
        else:
            avg = held["avg_entry_price"]
        self.set_position(symbol, new_qty, avg)
        cash_change = -signed * price
        for key in ("cash", "buying_power", "regt_buying_power", "non_marginable_buying_power"):
            if key in self.account:
                self.account[key] = _num(round(float(self.account[key]) + cash_change, 2))

    def _held_for_orders(self, symbol: str) -> int:
        return sum(int(float(o["qty"])) - int(float(o["filled_qty"])) for o in self.orders.values()
                   if o["symbol"] == symbol and o["side"] == "sell" and o["status"] in OPEN_STATUSES)

    def _position_body(self, symbol: str) -> dict:
        held = self.positions[symbol]
        qty, avg = held["qty"], held["avg_entry_price"]
        price = self.price(symbol)
        available = max(0, qty - self._held_for_orders(symbol))
        cost, value = avg * qty, price * qty
        return {
            "asset_id": str(uuid.uuid5(uuid.NAMESPACE_DNS, symbol)), "symbol": symbol, "exchange": "NASDAQ",
            "asset_class": "us_equity", "asset_marginable": True, "qty": _num(qty),
            "qty_available": _num(available), "avg_entry_price": _num(round(avg, 4)),
            "side": "long" if qty > 0 else "short", "market_value": _num(round(value, 2)),
            "cost_basis": _num(round(cost, 2)), "unrealized_pl": _num(round(value - cost, 2)),
            "unrealized_plpc": _num(round((value - cost) / cost, 6) if cost else 0.0),
            "unrealized_intraday_pl": "0", "unrealized_intraday_plpc": "0", "current_price": _num(price),
            "lastday_price": _num(price), "change_today": "0",
        }

    # -- market data ---------------------------------------------------------------------------------------

    def bar(self, symbol: str, day: date) -> dict:
        """The full-day bar of `symbol` on `day`: a smooth deterministic function of (symbol, date)."""
        seed = zlib.crc32(symbol.encode())
        base = 10.0 + (seed % 49_000) / 100.0
        phase = (seed >> 8) % 628 / 100.0
        x = day.toordinal()
        open_ = base * (1 + 0.15 * math.sin((x - 0.5) / 23 + phase))
        close = base * (1 + 0.15 * math.sin(x / 23 + phase))
        wiggle = base * 0.01 * (1 + (seed + x) % 7 / 7)
        volume = 100_000 + (seed + 7919 * x) % 900_000
        high, low = max(open_, close) + wiggle, min(open_, close) - wiggle
        return {"t": _bar_stamp(day), "o": round(open_, 2), "h": round(high, 2), "l": round(low, 2),
                "c": round(close, 2), "v": volume, "n": volume // 100, "vw": round((high + low + close) / 3, 4)}

    def _day_fraction(self) -> float:
        return self.fraction if calendar().is_session(self.today) else 1.0

    def _last_session(self, day: date) -> date:
        return day if calendar().is_session(day) else calendar().previous_session(day)

    def _bar_as_of(self, symbol: str, day: date) -> dict | None:
        """The bar as the data API shows it now: today's bar is partial (at `fraction`), later days have none."""
        if day > self.today:
            return None
        bar = self.bar(symbol, day)
        if day < self.today:
            return bar
        fraction = self.fraction
        if fraction <= 0:
            return None
        high, low = intraday_path.range_so_far(bar["o"], bar["h"], bar["l"], bar["c"], fraction)
        close = intraday_path.price_at(bar["o"], bar["h"], bar["l"], bar["c"], fraction)
        volume = int(bar["v"] * intraday_path.volume_fraction(fraction))
        return dict(bar, h=round(float(high), 2), l=round(float(low), 2), c=round(float(close), 2), v=volume)

    def minute_bars(self, symbol: str, day: date, minutes: int = 1) -> list[dict]:
        """The session's `minutes`-long bars in time order (see the module docstring): regular-session bars that
        aggregate to bar(symbol, day), and the extended-hours bars when `extended_hours` is on."""
        daily = self.bar(symbol, day)
        session = calendar().session(day)
        count = int((session.close - session.open).total_seconds()) // (60 * minutes)
        path = _price_path(daily, count)
        volumes = _u_shaped_volumes(int(daily["v"]), count)
        bars = [_minute_bar(session.open + timedelta(minutes=minutes * k), path[k], path[k + 1], volumes[k])
                for k in range(count)]
        if self.extended_hours:
            pre = datetime.combine(day, dtime(8, 0), NY)
            bars = [_minute_bar(pre, daily["o"], daily["o"], 321), *bars,
                    _minute_bar(session.close + timedelta(minutes=30), daily["c"], daily["c"], 123)]
        return bars

    def _minute_bars_as_of(self, symbol: str, day: date, minutes: int) -> list[dict]:
        """The bars as the data API shows them now: today's up to `fraction` of the session, none after today."""
        if day > self.today:
            return []
        bars = self.minute_bars(symbol, day, minutes)
        if day < self.today:
            return bars
        session = calendar().session(day)
        now = session.open + (session.close - session.open) * self.fraction
        return [bar for bar in bars if _parse_time(bar["t"]) + timedelta(minutes=minutes) <= now]

    # -- routing -------------------------------------------------------------------------------------------

    def add_route(self, method: str, pattern: str, handler: Handler) -> None:
        """Serve `method` requests whose path fully matches `pattern`; later routes win over built-in ones."""
        with self.lock:
            self._routes.insert(0, (method, re.compile(pattern), handler))

    def _install_routes(self) -> None:
        table: list[tuple[str, str, Handler]] = [
            ("GET", r"/v2/account", _get_account),
            ("GET", r"/v2/positions", _get_positions),
            ("GET", r"/v2/positions/(?P<symbol>[^/]+)", _get_position),
            ("GET", r"/v2/clock", lambda f, m, q, b: (200, fixture("clock.json"), {})),
            ("GET", r"/v2/calendar", lambda f, m, q, b: (200, fixture("calendar.json"), {})),
            ("GET", r"/v2/assets", _get_assets),
            ("GET", r"/v2/assets/(?P<symbol>[^/]+)", _get_asset),
            ("POST", r"/v2/orders", _post_order),
            ("GET", r"/v2/orders", _get_orders),
            ("GET", r"/v2/orders:by_client_order_id", _get_order_by_client_id),
            ("GET", r"/v2/orders/(?P<order_id>[^/]+)", _get_order),
            ("DELETE", r"/v2/orders/(?P<order_id>[^/]+)", _delete_order),
            ("GET", r"/v2/stocks/bars", _get_bars),
            ("GET", r"/v2/stocks/snapshots", _get_snapshots),
        ]
        self._routes = [(method, re.compile(pattern), handler) for method, pattern, handler in table]

    def handle(self, method: str, path: str, query: dict, body: Any, headers: dict) -> tuple[Reply, float]:
        """Record, apply faults, route. Returns the reply and how long to stall before sending it."""
        with self.lock:
            self.requests.append(Recorded(method, path, dict(query), body))
        if not headers.get("apca-api-key-id") or not headers.get("apca-api-secret-key"):
            return (401, {"code": 40110000, "message": "request is not authorized"}, {}), 0.0
        fault = self._take_fault(method, path)
        stall = fault.seconds if fault is not None and fault.kind == "stall" else 0.0
        if fault is not None and not fault.accept:
            return self._fault_reply(fault), stall
        reply = self._route(method, path, query, body)
        if fault is None:
            return reply, 0.0
        if fault.kind == "stall":
            return reply, stall  # applied at once, answered late
        return self._fault_reply(fault), 0.0

    def _route(self, method: str, path: str, query: dict, body: Any) -> Reply:
        with self.lock:
            for route_method, pattern, handler in self._routes:
                match = pattern.fullmatch(path)
                if route_method == method and match:
                    return handler(self, match, query, body)
        return 404, {"code": 40410000, "message": "endpoint not found"}, {}

    def wait_stall(self, seconds: float) -> None:
        self._stopping.wait(seconds)

    def next_order_id(self) -> str:
        self._seq += 1
        return str(uuid.UUID(int=(0x61E69015 << 96) | self._seq))


# -- route handlers (called with fake.lock held) ----------------------------------------------------------------

def _error(status: int, code: int, message: str) -> Reply:
    return status, {"code": code, "message": message}, {}


def _get_account(fake: FakeAlpaca, match, query, body) -> Reply:
    account = dict(fake.account)
    positions_value = sum(float(fake._position_body(s)["market_value"]) for s in fake.positions)
    if "long_market_value" in account and fake.positions:
        account["long_market_value"] = _num(round(positions_value, 2))
        account["position_market_value"] = _num(round(positions_value, 2))
        account["equity"] = _num(round(float(account["cash"]) + positions_value, 2))
    return 200, account, {}


def _get_positions(fake: FakeAlpaca, match, query, body) -> Reply:
    return 200, [fake._position_body(s) for s in sorted(fake.positions)] + list(fake.fixture_positions), {}


def _get_position(fake: FakeAlpaca, match, query, body) -> Reply:
    symbol = match["symbol"]
    if symbol not in fake.positions:
        return _error(404, 40410000, "position does not exist")
    return 200, fake._position_body(symbol), {}


def _get_assets(fake: FakeAlpaca, match, query, body) -> Reply:
    status, asset_class = query.get("status"), query.get("asset_class")
    chosen = [a for a in fake.assets if (status is None or a.get("status") == status)
              and (asset_class is None or a.get("class") == asset_class)]
    return 200, chosen, {}


def _get_asset(fake: FakeAlpaca, match, query, body) -> Reply:
    for asset in fake.assets:
        if asset["symbol"] == match["symbol"] or asset["id"] == match["symbol"]:
            return 200, asset, {}
    return _error(404, 40410000, "asset not found")


def _validate_order(body: dict) -> str | None:
    """The reason Alpaca would refuse this order body, or None."""
    if not body.get("symbol") or body.get("side") not in ("buy", "sell"):
        return "symbol and side are required"
    if body.get("qty") is None or float(body["qty"]) <= 0 or float(body["qty"]) != int(float(body["qty"])):
        return "qty must be a positive whole number"
    kind = body.get("type")
    if kind not in ("market", "limit", "stop", "stop_limit", "trailing_stop"):
        return f"invalid order type {kind!r}"
    if body.get("time_in_force") not in ("day", "gtc", "opg", "cls", "ioc", "fok"):
        return "invalid time_in_force"
    if kind == "trailing_stop" and (body.get("trail_percent") is None) == (body.get("trail_price") is None):
        return "trailing_stop needs exactly one of trail_percent or trail_price"
    if kind == "trailing_stop" and body.get("time_in_force") not in ("day", "gtc"):
        return "trailing_stop orders must be day or gtc"
    if kind in ("limit", "stop_limit") and body.get("limit_price") is None:
        return "limit_price is required"
    if kind in ("stop", "stop_limit") and body.get("stop_price") is None:
        return "stop_price is required"
    return None


def _post_order(fake: FakeAlpaca, match, query, body) -> Reply:
    if not isinstance(body, dict):
        return _error(400, 40010000, "request body format is invalid")
    problem = _validate_order(body)
    if problem:
        return _error(422, 40010001, problem)
    client_order_id = body.get("client_order_id") or str(uuid.uuid4())
    if any(o["client_order_id"] == client_order_id for o in fake.orders.values()):
        return _error(422, 40010001, "client_order_id must be unique")
    refusal = _check_holdings(fake, body)
    if refusal is not None:
        return refusal
    order = _new_order(fake, body, client_order_id)
    fake.orders[order["id"]] = order
    return 200, dict(order), {}


def _check_holdings(fake: FakeAlpaca, body: dict) -> Reply | None:
    symbol, qty = body["symbol"], int(float(body["qty"]))
    if body["side"] == "buy":
        cost = qty * float(body.get("limit_price") or fake.price(symbol))
        if fake.enforce_buying_power and cost > float(fake.account.get("buying_power", "inf")):
            return _error(403, 40310000, "insufficient buying power")
        return None
    held = fake.positions.get(symbol)
    if held is None or held["qty"] <= 0:
        return 403, fixture("error_403_not_allowed_to_short.json"), {}
    held_for_orders = fake._held_for_orders(symbol)
    available = held["qty"] - held_for_orders
    if qty <= available:
        return None
    return 403, {"available": _num(available), "code": 40310000, "existing_qty": _num(held["qty"]),
                 "held_for_orders": _num(held_for_orders),
                 "message": f"insufficient qty available for order (requested: {qty}, available: {available})",
                 "symbol": symbol}, {}


def _new_order(fake: FakeAlpaca, body: dict, client_order_id: str) -> dict:
    order = fixture("order.json")
    now = _iso(fake.clock())
    kind = body["type"]
    order.update({
        "id": fake.next_order_id(), "client_order_id": client_order_id, "created_at": now, "updated_at": now,
        "submitted_at": now, "asset_id": str(uuid.uuid5(uuid.NAMESPACE_DNS, body["symbol"])),
        "symbol": body["symbol"], "notional": None, "qty": _num(float(body["qty"])), "filled_qty": "0",
        "order_type": kind, "type": kind, "side": body["side"], "time_in_force": body["time_in_force"],
        "limit_price": _num(float(body["limit_price"])) if body.get("limit_price") is not None else None,
        "stop_price": _num(float(body["stop_price"])) if body.get("stop_price") is not None else None,
        "status": "accepted" if kind == "market" else "new", "extended_hours": bool(body.get("extended_hours")),
        "order_class": body.get("order_class") or "",
    })
    if kind == "trailing_stop":
        hwm = fake.price(body["symbol"])
        if body.get("trail_percent") is not None:
            order["trail_percent"] = _num(float(body["trail_percent"]))
        else:
            order["trail_price"] = _num(float(body["trail_price"]))
        order.update(hwm=_num(hwm), stop_price=_num(_trailing_stop_price(order, hwm)))
    return order


def _trailing_stop_price(order: dict, hwm: float) -> float:
    """A sell trailing stop's stop price under the high-water mark `hwm`, by trail_percent or trail_price."""
    if order.get("trail_percent") is not None:
        return round(hwm * (1 - float(order["trail_percent"]) / 100), 2)
    return round(hwm - float(order["trail_price"]), 2)


def _select_orders(fake: FakeAlpaca, query: dict) -> list[dict]:
    status = query.get("status", "open")
    symbols = set(query["symbols"].split(",")) if query.get("symbols") else None
    chosen = []
    for order in fake.orders.values():
        is_open = order["status"] in OPEN_STATUSES
        if (status == "open" and not is_open) or (status == "closed" and is_open):
            continue
        if symbols is not None and order["symbol"] not in symbols:
            continue
        if query.get("side") and order["side"] != query["side"]:
            continue
        chosen.append(order)
    chosen.sort(key=lambda o: o["id"], reverse=query.get("direction", "desc") == "desc")
    return chosen[: int(query.get("limit", 50))]


def _get_orders(fake: FakeAlpaca, match, query, body) -> Reply:
    if query.get("status", "open") not in ("open", "closed", "all"):
        return _error(422, 40010001, "invalid status")
    return 200, [_read_order(fake, o["id"]) for o in _select_orders(fake, query)], {}


def _read_order(fake: FakeAlpaca, order_id: str) -> dict:
    """An order as a read sees it; a pending cancel completes after `cancel_after_reads` reads."""
    order = fake.orders[order_id]
    if order["status"] == "pending_cancel":
        left = fake._pending_reads.get(order_id, 0)
        if left <= 0:
            order["status"] = "canceled"
            order["canceled_at"] = order["updated_at"] = _iso(fake.clock())
        else:
            fake._pending_reads[order_id] = left - 1
    return dict(order)


def _get_order(fake: FakeAlpaca, match, query, body) -> Reply:
    if match["order_id"] not in fake.orders:
        return 404, fixture("error_404_order_not_found.json"), {}
    return 200, _read_order(fake, match["order_id"]), {}


def _get_order_by_client_id(fake: FakeAlpaca, match, query, body) -> Reply:
    for order in fake.orders.values():
        if order["client_order_id"] == query.get("client_order_id"):
            return 200, _read_order(fake, order["id"]), {}
    return 404, fixture("error_404_order_not_found.json"), {}


def _delete_order(fake: FakeAlpaca, match, query, body) -> Reply:
    order = fake.orders.get(match["order_id"])
    if order is None:
        return 404, fixture("error_404_order_not_found.json"), {}
    if order["status"] not in OPEN_STATUSES or order["status"] == "pending_cancel":
        return _error(422, 42210000, f"order is not cancelable (status: {order['status']})")
    order["status"] = "pending_cancel"
    order["updated_at"] = _iso(fake.clock())
    fake._pending_reads[order["id"]] = fake.cancel_after_reads
    return 204, None, {}


def _requested_symbols(query: dict) -> list[str]:
    return [s for s in query.get("symbols", "").split(",") if s]


_MINUTES = {"1Min": 1, "5Min": 5}


def _get_bars(fake: FakeAlpaca, match, query, body) -> Reply:
    timeframe = query.get("timeframe")
    if timeframe != "1Day" and timeframe not in _MINUTES:
        return _error(422, 42210000, f"the fake serves timeframe 1Day, 1Min and 5Min only (got {timeframe!r})")
    end = _parse_time(query["end"]) if query.get("end") else datetime.combine(fake.today, dtime(23, 59), NY)
    start = _parse_time(query["start"]) if query.get("start") else datetime.combine(fake.today, dtime(0), NY)
    days = calendar().sessions(start.astimezone(NY).date(), end.astimezone(NY).date())
    items = []
    for symbol in sorted(set(_requested_symbols(query)) - fake.missing_symbols):
        for day in days:
            if timeframe == "1Day":
                bars = [bar for bar in [fake._bar_as_of(symbol, day)] if bar is not None]
            else:
                bars = fake._minute_bars_as_of(symbol, day, _MINUTES[timeframe])
            items.extend((symbol, bar) for bar in bars if start <= _parse_time(bar["t"]) <= end)
    offset = int(base64.b64decode(query["page_token"]).decode()) if query.get("page_token") else 0
    size = min(int(query.get("limit") or 1000), 10_000, fake.bars_page_size)
    page, more = items[offset: offset + size], offset + size < len(items)
    grouped: dict[str, list] = {}
    for symbol, bar in page:
        grouped.setdefault(symbol, []).append(bar)
    token = base64.b64encode(str(offset + size).encode()).decode() if more else None
    return 200, {"bars": grouped, "next_page_token": token}, {}


def _price_path(daily: dict, count: int) -> list[float]:
    """`count` + 1 prices at the bar boundaries: open -> nearer extreme -> other extreme -> close, in cents."""
    o, h, lo, c = daily["o"], daily["h"], daily["l"], daily["c"]
    first, second = (h, lo) if h - o <= o - lo else (lo, h)
    knots = [0, max(1, round(count / 3)), max(2, round(2 * count / 3)), count]
    return [round(float(p), 2) for p in np.interp(np.arange(count + 1), knots, [o, first, second, c])]


def _u_shaped_volumes(volume: int, count: int) -> list[int]:
    """`volume` split over `count` bars, heavier at the open and the close; whole shares that sum to `volume`."""
    middle = (count - 1) / 2 or 1.0
    weights = 1.0 + 2.0 * ((np.arange(count) - middle) / middle) ** 2
    shares = np.floor(volume * weights / weights.sum()).astype(int)
    shares[: volume - int(shares.sum())] += 1
    return [int(v) for v in shares]


def _minute_bar(start: datetime, open_: float, close: float, volume: int) -> dict:
    return {"t": _iso(start), "o": open_, "h": max(open_, close), "l": min(open_, close), "c": close, "v": volume,
            "n": max(1, volume // 100), "vw": round((open_ + close) / 2, 4)}


def _get_snapshots(fake: FakeAlpaca, match, query, body) -> Reply:
    session = fake._last_session(fake.today)
    previous = calendar().previous_session(session)
    result: dict[str, Any] = {}
    for symbol in _requested_symbols(query):
        if symbol in fake.missing_symbols:
            result[symbol] = None
            continue
        daily = fake._bar_as_of(symbol, session) or fake.bar(symbol, previous)
        prev = fake.bar(symbol, previous) if daily["t"] == _bar_stamp(session) else \
            fake.bar(symbol, calendar().previous_session(previous))
        result[symbol] = _snapshot_body(fake.price(symbol), daily, prev, fake.clock())
    return 200, result, {}


def _snapshot_body(price: float, daily: dict, prev: dict, now: datetime) -> dict:
    stamp = _iso(now)
    minute = (now.replace(second=0, microsecond=0) - timedelta(minutes=1))
    return {
        "latestTrade": {"t": stamp, "x": "V", "p": price, "s": 100, "c": ["@"], "i": 1, "z": "C"},
        "latestQuote": {"t": stamp, "ax": "V", "ap": round(price * 1.0005, 2), "as": 3, "bx": "V",
                        "bp": round(price * 0.9995, 2), "bs": 2, "c": ["R"], "z": "C"},
        "minuteBar": {"t": _iso(minute), "o": price, "h": price, "l": price, "c": price, "v": 1000, "n": 10,
                      "vw": price},
        "dailyBar": daily,
        "prevDailyBar": prev,
    }


# -- HTTP plumbing ------------------------------------------------------------------------------------------

class _RequestHandler(BaseHTTPRequestHandler):
    server_version = "fake-alpaca/1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        return  # keep test output clean

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        self._serve("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._serve("POST")

    def do_DELETE(self) -> None:  # noqa: N802
        self._serve("DELETE")

    def do_PATCH(self) -> None:  # noqa: N802
        self._serve("PATCH")

    def _serve(self, method: str) -> None:
        fake: FakeAlpaca = self.server.fake  # type: ignore[attr-defined]
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        headers = {k.lower(): v for k, v in self.headers.items()}
        (status, payload, extra_headers), stall = fake.handle(method, parts.path, query, body, headers)
        if stall:
            fake.wait_stall(stall)
        self._send(status, payload, extra_headers)

    def _send(self, status: int, payload: Any, headers: dict) -> None:
        if payload is None:
            data, content_type = b"", "application/json"
        elif isinstance(payload, str):
            data, content_type = payload.encode(), "text/html"
        else:
            data, content_type = json.dumps(payload).encode(), "application/json; charset=UTF-8"
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            if data:
                self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a stall longer than its timeout)


@pytest.fixture
def fake_alpaca():
    """A running FakeAlpaca; stopped after the test."""
    fake = FakeAlpaca().start()
    try:
        yield fake
    finally:
        fake.stop()


FakeAlpaca.handler_class = _RequestHandler

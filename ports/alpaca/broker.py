"""The Alpaca broker (the Broker protocol of common/types.py, name "alpaca") on alpaca-py's TradingClient.

Order submission is never repeated blindly. Every order carries the caller's deterministic client_order_id; when
the outcome of a POST is unclear (a timeout, a connection error, a 5xx, or a 422 "client_order_id must be unique"
that means an earlier attempt did arrive) the adapter asks the broker for that client_order_id FIRST and returns
the order if it exists. A 200 whose body is not this order (not an order at all, fields missing, or another
client_order_id) is just as unclear and is looked up the same way. If the order does not exist after a timeout, a
5xx or such an answer, the call raises BrokerUnavailable: the order may still be in flight, so the caller keeps its
journal row and reconciles later instead of sending it again.
A 429 means the order was not accepted, so the transport waits for the reset and resends the same request.

Numbers arrive as strings and become floats (prices) and whole-share ints (quantities). PDT fields, removed by
Alpaca on 2026-07-06, are neither read nor required.
"""
from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any, Callable, Sequence

import requests
from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderSide, QueryOrderStatus, TimeInForce
from alpaca.trading.requests import (
    GetOrdersRequest,
    LimitOrderRequest,
    MarketOrderRequest,
    StopOrderRequest,
    TrailingStopOrderRequest,
)

from common.errors import (
    BrokerUnavailable,
    ConfigError,
    DuplicateClientOrderId,
    InsufficientQty,
    MomentumError,
    OrderNotFound,
    OrderRejected,
)
from common.types import BUY, LIMIT, MARKET, SELL, STOP, TRAILING_STOP, Account, Order, OrderRequest, Position
from ports.alpaca.transport import (
    MALFORMED,
    Redactor,
    api_failure,
    install_transport,
    one_line,
    request_error_text,
    to_float,
    to_int,
    translate,
)
from ports.request_budget import RequestBudget

log = logging.getLogger(__name__)

MAX_CLIENT_ORDER_ID = 48  # older Alpaca docs allow 48 characters, newer ones 128; 48 is safe everywhere
ORDER_LIST_LIMIT = 500  # Alpaca's maximum page; there is no page token for orders
CODE_DUPLICATE = 40010001
CODE_FORBIDDEN = 40310000
# Raw order fields kept in Order.extra (the rest is mapped onto Order's own fields).
_EXTRA_FIELDS = ("created_at", "updated_at", "expired_at", "failed_at", "replaced_at", "replaced_by", "replaces",
                 "order_class", "trail_price", "notional", "extended_hours", "legs", "position_intent", "asset_id")


class AlpacaBroker:
    """the Broker protocol (common/types.py) over the Alpaca trading API (paper unless paper=False)."""

    name = "alpaca"

    def __init__(self, api_key: str, secret_key: str, *, paper: bool = True, url_override: str | None = None,
                 budget: RequestBudget | None = None, timeout: float = 10.0,
                 sleep: Callable[[float], None] = time.sleep, max_429_retries: int = 3,
                 unix_time: Callable[[], float] = time.time):
        """`unix_time` is the wall clock used to turn X-RateLimit-Reset into a wait (injectable for tests)."""
        if not api_key or not secret_key:
            raise ConfigError("alpaca: an API key and secret key are required")
        self.paper = paper
        self._timeout = timeout
        self._redact = Redactor(api_key, secret_key)
        self._client = TradingClient(api_key, secret_key, paper=paper, raw_data=True, url_override=url_override)
        self._account_id = ""
        install_transport(self._client, timeout=timeout, budget=budget, sleep=sleep, unix_time=unix_time,
                          max_429_retries=max_429_retries)

    def __repr__(self) -> str:
        return f"AlpacaBroker(paper={self.paper})"

    # -- reads ---------------------------------------------------------------------------------------------------

    def account(self) -> Account:
        raw = self._call("account", self._client.get_account)
        return self._convert("account", account_from_raw, raw)

    def account_id(self) -> str:
        """Alpaca's id of the account behind the keys (one GET /v2/account, then remembered)."""
        if not self._account_id:
            account_id = self.account().id
            if not account_id:
                raise BrokerUnavailable("alpaca account: malformed response (no account id)")
            self._account_id = account_id
        return self._account_id

    def positions(self) -> list[Position]:
        raw = self._call("positions", self._client.get_all_positions)
        return self._convert("positions", lambda rows: [position_from_raw(r) for r in rows], raw)

    def get_order(self, order_id: str) -> Order:
        action = f"get order {order_id}"
        try:
            raw = self._client.get_order_by_id(order_id)
        except ValueError:  # the SDK refuses a non-UUID id before sending
            raise OrderNotFound(f"alpaca {action}: not an order id") from None
        except (APIError, requests.RequestException) as exc:
            if isinstance(exc, APIError) and exc.status_code == 404:
                raise OrderNotFound(f"alpaca {action}: order not found") from None
            raise self._translate(exc, action) from None
        return self._convert(action, order_from_raw, raw)

    def get_order_by_client_id(self, client_order_id: str) -> Order | None:
        action = f"get order by client_order_id {client_order_id}"
        try:
            raw = self._client.get_order_by_client_id(client_order_id)
        except (APIError, requests.RequestException) as exc:
            if isinstance(exc, APIError) and exc.status_code == 404:
                return None
            raise self._translate(exc, action) from None
        return self._convert(action, order_from_raw, raw)

    def orders(self, status: str = "open", symbols: Sequence[str] | None = None) -> list[Order]:
        """Orders by status ("open", "closed", "all"), newest first, at most 500 (Alpaca's page limit)."""
        if status not in ("open", "closed", "all"):
            raise ValueError(f"order status must be open, closed or all, not {status!r}")
        if symbols is not None and len(symbols) == 0:
            return []
        query = GetOrdersRequest(status=QueryOrderStatus(status), limit=ORDER_LIST_LIMIT,
                                 symbols=list(symbols) if symbols else None)
        raw = self._call(f"list {status} orders", lambda: self._client.get_orders(query))
        found = self._convert("list orders", lambda rows: [order_from_raw(r) for r in rows], raw)
        if len(found) >= ORDER_LIST_LIMIT:
            log.warning("alpaca returned %d %s orders, the most one request gives; older ones are not listed",
                        len(found), status)
        return found

    # -- writes --------------------------------------------------------------------------------------------------

    def submit(self, request: OrderRequest) -> Order:
        payload = order_payload(request)
        action = f"submit {request.side} {request.qty} {request.symbol} ({request.client_order_id})"
        try:
            raw = self._client.submit_order(payload)
        except APIError as exc:
            return self._after_refused_submit(request, exc, action)
        except requests.RequestException as exc:
            return self._after_unclear_submit(request, request_error_text(exc, self._timeout), action)
        try:
            order = order_from_raw(raw)
        except MALFORMED as exc:
            reason = f"HTTP 200 whose body is not an order ({_what_is_wrong(raw, exc)})"
            return self._after_unclear_submit(request, reason, action)
        if (order.client_order_id, order.symbol, order.side) != (request.client_order_id, request.symbol,
                                                                 request.side):
            reason = f"HTTP 200 with another order ({order.side} {order.symbol}, {order.client_order_id})"
            return self._after_unclear_submit(request, reason, action)
        return order

    def cancel(self, order_id: str) -> None:
        action = f"cancel order {order_id}"
        try:
            self._client.cancel_order_by_id(order_id)
        except ValueError:
            raise OrderNotFound(f"alpaca {action}: not an order id") from None
        except (APIError, requests.RequestException) as exc:
            if isinstance(exc, APIError) and exc.status_code == 404:
                raise OrderNotFound(f"alpaca {action}: order not found") from None
            raise self._translate(exc, action, order_call=True) from None  # 422: no longer cancelable

    # -- submission outcomes -------------------------------------------------------------------------------------

    def _after_refused_submit(self, request: OrderRequest, exc: APIError, action: str) -> Order:
        failure = api_failure(exc)
        if failure.status == 422 and failure.code == CODE_DUPLICATE and "unique" in failure.message.lower():
            existing = self._lookup_after_submit(request, action)
            if existing is not None:
                log.warning("%s: client_order_id already used; returning the existing order %s", action, existing.id)
                return existing
            raise DuplicateClientOrderId(self._redact(f"alpaca {action}: {failure.summary()}"),
                                         status_code=422, code=failure.code)
        if failure.status is not None and failure.status >= 500:
            return self._after_unclear_submit(request, failure.summary(), action)
        if failure.status == 403 and failure.code == CODE_FORBIDDEN and _is_insufficient_qty(failure.body):
            raise InsufficientQty(self._redact(f"alpaca {action}: {failure.message}"), status_code=403,
                                  code=failure.code)
        raise self._translate(exc, action, order_call=True) from None

    def _after_unclear_submit(self, request: OrderRequest, reason: str, action: str) -> Order:
        """After a timeout, a 5xx or an answer that is not the order, the order may or may not exist: ask by
        client_order_id before anything else."""
        log.warning("%s: %s; looking the order up by client_order_id", action, reason)
        existing = self._lookup_after_submit(request, action)
        if existing is not None:
            log.info("%s: the broker did accept it as %s", action, existing.id)
            return existing
        raise BrokerUnavailable(self._redact(
            f"alpaca {action}: {reason}; the broker shows no such order yet (not resent; reconcile later)"))

    def _lookup_after_submit(self, request: OrderRequest, action: str) -> Order | None:
        """The order already filed under this client_order_id, if any. One filed for a different symbol or side
        is not this intent (an id reused by mistake) and must not be taken for it."""
        try:
            existing = self.get_order_by_client_id(request.client_order_id)
        except BrokerUnavailable as exc:
            raise BrokerUnavailable(self._redact(
                f"alpaca {action}: outcome unknown, and the lookup by client_order_id failed too ({exc})")) from None
        if existing is not None and (existing.symbol, existing.side) != (request.symbol, request.side):
            raise DuplicateClientOrderId(self._redact(
                f"alpaca {action}: client_order_id already used by {existing.side} {existing.symbol} order "
                f"{existing.id}"), status_code=422, code=CODE_DUPLICATE)
        return existing

    # -- plumbing ------------------------------------------------------------------------------------------------

    def _call(self, action: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except (APIError, requests.RequestException) as exc:
            raise self._translate(exc, action) from None

    def _convert(self, action: str, convert: Callable[[Any], Any], raw: Any) -> Any:
        try:
            return convert(raw)
        except MALFORMED as exc:
            raise self._translate(exc, action) from None

    def _translate(self, exc: Exception, action: str, *, order_call: bool = False) -> MomentumError:
        return translate(exc, action, unavailable=BrokerUnavailable, rejected=OrderRejected,
                         timeout=self._timeout, redact=self._redact, order_call=order_call)


def _what_is_wrong(raw: Any, exc: Exception) -> str:
    """In a few words, why a body that should be an order is not one."""
    if raw is None:
        return "empty"
    if not isinstance(raw, dict):
        return f"a JSON {type(raw).__name__}"
    if isinstance(exc, KeyError):
        return f"no {exc.args[0]}"
    return f"{type(exc).__name__}: {one_line(str(exc))}"


def _is_insufficient_qty(body: dict) -> bool:
    # 40310000 also covers "insufficient buying power" and "not allowed to short"; only held shares qualify.
    return "held_for_orders" in body or "insufficient qty" in str(body.get("message", "")).lower()


# -- conversions -------------------------------------------------------------------------------------------------

def order_payload(request: OrderRequest) -> MarketOrderRequest:
    """The SDK request for an OrderRequest; a request Alpaca would refuse anyway is refused here, unsent."""
    problem = _order_problem(request)
    if problem:
        raise OrderRejected(f"invalid order {request.client_order_id!r}: {problem}")
    common = dict(symbol=request.symbol, qty=int(request.qty), side=OrderSide(request.side),
                  time_in_force=TimeInForce(request.time_in_force), client_order_id=request.client_order_id)
    try:
        if request.type == MARKET:
            return MarketOrderRequest(**common)
        if request.type == LIMIT:
            return LimitOrderRequest(**common, limit_price=request.limit_price)
        if request.type == STOP:
            return StopOrderRequest(**common, stop_price=request.stop_price)
        return TrailingStopOrderRequest(**common, trail_percent=request.trail_percent)
    except ValueError as exc:  # pydantic's validation error
        raise OrderRejected(f"invalid order {request.client_order_id!r}: {exc.__class__.__name__}") from None


def _order_problem(request: OrderRequest) -> str | None:
    if not request.client_order_id or len(request.client_order_id) > MAX_CLIENT_ORDER_ID:
        return f"client_order_id must be 1..{MAX_CLIENT_ORDER_ID} characters"
    if request.side not in (BUY, SELL):
        return f"side must be buy or sell, not {request.side!r}"
    if not isinstance(request.qty, int) or request.qty < 1:
        return "qty must be a positive whole number of shares"
    if request.time_in_force not in ("day", "gtc"):
        return "time_in_force must be day or gtc"
    needs = {MARKET: None, LIMIT: "limit_price", STOP: "stop_price", TRAILING_STOP: "trail_percent"}
    if request.type not in needs:
        return f"unsupported order type {request.type!r}"
    field_name = needs[request.type]
    if field_name and not (getattr(request, field_name) or 0) > 0:
        return f"{request.type} orders need a positive {field_name}"
    return None


def _time(value: Any) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def order_from_raw(raw: dict) -> Order:
    extra = {k: raw[k] for k in _EXTRA_FIELDS if raw.get(k) not in (None, "")}
    qty, filled = to_float(raw.get("qty")), to_float(raw.get("filled_qty"))
    if qty is not None and qty != int(qty):
        extra["fractional_qty"] = qty  # Order.qty holds whole shares only
    if filled is not None and filled != int(filled):
        extra["fractional_filled_qty"] = filled
    return Order(
        id=str(raw["id"]), client_order_id=str(raw["client_order_id"]), symbol=str(raw["symbol"]),
        side=str(raw["side"]), type=str(raw.get("type") or raw["order_type"]), qty=to_int(raw.get("qty")),
        status=str(raw["status"]), filled_qty=to_int(raw.get("filled_qty")),
        filled_avg_price=to_float(raw.get("filled_avg_price")), time_in_force=str(raw.get("time_in_force") or "day"),
        limit_price=to_float(raw.get("limit_price")), stop_price=to_float(raw.get("stop_price")),
        trail_percent=to_float(raw.get("trail_percent")), hwm=to_float(raw.get("hwm")),
        submitted_at=_time(raw.get("submitted_at")), filled_at=_time(raw.get("filled_at")),
        canceled_at=_time(raw.get("canceled_at")), asset_class=str(raw.get("asset_class") or "us_equity"),
        extra=extra,
    )


def position_from_raw(raw: dict) -> Position:
    qty = to_int(raw["qty"])
    available = raw.get("qty_available")
    return Position(
        symbol=str(raw["symbol"]), qty=qty, qty_available=qty if available in (None, "") else to_int(available),
        avg_entry_price=float(raw["avg_entry_price"]), current_price=to_float(raw.get("current_price")) or 0.0,
        market_value=to_float(raw.get("market_value")) or 0.0,
        unrealized_pl=to_float(raw.get("unrealized_pl")) or 0.0,
        asset_class=str(raw.get("asset_class") or "us_equity"),
    )


def account_from_raw(raw: dict) -> Account:
    """The account; any of Alpaca's three block flags counts as blocked. PDT fields are ignored (gone 2026-07-06)."""
    blocked = any(bool(raw.get(flag)) for flag in ("trading_blocked", "account_blocked", "trade_suspended_by_user"))
    return Account(
        equity=float(raw["equity"]), cash=float(raw["cash"]), buying_power=float(raw["buying_power"]),
        last_equity=float(raw["last_equity"]), status=str(raw.get("status") or "ACTIVE"),
        trading_blocked=blocked, currency=str(raw.get("currency") or "USD"), id=str(raw.get("id") or ""),
    )

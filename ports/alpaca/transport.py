"""What the Alpaca broker and market-data adapters share: the guarded HTTP transport and error translation.

alpaca-py sends every request through `client._session.request(method, url, **opts)` with no timeout, and its own
retry loop repeats any request (order submission included) on 429/504 after a fixed 3 s. The adapters switch that
loop off (`client._retry = 0`) and replace the session's `request` with `GuardedTransport`, which:
  - adds the request timeout;
  - takes one slot of the shared RequestBudget before every HTTP request (pages of a paged call included);
  - on 429 waits until X-RateLimit-Reset (or Retry-After), records that pause in the budget so every other
    process honours it, and resends -- safe for a POST too, because a 429 means the request was not accepted;
  - retries reads (GET) a couple of times on connection errors, timeouts and 5xx. Writes are never repeated here:
    the broker adapter decides what an unclear order submission means (see ports/alpaca/broker.py).
Whatever still fails reaches the adapter as an `APIError` or a `requests` exception, which `translate` turns into
one line in the product's error hierarchy. The SDK's `APIError.code`/`.message` json-parse the body on each access
and raise on an HTML or empty body, so this module reads the body itself.

The clients built on it are ports/alpaca/broker.py (AlpacaBroker), ports/alpaca/market.py (AlpacaMarket) and
ports/alpaca/options.py.
"""
from __future__ import annotations

import html
import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence, TypeVar

import requests
from alpaca.common.exceptions import APIError

from common.errors import ConfigError, MomentumError, OrderRejected, Unavailable
from ports.request_budget import RequestBudget

log = logging.getLogger(__name__)

BATCH_SIZE = 200  # symbols per data request: long lists have produced HTTP 414 at Alpaca
READ_RETRIES = 2
READ_BACKOFF_S = (0.5, 1.5)
MAX_RATE_LIMIT_WAIT_S = 65.0  # Alpaca's limits are per minute; a later reset header is not believable
MIN_RATE_LIMIT_WAIT_S = 0.5  # the reset header has whole seconds; never resend in the same instant
_SAFE_METHODS = frozenset({"GET", "HEAD"})

T = TypeVar("T")



class GuardedTransport:
    """A drop-in for `requests.Session.request`: timeout, budget, 429 waits and read retries."""

    def __init__(self, send: Callable[..., requests.Response], *, timeout: float, budget: RequestBudget | None,
                 sleep: Callable[[float], None], unix_time: Callable[[], float], max_429_retries: int):
        self._send = send
        self.timeout = timeout
        self.budget = budget
        self._sleep = sleep
        self._unix_time = unix_time
        self.max_429_retries = max_429_retries

    def __call__(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self.timeout)
        rate_limited = failures = 0
        while True:
            if self.budget is not None:
                self.budget.acquire()
            try:
                response = self._send(method, url, **kwargs)
            except (requests.ConnectionError, requests.Timeout) as exc:
                if not self._may_retry(method, failures):
                    raise
                failures += 1
                log.warning("%s %s: %s, retry %d", method, _path(url), type(exc).__name__, failures)
                self._sleep(READ_BACKOFF_S[failures - 1])
                continue
            if response.status_code == 429 and rate_limited < self.max_429_retries:
                rate_limited += 1
                self._wait_for_reset(method, url, response, rate_limited)
                continue
            if response.status_code >= 500 and self._may_retry(method, failures):
                failures += 1
                log.warning("%s %s: HTTP %d, retry %d", method, _path(url), response.status_code, failures)
                self._sleep(READ_BACKOFF_S[failures - 1])
                continue
            return response

    def _may_retry(self, method: str, failures: int) -> bool:
        return method.upper() in _SAFE_METHODS and failures < READ_RETRIES

    def _wait_for_reset(self, method: str, url: str, response: requests.Response, attempt: int) -> None:
        wait = rate_limit_wait(response.headers, self._unix_time(), attempt)
        if self.budget is not None:
            self.budget.block_until(self._unix_time() + wait)
        log.warning("%s %s: HTTP 429, waiting %.1f s (attempt %d/%d)", method, _path(url), wait, attempt,
                    self.max_429_retries)
        self._sleep(wait)


def rate_limit_wait(headers: Any, now: float, attempt: int) -> float:
    """Seconds to wait after a 429: until X-RateLimit-Reset (unix seconds), else Retry-After, else a backoff."""
    wait: float | None = None
    reset = _header_float(headers, "X-RateLimit-Reset")
    if reset is not None:
        wait = reset - now
    else:
        wait = _header_float(headers, "Retry-After")
    if wait is None:
        wait = float(2 ** (attempt - 1))
    return min(max(wait, MIN_RATE_LIMIT_WAIT_S), MAX_RATE_LIMIT_WAIT_S)


def _header_float(headers: Any, name: str) -> float | None:
    value = headers.get(name) if headers is not None else None
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def _path(url: str) -> str:
    """The URL's path without host or query, for log lines."""
    return requests.utils.urlparse(url).path


def install_transport(client: Any, *, timeout: float, budget: RequestBudget | None, sleep: Callable[[float], None],
                      unix_time: Callable[[], float], max_429_retries: int) -> GuardedTransport:
    """Switch off the SDK's own retry loop and route the client's HTTP through a GuardedTransport."""
    client._retry = 0  # the SDK would otherwise resend a POST /v2/orders on 429/504
    transport = GuardedTransport(client._session.request, timeout=timeout, budget=budget, sleep=sleep,
                                 unix_time=unix_time, max_429_retries=max_429_retries)
    client._session.request = transport
    return transport


# -- errors ------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ApiFailure:
    """An APIError read safely: the body may be JSON, HTML or empty."""

    status: int | None
    code: int | None
    message: str
    body: dict = field(default_factory=dict)

    def summary(self) -> str:
        return f"HTTP {self.status}" + (f" ({self.message})" if self.message else "")


def api_failure(exc: APIError) -> ApiFailure:
    status = exc.status_code
    text = str(exc)
    try:
        body = json.loads(text) if text else None
    except ValueError:
        body = None
    if isinstance(body, dict):
        code = body.get("code")
        code = int(code) if isinstance(code, (int, str)) and str(code).isdigit() else None
        message = one_line(str(body.get("message") or ""))
        return ApiFailure(status, code, message, body)
    return ApiFailure(status, None, _describe_text(text))


def _describe_text(text: str) -> str:
    """A short description of a non-JSON error body (an HTML error page's title, or its first words)."""
    if not text.strip():
        return "empty body"
    title = re.search(r"<title>(.*?)</title>", text, re.IGNORECASE | re.DOTALL)
    if title:
        return one_line(html.unescape(title.group(1)))
    return one_line(re.sub(r"<[^>]+>", " ", text))


def one_line(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def request_error_text(exc: requests.RequestException, timeout: float) -> str:
    """A one-line reason for a transport failure; never the URL's query or any header."""
    if isinstance(exc, requests.Timeout):
        return f"no answer within {timeout:g} s ({type(exc).__name__})"
    if isinstance(exc, requests.ConnectionError):
        return f"connection failed ({type(exc).__name__})"
    return f"request failed ({type(exc).__name__})"


class Redactor:
    """Removes the API key and secret from any text that might reach a message or a log.

    Real Alpaca keys are 20+ characters; very short test keys ("k", "s") are left alone, since replacing every
    letter "s" would only garble the message.
    """

    MIN_LENGTH = 6

    def __init__(self, *secrets: str):
        self._secrets = [s for s in secrets if s and len(s) >= self.MIN_LENGTH]

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


def translate(exc: Exception, action: str, *, unavailable: type[Unavailable], rejected: type[MomentumError],
              timeout: float, redact: Redactor, order_call: bool = False) -> MomentumError:
    """The product error for a failed call: unreachable (retry later), keys refused, or request refused.

    401 always means the keys; 403 means the keys or the plan (e.g. recent SIP data) except on order calls, where
    it is a refusal of that order. `rejected` is built with status_code/code when it is an OrderRejected.
    """
    if isinstance(exc, requests.RequestException):
        return unavailable(redact(f"alpaca {action}: {request_error_text(exc, timeout)}"))
    if isinstance(exc, APIError):
        failure = api_failure(exc)
        message = redact(f"alpaca {action}: {failure.summary()}")
        if failure.status is None or failure.status >= 500 or failure.status == 429:
            return unavailable(message)
        if failure.status == 401 or (failure.status == 403 and not order_call):
            return ConfigError(message + " - check the Alpaca keys, paper/live setting and data plan")
        if issubclass(rejected, OrderRejected):
            return rejected(message, status_code=failure.status, code=failure.code)
        return rejected(message)
    # A 2xx body that does not have the documented shape.
    return unavailable(redact(f"alpaca {action}: malformed response ({type(exc).__name__}: {one_line(str(exc))})"))


MALFORMED = (KeyError, TypeError, ValueError, AttributeError)  # a response body that lacks the documented shape


def batches(items: Sequence[T], size: int = BATCH_SIZE) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield list(items[start: start + size])


def unique(symbols: Sequence[str]) -> list[str]:
    """Symbols in the given order, duplicates dropped."""
    return list(dict.fromkeys(symbols))


def to_float(value: Any) -> float | None:
    """Alpaca's string numbers ("174.78") as floats; None and "" stay None."""
    if value is None or value == "":
        return None
    return float(value)


def to_int(value: Any) -> int:
    """Whole shares from a string quantity; a fractional remainder is dropped (it cannot be sold as whole shares)."""
    if value is None or value == "":
        return 0
    return int(float(value))

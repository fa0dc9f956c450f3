"""A local fake of the Anthropic Messages API (POST /v1/messages), for testing the LLM decider.

Start it with the `fake_messages` pytest fixture (import it into a test module:
`from fake_messages_api import fake_messages  # noqa: F401`), then call the decider with `base_url=fake.url`.
The server is a ThreadingHTTPServer on 127.0.0.1 (port 0) in a daemon thread. Like the real API it answers 401
authentication_error without an x-api-key header and 400 invalid_request_error without anthropic-version or with a
body that is not JSON; any other path answers 404 not_found_error.

Structured output: a request must carry `output_config: {"format": {"type": "json_schema", "schema": {...}}}` (the
generally available form; no anthropic-beta header), else it answers 400 invalid_request_error naming what is wrong.
The schema may use only the keywords structured output supports, and every object in it must be closed
(additionalProperties false). The retired beta parameter `output_format` is refused. `fake.require_schema = False`
lets a request without output_config through (a client that does not ask for structured output).

Request log (every POST, refused ones included):
    fake.url                 "http://127.0.0.1:<port>"
    fake.requests            list of Received(path, headers: dict with lower-case names, body: dict | None)
    fake.count()             number of requests received

Replies are queued, first in first out; each request takes the next one. With the queue empty a request answers
500 api_error "no reply queued", so a test never passes on an answer it did not ask for.
    fake.reply_decision(decision: dict, *, stop_reason="end_turn", fenced=False, conforming=None)
        a 200 Messages reply whose first text block is json.dumps(decision) (inside a ```json fence if fenced);
        id, type, role, model (echoed from the request), content, stop_reason, stop_sequence, usage.
        conforming=True / False: the fake first checks the decision against the request's own schema and answers
        500 api_error "fake: ..." when it is not (True) or is (False) conforming, so a test cannot mislabel its body
    fake.reply_conforming(decision)      reply_decision(decision, conforming=True): what the real API can send
    fake.reply_nonconforming(decision)   reply_decision(decision, conforming=False): a body breaking the schema
    fake.reply_text(text, *, stop_reason="end_turn")     the same wrapping around any text (prose, broken JSON)
    fake.reply_cut_off(decision)                         the decision JSON cut in half, stop_reason "max_tokens"
    fake.reply_error(status, *, error_type=None, message=None, retry_after=None)
        the documented error body {"type": "error", "error": {"type", "message"}}; the type and message default
        from the status (400 invalid_request_error, 401 authentication_error, 403 permission_error,
        404 not_found_error, 429 rate_limit_error, 500 api_error, 529 overloaded_error); retry_after (seconds)
        sets a retry-after header, and defaults to 10 for 429
    fake.reply_raw(status, body, headers=None)           any body: dict/list (JSON), str (text) or None (empty)
    fake.stall(seconds, then=None)
        hold the next request `seconds` before answering anything, then send the reply queued as `then` (a
        callable taking the fake, e.g. `lambda f: f.reply_decision(d)`) or, by default, a 200 "late" prose reply.
        Stopping the server ends a stall at once.
"""
from __future__ import annotations

import json
import threading
import uuid
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any, Callable

import pytest

from local_server import LocalServer, write_reply

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 429: "rate_limit_error", 500: "api_error", 529: "overloaded_error"}
ERROR_MESSAGES = {429: "Number of request tokens has exceeded your per-minute rate limit", 500: "Internal server error",
                  529: "Overloaded"}


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: dict | None


@dataclass
class _Reply:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


def _error_body(error_type: str, message: str) -> dict:
    return {"type": "error", "error": {"type": error_type, "message": message}}


class FakeMessagesApi(LocalServer):
    """The fake server's state: the request log and the reply queue (guarded by `lock`)."""

    def __init__(self) -> None:
        self.require_schema = True
        self.lock = threading.Lock()
        self.requests: list[Received] = []
        self._queue: deque[_Reply | Callable[[dict | None], _Reply]] = deque()
        self._init_server()

    # -- lifecycle --
    def count(self) -> int:
        with self.lock:
            return len(self.requests)

    # -- queueing replies --
    def reply_decision(self, decision: Any, *, stop_reason: str = "end_turn", fenced: bool = False,
                       conforming: bool | None = None) -> None:
        text = json.dumps(decision)
        text = f"```json\n{text}\n```" if fenced else text
        if conforming is None:
            self.reply_text(text, stop_reason=stop_reason)
            return

        def checked(request: dict | None) -> _Reply:
            violation = schema_violation(decision, _requested_schema(request) or {})
            if (violation is None) != conforming:
                detail = f"it breaks the schema: {violation}" if violation else "it follows the schema"
                return _Reply(500, _error_body("api_error", f"fake: the queued decision was labelled "
                                                            f"{'' if conforming else 'non-'}conforming but {detail}"))
            return _Reply(200, _message(text, stop_reason, request))

        self._push(checked)

    def reply_conforming(self, decision: Any, **options: Any) -> None:
        self.reply_decision(decision, conforming=True, **options)

    def reply_nonconforming(self, decision: Any, **options: Any) -> None:
        self.reply_decision(decision, conforming=False, **options)

    def reply_text(self, text: str, *, stop_reason: str = "end_turn") -> None:
        # The message is built when the request arrives, so it can echo the requested model like the real API.
        self._push(lambda request: _Reply(200, _message(text, stop_reason, request)))

    def reply_cut_off(self, decision: dict) -> None:
        text = json.dumps(decision)
        self.reply_text(text[:len(text) // 2], stop_reason="max_tokens")

    def reply_error(self, status: int, *, error_type: str | None = None, message: str | None = None,
                    retry_after: float | None = None) -> None:
        error_type = error_type or ERROR_TYPES.get(status, "api_error")
        message = message or ERROR_MESSAGES.get(status, error_type.replace("_", " "))
        if retry_after is None and status == 429:
            retry_after = 10
        headers = {"retry-after": f"{retry_after:g}"} if retry_after is not None else {}
        self._push(_Reply(status, _error_body(error_type, message), headers))

    def reply_raw(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        self._push(_Reply(status, body, dict(headers or {})))

    def stall(self, seconds: float, then: Callable[["FakeMessagesApi"], None] | None = None) -> None:
        (then or (lambda fake: fake.reply_text("late answer")))(self)
        with self.lock:
            queued = self._queue.pop()
        self._push(lambda request: _with_delay(_resolve(queued, request), seconds))

    def _push(self, reply: _Reply | Callable[[dict | None], _Reply]) -> None:
        with self.lock:
            self._queue.append(reply)

    # -- serving --
    def _answer(self, path: str, headers: dict[str, str], raw: bytes) -> _Reply:
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        with self.lock:
            self.requests.append(Received(path, headers, body))
        if path != "/v1/messages":
            return _Reply(404, _error_body("not_found_error", f"Not found: {path}"))
        if not headers.get("x-api-key"):
            return _Reply(401, _error_body("authentication_error", "x-api-key header is required"))
        if not headers.get("anthropic-version"):
            return _Reply(400, _error_body("invalid_request_error", "anthropic-version header is required"))
        if not isinstance(body, dict):
            return _Reply(400, _error_body("invalid_request_error", "request body is not valid JSON"))
        problem = _output_config_problem(body, require=self.require_schema)
        if problem:
            return _Reply(400, _error_body("invalid_request_error", problem))
        with self.lock:
            queued = self._queue.popleft() if self._queue else None
        if queued is None:
            return _Reply(500, _error_body("api_error", "no reply queued"))
        return _resolve(queued, body)


# The JSON-schema keywords structured output accepts (a subset of JSON Schema; no numeric or length ranges).
SUPPORTED_KEYWORDS = {"type", "properties", "required", "additionalProperties", "items", "enum", "const", "anyOf",
                      "allOf", "$ref", "$defs", "definitions", "description", "title", "default", "format",
                      "minItems"}
JSON_TYPES = {"object": dict, "array": list, "string": str, "integer": int, "number": (int, float),
              "boolean": bool, "null": type(None)}


def _requested_schema(request: dict | None) -> dict | None:
    config = (request or {}).get("output_config")
    fmt = config.get("format") if isinstance(config, dict) else None
    return fmt.get("schema") if isinstance(fmt, dict) else None


def _output_config_problem(body: dict, *, require: bool) -> str | None:
    """Why the request's structured-output parameters would be refused, or None."""
    if "output_format" in body:
        return "output_format: this parameter moved to output_config.format"
    if "output_config" not in body:
        return "output_config.format: a json_schema format is required (fake)" if require else None
    config = body["output_config"]
    fmt = config.get("format") if isinstance(config, dict) else None
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        return "output_config.format.type: expected 'json_schema'"
    schema = fmt.get("schema")
    if not isinstance(schema, dict):
        return "output_config.format.schema: expected an object"
    return _schema_problem(schema, "schema")


def _schema_problem(schema: Any, where: str) -> str | None:
    if not isinstance(schema, dict):
        return f"{where}: expected an object"
    unsupported = sorted(set(schema) - SUPPORTED_KEYWORDS)
    if unsupported:
        return f"{where}: unsupported keyword {unsupported[0]!r}"
    if schema.get("type") == "object" and schema.get("additionalProperties") is not False:
        return f"{where}: additionalProperties must be false"
    children = [(f"{where}.properties.{k}", v) for k, v in (schema.get("properties") or {}).items()]
    if "items" in schema:
        children.append((f"{where}.items", schema["items"]))
    return next((p for p in (_schema_problem(child, name) for name, child in children) if p), None)


def schema_violation(value: Any, schema: dict, where: str = "$") -> str | None:
    """The first way `value` breaks `schema` (the keywords a closed structured-output schema uses), or None.

    Written apart from the decider's own check, so the two can be held against each other."""
    kind = schema.get("type")
    expected = JSON_TYPES.get(kind, object)
    if not isinstance(value, expected) or (kind in ("integer", "number") and isinstance(value, bool)):
        return f"{where}: not {kind}"
    if kind == "number" and value != value:
        return f"{where}: NaN"
    if "enum" in schema and value not in schema["enum"]:
        return f"{where}: {value!r} not in {schema['enum']}"
    if kind == "object":
        properties = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                return f"{where}: missing {key}"
        for key in value:
            if key not in properties:
                return f"{where}: unexpected {key}"
        return next((v for v in (schema_violation(value[k], properties[k], f"{where}.{k}") for k in value) if v),
                    None)
    if kind == "array":
        return next((v for v in (schema_violation(item, schema.get("items", {}), f"{where}[{i}]")
                                 for i, item in enumerate(value)) if v), None)
    return None


def _resolve(queued: _Reply | Callable[[dict | None], _Reply], request: dict | None) -> _Reply:
    return queued(request) if callable(queued) else queued


def _with_delay(reply: _Reply, seconds: float) -> _Reply:
    reply.delay = seconds
    return reply


def _message(text: str, stop_reason: str, request: dict | None) -> dict:
    prompt = json.dumps((request or {}).get("messages", []))
    return {"id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant",
            "model": (request or {}).get("model", "claude-test"), "content": [{"type": "text", "text": text}],
            "stop_reason": stop_reason, "stop_sequence": None,
            "usage": {"input_tokens": max(1, len(prompt) // 4), "output_tokens": max(1, len(text) // 4)}}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
        return

    def do_POST(self) -> None:
        fake: FakeMessagesApi = self.server.fake  # type: ignore[attr-defined]
        raw = self.rfile.read(int(self.headers.get("content-length") or 0))
        headers = {name.lower(): value for name, value in self.headers.items()}
        reply = fake._answer(self.path, headers, raw)
        if reply.delay and fake._stopping.wait(reply.delay):
            return  # the server is stopping: drop the stalled request
        self._send(reply)

    def do_GET(self) -> None:
        self._send(_Reply(405, _error_body("invalid_request_error", "use POST")))

    def _send(self, reply: _Reply) -> None:
        if isinstance(reply.body, (dict, list)):
            payload, content_type = json.dumps(reply.body).encode(), "application/json"
        elif isinstance(reply.body, str):
            payload, content_type = reply.body.encode(), "text/plain; charset=utf-8"
        else:
            payload, content_type = b"", "application/json"
        write_reply(self, reply.status, payload, content_type, reply.headers)


@pytest.fixture
def fake_messages():
    """A running FakeMessagesApi; stopped after the test."""
    fake = FakeMessagesApi().start()
    try:
        yield fake
    finally:
        fake.stop()


FakeMessagesApi.handler_class = _Handler

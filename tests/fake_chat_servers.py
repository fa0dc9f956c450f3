"""Local fakes of the Telegram Bot API and of a Discord webhook, for testing alerts and the bot.

Fixtures (import them into a test module: `from fake_chat_servers import fake_telegram, fake_discord  # noqa: F401`):
    fake_telegram   a running FakeTelegram; point TELEGRAM_BASE_URL at fake_telegram.url and use fake_telegram.token
    fake_discord    a running FakeDiscord; use fake_discord.webhook_url as DISCORD_WEBHOOK_URL

Both are ThreadingHTTPServers on 127.0.0.1 (port 0) in daemon threads, and record every request:
    fake.requests        list of Received(http_method, path, api_method, json, fields, files, at)
                         json: the parsed JSON body or None; fields: multipart text fields {name: value};
                         files: multipart files {name: (filename, bytes)}; api_method: Telegram method name or
                         "webhook"; at: time.monotonic() when the request arrived
    fake.calls(api)      the Received list for one API method (e.g. "sendMessage")
    fake.count()         number of requests

Fault knobs, consumed first in first out by the next matching request (api=None matches any):
    fake.fail_next(status=500, *, api=None, description=None, retry_after=None, times=1)
        the service's own error body (Telegram {"ok": false, "error_code", "description", "parameters":
        {"retry_after"}}, Discord {"message", "code", "retry_after", "global"}); retry_after also sets the
        Retry-After header; 429 defaults to retry_after 5
    fake.stall_next(seconds, *, api=None, times=1)
        hold the request `seconds` before answering normally (longer than the client's timeout = a timeout);
        stopping the server ends the stall at once
    closed_port_url()    a URL on 127.0.0.1 where nothing listens (connection refused)

FakeTelegram (token fixed per instance, wrong token -> 401 Unauthorized like the real API):
    fake.add_message(user_id, text, *, chat_id=None, username=None, date=None) -> update_id
        queue an update {"update_id", "message": {"message_id", "from", "chat", "date", "text"}}; update ids count
        up from 1000; chat_id defaults to user_id (a private chat); date defaults to 1478705400
    getUpdates honours `offset` like the real API: updates below the offset are confirmed and forgotten; the rest
        (at most `limit`, default 100) are returned on every call until confirmed. With `timeout` N > 0 it is a long
        poll: the request is held until an update is there (answered at once when add_message queues one) or N
        seconds have passed (then an empty list). A getUpdates arriving while another one is held ends the held one
        with 409 "Conflict: terminated by other getUpdates request" (two bot instances on one token)
    sendMessage checks chat_id and text (empty -> 400, > 4096 characters -> 400 "message is too long")
    sendPhoto / sendDocument read the multipart form (chat_id, caption, the photo / document file): no chat ->
        400, no file -> 400, caption over 1024 characters -> 400 "message caption is too long", a photo that is
        not a PNG or JPEG -> 400 "IMAGE_PROCESS_FAILED", a photo over 10 MB or a document over 50 MB -> 413; the
        result carries `photo` (sizes, with the PNG's width and height) or `document` (file_name, file_size)
    fake.sent_texts(chat_id=None)   the texts of successful sendMessage calls, in order
    fake.sent_photos(chat_id=None)  (filename, bytes, caption) of each successful sendPhoto, in order
    fake.offsets()                  the offset sent with each getUpdates call (None when absent)
    fake.conflicts                  how many held getUpdates were ended by another one (409)

FakeDiscord: POST /api/webhooks/<id>/<token> answers 204 (200 with the message when ?wait=true); a body without
content and embeds, content over 2000 characters or more than 10 embeds -> 400 {"message", "code": 50006}.
"""
from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from local_server import LocalServer, write_reply

TELEGRAM_TOKEN = "123456789:AAHfakeTokenForTests_abcdefghijklmn"
DISCORD_WEBHOOK_PATH = "/api/webhooks/112233445566778899/fakeWebhookSecret-abcdefghijklmnopqrstuvwxyz"
DEFAULT_DATE = 1478705400  # 2016-11-09 10:30 New York


@dataclass(frozen=True)
class Received:
    http_method: str
    path: str
    api_method: str
    json: Any = None
    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    at: float = field(default_factory=time.monotonic)


@dataclass
class _Fault:
    api: str | None
    status: int = 0
    description: str | None = None
    retry_after: float | None = None
    stall: float = 0.0


@dataclass
class _Reply:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


def closed_port_url() -> str:
    """A loopback URL that refuses connections: the port was free a moment ago and nothing listens on it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def parse_multipart(content_type: str, raw: bytes) -> tuple[dict[str, str], dict[str, tuple[str, bytes]]]:
    message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + raw)
    fields: dict[str, str] = {}
    files: dict[str, tuple[str, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True) or b""
        filename = part.get_filename()
        if filename is not None:
            files[name] = (filename, payload)
        else:
            fields[name] = payload.decode()
    return fields, files


class _FakeServer(LocalServer):
    """Request log, fault queue and the HTTP server thread shared by both fakes."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[Received] = []
        self._faults: deque[_Fault] = deque()
        self._init_server()

    def count(self) -> int:
        with self.lock:
            return len(self.requests)

    def calls(self, api: str) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if r.api_method == api]

    # -- faults --
    def fail_next(self, status: int = 500, *, api: str | None = None, description: str | None = None,
                  retry_after: float | None = None, times: int = 1) -> None:
        if status == 429 and retry_after is None:
            retry_after = 5
        with self.lock:
            self._faults.extend(_Fault(api, status, description, retry_after) for _ in range(times))

    def stall_next(self, seconds: float, *, api: str | None = None, times: int = 1) -> None:
        with self.lock:
            self._faults.extend(_Fault(api, stall=seconds) for _ in range(times))

    def _take_fault(self, api: str) -> _Fault | None:
        with self.lock:
            for fault in self._faults:
                if fault.api in (None, api):
                    self._faults.remove(fault)
                    return fault
        return None

    # -- serving --
    def handle(self, http_method: str, path: str, headers: dict[str, str], raw: bytes) -> _Reply:
        api = self.api_method(path)
        received = self._record(http_method, path, api, headers, raw)
        fault = self._take_fault(api)
        if fault is not None and fault.status:
            return self.error_reply(fault)
        reply = self.answer(received, urlsplit(path))
        if fault is not None:
            reply.delay = fault.stall
        return reply

    def _record(self, http_method: str, path: str, api: str, headers: dict[str, str], raw: bytes) -> Received:
        content_type = headers.get("content-type", "")
        body, fields, files = None, {}, {}
        if content_type.startswith("multipart/form-data"):
            fields, files = parse_multipart(content_type, raw)
        elif raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
        received = Received(http_method, urlsplit(path).path, api, body, fields, files)
        with self.lock:
            self.requests.append(received)
        return received

    def api_method(self, path: str) -> str:
        raise NotImplementedError

    def answer(self, received: Received, url) -> _Reply:
        raise NotImplementedError

    def error_reply(self, fault: _Fault) -> _Reply:
        raise NotImplementedError


class FakeTelegram(_FakeServer):
    def __init__(self, token: str = TELEGRAM_TOKEN) -> None:
        super().__init__()
        self.token = token
        self._updates: list[dict] = []
        self._next_update_id = 1000
        self._next_message_id = 1
        self._arrived = threading.Condition(self.lock)  # a held getUpdates wakes when an update is queued
        self._poll_generation = 0  # counts getUpdates calls: a held one that sees it move was superseded
        self._photos: list[tuple[str, str, bytes, str]] = []  # (chat_id, filename, bytes, caption)
        self.conflicts = 0

    def add_message(self, user_id: int, text: str, *, chat_id: int | None = None, username: str | None = None,
                    date: int | None = None) -> int:
        with self.lock:
            update_id = self._next_update_id
            self._next_update_id += 1
            message_id = self._next_message_id
            self._next_message_id += 1
            sender = {"id": user_id, "is_bot": False, "first_name": (username or "user").title(),
                      "username": username or f"user{user_id}"}
            chat = {"id": chat_id if chat_id is not None else user_id,
                    "type": "private" if chat_id in (None, user_id) else "group"}
            self._updates.append({"update_id": update_id, "message": {
                "message_id": message_id, "from": sender, "chat": chat, "date": date or DEFAULT_DATE,
                "text": text}})
            self._arrived.notify_all()
        return update_id

    def sent_texts(self, chat_id: int | str | None = None) -> list[str]:
        return [r.json["text"] for r in self.calls("sendMessage")
                if isinstance(r.json, dict) and "text" in r.json
                and (chat_id is None or str(r.json.get("chat_id")) == str(chat_id))]

    def sent_photos(self, chat_id: int | str | None = None) -> list[tuple[str, bytes, str]]:
        with self.lock:
            return [(name, content, caption) for chat, name, content, caption in self._photos
                    if chat_id is None or chat == str(chat_id)]

    def offsets(self) -> list[int | None]:
        return [(r.json or {}).get("offset") for r in self.calls("getUpdates")]

    def api_method(self, path: str) -> str:
        parts = urlsplit(path).path.strip("/").split("/")
        return parts[1] if len(parts) == 2 else ""

    def answer(self, received: Received, url) -> _Reply:
        if url.path.strip("/").split("/")[0] != f"bot{self.token}":
            return _Reply(401, _tg_error(401, "Unauthorized"))
        handler = {"getUpdates": self._get_updates, "sendMessage": self._send_message,
                   "sendPhoto": lambda r: self._send_file(r, "photo"),
                   "sendDocument": lambda r: self._send_file(r, "document")}.get(received.api_method)
        if handler is None:
            return _Reply(404, _tg_error(404, "Not Found"))
        return handler(received)

    def _get_updates(self, received: Received) -> _Reply:
        params = received.json or {}
        offset, limit = params.get("offset"), int(params.get("limit") or 100)
        deadline = time.monotonic() + max(0, int(params.get("timeout") or 0))
        with self.lock:
            self._poll_generation += 1
            mine = self._poll_generation
            while True:
                if offset is not None:
                    self._updates = [u for u in self._updates if u["update_id"] >= int(offset)]
                left = deadline - time.monotonic()
                if self._updates or left <= 0 or self._stopping.is_set():
                    break
                self._arrived.wait(min(left, 0.05))
                if self._poll_generation != mine:
                    self.conflicts += 1
                    return _Reply(409, _tg_error(409, "Conflict: terminated by other getUpdates request; make sure "
                                                      "that only one bot instance is running"))
            result = [json.loads(json.dumps(u)) for u in self._updates[:limit]]
        return _Reply(200, {"ok": True, "result": result})

    def _send_message(self, received: Received) -> _Reply:
        params = received.json or {}
        text = params.get("text")
        if not params.get("chat_id"):
            return _Reply(400, _tg_error(400, "Bad Request: chat not found"))
        if not text:
            return _Reply(400, _tg_error(400, "Bad Request: message text is empty"))
        if len(text) > 4096:
            return _Reply(400, _tg_error(400, "Bad Request: message is too long"))
        return _Reply(200, {"ok": True, "result": self._message_result(params["chat_id"], text=text)})

    def _send_file(self, received: Received, kind: str) -> _Reply:
        chat_id, caption = received.fields.get("chat_id"), received.fields.get("caption")
        if not chat_id:
            return _Reply(400, _tg_error(400, "Bad Request: chat not found"))
        if kind not in received.files:
            return _Reply(400, _tg_error(400, f"Bad Request: there is no {kind} in the request"))
        name, content = received.files[kind]
        if caption is not None and len(caption) > 1024:
            return _Reply(400, _tg_error(400, "Bad Request: message caption is too long"))
        if len(content) > (10 if kind == "photo" else 50) * 1024 * 1024:
            return _Reply(413, _tg_error(413, "Request Entity Too Large"))
        size = _image_size(content)
        if kind == "photo" and size is None:
            return _Reply(400, _tg_error(400, "Bad Request: IMAGE_PROCESS_FAILED"))
        file_id = f"{kind}-{len(self.calls('send' + kind.title()))}"
        if kind == "photo":
            width, height = size or (0, 0)
            extra: dict[str, Any] = {"photo": [{"file_id": file_id, "file_unique_id": file_id, "width": width,
                                                "height": height, "file_size": len(content)}]}
            with self.lock:
                self._photos.append((str(chat_id), name, content, caption or ""))
        else:
            extra = {"document": {"file_name": name, "file_id": file_id, "file_unique_id": file_id,
                                  "file_size": len(content)}}
        if caption is not None:
            extra["caption"] = caption
        return _Reply(200, {"ok": True, "result": self._message_result(chat_id, **extra)})

    def _message_result(self, chat_id: Any, **extra: Any) -> dict:
        with self.lock:
            message_id = self._next_message_id
            self._next_message_id += 1
        return {"message_id": message_id, "chat": {"id": int(chat_id) if str(chat_id).lstrip("-").isdigit()
                                                   else chat_id}, "date": DEFAULT_DATE, **extra}

    def error_reply(self, fault: _Fault) -> _Reply:
        description = fault.description or {429: "Too Many Requests: retry later", 500: "Internal Server Error",
                                             502: "Bad Gateway"}.get(fault.status, "Bad Request")
        if fault.status == 429:
            description = fault.description or f"Too Many Requests: retry after {fault.retry_after:g}"
        body = _tg_error(fault.status, description)
        headers = {}
        if fault.retry_after is not None:
            body["parameters"] = {"retry_after": fault.retry_after}
            headers["retry-after"] = f"{fault.retry_after:g}"
        return _Reply(fault.status, body, headers)


def _image_size(content: bytes) -> tuple[int, int] | None:
    """(width, height) of a PNG (from its header chunk; 0 x 0 without one), (0, 0) for a JPEG, None for anything
    that is neither."""
    if content[:8] == b"\x89PNG\r\n\x1a\n":
        return struct.unpack(">II", content[16:24]) if content[12:16] == b"IHDR" else (0, 0)
    if content[:3] == b"\xff\xd8\xff":
        return 0, 0
    return None


def _tg_error(code: int, description: str) -> dict:
    return {"ok": False, "error_code": code, "description": description}


class FakeDiscord(_FakeServer):
    @property
    def webhook_url(self) -> str:
        return self.url + DISCORD_WEBHOOK_PATH

    def bodies(self) -> list[dict]:
        return [r.json for r in self.calls("webhook")]

    def api_method(self, path: str) -> str:
        return "webhook" if urlsplit(path).path.startswith("/api/webhooks/") else ""

    def answer(self, received: Received, url) -> _Reply:
        if received.http_method != "POST" or url.path != DISCORD_WEBHOOK_PATH:
            return _Reply(404, {"message": "Unknown Webhook", "code": 10015})
        body = received.json
        if not isinstance(body, dict) or not (body.get("content") or body.get("embeds")):
            return _Reply(400, {"message": "Cannot send an empty message", "code": 50006})
        if len(body.get("content") or "") > 2000 or len(body.get("embeds") or []) > 10:
            return _Reply(400, {"message": "Invalid Form Body", "code": 50035})
        if parse_qs(url.query).get("wait") == ["true"]:
            return _Reply(200, {"id": "1", "content": body.get("content", ""), "embeds": body.get("embeds", [])})
        return _Reply(204)

    def error_reply(self, fault: _Fault) -> _Reply:
        if fault.status == 429:
            body = {"message": "You are being rate limited.", "retry_after": fault.retry_after, "global": False}
            return _Reply(429, body, {"retry-after": f"{fault.retry_after:g}"})
        return _Reply(fault.status, {"message": fault.description or "Internal Server Error", "code": 0})


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
        return

    def _serve(self, http_method: str) -> None:
        fake: _FakeServer = self.server.fake  # type: ignore[attr-defined]
        raw = self.rfile.read(int(self.headers.get("content-length") or 0))
        headers = {name.lower(): value for name, value in self.headers.items()}
        reply = fake.handle(http_method, self.path, headers, raw)
        if reply.delay and fake._stopping.wait(reply.delay):
            return  # the server is stopping: drop the stalled request
        self._send(reply)

    def do_POST(self) -> None:
        self._serve("POST")

    def do_GET(self) -> None:
        self._serve("GET")

    def _send(self, reply: _Reply) -> None:
        payload = json.dumps(reply.body).encode() if reply.body is not None else b""
        write_reply(self, reply.status, payload, "application/json" if payload else None, reply.headers)


@pytest.fixture
def fake_telegram():
    """A running FakeTelegram; stopped after the test."""
    fake = FakeTelegram().start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def fake_discord():
    """A running FakeDiscord; stopped after the test."""
    fake = FakeDiscord().start()
    try:
        yield fake
    finally:
        fake.stop()


_FakeServer.handler_class = _Handler

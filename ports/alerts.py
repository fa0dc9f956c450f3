"""Alert delivery: an outbox over the journal's `events` table.

Every part of the product records an alert as a journal event (kind "alert" or "scan_summary"). `dispatch()` sends
the events not yet delivered to the configured channels (Telegram, Discord webhook) and writes the outcome per channel
into `events.delivered`, e.g. {"log": "sent", "telegram": "sent", "discord": "failed: HTTP 500", "attempts":
{"discord": 1}}. A channel value is one of:
    "sent"                 delivered
    "pending"              not tried yet (the time budget ran out, or the channel was down earlier in the call)
    "failed: <why>"        tried and failed; retried by a later dispatch
    "gave up: <why>"       failed MAX_ATTEMPTS times; not tried again
    "skipped: <why>"       deliberately not sent (alerts switched off, stale, channel no longer configured)

A failing or slow channel never raises and never holds a trading run: each request is limited to ALERT_TIMEOUT and
a whole dispatch to DISPATCH_BUDGET_FACTOR x ALERT_TIMEOUT; what does not fit waits for the next dispatch. Failures
become one warning event per channel (kind "alert_failure", itself never dispatched).

Secrets: the bot token sits in every Telegram URL and the webhook URL is a secret, so no error text here is ever
built from a requests exception or a URL; descriptions from the services are passed through config.redact.
"""
from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

import requests

from common import locks, render
from config import Config, redact, register_secrets

log = logging.getLogger(__name__)

ALERT_KINDS = ("alert", "scan_summary")
DELIVERED_LEVELS = ("info", "warning", "error", "critical")
MAX_ATTEMPTS = 3  # per channel and alert: the first try and two retries on later dispatches
DISPATCH_BUDGET_FACTOR = 2.0  # a whole dispatch may take this many ALERT_TIMEOUTs
MAX_ALERTS_PER_DISPATCH = 50
MAX_AGE = timedelta(hours=24)  # an alert older than this is news nobody can act on any more
MIN_REQUEST_SECONDS = 0.05  # below this, a request cannot succeed; leave the alert for the next dispatch
TELEGRAM_TEXT_LIMIT = 4096
DISCORD_DESCRIPTION_LIMIT = 4096

GREEN, RED, NEUTRAL = 3066993, 15158332, 9807270  # Discord embed colours (0x2ECC71, 0xE74C3C, 0x95A5A6)
TITLES = {"entry": "Entry", "exit": "Exit", "reversal": "Reversal alert", "critical": "CRITICAL",
          "scan_summary": "Scan summary", "test": "Test alert"}
LEVEL_TITLES = {"info": "Alert", "warning": "Warning", "error": "Error", "critical": "CRITICAL"}


# --- HTTP -------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class HttpOutcome:
    ok: bool
    status: int | None = None
    body: Any = None
    error: str = ""  # one line, safe to store and show
    retry_after: float | None = None

    @property
    def message_specific(self) -> bool:
        """A 400 is about this one message (too long, bad format); any other failure hits every message."""
        return self.status == 400


def _one_line(text: str, limit: int = 200) -> str:
    flat = " ".join(str(text).split())
    return redact(flat if len(flat) <= limit else flat[:limit - 3] + "...")


def _retry_after(response: requests.Response, body: Any) -> float | None:
    candidates: list[Any] = []
    if isinstance(body, dict):
        candidates += [(body.get("parameters") or {}).get("retry_after"), body.get("retry_after")]
    candidates.append(response.headers.get("retry-after"))
    for value in candidates:
        try:
            if value is not None:
                return max(0.0, float(value))
        except (TypeError, ValueError):
            continue
    return None


def http_post(session: requests.Session, url: str, *, timeout: float, json_body: Any = None,
              data: dict | None = None, files: dict | None = None) -> HttpOutcome:
    """POST and classify the answer. Never raises for network trouble; the error text never contains the URL."""
    try:
        response = session.post(url, json=json_body, data=data, files=files, timeout=(timeout, timeout))
    except requests.Timeout:
        return HttpOutcome(False, error=f"timeout after {timeout:g} s")
    except requests.ConnectionError as err:
        # The exception text names the URL (and so the token): keep only what kind of failure it was.
        refused = "refused" in str(err).lower()
        return HttpOutcome(False, error="connection refused" if refused else "connection failed")
    except requests.RequestException as err:
        return HttpOutcome(False, error=f"request failed ({type(err).__name__})")
    try:
        body = response.json() if response.content else None
    except ValueError:
        body = None
    telegram_refused = isinstance(body, dict) and body.get("ok") is False
    if response.status_code < 300 and not telegram_refused:
        return HttpOutcome(True, response.status_code, body)
    description = ""
    if isinstance(body, dict):
        description = str(body.get("description") or body.get("message") or "")
    elif response.text and "<html" not in response.text[:200].lower():
        description = response.text
    error = f"HTTP {response.status_code}" + (f": {_one_line(description)}" if description else "")
    return HttpOutcome(False, response.status_code, body, error, _retry_after(response, body))


def post_within_budget(session: requests.Session, url: str, *, timeout: float, deadline: float,
                       sleep: Callable[[float], None], **payload: Any) -> HttpOutcome:
    """One delivery: honour a 429's retry_after once when the wait fits in what is left of the budget."""
    outcome = http_post(session, url, timeout=min(timeout, deadline - time.monotonic()), **payload)
    if outcome.status == 429 and outcome.retry_after is not None:
        left = deadline - time.monotonic() - outcome.retry_after
        if left >= MIN_REQUEST_SECONDS:
            sleep(outcome.retry_after)
            return http_post(session, url, timeout=min(timeout, left), **payload)
        return HttpOutcome(False, 429, outcome.body, f"rate limited (retry after {outcome.retry_after:g} s)",
                           outcome.retry_after)
    return outcome


def register_channel_secrets(config: Config) -> None:
    """Mask the secrets and also the webhook's path: HTTP libraries log the path without the host."""
    register_secrets(config.secrets())
    webhook = config.discord_webhook_url
    if webhook:
        path = urlsplit(webhook).path.rstrip("/")
        register_secrets([path, path.rsplit("/", 1)[-1]])


def telegram_url(config: Config, method: str) -> str:
    """The Bot API URL of `method`. It contains the token: never log or store it."""
    return f"{config.telegram_base_url.rstrip('/')}/bot{config.telegram_bot_token}/{method}"


def telegram_call(config: Config, method: str, *, session: requests.Session | None = None,
                  timeout: float | None = None, **payload: Any) -> HttpOutcome:
    """One Bot API request (JSON via json_body=, multipart via data=/files=); never raises for network trouble."""
    register_channel_secrets(config)
    own = session is None
    session = session or requests.Session()
    try:
        return http_post(session, telegram_url(config, method), timeout=timeout or config.alert_timeout, **payload)
    finally:
        if own:
            session.close()


# --- photos and documents ---------------------------------------------------------------------------------------

def send_photo(config: Config, path: str | Path, caption: str = "", *, chat_id: str | int | None = None,
               session: requests.Session | None = None) -> bool:
    """Send an image (e.g. the weekly equity chart) to the alert chat, or to `chat_id`. False on any failure."""
    return _send_file(config, "sendPhoto", "photo", Path(path), caption, chat_id, session)


def send_document(config: Config, path: str | Path, caption: str = "", *, chat_id: str | int | None = None,
                  session: requests.Session | None = None) -> bool:
    """Send a file (e.g. a CSV export) to the alert chat, or to `chat_id`. False on any failure."""
    return _send_file(config, "sendDocument", "document", Path(path), caption, chat_id, session)


def _send_file(config: Config, method: str, field_name: str, path: Path, caption: str,
               chat_id: str | int | None, session: requests.Session | None) -> bool:
    target = chat_id if chat_id is not None else config.telegram_chat_id
    if not config.telegram_bot_token or not target:
        log.warning("telegram %s skipped: TELEGRAM_BOT_TOKEN or the chat id is not set", method)
        return False
    try:
        content = path.read_bytes()
    except OSError as err:
        log.warning("telegram %s skipped: cannot read %s (%s)", method, path, err.strerror)
        return False
    data = {"chat_id": str(target)}
    if caption:
        data["caption"] = caption[:1024]  # Telegram's caption limit
    outcome = telegram_call(config, method, session=session, data=data, files={field_name: (path.name, content)})
    if not outcome.ok:
        log.warning("telegram %s of %s failed: %s", method, path.name, outcome.error)
    return outcome.ok


# --- what an alert says -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Alert:
    event_id: int
    created_at: str
    level: str
    event_kind: str
    source: str | None
    message: str
    detail: dict

    @property
    def kind(self) -> str:
        """entry, exit, reversal, critical, scan_summary, test, or the level for anything else."""
        declared = self.detail.get("kind")
        if declared in TITLES:
            return declared
        if self.event_kind == "scan_summary":
            return "scan_summary"
        return "critical" if self.level == "critical" else self.level

    @property
    def title(self) -> str:
        title = TITLES.get(self.kind) or LEVEL_TITLES.get(self.level, "Alert")
        symbol = self.detail.get("symbol")
        return f"{title} {symbol}" if symbol and self.kind in ("entry", "exit", "reversal") else title


def _number(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def pnl_text(detail: dict) -> str | None:
    """'+$123.40 (+4.20%)', or whichever half is known."""
    pnl, pct = _number(detail.get("pnl")), _number(detail.get("pnl_pct"))
    money = None if pnl is None else render.signed_money(pnl)
    percent = None if pct is None else render.pct(pct)
    if money and percent:
        return f"{money} ({percent})"
    return money or percent


def alert_fields(alert: Alert) -> list[tuple[str, str]]:
    detail = alert.detail
    fields = [("Symbol", str(detail["symbol"]))] if detail.get("symbol") else []
    pnl = pnl_text(detail)
    if pnl:
        fields.append(("P&L", pnl))
    for key, name in (("reason", "Reason"), ("score", "Score")):
        if detail.get(key) is not None:
            fields.append((name, str(detail[key])))
    return fields


def embed_colour(alert: Alert) -> int:
    """Exits green or red by P&L; critical and error alerts red; everything else neutral."""
    if alert.kind == "exit":
        pnl = _number(alert.detail.get("pnl"))
        pnl = pnl if pnl is not None else _number(alert.detail.get("pnl_pct"))
        if pnl is not None:
            return GREEN if pnl >= 0 else RED
    if alert.level in ("critical", "error"):
        return RED
    return NEUTRAL


def telegram_text(alert: Alert, mode: str) -> str:
    lines = [f"{alert.title} [{mode}]", alert.message] + [f"{name}: {value}" for name, value in alert_fields(alert)]
    return _truncate("\n".join(lines), TELEGRAM_TEXT_LIMIT)


def discord_body(alert: Alert, mode: str) -> dict:
    embed = {"title": f"{alert.title} [{mode}]"[:256],
             "description": _truncate(alert.message, DISCORD_DESCRIPTION_LIMIT),
             "color": embed_colour(alert),
             "fields": [{"name": name, "value": value[:1024], "inline": True} for name, value in alert_fields(alert)],
             "timestamp": alert.created_at}
    return {"embeds": [embed]}


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


# --- channels ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Channel:
    name: str
    url: str  # a secret: carries the bot token or is the webhook itself
    body: Callable[[Alert, str], dict]


def configured_channels(config: Config) -> list[Channel]:
    """The remote channels in ALERT_CHANNELS (config validation guarantees their credentials are set)."""
    channels = []
    if "telegram" in config.alert_channels and config.telegram_bot_token and config.telegram_chat_id:
        chat_id = config.telegram_chat_id
        channels.append(Channel("telegram", telegram_url(config, "sendMessage"),
                                lambda alert, mode: {"chat_id": chat_id, "text": telegram_text(alert, mode)}))
    if "discord" in config.alert_channels and config.discord_webhook_url:
        channels.append(Channel("discord", config.discord_webhook_url, discord_body))
    return channels


# --- the outbox -------------------------------------------------------------------------------------------------

@dataclass
class DispatchReport:
    alerts: int = 0  # alert events looked at
    sent: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)  # includes the ones given up
    gave_up: dict[str, int] = field(default_factory=dict)
    skipped: int = 0  # not sent on purpose (alerts off, stale)
    deferred: int = 0  # channel deliveries left for a later dispatch
    errors: dict[str, str] = field(default_factory=dict)  # channel -> last failure
    busy: bool = False  # another process was dispatching: its run delivers, or the next one does
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        if self.busy:
            return "alerts: another process is dispatching"
        parts = [f"{self.alerts} alert{'s' if self.alerts != 1 else ''}"]
        parts += [f"{channel} sent {count}" for channel, count in sorted(self.sent.items())]
        parts += [f"{channel} FAILED {count} ({self.errors.get(channel, '')})"
                  for channel, count in sorted(self.failed.items())]
        if self.deferred:
            parts.append(f"{self.deferred} deferred")
        if self.skipped:
            parts.append(f"{self.skipped} skipped")
        return "alerts: " + ", ".join(parts)


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[bool]:
    """True when this process holds the lock at `path`, False when another one does (locks.exclusive)."""
    with locks.exclusive(path) as fd:
        yield fd is not None


def dispatch(journal, config: Config, *, session: requests.Session | None = None,
             sleep: Callable[[float], None] = time.sleep) -> DispatchReport:
    """Deliver undelivered alert events to every configured channel. Never raises for a channel's trouble."""
    register_channel_secrets(config)
    started = time.monotonic()
    report = DispatchReport()
    with exclusive(Path(journal.path).with_name(Path(journal.path).name + ".alerts.lock")) as got_lock:
        if not got_lock:
            report.busy = True
            return report
        own = session is None
        session = session or requests.Session()
        try:
            _Outbox(journal, config, session, sleep, report, started).run()
        finally:
            if own:
                session.close()
    report.seconds = round(time.monotonic() - started, 3)
    return report


class _Outbox:
    """One dispatch call: walks the pending alerts oldest first, channel by channel, within the time budget."""

    def __init__(self, journal, config: Config, session: requests.Session, sleep: Callable[[float], None],
                 report: DispatchReport, started: float):
        self.journal, self.config, self.session, self.sleep, self.report = journal, config, session, sleep, report
        self.channels = configured_channels(config)
        self.deadline = started + DISPATCH_BUDGET_FACTOR * config.alert_timeout
        self.down: dict[str, str] = {}  # channels that failed in this call, with why
        self.failures: dict[str, list[int]] = {}  # channel -> event ids not delivered in this call
        self.alerts_on = journal.setting("alerts") == "on"
        self.now = datetime.fromisoformat(journal.now())

    def run(self) -> None:
        for row in self._pending_rows():
            alert = _alert_from(row)
            delivered = json.loads(row["delivered"]) if row["delivered"] else None
            if delivered is None:
                delivered = self._first_look(alert)
            self.report.alerts += 1
            self._deliver(alert, delivered)
        self._record_failures()

    def _pending_rows(self) -> list[dict]:
        # The LIKE filters only narrow the scan; _deliver decides exactly what is still owed.
        return self.journal.query(
            f"SELECT id, created_at, level, kind, source, message, detail, delivered FROM events "
            f"WHERE kind IN ({', '.join('?' * len(ALERT_KINDS))}) AND level IN "
            f"({', '.join('?' * len(DELIVERED_LEVELS))}) AND (delivered IS NULL OR delivered LIKE '%\"pending\"%' "
            f"OR delivered LIKE '%\"failed: %') ORDER BY id LIMIT ?",
            [*ALERT_KINDS, *DELIVERED_LEVELS, MAX_ALERTS_PER_DISPATCH])

    def _first_look(self, alert: Alert) -> dict:
        """Log the alert once, and decide which channels owe it."""
        log.info("alert: %s", alert.message, extra={"event_id": alert.event_id, "alert_level": alert.level,
                                                     "alert_kind": alert.kind, "alert_source": alert.source})
        delivered: dict[str, Any] = {"log": "sent"}
        skip = self._skip_reason(alert)
        for channel in self.channels:
            delivered[channel.name] = f"skipped: {skip}" if skip else "pending"
        if skip and self.channels:
            self.report.skipped += 1
        delivered["attempts"] = {}
        self._store(alert.event_id, delivered)
        return delivered

    def _skip_reason(self, alert: Alert) -> str | None:
        if not self.alerts_on and alert.level != "critical" and alert.kind != "test":
            return "alerts off"
        try:
            created = datetime.fromisoformat(alert.created_at)
        except ValueError:
            return None
        return "stale" if self.now - created > MAX_AGE else None

    def _deliver(self, alert: Alert, delivered: dict) -> None:
        attempts: dict[str, int] = delivered.setdefault("attempts", {})
        configured = {channel.name for channel in self.channels}
        for name, value in list(delivered.items()):
            if name not in ("log", "attempts") and name not in configured and _owed(value):
                delivered[name] = "skipped: channel no longer configured"
        for channel in self.channels:
            if not _owed(delivered.get(channel.name, "")):
                continue
            if channel.name in self.down or self.deadline - time.monotonic() < MIN_REQUEST_SECONDS:
                self.report.deferred += 1
                continue
            outcome = self._send(channel, alert)
            attempts[channel.name] = attempts.get(channel.name, 0) + 1
            delivered[channel.name] = self._result(channel.name, alert, outcome, attempts[channel.name])
            self._store(alert.event_id, delivered)

    def _send(self, channel: Channel, alert: Alert) -> HttpOutcome:
        return post_within_budget(self.session, channel.url, timeout=self.config.alert_timeout,
                                  deadline=self.deadline, sleep=self.sleep,
                                  json_body=channel.body(alert, self.config.mode))

    def _result(self, channel: str, alert: Alert, outcome: HttpOutcome, attempt: int) -> str:
        if outcome.ok:
            self.report.sent[channel] = self.report.sent.get(channel, 0) + 1
            return "sent"
        self.report.failed[channel] = self.report.failed.get(channel, 0) + 1
        self.report.errors[channel] = outcome.error
        self.failures.setdefault(channel, []).append(alert.event_id)
        if not outcome.message_specific:
            self.down[channel] = outcome.error
        log.warning("alert %s not delivered to %s (attempt %d of %d): %s", alert.event_id, channel, attempt,
                    MAX_ATTEMPTS, outcome.error)
        if attempt >= MAX_ATTEMPTS:
            self.report.gave_up[channel] = self.report.gave_up.get(channel, 0) + 1
            return f"gave up: {outcome.error}"
        return f"failed: {outcome.error}"

    def _store(self, event_id: int, delivered: dict) -> None:
        # Written after every send, so a process killed mid-dispatch does not send the same alert twice.
        self.journal.db.execute("UPDATE events SET delivered = ? WHERE id = ?", [json.dumps(delivered), event_id])
        self.journal.db.conn.commit()

    def _record_failures(self) -> None:
        for channel, event_ids in self.failures.items():
            gave_up = self.report.gave_up.get(channel, 0)
            message = (f"alert channel {channel}: {len(event_ids)} alert{'s' if len(event_ids) != 1 else ''} "
                       f"not delivered ({self.report.errors[channel]})"
                       + (f"; gave up on {gave_up} after {MAX_ATTEMPTS} attempts" if gave_up else ""))
            self.journal.event("warning", "alert_failure", redact(message), source="alerts",
                               detail={"channel": channel, "event_ids": event_ids,
                                       "error": self.report.errors[channel], "gave_up": gave_up})


def _owed(value: str) -> bool:
    return value == "pending" or value.startswith("failed: ")


def _alert_from(row: dict) -> Alert:
    try:
        detail = json.loads(row["detail"]) if row["detail"] else {}
    except ValueError:
        detail = {}
    return Alert(row["id"], row["created_at"], row["level"], row["kind"], row["source"], row["message"],
                 detail if isinstance(detail, dict) else {})


def delivery_of(journal, event_id: int) -> dict:
    """The `delivered` record of one event ({} before its first dispatch)."""
    row = journal.one("SELECT delivered FROM events WHERE id = ?", [event_id])
    return json.loads(row["delivered"]) if row and row["delivered"] else {}

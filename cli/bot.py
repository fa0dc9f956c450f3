"""Telegram commands (`bot poll`, run by cron every minute): long polling for most of that minute, each command
answered as it arrives and audited.

A poll listens for POLL_WINDOW seconds: getUpdates with `timeout` (at most LONG_POLL seconds) makes Telegram hold
the request until an update arrives, so a command is answered within a second or two of being sent, and the poll
ends before cron starts the next one. One poll runs at a time per journal (a lock beside it): a poll that finds the
lock held waits up to LOCK_WAIT seconds for the one before it to finish its last answer, then gives up its minute.

Only the user ids in TELEGRAM_ALLOWED_USERS may command the bot (authorised by message.from.id, since every member
of a group shares the chat id); anyone else is ignored, audited and logged, and gets no answer. /close, /set and
/halt only take effect after the same user replies YES within CONFIRM_WINDOW; any other message cancels.

Exactly once: before a command is acted on, its audit row (with its update_id) is written and the offset stored, so
a poll killed half-way never runs an update again (an update already audited is skipped); every getUpdates sends the
stored offset + 1, which confirms what was handled. Handlers call the same functions as the command line; their
answers are plain text. /weekly, /monthly and /metrics also send the equity chart as a photo. The alerts a batch
of commands records (a halt, an exit) are sent once it is answered, not when the poll ends.
"""
from __future__ import annotations

import importlib
import json
import logging
import re
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import requests

from common import locks
from common.errors import ConfigError, MomentumError, Unavailable
from config import RUNTIME_SETTINGS, parse_runtime_setting, redact
from ports import alerts

log = logging.getLogger(__name__)

CONFIRM_WINDOW = timedelta(minutes=5)
POLL_WINDOW = 55.0  # seconds a poll listens for commands: cron starts the next poll at the next minute
LONG_POLL = 25  # longest getUpdates wait, whole seconds (Telegram's unit); a proxy may cut a quieter connection
LOCK_WAIT = 5.0  # seconds a poll waits for the previous one to finish its last answer
OFFSET_STATE = "telegram_offset"
MESSAGE_LIMIT = 4096
MAX_REPLY_PARTS = 3  # a longer answer is cut: a chat is not the place for a 20-page table
SYMBOL = re.compile(r"^[A-Z][A-Z0-9.]{0,20}$")  # stocks and OCC option symbols

# Commands import the flows they answer with inside their functions: a poll with nothing to answer stays cheap.


# --- what arrives -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Incoming:
    update_id: int
    user_id: int | None
    chat_id: int | None
    username: str | None
    text: str
    sent_at: datetime | None  # when the user sent it (Telegram's message date)


def incoming_from(update: dict) -> Incoming | None:
    """The text message in an update, or None for anything else (edits, stickers, joins)."""
    message = update.get("message")
    if not isinstance(message, dict) or not isinstance(message.get("text"), str):
        return None
    sender = message.get("from") if isinstance(message.get("from"), dict) else {}
    chat = message.get("chat") if isinstance(message.get("chat"), dict) else {}
    date = message.get("date")
    return Incoming(update_id=int(update["update_id"]), user_id=_int(sender.get("id")), chat_id=_int(chat.get("id")),
                    username=sender.get("username"), text=message["text"].strip(),
                    sent_at=datetime.fromtimestamp(date, timezone.utc) if isinstance(date, (int, float)) else None)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def split_command(text: str) -> tuple[str | None, list[str]]:
    """'/set@MomentumBot autoclose 7' -> ('set', ['autoclose', '7']); plain text -> (None, words)."""
    words = text.split()
    if not words or not words[0].startswith("/"):
        return None, words
    return words[0][1:].split("@", 1)[0].lower(), words[1:]


def command_and_args(text: str) -> tuple[str, list[str]]:
    """What the audit records: the command name, or the first word of plain text ('YES'), and the rest."""
    name, args = split_command(text)
    if name is not None:
        return name, args
    return (args[0][:32], args[1:]) if args else ("", [])


# --- commands ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Call:
    rt: Any  # runtime.Runtime
    args: list[str]
    message: Incoming
    session: requests.Session


@dataclass(frozen=True)
class Command:
    usage: str
    help: str
    run: Callable[[Call], str]
    # For commands that change something: validates the arguments and returns what YES will do.
    confirm: Callable[[Call], str] | None = None


def _status(call: Call) -> str:
    from flows import operator

    return operator.mode_line(call.rt) + "\n" + operator.status_text(operator.status(call.rt))


def _positions(call: Call) -> str:
    from common import render
    from flows import operator

    rows = operator.positions(call.rt)
    if not rows:
        return "no open positions"
    # One line per position reads better on a phone than the terminal's wide table.
    stops = {"selling": "none, a sell is working", "none": "NONE: UNPROTECTED"}
    return "\n".join(
        f"{r['symbol']} x{r['qty']} @ {render.money(r['entry'])} -> {render.money(r['price'])}  P&L "
        f"{render.signed_money(r['pnl'])} ({render.pct(r['pnl_pct'])})  stop "
        + stops.get(operator.stop_state(r), f"{render.money(r['stop'])} ({render.pct(operator.distance_to_stop(r))})")
        + f"  [{r['status']}]" for r in operator.unprotected_first(rows))


def _close_symbol(call: Call) -> str:
    if len(call.args) != 1 or not SYMBOL.match(call.args[0].upper()):
        raise ConfigError("usage: /close SYMBOL")
    return call.args[0].upper()


def _confirm_close(call: Call) -> str:
    from flows import operator

    symbol = _close_symbol(call)
    if not call.rt.journal.held_trades("id", "symbol = ?", [symbol]):
        raise ConfigError(f"close: no open position in {symbol}")
    operator.require_market_open(call.rt, force=False, what="close")
    return f"close {symbol} at market"


def _close(call: Call) -> str:
    from flows import operator, scan_orders

    symbol = _close_symbol(call)
    operator.require_market_open(call.rt, force=False, what="close")
    return scan_orders.close_text(scan_orders.close_symbol(call.rt, symbol))


def _scan(call: Call) -> str:
    from flows import scan

    scan_type = call.args[0].lower() if call.args else scan.scan_type_for(call.rt.clock.now())
    results = scan.run_scan(call.rt, scan_type, "all", dry_run=True)
    lines = [f"DRY RUN {scan_type} scan (from Telegram scans never send orders)"]
    return "\n".join(lines + [scan.summary_line(result) for result in results])


def _errors(call: Call) -> str:
    rows = call.rt.journal.recent_errors(10)
    if not rows:
        return "no errors recorded"
    return "\n".join(f"{r['last_seen']} {r['level']} x{r['count']} [{r['source'] or '-'}] {r['message']}"
                     for r in rows)


def _settings(call: Call) -> str:
    values = call.rt.journal.settings()
    return "\n".join(f"{key} = {values[key]}" for key in RUNTIME_SETTINGS)


def _set_args(call: Call) -> tuple[str, str]:
    if len(call.args) != 2:
        raise ConfigError("usage: /set KEY VALUE (keys: " + ", ".join(RUNTIME_SETTINGS) + ")")
    key = call.args[0].lower()
    return key, parse_runtime_setting(key, call.args[1])


def _confirm_set(call: Call) -> str:
    key, value = _set_args(call)
    return f"set {key} to {value}"


def _set(call: Call) -> str:
    key, value = _set_args(call)
    stored = call.rt.journal.set_setting(key, value, by="telegram")
    call.rt.journal.event("info", "setting", f"setting {key} = {stored}", source="telegram")
    return f"{key} = {stored}"


def _halt(call: Call) -> str:
    from flows import scan_orders

    scan_orders.halt(call.rt, flatten=False)
    return "halted: no new buys until /resume (positions and their stops stay)"


def _resume(call: Call) -> str:
    from flows import scan_orders

    scan_orders.resume(call.rt)
    return "resumed: buying allowed"


# The reporting side, in one place: command -> (module, function names). A two-name entry is (data function, text
# function) composed as text(data(rt)).
REPORT_BINDINGS: dict[str, tuple[str, ...]] = {
    "metrics": ("flows.reports", "metrics", "metrics_text"),
    "weekly": ("flows.reports", "weekly", "weekly_text"),
    "monthly": ("flows.reports", "monthly", "monthly_text"),
    "export": ("journal.exports", "export_csv"),  # export_csv(rt, what, path)
    "chart": ("ports.charts", "equity_chart"),  # equity_chart(rt, path), sent with /weekly, /monthly, /metrics
}
CHART_FILE, CHART_CAPTION = "equity_vs_spy.png", "Equity vs SPY"
EXPORT_KINDS = ("trades", "candidates", "exits")
REPORTS_MISSING = "reports are not available in this version"


def reports_function(command: str) -> Callable:
    """The callable behind a report command (imported when first asked for: most polls answer no report)."""
    module_name, *names = REPORT_BINDINGS[command]
    module = importlib.import_module(module_name)
    functions = [getattr(module, name) for name in names]
    if len(functions) == 1:
        return functions[0]
    data_of, text_of = functions
    return lambda rt: text_of(data_of(rt))


def _report(command: str) -> Callable[[Call], str]:
    def run(call: Call) -> str:
        function = reports_function(command)
        return function(call.rt) if function is not None else REPORTS_MISSING
    return run


def _with_chart(command: str) -> Callable[[Call], str]:
    """A report answered as text and, first, the equity-vs-SPY chart as a photo (the PNG `report weekly` writes).
    A report without snapshots to chart, or a photo Telegram refuses, still gets its text, with a note why."""
    def run(call: Call) -> str:
        text = _report(command)(call)
        chart = reports_function("chart")
        if text == REPORTS_MISSING or chart is None:
            return text
        with tempfile.TemporaryDirectory() as folder:
            try:
                path = chart(call.rt, Path(folder) / CHART_FILE)
            except MomentumError as err:  # no snapshots yet: the text report still stands
                return f"{text}\n(no chart: {redact(str(err))})"
            sent = alerts.send_photo(call.rt.config, path, CHART_CAPTION, chat_id=call.message.chat_id,
                                     session=call.session)
        return text if sent else f"{text}\n(the chart could not be sent; see the log)"
    return run


def _export(call: Call) -> str:
    function = reports_function("export")
    if function is None:
        return REPORTS_MISSING
    what = call.args[0].lower() if call.args else "trades"
    if what not in EXPORT_KINDS:
        raise ConfigError(f"usage: /export [{'|'.join(EXPORT_KINDS)}]")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{what}_{call.rt.clock.today()}.csv"
        function(call.rt, what, path)
        sent = alerts.send_document(call.rt.config, path, f"{what} export", chat_id=call.message.chat_id,
                                    session=call.session)
    return f"{what} export sent as {path.name}" if sent else f"{what} export could not be sent (see the log)"


def _help(call: Call) -> str:
    return help_text()


COMMANDS: dict[str, Command] = {
    "status": Command("/status", "mode, market, account, halt state", _status),
    "positions": Command("/positions", "open positions with P&L and stop", _positions),
    "close": Command("/close SYMBOL", "close one position at market (asks YES)", _close, _confirm_close),
    "scan": Command("/scan [open|midday|close]", "a DRY-RUN scan of every cap (never orders)", _scan),
    "error": Command("/error", "the last 10 distinct errors", _errors),
    "settings": Command("/settings", "runtime settings", _settings),
    "set": Command("/set KEY VALUE", "change a runtime setting (asks YES)", _set, _confirm_set),
    "metrics": Command("/metrics", "performance since inception, with the equity chart", _with_chart("metrics")),
    "weekly": Command("/weekly", "the last completed week, with the equity chart", _with_chart("weekly")),
    "monthly": Command("/monthly", "the last completed month, with the equity chart", _with_chart("monthly")),
    "export": Command("/export [trades|candidates|exits]", "a CSV file of the journal", _export),
    "halt": Command("/halt", "stop buying; positions keep their stops (asks YES)", _halt,
                    lambda call: "halt trading (no new buys; positions and stops stay)"),
    "resume": Command("/resume", "allow buying again", _resume),
    "help": Command("/help", "this list", _help),
}
ALIASES = {"errors": "error", "start": "help"}


def help_text() -> str:
    return "Commands:\n" + "\n".join(f"{c.usage} - {c.help}" for c in COMMANDS.values())


# --- a poll -----------------------------------------------------------------------------------------------------

@dataclass
class PollReport:
    updates: int = 0
    answered: int = 0  # commands from allowed users that got an answer (confirmations included)
    unauthorised: int = 0
    ignored: int = 0  # not text messages, or already handled
    replies_failed: int = 0
    offset: int | None = None  # the last update_id acknowledged
    skipped: str | None = None  # why nothing was polled

    def summary(self) -> str:
        if self.skipped:
            return f"bot poll: {self.skipped}"
        parts = [f"{self.updates} update{'s' if self.updates != 1 else ''}", f"{self.answered} answered"]
        if self.unauthorised:
            parts.append(f"{self.unauthorised} unauthorised ignored")
        if self.ignored:
            parts.append(f"{self.ignored} other ignored")
        if self.replies_failed:
            parts.append(f"{self.replies_failed} replies not delivered")
        parts.append(f"offset {self.offset if self.offset is not None else '-'}")
        return "bot poll: " + ", ".join(parts)


def poll(rt, *, session: requests.Session | None = None, window: float | None = None,
         clock: Callable[[], float] = time.monotonic) -> PollReport:
    """Listen for `window` seconds (POLL_WINDOW), answering every update as it arrives, then return what was done.
    A window of 0 is one getUpdates that does not wait. Raises Unavailable if Telegram fails."""
    config = rt.config
    if not config.telegram_bot_token:
        return PollReport(skipped="Telegram is not configured (TELEGRAM_BOT_TOKEN is empty); nothing to do")
    deadline = clock() + (POLL_WINDOW if window is None else window)  # from the start: the lock wait counts too
    lock = Path(rt.journal.path).with_name(Path(rt.journal.path).name + ".bot.lock")
    with locks.exclusive_within(lock, LOCK_WAIT) as got_lock:
        if got_lock is None:
            return PollReport(skipped="another bot poll is running; skipped")
        own = session is None
        session = session or requests.Session()
        try:
            return _Poller(rt, session).run(deadline, clock)
        finally:
            if own:
                session.close()


class _Poller:
    def __init__(self, rt, session: requests.Session):
        self.rt, self.session, self.journal, self.config = rt, session, rt.journal, rt.config
        stored = self.journal.state(OFFSET_STATE)
        self.report = PollReport(offset=int(stored) if stored else None)
        self.reply_channel_down = False

    def run(self, deadline: float, clock: Callable[[], float]) -> PollReport:
        """getUpdates until less than a second of the window is left (at least once), each batch handled at once and
        the alerts its commands recorded (a halt, an exit) sent then, not when the poll ends."""
        while True:
            wait = max(0, int(min(LONG_POLL, deadline - clock())))
            updates = self._fetch(wait)
            for update in updates:
                self.report.updates += 1
                self._handle(update)
            if updates:
                self._deliver_alerts()
            if deadline - clock() < 1.0:
                return self.report

    def _deliver_alerts(self) -> None:
        delivery = alerts.dispatch(self.journal, self.config)
        if delivery.errors:
            log.warning("alert delivery: %s", delivery.summary())

    def _fetch(self, wait: int) -> list[dict]:
        payload: dict[str, Any] = {"timeout": wait, "allowed_updates": ["message"]}
        if self.report.offset is not None:
            payload["offset"] = self.report.offset + 1
        # the request may take the whole wait: Telegram answers when an update arrives or the wait is over
        outcome = alerts.telegram_call(self.config, "getUpdates", session=self.session, json_body=payload,
                                       timeout=wait + self.config.alert_timeout)
        if outcome.status in (401, 404):  # Telegram's answers to a wrong or revoked token
            raise ConfigError(f"Telegram refused the bot token ({outcome.error}); check TELEGRAM_BOT_TOKEN")
        if not outcome.ok:
            raise Unavailable(f"telegram getUpdates failed: {outcome.error}")
        result = outcome.body.get("result") if isinstance(outcome.body, dict) else None
        if not isinstance(result, list):
            raise Unavailable("telegram getUpdates: the answer has no list of updates")
        valid = [u for u in result if isinstance(u, dict) and isinstance(u.get("update_id"), int)]
        return sorted(valid, key=lambda u: u["update_id"])

    def _acknowledge(self, update_id: int) -> None:
        if self.report.offset is None or update_id > self.report.offset:
            self.journal.set_state(OFFSET_STATE, str(update_id))
            self.report.offset = update_id

    def _handle(self, update: dict) -> None:
        update_id = update["update_id"]
        message = incoming_from(update)
        already = self.journal.one("SELECT id FROM bot_commands WHERE update_id = ?", [update_id])
        if message is None or already is not None:
            self.report.ignored += 1
            self._acknowledge(update_id)
            return
        if not self._authorised(message):
            self._refuse(message)
            self._acknowledge(update_id)
            return
        audit_id = self._audit(message, *command_and_args(message.text))
        self._acknowledge(update_id)  # from here on the update counts as handled, whatever happens
        status, answer = self._respond(message, audit_id)
        self._finish(audit_id, status, answer)
        self.report.answered += 1
        self._reply(message, answer)

    # -- authorisation --
    def _authorised(self, message: Incoming) -> bool:
        allowed = set(self.config.telegram_allowed_users)
        return message.user_id is not None and str(message.user_id) in allowed

    def _refuse(self, message: Incoming) -> None:
        self._audit(message, *command_and_args(message.text), authorised=False, status="unauthorised")
        self.journal.event("warning", "bot_unauthorised",
                           f"telegram: ignored a message from user {message.user_id} (@{message.username or '-'}) "
                           f"who is not in TELEGRAM_ALLOWED_USERS", source="bot",
                           detail={"user_id": message.user_id, "chat_id": message.chat_id,
                                   "text": message.text[:100]})
        log.warning("telegram: ignored user %s (not allowed)", message.user_id)
        self.report.unauthorised += 1

    # -- audit --
    def _audit(self, message: Incoming, command: str, args: list[str], *, authorised: bool = True,
               status: str = "received") -> int:
        row = {"update_id": message.update_id, "user_id": message.user_id, "chat_id": message.chat_id,
               "username": message.username, "command": command, "args": json.dumps(args),
               "authorised": int(authorised), "status": status, "response": None, "created_at": self.journal.now(),
               "confirmed_at": None}
        audit_id = self.journal.db.table("bot_commands").insert(row).last_pk
        self.journal.db.conn.commit()
        return audit_id

    def _finish(self, audit_id: int, status: str, answer: str, *, confirmed: bool = False) -> None:
        self.journal.db.execute(
            "UPDATE bot_commands SET status = ?, response = ?, confirmed_at = COALESCE(?, confirmed_at) WHERE id = ?",
            [status, redact(answer)[:MESSAGE_LIMIT * MAX_REPLY_PARTS], self.journal.now() if confirmed else None,
             audit_id])
        self.journal.db.conn.commit()

    # -- answers --
    def _respond(self, message: Incoming, audit_id: int) -> tuple[str, str]:
        pending = self._pending(message.user_id)
        is_yes = message.text.strip().upper() == "YES"
        if pending is not None and not is_yes and self._expired(message, pending):
            self._finish(pending["id"], "expired", "confirmation expired")  # long gone: nothing to cancel
            pending = None
        if pending is not None:
            if is_yes:
                return self._confirm(message, pending)
            self._finish(pending["id"], "cancelled", "cancelled by the next message")
            name, _ = split_command(message.text)
            if name is None:
                return "cancelled", f"Cancelled /{pending['command']}."
            status, answer = self._command(message)
            return status, f"Cancelled /{pending['command']}.\n{answer}"
        if is_yes:
            return "nothing_pending", "Nothing to confirm."
        return self._command(message)

    def _command(self, message: Incoming) -> tuple[str, str]:
        name, args = split_command(message.text)
        spec = COMMANDS.get(ALIASES.get(name or "", name or ""))
        if spec is None:
            return "unknown", ("Unknown command.\n" if name else "") + help_text()
        call = Call(self.rt, args, message, self.session)
        if spec.confirm is None:
            return self._execute(spec, call)
        try:
            action = spec.confirm(call)
        except MomentumError as err:
            return "refused", f"error: {redact(str(err))}"
        minutes = int(CONFIRM_WINDOW.total_seconds() // 60)
        return "awaiting_confirmation", f"Confirm: reply YES to {action} (expires in {minutes} minutes)"

    def _execute(self, spec: Command, call: Call) -> tuple[str, str]:
        try:
            return "done", spec.run(call)
        except MomentumError as err:
            return "error", f"error: {redact(str(err))}"
        except Exception as err:  # noqa: BLE001 - one failing command must not strand the updates queued after it
            log.exception("telegram command %s failed", call.message.text.split()[0])
            text = redact(f"{type(err).__name__}: {err}")
            self.journal.event("error", "bot_error", f"telegram command failed: {text}", source="bot")
            return "failed", f"error: unexpected failure ({text}); details in the log"

    # -- confirmations --
    def _pending(self, user_id: int | None) -> dict | None:
        return self.journal.one(
            "SELECT * FROM bot_commands WHERE user_id = ? AND status = 'awaiting_confirmation' AND authorised = 1 "
            "ORDER BY id DESC LIMIT 1", [user_id])

    def _confirm(self, message: Incoming, pending: dict) -> tuple[str, str]:
        if self._expired(message, pending):
            self._finish(pending["id"], "expired", "confirmation expired")
            return "expired", f"Confirmation expired: send /{pending['command']} again."
        spec = COMMANDS[ALIASES.get(pending["command"], pending["command"])]
        call = Call(self.rt, json.loads(pending["args"] or "[]"), message, self.session)
        status, answer = self._execute(spec, call)
        self._finish(pending["id"], status, answer, confirmed=True)
        return "confirmed", answer

    def _expired(self, message: Incoming, pending: dict) -> bool:
        now = self.rt.clock.now()
        if now - datetime.fromisoformat(pending["created_at"]) > CONFIRM_WINDOW:
            return True
        # A YES that waited in Telegram's queue (the bot was down) is stale: the market has moved since it was sent.
        # A simulated clock says nothing about when a real message was sent, so this check needs real time.
        return (not self.rt.clock.simulated and message.sent_at is not None
                and now - message.sent_at > CONFIRM_WINDOW)

    # -- replies --
    def _reply(self, message: Incoming, answer: str) -> None:
        if message.chat_id is None:
            return
        for part in reply_parts(answer):
            if self.reply_channel_down:
                self.report.replies_failed += 1
                continue
            outcome = alerts.telegram_call(self.config, "sendMessage", session=self.session,
                                           json_body={"chat_id": message.chat_id, "text": part})
            if not outcome.ok:
                log.warning("telegram reply to %s not delivered: %s", message.chat_id, outcome.error)
                self.report.replies_failed += 1
                self.reply_channel_down = not outcome.message_specific


def reply_parts(text: str, limit: int = MESSAGE_LIMIT, max_parts: int = MAX_REPLY_PARTS) -> list[str]:
    """Split on line breaks into messages of at most `limit` characters; beyond `max_parts`, cut with a note."""
    parts: list[str] = []
    current = ""
    for line in (text or "(empty)").splitlines() or [""]:
        while len(line) > limit:  # a single overlong line is cut into pieces
            parts, current = _flush(parts, current), ""
            parts.append(line[:limit])
            line = line[limit:]
        candidate = f"{current}\n{line}" if current else line
        if len(candidate) > limit:
            parts, current = _flush(parts, current), line
        else:
            current = candidate
    parts = _flush(parts, current)
    if len(parts) > max_parts:
        note = "\n[cut: the answer is too long for a chat]"
        parts = parts[:max_parts]
        parts[-1] = parts[-1][:limit - len(note)] + note
    return parts


def _flush(parts: list[str], current: str) -> list[str]:
    return parts + [current] if current else parts

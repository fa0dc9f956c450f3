"""The Telegram bot through `bot poll`, against the local fake Bot API: answers, allowlist, confirmations, audit."""
from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import bot
from common.types import OrderRequest
from config import load_config
from flows.runtime import Runtime
from main import cli

from fake_chat_servers import DEFAULT_DATE, closed_port_url
from ports import alerts

OWNER, PARTNER, STRANGER = 111, 222, 999
ASOF = "2016-11-09T10:30"


@pytest.fixture
def env(tmp_path, monkeypatch, fake_telegram):
    """A private journal, the fake Bot API, two allowed users; alerts stay in the log so replies are all we see."""
    for name in ("MOMENTUM_DB", "DATA_SOURCE", "BROKER", "MOMENTUM_ASOF", "UNIVERSE_FILE", "MARKET_DATA",
                 "TELEGRAM_CHAT_ID", "DISCORD_WEBHOOK_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MOMENTUM_DB", str(tmp_path / "trades.db"))
    monkeypatch.setenv("LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setenv("CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("ALERT_CHANNELS", "log")
    monkeypatch.setenv("ALERT_TIMEOUT", "1")
    monkeypatch.setenv("TELEGRAM_BASE_URL", fake_telegram.url)
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", fake_telegram.token)
    monkeypatch.setenv("TELEGRAM_ALLOWED_USERS", f"{OWNER},{PARTNER}")
    return tmp_path


@pytest.fixture(autouse=True)
def _one_call_per_poll(monkeypatch):
    """Each `bot poll` here makes one getUpdates that does not wait, unless a test sets a listening window."""
    monkeypatch.setattr(bot, "POLL_WINDOW", 0.0)
    monkeypatch.setattr(bot, "LOCK_WAIT", 0.1)


def poll(asof: str = ASOF):
    result = CliRunner().invoke(cli, ["--asof", asof, "bot", "poll"] if asof else ["bot", "poll"],
                                catch_exceptions=False)
    return result


def rows(env: Path, sql: str) -> list[list]:
    with sqlite3.connect(env / "trades.db") as conn:
        return [list(row) for row in conn.execute(sql)]


def audit(env: Path) -> list[list]:
    return rows(env, "SELECT update_id, user_id, command, args, authorised, status FROM bot_commands ORDER BY id")


def setting(env: Path, key: str) -> str | None:
    found = rows(env, f"SELECT value FROM settings WHERE key = '{key}'")
    return found[0][0] if found else None


def test_status_is_answered_and_audited(env, fake_telegram):
    fake_telegram.add_message(OWNER, "/status")
    result = poll()
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == "bot poll: 1 update, 1 answered, offset 1000"
    (request,) = fake_telegram.calls("getUpdates")
    assert request.json == {"timeout": 0, "allowed_updates": ["message"]}
    assert request.path == f"/bot{fake_telegram.token}/getUpdates"
    (answer,) = fake_telegram.sent_texts(OWNER)
    lines = answer.splitlines()
    assert lines[0] == "mode: SIM (embedded simulated broker, no real orders) | simulated time 2016-11-09 10:30 EST"
    fields = {key: value.strip() for key, value in (line.split("  ", 1) for line in lines[1:])}
    assert fields["equity"] == "$100,000.00" and fields["halted"] == "no"
    assert rows(env, "SELECT update_id, user_id, chat_id, username, command, args, authorised, status, created_at, "
                     "confirmed_at FROM bot_commands") == [
        [1000, OWNER, OWNER, f"user{OWNER}", "status", "[]", 1, "done", "2016-11-09T15:30:00+00:00", None]]
    assert rows(env, "SELECT response FROM bot_commands")[0][0] == answer


def test_a_stranger_is_ignored_and_audited_even_in_a_shared_group(env, fake_telegram):
    group = -100500
    fake_telegram.add_message(STRANGER, "/halt", chat_id=group, username="mallory")
    fake_telegram.add_message(STRANGER, "YES", chat_id=group, username="mallory")
    fake_telegram.add_message(OWNER, "/settings", chat_id=group)
    result = poll()
    assert result.stdout.splitlines()[-1] == "bot poll: 3 updates, 1 answered, 2 unauthorised ignored, offset 1002"
    # Only the allowed member of the group gets an answer; the stranger gets nothing at all.
    assert [r.json["chat_id"] for r in fake_telegram.calls("sendMessage")] == [group]
    assert fake_telegram.sent_texts()[0].splitlines()[0] == "autoclose = on"
    assert audit(env) == [[1000, STRANGER, "halt", "[]", 0, "unauthorised"],
                          [1001, STRANGER, "YES", "[]", 0, "unauthorised"],
                          [1002, OWNER, "settings", "[]", 1, "done"]]
    warnings = rows(env, "SELECT level, message FROM events WHERE kind = 'bot_unauthorised'")
    assert warnings[0] == ["warning", f"telegram: ignored a message from user {STRANGER} (@mallory) who is not in "
                                      "TELEGRAM_ALLOWED_USERS"] and len(warnings) == 2
    assert setting(env, "halt") is None


def test_set_applies_only_after_yes(env, fake_telegram):
    fake_telegram.add_message(OWNER, "/set autoclose_threshold 7")
    poll()
    assert fake_telegram.sent_texts(OWNER) == [
        "Confirm: reply YES to set autoclose_threshold to 7 (expires in 5 minutes)"]
    assert setting(env, "autoclose_threshold") is None
    fake_telegram.add_message(OWNER, "yes", date=DEFAULT_DATE + 90)
    poll("2016-11-09T10:32")
    assert fake_telegram.sent_texts(OWNER)[1] == "autoclose_threshold = 7"
    assert rows(env, "SELECT value, updated_by FROM settings WHERE key = 'autoclose_threshold'") == [["7", "telegram"]]
    assert audit(env) == [[1000, OWNER, "set", '["autoclose_threshold", "7"]', 1, "done"],
                          [1001, OWNER, "yes", "[]", 1, "confirmed"]]
    assert rows(env, "SELECT confirmed_at FROM bot_commands ORDER BY id") == [["2016-11-09T15:32:00+00:00"], [None]]


@pytest.mark.parametrize("follow_up, answer", [
    ("no", "Cancelled /set."),
    ("/settings", "Cancelled /set.\nautoclose = on"),
])
def test_anything_but_yes_cancels(env, fake_telegram, follow_up, answer):
    fake_telegram.add_message(OWNER, "/set autoclose_threshold 7")
    fake_telegram.add_message(OWNER, follow_up)
    fake_telegram.add_message(OWNER, "YES")
    poll()
    replies = fake_telegram.sent_texts(OWNER)
    assert replies[1].startswith(answer)
    assert replies[2] == "Nothing to confirm."
    assert setting(env, "autoclose_threshold") is None
    assert [row[5] for row in audit(env)] == ["cancelled", "cancelled" if follow_up == "no" else "done",
                                             "nothing_pending"]


def test_an_expired_confirmation_does_nothing(env, fake_telegram):
    fake_telegram.add_message(OWNER, "/set autoclose_threshold 7")
    poll("2016-11-09T10:30")
    fake_telegram.add_message(OWNER, "YES", date=DEFAULT_DATE + 400)
    poll("2016-11-09T10:36")
    assert fake_telegram.sent_texts(OWNER)[1] == "Confirmation expired: send /set again."
    assert setting(env, "autoclose_threshold") is None
    assert [row[5] for row in audit(env)] == ["expired", "expired"]


def test_a_yes_that_waited_in_the_queue_is_stale(env, fake_telegram):
    """With the real clock, a YES sent more than five minutes ago (the bot was down) does not act."""
    now = int(time.time())
    fake_telegram.add_message(OWNER, "/set autoclose_threshold 7", date=now - 660)
    fake_telegram.add_message(OWNER, "YES", date=now - 600)
    poll(asof="")
    assert fake_telegram.sent_texts(OWNER)[1] == "Confirmation expired: send /set again."
    assert setting(env, "autoclose_threshold") is None


def test_a_long_expired_request_is_dropped_quietly(env, fake_telegram):
    fake_telegram.add_message(OWNER, "/set autoclose_threshold 7")
    poll("2016-11-09T10:30")
    fake_telegram.add_message(OWNER, "/settings", date=DEFAULT_DATE + 3600)
    poll("2016-11-09T11:30")
    assert fake_telegram.sent_texts(OWNER)[1].splitlines()[0] == "autoclose = on"  # no "Cancelled /set."
    assert [row[5] for row in audit(env)] == ["expired", "done"]


def test_halt_needs_confirmation_from_the_same_user(env, fake_telegram):
    fake_telegram.add_message(OWNER, "/halt")
    fake_telegram.add_message(PARTNER, "YES")
    poll()
    assert fake_telegram.sent_texts(OWNER) == [
        "Confirm: reply YES to halt trading (no new buys; positions and stops stay) (expires in 5 minutes)"]
    assert fake_telegram.sent_texts(PARTNER) == ["Nothing to confirm."]
    assert setting(env, "halt") is None
    fake_telegram.add_message(OWNER, "YES", date=DEFAULT_DATE + 60)
    poll("2016-11-09T10:31")
    assert fake_telegram.sent_texts(OWNER)[1] == "halted: no new buys until /resume (positions and their stops stay)"
    assert setting(env, "halt") == "on"
    assert rows(env, "SELECT level, message FROM events WHERE kind = 'alert'") == [
        ["critical", "trading HALTED by the operator"]]
    fake_telegram.add_message(OWNER, "/resume", date=DEFAULT_DATE + 120)
    poll("2016-11-09T10:32")
    assert fake_telegram.sent_texts(OWNER)[2] == "resumed: buying allowed" and setting(env, "halt") == "off"


def test_bad_arguments_are_refused_without_asking_for_confirmation(env, fake_telegram):
    fake_telegram.add_message(OWNER, "/set volume 11")
    fake_telegram.add_message(OWNER, "/set autoclose_threshold 2")
    fake_telegram.add_message(OWNER, "/close AAPL")
    fake_telegram.add_message(OWNER, "YES")
    poll()
    assert fake_telegram.sent_texts(OWNER) == [
        "error: set: unknown setting 'volume' (known: autoclose, autoclose_threshold, alerts, skip_buys, halt, "
        "options_trading, ranking)",
        "error: set autoclose_threshold: must be between 3 and 10 (got '2')",
        "error: close: no open position in AAPL",
        "Nothing to confirm."]
    assert [row[5] for row in audit(env)] == ["refused", "refused", "refused", "nothing_pending"]


def test_the_offset_is_advanced_so_nothing_is_processed_twice(env, fake_telegram):
    fake_telegram.add_message(OWNER, "/settings")
    fake_telegram.add_message(OWNER, "/help")
    assert poll().stdout.splitlines()[-1] == "bot poll: 2 updates, 2 answered, offset 1001"
    assert rows(env, "SELECT value FROM state WHERE key = 'telegram_offset'") == [["1001"]]
    assert poll().stdout.splitlines()[-1] == "bot poll: 0 updates, 0 answered, offset 1001"
    assert fake_telegram.offsets() == [None, 1002]
    assert len(fake_telegram.sent_texts()) == 2 and len(audit(env)) == 2


def test_an_update_already_audited_is_not_run_again(env, fake_telegram):
    """A poll killed after the audit row but before the offset was stored: the next poll skips the update."""
    fake_telegram.add_message(OWNER, "/resume")
    poll()
    with sqlite3.connect(env / "trades.db") as conn:
        conn.execute("DELETE FROM state WHERE key = 'telegram_offset'")
    assert poll().stdout.splitlines()[-1] == "bot poll: 1 update, 0 answered, 1 other ignored, offset 1000"
    assert len(fake_telegram.sent_texts()) == 1
    assert rows(env, "SELECT COUNT(*) FROM events WHERE message = 'trading resumed by the operator'") == [[1]]


@pytest.mark.parametrize("text, first_line", [
    ("/frobnicate", "Unknown command."),
    ("hello bot", "Commands:"),
    ("/help", "Commands:"),
])
def test_unknown_commands_get_help(env, fake_telegram, text, first_line):
    fake_telegram.add_message(OWNER, text)
    poll()
    (answer,) = fake_telegram.sent_texts(OWNER)
    lines = answer.splitlines()
    assert lines[0] == first_line
    assert "/status - mode, market, account, halt state" in lines
    assert "/set KEY VALUE - change a runtime setting (asks YES)" in lines
    assert len([line for line in lines if line.startswith("/")]) == len(bot.COMMANDS)


def test_scan_from_telegram_is_a_dry_run(env, fake_telegram):
    fake_telegram.add_message(OWNER, "/scan@MomentumBot midday")
    poll("2016-11-09T12:30")
    (answer,) = fake_telegram.sent_texts(OWNER)
    lines = answer.splitlines()
    assert lines[0] == "DRY RUN midday scan (from Telegram scans never send orders)"
    assert [line.split(":")[0] for line in lines[1:]] == ["large", "mid", "small"]
    assert rows(env, "SELECT type, cap, dry_run FROM scans ORDER BY id") == [
        ["midday", "large", 1], ["midday", "mid", 1], ["midday", "small", 1]]
    assert rows(env, "SELECT COUNT(*) FROM orders") == [[0]]


def test_positions_and_errors(env, fake_telegram):
    fake_telegram.add_message(OWNER, "/positions")
    fake_telegram.add_message(OWNER, "/error")
    poll()
    assert fake_telegram.sent_texts(OWNER) == ["no open positions", "no errors recorded"]


def test_positions_show_the_stop_the_broker_holds_now(env, fake_telegram, fake_alpaca, monkeypatch):
    for name, value in {"BROKER": "alpaca", "ALPACA_API_KEY": "PKBOTSTOPS12345", "ALPACA_SECRET_KEY": "botsecret12345",
                        "ALPACA_TRADING_URL": fake_alpaca.url}.items():
        monkeypatch.setenv(name, value)
    fake_alpaca.set_price("AAPL", 106.73)
    fake_alpaca.set_position("AAPL", 10, 100.0)
    rt = Runtime(load_config({"MOMENTUM_ASOF": ASOF}))
    stop = rt.broker.submit(OrderRequest("s-AAPL-1", "AAPL", "sell", "trailing_stop", 10, "gtc", trail_percent=5.0))
    rt.journal.insert_row("trades", {"symbol": "AAPL", "qty": 10, "status": "open", "entry_price": 100.0,
                                     "trailing_stop_price": stop.stop_price, "stop_order_id": stop.id})
    rt.close()
    assert stop.stop_price == 101.39
    fake_alpaca.trade_at("AAPL", 116.19)  # the broker's trailing stop follows the new high; the journal's does not
    fake_telegram.add_message(OWNER, "/positions")
    poll()
    (answer,) = fake_telegram.sent_texts(OWNER)
    assert answer == "AAPL x10 @ $100.00 -> $116.19  P&L +$161.90 (+16.19%)  stop $110.38 (-5.00%)  [open]"


def test_reports_answer_plainly_when_the_reports_module_is_missing(env, fake_telegram, monkeypatch):
    monkeypatch.setattr(bot, "reports_function", lambda command: None)
    for command in ("/metrics", "/weekly", "/monthly", "/export"):
        fake_telegram.add_message(OWNER, command)
    poll()
    assert fake_telegram.sent_texts(OWNER) == [bot.REPORTS_MISSING] * 4


def test_reports_and_export_use_the_reports_module(env, fake_telegram, monkeypatch):
    exported: list[tuple[str, str]] = []

    def export_csv(rt, what, path):
        Path(path).write_text("id,symbol\n1,AAPL\n")
        exported.append((what, Path(path).name))

    functions = {"metrics": lambda rt: "total return +1.00%", "weekly": lambda rt: "week 45", "export": export_csv}
    monkeypatch.setattr(bot, "reports_function", functions.get)
    for command in ("/metrics", "/weekly", "/export trades"):
        fake_telegram.add_message(OWNER, command)
    poll()
    assert fake_telegram.sent_texts(OWNER) == ["total return +1.00%", "week 45",
                                               "trades export sent as trades_2016-11-09.csv"]
    (document,) = fake_telegram.calls("sendDocument")
    assert document.fields == {"chat_id": str(OWNER), "caption": "trades export"}
    assert document.files == {"document": ("trades_2016-11-09.csv", b"id,symbol\n1,AAPL\n")}
    assert exported == [("trades", "trades_2016-11-09.csv")]


def test_reports_through_the_real_reporting_modules(env, fake_telegram):
    poll()  # creates the journal
    with sqlite3.connect(env / "trades.db") as conn:
        conn.executemany(
            "INSERT INTO daily_performance (date, equity, cash, exposure, exposure_pct, day_pnl, day_pnl_pct, "
            "trades_opened, trades_closed, spy_close, spy_change_pct, cum_return_pct, spy_cum_return_pct, created_at) "
            "VALUES (?, ?, ?, 0, 0, 250, 0.25, 0, 0, ?, 0.4, ?, ?, '2016-11-09T21:05:00+00:00')",
            [(f"2016-11-0{day}", 100000 + 250 * n, 100000 + 250 * n, 210 + n, 0.25 * n, 0.4 * n)
             for n, day in enumerate((1, 2, 3, 4, 7, 8), start=1)])
    for command in ("/metrics", "/weekly", "/monthly", "/export trades"):
        fake_telegram.add_message(OWNER, command)
    poll()
    answers = fake_telegram.sent_texts(OWNER)
    assert len(answers) == 4
    assert not [a for a in answers if a == bot.REPORTS_MISSING or a.startswith("error")], answers
    assert answers[3] == "trades export sent as trades_2016-11-09.csv"
    photos = fake_telegram.sent_photos(OWNER)  # /metrics, /weekly and /monthly each send the chart first
    assert [(name, caption) for name, _, caption in photos] == [("equity_vs_spy.png", "Equity vs SPY")] * 3
    assert all(content[:4] == b"\x89PNG" for _, content, _ in photos)
    (first, *_) = fake_telegram.calls("sendPhoto")
    assert first.fields == {"chat_id": str(OWNER), "caption": "Equity vs SPY"}
    assert [r.api_method for r in fake_telegram.requests if r.api_method.startswith("send")][:2] == [
        "sendPhoto", "sendMessage"]
    (document,) = fake_telegram.calls("sendDocument")
    assert document.files["document"][1].startswith(b"id,symbol,")


def test_a_chart_telegram_refuses_still_leaves_the_text_with_a_note(env, fake_telegram):
    poll()  # creates the journal
    with sqlite3.connect(env / "trades.db") as conn:
        conn.execute("INSERT INTO daily_performance (date, equity, cash, spy_close, created_at) "
                     "VALUES ('2016-11-08', 100000, 100000, 210, '2016-11-08T21:05:00+00:00')")
    fake_telegram.fail_next(400, api="sendPhoto", description="Bad Request: IMAGE_PROCESS_FAILED")
    fake_telegram.add_message(OWNER, "/metrics")
    fake_telegram.add_message(OWNER, "/monthly")
    poll()
    first, second = fake_telegram.sent_texts(OWNER)
    assert first.endswith("\n(the chart could not be sent; see the log)")
    assert not second.endswith("see the log)") and len(fake_telegram.sent_photos(OWNER)) == 1


def test_without_snapshots_a_report_says_why_it_has_no_chart(env, fake_telegram):
    fake_telegram.add_message(OWNER, "/metrics")
    poll()
    (answer,) = fake_telegram.sent_texts(OWNER)
    assert answer.splitlines()[-1] == ("(no chart: no daily snapshots to chart yet: run `jobs daily-snapshot` after "
                                       "a session)")
    assert fake_telegram.calls("sendPhoto") == []


def test_the_fake_bot_api_checks_photos_as_telegram_does(tmp_path, fake_telegram):
    config = load_config({"TELEGRAM_BASE_URL": fake_telegram.url, "TELEGRAM_BOT_TOKEN": fake_telegram.token,
                          "TELEGRAM_CHAT_ID": "-100777", "MOMENTUM_DB": str(tmp_path / "trades.db")}, environ={},
                         dotenv_path=tmp_path / "no.env")
    not_an_image = tmp_path / "chart.png"
    not_an_image.write_bytes(b"<html>oops</html>")
    assert alerts.send_photo(config, not_an_image, "x") is False
    png = tmp_path / "tiny.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x03\x84\x00\x00\x01\xc2" + b"\x00" * 40)
    assert alerts.send_photo(config, png, "y" * 1500) is True  # the product cuts a caption to Telegram's 1024
    assert alerts.send_photo(config, png, "Equity vs SPY") is True
    assert [caption for _, _, caption in fake_telegram.sent_photos("-100777")] == ["y" * 1024, "Equity vs SPY"]
    outcome = alerts.telegram_call(config, "sendPhoto", data={"chat_id": "-100777"},
                                   files={"photo": ("tiny.png", png.read_bytes())})
    assert outcome.body["result"]["photo"][0]["width"] == 900 and outcome.body["result"]["photo"][0]["height"] == 450
    for data, content, error in (
            ({"chat_id": "-100777"}, not_an_image.read_bytes(), "HTTP 400: Bad Request: IMAGE_PROCESS_FAILED"),
            ({"chat_id": "-100777", "caption": "y" * 1025}, png.read_bytes(),
             "HTTP 400: Bad Request: message caption is too long"),
            ({}, png.read_bytes(), "HTTP 400: Bad Request: chat not found")):
        failed = alerts.telegram_call(config, "sendPhoto", data=data, files={"photo": ("chart.png", content)})
        assert failed.error == error
    assert len(fake_telegram.sent_photos()) == 3


# --- long polling -------------------------------------------------------------------------------------------------

class Poller(threading.Thread):
    """`bot poll` over its own runtime in a thread, as a second cron run of it would be in a second process."""

    def __init__(self, window: float):
        super().__init__(daemon=True)
        self.window, self.report, self.error = window, None, None
        self.started_at = self.ended_at = 0.0

    def run(self) -> None:
        self.started_at = time.monotonic()
        rt = Runtime(load_config({"MOMENTUM_ASOF": ASOF}))
        try:
            self.report = bot.poll(rt, window=self.window)
        except Exception as err:  # noqa: BLE001 - re-raised by the test
            self.error = err
        finally:
            rt.close()
            self.ended_at = time.monotonic()

    def result(self) -> bot.PollReport:
        self.join(timeout=30)
        assert not self.is_alive() and self.error is None, self.error
        return self.report


def answered_after(fake, text_start: str, sent_at: float) -> float:
    """Seconds from queueing a message to the reply's arrival at the fake (the one reply starting text_start)."""
    (reply,) = [r for r in fake.calls("sendMessage") if r.json["text"].startswith(text_start)]
    return reply.at - sent_at


def test_an_update_is_answered_as_it_arrives_while_the_poll_listens(env, fake_telegram):
    poll()  # creates the journal, so the thread's runtime only opens it
    listener = Poller(window=2.0)
    listener.start()
    time.sleep(0.4)
    sent_at = time.monotonic()
    fake_telegram.add_message(OWNER, "/settings")
    report = listener.result()
    assert answered_after(fake_telegram, "autoclose = on", sent_at) < 0.5
    assert (report.updates, report.answered, report.offset) == (1, 1, 1000)
    waits = [r.json["timeout"] for r in fake_telegram.calls("getUpdates")[1:]]
    assert waits[:2] == [1, 1]  # whole seconds, never beyond the window; it goes on listening after an answer
    assert 1.2 <= listener.ended_at - listener.started_at < 3.0  # it listens for its window, then ends


@pytest.mark.slow
def test_an_update_two_seconds_into_the_poll_is_answered_within_a_second(env, fake_telegram):
    poll()
    listener = Poller(window=4.0)
    listener.start()
    time.sleep(2.0)
    sent_at = time.monotonic()
    fake_telegram.add_message(OWNER, "/help")
    report = listener.result()
    assert answered_after(fake_telegram, "Commands:", sent_at) < 1.0
    assert report.answered == 1 and 3.0 <= listener.ended_at - listener.started_at < 5.5
    assert fake_telegram.conflicts == 0


def test_overlapping_polls_never_answer_twice(env, fake_telegram, monkeypatch):
    poll()
    monkeypatch.setattr(bot, "LOCK_WAIT", 0.2)
    first = Poller(window=1.5)
    first.start()
    time.sleep(0.2)
    second = Poller(window=1.5)  # started while the first listens: it waits briefly, then gives up its turn
    second.start()
    fake_telegram.add_message(OWNER, "/settings")
    time.sleep(0.3)
    fake_telegram.add_message(OWNER, "/help")
    assert second.result().skipped == "another bot poll is running; skipped"
    assert first.result().answered == 2
    assert len(fake_telegram.sent_texts(OWNER)) == 2 and fake_telegram.conflicts == 0
    assert [row[0] for row in audit(env)] == [1000, 1001]


@pytest.mark.slow
def test_a_poll_that_waits_for_the_one_before_goes_on_from_its_offset(env, fake_telegram, monkeypatch):
    poll()
    monkeypatch.setattr(bot, "LOCK_WAIT", 5.0)
    first = Poller(window=1.2)
    first.start()
    time.sleep(0.1)
    second = Poller(window=3.0)  # a poll started late (the one before ran long): it waits, then listens
    second.start()
    time.sleep(0.3)
    fake_telegram.add_message(OWNER, "/settings")
    time.sleep(1.5)
    sent_at = time.monotonic()
    fake_telegram.add_message(OWNER, "/help")
    assert (first.result().answered, second.result().answered) == (1, 1)
    assert second.ended_at - second.started_at < 3.5 and first.ended_at <= second.ended_at
    assert answered_after(fake_telegram, "Commands:", sent_at) < 1.0
    assert len(fake_telegram.sent_texts(OWNER)) == 2 and [row[0] for row in audit(env)] == [1000, 1001]
    assert fake_telegram.offsets()[-1] == 1002 and fake_telegram.conflicts == 0


def test_alerts_a_command_records_are_sent_as_it_is_answered_not_when_the_poll_ends(env, fake_telegram):
    fake_telegram.add_message(OWNER, "/halt")
    fake_telegram.add_message(OWNER, "YES")
    alone = Poller(window=0)  # the poll alone: the command line's own delivery at its end does not run
    alone.start()
    assert alone.result().answered == 2
    (delivered,) = rows(env, "SELECT delivered FROM events WHERE kind = 'alert' AND level = 'critical'")
    assert delivered[0] is not None and '"log": "sent"' in delivered[0]


def test_the_fake_ends_a_held_getupdates_when_another_arrives_as_telegram_does(fake_telegram):
    import requests

    url = f"{fake_telegram.url}/bot{fake_telegram.token}/getUpdates"
    answers: list = []
    held = threading.Thread(target=lambda: answers.append(requests.post(url, json={"timeout": 5}, timeout=10)))
    started = time.monotonic()
    held.start()
    time.sleep(0.3)
    assert requests.post(url, json={"timeout": 0}, timeout=5).json() == {"ok": True, "result": []}
    held.join(timeout=5)
    (answer,) = answers
    assert answer.status_code == 409 and time.monotonic() - started < 1.5
    assert answer.json()["description"].startswith("Conflict: terminated by other getUpdates request")


def test_long_answers_are_split_for_telegram():
    lines = [f"line {i:04d} " + "x" * 90 for i in range(150)]  # 15,000 characters: more than three messages
    parts = bot.reply_parts("\n".join(lines))
    assert len(parts) == 3 and all(len(part) <= 4096 for part in parts)
    assert parts[0].splitlines()[0] == lines[0] and parts[1].splitlines()[0] == lines[len(parts[0].splitlines())]
    assert bot.reply_parts("short") == ["short"]
    assert [len(p) for p in bot.reply_parts("y" * 5000)] == [4096, 904]
    assert parts[-1].endswith("[cut: the answer is too long for a chat]")


def test_telegram_unreachable_exits_3_without_the_token(env, fake_telegram, monkeypatch):
    fake_telegram.fail_next(502, api="getUpdates", description="Bad Gateway")
    result = poll()
    assert result.exit_code == 3
    assert result.stderr.strip() == "error: telegram getUpdates failed: HTTP 502: Bad Gateway"
    monkeypatch.setenv("TELEGRAM_BASE_URL", closed_port_url())
    result = poll()
    assert result.exit_code == 3 and result.stderr.strip() == "error: telegram getUpdates failed: connection refused"
    assert fake_telegram.token not in result.output


def test_a_token_telegram_refuses_exits_2(env, monkeypatch):
    wrong = "987654321:AAHwrongTokenForTests_zyxwvutsrqpo"
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", wrong)
    result = poll()
    assert result.exit_code == 2
    assert result.stderr.strip() == ("error: Telegram refused the bot token (HTTP 401: Unauthorized); "
                                     "check TELEGRAM_BOT_TOKEN")
    assert wrong not in result.output


def test_without_a_token_the_poll_does_nothing(env, fake_telegram, monkeypatch):
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", "")
    result = poll()
    assert result.exit_code == 0
    assert result.stdout.strip() == "bot poll: Telegram is not configured (TELEGRAM_BOT_TOKEN is empty); nothing to do"
    assert fake_telegram.count() == 0


# --- alerts test ------------------------------------------------------------------------------------------------

def test_alerts_test_reports_each_channel(env, fake_telegram, fake_discord, monkeypatch):
    monkeypatch.setenv("ALERT_CHANNELS", "log,telegram,discord")
    monkeypatch.setenv("TELEGRAM_CHAT_ID", "-100777")
    monkeypatch.setenv("DISCORD_WEBHOOK_URL", fake_discord.webhook_url)
    result = CliRunner().invoke(cli, ["--asof", ASOF, "alerts", "test"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["log: sent", "telegram: sent", "discord: sent"]
    assert fake_telegram.sent_texts("-100777") == [
        "Test alert [SIM]\ntest alert from Momentum Agent (SIM; channels log, telegram, discord)"]
    assert fake_discord.bodies()[0]["embeds"][0]["title"] == "Test alert [SIM]"

    fake_discord.fail_next(500)
    result = CliRunner().invoke(cli, ["--asof", ASOF, "alerts", "test"], catch_exceptions=False)
    assert result.exit_code == 3
    assert result.stdout.splitlines() == ["log: sent", "telegram: sent",
                                          "discord: failed: HTTP 500: Internal Server Error"]
    assert result.stderr.strip() == "error: alerts test: discord failed: HTTP 500: Internal Server Error"
    assert fake_discord.webhook_url not in result.output


def test_alerts_test_with_only_the_log_channel(env):
    result = CliRunner().invoke(cli, ["alerts", "test"], catch_exceptions=False)
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [
        "log: sent", "only the log channel is configured (set ALERT_CHANNELS=log,telegram,discord to add others)"]
    assert rows(env, "SELECT level, kind, source, json_extract(delivered, '$.log') FROM events") == [
        ["info", "alert", "alerts test", "sent"]]

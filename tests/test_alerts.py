"""Alert delivery: exact Telegram and Discord bodies, the delivered record, failures that never hold a run."""
from __future__ import annotations

import json
import logging
import time

import pytest

from common.clock import Clock, parse_asof
from common.logs import JsonLines
from config import load_config
from db import open_journal
from ports import alerts

from fake_chat_servers import DISCORD_WEBHOOK_PATH, closed_port_url

CHAT_ID = "-1001234567"
ASOF = "2016-11-09T10:30"
CREATED = "2016-11-09T15:30:00+00:00"  # ASOF in UTC, as stored


@pytest.fixture
def journal(tmp_path):
    opened = open_journal(tmp_path / "trades.db", Clock(parse_asof(ASOF)))
    yield opened
    opened.db.conn.close()


def make_config(tmp_path, channels: str, *, telegram=None, discord=None, timeout: float = 1.0, **extra: str):
    environ = {"MOMENTUM_DB": str(tmp_path / "trades.db"), "ALERT_CHANNELS": channels, "ALERT_TIMEOUT": str(timeout),
               **extra}
    if telegram is not None:
        environ.update(TELEGRAM_BASE_URL=telegram if isinstance(telegram, str) else telegram.url,
                       TELEGRAM_BOT_TOKEN=getattr(telegram, "token", "123456789:AAHfakeTokenForTests_abcdefghijklmn"),
                       TELEGRAM_CHAT_ID=CHAT_ID)
    if discord is not None:
        environ["DISCORD_WEBHOOK_URL"] = discord if isinstance(discord, str) else discord.webhook_url
    return load_config(environ=environ, dotenv_path=tmp_path / "no.env")


@pytest.fixture
def both(tmp_path, fake_telegram, fake_discord):
    return make_config(tmp_path, "log,telegram,discord", telegram=fake_telegram, discord=fake_discord)


def delivered(journal, event_id: int) -> dict:
    return alerts.delivery_of(journal, event_id)


def embed(fields: list[tuple[str, str]], title: str, description: str, color: int) -> dict:
    return {"embeds": [{"title": title, "description": description, "color": color,
                        "fields": [{"name": n, "value": v, "inline": True} for n, v in fields],
                        "timestamp": CREATED}]}


# --- what is sent -----------------------------------------------------------------------------------------------

def test_an_entry_alert_goes_to_both_channels_with_exact_bodies(journal, both, fake_telegram, fake_discord):
    event_id = journal.event("info", "alert", "BUY AAPL x10 at 100.00", source="executor",
                             detail={"kind": "entry", "symbol": "AAPL"})
    report = alerts.dispatch(journal, both)
    assert [r.json for r in fake_telegram.calls("sendMessage")] == [
        {"chat_id": CHAT_ID, "text": "Entry AAPL [SIM]\nBUY AAPL x10 at 100.00\nSymbol: AAPL"}]
    assert fake_discord.bodies() == [
        embed([("Symbol", "AAPL")], "Entry AAPL [SIM]", "BUY AAPL x10 at 100.00", alerts.NEUTRAL)]
    assert fake_discord.calls("webhook")[0].path == DISCORD_WEBHOOK_PATH
    assert delivered(journal, event_id) == {"log": "sent", "telegram": "sent", "discord": "sent",
                                            "attempts": {"telegram": 1, "discord": 1}}
    assert (report.alerts, report.sent, report.failed) == (1, {"telegram": 1, "discord": 1}, {})


@pytest.mark.parametrize("pnl, pnl_pct, shown, colour", [
    (123.4, 4.2, "+$123.40 (+4.20%)", alerts.GREEN),
    (-1050.0, -2.5, "-$1,050.00 (-2.50%)", alerts.RED),
    (0.0, 0.0, "$0.00 (0.00%)", alerts.GREEN),
])
def test_an_exit_is_coloured_by_pnl(journal, both, fake_telegram, fake_discord, pnl, pnl_pct, shown, colour):
    journal.event("info", "alert", "MSFT closed by trailing_stop at 58.10", source="reconcile",
                  detail={"kind": "exit", "symbol": "MSFT", "pnl": pnl, "pnl_pct": pnl_pct, "reason": "trailing_stop"})
    alerts.dispatch(journal, both)
    assert fake_telegram.sent_texts() == [
        f"Exit MSFT [SIM]\nMSFT closed by trailing_stop at 58.10\nSymbol: MSFT\nP&L: {shown}\nReason: trailing_stop"]
    assert fake_discord.bodies() == [embed([("Symbol", "MSFT"), ("P&L", shown), ("Reason", "trailing_stop")],
                                           "Exit MSFT [SIM]", "MSFT closed by trailing_stop at 58.10", colour)]


def test_a_critical_alert_without_detail_is_red(journal, both, fake_telegram, fake_discord):
    journal.event("critical", "alert", "trading HALTED by the operator", source="halt")
    alerts.dispatch(journal, both)
    assert fake_telegram.sent_texts() == ["CRITICAL [SIM]\ntrading HALTED by the operator"]
    assert fake_discord.bodies() == [embed([], "CRITICAL [SIM]", "trading HALTED by the operator", alerts.RED)]


def test_scan_summaries_and_reversals_are_sent_but_other_events_are_not(journal, both, fake_telegram):
    journal.event("info", "scan_summary", "small: 4 candidates, 1 passed stage 2; BUY -; WATCH XYZ", source="scan",
                  detail={"scan_id": 3})
    journal.event("warning", "alert", "NVDA reversal score 4", source="monitor",
                  detail={"kind": "reversal", "symbol": "NVDA", "score": 4})
    journal.event("info", "setting", "setting autoclose = off", source="cli")
    journal.event("debug", "alert", "a debug note", source="scan")
    journal.event("warning", "alert_failure", "alert channel discord: 1 alert not delivered", source="alerts")
    alerts.dispatch(journal, both)
    assert fake_telegram.sent_texts() == [
        "Scan summary [SIM]\nsmall: 4 candidates, 1 passed stage 2; BUY -; WATCH XYZ",
        "Reversal alert NVDA [SIM]\nNVDA reversal score 4\nSymbol: NVDA\nScore: 4"]


def test_a_second_dispatch_sends_nothing_again(journal, both, fake_telegram, fake_discord):
    journal.event("info", "alert", "BUY AAPL x10 at 100.00", detail={"kind": "entry", "symbol": "AAPL"})
    alerts.dispatch(journal, both)
    report = alerts.dispatch(journal, both)
    assert (fake_telegram.count(), fake_discord.count(), report.alerts) == (1, 1, 0)


def test_the_log_channel_alone_marks_alerts_delivered_and_logs_each_once(tmp_path, journal, caplog):
    config = make_config(tmp_path, "log")
    event_id = journal.event("info", "alert", "BUY AAPL x10 at 100.00")
    with caplog.at_level(logging.INFO, logger="ports.alerts"):
        alerts.dispatch(journal, config)
        alerts.dispatch(journal, config)
    assert delivered(journal, event_id) == {"log": "sent", "attempts": {}}
    assert [r.getMessage() for r in caplog.records if r.name == "ports.alerts"] == ["alert: BUY AAPL x10 at 100.00"]


# --- failing channels -------------------------------------------------------------------------------------------

def test_a_stalled_and_a_failing_channel_do_not_raise_and_stay_within_the_budget(
        tmp_path, journal, fake_telegram, fake_discord):
    config = make_config(tmp_path, "log,telegram,discord", telegram=fake_telegram, discord=fake_discord, timeout=0.5)
    fake_telegram.stall_next(5, api="sendMessage")
    fake_discord.fail_next(500)
    ids = [journal.event("info", "alert", f"BUY S{i} x1 at 10.00") for i in range(3)]
    started = time.monotonic()
    report = alerts.dispatch(journal, config)
    assert time.monotonic() - started < 2 * 0.5 + 0.3
    assert delivered(journal, ids[0]) == {"log": "sent", "telegram": "failed: timeout after 0.5 s",
                                          "discord": "failed: HTTP 500: Internal Server Error",
                                          "attempts": {"telegram": 1, "discord": 1}}
    # A channel that failed is not hammered again in the same call: the rest wait, without using up attempts.
    assert delivered(journal, ids[2]) == {"log": "sent", "telegram": "pending", "discord": "pending", "attempts": {}}
    assert (report.failed, report.deferred) == ({"telegram": 1, "discord": 1}, 4)
    warnings = journal.query("SELECT level, kind, message, delivered FROM events WHERE kind = 'alert_failure' "
                             "ORDER BY id")
    assert [(w["level"], w["message"]) for w in warnings] == [
        ("warning", "alert channel telegram: 1 alert not delivered (timeout after 0.5 s)"),
        ("warning", "alert channel discord: 1 alert not delivered (HTTP 500: Internal Server Error)")]

    retry = alerts.dispatch(journal, config)  # both channels are healthy again
    assert retry.sent == {"telegram": 3, "discord": 3} and not retry.failed
    assert delivered(journal, ids[0])["attempts"] == {"telegram": 2, "discord": 2}
    assert all(delivered(journal, i)["telegram"] == delivered(journal, i)["discord"] == "sent" for i in ids)
    assert [w["delivered"] for w in warnings] == [None, None]  # failure reports are never dispatched themselves


def test_a_failed_delivery_is_tried_at_most_three_times(tmp_path, journal, fake_discord):
    config = make_config(tmp_path, "log,discord", discord=fake_discord)
    fake_discord.fail_next(502, description="Bad Gateway", times=10)
    event_id = journal.event("critical", "alert", "AAPL is UNPROTECTED")
    results = []
    for _ in range(4):
        alerts.dispatch(journal, config)
        results.append(delivered(journal, event_id)["discord"])
    assert results == ["failed: HTTP 502: Bad Gateway"] * 2 + ["gave up: HTTP 502: Bad Gateway"] * 2
    assert fake_discord.count() == 3
    assert delivered(journal, event_id)["attempts"] == {"discord": 3}
    last = journal.one("SELECT message FROM events WHERE kind = 'alert_failure' ORDER BY id DESC LIMIT 1")
    assert last["message"].endswith("gave up on 1 after 3 attempts")


def test_a_429_is_waited_out_when_its_retry_after_fits_the_budget(tmp_path, journal, fake_discord):
    config = make_config(tmp_path, "log,discord", discord=fake_discord, timeout=1.0)
    fake_discord.fail_next(429, retry_after=0.2)
    slept: list[float] = []
    event_id = journal.event("info", "alert", "BUY AAPL x10 at 100.00")
    alerts.dispatch(journal, config, sleep=slept.append)
    assert slept == [0.2] and fake_discord.count() == 2
    assert delivered(journal, event_id)["discord"] == "sent"


def test_a_429_with_a_long_retry_after_fails_fast(tmp_path, journal, fake_telegram):
    config = make_config(tmp_path, "log,telegram", telegram=fake_telegram, timeout=1.0)
    fake_telegram.fail_next(429, retry_after=30)
    slept: list[float] = []
    event_id = journal.event("info", "alert", "BUY AAPL x10 at 100.00")
    report = alerts.dispatch(journal, config, sleep=slept.append)
    assert slept == [] and report.seconds < 1.0
    assert delivered(journal, event_id)["telegram"] == "failed: rate limited (retry after 30 s)"


def test_a_refused_connection_is_recorded_not_raised(tmp_path, journal):
    config = make_config(tmp_path, "log,telegram", telegram=closed_port_url())
    event_id = journal.event("info", "alert", "BUY AAPL x10 at 100.00")
    report = alerts.dispatch(journal, config)
    assert delivered(journal, event_id)["telegram"] == "failed: connection refused"
    assert report.errors == {"telegram": "connection refused"}


def test_a_message_the_service_rejects_does_not_stop_the_others(tmp_path, journal, fake_telegram):
    config = make_config(tmp_path, "log,telegram", telegram=fake_telegram)
    fake_telegram.fail_next(400, description="Bad Request: can't parse entities")
    first = journal.event("info", "alert", "first")
    second = journal.event("info", "alert", "second")
    alerts.dispatch(journal, config)
    assert delivered(journal, first)["telegram"] == "failed: HTTP 400: Bad Request: can't parse entities"
    assert delivered(journal, second)["telegram"] == "sent"


def test_a_dispatch_already_running_elsewhere_is_left_alone(journal, both, fake_telegram):
    journal.event("info", "alert", "BUY AAPL x10 at 100.00")
    lock = journal.path.with_name(journal.path.name + ".alerts.lock")
    with alerts.exclusive(lock) as got:
        assert got
        report = alerts.dispatch(journal, both)
    assert report.busy and fake_telegram.count() == 0
    assert alerts.dispatch(journal, both).sent == {"telegram": 1, "discord": 1}


# --- what is not sent -------------------------------------------------------------------------------------------

def test_with_alerts_off_only_critical_alerts_are_sent(journal, both, fake_telegram, fake_discord):
    journal.set_setting("alerts", "off")
    info = journal.event("info", "alert", "BUY AAPL x10 at 100.00", detail={"kind": "entry", "symbol": "AAPL"})
    critical = journal.event("critical", "alert", "circuit breaker tripped")
    report = alerts.dispatch(journal, both)
    assert fake_telegram.sent_texts() == ["CRITICAL [SIM]\ncircuit breaker tripped"]
    assert [b["embeds"][0]["description"] for b in fake_discord.bodies()] == ["circuit breaker tripped"]
    assert delivered(journal, info) == {"log": "sent", "telegram": "skipped: alerts off",
                                        "discord": "skipped: alerts off", "attempts": {}}
    assert delivered(journal, critical)["telegram"] == "sent" and report.skipped == 1
    journal.set_setting("alerts", "on")  # switching back on does not replay what was held back
    alerts.dispatch(journal, both)
    assert fake_telegram.count() == 1


def test_an_alert_older_than_a_day_is_not_sent(journal, both, fake_telegram):
    journal.db.table("events").insert({"created_at": "2016-11-07T15:30:00+00:00", "level": "info", "kind": "alert",
                                       "message": "BUY OLD x1 at 1.00"})
    alerts.dispatch(journal, both)
    assert fake_telegram.count() == 0
    row = journal.one("SELECT delivered FROM events WHERE message = 'BUY OLD x1 at 1.00'")
    assert json.loads(row["delivered"])["telegram"] == "skipped: stale"


# --- photos and documents ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("send, api, field_name", [
    (alerts.send_photo, "sendPhoto", "photo"), (alerts.send_document, "sendDocument", "document")])
def test_files_go_as_multipart(tmp_path, fake_telegram, send, api, field_name):
    config = make_config(tmp_path, "log,telegram", telegram=fake_telegram)
    path = tmp_path / "weekly.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\nchart-bytes")
    assert send(config, path, "Week 45: +1.2% vs SPY +0.8%") is True
    (request,) = fake_telegram.calls(api)
    assert request.fields == {"chat_id": CHAT_ID, "caption": "Week 45: +1.2% vs SPY +0.8%"}
    assert request.files == {field_name: ("weekly.png", b"\x89PNG\r\n\x1a\nchart-bytes")}
    assert send(config, path, "again", chat_id=42) is True
    assert fake_telegram.calls(api)[1].fields["chat_id"] == "42"


def test_a_file_that_cannot_be_sent_returns_false(tmp_path, fake_telegram):
    config = make_config(tmp_path, "log,telegram", telegram=fake_telegram, timeout=0.3)
    path = tmp_path / "trades.csv"
    path.write_text("id,symbol\n1,AAPL\n")
    fake_telegram.fail_next(500, api="sendDocument")
    assert alerts.send_document(config, path, "trades") is False
    fake_telegram.stall_next(3, api="sendDocument")
    assert alerts.send_document(config, path, "trades") is False
    assert alerts.send_document(config, tmp_path / "missing.csv", "trades") is False
    assert alerts.send_photo(make_config(tmp_path, "log"), path, "no token") is False


# --- secrets ----------------------------------------------------------------------------------------------------

def test_the_token_and_webhook_never_reach_the_journal_or_the_logs(tmp_path, journal, fake_telegram, fake_discord,
                                                                   caplog):
    token, webhook = fake_telegram.token, fake_discord.webhook_url
    config = make_config(tmp_path, "log,telegram,discord", telegram=fake_telegram, discord=fake_discord,
                         timeout=0.3)
    # The worst case: services that echo the secrets back in their error descriptions.
    fake_telegram.fail_next(500, description=f"upstream failed for /bot{token}/sendMessage")
    fake_discord.fail_next(500, description=f"bad webhook {webhook}")
    journal.event("critical", "alert", "AAPL is UNPROTECTED")
    with caplog.at_level(logging.DEBUG):
        report = alerts.dispatch(journal, config)
        refused = make_config(tmp_path, "log,telegram", telegram=closed_port_url())
        journal.event("critical", "alert", "second")
        alerts.dispatch(journal, refused)
        alerts.send_photo(refused, tmp_path / "missing.png", "x")
    assert report.failed == {"telegram": 1, "discord": 1}
    stored = json.dumps(journal.query("SELECT * FROM events"))
    formatter = JsonLines()
    logged = "\n".join(formatter.format(r) for r in caplog.records)
    product_messages = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("urllib3"))
    for text in (stored, logged, product_messages, report.summary()):
        assert token not in text and webhook not in text and "fakeWebhookSecret" not in text
    assert "upstream failed for /bot***" in stored

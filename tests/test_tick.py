"""`tick`: minute by minute over whole days, in three server time zones, it runs exactly the planned schedule in New
York time, each run once; it catches up within the grace period, skips (with the reason) beyond it, defers a run
whose lock is held, never runs a slot twice, and raises the dead-man alert for what did not run."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from datetime import date, datetime, timedelta

import pytest
from click.testing import CliRunner

from common.clock import NY, UTC, calendar
from config import load_config
from core.schedule import planned_runs
from flows import tick
from flows.runtime import Runtime

from conftest import ROOT

DAYS = {
    "normal day": date(2024, 6, 14),
    "day after Thanksgiving (early close)": date(2024, 11, 29),
    "Christmas Eve (early close)": date(2024, 12, 24),
    "Thanksgiving (holiday)": date(2024, 11, 28),
}
# Friday to Monday across a daylight-saving change, ticked every minute without a break.
SPANS = {
    "across the March DST change": (date(2024, 3, 8), date(2024, 3, 11)),
    "across the November DST change": (date(2024, 11, 1), date(2024, 11, 4)),
    **{name: (day, day) for name, day in DAYS.items()},
}


@pytest.fixture
def runtime(private_journal):
    made = []

    def make(moment: datetime) -> Runtime:
        rt = Runtime(load_config({"MOMENTUM_ASOF": moment.astimezone(NY).replace(tzinfo=None).isoformat()}), "tick")
        made.append(rt)
        return rt

    yield make
    for rt in made:
        rt.close()


class Recorder:
    """A runner that records what it was asked to run and when, and answers with a chosen exit code."""

    def __init__(self, codes: dict[str, int] | None = None):
        self.calls: list[tuple[str, datetime]] = []
        self.codes = codes or {}
        self.now: datetime | None = None

    def __call__(self, run) -> tuple[int, str]:
        self.calls.append((run.slot, self.now))
        return self.codes.get(" ".join(run.args), 0), ""


def ny(day: date, hh: int, mm: int) -> datetime:
    return datetime(day.year, day.month, day.day, hh, mm, tzinfo=NY)


def tick_at(rt: Runtime, recorder: Recorder, moment: datetime) -> list[tick.SlotResult]:
    rt.clock.set(moment)
    recorder.now = moment
    return tick.tick(rt, moment, recorder)


def minutes(start: datetime, end: datetime):
    """Every minute from start to end as a clock on the wall ticks them (in UTC: an aware New York datetime plus
    a timedelta moves the wall time, which would skip or repeat an hour on a DST change)."""
    moment, last = start.astimezone(UTC), end.astimezone(UTC)
    while moment <= last:
        yield moment
        moment += timedelta(minutes=1)


@pytest.fixture(params=["UTC", "America/New_York", "Asia/Tokyo"])
def server_zone(request, monkeypatch):
    """The process's own time zone, as a server set to it would have."""
    monkeypatch.setenv("TZ", request.param)
    time.tzset()
    yield request.param
    monkeypatch.undo()
    time.tzset()


@pytest.mark.slow
@pytest.mark.parametrize("span", SPANS.values(), ids=SPANS.keys())
def test_minute_by_minute_ticks_run_exactly_the_planned_schedule_once(runtime, server_zone, span):
    first, last = span
    start = ny(first, 0, 0)
    rt = runtime(start)
    recorder = Recorder()
    for moment in minutes(start, ny(last, 23, 59)):
        tick_at(rt, recorder, moment)
    cal = calendar()
    planned = [run for day in cal.sessions(first, last)
               for run in planned_runs(cal.session(day), rt.config.rebalance_clock, cal)]
    assert [slot for slot, _ in recorder.calls] == [run.slot for run in planned]  # each once, in planned order
    assert all(at == run.at for (_, at), run in zip(recorder.calls, planned))  # at its planned minute
    statuses = rt.journal.query("SELECT status, COUNT(*) AS n FROM schedule_slots GROUP BY status")
    assert statuses == ([{"status": "done", "n": len(planned)}] if planned else [])
    ran = {(at.astimezone(UTC).strftime("%Y-%m-%d %H:%M"), slot[17:]) for slot, at in recorder.calls}
    if first == DAYS["day after Thanksgiving (early close)"]:
        assert not any("midday" in command for _, command in ran)
        assert {("2024-11-29 17:30", "scan --type close --cap large"), ("2024-11-29 18:00", "monitor"),
                ("2024-11-29 18:05", "jobs daily-snapshot"), ("2024-11-29 18:20", "jobs cleanup")} <= ran
    if first == date(2024, 3, 8):  # 09:35 New York is 14:35 UTC before the change and 13:35 UTC after it
        assert {("2024-03-08 14:35", "scan --type open --cap large"), ("2024-03-08 21:20", "jobs cleanup"),
                ("2024-03-11 13:35", "scan --type open --cap large")} <= ran
    if first == date(2024, 11, 1):  # and back: 13:35 UTC before, 14:35 UTC after
        assert {("2024-11-01 13:35", "scan --type open --cap large"),
                ("2024-11-04 14:35", "scan --type open --cap large")} <= ran
    if first == DAYS["Thanksgiving (holiday)"]:
        assert recorder.calls == []


def test_the_normal_day_in_tokyo_time_runs_the_new_york_schedule(runtime, monkeypatch):
    """The fast subset's version of the day-long test: the open and the close in a server zone 13 hours ahead."""
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        day = DAYS["normal day"]
        rt = runtime(ny(day, 9, 0))
        recorder = Recorder()
        for moment in [*minutes(ny(day, 9, 25), ny(day, 9, 45)), *minutes(ny(day, 15, 25), ny(day, 16, 15))]:
            tick_at(rt, recorder, moment)
        ran = [(slot[11:], at.astimezone(NY).strftime("%H:%M")) for slot, at in recorder.calls]
        assert ran[:4] == [("09:30 monitor", "09:30"), ("09:30 jobs update-tracking", "09:30"),
                           ("09:35 monitor", "09:35"), ("09:35 scan --type open --cap large", "09:35")]
        assert ("16:10 jobs update-outcomes", "16:10") == ran[-1]
        assert ("15:30 scan --type close --cap large", "15:30") in ran
    finally:
        monkeypatch.undo()
        time.tzset()


def test_a_tick_started_twice_in_the_same_minute_runs_each_job_once(runtime):
    day = DAYS["normal day"]
    rt = runtime(ny(day, 9, 35))
    recorder = Recorder()
    first = tick_at(rt, recorder, ny(day, 9, 35))
    second = tick_at(rt, recorder, ny(day, 9, 35).replace(second=40))
    assert [r.status for r in first] == ["done", "done"] and second == []
    assert [slot for slot, _ in recorder.calls] == ["2024-06-14T09:35 monitor",
                                                    "2024-06-14T09:35 scan --type open --cap large"]


def test_missed_runs_are_caught_up_within_their_grace_and_skipped_with_the_reason_beyond_it(runtime):
    day = DAYS["normal day"]
    rt = runtime(ny(day, 9, 30))
    recorder = Recorder()
    tick_at(rt, recorder, ny(day, 9, 30))
    results = tick_at(rt, recorder, ny(day, 9, 40))  # no tick from 09:31 to 09:39
    assert [(r.run.slot[11:], r.status, r.reason) for r in results] == [
        ("09:35 monitor", "superseded", "the 09:40 run covers it"),
        ("09:35 scan --type open --cap large", "done", None),  # 5 minutes late: caught up
        ("09:38 scan --type open --cap mid", "done", None),
        ("09:40 monitor", "done", None)]
    results = tick_at(rt, recorder, ny(day, 9, 56))  # none from 09:41 to 09:55
    assert [(r.run.slot[11:], r.status, r.reason) for r in results] == [
        ("09:41 scan --type open --cap small", "skipped", "missed by 15 min (grace 10 min)"),
        ("09:45 monitor", "skipped", "missed by 11 min (grace 5 min)"),
        ("09:45 rebalance --universe all --daily", "done", None),  # an hour's grace
        ("09:50 monitor", "skipped", "missed by 6 min (grace 5 min)"),
        ("09:55 monitor", "done", None)]
    assert [slot[11:] for slot, _ in recorder.calls] == [
        "09:30 monitor", "09:30 jobs update-tracking", "09:35 scan --type open --cap large",
        "09:38 scan --type open --cap mid", "09:40 monitor", "09:45 rebalance --universe all --daily", "09:55 monitor"]
    alerts = tick.raise_dead_man(rt, ny(day, 9, 56))
    assert [a.run.slot[11:] for a in alerts] == ["09:41 scan --type open --cap small", "09:45 monitor", "09:50 monitor"]
    event = rt.journal.one("SELECT level, message FROM events WHERE kind = 'alert' ORDER BY id DESC LIMIT 1")
    assert event["level"] == "critical"
    assert event["message"].startswith("DEAD-MAN: 3 planned run(s) did not run: scan --type open --cap small at "
                                       "2024-06-14 09:41 EDT (skipped: missed by 15 min (grace 10 min)); "
                                       "monitor: 2 runs from 2024-06-14 09:45 to 09:50 EDT (skipped)")
    assert tick.raise_dead_man(rt, ny(day, 9, 57)) == []  # alerted once


HOLDER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from common.locks import command_lock
    with command_lock({path!r}, "scan"):
        print("held", flush=True)
        time.sleep(60)
""")


def test_a_run_whose_lock_is_held_is_deferred_then_run_or_skipped_when_the_grace_runs_out(runtime):
    day = DAYS["normal day"]
    rt = runtime(ny(day, 9, 35))
    recorder = Recorder()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER.format(root=str(ROOT), path=str(rt.journal.path))],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        results = {r.run.slot[11:]: r for r in tick_at(rt, recorder, ny(day, 9, 35))}
        assert results["09:35 scan --type open --cap large"].status == "deferred"
        assert f"pid {holder.pid}" in results["09:35 scan --type open --cap large"].reason
        assert results["09:35 monitor"].status == "done"  # its own lock is free
        tick_at(rt, recorder, ny(day, 9, 38))
    finally:
        holder.kill()
        holder.wait()
    results = {r.run.slot[11:]: r for r in tick_at(rt, recorder, ny(day, 9, 39))}
    assert results["09:35 scan --type open --cap large"].status == "done"
    assert results["09:38 scan --type open --cap mid"].status == "done"
    row = rt.journal.one("SELECT status, attempts FROM schedule_slots WHERE slot LIKE '%09:35 scan%'")
    assert row == {"status": "done", "attempts": 3}  # deferred twice, then run


def test_a_slot_deferred_past_its_grace_is_skipped_with_how_often_it_waited(runtime):
    day = DAYS["normal day"]
    rt = runtime(ny(day, 9, 41))
    recorder = Recorder(codes={"scan --type open --cap small": 75})  # its lock taken as it started, every time
    tick_at(rt, recorder, ny(day, 9, 41))
    tick_at(rt, recorder, ny(day, 9, 44))
    results = {r.run.slot[11:]: r for r in tick_at(rt, recorder, ny(day, 9, 52))}
    skipped = results["09:41 scan --type open --cap small"]
    assert skipped.status == "skipped"
    assert skipped.reason == "missed by 11 min (grace 10 min); its lock stayed held (deferred 2 times)"


def test_a_failed_run_is_not_run_again_and_a_run_cut_off_by_a_dead_tick_is_failed(runtime):
    day = DAYS["normal day"]
    rt = runtime(ny(day, 9, 35))
    recorder = Recorder(codes={"scan --type open --cap large": 3})
    results = tick_at(rt, recorder, ny(day, 9, 35))
    assert [(r.run.args[0], r.status, r.exit_code) for r in results] == [("monitor", "done", 0), ("scan", "failed", 3)]
    assert tick_at(rt, recorder, ny(day, 9, 36)) == []
    rt.journal.db.execute("UPDATE schedule_slots SET status = 'running' WHERE slot LIKE '%09:35 monitor'")
    rt.journal.db.conn.commit()
    results = tick_at(rt, recorder, ny(day, 9, 37))
    assert [(r.run.slot[11:], r.status, r.reason) for r in results] == [
        ("09:35 monitor", "failed", "the tick running it stopped before it finished")]
    assert len(recorder.calls) == 2  # never run twice


def test_a_missed_midday_scan_raises_the_dead_man_alert_in_the_nightly_job_and_shows_in_status(runtime):
    import jobs
    from flows import operator

    day = DAYS["normal day"]
    rt = runtime(ny(day, 9, 30))
    recorder = Recorder()
    for moment in minutes(ny(day, 9, 30), ny(day, 12, 25)):  # then the ticks stop until the nightly job
        tick_at(rt, recorder, moment)
    for moment in minutes(ny(day, 15, 30), ny(day, 16, 0)):  # they come back and record what they find missed
        tick_at(rt, recorder, moment)
    rt.clock.set(ny(day, 16, 5))
    result = jobs.run_job(rt, "daily-snapshot")
    assert "DEAD-MAN alert" in result.message
    event = rt.journal.one("SELECT level, message FROM events WHERE kind = 'alert' AND source = 'schedule'")
    assert event["level"] == "critical"
    for cap, at in (("large", "12:30"), ("mid", "12:33"), ("small", "12:36")):
        assert f"scan --type midday --cap {cap} at 2024-06-14 {at} EDT (skipped: missed by" in event["message"]
    assert "monitor: 35 runs from 2024-06-14 12:30 to 15:20 EDT (skipped)" in event["message"]
    state = operator.schedule_state(rt)
    assert state["kept_by_tick"] and len(state["overdue"]) == result.counts["not run"]
    assert any("scan --type midday --cap mid" in line for line in state["overdue_lines"])
    assert jobs.run_job(rt, "daily-snapshot").counts["not run"] == 0  # each missed run alerted once


def test_slots_from_before_the_first_tick_are_neither_run_nor_missed(runtime):
    day = DAYS["normal day"]
    rt = runtime(ny(day, 12, 0))
    recorder = Recorder()
    results = tick_at(rt, recorder, ny(day, 12, 0))
    assert [r.run.slot[11:] for r in results] == ["12:00 monitor", "12:00 jobs update-tracking"]
    assert tick.overdue(rt, ny(day, 12, 1)) == []


@pytest.mark.slow
def test_the_tick_command_runs_due_commands_as_processes_and_a_second_tick_exits_75_quietly(private_journal):
    from common.locks import command_lock
    from main import cli

    result = CliRunner().invoke(cli, ["--asof", "2024-06-14T09:35", "tick"])
    assert result.exit_code == 0, result.output
    assert "2024-06-14 09:35 EDT  monitor: done (exit 0;" in result.output
    assert "2024-06-14 09:35 EDT  scan --type open --cap large: done (exit 0;" in result.output
    assert "[large] session 2024-06-14" in result.output  # the scan's own output, indented under its line
    import sqlite3

    with sqlite3.connect(private_journal / "trades.db") as db:
        assert db.execute("SELECT COUNT(*) FROM scans WHERE type = 'open' AND cap = 'large'").fetchone() == (1,)
        assert db.execute("SELECT slot, status FROM schedule_slots ORDER BY slot").fetchall() == [
            ("2024-06-14T09:35 monitor", "done"), ("2024-06-14T09:35 scan --type open --cap large", "done")]
    again = CliRunner().invoke(cli, ["--asof", "2024-06-14T09:35", "tick"])
    assert again.exit_code == 0 and again.output == ""
    with command_lock(private_journal / "trades.db", "tick"):
        child = subprocess.run([sys.executable, str(ROOT / "main.py"), "--asof", "2024-06-14T09:36", "tick"],
                               capture_output=True, text=True, env=os.environ.copy())
    assert (child.returncode, child.stdout, child.stderr) == (75, "", "")

"""The product's own schedule (core/schedule.py, `python main.py schedule`): New York times relative to each NYSE
session, whatever the server's time zone, across daylight-saving changes, early closes and holidays."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date, time

from click.testing import CliRunner

from common.clock import NY, UTC, calendar
from core import schedule
from main import cli

from conftest import ROOT

REBALANCE = time(9, 45)


def runs_of(day: date) -> list[schedule.PlannedRun]:
    return schedule.planned_runs(calendar().session(day), REBALANCE, calendar())


def ny_times(runs, *args) -> list[str]:
    return [f"{r.at.astimezone(NY):%H:%M}" for r in runs if r.args[:len(args)] == args]


def test_a_normal_day_plans_every_run_at_its_new_york_time():
    runs = runs_of(date(2016, 11, 9))
    assert ny_times(runs, "scan", "--type", "open") == ["09:35", "09:38", "09:41"]
    assert ny_times(runs, "scan", "--type", "midday") == ["12:30", "12:33", "12:36"]
    assert ny_times(runs, "scan", "--type", "close") == ["15:30", "15:33", "15:36"]
    monitors = ny_times(runs, "monitor")
    assert (monitors[0], monitors[-1], len(monitors)) == ("09:30", "16:00", 79)
    assert ny_times(runs, "rebalance") == ["09:45"]
    assert ny_times(runs, "jobs", "daily-snapshot") == ["16:05"]
    assert ny_times(runs, "jobs", "update-outcomes") == ["16:10"]
    assert ny_times(runs, "jobs", "cleanup") == []  # a Wednesday
    assert len({r.slot for r in runs}) == len(runs)  # one slot per run


def test_daylight_saving_moves_utc_not_new_york():
    before, after = runs_of(date(2016, 3, 11)), runs_of(date(2016, 3, 14))  # EST, then EDT from 2016-03-13
    assert ny_times(before, "scan") == ny_times(after, "scan")
    assert f"{before[0].at.astimezone(UTC):%H:%M}" == "14:30" and f"{after[0].at.astimezone(UTC):%H:%M}" == "13:30"
    november = runs_of(date(2016, 11, 7))  # EST again from 2016-11-06
    assert f"{november[0].at.astimezone(UTC):%H:%M}" == "14:30"


def test_an_early_close_moves_the_close_scans_drops_midday_and_ends_the_monitor_at_the_close():
    for day in (date(2016, 11, 25), date(2019, 12, 24)):  # the day after Thanksgiving, Christmas Eve: 13:00
        runs = runs_of(day)
        assert ny_times(runs, "scan", "--type", "close") == ["12:30", "12:33", "12:36"]
        assert ny_times(runs, "scan", "--type", "midday") == []
        assert ny_times(runs, "monitor")[-1] == "13:00" and len(ny_times(runs, "monitor")) == 43
        assert ny_times(runs, "jobs", "daily-snapshot") == ["13:05"]
    assert ny_times(runs_of(date(2016, 11, 25)), "jobs", "cleanup") == ["13:20"]  # the week's last session


def test_the_command_shows_the_next_session_after_a_holiday_in_both_zones():
    result = CliRunner().invoke(cli, ["schedule", "--date", "2016-11-24"], catch_exceptions=False)  # Thanksgiving
    assert result.exit_code == 0, result.output
    first = result.output.splitlines()[0]
    assert first == ("session 2016-11-25: open 09:30 EST  14:30 UTC, early close 13:00 EST  18:00 UTC")
    assert "session 2016-11-28" in result.output
    bad = CliRunner().invoke(cli, ["schedule", "--date", "Nov 24"])
    assert bad.exit_code == 2 and bad.output.strip() == "error: --date: expected YYYY-MM-DD, got 'Nov 24'"


def test_the_server_time_zone_does_not_matter():
    outputs = []
    for zone in ("UTC", "America/New_York", "Asia/Tokyo"):
        env = {**os.environ, "TZ": zone}
        done = subprocess.run([sys.executable, str(ROOT / "main.py"), "schedule", "--json", "--date", "2016-03-14"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout)
    assert outputs[0] == outputs[1] == outputs[2]
    first = json.loads(outputs[0])["sessions"][0]["runs"][0]
    assert (first["new_york"], first["utc"]) == ("2016-03-14T09:30:00-04:00", "2016-03-14T13:30:00+00:00")

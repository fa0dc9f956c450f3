"""What starts the product on a server: the crontab and systemd units `deploy` writes (core/deploy.py), the copies
shipped with the code (crontab.txt, deploy/), and every command the schedule plans, run through the CLI at its
planned time on a trading day and on a holiday."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
from datetime import date, datetime, timedelta

import pytest
from click.testing import CliRunner

from common.errors import ConfigError
from conftest import ROOT
from core import deploy
from realdata import cli

TRADING_DAY = date(2016, 11, 18)  # a Friday: the week's last session also plans the weekly cleanup
HOLIDAY = date(2016, 11, 24)  # Thanksgiving
SHIPPED = ("crontab.txt", "deploy/momentum-tick.service", "deploy/momentum-tick.timer",
           "deploy/momentum-bot.service", "deploy/momentum-bot.timer")
REGENERATE = ("python -c 'from pathlib import Path; from core.deploy import shipped_files; "
              "[Path(p).write_text(t) for p, t in shipped_files().items()]'")


def job_lines(text: str) -> list[tuple[str, list[str]]]:
    """(schedule, command words) of every job line of a crontab."""
    jobs = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#") or re.match(r"^[A-Z_]+=", line):
            continue
        fields = line.split(None, 5)
        jobs.append((" ".join(fields[:5]), shlex.split(fields[5])))
    return jobs


def invoke(*args: str):
    return CliRunner().invoke(__import__("main").cli, list(args))


# ------------------------------------------------------------------------------------------- the shipped copies

def test_the_shipped_copies_are_what_deploy_writes_for_opt_momentum_agent():
    expected = deploy.shipped_files()
    assert sorted(expected) == sorted(SHIPPED)
    assert sorted(f"deploy/{p.name}" for p in (ROOT / "deploy").iterdir()) == sorted(SHIPPED[1:])  # nothing stale
    for path, text in expected.items():
        assert (ROOT / path).read_text(encoding="utf-8") == text, f"{path} drifted; regenerate with {REGENERATE}"


def test_the_crontab_runs_tick_and_bot_poll_every_minute_with_the_virtualenv_python_and_no_cron_tz():
    for path in SHIPPED:
        assert "CRON_TZ" not in (ROOT / path).read_text(encoding="utf-8"), path
    text = (ROOT / "crontab.txt").read_text(encoding="utf-8")
    settings = [line for line in text.splitlines() if re.match(r"^[A-Z_]+=", line)]
    assert settings == ["SHELL=/bin/sh"]
    assert deploy.SHIPPED_PYTHON == f"{deploy.SHIPPED_HOME}/.venv/bin/python"
    commands = []
    for schedule, words in job_lines(text):
        assert schedule == "* * * * *"
        assert words[:6] == ["cd", deploy.SHIPPED_HOME, "&&", "mkdir", "-p", "logs"]
        assert words[6:9] == ["&&", deploy.SHIPPED_PYTHON, "main.py"]
        assert words[-3:] == [">>", "logs/cron.log", "2>&1"]
        commands.append(" ".join(words[9:-3]))
    assert commands == ["tick", "bot poll"]


def test_the_units_start_tick_and_bot_poll_every_minute_as_oneshots_with_the_virtualenv_python():
    for name, command in (("tick", "tick"), ("bot", "bot poll")):
        service = (ROOT / "deploy" / f"momentum-{name}.service").read_text(encoding="utf-8")
        for line in ("Type=oneshot", f"WorkingDirectory={deploy.SHIPPED_HOME}",
                     f"ExecStart={deploy.SHIPPED_PYTHON} main.py {command}", "SuccessExitStatus=75",
                     "StandardOutput=journal"):
            assert line in service.splitlines(), (name, line)
        assert not any(line.startswith("User=") for line in service.splitlines())  # root unless --user
        timer = (ROOT / "deploy" / f"momentum-{name}.timer").read_text(encoding="utf-8").splitlines()
        for line in ("OnCalendar=*-*-* *:*:00", "AccuracySec=1s", "Persistent=false",
                     f"Unit=momentum-{name}.service", "WantedBy=timers.target"):
            assert line in timer, (name, line)


def test_paths_are_quoted_for_the_shell_and_systemd_and_refused_where_they_cannot_be_written():
    home, python = "/srv/my agent", "/srv/my agent/.venv/bin/python"
    (_, words), _ = job_lines(deploy.crontab_text(home, python))
    assert words[:2] == ["cd", home] and words[7] == python
    units = deploy.systemd_units("/srv/a%b", "/srv/my agent/py", user="trader")
    service = units["momentum-tick.service"].splitlines()
    assert "WorkingDirectory=/srv/a%%b" in service and 'ExecStart="/srv/my agent/py" main.py tick' in service
    assert "User=trader" in service
    for call in (lambda: deploy.crontab_text("/srv/50%", python), lambda: deploy.crontab_text("srv", python),
                 lambda: deploy.systemd_units(home, '/srv/"q"/python'),
                 lambda: deploy.systemd_units("/srv/a\nb", python), lambda: deploy.systemd_units(home, python, "a b")):
        with pytest.raises(ConfigError):
            call()


# --------------------------------------------------------------------------------------------------- the CLI

def test_deploy_crontab_defaults_to_this_project_and_the_python_running_it(private_journal):
    result = invoke("deploy", "crontab")
    assert result.exit_code == 0, result.output
    assert result.stdout == deploy.crontab_text(str(ROOT), sys.executable)
    tick = f"cd {shlex.quote(str(ROOT))} && mkdir -p logs && {shlex.quote(sys.executable)} main.py tick >> "
    assert tick in result.stdout
    home = private_journal / "home"
    home.mkdir()
    (home / "main.py").write_text("")
    result = invoke("deploy", "crontab", "--home", str(home), "--python", sys.executable)
    assert result.exit_code == 0 and result.stdout == deploy.crontab_text(str(home.resolve()), sys.executable)


def test_deploy_refuses_a_home_without_main_py_or_a_python_that_is_not_an_executable_file(private_journal):
    not_executable = private_journal / "python"
    not_executable.write_text("")
    for args in (["--home", str(private_journal)], ["--python", str(private_journal / "missing")],
                 ["--python", str(not_executable)], ["--python", str(private_journal)]):
        for command in (["crontab"], ["systemd", "--out", str(private_journal / "units")]):
            result = invoke("deploy", *command, *args)
            assert result.exit_code == 2, (command, args, result.output)
            assert result.stdout == ""
            assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith(f"error: {args[0]} ")
    assert not (private_journal / "units").exists()


def test_deploy_systemd_writes_the_four_units_into_a_new_folder(private_journal):
    out = private_journal / "new" / "units"
    for _ in range(2):  # a second run replaces the files
        result = invoke("deploy", "systemd", "--out", str(out), "--user", "trader")
        assert result.exit_code == 0, result.output
    expected = deploy.systemd_units(str(ROOT), sys.executable, "trader")
    assert result.stdout.splitlines() == [str(out / name) for name in expected]
    assert sorted(p.name for p in out.iterdir()) == sorted(expected)  # no temporary file left
    for name, text in expected.items():
        assert (out / name).read_text(encoding="utf-8") == text
        assert (out / name).stat().st_mode & 0o777 == 0o644


# ------------------------------------------------------------------------------------------------- systemd itself

needs_systemd_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                           reason="systemd-analyze is not installed (no systemd on this machine)")


@needs_systemd_analyze
@pytest.mark.parametrize("zone", ["UTC", "America/New_York", "Asia/Kolkata"])
def test_every_timer_elapses_at_each_whole_minute_in_any_zone(zone):
    for timer in sorted((ROOT / "deploy").glob("*.timer")):
        values = [line.split("=", 1)[1] for line in timer.read_text().splitlines() if line.startswith("OnCalendar=")]
        assert values, timer.name
        for value in values:
            shown = subprocess.run(["systemd-analyze", "calendar", "--iterations=3", value], capture_output=True,
                                   text=True, timeout=60, env={**os.environ, "TZ": zone})
            assert shown.returncode == 0, shown.stderr
            elapses = [datetime.fromisoformat(found)
                       for found in re.findall(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC", shown.stdout)]
            assert len(elapses) == 3, shown.stdout
            assert all(moment.second == 0 for moment in elapses), shown.stdout
            assert [b - a for a, b in zip(elapses, elapses[1:])] == [timedelta(minutes=1)] * 2, shown.stdout


@needs_systemd_analyze
def test_systemd_accepts_the_units_written_for_this_project(private_journal):
    result = invoke("deploy", "systemd", "--out", str(private_journal / "units"))
    assert result.exit_code == 0, result.output
    units = sorted(str(p) for p in (private_journal / "units").iterdir())
    verified = subprocess.run(["systemd-analyze", "verify", *units], capture_output=True, text=True, timeout=60)
    assert verified.returncode == 0, verified.stderr


# -------------------------------------------------------------------------------- every planned command, run

@pytest.mark.slow
def test_every_line_runs_on_a_trading_day_and_on_a_holiday(real_env):
    from common.clock import NY, calendar
    from config import load_config
    from core.schedule import planned_runs

    cal = calendar()
    session = cal.session(TRADING_DAY)
    first_at: dict[tuple[str, ...], datetime] = {("bot", "poll"): session.open}  # bot poll runs every minute
    for run in planned_runs(session, load_config().rebalance_clock, cal):
        first_at.setdefault(run.args, run.at)
    assert ("jobs", "cleanup") in first_at and len([a for a in first_at if a[0] == "scan"]) == 9
    runs = sorted(((f"{day}T{at.astimezone(NY):%H:%M}", day, args)
                   for day in (TRADING_DAY, HOLIDAY) for args, at in first_at.items()), key=lambda run: run[0])
    for asof, day, args in runs:  # the simulated clock only moves forward
        before = _order_count(real_env)
        result = cli("--asof", asof, *args)
        assert result.exit_code == 0, f"{asof} {' '.join(args)}: {result.output}"
        if day == HOLIDAY:
            assert _order_count(real_env) == before, f"{' '.join(args)} sent an order on a holiday"


def _order_count(env) -> int:
    try:
        with sqlite3.connect(env["MOMENTUM_DB"]) as conn:
            return conn.execute("SELECT COUNT(*) FROM orders").fetchone()[0]
    except sqlite3.OperationalError:
        return 0

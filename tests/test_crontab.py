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

def test_deploy_crontab_defaults_to_this_project_and_the_python_running_it(private_journal, monkeypatch):
    monkeypatch.delenv("MOMENTUM_HOME")  # nothing given: the checkout's defaults, no variable, no option
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


def test_deploy_systemd_writes_the_four_units_into_a_new_folder(private_journal, monkeypatch):
    monkeypatch.delenv("MOMENTUM_HOME")
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


GIVEN = ("--db", "j/x.db", "--universe", "u.json", "--data", "csv:bars.csv", "--market", "../spy.csv",
         "--broker", "sim")


def _deployed(tmp_path, monkeypatch, *command: str, given: tuple[str, ...] = GIVEN):
    """`deploy COMMAND` run from tmp_path/work with MOMENTUM_HOME=tmp_path/home and relative global options."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir(exist_ok=True)
    monkeypatch.setenv("MOMENTUM_HOME", str(home))
    monkeypatch.delenv("LOG_DIR")  # the home's logs folder
    monkeypatch.chdir(work)
    result = invoke(*given, *command)
    assert result.exit_code == 0, result.output
    options = ["--db", str(work / "j/x.db"), "--data", f"csv:{work / 'bars.csv'}",
               "--market", str(tmp_path / "spy.csv"), "--broker", "sim", "--universe", str(work / "u.json")]
    return result, home, options


def test_deploy_crontab_passes_the_home_and_the_global_options_given_on_to_tick_and_bot_poll(private_journal,
                                                                                            monkeypatch):
    result, home, options = _deployed(private_journal, monkeypatch, "deploy", "crontab")
    logs = str(home / "logs")
    jobs = job_lines(result.stdout)
    assert [words[10 + len(options):-3] for _, words in jobs] == [["tick"], ["bot", "poll"]]
    for _, words in jobs:
        assert words[:9] == ["cd", str(ROOT), "&&", "mkdir", "-p", logs, "&&", f"MOMENTUM_HOME={home}", sys.executable]
        assert words[9:10 + len(options)] == ["main.py", *options]
        assert words[-3:] == [">>", f"{logs}/cron.log", "2>&1"]
    assert "CRON_TZ" not in result.stdout and "--asof" not in result.stdout


def test_deploy_systemd_passes_the_home_and_the_global_options_given_on_to_tick_and_bot_poll(private_journal,
                                                                                            monkeypatch):
    result, home, options = _deployed(private_journal, monkeypatch, "deploy", "systemd", "--out", "units")
    units = private_journal / "work" / "units"
    for name, command in (("tick", "tick"), ("bot", "bot poll")):
        service = (units / f"momentum-{name}.service").read_text(encoding="utf-8").splitlines()
        assert f'Environment="MOMENTUM_HOME={home}"' in service
        assert f"ExecStart={sys.executable} main.py {' '.join(options)} {command}" in service
        assert f"WorkingDirectory={ROOT}" in service


def test_deploy_refuses_a_simulated_time_in_one_line(private_journal, monkeypatch):
    for args, env in ((["--asof", "2016-11-09T10:30"], None), ([], "2016-11-09T10:30")):
        if env:
            monkeypatch.setenv("MOMENTUM_ASOF", env)
        for command in (["crontab"], ["systemd", "--out", str(private_journal / "units")]):
            result = invoke(*args, "deploy", *command)
            assert result.exit_code == 2, (args, env, command, result.output)
            assert result.stdout == "" and len(result.stderr.splitlines()) == 1
            assert ("--asof" if args else "MOMENTUM_ASOF") in result.stderr and "real time" in result.stderr
    assert not (private_journal / "units").exists()


def test_odd_values_are_quoted_for_the_shell_and_systemd_and_a_percent_is_refused_in_a_crontab():
    odd = "/srv/my $db \"it's\".db"
    launch = deploy.Launch((("MOMENTUM_HOME", "/srv/a home"),), ("--db", odd, "--data", "csv:/srv/b c.csv"),
                           "/srv/a home/logs")
    for _, words in job_lines(deploy.crontab_text("/srv/agent", "/srv/py", launch)):
        assert words[5:13] == ["/srv/a home/logs", "&&", "MOMENTUM_HOME=/srv/a home", "/srv/py", "main.py", "--db", odd,
                               "--data"]
        assert words[13] == "csv:/srv/b c.csv" and words[-2] == "/srv/a home/logs/cron.log"
    service = deploy.systemd_units("/srv/agent", "/srv/py", launch=launch)["momentum-tick.service"].splitlines()
    assert 'Environment="MOMENTUM_HOME=/srv/a home"' in service
    assert 'ExecStart=/srv/py main.py --db "/srv/my $$db \\"it\'s\\".db" --data "csv:/srv/b c.csv" tick' in service
    percent = deploy.Launch(options=("--db", "/srv/50%.db"))
    with pytest.raises(ConfigError):
        deploy.crontab_text("/srv/agent", "/srv/py", percent)
    assert "ExecStart=/srv/py main.py --db /srv/50%%.db tick" in deploy.systemd_units(
        "/srv/agent", "/srv/py", launch=percent)["momentum-tick.service"].splitlines()
    for bad in (deploy.Launch(options=("--db", "/srv/a\nb")), deploy.Launch(log_dir="logs")):
        with pytest.raises(ConfigError):
            deploy.crontab_text("/srv/agent", "/srv/py", bad)


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


@needs_systemd_analyze
def test_systemd_accepts_units_carrying_a_home_and_odd_global_options(tmp_path):
    launch = deploy.Launch((("MOMENTUM_HOME", "/srv/a home%"),), ("--db", "/srv/my $db \"it's\" 50%.db"))
    for name, text in deploy.systemd_units(str(ROOT), sys.executable, launch=launch).items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    verified = subprocess.run(["systemd-analyze", "verify", *map(str, sorted(tmp_path.iterdir()))],
                              capture_output=True, text=True, timeout=60)
    assert verified.returncode == 0, verified.stderr


# -------------------------------------------------------------------------------- every planned command, run

@pytest.mark.slow
def test_a_tick_started_by_the_deployed_line_runs_its_commands_on_the_given_journal(private_journal, monkeypatch):
    """The tick line as cron would run it (sh, in the project folder), at a simulated 10:05 when a monitor is due:
    the tick and the monitor it starts as a process both use the --db given to `deploy`, not the home's journal."""
    (private_journal / "work").mkdir()
    (private_journal / "work" / "u.json").write_bytes((ROOT / "data" / "universe.json").read_bytes())
    result, home, _ = _deployed(private_journal, monkeypatch, "deploy", "crontab",
                                given=("--db", "j/x.db", "--universe", "u.json"))
    line = next(line for line in result.stdout.splitlines() if line.endswith(f"tick >> {home}/logs/cron.log 2>&1"))
    env = {name: value for name, value in os.environ.items()
           if name not in ("MOMENTUM_HOME", "MOMENTUM_DB", "LOG_DIR", "UNIVERSE_FILE", "DATA_SOURCE")}
    command = line.split(None, 5)[5]
    ran = subprocess.run(["/bin/sh", "-c", command], env={**env, "MOMENTUM_ASOF": "2024-06-14T10:05"},
                         capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr
    output = (home / "logs" / "cron.log").read_text(encoding="utf-8")
    assert "2024-06-14 10:05 EDT  monitor: done (exit 0;" in output, output
    journal = private_journal / "work" / "j" / "x.db"
    with sqlite3.connect(journal) as db:
        slots = db.execute("SELECT slot, status FROM schedule_slots").fetchall()
        assert slots == [("2024-06-14T10:05 monitor", "done")]
        assert [row[0] for row in db.execute("SELECT command FROM runs")] == ["main.py monitor"]
    assert not (home / "data" / "trades.db").exists()

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

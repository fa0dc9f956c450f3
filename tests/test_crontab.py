"""Every line of crontab.txt is a valid command: each runs through the CLI at its scheduled time on a trading day
and on a holiday, exits 0, and on the holiday sends no order."""
from __future__ import annotations

import re
import shlex
import sqlite3
from datetime import date

import pytest

from conftest import ROOT
from realdata import cli

TRADING_DAY = date(2016, 11, 9)
HOLIDAY = date(2016, 11, 24)  # Thanksgiving
SUNDAY = date(2016, 11, 13)
LINE = re.compile(r"^(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(.+)$")


def cron_entries() -> list[tuple[str, str, str, list[str]]]:
    """(minute, hour, day-of-week, CLI arguments) of every job line."""
    text = (ROOT / "crontab.txt").read_text()
    assert "CRON_TZ=America/New_York" in text.splitlines()
    entries = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#") or "=" in line.split()[0]:
            continue
        minute, hour, _, _, dow, command = LINE.match(line).groups()
        words = shlex.split(command.split("$MA_PYTHON ", 1)[1].split(">>")[0])
        args = words[1:] if words[0] == "main.py" else ["jobs", *words[1:]]
        assert words[0] in ("main.py", "jobs.py"), line
        entries.append((minute, hour, dow, args))
    return entries


def first_value(field: str) -> int:
    return 0 if field.startswith("*") else int(re.split(r"[-,/]", field)[0])


def test_crontab_covers_every_scheduled_job():
    commands = [" ".join(args[:3]) for *_, args in cron_entries()]
    for expected in ("scan --type open", "scan --type midday", "scan --type close", "monitor", "jobs update-tracking",
                     "jobs daily-snapshot", "jobs update-outcomes", "jobs cleanup", "bot poll", "rebalance --universe"):
        assert any(c.startswith(expected) for c in commands), expected
    assert sum(1 for c in commands if c.startswith("scan")) == 9


@pytest.mark.slow
def test_every_line_runs_on_a_trading_day_and_on_a_holiday(real_env):
    runs = []
    for minute, hour, dow, args in cron_entries():
        for day in ((SUNDAY,) if dow == "0" else (TRADING_DAY, HOLIDAY)):
            runs.append((f"{day}T{first_value(hour):02d}:{first_value(minute):02d}", day, args))
    for asof, day, args in sorted(runs, key=lambda run: run[0]):
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

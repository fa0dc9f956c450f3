"""`tick`: run whatever the product's schedule has due, started every minute by cron or a systemd timer.

The schedule (core/schedule.py) is in New York time relative to each NYSE session; the tick reads the clock in UTC,
so neither the server's time zone nor cron's makes any difference. Each planned run is a slot, recorded in the
journal's `schedule_slots` table once the tick has dealt with it:
- done / failed: it ran (at most once: a slot is marked running before its command starts, and a tick that died
  while running it leaves it failed, never run twice);
- deferred: its command's lock was held (a manual run, or the previous one still going); the next tick tries again
  while the slot is within its grace period;
- skipped: found more than its grace period late (the machine was off, cron stopped, the lock stayed held);
- superseded: a monitor or tracking update left behind by a later one of the same command that runs instead;
- missed: the dead-man check found no record of it after its grace period.
Slots planned before the first tick on a journal are not the tick's to run or to miss.

The dead-man check: a planned scan, monitor, rebalance or nightly job that did not run (skipped, missed, or still
deferred after its grace) raises one critical alert saying which and when; the tick checks after its runs and the
nightly daily-snapshot job checks the whole session. A run that started and failed is not "did not run": its own
error is in `errors` and its alerts.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import time as clock_time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable

from common import locks
from common.clock import NY, Session, iso_utc
from common.errors import EXIT_LOCKED
from core.schedule import PlannedRun, planned_runs
from flows.runtime import Runtime

log = logging.getLogger(__name__)

STARTED_KEY = "schedule_started_at"  # state: the minute of the first tick on this journal
LAST_TICK_KEY = "schedule_last_tick_at"  # state: when the last tick started
FINAL = frozenset({"done", "failed", "skipped", "superseded", "missed"})
NOT_RUN = frozenset({"deferred", "skipped", "missed"})
# A later run of these does everything an earlier one would have done.
REPEATED = frozenset({("monitor",), ("jobs", "update-tracking")})
# A command still running after this long is stopped and its slot recorded as failed, so that one hung command
# cannot hold the tick lock (and every later slot) for ever.
TIMEOUTS = {"scan": timedelta(minutes=20), "monitor": timedelta(minutes=10), "rebalance": timedelta(minutes=30),
            "jobs": timedelta(minutes=60)}
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class SlotResult:
    run: PlannedRun
    status: str
    reason: str | None = None
    exit_code: int | None = None
    seconds: float | None = None
    output: str = ""

    def text(self) -> str:
        when = f"{self.run.at.astimezone(NY):%Y-%m-%d %H:%M %Z}"
        figures = [f"exit {self.exit_code}" if self.exit_code is not None else None,
                   f"{self.seconds:.1f} s" if self.seconds is not None else None, self.reason]
        detail = "; ".join(part for part in figures if part)
        return f"{when}  {' '.join(self.run.args)}: {self.status}" + (f" ({detail})" if detail else "")


# A runner starts the planned run's command and returns (exit code, output); tests pass a recording one.
Runner = Callable[[PlannedRun], tuple[int, str]]


def sessions_around(rt: Runtime, now: datetime) -> list[Session]:
    """The sessions whose slots may be due at `now`: the last one before today and today's (if today has one)."""
    today = now.astimezone(NY).date()
    days = [rt.calendar.previous_session(today)] + ([today] if rt.calendar.is_session(today) else [])
    return [rt.calendar.session(day) for day in days]


def planned(rt: Runtime, now: datetime) -> list[PlannedRun]:
    return [run for session in sessions_around(rt, now)
            for run in planned_runs(session, rt.config.rebalance_clock, rt.calendar)]


def schedule_started(rt: Runtime) -> datetime | None:
    text = rt.journal.state(STARTED_KEY)
    return datetime.fromisoformat(text) if text else None


def _slot_rows(rt: Runtime, runs: list[PlannedRun]) -> dict[str, dict]:
    sessions = sorted({str(run.at.astimezone(NY).date()) for run in runs})
    if not sessions:
        return {}
    marks = ", ".join("?" * len(sessions))
    return {row["slot"]: row for row in
            rt.journal.query(f"SELECT * FROM schedule_slots WHERE session IN ({marks})", sessions)}


def _record(rt: Runtime, run: PlannedRun, **columns: Any) -> None:
    row = {"slot": run.slot, "session": str(run.at.astimezone(NY).date()), "job": run.job,
           "command": " ".join(run.args), "planned_at": iso_utc(run.at), **columns}
    rt.journal.upsert_rows("schedule_slots", [row], key="slot")


def _late(delay: timedelta) -> str:
    return f"{int(delay.total_seconds() // 60)} min"


def tick(rt: Runtime, now: datetime, runner: Runner) -> list[SlotResult]:
    """Deal with every slot due at `now` (planned at or before it, not yet final), in planned order."""
    started = schedule_started(rt)
    minute = now.replace(second=0, microsecond=0)
    if started is None:
        started = minute
        rt.journal.set_state(STARTED_KEY, iso_utc(started))
    rt.journal.set_state(LAST_TICK_KEY, iso_utc(now))
    runs = planned(rt, now)
    rows = _slot_rows(rt, runs)
    due = [run for run in runs if started <= run.at <= now and rows.get(run.slot, {}).get("status") not in FINAL]
    latest: dict[tuple[str, ...], PlannedRun] = {}
    for run in due:
        if run.args in REPEATED and now - run.at <= run.grace:
            latest[run.args] = run
    results = []
    for run in due:
        row = rows.get(run.slot) or {}
        attempts = row.get("attempts") or 0
        late = now - run.at
        if row.get("status") == "running":
            result = SlotResult(run, "failed", "the tick running it stopped before it finished")
        elif late > run.grace:
            reason = f"missed by {_late(late)} (grace {_late(run.grace)})"
            if row.get("status") == "deferred":
                reason += f"; its lock stayed held (deferred {attempts} times)"
            result = SlotResult(run, "skipped", reason)
        elif run.args in REPEATED and latest.get(run.args) is not run:
            result = SlotResult(run, "superseded", f"the {latest[run.args].at.astimezone(NY):%H:%M} run covers it")
        elif (pid := locks.holder(rt.journal.path, run.job)) is not None:
            result = SlotResult(run, "deferred", f"another {run.job} holds its lock (pid {pid})")
            attempts += 1
        else:
            attempts += 1
            _record(rt, run, status="running", attempts=attempts, started_at=rt.journal.now(), reason=None)
            began = clock_time.perf_counter()
            code, output = runner(run)
            seconds = clock_time.perf_counter() - began
            if code == 0:
                result = SlotResult(run, "done", None, code, seconds, output)
            elif code == EXIT_LOCKED:  # its lock was taken between the check and the start: try again
                result = SlotResult(run, "deferred", "its lock was held when it started", code, seconds, output)
            else:
                result = SlotResult(run, "failed", None, code, seconds, output)
        _record(rt, run, status=result.status, attempts=attempts, reason=result.reason, exit_code=result.exit_code,
                seconds=round(result.seconds, 3) if result.seconds is not None else None,
                finished_at=rt.journal.now() if result.status in FINAL else None)
        log.info("tick slot", extra={"slot": run.slot, "status": result.status, "reason": result.reason})
        results.append(result)
    return results


# --- running a command -------------------------------------------------------------------------------------------

def subprocess_runner(environment: dict[str, str]) -> Runner:
    """Runs each planned command as its own process with this interpreter (the project's virtualenv when the tick
    runs from it), in the tick's working directory and environment plus `environment` (the tick's global options,
    so the command reads the same journal, data and clock)."""
    def run(planned_run: PlannedRun) -> tuple[int, str]:
        command = [sys.executable, str(ROOT / "main.py"), *planned_run.args]
        try:
            done = subprocess.run(command, env={**os.environ, **environment}, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True,
                                  timeout=TIMEOUTS[planned_run.job].total_seconds())
        except subprocess.TimeoutExpired as err:
            output = err.output.decode(errors="replace") if isinstance(err.output, bytes) else (err.output or "")
            return 1, output + f"\nstopped: still running after {_late(TIMEOUTS[planned_run.job])}"
        return done.returncode, done.stdout
    return run


# --- dead-man check ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Overdue:
    run: PlannedRun
    status: str  # deferred, skipped, missed (no record at all)
    reason: str | None
    alerted: bool

    def as_dict(self) -> dict[str, Any]:
        return {"slot": self.run.slot, "command": " ".join(self.run.args),
                "planned_at": self.run.at.astimezone(NY).isoformat(), "status": self.status, "reason": self.reason,
                "alerted": self.alerted}

    def text(self) -> str:
        why = self.status + (f": {self.reason}" if self.reason else "")
        return f"{' '.join(self.run.args)} at {self.run.at.astimezone(NY):%Y-%m-%d %H:%M %Z} ({why})"


def overdue(rt: Runtime, now: datetime) -> list[Overdue]:
    """Planned runs of the last session and today's that did not run and whose grace period is over (only those
    planned since the schedule started on this journal)."""
    started = schedule_started(rt)
    if started is None:
        return []
    runs = [run for run in planned(rt, now) if started <= run.at and run.at + run.grace < now]
    rows = _slot_rows(rt, runs)
    found = []
    for run in runs:
        row = rows.get(run.slot)
        status = row["status"] if row else "missed"
        if status in NOT_RUN:
            found.append(Overdue(run, status, row["reason"] if row else "no tick dealt with it",
                                 bool(row and row["alerted_at"])))
    return found


def grouped(items: list[Overdue]) -> list[str]:
    """One line per command: a repeated one as its count and first and last time."""
    by_command: dict[tuple[str, ...], list[Overdue]] = {}
    for item in items:
        by_command.setdefault(item.run.args, []).append(item)
    lines = []
    for args, group in by_command.items():
        if len(group) == 1:
            lines.append(group[0].text())
        else:
            first, last = group[0].run.at.astimezone(NY), group[-1].run.at.astimezone(NY)
            lines.append(f"{' '.join(args)}: {len(group)} runs from {first:%Y-%m-%d %H:%M} to {last:%H:%M %Z} "
                         f"({group[-1].status})")
    return lines


def raise_dead_man(rt: Runtime, now: datetime) -> list[Overdue]:
    """One critical alert for the overdue runs not alerted yet; they are marked so no run is alerted twice."""
    fresh = [item for item in overdue(rt, now) if not item.alerted]
    if not fresh:
        return []
    lines = grouped(fresh)
    rt.journal.event("critical", "alert", f"DEAD-MAN: {len(fresh)} planned run(s) did not run: " + "; ".join(lines),
                     source="schedule", detail={"slots": [item.run.slot for item in fresh]})
    stamp = rt.journal.now()
    for item in fresh:
        if item.status == "missed":
            _record(rt, item.run, status="missed", reason=item.reason, alerted_at=stamp)
        else:
            rt.journal.update_row("schedule_slots", "slot", item.run.slot, {"alerted_at": stamp})
    return fresh


def last_runs(rt: Runtime) -> list[dict]:
    """The last run of each scheduled command (whoever started it), newest first."""
    return rt.journal.query(
        "SELECT command, started_at, finished_at, status, exit_code FROM runs r "
        "WHERE (command LIKE '% scan' OR command LIKE '% monitor' OR command LIKE '% rebalance' "
        "OR command LIKE '% reconcile' OR command LIKE '% jobs %') "
        "AND started_at = (SELECT MAX(started_at) FROM runs WHERE command = r.command) "
        "GROUP BY command ORDER BY started_at DESC")

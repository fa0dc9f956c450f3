"""The product's own schedule: every planned run of a session, in New York time, relative to that session.

Times come from the NYSE calendar (common/clock.py), so daylight-saving changes, holidays and early closes need no
care from whoever installs the schedule, and the server's time zone does not matter:
- scans: open + 5, 8 and 11 minutes (large, mid, small caps); midday at open + 3 hours, the same three minutes
  apart, left out when it would not end at least 30 minutes before the close scans (early-close days); close
  scans at close - 30, 27 and 24 minutes;
- the monitor every 5 minutes from the open to the close, both included;
- the rebalance's daily run at REBALANCE_TIME when that is before the close;
- bookkeeping: update-tracking every 30 minutes from the open to the close, daily-snapshot at close + 5 and
  update-outcomes at close + 10 minutes; cleanup after the week's last session (close + 20 minutes).
Each run has a slot (its day, job and planned time: a run happens at most once per slot) and a grace period: a
run missed by less than that may still be caught up, one missed by more is skipped.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta

from common.clock import NY, UTC, Calendar, Session

CAPS = ("large", "mid", "small")
SCAN_GRACE = timedelta(minutes=10)
MONITOR_GRACE = timedelta(minutes=5)
REBALANCE_GRACE = timedelta(hours=1)
TRACKING_GRACE = timedelta(minutes=30)
NIGHTLY_GRACE = timedelta(hours=6)


@dataclass(frozen=True)
class PlannedRun:
    job: str  # scan, monitor, rebalance, jobs
    args: tuple[str, ...]  # the command line after `main.py`
    at: datetime  # aware, New York
    grace: timedelta

    @property
    def slot(self) -> str:
        """Unique for the run: its New York day and minute and its command."""
        return f"{self.at.astimezone(NY):%Y-%m-%dT%H:%M} {' '.join(self.args)}"


def _scans(session: Session) -> list[PlannedRun]:
    close_scan = session.close - timedelta(minutes=30)
    slots = [("open", session.open + timedelta(minutes=5)),
             ("midday", session.open + timedelta(hours=3)),
             ("close", close_scan)]
    runs = []
    for scan_type, first in slots:
        if scan_type == "midday" and first + timedelta(minutes=6) > close_scan - timedelta(minutes=30):
            continue  # an early close leaves no room for a midday scan apart from the close scans
        for k, cap in enumerate(CAPS):
            runs.append(PlannedRun("scan", ("scan", "--type", scan_type, "--cap", cap),
                                   first + timedelta(minutes=3 * k), SCAN_GRACE))
    return runs


def _every(start: datetime, end: datetime, step: timedelta):
    moment = start
    while moment <= end:
        yield moment
        moment += step


def planned_runs(session: Session, rebalance_time: time, calendar: Calendar) -> list[PlannedRun]:
    """Every planned run of `session`, in time order (runs at the same minute in the order they are listed)."""
    runs = _scans(session)
    runs += [PlannedRun("monitor", ("monitor",), at, MONITOR_GRACE)
             for at in _every(session.open, session.close, timedelta(minutes=5))]
    rebalance_at = datetime.combine(session.day, rebalance_time, tzinfo=NY)
    if session.open <= rebalance_at < session.close:
        runs.append(PlannedRun("rebalance", ("rebalance", "--universe", "all", "--daily"), rebalance_at,
                               REBALANCE_GRACE))
    runs += [PlannedRun("jobs", ("jobs", "update-tracking"), at, TRACKING_GRACE)
             for at in _every(session.open, session.close, timedelta(minutes=30))]
    runs.append(PlannedRun("jobs", ("jobs", "daily-snapshot"), session.close + timedelta(minutes=5), NIGHTLY_GRACE))
    runs.append(PlannedRun("jobs", ("jobs", "update-outcomes"), session.close + timedelta(minutes=10),
                           NIGHTLY_GRACE))
    following = calendar.next_session(session.day)
    if following.isocalendar()[:2] != session.day.isocalendar()[:2]:  # the week's last session
        runs.append(PlannedRun("jobs", ("jobs", "cleanup"), session.close + timedelta(minutes=20), NIGHTLY_GRACE))
    order = {"monitor": 0, "scan": 1, "rebalance": 2, "jobs": 3}  # as cron starts them at the same minute
    return sorted(runs, key=lambda run: (run.at, order[run.job]))


def as_json(run: PlannedRun) -> dict:
    return {"slot": run.slot, "job": run.job, "command": " ".join(run.args),
            "new_york": run.at.astimezone(NY).isoformat(), "utc": run.at.astimezone(UTC).isoformat(),
            "grace_s": int(run.grace.total_seconds())}


def schedule_text(session: Session, runs: list[PlannedRun]) -> str:
    """The runs of a session for people: one line per command, a repeated one as its first and last time."""
    def both(moment: datetime) -> str:
        return f"{moment.astimezone(NY):%H:%M %Z}  {moment.astimezone(UTC):%H:%M} UTC"

    kind = "early close" if session.early_close else "close"
    lines = [f"session {session.day}: open {both(session.open)}, {kind} {both(session.close)}"]
    by_command: dict[tuple[str, ...], list[PlannedRun]] = {}
    for run in runs:
        by_command.setdefault(run.args, []).append(run)
    for args, group in sorted(by_command.items(), key=lambda item: item[1][0].at):
        if len(group) == 1:
            lines.append(f"  {both(group[0].at)}  {' '.join(args)}")
        else:
            step = int((group[1].at - group[0].at).total_seconds() // 60)
            lines.append(f"  {both(group[0].at)}  {' '.join(args)}, every {step} min until {both(group[-1].at)} "
                         f"({len(group)} runs)")
    return "\n".join(lines)

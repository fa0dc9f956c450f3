"""The product's own schedule on the command line: `schedule` shows the planned runs, `tick` runs what is due."""
from __future__ import annotations

import json

import click

from cli.app import cli


@cli.command(name="schedule")
@click.option("--date", "day", help="The first session to show (YYYY-MM-DD) instead of today's or the next one.")
@click.option("--json", "as_json", is_flag=True, help="Every planned run as JSON.")
@click.pass_context
def schedule_command(ctx: click.Context, day: str | None, as_json: bool) -> None:
    """Today's (or the next) session's planned runs and the next session's, in New York time and UTC."""
    from datetime import date

    from common.clock import Clock, calendar, parse_asof
    from common.errors import ConfigError
    from core import schedule

    config = ctx.find_root().obj.config
    cal = calendar()
    if day is not None:
        try:
            first = date.fromisoformat(day)
        except ValueError:
            raise ConfigError(f"--date: expected YYYY-MM-DD, got {day!r}") from None
    else:
        first = Clock(parse_asof(config.momentum_asof) if config.momentum_asof else None).today()
    first = first if cal.is_session(first) else cal.next_session(first)
    sessions = [cal.session(first), cal.session(cal.next_session(first))]
    plans = [(s, schedule.planned_runs(s, config.rebalance_clock, cal)) for s in sessions]
    if as_json:
        click.echo(json.dumps({"command": "schedule", "sessions": [
            {"session": str(s.day), "open": s.open.isoformat(), "close": s.close.isoformat(),
             "early_close": s.early_close, "runs": [schedule.as_json(r) for r in runs]} for s, runs in plans]},
            indent=2))
        return
    click.echo("\n\n".join(schedule.schedule_text(s, runs) for s, runs in plans))


@cli.command()
@click.pass_context
def tick(ctx: click.Context) -> None:
    """Run whatever the schedule has due now, each planned run once (started every minute by cron or a systemd
    timer, in any time zone). Exits 75, silently, while another tick is still running."""
    import logging
    import sys

    from cli.app import GLOBAL_OPTIONS, deliver_alerts
    from common.errors import EXIT_LOCKED, CommandLocked
    from common.locks import command_lock
    from flows import tick as ticking

    root = ctx.find_root()
    rt = root.obj
    try:
        ctx.with_resource(command_lock(rt.journal.path, "tick"))  # held until the command ends
    except CommandLocked as err:
        logging.getLogger("momentum").info("tick: %s", err)
        sys.exit(EXIT_LOCKED)
    now = rt.clock.now()
    environment = {GLOBAL_OPTIONS[name]: value for name, value in root.params.items()
                   if name in GLOBAL_OPTIONS and value is not None}
    for result in ticking.tick(rt, now, ticking.subprocess_runner(environment)):
        click.echo(result.text())
        for line in result.output.rstrip().splitlines():
            click.echo(f"    {line}")
    ticking.raise_dead_man(rt, now)
    deliver_alerts(rt)

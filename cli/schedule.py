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
        click.echo(json.dumps([{"session": str(s.day), "open": s.open.isoformat(), "close": s.close.isoformat(),
                                "early_close": s.early_close, "runs": [schedule.as_json(r) for r in runs]}
                               for s, runs in plans], indent=2))
        return
    click.echo("\n\n".join(schedule.schedule_text(s, runs) for s, runs in plans))

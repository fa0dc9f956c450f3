"""Command-line groups for alerts and the Telegram bot: `alerts test`, `bot poll` (registered on the group when
imported)."""
from __future__ import annotations

import click

from cli.app import cli, done, start
from common.errors import Unavailable

# Each command imports what it runs inside its function, so command start-up stays short.


@click.group(name="alerts")
def alerts_group() -> None:
    """Alert delivery to the log, Telegram and Discord."""


@alerts_group.command(name="test")
@click.pass_context
def alerts_test(ctx: click.Context) -> None:
    """Send one test alert through every configured channel and show each channel's result.

    Exits 3 when a channel could not be reached, so a setup check can be scripted.
    """
    from ports import alerts

    rt = start(ctx)
    channels = ", ".join(rt.config.alert_channels)
    event_id = rt.journal.event("info", "alert", f"test alert from Momentum Agent ({rt.mode}; channels {channels})",
                                source="alerts test", detail={"kind": "test"})
    report = alerts.dispatch(rt.journal, rt.config)
    delivered = alerts.delivery_of(rt.journal, event_id)
    failures = []
    for channel, result in delivered.items():
        if channel == "attempts":
            continue
        click.echo(f"{channel}: {result}")
        if result != "sent":
            failures.append(f"{channel} {result}")
    if report.busy:
        click.echo("another process is dispatching alerts; the test alert goes out with its run or the next one")
    elif not alerts.configured_channels(rt.config):
        click.echo("only the log channel is configured (set ALERT_CHANNELS=log,telegram,discord to add others)")
    if failures:
        raise Unavailable("alerts test: " + "; ".join(failures))
    done(rt)


@click.group(name="bot")
def bot_group() -> None:
    """The Telegram command bot."""


@bot_group.command(name="poll")
@click.pass_context
def bot_poll(ctx: click.Context) -> None:
    """Answer the Telegram commands waiting since the last poll (cron runs this every minute)."""
    from cli import bot

    rt = start(ctx)
    report = bot.poll(rt)
    click.echo(report.summary())
    done(rt)


for _command in (alerts_group, bot_group):
    cli.add_command(_command)

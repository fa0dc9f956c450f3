"""Command line of the second system: `strat scan` and `options positions` (registered on the group when imported).

Thin: parse options, record the run in the journal, call one function, print.
"""
from __future__ import annotations

import json

import click

from cli.app import cli, done, start
from common.errors import ConfigError

# Each command imports what it runs inside its function, so command start-up stays short.


@click.group(name="strat")
def strat_group() -> None:
    """STRAT signals (bar types 1, 2U, 2D, 3; patterns 2-1-2, 3-1-2, 2-2, 3-2) on daily and weekly bars."""


@strat_group.command(name="scan")
@click.option("--timeframe", type=click.Choice(["1D", "1W"]), default="1D", show_default=True)
@click.option("--symbols", help="Comma list of symbols [default: the whole universe].")
@click.option("--dry-run", is_flag=True, help="Store and alert signals, send no option order.")
@click.option("--force", is_flag=True, help="Send option orders outside regular market hours.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def strat_scan(ctx: click.Context, timeframe: str, symbols: str | None, dry_run: bool, force: bool,
               as_json: bool) -> None:
    """Find STRAT signals on the last completed bar, store and alert them; with `set options_trading on`, buy
    them as options (7-21 days, |delta| 0.40-0.55, within OPTIONS_MAX_CAPITAL)."""
    from flows import operator, strat_scan

    wanted = [s.strip().upper() for s in symbols.split(",") if s.strip()] if symbols is not None else None
    if wanted == []:  # `--symbols ""` or ",,": a slip, not a request for the whole universe
        raise ConfigError("--symbols: no symbols given (use e.g. AAPL,MSFT, or leave --symbols out for the universe)")
    rt = start(ctx)
    result = strat_scan.run_scan(rt, timeframe, wanted, dry_run=dry_run, force=force)
    if as_json:
        click.echo(strat_scan.signals_json(result))
    else:
        click.echo(operator.mode_line(rt) + (" | DRY RUN: no orders are sent" if dry_run else ""))
        click.echo(strat_scan.summary_text(result))
    done(rt)


@click.group(name="options")
def options_group() -> None:
    """Option positions bought for STRAT signals."""


@options_group.command(name="positions")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def options_positions(ctx: click.Context, as_json: bool) -> None:
    """Open option trades: contract, underlying, days to expiry, premium, P&L (x100 per contract), stop, target."""
    from flows import operator, option_exits

    rt = start(ctx)
    rows = option_exits.open_option_rows(rt)
    if as_json:
        click.echo(json.dumps({"command": "options positions", "positions": rows}, indent=2, default=str))
    else:
        click.echo(operator.mode_line(rt))
        click.echo(option_exits.option_positions_text(rows))
    done(rt)


for _command in (strat_group, options_group):
    cli.add_command(_command)

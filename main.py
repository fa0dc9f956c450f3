"""Momentum Agent command line. Each command parses options, builds a Runtime, calls one function, prints."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import NoReturn

import click

from config import load_config, product_version, redact
from errors import EXIT_FAILURE, MomentumError

log = logging.getLogger("momentum")
GLOBAL_OPTIONS = {"db": "MOMENTUM_DB", "data": "DATA_SOURCE", "market": "MARKET_DATA", "broker": "BROKER",
                  "asof": "MOMENTUM_ASOF", "universe": "UNIVERSE_FILE"}


class AgentGroup(click.Group):
    """Maps the product's errors to one line on stderr and the documented exit code.

    A SQLite failure of the journal met anywhere in a command (locked by another command past the busy timeout,
    damaged, read-only) is mapped here, in one place, to the journal's own errors (db.journal_fault)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MomentumError as err:
            _fail(ctx, err)
        except (click.exceptions.Exit, click.exceptions.ClickException, click.exceptions.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("error: interrupted", err=True)
            sys.exit(130)
        except Exception as err:  # the last line of defence: log the traceback, show one line
            fault = _journal_fault(ctx, err)
            if fault is not None:
                log.error("journal failure: %s", fault, exc_info=err)
                # Not recorded in the journal: it is locked (recording would wait another busy timeout), damaged or
                # read-only; closing the connection rolls back whatever the command had not committed.
                _fail(ctx, fault, record=False)
            log.exception("unexpected failure")
            message = redact(f"{type(err).__name__}: {err}")
            click.echo(f"error: unexpected failure ({message}); details in the log", err=True)
            _finish_run(ctx, "failed", EXIT_FAILURE, message)
            sys.exit(EXIT_FAILURE)


def _fail(ctx: click.Context, err: MomentumError, *, record: bool = True) -> NoReturn:
    message = redact(str(err))
    stream_err = err.exit_code != 0
    click.echo(message if not stream_err else f"error: {message}", err=stream_err)
    if record:
        _finish_run(ctx, "skipped" if err.exit_code in (0, 75) else "failed", err.exit_code, message)
    sys.exit(err.exit_code)


def _journal_fault(ctx: click.Context, err: Exception) -> MomentumError | None:
    """The journal error `err` amounts to (a sqlite3 error of the journal), or None."""
    rt = ctx.obj
    if rt is None:
        return None
    from db import journal_fault

    return journal_fault(err, rt.config.momentum_db)


def _finish_run(ctx: click.Context, status: str, code: int, detail: str | None = None) -> None:
    rt = ctx.obj
    if rt is not None and "journal" in getattr(rt, "__dict__", {}):
        try:
            rt.journal.finish_run(status, code, detail)
            deliver_alerts(rt)
        except Exception:  # noqa: BLE001 - recording the run must never hide the original error
            log.warning("could not record the end of the run", exc_info=True)


def deliver_alerts(rt) -> None:
    """Send the alerts this command recorded (the outbox); a failing channel is recorded, never raised."""
    import alerts

    report = alerts.dispatch(rt.journal, rt.config)
    if report.errors:
        log.warning("alert delivery: %s", report.summary())


@click.group(cls=AgentGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--db", help="Journal file [MOMENTUM_DB, default data/trades.db].")
@click.option("--data", help="Market data: sim, csv:PATH or alpaca [DATA_SOURCE, default sim].")
@click.option("--market", help="SPY/VIX daily CSV [MARKET_DATA].")
@click.option("--broker", help="Broker: sim or alpaca [BROKER, default sim].")
@click.option("--asof", help="Simulated time, ISO; naive = America/New_York [MOMENTUM_ASOF].")
@click.option("--universe", help="Universe JSON [UNIVERSE_FILE, default data/universe.json].")
@click.option("-v", "--verbose", is_flag=True, help="Also log to stderr.")
@click.version_option(product_version(), "--version", prog_name="momentum-agent", message="%(prog)s %(version)s")
@click.pass_context
def cli(ctx: click.Context, verbose: bool, **options: str | None) -> None:
    """Momentum Agent: an autonomous momentum-trading agent for US equities.

    Every command works offline on the embedded simulated market and broker with no configuration.
    Exit codes: 0 done, 1 unexpected failure, 2 bad input or configuration, 3 broker or data source
    unreachable, 75 another scan holds the lock.
    """
    from logsetup import configure_logging
    from runtime import Runtime

    overrides = {GLOBAL_OPTIONS[k]: v for k, v in options.items() if v is not None}
    config = load_config(overrides)
    configure_logging(Path(config.log_dir), config.log_level, verbose=verbose)
    ctx.obj = Runtime(config, ctx.invoked_subcommand or "")
    ctx.call_on_close(ctx.obj.close)


def _runtime(ctx: click.Context):
    rt = ctx.obj
    rt.journal.start_run(ctx.command_path)
    return rt


def _done(rt) -> None:
    rt.journal.finish_run("done", 0)
    deliver_alerts(rt)


@cli.command()
@click.pass_context
def status(ctx: click.Context) -> None:
    """Mode, clock, market hours, account, positions, halt state and monitoring statistics."""
    import ops

    rt = _runtime(ctx)
    click.echo(ops.mode_line(rt))
    click.echo(ops.status_text(ops.status(rt)))
    _done(rt)


@cli.command()
@click.pass_context
def positions(ctx: click.Context) -> None:
    """Open positions at the broker with their journal trade and stop."""
    import ops
    import render

    rt = _runtime(ctx)
    click.echo(ops.mode_line(rt))
    rows = ops.positions(rt)
    click.echo(render.table(rows, ops.POSITION_COLUMNS) if rows else "no open positions")
    _done(rt)


@cli.command()
@click.option("--open", "open_only", is_flag=True, help="Only orders not in a final state.")
@click.pass_context
def orders(ctx: click.Context, open_only: bool) -> None:
    """Orders recorded in the journal, newest first."""
    import ops
    import render

    rt = _runtime(ctx)
    click.echo(ops.mode_line(rt))
    rows = ops.orders(rt, open_only)
    click.echo(render.table(rows, ops.ORDER_COLUMNS) if rows else "no orders")
    _done(rt)


@cli.command()
@click.pass_context
def settings(ctx: click.Context) -> None:
    """Runtime settings stored in the journal."""
    from config import RUNTIME_SETTINGS

    import render

    rt = _runtime(ctx)
    values = rt.journal.settings()
    rows = [{"key": k, "value": values[k], "meaning": spec.help} for k, spec in RUNTIME_SETTINGS.items()]
    click.echo(render.table(rows, ["key", "value", "meaning"]))
    _done(rt)


@cli.command(name="set")
@click.argument("key")
@click.argument("value")
@click.pass_context
def set_setting(ctx: click.Context, key: str, value: str) -> None:
    """Change a runtime setting, e.g. `set autoclose_threshold 6`."""
    rt = _runtime(ctx)
    stored = rt.journal.set_setting(key, value, by="cli")
    rt.journal.event("info", "setting", f"setting {key} = {stored}", source="cli")
    click.echo(f"{key} = {stored}")
    _done(rt)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def errors(ctx: click.Context, as_json: bool) -> None:
    """The last 10 distinct errors recorded in the journal."""
    import render

    rt = _runtime(ctx)
    rows = rt.journal.recent_errors(10)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        click.echo(render.table(rows, ["last_seen", "level", "count", "source", "message"]) if rows
                   else "no errors recorded")
    _done(rt)


@cli.command()
@click.pass_context
def reconcile(ctx: click.Context) -> None:
    """Bring the journal in line with the broker: orders, fills, positions and stops."""
    import ops
    import reconciler

    rt = _runtime(ctx)
    click.echo(ops.mode_line(rt))
    import executor

    report = reconciler.reconcile(rt)
    click.echo(reconciler.report_text(report))
    for symbol in executor.protect_all(rt):
        click.echo(f"  stop placed for {symbol} (it had no single stop covering the whole position)")
    _done(rt)


@cli.command()
@click.option("--type", "scan_type", type=click.Choice(["open", "midday", "close"]),
              help="Which of the day's three scans [default: from the time of day].")
@click.option("--cap", type=click.Choice(["large", "mid", "small", "all"]), default="all", show_default=True)
@click.option("--dry-run", is_flag=True, help="Compute and record everything, send no order, ignore market hours.")
@click.option("--max-buys", type=click.IntRange(0, 100), help="Cap the buys of this scan.")
@click.option("--force", is_flag=True, help="Run outside regular market hours.")
@click.pass_context
def scan(ctx: click.Context, scan_type: str, cap: str, dry_run: bool, max_buys: int | None, force: bool) -> None:
    """Scan the universe, decide, execute and record (the autonomous loop)."""
    import agent
    import ops

    rt = _runtime(ctx)
    click.echo(ops.mode_line(rt) + (" | DRY RUN: no orders are sent" if dry_run else ""))
    scan_type = scan_type or agent.scan_type_for(rt.clock.now())
    results = agent.run_scan(rt, scan_type, cap, dry_run=dry_run, max_buys=max_buys, force=force)
    click.echo(agent.summary_text(results))
    _done(rt)


@cli.command()
@click.option("--dry-run", is_flag=True, help="Check and record, send no order, ignore market hours.")
@click.option("--force", is_flag=True, help="Run outside regular market hours.")
@click.pass_context
def monitor(ctx: click.Context, dry_run: bool, force: bool) -> None:
    """Check positions (each every 30 minutes, urgent ones every run) and run the exit engine."""
    import monitor as position_monitor
    import ops

    rt = _runtime(ctx)
    click.echo(ops.mode_line(rt) + (" | DRY RUN: no orders are sent" if dry_run else ""))
    report = position_monitor.run_monitor(rt, dry_run=dry_run, force=force)
    click.echo(position_monitor.report_text(report))
    _done(rt)


@cli.command()
@click.argument("symbol")
@click.option("--force", is_flag=True, help="Run outside regular market hours.")
@click.pass_context
def close(ctx: click.Context, symbol: str, force: bool) -> None:
    """Close one position: cancel its stops, wait for the shares, sell at market."""
    import ops
    import trading

    rt = _runtime(ctx)
    click.echo(ops.mode_line(rt))
    ops.require_market_open(rt, force=force, what="close")
    result = trading.close_symbol(rt, symbol)
    if not result.sent:
        raise trading.CloseNotSent(trading.close_text(result))
    click.echo(trading.close_text(result))
    _done(rt)


@cli.command()
@click.option("--flatten", is_flag=True, help="Also close every position at market.")
@click.pass_context
def halt(ctx: click.Context, flatten: bool) -> None:
    """Stop buying (stored in the journal); --flatten also closes everything."""
    import ops
    import trading

    rt = _runtime(ctx)
    click.echo(ops.mode_line(rt))
    closed = trading.halt(rt, flatten=flatten)
    click.echo("halted: no new buys until `resume`")
    for result in closed:
        click.echo(f"  {trading.close_text(result)}")
    _done(rt)


@cli.command()
@click.pass_context
def resume(ctx: click.Context) -> None:
    """Allow buying again after `halt`."""
    import trading

    rt = _runtime(ctx)
    trading.resume(rt)
    click.echo("resumed: buying allowed")
    _done(rt)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def regime(ctx: click.Context, as_json: bool) -> None:
    """The market regime of the last completed session, its features and why."""
    import regimes

    from errors import DataError

    rt = _runtime(ctx)
    day = regimes.completed_session(rt)
    row = regimes.regime_on(rt, day)
    if row is None:
        raise DataError(f"regime: no SPY history available from {rt.config.data_source}")
    if as_json:
        click.echo(json.dumps({k: row[k] for k in ("date", "regime", "factor", "reason", "features", "params")},
                              indent=2, default=str))
    else:
        click.echo(f"{row['date']}: {row['regime']} (exposure factor {row['factor']:g})")
        click.echo(row["reason"])
        for name, value in row["features"].items():
            click.echo(f"  {name:<24} {value}")
    _done(rt)


@cli.command(name="rebalance")
@click.option("--universe", "universe_name", required=True,
              help="A universe.json key (large, mid, small, all) or a GICS sector, e.g. 'Information Technology'.")
@click.option("--top-n", type=click.IntRange(1, 100), default=5, show_default=True)
@click.option("--dry-run", is_flag=True, help="Print the order table, send nothing.")
@click.option("--force", is_flag=True, help="Run outside regular market hours.")
@click.option("--first-session-only", is_flag=True, help="Do nothing unless today is the month's first session "
              "(for cron).")
@click.pass_context
def rebalance_command(ctx: click.Context, universe_name: str, top_n: int, dry_run: bool, force: bool,
                      first_session_only: bool) -> None:
    """The 52-week-high momentum rebalance: top N at equal weight x the regime's allocation."""
    import ops
    import rebalance

    rt = _runtime(ctx)
    click.echo(ops.mode_line(rt) + (" | DRY RUN: no orders are sent" if dry_run else ""))
    plan = rebalance.run_rebalance(rt, universe_name, top_n, dry_run=dry_run, force=force,
                                   first_session_only=first_session_only)
    click.echo(rebalance.plan_text(plan, top_n) if plan else "rebalance: not the month's first session; nothing to do")
    _done(rt)


@cli.group()
def universe() -> None:
    """Build the cap-tiered universe file."""


@universe.command(name="build")
@click.option("--from", "source", required=True, type=click.Path(dir_okay=False),
              help="A long-format bars file (dollar-volume) or a CSV with market caps (market-cap).")
@click.option("--by", type=click.Choice(["dollar-volume", "market-cap"]), required=True,
              help="Terciles of median dollar volume, or >$10B / $2-10B / <$2B market cap.")
@click.option("--out", type=click.Path(dir_okay=False), help="Where to write it [default: --universe].")
@click.pass_context
def universe_build(ctx: click.Context, source: str, by: str, out: str | None) -> None:
    """Build data/universe.json from a bars file or a market-cap list."""
    from universe import build_universe, write_universe

    rt = ctx.obj
    built = build_universe(source, by)
    target = Path(out or rt.config.universe_file)
    write_universe(built, target)
    counts = ", ".join(f"{cap} {len(built.symbols(cap))}" for cap in ("large", "mid", "small"))
    click.echo(f"wrote {target}: {counts}")


def _register_command_modules() -> None:
    """Command groups that live beside the parts they drive (reports, alerts and the bot, jobs)."""
    import importlib

    for name in ("cli_reports", "cli_alerts", "cli_backtest", "cli_options"):
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
            continue
        for command in module.COMMANDS:
            cli.add_command(command)


_register_command_modules()


def main() -> None:
    """The installed `momentum` command."""
    cli(prog_name="momentum")


if __name__ == "__main__":
    cli(prog_name="main.py")

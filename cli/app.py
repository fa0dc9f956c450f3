"""The command-line application: the click group with the global options, the mapping of the product's errors to
one line and the documented exit code, and how every command starts and finishes its run in the journal."""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import NoReturn

import click

from common.errors import EXIT_FAILURE, ConfigError, MomentumError
from config import load_config, product_version, redact

log = logging.getLogger("momentum")
GLOBAL_OPTIONS = {"db": "MOMENTUM_DB", "data": "DATA_SOURCE", "market": "MARKET_DATA", "broker": "BROKER",
                  "asof": "MOMENTUM_ASOF", "universe": "UNIVERSE_FILE"}


class AgentGroup(click.Group):
    """Maps the product's errors to one line on stderr and the documented exit code.

    A SQLite failure of the journal met anywhere in a command (locked by another command past the busy timeout,
    damaged, read-only) is mapped here, in one place, to the journal's own errors (db.journal_fault)."""

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as err:  # a bad global option
            _usage_error(err)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.UsageError as err:  # a bad command name, option or argument
            _usage_error(err)
        except MomentumError as err:
            _fail(ctx, err)
        except (click.exceptions.Exit, click.exceptions.ClickException, click.exceptions.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("error: interrupted", err=True)
            sys.exit(130)
        except Exception as err:  # the last line of defence: log the traceback, show one line
            if isinstance(err, PATH_ERRORS) and err.filename is not None:
                # a file or folder the command was given (or configured with) cannot be read or written: bad input
                log.warning("path error", exc_info=err)
                _fail(ctx, ConfigError(_path_problem(err)))
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


PATH_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)


def _path_problem(err: OSError) -> str:
    """'PATH: reason', naming the folder when the file was a temporary one beside its target (an atomic write)."""
    path, reason = Path(err.filename), err.strerror or type(err).__name__
    if path.name.endswith(".tmp"):
        return f"cannot write a file in {path.parent}: {reason}"
    return f"{path}: {reason}"


def _usage_error(err: click.UsageError) -> NoReturn:
    """A command line click cannot parse: one line naming the problem and where the help is, exit 2 (the help itself
    when a group is given no command)."""
    if isinstance(err, click.exceptions.NoArgsIsHelpError):
        raise err
    where = f" (see `{err.ctx.command_path} --help`)" if err.ctx is not None else ""
    click.echo(f"error: {err.format_message()}{where}", err=True)
    sys.exit(err.exit_code)


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
            if status == "failed":
                write_dashboard(rt, ask_broker=False)  # what the failure left behind, unprotected positions first
        except Exception:  # noqa: BLE001 - recording the run must never hide the original error
            log.warning("could not record the end of the run", exc_info=True)


def deliver_alerts(rt) -> None:
    """Send the alerts this command recorded (the outbox); a failing channel is recorded, never raised."""
    from ports import alerts

    report = alerts.dispatch(rt.journal, rt.config)
    if report.errors:
        log.warning("alert delivery: %s", report.summary())


@click.group(cls=AgentGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--db", help="Journal file [MOMENTUM_DB, default data/trades.db].")
@click.option("--data", help="Market data: sim, csv:PATH or alpaca [DATA_SOURCE, default sim].")
@click.option("--market", help="SPY/VIX daily CSV [MARKET_DATA].")
@click.option("--broker", help="Broker: sim or alpaca [BROKER, default sim].")
@click.option("--asof", help="Simulated time, ISO; naive = America/New_York [MOMENTUM_ASOF; unset or empty: real "
              "time].")
@click.option("--universe", help="Universe JSON [UNIVERSE_FILE, default data/universe.json].")
@click.option("-v", "--verbose", is_flag=True, help="Also log to stderr.")
@click.version_option(product_version(), "--version", prog_name="momentum-agent", message="%(prog)s %(version)s")
@click.pass_context
def cli(ctx: click.Context, verbose: bool, **options: str | None) -> None:
    """Momentum Agent: an autonomous momentum-trading agent for US equities.

    Every command works offline on the embedded simulated market and broker with no configuration.
    An option given an empty value (--db "") is refused rather than read as its default.
    Exit codes: 0 done, 1 unexpected failure, 2 bad input or configuration, 3 broker or data source
    unreachable, 75 another run of the command (or another tick) holds its lock.
    """
    from cli.options_check import check_globals
    from common.logs import configure_logging
    from flows.runtime import Runtime

    check_globals(options)  # an empty --db or --asof is a slip (an unset shell variable), not a request for defaults
    overrides = {GLOBAL_OPTIONS[k]: v for k, v in options.items() if v is not None}
    config = load_config(overrides)
    configure_logging(Path(config.log_dir), config.log_level, verbose=verbose)
    ctx.obj = Runtime(config, ctx.invoked_subcommand or "")
    ctx.call_on_close(ctx.obj.close)


# Commands that hold their lock (common/locks.py) for their whole run, taken here before the run is recorded; the
# scan takes its own around the work, after its input checks.
LOCKED_HERE = ("monitor", "jobs", "rebalance", "reconcile")


def start(ctx: click.Context):
    """The command's runtime, its run recorded as started in the journal (under the command's lock, if it has one:
    a second monitor, job, rebalance or reconcile on the same journal exits 75)."""
    from common.locks import command_lock

    rt = ctx.find_root().obj
    top = ctx.command_path.split()[1:2]
    if top and top[0] in LOCKED_HERE:
        ctx.with_resource(command_lock(rt.journal.path, top[0]))
    rt.journal.start_run(ctx.command_path)
    return rt


def done(rt, status: str = "done", *, deliver: bool = True) -> None:
    """Record the run as finished and send the alerts it recorded (the outbox)."""
    rt.journal.finish_run(status, 0)
    if deliver:
        deliver_alerts(rt)
    if status == "done":
        write_dashboard(rt)


# Commands after which the browser dashboard is written again: those that change what it shows. The backtest writes
# a tearsheet of its own (cli/backtest.py).
DASHBOARD_AFTER = ("scan", "monitor", "jobs", "rebalance", "reconcile", "close", "halt", "resume")


def write_dashboard(rt, *, ask_broker: bool = True) -> None:
    """Write the dashboard (flows/dashboard.py) after a command that changed the journal; it never raises, so the
    command's exit code stays its own."""
    if rt.command in DASHBOARD_AFTER:
        from flows import dashboard

        dashboard.write_after_run(rt, ask_broker=ask_broker)

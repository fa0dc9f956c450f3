"""Operator commands: status, positions, orders, settings, set, errors, reconcile, scan, monitor, close, halt,
resume, regime, rebalance and universe build. Each parses its options, starts its run, calls one flow, prints
(text, or with --json one document shaped by cli/json_output.py)."""
from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from cli.app import cli, deliver_alerts, done, start
from cli.options_check import nonempty_path

JSON_HELP = "One JSON document on stdout (docs/json.md)."

# Each command imports the flow it runs inside its function: `settings` or `status` does not pay for pandas, the
# brokers and the scanner it never uses (command start-up is most of a cron run).


@contextmanager
def skipped_as_json(rt, command: str, as_json: bool) -> Iterator[None]:
    """With --json, a run that stops as a normal outcome (exit 0: the market is closed and no --force) prints a
    document saying so instead of a bare line a script could not parse; the run is recorded as skipped, as the
    group does for the text output. Real errors pass through untouched (one line on stderr, their exit code).
    The command's whole body runs inside: nothing after the block may print."""
    from common.errors import MomentumError
    from config import redact

    try:
        yield
    except MomentumError as err:
        if not as_json or err.exit_code != 0:
            raise
        from cli import json_output
        from flows import operator

        message = redact(str(err))
        click.echo(json_output.dumps(json_output.skipped_document(command, operator.mode_line(rt), message)))
        rt.journal.finish_run("skipped", 0, message)
        deliver_alerts(rt)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Mode, clock, market hours, account, positions, halt state and monitoring statistics."""
    from flows import operator

    rt = start(ctx)
    if not as_json:
        click.echo(operator.mode_line(rt))
    data = operator.status(rt)
    if as_json:
        from cli import json_output

        click.echo(json_output.dumps(json_output.status_document(data, operator.mode_line(rt))))
    else:
        click.echo(operator.status_text(data))
    done(rt)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
@click.pass_context
def positions(ctx: click.Context, as_json: bool) -> None:
    """Open positions at the broker with their journal trade and stop."""
    from flows import operator

    rt = start(ctx)
    if not as_json:
        click.echo(operator.mode_line(rt))
    rows = operator.positions(rt)
    if as_json:
        from cli import json_output

        click.echo(json_output.dumps(json_output.positions_document(rows, operator.mode_line(rt))))
    else:
        click.echo(operator.positions_text(rows))
    done(rt)


@cli.command()
@click.option("--open", "open_only", is_flag=True, help="Only orders not in a final state.")
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
@click.pass_context
def orders(ctx: click.Context, open_only: bool, as_json: bool) -> None:
    """Orders recorded in the journal, newest first."""
    from flows import operator

    rt = start(ctx)
    if not as_json:
        click.echo(operator.mode_line(rt))
    rows = operator.orders(rt, open_only)
    if as_json:
        from cli import json_output

        click.echo(json_output.dumps(json_output.orders_document(rows, operator.mode_line(rt), open_only)))
    else:
        click.echo(operator.orders_text(rows))
    done(rt)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
@click.pass_context
def settings(ctx: click.Context, as_json: bool) -> None:
    """Runtime settings stored in the journal."""
    from common import render
    from config import RUNTIME_SETTINGS

    rt = start(ctx)
    values = rt.journal.settings()
    if as_json:
        from cli import json_output

        click.echo(json_output.dumps(json_output.settings_document(values, RUNTIME_SETTINGS)))
    else:
        rows = [{"key": k, "value": values[k], "meaning": spec.help} for k, spec in RUNTIME_SETTINGS.items()]
        click.echo(render.table(rows, ["key", "value", "meaning"]))
    done(rt)


@cli.command(name="set", context_settings={"ignore_unknown_options": True})  # `set autoclose_threshold -3`: a value
@click.argument("key")
@click.argument("value")
@click.pass_context
def set_setting(ctx: click.Context, key: str, value: str) -> None:
    """Change a runtime setting, e.g. `set autoclose_threshold 6`."""
    rt = start(ctx)
    stored = rt.journal.set_setting(key, value, by="cli")
    rt.journal.event("info", "setting", f"setting {key} = {stored}", source="cli")
    click.echo(f"{key} = {stored}")
    done(rt)


@cli.command()
@click.option("--limit", type=click.IntRange(1, 1000), default=10, show_default=True,
              help="How many distinct errors to list, newest first.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def errors(ctx: click.Context, limit: int, as_json: bool) -> None:
    """The last distinct errors recorded in the journal: error and critical events and failed runs."""

    from common import render

    rt = start(ctx)
    rows = rt.journal.recent_errors(limit)
    hidden = rt.journal.distinct_error_count() - len(rows)
    if as_json:
        click.echo(json.dumps({"command": "errors", "errors": rows, "not_shown": hidden}, indent=2))
    else:
        shown = [{**row, "last_seen": render.ny_stamp(row["last_seen"])} for row in rows]
        click.echo(render.table(shown, ["last_seen", "level", "count", "source", "message"]) if rows
                   else "no errors recorded")
        if hidden > 0:
            click.echo(f"({hidden} older distinct error{'s' if hidden != 1 else ''} not shown: "
                       f"`errors --limit {limit + hidden}` lists them)")
    done(rt)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
@click.pass_context
def reconcile(ctx: click.Context, as_json: bool) -> None:
    """Bring the journal in line with the broker: orders, fills, positions and stops."""
    from flows import operator
    from journal import reconcile

    rt = start(ctx)
    if not as_json:
        click.echo(operator.mode_line(rt))
    import executor

    report = reconcile.reconcile(rt)
    if not as_json:
        click.echo(reconcile.report_text(report))
    placed = executor.protect_all(rt)
    if as_json:
        from cli import json_output

        click.echo(json_output.dumps(json_output.reconcile_document(report, placed, operator.mode_line(rt))))
    else:
        for symbol in placed:
            click.echo(f"  stop placed for {symbol} (it had no single stop covering the whole position)")
    done(rt)


@cli.command()
@click.option("--type", "scan_type", type=click.Choice(["open", "midday", "close"]),
              help="Which of the day's three scans [default: from the time of day].")
@click.option("--cap", type=click.Choice(["large", "mid", "small", "all"]), default="all", show_default=True)
@click.option("--dry-run", is_flag=True, help="Compute and record everything, send no order, ignore market hours.")
@click.option("--max-buys", type=click.IntRange(0, 100), help="Cap the buys of this scan.")
@click.option("--force", is_flag=True, help="Run outside regular market hours: it decides and records, and sends no "
              "order while the market is closed (the risk gates would refuse each one).")
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
@click.pass_context
def scan(ctx: click.Context, scan_type: str, cap: str, dry_run: bool, max_buys: int | None, force: bool,
         as_json: bool) -> None:
    """Scan the universe, decide, execute and record (the autonomous loop)."""
    from flows import operator, scan

    rt = start(ctx)
    with skipped_as_json(rt, "scan", as_json):
        closed = force and not dry_run and not rt.calendar.is_open(rt.clock.now())
        dry_run = dry_run or closed  # an order outside the session is refused: a forced scan then only decides
        if not as_json:
            click.echo(operator.mode_line(rt) + (" | market closed: --force decides and records, no orders are sent"
                                                 if closed else " | DRY RUN: no orders are sent" if dry_run else ""))
        scan_type = scan_type or scan.scan_type_for(rt.clock.now())
        results = scan.run_scan(rt, scan_type, cap, dry_run=dry_run, max_buys=max_buys, force=force)
        if as_json:
            from cli import json_output

            click.echo(json_output.dumps(json_output.scan_document(results, operator.mode_line(rt), scan_type, cap,
                                                                   dry_run)))
        else:
            click.echo(scan.summary_text(results))
        done(rt)


@cli.command()
@click.option("--dry-run", is_flag=True, help="Check and record, send no order, ignore market hours.")
@click.option("--force", is_flag=True, help="Run outside regular market hours.")
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
@click.pass_context
def monitor(ctx: click.Context, dry_run: bool, force: bool, as_json: bool) -> None:
    """Check positions (each every 30 minutes, urgent ones every run) and run the exit engine."""
    import monitor as position_monitor
    from flows import operator

    rt = start(ctx)
    with skipped_as_json(rt, "monitor", as_json):
        if not as_json:
            click.echo(operator.mode_line(rt) + (" | DRY RUN: no orders are sent" if dry_run else ""))
        report = position_monitor.run_monitor(rt, dry_run=dry_run, force=force)
        if as_json:
            from cli import json_output

            checks = json_output.run_checks(rt.journal)
            click.echo(json_output.dumps(json_output.monitor_document(report, checks, operator.mode_line(rt),
                                                                      dry_run)))
        else:
            click.echo(position_monitor.report_text(report))
        done(rt)


@cli.command()
@click.argument("symbol")
@click.option("--force", is_flag=True, help="Run outside regular market hours.")
@click.pass_context
def close(ctx: click.Context, symbol: str, force: bool) -> None:
    """Close one position: cancel its stops, wait for the shares, sell at market."""
    from flows import operator, scan_orders

    rt = start(ctx)
    click.echo(operator.mode_line(rt))
    operator.require_market_open(rt, force=force, what="close")
    result = scan_orders.close_symbol(rt, symbol)
    if not result.sent:
        raise scan_orders.CloseNotSent(scan_orders.close_text(result))
    click.echo(scan_orders.close_text(result))
    done(rt)


@cli.command()
@click.option("--flatten", is_flag=True, help="Also close every position at market.")
@click.pass_context
def halt(ctx: click.Context, flatten: bool) -> None:
    """Stop buying (stored in the journal); --flatten also closes everything."""
    from flows import operator, scan_orders

    rt = start(ctx)
    click.echo(operator.mode_line(rt))
    closed = scan_orders.halt(rt, flatten=flatten)
    click.echo("halted: no new buys until `resume`")
    for result in closed:
        click.echo(f"  {scan_orders.close_text(result)}")
    done(rt)


@cli.command()
@click.pass_context
def resume(ctx: click.Context) -> None:
    """Allow buying again after `halt`."""
    from flows import scan_orders

    rt = start(ctx)
    scan_orders.resume(rt)
    click.echo("resumed: buying allowed")
    done(rt)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--history", is_flag=True, help="The online label of every session from --start to --end.")
@click.option("--start", "first_text", help="With --history: first session (YYYY-MM-DD) [default: the series' first].")
@click.option("--end", "last_text", help="With --history: last session (YYYY-MM-DD) [default: the last completed].")
@click.option("--out", callback=nonempty_path,
              help="With --history: write this CSV (date, regime, factor, ...) and a PNG of SPY with the "
              "regimes shaded beside it (same name, .png), instead of printing every day.")
@click.pass_context
def regime(ctx: click.Context, as_json: bool, history: bool, first_text: str | None, last_text: str | None,
           out: str | None) -> None:
    """The market regime of the last completed session, its features and why; with --history, of every session."""
    from datetime import date

    from common.errors import ConfigError, DataError
    from journal import regime_labels

    def parse(text: str | None, option: str) -> date | None:
        try:
            return date.fromisoformat(text) if text else None
        except ValueError:
            raise ConfigError(f"{option}: expected a date YYYY-MM-DD, got {text!r}") from None

    first, last = parse(first_text, "--start"), parse(last_text, "--end")
    if not history and (first or last or out):
        raise ConfigError("--start, --end and --out go with --history")
    rt = start(ctx)
    if history:
        from core.regime import history as regime_history

        last = last or rt.calendar.last_completed_session(rt.clock.now())
        if first and first > last:
            raise ConfigError(f"--start {first} is after --end {last}")
        rows = regime_labels.history(rt, first, last)
        if out:
            csv_path, png_path = regime_history.write(rows, out)
            click.echo(f"wrote {len(rows)} sessions to {csv_path} and the chart to {png_path}")
        elif as_json:
            records = regime_history.table(rows).to_dict("records")
            click.echo(json.dumps({"command": "regime", "history": records}, indent=2, default=str))
        else:
            for record in regime_history.table(rows).itertuples(index=False):
                click.echo(f"{record.date}  {record.regime:<13} {record.factor:g}")
        if not as_json:
            click.echo(regime_history.summary(rows))
        done(rt)
        return
    day = rt.calendar.last_completed_session(rt.clock.now())
    try:
        row = regime_labels.required_regime(rt, day)
    except DataError as err:
        raise DataError(f"regime: {err}") from None
    if as_json:
        fields = ("date", "regime", "factor", "reason", "features", "params")
        click.echo(json.dumps({"command": "regime", **{k: row[k] for k in fields}}, indent=2, default=str))
    else:
        click.echo(f"{row['date']}: {row['regime']} (exposure factor {row['factor']:g})")
        click.echo(row["reason"])
        click.echo(regime_features_text(row["features"]))
    done(rt)


# The regime's features that are fractions of a price or of VIX's history, shown as percents; the others are
# ratios, log drawdowns and z-scores, shown as the plain numbers the model reads.
REGIME_PERCENTS = {"vix_change_1d": "change", "vix_change_3d": "change", "spy_drawdown_63": "change",
                   "vix_percentile": "level"}


def regime_features_text(features: dict) -> str:
    from common import render

    def shown(name: str, value):
        kind = REGIME_PERCENTS.get(name)
        if value is None or kind is None:
            return value
        return render.as_pct(value, fraction=True) if kind == "change" else render.as_level(value, fraction=True)

    return "\n".join("  " + line for line in render.key_values(
        [(name, shown(name, value)) for name, value in features.items()]).splitlines())


@cli.command(name="rebalance")
@click.option("--universe", "universe_name", required=True,
              help="A universe.json key (large, mid, small, all) or a GICS sector, e.g. 'Information Technology'.")
@click.option("--top-n", type=click.IntRange(1, 100), default=None, help="Names held [default: REBALANCE_TOP_N].")
@click.option("--dry-run", is_flag=True, help="Print the order table, send nothing.")
@click.option("--force", is_flag=True, help="Run outside regular market hours.")
@click.option("--first-session-only", is_flag=True, help="Do nothing unless today is the month's first session.")
@click.option("--daily", is_flag=True, help="The daily run at REBALANCE_TIME (for cron): the full rebalance on the "
              "month's first session and on a CRASH's first day, a refill of emptied slots on the others.")
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
@click.pass_context
def rebalance_command(ctx: click.Context, universe_name: str, top_n: int | None, dry_run: bool, force: bool,
                      first_session_only: bool, daily: bool, as_json: bool) -> None:
    """The 52-week-high momentum rebalance: top N at equal weight of its sleeve x the regime's allocation."""
    from flows import operator, rebalance

    rt = start(ctx)
    with skipped_as_json(rt, "rebalance", as_json):
        if not as_json:
            click.echo(operator.mode_line(rt) + (" | DRY RUN: no orders are sent" if dry_run else ""))
        if daily:
            plan = rebalance.run_scheduled(rt, universe_name, top_n, dry_run=dry_run, force=force)
        else:
            plan = rebalance.run_rebalance(rt, universe_name, top_n, dry_run=dry_run, force=force,
                                           first_session_only=first_session_only)
        if as_json:
            from cli import json_output

            click.echo(json_output.dumps(json_output.rebalance_document(plan, operator.mode_line(rt), universe_name,
                                                                        dry_run, daily)))
        else:
            click.echo(rebalance.plan_text(plan, top_n) if plan
                       else "rebalance: not the month's first session; nothing to do")
        done(rt)


@cli.group()
def universe() -> None:
    """Build the cap-tiered universe file."""


@universe.command(name="build")
@click.option("--from", "source", required=True, type=click.Path(dir_okay=False),
              help="A long-format bars file (dollar-volume) or a CSV with market caps (market-cap).")
@click.option("--by", type=click.Choice(["dollar-volume", "market-cap"]), required=True,
              help="Terciles of median dollar volume, or >$10B / $2-10B / <$2B market cap.")
@click.option("--point-in-time", is_flag=True,
              help="Each day's index members only, re-tiered each quarter on the dollar volume before it "
                   "(--by dollar-volume).")
@click.option("--members", type=click.Path(dir_okay=False),
              help="Index membership intervals ticker,start_date,end_date for --point-in-time "
                   "[default: sp500_membership_intervals.csv beside --from].")
@click.option("--out", type=click.Path(dir_okay=False), callback=nonempty_path,
              help="Where to write it [default: --universe or UNIVERSE_FILE, else the home's data/universe.json; "
                   "never the copy shipped with the product].")
@click.pass_context
def universe_build(ctx: click.Context, source: str, by: str, point_in_time: bool, members: str | None,
                   out: str | None) -> None:
    """Build the home's data/universe.json (or --out) from a bars file or a market-cap list; with --point-in-time,
    a universe whose members change over time, so a backtest trades only the names that were in the index on each
    day."""
    from common.universe import build_universe, summary, write_universe
    from config import universe_target

    rt = ctx.obj
    built = build_universe(source, by, point_in_time=point_in_time, members_file=members)
    target = Path(out) if out else universe_target(rt.config)
    write_universe(built, target)
    click.echo(f"wrote {target}: {summary(built)}")

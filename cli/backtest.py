"""Command line of the backtest (registered on the group when imported). Parses options, builds the backtest's own
Runtime over a fresh journal in --out, calls one function, prints."""
from __future__ import annotations

from pathlib import Path

import click

from cli.app import cli
from cli.options_check import nonempty_path, parse_day
from common.errors import ConfigError

# The command imports the backtest inside its function, so other commands never load it.


@click.command(name="backtest")
@click.option("--start", required=True, help="First session (YYYY-MM-DD); 120 sessions of data must precede it.")
@click.option("--end", required=True, help="Last session (YYYY-MM-DD).")
@click.option("--cap", type=click.Choice(["large", "mid", "small", "all"]), default="all", show_default=True,
              help="Caps the momentum scans cover.")
@click.option("--system", type=click.Choice(["momentum", "rebalance", "rebalance-regime", "all"]),
              default="momentum", show_default=True, help="The momentum agent, the 52-week-high rebalance "
              "(universe all, REBALANCE_TOP_N names, monthly) without or with the regime filter, or all of them side "
              "by side in one account, each in its sleeve.")
@click.option("--data", "data_source", help="csv:PATH of daily bars [default: the global --data].")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), callback=nonempty_path,
              help="New directory for the journal (trades.db), sim broker, metrics and chart.")
@click.option("--check-lookahead", is_flag=True, help="Re-run with the data cut after several sessions and inside "
              "them (the rest of the day removed at 12:31) and prove every decision before each cut is identical.")
@click.option("--cuts", type=click.IntRange(1, 20), default=2, show_default=True, help="Cut dates to check.")
@click.option("--set", "assignments", multiple=True, metavar="NAME=VALUE",
              help="A strategy setting for this run only: an .env variable in lower case (trailing_stop_pct=6) or a "
                   "runtime setting (autoclose=off); repeatable.")
@click.option("--data-until", help="The data source knows nothing after this date (YYYY-MM-DD): a walk-forward's "
              "training runs see their window and nothing later.")
@click.option("--models-from", type=click.Path(dir_okay=False), help="A journal or model file whose learned-ranking "
              "models the run may use (each from its usable-from day); with --set ranking=learned.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout (docs/json.md).")
@click.pass_context
def backtest_command(ctx: click.Context, start: str, end: str, cap: str, system: str, data_source: str | None,
                     out_dir: str, check_lookahead: bool, cuts: int, assignments: tuple[str, ...],
                     data_until: str | None, models_from: str | None, as_json: bool) -> None:
    """Replay the live scan, monitor and job functions over history on the sim broker; write metrics beside SPY
    total return, SPY price return (when the data carries it) and the equal-weighted universe, each from the
    system's first tradable session (DIR/metrics.txt, DIR/metrics.json), an equity chart (DIR/equity.png) and the
    journal itself (DIR/trades.db). With --check-lookahead, exit 1 when any decision changes once later data is
    removed (with --json, after printing the document)."""
    from backtest import metrics, replay
    from cli import json_output

    config = ctx.find_root().obj.config
    if data_source:
        from config import Config

        config = Config({**config._values, "DATA_SOURCE": data_source})
    first, last = parse_day(start, "--start"), parse_day(end, "--end")
    if first > last:
        raise ConfigError(f"--start {first} is after --end {last}")
    config, settings = replay.with_settings(config, assignments)
    cut = parse_day(data_until, "--data-until") if data_until else None
    if cut is not None and cut < last:
        raise ConfigError(f"--data-until {cut} is before --end {last}: the replay would run out of data")
    progress = replay.progress_bar()
    if check_lookahead:
        checks = replay.check_lookahead(config, Path(out_dir), first, last, system=system, cap=cap, cuts=cuts,
                                          progress=progress)
        click.echo(json_output.dumps(json_output.lookahead_document(checks)) if as_json
                   else replay.lookahead_text(checks))
        if any(check.difference for check in checks):
            ctx.exit(1)
        return
    # refused (dates the data cannot carry, a missing --models-from) with nothing left in --out: the corrected
    # command runs into the same folder
    rt = replay.started_backtest(config, Path(out_dir), first, last, system=system, cut=cut, models_from=models_from)
    try:
        result = replay.run_backtest(rt, first, last, system=system, cap=cap, progress=progress, settings=settings,
                                     data_through=cut)
        rt.journal.finish_run("done", 0)
        from flows import dashboard

        tearsheet = dashboard.tearsheet_after_backtest(rt, result.out_dir)  # never raises: a view of what is written
    finally:
        rt.close()
    if as_json:
        click.echo(json_output.dumps(json_output.backtest_document(result)))
        return
    click.echo(metrics.text(result.metrics))
    click.echo(f"{result.seconds:.1f} s; journal {result.out_dir / 'trades.db'}, chart {result.out_dir / 'equity.png'}")
    for line in result.failures[:5]:
        click.echo(f"  failed step: {line}")
    if tearsheet is not None:
        click.echo(f"tearsheet {tearsheet} (open it in a browser)")


for _command in (backtest_command,):
    cli.add_command(_command)

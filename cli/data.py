"""Command line of market-data files: `data download` (registered on the group when imported).

Thin: check the options, build the Alpaca bars client, plan the download, run it with a progress display on stderr,
print one line. No journal is opened: a download changes nothing the trading side keeps.
"""
from __future__ import annotations

import sys

import click

from cli.app import cli
from cli.options_check import nonempty_path


@click.group(name="data")
def data_group() -> None:
    """Market-data files for replays and backtests."""


@data_group.command(name="download")
@click.option("--timeframe", required=True, help="1Min, 5Min or 1Day.")
@click.option("--symbols", help="Comma-separated symbols, e.g. AAPL,MSFT (or use --universe).")
@click.option("--universe", "universe_name", help="All symbols of a universe cap: large, mid, small or all.")
@click.option("--start", required=True, help="First session (YYYY-MM-DD).")
@click.option("--end", required=True, help="Last session (YYYY-MM-DD); stops at the last completed session.")
@click.option("--out", callback=nonempty_path,
              help="Output file [default: data/bars_<timeframe>_<start>_<end>.csv.gz in the home folder].")
@click.option("--adjustment", default="split", show_default=True, help="raw, split or all (splits and dividends).")
@click.option("--feed", default="iex", show_default=True, help="iex (free plan) or sip.")
@click.pass_context
def download_command(ctx: click.Context, timeframe: str, symbols: str | None, universe_name: str | None, start: str,
                     end: str, out: str | None, adjustment: str, feed: str) -> None:
    """Download historical bars from Alpaca into a file the replay reads: 1Day bars in the daily format
    (date,symbol,open,high,low,close,volume), 1Min and 5Min bars in the intraday format
    (timestamp,symbol,...; regular-session bars only). Works in batches of 50 symbols; an interrupted or failed
    download keeps its finished batches in OUT.parts/ and the same command resumes it. Symbols Alpaca has no bars
    for are named: an error (exit 2, the file still holds the others) for --symbols, a warning for --universe."""
    from common.errors import ConfigError
    from flows import download

    rt = ctx.find_root().obj
    request = download.download_request(rt, timeframe=timeframe, symbols=symbols, universe=universe_name,
                                        start=start, end=end, out=out, adjustment=adjustment, feed=feed)
    client = download.bars_client(rt)
    plan = download.plan_download(request, rt.clock.now())
    if plan.last_session < request.end:
        click.echo(f"note: {request.end} is not a completed session; downloading up to {plan.last_session}",
                   err=True)
    if plan.resumed:
        click.echo(f"resuming {request.out}: {len(plan.done)} of {len(plan.batches)} batches already downloaded "
                   f"(in {plan.parts})", err=True)
    display = ProgressDisplay(sys.stderr.isatty())
    try:
        result = download.run_download(plan, client, display)
    finally:
        display.close()
    click.echo(result.text())
    if result.no_bars and symbols is not None:
        raise ConfigError(f"--symbols: {result.unknown_text()}")
    if result.no_bars:
        click.echo(f"warning: --universe {universe_name}: {result.unknown_text()}", err=True)


class ProgressDisplay:
    """One updating line on a terminal; otherwise one line per finished batch (logs stay readable)."""

    def __init__(self, live: bool):
        self.live = live
        self._shown = False

    def __call__(self, progress) -> None:
        text = (f"batch {progress.batches_done}/{progress.batches_total}: "
                f"{progress.symbols_done}/{progress.symbols_total} symbols, {progress.bars:,} bars")
        if self.live:
            click.echo("\r" + text + "\033[K", err=True, nl=False)
            self._shown = True
        elif progress.batch_finished:
            click.echo(text, err=True)

    def close(self) -> None:
        if self._shown:
            click.echo("", err=True)


cli.add_command(data_group)

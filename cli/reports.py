"""Command line of the bookkeeping side: `jobs`, `report` and `export` (registered on the group when imported).

Thin: parse options, record the run in the journal, call one function, print.
"""
from __future__ import annotations

import json
from pathlib import Path

import click

from cli.app import cli, done, start
from cli.options_check import nonempty_path, parse_day
from common.errors import ConfigError

EXPORT_CHOICES = ["trades", "candidates", "exits"]

# Each command imports what it runs inside its function, so command start-up stays short.


def _emit(data: dict, as_json: bool, text: str) -> None:
    """The report as text, or as one JSON object whose "command" names it."""
    name = " ".join(click.get_current_context().command_path.split()[1:])
    click.echo(json.dumps({"command": name, **data}, indent=2, default=str) if as_json else text)


@click.group(name="jobs")
def jobs_group() -> None:
    """Nightly and periodic bookkeeping (cron): daily-snapshot 16:05, update-outcomes 16:10,
    update-tracking every 30 minutes, cleanup after the week's last session. Also `python jobs.py NAME`."""


def _job_command(name: str, help_text: str) -> click.Command:
    @click.pass_context
    def command(ctx: click.Context, as_json: bool) -> None:
        import jobs

        rt = start(ctx)
        result = jobs.run_job(rt, name)
        if as_json:
            from cli import json_output

            click.echo(json_output.dumps(json_output.job_document(result)))
        else:
            click.echo(result.text())
        done(rt, "done" if result.status == "done" else "skipped", deliver=False)

    json_option = click.Option(["--json", "as_json"], is_flag=True, help="One JSON document on stdout (docs/json.md).")
    return click.Command(name, callback=command, params=[json_option], help=help_text)


for _name, _help in (
        ("daily-snapshot", "Equity, cash, exposure, day P&L, trades opened/closed and SPY -> daily_performance."),
        ("update-outcomes", "Prices 1, 3, 5, 10 sessions after each candidate and its 10-session max gain/drawdown."),
        ("update-tracking", "Current price, unrealised P&L, peak and max gain/drawdown of every open trade."),
        ("cleanup", "Delete candidates and position checks older than 90 days, optimise the journal, rotate logs.")):
    jobs_group.add_command(_job_command(_name, _help))


@click.group(name="report")
def report_group() -> None:
    """Performance reports: text, or JSON with --json."""


@report_group.command(name="metrics")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def report_metrics(ctx: click.Context, as_json: bool) -> None:
    """Since inception: total return, win rate, average win/loss, profit factor, Sharpe, Sortino, drawdown, SPY."""
    from flows import reports

    rt = start(ctx)
    data = reports.metrics(rt)
    _emit(data, as_json, reports.metrics_text(data))
    done(rt, deliver=False)


@report_group.command(name="weekly")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--chart", "chart_path", type=click.Path(dir_okay=False), callback=nonempty_path,
              help="Equity-vs-SPY PNG [default: LOG_DIR/equity_vs_spy.png].")
@click.option("--week", "week_of", help="Any date in the week to report (YYYY-MM-DD) [default: last completed].")
@click.pass_context
def report_weekly(ctx: click.Context, as_json: bool, chart_path: str | None, week_of: str | None) -> None:
    """The last completed week: equity change vs SPY, trades, daily figures; writes the equity chart."""
    from flows import reports
    from ports import charts

    rt = start(ctx)
    data = reports.weekly(rt, parse_day(week_of, "--week") if week_of else None)
    target = Path(chart_path) if chart_path else Path(rt.config.log_dir) / "equity_vs_spy.png"
    if chart_path is None:
        target.parent.mkdir(parents=True, exist_ok=True)
    if rt.journal.one("SELECT 1 AS n FROM daily_performance LIMIT 1"):
        data["chart"] = str(charts.equity_chart(rt, target))
    else:
        data["chart"] = None
    _emit(data, as_json, reports.weekly_text(data) + (f"\n\nchart: {data['chart']}" if data["chart"] else ""))
    done(rt, deliver=False)


@report_group.command(name="monthly")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--month", help="Month to report (YYYY-MM) [default: last completed].")
@click.pass_context
def report_monthly(ctx: click.Context, as_json: bool, month: str | None) -> None:
    """The last completed month with a breakdown by week."""
    from flows import reports

    rt = start(ctx)
    data = reports.monthly(rt, month)
    _emit(data, as_json, reports.monthly_text(data))
    done(rt, deliver=False)


@report_group.command(name="poor-signals")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--review", "review_ids", metavar="ID[,ID...]",
              help="Mark these poor signals reviewed: they leave the patterns the LLM decider is shown.")
@click.option("--review-all", is_flag=True, help="Mark every unreviewed poor signal reviewed.")
@click.pass_context
def report_poor_signals(ctx: click.Context, as_json: bool, review_ids: str | None, review_all: bool) -> None:
    """Most common reversal triggers and entry signals among trades closed on a reversal, the patterns the LLM
    decider is shown (unreviewed poor signals only); --review / --review-all mark poor signals reviewed first."""
    from flows import reports

    if review_ids is not None and review_all:
        raise ConfigError("--review and --review-all: give one of them")
    ids = _parse_ids(review_ids) if review_ids is not None else None
    rt = start(ctx)
    review = reports.review_poor_signals(rt.journal, ids) if review_ids is not None or review_all else None
    data = reports.poor_signals(rt)
    text = reports.poor_signals_text(data)
    if review is not None:
        data = {"review": review, **data}
        text = f"{_review_line(review)}\n\n{text}"
    _emit(data, as_json, text)
    done(rt, deliver=False)


def _parse_ids(text: str) -> list[int]:
    """'3,7, 9' -> [3, 7, 9]; anything else is one line and exit 2."""
    parts = [part.strip() for part in text.split(",")]
    if not all(part.isdigit() and int(part) > 0 for part in parts):
        raise ConfigError(f"--review: expected poor-signal ids like 3 or 3,7, got {text!r}")
    return [int(part) for part in parts]


def _review_line(review: dict[str, list[int]]) -> str:
    marked, already = review["marked"], review["already_reviewed"]
    line = (f"marked {len(marked)} poor signal(s) reviewed: {', '.join(map(str, marked))}" if marked
            else "no poor signal newly marked reviewed")
    return line + (f" (already reviewed: {', '.join(map(str, already))})" if already else "")


@click.command(name="export")
@click.argument("what", type=click.Choice(EXPORT_CHOICES))
@click.option("--out", "out_path", required=True, type=click.Path(), callback=nonempty_path,
              help="CSV file to write.")
@click.pass_context
def export_command(ctx: click.Context, what: str, out_path: str) -> None:
    """Export every column of trades, candidates or exits to a CSV file (written atomically)."""
    from journal import exports

    rt = start(ctx)
    count = exports.export_csv(rt, what, out_path)
    click.echo(f"exported {count} {what} row(s) to {out_path}")
    done(rt, deliver=False)


for _command in (jobs_group, report_group, export_command):
    cli.add_command(_command)

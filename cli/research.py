"""Command line of research (registered on the group when imported): `research sweep` and `research walk-forward`.
Each checks every option and parameter first (one line and exit 2), then runs its study on the cluster."""
from __future__ import annotations

from datetime import date
from pathlib import Path

import click

from cli.app import cli
from cli.options_check import nonempty_path, parse_day
from common.errors import ConfigError

SYSTEMS = ["momentum", "rebalance", "rebalance-regime", "all"]


def study_options(function):
    """The options a sweep and a walk-forward share."""
    options = [
        click.option("--system", type=click.Choice(SYSTEMS), default="momentum", show_default=True,
                     help="The system each trial backtests."),
        click.option("--start", required=True, help="First session (YYYY-MM-DD)."),
        click.option("--end", required=True, help="Last session (YYYY-MM-DD)."),
        click.option("--cap", type=click.Choice(["large", "mid", "small", "all"]), default="all", show_default=True),
        click.option("--param", "params", multiple=True, required=True, metavar="NAME=SPEC",
                     help="A strategy setting to vary: NAME=LOW:HIGH[:STEP] or NAME=A,B,C (NAME: an .env variable "
                          "in lower case or a runtime setting); repeatable."),
        click.option("--trials", type=click.IntRange(1, 100_000), default=20, show_default=True,
                     help="Trials to run (per fold in a walk-forward); a grid runs every combination instead."),
        click.option("--objective", default="sharpe", show_default=True,
                     help="sharpe, sortino, cagr, calmar, total_return or max_drawdown (all maximised)."),
        click.option("--seed", type=int, default=0, show_default=True, help="The sampler's seed."),
        click.option("--data", "data_source", help="csv:PATH of daily bars [default: the global --data]."),
        click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), callback=nonempty_path,
                     help="The study's folder: research.db, the trials' journals, the charts."),
        click.option("--resume", is_flag=True, help="Continue the study in --out (finished trials are kept)."),
        click.option("--cluster", "address", help="A running Dask scheduler, e.g. tcp://10.0.0.5:8786 [default: a "
                     "local cluster on this machine's cores]."),
        click.option("--workers", type=click.IntRange(1, 256), help="Local cluster workers [default: one per core]."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _spec(ctx: click.Context, options: dict, extra: dict | None = None, allow_no_params: bool = False):
    """The study's spec with every path absolute (the workers may start elsewhere), or ConfigError."""
    from research.params import check_objective, parse_params
    from research.sweep import StudySpec

    config = ctx.find_root().obj.config
    source = options["data_source"] or config.data_source or ""
    if not source.startswith("csv:"):
        raise ConfigError(f"--data: research replays csv data (csv:PATH), not {source!r}")
    bars = Path(source[4:]).expanduser().resolve()
    if not bars.exists():
        raise ConfigError(f"--data: no such file {bars}")
    universe = Path(config.universe_file).expanduser().resolve()
    if not universe.exists():
        raise ConfigError(f"--universe: no such file {universe}")
    first, last = parse_day(options["start"], "--start"), parse_day(options["end"], "--end")
    if first > last:
        raise ConfigError(f"--start {first} is after --end {last}")
    out = Path(options["out_dir"])
    if not out.parent.is_dir():
        raise ConfigError(f"--out {out}: directory {out.parent} does not exist")
    market = str(Path(config.market_data).expanduser().resolve()) if config.market_data else ""
    if not options.get("resume"):
        _check_data_span(f"csv:{bars}", market, Path(config.cache_dir), first, last)
    return StudySpec(system=options["system"], cap=options["cap"], start=first, end=last,
                     objective=check_objective(options["objective"]),
                     params=[] if allow_no_params and not options["params"] else parse_params(options["params"]),
                     trials=options["trials"], seed=options["seed"], data=f"csv:{bars}", universe=str(universe),
                     market=market, cache_dir=str(Path(config.cache_dir).expanduser().resolve()), extra=extra or {})


def _check_data_span(source: str, market: str, cache_dir: Path, first: date, last: date) -> None:
    """The window inside what the data holds, before any trial runs (a trial outside it would only fail)."""
    import scanner
    from common.clock import calendar
    from ports.market_factory import open_market

    data = open_market(source, market_path=market or None, cache_dir=cache_dir.expanduser())
    start, end = getattr(data, "first_date", None), getattr(data, "last_date", None)
    if end is not None and last > end:
        raise ConfigError(f"--end {last} is after the last date of the data ({end})")
    if start is not None:
        known = calendar().sessions(start, last)
        if len(known) <= scanner.HISTORY_SESSIONS or first < known[scanner.HISTORY_SESSIONS]:
            raise ConfigError(f"--start {first} leaves too little history: the data starts on {start} and a scan "
                              f"needs {scanner.HISTORY_SESSIONS} sessions before it")


@click.group(name="research")
def research_group() -> None:
    """Parameter sweeps and walk-forward validation, each trial a full backtest, on a Dask cluster."""


@research_group.command(name="sweep")
@study_options
@click.pass_context
def sweep_command(ctx: click.Context, **options) -> None:
    """Search the settings of --param for the best --objective over one window (Optuna: TPE, or every combination
    when every parameter is a list), beside the default settings, with the number of trials and the deflated Sharpe
    ratio of the best."""
    from research import study

    spec = _spec(ctx, options)
    click.echo(study.run_sweep(spec, Path(options["out_dir"]), resume=options["resume"], address=options["address"],
                               workers=options["workers"]))


@research_group.command(name="walk-forward")
@study_options
@click.option("--train", default="2y", show_default=True, help="Training window: 2y, 18m, 26w or 120d.")
@click.option("--test", "test_length", default="6m", show_default=True, help="Test window after each training one.")
@click.option("--step", default="6m", show_default=True, help="How far each fold moves on.")
@click.pass_context
def walk_forward_command(ctx: click.Context, train: str, test_length: str, step: str, **options) -> None:
    """For each fold, choose settings by --objective on the training window only (its data cut at the window's
    end), run them on the test window that follows, and stitch the test windows into one out-of-sample curve, beside
    the default settings on the same windows and SPY (total return)."""
    from research import study, walk_forward

    lengths = {"train": train, "test": test_length, "step": step}
    parsed = {name: walk_forward.parse_duration(text, f"--{name}") for name, text in lengths.items()}
    spec = _spec(ctx, options, extra=lengths)
    folds = walk_forward.plan_folds(spec.start, spec.end, parsed["train"], parsed["test"], parsed["step"])
    click.echo(study.run_walk_forward(spec, Path(options["out_dir"]), folds, resume=options["resume"],
                                      address=options["address"], workers=options["workers"]))


@research_group.command(name="settings")
def settings_command() -> None:
    """The strategy settings a --param (or `backtest --set`) may name, with their defaults and limits."""
    from common import render
    from config import STRATEGY_RUNTIME_SETTINGS, RUNTIME_SETTINGS, STRATEGY_VARIABLES

    rows = [{"name": name, "default": var.default, "values": f"{var.low:g}..{var.high:g}" if var.low is not None
             else " | ".join(var.choices) or var.kind, "meaning": var.help}
            for name, var in STRATEGY_VARIABLES.items()]
    rows += [{"name": key, "default": RUNTIME_SETTINGS[key].default,
              "values": "3..10" if key == "autoclose_threshold" else "on | off",
              "meaning": RUNTIME_SETTINGS[key].help + " (runtime setting)"} for key in STRATEGY_RUNTIME_SETTINGS]
    click.echo(render.table(rows, ["name", "default", "values", "meaning"]))


for _command in (research_group,):
    cli.add_command(_command)

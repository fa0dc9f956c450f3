"""Command line of the learned ranking (registered on the group when imported): `learn fit`, `learn status`,
`learn evaluate`; `set ranking learned|score` switches the scan between it and the fixed score."""
from __future__ import annotations

import json
from pathlib import Path

import click

from cli.app import cli, done, start
from cli.options_check import nonempty_path, parse_day
from common.errors import ConfigError


@click.group(name="learn")
def learn_group() -> None:
    """A candidate ranking learned from recorded outcomes (scikit-learn gradient boosting), versioned in the journal."""


@learn_group.command(name="fit")
@click.option("--until", required=True, help="Learn from the candidates scanned up to this session (YYYY-MM-DD); "
              "the model is usable from the fifth session after it.")
@click.option("--since", help="And from this session on [default: all].")
@click.option("--from", "source", type=click.Path(dir_okay=False),
              help="Another journal's candidates (a backtest's trades.db) [default: this journal's].")
@click.pass_context
def fit_command(ctx: click.Context, until: str, since: str | None, source: str | None) -> None:
    """Fit a model of each candidate's 5-session forward return and store it as the next version."""
    from flows import learn

    rt = start(ctx)
    last, first = parse_day(until, "--until"), parse_day(since, "--since") if since else None
    if first is not None and first > last:
        raise ConfigError(f"--since {first} is after --until {last}")
    row = learn.fit_model(rt, last, since=first, source=source)
    check = json.loads(row["validation"])
    click.echo(f"model version {row['version']}: {row['rows']} labelled candidates {row['train_start']} .. "
               f"{row['train_end']}; usable from {row['usable_from']} (fitted until {row['fitted_until']} + "
               f"{row['horizon']} sessions)")
    click.echo(f"validation on the latest sessions (from {check['validation_from']}, {check['validation_rows']} "
               f"candidates, not fitted on): rank correlation with the forward return, learned "
               f"{_corr(check['learned_rank_corr'])} vs score {_corr(check['score_rank_corr'])}; top-bottom tenth, "
               f"learned {_pct(check['learned_spread'])} vs score {_pct(check['score_spread'])}")
    click.echo(f"the scan uses it once `set ranking learned` (now: {rt.journal.setting('ranking')})")
    done(rt)


def _corr(value) -> str:
    return "-" if value is None else f"{value:+.3f}"


def _pct(value) -> str:
    """A fraction (a return difference) as a signed percentage: 0.0123 -> '+1.23%'."""
    from common import render

    return render.pct(None if value is None else value * 100)


@learn_group.command(name="status")
@click.pass_context
def status_command(ctx: click.Context) -> None:
    """The ranking in use, the model a scan would use today, and every stored model."""
    from common import render
    from flows import learn

    rt = start(ctx)
    session, _ = rt.calendar.current_or_last_session(rt.clock.now())
    active = learn.active_model(rt, session.day)
    click.echo(f"ranking: {rt.journal.setting('ranking')}; model for {session.day}: "
               + (f"version {active.version} (fitted until {active.fitted_until})" if active else "none usable"))
    rows = learn.models(rt)
    if rows:
        shown = [{"version": r["version"], "fitted until": r["fitted_until"], "usable from": r["usable_from"],
                  "rows": r["rows"], "span": f"{r['train_start']}..{r['train_end']}",
                  "learned corr": _corr(json.loads(r["validation"])["learned_rank_corr"]),
                  "score corr": _corr(json.loads(r["validation"])["score_rank_corr"]), "source": r["source"] or "-"}
                 for r in rows]
        click.echo(render.table(shown, list(shown[0])))
    else:
        click.echo("no model fitted yet: `learn fit --until DATE`")
    done(rt)


@learn_group.command(name="evaluate")
@click.option("--start", required=True, help="First session of the span (YYYY-MM-DD).")
@click.option("--end", required=True, help="Last session of the span (YYYY-MM-DD).")
@click.option("--train", default="1y", show_default=True, help="Training window (2y, 6m, ...).")
@click.option("--test", "test_length", default="6m", show_default=True, help="Test window after each training one.")
@click.option("--step", default="6m", show_default=True, help="How far each fold moves on.")
@click.option("--from", "source", type=click.Path(dir_okay=False),
              help="The journal whose candidates to learn from (a backtest's trades.db) [default: this journal].")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), callback=nonempty_path,
              help="New folder for the folds' model files (and the backtests' research.db).")
@click.option("--backtest", is_flag=True, help="Also run the momentum system on each test window ranked by the "
              "fold's model and by the score (on the research cluster; needs --data csv:PATH).")
@click.option("--cluster", "address", help="A running Dask scheduler [default: a local cluster].")
@click.option("--workers", type=click.IntRange(1, 256), help="Local cluster workers [default: one per core].")
@click.pass_context
def evaluate_command(ctx: click.Context, start: str, end: str, train: str, test_length: str, step: str,
                     source: str | None, out_dir: str, backtest: bool, address: str | None,
                     workers: int | None) -> None:
    """Walk-forward: per fold, fit on the training window and measure on the next test window how the learned figure
    and the fixed score rank the candidates against their realised forward returns."""
    from cli.research import _spec
    from research import learn_eval, walk_forward

    rt = ctx.find_root().obj
    first, last = parse_day(start, "--start"), parse_day(end, "--end")
    lengths = {name: walk_forward.parse_duration(text, f"--{name}")
               for name, text in (("train", train), ("test", test_length), ("step", step))}
    folds = walk_forward.plan_folds(first, last, lengths["train"], lengths["test"], lengths["step"])
    out = Path(out_dir)
    if not out.parent.is_dir():
        raise ConfigError(f"--out {out}: directory {out.parent} does not exist")
    spec = _spec(ctx, {"system": "momentum", "cap": "all", "start": start, "end": end, "params": (),
                       "objective": "sharpe", "trials": 1, "seed": 0, "data_source": None, "out_dir": out_dir},
                 extra={"train": train, "test": test_length, "step": step}, allow_no_params=True) if backtest else None
    out.mkdir(exist_ok=True)
    results = learn_eval.evaluate_folds(rt, Path(source) if source else None, folds, out)
    click.echo(learn_eval.evaluation_text(results))
    if spec is not None:
        click.echo(learn_eval.backtest_folds(spec, out, folds, results, address=address, workers=workers))


for _command in (learn_group,):
    cli.add_command(_command)

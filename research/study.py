"""A study from start to summary: open research.db, start (or reach) the cluster, search, chart, summarise.

Ctrl-C stops a study cleanly: the trials still running are recorded as interrupted, the finished ones stay, the
local cluster is shut down (a trial's backtest dies with its worker; on a running cluster each trial notices the
study let go of it and stops its backtest), and `--resume` continues where it stopped."""
from __future__ import annotations

import contextlib
from datetime import date
from pathlib import Path
from typing import Iterator

from common.created import CreatedFiles
from common.errors import MomentumError
from research import engine, report
from research.store import Store
from research.sweep import Runner, StudySpec, Window, search

DB_NAME = "research.db"


class StudyStopped(MomentumError):
    """Ctrl-C: the study stopped with what finished kept."""

    exit_code = 130


@contextlib.contextmanager
def opened(spec: StudySpec, out_dir: Path, kind: str, *, resume: bool) -> Iterator[Store]:
    """research.db in `out_dir`, its study begun (or resumed). A new study that fails before its first trial (the
    cluster does not answer, Ctrl-C while it starts) leaves nothing behind that was not there before, so the
    corrected command runs into the same --out without --resume."""
    created = CreatedFiles(out_dir)
    new_study = not (out_dir / DB_NAME).exists()
    out_dir.mkdir(exist_ok=True)
    store = Store(out_dir / DB_NAME)
    try:
        store.begin(kind, spec.as_dict(), resume=resume)
        yield store
    except BaseException:
        untouched = new_study and not _has_trials(store)
        store.close()
        if untouched:
            created.remove()
        raise
    finally:
        store.close()


def _has_trials(store: Store) -> bool:
    try:
        return bool(store.trials())
    except Exception:  # noqa: BLE001 - the file cannot be read: keep it rather than guess
        return True


@contextlib.contextmanager
def stoppable(store: Store) -> Iterator[None]:
    """Ctrl-C becomes StudyStopped, with the running trials marked interrupted and the study marked stopped."""
    try:
        yield
    except KeyboardInterrupt:
        interrupted = store.interrupt_running()
        store.set_status("stopped")
        finished = len(store.trials(finished=True))
        raise StudyStopped(f"stopped: {finished} finished trial(s) kept in {store.path} ({interrupted} interrupted); "
                           "run the same command with --resume to continue") from None


def run_sweep(spec: StudySpec, out_dir: Path, *, resume: bool, address: str | None, workers: int | None) -> str:
    with opened(spec, out_dir, "sweep", resume=resume) as store:
        with stoppable(store), engine.cluster(address, workers) as client:
            search(Runner(client, store, spec, out_dir), Window(spec.start, spec.end))
        store.set_status("done")
        trials = store.trials()
        search_trials = [t for t in trials if t["role"] == "search"]
        default = next((t for t in trials if t["role"] == "default" and t["status"] == "done"), None)
        charts = [report.parameter_chart(search_trials, spec.params, spec.objective, out_dir / "parameters.png",
                                         default["objective"] if default else None)]
        charts += _page(out_dir)
        return report.sweep_text(spec.as_dict(), trials, spec.params, charts)


def _page(out_dir: Path) -> list[Path]:
    """The study's browser page (flows/dashboard.py), when it could be written."""
    from flows.dashboard import study_page_after_run

    page = study_page_after_run(out_dir)
    return [page] if page else []


def run_walk_forward(spec: StudySpec, out_dir: Path, folds: list, *, resume: bool, address: str | None,
                     workers: int | None) -> str:
    from common.clock import calendar
    from ports.market_factory import open_market
    from research import walk_forward

    with opened(spec, out_dir, "walk-forward", resume=resume) as store:
        with stoppable(store), engine.cluster(address, workers) as client:
            walk_forward.run_folds(Runner(client, store, spec, out_dir), store, folds)
        store.set_status("done")
        market = open_market(spec.data, market_path=spec.market or None, cache_dir=Path(spec.cache_dir))
        finished = walk_forward.finished_folds(store, folds)
        left_out = [fold.number + 1 for fold in folds if fold not in finished]
        folds = finished
        curves = {"chosen settings (out of sample)": walk_forward.stitched(store, folds, "test"),
                  "default settings": walk_forward.stitched(store, folds, "test-default")} if folds else {}
        days = next((curve[0] for curve in curves.values() if curve), [])
        series = {label: curve[1] for label, curve in curves.items() if curve}
        if days:
            series["SPY total return"] = walk_forward.spy_stitched(market, folds, days)
        charts = []
        if series:
            axis = [calendar().previous_session(folds[0].test.start), *(date.fromisoformat(d) for d in days)]
            charts.append(report.curves_chart(axis, series, "Walk-forward: test windows stitched (100 = start)",
                                              out_dir / "walk_forward.png"))
        trials = store.trials()
        charts.append(report.parameter_chart([t for t in trials if t["role"] == "search"], spec.params,
                                             spec.objective, out_dir / "parameters.png"))
        charts += _page(out_dir)
        return report.walk_forward_text(spec.as_dict(), store.folds(), trials, spec.params, series, charts,
                                        left_out)

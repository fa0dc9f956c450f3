"""The search: Optuna proposes settings (TPE by default; every combination once when every parameter is a list),
each proposal runs as one full backtest on the Dask cluster, and the result goes back to the sampler as soon as it
is in, so later proposals learn from earlier ones while the cluster stays busy.

A study is resumable: trials already finished are handed back to a fresh sampler (Optuna's add_trial), so `--resume`
runs only what is left and the sampler knows everything that was tried.
"""
from __future__ import annotations

import logging
import sys
import uuid
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Callable

from research import engine
from research.params import Param, assignments, grid, is_grid, objective_value
from research.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Window:
    start: date
    end: date
    data_until: date | None = None  # the data source knows nothing after this day (a walk-forward's training)

    def strings(self) -> tuple[str, str]:
        return str(self.start), str(self.end)


@dataclass
class StudySpec:
    system: str
    cap: str
    start: date
    end: date
    objective: str
    params: list[Param]
    trials: int
    seed: int
    data: str  # csv:ABSOLUTE PATH
    universe: str  # absolute path
    market: str  # absolute path or ""
    cache_dir: str
    extra: dict[str, Any] = field(default_factory=dict)  # walk-forward: train, test, step

    def as_dict(self) -> dict[str, Any]:
        """What identifies the study (stored in research.db; --resume must match it)."""
        return {"system": self.system, "cap": self.cap, "start": str(self.start), "end": str(self.end),
                "objective": self.objective, "params": [f"{p.name}={p.spec()}" for p in self.params],
                "trials": self.trials, "seed": self.seed, "data": self.data, "universe": self.universe,
                "market": self.market, **self.extra}


class Runner:
    """Submits trials to the cluster and records each in research.db as it starts and as it ends."""

    def __init__(self, client: Any, store: Store, spec: StudySpec, out_dir: Path):
        self.client, self.store, self.spec, self.out_dir = client, store, spec, out_dir
        self.capacity = engine.capacity(client)
        self.running: dict[Any, int] = {}  # future -> trial number
        # a task's key is the scheduler's identity for it: unique to this run, so that two studies sharing a cluster
        # (trial numbers start at 1 in each) never receive each other's results
        self.token = uuid.uuid4().hex

    def task(self, number: int, values: dict[str, Any], window: Window, extra: tuple[str, ...] = ()) -> dict[str, Any]:
        spec = self.spec
        args = ["--data", spec.data, "--universe", spec.universe, *(["--market", spec.market] if spec.market else []),
                "backtest", "--start", str(window.start), "--end", str(window.end), "--system", spec.system,
                "--cap", spec.cap]
        for assignment in assignments(values):
            args += ["--set", assignment]
        if window.data_until is not None:
            args += ["--data-until", str(window.data_until)]
        args += list(extra)
        return {"folder": str(self.out_dir / "trials" / f"{number:05d}"), "args": args,
                "env": {"CACHE_DIR": spec.cache_dir, "MOMENTUM_ASOF": ""}}

    def submit(self, role: str, values: dict[str, Any], window: Window, fold: int | None,
               extra: tuple[str, ...] = ()) -> int:
        """Record the trial as running and send it to the cluster (`extra`: more backtest options); its number."""
        from research.trial import run_trial

        number = self.store.new_trial(role=role, params=values, fold=fold, window=window.strings())
        future = self.client.submit(run_trial, self.task(number, values, window, extra),
                                    key=f"trial-{number}-{self.token}", pure=False)
        self.running[future] = number
        return number

    def wait(self) -> list[tuple[Any, int, dict[str, Any]]]:
        """Block until at least one running trial ends; (future, trial number, outcome) of each that ended. A trial
        whose workers kept dying (or that raised) is a failed outcome, never an exception: the study goes on."""
        from dask.distributed import wait

        done, _ = wait(list(self.running), return_when="FIRST_COMPLETED")
        ended = []
        for future in done:
            number = self.running.pop(future)
            try:
                outcome = future.result()
            except Exception as err:  # noqa: BLE001 - KilledWorker after ALLOWED_FAILURES, or a bug in the task
                outcome = {"status": "failed", "error": f"{type(err).__name__}: {err}"[:400]}
            self.store.finish_trial(number, outcome, self.objective(outcome))
            ended.append((future, number, outcome))
        return ended

    def objective(self, outcome: dict[str, Any]) -> float | None:
        if outcome.get("status") != "done":
            return None
        return objective_value(self.spec.objective, (outcome.get("metrics") or {}).get("metrics") or {})


def progress_bar(total: int, initial: int, description: str):
    """A tqdm bar on a terminal (trials done, best so far, time left); nothing when not on one (cron, a pipe)."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=description, unit="trial", file=sys.stderr,
                disable=not sys.stderr.isatty(), dynamic_ncols=True)


def search(runner: Runner, window: Window, *, fold: int | None = None, with_default: bool = True,
           description: str = "sweep", on_result: Callable[[dict[str, Any]], None] | None = None) -> list[dict]:
    """Run the study's search on `window` (and, once, the default settings beside it); returns the finished search
    trials. Only trials of this window (fold) are given to the sampler."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec, store = runner.spec, runner.store
    distributions = {p.name: p.distribution() for p in spec.params}
    seed = spec.seed + (fold or 0)
    sampler = (optuna.samplers.TPESampler(seed=seed, constant_liar=True) if not is_grid(spec.params)
               else optuna.samplers.RandomSampler(seed=seed))  # a grid is enqueued whole: the sampler never picks
    study = optuna.create_study(direction="maximize", sampler=sampler)
    finished = store.trials(fold=fold, role="search", finished=True)
    for row in finished:
        study.add_trial(optuna.trial.create_trial(
            params=row["params"], distributions=distributions, value=row["objective"],
            state=optuna.trial.TrialState.COMPLETE if row["objective"] is not None else optuna.trial.TrialState.FAIL))
    if is_grid(spec.params):
        tried = [row["params"] for row in finished]
        todo = [values for values in grid(spec.params) if values not in tried]
        for values in todo:
            study.enqueue_trial(values)
        target = len(finished) + len(todo)
    else:
        target = max(spec.trials, len(finished))
    left = target - len(finished)
    asked: dict[int, Any] = {}  # trial number -> Optuna trial
    if with_default and not store.trials(fold=fold, role="default", finished=True):
        runner.submit("default", {}, window, fold)
    best = max((row["objective"] for row in finished if row["objective"] is not None), default=None)
    with progress_bar(target, len(finished), description) as bar:
        if best is not None:
            bar.set_postfix(best=f"{best:.3g}")
        while left > 0 or runner.running:
            while left > 0 and len(runner.running) < runner.capacity:
                trial = study.ask(distributions)
                asked[runner.submit("search", dict(trial.params), window, fold)] = trial
                left -= 1
            for _, number, outcome in runner.wait():
                trial = asked.pop(number, None)
                if trial is None:
                    continue  # the default-settings run
                value = runner.objective(outcome)
                if value is None:
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                else:
                    study.tell(trial, value)
                    best = value if best is None else max(best, value)
                bar.update(1)
                if best is not None:
                    bar.set_postfix(best=f"{best:.3g}")
                if on_result is not None:
                    on_result(outcome)
    return store.trials(fold=fold, role="search", finished=True)


def best_trial(trials: list[dict]) -> dict | None:
    """The finished trial with the highest objective (the earliest on a tie), or None."""
    scored = [t for t in trials if t["status"] == "done" and t["objective"] is not None]
    return max(scored, key=lambda t: (t["objective"], -t["number"])) if scored else None

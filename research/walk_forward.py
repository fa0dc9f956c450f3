"""Walk-forward validation: for each fold, choose settings on the training window only, then run them on the test
window that follows; the test windows' results, stitched in order, are the out-of-sample record, shown beside the
default settings on the same windows and beside SPY (total return).

Nothing from a test window may reach its fold's choice. Every training trial runs on a data source cut at the
training window's last session (`backtest --data-until`), and before anything is chosen each trial's own record of
what its data source could see (metrics.json "data_through", written by the backtest) is checked against that
day: a trial that saw later data stops the study (LookAheadLeak) instead of producing a flattering result.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from typing import Any

from common.clock import calendar
from common.errors import ConfigError, MomentumError
from research.store import Store
from research.sweep import Runner, Window, best_trial, search

DURATION = re.compile(r"^\s*(\d+)\s*([ymwd])\s*$", re.IGNORECASE)


class LookAheadLeak(MomentumError):
    """A training trial saw data after its training window: its fold's choice could use the test window."""


@dataclass(frozen=True)
class Fold:
    number: int
    train: Window
    test: Window


def parse_duration(text: str, option: str) -> tuple[int, str]:
    found = DURATION.match(text or "")
    if not found or int(found[1]) < 1:
        raise ConfigError(f"{option}: expected a length like 2y, 6m, 8w or 30d, got {text!r}")
    return int(found[1]), found[2].lower()


def _advance(day: date, length: tuple[int, str], times: int = 1) -> date:
    count, unit = length[0] * times, length[1]
    if unit in ("d", "w"):
        return date.fromordinal(day.toordinal() + count * (7 if unit == "w" else 1))
    months = day.month - 1 + count * (12 if unit == "y" else 1)
    year, month = day.year + months // 12, months % 12 + 1
    for last in (31, 30, 29, 28):  # the same day of the month, or the month's last day
        try:
            return date(year, month, min(day.day, last))
        except ValueError:
            continue
    raise AssertionError("unreachable")


def plan_folds(start: date, end: date, train: tuple[int, str], test: tuple[int, str],
               step: tuple[int, str]) -> list[Fold]:
    """Folds over start..end: training windows of `train` starting every `step`, each followed by a test window of
    `test` (the last one cut at `end`); windows are in NYSE sessions. ConfigError when none fits."""
    cal = calendar()
    folds = []
    for k in range(10_000):
        train_from = _advance(start, step, k)
        test_from = _advance(train_from, train)
        if test_from > end:
            break
        train_days = cal.sessions(train_from, date.fromordinal(test_from.toordinal() - 1))
        test_days = cal.sessions(test_from, min(end, date.fromordinal(_advance(test_from, test).toordinal() - 1)))
        if not train_days or not test_days:
            break
        folds.append(Fold(k, Window(train_days[0], train_days[-1], data_until=train_days[-1]),
                          Window(test_days[0], test_days[-1], data_until=test_days[-1])))
    if not folds:
        raise ConfigError(f"walk-forward: no fold fits in {start} .. {end} (a training window, then a test window)")
    return folds


def training_window(fold: Fold) -> Window:
    """The window a fold's search runs on: the training sessions, on data that ends with them."""
    return fold.train


def check_no_leak(fold: Fold, trials: list[dict[str, Any]]) -> None:
    """Every training trial of `fold` replayed only its training window on data that ended there."""
    limit = str(fold.train.end)
    for trial in trials:
        seen = trial.get("data_through")
        if trial["status"] != "done":
            continue
        if seen is None or seen > limit or trial["window_end"] > limit:
            raise LookAheadLeak(
                f"walk-forward fold {fold.number + 1}: training trial {trial['number']} saw data through "
                f"{seen or 'the end of the file'} (replayed to {trial['window_end']}), after its training window "
                f"ends {limit}: its choice could use the test window; nothing was chosen")


def run_folds(runner: Runner, store: Store, folds: list[Fold]) -> None:
    """Search each fold's training window, check it, record its choice; then run every fold's test window with the
    chosen settings and with the defaults (all at once: they are independent)."""
    for fold in folds:
        store.save_fold(fold.number, fold.train.strings(), fold.test.strings())
    for fold in folds:
        trials = search(runner, training_window(fold), fold=fold.number, with_default=False,
                        description=f"fold {fold.number + 1}/{len(folds)}")
        check_no_leak(fold, trials)
        best = best_trial(trials)
        store.choose(fold.number, best["number"] if best else None, best["params"] if best else {})
    chosen = {f["fold"]: f["chosen_params"] or {} for f in store.folds()}
    for fold in folds:
        for role, params in (("test", chosen[fold.number]), ("test-default", {})):
            if not store.trials(fold=fold.number, role=role, finished=True):
                runner.submit(role, params, fold.test, fold.number)
    while runner.running:
        runner.wait()


# --- the out-of-sample record ---------------------------------------------------------------------------------------

def finished_folds(store: Store, folds: list[Fold], roles: tuple[str, ...] = ("test", "test-default")) -> list[Fold]:
    """The folds whose test runs of every role finished (a stitched curve compares like with like)."""
    return [fold for fold in folds if all(any(t["status"] == "done" for t in store.trials(fold=fold.number, role=r))
                                          for r in roles)]


def stitched(store: Store, folds: list[Fold], role: str) -> tuple[list[str], list[float]] | None:
    """The test windows' equity curves of `role`, chained in fold order from 100: each window's daily returns
    compounded on where the previous window ended. None when a fold's test run did not finish."""
    days, values = [], [100.0]
    for fold in folds:
        run = next((t for t in store.trials(fold=fold.number, role=role) if t["status"] == "done"), None)
        if run is None:
            return None
        start_value = ((run["metrics"] or {}).get("metrics") or {}).get("start_value")
        previous = start_value
        for day, equity, _ in store.curve(run["number"]):
            values.append(values[-1] * equity / previous)
            previous = equity
            days.append(day)
    return days, values


def spy_stitched(market, folds: list[Fold], days: list[str]) -> list[float]:
    """SPY total return on the same days, chained the same way: from 100, each test window from its previous
    close (the market file's spy_close is dividend-adjusted)."""
    cal = calendar()
    values = [100.0]
    wanted = set(days)
    for fold in folds:
        series = market.market_series(cal.previous_session(fold.test.start), fold.test.end)["spy_close"]
        previous = float(series.iloc[0])
        for stamp, close in series.iloc[1:].items():
            if str(stamp.date()) in wanted:
                values.append(values[-1] * float(close) / previous)
            previous = float(close)
    return values

"""`learn evaluate`: the learned ranking, walk-forward. For each fold, fit on the candidates of the training window
whose outcomes were known before the test window opened, then score the test window's candidates: the rank
correlation of the learned figure and of the fixed 0-20 score with the realised forward return, and the mean forward
return of the top and bottom tenth by each. With --backtest, the momentum system also runs each test window twice
on the research cluster, ranking by the learned model (fitted for that fold only) and by the score, and the test
windows are stitched beside SPY."""
from __future__ import annotations

import json
import pickle
from datetime import date
from pathlib import Path
from typing import Any

from common import render
from core import learned_ranking as lr
from flows import learn
from research.walk_forward import Fold


def fit_until(rt, fold: Fold) -> date:
    """The last session a fold's model may learn from: its labels (HORIZON sessions later) are all known by the
    session before the test window opens."""
    day = rt.calendar.previous_session(fold.test.start)
    for _ in range(lr.HORIZON):
        day = rt.calendar.previous_session(day)
    return max(day, fold.train.start)


def evaluate_folds(rt, source, folds: list[Fold], out_dir: Path) -> list[dict[str, Any]]:
    """Per fold: the model fitted for it (also written to OUT/model-fold-N.db) and its out-of-sample figures."""
    results = []
    for fold in folds:
        until = fit_until(rt, fold)
        row = learn.fit_model(rt, until, since=fold.train.start, source=source, store=False)
        row["version"] = fold.number + 1
        if learn.usable_from(rt, until) > fold.test.start:
            raise learn.LookAheadLeak(f"fold {fold.number + 1}: a model fitted until {until} is not usable on "
                                      f"{fold.test.start}")
        path = out_dir / f"model-fold-{fold.number + 1}.db"
        path.unlink(missing_ok=True)
        learn.write_model_file(path, [row])
        model = pickle.loads(row["model"])
        test = learn.labelled_candidates(source or rt, fold.test.end, fold.test.start)
        outcome = lr.target(test)
        used = json.loads(row["features"])
        learned = model.predict(lr.features(test)[used]) if len(test) else []
        score = test["score"].astype(float) if len(test) else []
        results.append({"fold": fold.number + 1, "train": f"{fold.train.start}..{until}",
                        "test": f"{fold.test.start}..{fold.test.end}", "train rows": row["rows"],
                        "test rows": len(test), "learned rank corr": lr.rank_correlation(learned, outcome),
                        "score rank corr": lr.rank_correlation(score, outcome),
                        **{f"learned {k}": v for k, v in lr.decile_spread(learned, outcome).items()},
                        **{f"score {k}": v for k, v in lr.decile_spread(score, outcome).items()},
                        "model_file": str(path)})
    return results


def _pct(value) -> render.Pct | None:
    """A fraction (a return difference) as a signed percentage the table prints with its % sign, right-aligned."""
    return render.as_pct(value, fraction=True)


def _corr(value) -> str:
    return "-" if value is None else f"{value:+.3f}"


def evaluation_text(results: list[dict[str, Any]]) -> str:
    rows = [{"fold": r["fold"], "train": r["train"], "test": r["test"], "train rows": r["train rows"],
             "test rows": r["test rows"], "learned corr": _corr(r["learned rank corr"]),
             "score corr": _corr(r["score rank corr"]), "learned top-bottom": _pct(r["learned spread"]),
             "score top-bottom": _pct(r["score spread"])} for r in results]
    scored = [r for r in results if r["learned rank corr"] is not None and r["score rank corr"] is not None]
    better = sum(r["learned rank corr"] > r["score rank corr"] for r in scored)
    lines = [f"learned ranking, walk-forward: target {lr.TARGET}; each fold fitted on its training window's "
             f"candidates whose outcomes were known before its test window",
             render.table(rows, list(rows[0]) if rows else ["fold"]),
             f"the learned figure ranked the test candidates better than the fixed score in {better} of "
             f"{len(scored)} folds (Spearman rank correlation with the realised {lr.HORIZON}-session return)"]
    return "\n".join(lines)


def backtest_folds(spec, out_dir: Path, folds: list[Fold], results: list[dict[str, Any]], *, address: str | None,
                   workers: int | None) -> str:
    """Each test window run with the learned ranking (its fold's model) and with the score, on the cluster; the
    windows stitched beside SPY."""
    from ports.market_factory import open_market
    from research import engine, walk_forward
    from research.study import opened, stoppable
    from research.sweep import Runner

    with opened(spec, out_dir, "learn-evaluate", resume=False) as store:
        with stoppable(store), engine.cluster(address, workers) as client:
            runner = Runner(client, store, spec, out_dir)
            for fold, result in zip(folds, results):
                store.save_fold(fold.number, fold.train.strings(), fold.test.strings())
                runner.submit("test-learned", {"ranking": "learned"}, fold.test, fold.number,
                              extra=("--models-from", result["model_file"]))
                runner.submit("test-score", {}, fold.test, fold.number)
            while runner.running:
                runner.wait()
        store.set_status("done")
        series = {}
        for label, role in (("ranking learned", "test-learned"), ("ranking score", "test-score")):
            curve = walk_forward.stitched(store, folds, role)
            if curve:
                days, series[label] = curve
        if not series:
            return "backtests: a test window did not finish; no stitched curve"
        market = open_market(spec.data, market_path=spec.market or None, cache_dir=Path(spec.cache_dir))
        series["SPY total return"] = walk_forward.spy_stitched(market, folds, days)
    from backtest.metrics import series_metrics

    rows = []
    for label, values in series.items():
        m = series_metrics(values)
        rows.append({"curve": label, "CAGR": render.as_pct(m["cagr_pct"]), "Sharpe": _fig(m["sharpe"]),
                     "max DD": render.as_pct(m["max_drawdown_pct"]), "total": render.as_pct(m["total_return_pct"])})
    return ("momentum backtests on the test windows, stitched (daily replay, costs included, price-only data):\n"
            + render.table(rows, ["curve", "CAGR", "Sharpe", "max DD", "total"]))


def _fig(value) -> str:
    return "-" if value is None else f"{value:,.2f}"

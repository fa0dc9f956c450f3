"""What a study found, for people: a table in the terminal and PNG charts beside research.db.

Every summary says how many trials were tried beside the best one, how the defaults did on the same window, and the
deflated Sharpe ratio, so a lucky trial is not read as an edge."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from common import render
from research.params import OBJECTIVES, Param
from research.stats import deflated_sharpe
from research.sweep import best_trial

TOP = 10
PERCENT_OBJECTIVES = ("cagr", "total_return", "max_drawdown")  # in percent units (research/params.OBJECTIVES)


def _figure(value: Any, digits: int = 2) -> str:
    """A ratio, a count or seconds: a plain number (a percentage is a render.as_pct value instead)."""
    return "-" if value is None else f"{value:,.{digits}f}"


def _objective(value: float | None, objective: str) -> Any:
    """An objective's value for a table: a signed percentage (its % sign in the cell, not in the header) when the
    objective is one, else a plain number to three decimals."""
    return render.as_pct(value) if objective in PERCENT_OBJECTIVES else _figure(value, 3)


def _objective_text(value: float | None, objective: str) -> str:
    return render.pct(value) if objective in PERCENT_OBJECTIVES else _figure(value, 3)


# an objective that is one of the trial table's figures is shown once, under the objective's name
SAME_AS_METRIC = {"cagr": "CAGR", "sharpe": "Sharpe", "max_drawdown": "max DD"}


def _short_window(trials: list[dict]) -> str | None:
    """The caution for annualised figures over too few sessions, from a finished trial's own count."""
    from flows.reports import annualised_caution

    sessions = next((t["metrics"].get("measured_sessions") for t in trials
                     if t.get("metrics") and t["metrics"].get("measured_sessions")), None)
    return annualised_caution(sessions or 0, "CAGR and Sharpe are annualised")


def trial_rows(trials: list[dict], params: list[Param], objective: str) -> list[dict]:
    rows = []
    for t in trials:
        m = (t["metrics"] or {}).get("metrics") or {}
        row = {"trial": t["number"], "role": t["role"]}
        row.update({p.name: _value(t["params"][p.name]) if p.name in t["params"] else "default" for p in params})
        row.update({objective: _objective(t["objective"], objective), "CAGR": render.as_pct(m.get("cagr_pct")),
                    "Sharpe": _figure(m.get("sharpe")), "max DD": render.as_pct(m.get("max_drawdown_pct")),
                    "trades": m.get("trades", "-"), "wall s": _figure(t["wall_s"], 0), "status": t["status"]})
        rows.append(row)
    return rows


def honesty(search: list[dict]) -> dict[str, Any]:
    """The figures that keep a best trial honest: how many were tried and the deflated Sharpe ratio."""
    best = best_trial(search)
    return {"tried": len(search), "failed": sum(t["status"] == "failed" for t in search),
            "best": best, "deflated": deflated_sharpe(best, search) if best else None}


def honesty_lines(facts: dict[str, Any]) -> list[str]:
    lines = [f"trials tried: {facts['tried']} ({facts['failed']} failed)"]
    deflated = facts["deflated"]
    if deflated:
        lines.append(f"deflated Sharpe ratio of the best trial: {deflated['deflated_sharpe']:.2f} (its Sharpe "
                     f"{deflated['best_sharpe']:.2f} vs {deflated['expected_max_sharpe']:.2f} expected from the best "
                     f"of {deflated['trials']} trials with no edge; probability its Sharpe is above 0: "
                     f"{deflated['probabilistic_sharpe']:.2f})")
    else:
        lines.append("deflated Sharpe ratio: not enough trials with a Sharpe ratio to say")
    return lines


def sweep_text(spec: dict[str, Any], trials: list[dict], params: list[Param], charts: list[Path]) -> str:
    objective = spec["objective"]
    search = [t for t in trials if t["role"] == "search" and t["status"] in ("done", "failed")]
    default = next((t for t in trials if t["role"] == "default" and t["status"] == "done"), None)
    facts = honesty(search)
    ranked = sorted(search, key=lambda t: (t["objective"] is None, -(t["objective"] or 0), t["number"]))
    shown = ranked[:TOP] + ([default] if default else [])
    header = (f"research sweep: {spec['system']} {spec['start']} .. {spec['end']}, objective {objective} "
              f"({OBJECTIVES[objective]}); daily replay through the live code, costs included, price-only data")
    lines = [header, *honesty_lines(facts)]
    if facts["best"] and default and default["objective"] is not None:
        lines.append(f"best {objective} {_objective_text(facts['best']['objective'], objective)} (trial "
                     f"{facts['best']['number']}) vs the default settings' "
                     f"{_objective_text(default['objective'], objective)} on the same window")
    caution = _short_window(search)
    if caution:
        lines.append(f"CAUTION: each trial's {caution}")
    figures = [name for name in ("CAGR", "Sharpe", "max DD") if name != SAME_AS_METRIC.get(objective)]
    columns = ["trial", "role", *[p.name for p in params], objective, *figures, "trades", "wall s", "status"]
    lines.append(render.table(trial_rows(shown, params, objective), columns))
    if len(ranked) > TOP:
        lines.append(f"({len(ranked) - TOP} more trials in research.db)")
    lines += [f"{'page' if path.suffix == '.html' else 'chart'}: {path}" for path in charts]
    return "\n".join(lines)


# --- charts ---------------------------------------------------------------------------------------------------------

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


def _save(figure, path: Path) -> Path:
    temporary = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(temporary, format="png")
    os.replace(temporary, path)
    return path


def parameter_chart(trials: list[dict], params: list[Param], objective: str, path: Path,
                    default: float | None = None) -> Path:
    """One panel per parameter: each finished trial's value against its objective (the defaults as a line)."""
    plt = _pyplot()
    done = [t for t in trials if t["status"] == "done" and t["objective"] is not None]
    figure, axes = plt.subplots(1, len(params), figsize=(4.2 * len(params), 3.8), dpi=100, squeeze=False)
    try:
        for axis, param in zip(axes[0], params):
            xs = [t["params"].get(param.name) for t in done]
            if param.is_list:
                labels = [str(c) for c in param.choices]
                xs = [labels.index(str(x)) for x in xs]
                axis.set_xticks(range(len(labels)), labels)
            axis.scatter(xs, [t["objective"] for t in done], alpha=0.7)
            if default is not None:
                axis.axhline(default, color="tab:red", linestyle="--", linewidth=1, label="defaults")
                axis.legend(loc="best")
            axis.set_xlabel(param.name)
            axis.set_ylabel(objective)
            axis.grid(alpha=0.3)
        figure.suptitle(f"{objective} by parameter ({len(done)} trials)")
        figure.tight_layout()
        return _save(figure, path)
    finally:
        plt.close(figure)


def curves_chart(days: list, series: dict[str, list[float]], title: str, path: Path) -> Path:
    """Equity curves (100 = start) on one chart: the walk-forward's stitched out-of-sample curve and benchmarks."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(9, 4.5), dpi=100)
    try:
        for n, (label, values) in enumerate(series.items()):
            axis.plot(days, values, label=label, linewidth=2 if n == 0 else 1.3, linestyle="-" if n == 0 else "--")
        axis.axhline(100, color="black", linewidth=0.5)
        axis.set_title(title)
        axis.set_ylabel("value (100 = start)")
        axis.grid(alpha=0.3)
        axis.legend(loc="best")
        figure.autofmt_xdate()
        figure.tight_layout()
        return _save(figure, path)
    finally:
        plt.close(figure)


def walk_forward_text(spec: dict[str, Any], folds: list[dict], trials: list[dict], params: list[Param],
                      series: dict[str, list[float]], charts: list[Path], left_out: list[int] = ()) -> str:
    """Per fold: its windows, the settings chosen on the training window and how they and the defaults did on the
    test window; then the stitched out-of-sample figures beside the defaults and SPY, and the trials tried."""
    from backtest.metrics import series_metrics
    from flows.reports import annualised_caution

    objective = spec["objective"]
    by_fold: dict[tuple[int, str], dict] = {(t["fold"], t["role"]): t for t in trials
                                            if t["role"] in ("test", "test-default") and t["status"] == "done"}
    search = [t for t in trials if t["role"] == "search" and t["status"] in ("done", "failed")]
    lines = [f"research walk-forward: {spec['system']} {spec['start']} .. {spec['end']}, train {spec['train']}, test "
             f"{spec['test']}, step {spec['step']}, objective {objective}; settings chosen on each training window "
             "only (its data cut at the window's end), daily replay through the live code, costs included, "
             "price-only data", f"trials tried: {len(search)} over {len(folds)} folds "
             f"({sum(t['status'] == 'failed' for t in search)} failed)"]
    rows = []
    for fold in folds:
        chosen = next((t for t in trials if t["number"] == fold["chosen_trial"]), None)
        tested, default = by_fold.get((fold["fold"], "test")), by_fold.get((fold["fold"], "test-default"))
        fold_search = [t for t in search if t["fold"] == fold["fold"]]
        deflated = honesty(fold_search)["deflated"]
        rows.append({"fold": fold["fold"] + 1, "train": f"{fold['train_start']}..{fold['train_end']}",
                     "test": f"{fold['test_start']}..{fold['test_end']}",
                     "chosen": ", ".join(f"{k}={_value(v)}" for k, v in (fold["chosen_params"] or {}).items())
                               or "defaults",
                     f"train {objective}": _objective(chosen["objective"] if chosen else None, objective),
                     "DSR": _figure(deflated["deflated_sharpe"] if deflated else None),
                     f"test {objective}": _objective(tested["objective"] if tested else None, objective),
                     f"defaults {objective}": _objective(default["objective"] if default else None, objective),
                     "test return": render.as_pct(_metric(tested, "total_return_pct")),
                     "defaults return": render.as_pct(_metric(default, "total_return_pct"))})
    lines.append(render.table(rows, list(rows[0]) if rows else ["fold"]))
    if series:
        lines.append("out of sample (the test windows stitched" + (
            f"; fold{'s' if len(left_out) > 1 else ''} {', '.join(map(str, left_out))} left out: a test run did "
            "not finish, see the trials' errors)" if left_out else ")") + ":")
        figures = []
        for label, values in series.items():
            m = series_metrics(values)
            figures.append({"curve": label, "CAGR": render.as_pct(m["cagr_pct"]), "Sharpe": _figure(m["sharpe"]),
                            "max DD": render.as_pct(m["max_drawdown_pct"]),
                            "total": render.as_pct(m["total_return_pct"])})
        lines.append(render.table(figures, ["curve", "CAGR", "Sharpe", "max DD", "total"]))
        caution = annualised_caution(len(next(iter(series.values()))) - 1,
                                     "the stitched CAGR and Sharpe are annualised")
        if caution:
            lines.append(f"CAUTION: {caution}")
    else:
        lines.append("out of sample: a fold's test run did not finish; no stitched curve")
    lines += [f"{'page' if path.suffix == '.html' else 'chart'}: {path}" for path in charts]
    return "\n".join(lines)


def _value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _metric(trial: dict | None, key: str) -> float | None:
    return (((trial or {}).get("metrics") or {}).get("metrics") or {}).get(key)

"""research sweep on the real engine and the real data: bad input stops before anything runs; a sweep, a grid, a
resumed study, a worker killed mid-trial and a Ctrl-C all leave research.db saying what ran; a cluster started with
Dask's own commands runs the trials on its workers. The statistics and the parameter parsing are checked alone."""
from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from statistics import NormalDist

import psutil
import pytest
from click.testing import CliRunner

from conftest import ROOT
from common.errors import ConfigError, DataUnavailable
from realdata import BARS, process_env
from research import engine, stats
from research.params import assignments, grid, is_grid, objective_value, parse_param, parse_params
from research.store import Store
from research.trial import PARENT_ENV, daily_stats

WINDOW = ("--start", "2016-03-01", "--end", "2016-04-29")  # two months: a trial is a few seconds of backtest
RANGE = ("--param", "trailing_stop_pct=4:12")
RUN_TIMEOUT_S = 900  # a slow machine shared with other work; a sweep here normally takes 20-60 s
DASK = Path(sys.executable).with_name("dask")


# --- helpers ---------------------------------------------------------------------------------------------------------

def sweep_command(out: Path, universe: Path, *extra: str) -> list[str]:
    return [sys.executable, "main.py", "--data", f"csv:{BARS}", "--universe", str(universe), "research", "sweep",
            *WINDOW, "--out", str(out), *extra]


def sweep_env(tmp_path: Path, cache: Path, **extra: str) -> dict[str, str]:
    """A clean environment for a sweep (or a cluster process): a private home, journal and logs, the session's
    parsed-data cache; nothing is written into the checkout."""
    return process_env({"MOMENTUM_HOME": str(tmp_path / "home"), "CACHE_DIR": str(cache),
                        "MOMENTUM_DB": str(tmp_path / "trades.db"), "LOG_DIR": str(tmp_path / "logs"), **extra})


def sweep(tmp_path: Path, universe: Path, cache: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(sweep_command(out, universe, *extra), cwd=ROOT, env=sweep_env(tmp_path, cache),
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S)


def start_sweep(tmp_path: Path, universe: Path, cache: Path, out: Path, *extra: str) -> subprocess.Popen:
    """A sweep in a process group of its own, as a terminal would run it (Ctrl-C goes to the whole group)."""
    return subprocess.Popen(sweep_command(out, universe, *extra), cwd=ROOT, env=sweep_env(tmp_path, cache),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(process: subprocess.Popen) -> tuple[str, str]:
    try:
        return process.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()


def trials(out: Path) -> list[dict]:
    with sqlite3.connect(out / "research.db") as db:
        db.row_factory = sqlite3.Row
        return [{**dict(row), "params": json.loads(row["params"])}
                for row in db.execute("SELECT * FROM trials ORDER BY number")]


def study_status(out: Path) -> str:
    with sqlite3.connect(out / "research.db") as db:
        return db.execute("SELECT status FROM study").fetchone()[0]


def attempts(out: Path, number: int) -> list[Path]:
    return sorted((out / "trials" / f"{number:05d}").glob("attempt-*"))


def study_processes(out: Path) -> list[psutil.Process]:
    """Live processes whose command line names the study's folder: the sweep itself and every trial's backtest
    (`python -m research.trial ... --out OUT/trials/NNNNN/attempt-*`) with its prefetch worker."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        if process.info["status"] != psutil.STATUS_ZOMBIE and any(str(out) in arg
                                                                  for arg in process.info["cmdline"] or []):
            found.append(process)
    return found


def assert_no_process_left(out: Path, within_s: float = 15) -> None:
    """A trial's backtest watches its worker once a second and kills its own group when the worker is gone."""
    deadline = time.monotonic() + within_s
    while (left := study_processes(out)) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert not left, [process.info["cmdline"] for process in left]


def running_trial(out: Path, sweep_process: subprocess.Popen, *,
                  search_only: bool = False) -> tuple[psutil.Process, Path]:
    """A trial's backtest process once its journal exists (the backtest is under way), with its attempt folder."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        assert sweep_process.poll() is None, sweep_process.communicate()
        for process in psutil.process_iter(["cmdline"]):
            args = process.info["cmdline"] or []
            folder = next((Path(arg) for arg in args if arg.startswith(str(out / "trials"))), None)
            if "research.trial" not in args or folder is None or (search_only and folder.parent.name == "00001"):
                continue
            if (folder / "trades.db").exists() and process.is_running():
                return process, folder
        time.sleep(0.2)
    raise AssertionError("no trial started")


def one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, stderr
    return lines[0]


# --- bad input: one line, exit 2, nothing created --------------------------------------------------------------------

@pytest.mark.parametrize("extra, message", [
    (("--param", "nosuch=1:2"), "unknown strategy setting 'nosuch'"),
    (("--param", "trailing_stop_pct=0.1:5"), "TRAILING_STOP_PCT: must be between 0.5 and 50 (got '0.1')"),
    (("--param", "trailing_stop_pct=8:4"), "--param trailing_stop_pct: LOW must be below HIGH, got '8:4'"),
    (("--param", "trailing_stop_pct=5:5"), "--param trailing_stop_pct: LOW must be below HIGH, got '5:5'"),
    (("--param", "trailing_stop_pct=4:8:0"), "STEP must be above 0 and at most HIGH - LOW"),
    (("--param", "autoclose=1:2"), "--param autoclose: a choice setting takes a list (A,B,C), not a range"),
    (("--param", "autoclose=on,maybe"), "autoclose: expected on or off (got 'maybe')"),
    (("--param", "max_positions=2.5:6"), "--param max_positions: an integer setting takes whole numbers"),
    (("--param", "trailing_stop_pct"), "--param: expected NAME=LOW:HIGH[:STEP] or NAME=A,B,C"),
    ((*RANGE, "--objective", "alpha"), "--objective: unknown objective 'alpha' (one of sharpe, sortino"),
    ((*RANGE, "--param", "TRAILING_STOP_PCT=5,6"), "--param trailing_stop_pct: given twice"),
    ((*RANGE, "--data", "csv:/nonexistent/bars.csv"), "--data: no such file /nonexistent/bars.csv"),
    ((*RANGE, "--data", "alpaca"), "--data: research replays csv data (csv:PATH), not 'alpaca'"),
    (("--param", "trailing_stop_pct=4:12", "--start", "2016-05-01"), "--start 2016-05-01 is after --end"),
])
def test_bad_input_is_one_line_and_exit_2_before_anything_runs(private_journal, extra, message):
    from main import cli

    universe = private_journal / "universe.json"
    universe.write_text("[]")  # only its existence is checked before the parameters
    out = private_journal / "study"
    result = CliRunner().invoke(cli, ["--data", f"csv:{BARS}", "--universe", str(universe), "research", "sweep",
                                      *WINDOW, "--out", str(out), *extra])
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert not out.exists()  # no research.db, no trials folder


def test_a_study_refused_before_its_first_trial_leaves_nothing_behind(private_journal, monkeypatch):
    """A cluster that does not answer (exit 3) leaves no research.db, so the corrected command needs no --resume; a
    folder that was there stays with what it held."""
    from main import cli

    monkeypatch.setattr(engine, "CONNECT_TIMEOUT_S", 1)
    universe = private_journal / "universe.json"
    universe.write_text("[]")
    kept = private_journal / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    for out in (private_journal / "study", kept):
        result = CliRunner().invoke(cli, ["--data", f"csv:{BARS}", "--universe", str(universe), "research", "sweep",
                                          *WINDOW, *RANGE, "--out", str(out), "--cluster", "tcp://127.0.0.1:1"])
        assert result.exit_code == 3, result.output
        assert "--cluster tcp://127.0.0.1:1: no scheduler answered" in result.output
    assert not (private_journal / "study").exists()
    assert [p.name for p in kept.iterdir()] == ["notes.txt"] and (kept / "notes.txt").read_text() == "mine"


def test_a_study_keeps_research_db_once_a_trial_is_recorded_and_never_removes_one_it_did_not_create(tmp_path):
    from datetime import date

    from research import study
    from research.sweep import StudySpec

    spec = StudySpec("momentum", "all", date(2016, 3, 1), date(2016, 4, 29), "sharpe", parse_params(RANGE[1:]), 2, 0,
                     f"csv:{BARS}", "/u.json", "", "/cache")
    out = tmp_path / "study"
    with pytest.raises(DataUnavailable):  # failed before its first trial: nothing left
        with study.opened(spec, out, "sweep", resume=False):
            raise DataUnavailable("no scheduler answered")
    assert not out.exists()
    with pytest.raises(KeyboardInterrupt):  # a trial was recorded: the study is kept for --resume
        with study.opened(spec, out, "sweep", resume=False) as store:
            store.new_trial(role="default", params={}, fold=None, window=("2016-03-01", "2016-04-29"))
            raise KeyboardInterrupt
    assert len(trials(out)) == 1
    empty = tmp_path / "empty"
    with study.opened(spec, empty, "sweep", resume=False):
        pass  # a study begun and left without trials by an earlier run
    for resume in (False, True):  # refused, or resumed and failing: research.db was there before, so it stays
        with pytest.raises((ConfigError, DataUnavailable)):
            with study.opened(spec, empty, "sweep", resume=resume):
                raise DataUnavailable("no scheduler answered")
        assert (empty / "research.db").exists() and trials(empty) == []


# --- the parameters, alone -------------------------------------------------------------------------------------------

def test_a_range_parses_to_the_settings_own_type_and_optunas_distribution():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    stop = parse_param("trailing_stop_pct=4:12")
    assert (stop.name, stop.low, stop.high, stop.step, stop.is_list, stop.spec()) == (
        "trailing_stop_pct", 4.0, 12.0, None, False, "4:12")
    assert stop.distribution() == FloatDistribution(4.0, 12.0)
    stepped = parse_param("TRAILING_STOP_PCT=4:12:0.5")
    assert stepped.distribution() == FloatDistribution(4.0, 12.0, step=0.5) and stepped.spec() == "4:12:0.5"
    positions = parse_param("max_positions=2:8:2")
    assert positions.distribution() == IntDistribution(2, 8, step=2)
    assert parse_param("autoclose_threshold=3:10").distribution() == IntDistribution(3, 10)
    autoclose = parse_param("autoclose=on,off,on")  # each value once, in order
    assert autoclose.choices == ("on", "off") and autoclose.distribution() == CategoricalDistribution(["on", "off"])
    assert parse_param("trailing_stop_pct=5,8").choices == (5.0, 8.0)


def test_a_grid_is_every_combination_once_and_values_become_set_arguments():
    params = parse_params(["autoclose=on,off", "trailing_stop_pct=5,8", "max_positions=3,6"])
    assert is_grid(params) and not is_grid([*params, parse_param("buy_score_min=10:14")])
    combos = grid(params)
    assert len(combos) == 8 and len({json.dumps(c, sort_keys=True) for c in combos}) == 8
    assert combos[0] == {"autoclose": "on", "trailing_stop_pct": 5.0, "max_positions": 3}
    assert assignments({"skip_buys": True, "trailing_stop_pct": 8.0, "hard_stop_pct": 7.25, "max_positions": 3}) == [
        "skip_buys=true", "trailing_stop_pct=8", "hard_stop_pct=7.25", "max_positions=3"]
    with pytest.raises(ConfigError, match="at least one --param"):
        parse_params([])


def test_the_objective_is_read_from_a_trials_metrics():
    metrics = {"sharpe": 1.25, "sortino": 2.0, "cagr_pct": 12.0, "total_return_pct": 30.0,
               "max_drawdown_pct": -8.0}
    assert objective_value("sharpe", metrics) == 1.25
    assert objective_value("calmar", metrics) == 1.5  # CAGR over |max drawdown|
    assert objective_value("max_drawdown", metrics) == -8.0
    assert objective_value("calmar", {**metrics, "max_drawdown_pct": 0.0}) is None  # no drawdown: undefined
    assert objective_value("sharpe", {"sharpe": float("nan")}) is None
    assert objective_value("sortino", {}) is None


# --- the statistics, alone -------------------------------------------------------------------------------------------

def _sr0_by_hand(variance: float, trials: int) -> float:
    """Bailey and Lopez de Prado (2014), eq. for E[max SR_n]: the expected best of N no-edge Sharpe ratios."""
    z, gamma = NormalDist().inv_cdf, 0.5772156649015329
    return math.sqrt(variance) * ((1 - gamma) * z(1 - 1 / trials) + gamma * z(1 - 1 / (trials * math.e)))


def _dsr_by_hand(sr: float, sr0: float, t: int, skew: float, kurtosis: float) -> float:
    return NormalDist().cdf((sr - sr0) * math.sqrt(t - 1) / math.sqrt(1 - skew * sr + (kurtosis - 1) / 4 * sr ** 2))


def test_the_expected_best_sharpe_grows_with_the_number_of_trials():
    values = [stats.expected_max_sharpe(0.01, n) for n in (2, 5, 10, 100, 1000)]
    assert values == sorted(values) and len(set(values)) == len(values) and values[0] > 0
    assert stats.expected_max_sharpe(0.04, 10) == pytest.approx(2 * stats.expected_max_sharpe(0.01, 10))
    assert stats.expected_max_sharpe(0.01, 1) == 0.0 and stats.expected_max_sharpe(0.0, 50) == 0.0


def test_the_deflated_sharpe_ratio_matches_the_papers_example_and_is_one_half_at_sr0():
    # The paper's numerical example: 100 trials whose annualised Sharpe ratios vary by 0.5, 250 days a year, a best
    # trial of annualised Sharpe 2.5 over 1,250 days with skew -3 and kurtosis 10: SR0 = 0.1132 a day, DSR = 0.9004.
    variance, sr = 0.5 / 250, 2.5 / math.sqrt(250)
    sr0 = stats.expected_max_sharpe(variance, 100)
    assert sr0 == pytest.approx(_sr0_by_hand(variance, 100), rel=1e-12) and sr0 == pytest.approx(0.1132, abs=1e-4)
    dsr = stats.probabilistic_sharpe(sr, sr0, 1250, -3.0, 10.0)
    assert dsr == pytest.approx(_dsr_by_hand(sr, sr0, 1250, -3.0, 10.0), rel=1e-12)
    assert dsr == pytest.approx(0.9004, abs=5e-4)
    assert stats.probabilistic_sharpe(sr0, sr0, 1250, -3.0, 10.0) == 0.5  # no better than the luck of the best


def test_deflated_sharpe_of_a_study_uses_the_spread_of_its_trials():
    rows = [{"daily_sharpe": s, "skew": -0.2, "kurtosis": 4.0, "observations": 500}
            for s in (0.02, 0.05, -0.01, 0.08, 0.03)]
    best = rows[3]
    found = stats.deflated_sharpe(best, rows)
    sharpes = [r["daily_sharpe"] for r in rows]
    mean = sum(sharpes) / 5
    sr0 = _sr0_by_hand(sum((s - mean) ** 2 for s in sharpes) / 4, 5)  # the sample variance of the trials' Sharpes
    assert found["trials"] == 5
    assert found["expected_max_sharpe"] == pytest.approx(sr0 * math.sqrt(252))
    assert found["best_sharpe"] == pytest.approx(0.08 * math.sqrt(252))
    assert found["deflated_sharpe"] == pytest.approx(_dsr_by_hand(0.08, sr0, 500, -0.2, 4.0))
    assert found["probabilistic_sharpe"] == pytest.approx(_dsr_by_hand(0.08, 0.0, 500, -0.2, 4.0))
    assert found["deflated_sharpe"] < found["probabilistic_sharpe"]  # selection costs confidence
    assert stats.deflated_sharpe(best, [best]) is None  # one trial: no spread to deflate by


def test_daily_stats_are_per_day_moments_of_the_returns():
    equity = [100.0, 101.0, 100.5, 102.0, 101.0, 103.0]
    returns = [b / a - 1 for a, b in zip(equity, equity[1:])]
    mean = sum(returns) / len(returns)
    m2, m3, m4 = (sum((r - mean) ** k for r in returns) / len(returns) for k in (2, 3, 4))
    std = math.sqrt(sum((r - mean) ** 2 for r in returns) / (len(returns) - 1))
    found = daily_stats(equity)
    assert found["observations"] == 5
    assert found["daily_sharpe"] == pytest.approx(mean / std)
    assert found["skew"] == pytest.approx(m3 / m2 ** 1.5) and found["kurtosis"] == pytest.approx(m4 / m2 ** 2)
    assert daily_stats([100.0, 101.0, 102.0])["daily_sharpe"] is None  # two returns: too few to say


def test_the_store_refuses_a_second_study_and_a_changed_resume_and_counts_a_workers_retries(tmp_path):
    store = Store(tmp_path / "research.db")
    try:
        with pytest.raises(ConfigError, match="holds no study to resume"):
            store.begin("sweep", {"objective": "sharpe", "trials": 2}, resume=True)
        store.begin("sweep", {"objective": "sharpe", "trials": 2}, resume=False)
        with pytest.raises(ConfigError, match="already holds a study"):
            store.begin("sweep", {"objective": "sharpe", "trials": 2}, resume=False)
        with pytest.raises(ConfigError, match=r"other settings \(objective\)"):
            store.begin("sweep", {"objective": "cagr", "trials": 2}, resume=True)
        first = store.new_trial(role="search", params={"x": 1}, fold=None, window=("2016-03-01", "2016-04-29"))
        second = store.new_trial(role="search", params={"x": 2}, fold=None, window=("2016-03-01", "2016-04-29"))
        store.finish_trial(first, {"status": "done", "attempts": 2}, 1.0)  # its first worker died mid-trial
        store.finish_trial(second, {"status": "failed", "error": "KilledWorker: ..."}, None)  # the worker's count lost
        store.begin("sweep", {"objective": "sharpe", "trials": 4}, resume=True)  # more trials is the same study
        assert [(t["status"], t["attempts"]) for t in store.trials()] == [("done", 2), ("failed", 1)]
    finally:
        store.close()


# --- the summaries, alone --------------------------------------------------------------------------------------------

def _trial(number, role, objective, cagr, fold=None):
    return {"number": number, "role": role, "objective": objective, "status": "done", "wall_s": 12.0, "fold": fold,
            "params": {} if role == "default" else {"trailing_stop_pct": 5.5},
            "metrics": {"measured_sessions": 42,
                        "metrics": {"cagr_pct": cagr, "sharpe": 0.8, "max_drawdown_pct": -4.2, "trades": 12,
                                    "total_return_pct": cagr / 4}}}


def test_a_summary_prints_percentages_signed_with_their_sign_and_no_header_carries_it():
    from research import report

    params = parse_params(["trailing_stop_pct=4:8"])
    trials = [_trial(0, "default", 1.2, 3.4), _trial(1, "search", 2.5, 8.1), _trial(2, "search", -0.3, -12.0)]
    spec = {"system": "momentum", "start": "2016-03-01", "end": "2016-04-29"}
    # the objective's column is not repeated under its metric's name: sharpe replaces Sharpe, cagr replaces CAGR
    for objective, shown, figures in (("sharpe", ["2.500", "-0.300", "1.200"], ["CAGR"]),
                                      ("cagr", ["+2.50%", "-0.30%", "+1.20%"], ["Sharpe"])):
        lines = report.sweep_text({**spec, "objective": objective}, trials, params, []).splitlines()
        assert "CAUTION: each trial's CAGR and Sharpe are annualised from 42 sessions: too few to mean much" in lines
        header = next(n for n, line in enumerate(lines) if line.startswith("trial "))
        assert lines[header].split() == ["trial", "role", "trailing_stop_pct", objective, *figures, "max", "DD",
                                         "trades", "wall", "s", "status"]
        rows = [line.split() for line in lines[header + 2:header + 5]]
        assert [row[3] for row in rows] == shown  # a percentage objective is a percentage too
        assert {row[5] for row in rows} == {"-4.20%"}
        if objective == "sharpe":
            assert [row[4] for row in rows] == ["+8.10%", "-12.00%", "+3.40%"]
            assert lines[header + 3].index("-12.00%") < lines[header + 2].index("+8.10%")  # right-aligned
    best = next(line for line in lines if line.startswith("best cagr"))
    assert best == "best cagr +2.50% (trial 1) vs the default settings' +1.20% on the same window"
    folds = [{"fold": 0, "chosen_trial": 1, "train_start": "2016-01-04", "train_end": "2016-03-03",
              "test_start": "2016-03-04", "test_end": "2016-04-01", "chosen_params": {"trailing_stop_pct": 5.5}}]
    tried = [_trial(1, "search", 2.5, 8.1, 0), _trial(2, "test", 1.1, 2.0, 0), _trial(3, "test-default", 0.4, -1.0, 0)]
    lines = report.walk_forward_text({**spec, "objective": "sharpe", "train": "2m", "test": "1m", "step": "1m"},
                                     folds, tried, params, {"chosen settings (out of sample)": [100, 101, 99, 103]},
                                     []).splitlines()
    header = next(n for n, line in enumerate(lines) if line.startswith("fold "))
    assert lines[header].split()[-4:] == ["test", "return", "defaults", "return"]
    assert lines[header + 2].split()[-2:] == ["+0.50%", "-0.25%"]  # each test window's total return
    curve = next(n for n, line in enumerate(lines) if line.startswith("curve "))
    assert lines[curve].split() == ["curve", "CAGR", "Sharpe", "max", "DD", "total"]
    assert lines[curve + 2].split()[-2:] == ["-1.98%", "+3.00%"]
    assert "CAUTION: the stitched CAGR and Sharpe are annualised from 3 sessions: too few to mean much" in lines


# --- studies on the real engine and data -----------------------------------------------------------------------------

@pytest.mark.slow
def test_a_sweep_records_every_trial_with_its_journal_and_summarises_it_honestly(tmp_path, real_universe,
                                                                                 shared_cache):
    out = tmp_path / "sweep"
    done = sweep(tmp_path, real_universe, shared_cache, out, *RANGE, "--param", "autoclose=on,off", "--trials", "4",
                 "--workers", "2")
    assert done.returncode == 0, done.stderr
    with sqlite3.connect(out / "research.db") as db:
        kind, spec, status = db.execute("SELECT kind, spec, status FROM study").fetchone()
    assert (kind, status) == ("sweep", "done")
    assert json.loads(spec)["params"] == ["trailing_stop_pct=4:12", "autoclose=on,off"]
    rows = trials(out)
    assert sorted(t["role"] for t in rows) == ["default", "search", "search", "search", "search"]
    workers = set()
    for t in rows:
        assert t["status"] == "done" and t["attempts"] == 1, t
        journal = Path(t["journal"])
        assert journal.exists() and journal.parent.parent == out / "trials" / f"{t['number']:05d}"
        metrics = json.loads((journal.parent / "metrics.json").read_text())
        assert t["objective"] == pytest.approx(metrics["metrics"]["sharpe"])  # the objective is the backtest's own
        assert metrics["settings"] == t["params"] and json.loads(t["metrics"]) == metrics
        assert t["wall_s"] > 0 and t["observations"] == metrics["sessions"]
        workers.add(t["worker"])
        if t["role"] == "search":
            assert 4 <= t["params"]["trailing_stop_pct"] <= 12 and t["params"]["autoclose"] in ("on", "off")
        else:
            assert t["params"] == {}
    assert len(workers) == 2  # both local workers ran trials
    assert "trials tried: 4 (0 failed)" in done.stdout
    default = next(t for t in rows if t["role"] == "default")
    shown = next(line.split() for line in done.stdout.splitlines() if line.split()[:2] == [str(default["number"]),
                                                                                            "default"])
    cagr = json.loads(default["metrics"])["metrics"]["cagr_pct"]
    assert shown[5] == f"{cagr:+.2f}%"  # trial, role, the two settings, sharpe, CAGR: signed, with its % sign
    search = [t for t in rows if t["role"] == "search"]
    best = max(search, key=lambda t: (t["objective"], -t["number"]))
    deflated = stats.deflated_sharpe(best, search)
    assert f"deflated Sharpe ratio of the best trial: {deflated['deflated_sharpe']:.2f}" in done.stdout
    assert (out / "parameters.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert_no_process_left(out)


@pytest.mark.slow
def test_a_grid_runs_every_combination_exactly_once(tmp_path, real_universe, shared_cache):
    out = tmp_path / "grid"
    done = sweep(tmp_path, real_universe, shared_cache, out, "--param", "autoclose=on,off",
                 "--param", "trailing_stop_pct=5,8", "--trials", "2", "--workers", "2")  # a grid ignores --trials
    assert done.returncode == 0, done.stderr
    rows = trials(out)
    search = sorted((t["params"]["autoclose"], t["params"]["trailing_stop_pct"]) for t in rows if t["role"] == "search")
    assert search == [("off", 5.0), ("off", 8.0), ("on", 5.0), ("on", 8.0)]
    assert [t["role"] for t in rows].count("default") == 1 and all(t["status"] == "done" for t in rows)
    assert "trials tried: 4 (0 failed)" in done.stdout


@pytest.mark.slow
def test_resume_runs_only_the_trials_left_and_refuses_a_changed_study(tmp_path, real_universe, shared_cache):
    out = tmp_path / "resumed"
    first = sweep(tmp_path, real_universe, shared_cache, out, *RANGE, "--trials", "2", "--workers", "2")
    assert first.returncode == 0, first.stderr
    before = trials(out)
    assert sorted(t["role"] for t in before) == ["default", "search", "search"]

    again = sweep(tmp_path, real_universe, shared_cache, out, *RANGE, "--trials", "2", "--workers", "2")
    assert again.returncode == 2 and "already holds a study; use --resume" in one_line_error(again.stderr)
    changed = sweep(tmp_path, real_universe, shared_cache, out, *RANGE, "--trials", "4", "--objective", "cagr",
                    "--resume")
    assert changed.returncode == 2
    assert "started with other settings (objective); resume it with the same options" in one_line_error(changed.stderr)
    assert trials(out) == before

    resumed = sweep(tmp_path, real_universe, shared_cache, out, *RANGE, "--trials", "4", "--workers", "2", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    after = trials(out)
    assert after[:len(before)] == before  # the finished trials untouched, the default not run again
    new = after[len(before):]
    assert [t["role"] for t in new] == ["search", "search"] and all(t["status"] == "done" for t in new)
    assert min(t["number"] for t in new) > max(t["number"] for t in before)
    assert "trials tried: 4 (0 failed)" in resumed.stdout and study_status(out) == "done"


@pytest.mark.slow
def test_a_sweep_refused_by_its_cluster_is_run_again_into_the_same_out_without_resume(tmp_path, real_universe,
                                                                                      shared_cache):
    out = tmp_path / "study"
    refused = sweep(tmp_path, real_universe, shared_cache, out, *RANGE, "--trials", "1", "--cluster",
                    "tcp://127.0.0.1:1")
    assert refused.returncode == 3 and "no scheduler answered" in one_line_error(refused.stderr)
    assert not out.exists()
    corrected = sweep(tmp_path, real_universe, shared_cache, out, *RANGE, "--trials", "1", "--workers", "2")
    assert corrected.returncode == 0, corrected.stderr
    assert sorted(t["role"] for t in trials(out)) == ["default", "search"] and study_status(out) == "done"


@pytest.mark.slow
def test_a_worker_killed_mid_trial_loses_only_that_attempt_and_leaves_no_orphan(tmp_path, real_universe,
                                                                                shared_cache):
    out = tmp_path / "killed"
    process = start_sweep(tmp_path, real_universe, shared_cache, out, *RANGE, "--trials", "3", "--workers", "2")
    try:
        trial, folder = running_trial(out, process, search_only=True)
        number = int(folder.parent.name)
        worker = trial.parent()
        assert worker.ppid() == process.pid  # a worker process of the sweep's local cluster, not the sweep itself
        backtest_group = [trial, *trial.children(recursive=True)]  # the backtest and its prefetch worker
        worker.kill()
        gone, alive = psutil.wait_procs(backtest_group, timeout=10)
        assert not alive, "the backtest outlived its worker"
        stdout, stderr = finish(process)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, stderr
    rows = {t["number"]: t for t in trials(out)}
    killed = rows.pop(number)
    if killed["status"] == "done":  # run again on a live worker, in an attempt folder of its own
        assert len(attempts(out, number)) == 2 and killed["attempts"] == 2
        assert Path(killed["journal"]).parent in attempts(out, number) and Path(killed["journal"]).exists()
    else:
        assert killed["status"] == "failed" and killed["error"], killed
    assert [t["status"] for t in rows.values()] == ["done"] * 3
    assert "trials tried: 3" in stdout and study_status(out) == "done"
    assert_no_process_left(out)


@pytest.mark.slow
def test_ctrl_c_stops_the_study_keeping_what_finished_and_resume_completes_it(tmp_path, real_universe,
                                                                              shared_cache):
    out = tmp_path / "stopped"
    process = start_sweep(tmp_path, real_universe, shared_cache, out, *RANGE, "--trials", "3", "--workers", "2")
    try:
        running_trial(out, process)
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C on a terminal: the sweep and its local cluster's workers
        _, stderr = finish(process)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, stderr
    line = one_line_error(stderr)
    assert line.startswith("error: stopped: ") and "run the same command with --resume to continue" in line
    assert study_status(out) == "stopped"
    statuses = [t["status"] for t in trials(out)]
    assert "interrupted" in statuses and "running" not in statuses
    assert_no_process_left(out)

    resumed = sweep(tmp_path, real_universe, shared_cache, out, *RANGE, "--trials", "3", "--workers", "2", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    rows = trials(out)
    done = [t for t in rows if t["status"] == "done"]
    assert sorted(t["role"] for t in done) == ["default", "search", "search", "search"]
    assert {t["status"] for t in rows} <= {"done", "interrupted"}
    assert "trials tried: 3 (0 failed)" in resumed.stdout and study_status(out) == "done"


@pytest.mark.slow
def test_a_trial_whose_worker_is_already_gone_kills_itself(tmp_path, real_universe, shared_cache):
    """The watch compares with the worker's pid handed down, so a worker killed before the watch starts counts."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    started = time.monotonic()
    trial = subprocess.run([sys.executable, "-m", "research.trial", "--data", f"csv:{BARS}", "--universe",
                            str(real_universe), "backtest", *WINDOW, "--out", str(tmp_path / "orphan")], cwd=ROOT,
                           env={**sweep_env(tmp_path, shared_cache), PARENT_ENV: str(gone.pid)},
                           capture_output=True, text=True, timeout=120, start_new_session=True)
    assert trial.returncode == -signal.SIGKILL and time.monotonic() - started < 30, trial.stderr
    assert not (tmp_path / "orphan" / "metrics.json").exists()


# --- a cluster started with Dask's own commands ----------------------------------------------------------------------

def _spawn(command: list[str], cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "w") as sink:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _wait_for_workers(address: str, count: int) -> None:
    from dask.distributed import Client

    with Client(address, timeout=30) as client:
        client.wait_for_workers(count, timeout=120)


@pytest.mark.slow
def test_a_cluster_started_with_dask_commands_runs_the_trials_on_its_workers(tmp_path, real_universe, shared_cache,
                                                                              monkeypatch):
    if not DASK.exists():
        pytest.skip(f"{DASK} is not installed")
    scheduler_file = tmp_path / "scheduler.json"
    importable = sweep_env(tmp_path, shared_cache, PYTHONPATH=str(ROOT))
    started: list[subprocess.Popen] = []
    try:
        # the scheduler unpickles every trial's task, so it too needs the checkout importable
        started.append(_spawn([str(DASK), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                               "--scheduler-file", str(scheduler_file)], ROOT, importable, tmp_path / "scheduler.log"))
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() and time.monotonic() < deadline:
            assert started[0].poll() is None, (tmp_path / "scheduler.log").read_text()
            time.sleep(0.2)
        address = json.loads(scheduler_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")

        monkeypatch.setattr(engine, "CONNECT_TIMEOUT_S", 1)
        with pytest.raises(DataUnavailable, match="no worker joined the scheduler within 1 s"):
            with engine.cluster(address):
                pass

        worker = [str(DASK), "worker", "--scheduler-file", str(scheduler_file), "--nthreads", "1", "--no-dashboard",
                  "--host", "127.0.0.1"]
        for n in (1, 2):
            started.append(_spawn([*worker, "--local-directory", str(tmp_path / f"worker{n}")], ROOT, importable,
                                  tmp_path / f"worker{n}.log"))
        _wait_for_workers(address, 2)
        out = tmp_path / "on-cluster"
        process = start_sweep(tmp_path, real_universe, shared_cache, out, *RANGE, "--trials", "2", "--cluster", address)
        stdout, stderr = finish(process)
        assert process.returncode == 0, stderr
        rows = trials(out)
        assert sorted(t["role"] for t in rows) == ["default", "search", "search"]
        assert all(t["status"] == "done" for t in rows), rows
        worker_pids = {child.pid for nanny in started[1:] for child in psutil.Process(nanny.pid).children()}
        ran_on = {int(t["worker"].rsplit(":", 1)[1]) for t in rows}
        assert ran_on <= worker_pids and not ran_on & {os.getpid(), process.pid}, (ran_on, worker_pids)
        assert "trials tried: 2 (0 failed)" in stdout

        # Ctrl-C: the cluster lives on, but the study's running backtest stops (Dask cannot stop a task's thread);
        # four-year trials, which would otherwise run on for minutes
        stopped = tmp_path / "stopped-on-cluster"
        process = start_sweep(tmp_path, real_universe, shared_cache, stopped, *RANGE, "--trials", "2", "--cluster",
                              address, "--start", "2014-01-02", "--end", "2017-12-29")
        running_trial(stopped, process)
        os.killpg(process.pid, signal.SIGINT)
        finish(process)
        assert process.returncode == 130 and study_status(stopped) == "stopped"
        assert_no_process_left(stopped)
        assert all(worker.poll() is None for worker in started)

        # a worker that cannot import the trial's code is refused before any trial is recorded
        bare = {name: value for name, value in importable.items() if name != "PYTHONPATH"}
        started.append(_spawn([*worker, "--local-directory", str(tmp_path / "worker3")], tmp_path, bare,
                              tmp_path / "worker3.log"))
        _wait_for_workers(address, 3)
        refused = sweep(tmp_path, real_universe, shared_cache, tmp_path / "refused", *RANGE, "--trials", "2",
                        "--cluster", address)
        assert refused.returncode == 2
        line = one_line_error(refused.stderr)
        assert "worker tcp://127.0.0.1:" in line and "cannot import research.trial" in line and "scheduler," not in line
        assert not (tmp_path / "refused").exists()  # no research.db: the same command runs once the worker is fixed
    finally:
        _stop(started)

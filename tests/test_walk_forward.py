"""research walk-forward: the folds, a real run of three folds on the real data through a local Dask cluster, and
the look-ahead guard, which stops a study whose training trials saw data after their window (a planted leak)."""
from __future__ import annotations

import json
import re
import sqlite3
from datetime import date

import pytest

from common.errors import ConfigError
from research import walk_forward
from research.sweep import Window
from research.walk_forward import Fold, LookAheadLeak, check_no_leak, parse_duration, plan_folds

from realdata import BARS, cli, real_env, real_universe, shared_cache  # noqa: F401 - fixtures


def test_folds_over_five_years_move_on_by_the_step_and_test_what_follows_training():
    folds = plan_folds(date(2014, 1, 1), date(2018, 12, 31), (2, "y"), (6, "m"), (6, "m"))
    assert len(folds) == 6
    assert (folds[0].train.start, folds[0].train.end) == (date(2014, 1, 2), date(2015, 12, 31))
    assert (folds[0].test.start, folds[0].test.end) == (date(2016, 1, 4), date(2016, 6, 30))
    assert (folds[-1].test.start, folds[-1].test.end) == (date(2018, 7, 2), date(2018, 12, 31))
    for fold in folds:
        assert fold.train.data_until == fold.train.end < fold.test.start  # training data ends before its test
        assert fold.test.data_until == fold.test.end
    for earlier, later in zip(folds, folds[1:]):
        assert later.test.start > earlier.test.end  # test windows follow each other without overlap


def test_the_last_test_window_is_cut_at_the_end_and_a_span_too_short_is_one_line():
    folds = plan_folds(date(2016, 1, 4), date(2016, 5, 20), (2, "m"), (1, "m"), (1, "m"))
    assert [(f.test.start, f.test.end) for f in folds] == [
        (date(2016, 3, 4), date(2016, 4, 1)), (date(2016, 4, 4), date(2016, 5, 3)), (date(2016, 5, 4),
                                                                                     date(2016, 5, 20))]
    with pytest.raises(ConfigError, match="no fold fits"):
        plan_folds(date(2016, 1, 4), date(2016, 2, 20), (2, "m"), (1, "m"), (1, "m"))


@pytest.mark.parametrize("text", ["", "2", "y", "0m", "6 months", "-1y", "2q"])
def test_a_bad_length_is_refused(text):
    with pytest.raises(ConfigError, match="expected a length like 2y"):
        parse_duration(text, "--train")


def _fold() -> Fold:
    return Fold(0, Window(date(2016, 1, 4), date(2016, 3, 3), date(2016, 3, 3)),
                Window(date(2016, 3, 4), date(2016, 4, 1), date(2016, 4, 1)))


def test_the_guard_passes_trials_that_saw_only_their_training_window_and_stops_one_that_saw_more():
    fine = {"number": 1, "status": "done", "data_through": "2016-03-03", "window_end": "2016-03-03"}
    failed = {"number": 2, "status": "failed", "data_through": None, "window_end": "2016-03-03"}
    check_no_leak(_fold(), [fine, failed])  # a failed trial chose nothing
    for leak in ({**fine, "data_through": "2016-04-01"}, {**fine, "data_through": None},
                 {**fine, "window_end": "2016-03-10"}):
        with pytest.raises(LookAheadLeak, match="training trial 1 saw data through"):
            check_no_leak(_fold(), [fine, leak])


def _walk_forward(out, *extra: str):
    return cli("research", "walk-forward", "--start", "2016-01-04", "--end", "2016-05-31", "--train", "2m",
               "--test", "1m", "--step", "1m", "--param", "trailing_stop_pct=4:10", "--workers", "2",
               "--out", str(out), *extra)


def _rows(db, sql):
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(row) for row in conn.execute(sql)]


@pytest.mark.slow
def test_three_folds_choose_on_training_data_only_and_stitch_the_test_windows(real_env, tmp_path):
    out = tmp_path / "wf"
    result = _walk_forward(out, "--trials", "2")
    assert result.exit_code == 0, result.output
    db = out / "research.db"
    folds = _rows(db, "SELECT * FROM folds ORDER BY fold")
    assert [(f["train_end"], f["test_start"], f["test_end"]) for f in folds] == [
        ("2016-03-03", "2016-03-04", "2016-04-01"), ("2016-04-01", "2016-04-04", "2016-05-03"),
        ("2016-05-03", "2016-05-04", "2016-05-31")]
    trials = _rows(db, "SELECT * FROM trials ORDER BY number")
    for fold in folds:
        search = [t for t in trials if t["fold"] == fold["fold"] and t["role"] == "search"]
        assert len(search) == 2 and all(t["status"] == "done" for t in search)
        assert all(t["data_through"] <= fold["train_end"] and t["window_end"] == fold["train_end"] for t in search)
        best = max(search, key=lambda t: t["objective"])
        assert fold["chosen_trial"] == best["number"]  # the best on the training window, nothing else
        tested = [t for t in trials if t["fold"] == fold["fold"] and t["role"] == "test"]
        assert len(tested) == 1 and json.loads(tested[0]["params"]) == json.loads(fold["chosen_params"])
        assert (tested[0]["window_start"], tested[0]["window_end"]) == (fold["test_start"], fold["test_end"])
        assert [t["role"] for t in trials if t["fold"] == fold["fold"] and t["role"] == "test-default"] == [
            "test-default"]
    assert "trials tried: 6 over 3 folds (0 failed)" in result.output
    lines = result.output.splitlines()
    header = next(n for n, line in enumerate(lines) if line.startswith("curve "))
    assert lines[header].split() == ["curve", "CAGR", "Sharpe", "max", "DD", "total"]  # no % in a header
    for n, curve in enumerate(("chosen settings (out of sample)", "default settings", "SPY total return")):
        assert lines[header + 2 + n].startswith(curve)
        figures = lines[header + 2 + n][len(curve):].split()
        assert all(re.fullmatch(r"[+-]\d+\.\d\d%", figures[i]) for i in (0, 2, 3)), figures  # signed, with %
    assert (out / "walk_forward.png").stat().st_size > 10_000


@pytest.mark.slow
def test_a_planted_leak_training_on_data_past_the_window_stops_the_study_before_any_choice(real_env, tmp_path,
                                                                                         monkeypatch):
    def leaky(fold: Fold) -> Window:  # the bug: the training data source is cut at the end of the TEST window
        return Window(fold.train.start, fold.train.end, data_until=fold.test.end)

    monkeypatch.setattr(walk_forward, "training_window", leaky)
    out = tmp_path / "leak"
    result = cli("research", "walk-forward", "--start", "2016-01-04", "--end", "2016-04-01", "--train", "2m",
                 "--test", "1m", "--step", "1m", "--param", "trailing_stop_pct=4:10", "--trials", "1",
                 "--workers", "1", "--out", str(out))
    assert result.exit_code == 1, result.output
    assert ("walk-forward fold 1: training trial 1 saw data through 2016-04-01 (replayed to 2016-03-03), after its "
            "training window ends 2016-03-03") in result.output
    assert _rows(out / "research.db", "SELECT chosen_trial FROM folds") == [{"chosen_trial": None}]
    assert _rows(out / "research.db", "SELECT COUNT(*) AS n FROM trials WHERE role LIKE 'test%'") == [{"n": 0}]


@pytest.mark.parametrize("start, end, message", [
    ("2016-01-04", "2018-06-29", "--end 2018-06-29 is after the last date of the data (2018-02-07)"),
    ("2013-02-01", "2013-12-31", "--start 2013-02-01 leaves too little history: the data starts on 2013-02-08"),
])
def test_a_window_the_data_cannot_carry_is_refused_before_any_trial(real_env, tmp_path, start, end, message):
    result = cli("research", "walk-forward", "--start", start, "--end", end, "--train", "6m", "--test", "3m",
                 "--param", "trailing_stop_pct=4:10", "--out", str(tmp_path / "wf"))
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "wf").exists()

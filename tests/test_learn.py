"""The learned ranking: a clear refusal with too few candidates, fit and status on candidates a real-data backtest
recorded, point-in-time use (a planted leak is refused), the scan ranking by the active model and recording its
version on every candidate, and the walk-forward evaluation."""
from __future__ import annotations

import json
import re
import sqlite3
from datetime import date

import pytest

from core import learned_ranking as lr

from realdata import BARS, cli, real_env, real_universe, shared_cache  # noqa: F401 - fixtures

SPAN = ("2016-01-04", "2016-04-29")  # a backtest over it records the candidates the tests learn from


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, real_universe, shared_cache):  # noqa: F811
    """A journal of candidates with outcomes: a real-data momentum backtest over SPAN."""
    import os

    from click.testing import CliRunner

    from main import cli as main_cli

    out = tmp_path_factory.mktemp("learn") / "bt"
    env = {"UNIVERSE_FILE": str(real_universe), "DATA_SOURCE": f"csv:{BARS}", "CACHE_DIR": str(shared_cache),
           "LOG_DIR": str(out.parent / "logs"), "MOMENTUM_ASOF": ""}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        result = CliRunner().invoke(main_cli, ["backtest", "--start", SPAN[0], "--end", SPAN[1], "--out", str(out)])
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    assert result.exit_code == 0, result.output
    return out / "trades.db"


def test_too_few_labelled_candidates_is_one_clear_line(private_journal):
    from click.testing import CliRunner

    from main import cli as main_cli

    result = CliRunner().invoke(main_cli, ["learn", "fit", "--until", "2024-06-14"])
    assert result.exit_code == 2
    assert result.output.strip() == (
        "error: learn fit: 0 labelled candidates up to 2024-06-14, at least 500 are needed (run scans and the "
        "nightly update-outcomes job, or a backtest, to record more)")


def test_rank_correlation_and_decile_spread_are_what_they_say():
    assert lr.rank_correlation(list(range(20)), [x ** 3 for x in range(20)]) == pytest.approx(1.0)
    assert lr.rank_correlation(list(range(20)), [-x for x in range(20)]) == pytest.approx(-1.0)
    assert lr.rank_correlation([1, 2], [1, 2]) is None  # too few pairs to say anything
    spread = lr.decile_spread(list(range(100)), [x / 100 for x in range(100)])
    assert spread["top_decile"] == pytest.approx(0.945) and spread["bottom_decile"] == pytest.approx(0.045)


def test_the_evaluation_table_prints_the_top_bottom_spreads_signed_with_their_percent_sign():
    from research import learn_eval

    base = {"train": "2016-01-04..2016-02-24", "test": "2016-03-01..2016-03-31", "train rows": 900, "test rows": 300,
            "score rank corr": -0.02}
    lines = learn_eval.evaluation_text([
        {**base, "fold": 1, "learned rank corr": 0.05, "learned spread": 0.0123, "score spread": -0.004},
        {**base, "fold": 2, "learned rank corr": None, "learned spread": None, "score spread": -0.00001}]).splitlines()
    assert lines[1].split()[-4:] == ["learned", "top-bottom", "score", "top-bottom"]  # no % in a header
    assert lines[3].split()[-4:] == ["+0.050", "-0.020", "+1.23%", "-0.40%"]
    assert lines[4].split()[-4:] == ["-", "-0.020", "-", "0.00%"]  # a loss that rounds to nothing is none
    assert lines[3].endswith("-0.40%") and lines[4].endswith("0.00%")  # right-aligned


@pytest.mark.slow
def test_fit_learns_only_up_to_its_day_and_is_usable_from_the_fifth_session_after(real_env, recorded):
    result = cli("learn", "fit", "--from", str(recorded), "--until", "2016-03-31")
    assert result.exit_code == 0, result.output
    assert "usable from 2016-04-07 (fitted until 2016-03-31 + 5 sessions)" in result.output
    with sqlite3.connect(real_env["MOMENTUM_DB"]) as db:
        version, train_end, rows, validation = db.execute(
            "SELECT version, train_end, rows, validation FROM models").fetchone()
        with sqlite3.connect(recorded) as source:
            labelled = source.execute("SELECT COUNT(*) FROM candidates WHERE stage1 = 1 AND session <= '2016-03-31' "
                                      "AND price_5d IS NOT NULL AND price > 0").fetchone()[0]
    assert (version, rows) == (1, labelled) and train_end <= "2016-03-31"
    assert set(json.loads(validation)) >= {"learned_rank_corr", "score_rank_corr", "validation_from"}
    status = cli("--asof", "2016-04-06T10:30", "learn", "status").output
    assert "ranking: score; model for 2016-04-06: none usable" in status  # one session too early
    status = cli("--asof", "2016-04-07T10:30", "learn", "status").output
    assert "model for 2016-04-07: version 1 (fitted until 2016-03-31)" in status


@pytest.mark.slow
def test_a_scan_ranks_by_the_active_model_and_records_its_version_and_a_planted_leak_is_refused(real_env, recorded):
    assert cli("learn", "fit", "--from", str(recorded), "--until", "2016-03-31").exit_code == 0
    assert cli("set", "ranking", "learned").exit_code == 0
    result = cli("--asof", "2016-04-11T10:30", "scan", "--cap", "large", "--dry-run")
    assert result.exit_code == 0, result.output
    with sqlite3.connect(real_env["MOMENTUM_DB"]) as db:
        rows = db.execute("SELECT symbol, learned, model_version, decision, reason FROM candidates").fetchall()
    assert rows and all(version == 1 and learned is not None for _, learned, version, _, _ in rows)
    assert all(reason.startswith("learned ") for *_, reason in rows if reason != "already held")
    ranked = [learned for _, learned, *_ in rows]  # recorded in the order the ranking decided them
    assert ranked == sorted(ranked, reverse=True)
    weekly = cli("--asof", "2016-04-18T10:00", "report", "weekly")
    assert f"learned model v1 on this week's {len(rows)} candidates: entry signals it distrusts" in weekly.output
    # the planted leak: a model claiming to be usable the day after its last training day
    with sqlite3.connect(real_env["MOMENTUM_DB"]) as db:
        db.execute("INSERT INTO models SELECT 2, created_at, kind, target, '2016-04-08', '2016-04-11', horizon, "
                   "features, train_start, '2016-04-08', rows, validation, library, model, source FROM models")
    leaked = cli("--asof", "2016-04-11T10:30", "scan", "--cap", "large", "--dry-run")
    assert leaked.exit_code == 1
    assert ("model version 2 (fitted until 2016-04-08, usable from 2016-04-11) may not rank the candidates of "
            "2016-04-11: its labels were not all known by then") in leaked.output


@pytest.mark.slow
def test_evaluate_walks_forward_and_reports_both_rankings_per_fold(real_env, recorded, tmp_path):
    result = cli("learn", "evaluate", "--from", str(recorded), "--start", SPAN[0], "--end", SPAN[1],
                 "--train", "2m", "--test", "1m", "--step", "1m", "--out", str(tmp_path / "eval"))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("learned ranking, walk-forward: target return from the scan price to the close 5")
    assert "the learned figure ranked the test candidates better than the fixed score in" in result.output
    folds = [line for line in lines if line.strip()[:1].isdigit()]
    assert len(folds) == 2  # tests in March and April 2016
    assert all(re.fullmatch(r"(-|[+-]\d+\.\d\d%)", cell) for line in folds for cell in line.split()[-2:])
    assert (tmp_path / "eval" / "model-fold-1.db").exists() and (tmp_path / "eval" / "model-fold-2.db").exists()
    with sqlite3.connect(tmp_path / "eval" / "model-fold-2.db") as db:
        fitted_until, usable = db.execute("SELECT fitted_until, usable_from FROM models").fetchone()
    assert usable <= "2016-04-04" and fitted_until < usable  # usable when its test window opens, not later data
    assert date.fromisoformat(fitted_until) < date(2016, 4, 1)

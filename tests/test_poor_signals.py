"""Poor signals as the LLM decider sees them: unreviewed ones summarised into pattern lines (entry conditions beside
how often the other closed trades met them), and `report poor-signals --review` / `--review-all` taking them out."""
from __future__ import annotations

import json
import sqlite3

import pandas as pd
import pytest

from core.rules_decider import Limits
from flows.reports import entry_conditions, poor_signal_patterns, summarise_poor_signals
from ports.llm_decider import build_prompt
from realdata import cli


def _signals(gap: float, rsi: float, *, aligned: bool = True, price: float = 50.0, sma20: float = 48.0) -> str:
    """entry_signals as the scan stores them: the scanner row, fractions and flags."""
    return json.dumps({"price": price, "gap_up": gap, "change_pct": 0.02, "rsi_14": rsi, "rvol": 1.8,
                       "roc_10d": 0.08, "sma20": sma20, "score": 13, "stage1": True, "stage2": True,
                       "sma_aligned": aligned, "follow_through": False, "breakout_5d": None})


POOR = [  # three trades closed by a reversal
    {"id": 1, "symbol": "AAA", "pnl_pct": -3.0, "holding_days": 4, "composite_score": 13,
     "entry_signals": _signals(0.05, 75), "reversal_signals": json.dumps(["below_sma20", "gap_down"])},
    {"id": 2, "symbol": "BBB", "pnl_pct": -4.0, "holding_days": 2, "composite_score": 15,
     "entry_signals": _signals(0.04, 72), "reversal_signals": json.dumps(["below_sma20"])},
    {"id": 3, "symbol": "CCC", "pnl_pct": -2.3, "holding_days": 3, "composite_score": 12,
     "entry_signals": _signals(0.01, 60, price=60.0), "reversal_signals": json.dumps(["below_sma20", "off_peak"])},
]
OTHERS = [_signals(0.05, 50), _signals(0.0, 55)]  # closed by anything else


def test_patterns_name_what_the_poor_signals_shared_beside_the_other_trades():
    lines = summarise_poor_signals(POOR, OTHERS)
    assert lines == [
        "3 unreviewed trades closed by a reversal; average P&L -3.1%, held 3.0 sessions on average "
        "(latest: CCC, BBB, AAA)",
        "entry signals present in trades later closed by a reversal: sma_aligned 3 of 3 (other closed trades 2 of 2), "
        "gap_up>=3% 2 of 3 (other closed trades 1 of 2), rsi>70 2 of 3 (other closed trades 0 of 2), "
        "price>10% over sma20 1 of 3 (other closed trades 0 of 2)",
        "reversal signals that closed them: below_sma20 3 of 3, gap_down 1 of 3, off_peak 1 of 3",
        "composite score at entry: 13.3 on average (12-15)",
    ]


def test_entry_conditions_read_the_stored_row_and_older_lists():
    assert entry_conditions(_signals(0.03, 70.5, aligned=False)) == {"gap_up>=3%", "rsi>70"}
    assert entry_conditions(json.dumps(["gap_up", "volume_surge"])) == {"gap_up", "volume_surge"}
    assert entry_conditions(json.dumps({"gap_up": None, "rsi_14": "high", "sma_aligned": 1})) == set()
    assert entry_conditions("not json") == set() and entry_conditions(None) == set()


def test_no_poor_signals_no_lines():
    assert summarise_poor_signals([], OTHERS) == []


# --- the journal and the command -----------------------------------------------------------------------------------

@pytest.fixture
def journal_path(private_journal):
    """A journal with the three poor signals (the third already reviewed) and the two other closed trades."""
    from common.clock import Clock, parse_asof
    from db import open_journal

    journal = open_journal(private_journal / "trades.db", Clock(parse_asof("2016-06-01T10:00")))
    try:
        for n, signals in enumerate([p["entry_signals"] for p in POOR] + OTHERS):
            journal.insert_row("trades", {"symbol": f"T{n}", "qty": 10, "status": "closed", "entry_price": 50.0,
                                          "entry_signals": signals, "strategy": "momentum",
                                          "exit_reason": "reversal" if n < len(POOR) else "trailing_stop"})
        for row in POOR:
            journal.insert_row("poor_signals", {**row, "trade_id": row["id"], "exit_reason": "reversal",
                                                "reviewed": int(row["id"] == 3)})
    finally:
        journal.db.conn.close()
    return private_journal / "trades.db"


def _open(path):
    from common.clock import Clock, parse_asof
    from db import open_journal

    return open_journal(path, Clock(parse_asof("2016-06-01T10:00")))


def _reviewed(path) -> dict[int, int]:
    with sqlite3.connect(path) as conn:
        return dict(conn.execute("SELECT id, reviewed FROM poor_signals ORDER BY id"))


def test_only_unreviewed_poor_signals_reach_the_prompt(journal_path):
    journal = _open(journal_path)
    try:
        lines = poor_signal_patterns(journal)
    finally:
        journal.db.conn.close()
    assert lines[0].startswith("2 unreviewed trades closed by a reversal; average P&L -3.5%")
    assert "rsi>70 2 of 2 (other closed trades 0 of 2)" in lines[1]
    assert "off_peak" not in lines[2]  # the reviewed trade's trigger
    no_candidates = pd.DataFrame(columns=["stage1", "score"])
    prompt = build_prompt(no_candidates, [], set(), Limits(1, 1, 1), {}, lines)
    section = prompt.split("## POOR-SIGNAL PATTERNS")[1].split("## REPLY FORMAT")[0]
    assert section.splitlines()[1:3] == [f"- {lines[0]}", f"- {lines[1]}"]
    assert "{" not in section  # summarised lines, not raw rows


def test_review_marks_the_named_ids_and_reports_the_ones_already_reviewed(journal_path):
    result = cli("report", "poor-signals", "--review", "1, 3")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("marked 1 poor signal(s) reviewed: 1 (already reviewed: 3)\n")
    assert _reviewed(journal_path) == {1: 1, 2: 0, 3: 1}
    assert "- 1 unreviewed trade closed by a reversal; average P&L -4.0%" in result.output


def test_review_all_leaves_no_pattern(journal_path):
    result = cli("report", "poor-signals", "--review-all", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["review"] == {"marked": [1, 2], "already_reviewed": []}
    assert data["patterns"] == [] and data["unreviewed"] == 0 and data["count"] == 3
    assert _reviewed(journal_path) == {1: 1, 2: 1, 3: 1}
    assert "(none: every poor signal is reviewed)" in cli("report", "poor-signals").output


def test_the_report_lists_ids_to_review_and_the_patterns(journal_path):
    text = cli("report", "poor-signals").output
    assert text.startswith("poor signals: 3 trades closed on a reversal (2 unreviewed)")
    assert "patterns the LLM decider is shown (unreviewed poor signals)\n- 2 unreviewed trades" in text
    recent = text.split("recent (mark reviewed: report poor-signals --review ID[,ID] or --review-all)\n")[1]
    assert [line.split()[:2] for line in recent.splitlines()[2:]] == [["3", "CCC"], ["2", "BBB"], ["1", "AAA"]]


@pytest.mark.parametrize("args, message", [
    (["--review", "1,99"], "--review: no poor signal with id 99"),
    (["--review", "x"], "--review: expected poor-signal ids like 3 or 3,7, got 'x'"),
    (["--review", "0"], "expected poor-signal ids"),
    (["--review", "1", "--review-all"], "--review and --review-all: give one of them"),
])
def test_bad_review_requests_change_nothing(journal_path, args, message):
    result = cli("report", "poor-signals", *args)
    assert result.exit_code == 2 and message in result.output
    assert _reviewed(journal_path) == {1: 0, 2: 0, 3: 1}


# --- recording: the check that closed the trade ---------------------------------------------------------------------

def _check(journal, trade_id: int, at: str, score: int, reversal: list[str], action: str) -> None:
    journal.insert_row("position_checks", {
        "trade_id": trade_id, "symbol": f"T{trade_id}", "checked_at": f"2016-06-{at}:00+00:00",
        "reversal_score": score, "signals": json.dumps({"reversal": reversal, "triggered": []}), "action": action})


def test_a_poor_signal_describes_the_check_that_closed_the_trade(private_journal):
    """Trade 1: the monitor's reversal exit, then a check while the exit was working, then the fill: the reversal
    check is the one. Trade 2 has no closing check (closed by an older program): its last check at or before the
    exit, not a later one."""
    from types import SimpleNamespace

    from journal.trade_book import record_poor_signals

    journal = _open(private_journal / "trades.db")
    try:
        for trade_id in (1, 2):
            journal.insert_row("trades", {"id": trade_id, "symbol": f"T{trade_id}", "qty": 10, "status": "closed",
                                          "entry_price": 50.0, "exit_price": 48.0, "exit_reason": "reversal",
                                          "entry_time": "2016-06-01T14:00:00+00:00",
                                          "exit_time": "2016-06-03T15:00:00+00:00", "strategy": "momentum"})
        _check(journal, 1, "02T14:00", 1, ["below_sma5"], "monitor:HOLD")
        _check(journal, 1, "03T14:00", 6, ["below_sma5", "below_sma10", "gap_down"], "monitor:reversal")
        _check(journal, 1, "03T14:30", 2, ["below_sma5", "below_sma10"], "monitor:EXITING")
        _check(journal, 2, "02T14:00", 1, ["below_sma5"], "monitor:HOLD")
        _check(journal, 2, "03T14:00", 5, ["below_sma5", "off_peak"], "monitor:HOLD")
        _check(journal, 2, "03T16:00", 9, ["gap_down"], "monitor:HOLD")
        assert record_poor_signals(SimpleNamespace(journal=journal)) == 2
        stored = journal.query("SELECT trade_id, reversal_score, reversal_signals FROM poor_signals ORDER BY trade_id")
    finally:
        journal.db.conn.close()
    assert [(r["trade_id"], r["reversal_score"], json.loads(r["reversal_signals"])) for r in stored] == [
        (1, 6, ["below_sma5", "below_sma10", "gap_down"]), (2, 5, ["below_sma5", "off_peak"])]

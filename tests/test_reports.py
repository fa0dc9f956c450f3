"""Reports, CSV exports, the audit CSV and the equity chart over the journal produced by real sim runs (test_jobs)."""
from __future__ import annotations

import csv
import json
import math
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from common import render
from realdata import cli
from test_jobs import copy_journal, ny_date, produced, rows, spy_closes  # noqa: F401

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def journal(produced, tmp_path, monkeypatch) -> dict[str, str]:  # noqa: F811
    return copy_journal(produced, tmp_path, monkeypatch)


def report(*args: str) -> dict:
    result = cli(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def closed_between(db: str, first: str, last: str) -> list[dict]:
    trades = rows(db, "SELECT symbol, exit_time, pnl FROM trades WHERE status = 'closed' ORDER BY exit_time")
    return [t for t in trades if first <= ny_date(t["exit_time"]) <= last]


def snapshot(db: str, day: str) -> dict:
    return rows(db, "SELECT * FROM daily_performance WHERE date = ?", (day,))[0]


# --- weekly --------------------------------------------------------------------------------------------------------

def test_weekly_report_of_the_last_completed_week_with_its_chart(journal, tmp_path):
    db = journal["MOMENTUM_DB"]
    chart = tmp_path / "week.png"
    data = report("--asof", "2016-12-03T10:00", "report", "weekly", "--chart", str(chart))
    assert (data["start"], data["end"], data["snapshots"]) == ("2016-11-28", "2016-12-04", 5)
    before, last = snapshot(db, "2016-11-25"), snapshot(db, "2016-12-02")
    assert data["start_equity"] == pytest.approx(before["equity"]) and data["end_equity"] == last["equity"]
    assert data["pnl"] == pytest.approx(last["equity"] - before["equity"], abs=0.005)
    spy = spy_closes()
    assert data["spy_return_pct"] == pytest.approx((spy["2016-12-02"] / spy["2016-11-25"] - 1) * 100)
    assert data["vs_spy_pct"] == pytest.approx(data["return_pct"] - data["spy_return_pct"])
    closed = closed_between(db, "2016-11-28", "2016-12-04")
    assert [t["symbol"] for t in data["closed"]] == [t["symbol"] for t in closed] and closed
    assert data["realised_pnl"] == pytest.approx(sum(t["pnl"] for t in closed), abs=0.005)
    assert data["wins"] == sum(1 for t in closed if t["pnl"] > 0)
    assert [d["date"] for d in data["days"]] == ["2016-11-28", "2016-11-29", "2016-11-30", "2016-12-01",
                                                 "2016-12-02"]
    assert data["chart"] == str(chart)
    content = chart.read_bytes()
    assert content[:8] == PNG_SIGNATURE and len(content) > 1024


@pytest.mark.parametrize("asof, week", [("2016-12-02T12:00", "2016-11-21"),  # Friday before the close
                                        ("2016-12-02T16:30", "2016-11-28"),  # Friday after the close
                                        ("2016-11-28T09:00", "2016-11-21")])  # Monday before the open
def test_the_completed_week_is_the_latest_whose_sessions_all_closed(journal, asof, week):
    assert report("--asof", asof, "report", "weekly")["start"] == week


def test_weekly_text_and_default_chart_location(journal):
    result = cli("--asof", "2016-12-03T10:00", "report", "weekly")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "week 2016-11-28 .. 2016-12-04 (5 snapshots)"
    data = report("--asof", "2016-12-03T10:00", "report", "weekly")
    first = data["days"][0]  # the daily table: money with its $, changes with their signed % (common/render.py)
    row = next(line for line in lines if line.startswith("2016-11-28")).split()
    assert row == ["2016-11-28", f"${first['equity']:,.2f}", render.money(first["day_pnl"]),
                   render.pct(first["day_pnl_pct"]), render.pct(first["spy_change_pct"])]
    assert any(line.split() == ["date", "equity", "day", "P&L", "day", "return", "SPY"] for line in lines)
    for trade in data["closed"]:  # closed trades in New York time
        assert any(line.startswith(trade["symbol"]) and render.ny_time(datetime.fromisoformat(trade["exit_time"]))
                   in line for line in lines), trade
    default_chart = Path(journal["LOG_DIR"]) / "equity_vs_spy.png"
    assert lines[-1] == f"chart: {default_chart}" and default_chart.read_bytes()[:8] == PNG_SIGNATURE


# --- monthly -------------------------------------------------------------------------------------------------------

def test_monthly_report_with_its_weekly_breakdown(journal):
    db = journal["MOMENTUM_DB"]
    data = report("--asof", "2016-12-03T10:00", "report", "monthly")
    assert data["month"] == "2016-11" and (data["start"], data["end"]) == ("2016-11-01", "2016-11-30")
    first, last = snapshot(db, "2016-11-09"), snapshot(db, "2016-11-30")
    assert data["start_equity"] == pytest.approx(first["equity"] - first["day_pnl"])  # equity before the first day
    assert data["pnl"] == pytest.approx(last["equity"] - data["start_equity"], abs=0.005)
    spy = spy_closes()
    assert data["spy_return_pct"] == pytest.approx((spy["2016-11-30"] / spy["2016-11-08"] - 1) * 100)
    weeks = data["weeks"]
    assert [(w["start"], w["end"]) for w in weeks] == [
        ("2016-11-01", "2016-11-06"), ("2016-11-07", "2016-11-13"), ("2016-11-14", "2016-11-20"),
        ("2016-11-21", "2016-11-27"), ("2016-11-28", "2016-11-30")]
    assert sum(w["pnl"] or 0 for w in weeks) == pytest.approx(data["pnl"], abs=0.02)
    assert sum(w["closed_trades"] for w in weeks) == data["closed_trades"] == len(
        closed_between(db, "2016-11-01", "2016-11-30"))
    assert sum(w["trades_opened"] for w in weeks) == data["trades_opened"] == sum(
        1 for t in rows(db, "SELECT entry_time FROM trades WHERE status != 'canceled'")
        if ny_date(t["entry_time"]).startswith("2016-11"))
    growth = math.prod(1 + w["spy_return_pct"] / 100 for w in weeks if w["spy_return_pct"] is not None)
    assert (growth - 1) * 100 == pytest.approx(data["spy_return_pct"])
    text = cli("--asof", "2016-12-03T10:00", "report", "monthly").output
    assert text.splitlines()[0] == "month 2016-11 (15 snapshots)" and "2016-11-28..2016-11-30" in text


def test_a_week_or_month_that_has_not_begun_is_refused(journal):
    result = cli("--asof", "2016-12-03T10:00", "report", "weekly", "--week", "2016-12-05")
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: --week 2016-12-05: that period has not begun (today is 2016-12-03)"
    result = cli("--asof", "2016-12-03T10:00", "report", "monthly", "--month", "2017-01")
    assert result.stderr.strip() == "error: --month 2017-01: that period has not begun (today is 2016-12-03)"
    assert report("--asof", "2016-12-03T10:00", "report", "weekly", "--week", "2016-12-02")["snapshots"] == 5


def test_monthly_report_for_a_named_month_and_a_bad_one(journal):
    assert report("--asof", "2016-12-03T10:00", "report", "monthly", "--month", "2016-12")["snapshots"] == 2
    result = cli("--asof", "2016-12-03T10:00", "report", "monthly", "--month", "Dec")
    assert result.exit_code == 2 and result.stderr.strip() == "error: --month: expected YYYY-MM, got 'Dec'"


# --- metrics -------------------------------------------------------------------------------------------------------

def test_metrics_since_inception(journal):
    db = journal["MOMENTUM_DB"]
    data = report("--asof", "2016-12-03T10:00", "report", "metrics")
    snaps = rows(db, "SELECT date, equity, day_pnl, spy_close, spy_change_pct, cum_return_pct FROM daily_performance "
                     "ORDER BY date")
    # one baseline for every report, the chart and the snapshots: the equity before the first snapshot's day
    equity = np.array([snaps[0]["equity"] - snaps[0]["day_pnl"]] + [s["equity"] for s in snaps])
    assert data["days"] == len(snaps) == 17
    assert data["start_equity"] == pytest.approx(equity[0], abs=0.005)
    assert data["total_return_pct"] == pytest.approx(snaps[-1]["cum_return_pct"])
    spy_before = snaps[0]["spy_close"] / (1 + snaps[0]["spy_change_pct"] / 100)
    assert data["spy_return_pct"] == pytest.approx((snaps[-1]["spy_close"] / spy_before - 1) * 100)
    assert "(annualised from 17 sessions: too few to mean much)" in cli("--asof", "2016-12-03T10:00", "report",
                                                                    "metrics").output
    daily = np.diff(equity) / equity[:-1]
    assert data["sharpe"] == pytest.approx(daily.mean() / daily.std(ddof=1) * math.sqrt(252))
    downside = math.sqrt(sum(min(r, 0) ** 2 for r in daily) / len(daily))
    assert data["sortino"] == pytest.approx(daily.mean() / downside * math.sqrt(252))
    peak = np.maximum.accumulate(equity)
    assert data["max_drawdown_pct"] == pytest.approx(((equity - peak) / peak).min() * 100)
    pnls = [t["pnl"] for t in rows(db, "SELECT pnl FROM trades WHERE status = 'closed'")]
    wins, losses = [p for p in pnls if p > 0], [p for p in pnls if p <= 0]
    assert data["trades"] == len(pnls) >= 3 and data["wins"] == len(wins)
    assert data["win_rate_pct"] == pytest.approx(len(wins) / len(pnls) * 100)
    assert data["avg_win"] == pytest.approx(sum(wins) / len(wins))
    assert data["avg_loss"] == pytest.approx(sum(losses) / len(losses))
    assert data["profit_factor"] == pytest.approx(sum(wins) / -sum(losses))
    assert data["open_trades"] == len(rows(db, "SELECT id FROM trades WHERE status = 'open'"))
    text = cli("--asof", "2016-12-03T10:00", "report", "metrics").output
    assert f"win rate       {data['win_rate_pct']:.1f}%" in text


@pytest.mark.parametrize("pnls, expected", [
    ([], {"trades": 0, "win_rate_pct": None, "profit_factor": None, "avg_win": None}),
    ([10.0, 30.0], {"trades": 2, "wins": 2, "win_rate_pct": 100.0, "profit_factor": None, "avg_loss": None}),
    ([10.0, -5.0, 0.0, 30.0], {"wins": 2, "losses": 2, "profit_factor": 8.0, "avg_loss": -2.5, "avg_win": 20.0}),
])
def test_trade_statistics(pnls, expected):
    from flows.reports import trade_stats

    stats = trade_stats(pnls)
    assert {key: stats[key] for key in expected} == expected


def test_return_statistics_of_a_flat_and_a_falling_equity():
    from flows.reports import return_stats

    flat = return_stats([100.0, 100.0, 100.0])
    assert flat["sharpe"] is None and flat["sortino"] is None and flat["max_drawdown_pct"] == 0
    falling = return_stats([100.0, 110.0, 99.0, 104.5])
    returns = [0.10, -0.10, 104.5 / 99.0 - 1]
    mean = sum(returns) / 3
    std = math.sqrt(sum((r - mean) ** 2 for r in returns) / 2)
    assert falling["max_drawdown_pct"] == pytest.approx(-10.0)
    assert falling["sharpe"] == pytest.approx(mean / std * math.sqrt(252))
    assert falling["sortino"] == pytest.approx(mean / math.sqrt(0.01 / 3) * math.sqrt(252))


# --- poor signals --------------------------------------------------------------------------------------------------

def test_poor_signal_summary_counts_triggers_and_entry_signals(journal):
    db = journal["MOMENTUM_DB"]
    trades = rows(db, "SELECT * FROM trades WHERE status = 'closed' ORDER BY id LIMIT 3")
    triggers = [["below_sma5", "below_sma20", "gap_down"], ["below_sma20", "rsi_below_45"], ["below_sma20"]]
    with sqlite3.connect(db) as conn:  # rows in the shape the executor records on a reversal close
        for trade, names in zip(trades, triggers):
            conn.execute("INSERT INTO poor_signals (symbol, trade_id, exit_reason, pnl_pct, reversal_score, "
                         "reversal_signals, entry_signals) VALUES (?, ?, 'reversal', ?, ?, ?, ?)",
                         (trade["symbol"], trade["id"], trade["pnl_pct"], len(names) + 3, json.dumps(names),
                          trade["entry_signals"]))
    data = report("report", "poor-signals")
    assert data["count"] == 3 and data["unreviewed"] == 3
    assert data["reversal_triggers"][0] == {"name": "below_sma20", "count": 3}
    assert {t["name"]: t["count"] for t in data["reversal_triggers"]}["gap_down"] == 1
    entry_true = [name for trade in trades for name, value in json.loads(trade["entry_signals"]).items()
                  if value is True]
    assert {e["name"]: e["count"] for e in data["entry_signals"]} == \
           {name: entry_true.count(name) for name in set(entry_true)}
    assert data["avg_pnl_pct"] == pytest.approx(sum(t["pnl_pct"] for t in trades) / 3)
    text = cli("report", "poor-signals").output
    assert text.startswith("poor signals: 3 trades closed on a reversal") and "below_sma20" in text


def test_poor_signal_summary_when_there_are_none(journal):
    assert cli("report", "poor-signals").output.strip() == \
           "no poor signals recorded (no trade has been closed on a reversal)"


# --- exports -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("what", ["trades", "candidates", "exits"])
def test_export_round_trip(journal, tmp_path, what):
    db = journal["MOMENTUM_DB"]
    out = tmp_path / f"{what}.csv"
    result = cli("export", what, "--out", str(out))
    assert result.exit_code == 0, result.output
    table = rows(db, f"SELECT * FROM {what} ORDER BY id")
    assert result.output.strip() == f"exported {len(table)} {what} row(s) to {out}"
    with open(out, newline="", encoding="utf-8") as handle:
        read = list(csv.reader(handle))
    columns = [r["name"] for r in rows(db, f"PRAGMA table_info({what})")]
    assert read[0] == columns
    assert read[1:] == [["" if row[c] is None else str(row[c]) for c in columns] for row in table]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left behind
    if what != "exits":
        assert len(table) > 5


def test_export_to_a_missing_directory_is_a_one_line_error(journal, tmp_path):
    result = cli("export", "trades", "--out", str(tmp_path / "nowhere" / "trades.csv"))
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: --out {tmp_path / 'nowhere' / 'trades.csv'}: directory " \
                                    f"{tmp_path / 'nowhere'} does not exist"


def test_audit_append_writes_one_file_per_new_york_day_with_one_header(tmp_path):
    from journal.exports import AUDIT_COLUMNS, audit_append

    evening = datetime(2016, 11, 10, 2, 0, tzinfo=timezone.utc)  # 21:00 on 2016-11-09 in New York
    first = audit_append(tmp_path, {"event": "submitted", "client_order_id": "m-1", "symbol": "CAT", "side": "buy",
                                    "qty": 10, "limit_price": None}, evening)
    audit_append(tmp_path, {"event": "filled", "client_order_id": "m-1", "symbol": "CAT", "filled_qty": 10,
                            "filled_avg_price": 80.5, "venue": "sim"}, evening)
    assert first.name == "trades_2016-11-09.csv"
    with open(first, newline="") as handle:
        read = list(csv.DictReader(handle))
    assert list(read[0]) == list(AUDIT_COLUMNS) and len(read) == 2
    assert read[0]["time"] == "2016-11-10T02:00:00+00:00" and read[0]["limit_price"] == ""
    assert read[1]["filled_avg_price"] == "80.5" and json.loads(read[1]["extra"]) == {"venue": "sim"}
    assert first.read_text().count("client_order_id") == 1

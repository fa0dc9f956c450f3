"""The backtest over the real S&P 500 history: parity with the cron commands run one by one, the outputs, the
look-ahead check (and a leaking strategy it must catch), the rebalance systems, and bad input."""
from __future__ import annotations

import json
import sqlite3
from datetime import date
from pathlib import Path

import numpy as np
import pytest

from backtest import replay

from realdata import BARS, cli

pytestmark = pytest.mark.slow  # whole backtests over the real history

PARITY_START, PARITY_END = "2013-09-03", "2013-09-16"  # ten sessions


def rows(path: Path, sql: str, params=()) -> list[dict]:
    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(sql, params)]


def _cli_step(step: replay.Step) -> list[str]:
    asof = step.moment.strftime("%Y-%m-%dT%H:%M")
    if step.kind == "scan":
        return ["--asof", asof, "scan", "--type", step.scan_type, "--cap", step.cap]
    if step.kind == "monitor":
        return ["--asof", asof, "monitor"]
    return ["--asof", asof, "jobs", step.job]


ORDER_SQL = ("SELECT client_order_id, symbol, side, type, qty, status, filled_qty, filled_avg_price, purpose "
             "FROM orders ORDER BY client_order_id")
FILL_SQL = "SELECT o.client_order_id, f.symbol, f.side, f.qty, f.price, f.at FROM fills f JOIN orders o " \
           "ON o.id = f.order_id ORDER BY f.id"
TRADE_SQL = ("SELECT id, symbol, cap, qty, entry_time, entry_price, status, exit_time, exit_price, exit_reason, pnl "
             "FROM trades ORDER BY id")


@pytest.fixture(scope="module")
def parity_runs(tmp_path_factory, real_universe, shared_cache):  # noqa: F811
    """The same ten sessions twice: every cron command one by one through the CLI, and one backtest."""
    mp = pytest.MonkeyPatch()
    base = tmp_path_factory.mktemp("parity")
    env = {"UNIVERSE_FILE": str(real_universe), "DATA_SOURCE": f"csv:{BARS}", "CACHE_DIR": str(shared_cache),
           "BROKER": "sim", "LOG_DIR": str(base / "logs"), "MOMENTUM_DB": str(base / "cron" / "trades.db")}
    for name in ("MOMENTUM_ASOF", "MARKET_DATA", "SIM_BROKER_DB"):
        mp.delenv(name, raising=False)
    for name, value in env.items():
        mp.setenv(name, value)
    try:
        from common.clock import calendar

        cal = calendar()
        for day in cal.sessions(date.fromisoformat(PARITY_START), date.fromisoformat(PARITY_END)):
            for step in replay.session_steps(cal.session(day), "momentum", "all"):
                result = cli(*_cli_step(step))
                assert result.exit_code == 0, (step, result.output)
        result = cli("backtest", "--start", PARITY_START, "--end", PARITY_END, "--out", str(base / "bt"))
        assert result.exit_code == 0, result.output
    finally:
        mp.undo()
    return base / "cron", base / "bt", result.output


def test_backtest_finds_the_same_orders_fills_and_trades_as_the_cron_commands(parity_runs):
    cron, bt, _ = parity_runs
    cron_orders, bt_orders = rows(cron / "trades.db", ORDER_SQL), rows(bt / "trades.db", ORDER_SQL)
    assert len(cron_orders) >= 8 and any(o["purpose"] == "exit" for o in cron_orders)
    assert bt_orders == cron_orders
    assert rows(bt / "sim_broker.db", FILL_SQL) == rows(cron / "sim_broker.db", FILL_SQL)
    cron_trades = rows(cron / "trades.db", TRADE_SQL)
    assert len([t for t in cron_trades if t["status"] == "closed"]) >= 1  # SRE, closed by its monitor exit
    assert rows(bt / "trades.db", TRADE_SQL) == cron_trades
    candidates = "SELECT session, symbol, score, decision FROM candidates ORDER BY id"
    assert rows(bt / "trades.db", candidates) == rows(cron / "trades.db", candidates)
    snapshots = "SELECT date, equity, cash, exposure FROM daily_performance ORDER BY date"
    assert rows(bt / "trades.db", snapshots) == rows(cron / "trades.db", snapshots)
    assert len(rows(bt / "trades.db", snapshots)) == 10


def test_backtest_writes_every_metric_beside_spy_a_chart_and_a_queryable_journal(parity_runs):
    _, bt, output = parity_runs
    data = json.loads((bt / "metrics.json").read_text())
    assert data["sessions"] == 10 and data["failed_steps"] == 0
    for name in ("cagr_pct", "volatility_pct", "sharpe", "sortino", "max_drawdown_pct", "win_rate_pct",
                 "profit_factor", "exposure_pct", "turnover", "trades"):
        assert name in data["metrics"] and name in data["spy_buy_and_hold"]
    closed = rows(bt / "trades.db", "SELECT pnl FROM closed_trades")
    assert data["metrics"]["trades"] == len(closed)
    wins = sum(1 for t in closed if t["pnl"] > 0)
    assert data["metrics"]["win_rate_pct"] == pytest.approx(wins / len(closed) * 100)
    equity = [r["equity"] for r in rows(bt / "trades.db", "SELECT equity FROM daily_performance ORDER BY date")]
    assert data["metrics"]["end_value"] == equity[-1]
    curve = np.array([100_000.0, *equity])
    assert data["metrics"]["max_drawdown_pct"] == pytest.approx(
        float(np.min(curve / np.maximum.accumulate(curve) - 1) * 100))
    spy = rows(bt / "trades.db", "SELECT spy_close FROM daily_performance ORDER BY date")
    from ports.market_sources import CsvMarket

    before = CsvMarket(BARS).market_series(date(2013, 8, 30), date(2013, 8, 30))["spy_close"].iloc[0]
    assert data["spy_buy_and_hold"]["end_value"] == pytest.approx(100_000 * spy[-1]["spy_close"] / before)
    assert (bt / "equity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cagr = next(line for line in (bt / "metrics.txt").read_text().splitlines() if line.startswith("CAGR "))
    assert cagr.split()[1:3] == [f"{data['metrics']['cagr_pct']:+.2f}%",  # the system's and SPY's, signed
                                 f"{data['spy_buy_and_hold']['cagr_pct']:+.2f}%"]
    assert "SPY buy&hold" in output
    for view in ("open_positions", "closed_trades", "daily_pnl", "candidate_outcomes", "exit_summary"):
        rows(bt / "trades.db", f"SELECT * FROM {view} LIMIT 1")
    assert rows(bt / "trades.db", "SELECT COUNT(*) AS n FROM daily_pnl")[0]["n"] == 10


class PeekingMarket:
    """A deliberately leaking strategy input: every snapshot's price is the NEXT session's close when one exists."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def peeked_day(self, session):
        from common.clock import calendar

        return calendar().next_session(session)

    def snapshot(self, symbols, session, fraction):
        from dataclasses import replace

        snap = self.inner.snapshot(symbols, session, fraction)
        day = self.peeked_day(session)
        future = self.inner.bars(list(symbols), day, day).close
        if future.shape[0] == 0:
            return snap
        peeked = np.where(np.isfinite(future[-1]), future[-1], snap.price)
        return replace(snap, price=peeked)


class SameDayPeekingMarket(PeekingMarket):
    """A strategy that peeks at the session's own close: its snapshots show today's close as the price."""

    def peeked_day(self, session):
        return session


def _config(real_universe, shared_cache, tmp_path, **settings):  # noqa: F811
    from config import load_config

    return load_config({**settings, "UNIVERSE_FILE": str(real_universe), "DATA_SOURCE": f"csv:{BARS}", "BROKER": "sim",
                        "CACHE_DIR": str(shared_cache), "LOG_DIR": str(tmp_path / "logs"), "MOMENTUM_ASOF": ""})


def test_lookahead_check_passes_on_the_momentum_system(real_env, tmp_path):  # noqa: F811
    result = cli("backtest", "--check-lookahead", "--start", "2013-09-03", "--end", "2013-09-27", "--out",
                 str(tmp_path / "la"))
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 4  # two cuts after a session, two inside one (at 12:31)
    assert all("decisions identical" in line for line in lines)
    assert sum("(inside the session)" in line for line in lines) == 2
    assert int(lines[0].split(": ")[1].split()[0]) > 50  # the comparison covered real decisions


def test_lookahead_check_reports_a_strategy_that_peeks_at_the_next_close(real_universe, shared_cache, tmp_path):  # noqa: F811,E501
    config = _config(real_universe, shared_cache, tmp_path)
    checks = replay.check_lookahead(config, tmp_path / "leak", date(2013, 9, 3), date(2013, 9, 13), cuts=1,
                                      wrap_market=PeekingMarket)
    assert len(checks) == 2
    check = checks[0]
    assert check.difference is not None
    assert check.difference.startswith(f"at {check.cut.isoformat()}T13:35:00+00:00: full data candidate open/large")
    assert "LOOK-AHEAD, first differing decision at" in replay.lookahead_text(checks)


def test_the_cut_inside_a_session_reports_a_strategy_that_peeks_at_the_same_days_close(
        real_universe, shared_cache, tmp_path):  # noqa: F811
    config = _config(real_universe, shared_cache, tmp_path)
    checks = replay.check_lookahead(config, tmp_path / "peek", date(2013, 9, 3), date(2013, 9, 13), cuts=1,
                                    wrap_market=SameDayPeekingMarket)
    between, inside = checks
    assert between.moment is None and between.difference is None  # a cut between sessions cannot see this leak
    assert inside.moment is not None and inside.difference is not None
    assert inside.difference.startswith(f"at {inside.cut.isoformat()}T13:35:00+00:00: full data candidate open/large")
    text = replay.lookahead_text(checks).splitlines()
    assert text[0].endswith("decisions identical")
    assert text[1].startswith(f"cut at {inside.cut} 12:31 (inside the session): LOOK-AHEAD, first differing decision")


def test_rebalance_with_the_regime_filter_stays_out_in_the_2015_crash_and_without_it_buys(
        real_universe, shared_cache, tmp_path):  # noqa: F811
    config = _config(real_universe, shared_cache, tmp_path, REBALANCE_TOP_N="5")  # the five names it counts
    results = {}
    for system in ("rebalance", "rebalance-regime"):
        rt = replay.backtest_runtime(config, tmp_path / system)
        result = replay.run_backtest(rt, date(2015, 7, 20), date(2015, 9, 30), system=system)
        results[system] = (result, rows(tmp_path / system / "trades.db", "SELECT * FROM trades ORDER BY id"))
        rt.close()
    plain, regime = results["rebalance"][1], results["rebalance-regime"][1]
    august = [t for t in regime if t["entry_time"].startswith("2015-08-03")]
    assert len(august) == 5 and all(t["regime"] == "TREND_BULL" and t["strategy"] == "rebalance" for t in august)
    september = rows(tmp_path / "rebalance-regime" / "trades.db", "SELECT regime, factor FROM regimes "
                     "WHERE date = '2015-08-31'")
    assert september == [{"regime": "CRASH", "factor": 0.0}]
    # the day after a CRASH label (the label a session trades on is the previous session's) the rebalance goes to
    # cash, and it buys nothing while the allocation is zero; its daily run buys again once the label lifts
    from common.clock import calendar

    labels = {r["date"]: r["regime"] for r in rows(tmp_path / "rebalance-regime" / "trades.db",
                                                    "SELECT date, regime FROM regimes")}
    trading_label = lambda day: labels.get(str(calendar().previous_session(date.fromisoformat(day))))  # noqa: E731
    first_crash_day = min(day for day in (str(d) for d in calendar().sessions(date(2015, 7, 20), date(2015, 9, 30)))
                          if trading_label(day) == "CRASH")
    assert all(t["exit_time"] and t["exit_time"][:10] <= first_crash_day for t in august)
    assert not [t for t in regime if trading_label(t["entry_time"][:10]) == "CRASH"]
    assert len([t for t in plain if t["entry_time"].startswith("2015-09-01")]) == 5
    assert all(t["regime"] is None for t in plain)
    for result, _ in results.values():
        assert set(result.metrics["metrics"]) >= {"cagr_pct", "sharpe", "turnover"} and not result.failures


@pytest.mark.parametrize("args, message", [
    (["--start", "2014-03-10", "--end", "2014-03-03"], "error: --start 2014-03-10 is after --end 2014-03-03"),
    (["--start", "2017-12-01", "--end", "2018-06-29"], "error: --end 2018-06-29 is after the last date of the data"),
    (["--start", "2013-03-01", "--end", "2013-06-28"], "error: --start 2013-03-01 leaves too little history"),
    (["--start", "2014-03-03", "--end", "2014-03-10", "--data", "sim"], "error: --data: a backtest replays csv data"),
    (["--start", "2014-03", "--end", "2014-03-10"], "error: --start: expected a date YYYY-MM-DD"),
])
def test_bad_input_is_one_line_and_exit_2(real_env, tmp_path, args, message):  # noqa: F811
    result = cli("backtest", *args, "--out", str(tmp_path / "bt"))
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), result.output


def test_missing_out_parent_is_exit_2(real_env, tmp_path):  # noqa: F811
    result = cli("backtest", "--start", "2014-03-03", "--end", "2014-03-10", "--out", str(tmp_path / "no" / "bt"))
    assert result.exit_code == 2
    assert result.output.strip() == f"error: --out {tmp_path / 'no' / 'bt'}: directory {tmp_path / 'no'} does not exist"

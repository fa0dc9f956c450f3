"""The figures of a finished backtest (backtest/metrics.py) from a crafted journal and sim broker file: the span
starts at the first tradable session (the account's and each system's), costs are reconstructed per fill, the
systems' P&L adds up to the account's, P&L by calendar year; then one short real backtest of both systems."""
from __future__ import annotations

import json
import re
import sqlite3
from contextlib import closing
from datetime import UTC, date, datetime
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from backtest import metrics
from backtest.replay import BacktestResult
from common.clock import NY, Clock, calendar
from db import open_journal
from ports.market_sources import CsvMarket
from ports.sim_broker import SCHEMA

DAYS = ["2015-12-28", "2015-12-29", "2015-12-30", "2015-12-31", "2016-01-04", "2016-01-05", "2016-01-06"]
CLOSES = {"AAA": [50.00, 50.50, 51.00, 52.00, 52.50, 53.00, 54.00],
          "BBB": [20.00, 20.00, 20.10, 20.20, 20.10, 20.60, 20.40]}
SPY = [200.0, 202.0, 201.0, 203.0, 199.0, 200.0, 198.0]
LARGE, SMALL = 0.00045, 0.0012  # half the spread + 2 bp: large caps 0.025% + 0.02%, small caps 0.10% + 0.02%

# (client order id, trade, symbol, side, type, qty, fill price, limit, submitted, filled (New York), cost rate)
FILLS = [
    ("ma-e-AAA-20151229-open", 1, "AAA", "buy", "market", 100, 50.02, None, "2015-12-29 09:35", "2015-12-29 09:35",
     LARGE),
    ("ma-s-1-1", 1, "AAA", "sell", "trailing_stop", 100, 51.98, None, "2015-12-29 09:35", "2015-12-31 16:00", LARGE),
    ("ma-e-BBB-20160104-rebal", 2, "BBB", "buy", "market", 200, 20.02, None, "2016-01-04 10:00", "2016-01-04 10:00",
     SMALL),
    ("ma-x-2-1", 2, "BBB", "sell", "limit", 100, 20.50, 20.50, "2016-01-04 15:00", "2016-01-05 11:00", SMALL),
    ("ma-x-2-2", 2, "BBB", "sell", "limit", 100, 20.38, 20.30, "2016-01-06 10:00", "2016-01-06 10:00", SMALL),
    ("ma-e-AAA-20160105-midday", 3, "AAA", "buy", "market", 50, 52.52, None, "2016-01-05 12:30", "2016-01-05 12:30",
     LARGE),
]
TRADES = [  # id, symbol, strategy, status, entry order, exit time (New York), exit reason, pnl
    (1, "AAA", "momentum", "closed", "ma-e-AAA-20151229-open", "2015-12-31 16:00", "trailing_stop", 196.0),
    (2, "BBB", "rebalance", "closed", "ma-e-BBB-20160104-rebal", "2016-01-06 10:00", "rebalance", 84.0),
    (3, "AAA", "momentum", "open", "ma-e-AAA-20160105-midday", None, None, None),
]
# the account at each close: cash + shares x close, worked out by hand from the fills above
EQUITY = {"2015-12-29": 100_048.0, "2015-12-30": 100_098.0, "2015-12-31": 100_196.0, "2016-01-04": 100_212.0,
          "2016-01-05": 100_326.0, "2016-01-06": 100_354.0}
EXPOSURE = {"2015-12-29": 5_050.0, "2015-12-30": 5_100.0, "2015-12-31": 0.0, "2016-01-04": 4_020.0,
            "2016-01-05": 4_710.0, "2016-01-06": 2_700.0}


def utc(ny: str) -> str:
    return datetime.fromisoformat(ny).replace(tzinfo=NY).astimezone(UTC).isoformat()


def write_market(folder: Path) -> CsvMarket:
    lines = ["date,symbol,open,high,low,close,volume"]
    for symbol, closes in CLOSES.items():
        lines += [f"{day},{symbol},{c},{c},{c},{c},1000000" for day, c in zip(DAYS, closes)]
    (folder / "stocks.csv").write_text("\n".join(lines) + "\n")
    spy = ["date,spy_open,spy_high,spy_low,spy_close,spy_volume,vix_open,vix_high,vix_low,vix_close"]
    spy += [f"{day},{c},{c},{c},{c},1000,15,15,15,15" for day, c in zip(DAYS, SPY)]
    (folder / "spy_vix_daily_crafted.csv").write_text("\n".join(spy) + "\n")
    return CsvMarket(folder / "stocks.csv", cache_dir=folder / "cache")


def write_broker(path: Path) -> None:
    """The sim broker's file as the broker writes it (its own schema), holding the fills above."""
    with closing(sqlite3.connect(path)) as conn, conn:
        for statement in SCHEMA:
            conn.execute(statement)
        for seq, (client_id, _, symbol, side, kind, qty, price, limit, submitted, filled, rate) in enumerate(FILLS, 1):
            conn.execute("INSERT INTO orders (seq, id, client_order_id, symbol, side, type, qty, time_in_force, "
                         "limit_price, cost_rate, status, filled_qty, filled_avg_price, submitted_at, updated_at, "
                         "filled_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'day', ?, ?, 'filled', ?, ?, ?, ?, ?)",
                         (seq, f"sim-{seq:06d}", client_id, symbol, side, kind, qty, limit, rate, qty, price,
                          utc(submitted), utc(filled), utc(filled)))
            conn.execute("INSERT INTO fills (order_id, symbol, side, qty, price, at) VALUES (?, ?, ?, ?, ?, ?)",
                         (f"sim-{seq:06d}", symbol, side, qty, price, utc(filled)))


def write_journal(path: Path):
    journal = open_journal(path, Clock(datetime(2016, 1, 7, 9, 0, tzinfo=NY)))
    for trade_id, symbol, strategy, status, entry, exit_time, reason, pnl in TRADES:
        journal.db["trades"].insert({"id": trade_id, "symbol": symbol, "strategy": strategy, "status": status,
                                     "qty": 100, "entry_order_id": entry, "exit_reason": reason, "pnl": pnl,
                                     "exit_time": utc(exit_time) if exit_time else None})
    for client_id, trade_id, symbol, side, kind, qty, price, _, submitted, _, _ in FILLS:
        journal.db["orders"].insert({"client_order_id": client_id, "trade_id": trade_id, "symbol": symbol,
                                     "side": side, "type": kind, "qty": qty, "status": "filled", "filled_qty": qty,
                                     "purpose": "entry" if side == "buy" else "exit", "filled_avg_price": price,
                                     "created_at": utc(submitted)})
    journal.db["daily_performance"].insert_all(
        [{"date": day, "equity": equity, "exposure": EXPOSURE[day], "created_at": utc(f"{day} 16:05")}
         for day, equity in EQUITY.items()])
    return journal


@pytest.fixture
def rt(tmp_path):
    write_broker(tmp_path / "sim_broker.db")
    runtime = SimpleNamespace(journal=write_journal(tmp_path / "trades.db"), market=write_market(tmp_path),
                              calendar=calendar(), universe=SimpleNamespace(symbols=lambda cap: ["AAA", "BBB"]),
                              config=SimpleNamespace(sim_broker_path=lambda: tmp_path / "sim_broker.db",
                                                     universe_file=str(tmp_path / "universe.json")))
    yield runtime
    runtime.journal.db.conn.close()


def result(tmp_path, system: str = "all") -> BacktestResult:
    return BacktestResult(tmp_path, system, date(2015, 12, 29), date(2016, 1, 6), sessions=6, steps=60)


def test_costs_paid_are_reconstructed_per_fill_from_the_cost_rate(rt, tmp_path):
    data = metrics.compute(rt, result(tmp_path))
    momentum = [100 * (50.02 - 50.02 / 1.00045), 100 * (51.98 / 0.99955 - 51.98), 50 * (52.52 - 52.52 / 1.00045)]
    rebalance = [200 * (20.02 - 20.02 / 1.0012), 0.0,  # a limit that rested and filled at its limit: no costs
                 100 * (20.38 / 0.9988 - 20.38)]  # a limit marketable on arrival traded beyond it, as a market order
    costs = data["costs_paid"]
    assert costs["total"] == round(sum(momentum) + sum(rebalance), 2) == 13.02
    assert (costs["fills"], costs["fills_with_costs"], costs["fills_without_costs"]) == (6, 5, 1)
    slippage = sum(momentum) * 0.0002 / LARGE + sum(rebalance) * 0.0002 / SMALL
    assert costs["slippage"] == round(slippage, 2) and costs["spread"] == round(costs["total"] - slippage, 2)
    assert data["systems"]["momentum"]["costs_paid"]["total"] == round(sum(momentum), 2)
    assert data["systems"]["rebalance"]["costs_paid"]["total"] == round(sum(rebalance), 2)
    # the fills were rounded to cents: the reconstruction is within half a cent a share of the true costs, which
    # the crafted opens give exactly (AAA opened at 50.00 and 52.50, its stop was 52.00, BBB opened at 20.00, 20.40)
    true = [100 * 0.02, 100 * 0.02, 50 * 0.02, 200 * 0.02, 100 * 0.02]
    assert sum(momentum) + sum(rebalance) == pytest.approx(sum(true), abs=0.005 * 550)


def test_the_systems_pnl_adds_up_to_the_account(rt, tmp_path):
    data = metrics.compute(rt, result(tmp_path))
    assert data["systems_check"]["max_difference"] == 0.0
    momentum, rebalance = data["systems"]["momentum"], data["systems"]["rebalance"]
    assert momentum["metrics"]["end_value"] == pytest.approx(100_270.0)  # 196 realised + 50 x (54 - 52.52)
    assert rebalance["metrics"]["end_value"] == pytest.approx(100_084.0)
    assert (momentum["metrics"]["trades"], rebalance["metrics"]["trades"]) == (1, 1)
    assert momentum["metrics"]["realised_pnl"] + rebalance["metrics"]["realised_pnl"] == \
        data["metrics"]["realised_pnl"] == 280.0
    assert momentum["metrics"]["open_trades_at_end"] == 1 and rebalance["metrics"]["open_trades_at_end"] == 0
    assert momentum["pnl_by_entry_slot"] == {"open": {"trades": 1, "pnl": 196.0, "win_rate_pct": 100.0}}
    assert data["pnl_by_entry_slot"] == {"open": {"trades": 1, "pnl": 196.0, "win_rate_pct": 100.0},
                                         "rebalance": {"trades": 1, "pnl": 84.0, "win_rate_pct": 100.0}}
    assert data["pnl_by_exit_reason"]["trailing_stop"]["pnl"] == 196.0


def test_pnl_by_calendar_year(rt, tmp_path):
    data = metrics.compute(rt, result(tmp_path))
    assert data["pnl_by_year"] == {
        "2015": {"pnl": 196.0, "return_pct": pytest.approx(0.196), "realised_pnl": 196.0, "closed_trades": 1},
        "2016": {"pnl": 158.0, "return_pct": pytest.approx((100_354 / 100_196 - 1) * 100), "realised_pnl": 84.0,
                 "closed_trades": 1}}
    assert data["systems"]["momentum"]["pnl_by_year"]["2016"]["pnl"] == 74.0  # 50 x (54 - 52.52), marked
    assert data["systems"]["rebalance"]["pnl_by_year"] == {
        "2016": {"pnl": 84.0, "return_pct": pytest.approx(0.084), "realised_pnl": 84.0, "closed_trades": 1}}
    spy = data["benchmarks"]["spy_total_return"]["return_by_year"]
    assert spy == {"2015": pytest.approx((203 / 200 - 1) * 100), "2016": pytest.approx((198 / 203 - 1) * 100)}


def test_each_span_and_its_benchmarks_start_at_the_first_tradable_session(rt, tmp_path):
    data = metrics.compute(rt, result(tmp_path))
    assert (data["first_tradable_session"], data["measured_from"]) == ("2015-12-29", "the close of 2015-12-28")
    assert data["spy_buy_and_hold"]["start_value"] == 100_000.0
    assert data["spy_buy_and_hold"]["end_value"] == pytest.approx(100_000 * 198 / 200)
    assert data["metrics"]["end_value"] == 100_354.0 and data["measured_sessions"] == 6
    rebalance = data["systems"]["rebalance"]
    assert (rebalance["first_tradable_session"], rebalance["first_tradable_source"]) == (
        "2016-01-04", "first session with an order")
    assert rebalance["benchmarks"]["spy_total_return"]["total_return_pct"] == pytest.approx((198 / 203 - 1) * 100)
    assert rebalance["benchmarks"]["equal_weighted_universe"]["end_value"] == pytest.approx(
        50_000 * 54 / 52 + 50_000 * 20.40 / 20.20)


@pytest.mark.parametrize("given, source, expected_start", [
    ({"momentum": date(2015, 12, 30), "rebalance": date(2016, 1, 5)}, "given", "2015-12-30"),
    (date(2015, 12, 31), "given", "2015-12-31"),
    (None, "replay", "2015-12-30")])
def test_the_first_tradable_session_can_be_given(rt, tmp_path, given, source, expected_start):
    run = result(tmp_path)
    if given is None:
        run.first_tradable_session = date(2015, 12, 30)
    data = metrics.compute(rt, run, given)
    assert (data["first_tradable_session"], data["first_tradable_source"]) == (expected_start, source)
    baseline = calendar().previous_session(date.fromisoformat(expected_start)).isoformat()
    assert data["metrics"]["start_value"] == EQUITY[baseline]  # the account as it stood at that close
    spy_before = SPY[DAYS.index(baseline)]
    assert data["spy_buy_and_hold"]["end_value"] == pytest.approx(EQUITY[baseline] * 198 / spy_before)


def test_a_rebalance_run_starts_at_its_first_order_and_momentum_at_the_window_start(rt, tmp_path):
    assert metrics.first_tradable_session(rt, result(tmp_path, "rebalance")) == (
        date(2015, 12, 29), "first session with an order")
    assert metrics.first_tradable_session(rt, result(tmp_path, "momentum"))[0] == date(2015, 12, 29)
    assert metrics.first_tradable_session(rt, result(tmp_path), system="rebalance")[0] == date(2016, 1, 4)


def test_the_text_keeps_its_first_line_and_labels_every_benchmark(rt, tmp_path):
    data = metrics.compute(rt, result(tmp_path))
    assert {"replay_mode", "fills", "costs", "metrics", "spy_buy_and_hold", "pnl_by_entry_slot",
            "pnl_by_exit_reason"} <= set(data)
    json.dumps(data)  # JSON-ready
    lines = metrics.text(data).splitlines()
    assert lines[0] == f"replay mode: {metrics.DAILY_MODE}"
    body = "\n".join(lines)
    assert "SPY buy&hold: SPY total return: the market file's spy_close: split- and dividend-adjusted" in body
    assert "SPY price return: not in the data (the SPY series is dividend-adjusted)" in body
    assert "EW universe: equal-weighted universe (price only)" in body
    assert "dividends received: $0.00 (the stock data carries no dividends)" in body
    assert data["dividends_received"] == {"amount": 0.0, "note": "the stock data carries no dividends"}
    sessions = data["measured_sessions"]  # the crafted journal spans a few sessions: its annualised figures say so
    assert sessions < 60 and (f"CAUTION: CAGR, volatility, Sharpe, Sortino and turnover are annualised from "
                               f"{sessions} sessions: too few to mean much") in lines
    assert "closed trades" in body
    data["measured_sessions"] = 60
    assert "CAUTION" not in metrics.text(data)


def test_the_text_signs_changes_not_levels_puts_money_in_dollars_and_no_header_carries_a_percent_sign(rt, tmp_path):
    data = metrics.compute(rt, result(tmp_path))
    lines = metrics.text(data).splitlines()
    rows = {line.strip().split("  ")[0]: line.split() for line in lines}
    # the account, SPY buy&hold and the equal-weighted universe, each figure as the convention prints it
    assert rows["CAGR"] == ["CAGR", "+16.00%", "-34.43%", "+676.16%"]  # a change: signed, with its % sign
    assert rows["total return"][2:] == ["+0.35%", "-1.00%", "+5.00%"]
    assert rows["max drawdown"][2:] == ["0.00%", "-2.46%", "0.00%"]
    assert rows["volatility"][1:] == ["0.6%", "19.1%", "8.7%"]  # a level: unsigned, with its % sign
    assert rows["win rate"][2:] == ["100.0%", "-", "-"] and rows["exposure"][1:] == ["3.6%", "100.0%", "-"]
    assert rows["Sharpe"][1:] == ["24.10", "-2.13", "23.64"] and rows["turnover / year"][3:] == ["8.77", "0.00", "-"]
    assert rows["end equity"][2:] == ["$100,354.00", "$99,000.00", "$105,000.00"]
    assert rows["momentum"] == ["momentum", "2015-12-29", "+0.27%", "+11.99%", "0.00%", "-1.00%", "+5.00%", "1",
                                "100.0%", "$196.00", "$5.77"]
    assert rows["2016"] == ["2016", "+0.16%", "-2.46%", "+2.44%", "$84.00"]
    assert ("costs paid: $13.02 (spread $9.25, slippage $3.77) on 5 of 6 fills, 0.06% of the value traded"
            in lines)
    assert next(line for line in lines if line.startswith("by system")).endswith("to the account's within $0.00):")
    headers = [line.split() for line in lines if line.split()[:1] in (["metric"], ["system"], ["year"], ["entry"],
                                                                       ["exit"])]
    assert [h[0] for h in headers] == ["metric", "system", "year", "entry", "exit"]
    assert headers[1] == ["system", "from", "total", "CAGR", "max", "dd", "SPY", "TR", "EW", "trades", "win", "rate",
                          "realised", "costs"]
    assert not any(word.endswith("%") for header in headers for word in header)
    assert not re.search(r"\D%", "\n".join(lines))  # every % sign follows a number
    table = lines[lines.index(next(line for line in lines if line.startswith("metric "))):][:13]  # header + 12
    assert len({len(line) for line in table}) == 1  # right-aligned: every row of the comparison ends in one column


def test_a_loss_prints_its_sign_before_the_dollar_and_a_missing_figure_a_dash(rt, tmp_path):
    data = metrics.compute(rt, result(tmp_path))
    data["metrics"].update(cagr_pct=-1.8149, win_rate_pct=None, end_value=99_557.72)
    data["pnl_by_exit_reason"] = {"trailing_stop": {"trades": 10, "pnl": -1_856.35, "win_rate_pct": 20.0}}
    lines = metrics.text(data).splitlines()
    rows = {line.strip().split("  ")[0]: line.split() for line in lines}
    assert rows["CAGR"][1] == "-1.81%" and rows["win rate"][2] == "-" and rows["end equity"][2] == "$99,557.72"
    assert lines[-2:] == ["  exit reason     trades     realised   win rate",
                          "  trailing_stop       10   -$1,856.35      20.0%"]


def test_dividends_go_to_the_systems_holding_the_symbol_at_the_open_of_the_ex_date():
    days = [date(2016, 1, 4), date(2016, 1, 5), date(2016, 1, 6)]
    fills = [{"system": "momentum", "symbol": "AAA", "side": "buy", "qty": 30, "price": 10.0, "day": days[0]},
             {"system": "rebalance", "symbol": "AAA", "side": "buy", "qty": 10, "price": 10.0, "day": days[0]},
             {"system": "rebalance", "symbol": "AAA", "side": "sell", "qty": 10, "price": 11.0, "day": days[1]}]
    index = np.array(days, dtype="datetime64[D]")
    closes = np.array([[10.0], [11.0], [11.0]])
    # paid at the open of 01-05 to the 40 shares held at the close before, before the rebalance sold its 10
    curves = metrics.pnl_curves(fills, index, ["AAA"], closes, days,
                                [{"day": days[1], "symbol": "AAA", "amount": 20.0}])
    assert curves["momentum"]["dividends"] == 15.0 and curves["rebalance"]["dividends"] == 5.0
    assert list(curves["momentum"]["pnl"]) == [0.0, 30 + 15.0, 30 + 15.0]
    assert list(curves["rebalance"]["pnl"]) == [0.0, 10 + 5.0, 10 + 5.0]


def test_a_system_without_closes_to_mark_keeps_its_trade_statistics():
    days = [date(2016, 1, 4), date(2016, 1, 5)]
    fills = [{"system": "strat_options", "symbol": "AAA160115C00050000", "side": "buy", "qty": 1, "price": 1.5,
              "day": days[0]}]
    curves = metrics.pnl_curves(fills, np.array(days, dtype="datetime64[D]"), ["AAA"], np.array([[1.0], [1.0]]),
                                days)
    assert curves["strat_options"]["missing"] == ["AAA160115C00050000"]


# --- one real backtest ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_real_backtest_of_both_systems_adds_up_and_pays_the_costs_its_fills_show(tmp_path, real_env):
    from realdata import cli

    out = tmp_path / "bt"
    run = cli("backtest", "--system", "all", "--start", "2016-03-01", "--end", "2016-03-14", "--out", str(out))
    assert run.exit_code == 0, run.output
    data = json.loads((out / "metrics.json").read_text())
    assert data["first_tradable_session"] == "2016-03-01" and data["measured_from"] == "the close of 2016-02-29"
    assert data["systems_check"]["max_difference"] <= 0.01
    with closing(sqlite3.connect(out / "sim_broker.db")) as conn:
        paid = conn.execute(
            "SELECT SUM(ABS(f.price - f.price / (1 + CASE f.side WHEN 'buy' THEN o.cost_rate ELSE -o.cost_rate "
            "END)) * f.qty) FROM fills f JOIN orders o ON o.id = f.order_id WHERE o.type != 'limit' OR "
            "(f.at = o.submitted_at AND f.price != o.limit_price)").fetchone()[0] or 0.0
    assert data["costs_paid"]["total"] == round(paid, 2)
    assert sum(s["metrics"]["trades"] for s in data["systems"].values()) == data["metrics"]["trades"]
    ew = data["benchmarks"]["equal_weighted_universe"]
    assert ew["label"] == "equal-weighted universe (price only)" and ew["symbols"] > 400
    assert (out / "metrics.txt").read_text().splitlines()[0] == "replay mode: daily: decisions on completed bars"

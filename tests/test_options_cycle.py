"""The whole options cycle: a STRAT signal, the contract choice, the DAY limit order, the exit on days to expiry.

Offline on the sim broker over a crafted csv market (--asof steps), and the same order flow through alpaca-py
against the local fake Alpaca server with routes for option contracts and option snapshots built from the fixtures.
"""
from __future__ import annotations

import copy
import csv
import json
from datetime import date
from pathlib import Path

import pytest

import executor
import monitor
from common.clock import Clock, calendar, parse_asof
from config import load_config
from core import exit_rules, option_math
from flows import option_entries, option_exits
from flows.runtime import Runtime
from journal import reconcile
from ports.market_sources import CsvMarket
from ports.sim_broker import SimBroker

from crafted import run_ok as run
from crafted import use_csv_journal
from fake_alpaca import fixture
from realdata import rows

SIGNAL_DAY = date(2016, 6, 8)
# After a quiet, volatile base (closes alternating 39.7 / 40.3: about 24% a year): a bar with a 41.60 high, then
# a: 40.3/39.7, b: 2U (40.7 > 40.3, 39.8 >= 39.7), c: inside (40.7 <= 40.7, 40.2 >= 39.8), d: 2U (40.95 > 40.7,
# 40.3 >= 40.2) -> 2-1-2 bullish continuation on 2016-06-08: entry 40.70, stop 40.20, target 41.60 (the first
# earlier high above the entry, from bar a backwards), magnitude 2.21%, R:R 1.8.
PATTERN = {date(2016, 6, 2): (40.0, 41.6, 39.5, 40.0), date(2016, 6, 3): (40.0, 40.3, 39.7, 40.0),
           date(2016, 6, 6): (40.0, 40.7, 39.8, 40.6), date(2016, 6, 7): (40.5, 40.7, 40.2, 40.4),
           date(2016, 6, 8): (40.45, 40.95, 40.3, 40.9)}


def _bars() -> list[tuple[date, tuple[float, float, float, float]]]:
    cal = calendar()
    out, close = [], 40.0
    for i, day in enumerate(cal.sessions(date(2016, 1, 4), date(2016, 7, 29))):
        if day in PATTERN:
            bar = PATTERN[day]
        elif day < SIGNAL_DAY:
            new = 39.7 if i % 2 else 40.3
            bar = (close, max(close, new) + 0.1, min(close, new) - 0.1, new)
        else:  # after the signal: between the stop and the target, closes alternating 40.7 / 41.1
            new = 40.7 if i % 2 else 41.1
            bar = (close, max(close, new) + 0.1, min(close, new) - 0.1, new)
        close = bar[3]
        out.append((day, bar))
    return out


@pytest.fixture
def env(tmp_path, monkeypatch):
    stocks = tmp_path / "stocks.csv"
    with open(stocks, "w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["date", "symbol", "open", "high", "low", "close", "volume"])
        for day, bar in _bars():
            out.writerow([day, "STR", *bar, 1_000_000])
    with open(tmp_path / "spy_vix_daily_crafted.csv", "w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["date", "spy_open", "spy_high", "spy_low", "spy_close", "spy_volume", "vix_open", "vix_high",
                      "vix_low", "vix_close"])
        for day, _ in _bars():
            out.writerow([day, 200, 201, 199, 200, 1e8, 15, 16, 14, 15])
    return use_csv_journal(monkeypatch, tmp_path, stocks)



def broker_at(env, asof: str) -> SimBroker:
    market = CsvMarket(Path(env["DATA_SOURCE"][4:]), cache_dir=Path(env["CACHE_DIR"]))
    return SimBroker(Path(env["MOMENTUM_DB"]).parent / "sim_broker.db", market, Clock(parse_asof(asof)))


def monitor_options(asof: str) -> monitor.MonitorReport:
    """What a monitor run does for option positions: reconcile, portfolio flags, the option checks, settle."""
    rt = Runtime(load_config({"MOMENTUM_ASOF": asof}))
    try:
        report = monitor.MonitorReport()
        reconcile.reconcile(rt)
        flags = monitor.portfolio_flags(rt, report)
        option_exits.evaluate_option_positions(rt, flags, report, dry_run=False)
        executor.settle_fills(rt)
        return report
    finally:
        rt.close()


def test_offline_cycle_signal_contract_order_and_exit_on_days_to_expiry(env):
    # After the close of the signal day: stored and alerted; options_trading is off, so nothing is bought.
    out = run("--asof", "2016-06-08T17:00", "strat", "scan", "--symbols", "STR")
    assert "2-1-2 bullish continuation" in out and "options_trading is off" in out
    signal = rows(env, "SELECT * FROM strat_signals")[0]
    assert (signal["entry_trigger"], signal["stop"], signal["target"], signal["reward_risk"]) == (40.7, 40.2, 41.6,
                                                                                                   1.8)
    run("set", "options_trading", "on")
    # Still after the close: the signal waits for the market.
    out = run("--asof", "2016-06-08T17:05", "strat", "scan", "--symbols", "STR")
    assert "waiting - STR; market_hours" in out
    assert rows(env, "SELECT COUNT(*) AS n FROM orders")[0]["n"] == 0

    # Next morning the bar of 06-08 is still the last completed one: the waiting signal is bought as a call.
    out = run("--asof", "2016-06-09T10:00", "strat", "scan", "--symbols", "STR")
    assert "filled" in out, out
    trade = rows(env, "SELECT * FROM trades")[0]
    order = rows(env, "SELECT * FROM orders")[0]
    contract = option_math.parse_occ(trade["symbol"])
    assert contract.root == "STR" and contract.kind == "call"
    assert 7 <= (contract.expiry - date(2016, 6, 9)).days <= 21 and contract.expiry.weekday() == 4
    delta = json.loads(trade["entry_signals"])["contract"]["delta"]
    assert 0.40 <= delta <= 0.55
    assert (trade["asset_class"], trade["strategy"], trade["status"]) == ("us_option", "strat_options", "open")
    assert (order["client_order_id"], order["purpose"], order["type"], order["time_in_force"], order["side"]) == (
        f"ma-o-{signal['id']}", "option", "limit", "day", "buy")
    assert trade["qty"] == int(300 // (order["limit_price"] * 100)) >= 1
    assert trade["entry_price"] < order["limit_price"]
    # the line names the fill the journal holds, and the limit as the limit
    assert (f"filled {trade['symbol']} x{trade['qty']} at {option_entries.premium_text(trade['entry_price'])} "
            f"(limit {order['limit_price']:.2f}), cost ${trade['entry_price'] * trade['qty'] * 100:,.2f}; delta +"
            ) in out, out
    assert rows(env, "SELECT status FROM strat_signals")[0]["status"] == "ordered"
    broker = broker_at(env, "2016-06-09T10:00")
    cost = round(trade["entry_price"] * trade["qty"] * 100, 2)
    assert broker.account().cash == pytest.approx(100_000 - cost, abs=0.01)
    position = broker.positions()[0]
    assert position.asset_class == "us_option" and position.qty == trade["qty"]
    broker.close()

    # Running the scan again never buys twice.
    run("--asof", "2016-06-09T10:30", "strat", "scan", "--symbols", "STR")
    assert rows(env, "SELECT COUNT(*) AS n FROM orders")[0]["n"] == 1

    out = run("--asof", "2016-06-09T11:00", "options", "positions")
    assert trade["symbol"] in out and "STR" in out

    # The session after entry: more than 3 days to expiry, no exit.
    report = monitor_options("2016-06-10T11:00")
    assert report.checked == [trade["symbol"]] and report.exits_started == []
    # The first session with 3 days or fewer to expiry: a HIGH time_based_urgent exit, filled in the run.
    cal = calendar()
    exit_day = next(d for d in cal.sessions(date(2016, 6, 10), contract.expiry) if (contract.expiry - d).days <= 3)
    report = monitor_options(f"{exit_day}T11:00")
    assert report.exits_started == [(trade["symbol"], "time_based_urgent", "HIGH")]
    closed = rows(env, "SELECT * FROM trades")[0]
    exit_row = rows(env, "SELECT * FROM exits")[0]
    assert (closed["status"], closed["exit_reason"], closed["exit_priority"]) == ("closed", "time_based_urgent",
                                                                                 "HIGH")
    assert (exit_row["state"], exit_row["qty"]) == ("filled", trade["qty"])
    expected_pnl = round((closed["exit_price"] - trade["entry_price"]) * trade["qty"] * 100, 2)
    assert closed["pnl"] == pytest.approx(expected_pnl, abs=0.01) and exit_row["pnl"] == pytest.approx(expected_pnl,
                                                                                                        abs=0.01)
    assert closed["pnl_pct"] == pytest.approx((closed["exit_price"] / trade["entry_price"] - 1) * 100, abs=1e-3)
    broker = broker_at(env, f"{exit_day}T11:00")
    assert broker.positions() == []
    # The cash moved by exactly the trade's P&L: every premium counted x100 both ways.
    assert broker.account().cash == pytest.approx(100_000 + closed["pnl"], abs=0.02)
    broker.close()

    # Reports and exports carry the option trade with its x100 P&L.
    metrics = json.loads(run("--asof", f"{exit_day}T17:00", "report", "metrics", "--json"))
    assert metrics["realised_pnl"] == pytest.approx(closed["pnl"], abs=0.01)


def test_max_loss_and_underlying_stop_rules_reach_the_exit_engine():
    base = dict(trade_id=1, symbol="STR160617C00041000", qty=3, original_qty=3, entry_price=0.80,
                asset_class=exit_rules.OPTION, underlying_stop=40.2, underlying_target=41.6)
    state = exit_rules.PositionState(price=0.39, days_to_expiry=8, underlying_price=40.6, **base)
    assert exit_rules.choose(exit_rules.evaluate(state, exit_rules.PortfolioFlags(0.0))).reason == "max_loss"
    state = exit_rules.PositionState(price=0.60, days_to_expiry=8, underlying_price=40.1, **base)
    assert exit_rules.choose(exit_rules.evaluate(state, exit_rules.PortfolioFlags(0.0))).reason == "stop_loss"


def test_at_most_the_configured_number_of_option_positions(env, monkeypatch):
    monkeypatch.setenv("OPTIONS_MAX_POSITIONS", "0")
    run("set", "options_trading", "on")
    run("--asof", "2016-06-08T17:00", "strat", "scan", "--symbols", "STR")
    out = run("--asof", "2016-06-09T10:00", "strat", "scan", "--symbols", "STR")
    assert "max_positions" in out
    assert rows(env, "SELECT COUNT(*) AS n FROM orders")[0]["n"] == 0
    assert rows(env, "SELECT gate FROM risk_events") == [{"gate": "options_max_positions"}]
    assert rows(env, "SELECT status FROM strat_signals")[0]["status"] == "new"


# --- the same order flow against the fake Alpaca server ------------------------------------------------------------

EXPIRY = date(2024, 6, 28)
STRIKES = {185.0: (0.62, 6.80, 6.95), 190.0: (0.51, 2.85, 2.95), 195.0: (0.38, 1.10, 1.20)}  # delta, bid, ask


def _contract(strike: float) -> dict:
    body = copy.deepcopy(fixture("option_contracts.json")["option_contracts"][0])
    symbol = option_math.format_occ("AAPL", EXPIRY, "call", strike)
    body.update(symbol=symbol, name=f"AAPL Jun 28 2024 {strike:g} Call", expiration_date=str(EXPIRY),
                strike_price=f"{strike:g}")
    return body


def _contracts_route(fake, match, query, body):
    # Two pages: the adapter must follow next_page_token itself.
    if query.get("page_token") == "MA==":
        return 200, {"option_contracts": [_contract(195.0)], "next_page_token": None}, {}
    return 200, {"option_contracts": [_contract(185.0), _contract(190.0)], "next_page_token": "MA=="}, {}


def _snapshots_route(fake, match, query, body):
    template = next(iter(fixture("option_snapshot.json")["snapshots"].values()))
    found = {}
    for symbol in query.get("symbols", "").split(","):
        parsed = option_math.parse_occ(symbol)
        delta, bid, ask = fake.option_quotes.get(parsed.strike, STRIKES[parsed.strike])
        entry = copy.deepcopy(template)
        entry["greeks"]["delta"] = delta
        entry["latestQuote"].update(bp=bid, ap=ask)
        entry["latestTrade"]["p"] = round((bid + ask) / 2, 2)
        found[symbol] = entry
    return 200, {"snapshots": found, "next_page_token": None}, {}


class Exchange:
    """Fills working orders at their limit whenever the executor polls."""

    def __init__(self, fake):
        self.fake, self.now = fake, 0.0

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        for order_id, order in list(self.fake.orders.items()):
            if order["status"] in ("accepted", "new"):
                self.fake.fill(order_id)

    def monotonic(self) -> float:
        return self.now


def alpaca_runtime(tmp_path, fake, asof: str) -> Runtime:
    config = load_config({"BROKER": "alpaca", "DATA_SOURCE": "alpaca", "ALPACA_API_KEY": "PKOPTIONKEY12345",
                          "ALPACA_SECRET_KEY": "optionsecret1234567890", "ALPACA_TRADING_URL": fake.url,
                          "ALPACA_DATA_URL": fake.url, "MOMENTUM_DB": str(tmp_path / "trades.db"),
                          "MOMENTUM_ASOF": asof, "FILL_TIMEOUT_S": "5"}, environ={})
    rt = Runtime(config, "test")
    exchange = Exchange(fake)
    rt.waiter = executor.Waiter(simulated=False, sleep=exchange.sleep, monotonic=exchange.monotonic)
    return rt


def test_alpaca_order_flow_with_option_fixtures(tmp_path, fake_alpaca):
    fake = fake_alpaca
    fake.option_quotes = {}
    fake.add_route("GET", r"/v2/options/contracts", _contracts_route)
    fake.add_route("GET", r"/v1beta1/options/snapshots", _snapshots_route)
    fake.today, fake.fraction = date(2024, 6, 14), 0.3
    fake.set_price("AAPL", 190.4)
    rt = alpaca_runtime(tmp_path, fake, "2024-06-14T11:00")
    with rt.journal.atomic():
        rt.journal.db.execute(
            "INSERT INTO strat_signals (symbol, timeframe, pattern, direction, kind, bar_date, entry_trigger, "
            "target, stop, magnitude_pct, reward_risk, created_at) VALUES ('AAPL', '1D', '2-2', 'bullish', "
            "'reversal', '2024-06-13', 190.0, 194.0, 187.0, 2.1, 1.33, '2024-06-13T21:00:00+00:00')")
    signal = rt.journal.one("SELECT * FROM strat_signals")
    executions = option_entries.execute_signals(rt, [signal])
    assert [(e.status, e.contract, e.qty, e.limit_price) for e in executions] == [
        ("filled", "AAPL240628C00190000", 1, 2.95)]
    pages = [r for r in fake.requests if r.path == "/v2/options/contracts"]
    assert len(pages) == 2 and pages[1].query["page_token"] == "MA=="
    assert pages[0].query["expiration_date_gte"] == "2024-06-21" and pages[0].query["expiration_date_lte"] == \
        "2024-07-05" and pages[0].query["type"] == "call" and pages[0].query["underlying_symbols"] == "AAPL"
    snapshot_calls = [r for r in fake.requests if r.path == "/v1beta1/options/snapshots"]
    assert snapshot_calls[0].query["feed"] == "indicative"
    posted = [r.body for r in fake.requests if r.method == "POST" and r.path == "/v2/orders"]
    assert posted == [{"symbol": "AAPL240628C00190000", "qty": 1, "side": "buy", "type": "limit",
                       "time_in_force": "day", "client_order_id": "ma-o-1", "limit_price": 2.95}]
    trade = rt.journal.one("SELECT * FROM trades")
    assert (trade["status"], trade["asset_class"], trade["entry_price"], trade["qty"]) == ("open", "us_option",
                                                                                           2.95, 1)
    assert option_entries.execute_signals(rt, [signal])[0].reason == "already ordered; not sent again"
    rt.close()

    # Three days before expiry the monitor sells it: an aggressive limit at the bid from the option snapshot.
    fake.today = date(2024, 6, 25)
    fake.option_quotes = {190.0: (0.45, 2.10, 2.20)}
    fake.set_price("AAPL", 190.4)
    rt = alpaca_runtime(tmp_path, fake, "2024-06-25T11:00")
    report = monitor.MonitorReport()
    reconcile.reconcile(rt)
    option_exits.evaluate_option_positions(rt, exit_rules.PortfolioFlags(0.0), report, dry_run=False)
    executor.settle_fills(rt)
    assert report.exits_started == [("AAPL240628C00190000", "time_based_urgent", "HIGH")]
    sells = [r.body for r in fake.requests if r.method == "POST" and r.path == "/v2/orders"][1:]
    assert [(b["symbol"], b["side"], b["type"], b["limit_price"], b["qty"]) for b in sells] == [
        ("AAPL240628C00190000", "sell", "limit", 2.10, 1)]
    closed = rt.journal.one("SELECT * FROM trades")
    assert (closed["status"], closed["exit_reason"], closed["exit_price"]) == ("closed", "time_based_urgent", 2.10)
    assert closed["pnl"] == pytest.approx((2.10 - 2.95) * 100, abs=0.001)
    rt.close()


def test_expired_day_limit_cancels_the_pending_option_trade(env):
    run("set", "options_trading", "on")
    run("--asof", "2016-06-08T17:00", "strat", "scan", "--symbols", "STR")
    rt = Runtime(load_config({"MOMENTUM_ASOF": "2016-06-09T10:00"}))
    signal = rt.journal.one("SELECT * FROM strat_signals")
    original = option_math.entry_limit

    def far_below(quote):
        return round(original(quote) * 0.5, 2)  # a limit the market never comes down to

    try:
        option_math.entry_limit = far_below
        execution = option_entries.execute_signals(rt, [signal])[0]
    finally:
        option_math.entry_limit = original
    assert execution.status == "ordered"
    assert rt.journal.one("SELECT status FROM trades")["status"] == "pending"
    rt.close()
    monitor_options("2016-06-10T10:00")  # reconciliation after the DAY order expired at the 06-09 close
    assert rows(env, "SELECT status FROM trades")[0]["status"] == "canceled"
    assert rows(env, "SELECT status FROM orders")[0]["status"] == "expired"


def test_a_premium_shows_the_fill_to_its_last_digit():
    assert [option_entries.premium_text(p) for p in (1.28, 1.2, 0.5132, 2.955)] == ["1.28", "1.20", "0.5132", "2.955"]


def test_a_closed_option_is_counted_in_contracts_and_a_stock_in_shares():
    from flows.scan_orders import close_text

    option = {"symbol": "STR160624C00041000", "original_qty": 2, "qty": 2, "exit_price": 1.5, "status": "closed",
              "exit_reason": "time_based_urgent", "pnl": 30.0, "pnl_pct": 11.1}
    one = {**option, "symbol": "STR160624P00040000", "original_qty": 1, "qty": 1}
    stock = {**option, "symbol": "STR", "original_qty": 100, "qty": 100}
    text = monitor.report_text(monitor.MonitorReport(closed=[option, one, stock]))
    assert "closed: STR160624C00041000 2 contracts at $1.50 (time based urgent), P&L +$30.00" in text
    assert "closed: STR160624P00040000 1 contract at $1.50" in text and "closed: STR 100 sh at $1.50" in text
    assert close_text(executor.CloseResult(option, True)).startswith("closed STR160624C00041000 2 contracts at $1.50")
    assert close_text(executor.CloseResult(stock, True)).startswith("closed STR 100 sh at $1.50")

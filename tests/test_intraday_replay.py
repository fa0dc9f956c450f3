"""A minute-bar replay: 5-minute bars downloaded from the (local, fake) Alpaca server, then a backtest over them.

The backtest runs the live scans and monitor on the intraday source: each decision sees the bars that had ended by
its moment, orders fill at the last ended bar's close plus costs, and the sim broker settles stops bar by bar.
"""
from __future__ import annotations

import csv
import json
import sqlite3
from contextlib import closing
from datetime import date, datetime
from pathlib import Path

import pytest

from backtest import metrics
from common.clock import NY, calendar
from ports.intraday_csv import IntradayCsvMarket
from ports.sim_fills import cost_rate, market_price


pytestmark = pytest.mark.slow  # a year of five-minute bars downloaded, then two backtests


def rows(db: Path, sql: str, params=()) -> list[dict]:
    with closing(sqlite3.connect(db)) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(sql, params)]


KEY, SECRET = "PKREPLAYKEY123456789", "replaysecret1234567890"
SYMBOLS = ("AAPL", "MSFT", "NVDA", "AMD")
FIRST, LAST = date(2023, 5, 1), date(2024, 6, 14)  # a year of history before the replayed weeks
REPLAY = (date(2024, 6, 3), date(2024, 6, 7))  # its first session is a month's first: the rebalance trades


def _spy_vix_file(fake, path: Path) -> None:
    """The SPY/VIX daily file the replay reads its market context from: the fake's SPY bars and a calm VIX."""
    with open(path, "w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["date", "spy_open", "spy_high", "spy_low", "spy_close", "spy_volume", "vix_open", "vix_high",
                      "vix_low", "vix_close"])
        for day in calendar().sessions(FIRST, LAST):
            bar = fake.bar("SPY", day)
            out.writerow([day, bar["o"], bar["h"], bar["l"], bar["c"], bar["v"], 14.0, 14.5, 13.5, 14.0])


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    from click.testing import CliRunner

    from fake_alpaca import FakeAlpaca
    from main import cli

    base = tmp_path_factory.mktemp("intraday")
    fake = FakeAlpaca().start()
    mp = pytest.MonkeyPatch()
    try:
        fake.today = date(2024, 7, 8)  # every session asked for has closed
        universe = base / "universe.json"
        universe.write_text(json.dumps({"symbols": {"large": list(SYMBOLS), "mid": [], "small": []}}))
        for name in ("MOMENTUM_ASOF", "MARKET_DATA", "SIM_BROKER_DB", "BROKER", "DATA_SOURCE"):
            mp.delenv(name, raising=False)
        for name, value in {"ALPACA_API_KEY": KEY, "ALPACA_SECRET_KEY": SECRET, "ALPACA_DATA_URL": fake.url,
                            "MOMENTUM_DB": str(base / "scratch.db"), "LOG_DIR": str(base / "logs"),
                            "CACHE_DIR": str(base / "cache"), "UNIVERSE_FILE": str(universe)}.items():
            mp.setenv(name, value)
        bars, output = base / "bars_5min.csv.gz", ""
        runner = CliRunner()
        downloaded = runner.invoke(cli, ["--asof", "2024-07-06T12:00", "data", "download", "--timeframe", "5Min",
                                         "--symbols", ",".join(SYMBOLS), "--start", str(FIRST), "--end", str(LAST),
                                         "--out", str(bars)], catch_exceptions=False)
        assert downloaded.exit_code == 0, downloaded.output
        _spy_vix_file(fake, base / "spy_vix_daily.csv")
        for system, out in (("momentum", "bt"), ("rebalance", "rebal")):
            if system == "rebalance":  # a tight stop, so resting stops trigger inside the replayed week
                mp.setenv("REBALANCE_STOP_PCT", "1")
            result = runner.invoke(cli, ["--market", str(base / "spy_vix_daily.csv"), "backtest", "--data",
                                         f"csv:{bars}", "--system", system, "--start", str(REPLAY[0]), "--end",
                                         str(REPLAY[1]), "--out", str(base / out)], catch_exceptions=False)
            assert result.exit_code == 0, result.output
            output = output if system == "rebalance" else result.output
    finally:
        mp.undo()
        fake.stop()
    return base, bars, output


def test_the_minute_bar_replay_says_so_and_trades(replayed):
    base, _, output = replayed
    assert output.splitlines()[0] == f"replay mode: {metrics.INTRADAY_MODE}"
    data = json.loads((base / "bt" / "metrics.json").read_text())
    assert data["replay_mode"] == metrics.INTRADAY_MODE and data["failed_steps"] == 0
    scans = rows(base / "bt" / "trades.db", "SELECT COUNT(*) AS n FROM scans")[0]["n"]
    assert scans == 5 * 3 * 3  # five sessions, three slots, three caps


def test_each_monitor_check_saw_the_last_bar_that_had_ended_at_its_moment(replayed):
    base, bars, _ = replayed
    market = IntradayCsvMarket(bars, cache_dir=base / "cache")
    checks = rows(base / "rebal" / "trades.db", "SELECT symbol, checked_at, price FROM position_checks ORDER BY id")
    assert len(checks) > 20  # the rebalance's positions, checked every 30 minutes for a week
    for check in checks:
        at = datetime.fromisoformat(check["checked_at"])
        session = calendar().session(at.astimezone(NY).date())
        fraction = session.fraction(at)
        snap = market.snapshot([check["symbol"]], session.day, fraction)
        assert check["price"] == pytest.approx(float(snap.price[0])), check
        # that price is the close of the five-minute bar that ended last, not of the bar still running
        day_bars = market.session_bars([check["symbol"]], session.day)
        last = max(k for k, end in enumerate(day_bars.ends) if end <= fraction + 1e-9)
        assert check["price"] == pytest.approx(float(day_bars.close[last, 0]))


def test_the_rebalance_fills_at_the_price_seen_plus_costs_and_resting_orders_fill_as_bars_end(replayed):
    base, bars, _ = replayed
    market = IntradayCsvMarket(bars, cache_dir=base / "cache")
    entries = rows(base / "rebal" / "sim_broker.db", "SELECT o.symbol, o.submitted_at, f.price, f.at FROM fills f "
                   "JOIN orders o ON o.id = f.order_id WHERE o.side = 'buy' ORDER BY f.id")
    assert entries, "the replay bought nothing to check"
    for entry in entries:
        at = datetime.fromisoformat(entry["at"])
        session = calendar().session(at.astimezone(NY).date())
        snap = market.snapshot([entry["symbol"]], session.day, session.fraction(at))
        assert entry["price"] == market_price("buy", float(snap.price[0]), cost_rate("large"))
    sells = rows(base / "rebal" / "sim_broker.db", "SELECT o.type, o.submitted_at, f.at FROM fills f "
                 "JOIN orders o ON o.id = f.order_id WHERE o.side = 'sell'")
    assert sells, "the replay sold nothing to check"
    stops = [sell for sell in sells if sell["type"] == "trailing_stop"]
    assert stops, "no stop triggered to check"
    for sell in sells:  # at once when marketable, else when a five-minute bar that traded through it ended
        moment = datetime.fromisoformat(sell["at"])
        assert sell["at"] == sell["submitted_at"] or (moment.minute % 5 == 0 and moment.second == 0), sell
    for stop in stops:  # a resting stop fills as the bar that reached it ends, never at the moment it was sent
        assert stop["at"] != stop["submitted_at"] and datetime.fromisoformat(stop["at"]).minute % 5 == 0

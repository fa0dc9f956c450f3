"""`python main.py regime` as a user runs it: --market honoured with the sim source, --history printed and exported
(CSV and chart), a stored label recomputed when REGIME_CRASH_RULE changes."""
from __future__ import annotations

import csv
import json

import pytest

from conftest import require_shared_data
from realdata import cli, rows

SPY_VIX = "spy_vix_daily_1993_2018.csv"


@pytest.fixture
def sim_env(tmp_path, monkeypatch) -> dict[str, str]:
    """The default sim source and broker over a private journal; SPY/VIX come from --market."""
    env = {"MOMENTUM_DB": str(tmp_path / "trades.db"), "LOG_DIR": str(tmp_path / "logs"),
           "CACHE_DIR": str(tmp_path / "cache"), "DATA_SOURCE": "sim", "BROKER": "sim"}
    for name in ("MOMENTUM_ASOF", "MARKET_DATA", "REGIME_CRASH_RULE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def market() -> str:
    return str(require_shared_data(SPY_VIX))


def test_market_file_is_honoured_with_the_sim_source(sim_env, market):
    result = cli("--market", market, "--asof", "2015-08-24T17:00", "regime")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "2015-08-24: CRASH (exposure factor 0)"
    assert "VIX closed 40.74" in lines[1] and "10.9% under its 63-session high" in lines[1]
    stored = rows(sim_env, "SELECT date, regime, params FROM regimes")
    assert [(r["date"], r["regime"]) for r in stored] == [("2015-08-24", "CRASH")]
    assert json.loads(stored[0]["params"])["crash_rule"] == "shock"


def test_a_day_the_market_file_does_not_hold_is_one_line_naming_the_file(sim_env, market):
    result = cli("--market", market, "--asof", "2019-03-04T17:00", "regime")
    assert result.exit_code == 2
    assert f"no SPY close for 2019-03-04 in {market}" in result.output


def test_history_prints_every_session_and_a_summary(sim_env, market):
    result = cli("--market", market, "--asof", "2018-02-08T17:00", "regime", "--history", "--start", "2008-09-10",
                 "--end", "2008-09-19")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[:4] == ["2008-09-10  TREND_BEAR    0.3", "2008-09-11  TREND_BEAR    0.3",
                         "2008-09-12  TREND_BEAR    0.3", "2008-09-15  CRASH         0"]
    assert len(lines) == 9 and lines[-1].startswith("2008-09-10..2008-09-19, 8 sessions: TREND_BEAR 38%, CRASH 62%")
    assert rows(sim_env, "SELECT COUNT(*) AS n FROM regimes") == [{"n": 0}]  # a view: nothing stored


def test_history_exports_a_csv_and_a_chart(sim_env, market, tmp_path):
    out = tmp_path / "regimes.csv"
    result = cli("--market", market, "--asof", "2018-02-08T17:00", "regime", "--history", "--start", "2011-07-01",
                 "--end", "2011-10-31", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == f"wrote 85 sessions to {out} and the chart to {out.with_suffix('.png')}"
    with out.open() as handle:
        table = list(csv.DictReader(handle))
    assert list(table[0]) == ["date", "regime", "factor", "crash_override", "spy_close"]
    assert len(table) == 85 and table[0]["date"] == "2011-07-01" and table[-1]["date"] == "2011-10-31"
    by_day = {r["date"]: r["regime"] for r in table}
    assert by_day["2011-08-08"] == "CRASH" and by_day["2011-07-01"] == "TREND_BULL"
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_history_options_need_history_and_valid_dates(sim_env, market):
    result = cli("--market", market, "regime", "--start", "2011-07-01")
    assert result.exit_code == 2 and "--start, --end and --out go with --history" in result.output
    result = cli("--market", market, "regime", "--history", "--start", "2011-13-01", "--end", "2011-12-01")
    assert result.exit_code == 2 and "--start: expected a date YYYY-MM-DD" in result.output


def test_a_stored_label_is_recomputed_when_the_crash_rule_changes(sim_env, market, monkeypatch):
    # 2014-10-13: VIX +16% in a session and +63% in three from a calm 15, SPY 6.7% under its high: a wobble
    monkeypatch.setenv("REGIME_CRASH_RULE", "seed")
    seed = cli("--market", market, "--asof", "2014-10-13T17:00", "regime")
    assert seed.output.splitlines()[0] == "2014-10-13: CRASH (exposure factor 0)"
    monkeypatch.delenv("REGIME_CRASH_RULE")
    shock = cli("--market", market, "--asof", "2014-10-13T17:00", "regime")
    assert not shock.output.splitlines()[0].endswith("CRASH (exposure factor 0)")
    stored = rows(sim_env, "SELECT regime, params FROM regimes WHERE date = '2014-10-13'")
    assert len(stored) == 1 and json.loads(stored[0]["params"])["crash_rule"] == "shock"
    assert stored[0]["regime"] != "CRASH"


def test_market_file_is_honoured_with_the_alpaca_source(private_journal, market):
    """The Alpaca port's SPY and VIX (a VIXY proxy) give way to --market's file; nothing is asked of Alpaca."""
    from datetime import date

    from config import load_config
    from flows.runtime import Runtime

    config = load_config({"DATA_SOURCE": "alpaca", "MARKET_DATA": market, "ALPACA_API_KEY": "key",
                          "ALPACA_SECRET_KEY": "secret", "ALPACA_DATA_URL": "http://127.0.0.1:9",
                          "MOMENTUM_ASOF": "2015-08-24T17:00"})
    rt = Runtime(config, "regime")
    try:
        series = rt.market.market_series(date(2015, 8, 20), date(2015, 8, 24))
        with open(market, newline="") as handle:
            closes = {row["date"]: float(row["vix_close"]) for row in csv.DictReader(handle)
                      if "2015-08-20" <= row["date"] <= "2015-08-24"}
        assert [round(v, 4) for v in series["vix_close"]] == [round(v, 4) for v in closes.values()]
    finally:
        rt.close()

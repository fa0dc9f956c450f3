"""The regime in the trading loop: stored per day, the previous session's label used intraday, CRASH blocks buys,
the allocation factor scales the exposure limit."""
from __future__ import annotations

import json

from realdata import cli, rows


def test_regime_command_prints_and_stores_the_label(real_env):
    result = cli("--asof", "2011-08-08T17:00", "regime")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == "2011-08-08: CRASH (exposure factor 0)"
    stored = rows(real_env, "SELECT * FROM regimes")
    assert [(r["date"], r["regime"], r["crash_override"]) for r in stored] == [("2011-08-08", "CRASH", 1)]
    as_json = json.loads(cli("--asof", "2011-08-08T17:00", "regime", "--json").output)
    assert as_json["regime"] == "CRASH" and "vix_change_1d" in as_json["features"]
    features = dict(line.split() for line in result.output.splitlines()[2:])  # fractions shown as percents
    assert features["vix_change_1d"] == f"{as_json['features']['vix_change_1d'] * 100:+.2f}%"
    assert features["spy_drawdown_63"] == f"{as_json['features']['spy_drawdown_63'] * 100:+.2f}%"
    assert features["vix_percentile"] == f"{as_json['features']['vix_percentile'] * 100:.1f}%"
    assert features["sortino_20"] == f"{as_json['features']['sortino_20']:.2f}"  # a ratio stays a number


def test_an_intraday_scan_uses_the_previous_sessions_label_and_crash_blocks_buys(real_env):
    cli("set", "skip_buys", "off")
    result = cli("--asof", "2015-08-25T12:30", "scan", "--cap", "all")  # 2015-08-24 was a CRASH day
    assert result.exit_code == 0, result.output
    scans = rows(real_env, "SELECT regime, exposure_factor, buy_count FROM scans")
    assert {(s["regime"], s["exposure_factor"]) for s in scans} == {("CRASH", 0.0)}
    assert sum(s["buy_count"] for s in scans) == 0
    assert rows(real_env, "SELECT COUNT(*) AS n FROM orders")[0]["n"] == 0
    assert rows(real_env, "SELECT date FROM regimes") == [{"date": "2015-08-24"}]
    assert any("regime CRASH" in r["reason"] for r in rows(real_env, "SELECT reason FROM candidates"))


def test_bull_regime_scan_records_factor_one(real_env):
    cli("--asof", "2016-11-09T10:30", "scan", "--cap", "large", "--dry-run")
    scan = rows(real_env, "SELECT regime, exposure_factor FROM scans")[0]
    assert scan == {"regime": "TREND_BULL", "exposure_factor": 1.0}

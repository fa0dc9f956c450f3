"""What a scan and the monitor print says what the journal knows: the stage-2 condition a candidate failed, each
buy's size, price and stop, the symbols skipped for bad data by name, how many candidate rows a table hides, HALTED
first, and the trades the monitor found closed."""
from __future__ import annotations

import math
import re
import sqlite3

import pandas as pd
import pytest

from scanner import CAP_RULES, stage2_miss

from realdata import cli, real_env, real_universe, shared_cache  # noqa: F401 - fixtures


def _row(**values) -> pd.Series:
    base = {"momentum_breakout": False, "breakout_5d": False, "gap_up": 0.004, "follow_through": False,
            "volume_surge": 1.12, "roc_10d": 0.05}
    return pd.Series({**base, **values})


@pytest.mark.parametrize("values, expected", [
    ({}, "no breakout (gap +0.40% < +1.00%, no 5-day high); volume surge 1.12 < 1.30"),
    ({"gap_up": 0.02}, "no breakout (gap without follow-through, no 5-day high); volume surge 1.12 < 1.30"),
    ({"gap_up": math.nan, "volume_surge": 1.5}, "no breakout (no gap, no 5-day high)"),
    ({"breakout_5d": True, "volume_surge": math.nan}, "volume surge - < 1.30"),
    ({"momentum_breakout": True, "roc_10d": 0.021}, "10-day ROC +2.10% < +3.00%"),
])
def test_a_stage2_miss_names_each_failed_condition(values, expected):
    assert stage2_miss(_row(**values), CAP_RULES["large"]) == expected


@pytest.mark.slow
def test_a_trading_scan_says_what_it_bought_skipped_and_hid(real_env):
    result = cli("--asof", "2016-11-09T10:30", "scan", "--cap", "large")
    assert result.exit_code == 0, result.output
    bought = re.search(r"bought (\w+) (\d+) sh @ \$([\d.,]+), stop \$([\d.,]+)", result.output)
    assert bought, result.output
    with sqlite3.connect(real_env["MOMENTUM_DB"]) as db:
        trade = db.execute("SELECT qty, entry_price, trailing_stop_price FROM trades WHERE symbol = ?",
                           [bought[1]]).fetchone()
    assert (int(bought[2]), float(bought[3]), float(bought[4])) == (trade[0], round(trade[1], 2), round(trade[2], 2))
    assert "1 symbol skipped for bad data: DWDP (no valid price today)" in result.output
    assert "stage 2 not passed: volume surge 1.27 < 1.30" in result.output  # JPM
    with sqlite3.connect(real_env["MOMENTUM_DB"]) as db:
        reason = db.execute("SELECT reason FROM candidates WHERE symbol = 'JPM'").fetchone()[0]
    assert reason == "score 7; stage 2 not passed: volume surge 1.27 < 1.30"  # recorded as shown


@pytest.mark.slow
def test_a_long_candidate_table_says_how_many_rows_it_hides_and_halted_comes_first(real_env):
    assert cli("halt").exit_code == 0
    result = cli("--asof", "2016-11-10T10:30", "scan", "--cap", "large", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "(62 more candidates not shown: all are in the journal's candidates table and in --json)" in result.output
    summary = next(line for line in result.output.splitlines() if line.startswith("HALTED"))
    assert summary.startswith("HALTED: no buys until `resume`; large: 77 candidates")
    lines = result.output.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("symbol "))
    assert lines[header].split()[:7] == ["symbol", "price", "change", "rvol", "roc", "10d", "gap"]
    for row in lines[header + 2:header + 17]:  # change, roc 10d and gap carry their signed % (render's convention)
        cells = row.split()
        assert all(re.fullmatch(r"[+-]\d+\.\d\d%|-", cell) for cell in (cells[2], cells[4], cells[5])), row


@pytest.mark.slow
def test_the_monitor_reports_a_stop_that_filled_at_the_broker_with_its_price_and_pnl(real_env):
    assert cli("--asof", "2016-11-09T10:30", "scan", "--cap", "large").exit_code == 0
    assert "closed:" not in cli("--asof", "2016-11-11T10:00", "monitor").output
    result = cli("--asof", "2016-11-14T10:00", "monitor")
    assert result.exit_code == 0, result.output
    with sqlite3.connect(real_env["MOMENTUM_DB"]) as db:
        symbol, qty, price, reason, pnl, pct = db.execute(
            "SELECT symbol, qty, exit_price, exit_reason, pnl, pnl_pct FROM trades WHERE status = 'closed'").fetchone()
    assert reason == "trailing_stop"
    signed = f"{'+' if pnl >= 0 else '-'}${abs(pnl):,.2f}"
    assert f"  closed: {symbol} {qty} sh at ${price:,.2f} (trailing stop), P&L {signed} ({pct:+.2f}%)" in result.output


def test_a_dry_run_before_the_open_says_it_used_the_previous_session_and_status_speaks_new_york(private_journal):
    from click.testing import CliRunner

    from main import cli as main_cli

    early = CliRunner().invoke(main_cli, ["--asof", "2024-06-14T08:00", "scan", "--cap", "small", "--dry-run"])
    assert early.exit_code == 0, early.output
    assert "no session open now: this used the last session, 2024-06-13, as it closed" in early.output
    during = CliRunner().invoke(main_cli, ["--asof", "2024-06-14T10:00", "scan", "--cap", "small", "--dry-run"])
    assert "no session open now" not in during.output
    status = CliRunner().invoke(main_cli, ["--asof", "2024-06-14T10:05", "status"]).output
    assert "open small at 2024-06-14 10:00 EDT (dry_run)" in status
    assert "last scan run    2024-06-14 10:00 EDT done" in status
    halted = CliRunner().invoke(main_cli, ["halt"])
    assert halted.exit_code == 0
    status = CliRunner().invoke(main_cli, ["--asof", "2024-06-14T10:05", "status"]).output
    assert "skip-buy mode" in status and "(no buys anyway: HALTED)" in status
    assert status.index("HALTED (buying stopped)") < status.index("skip-buy mode")

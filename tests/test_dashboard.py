"""The browser dashboard without a browser: written after the commands that change the journal, beside the journal or
where DASHBOARD_DIR says (or not at all), atomically; a failure to write it is an event, never a failed run; what
comes from data is escaped and secrets are masked; unprotected positions come first; the backtest tearsheet and
the research study page are drawn from their files. tests/test_dashboard_browser.py opens the pages in Chromium."""
from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from config import load_config, register_secrets
from flows import dashboard
from flows.runtime import Runtime
from main import cli
from ports import dashboard_html

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = "<script>alert('x')</script>"
IMG = '<img src=x onerror="alert(1)">'
SECRET = "sk-dashboard-SECRET-4242"


@pytest.fixture
def env(private_journal, monkeypatch):
    monkeypatch.delenv("DASHBOARD_DIR", raising=False)
    monkeypatch.setenv("MOMENTUM_ASOF", "2016-11-10T11:00")
    return private_journal


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def page_of(folder: Path) -> str:
    return (folder / "dashboard" / "index.html").read_text(encoding="utf-8")


def crafted_runtime(command: str = "scan") -> Runtime:
    """A journal holding one protected position, one flagged unprotected whose symbol is markup, one rebalance
    position with no stop order, a scan whose candidate reasons and model reply carry markup, a risk-gate refusal,
    a critical event carrying a secret and two weeks of daily snapshots."""
    rt = Runtime(load_config(), command)
    j = rt.journal
    now = j.now()
    j.insert_row("trades", {"id": 1, "symbol": "FCX", "cap": "large", "qty": 100, "status": "open",
                            "entry_time": "2016-11-09T15:30:00+00:00", "entry_price": 12.92, "current_price": 13.71,
                            "trailing_stop_price": 13.02, "stop_order_id": "s-1"})
    j.insert_row("trades", {"id": 2, "symbol": SCRIPT, "cap": "small", "qty": 10, "status": "unprotected",
                            "entry_time": "2016-11-09T15:30:00+00:00", "entry_price": 40.0, "current_price": 39.0})
    j.insert_row("trades", {"id": 3, "symbol": "LNC", "cap": "mid", "strategy": "rebalance", "qty": 20,
                            "status": "open", "entry_time": "2016-11-01T14:45:00+00:00", "entry_price": 50.0,
                            "current_price": 55.0})
    j.insert_row("trades", {"id": 4, "symbol": "XL", "cap": "small", "qty": 30, "status": "closed",
                            "entry_time": "2016-11-01T15:30:00+00:00", "entry_price": 36.0,
                            "exit_time": "2016-11-04T20:00:00+00:00", "exit_price": 34.2,
                            "exit_reason": "trailing_stop", "pnl": -54.0, "pnl_pct": -5.0, "holding_days": 3})
    j.insert_row("orders", {"client_order_id": "s-1", "trade_id": 1, "symbol": "FCX", "side": "sell",
                            "type": "trailing_stop", "qty": 100, "purpose": "stop", "status": "new",
                            "stop_price": 13.02, "trail_percent": 5.0, "created_at": now})
    scan_id = j.insert_row("scans", {"type": "open", "cap": "small", "asof": "2016-11-10T15:30:00+00:00",
                                     "started_at": "2016-11-10T15:30:00+00:00", "dry_run": 0, "status": "done",
                                     "spy_price": 193.81, "spy_change_pct": -0.0081, "breadth": 0.3, "vix": 20.7,
                                     "regime": "TREND_BULL", "exposure_factor": 1.0, "decider": "llm",
                                     "summary": f"small: bought {SCRIPT}", "skipped": json.dumps({"BHF": IMG})})
    for symbol, decision, score, reason in (("AAA", "BUY", 14, "score 14, momentum breakout"),
                                            ("JEC", "SKIP", 7, "stage 2 not passed: volume surge 1.35 < 1.50"),
                                            ("EVIL", "SKIP", 3, f"the model said {IMG}")):
        j.insert_row("candidates", {"scan_id": scan_id, "symbol": symbol, "session": "2016-11-10",
                                    "asof": "2016-11-10T15:30:00+00:00", "price": 10.0, "change_pct": 0.0123,
                                    "score": score, "decision": decision, "reason": reason, "stage2": score > 10})
    j.insert_row("risk_events", {"created_at": "2016-11-10T15:30:00+00:00", "scan_id": scan_id, "symbol": "AAA",
                                 "side": "buy", "qty": 50, "gate": "max_positions", "detail": "6 positions held"})
    j.insert_row("decisions", {"scan_id": scan_id, "created_at": now, "decider": "llm", "valid": 0,
                               "fallback_reason": f"reply was not JSON: {SCRIPT}"})
    j.event("critical", "alert", f"broker refused the stop (key {SECRET})", source="executor")
    equity = 100_000.0
    for day in range(1, 11):
        equity *= 1.004 if day % 3 else 0.99
        j.insert_row("daily_performance", {"date": f"2016-11-{day:02d}", "equity": equity, "cash": equity / 2,
                                           "day_pnl": 100.0 if day % 3 else -300.0,
                                           "cum_return_pct": (equity / 100_000 - 1) * 100,
                                           "spy_cum_return_pct": day * 0.2, "created_at": now})
    j.db.conn.commit()
    return rt


def test_a_dry_run_scan_writes_the_dashboard_beside_the_journal(env):
    result = run("--asof", "2016-11-09T12:30", "scan", "--cap", "small", "--dry-run")
    assert result.exit_code == 0, result.output
    html = page_of(env)
    assert 'class="banner mode-SIM"' in html and '<span class="mode">SIM</span>' in html
    assert 'id="scan-1"' in html and "midday scan of small caps (dry run)" in html
    assert not list((env / "dashboard").glob(".*tmp"))  # written through a temporary file, renamed


def test_commands_that_only_read_leave_no_dashboard(env):
    assert run("status").exit_code == 0
    assert not (env / "dashboard").exists()


def test_dashboard_dir_moves_the_page_and_off_switches_it_off(env, monkeypatch, tmp_path):
    monkeypatch.setenv("DASHBOARD_DIR", str(tmp_path / "elsewhere"))
    assert run("halt").exit_code == 0
    assert "HALTED: no new buys" in (tmp_path / "elsewhere" / "index.html").read_text()
    monkeypatch.setenv("DASHBOARD_DIR", "off")
    assert run("resume").exit_code == 0
    assert "HALTED" in (tmp_path / "elsewhere" / "index.html").read_text()  # not written again
    result = run("dashboard")
    assert result.exit_code == 2 and "DASHBOARD_DIR is off" in result.output


def test_a_failing_dashboard_is_a_warning_event_and_the_run_still_succeeds(env, monkeypatch):
    def broken(path, data):
        raise OSError("disk full")

    monkeypatch.setattr(dashboard_html, "write_dashboard", broken)
    result = run("halt")
    assert result.exit_code == 0, result.output
    assert not (env / "dashboard").exists()
    with sqlite3.connect(env / "trades.db") as conn:
        events = conn.execute("SELECT level, kind, message FROM events WHERE kind = 'dashboard'").fetchall()
        runs = conn.execute("SELECT status, exit_code FROM runs WHERE command LIKE '% halt'").fetchall()
    assert events == [("warning", "dashboard", "dashboard not written: OSError: disk full")]
    assert runs == [("done", 0)]


def test_a_failed_run_writes_the_dashboard_too_with_its_failure(env):
    result = run("close", "NOPE", "--force")
    assert result.exit_code == 2
    runs = page_of(env)[page_of(env).index('id="run-list"'):]
    assert "<tr class=\"alert\">" in runs and " close</td>" in runs and "no open position in NOPE" in runs


def test_a_paper_account_is_asked_for_equity_only_while_the_request_budget_has_room(env, monkeypatch, fake_alpaca):
    for name, value in {"BROKER": "alpaca", "ALPACA_API_KEY": "PKDASHBOARD1234567",
                        "ALPACA_SECRET_KEY": "dashboardsecret1234567890", "ALPACA_TRADING_URL": fake_alpaca.url,
                        "ALPACA_REQUESTS_PER_MIN": "10"}.items():
        monkeypatch.setenv(name, value)
    fake_alpaca.set_position("AAPL", 10, 100.0)
    assert run("reconcile").exit_code == 0  # adopts AAPL, protects it: the broker is reached
    html = page_of(env)
    assert '<span class="mode">PAPER</span>' in html and "from the broker, at the end of this run" in html
    assert 'data-symbol="AAPL"' in html and "PKDASHBOARD1234567" not in html and "dashboardsecret" not in html
    with sqlite3.connect(env / "alpaca_budget.db") as conn:  # the minute's budget spent by other processes
        conn.executemany("INSERT INTO request_log (ts) VALUES (?)", [(time.time(),)] * 9)
    asked = []
    rt = Runtime(load_config(), "reconcile")
    rt.__dict__["broker"] = SimpleNamespace(account=lambda: asked.append(1))  # as if the run had reached it
    assert dashboard.write_after_run(rt) is not None and asked == []
    assert "from the broker" not in page_of(env) and "nothing yet (no daily snapshot" in page_of(env)


def test_markup_from_data_is_text_and_secrets_are_masked(env):
    register_secrets([SECRET])
    path = dashboard.write_dashboard(crafted_runtime())
    html = path.read_text(encoding="utf-8")
    assert "<script" not in html and "<img" not in html and "onerror=\"" not in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html  # the symbol, the summary, the model's reply
    assert "the model said &lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in html
    assert SECRET not in html and "broker refused the stop (key ***)" in html


def test_unprotected_positions_come_first_in_the_alert_style(env):
    html = dashboard.write_dashboard(crafted_runtime()).read_text(encoding="utf-8")
    table = html[html.index('<table id="positions">'):]
    table = table[:table.index("</table>")]
    rows = re.findall(r'<tr class="(\w*)" data-symbol="([^"]+)">', table)
    assert rows == [("alert", "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"), ("alert", "LNC"), ("", "FCX")]
    assert "the journal flags it UNPROTECTED" in table and "no working stop order covers it" in table
    assert 'id="unprotected-alert"' in html and "2 positions\n  UNPROTECTED" in html
    fcx = table[table.index('data-symbol="FCX"'):]
    assert '<td class="n stop">13.02</td>' in fcx and "5.0%" in fcx  # its stop and the distance to it


def test_the_runs_page_explains_every_candidate_and_refusal(env):
    html = dashboard.write_dashboard(crafted_runtime()).read_text(encoding="utf-8")
    assert "stage 2 not passed: volume surge 1.35 &lt; 1.50" in html
    assert '<tr class="refused" data-symbol="AAA">' in html and "refused by the max_positions gate" in html
    assert "fell back to the rules: reply was not JSON" in html
    assert "SPY 193.81 (-0.81%)" in html and "breadth 30%" in html and "+1.2%" in html  # fractions as percent
    assert "BHF</b>" in html and "&lt;img" in html  # the skipped symbol and its (escaped) reason


def test_the_performance_page_draws_equity_drawdown_and_daily_pnl(env):
    html = dashboard.write_dashboard(crafted_runtime()).read_text(encoding="utf-8")
    for chart in ("equity", "drawdown", "daily-pnl", "systems"):
        svg = html[html.index(f'id="chart-{chart}"'):]
        assert re.search(r'<path class="(line|bar|area)[^"]*"[^>]* d="M[\d.]+,[\d.]+', svg[:svg.index("</svg>")])
    assert 'id="monthly-returns"' in html and "trailing_stop" in html


def test_the_dashboard_command_writes_it_and_serves_it_on_loopback(env):
    crafted_runtime().close()
    proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "dashboard", "--serve", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = [proc.stdout.readline(), proc.stdout.readline()]
        assert lines[0].startswith("wrote ") and lines[0].strip().endswith("dashboard/index.html"), lines
        url = re.search(r"http://127\.0\.0\.1:\d+/", lines[1]).group(0)
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200 and b'<span class="mode">SIM</span>' in response.read()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_the_page_is_replaced_atomically_and_a_failed_render_keeps_the_old_one(tmp_path, monkeypatch):
    page = tmp_path / "dashboard" / "index.html"
    dashboard_html.write_atomically(page, "old")

    def failing_write(self, *args, **kwargs):
        raise OSError("no space left")

    monkeypatch.setattr(Path, "write_text", failing_write)
    with pytest.raises(OSError):
        dashboard_html.write_atomically(page, "new")
    monkeypatch.undo()
    assert page.read_text() == "old" and [p.name for p in page.parent.iterdir()] == ["index.html"]


def write_backtest_folder(folder: Path) -> None:
    rt = Runtime(load_config({"MOMENTUM_DB": str(folder / "trades.db")}), "backtest")
    j = rt.journal
    now = j.now()
    level = 100.0
    for i, day in enumerate(("2016-01-29", "2016-02-29", "2016-03-31", "2016-04-29")):
        level *= (1.02, 0.97, 1.05, 1.01)[i]
        j.insert_row("daily_performance", {"date": day, "equity": level * 1000, "cum_return_pct": level - 100,
                                           "spy_cum_return_pct": i, "day_pnl": 10.0, "created_at": now})
    for i, system in enumerate(("momentum", "rebalance", SCRIPT)):
        j.insert_row("trades", {"symbol": f"S{i}", "strategy": system, "qty": 10, "status": "closed",
                                "entry_time": "2016-02-01T15:00:00+00:00", "entry_price": 10.0,
                                "exit_time": "2016-03-01T20:00:00+00:00", "exit_price": 11.0, "pnl": 10.0,
                                "pnl_pct": 10.0, "exit_reason": "profit_target", "holding_days": 20})
    j.db.conn.commit()
    rt.close()
    (folder / "metrics.json").write_text(json.dumps({
        "system": "all", "start": "2016-01-04", "end": "2016-04-29", "sessions": 82, "measured_sessions": 20,
        "metrics": {"total_return_pct": 4.87, "cagr_pct": 15.2, "sharpe": 1.1, "max_drawdown_pct": -3.0,
                    "trades": 3, "win_rate_pct": 100.0, "end_value": 104_870.0},
        "benchmarks": {"spy_total_return": {"label": "SPY total return", "available": True,
                                            "metrics": {"total_return_pct": 3.0, "sharpe": 0.9}},
                       "spy_price_return": {"label": "SPY price return", "available": False,
                                            "missing": "not in the data"}},
        "systems": {"momentum": {"metrics": {"total_return_pct": 2.0, "trades": 1}}}}))


def test_a_backtest_tearsheet_shows_metrics_beside_spy_months_systems_and_trades(tmp_path):
    write_backtest_folder(tmp_path)
    html = dashboard.write_tearsheet(tmp_path).read_text(encoding="utf-8")
    assert (tmp_path / "dashboard" / "index.html").exists()
    assert "<th class=\"n\">strategy</th><th class=\"n\">SPY total return</th>" in html
    assert "+4.87%" in html and "+3.00%" in html and "SPY price return: not in the data" in html
    assert "annualised from 20 sessions: too few to mean much" in html
    heat = html[html.index('id="monthly-returns"'):]
    assert "<th>2016</th>" in heat and ">+2.0%</td>" in heat and ">-3.0%</td>" in heat and ">+5.0%</td>" in heat
    assert 'id="chart-equity"' in html and 'id="chart-drawdown"' in html and 'id="trades"' in html
    assert "&lt;script&gt;" in html and "<script" not in html


def test_a_research_study_page_shows_trials_effects_and_the_stitched_walk_forward(tmp_path):
    from research.store import Store

    store = Store(tmp_path / "research.db")
    store.begin("walk-forward", {"system": "momentum", "start": "2016-01-04", "end": "2016-06-30",
                                 "objective": "sharpe"}, resume=False)
    store.save_fold(0, ("2016-01-04", "2016-03-31"), ("2016-04-01", "2016-06-30"))
    for role, stop, objective in (("search", 4, 0.5), ("search", 6, 1.2), ("default", None, 0.8),
                                  ("test", 6, 0.9), ("test-default", None, 0.7)):
        params = {"trailing_stop_pct": stop} if stop else {}
        number = store.new_trial(role=role, params=params, fold=0, window=("2016-01-04", "2016-03-31"))
        curve = [("2016-04-01", 100_500.0, 200.0), ("2016-04-04", 101_000.0, 202.0)] if role.startswith("test") \
            else []
        store.finish_trial(number, {"status": "done", "metrics": {"metrics": {"start_value": 100_000.0,
                                                                              "sharpe": objective}},
                                    "curve": curve, "wall_s": 3.0}, objective)
    store.choose(0, 2, {"trailing_stop_pct": 6})
    store.close()
    html = dashboard.write_study_page(tmp_path).read_text(encoding="utf-8")
    assert '<div class="value" id="tried">2</div>' in html
    assert 'id="chart-effect-trailing_stop_pct"' in html and 'class="reference"' in html
    assert 'id="chart-walk-forward"' in html and "chosen settings (out of sample)" in html
    assert "trailing_stop_pct=6" in html  # the fold's choice
    assert dashboard.study_page_after_run(tmp_path / "nothing here") is None  # no research.db: logged, not raised


def test_nice_ticks_and_gaps_in_a_line():
    assert dashboard_html.nice_ticks(-3.2, 11.0) == [0, 5, 10] and dashboard_html.nice_ticks(-3, 3) == [-2, 0, 2]
    assert [str(t) for t in dashboard_html.nice_ticks(-0.4, 0.4)] == ['-0.4', '-0.2', '0.0', '0.2', '0.4']
    svg = str(dashboard_html.line_chart(["a", "b", "c", "d"], [("x", [1.0, None, 2.0, 3.0])], title="t"))
    assert svg.count("M") == 2  # the missing value starts a new segment


def test_writing_the_dashboard_again_replaces_the_page_whole(env):
    """The write time is measured by bench/bench_dashboard.py (timed assertions do not belong in tests); here, a
    second write replaces the first page whole, leaving no temporary file behind."""
    rt = crafted_runtime()
    first = dashboard.write_dashboard(rt)
    second = dashboard.write_dashboard(rt)
    assert first == second and second.read_text(encoding="utf-8").rstrip().endswith("</html>")
    assert [p.name for p in second.parent.iterdir() if p.name.startswith(".")] == []
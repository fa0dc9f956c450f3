"""Missing market context fails closed: a trading scan without SPY, VIX or the regime is refused with exit 2 and one
line naming what is missing (no order, no trade); a dry run goes on with a warning line and a warning event."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import SHARED_DATA
from realdata import BARS, cli, rows

ASOF = "2016-11-09T10:30"  # the large caps buy CAT and FCX here when the context is complete
SPY_VIX = SHARED_DATA / "spy_vix_daily_1993_2018.csv"
VIX_COLUMNS = ("vix_open", "vix_high", "vix_low", "vix_close")


def stocks_alone(folder: Path) -> Path:
    """The stocks file in a folder with no spy_vix_daily*.csv beside it (a link: the parsed cache is shared)."""
    folder.mkdir()
    link = folder / BARS.name
    link.symlink_to(BARS)
    return link


def market_copy(path: Path, *, drop_vix: bool = False, blank_vix: bool = False, until: str | None = None) -> Path:
    """The real SPY/VIX file without its VIX columns, with them empty, or ending after `until`."""
    with open(SPY_VIX, newline="") as source, open(path, "w", newline="") as out:
        reader = csv.DictReader(source)
        columns = [c for c in reader.fieldnames if not (drop_vix and c in VIX_COLUMNS)]
        writer = csv.DictWriter(out, columns, extrasaction="ignore")
        writer.writeheader()
        for row in reader:
            if until is not None and row["date"] > until:
                break
            writer.writerow({**row, **({c: "" for c in VIX_COLUMNS} if blank_vix else {})})
    return path


def no_market_file(tmp_path: Path) -> list[str]:
    return ["--data", f"csv:{stocks_alone(tmp_path / 'alone')}"]


def no_vix_columns(tmp_path: Path) -> list[str]:
    return ["--market", str(market_copy(tmp_path / "spy_only.csv", drop_vix=True))]


def empty_vix_columns(tmp_path: Path) -> list[str]:
    return ["--market", str(market_copy(tmp_path / "spy_blank_vix.csv", blank_vix=True))]


def the_stocks_file(tmp_path: Path) -> list[str]:
    return ["--market", str(BARS)]


def a_week_stale(tmp_path: Path) -> list[str]:
    return ["--market", str(market_copy(tmp_path / "spy_vix_stale.csv", until="2016-11-01"))]


# (what is wrong, the global options that make it so, fragments of the refusal line)
CASES = [
    pytest.param(no_market_file, ["SPY, VIX, the regime", "give --market PATH"], id="no-spy-vix-file"),
    pytest.param(no_vix_columns, ["VIX, the regime", "missing column(s) vix_open, vix_high, vix_low, vix_close"],
                 id="no-vix-columns"),
    pytest.param(empty_vix_columns, ["missing VIX, the regime", "no VIX close for 2016-11-08"], id="empty-vix"),
    pytest.param(the_stocks_file, ["SPY, VIX, the regime", "missing column(s) spy_open"], id="wrong-file"),
    pytest.param(a_week_stale, ["missing the regime", "no SPY close for 2016-11-08"], id="stale-file"),
]


@pytest.mark.parametrize("options, fragments", CASES)
def test_a_trading_scan_without_market_context_is_refused(real_env, tmp_path, options, fragments):
    result = cli(*options(tmp_path), "--asof", ASOF, "scan", "--cap", "large")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: scan refused: market context missing "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert rows(real_env, "SELECT COUNT(*) AS n FROM orders") == [{"n": 0}]
    assert rows(real_env, "SELECT COUNT(*) AS n FROM trades") == [{"n": 0}]
    assert rows(real_env, "SELECT cap, status FROM scans") == [{"cap": "large", "status": "failed"}]


@pytest.mark.parametrize("options, fragments", CASES)
def test_a_dry_run_without_market_context_runs_and_warns(real_env, tmp_path, options, fragments):
    result = cli(*options(tmp_path), "--asof", ASOF, "scan", "--cap", "large", "--dry-run")
    assert result.exit_code == 0, result.output
    warning = [line for line in result.stdout.splitlines() if line.startswith("WARNING: ")]
    assert len(warning) == 1, result.stdout
    assert warning[0].startswith("WARNING: market context missing ")
    assert warning[0].endswith("; a trading scan is refused")
    for fragment in fragments:
        assert fragment in warning[0], warning[0]
    events = rows(real_env, "SELECT level, source, message FROM events WHERE kind = 'market_context'")
    assert [(e["level"], e["source"]) for e in events] == [("warning", "scan")]
    assert fragments[0] in events[0]["message"]
    # no label: the dry run records exposure factor 0, never the full allocation
    assert rows(real_env, "SELECT status, regime, exposure_factor FROM scans") == [
        {"status": "dry_run", "regime": None, "exposure_factor": 0.0}]
    assert rows(real_env, "SELECT COUNT(*) AS n FROM orders") == [{"n": 0}]


def test_with_the_full_context_the_same_scan_trades_and_stores_the_regime(real_env):
    result = cli("--asof", ASOF, "scan", "--cap", "large")
    assert result.exit_code == 0, result.output
    assert "WARNING" not in result.output
    trades = rows(real_env, "SELECT symbol, regime FROM trades ORDER BY id")
    assert trades == [{"symbol": "FCX", "regime": "TREND_BULL"}]
    assert rows(real_env, "SELECT COUNT(*) AS n FROM events WHERE kind = 'market_context'") == [{"n": 0}]


# --- Alpaca: VIXY is the VIX proxy, so a missing VIXY is a missing VIX --------------------------------------------

@pytest.fixture
def alpaca_env(tmp_path, monkeypatch, fake_alpaca):
    for name in ("MOMENTUM_ASOF", "MARKET_DATA", "UNIVERSE_FILE"):
        monkeypatch.delenv(name, raising=False)
    env = {"MOMENTUM_DB": str(tmp_path / "trades.db"), "LOG_DIR": str(tmp_path / "logs"), "BROKER": "alpaca",
           "DATA_SOURCE": "alpaca", "ALPACA_DATA_URL": fake_alpaca.url, "ALPACA_TRADING_URL": fake_alpaca.url,
           "ALPACA_API_KEY": "PKCONTEXTKEY1234", "ALPACA_SECRET_KEY": "contextsecret1234567"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def run_cli(*args: str):
    from main import cli as command

    return CliRunner().invoke(command, list(args), catch_exceptions=False)


def test_alpaca_without_the_vixy_proxy_refuses_to_trade_and_warns_in_a_dry_run(alpaca_env, fake_alpaca):
    fake_alpaca.missing_symbols = {"VIXY"}
    refused = run_cli("--asof", "2024-06-14T11:00", "scan", "--cap", "large")
    assert refused.exit_code == 2, refused.output
    assert refused.stderr.strip().splitlines() == [
        "error: scan refused: market context missing VIX, the regime (no VIX value up to 2024-06-14 in Alpaca's "
        "SPY and VIXY bars (VIXY stands in for VIX); no VIX close for 2024-06-13 in Alpaca's SPY and VIXY bars "
        "(VIXY stands in for VIX))"]
    assert fake_alpaca.count("POST", "/v2/orders") == 0
    dry = run_cli("--asof", "2024-06-14T11:00", "scan", "--cap", "large", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "WARNING: market context missing VIX, the regime (" in dry.stdout
    assert fake_alpaca.count("POST", "/v2/orders") == 0


def test_alpaca_with_the_vixy_proxy_scans_with_a_regime(alpaca_env, fake_alpaca):
    result = run_cli("--asof", "2024-06-14T11:00", "scan", "--cap", "large")
    assert result.exit_code == 0, result.output
    assert "WARNING" not in result.output
    scan = rows(alpaca_env, "SELECT status, regime, vix FROM scans")[0]
    assert scan["status"] == "done" and scan["regime"] is not None and scan["vix"] is not None

"""The dashboard in a real headless Chromium (Debian's chromium and chromium-driver, driven by Selenium): after a
trading scan and a monitor run on the real 2013-2018 data, each held symbol shows with its stop, a position made
unprotected comes first in the alert style, a rejected candidate shows why, the equity chart is drawn and the browser
logs no error; markup in the data stays text (no script runs); a backtest's tearsheet draws. Screenshots are saved in
the test's folder, and copied to $MOMENTUM_TEST_ARTEFACTS when that names a folder.

Without selenium, a chromium binary or chromedriver the tests skip and say which is missing; a browser that is
there and fails is a failure."""
from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from realdata import cli, rows

pytestmark = pytest.mark.slow  # a browser start and real-data commands: seconds, not milliseconds

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
ALERT_RED = "rgba(185, 28, 28, 1)"  # --alert in the page's stylesheet


def _browser_paths() -> tuple[str, str]:
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.skip("selenium is not installed (pip install -r requirements-dev.txt)")
    browser = next((found for name in BROWSERS if (found := shutil.which(name))), None)
    if browser is None:
        pytest.skip("no Chromium on PATH (Debian: apt-get install chromium chromium-driver; .ci/run does it as root)")
    driver = shutil.which("chromedriver")
    if driver is None:
        pytest.skip("no chromedriver on PATH (Debian: apt-get install chromium-driver)")
    return browser, driver


@pytest.fixture(scope="module")
def chrome():
    browser, driver_path = _browser_paths()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1400,1100", "--hide-scrollbars"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def open_page(chrome, path: Path, anchor: str = "") -> None:
    chrome.get(path.resolve().as_uri() + anchor)
    chrome.get_log("browser")  # start each page with an empty log


def console_errors(chrome) -> list[str]:
    return [entry["message"] for entry in chrome.get_log("browser") if entry["level"] == "SEVERE"]


def screenshot(chrome, folder: Path, name: str) -> Path:
    """The whole page as PNG in the test's folder (and in $MOMENTUM_TEST_ARTEFACTS, if set)."""
    height, chrome_px = chrome.execute_script(
        "return [document.documentElement.scrollHeight, window.outerHeight - window.innerHeight]")
    chrome.set_window_size(1400, min(max(height, 900), 6000) + chrome_px)  # the window's own bars come on top
    path = folder / name
    assert chrome.save_screenshot(str(path))
    chrome.set_window_size(1400, 1100)
    artefacts = os.environ.get("MOMENTUM_TEST_ARTEFACTS")
    if artefacts:
        Path(artefacts).mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, Path(artefacts) / name)
    return path


def ok(*args: str) -> None:
    result = cli(*args)
    assert result.exit_code == 0, result.output


def test_the_dashboard_after_a_real_trading_scan_and_a_monitor_run(real_env, tmp_path, chrome):
    ok("set", "skip_buys", "off")
    ok("--asof", "2016-11-09T10:30", "scan", "--cap", "all")
    ok("--asof", "2016-11-09T16:30", "jobs", "daily-snapshot")
    ok("--asof", "2016-11-10T16:30", "jobs", "daily-snapshot")
    ok("--asof", "2016-11-11T11:00", "monitor")
    page = tmp_path / "dashboard" / "index.html"
    held = rows(real_env, "SELECT id, symbol, trailing_stop_price FROM trades WHERE status = 'open' ORDER BY id")
    assert len(held) >= 3

    from selenium.webdriver.common.by import By

    open_page(chrome, page)
    assert chrome.find_element(By.ID, "mode-banner").text.startswith("SIM")
    for trade in held:
        row = chrome.find_element(By.CSS_SELECTOR, f'#positions tr[data-symbol="{trade["symbol"]}"]')
        assert row.find_element(By.CSS_SELECTOR, "td.stop").text == f"{trade['trailing_stop_price']:,.2f}"
        assert "alert" not in row.get_attribute("class")
    assert console_errors(chrome) == []
    screenshot(chrome, tmp_path, "dashboard-now.png")

    open_page(chrome, page, "#performance")
    line = chrome.find_element(By.CSS_SELECTOR, "#chart-equity path.line")
    assert line.get_attribute("d").startswith("M") and line.is_displayed()
    assert console_errors(chrome) == []
    screenshot(chrome, tmp_path, "dashboard-performance.png")

    open_page(chrome, page, "#runs")
    rejected = chrome.find_elements(By.CSS_SELECTOR, "details[open] table.candidates tr.rejected td.reason")
    assert rejected and "stage 2 not passed" in rejected[0].text
    assert console_errors(chrome) == []
    screenshot(chrome, tmp_path, "dashboard-runs.png")

    victim = held[-1]
    with sqlite3.connect(real_env["MOMENTUM_DB"]) as conn:
        conn.execute("UPDATE trades SET status = 'unprotected' WHERE id = ?", [victim["id"]])
        conn.execute("UPDATE orders SET status = 'canceled' WHERE trade_id = ? AND purpose = 'stop'", [victim["id"]])
    ok("--asof", "2016-11-11T11:00", "dashboard")
    open_page(chrome, page)
    first = chrome.find_element(By.CSS_SELECTOR, "#positions tr[data-symbol]")
    assert first.get_attribute("data-symbol") == victim["symbol"] and "alert" in first.get_attribute("class")
    flag = first.find_element(By.CSS_SELECTOR, "td.flag")
    assert flag.text == "UNPROTECTED" and flag.value_of_css_property("background-color") == ALERT_RED
    assert first.find_element(By.CSS_SELECTOR, "td.stop").text == "-"  # its canceled stop is no stop
    banner = chrome.find_element(By.ID, "unprotected-alert")
    assert banner.is_displayed() and victim["symbol"] in banner.text
    assert console_errors(chrome) == []
    screenshot(chrome, tmp_path, "dashboard-now-unprotected.png")


def test_markup_in_the_data_is_shown_as_text_and_never_runs(private_journal, monkeypatch, tmp_path, chrome):
    from selenium.webdriver.common.by import By

    from config import load_config
    from flows import dashboard
    from flows.runtime import Runtime

    monkeypatch.delenv("DASHBOARD_DIR", raising=False)
    rt = Runtime(load_config(), "scan")
    evil = "<script>window.pwned = 1</script>"
    rt.journal.insert_row("trades", {"symbol": evil, "qty": 1, "status": "unprotected", "entry_price": 10.0,
                                     "current_price": 10.0, "entry_time": rt.journal.now()})
    rt.journal.event("critical", "alert", f'<img src=x onerror="window.pwned = 2"> {evil}', source="test")
    page = dashboard.write_dashboard(rt)
    rt.close()
    open_page(chrome, page)
    assert chrome.execute_script("return window.pwned === undefined")
    assert chrome.find_element(By.CSS_SELECTOR, "#positions tr[data-symbol] b").text == evil
    open_page(chrome, page, "#runs")
    assert chrome.execute_script("return window.pwned === undefined")
    assert evil in chrome.find_element(By.ID, "events").text
    assert console_errors(chrome) == []


def test_a_backtest_writes_a_tearsheet_the_browser_draws(real_env, tmp_path, chrome):
    from selenium.webdriver.common.by import By

    out = tmp_path / "bt"
    ok("backtest", "--system", "all", "--start", "2016-03-01", "--end", "2016-03-14", "--out", str(out))
    page = out / "dashboard" / "index.html"
    open_page(chrome, page)
    assert chrome.find_element(By.ID, "mode-banner").text.startswith("BACKTEST")
    headers = [th.text for th in chrome.find_elements(By.CSS_SELECTOR, "#metrics th")]
    assert headers[:3] == ["metric", "strategy", "SPY total return"]
    assert chrome.find_element(By.CSS_SELECTOR, "#chart-equity path.line").get_attribute("d").startswith("M")
    assert chrome.find_elements(By.CSS_SELECTOR, "#monthly-returns td")
    assert console_errors(chrome) == []
    screenshot(chrome, tmp_path, "tearsheet.png")

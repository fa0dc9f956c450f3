"""Crafted daily bars for scenario tests: a quiet base history, then chosen bars after an entry session.

`write_market(folder, scenarios)` writes stocks.csv (long format), a spy_vix_daily_crafted.csv beside it and a
universe.json with every scenario symbol in the large caps; scenario bars are (open, high, low, close, volume)
tuples for the sessions after ENTRY. `use_csv_journal` points the CLI at such a file and a journal in a temporary
folder; `run_ok` runs a CLI command that must succeed.
"""
from __future__ import annotations

import csv
import json
import math
from datetime import date
from pathlib import Path

from common.clock import calendar

ENTRY = date(2016, 6, 1)
BASE_SESSIONS = 140
BASE_PRICE = 50.0
BASE_VOLUME = 1_000_000


def sessions_after(count: int) -> list[date]:
    cal = calendar()
    days, day = [], ENTRY
    for _ in range(count):
        day = cal.next_session(day)
        days.append(day)
    return days


def _base_days() -> list[date]:
    cal = calendar()
    first = cal.sessions_back(ENTRY, BASE_SESSIONS)
    return cal.sessions(first, ENTRY)


def _quiet_bar(i: int) -> tuple[float, float, float, float, int]:
    close = BASE_PRICE + 0.15 * math.sin(i / 3.0)
    return close - 0.02, close + 0.1, close - 0.1, close, BASE_VOLUME


def use_csv_journal(monkeypatch, folder: Path, stocks: Path) -> dict[str, str]:
    """Export (for CliRunner) a csv market `stocks` and a journal, logs and cache in `folder`; clears the variables
    that would point elsewhere. Returns the exported values."""
    values = {"DATA_SOURCE": f"csv:{stocks}", "MOMENTUM_DB": str(folder / "trades.db"),
              "LOG_DIR": str(folder / "logs"), "CACHE_DIR": str(folder / "cache")}
    for name in ("MOMENTUM_ASOF", "MARKET_DATA", "BROKER", "UNIVERSE_FILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def run_ok(*args: str) -> str:
    """The output of a CLI command that must exit 0."""
    from click.testing import CliRunner

    from main import cli

    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def write_market(folder: Path, scenarios: dict[str, list[tuple]]) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    base = _base_days()
    with open(folder / "stocks.csv", "w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["date", "symbol", "open", "high", "low", "close", "volume"])
        for symbol, after in scenarios.items():
            for i, day in enumerate(base):
                out.writerow([day, symbol, *_quiet_bar(i)])
            for day, bar in zip(sessions_after(len(after)), after):
                out.writerow([day, symbol, *bar])
    longest = max(len(a) for a in scenarios.values())
    with open(folder / "spy_vix_daily_crafted.csv", "w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["date", "spy_open", "spy_high", "spy_low", "spy_close", "spy_volume", "vix_open", "vix_high",
                      "vix_low", "vix_close"])
        for i, day in enumerate(base + sessions_after(longest)):
            spy = 200.0 * (1 + 0.0004 * i)
            out.writerow([day, spy, spy * 1.002, spy * 0.998, spy, 50_000_000, 14.0, 14.2, 13.8, 14.0])
    universe = folder / "universe.json"
    universe.write_text(json.dumps({"symbols": {"large": sorted(scenarios), "mid": [], "small": []}}))
    return {"DATA_SOURCE": f"csv:{folder / 'stocks.csv'}", "UNIVERSE_FILE": str(universe)}


def ramp(start: float, end: float, volume: int = BASE_VOLUME) -> tuple:
    """A session moving steadily from start to end (open at start, the extremes at the ends)."""
    return start, max(start, end), min(start, end), end, volume


def flat(price: float, volume: int = BASE_VOLUME) -> tuple:
    return price, price, price, price, volume

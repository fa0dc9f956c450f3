"""Shared set-up for tests that trade over the real S&P 500 history: one universe and one parsed-data cache per
test session, and a helper that runs CLI commands against a private journal."""
from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import SHARED_DATA

BARS = SHARED_DATA / "sp500_daily_2013_2018.csv.gz"


@pytest.fixture(scope="session")
def real_universe(tmp_path_factory) -> Path:
    if not BARS.exists():
        pytest.skip(f"real data file {BARS} is not present")
    from common.universe import build_universe, write_universe

    path = tmp_path_factory.mktemp("universe") / "universe.json"
    write_universe(build_universe(BARS, "dollar-volume"), path)
    return path


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def real_env(tmp_path, monkeypatch, real_universe, shared_cache) -> dict[str, str]:
    """Environment for a trading journal over the real data in tmp_path (also exported for CliRunner)."""
    env = {"MOMENTUM_DB": str(tmp_path / "trades.db"), "UNIVERSE_FILE": str(real_universe),
           "DATA_SOURCE": f"csv:{BARS}", "LOG_DIR": str(tmp_path / "logs"), "CACHE_DIR": str(shared_cache),
           "BROKER": "sim"}
    for name in ("MOMENTUM_ASOF", "MARKET_DATA"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def cli(*args: str):
    from main import cli as command

    result = CliRunner().invoke(command, list(args), catch_exceptions=False)
    return result


def process_env(env: dict[str, str]) -> dict[str, str]:
    """A clean environment for a subprocess running main.py."""
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "PYTHONPATH")}
    return {**keep, **env}


def rows(env: dict[str, str], sql: str, params=()) -> list[dict]:
    """Rows of the journal named by env["MOMENTUM_DB"], as dicts."""
    with sqlite3.connect(env["MOMENTUM_DB"]) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(sql, params)]

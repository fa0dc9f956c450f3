"""Shared fixtures. The network is blocked for every test: only loopback addresses may be reached."""
from __future__ import annotations

import ipaddress
import socket
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
SHARED_DATA = SHARED / "data"
FIXTURES = SHARED / "alpaca" / "fixtures"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

_real_connect = socket.socket.connect


def _is_loopback(address) -> bool:
    if isinstance(address, tuple) and address:
        host = address[0]
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False
    return True  # unix sockets


@pytest.fixture(autouse=True)
def _block_network(monkeypatch):
    def guarded_connect(self, address):
        if not _is_loopback(address):
            raise RuntimeError(f"tests may not reach the network ({address!r})")
        return _real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)


@pytest.fixture
def private_journal(tmp_path, monkeypatch) -> Path:
    """For commands run in this process: a private journal, logs and cache in tmp_path, and none of the variables
    that would point a command elsewhere (data source, broker, clock, universe, market file, Alpaca)."""
    for name in ("MOMENTUM_DB", "DATA_SOURCE", "BROKER", "MOMENTUM_ASOF", "UNIVERSE_FILE", "MARKET_DATA",
                 "SIM_BROKER_DB", "ALPACA_TRADING_URL", "ALPACA_API_KEY", "ALPACA_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MOMENTUM_DB", str(tmp_path / "trades.db"))
    monkeypatch.setenv("LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setenv("CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def require_shared_data(name: str) -> Path:
    """Path of a file in ../shared/data, or skip the test with a reason when it is absent."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real data file {path} is not present")
    return path


class FakeTime:
    """Unix time that moves only when the code under test sleeps."""

    def __init__(self, start: float = 1_700_000_000.0):
        self.t = start
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        self.t += seconds


# Fixtures of the local fake services and of the real-data journals, available to every test module.
from fake_alpaca import fake_alpaca  # noqa: E402,F401
from fake_chat_servers import fake_discord, fake_telegram  # noqa: E402,F401
from fake_messages_api import fake_messages  # noqa: E402,F401
from realdata import real_env, real_universe, shared_cache  # noqa: E402,F401

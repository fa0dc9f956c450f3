"""Shared fixtures. The network is blocked for every test: only loopback addresses may be reached. Nothing is
written into the checkout: a test that names no journal, log folder or cache gets temporary ones, and a run that
leaves a file in the checkout fails (MOMENTUM_TEST_CHECKOUT=each finds the test that wrote it; =off skips the
check, e.g. while commands run in the checkout beside the tests)."""
from __future__ import annotations

import ipaddress
import os
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

import checkout_writes  # noqa: E402

_BEFORE = pytest.StashKey[object]()
_WRITTEN = pytest.StashKey[list]()

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


# --- nothing written into the checkout ------------------------------------------------------------------------------

CHECKOUT_CHECK = os.environ.get("MOMENTUM_TEST_CHECKOUT", "session")  # session (default), each or off


# Tests that check the defaults relative to the checkout itself; they read the configuration and write nothing.
READS_CHECKOUT_DEFAULTS = frozenset({"tests/test_config.py::test_defaults_need_no_configuration"})


@pytest.fixture(autouse=True)
def _outputs_outside_the_checkout(request, monkeypatch, tmp_path_factory):
    """What a test does not place itself goes to temporary folders, not into the checkout: the home folder
    (MOMENTUM_HOME: the default journal, logs and audit CSVs, caches, backups and .env, even for a configuration
    read with environ={}) is a fresh folder per test, and the parsed-data cache one folder per test session
    (CACHE_DIR, also for a market source opened without a cache folder), so real data is parsed once."""
    cache = request.getfixturevalue("shared_cache")
    if request.node.nodeid in READS_CHECKOUT_DEFAULTS:
        monkeypatch.delenv("MOMENTUM_HOME", raising=False)
    else:  # whatever the shell says: a test never writes into a real home either
        monkeypatch.setenv("MOMENTUM_HOME", str(tmp_path_factory.mktemp("home")))
    if not os.environ.get("CACHE_DIR"):
        monkeypatch.setenv("CACHE_DIR", str(cache))
    if "ports.market_sources" in sys.modules:
        monkeypatch.setattr(sys.modules["ports.market_sources"], "default_cache_dir", lambda: cache)
    if CHECKOUT_CHECK != "each":
        yield
        return
    before = checkout_writes.snapshot(ROOT)
    yield
    after = checkout_writes.snapshot(ROOT)
    if before is not None and after is not None:
        assert not checkout_writes.written(before, after), "this test wrote into the checkout"


def _is_xdist_worker(config) -> bool:
    return hasattr(config, "workerinput")


def pytest_sessionstart(session):
    """Take stock of the checkout once per run (in the xdist controller, or the only process)."""
    if CHECKOUT_CHECK != "off" and not _is_xdist_worker(session.config):
        session.config.stash[_BEFORE] = checkout_writes.snapshot(ROOT)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    """A run that leaves a file in the checkout fails, naming the files (pytest_terminal_summary shows them)."""
    before = session.config.stash.get(_BEFORE, None)
    after = checkout_writes.snapshot(ROOT) if before is not None else None
    if after is None:
        return
    found = checkout_writes.written(before, after)
    session.config.stash[_WRITTEN] = found
    if found and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    found = config.stash.get(_WRITTEN, [])
    if found:
        terminalreporter.section("the tests wrote into the checkout", red=True, bold=True)
        for path in found[:50]:
            terminalreporter.line(f"  {path}")
        terminalreporter.line(f"{len(found)} file(s); run with MOMENTUM_TEST_CHECKOUT=each to find the test "
                              f"(or =off if commands ran in the checkout meanwhile)")


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

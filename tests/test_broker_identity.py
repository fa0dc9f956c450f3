"""The journal remembers the broker account it trades with; a broker showing another account stops every command
(exit 2, one line) before anything is reconciled, instead of rewriting the book against the wrong account."""
from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from click.testing import CliRunner

from common.types import OrderRequest
from config import load_config
from flows.runtime import Runtime
from main import cli
from ports.sim_broker import SCHEMA_VERSION, SimBroker

ASOF = "2016-11-09T10:30"
LATER = "2016-11-09T11:00"
ALPACA_ACCOUNT = "00000000-0000-4000-8000-000000000001"  # the id in fixtures/account.json


@pytest.fixture
def env(private_journal):
    return private_journal


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def rows(path: Path, sql: str, params=()) -> list[tuple]:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute(sql, params).fetchall()


def remembered(env: Path) -> str | None:
    found = rows(env / "trades.db", "SELECT value FROM state WHERE key = 'broker_account'")
    return found[0][0] if found else None


def sim_account_id(env: Path) -> str:
    return rows(env / "sim_broker.db", "SELECT account_id FROM account")[0][0]


def assert_one_line_error(result, code: int, *fragments: str) -> str:
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def hold_a_position(env: Path) -> dict:
    """A position bought at the sim broker and adopted by reconcile: the journal has a trade and its stop order."""
    rt = Runtime(load_config({"MOMENTUM_ASOF": ASOF}))
    symbol = rt.universe.symbols("all")[0]
    rt.broker.submit(OrderRequest("manual-buy-1", symbol, "buy", "market", 10))
    rt.close()
    result = run("--asof", LATER, "reconcile")
    assert result.exit_code == 0, result.output
    (trade,) = rows(env / "trades.db", "SELECT id, symbol, qty, status FROM trades")
    assert trade[1:] == (symbol, 10, "external")
    return {"id": trade[0], "symbol": symbol}


# -- the sim broker ----------------------------------------------------------------------------------------------

def test_a_new_journal_and_a_new_sim_file_just_work_and_remember_the_account(env):
    assert run("--asof", ASOF, "status").exit_code == 0
    account = sim_account_id(env)
    assert len(account) == 36 and remembered(env) == f"sim:{account}"
    assert run("--asof", LATER, "status").exit_code == 0
    assert (sim_account_id(env), remembered(env)) == (account, f"sim:{account}")


def test_a_deleted_sim_file_stops_reconcile_instead_of_closing_every_trade(env):
    trade = hold_a_position(env)
    old_account = remembered(env)
    for leftover in env.glob("sim_broker.db*"):
        leftover.unlink()
    result = run("--asof", "2016-11-09T11:30", "reconcile")
    assert rows(env / "trades.db", "SELECT status FROM trades WHERE id = ?", (trade["id"],)) == [("external",)]
    assert result.exit_code == 2, result.output
    line = assert_one_line_error(result, 2, f"broker account sim:{sim_account_id(env)} is not the account "
                                            f"{old_account} that journal {env / 'trades.db'} traded with",
                                 f"restore the sim broker file {env / 'sim_broker.db'}", "or use a fresh --db")
    assert old_account.startswith("sim:") and old_account[4:] not in line.split(" is not ")[0]
    for command in ("positions", "status"):
        assert_one_line_error(run("--asof", "2016-11-09T11:30", command), 2, old_account)
    assert remembered(env) == old_account


def test_a_sim_file_replaced_by_another_accounts_file_is_refused(env, tmp_path_factory):
    hold_a_position(env)
    other = tmp_path_factory.mktemp("other")
    assert run("--db", str(other / "trades.db"), "--asof", ASOF, "status").exit_code == 0
    for suffix in ("", "-wal", "-shm"):
        (env / f"sim_broker.db{suffix}").unlink(missing_ok=True)
    with closing(sqlite3.connect(other / "sim_broker.db")) as src, \
            closing(sqlite3.connect(env / "sim_broker.db")) as dst:
        src.backup(dst)
    result = run("--asof", LATER, "reconcile")
    assert result.exit_code == 2, result.output
    assert_one_line_error(result, 2, f"broker account sim:{sim_account_id(other)} is not the account")


def test_a_journal_without_trades_takes_a_new_sim_file_as_its_own(env):
    assert run("--asof", ASOF, "status").exit_code == 0
    first = remembered(env)
    for leftover in env.glob("sim_broker.db*"):
        leftover.unlink()
    assert run("--asof", LATER, "status").exit_code == 0
    assert remembered(env) == f"sim:{sim_account_id(env)}" != first


def test_a_sim_file_from_before_account_ids_gets_one_when_first_opened(env):
    path = env / "sim_broker.db"
    with closing(sqlite3.connect(path)) as old:  # the schema 1 account table, with some cash spent
        old.execute("CREATE TABLE account (id INTEGER PRIMARY KEY CHECK (id = 1), cash REAL NOT NULL, "
                    "starting_cash REAL NOT NULL, last_processed TEXT)")
        old.execute("INSERT INTO account VALUES (1, 90000.0, 100000.0, NULL)")
        old.execute("PRAGMA user_version = 1")
        old.commit()
    rt = Runtime(load_config({"MOMENTUM_ASOF": ASOF}))
    account = rt.broker.account_id()
    assert len(account) == 36 and rt.broker.account().cash == 90000.0
    rt.close()
    rt.broker.close()
    reopened = SimBroker(path, rt.market, rt.clock)
    assert reopened.account_id() == account and rows(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    reopened.close()


def test_asking_the_sim_account_id_does_not_move_simulated_time(env):
    rt = Runtime(load_config({"MOMENTUM_ASOF": LATER}))
    rt.broker.account_id()
    assert rows(env / "sim_broker.db", "SELECT last_processed FROM account") == [(None,)]


# -- Alpaca ------------------------------------------------------------------------------------------------------

@pytest.fixture
def alpaca_env(env, monkeypatch, fake_alpaca):
    monkeypatch.setenv("BROKER", "alpaca")
    monkeypatch.setenv("ALPACA_API_KEY", "PKIDENTITYTEST123")
    monkeypatch.setenv("ALPACA_SECRET_KEY", "identitysecret1234567890")
    monkeypatch.setenv("ALPACA_TRADING_URL", fake_alpaca.url)
    return env


def test_the_alpaca_account_id_is_remembered_from_get_account(alpaca_env, fake_alpaca):
    assert run("--asof", ASOF, "status").exit_code == 0
    assert remembered(alpaca_env) == f"alpaca:{ALPACA_ACCOUNT}"


def test_another_alpaca_account_stops_reconcile(alpaca_env, fake_alpaca):
    fake_alpaca.set_position("AAPL", 10, 100.0)
    assert run("--asof", LATER, "reconcile").exit_code == 0  # adopts AAPL and protects it
    assert rows(alpaca_env / "trades.db", "SELECT symbol, status FROM trades") == [("AAPL", "external")]
    fake_alpaca.account["id"] = "11111111-2222-4333-8444-555555555555"  # other keys: another account
    fake_alpaca.set_position("AAPL", 0, 0.0)
    result = run("--asof", "2016-11-09T11:30", "reconcile")
    assert rows(alpaca_env / "trades.db", "SELECT symbol, status FROM trades") == [("AAPL", "external")]
    line = assert_one_line_error(result, 2, "broker account alpaca:11111111-2222-4333-8444-555555555555 is not the "
                                            f"account alpaca:{ALPACA_ACCOUNT}",
                                 "use the Alpaca account it traded with (ALPACA_API_KEY, ALPACA_PAPER)", "fresh --db")
    assert "PKIDENTITYTEST123" not in line

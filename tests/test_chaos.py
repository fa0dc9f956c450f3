"""Chaos: trading scans killed with SIGKILL at random moments (seeded), each re-run to completion.

At the end no order intent reached the broker twice, every broker order is known to the journal, the broker and
the journal agree on every position and quantity, and every position is protected by exactly one working stop for
its whole quantity (or flagged unprotected).
"""
from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from common.clock import Clock, parse_asof
from ports.market_sources import CsvMarket
from ports.sim_broker import SimBroker

from conftest import ROOT
from realdata import BARS, process_env

pytestmark = pytest.mark.slow  # kills real processes at random moments for about a minute

SEED = 20161109
DAYS = ["2016-11-09", "2016-11-10", "2016-11-11", "2016-11-14", "2016-11-15", "2016-11-16", "2016-11-17",
        "2016-11-18"]
TIMES = ["10:30", "12:30", "15:30"]


def _command(asof: str, *args: str) -> list[str]:
    return [sys.executable, str(ROOT / "main.py"), "--asof", asof, *args]


def _kill_somewhere(argv: list[str], env: dict, delay: float) -> bool:
    """Start the command and SIGKILL it after `delay` seconds; True when it was killed while running."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(delay)
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


def test_sigkill_at_random_moments_never_duplicates_or_loses_protection(real_env):
    rng = random.Random(SEED)
    env = process_env(real_env)
    subprocess.run(_command("2016-11-09T09:00", "set", "skip_buys", "off"), env=env, check=True,
                   capture_output=True)
    kills = runs = 0
    last = None
    duration = 1.5  # seconds a scan process lives; re-measured on every completed run
    for day in DAYS:
        for hhmm in TIMES:
            last = f"{day}T{hhmm}"
            argv = _command(last, "scan", "--cap", "all")
            for _ in range(2):  # kill twice at different moments of the process's life, then let it finish
                kills += _kill_somewhere(argv, env, rng.uniform(0.3, 0.95) * duration)
            started = time.monotonic()
            done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
            duration = time.monotonic() - started
            runs += 1
            assert done.returncode == 0, done.stderr
    final = subprocess.run(_command(last.replace("15:30", "15:45"), "reconcile"), env=env, capture_output=True,
                           text=True, timeout=120)
    assert final.returncode == 0, final.stderr
    assert kills >= 20, f"only {kills} kills landed while a scan was running"
    report = _check_consistency(real_env, last.replace("15:30", "15:46"))
    print(f"chaos: {kills} kills, {runs} completed scans, {report['orders']} broker orders, "
          f"{report['duplicates']} duplicates, {report['positions']} positions")
    assert report["duplicates"] == 0


def _check_consistency(env: dict, asof: str) -> dict:
    broker = SimBroker(Path(env["MOMENTUM_DB"]).parent / "sim_broker.db",
                       CsvMarket(BARS, cache_dir=Path(env["CACHE_DIR"])), Clock(parse_asof(asof)))
    with sqlite3.connect(env["MOMENTUM_DB"]) as conn:
        conn.row_factory = sqlite3.Row
        journal_orders = {r["client_order_id"]: dict(r) for r in conn.execute("SELECT * FROM orders")}
        trades = [dict(r) for r in conn.execute("SELECT * FROM trades WHERE status IN "
                                               "('open', 'unprotected', 'external')")]
    broker_orders = broker.orders("all")
    unknown = [o.client_order_id for o in broker_orders if o.client_order_id not in journal_orders]
    assert unknown == [], "broker orders the journal never recorded"
    entries_per_trade = Counter(journal_orders[o.client_order_id]["trade_id"] for o in broker_orders
                                if journal_orders[o.client_order_id]["purpose"] == "entry")
    duplicates = sum(n - 1 for n in entries_per_trade.values() if n > 1)
    positions = {p.symbol: p.qty for p in broker.positions()}
    assert {t["symbol"]: t["qty"] for t in trades} == positions
    working = Counter(o.symbol for o in broker.orders("open") if o.type == "trailing_stop")
    stop_qty = {o.symbol: o.qty for o in broker.orders("open") if o.type == "trailing_stop"}
    for trade in trades:
        protected = working[trade["symbol"]] == 1 and stop_qty[trade["symbol"]] == trade["qty"]
        assert protected or trade["status"] == "unprotected", trade["symbol"]
        duplicates += max(0, working[trade["symbol"]] - 1)
    return {"orders": len(broker_orders), "duplicates": duplicates, "positions": len(positions)}

"""The journal reads the few live orders and unapplied fills through partial indexes (migration 0006), and the
reconciler's condition is the index's condition word for word (otherwise SQLite scans every order ever sent)."""
from __future__ import annotations

import re

import pytest

from common.types import FINAL_STATUSES
from journal import reconcile, schema, trade_book

LIVE_QUERY = (f"SELECT * FROM orders WHERE rowid IN (SELECT rowid FROM orders WHERE {reconcile.LIVE_ORDERS}) "
              "ORDER BY rowid")


def _plan(journal, sql: str) -> str:
    return " | ".join(row["detail"] for row in journal.query(f"EXPLAIN QUERY PLAN {sql}"))


def test_the_live_condition_is_the_indexs_and_covers_every_final_status():
    index_condition = re.search(r"WHERE (status NOT IN \([^)]*\))", schema.MIGRATION_0006).group(1)
    assert index_condition == reconcile.LIVE_ORDERS
    assert set(reconcile.FINAL_OR_UNSENT) == set(FINAL_STATUSES) | {"not_sent"}


def test_refresh_and_the_fill_check_use_the_partial_indexes(journal):
    assert "orders_live" in _plan(journal, LIVE_QUERY)
    assert "orders_unapplied" in _plan(journal, "SELECT 1 FROM orders WHERE filled_qty > applied_qty LIMIT 1")


def _order(journal, client_order_id: str, status: str, filled: int = 0, applied: int = 0, trade_id=None) -> None:
    journal.insert_row("orders", {"client_order_id": client_order_id, "symbol": "AAA", "side": "buy",
                                  "type": "market", "qty": 10, "purpose": "entry", "status": status,
                                  "filled_qty": filled, "applied_qty": applied, "trade_id": trade_id,
                                  "created_at": "2016-01-04T15:00:00+00:00"})


def test_live_orders_come_back_in_the_order_they_were_written(journal):
    for n, status in enumerate(["filled", "new", "canceled", "pending_submit", "accepted", "not_sent", "held"]):
        _order(journal, f"o{n}", status)
    assert [r["client_order_id"] for r in journal.query(LIVE_QUERY)] == ["o1", "o3", "o4", "o6"]


class _Report:
    def __init__(self):
        self.alerts, self.entries_filled = [], []


def test_apply_order_fills_skips_its_full_read_only_when_nothing_can_apply(journal, monkeypatch):
    class Rt:
        pass

    rt = Rt()
    rt.journal = journal
    reads = []
    real_query = journal.query

    def counting(sql, params=None):
        if "JOIN trades" in sql:
            reads.append(sql)
        return real_query(sql, params)

    monkeypatch.setattr(journal, "query", counting)
    _order(journal, "done", "filled", filled=10, applied=10)
    trade_book.apply_order_fills(rt, _Report())
    assert reads == []  # nothing unapplied, no pending trade
    _order(journal, "late", "filled", filled=10, applied=4)
    trade_book.apply_order_fills(rt, _Report())
    assert len(reads) == 1  # an unapplied fill: the full read runs (the order has no trade, so nothing applies)


@pytest.fixture
def journal(tmp_path):
    from common.clock import Clock, parse_asof
    from db import open_journal

    j = open_journal(tmp_path / "trades.db", Clock(parse_asof("2016-01-04T10:00")))
    yield j
    j.db.conn.close()

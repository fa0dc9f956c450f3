"""The invariants a killed and re-run command must never break, checked from a journal file and a broker's state.

`BrokerBook` is what the broker holds: every order (client_order_id, symbol, side, type, qty, filled_qty, status)
and the positions. `sim_book(path)` reads it from a sim broker file (no simulated time passes) and `fake_book(fake)`
from a fake Alpaca server. `check(journal_path, book, resent)` runs every check and returns how many of each kind
it made and the violations it found, one line each:
- sent_once: no client_order_id was sent again once the broker had it (`resent`: those that were);
- one_entry: at most one entry order at the broker and one live or closed trade per symbol, session and scan;
- known_order: every broker order is in the journal;
- fill_recorded / fill_applied: every broker fill is in the journal's filled_qty and applied (applied_qty);
- trade_ledger: a trade's quantity is its bought minus its sold shares (zero once closed);
- position: the journal's open trades are the broker's positions, symbol and quantity;
- protected: each position has exactly one working stop for every share no exit order is selling (none when
  exit orders hold them all), or its trade is flagged unprotected.
Orders whose client_order_id starts with "manual-" were placed at the broker by hand and are not the journal's.
"""
from __future__ import annotations

import sqlite3
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

LIVE = ("open", "unprotected", "external")
STOP_TYPES = ("stop", "trailing_stop")
FAKE_OPEN = {"new", "accepted", "pending_new", "partially_filled", "pending_cancel", "pending_replace", "held",
             "accepted_for_bidding", "calculated", "pending_review", "done_for_day"}
SIM_OPEN = {"new", "accepted"}


@dataclass(frozen=True)
class BrokerOrder:
    client_order_id: str
    symbol: str
    side: str
    type: str
    qty: int
    filled_qty: int
    status: str
    working: bool  # still open at the broker

    @property
    def protecting(self) -> bool:
        return (self.working and self.side == "sell" and self.type in STOP_TYPES
                and self.status != "pending_cancel")

    @property
    def exit_held(self) -> int:
        """Shares this order is selling besides a stop (an exit limit or market order still working)."""
        if self.working and self.side == "sell" and self.type not in STOP_TYPES:
            return self.qty - self.filled_qty
        return 0


@dataclass(frozen=True)
class BrokerBook:
    orders: list[BrokerOrder]
    positions: dict[str, int]


def sim_book(path: Path) -> BrokerBook:
    with sqlite3.connect(path) as conn:
        orders = [BrokerOrder(c, s, side, kind, qty, filled, status, status in SIM_OPEN) for c, s, side, kind, qty,
                  filled, status in conn.execute("SELECT client_order_id, symbol, side, type, qty, filled_qty, "
                                                 "status FROM orders ORDER BY seq")]
        positions = dict(conn.execute("SELECT symbol, qty FROM positions"))
    conn.close()
    return BrokerBook(orders, positions)


def fake_book(fake) -> BrokerBook:
    with fake.lock:
        orders = [BrokerOrder(o["client_order_id"], o["symbol"], o["side"], o["type"], int(float(o["qty"])),
                              int(float(o["filled_qty"])), o["status"], o["status"] in FAKE_OPEN)
                  for o in fake.orders.values()]
        positions = {symbol: held["qty"] for symbol, held in fake.positions.items()}
    return BrokerBook(orders, positions)


def _journal(path: Path) -> tuple[dict[str, dict], list[dict]]:
    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        orders = {r["client_order_id"]: dict(r) for r in conn.execute("SELECT * FROM orders")}
        trades = [dict(r) for r in conn.execute("SELECT id, symbol, qty, original_qty, status, entry_order_id "
                                                "FROM trades ORDER BY id")]
    conn.close()
    return orders, trades


class Checker:
    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self.violations: list[str] = []

    def expect(self, kind: str, holds: bool, message: str) -> None:
        self.counts[kind] += 1
        if not holds:
            self.violations.append(f"{kind}: {message}")


def check(journal_path: Path, book: BrokerBook, sent: list[str], resent: list[str]) -> Checker:
    """Every invariant over the journal at `journal_path` and the broker's `book`; `sent` lists each submission
    made, `resent` those of a client_order_id the broker already held."""
    checker = Checker()
    orders, trades = _journal(journal_path)
    ours = [o for o in book.orders if not o.client_order_id.startswith("manual-")]
    for client_order_id in sent:
        checker.expect("sent_once", client_order_id not in resent,
                       f"{client_order_id} was sent again after the broker had it")
    _entries(checker, ours, trades)
    _fills(checker, ours, orders)
    _ledger(checker, ours, orders, trades)
    _positions(checker, book, trades)
    _protection(checker, book, trades)
    return checker


def _entries(checker: Checker, ours: list[BrokerOrder], trades: list[dict]) -> None:
    entries = Counter(o.symbol for o in ours if o.client_order_id.startswith("ma-e-"))
    for symbol, count in entries.items():
        checker.expect("one_entry", count == 1, f"{symbol}: {count} entry orders at the broker")
    per_intent = Counter(t["entry_order_id"] for t in trades if t["entry_order_id"] and t["status"] != "canceled")
    for intent, count in per_intent.items():
        checker.expect("one_entry", count == 1, f"{intent}: {count} trades")


def _fills(checker: Checker, ours: list[BrokerOrder], orders: dict[str, dict]) -> None:
    for order in ours:
        row = orders.get(order.client_order_id)
        checker.expect("known_order", row is not None,
                       f"{order.client_order_id} ({order.side} {order.type} {order.symbol}, {order.status}) is at "
                       "the broker but not in the journal")
        if row is None or not order.filled_qty:
            continue
        checker.expect("fill_recorded", row["filled_qty"] == order.filled_qty,
                       f"{order.client_order_id}: broker filled {order.filled_qty}, journal {row['filled_qty']} "
                       f"(status {row['status']})")
        checker.expect("fill_applied", row["applied_qty"] == row["filled_qty"],
                       f"{order.client_order_id}: journal filled {row['filled_qty']}, applied {row['applied_qty']}")


def _ledger(checker: Checker, ours: list[BrokerOrder], orders: dict[str, dict], trades: list[dict]) -> None:
    net: dict[int, int] = defaultdict(int)
    for order in ours:
        row = orders.get(order.client_order_id)
        if row is not None and row["trade_id"] is not None:
            net[row["trade_id"]] += order.filled_qty if order.side == "buy" else -order.filled_qty
    for trade in trades:
        if trade["status"] == "external":
            continue  # adopted: bought outside the journal, its quantity is the broker's (checked as a position)
        expected = trade["qty"] if trade["status"] in LIVE else 0
        checker.expect("trade_ledger", net[trade["id"]] == expected,
                       f"trade {trade['id']} {trade['symbol']} ({trade['status']}, qty {trade['qty']}): the broker "
                       f"filled a net {net[trade['id']]} shares for it")


def _positions(checker: Checker, book: BrokerBook, trades: list[dict]) -> None:
    held = defaultdict(int)
    for trade in trades:
        if trade["status"] in LIVE:
            held[trade["symbol"]] += trade["qty"]
    for symbol in sorted(set(held) | set(book.positions)):
        checker.expect("position", held.get(symbol) == book.positions.get(symbol),
                       f"{symbol}: journal open qty {held.get(symbol)}, broker position {book.positions.get(symbol)}")


def _protection(checker: Checker, book: BrokerBook, trades: list[dict]) -> None:
    for trade in trades:
        if trade["status"] not in LIVE:
            continue
        symbol = trade["symbol"]
        stops = [o for o in book.orders if o.symbol == symbol and o.protecting]
        needed = trade["qty"] - sum(o.exit_held for o in book.orders if o.symbol == symbol)
        covered = len(stops) == 1 and stops[0].qty == needed if needed > 0 else not stops
        checker.expect("protected", covered or trade["status"] == "unprotected",
                       f"{symbol} x{trade['qty']} ({trade['status']}): {needed} shares need a stop, working stops "
                       f"{[(o.client_order_id, o.qty) for o in stops]}")

"""Prepared histories kept for the rest of their session.

The scanner and the reversal score split their work in two: a history part that depends on completed sessions
only (`scanner.prepare`, `reversal.prepare`) and a step that adds the snapshot. A live cron command runs one scan
or monitor and prepares its history once; a backtest replays a whole session's scans and monitor runs in one
process, and without this store would prepare the same completed sessions for the same symbols a dozen times.

Every prepared value is computed column by column (one symbol never affects another), so the store keeps one
prepared history per kind, session and window, grows it by the symbols it has not seen yet, and hands out the
requested columns. It is used only over a market port whose completed sessions cannot change while it is open
(`static_history`: the csv and sim markets); with a live data feed every run prepares its own.

A backtest's worker (backtest/prefetch.py) also computes, ahead of the replay, each session's snapshots of the whole
universe at the cron moments and the scan frames of those snapshots. Snapshots and scan rows are computed symbol
by symbol too, so the rows of the requested symbols are what a direct computation would give; anything not seeded
(another moment, a symbol outside the universe, another history window) is computed directly.
"""
from __future__ import annotations

import dataclasses
from datetime import date
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import pandas as pd

import scanner
from common.types import Panel, Snapshot

if TYPE_CHECKING:  # annotations only: the runtime module wires every port
    from flows.runtime import Runtime

Prepare = Callable[[Panel, date, Sequence[str]], Any]


class HistoryCache:
    def __init__(self) -> None:
        self._entries: dict[tuple, Any] = {}
        self._columns: dict[tuple, dict[str, int]] = {}
        # computed ahead by a backtest's worker (backtest/prefetch.py): whole-universe snapshots by (session, fraction)
        # and scan frames by (session, fraction, rules, history window), each with its symbols' positions
        self._snapshots: dict[tuple, tuple[Snapshot, dict[str, int]]] = {}
        self._frames: dict[tuple, tuple[pd.DataFrame, dict[str, int]]] = {}
        self._contexts: dict[tuple, dict] = {}  # market contexts by (session, fraction, universe)
        self._last_positions: tuple = ((), {})

    def get(self, prepare: Prepare, history: Panel, session: date, symbols: Sequence[str]) -> Any:
        """`prepare(history, session, symbols)`, from the columns prepared earlier in this session where it can."""
        symbols = list(symbols)
        if not symbols:
            return prepare(history, session, symbols)
        key = _key(prepare, history.dates, session)
        if key not in self._entries:
            self._forget_other_sessions(session)
        entry, column = self._entries.get(key), self._columns.setdefault(key, {})
        missing = [symbol for symbol in dict.fromkeys(symbols) if symbol not in column]
        if missing:
            fresh = prepare(history.select(missing), session, missing)
            entry = fresh if entry is None else join_columns(entry, fresh)
            column.update({symbol: len(column) + i for i, symbol in enumerate(missing)})
            self._entries[key] = entry
        return take_columns(entry, np.array([column[symbol] for symbol in symbols], dtype=int))

    def seed(self, prepare: Prepare, dates: np.ndarray, session: date, symbols: Sequence[str], prepared: Any) -> None:
        """Store `prepared` as what `prepare` gives for `symbols` over a history with these dates."""
        key = _key(prepare, dates, session)
        self._forget_other_sessions(session)
        self._entries[key] = prepared
        self._columns[key] = dict(self._positions(symbols))  # its own copy: `get` adds to it

    def seed_snapshot(self, fraction: float, snap: Snapshot) -> None:
        """`snap` as what the market gives at `fraction` of its session (asked with exactly that fraction)."""
        self._forget_other_sessions(snap.session)
        self._snapshots[(snap.session, fraction)] = (snap, self._positions(snap.symbols))

    def seed_frame(self, snap: Snapshot, rules: Any, dates: np.ndarray, frame: pd.DataFrame) -> None:
        """`frame` as the scan of `snap` under `rules` over a history with these dates."""
        self._forget_other_sessions(snap.session)
        key = (snap.session, snap.fraction, rules, _window(dates))
        self._frames[key] = (frame, self._positions(frame.index))

    def seed_context(self, session: date, fraction: float, universe: Sequence[str], context: dict) -> None:
        """`context` as agent.market_context of the session at `fraction` over the snapshot of `universe`."""
        self._forget_other_sessions(session)
        self._contexts[(session, fraction, tuple(universe))] = context

    def context(self, session: date, fraction: float, universe: Sequence[str]) -> dict | None:
        """A copy of the seeded market context (the caller adds to it), or None."""
        seeded = self._contexts.get((session, fraction, tuple(universe)))
        return dict(seeded) if seeded is not None else None

    def snapshot(self, symbols: Sequence[str], session: date, fraction: float) -> Snapshot | None:
        """The seeded snapshot's columns for `symbols`, or None when none was seeded or it lacks one of them."""
        seeded = self._snapshots.get((session, fraction))
        if seeded is None or not all(symbol in seeded[1] for symbol in symbols):
            return None
        return seeded[0].select(symbols)

    def frame(self, snap: Snapshot, rules: Any, dates: np.ndarray) -> pd.DataFrame | None:
        """The seeded scan frame's rows for the snapshot's symbols, or None."""
        seeded = self._frames.get((snap.session, snap.fraction, rules, _window(dates)))
        if seeded is None or not all(symbol in seeded[1] for symbol in snap.symbols):
            return None
        return seeded[0].take([seeded[1][symbol] for symbol in snap.symbols])

    def _positions(self, symbols) -> dict[str, int]:
        """Each symbol's position; one table (read only) serves every seeded snapshot and frame of a symbol list."""
        key = tuple(symbols)
        if self._last_positions[0] != key:
            self._last_positions = (key, {symbol: i for i, symbol in enumerate(key)})
        return self._last_positions[1]

    def _forget_other_sessions(self, session: date) -> None:
        for key in [key for key in self._entries if key[2] != session]:
            del self._entries[key], self._columns[key]
        for store in (self._snapshots, self._frames, self._contexts):
            for key in [key for key in store if key[0] != session]:
                del store[key]




def _window(dates: np.ndarray) -> tuple:
    dates = np.asarray(dates)
    return (str(dates[0]), str(dates[-1]), len(dates)) if len(dates) else ("", "", 0)


def _key(prepare: Prepare, dates: np.ndarray, session: date) -> tuple:
    return prepare.__module__, prepare.__qualname__, session, _window(dates)


def prepared(rt: Runtime, prepare: Prepare, history: Panel, session: date, symbols: Sequence[str]) -> Any:
    """The prepared history of `symbols` through the runtime's store when it has one."""
    cache = rt.history_cache
    return prepare(history, session, symbols) if cache is None else cache.get(prepare, history, session, symbols)


def market_snapshot(rt: Runtime, symbols: Sequence[str], session: date, fraction: float) -> Snapshot:
    """`rt.market.snapshot(...)`, or the same columns of a snapshot computed ahead."""
    cache = rt.history_cache
    ready = cache.snapshot(symbols, session, fraction) if cache is not None else None
    return ready if ready is not None else rt.market.snapshot(symbols, session, fraction)


def scan_frame(rt: Runtime, history: Panel, snap: Snapshot, rules: Any) -> pd.DataFrame:
    """The scanner's frame for the snapshot, or the same rows of a frame computed ahead."""

    cache = rt.history_cache
    ready = cache.frame(snap, rules, history.dates) if cache is not None else None
    if ready is not None:
        return ready
    return scanner.scan(prepared(rt, scanner.prepare, history, snap.session, snap.symbols), snap, rules)


# --- per-symbol columns of a prepared history ---------------------------------------------------------------------
# A prepared history is a dataclass (possibly nested) whose arrays hold one entry per symbol along their last axis,
# whose `symbols` list names them, and whose other values (session, row count, periods) are shared by all symbols.

def take_columns(value: Any, index: np.ndarray) -> Any:
    """The same prepared history restricted to (and reordered as) the columns `index`."""
    if isinstance(value, np.ndarray):
        return value[..., index]
    if isinstance(value, list):
        return [value[i] for i in index]
    if dataclasses.is_dataclass(value):
        return dataclasses.replace(value, **{f.name: take_columns(getattr(value, f.name), index)
                                             for f in dataclasses.fields(value)})
    return value


def join_columns(first: Any, second: Any) -> Any:
    """Two prepared histories of the same kind, session and window side by side (first's columns, then second's)."""
    if isinstance(first, np.ndarray):
        return np.concatenate([first, second], axis=-1)
    if isinstance(first, list):
        return first + second
    if dataclasses.is_dataclass(first):
        return dataclasses.replace(first, **{f.name: join_columns(getattr(first, f.name), getattr(second, f.name))
                                             for f in dataclasses.fields(first)})
    if first != second:
        raise ValueError(f"prepared histories disagree on a shared value: {first!r} != {second!r}")
    return first

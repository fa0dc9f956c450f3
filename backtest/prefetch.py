"""A backtest's market computations made ahead of its replay, in a second process.

A backtest replays sessions one after another in one process. For each session, the scanner and reversal history
of the whole universe, its snapshots at the cron moments, and the scan frames and market contexts of the scan
moments (flows/prepared_history.py) are pure computations on market data that do not depend on anything the replay does.
So a forked worker computes the coming sessions while the replay trades the current one, and hands them over
through a bounded queue. The worker runs the same functions on the same market object (it is forked from the
replaying process), so what it computes is what the replay would have computed.

The replay takes each session's results before its first step and seeds the runtime's store with them; whatever
the worker could not deliver is computed in the replaying process as usual. The worker never touches the journal
or the broker.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import queue as queues
from datetime import date
from typing import Any

import scanner
from core import reversal
from flows import scan

log = logging.getLogger(__name__)

SESSIONS_AHEAD = 6  # computed sessions waiting in the queue at most (each is one to two megabytes)
WAIT_SECONDS = 60.0  # a session the worker has not delivered by then is computed in the replaying process
PARENT_CHECK_SECONDS = 1.0  # while the queue is full, the worker looks this often whether the replay still exists


def _hand_over(out, item, parent: int) -> bool:
    """Put `item` on the queue, waiting while it is full; False once the replaying process is gone (a replay killed
    outright never drains the queue, and the worker must not wait for it for ever)."""
    while True:
        try:
            out.put(item, timeout=PARENT_CHECK_SECONDS)
            return True
        except queues.Full:
            if os.getppid() != parent:
                # what is already queued will never be read: exit without waiting to flush it into the pipe
                getattr(out, "cancel_join_thread", lambda: None)()
                return False


def _compute_sessions(market, calendar, days: list[date], symbols: list[str], moments: dict[date, list[tuple]],
                      out, parent: int) -> None:
    """The worker: each session's results (a dict, see `SessionPrefetch.seed`) in order, then None; a failure is
    reported as {"failed": reason}. `moments[day]`: (fraction, scan rules, scan universe) of each cron step of that
    session that reads a snapshot (rules and universe None for a monitor run)."""
    import signal
    import types


    # Ctrl-C on a terminal reaches the whole process group: the replay handles it and stops this worker
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ports = types.SimpleNamespace(market=market, calendar=calendar)  # what scan.market_context reads
    try:
        for day in days:
            start = calendar.sessions_back(day, scanner.HISTORY_SESSIONS)
            history = market.bars(symbols, start, calendar.previous_session(day))
            prepared = scanner.prepare(history, day, symbols)
            result = {"day": day, "dates": history.dates, "scanner": prepared,
                      "reversal": reversal.prepare(history, day, symbols), "snapshots": {}, "frames": [],
                      "contexts": []}
            snapshots = result["snapshots"]
            for fraction, rules, universe in moments.get(day, []):
                if fraction not in snapshots:
                    snapshots[fraction] = market.snapshot(symbols, day, fraction)
                if rules is not None:
                    result["frames"].append((fraction, rules, scanner.scan(prepared, snapshots[fraction], rules)))
                    result["contexts"].append((fraction, universe, scan.market_context(
                        ports, calendar.session(day), fraction, snapshots[fraction].select(universe))))
            if not _hand_over(out, result, parent):
                return
    except Exception as err:  # noqa: BLE001 - reported to the replay, which computes in process from here on
        _hand_over(out, {"failed": f"{type(err).__name__}: {err}"}, parent)
        return
    _hand_over(out, None, parent)


class SessionPrefetch:
    """Each of `days` computed ahead for `symbols` by a forked worker (a context manager around the worker)."""

    def __init__(self, rt, days: list[date], symbols: list[str], moments: dict[date, list[tuple]] | None = None):
        self.rt = rt
        self.days = list(days)
        self.symbols = list(symbols)
        self.moments = moments or {}
        self._queue: Any = None
        self._worker: Any = None
        self._done = False

    def __enter__(self) -> "SessionPrefetch":
        if not self.symbols or not self.days or "fork" not in multiprocessing.get_all_start_methods():
            self._done = True
            return self
        context = multiprocessing.get_context("fork")
        self._queue = context.Queue(maxsize=SESSIONS_AHEAD)
        market, calendar = self.rt.market, self.rt.calendar  # built before the fork, shared by both processes
        self._worker = context.Process(target=_compute_sessions, name="session-prefetch", daemon=True,
                                       args=(market, calendar, self.days, self.symbols, self.moments, self._queue,
                                             os.getpid()))
        self._worker.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._worker is not None:
            if self._worker.is_alive():
                self._worker.terminate()
            self._worker.join(timeout=5)
            self._queue.close()
            self._queue.cancel_join_thread()

    def seed(self, day: date) -> bool:
        """Put `day`'s results into the runtime's store; False when the worker has none for it."""
        cache = self.rt.history_cache
        if self._done or cache is None:
            return False
        while True:
            try:
                result = self._queue.get(timeout=WAIT_SECONDS)
            except queues.Empty:
                log.warning("session prefetch: nothing for %s after %.0f s; computing in process", day, WAIT_SECONDS)
                self._done = True
                return False
            if result is None or "failed" in result:
                if result is not None:
                    log.warning("session prefetch stopped: %s; computing in process", result["failed"])
                self._done = True
                return False
            if result["day"] < day:
                continue  # a session the replay skipped
            if result["day"] > day:
                log.warning("session prefetch: %s missing (next is %s); computing in process", day, result["day"])
                self._done = True
                return False
            self._store(cache, day, result)
            return True

    def _store(self, cache, day: date, result: dict) -> None:
        dates, snapshots = result["dates"], result["snapshots"]
        cache.seed(scanner.prepare, dates, day, self.symbols, result["scanner"])
        cache.seed(reversal.prepare, dates, day, self.symbols, result["reversal"])
        for fraction, snap in snapshots.items():
            cache.seed_snapshot(fraction, snap)
        for fraction, rules, frame in result["frames"]:
            cache.seed_frame(snapshots[fraction], rules, dates, frame)
        for fraction, universe, context in result["contexts"]:
            cache.seed_context(day, fraction, universe, context)

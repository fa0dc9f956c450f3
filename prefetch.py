"""Completed-session histories, snapshots and scan frames computed ahead of a backtest's replay, in a second
process.

A backtest replays sessions one after another in one process. Preparing each session's scanner and reversal
history for the whole universe, its snapshots at the cron moments and the scan frames of the scan moments
(history_cache.py) is pure computation on market data that does not depend on anything the replay does, so a
forked worker computes upcoming sessions while the replay trades the current one, and hands them over through a
bounded queue. The worker runs the same functions on the same market object (it
is forked from the replaying process), so the columns it prepares are the ones the replay would have prepared.

The replay takes each session's histories before its first step and seeds the runtime's history store with them;
a session the worker could not deliver is simply prepared in the replaying process as usual. The worker never
touches the journal or the broker.
"""
from __future__ import annotations

import logging
import multiprocessing
import queue as queues
from datetime import date
from typing import Any

log = logging.getLogger(__name__)

SESSIONS_AHEAD = 6  # prepared sessions waiting in the queue at most (each is a few hundred kilobytes)
WAIT_SECONDS = 60.0  # a session the worker has not delivered by then is prepared in the replaying process


def _prepare_sessions(market, calendar, days: list[date], symbols: list[str], moments: dict[date, list[tuple]],
                      out) -> None:
    """The worker: every session's prepared histories, snapshots at its moments, scan frames and market contexts,
    in order, then None. `moments[day]`: (fraction, scan rules, scan universe) of each cron step of that session
    that reads a snapshot (rules and universe None for a monitor run)."""
    import types

    import agent
    import reversal
    import scanner

    ports = types.SimpleNamespace(market=market, calendar=calendar)  # what agent.market_context reads

    try:
        for day in days:
            start = calendar.sessions_back(day, agent.HISTORY_SESSIONS)
            history = market.bars(symbols, start, calendar.previous_session(day))
            histories = {"scanner": scanner.prepare(history, day, symbols),
                         "reversal": reversal.prepare(history, day, symbols)}
            snapshots: dict[float, Any] = {}
            frames, contexts = [], []
            for fraction, rules, universe in moments.get(day, []):
                if fraction not in snapshots:
                    snapshots[fraction] = market.snapshot(symbols, day, fraction)
                if rules is not None:
                    frames.append((fraction, rules, scanner.scan(histories["scanner"], snapshots[fraction], rules)))
                    contexts.append((fraction, universe, agent.market_context(
                        ports, calendar.session(day), fraction, snapshots[fraction].select(universe))))
            out.put((day, history.dates, histories, snapshots, (frames, contexts)))
    except Exception as err:  # noqa: BLE001 - reported to the replay, which computes in process from here on
        out.put(("failed", None, f"{type(err).__name__}: {err}", None, (None, None)))
        return
    out.put(None)


class HistoryPrefetch:
    """Prepared histories of `symbols` for each of `days`, computed by a forked worker."""

    def __init__(self, rt, days: list[date], symbols: list[str], moments: dict[date, list[tuple]] | None = None):
        self.rt = rt
        self.days = list(days)
        self.symbols = list(symbols)
        self.moments = moments or {}
        self._queue: Any = None
        self._worker: Any = None
        self._done = False

    def __enter__(self) -> "HistoryPrefetch":
        if not self.symbols or not self.days or "fork" not in multiprocessing.get_all_start_methods():
            self._done = True
            return self
        context = multiprocessing.get_context("fork")
        self._queue = context.Queue(maxsize=SESSIONS_AHEAD)
        market, calendar = self.rt.market, self.rt.calendar  # built before the fork, shared by both processes
        self._worker = context.Process(target=_prepare_sessions, name="history-prefetch", daemon=True,
                                       args=(market, calendar, self.days, self.symbols, self.moments, self._queue))
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
        """Put `day`'s prepared histories into the runtime's store; False when the worker has none for it."""
        cache = self.rt.history_cache
        if self._done or cache is None:
            return False
        while True:
            try:
                item = self._queue.get(timeout=WAIT_SECONDS)
            except queues.Empty:
                log.warning("history prefetch: nothing for %s after %.0f s; preparing in process", day,
                            WAIT_SECONDS)
                self._done = True
                return False
            if item is None or item[0] == "failed":
                if item is not None:
                    log.warning("history prefetch stopped: %s; preparing in process", item[2])
                self._done = True
                return False
            prepared_day, dates, prepared, snapshots, (frames, contexts) = item
            if prepared_day < day:
                continue  # a session the replay skipped
            if prepared_day > day:
                log.warning("history prefetch: %s missing (next is %s); preparing in process", day, prepared_day)
                self._done = True
                return False
            import reversal
            import scanner

            cache.seed(scanner.prepare, dates, day, self.symbols, prepared["scanner"])
            cache.seed(reversal.prepare, dates, day, self.symbols, prepared["reversal"])
            for fraction, snap in snapshots.items():
                cache.seed_snapshot(fraction, snap)
            for fraction, rules, frame in frames:
                cache.seed_frame(snapshots[fraction], rules, dates, frame)
            for fraction, universe, context in contexts:
                cache.seed_context(day, fraction, universe, context)
            return True

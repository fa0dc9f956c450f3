"""Sessions computed ahead by the backtest's worker process: the same prepared histories, snapshots, scan frames
and market contexts the replay would compute itself, and a worker that fails leaves the replay computing in
process."""
from __future__ import annotations

from datetime import date

import numpy as np
import pytest

import scanner
from backtest import replay
from backtest.prefetch import SessionPrefetch
from core import reversal
from flows import scan

from realdata import BARS
from test_prepared_history import assert_same_prepared

DAYS = [date(2014, 3, 3), date(2014, 3, 4), date(2014, 3, 5)]


@pytest.fixture
def rt(real_universe, shared_cache, tmp_path):  # noqa: F811
    from config import load_config

    config = load_config({"UNIVERSE_FILE": str(real_universe), "DATA_SOURCE": f"csv:{BARS}", "BROKER": "sim",
                          "CACHE_DIR": str(shared_cache), "LOG_DIR": str(tmp_path / "logs"), "MOMENTUM_ASOF": ""})
    runtime = replay.backtest_runtime(config, tmp_path / "bt")
    yield runtime
    runtime.close()


def _history(rt, day: date, symbols: list[str]):
    cal = rt.calendar
    return rt.market.bars(symbols, cal.sessions_back(day, scanner.HISTORY_SESSIONS), cal.previous_session(day))


def test_the_worker_seeds_the_columns_the_replay_would_prepare(rt):
    universe = rt.universe.symbols("all")
    wanted = rt.universe.symbols("small")[:30] + rt.universe.symbols("large")[:5]
    with SessionPrefetch(rt, DAYS, universe) as ahead:
        for day in DAYS:
            assert ahead.seed(day)
            history = _history(rt, day, wanted)
            for prepare in (scanner.prepare, reversal.prepare):
                key_count = len(rt.history_cache._entries)
                assert_same_prepared(rt.history_cache.get(prepare, history, day, wanted), prepare(history, day, wanted))
                assert len(rt.history_cache._entries) == key_count  # served from the seeded entry


class FailingMarket:
    """The real market, except that bars for the worker's whole universe fail after the first session."""

    def __init__(self, inner, fail_after: date):
        self.inner, self.fail_after = inner, fail_after

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def bars(self, symbols, start, end):
        if end >= self.fail_after and len(symbols) > 100:
            raise RuntimeError("disk went away")
        return self.inner.bars(symbols, start, end)


def test_a_failing_worker_leaves_the_replay_to_prepare_in_process(rt, caplog):
    rt.__dict__["market"] = FailingMarket(rt.market, DAYS[0])  # the history of DAYS[1] ends on DAYS[0]
    with SessionPrefetch(rt, DAYS, rt.universe.symbols("all")) as ahead:
        assert ahead.seed(DAYS[0])
        assert not ahead.seed(DAYS[1])
        assert not ahead.seed(DAYS[2])
    assert "session prefetch stopped: RuntimeError: disk went away" in caplog.text
    wanted = rt.universe.symbols("mid")[:10]
    history = _history(rt, DAYS[2], wanted)
    assert_same_prepared(rt.history_cache.get(scanner.prepare, history, DAYS[2], wanted),
           scanner.prepare(history, DAYS[2], wanted))


def test_nothing_is_prefetched_for_a_live_feed_or_a_rebalance(rt):
    assert replay._prefetch_symbols(rt, "rebalance") == []
    assert len(replay._prefetch_symbols(rt, "momentum")) > 400
    rt.__dict__["history_cache"] = None
    assert replay._prefetch_symbols(rt, "momentum") == []
    with SessionPrefetch(rt, DAYS, []) as ahead:
        assert not ahead.seed(DAYS[0])


def test_seeded_snapshots_scan_frames_and_contexts_are_the_direct_ones(rt):
    import pandas as pd

    from flows.prepared_history import market_snapshot, scan_frame

    day = DAYS[1]
    session = rt.calendar.session(day)
    small = rt.universe.symbols("small")
    steps = [s for s in replay.session_steps(session, "momentum", "all") if s.kind in ("scan", "monitor")]
    moments = {day: replay._step_moments(rt, session, "momentum", "all")}
    with SessionPrefetch(rt, [day], rt.universe.symbols("all"), moments) as ahead:
        assert ahead.seed(day)
    scans = [s for s in steps if s.kind == "scan" and s.cap == "small"]
    assert len(scans) == 3
    for step in scans:
        fraction = rt.calendar.current_or_last_session(step.moment)[1]
        wanted = small + rt.universe.symbols("large")[:3]  # a scan's universe plus holdings of another cap
        seeded = rt.history_cache.snapshot(wanted, day, fraction)
        assert seeded is not None
        direct = rt.market.snapshot(wanted, day, fraction)
        for name in ("open", "high", "low", "price", "volume", "prev_close", "bid", "ask"):
            np.testing.assert_array_equal(getattr(seeded, name), getattr(direct, name))
        history = _history(rt, day, wanted)
        rules = scan.cap_rules(rt.config, "small")
        assert rt.history_cache.frame(seeded, rules, history.dates) is not None
        pd.testing.assert_frame_equal(scan_frame(rt, history, market_snapshot(rt, wanted, day, fraction), rules),
                                      scanner.scan(history, direct, rules))
        assert rt.history_cache.context(day, fraction, small) is not None
        assert scan.scan_context(rt, session, fraction, seeded, small) == scan.market_context(
            rt, session, fraction, direct.select(small))
    # a moment the worker did not compute, or a symbol outside its universe, is computed directly
    assert rt.history_cache.snapshot(small, day, 0.123) is None
    assert rt.history_cache.snapshot(["NOT_A_SYMBOL"], day, fraction) is None


def test_a_worker_whose_replay_is_gone_stops_waiting_on_a_full_queue(monkeypatch):
    import queue

    from backtest import prefetch

    full = queue.Queue(maxsize=1)
    full.put("waiting")
    monkeypatch.setattr(prefetch, "PARENT_CHECK_SECONDS", 0.01)
    assert prefetch._hand_over(full, "next", parent=-1) is False  # -1 is never this process's parent
    roomy = queue.Queue(maxsize=2)
    assert prefetch._hand_over(roomy, "next", parent=-1) is True and roomy.get() == "next"

"""The shared request budget: counting across instances and processes, waits, server-imposed pauses."""
from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from common.errors import Unavailable
from ports.request_budget import RequestBudget

from conftest import FakeTime


@pytest.fixture
def clock() -> FakeTime:
    return FakeTime()


def budget(path: Path, clock: FakeTime, per_minute: int = 3) -> RequestBudget:
    return RequestBudget(path, per_minute, now=clock.now, sleep=clock.sleep)


def test_two_budgets_on_one_file_share_the_count(tmp_path, clock):
    first, second = budget(tmp_path / "b.db", clock), budget(tmp_path / "b.db", clock)
    for owner in (first, second, first):
        assert owner.acquire() == 0.0
        clock.t += 10
    assert first.used() == 3 and second.used() == 3
    # Requests were at t0, t0+10, t0+20; now t0+30: the next slot frees when t0 leaves the 60 s window.
    assert second.acquire() == pytest.approx(30.0)
    assert clock.sleeps == [pytest.approx(30.0)]
    assert first.used() == 3  # t0 expired, t0+10, t0+20, t0+60 counted


def test_wait_is_measured_from_the_oldest_request_in_the_window(tmp_path, clock):
    shared = budget(tmp_path / "b.db", clock, per_minute=2)
    shared.acquire()
    clock.t += 5
    shared.acquire()
    clock.t += 5
    assert shared.acquire() == pytest.approx(50.0)  # first request at t0 leaves the window at t0+60
    assert shared.acquire() == pytest.approx(5.0)  # the t0+5 one leaves at t0+65
    assert clock.sleeps == [pytest.approx(50.0), pytest.approx(5.0)]


def test_under_the_limit_nothing_waits(tmp_path, clock):
    shared = budget(tmp_path / "b.db", clock, per_minute=180)
    assert [shared.acquire() for _ in range(180)] == [0.0] * 180
    assert clock.sleeps == []


def test_block_until_is_honoured_by_every_instance(tmp_path, clock):
    first, second = budget(tmp_path / "b.db", clock), budget(tmp_path / "b.db", clock)
    first.block_until(clock.now() + 12.5)
    first.block_until(clock.now() + 3.0)  # an earlier reset never shortens a recorded pause
    assert second.acquire() == pytest.approx(12.5)
    assert second.acquire() == 0.0  # the pause is over
    assert clock.sleeps == [pytest.approx(12.5)]


def test_a_past_pause_costs_nothing(tmp_path, clock):
    shared = budget(tmp_path / "b.db", clock)
    shared.block_until(clock.now() - 1)
    assert shared.acquire() == 0.0


def test_a_briefly_locked_file_is_waited_for(tmp_path):
    path = tmp_path / "b.db"
    shared = RequestBudget(path, 10)
    shared.acquire()  # creates the schema
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    releaser = threading.Timer(0.3, lambda: holder.execute("COMMIT"))
    releaser.start()
    try:
        started = time.monotonic()
        assert shared.acquire() == 0.0
        assert time.monotonic() - started >= 0.25  # it really waited for the other writer
    finally:
        releaser.join()
        holder.close()
    assert shared.used() == 2


def test_a_file_locked_for_good_is_a_clear_error(tmp_path):
    path = tmp_path / "b.db"
    shared = RequestBudget(path, 10, busy_timeout=0.05)
    shared.acquire()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(Unavailable, match="stayed locked"):
            shared.acquire()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert shared.acquire() == 0.0  # usable again once the other writer is gone


@pytest.mark.parametrize("per_minute,window", [(0, 60.0), (1, 0.0)])
def test_bad_settings_are_refused(tmp_path, per_minute, window):
    with pytest.raises(ValueError):
        RequestBudget(tmp_path / "b.db", per_minute, window=window)


def _take_slots(path: str, per_window: int, window: float, count: int, out) -> None:
    """Child process: take `count` slots and report the timestamp each one was recorded under."""
    last_now = [0.0]

    def now() -> float:
        last_now[0] = time.time()
        return last_now[0]

    shared = RequestBudget(Path(path), per_window, now=now, window=window)
    stamps = []
    for _ in range(count):
        shared.acquire()
        stamps.append(last_now[0])  # the successful attempt is the last clock reading
    out.put(stamps)


@pytest.mark.slow
def test_processes_together_never_exceed_the_limit(tmp_path):
    per_window, window, processes, each = 4, 0.5, 3, 4
    context = multiprocessing.get_context("spawn")  # fork would copy locks held by server threads
    out = context.Queue()
    workers = [context.Process(target=_take_slots, args=(str(tmp_path / "b.db"), per_window, window, each, out))
               for _ in range(processes)]
    for worker in workers:
        worker.start()
    stamps = sorted(s for _ in workers for s in out.get(timeout=30))
    for worker in workers:
        worker.join(timeout=30)
        assert worker.exitcode == 0
    assert len(stamps) == processes * each
    for stamp in stamps:
        in_window = [s for s in stamps if stamp - window < s <= stamp]
        assert len(in_window) <= per_window
    # 12 requests at 4 per 0.5 s need at least two full windows.
    assert stamps[-1] - stamps[0] >= 2 * window - 0.01

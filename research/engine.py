"""The distributed engine: Dask.

With no address, a local cluster on this machine's cores (one single-threaded worker process per core: a trial is a
CPU-bound process of its own, so more threads would only queue); with `--cluster ADDRESS`, the running scheduler at
that address and whatever workers have joined it. A worker that dies mid-trial loses only that trial: the scheduler
gives it to another worker, up to ALLOWED_FAILURES times, then the study records it as failed and goes on.
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
from typing import Any, Iterator

from common.errors import ConfigError, DataUnavailable

ALLOWED_FAILURES = 2  # a trial whose worker died is run again this many times before it is recorded as failed
CONNECT_TIMEOUT_S = 20
TRIAL_MODULE = "research.trial"  # every process of a cluster imports it: the scheduler unpickles each trial's task


@contextlib.contextmanager
def cluster(address: str | None = None, workers: int | None = None) -> Iterator[Any]:
    """A dask.distributed Client: on a local cluster (`workers` processes, default one per core) or on the
    scheduler at `address`."""
    import dask
    from dask.distributed import Client, LocalCluster

    with dask.config.set({"distributed.scheduler.allowed-failures": ALLOWED_FAILURES,
                          "distributed.admin.tick.limit": "1h"}):  # a trial holds its thread for minutes
        if address:
            try:
                client = Client(address, timeout=CONNECT_TIMEOUT_S)
            except (OSError, TimeoutError) as err:
                raise DataUnavailable(f"--cluster {address}: no scheduler answered ({err})") from None
            try:
                if not client.scheduler_info().get("workers"):
                    try:
                        client.wait_for_workers(1, timeout=CONNECT_TIMEOUT_S)
                    except TimeoutError:
                        raise DataUnavailable(f"--cluster {address}: no worker joined the scheduler within "
                                              f"{CONNECT_TIMEOUT_S} s") from None
                check_code(client, address)
                yield client
            finally:
                client.close()
            return
        count = workers or os.cpu_count() or 1
        if count < 1:
            raise ConfigError(f"--workers: expected at least 1, got {count}")
        # on the loopback interface only, its web page on any free port: nothing is served to the network
        local = LocalCluster(n_workers=count, threads_per_worker=1, processes=True, host="127.0.0.1",
                             dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR)
        try:
            client = Client(local)
            try:
                yield client
            finally:
                client.close()
        finally:
            local.close()


def check_code(client: Any, address: str) -> None:
    """Refuse a cluster whose scheduler or workers cannot import the trial's code. The scheduler unpickles every task,
    so without it each trial fails at once with a deserialization error, and a failed trial counts as finished:
    the study would end "done" with nothing run, and --resume would not run those trials again."""
    def probe() -> bool:  # a local function: pickled by value, so the far end need not import research to run it
        try:
            return importlib.util.find_spec(TRIAL_MODULE) is not None
        except ImportError:  # not even its package
            return False

    missing = [] if client.run_on_scheduler(probe) else ["the scheduler"]
    missing += sorted(f"worker {worker}" for worker, found in client.run(probe).items() if not found)
    if missing:
        raise ConfigError(f"--cluster {address}: {', '.join(missing)} cannot import {TRIAL_MODULE}; start the "
                          "scheduler and every worker with this checkout importable (PYTHONPATH=CHECKOUT) in the same "
                          "virtualenv")


def capacity(client: Any) -> int:
    """How many trials can run at once: the worker threads the scheduler knows of."""
    return max(1, sum(client.nthreads().values()))

"""Scanner throughput on synthetic panels: 500, 5,000 and 20,000 symbols x 80 sessions (best of 3 runs).

Run as `python bench/bench_scanner.py`; a suite runner can call `run()` and get one dict per panel size.
"""
from __future__ import annotations

import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.types import Panel, Snapshot  # noqa: E402
from core.volume_profile import volume_fraction  # noqa: E402
from scanner import CAP_RULES, scan  # noqa: E402

SIZES = (500, 5_000, 20_000)
SESSIONS = 80
REPEATS = 3
SESSION = date(2024, 6, 3)
FRACTION = 60.0 / 390.0


def synthetic_bars(symbols: int, sessions: int, seed: int) -> dict[str, np.ndarray]:
    """Random-walk daily bars, sessions + 1 rows (the last row is today's full bar)."""
    rng = np.random.default_rng(seed)
    shape = (sessions + 1, symbols)
    close = rng.uniform(8.0, 300.0, symbols) * np.exp(np.cumsum(rng.normal(0.0005, 0.02, shape), axis=0))
    open_ = close * np.exp(rng.normal(0.0, 0.01, shape))
    high = np.maximum(open_, close) * (1.0 + rng.uniform(0.0, 0.02, shape))
    low = np.minimum(open_, close) * (1.0 - rng.uniform(0.0, 0.02, shape))
    volume = rng.uniform(2e5, 5e6, symbols) * rng.lognormal(0.0, 0.4, shape)
    return {"open": open_, "high": high, "low": low, "close": close, "volume": volume}


def synthetic_inputs(symbols: int, sessions: int = SESSIONS, seed: int = 7) -> tuple[Panel, Snapshot]:
    bars = synthetic_bars(symbols, sessions, seed)
    names = [f"S{j:05d}" for j in range(symbols)]
    dates = np.datetime64(SESSION, "D") - np.arange(sessions, 0, -1)
    history = Panel(dates=dates, symbols=names, **{name: values[:-1] for name, values in bars.items()})
    # an intraday snapshot an hour into the session: a price near the open and a range so far around both
    rng = np.random.default_rng(seed + 1)
    o = bars["open"][-1]
    price = o * np.exp(rng.normal(0.0, 0.008, symbols))
    high_so_far = np.maximum(o, price) * (1.0 + rng.uniform(0.0, 0.006, symbols))
    low_so_far = np.minimum(o, price) * (1.0 - rng.uniform(0.0, 0.006, symbols))
    snap = Snapshot(session=SESSION, fraction=FRACTION, symbols=names, open=o, high=high_so_far, low=low_so_far,
                    price=price, volume=bars["volume"][-1] * volume_fraction(FRACTION),
                    prev_close=bars["close"][-2], bid=price, ask=price)
    return history, snap


def time_scan(symbols: int) -> dict:
    history, snap = synthetic_inputs(symbols)
    timings = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        frame = scan(history, snap, CAP_RULES["large"])
        timings.append(time.perf_counter() - started)
    best = min(timings)
    return {"symbols": symbols, "sessions": SESSIONS, "seconds": best, "us_per_symbol": best / symbols * 1e6,
            "stage1": int(frame["stage1"].sum()), "stage2": int(frame["stage2"].sum())}


def run() -> list[dict]:
    return [time_scan(symbols) for symbols in SIZES]


def main() -> None:
    print(f"{'symbols':>8} {'seconds':>9} {'us/symbol':>10} {'stage1':>7} {'stage2':>7}")
    for result in run():
        print(f"{result['symbols']:>8} {result['seconds']:>9.4f} {result['us_per_symbol']:>10.2f} "
              f"{result['stage1']:>7} {result['stage2']:>7}")


if __name__ == "__main__":
    main()

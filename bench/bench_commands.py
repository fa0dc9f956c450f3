"""Whole-process timings, measured the way cron runs the agent: process start to exit.

- `status` on the embedded sim with a fresh journal and sim broker (cold) and again on the same files (warm);
- a monitor run with six open positions (all due), process start to exit;
- the trading scan of the same data set on the sim broker (fresh journal, warm cache), orders and stops included;
- the dry-run scan of the 505-stock real data set (../shared/data/sp500_daily_2013_2018.csv.gz) at
  2016-11-09 10:30 with a universe built from that file, cold (no parsed-data cache) and warm.

Each figure is the median of REPEATS runs. Run as `python bench/bench_commands.py`; `run()` returns the rows.
"""
from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REAL_BARS = ROOT.parent / "shared" / "data" / "sp500_daily_2013_2018.csv.gz"
REPEATS = 5


def _timed(args: list[str], env_dir: Path) -> float:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(env_dir), "LOG_DIR": str(env_dir / "logs"),
           "CACHE_DIR": str(env_dir / "cache"), "MOMENTUM_DB": str(env_dir / "trades.db")}
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "main.py"), *args], capture_output=True, text=True,
                          env=env, timeout=300)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return elapsed


def _median(args_for: list[str], work: Path, *, fresh_each_time: bool) -> float:
    times = []
    for _ in range(REPEATS):
        if fresh_each_time:
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
        times.append(_timed(args_for, work))
    return statistics.median(times)


def run() -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        status = ["--asof", "2016-11-09T10:30", "status"]
        rows.append({"name": "status (fresh journal)", "seconds": _median(status, base / "s1", fresh_each_time=True)})
        rows.append({"name": "status (warm)", "seconds": _median(status, base / "s1", fresh_each_time=False)})
        if REAL_BARS.exists():
            rows += _real_scan_rows(base)
    return rows


def _real_scan_rows(base: Path) -> list[dict]:
    universe = base / "universe.json"
    subprocess.run([sys.executable, str(ROOT / "main.py"), "universe", "build", "--from", str(REAL_BARS), "--by",
                    "dollar-volume", "--out", str(universe)], check=True, capture_output=True, env={
                        "PATH": "/usr/bin:/bin", "LOG_DIR": str(base / "logs"), "MOMENTUM_DB": str(base / "u.db")})
    scan = ["--data", f"csv:{REAL_BARS}", "--universe", str(universe), "--asof", "2016-11-09T10:30", "scan",
            "--cap", "all", "--dry-run"]
    cold = _median(scan, base / "cold", fresh_each_time=True)
    warm_dir = base / "warm"
    warm_dir.mkdir()
    _timed(scan, warm_dir)  # fills the parsed-data cache
    warm = _median(scan, warm_dir, fresh_each_time=False)
    trading = [arg for arg in scan if arg != "--dry-run"]
    trade_times = []
    for n in range(REPEATS):
        work = base / f"trade{n}"
        shutil.copytree(warm_dir / "cache", work / "cache")
        trade_times.append(_timed(trading, work))
    monitor_times = _monitor_times(base, universe, warm_dir / "cache")
    return [{"name": "monitor, 6 open positions", "seconds": statistics.median(monitor_times)},
            {"name": "dry-run scan, 505 real stocks, cold cache", "seconds": cold},
            {"name": "dry-run scan, 505 real stocks, warm cache", "seconds": warm},
            {"name": "trading scan, 505 real stocks (sim broker)", "seconds": statistics.median(trade_times)}]


def _monitor_times(base: Path, universe: Path, cache: Path) -> list[float]:
    """A journal with six open positions (two trading scans with skip-buy mode off), then one monitor run per copy:
    every position is due, so each run checks all six."""
    common = ["--data", f"csv:{REAL_BARS}", "--universe", str(universe)]
    setup = base / "monitor-setup"
    shutil.copytree(cache, setup / "cache")
    _timed([*common, "set", "skip_buys", "off"], setup)
    for asof in ("2016-11-09T10:30", "2016-11-10T12:30"):
        _timed([*common, "--asof", asof, "scan", "--cap", "all"], setup)
    times = []
    for n in range(REPEATS):
        work = base / f"monitor{n}"
        shutil.copytree(setup, work)
        times.append(_timed([*common, "--asof", "2016-11-10T13:00", "monitor"], work))
    return times


def main() -> None:
    for row in run():
        print(f"{row['name']:<45} {row['seconds']:>7.3f} s")


if __name__ == "__main__":
    main()

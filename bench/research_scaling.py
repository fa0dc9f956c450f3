"""How research sweeps scale with the cluster: the same sweep of N trials on a local cluster of 1 worker, then of 2.

The sweep is a grid (`--param trailing_stop_pct=V1,...,VN`), so both runs backtest exactly the same N settings (TPE
would propose different ones depending on which trial ended first), plus the default settings beside them: N + 1
full momentum backtests on the 505-stock real data set (../shared/data/sp500_daily_2013_2018.csv.gz), by default
over bench_backtest.FIVE_YEARS (the data ends 2018-02-07). Each run is `python main.py research sweep` measured from
process start to exit (cluster start and shutdown included), on a parsed-data cache filled beforehand. Trials per
hour count every backtest the study ran; the ratio is 2 workers' rate over 1 worker's. A backtest also uses a
prefetch worker process beside it, so on a 2-core machine two trials at once share 2 cores between 4 processes.

Run as `python bench/research_scaling.py` (`--start 2016-01-04 --end 2016-06-30` for a short try, `--trials N`,
`--workers 1,2,4`); `run()` returns the rows.
"""
from __future__ import annotations

import argparse
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_backtest import FIVE_YEARS  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
REAL_BARS = ROOT.parent / "shared" / "data" / "sp500_daily_2013_2018.csv.gz"
TRIALS = 4
WORKERS = (1, 2)
STOP_RANGE = (4.0, 12.0)  # trailing_stop_pct: the grid spreads N values over it


def grid_values(trials: int) -> str:
    """N distinct trailing-stop values spread evenly over STOP_RANGE, as a --param list."""
    low, high = STOP_RANGE
    if trials == 1:
        return f"{low:g}"
    return ",".join(f"{low + (high - low) * n / (trials - 1):.4g}" for n in range(trials))


def _main(args: list[str], env: dict[str, str], timeout: float = 6 * 3600) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, str(ROOT / "main.py"), *args], capture_output=True, text=True, env=env,
                          timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:6])} ... failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return done


def run(start: str = FIVE_YEARS[0], end: str = FIVE_YEARS[1], trials: int = TRIALS,
        workers: tuple[int, ...] = WORKERS) -> list[dict] | None:
    """One row per cluster size: workers, wall seconds, trials run, trials per hour, mean seconds per trial."""
    if not REAL_BARS.exists():
        return None
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        env = {"PATH": "/usr/bin:/bin", "HOME": str(base), "LOG_DIR": str(base / "logs"),
               "CACHE_DIR": str(base / "cache"), "MOMENTUM_DB": str(base / "unused" / "trades.db"),
               "MPLCONFIGDIR": str(base / "matplotlib")}
        universe = base / "universe.json"
        _main(["universe", "build", "--from", str(REAL_BARS), "--by", "dollar-volume", "--out", str(universe)], env)
        _main(["--data", f"csv:{REAL_BARS}", "--universe", str(universe), "--asof", "2016-11-09T10:30", "scan",
               "--cap", "large", "--dry-run"], env)  # fills the parsed-data cache, so no run pays for it
        for count in workers:
            out = base / f"workers-{count}"
            started = time.perf_counter()
            _main(["--data", f"csv:{REAL_BARS}", "--universe", str(universe), "research", "sweep", "--start", start,
                   "--end", end, "--param", f"trailing_stop_pct={grid_values(trials)}", "--workers", str(count),
                   "--out", str(out)], env)
            seconds = time.perf_counter() - started
            with sqlite3.connect(out / "research.db") as db:
                walls = [row[0] for row in db.execute("SELECT wall_s FROM trials WHERE status = 'done'")]
                failed = db.execute("SELECT COUNT(*) FROM trials WHERE status != 'done'").fetchone()[0]
            if failed:
                raise RuntimeError(f"{failed} trial(s) of the {count}-worker sweep did not finish; see {out}")
            rows.append({"workers": count, "seconds": seconds, "trials": len(walls),
                         "per_hour": len(walls) / seconds * 3600, "trial_s": sum(walls) / len(walls)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--start", default=FIVE_YEARS[0])
    parser.add_argument("--end", default=FIVE_YEARS[1])
    parser.add_argument("--trials", type=int, default=TRIALS, help="grid size (the default settings run beside)")
    parser.add_argument("--workers", default=",".join(map(str, WORKERS)), help="cluster sizes, e.g. 1,2")
    options = parser.parse_args()
    rows = run(options.start, options.end, options.trials, tuple(int(n) for n in options.workers.split(",")))
    if rows is None:
        print(f"skipped: {REAL_BARS} is not present")
        return
    print(f"research sweep, momentum {options.start}..{options.end}, {options.trials} trials + the defaults")
    print(f"{'workers':>7}  {'wall s':>8}  {'trials':>6}  {'trials/hour':>11}  {'s/trial':>8}")
    for row in rows:
        print(f"{row['workers']:>7}  {row['seconds']:>8.1f}  {row['trials']:>6}  {row['per_hour']:>11.1f}  "
              f"{row['trial_s']:>8.1f}")
    for row in rows[1:]:
        print(f"{row['workers']} workers / {rows[0]['workers']}: {row['per_hour'] / rows[0]['per_hour']:.2f}x "
              "the trials per hour")


if __name__ == "__main__":
    main()

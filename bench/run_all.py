"""The benchmark suite: every figure the project promises, in one table.

Run as `python bench/run_all.py`. Figures are wall-clock on this machine; compare them with the targets, not
with each other across machines.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_backtest  # noqa: E402
import bench_commands  # noqa: E402
import bench_scanner  # noqa: E402
import research_scaling  # noqa: E402

TARGETS = {
    "status (fresh journal)": "-",
    "status (warm)": "-",
    "dry-run scan, 505 real stocks, cold cache": "< 3 s",
    "dry-run scan, 505 real stocks, warm cache": "< 3 s",
    "trading scan, 505 real stocks (sim broker)": "-",
    "monitor, 6 open positions": "< 1.5 s",
}


def main() -> None:
    rows = [(row["name"], f"{row['seconds']:.3f} s", TARGETS.get(row["name"], "-")) for row in bench_commands.run()]
    for result in bench_scanner.run():
        rows.append((f"scanner alone, {result['symbols']:,} synthetic symbols",
                     f"{result['seconds']:.3f} s ({result['us_per_symbol']:.1f} us/symbol)",
                     "< 5 s at 5,000; flat per symbol"))
    for result in bench_backtest.run_alpaca_requests():
        paths = ", ".join(f"{path.rsplit('/', 1)[-1]} {n}" for path, n in result["by_path"].items())
        rows.append((f"Alpaca requests per scan, {result['symbols']} symbols (fake Alpaca)",
                     f"{result['total']} ({paths})", "O(symbols / 200)"))
    backtest = bench_backtest.run_backtest()
    if backtest is not None:
        start, end = bench_backtest.FIVE_YEARS
        rows.append((f"backtest, momentum, 505 real stocks, {start}..{end}",
                     f"{backtest['seconds']:.1f} s, peak {backtest['peak_mb']:.0f} MB "
                     f"(+ prefetch worker {backtest['worker_peak_mb']:.0f} MB)", "< 120 s on 2 cores"))
    scaling = research_scaling.run() or []  # the same sweep on a local cluster of 1 worker, then of 2
    start, end = bench_backtest.FIVE_YEARS
    for row in scaling:
        ratio = f" ({row['per_hour'] / scaling[0]['per_hour']:.2f}x 1 worker)" if row is not scaling[0] else ""
        rows.append((f"research sweep, {row['trials']} momentum backtests {start}..{end}, {row['workers']} worker(s)",
                     f"{row['per_hour']:.1f} trials/hour{ratio}", "-"))
    width = max(len(name) for name, _, _ in rows)
    print(f"{'benchmark'.ljust(width)}  {'measured':<28}  target")
    for name, measured, target in rows:
        print(f"{name.ljust(width)}  {measured:<28}  {target}")
    if backtest is not None:
        print()
        print(backtest["text"].rstrip())


if __name__ == "__main__":
    main()

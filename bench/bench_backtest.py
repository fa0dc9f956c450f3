"""The five-year backtest and the Alpaca request count per scan.

- The full momentum system on the 505-stock real data set (../shared/data/sp500_daily_2013_2018.csv.gz, data from
  2013-02-08 to 2018-02-07). A scan needs 120 sessions of history before its day, so the run starts on 2013-08-01
  (the first session with that much data) and ends on 2018-02-07. Measured in a child process: wall time from process
  start to exit, and its peak memory (resource.getrusage maxrss), with that of the backtest's prefetch worker.
- Alpaca requests per dry-run scan (`scan --cap all --dry-run`, DATA_SOURCE=alpaca, BROKER=alpaca) counted by path
  at the local fake Alpaca server (tests/fake_alpaca.py, started in this process), for universes of 200, 400 and
  800 synthetic symbols written to a temporary universe file.

Run as `python bench/bench_backtest.py` (add `--all-systems` for the two rebalance systems too, `--no-alpaca` to skip
the request count); `run_backtest()` and `run_alpaca_requests()` return the figures.
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REAL_BARS = ROOT.parent / "shared" / "data" / "sp500_daily_2013_2018.csv.gz"
FIVE_YEARS = ("2013-08-01", "2018-02-07")
UNIVERSE_SIZES = (200, 400, 800)


def _child_backtest(out_dir: str, universe: str, cache: str, start: str, end: str, system: str) -> None:
    """Runs inside the measured child: the backtest command, then its own peak memory and that of its prefetch
    worker (a forked process: its resident set counts the pages it shares with this one) as JSON on stdout."""
    sys.path.insert(0, str(ROOT))
    from click.testing import CliRunner

    from main import cli

    result = CliRunner().invoke(cli, ["--universe", universe, "backtest", "--start", start, "--end", end, "--data",
                                      f"csv:{REAL_BARS}", "--system", system, "--out", out_dir],
                                catch_exceptions=False)
    peak_kb = _own_peak_kb()
    worker_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"exit_code": result.exit_code, "output": result.output, "peak_mb": peak_kb / 1024,
                      "worker_peak_mb": worker_kb / 1024}))


def _own_peak_kb() -> float:
    """This process's peak resident set. Linux's ru_maxrss carries over the high-water mark of the process image
    before exec (a copy of the benchmark runner, which may be large), so the kernel's VmHWM of the current image is
    read when there is one."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1])
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def run_backtest(start: str = FIVE_YEARS[0], end: str = FIVE_YEARS[1], system: str = "momentum") -> dict | None:
    if not REAL_BARS.exists():
        return None
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        env = {"PATH": "/usr/bin:/bin", "HOME": str(base), "LOG_DIR": str(base / "logs"),
               "CACHE_DIR": str(base / "cache"), "MOMENTUM_DB": str(base / "unused" / "trades.db"),
               "MPLCONFIGDIR": str(base / "matplotlib")}
        # matplotlib builds its font cache on first use in a fresh HOME, with a helper process that would count
        # as the backtest's child; build it beforehand so that the children measured are the prefetch worker
        subprocess.run([sys.executable, "-c", "import matplotlib.font_manager"], check=True, capture_output=True,
                       env=env)
        universe = base / "universe.json"
        subprocess.run([sys.executable, str(ROOT / "main.py"), "universe", "build", "--from", str(REAL_BARS), "--by",
                        "dollar-volume", "--out", str(universe)], check=True, capture_output=True, env=env)
        subprocess.run([sys.executable, str(ROOT / "main.py"), "--data", f"csv:{REAL_BARS}", "--universe",
                        str(universe), "--asof", "2016-11-09T10:30", "scan", "--cap", "large", "--dry-run"],
                       check=True, capture_output=True, env=env)  # fills the parsed-data cache first
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--child", str(base / "bt"), str(universe),
                               str(base / "cache"), start, end, system], capture_output=True, text=True, env=env)
        seconds = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(f"backtest failed: {proc.stderr.strip()[-2000:]}")
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        metrics = json.loads((base / "bt" / "metrics.json").read_text())
    return {"seconds": seconds, "peak_mb": report["peak_mb"], "worker_peak_mb": report["worker_peak_mb"],
            "metrics": metrics, "text": report["output"]}


def _universe_file(path: Path, count: int) -> None:
    symbols = [f"SYM{n:04d}" for n in range(count)]
    third = count // 3
    path.write_text(json.dumps({"symbols": {"large": symbols[:third], "mid": symbols[third:2 * third],
                                            "small": symbols[2 * third:]}}))


def run_alpaca_requests(sizes=UNIVERSE_SIZES) -> list[dict]:
    """One dry-run scan of every cap per universe size; requests at the fake server by path."""
    sys.path.insert(0, str(ROOT / "tests"))
    sys.path.insert(0, str(ROOT))
    from fake_alpaca import FakeAlpaca

    fake = FakeAlpaca().start()
    rows = []
    try:
        for size in sizes:
            with tempfile.TemporaryDirectory() as tmp:
                base = Path(tmp)
                _universe_file(base / "universe.json", size)
                env = {"PATH": "/usr/bin:/bin", "HOME": str(base), "LOG_DIR": str(base / "logs"),
                       "MOMENTUM_DB": str(base / "trades.db"), "UNIVERSE_FILE": str(base / "universe.json"),
                       "DATA_SOURCE": "alpaca", "BROKER": "alpaca", "ALPACA_DATA_URL": fake.url,
                       "ALPACA_TRADING_URL": fake.url, "ALPACA_API_KEY": "PKBENCH12345678",
                       "ALPACA_SECRET_KEY": "benchsecret1234567890", "ALPACA_REQUESTS_PER_MIN": "1000"}
                fake.clear_log()
                proc = subprocess.run([sys.executable, str(ROOT / "main.py"), "--asof", "2024-06-14T11:00", "scan",
                                       "--cap", "all", "--dry-run"], capture_output=True, text=True, env=env,
                                      timeout=300)
                if proc.returncode != 0:
                    raise RuntimeError(f"alpaca scan of {size} symbols failed: {proc.stderr.strip()}")
                by_path = Counter(r.path for r in fake.requests)
                rows.append({"symbols": size, "total": sum(by_path.values()), "by_path": dict(sorted(by_path.items()))})
    finally:
        fake.stop()
    return rows


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child_backtest(*sys.argv[2:8])
        return
    systems = ["momentum", "rebalance", "rebalance-regime"] if "--all-systems" in sys.argv else ["momentum"]
    if "--no-alpaca" not in sys.argv:
        for row in run_alpaca_requests():
            print(row)
    for system in systems:
        result = run_backtest(system=system)
        if result:
            print(result["text"])
            print(f"{system}: wall {result['seconds']:.1f} s, peak memory {result['peak_mb']:.0f} MB "
                  f"(prefetch worker {result['worker_peak_mb']:.0f} MB)")


if __name__ == "__main__":
    main()

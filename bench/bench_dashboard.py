"""The dashboard's write time on a five-year backtest journal: what every scan, monitor run and job adds to its run.

A backtest's journal is the largest a trading journal gets in a test of time (years of scans, candidates, position
checks, daily snapshots and trades), so the dashboard written over it (Now, Performance and Runs: gather from the
journal, render, write atomically) bounds what a cron run pays. Measured in a fresh process, as a command does it:

- first write: Jinja2 imported, the templates loaded (from Jinja2's bytecode cache once a run has compiled them);
- warm write: the median of REPEATS further writes in the same process;
- the backtest's tearsheet (metrics, charts, monthly returns and every trade) written again from its folder.

    python bench/bench_dashboard.py [BACKTEST_DIR]

BACKTEST_DIR is a `backtest --out` folder (trades.db, metrics.json); its journal is copied first, so nothing in it
changes. Without one, the five-year momentum backtest (2014-01-02..2018-12-31 over the real 2013-2018 data,
bench/bench_backtest.py's window) is run into a temporary folder first, which takes a few minutes.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REAL_BARS = ROOT.parent / "shared" / "data" / "sp500_daily_2013_2018.csv.gz"
FIVE_YEARS = ("2014-01-02", "2018-12-31")
REPEATS = 5
GOAL_S = 1.0

# Runs in a fresh process, so the first write pays what a command pays: Jinja2's import and the templates' load.
MEASURE = """
import json, statistics, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from config import load_config
from flows import dashboard
from flows.runtime import Runtime

work, out_dir, repeats = Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
config = load_config({"MOMENTUM_DB": str(work / "trades.db"), "DASHBOARD_DIR": str(work / "dashboard"),
                      "LOG_DIR": str(work / "logs")}, environ={}, dotenv_path=work / "none.env")
rt = Runtime(config, "bench")
rt.journal  # opened (and brought to the current schema) before the clock starts, as a command has it by its end
started = time.perf_counter()
page = dashboard.write_dashboard(rt)
first = time.perf_counter() - started
warm = []
for _ in range(repeats):
    started = time.perf_counter()
    dashboard.write_dashboard(rt)
    warm.append(time.perf_counter() - started)
started = time.perf_counter()
tearsheet = dashboard.write_tearsheet(out_dir, journal=rt.journal, page=work / "tearsheet" / "index.html")
tearsheet_s = time.perf_counter() - started
counts = {table: rt.journal.one(f"SELECT COUNT(*) AS n FROM {table}")["n"]
          for table in ("daily_performance", "trades", "scans", "candidates", "position_checks", "events")}
print(json.dumps({"first_s": first, "warm_s": statistics.median(warm), "tearsheet_s": tearsheet_s,
                  "page_kb": page.stat().st_size / 1024, "tearsheet_kb": tearsheet.stat().st_size / 1024,
                  "rows": counts}))
"""


def five_year_backtest(work: Path) -> Path:
    """Run the five-year momentum backtest into `work`/bt (a few minutes) and return the folder."""
    if not REAL_BARS.exists():
        raise SystemExit(f"no backtest folder given and {REAL_BARS} is absent")
    universe = work / "universe.json"
    main = [sys.executable, str(ROOT / "main.py")]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "LOG_DIR": str(work / "logs"),
           "CACHE_DIR": str(work / "cache"), "MOMENTUM_DB": str(work / "trades.db"), "DASHBOARD_DIR": "off"}
    subprocess.run([*main, "universe", "build", "--from", str(REAL_BARS), "--by", "dollar-volume", "--out",
                    str(universe)], check=True, env=env, capture_output=True)
    out = work / "bt"
    subprocess.run([*main, "--data", f"csv:{REAL_BARS}", "--universe", str(universe), "backtest", "--start",
                    FIVE_YEARS[0], "--end", FIVE_YEARS[1], "--out", str(out)], check=True, env=env,
                   capture_output=True)
    return out


def run(backtest_dir: Path | None = None) -> dict:
    """The figures, measured on a copy of `backtest_dir`'s journal (or a fresh five-year backtest's)."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        source = backtest_dir or five_year_backtest(work)
        copy = work / "journal"
        copy.mkdir()
        shutil.copy2(source / "trades.db", copy / "trades.db")
        proc = subprocess.run([sys.executable, "-c", MEASURE, str(ROOT), str(copy), str(source), str(REPEATS)],
                              capture_output=True, text=True, check=True)
        figures = json.loads(proc.stdout.strip().splitlines()[-1])
        metrics = json.loads((source / "metrics.json").read_text()) if (source / "metrics.json").exists() else {}
        figures["window"] = f"{metrics.get('start', '?')}..{metrics.get('end', '?')}"
        figures["source"] = str(source)
        return figures


def main() -> None:
    given = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    if given is not None and not (given / "trades.db").exists():
        raise SystemExit(f"{given} holds no trades.db (give a `backtest --out` folder)")
    f = run(given)
    rows = ", ".join(f"{n:,} {table}" for table, n in f["rows"].items())
    print(f"dashboard over the backtest journal {f['source']} ({f['window']}; {rows})")
    print(f"  first write in a process  {f['first_s']:.3f} s  (goal < {GOAL_S:.0f} s; Jinja2 import and template load "
          "included)")
    print(f"  warm write (median of {REPEATS})  {f['warm_s']:.3f} s  page {f['page_kb']:.0f} KiB")
    print(f"  backtest tearsheet        {f['tearsheet_s']:.3f} s  page {f['tearsheet_kb']:.0f} KiB")


if __name__ == "__main__":
    main()

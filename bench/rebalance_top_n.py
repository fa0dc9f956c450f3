"""Evidence for the rebalance's top N: the five-year rebalance backtest for several REBALANCE_TOP_N.

Each run is `python main.py backtest --system rebalance` (no regime filter; `--system rebalance-regime` with it) on
the real S&P 500 file (../shared/data/sp500_daily_2013_2018.csv.gz) from 2013-08-01 to 2018-02-07, over a universe
built by `python main.py universe build --by dollar-volume` from the same file, with REBALANCE_TOP_N set in the
environment of the command and every other setting at its default (REBALANCE_SLEEVE_PCT 100, REBALANCE_STOP_PCT 15).
The rebalance needs a year of completed sessions, so it trades from 2014-02-10 and the figures are measured from there
(`measured from` in the table). Prices are split-adjusted without dividends (the file has none); costs are the sim
broker's half spread plus slippage by cap tier.

Printed per N, from the run's metrics.json and journal: CAGR %, Sharpe, max drawdown %, trades (closed), the exits by
reason (the rebalance's own sells, its wide trailing stop), the buys on a session other than the month's first (the
refills, when the replay runs them) and the wall time; then SPY total return and the equal-weighted universe over the
same measured period, and the code the figures ran on (git HEAD, and whether the checkout had other changes).

Run as `python bench/rebalance_top_n.py [--top-n 5,10,20] [--system rebalance-regime]`; `run(...)` returns the rows.
"""
from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REAL_BARS = ROOT.parent / "shared" / "data" / "sp500_daily_2013_2018.csv.gz"
FIVE_YEARS = ("2013-08-01", "2018-02-07")
TOP_NS = (5, 10, 20)
KEEP = ("PATH", "HOME", "LANG", "PYTHONPATH")


def _main_py(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, check=False)


def _journal_counts(db: Path) -> dict[str, object]:
    """Exits by reason, and buys on a session that is not its month's first (refills)."""
    with closing(sqlite3.connect(db)) as conn:
        exits = dict(conn.execute("SELECT exit_reason, COUNT(*) FROM trades WHERE status = 'closed' "
                                  "GROUP BY exit_reason ORDER BY exit_reason").fetchall())
        entries = [row[0] for row in conn.execute("SELECT substr(entry_time, 1, 10) FROM trades "
                                                  "WHERE entry_time IS NOT NULL")]
        sessions = [row[0] for row in conn.execute("SELECT date FROM daily_performance ORDER BY date")]
    first_of_month = {day for previous, day in zip(["", *sessions], sessions) if previous[:7] != day[:7]}
    return {"exits": exits, "refill_buys": sum(1 for day in entries if day not in first_of_month)}


def run_one(base: Path, universe: Path, top_n: int, system: str, start: str, end: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k in KEEP}
    env.update({"REBALANCE_TOP_N": str(top_n), "LOG_DIR": str(base / "logs"), "CACHE_DIR": str(base / "cache"),
                "MOMENTUM_DB": str(base / "unused" / "trades.db"), "MPLCONFIGDIR": str(base / "matplotlib"),
                "BROKER": "sim"})
    out = base / f"{system}-top{top_n}"
    started = time.perf_counter()
    done = _main_py(env, "--universe", str(universe), "backtest", "--system", system, "--start", start, "--end", end,
                    "--data", f"csv:{REAL_BARS}", "--out", str(out))
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"top {top_n}: backtest failed ({done.returncode}): {done.stderr or done.stdout}")
    data = json.loads((out / "metrics.json").read_text())
    metrics, benchmarks = data["metrics"], data["benchmarks"]
    return {"top_n": top_n, "cagr_pct": metrics["cagr_pct"], "sharpe": metrics["sharpe"],
            "max_drawdown_pct": metrics["max_drawdown_pct"], "trades": metrics["trades"],
            "end_value": metrics["end_value"], "measured_from": data["measured_from"],
            "failed_steps": data["failed_steps"], "seconds": seconds,
            "spy_cagr_pct": benchmarks["spy_total_return"]["metrics"]["cagr_pct"],
            "ew_cagr_pct": benchmarks["equal_weighted_universe"]["metrics"]["cagr_pct"],
            **_journal_counts(out / "trades.db")}


def code_version() -> str:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    if head.returncode != 0:
        return f"{ROOT} (not a git checkout)"
    changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                             text=True, cwd=ROOT).stdout.splitlines()
    return f"git HEAD {head.stdout.strip()}" + (f" with {len(changed)} uncommitted file(s): "
                                               + ", ".join(line[3:] for line in changed) if changed else " (clean)")


def run(top_ns=TOP_NS, system: str = "rebalance", start: str = FIVE_YEARS[0], end: str = FIVE_YEARS[1]
        ) -> list[dict] | None:
    if not REAL_BARS.exists():
        return None
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        env = {k: v for k, v in os.environ.items() if k in KEEP}
        universe = base / "universe.json"
        built = _main_py({**env, "LOG_DIR": str(base / "logs"), "MOMENTUM_DB": str(base / "unused" / "trades.db")},
                         "universe", "build", "--from", str(REAL_BARS), "--by", "dollar-volume", "--out",
                         str(universe))
        if built.returncode != 0:
            raise SystemExit(f"universe build failed: {built.stderr or built.stdout}")
        return [run_one(base, universe, n, system, start, end) for n in top_ns]


def table(rows: list[dict]) -> str:
    header = (f"{'top N':>5} {'CAGR %':>7} {'Sharpe':>6} {'max dd %':>8} {'trades':>6} {'end value':>11}  "
              f"{'exits by reason':<39} {'refill buys':>11} {'time s':>6}")
    lines = [header]
    for r in rows:
        exits = ", ".join(f"{reason or '-'} {n}" for reason, n in r["exits"].items())
        lines.append(f"{r['top_n']:>5} {r['cagr_pct']:>7.2f} {r['sharpe']:>6.2f} {r['max_drawdown_pct']:>8.2f} "
                     f"{r['trades']:>6} {r['end_value']:>11,.0f}  {exits:<39} {r['refill_buys']:>11} "
                     f"{r['seconds']:>6.0f}")
    first = rows[0]
    lines.append(f"measured from {first['measured_from']}; same period: SPY total return CAGR "
                 f"{first['spy_cagr_pct']:.2f}%, equal-weighted universe CAGR {first['ew_cagr_pct']:.2f}%")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top-n", default=",".join(map(str, TOP_NS)), help="comma list [default: 5,10,20]")
    parser.add_argument("--system", default="rebalance", choices=("rebalance", "rebalance-regime"))
    parser.add_argument("--start", default=FIVE_YEARS[0])
    parser.add_argument("--end", default=FIVE_YEARS[1])
    args = parser.parse_args()
    version = code_version()
    rows = run(tuple(int(n) for n in args.top_n.split(",")), args.system, args.start, args.end)
    if rows is None:
        raise SystemExit(f"real data file {REAL_BARS} is not present")
    print(f"{args.system} backtest {args.start}..{args.end}, universe all (dollar-volume tiers); code: {version}")
    print(table(rows))
    if any(r["failed_steps"] for r in rows):
        print("failed steps: " + ", ".join(f"top {r['top_n']} {r['failed_steps']}" for r in rows))


if __name__ == "__main__":
    main()

"""Corporate actions and bad prints on the real S&P 500 file: what each rule flags, which known events it catches,
what it costs, and how long the scanners' call takes.

Run as `python bench/corporate_actions_study.py [PATH_TO_sp500_daily_2013_2018.csv.gz]` (default `../shared/data/...`).

Prints:
1. the stock-days flagged per rule and per kind over the whole file, and every event with its reason;
2. the known corporate actions (found by hand among the file's large drops and checked against the companies' own
   announcements) caught and missed, the known bad data caught, and the real moves flagged by mistake;
3. the STRAT signals of the file (1D and 1W, every bar) whose bars hold an event, which the strat scan now skips;
4. the time of recent_reasons() for 505 real symbols x 120 sessions and 500 synthetic ones (median of 50 calls) and
   of events() over the whole file.
The figures in core/corporate_actions.py's docstring come from this run.
"""
from __future__ import annotations

import collections
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.types import Panel  # noqa: E402
from core import corporate_actions, strat_signals  # noqa: E402
from ports.market_sources import CsvMarket  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "sp500_daily_2013_2018.csv.gz"

# (symbol, first trading day after the event): what happened
KNOWN_ACTIONS = {
    ("IR", "2013-12-02"): "Allegion spin-off", ("OKE", "2014-02-03"): "ONE Gas spin-off",
    ("DOV", "2014-03-03"): "Knowles spin-off", ("NOV", "2014-06-02"): "NOW Inc. spin-off",
    ("ADP", "2014-10-01"): "CDK Global spin-off", ("A", "2014-11-03"): "Keysight spin-off",
    ("VNO", "2015-01-16"): "Urban Edge spin-off", ("BAX", "2015-07-01"): "Baxalta spin-off",
    ("MAS", "2015-07-01"): "TopBuild spin-off", ("NI", "2015-07-02"): "Columbia Pipeline spin-off",
    ("EBAY", "2015-07-20"): "PayPal spin-off", ("VTR", "2015-08-18"): "Care Capital Properties spin-off",
    ("DRI", "2015-11-10"): "Four Corners spin-off", ("DHR", "2016-07-05"): "Fortive spin-off",
    ("ARNC", "2016-11-01"): "Alcoa Corp spin-off", ("YUM", "2016-11-01"): "Yum China spin-off",
    ("CAG", "2016-11-10"): "Lamb Weston spin-off", ("XRX", "2017-01-03"): "Conduent spin-off",
    ("VAR", "2017-01-30"): "Varex spin-off", ("CTXS", "2017-02-01"): "GoTo spin-off (LogMeIn merger)",
    ("HPE", "2017-04-03"): "DXC spin-off", ("VNO", "2017-07-18"): "JBG Smith spin-off",
    ("MET", "2017-08-07"): "Brighthouse spin-off", ("HPE", "2017-09-01"): "Micro Focus spin-off",
    ("TDG", "2013-07-11"): "special dividend", ("TDG", "2014-06-12"): "special dividend",
    ("TDG", "2016-10-20"): "special dividend", ("TDG", "2017-08-31"): "special dividend",
    ("KLAC", "2014-11-26"): "special dividend", ("SYMC", "2016-03-04"): "special dividend",
    ("EQR", "2016-03-01"): "special dividend", ("BHGE", "2017-07-05"): "special dividend (GE merger)",
    ("DISCA", "2014-08-07"): "class C share dividend (a 2:1 split)",
    ("DISCK", "2014-08-07"): "class C share dividend (a 2:1 split)",
}
KNOWN_BAD_DATA = {
    ("LNT", "2016-05-19"): "bad close (data README)", ("AOS", "2014-05-19"): "high < low (data README)",
    ("XL", "2015-08-24"): "flash-crash print", ("AME", "2013-10-29"): "bad high",
    ("NWL", "2017-09-15"): "misaligned cluster (undone)", ("CHD", "2014-05-19"): "open outside the range",
}
# real moves that a rule flags (earnings gaps and news): the cost of the volume caps
KNOWN_REAL_MOVES = {
    ("NFLX", "2014-10-16"): "earnings gap", ("AMD", "2014-07-18"): "earnings gap",
    ("AMD", "2015-07-07"): "profit warning", ("CNC", "2016-11-09"): "election-day drop",
    ("COTY", "2016-11-09"): "earnings gap", ("VMC", "2014-02-06"): "news jump",
}
MISALIGNED = ("2013-12-18", "2013-12-19", "2013-12-20", "2013-12-23", "2014-10-29", "2014-10-30", "2014-10-31",
              "2017-08-01", "2017-08-02", "2017-09-13", "2017-09-14", "2017-09-15")


def load_panel(path: Path) -> Panel:
    market = CsvMarket(path)
    return market.bars(market.known_symbols(), market.first_date, market.last_date)


def window(panel: Panel, end: str, rows: int) -> Panel:
    last = int(np.searchsorted(panel.dates, np.datetime64(end), side="right"))
    part = slice(max(last - rows, 0), last)
    return Panel(panel.dates[part], panel.symbols, *(getattr(panel, name)[part] for name in
                                                     ("open", "high", "low", "close", "volume")))


def report_counts(panel: Panel, found: list[corporate_actions.Event]) -> None:
    stock_days = int(np.isfinite(panel.close).sum())
    print(f"{len(found)} stock-days flagged of {stock_days:,} with a close")
    print("  by rule:", dict(collections.Counter(e.rule for e in found)))
    print("  by kind:", dict(collections.Counter(e.kind for e in found)))
    in_clusters = sum(e.day in MISALIGNED for e in found)
    print(f"  on the misaligned days of the data README: {in_clusters}")
    for event in found:
        print(f"  {event.symbol:6} {event.rule:13} {event.text}")


def report_known(found: list[corporate_actions.Event]) -> None:
    flagged = {(e.symbol, e.day): e for e in found}
    for title, known in (("known corporate actions", KNOWN_ACTIONS), ("known bad data", KNOWN_BAD_DATA),
                         ("real moves flagged", KNOWN_REAL_MOVES)):
        caught = [key for key in known if key in flagged]
        print(f"{title}: {len(caught)} of {len(known)} flagged")
        for key, what in known.items():
            event = flagged.get(key)
            print(f"  {'flagged' if event else 'MISSED ':7} {key[0]:6} {key[1]} {what:40} "
                  f"{event.rule if event else ''}")


def report_strat(panel: Panel, found: list[corporate_actions.Event]) -> None:
    """Signals whose bars (the trigger bar and the BARS_READ - 1 before it) hold an event's day."""
    by_symbol = collections.defaultdict(list)
    for event in found:
        by_symbol[event.symbol].append(np.datetime64(event.day))
    for timeframe in strat_signals.TIMEFRAMES:
        bars = strat_signals.weekly_panel(panel) if timeframe == "1W" else panel
        signals = strat_signals.find_signals(bars.dates, bars.symbols, bars.open, bars.high, bars.low, bars.close,
                                             timeframe, last_only=False)
        index = {day: i for i, day in enumerate(bars.dates.astype("datetime64[D]"))}
        skipped = []
        for signal in signals:
            i = index[np.datetime64(signal.bar_date)]
            first = bars.dates[i - strat_signals.BARS_READ] if i >= strat_signals.BARS_READ else np.datetime64("NaT")
            if any((np.isnat(first) or day > first) and day <= bars.dates[i] for day in by_symbol[signal.symbol]):
                skipped.append(signal)
        print(f"STRAT {timeframe}: {len(signals)} signals over the file, {len(skipped)} read a flagged bar "
              f"(their median magnitude {np.median([s.magnitude_pct for s in skipped]):.1f}% against "
              f"{np.median([s.magnitude_pct for s in signals]):.1f}% for all)")
        for signal in skipped:
            if signal.symbol == "ARNC":
                print(f"  skipped ARNC {signal.bar_date} {signal.pattern} magnitude {signal.magnitude_pct:.1f}% "
                      f"R:R {signal.reward_risk:.2f}")


def synthetic(symbols: int, sessions: int, seed: int = 7) -> Panel:
    rng = np.random.default_rng(seed)
    shape = (sessions, symbols)
    close = rng.uniform(8.0, 300.0, symbols) * np.exp(np.cumsum(rng.normal(0.0005, 0.02, shape), axis=0))
    open_ = close * np.exp(rng.normal(0.0, 0.01, shape))
    high = np.maximum(open_, close) * (1.0 + rng.uniform(0.0, 0.02, shape))
    low = np.minimum(open_, close) * (1.0 - rng.uniform(0.0, 0.02, shape))
    volume = rng.uniform(2e5, 5e6, symbols) * rng.lognormal(0.0, 0.4, shape)
    dates = np.datetime64("2024-01-02") + np.arange(sessions)
    return Panel(dates, [f"S{i}" for i in range(symbols)], open_, high, low, close, volume)


def median_ms(call, repeats: int = 50) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1000)


def report_timing(panel: Panel) -> None:
    for label, bars in (("real, 120 sessions to 2016-11-18", window(panel, "2016-11-18", 120)),
                        ("synthetic 500 x 120", synthetic(500, 120))):
        for lookback in (22, 60, 120):
            ms = median_ms(lambda bars=bars, lookback=lookback: corporate_actions.recent_reasons(bars, lookback))
            print(f"recent_reasons {label}, lookback {lookback}: {ms:.2f} ms")
    print(f"events() over the whole file: {median_ms(lambda: corporate_actions.events(panel), 5):.0f} ms")


def main(path: Path = DEFAULT_DATA) -> None:
    panel = load_panel(path)
    found = corporate_actions.events(panel)
    report_counts(panel, found)
    report_known(found)
    report_strat(panel, found)
    report_timing(panel)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_DATA)

"""The backtest (SPEC section 11): the live scan, monitor, job and rebalance functions replayed over history.

One Runtime serves the whole run: its simulated clock is moved to each cron time in turn (`Clock.set`), the csv
market is loaded once, and the sim broker and the journal are fresh files in the output directory, so the journal
of a backtest is an ordinary journal (`DIR/trades.db`, broker state `DIR/sim_broker.db`) that answers the same SQL.

The schedule of a session (New York time, NYSE sessions with early closes respected: a step at or after the
session's close is left out, exactly as the command itself would refuse it):
- momentum: scans 09:35 / 09:38 / 09:41 (open; large, mid, small), 12:30 / 12:33 / 12:36 (midday), 15:30 / 15:33 /
  15:36 (close); the monitor every 30 minutes from 10:00 to 15:30. Cron runs the monitor every 5 minutes, but a
  position is evaluated only every 30 minutes unless it is urgent; between two runs the sim broker still triggers
  the resting broker stops on the bars in between, so the 30-minute cadence replays the same exits to within one
  half hour for urgent positions (documented deviation).
- rebalance systems: the rebalance's daily run at REBALANCE_TIME (the full rebalance on the month's first session,
  refills of slots a stop emptied on the others) and the same monitor runs (no momentum scans).
- all: the momentum scans and the rebalance (with the regime) side by side in one account, each in its sleeve:
  momentum MAX_EXPOSURE_PCT of equity, the rebalance REBALANCE_SLEEVE_PCT but at most what momentum leaves. A
  rebalance system run alone trades the whole account (its sleeve is 100%).
- every system: `daily-snapshot` at 16:05 and `update-outcomes` at 16:10.
When two steps share a minute the monitor runs first, then the scan or rebalance (cron starts them together).

The regime filter can be switched off for a comparison run (`Runtime.regime_filter = False`): the trading loop then
sees no regime (allocation factor 1, no CRASH block).

Speed without other answers: the regimes of the whole window come from one pass of the online model
(`prefill_regimes`), and for the momentum system a forked worker computes each coming session's market-only work
(prepared histories, snapshots at the cron moments, scan frames, market contexts; backtest/prefetch.py) while the replay
trades the current one. Both give exactly what the steps would compute for themselves: the parity test runs the
cron commands one by one against the backtest.
"""
from __future__ import annotations

import json
import logging
import sys
import time as wall
from dataclasses import dataclass, field
from datetime import date, datetime, time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import pandas as pd

import jobs
import monitor
import scanner
from common.clock import NY, UTC, Session, calendar, day_bounds_utc
from common.created import CreatedFiles
from common.errors import ConfigError, DataError, MomentumError
from common.types import BAR_FIELDS, Panel, SessionBars
from config import RUNTIME_SETTINGS, Config
from core.regime import classify
from flows import rebalance, scan
from journal import regime_labels

if TYPE_CHECKING:  # annotations only: the runtime module wires every port
    from flows.runtime import Runtime

log = logging.getLogger(__name__)

SYSTEMS = ("momentum", "rebalance", "rebalance-regime", "all")
CAPS = ("large", "mid", "small")
SCAN_SLOTS = (("open", (time(9, 35), time(9, 38), time(9, 41))),
              ("midday", (time(12, 30), time(12, 33), time(12, 36))),
              ("close", (time(15, 30), time(15, 33), time(15, 36))))
MONITOR_TIMES = tuple(time(10 + k // 2, 30 * (k % 2)) for k in range(12))  # 10:00 .. 15:30
REBALANCE_TIME = time(9, 45)  # REBALANCE_TIME's default; a run reads the setting
JOB_TIMES = ((time(16, 5), "daily-snapshot"), (time(16, 10), "update-outcomes"))
REBALANCE_UNIVERSE = "all"
STARTING_CASH = 100_000.0


@dataclass(frozen=True)
class Step:
    moment: datetime  # aware, New York
    kind: str  # scan | monitor | job | rebalance
    scan_type: str = ""
    cap: str = ""
    job: str = ""


@dataclass
class BacktestResult:
    out_dir: Path
    system: str
    start: date
    end: date
    sessions: int = 0
    steps: int = 0
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)
    first_tradable_session: date | None = None  # the first session the run could trade: benchmarks start there
    first_tradable_sessions: dict[str, date] = field(default_factory=dict)  # the same per system (trades.strategy)
    settings: dict[str, Any] = field(default_factory=dict)  # strategy settings changed for this run (--set)
    data_through: date | None = None  # the data source knew nothing after this day (--data-until)


# --- the schedule -------------------------------------------------------------------------------------------------

def trades_momentum(system: str) -> bool:
    return system in ("momentum", "all")


def trades_rebalance(system: str) -> bool:
    return system in ("rebalance", "rebalance-regime", "all")


def session_steps(session: Session, system: str, cap: str, rebalance_time: time = REBALANCE_TIME) -> list[Step]:
    """The cron steps of one session in the order they run; steps at or after an early close are left out."""
    day = session.day
    at = lambda t: datetime.combine(day, t, tzinfo=NY)  # noqa: E731
    steps: list[tuple[tuple, Step]] = []
    for t in MONITOR_TIMES:
        steps.append(((t, 0), Step(at(t), "monitor")))
    if trades_momentum(system):
        caps = CAPS if cap == "all" else (cap,)
        for scan_type, times in SCAN_SLOTS:
            for one_cap, t in zip(CAPS, times):
                if one_cap in caps:
                    steps.append(((t, 1), Step(at(t), "scan", scan_type=scan_type, cap=one_cap)))
    if trades_rebalance(system):
        steps.append(((rebalance_time, 2), Step(at(rebalance_time), "rebalance")))
    live = [step for key, step in sorted(steps, key=lambda pair: pair[0]) if step.moment < session.close]
    live += [Step(at(t), "job", job=name) for t, name in JOB_TIMES]
    return live


def run_step(rt: Runtime, step: Step, system: str) -> None:
    """One cron entry through the live function it stands for."""

    rt.clock.set(step.moment)
    if step.kind == "scan":
        scan.run_scan(rt, step.scan_type, step.cap, dry_run=False, force=False)
    elif step.kind == "monitor":
        monitor.run_monitor(rt, dry_run=False, force=False)
    elif step.kind == "rebalance":
        rebalance.run_scheduled(rt, REBALANCE_UNIVERSE, dry_run=False, force=False)
    else:
        jobs.run_job(rt, step.job)


# --- the run ------------------------------------------------------------------------------------------------------

def check_window(rt: Runtime, start: date, end: date) -> list[Session]:
    """The sessions start..end, refused with one line when the window or the data cannot carry them."""
    if start > end:
        raise ConfigError(f"--start {start} is after --end {end}")
    market = rt.market
    first, last = getattr(market, "first_date", None), getattr(market, "last_date", None)
    cal = rt.calendar
    days = cal.sessions(start, end)
    if not days:
        raise ConfigError(f"no NYSE session between --start {start} and --end {end}")
    universe_first = getattr(rt.universe, "first_day", None)
    if universe_first is not None and days[0] < universe_first:
        raise ConfigError(f"--start {start} is before the point-in-time universe's first period ({universe_first})")
    if last is not None and days[-1] > last:
        raise ConfigError(f"--end {end} is after the last date of the data ({last})")
    if first is not None:
        known = cal.sessions(first, days[-1])
        if len(known) <= scanner.HISTORY_SESSIONS or days[0] < known[scanner.HISTORY_SESSIONS]:
            earliest = known[scanner.HISTORY_SESSIONS] if len(known) > scanner.HISTORY_SESSIONS else None
            raise ConfigError(f"--start {start} leaves too little history: the data starts on {first} and a scan "
                              f"needs {scanner.HISTORY_SESSIONS} sessions before it"
                              + (f" (start on {earliest} or later)" if earliest else ""))
    return [cal.session(day) for day in days]


def replay(rt: Runtime, sessions: list[Session], system: str, cap: str,
           progress: Callable[[int, int, date], None] | None = None, until: datetime | None = None
           ) -> tuple[int, list[str]]:
    """Every step of every session, in time order (none after `until` when given); a step that fails with a product
    error is recorded (as a cron run would be) and the replay goes on. Returns (steps run, failure lines)."""
    steps, failures = 0, []
    # The replay logs at WARNING and above only: its thousands of steps each log several INFO lines, whose
    # formatting and file writes cost a noticeable share of the run, while the orders, fills and decisions they
    # describe are in the backtest's journal. The previous level is restored afterwards.
    root = logging.getLogger()
    level = root.level
    if root.getEffectiveLevel() < logging.WARNING:
        root.setLevel(logging.WARNING)
    try:
        steps, failures = _replay_sessions(rt, sessions, system, cap, progress, until)
    finally:
        root.setLevel(level)
    return steps, failures


def _replay_sessions(rt: Runtime, sessions: list[Session], system: str, cap: str,
                     progress: Callable[[int, int, date], None] | None, until: datetime | None
                     ) -> tuple[int, list[str]]:
    from backtest.prefetch import SessionPrefetch  # lazy: a worker process is started only for long runs

    moments = {session.day: _step_moments(rt, session, system, cap, until) for session in sessions}
    with SessionPrefetch(rt, [s.day for s in sessions], _prefetch_symbols(rt, system), moments) as ahead:
        return _replay_with(rt, sessions, system, cap, progress, ahead, until)


def _steps_until(rt: Runtime, session: Session, system: str, cap: str, until: datetime | None) -> list[Step]:
    steps = session_steps(session, system, cap, rt.config.rebalance_clock)
    return steps if until is None else [step for step in steps if step.moment <= until]


def _step_moments(rt: Runtime, session: Session, system: str, cap: str, until: datetime | None = None
                  ) -> list[tuple]:
    """(session fraction, scan rules, scan universe) of each step that reads a snapshot, as the step will see it
    (rules and universe None for a monitor run)."""

    moments = []
    for step in _steps_until(rt, session, system, cap, until):
        fraction = rt.calendar.current_or_last_session(step.moment)[1]
        if step.kind == "scan":
            members = tuple(rt.universe.symbols(step.cap, on=session.day))  # that day's (a point-in-time universe)
            moments.append((fraction, scan.cap_rules(rt.config, step.cap), members))
        elif step.kind == "monitor":
            moments.append((fraction, None, None))
    return moments


def _prefetch_symbols(rt: Runtime, system: str) -> list[str]:
    """The universe the scans read (momentum only: a rebalance reads its own wider history), or nothing when the
    market may change under a second reader."""
    if not trades_momentum(system) or rt.history_cache is None:
        return []
    return rt.universe.symbols_in_any_period("all")


def _replay_with(rt: Runtime, sessions: list[Session], system: str, cap: str,
                 progress: Callable[[int, int, date], None] | None, ahead, until: datetime | None
                 ) -> tuple[int, list[str]]:
    steps, failures = 0, []
    for n, session in enumerate(sessions, start=1):
        ahead.seed(session.day)
        for step in _steps_until(rt, session, system, cap, until):
            try:
                run_step(rt, step, system)
            except MomentumError as err:
                line = f"{step.moment.isoformat()} {step.kind} {step.scan_type or step.job} {step.cap}: {err}"
                failures.append(line)
                rt.journal.event("error", "backtest", line, source="backtest")
                log.warning("backtest step failed: %s", line)
            steps += 1
        if progress is not None:
            progress(n, len(sessions), session.day)
    return steps, failures


def with_settings(config, assignments: Sequence[str]) -> tuple[Any, dict[str, Any]]:
    """`config` with the .env strategy settings of `NAME=VALUE` assignments (backtest --set) in force, and every
    assigned setting by name; ConfigError (exit 2) on an unknown name or a bad value, before anything runs."""
    from config import parse_assignment

    values, settings = dict(config._values), {}
    for text in assignments:
        setting, value = parse_assignment(text)
        settings[setting.name] = value
        if not setting.runtime:
            values[setting.var.name] = value
    return Config(values), settings


def run_backtest(rt: Runtime, start: date, end: date, *, system: str = "momentum", cap: str = "all",
                 progress: Callable[[int, int, date], None] | None = None, write_outputs: bool = True,
                 until: datetime | None = None, settings: dict[str, Any] | None = None,
                 data_through: date | None = None) -> BacktestResult:
    """Replay start..end on `rt` (a Runtime over a fresh journal and sim broker) and write the outputs; with
    `until`, no step after that moment runs (a look-ahead check cut inside a session). `settings`: strategy
    settings assigned for this run (the runtime ones are stored in its journal here); `data_through`: the day the
    data source was cut after, recorded with the metrics."""
    if system not in SYSTEMS:
        raise ConfigError(f"--system: unknown system {system!r} (use {', '.join(SYSTEMS)})")
    started = wall.perf_counter()
    sessions = check_window(rt, start, end)
    rt.regime_filter = system != "rebalance"
    out_dir = Path(rt.config.momentum_db).parent
    per_system = {name: first_tradable(rt, sessions, name) for name in ("momentum", "rebalance")
                  if (trades_momentum if name == "momentum" else trades_rebalance)(system)}
    result = BacktestResult(out_dir, system, sessions[0].day, sessions[-1].day, sessions=len(sessions),
                            first_tradable_session=min(per_system.values()), first_tradable_sessions=per_system,
                            settings=dict(settings or {}), data_through=data_through)
    for key, value in result.settings.items():
        if key in RUNTIME_SETTINGS:
            rt.journal.set_setting(key, str(value), by="backtest")
    prefill_regimes(rt, sessions)
    result.steps, result.failures = replay(rt, sessions, system, cap, progress, until)
    if write_outputs:
        from backtest import metrics  # lazy: matplotlib loads only when the metrics are written

        result.metrics = metrics.compute(rt, result)
        metrics.write(rt, result)
    result.seconds = wall.perf_counter() - started
    return result


def first_tradable(rt: Runtime, sessions: list[Session], system: str) -> date:
    """The first session of the window on which `system` could trade: a momentum scan needs 120 sessions of history
    (check_window makes sure the window starts after them); the rebalance ranks on a year (YEAR_SESSIONS) of
    completed sessions, so it starts once the data holds that many before the day."""
    if trades_momentum(system):
        return sessions[0].day
    first = getattr(rt.market, "first_date", None)
    if first is None:
        return sessions[0].day
    known = rt.calendar.sessions(first, sessions[-1].day)
    if len(known) <= rebalance.YEAR_SESSIONS:
        return sessions[-1].day
    return max(sessions[0].day, known[rebalance.YEAR_SESSIONS])


# --- progress -----------------------------------------------------------------------------------------------------

def progress_bar(stream=None) -> Callable[[int, int, date], None] | None:
    """A one-line bar on stderr, only when stderr is a terminal."""
    stream = stream or sys.stderr
    if not stream.isatty():
        return None
    started = wall.perf_counter()

    def show(done: int, total: int, day: date) -> None:
        width = 30
        filled = int(width * done / total)
        elapsed = wall.perf_counter() - started
        stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} sessions {day} {elapsed:5.0f} s")
        if done == total:
            stream.write("\n")
        stream.flush()

    return show


# --- precomputation that gives the live answers faster ------------------------------------------------------------

def prefill_regimes(rt: Runtime, sessions: list[Session]) -> int:
    """Store the regime of every day the replay will ask for, from one pass of the model over the series.

    The model is online (each day's label uses rows up to that day only, and appending data never changes a stored
    label), so one pass gives exactly the rows `regime_labels.regime_on` would compute day by day; the replay then reads
    them from the journal like a live scan reads an earlier run's row.
    """

    if not getattr(rt, "regime_filter", True) or not sessions:
        return 0
    cal = rt.calendar
    wanted = sorted({cal.previous_session(s.day) for s in sessions} | {s.day for s in sessions})
    try:
        series = rt.market.market_series(regime_labels.series_start(rt.market, wanted[0]), wanted[-1])
        rows = classify.compute_regimes(series, wanted[0], wanted[-1])
    except MomentumError as err:
        log.warning("regimes not precomputed (%s); the replay computes them day by day", err)
        return 0
    if rows.empty:
        return 0
    index = rows.index.values.astype("datetime64[D]")
    records = []
    for day in wanted:
        at = int(np.searchsorted(index, np.datetime64(day, "D"), side="right")) - 1
        if at < 0:
            continue
        row = rows.iloc[at]
        records.append({"date": str(day), "regime": row["regime"], "factor": row["factor"], "reason": row["reason"],
                        "crash_override": int(bool(row["crash_override"])), "features": json.dumps(row["features"]),
                        "params": json.dumps(row["params"]), "created_at": rt.journal.now()})
    with rt.journal.atomic():
        rt.journal.db.table("regimes").insert_all(records, replace=True)
    return len(records)


# --- runtime of a backtest ----------------------------------------------------------------------------------------

def sleeves_for(values: dict[str, Any], config, system: str) -> dict[str, Any]:
    """The settings of a run: the rebalance run alone trades the whole account; side by side (`all`) it gets
    REBALANCE_SLEEVE_PCT, at most the share momentum leaves."""
    if system in ("rebalance", "rebalance-regime"):
        return {**values, "REBALANCE_SLEEVE_PCT": 100.0}
    if system != "all":
        return values
    return {**values, "REBALANCE_SLEEVE_PCT": min(config.rebalance_sleeve_pct, 100.0 - config.max_exposure_pct)}


def backtest_runtime(config, out_dir: Path, *, cut: date | None = None, cut_at: datetime | None = None,
                     wrap_market: Callable[[Any], Any] | None = None, system: str = "momentum"):
    """A Runtime over a fresh journal and sim broker in `out_dir`, csv data (optionally cut after `cut`, or inside
    a session at `cut_at`), with the sleeves of `system`."""
    from flows.runtime import Runtime

    source = config.data_source or ""
    if not source.startswith("csv:"):
        raise ConfigError(f"--data: a backtest replays csv data (csv:PATH), not {source!r}")
    out_dir = Path(out_dir)
    if not out_dir.parent.is_dir():
        raise ConfigError(f"--out {out_dir}: directory {out_dir.parent} does not exist")
    if (out_dir / "trades.db").exists() or (out_dir / "sim_broker.db").exists():
        raise ConfigError(f"--out {out_dir}: already holds a backtest journal; use a new directory")
    values = sleeves_for({**config._values, "MOMENTUM_DB": str(out_dir / "trades.db"), "BROKER": "sim",
                          "SIM_BROKER_DB": "", "LOG_DIR": str(out_dir / "logs"), "MOMENTUM_ASOF": ""}, config, system)
    rt = Runtime(Config(values), "backtest")
    market = rt.market  # a missing or unreadable data file is refused here, before the folder is made
    if cut_at is not None:
        market = DataCut(market, cut_at.astimezone(NY).date(), cut_at)
    elif cut is not None:
        market = DataCut(market, cut)
    if wrap_market is not None:
        market = wrap_market(market)
    rt.__dict__["market"] = market  # the broker is built later from this same port
    out_dir.mkdir(exist_ok=True)
    return rt


def started_backtest(config, out_dir: Path, start: date, end: date, *, system: str = "momentum",
                     cut: date | None = None, models_from: str | None = None) -> Runtime:
    """The backtest's Runtime (backtest_runtime) with its window checked against the data and the universe, its run
    started in the journal and the models of `models_from` imported: everything that can refuse the run (exit 2)
    before it replays a step. A refusal leaves nothing in `out_dir` that was not there before (the folder itself,
    if the run made it), so the corrected command runs into the same folder."""
    created = CreatedFiles(out_dir)
    rt = None
    try:
        rt = backtest_runtime(config, out_dir, system=system, cut=cut)
        check_window(rt, start, end)  # before the journal exists
        rt.journal.start_run("backtest")
        if models_from:
            from flows import learn

            learn.import_models(rt, models_from)
    except BaseException:
        if rt is not None:
            rt.close()
        created.remove()
        raise
    return rt


_AFTER_THE_OPEN = ("high", "low", "close", "volume")  # what a session's daily bar learns after its open


class DataCut:
    """A market-data port that knows nothing after `cut`: bars, snapshots and the SPY/VIX series end there.

    With `moment` (inside session `cut`), that session is cut too: its daily bar keeps only the open, snapshots
    after the moment are refused, and intraday bars that had not ended by then are gone."""

    def __init__(self, inner, cut: date, moment: datetime | None = None):
        self.inner = inner
        self.cut = cut
        self.moment = moment
        self._fraction = None
        if moment is not None:
            session = calendar().session(cut)
            self._fraction = session.fraction(moment) if moment < session.close else 1.0

    def __getattr__(self, name: str):
        if name == "session_bars" and hasattr(self.inner, "session_bars"):
            return self._session_bars
        return getattr(self.inner, name)

    @property
    def last_date(self) -> date:
        return min(self.inner.last_date, self.cut)

    def _inside(self) -> bool:
        return self._fraction is not None and self._fraction < 1.0

    def bars(self, symbols, start: date, end: date):
        panel = self.inner.bars(symbols, start, min(end, self.cut))
        if not self._inside() or end < self.cut or not len(panel.dates):
            return panel
        rows = panel.dates.astype("datetime64[D]") == np.datetime64(self.cut, "D")
        fields = {name: getattr(panel, name).copy() for name in BAR_FIELDS}
        for name in _AFTER_THE_OPEN:
            fields[name][rows] = np.nan
        return Panel(panel.dates, list(panel.symbols), **fields)

    def snapshot(self, symbols, session: date, fraction: float):
        if session > self.cut or (session == self.cut and self._fraction is not None
                                  and fraction > self._fraction + 1e-9):
            raise DataError(f"no data for session {session} at {fraction:.0%}: the data is cut at "
                            f"{self.moment or self.cut}")
        return self.inner.snapshot(symbols, session, fraction)

    def market_series(self, start: date, end: date):
        series = self.inner.market_series(start, min(end, self.cut))
        if not self._inside() or end < self.cut or not len(series):
            return series
        series = series.copy()
        on_cut = pd.DatetimeIndex(series.index).normalize() == pd.Timestamp(self.cut)
        later = [c for c in series.columns if c.split("_", 1)[-1] in _AFTER_THE_OPEN]
        series.loc[on_cut, later] = np.nan
        return series

    def _session_bars(self, symbols, session: date):
        bars = self.inner.session_bars(symbols, session)
        if session < self.cut or self._fraction is None:
            return bars
        if session > self.cut:
            raise DataError(f"no data for session {session}: the data is cut at {self.moment or self.cut}")
        ended = np.asarray(bars.ends) <= self._fraction + 1e-9
        return SessionBars(bars.session, list(bars.symbols), np.asarray(bars.ends)[ended],
                           *(np.asarray(getattr(bars, name))[ended] for name in BAR_FIELDS))


# --- look-ahead check ---------------------------------------------------------------------------------------------

@dataclass
class CutCheck:
    cut: date
    compared: int
    difference: str | None  # the first differing decision, None when identical
    moment: datetime | None = None  # a cut inside the session, at this moment


INTRADAY_CUT = time(12, 31)  # after the midday scans and the 12:30 monitor run, before the next


def decisions_until(rt: Runtime, cut: date | datetime) -> list[tuple]:
    """Every decision recorded up to the end of session `cut` (or before the moment `cut`), in time order:
    candidate decisions per scan (with the price and score seen), orders (client_order_id, symbol, side, type, qty,
    limit), trade entries and exits."""

    until = cut.astimezone(UTC).isoformat() if isinstance(cut, datetime) else day_bounds_utc(cut)[1]
    journal = rt.journal
    items: list[tuple] = []
    for row in journal.query(
            "SELECT s.asof, s.type, s.cap, c.symbol, c.score, c.decision, c.reason, round(c.price, 6) AS price "
            "FROM candidates c JOIN scans s ON s.id = c.scan_id WHERE s.asof < ? ORDER BY s.asof, c.id", [until]):
        items.append((row["asof"], "candidate", f"{row['type']}/{row['cap']} {row['symbol']}",
                      (row["score"], row["decision"], row["reason"], row["price"])))
    for row in journal.query(
            "SELECT created_at, client_order_id, symbol, side, type, qty, limit_price, purpose FROM orders "
            "WHERE created_at < ? ORDER BY created_at, client_order_id", [until]):
        items.append((row["created_at"], "order", row["client_order_id"],
                      (row["symbol"], row["side"], row["type"], row["qty"], row["limit_price"], row["purpose"])))
    for row in journal.query("SELECT id, symbol, entry_time, entry_price, exit_time, exit_price, exit_reason "
                             "FROM trades WHERE entry_time < ? ORDER BY entry_time, id", [until]):
        items.append((row["entry_time"], "entry", f"trade {row['id']} {row['symbol']}", (row["entry_price"],)))
        if row["exit_time"] and row["exit_time"] < until:
            items.append((row["exit_time"], "exit", f"trade {row['id']} {row['symbol']}",
                          (row["exit_price"], row["exit_reason"])))
    return sorted(items, key=lambda item: (item[0], item[1], item[2]))


def first_difference(full: list[tuple], cut_run: list[tuple]) -> str | None:
    for a, b in zip(full, cut_run):
        if a != b:
            return f"at {a[0]}: full data {a[1]} {a[2]} {a[3]} but cut data {b[1]} {b[2]} {b[3]}"
    if len(full) != len(cut_run):
        longer, name = (full, "full data") if len(full) > len(cut_run) else (cut_run, "cut data")
        extra = longer[min(len(full), len(cut_run))]
        return f"at {extra[0]}: only the {name} run made {extra[1]} {extra[2]} {extra[3]}"
    return None


def choose_cuts(sessions: list[Session], count: int) -> list[date]:
    """`count` cut dates spread evenly inside the window (never its last session: that is the full run)."""
    days = [s.day for s in sessions[:-1]]
    if not days:
        return []
    return sorted({days[min(len(days) - 1, (len(days) * (k + 1)) // (count + 1))] for k in range(count)})


def check_lookahead(config, out_dir: Path, start: date, end: date, *, system: str = "momentum", cap: str = "all",
                    cuts: int = 2, wrap_market: Callable[[Any], Any] | None = None,
                    progress: Callable[[int, int, date], None] | None = None) -> list[CutCheck]:
    """Run start..end on the full data, then again on data cut after each cut date and on data cut inside that
    session (at INTRADAY_CUT: the rest of its day removed), and compare the decisions made before each cut. A
    decision that changes when later data is removed used that data: look-ahead."""
    out_dir = Path(out_dir)
    if not out_dir.parent.is_dir():
        raise ConfigError(f"--out {out_dir}: directory {out_dir.parent} does not exist")
    created = CreatedFiles(out_dir)
    out_dir.mkdir(exist_ok=True)
    try:  # refused before the first run replays a step: nothing left behind (see started_backtest)
        full_rt = backtest_runtime(config, out_dir / "full", wrap_market=wrap_market, system=system)
        try:
            check_window(full_rt, start, end)
        except BaseException:
            full_rt.close()
            raise
    except BaseException:
        created.remove()
        raise
    try:
        full = run_backtest(full_rt, start, end, system=system, cap=cap, progress=progress, write_outputs=False)
        sessions = check_window(full_rt, full.start, full.end)
        checks = []
        for n, cut in enumerate(choose_cuts(sessions, cuts), start=1):
            checks.append(_cut_run(config, out_dir / f"cut{n}", full_rt, start, cut, None, system, cap, wrap_market))
            moment = datetime.combine(cut, INTRADAY_CUT, tzinfo=NY)
            if moment < full_rt.calendar.session(cut).close:
                checks.append(_cut_run(config, out_dir / f"cut{n}-inside", full_rt, start, cut, moment, system, cap,
                                       wrap_market))
    finally:
        full_rt.close()
    return checks


def _cut_run(config, out_dir: Path, full_rt: Runtime, start: date, cut: date, moment: datetime | None, system: str,
             cap: str, wrap_market) -> CutCheck:
    cut_rt = backtest_runtime(config, out_dir, cut=cut, cut_at=moment, wrap_market=wrap_market, system=system)
    try:
        run_backtest(cut_rt, start, cut, system=system, cap=cap, write_outputs=False, until=moment)
        until = moment if moment is not None else cut
        expected, seen = decisions_until(full_rt, until), decisions_until(cut_rt, until)
    finally:
        cut_rt.close()
    return CutCheck(cut, len(expected), first_difference(expected, seen), moment)


def lookahead_text(checks: list[CutCheck]) -> str:
    lines = []
    for check in checks:
        where = (f"cut at {check.moment.astimezone(NY):%Y-%m-%d %H:%M} (inside the session)" if check.moment
                 else f"cut after {check.cut}")
        if check.difference is None:
            lines.append(f"{where}: {check.compared} decisions identical")
        else:
            lines.append(f"{where}: LOOK-AHEAD, first differing decision {check.difference}")
    return "\n".join(lines)

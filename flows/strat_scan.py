"""The `strat scan` run (SPEC section 12): classifies the last completed bar of every symbol (core/strat_signals.py),
stores new signals in `strat_signals` (unique per symbol, timeframe, pattern and bar date, so running it again stores
and alerts nothing twice), alerts each new one, and, when the runtime setting options_trading is on, hands the bar's
untraded signals to the option entries (flows/option_entries.py).

A symbol whose signal bars show a split, spin-off, special dividend or bad print (strat_signals.data_faults) gives no
signal: the scan skips it, says so in its summary and JSON (`skipped`: symbol -> reason), and writes one info event
(kind `data_quality`, source `strat`) per skipped symbol to the journal.

A symbol the data source does not have is unknown, not bad data: given with --symbols it stops the scan before
anything is stored (ConfigError, exit 2, naming every one); in the universe it is named in the summary and the JSON
(`unknown`) and recorded as one warning event (kind `data_quality`).
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np

from common import render
from common.errors import ConfigError, DataError
from common.types import Panel
from common.universe import refuse_unknown, unknown_symbols, unknown_text
from core.strat_signals import HISTORY_SESSIONS, TIMEFRAMES, Signal, data_faults, find_signals, weekly_panel
from flows import option_entries

if TYPE_CHECKING:  # annotations only: the runtime module wires every port
    from flows.runtime import Runtime

log = logging.getLogger(__name__)


# --- the scan run -------------------------------------------------------------------------------------------------

@dataclass
class ScanResult:
    timeframe: str
    bar_date: str | None
    symbols: int
    signals: list[Signal] = field(default_factory=list)
    new_ids: list[int] = field(default_factory=list)
    executions: list = field(default_factory=list)
    options_note: str = ""
    skipped: dict[str, str] = field(default_factory=dict)  # symbol -> why its bars cannot be trusted
    unknown: list[str] = field(default_factory=list)  # universe symbols the data source has no data for


def scan_bars(rt: Runtime, symbols: list[str], timeframe: str) -> Panel:
    """Completed bars of the timeframe up to the last completed session (nothing from the session in progress)."""
    return _daily_and_scan_bars(rt, symbols, timeframe)[1]


def _daily_and_scan_bars(rt: Runtime, symbols: list[str], timeframe: str) -> tuple[Panel, Panel]:
    """The daily bars up to the last completed session and the bars of `timeframe` built from them. Data that does
    not reach that session is refused (as the scan refuses it): signals on an older bar would read as today's."""
    last = rt.calendar.last_completed_session(rt.clock.now())
    daily = rt.market.bars(symbols, rt.calendar.sessions_back(last, HISTORY_SESSIONS[timeframe]), last)
    newest = daily.dates[-1].astype(object) if len(daily.dates) else None
    if newest is None or newest < last:
        held = f"ends on {newest}" if newest else f"has none in the {HISTORY_SESSIONS[timeframe]} sessions before it"
        raise DataError(f"strat scan: no bars for {last}, the last completed session (the data {held})")
    return daily, (weekly_panel(daily, last) if timeframe == "1W" else daily)


def _store(journal, signals: list[Signal]) -> list[int]:
    """Insert the signals not stored yet; returns the ids of the new rows."""
    new_ids = []
    with journal.atomic():
        for signal in signals:
            cursor = journal.db.execute(
                "INSERT OR IGNORE INTO strat_signals (symbol, timeframe, pattern, direction, kind, bar_date, "
                "entry_trigger, target, stop, magnitude_pct, reward_risk, status, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'new', ?)",
                [signal.symbol, signal.timeframe, signal.pattern, signal.direction, signal.kind, signal.bar_date,
                 signal.entry_trigger, signal.target, signal.stop, signal.magnitude_pct, signal.reward_risk,
                 journal.now()])
            if cursor.rowcount:
                new_ids.append(cursor.lastrowid)
    return new_ids


def signal_text(signal: Signal | dict) -> str:
    s = asdict(signal) if isinstance(signal, Signal) else signal
    return (f"STRAT {s['timeframe']} {s['symbol']} {s['pattern']} {s['direction']} {s['kind']} ({s['bar_date']}): "
            f"entry {render.money(s['entry_trigger'])}, target {render.money(s['target'])}, stop "
            f"{render.money(s['stop'])}, magnitude {render.level(s['magnitude_pct'], 2)}, R:R {s['reward_risk']:.2f}")


def _alert(journal, ids: list[int]) -> None:
    for row in journal.query(f"SELECT * FROM strat_signals WHERE id IN ({','.join('?' * len(ids))}) AND alerted = 0 "
                             "ORDER BY id", ids):
        with journal.atomic():
            journal.event("info", "alert", signal_text(row), source="strat",
                          detail={"kind": "strat_signal", "signal_id": row["id"], "symbol": row["symbol"]})
            journal.db.execute("UPDATE strat_signals SET alerted = 1 WHERE id = ?", [row["id"]])


def _record_skipped(journal, timeframe: str, skipped: dict[str, str]) -> None:
    with journal.atomic():
        for symbol, reason in skipped.items():
            journal.event("info", "data_quality", f"strat scan {timeframe}: {symbol} skipped: {reason}",
                          source="strat", detail={"kind": "strat_skipped", "timeframe": timeframe, "symbol": symbol,
                                                  "reason": reason})


def _record_unknown(journal, timeframe: str, unknown: list[str]) -> None:
    if unknown:
        journal.event("warning", "data_quality", f"strat scan {timeframe}: {unknown_text(unknown)} in the universe",
                      source="strat", detail={"kind": "strat_unknown", "timeframe": timeframe, "symbols": unknown})


def run_scan(rt: Runtime, timeframe: str, symbols: Sequence[str] | None = None, *, dry_run: bool = False,
             force: bool = False) -> ScanResult:
    """Classify the last completed bar of every symbol, store and alert new signals, trade them as options when
    options_trading is on (never in a dry run)."""
    if timeframe not in TIMEFRAMES:

        raise ConfigError(f"strat scan: timeframe must be 1D or 1W, not {timeframe!r}")
    if symbols:
        refuse_unknown(rt.market, symbols, "strat scan --symbols")
    wanted = list(dict.fromkeys(symbols or rt.universe.symbols("all")))
    unknown = [] if symbols else unknown_symbols(rt.market, wanted)
    _record_unknown(rt.journal, timeframe, unknown)
    daily, panel = _daily_and_scan_bars(rt, wanted, timeframe)
    if len(panel.dates) == 0:
        return ScanResult(timeframe, None, len(wanted), options_note="no completed bars", unknown=unknown)
    skipped = data_faults(daily, panel)
    signals = [signal for signal in find_signals(panel.dates, panel.symbols, panel.open, panel.high, panel.low,
                                                 panel.close, timeframe) if signal.symbol not in skipped]
    result = ScanResult(timeframe, str(np.datetime64(panel.dates[-1], "D")), len(wanted), signals, skipped=skipped,
                        unknown=unknown)
    _record_skipped(rt.journal, timeframe, skipped)
    result.new_ids = _store(rt.journal, signals)
    _alert(rt.journal, result.new_ids)
    result.options_note = _execute(rt, result, dry_run=dry_run, force=force)
    return result


def _execute(rt: Runtime, result: ScanResult, *, dry_run: bool, force: bool) -> str:
    if rt.journal.setting("options_trading") != "on":
        return "options_trading is off: signals and alerts only"
    if dry_run:
        return "dry run: no option orders"

    pending = rt.journal.query("SELECT * FROM strat_signals WHERE timeframe = ? AND bar_date = ? AND status = 'new' "
                               "ORDER BY reward_risk DESC, magnitude_pct DESC, id", [result.timeframe,
                                                                                     result.bar_date])
    result.executions = option_entries.execute_signals(rt, pending, force=force)
    return f"options: {len(result.executions)} signal(s) considered"


def summary_text(result: ScanResult) -> str:
    lines = [f"strat scan {result.timeframe}: {result.symbols} symbols, bar {result.bar_date or '-'}, "
             f"{len(result.signals)} signal(s), {len(result.new_ids)} new"]
    lines += [f"  {signal_text(s)}" for s in result.signals]
    lines += [f"  skipped {symbol}: {reason}" for symbol, reason in result.skipped.items()]
    if result.unknown:
        lines.append(f"  {unknown_text(result.unknown)} (in the universe, not in the data source)")
    if result.options_note:
        lines.append(f"  {result.options_note}")
    for execution in result.executions:
        lines.append(f"  option {execution.text()}")
    return "\n".join(lines)


def signals_json(result: ScanResult) -> str:
    return json.dumps({"command": "strat scan", "timeframe": result.timeframe, "bar_date": result.bar_date,
                       "signals": [asdict(s) for s in result.signals], "new": result.new_ids,
                       "skipped": result.skipped, "unknown": result.unknown}, indent=2)

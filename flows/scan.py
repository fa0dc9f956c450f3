"""The scan loop (SPEC section 5): reconcile, score positions, scan, decide, execute, record, report.

One call of `run_scan` is one cron entry: it takes the scan lock, then runs each requested cap in turn. Every step
is timed and the timings land on the `scans` row. A dry run computes and records everything and sends no order.

Market context fails closed: the risk rules need SPY, VIX and (with the regime filter on) the regime of the previous
session. A trading scan that lacks any of them is refused before it decides, with DataError (exit 2) naming what
is missing; its `scans` row is marked failed. A dry run goes on, with a warning line in its summary, a warning
event, and exposure factor 0 when the regime is missing.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

import executor
import scanner
from common.clock import NY, Session
from common.errors import ConfigError, DataError
from common.locks import scan_lock
from common import render
from common.render import table
from common.types import DAILY, INTRADAY, Panel, Snapshot, finite
from common.universe import UNKNOWN_REASON, unknown_symbols, unknown_text
from core import reversal, rules_decider, systems
from flows import learn, scan_orders
from flows.operator import require_market_open
from flows.prepared_history import market_snapshot, prepared, scan_frame
from journal import reconcile, regime_labels

if TYPE_CHECKING:  # annotations only: the runtime module wires every port
    from flows.runtime import Runtime

log = logging.getLogger(__name__)
CAPS = ("large", "mid", "small")
SCAN_TYPES = ("open", "midday", "close")


@dataclass
class CapScan:
    scan_id: int
    cap: str
    session: date
    fraction: float
    context: dict[str, Any]
    frame: pd.DataFrame  # scanner rows for the cap's universe
    decision: rules_decider.Decision
    positions: list[dict]
    skipped: dict[str, str]
    timings: dict[str, float] = field(default_factory=dict)
    execution: Any = None  # scan_orders.ExecutionReport on a trading scan
    view: str = INTRADAY  # what the snapshot was built from (common/types.py)
    unknown: list[str] = field(default_factory=list)  # universe symbols the data source has no data for
    earlier_session: bool = False  # run outside today's session (before the open, a holiday): the last one was used
    model_version: int | None = None  # the learned-ranking model that gave the frame's `learned` figures


class Timer:
    def __init__(self):
        self.timings: dict[str, float] = {}

    def step(self, name: str):
        timer = self

        class _Step:
            def __enter__(self):
                self.started = time.perf_counter()

            def __exit__(self, *exc):
                timer.timings[name] = round(time.perf_counter() - self.started, 4)
                log.info("scan step", extra={"step": name, "seconds": timer.timings[name]})

        return _Step()


def cap_rules(config, cap: str) -> scanner.CapRules:
    upper = cap.upper()
    return scanner.CapRules(min_volume_surge=config.get(f"MIN_VOLUME_SURGE_{upper}"),
                            min_gap_up=config.get(f"MIN_GAP_UP_PCT_{upper}") / 100.0,
                            min_roc_10d=config.get(f"MIN_ROC_10D_PCT_{upper}") / 100.0)


def open_trades(journal) -> list[dict]:
    """The momentum system's held trades: the scan decides about these and no other (core/systems.py)."""
    return [t for t in journal.held_trades() if systems.of_trade(t) == systems.MOMENTUM]


def symbols_held(journal) -> set[str]:
    """Every symbol any system holds: a scan buys none of them (one position and one stop per symbol)."""
    return {t["symbol"] for t in journal.held_trades("symbol")}


def load_market(rt: Runtime, symbols: list[str], session: Session, fraction: float) -> tuple[Panel, Snapshot]:
    cal = rt.calendar
    start = cal.sessions_back(session.day, scanner.HISTORY_SESSIONS)
    history = rt.market.bars(symbols, start, cal.previous_session(session.day))
    snap = market_snapshot(rt, symbols, session.day, fraction)
    return history, snap


def market_context(rt: Runtime, session: Session, fraction: float, snap: Snapshot) -> dict[str, Any]:
    """SPY, trend, VIX and breadth, each as knowable at the moment (the information-set rule of common/types.py):
    from daily series, today's open during the session and the close from the close on; from a source with
    intraday bars, SPY's price so far.

    SPY and VIX are None when unknown; when the series could not be read at all, `series_error` says why."""
    cal = rt.calendar
    start = cal.sessions_back(session.day, 60)
    try:
        series = rt.market.market_series(start, session.day)
    except DataError as err:
        return {"spy_price": None, "trend": None, "vix": None, "breadth": None, "spy_change_pct": None,
                "series_error": str(err)}
    dates = series.index.values if len(series) else np.array([], dtype="datetime64[ns]")
    day = np.datetime64(session.day, "ns")
    column = {name: series[name].to_numpy() if name in series else np.full(len(series), np.nan)
              for name in ("spy_open", "spy_close", "vix_open", "vix_close")}
    before = dates < day
    today_rows = np.flatnonzero(dates == day)
    spy_price = vix = np.nan
    if today_rows.size:
        today = {name: float(values[today_rows[0]]) for name, values in column.items()}
        spy_price, vix = knowable(today, "spy", fraction), knowable(today, "vix", fraction)
    if hasattr(rt.market, "session_bars") and fraction < 1.0:
        spy_price = _spy_so_far(rt, session, fraction, spy_price)
    spy_before = column["spy_close"][before]
    if not np.isfinite(spy_price) and spy_before.size:
        spy_price = float(spy_before[-1])
    vix_before = column["vix_close"][before]
    vix_before = vix_before[~np.isnan(vix_before)]
    if not np.isfinite(vix) and spy_before.size:
        vix = float(vix_before[-1]) if vix_before.size else np.nan
    if not np.isfinite(spy_price):
        return {"spy_price": None, "trend": None, "vix": None, "breadth": None, "spy_change_pct": None}
    change = np.asarray(snap.price) / np.asarray(snap.prev_close) - 1.0
    return scanner.market_context(spy_before, spy_price, vix, change)


def knowable(today: dict[str, float], prefix: str, fraction: float) -> float:
    """A daily series' value knowable at session fraction `fraction`: the open during the session, the close from
    the close on (NaN when that value is missing: the caller falls back to the previous close)."""
    return today[f"{prefix}_close"] if fraction >= 1.0 else today[f"{prefix}_open"]


def _spy_so_far(rt: Runtime, session: Session, fraction: float, fallback: float) -> float:
    """SPY's price so far from a source with intraday bars (its daily open when SPY has no intraday bar yet)."""
    try:
        price = float(rt.market.snapshot(["SPY"], session.day, fraction).price[0])
    except DataError:
        return fallback
    return price if np.isfinite(price) else fallback


def scan_context(rt: Runtime, session: Session, fraction: float, snap: Snapshot, universe: list[str]) -> dict[str, Any]:
    """`market_context` over the universe's part of the snapshot, or the same computed ahead
    (flows/prepared_history.py)."""
    cache = rt.history_cache
    ready = cache.context(session.day, fraction, universe) if cache is not None else None
    return ready if ready is not None else market_context(rt, session, fraction, snap.select(universe))


def trading_regime(rt: Runtime, session: Session, context: dict[str, Any]) -> tuple[dict | None, str | None]:
    """The regime a scan may use, and one line naming the market context its risk rules need but lack (None when
    nothing is missing): SPY (price and trend), VIX, and the regime (the CRASH block and the allocation factor)."""
    missing = [name for name, key in (("SPY", "spy_price"), ("VIX", "vix")) if context.get(key) is None]
    reasons = [context["series_error"]] if context.get("series_error") else []
    if missing and not reasons:
        reasons.append(f"no {' or '.join(missing)} value up to {session.day} in {regime_labels.source_name(rt.market)}")
    try:
        current = regime_labels.for_trading(rt, session.day)
    except DataError as err:
        current = None
        missing.append("the regime")
        if str(err) not in reasons:
            reasons.append(str(err))
    if not missing:
        return current, None
    return current, f"market context missing {', '.join(missing)} ({'; '.join(reasons)})"


def position_views(trades: list[dict], frame: pd.DataFrame, rev: pd.DataFrame) -> list[dict]:
    # Columns read once and rows found by position: a row Series per holding costs far more than its values.
    in_frame = {symbol: i for i, symbol in enumerate(frame.index)}
    in_rev = {symbol: i for i, symbol in enumerate(rev.index)}
    price, roc_10d, sma20 = (frame[name].to_numpy() for name in ("price", "roc_10d", "sma20"))
    scores, signals = rev["score"].to_numpy(), rev["signals"].to_numpy()
    views = []
    for trade in trades:
        symbol = trade["symbol"]
        row, rev_row = in_frame.get(symbol), in_rev.get(symbol)
        views.append({
            "trade_id": trade["id"], "symbol": symbol, "cap": trade["cap"],
            "reversal_score": int(scores[rev_row]) if rev_row is not None else None,
            "signals": list(signals[rev_row]) if rev_row is not None else [],
            "price": finite(price[row]) if row is not None else None,
            "roc_10d": finite(roc_10d[row]) if row is not None else None,
            "sma20": finite(sma20[row]) if row is not None else None,
            "entry_price": trade["entry_price"],
        })
    return views


def limits_for(rt: Runtime, cap: str, trades: list[dict], max_buys: int | None) -> rules_decider.Limits:
    config, settings = rt.config, rt.journal.settings()
    cap_open = sum(1 for t in trades if t["cap"] == cap)
    cap_max_buys = config.get(f"MAX_BUYS_{cap.upper()}")
    return rules_decider.Limits(
        free_slots=config.max_positions - len(trades),
        free_cap_slots=config.get(f"MAX_POSITIONS_{cap.upper()}") - cap_open,
        max_buys=min(cap_max_buys, max_buys) if max_buys is not None else cap_max_buys,
        buy_score_min=config.buy_score_min, watch_score_min=config.watch_score_min,
        autoclose=settings["autoclose"] == "on", autoclose_threshold=int(settings["autoclose_threshold"]),
        skip_buys=settings["skip_buys"] == "on", halted=settings["halt"] == "on", ranking=settings["ranking"])


def decide(rt: Runtime, scan_id: int, frame: pd.DataFrame, positions: list[dict], held: set[str],
           limits: rules_decider.Limits, context: dict) -> rules_decider.Decision:
    """The configured decider; every decision is stored in `decisions` (the model's prompt and reply too)."""
    journal = rt.journal
    row = {"scan_id": scan_id, "created_at": journal.now(), "decider": rt.config.decider, "valid": 1}
    if rt.config.decider == "llm":
        outcome = _ask_model(rt, scan_id, frame, positions, held, limits, context)
        decision = outcome.decision
        row.update(prompt=outcome.prompt, reply=outcome.reply, valid=int(outcome.valid),
                   fallback_reason=outcome.fallback_reason,
                   parsed=json.dumps(outcome.parsed) if outcome.parsed is not None else None)
        if not outcome.valid:
            journal.event("critical", "alert", f"decider fallback to rules: {outcome.fallback_reason}",
                          source="decider")
    else:
        decision = rules_decider.decide(frame, positions, held, limits)
    row.setdefault("parsed", json.dumps({"buys": decision.buys, "closes": decision.closes, "watch": decision.watch,
                                         "skip_mode": decision.skip_mode}))
    journal.insert_row("decisions", row)
    return decision


def _ask_model(rt: Runtime, scan_id: int, frame, positions, held, limits, context):
    from core.risk import RiskLimits
    from flows.reports import poor_signal_patterns
    from ports import llm_decider  # lazy: only with DECIDER=llm

    journal, config = rt.journal, rt.config
    account = rt.broker.account()
    patterns = poor_signal_patterns(journal)  # unreviewed poor signals, summarised
    scan_row = journal.one("SELECT type, cap FROM scans WHERE id = ?", [scan_id]) or {}
    facts = llm_decider.ScanFacts(RiskLimits.from_config(config), scan_row.get("type"), scan_row.get("cap"))
    watchlist = [r["symbol"] for r in journal.query("SELECT symbol FROM watchlist ORDER BY score DESC")]
    model_context = {"account": {"equity": account.equity, "cash": account.cash}, "market": context,
                     "watchlist": watchlist, "limits": vars(limits)}
    return llm_decider.decide_with_llm(frame, positions, held, limits, model_context,
                                       api_key=config.anthropic_api_key, base_url=config.anthropic_base_url,
                                       model=config.anthropic_model, timeout=config.llm_timeout,
                                       poor_signal_patterns=patterns, scan=facts)


# --- recording ----------------------------------------------------------------------------------------------------

CANDIDATE_FLOATS = ("price", "prev_close", "change_pct", "rvol", "volume_surge", "gap_up", "roc_10d", "sma20",
                    "sma50", "intraday_strength", "rsi_14", "atr_14", "learned")
CANDIDATE_FLAGS = ("stage1", "stage2", "follow_through", "breakout_5d", "sma_aligned", "momentum_breakout")


def start_scan_row(rt: Runtime, scan_type: str, cap: str, session: Session, fraction: float, dry_run: bool) -> int:
    journal = rt.journal
    with journal.atomic():
        return journal.insert_row("scans", {
            "run_id": journal.run_id, "type": scan_type, "cap": cap, "asof": journal.now(),
            "session": str(session.day), "fraction": round(fraction, 6), "started_at": journal.now(),
            "dry_run": int(dry_run), "status": "running", "decider": rt.config.decider})


def candidate_rows(result: CapScan, asof: str) -> list[dict]:
    frame = result.frame
    decisions = result.decision.candidate_decisions
    # The candidates' values read column by column and converted as whole arrays (a missing or infinite float is
    # NULL, flags are 0/1): looking each candidate's row up in the frame costs far more.
    position = {symbol: i for i, symbol in enumerate(frame.index)}
    at = np.array([position[symbol] for symbol in decisions], dtype=int)
    floats = np.array([frame[name].to_numpy(dtype=float)[at] for name in CANDIDATE_FLOATS]).reshape(
        len(CANDIDATE_FLOATS), len(at))
    stored = floats.astype(object)
    stored[~np.isfinite(floats)] = None
    flags = np.array([frame[name].to_numpy(dtype=bool)[at] for name in CANDIDATE_FLAGS]).reshape(
        len(CANDIDATE_FLAGS), len(at)).astype(int)
    columns = dict(zip(CANDIDATE_FLOATS, stored.tolist())) | dict(zip(CANDIDATE_FLAGS, flags.tolist()))
    scores = frame["score"].to_numpy()[at].tolist()
    common = {"scan_id": result.scan_id, "cap": result.cap, "session": str(result.session), "asof": asof,
              "model_version": result.model_version}
    return [{**common, "symbol": symbol, "score": int(scores[k]), "decision": choice, "reason": reason,
             **{name: values[k] for name, values in columns.items()}}
            for k, (symbol, (choice, reason)) in enumerate(decisions.items())]


def record_cap_scan(rt: Runtime, result: CapScan, status: str) -> None:
    """Candidates, position checks, watchlist and the finished scans row, in one transaction."""
    journal = rt.journal
    now = journal.now()
    decision, context = result.decision, result.context
    counts = {"universe_count": len(result.frame), "stage1_count": int(result.frame["stage1"].sum()),
              "stage2_count": int(result.frame["stage2"].sum()), "buy_count": len(decision.buys),
              "watch_count": len(decision.watch), "skipped_count": len(result.skipped)}
    closes = dict(decision.closes)
    with journal.atomic():
        journal.insert_rows("candidates", candidate_rows(result, now))
        journal.insert_rows("position_checks", [{
            "trade_id": p["trade_id"], "symbol": p["symbol"], "checked_at": now, "price": p["price"],
            "pnl_pct": (p["price"] / p["entry_price"] - 1) * 100 if p["price"] and p["entry_price"] else None,
            "reversal_score": p["reversal_score"], "signals": json.dumps(p["signals"]), "urgent": 0,
            "action": f"scan:{'CLOSE' if p['symbol'] in closes else 'HOLD'}", "run_id": journal.run_id}
            for p in result.positions])
        for symbol in decision.watch:
            journal.db.execute(
                "INSERT INTO watchlist (symbol, cap, score, scan_id, added_at, updated_at, reason) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(symbol) DO UPDATE SET score = excluded.score, "
                "scan_id = excluded.scan_id, updated_at = excluded.updated_at, reason = excluded.reason",
                [symbol, result.cap, int(result.frame.loc[symbol, "score"]), result.scan_id, now, now,
                 decision.candidate_decisions[symbol][1]])
        journal.db.execute("DELETE FROM watchlist WHERE symbol NOT IN (SELECT symbol FROM watchlist "
                           "ORDER BY updated_at DESC, score DESC LIMIT ?)", [rules_decider.WATCHLIST_SIZE])
        journal.update_row("scans", "id", result.scan_id, {
            **counts, "finished_at": now, "status": status, "timings": json.dumps(result.timings),
            "skipped": json.dumps({**result.skipped, **dict.fromkeys(result.unknown, UNKNOWN_REASON)}),
            "spy_price": context.get("spy_price"),
            "spy_change_pct": context.get("spy_change_pct"), "spy_trend": context.get("trend"),
            "vix": context.get("vix"), "breadth": context.get("breadth"), "regime": context.get("regime"),
            "exposure_factor": context.get("exposure_factor"), "skip_mode": int(decision.skip_mode),
            "summary": summary_line(result)})


def explain_stage2(decision: rules_decider.Decision, frame: pd.DataFrame, rules: scanner.CapRules) -> None:
    """Name the stage-2 condition each candidate failed in its reason (recorded and shown as such)."""
    for symbol, (choice, reason) in decision.candidate_decisions.items():
        if "stage 2 not passed" in reason and symbol in frame.index:
            decision.candidate_decisions[symbol] = (choice, reason.replace(
                "stage 2 not passed", f"stage 2 not passed: {scanner.stage2_miss(frame.loc[symbol], rules)}"))


def summary_line(result: CapScan) -> str:
    decision = result.decision
    parts = ["HALTED: no buys until `resume`"] if decision.halted else []
    stage1 = int(result.frame["stage1"].sum())
    if result.frame.empty and not result.skipped and not result.unknown:
        parts.append(f"WARNING: the universe has no {result.cap} symbols to scan")
    parts += [f"{result.cap}: {stage1} candidate{'s' if stage1 != 1 else ''}, "
             f"{int(result.frame['stage2'].sum())} passed stage 2",
             f"BUY {', '.join(decision.buys) or '-'}", f"WATCH {', '.join(decision.watch) or '-'}"]
    if decision.closes:
        parts.append("CLOSE " + ", ".join(symbol for symbol, _ in decision.closes))
    execution = result.execution
    if execution is not None:
        parts.append("bought " + (", ".join(_bought_text(symbol, execution.filled.get(symbol))
                                            for symbol in execution.bought) or "-"))
        if execution.pending:
            parts.append(f"entries pending {', '.join(execution.pending)}")
        if execution.closed:
            parts.append(f"closed {', '.join(s for s, _ in execution.closed)}")
        if execution.refused:
            parts.append(f"refused {', '.join(f'{s} ({gate})' for s, gate, _ in execution.refused)}")
        if execution.halted_now:
            parts.append("BUYING HALTED")
    if decision.skip_mode:
        parts.append("SKIP MODE")
    if result.unknown:
        parts.append(unknown_text(result.unknown, SKIPPED_NAMED))
    if result.skipped:
        count = len(result.skipped)
        named = ", ".join(f"{symbol} ({_short(reason)})"
                          for symbol, reason in list(result.skipped.items())[:SKIPPED_NAMED])
        more = f" and {count - SKIPPED_NAMED} more (all in the journal's scans.skipped)" if count > SKIPPED_NAMED \
            else ""
        parts.append(f"{count} symbol{'s' if count != 1 else ''} skipped for bad data: {named}{more}")
    return "; ".join(parts)


SKIPPED_NAMED = 5  # skipped symbols named in a scan's summary line


def _short(reason: str, width: int = 48) -> str:
    """A skip reason short enough for the summary line: its head before the details (": ..."), or cut at a word;
    the whole reason is in the journal's scans.skipped."""
    if len(reason) <= width:
        return reason
    head = reason.split(": ", 1)[0]
    if len(head) <= width:
        return head
    return reason[:width - 3].rsplit(" ", 1)[0].rstrip(",;") + "..."


def _bought_text(symbol: str, fill: dict | None) -> str:
    """"AAPL 25 sh @ $182.30, stop $173.19" (or UNPROTECTED) from the trade the buy opened."""
    if not fill:
        return symbol
    stop = f"stop ${fill['stop']:,.2f}" if fill.get("stop") else "UNPROTECTED: no stop"
    return f"{symbol} {fill['qty']} sh @ ${fill['price']:,.2f}, {stop}"


# --- the loop -----------------------------------------------------------------------------------------------------

def scan_cap(rt: Runtime, scan_type: str, cap: str, dry_run: bool, max_buys: int | None) -> CapScan:
    timer = Timer()
    session, fraction = rt.calendar.current_or_last_session(rt.clock.now())
    scan_id = start_scan_row(rt, scan_type, cap, session, fraction, dry_run)
    try:
        return _scan_cap(rt, timer, scan_id, cap, session, fraction, dry_run, max_buys, scan_type)
    except Exception as err:
        rt.journal.db.table("scans").update(scan_id, {"status": "failed", "error": str(err)[:500],
                                                      "finished_at": rt.journal.now()})
        raise


def _scan_cap(rt: Runtime, timer: Timer, scan_id: int, cap: str, session: Session, fraction: float, dry_run: bool,
              max_buys: int | None, scan_type: str) -> CapScan:
    trades = open_trades(rt.journal)
    universe = rt.universe.symbols(cap)
    held = [t["symbol"] for t in trades]
    symbols = list(dict.fromkeys(universe + held))
    with timer.step("market_data"):
        history, snap = load_market(rt, symbols, session, fraction)
    with timer.step("scanner"):
        frame = scan_frame(rt, history, snap, cap_rules(rt.config, cap))
    with timer.step("reversal"):
        held_snap = snap.select(held)
        rev = reversal.reversal_scores(prepared(rt, reversal.prepare, history, session.day, held), held_snap,
                                       reversal.peak_closes(history, held_snap, trades))
        positions = position_views(trades, frame, rev)
    with timer.step("context"):
        context = scan_context(rt, session, fraction, snap, universe)
        current_regime, missing = trading_regime(rt, session, context)
        if missing and not dry_run:
            raise DataError(f"scan refused: {missing}")
        # no label: factor 1 when the filter is off on purpose, 0 when the label is missing (only a dry run gets here)
        no_label_factor = 0.0 if getattr(rt, "regime_filter", True) else 1.0
        context.update(regime=current_regime["regime"] if current_regime else None,
                       exposure_factor=current_regime["factor"] if current_regime else no_label_factor)
        if missing:
            context["missing"] = missing
            rt.journal.event("warning", "market_context", f"dry run with {missing}; a trading scan is refused",
                             source="scan", detail={"scan_id": scan_id})
    with timer.step("decide"):
        # the frame's rows are the universe, then holdings outside it (symbols above)
        universe_frame = frame.iloc[:len(universe)] if len(universe) == len(set(universe)) else frame.loc[universe]
        limits = limits_for(rt, cap, trades, max_buys)
        limits = dataclasses.replace(limits, regime_blocks_buys=context["regime"] == "CRASH")
        figures, model_version = learn.learned_figures(rt, universe_frame, cap, session.day)
        universe_frame = universe_frame.assign(learned=figures)
        if model_version is not None:
            universe_frame.attrs["learned_note"] = (
                f"learned: model version {model_version}'s estimate of the {learn.lr.TARGET} (higher is better)")
        decision = decide(rt, scan_id, universe_frame, positions, set(held) | symbols_held(rt.journal), limits,
                          context)
        explain_stage2(decision, universe_frame, cap_rules(rt.config, cap))
    unknown = unknown_symbols(rt.market, universe)  # named as unknown, not as bad data
    skipped = {s: r for s, r in universe_frame["skip_reason"].drop(unknown).items() if r is not None}
    result = CapScan(scan_id, cap, session.day, fraction, context, universe_frame, decision, positions, skipped,
                     unknown=unknown)
    result.timings, result.view, result.model_version = timer.timings, snap.view, model_version
    result.earlier_session = not rt.calendar.is_open(rt.clock.now())
    if not dry_run:

        with timer.step("execute"):
            result.execution = scan_orders.execute(rt, result, history, snap, scan_type)
    with timer.step("record"):
        record_cap_scan(rt, result, "dry_run" if dry_run else "done")
    rt.journal.event("info", "scan_summary", summary_line(result), source="scan",
                     detail={"scan_id": scan_id, "buys": decision.buys, "closes": decision.closes})
    return result


def scan_type_for(moment) -> str:
    """The scan a run at this time of day stands for: open before 11:00, midday before 14:30, close after."""

    local = moment.astimezone(NY)
    minutes = local.hour * 60 + local.minute
    return "open" if minutes < 11 * 60 else ("midday" if minutes < 14 * 60 + 30 else "close")


def run_scan(rt: Runtime, scan_type: str, cap: str, *, dry_run: bool, max_buys: int | None = None,
             force: bool = False) -> list[CapScan]:
    """The whole scan command: lock, reconcile, then each requested cap in turn."""

    if scan_type not in SCAN_TYPES:
        raise ConfigError(f"--type: unknown scan type {scan_type!r} (use open, midday or close)")
    if not dry_run:
        require_market_open(rt, force=force, what="scan")
    caps = CAPS if cap == "all" else (cap,)
    with scan_lock(rt.journal.path):
        reconcile.reconcile(rt)
        if not dry_run:
            executor.protect_all(rt)
        results = [scan_cap(rt, scan_type, one_cap, dry_run, max_buys) for one_cap in caps]
        if not dry_run:
            executor.protect_all(rt)
        return results


# --- output -------------------------------------------------------------------------------------------------------

SUMMARY_COLUMNS = ["symbol", "price", "chg%", "rvol", "roc10%", "gap%", "rsi", "score", "decision", "reason"]
# The terminal names the figures; the cells carry the % sign (common/render.py). --json keeps the keys above.
SUMMARY_HEADERS = ["symbol", "price", "change", "rvol", "roc 10d", "gap", "rsi", "score", "decision", "reason"]


def summary_text(results: list[CapScan], limit: int = 15) -> str:
    blocks = []
    for result in results:
        ctx = result.context
        header = (f"[{result.cap}] session {result.session} at {result.fraction:.0%} of the day | "
                  f"SPY {_fmt(ctx.get('spy_price'), '.2f')} ({_fmt_pct(ctx.get('spy_change_pct'))}) "
                  f"trend {ctx.get('trend') or '-'} | VIX {_fmt(ctx.get('vix'), '.1f')} | "
                  f"breadth {_fmt_pct(ctx.get('breadth'), signed=False)} | regime {ctx.get('regime') or '-'} "
                  f"(exposure x{ctx.get('exposure_factor', 1.0):g})")
        if result.view == DAILY and result.fraction < 1.0:
            header += " | daily bars: today's open and the sessions before it"
        if result.earlier_session:
            header += f" | no session open now: this used the last session, {result.session}, as it closed"
        lines = [header] + ([f"WARNING: {ctx['missing']}; a trading scan is refused"] if ctx.get("missing")
                            else []) + [summary_line(result)]
        rows = [_summary_row(result, symbol) for symbol in result.decision.candidate_decisions]
        if rows:
            lines.append(table(rows[:limit], SUMMARY_COLUMNS, SUMMARY_HEADERS))
            if len(rows) > limit:
                lines.append(f"({len(rows) - limit} more candidates not shown: all are in the journal's candidates "
                             "table and in --json)")
        for symbol, reason in result.decision.closes:
            lines.append(f"CLOSE {symbol}: {reason}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _summary_row(result: CapScan, symbol: str) -> dict:
    row = result.frame.loc[symbol]
    choice, reason = result.decision.candidate_decisions[symbol]
    return {"symbol": symbol, "price": finite(row["price"]), "chg%": _pct_value(row["change_pct"]),
            "rvol": finite(row["rvol"]), "roc10%": _pct_value(row["roc_10d"]), "gap%": _pct_value(row["gap_up"]),
            "rsi": finite(row["rsi_14"]), "score": int(row["score"]), "decision": choice, "reason": reason}


def _pct_value(value) -> render.Pct | None:
    number = finite(value)
    return None if number is None else render.Pct(round(number * 100, 2))


def _fmt(value, spec: str) -> str:
    return "-" if value is None or not np.isfinite(value) else format(value, spec)


def _fmt_pct(value, signed: bool = True) -> str:
    if value is None or not np.isfinite(value):
        return "-"
    return render.pct(value * 100) if signed else render.level(value * 100, 0)

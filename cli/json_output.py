"""The `--json` documents of the commands (docs/json.md): what each command's result becomes for a script.

Pure shaping, no output: each *_document() takes what the command's flow returned and gives a dict; `dumps` turns it
into the one JSON document the command prints. Every document carries "command" and, where the text output starts
with the mode line, "mode" (that line, verbatim). Tuples the flows keep positionally become objects with named keys,
so a script reads `row["symbol"]`, not `row[0]`. numpy and pandas are never imported here (status stays light);
their values are recognised only when their module is already loaded.
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Mapping
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from enum import Enum
from pathlib import PurePath
from typing import Any

SCALARS = (str, int, float, bool, type(None))


def to_jsonable(value: Any) -> Any:
    """`value` as plain JSON types: datetimes and times in ISO 8601 (with their UTC offset when aware), dates as
    YYYY-MM-DD, NaN and infinities as None, numpy scalars and arrays as Python numbers and lists, paths as strings,
    enums as their value, sets sorted, tuples as lists, dataclasses as objects of their fields plus their scalar
    properties (Session.early_close is a property: the text shows it, the document must not lose it). Anything
    else becomes its str(), so a value a flow adds later never breaks a command's --json."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    pd = sys.modules.get("pandas")
    if pd is not None and value is pd.NaT:
        return None
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (date, time)):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return to_jsonable(float(value))
    if isinstance(value, Enum):
        return to_jsonable(value.value)
    if isinstance(value, PurePath):
        return str(value)
    np = sys.modules.get("numpy")
    if np is not None and isinstance(value, (np.generic, np.ndarray)):
        return to_jsonable(value.tolist())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _dataclass(value)
    if isinstance(value, Mapping):
        return {_key(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        items = [to_jsonable(v) for v in value]
        try:
            return sorted(items)
        except TypeError:
            return items
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if pd is not None and isinstance(value, pd.Series):
        return to_jsonable(value.to_dict())
    if pd is not None and isinstance(value, pd.DataFrame):
        return to_jsonable(value.to_dict(orient="records"))
    return str(value)


def _key(key: Any) -> str:
    converted = to_jsonable(key)
    return converted if isinstance(converted, str) else json.dumps(converted)


def _dataclass(value: Any) -> dict[str, Any]:
    out = {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    for cls in type(value).__mro__:
        for name, attr in vars(cls).items():
            if isinstance(attr, property) and not name.startswith("_") and name not in out:
                try:
                    result = getattr(value, name)
                except Exception:  # noqa: BLE001 - a property that cannot answer is left out, never fatal
                    continue
                if isinstance(result, SCALARS):
                    out[name] = to_jsonable(result)
    return out


def dumps(document: dict[str, Any]) -> str:
    """The one JSON document a command prints (indent 2; NaN cannot slip through: it is null by then)."""
    return json.dumps(to_jsonable(document), indent=2, allow_nan=False)


def document(command: str, data: Mapping[str, Any], mode: str | None = None) -> dict[str, Any]:
    """{"command", "mode" (when the text has a mode line), **data}; "command" and "mode" win over data's keys."""
    head: dict[str, Any] = {"command": command}
    if mode is not None:
        head["mode"] = mode
    return {**head, **{k: v for k, v in data.items() if k not in head}}


def skipped_document(command: str, mode: str | None, reason: str) -> dict[str, Any]:
    """A run that stopped as a normal outcome (market closed without --force, exit 0): the reason, no data."""
    return document(command, {"skipped": True, "reason": reason}, mode)


# --- the operator commands ----------------------------------------------------------------------------------------

def status_document(data: Mapping[str, Any], mode: str) -> dict[str, Any]:
    """Every key flows.operator.status returns, converted generically: keys added there appear here unchanged.
    Its own "mode" (SIM, PAPER, LIVE) gives way to the mode line, which starts with the same word."""
    return document("status", to_jsonable(dict(data)), mode)


def positions_document(rows: list[dict[str, Any]], mode: str) -> dict[str, Any]:
    return document("positions", {"positions": rows}, mode)


def orders_document(rows: list[dict[str, Any]], mode: str, open_only: bool) -> dict[str, Any]:
    return document("orders", {"open_only": open_only, "orders": rows}, mode)


def settings_document(values: Mapping[str, Any], specs: Mapping[str, Any]) -> dict[str, Any]:
    """The same rows as the text table (key, value, meaning), values as the journal stores them (strings)."""
    return document("settings", {"settings": [{"key": k, "value": values[k], "meaning": spec.help}
                                              for k, spec in specs.items()]})


def reconcile_document(report: Any, stops_placed: list[str], mode: str) -> dict[str, Any]:
    """journal/reconcile.py's ReconcileReport, and the stops placed after it (executor.protect_all)."""
    return document("reconcile", {
        "changed": report.changed, "orders_refreshed": report.orders_refreshed,
        "orders_missing": report.orders_missing, "entries_filled": report.entries_filled,
        "trades_closed": [{"symbol": s, "reason": r, "price": p} for s, r, p in report.trades_closed],
        "adopted": report.adopted, "unknown_closed": report.unknown_closed, "missing": report.missing,
        "busy": report.busy,
        "qty_corrected": [{"symbol": s, "old_qty": old, "new_qty": new} for s, old, new in report.qty_corrected],
        "alerts": report.alerts, "stops_placed": stops_placed}, mode)


def scan_document(results: list[Any], mode: str, scan_type: str, cap: str, dry_run: bool) -> dict[str, Any]:
    """One entry per cap scanned (flows/scan.py's CapScan). Its candidates are every candidate the scan recorded
    (the text table shows the first 15), with the table's columns."""
    from flows.scan import _summary_row, summary_line

    scans = []
    for result in results:
        frame, decision = result.frame, result.decision
        execution = result.execution
        scans.append({
            "scan_id": result.scan_id, "cap": result.cap, "session": result.session,
            "fraction": result.fraction, "view": result.view, "summary": summary_line(result),
            "market": result.context,
            "counts": {"universe": len(frame), "stage1": int(frame["stage1"].sum()),
                       "stage2": int(frame["stage2"].sum()), "buy": len(decision.buys),
                       "watch": len(decision.watch), "skipped": len(result.skipped)},
            "buys": decision.buys, "watch": decision.watch, "holds": decision.holds,
            "closes": [{"symbol": s, "reason": r} for s, r in decision.closes],
            "skip_mode": decision.skip_mode,
            "candidates": [_summary_row(result, symbol) for symbol in decision.candidate_decisions],
            "positions": result.positions, "skipped_symbols": result.skipped, "timings": result.timings,
            "execution": None if execution is None else {
                "bought": execution.bought, "pending": execution.pending,
                "closed": [{"symbol": s, "reason": r} for s, r in execution.closed],
                "refused": [{"symbol": s, "gate": g, "detail": d} for s, g, d in execution.refused],
                "halted_now": execution.halted_now},
        })
    return document("scan", {"type": scan_type, "cap": cap, "dry_run": dry_run, "scans": scans}, mode)


CHECK_COLUMNS = "symbol, trade_id, checked_at, price, pnl_pct, reversal_score, urgent, action"


def run_checks(journal) -> list[dict[str, Any]]:
    """The position checks this run recorded (the monitor's report names the symbols, the journal has the rest)."""
    return journal.query(f"SELECT {CHECK_COLUMNS} FROM position_checks WHERE run_id = ? ORDER BY id",
                         [journal.run_id])


def monitor_document(report: Any, checks: list[dict[str, Any]], mode: str, dry_run: bool) -> dict[str, Any]:
    """monitor.py's MonitorReport (its `failure` never reaches here: the command raises it) and this run's checks."""
    return document("monitor", {
        "dry_run": dry_run, "checked": report.checked, "not_due": report.not_due,
        "circuit_breaker": report.circuit_breaker,
        "exits_started": [{"symbol": s, "reason": r, "priority": p} for s, r, p in report.exits_started],
        "exits_finished": [{"symbol": s, "state": state} for s, state in report.exits_finished],
        "alerts": report.alerts, "errors": report.errors, "checks": checks}, mode)


def rebalance_order_row(order: Any) -> dict[str, Any]:
    """A PlannedOrder as the text table's row (same keys, "52w ratio" included), plus its trade id."""
    return {"action": order.action, "symbol": order.symbol, "side": order.side, "qty": order.qty,
            "price": order.price, "value": round(order.qty * order.price, 2), "target": round(order.target_value, 2),
            "current": round(order.current_value, 2), "52w ratio": order.ratio, "trade_id": order.trade_id}


def rebalance_document(plan: Any, mode: str, universe: str, dry_run: bool, daily: bool) -> dict[str, Any]:
    """flows/rebalance.py's RebalancePlan, or "plan": null when it was not the month's first session."""
    shaped = None if plan is None else {
        "mode": plan.mode, "universe": plan.universe, "session": plan.session, "regime": plan.regime,
        "factor": plan.factor, "equity": plan.equity, "top_n": plan.top_n, "target_value": plan.target_value,
        "orders": [rebalance_order_row(o) for o in plan.orders],
        "trimmed": [{"symbol": s, "reason": r} for s, r in plan.trimmed],
        "refused": [{"symbol": s, "reason": r} for s, r in plan.refused],
        "oversized": [{"symbol": s, "pct": pct} for s, pct in plan.oversized],
        "executed": plan.executed}
    extra = {} if plan is not None else {"reason": "not the month's first session; nothing to do"}
    return document("rebalance", {"universe": universe, "dry_run": dry_run, "daily": daily, "plan": shaped,
                                  **extra}, mode)


# --- jobs and the backtest ----------------------------------------------------------------------------------------

def job_document(result: Any) -> dict[str, Any]:
    """jobs.py's JobResult: the text line is `name: message (counts)`."""
    return document(f"jobs {result.name}", {"job": result.name, "status": result.status, "message": result.message,
                                            "counts": result.counts, "seconds": round(result.seconds, 3)})


def backtest_document(result: Any) -> dict[str, Any]:
    """backtest/replay.py's BacktestResult; "metrics" is the same object as DIR/metrics.json."""
    out_dir = result.out_dir
    chart = out_dir / "equity.png"
    return document("backtest", {
        "system": result.system, "start": result.start, "end": result.end, "sessions": result.sessions,
        "steps": result.steps, "failed_steps": len(result.failures), "failures": result.failures,
        "seconds": round(result.seconds, 3), "out_dir": out_dir, "journal": out_dir / "trades.db",
        "chart": chart if chart.exists() else None, "first_tradable_session": result.first_tradable_session,
        "first_tradable_sessions": result.first_tradable_sessions, "metrics": result.metrics})


def lookahead_document(checks: list[Any]) -> dict[str, Any]:
    """backtest --check-lookahead: one object per cut; "lookahead" is true when any decision changed."""
    return document("backtest", {
        "check_lookahead": True, "lookahead": any(c.difference for c in checks),
        "cuts": [{"cut": c.cut, "moment": c.moment, "compared": c.compared, "identical": c.difference is None,
                  "difference": c.difference} for c in checks]})

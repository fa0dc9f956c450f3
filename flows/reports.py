"""Performance reports from the journal: metrics since inception, weekly, monthly (with a weekly breakdown) and the
poor-signal summary. Each report function returns JSON-ready data (numbers, strings, lists, None); the matching
`*_text()` function is the one place that formats it for a terminal or a chat message.

Equity figures come from the daily_performance snapshots (the nightly `daily-snapshot` job), trade figures from
closed trades, and SPY from the market-series port over exactly the dates the equity figures cover.
"""
from __future__ import annotations

import json
import logging
import math
from collections import Counter
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np

from common import render
from common.clock import day_bounds_utc
from common.errors import ConfigError

if TYPE_CHECKING:  # annotations only: the runtime module wires every port
    from flows.runtime import Runtime

log = logging.getLogger(__name__)
TRADING_DAYS_PER_YEAR = 252
CLOSED_STATUSES = ("closed", "unknown")


# --- pure statistics -----------------------------------------------------------------------------------------------

def trade_stats(pnls: list[float]) -> dict[str, Any]:
    """Win rate, average win and loss, profit factor of realised trade P&Ls (a flat trade counts as a loss)."""
    wins = [p for p in pnls if p > 0]
    losses = [p for p in pnls if p <= 0]
    gross_loss = -sum(losses)
    return {
        "trades": len(pnls), "wins": len(wins), "losses": len(losses),
        "win_rate_pct": len(wins) / len(pnls) * 100 if pnls else None,
        "avg_win": sum(wins) / len(wins) if wins else None,
        "avg_loss": sum(losses) / len(losses) if losses else None,
        # None rather than infinity when nothing was lost, so the value stays valid JSON
        "profit_factor": sum(wins) / gross_loss if gross_loss > 0 else None,
        "realised_pnl": round(sum(pnls), 2),
    }


def return_stats(equity: list[float]) -> dict[str, Any]:
    """Sharpe and Sortino of daily equity returns (annualised with sqrt(252), no risk-free rate) and max drawdown."""
    values = np.asarray(equity, dtype=float)
    returns = values[1:] / values[:-1] - 1 if len(values) > 1 else np.array([])
    out: dict[str, Any] = {"sharpe": None, "sortino": None, "max_drawdown_pct": None, "volatility_pct": None}
    if len(values):
        out["max_drawdown_pct"] = float(np.min(values / np.maximum.accumulate(values) - 1) * 100)
    if len(returns) >= 2:
        std = float(np.std(returns, ddof=1))
        downside = float(np.sqrt(np.mean(np.minimum(returns, 0.0) ** 2)))
        scale = math.sqrt(TRADING_DAYS_PER_YEAR)
        out["volatility_pct"] = std * scale * 100
        out["sharpe"] = float(np.mean(returns)) / std * scale if std > 0 else None
        out["sortino"] = float(np.mean(returns)) / downside * scale if downside > 0 else None
    return out


# --- journal reads -------------------------------------------------------------------------------------------------

def performance_rows(rt: Runtime, start: date | None = None, end: date | None = None) -> list[dict]:
    return rt.journal.query(
        "SELECT * FROM daily_performance WHERE date >= ? AND date <= ? ORDER BY date",
        [(start or date.min).isoformat(), (end or date.max).isoformat()])


def closed_trades(rt: Runtime, start: date | None = None, end: date | None = None) -> list[dict]:
    """Trades closed (with a known P&L) on New York dates start..end inclusive."""
    low = day_bounds_utc(start)[0] if start else ""
    high = day_bounds_utc(end)[1] if end else "9999"
    return rt.journal.query(
        "SELECT id, symbol, cap, qty, entry_time, entry_price, exit_time, exit_price, exit_reason, pnl, pnl_pct, "
        "holding_days FROM trades WHERE status IN (?, ?) AND pnl IS NOT NULL AND exit_time >= ? AND exit_time < ? "
        "ORDER BY exit_time, id", [*CLOSED_STATUSES, low, high])


def _opened_count(rt: Runtime, start: date, end: date) -> int:
    return rt.journal.one(
        "SELECT COUNT(*) AS n FROM trades WHERE entry_time >= ? AND entry_time < ? "
        "AND status NOT IN ('pending', 'canceled')", [day_bounds_utc(start)[0], day_bounds_utc(end)[1]])["n"]


def spy_return_pct(rt: Runtime, first_day: date, last_day: date) -> dict[str, Any]:
    """SPY from the close before `first_day` to the close of `last_day` (the span a set of snapshots covers)."""
    before = rt.calendar.previous_session(first_day)
    series = rt.market.market_series(before, last_day)["spy_close"].dropna()
    closes = {index.date(): float(value) for index, value in series.items()}
    start, end = closes.get(before), closes.get(last_day)
    change = (end / start - 1) * 100 if start and end else None
    return {"spy_start": start, "spy_end": end, "spy_return_pct": change}


# --- reports -------------------------------------------------------------------------------------------------------

def start_of_first_day(row: dict) -> float:
    """The baseline every report and chart measures from: the equity before the first snapshot's day (its equity
    less its day's P&L), so the first day counts, as SPY's first day counts from the close before it."""
    return row["equity"] - (row["day_pnl"] or 0.0)


MIN_ANNUALISED_DAYS = 60  # fewer daily returns than this make an annualised ratio noise, and it is flagged


def annualised_caution(sessions: int, figures: str = "annualised") -> str | None:
    """The warning shown beside annualised figures measured over too few sessions, or None when there are enough."""
    if not sessions or sessions >= MIN_ANNUALISED_DAYS:
        return None
    return f"{figures} from {sessions} session{'s' if sessions != 1 else ''}: too few to mean much"


def metrics(rt: Runtime) -> dict[str, Any]:
    """Since inception: returns from the snapshots (baseline: the equity before the first snapshot's day, as in the
    weekly and monthly reports and the chart), trade statistics, SPY over the same span."""
    rows = performance_rows(rt)
    base = start_of_first_day(rows[0]) if rows else None
    equity = ([base] if rows else []) + [row["equity"] for row in rows]
    out: dict[str, Any] = {"start_date": rows[0]["date"] if rows else None, "end_date": rows[-1]["date"] if rows
                           else None, "days": len(rows), "start_equity": round(base, 2) if rows else None,
                           "end_equity": equity[-1] if rows else None, "total_return_pct": None,
                           "spy_return_pct": None, "vs_spy_pct": None}
    if rows:
        out["total_return_pct"] = (equity[-1] / equity[0] - 1) * 100
        out["spy_return_pct"] = spy_return_pct(rt, date.fromisoformat(rows[0]["date"]),
                                               date.fromisoformat(rows[-1]["date"]))["spy_return_pct"]
        if out["spy_return_pct"] is not None:
            out["vs_spy_pct"] = out["total_return_pct"] - out["spy_return_pct"]
    out.update(return_stats(equity))
    out["annualised_caution"] = annualised_caution(len(rows))
    out.update(trade_stats([t["pnl"] for t in closed_trades(rt)]))
    out["open_trades"] = len(rt.journal.held_trades("id"))
    return out


def period_summary(rt: Runtime, start: date, end: date) -> dict[str, Any]:
    """Equity change, SPY over the same dates, and trades for the New York dates start..end."""
    rows = performance_rows(rt, start, end)
    out: dict[str, Any] = {"start": start.isoformat(), "end": end.isoformat(), "snapshots": len(rows),
                           "start_equity": None, "end_equity": None, "pnl": None, "return_pct": None,
                           "spy_start": None, "spy_end": None, "spy_return_pct": None, "vs_spy_pct": None}
    if rows:
        # the first day's P&L is measured from the snapshot (or start-of-day equity) before it
        base = start_of_first_day(rows[0])
        out.update(start_equity=round(base, 2), end_equity=rows[-1]["equity"],
                   pnl=round(rows[-1]["equity"] - base, 2), return_pct=(rows[-1]["equity"] / base - 1) * 100)
        out.update(spy_return_pct(rt, date.fromisoformat(rows[0]["date"]), date.fromisoformat(rows[-1]["date"])))
        if out["spy_return_pct"] is not None:
            out["vs_spy_pct"] = out["return_pct"] - out["spy_return_pct"]
    trades = closed_trades(rt, start, end)
    out["trades_opened"] = _opened_count(rt, start, end)
    out.update({f"closed_{k}" if k == "trades" else k: v for k, v in trade_stats([t["pnl"] for t in trades]).items()})
    out["closed"] = [{k: t[k] for k in ("symbol", "exit_time", "exit_reason", "pnl", "pnl_pct")} for t in trades]
    return out


def completed_week(rt: Runtime) -> tuple[date, date]:
    """Monday and Sunday of the latest week whose sessions have all closed."""
    today = rt.clock.today()
    monday = today - timedelta(days=today.weekday())
    sessions = rt.calendar.sessions(monday, monday + timedelta(days=6))
    if not sessions or sessions[-1] > rt.calendar.last_completed_session(rt.clock.now()):
        monday -= timedelta(days=7)
    return monday, monday + timedelta(days=6)


def weekly(rt: Runtime, week_of: date | None = None) -> dict[str, Any]:
    """The last completed week (or the week holding `week_of`), with its daily figures."""
    if week_of is None:
        monday, sunday = completed_week(rt)
    else:
        monday = week_of - timedelta(days=week_of.weekday())
        sunday = monday + timedelta(days=6)
        _refuse_future("--week", week_of, monday, rt.clock.today())
    out = period_summary(rt, monday, sunday)
    from flows import learn

    out["model_signals"] = learn.signal_effects(rt, monday, sunday)
    out["days"] = [{k: row[k] for k in ("date", "equity", "day_pnl", "day_pnl_pct", "spy_change_pct")}
                   for row in performance_rows(rt, monday, sunday)]
    return out


def _refuse_future(option: str, given: Any, first: date, today: date) -> None:
    """A period that has not begun has nothing to report: say so instead of printing an empty report."""
    if first > today:
        raise ConfigError(f"{option} {given}: that period has not begun (today is {today})")


def completed_month(rt: Runtime) -> tuple[date, date]:
    """First and last day of the latest month whose sessions have all closed."""
    today = rt.clock.today()
    first = today.replace(day=1)
    last = (first + timedelta(days=32)).replace(day=1) - timedelta(days=1)
    sessions = rt.calendar.sessions(first, last)
    if not sessions or sessions[-1] > rt.calendar.last_completed_session(rt.clock.now()):
        last = first - timedelta(days=1)
        first = last.replace(day=1)
    return first, last


def monthly(rt: Runtime, month: str | None = None) -> dict[str, Any]:
    """The last completed month (or `month`, YYYY-MM) with a breakdown by week (weeks cut at the month's edges)."""
    if month is None:
        first, last = completed_month(rt)
    else:
        first = _parse_month(month)
        last = (first + timedelta(days=32)).replace(day=1) - timedelta(days=1)
        _refuse_future("--month", month, first, rt.clock.today())
    out = period_summary(rt, first, last)
    out["month"] = first.strftime("%Y-%m")
    weeks = []
    monday = first - timedelta(days=first.weekday())
    while monday <= last:
        weeks.append(period_summary(rt, max(monday, first), min(monday + timedelta(days=6), last)))
        monday += timedelta(days=7)
    out["weeks"] = weeks
    return out


def _parse_month(text: str) -> date:
    try:
        return date.fromisoformat(f"{text}-01")
    except ValueError:
        raise ConfigError(f"--month: expected YYYY-MM, got {text!r}") from None


def _json_list(text: str | None) -> list:
    try:
        value = json.loads(text) if text else []
    except ValueError:
        return []
    if isinstance(value, dict):  # entry signals are stored as a name -> value mapping: the true flags count
        return [name for name, flag in value.items() if flag is True]
    return [str(v) for v in value] if isinstance(value, list) else []


def poor_signals(rt: Runtime, top: int = 10) -> dict[str, Any]:
    """Trades closed on a reversal: the reversal triggers and entry signals they most often had, and the pattern
    lines the LLM decider is shown (unreviewed ones only)."""
    rows = rt.journal.query("SELECT * FROM poor_signals ORDER BY id")
    triggers = Counter(name for row in rows for name in _json_list(row["reversal_signals"]))
    entries = Counter(name for row in rows for name in _json_list(row["entry_signals"]))
    reasons = Counter(row["exit_reason"] or "-" for row in rows)
    pnls = [row["pnl_pct"] for row in rows if row["pnl_pct"] is not None]
    ranked = lambda counts: [{"name": name, "count": n} for name, n in counts.most_common(top)]  # noqa: E731
    return {
        "count": len(rows), "unreviewed": sum(1 for row in rows if not row["reviewed"]),
        "avg_pnl_pct": sum(pnls) / len(pnls) if pnls else None,
        "reversal_triggers": ranked(triggers), "entry_signals": ranked(entries), "exit_reasons": ranked(reasons),
        "recent": [{k: row[k] for k in ("id", "symbol", "entry_date", "exit_date", "pnl_pct", "reversal_score",
                                        "reviewed")} for row in rows[-top:][::-1]],
        "patterns": poor_signal_patterns(rt.journal),
    }


# --- poor-signal patterns (what the LLM decider is shown) ----------------------------------------------------------

PATTERN_TOP = 6  # conditions named per line: the prompt wants the strongest few, not every one
# Entry conditions looked for in a trade's entry_signals (the scanner row it was bought from), named as the prompt
# shows them. Fractions as the scanner stores them. stage1 and stage2 are left out: every bought trade has both.
ENTRY_CONDITIONS: tuple[tuple[str, Any], ...] = (
    ("gap_up>=3%", lambda s: _signal(s, "gap_up") >= 0.03),
    ("change>=5%", lambda s: _signal(s, "change_pct") >= 0.05),
    ("rsi>70", lambda s: _signal(s, "rsi_14") > 70),
    ("rvol>=3", lambda s: _signal(s, "rvol") >= 3),
    ("roc_10d>=20%", lambda s: _signal(s, "roc_10d") >= 0.20),
    ("price>10% over sma20", lambda s: _signal(s, "price") > 1.10 * _signal(s, "sma20")),
    ("score>=15", lambda s: _signal(s, "score") >= 15),
    *((flag, lambda s, flag=flag: s.get(flag) is True)
      for flag in ("follow_through", "breakout_5d", "sma_aligned", "momentum_breakout")),
)


def _signal(signals: dict, name: str) -> float:
    """A numeric entry signal, NaN when missing (every comparison with NaN is False: a missing value counts as
    absent)."""
    value = signals.get(name)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def entry_conditions(entry_signals: str | None) -> set[str]:
    """The named conditions a trade's entry met: ENTRY_CONDITIONS over the stored scanner row, or the names
    themselves when the signals were stored as a list."""
    try:
        value = json.loads(entry_signals) if entry_signals else None
    except ValueError:
        return set()
    if isinstance(value, list):
        return {str(name) for name in value}
    if not isinstance(value, dict):
        return set()
    return {name for name, test in ENTRY_CONDITIONS if test(value)}


def _of(counts: Counter, total: int, base: Counter | None = None, base_total: int = 0) -> str:
    """'gap_up>=3% 7 of 9 (other closed trades 3 of 20), rsi>70 5 of 9 (...)', strongest first."""
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:PATTERN_TOP]
    return ", ".join(f"{name} {n} of {total}" + (f" (other closed trades {base[name]} of {base_total})"
                                                 if base is not None and base_total else "")
                     for name, n in ranked)


def summarise_poor_signals(rows: list[dict], others: list[str | None]) -> list[str]:
    """Pattern lines from poor-signal rows: how many, their P&L, the entry conditions they shared (beside how often
    the other closed trades met them, so a condition every trade has does not look like a warning) and the reversal
    signals that closed them. `others` are the entry_signals of closed trades not closed by a reversal."""
    if not rows:
        return []
    total = len(rows)
    pnls = [row["pnl_pct"] for row in rows if row.get("pnl_pct") is not None]
    days = [row["holding_days"] for row in rows if row.get("holding_days") is not None]
    head = f"{total} unreviewed trade{'s' if total != 1 else ''} closed by a reversal"
    if pnls:
        head += f"; average P&L {render.pct(sum(pnls) / len(pnls), 1)}"
    if days:
        head += f", held {sum(days) / len(days):.1f} sessions on average"
    lines = [head + f" (latest: {', '.join(row['symbol'] for row in rows[::-1][:PATTERN_TOP])})"]
    entries = Counter(name for row in rows for name in entry_conditions(row.get("entry_signals")))
    if entries:
        base = Counter(name for signals in others for name in entry_conditions(signals))
        lines.append("entry signals present in trades later closed by a reversal: "
                     + _of(entries, total, base, len(others)))
    triggers = Counter(name for row in rows for name in set(_json_list(row.get("reversal_signals"))))
    if triggers:
        lines.append("reversal signals that closed them: " + _of(triggers, total))
    scores = [row["composite_score"] for row in rows if row.get("composite_score") is not None]
    if scores:
        lines.append(f"composite score at entry: {sum(scores) / len(scores):.1f} on average "
                     f"({min(scores):g}-{max(scores):g})")
    return lines


def poor_signal_patterns(journal) -> list[str]:
    """The unreviewed poor signals of the journal as pattern lines, for the LLM decider's prompt (and the report).

    A poor signal marked reviewed (`report poor-signals --review`) has been dealt with and no longer counts."""
    rows = journal.query("SELECT * FROM poor_signals WHERE reviewed = 0 ORDER BY id")
    if not rows:
        return []
    others = [row["entry_signals"] for row in journal.query(
        "SELECT entry_signals FROM trades WHERE status = 'closed' AND entry_signals IS NOT NULL "
        "AND COALESCE(exit_reason, '') != 'reversal' AND strategy = 'momentum'")]
    return summarise_poor_signals(rows, others)


def review_poor_signals(journal, ids: list[int] | None) -> dict[str, list[int]]:
    """Mark poor signals reviewed (all unreviewed ones when `ids` is None); their patterns leave the prompt.

    An id that names no poor signal is refused (ConfigError) before anything is marked; one already reviewed is
    reported as such. One transaction: a poor signal recorded meanwhile is neither lost nor half-marked."""
    with journal.atomic():
        rows = journal.query("SELECT id, reviewed FROM poor_signals ORDER BY id")
        known = {row["id"]: bool(row["reviewed"]) for row in rows}
        wanted = [i for i, reviewed in known.items() if not reviewed] if ids is None else sorted(set(ids))
        unknown = [i for i in wanted if i not in known]
        if unknown:
            raise ConfigError(f"--review: no poor signal with id {', '.join(map(str, unknown))} "
                              "(`report poor-signals` lists them)")
        marked = [i for i in wanted if not known[i]]
        if marked:
            journal.db.execute(f"UPDATE poor_signals SET reviewed = 1 WHERE id IN ({', '.join('?' * len(marked))})",
                               marked)
    return {"marked": marked, "already_reviewed": [i for i in wanted if known[i]]}


# --- text ----------------------------------------------------------------------------------------------------------

def _num(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def metrics_text(data: dict[str, Any]) -> str:
    if not data["days"] and not data["trades"]:
        return "no daily snapshots or closed trades yet: run `jobs daily-snapshot` after a session"
    pairs = [
        ("period", f"{data['start_date'] or '-'} .. {data['end_date'] or '-'} ({data['days']} snapshots)"),
        ("equity", f"{render.money(data['start_equity'])} -> {render.money(data['end_equity'])}"),
        ("total return", render.pct(data["total_return_pct"])),
        ("SPY return", render.pct(data["spy_return_pct"])),
        ("vs SPY", render.pct(data["vs_spy_pct"])),
        ("Sharpe", _flagged(_num(data["sharpe"]), data)), ("Sortino", _flagged(_num(data["sortino"]), data)),
        ("max drawdown", render.pct(data["max_drawdown_pct"])),
        ("closed trades", f"{data['trades']} ({data['wins']} won, {data['losses']} lost); {data['open_trades']} open"),
        ("win rate", "n/a" if data["win_rate_pct"] is None else render.level(data["win_rate_pct"])),
        ("average win", render.money(data["avg_win"])), ("average loss", render.money(data["avg_loss"])),
        ("profit factor", _num(data["profit_factor"]) if data["profit_factor"] is not None
         else ("n/a (no losing trade)" if data["trades"] else "n/a")),
        ("realised P&L", render.signed_money(data["realised_pnl"])),
    ]
    return "metrics since inception\n" + render.key_values(pairs)


def _flagged(text: str, data: dict[str, Any]) -> str:
    caution = data.get("annualised_caution")
    return f"{text} ({caution})" if caution and text != "n/a" else text


def _period_pairs(data: dict[str, Any]) -> list[tuple[str, Any]]:
    return [
        ("equity", f"{render.money(data['start_equity'])} -> {render.money(data['end_equity'])}"),
        ("P&L", f"{render.signed_money(data['pnl'])} ({render.pct(data['return_pct'])})"),
        ("SPY", f"{render.pct(data['spy_return_pct'])} (vs SPY {render.pct(data['vs_spy_pct'])})"),
        ("trades", f"{data['trades_opened']} opened, {data['closed_trades']} closed "
                   f"({data['wins']} won, {data['losses']} lost), "
                   f"realised {render.signed_money(data['realised_pnl'])}"),
    ]


def weekly_text(data: dict[str, Any]) -> str:
    lines = [f"week {data['start']} .. {data['end']} ({data['snapshots']} snapshots)",
             render.key_values(_period_pairs(data))]
    signals = data.get("model_signals")
    if signals:
        distrusted = (", ".join(f"{e['signal']} ({render.pct(e['effect'] * 100)})" for e in signals["distrusted"])
                      or "none")
        lines.append(f"learned model v{signals['version']} on this week's {signals['candidates']} candidates: entry "
                     f"signals it distrusts (mean learned figure with the signal minus without): {distrusted}")
    if data["days"]:
        days = [{"date": d["date"], "equity": render.as_money(d["equity"]), "day P&L": render.as_money(d["day_pnl"]),
                 "day return": render.as_pct(d["day_pnl_pct"]), "SPY": render.as_pct(d["spy_change_pct"])}
                for d in data["days"]]
        lines += ["", render.table(days, list(days[0]))]
    if data["closed"]:
        closed = [{"symbol": t["symbol"], "closed (New York)": render.ny_stamp(t["exit_time"]),
                   "exit": t["exit_reason"], "P&L": render.as_money(t["pnl"]), "return": render.as_pct(t["pnl_pct"])}
                  for t in data["closed"]]
        lines += ["", render.table(closed, list(closed[0]))]
    return "\n".join(lines)


def monthly_text(data: dict[str, Any]) -> str:
    weeks = [{"week": f"{w['start']}..{w['end']}", "P&L": render.as_money(w["pnl"]),
              "return": render.as_pct(w["return_pct"]), "SPY": render.as_pct(w["spy_return_pct"]),
              "opened": w["trades_opened"], "closed": w["closed_trades"],
              "realised": render.as_money(w["realised_pnl"])} for w in data["weeks"]]
    return "\n".join([f"month {data['month']} ({data['snapshots']} snapshots)", render.key_values(_period_pairs(data)),
                      "", render.table(weeks, ["week", "P&L", "return", "SPY", "opened", "closed", "realised"])])


def poor_signals_text(data: dict[str, Any]) -> str:
    if not data["count"]:
        return "no poor signals recorded (no trade has been closed on a reversal)"
    lines = [f"poor signals: {data['count']} trades closed on a reversal ({data['unreviewed']} unreviewed), "
             f"average P&L {render.pct(data['avg_pnl_pct'], 1)}"]  # as in the pattern lines below
    for title, key in (("reversal triggers", "reversal_triggers"), ("entry signals", "entry_signals"),
                       ("exit reasons", "exit_reasons")):
        lines += ["", title, render.table(data[key], ["name", "count"])]
    lines += ["", "patterns the LLM decider is shown (unreviewed poor signals)"]
    lines += [f"- {line}" for line in data["patterns"]] or ["(none: every poor signal is reviewed)"]
    recent = [{**row, "return": render.as_pct(row["pnl_pct"]), "reviewed": "yes" if row["reviewed"] else "no"}
              for row in data["recent"]]
    lines += ["", "recent (mark reviewed: report poor-signals --review ID[,ID] or --review-all)",
              render.table(recent, ["id", "symbol", "entry_date", "exit_date", "return", "reversal_score", "reviewed"])]
    return "\n".join(lines)

"""The LLM decider (SPEC section 6): one Anthropic Messages API call per scan, its JSON reply validated strictly.

The request asks for structured output: `output_config.format` carries REPLY_SCHEMA (type "json_schema"), the
generally available form of the Messages API (no beta header; the retired beta used a top-level `output_format`), so
the model's text is constrained to that JSON schema. The reply is still untrusted input: it is checked against the
same schema here (a proxy, an older model or a bug must not slip through), then against the scan's facts. Anything
wrong with the call or the reply (a timeout, an HTTP error, prose, a field outside the schema, a wrong type, a symbol
outside the candidates or positions, a cut-off or refused reply) falls back to the rules decider with the same
inputs; the caller raises the alert from `LlmOutcome.valid`. A valid reply still only proposes: buys are trimmed to
the scan's limits here, sizing is never taken from the model, and the executor's risk gates (section 7) check every
order again. One call, no retry and no sleep: a scan must not wait on a struggling model API.
"""
from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from typing import Any

import pandas as pd
import requests

from core import rules_decider
from core.reversal import MAX_REVERSAL_SCORE
from core.risk import RiskLimits
from core.rules_decider import Decision, Limits

log = logging.getLogger(__name__)

ANTHROPIC_VERSION = "2023-06-01"
MAX_TOKENS = 2000
REASON_CHARS = 200  # reasons end up in the journal and in alerts: keep them short
FALLBACK_REASON_CHARS = 300
MAX_POOR_PATTERNS = 10
POOR_PATTERN_CHARS = 400  # a pattern line is a summary made short by its maker; this only bounds a runaway one
MIN_REDACTED_KEY = 8
MAX_SHOWN_NAME = 12  # real symbols are shorter; longer model text is not echoed
POSITION_ACTIONS = ("HOLD", "CLOSE")
CANDIDATE_ACTIONS = ("BUY", "WATCH", "SKIP")
CONVICTION_MIN, CONVICTION_MAX = 0, 10
ACCEPTED_STOP_REASONS = ("end_turn", "stop_sequence")  # anything else (max_tokens, refusal...) is not a full answer
NOT_CHOSEN = "not chosen by the model"
OVER_LIMIT = "over the buy limit"

SYSTEM_PROMPT = (
    "You are the decision engine of a momentum stock-trading agent. You review open positions for momentum "
    "reversal and pick which scanner candidates to buy, watch or skip. You never size positions: a separate risk "
    "engine sizes and vetoes every order. Your reply is one JSON object following the JSON schema attached to "
    "the request, and nothing else."
)


def _object(properties: dict[str, dict]) -> dict:
    """A closed JSON-schema object: every property required, no other (structured output needs both)."""
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


_STRING = {"type": "string"}
_SYMBOLS = {"type": "array", "items": _STRING}
# The reply's shape, sent as the structured-output schema and checked again on the reply. Only keywords that
# structured output supports: ranges (conviction, reversal score) cannot be expressed there and are checked below.
REPLY_SCHEMA: dict = _object({
    "market_assessment": _STRING,
    "position_actions": {"type": "array", "items": _object({
        "symbol": _STRING, "action": {"type": "string", "enum": list(POSITION_ACTIONS)},
        "reversal_score": {"type": "integer", "description": f"0-{MAX_REVERSAL_SCORE}, higher is weaker"},
        "reasoning": _STRING})},
    "candidate_actions": {"type": "array", "items": _object({
        "symbol": _STRING, "action": {"type": "string", "enum": list(CANDIDATE_ACTIONS)},
        "score": {"type": "number"},
        "conviction": {"type": "number", "description": f"{CONVICTION_MIN} (none) to {CONVICTION_MAX} (highest)"},
        "reasoning": _STRING})},
    "execution_plan": _object({"closes": _SYMBOLS, "buys": _SYMBOLS, "new_watchlist": _SYMBOLS}),
    "portfolio_summary": _STRING,
})
OUTPUT_CONFIG = {"format": {"type": "json_schema", "schema": REPLY_SCHEMA}}

# Scanner columns shown to the model, in order; fractions are shown as percent. `learned` (the learned ranking's
# figure) is shown only when the frame has it with at least one value.
_CANDIDATE_COLUMNS = ("score", "learned", "price", "change_pct", "rvol", "roc_10d", "gap_up", "rsi_14", "atr_14",
                      "sma_aligned", "momentum_breakout", "stage2")
LEARNED_NOTE = ("learned: the learned ranking model's estimate of how well this candidate pays over the next "
                "sessions, fitted on past candidates' recorded outcomes; higher is better ('-': no estimate)")
_PERCENT_COLUMNS = {"change_pct", "roc_10d", "gap_up"}
_FENCED = re.compile(r"\A```(?:json)?[ \t]*\r?\n(.*?)\r?\n?```\Z", re.DOTALL)


@dataclass(frozen=True)
class LlmOutcome:
    """What one LLM decision produced: the decision used, and what to store in `decisions`.

    `reply` is the model's text (None when no reply arrived); `parsed` is its JSON object whenever it parsed, even
    if it then failed validation; `fallback_reason` is one line, set exactly when `valid` is False.
    """

    decision: Decision
    prompt: str
    reply: str | None
    parsed: dict | None
    valid: bool
    fallback_reason: str | None


class _Rejected(Exception):
    """Why the call or the reply cannot be used; never leaves this module (it becomes a fallback)."""


@dataclass(frozen=True)
class ScanFacts:
    """What the prompt states about the scan and the gates beyond the decider's own Limits.

    `gates` are the limits the executor's risk gates enforce (RiskLimits.from_config of the scan's config);
    `scan_type` is open, midday or close, `cap` the cap tier scanned. Anything left None is said to be not given.
    """

    gates: RiskLimits | None = None
    scan_type: str | None = None
    cap: str | None = None


def decide_with_llm(candidates: pd.DataFrame, positions: list[dict], held: set[str], limits: Limits,
                    context: dict, *, api_key: str, base_url: str, model: str, timeout: float,
                    poor_signal_patterns: list[str] | None = None, scan: ScanFacts | None = None,
                    session: requests.Session | None = None) -> LlmOutcome:
    """Ask the model once for this scan's decision; fall back to `rules_decider.decide` on any failure.

    `candidates` is the scanner frame (only stage1 rows are candidates; a `learned` column is shown beside the
    score, explained by `candidates.attrs["learned_note"]` when its maker sets one), `positions` the position dicts
    with reversal scores, `context` the account, market context, watchlist and limits to show the model,
    `poor_signal_patterns` the summary lines of unreviewed poor signals (flows/reports.py poor_signal_patterns).
    """
    stage1 = _stage1(candidates)
    note = candidates.attrs.get("learned_note") or LEARNED_NOTE
    prompt = _redact(build_prompt(stage1, positions, held, limits, context, poor_signal_patterns, scan,
                                  learned_note=str(note)), api_key)
    reply: str | None = None
    parsed: dict | None = None
    try:
        body = _post_messages(prompt, api_key=api_key, base_url=base_url, model=model, timeout=timeout,
                              session=session)
        reply = _reply_text(body)
        _check_stop_reason(body)
        parsed = parse_reply(reply)
        validate_reply(parsed, set(stage1.index), held, _watchlist_symbols(context))
    except _Rejected as rejected:
        reason = _one_line(_redact(str(rejected), api_key), FALLBACK_REASON_CHARS)
        log.warning("LLM decider falls back to the rules decider: %s", reason)
        fallback = rules_decider.decide(candidates, positions, held, limits)
        return LlmOutcome(fallback, prompt, reply, parsed, False, reason)
    decision = reply_to_decision(parsed, stage1, positions, held, limits)
    return LlmOutcome(decision, prompt, reply, parsed, True, None)


def _stage1(candidates: pd.DataFrame) -> pd.DataFrame:
    if candidates.empty or "stage1" not in candidates.columns:
        return candidates.iloc[0:0]
    return candidates[candidates["stage1"].eq(True)]


# ---- the prompt ---------------------------------------------------------------------------------------------------

def build_prompt(stage1: pd.DataFrame, positions: list[dict], held: set[str], limits: Limits, context: dict,
                 poor_signal_patterns: list[str] | None, scan: ScanFacts | None = None, *,
                 learned_note: str = LEARNED_NOTE) -> str:
    """The user message: every fact the model decides from, then the reply schema and its rules."""
    sections = [
        ("ACCOUNT", _render_mapping(context.get("account"))),
        ("MARKET CONTEXT", _render_mapping(context.get("market"))),
        *[(key.upper().replace("_", " "), _render_value(value)) for key, value in context.items()
          if key not in ("account", "market", "watchlist", "limits")],
        (f"OPEN POSITIONS (reversal score 0-{MAX_REVERSAL_SCORE}: higher means the momentum is reversing)",
         _positions_table(positions)),
        ("CANDIDATES (stage-1 scanner rows, best score first; % columns in percent)",
         _candidates_table(stage1, held, learned_note)),
        ("CURRENT WATCHLIST", ", ".join(sorted(_watchlist_symbols(context))) or "(empty)"),
        ("LIMITS", _limits_text(limits, positions, context.get("limits"), scan or ScanFacts())),
        ("POOR-SIGNAL PATTERNS (unreviewed trades closed on a reversal; avoid repeating these setups)",
         _poor_signals_text(poor_signal_patterns)),
        ("REPLY FORMAT", _reply_instructions(limits, positions)),
    ]
    return "\n\n".join(f"## {title}\n{text}" for title, text in sections)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "Y" if value else "N"
    if isinstance(value, float):
        # Money and prices read best with cents; ratios and indicators with a few significant digits.
        if math.isnan(value):
            return "-"
        return f"{value:.2f}" if abs(value) >= 1 else f"{value:.4g}"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str, separators=(",", ":"))
    return str(value)


def _render_mapping(mapping: Any) -> str:
    if not isinstance(mapping, dict) or not mapping:
        return "(not given)"
    return "\n".join(f"- {key}: {_fmt(value)}" for key, value in mapping.items())


def _render_value(value: Any) -> str:
    return _render_mapping(value) if isinstance(value, dict) else _fmt(value)


def _percent(value: Any) -> str:
    number = _number_or_none(value)
    return "-" if number is None else f"{number * 100:+.1f}"


def _number_or_none(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _positions_table(positions: list[dict]) -> str:
    if not positions:
        return "(no open positions)"
    lines = ["symbol | entry | price | pnl% | reversal_score | roc_10d% | sma20 | reversal signals"]
    for pos in positions:
        entry, price = _number_or_none(pos.get("entry_price")), _number_or_none(pos.get("price"))
        pnl = price / entry - 1 if entry and price is not None else None
        lines.append(" | ".join([str(pos["symbol"]), _fmt(entry), _fmt(price), _percent(pnl),
                                 _fmt(pos.get("reversal_score")), _percent(pos.get("roc_10d")),
                                 _fmt(_number_or_none(pos.get("sma20"))), _fmt(pos.get("signals"))]))
    return "\n".join(lines)


def _candidates_table(stage1: pd.DataFrame, held: set[str], learned_note: str = LEARNED_NOTE) -> str:
    if stage1.empty:
        return "(no candidates this scan)"
    columns = [c for c in _CANDIDATE_COLUMNS if c in stage1.columns and (c != "learned" or _has_values(stage1[c]))]
    ranked = stage1.sort_values("score", ascending=False, kind="mergesort") if "score" in columns else stage1
    header = ["symbol", *[c.removesuffix("_pct") + "%" if c in _PERCENT_COLUMNS else c for c in columns], "held"]
    lines = [" | ".join(header)]
    for symbol, row in ranked.iterrows():
        cells = [_percent(row[c]) if c in _PERCENT_COLUMNS else _fmt(_plain(row[c])) for c in columns]
        lines.append(" | ".join([str(symbol), *cells, "Y" if symbol in held else "N"]))
    if "learned" in columns:
        lines.append(_one_line(learned_note, FALLBACK_REASON_CHARS))
    return "\n".join(lines)


def _has_values(column: pd.Series) -> bool:
    """Any finite number: an all-NaN `learned` column means no model is active, and the model is not shown it."""
    return bool(pd.to_numeric(column, errors="coerce").notna().any())


def _plain(value: Any) -> Any:
    """numpy scalars -> Python scalars, so they format like the rest."""
    return value.item() if hasattr(value, "item") else value


def _limits_text(limits: Limits, positions: list[dict], extra: Any, scan: ScanFacts) -> str:
    skip_mode = rules_decider.in_skip_mode(positions, limits)
    block = rules_decider.buy_block_reason(limits, skip_mode)
    lines = [
        _scan_line(scan),
        f"- free position slots: {limits.free_slots} (this cap: {limits.free_cap_slots}); "
        f"max buys this scan: {limits.max_buys}",
        f"- BUY at most {_buy_slots(limits)} symbols" if block is None else f"- buying is blocked ({block}): BUY none",
        f"- a BUY needs score >= {limits.buy_score_min} and stage2 Y; WATCH needs score >= {limits.watch_score_min}",
        _close_rule(limits),
        f"- watchlist: at most {rules_decider.WATCHLIST_SIZE} symbols",
        *_gate_lines(scan),
    ]
    if isinstance(extra, dict):
        lines += [f"- {key}: {_fmt(value)}" for key, value in extra.items()]
    return "\n".join(lines)


def _scan_line(scan: ScanFacts) -> str:
    kind = f"{scan.scan_type} scan" if scan.scan_type else "scan (type not given)"
    return f"- this is the {kind} of the {scan.cap} caps" if scan.cap else f"- this is the {kind}"


def _share(fraction: float) -> str:
    """0.6 -> '60%' (the gates hold fractions; the settings are percents)."""
    return f"{fraction * 100:g}%"


def _gate_lines(scan: ScanFacts) -> list[str]:
    """The risk gates' limits, read from the scan's RiskLimits, so the prompt says what the executor enforces."""
    gates = scan.gates
    if gates is None:
        return ["- risk gates: not given here; the executor still checks every order against them"]
    per_cap = "; ".join(f"{cap} {gates.max_positions_by_cap[cap]} positions, {gates.max_buys_by_cap.get(cap, '-')} "
                        f"buys per scan" for cap in gates.max_positions_by_cap)
    return [
        "- risk gates (the executor refuses any order beyond these, whatever this reply says):",
        f"  - position size {_share(gates.position_size_frac)} of equity ({gates.sizing_method} sizing; "
        "the engine sizes every order)",
        f"  - invested exposure at most {_share(gates.max_exposure_frac)} of equity times the regime factor; "
        f"at most {gates.max_positions} open positions",
        f"  - per cap: {per_cap}",
        f"  - open risk to stops at most {_share(gates.max_heat_frac)} of equity; return correlation with a "
        f"holding at most {gates.max_correlation:g}; a day loss of {_share(gates.daily_loss_limit_frac)} of "
        "start-of-day equity trips the circuit breaker (everything closes, no buys)",
    ]


def _close_rule(limits: Limits) -> str:
    thesis = "when roc_10d < 0 and price < SMA20 (thesis broken)"
    if limits.autoclose:
        return f"- CLOSE a position at reversal score >= {limits.autoclose_threshold} or {thesis}"
    return f"- auto-close is off: CLOSE on reversal at your judgement, or {thesis}"


def _poor_signals_text(patterns: list[str] | None) -> str:
    """The summary lines as given (their maker counts and words them); anything else is shown as its JSON."""
    if not patterns:
        return "(none unreviewed)"
    lines = [pattern if isinstance(pattern, str) else _fmt(pattern) for pattern in patterns[:MAX_POOR_PATTERNS]]
    return "\n".join(f"- {_one_line(line, POOR_PATTERN_CHARS)}" for line in lines)


def _reply_instructions(limits: Limits, positions: list[dict]) -> str:
    blocked = rules_decider.buy_block_reason(limits, rules_decider.in_skip_mode(positions, limits))
    buy_cap = 0 if blocked else _buy_slots(limits)
    return (
        "Reply with ONE JSON object following the JSON schema attached to this request, and nothing else:\n"
        "{\n"
        '  "market_assessment": string,\n'
        '  "position_actions": [{"symbol": string, "action": "HOLD" | "CLOSE", "reversal_score": integer '
        f'0-{MAX_REVERSAL_SCORE}, "reasoning": string}}],\n'
        '  "candidate_actions": [{"symbol": string, "action": "BUY" | "WATCH" | "SKIP", "score": number, '
        f'"conviction": number from {CONVICTION_MIN} (none) to {CONVICTION_MAX} (highest), "reasoning": string}}],\n'
        '  "execution_plan": {"closes": [symbol], "buys": [symbol], "new_watchlist": [symbol]},\n'
        '  "portfolio_summary": string\n'
        "}\n"
        "Rules: position_actions name only open positions, each once; candidate_actions name only the listed "
        "candidates, each once; execution_plan.closes lists exactly the CLOSE actions; execution_plan.buys lists "
        f"exactly the BUY actions, best first, at most {buy_cap}; new_watchlist holds at most "
        f"{rules_decider.WATCHLIST_SIZE} symbols from the candidates or the current watchlist; no symbol twice in a "
        "list; no fields beyond these. Do not include quantities, sizes or prices to pay: the risk engine sizes "
        "every order."
    )


def _buy_slots(limits: Limits) -> int:
    return max(0, min(limits.free_slots, limits.free_cap_slots, limits.max_buys))


def _watchlist_symbols(context: dict) -> set[str]:
    """The current watchlist, given either as symbols or as rows with a symbol."""
    entries = context.get("watchlist") or []
    symbols = {e.get("symbol") if isinstance(e, dict) else e for e in entries}
    return {s for s in symbols if isinstance(s, str)}


# ---- the call -----------------------------------------------------------------------------------------------------

def _post_messages(prompt: str, *, api_key: str, base_url: str, model: str, timeout: float,
                   session: requests.Session | None) -> dict:
    """One POST /v1/messages; any transport or HTTP failure becomes a _Rejected with a one-line reason."""
    headers = {"x-api-key": api_key, "anthropic-version": ANTHROPIC_VERSION, "content-type": "application/json"}
    body = {"model": model, "max_tokens": MAX_TOKENS, "system": SYSTEM_PROMPT,
            "messages": [{"role": "user", "content": prompt}], "temperature": 0, "output_config": OUTPUT_CONFIG}
    poster = session if session is not None else requests
    try:
        response = poster.post(f"{base_url.rstrip('/')}/v1/messages", headers=headers, json=body,
                               timeout=(timeout, timeout))
    except requests.Timeout as exc:
        raise _Rejected(f"model API timed out after {timeout:g} s") from exc
    except requests.ConnectionError as exc:
        raise _Rejected(f"model API unreachable ({type(exc).__name__})") from exc
    except requests.RequestException as exc:
        raise _Rejected(f"model API request failed ({type(exc).__name__})") from exc
    if response.status_code != 200:
        raise _Rejected(_http_error_reason(response))
    try:
        reply = response.json()
    except ValueError as exc:
        raise _Rejected("model API answered 200 with a body that is not JSON") from exc
    if not isinstance(reply, dict):
        raise _Rejected("model API answered 200 with a body that is not a message object")
    return reply


def _http_error_reason(response: requests.Response) -> str:
    """'HTTP 529 overloaded_error: Overloaded', from the documented error body when there is one."""
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        # Not truncated here: the key is masked in the whole reason first, then the reason is cut.
        detail = f" {_fmt(error.get('type'))}: {_fmt(error.get('message'))}"
    else:
        detail = ""
    retry_after = response.headers.get("retry-after")
    suffix = f" (retry-after {retry_after} s)" if retry_after else ""
    return f"model API answered HTTP {response.status_code}{detail}{suffix}"


def _reply_text(body: dict) -> str:
    """The text of the first text block: the decision JSON lives there."""
    content = body.get("content")
    blocks = content if isinstance(content, list) else []
    for block in blocks:
        if isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str):
            return block["text"]
    raise _Rejected("model reply has no text block")


def _check_stop_reason(body: dict) -> None:
    stop_reason = body.get("stop_reason")
    if stop_reason == "max_tokens":
        raise _Rejected(f"model reply cut off at max_tokens ({MAX_TOKENS})")
    if stop_reason not in ACCEPTED_STOP_REASONS:
        raise _Rejected(f"model reply stopped with stop_reason {_show(_fmt(stop_reason))}")


# ---- parsing and validation ---------------------------------------------------------------------------------------

def parse_reply(text: str) -> dict:
    """The reply's JSON object: bare, or inside one ```json fence; prose, NaN and repeated keys are refused."""
    stripped = text.strip()
    fenced = _FENCED.match(stripped)
    payload = fenced.group(1) if fenced else stripped
    try:
        parsed = json.loads(payload, parse_constant=_refuse_constant, object_pairs_hook=_unique_keys)
    except (ValueError, _Rejected) as exc:
        detail = str(exc) if isinstance(exc, _Rejected) else "not JSON"
        raise _Rejected(f"model reply is {detail}") from exc
    if not isinstance(parsed, dict):
        raise _Rejected("model reply is JSON but not an object")
    return parsed


def _refuse_constant(name: str) -> Any:
    raise _Rejected(f"JSON with {name}")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    keys = [key for key, _ in pairs]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise _Rejected(f"JSON with a repeated key {repeated[0]!r}")
    return dict(pairs)


def validate_reply(parsed: Any, candidate_symbols: set[str], held: set[str], watchlist: set[str]) -> None:
    """Check the reply against REPLY_SCHEMA, then against the scan's facts.

    Raises _Rejected on the first violation: a field outside the schema or missing, a wrong type or enum, a symbol
    that is not held or not a stage-1 candidate, a repeated symbol, a conviction out of range, or an execution plan
    that disagrees with the actions. Structured output makes schema violations rare, not impossible.
    """
    _conform(parsed, REPLY_SCHEMA, ())
    plan = parsed["execution_plan"]
    _check_position_actions(parsed["position_actions"], held)
    _check_candidate_actions(parsed["candidate_actions"], candidate_symbols)
    _check_plan(plan, parsed["position_actions"], parsed["candidate_actions"], held, candidate_symbols | watchlist)


_KIND_NAMES = {"string": "a string", "integer": "an integer", "number": "a number", "array": "a list",
               "object": "an object"}


def _where(path: tuple[str, ...]) -> str:
    """'reply', 'reply.execution_plan', then 'execution_plan.buys', 'position_actions[0].action'."""
    if len(path) < 2:
        return ".".join(("reply", *path))
    return "".join(part if part.startswith("[") or i == 0 else f".{part}" for i, part in enumerate(path))


def _conform(value: Any, schema: dict, path: tuple[str, ...]) -> None:
    """`value` against the subset of JSON schema REPLY_SCHEMA uses (type, enum, properties, required,
    additionalProperties false, items)."""
    where = _where(path)
    kind = schema["type"]
    if not _is_kind(value, kind):
        raise _Rejected(f"{where} is not {_KIND_NAMES[kind]}")
    if "enum" in schema and value not in schema["enum"]:
        choices = schema["enum"]
        listed = ", ".join(choices[:-1]) + f" or {choices[-1]}" if len(choices) > 1 else choices[0]
        raise _Rejected(f"{where} {_show(_fmt(value))} is not {listed}")
    if kind == "object":
        missing = [key for key in schema["required"] if key not in value]
        if missing:
            raise _Rejected(f"{where} lacks {', '.join(missing)}")
        extra = [key for key in value if key not in schema["properties"]]
        if extra:
            raise _Rejected(f"{where} has fields outside the schema: {', '.join(_show(k) for k in extra[:5])}")
        for key, child in schema["properties"].items():
            _conform(value[key], child, (*path, key))
    elif kind == "array":
        for i, item in enumerate(value):
            _conform(item, schema["items"], (*path, f"[{i}]"))


def _is_kind(value: Any, kind: str) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind == "array":
        return isinstance(value, list)
    return isinstance(value, dict)  # "object"


def _show(symbol: str) -> str:
    """A model-given name for a reason: short ones verbatim, long ones only by length (never a piece of a secret)."""
    return repr(symbol) if len(symbol) <= MAX_SHOWN_NAME else f"a {len(symbol)}-character name"


def _check_unique(symbols: list[str], where: str) -> None:
    seen: set[str] = set()
    for symbol in symbols:
        if symbol in seen:
            raise _Rejected(f"{where} names {_show(symbol)} twice")
        seen.add(symbol)


def _check_position_actions(actions: list[dict], held: set[str]) -> None:
    _check_unique([a["symbol"] for a in actions], "position_actions")
    for action in actions:
        if action["symbol"] not in held:
            raise _Rejected(f"position_actions names {_show(action['symbol'])}, which is not held")


def _check_candidate_actions(actions: list[dict], candidate_symbols: set[str]) -> None:
    _check_unique([a["symbol"] for a in actions], "candidate_actions")
    for action in actions:
        symbol = action["symbol"]
        if symbol not in candidate_symbols:
            raise _Rejected(f"candidate_actions names {_show(symbol)}, which is not a stage-1 candidate")
        if not CONVICTION_MIN <= action["conviction"] <= CONVICTION_MAX:
            raise _Rejected(f"conviction {action['conviction']!r} for {_show(symbol)} is outside "
                            f"{CONVICTION_MIN}-{CONVICTION_MAX}")


def _check_plan(plan: dict, positions: list[dict], candidates: list[dict], held: set[str],
                watchable: set[str]) -> None:
    for key in ("closes", "buys", "new_watchlist"):
        _check_unique(plan[key], f"execution_plan.{key}")
    closes, buys = plan["closes"], plan["buys"]
    for symbol in closes:
        if symbol not in held:
            raise _Rejected(f"execution_plan.closes names {_show(symbol)}, which is not held")
    close_actions = {a["symbol"] for a in positions if a["action"] == "CLOSE"}
    if set(closes) != close_actions:
        raise _Rejected("execution_plan.closes disagrees with the CLOSE position actions")
    buy_actions = {a["symbol"] for a in candidates if a["action"] == "BUY"}
    for symbol in buys:
        if symbol not in buy_actions:
            raise _Rejected(f"execution_plan.buys names {_show(symbol)}, which is not a candidate with action BUY")
    if set(buys) != buy_actions:
        raise _Rejected("execution_plan.buys leaves out candidates with action BUY")
    for symbol in plan["new_watchlist"]:
        if symbol not in watchable:
            raise _Rejected(f"execution_plan.new_watchlist names {_show(symbol)}, "
                            f"which is neither a candidate nor on the watchlist")


# ---- the decision -------------------------------------------------------------------------------------------------

def reply_to_decision(parsed: dict, stage1: pd.DataFrame, positions: list[dict], held: set[str],
                      limits: Limits) -> Decision:
    """A validated reply as a Decision; buys beyond this scan's limits are demoted, never trusted."""
    plan = parsed["execution_plan"]
    decision = Decision(skip_mode=rules_decider.in_skip_mode(positions, limits), halted=limits.halted)
    position_reasons = {a["symbol"]: a["reasoning"] for a in parsed["position_actions"]}
    decision.closes = [(s, _one_line(position_reasons.get(s) or "closed by the model", REASON_CHARS))
                       for s in plan["closes"]]
    closing = set(plan["closes"])
    decision.holds = [p["symbol"] for p in positions if p["symbol"] not in closing]
    decision.candidate_decisions = {symbol: ("SKIP", NOT_CHOSEN) for symbol in stage1.index}
    for action in parsed["candidate_actions"]:
        decision.candidate_decisions[action["symbol"]] = (action["action"],
                                                          _one_line(action["reasoning"], REASON_CHARS))
    demoted = _apply_buy_limits(decision, plan["buys"], held, limits)
    watch = [s for s in [*plan["new_watchlist"], *demoted] if s not in held and s not in decision.buys]
    decision.watch = list(dict.fromkeys(watch))[:rules_decider.WATCHLIST_SIZE]
    log.info("LLM decision: %d closes, %d buys, %d watched", len(decision.closes), len(decision.buys),
             len(decision.watch))
    return decision


def _apply_buy_limits(decision: Decision, proposed: list[str], held: set[str], limits: Limits) -> list[str]:
    """Keep the model's buys in its order up to the free slots; return the demoted ones (now WATCH)."""
    block = rules_decider.buy_block_reason(limits, decision.skip_mode)
    slots = _buy_slots(limits)
    demoted: list[str] = []
    for symbol in proposed:
        if symbol in held:
            decision.candidate_decisions[symbol] = ("SKIP", "already held")
        elif block is not None:
            decision.candidate_decisions[symbol] = ("WATCH", f"chosen by the model but {block}")
            demoted.append(symbol)
        elif len(decision.buys) >= slots:
            decision.candidate_decisions[symbol] = ("WATCH", OVER_LIMIT)
            demoted.append(symbol)
        else:
            decision.buys.append(symbol)
    if len(decision.buys) < len(proposed):
        log.warning("LLM proposed %d buys; %d kept within this scan's limits", len(proposed), len(decision.buys))
    return demoted


# ---- text hygiene -------------------------------------------------------------------------------------------------

def _one_line(text: str, limit: int) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[:limit - 3] + "..."


def _redact(text: str, api_key: str) -> str:
    """Mask the key wherever it could have been echoed (an error message, a context value).

    Real keys are long; masking a key of a few characters would garble ordinary words instead.
    """
    return text.replace(api_key, "***") if len(api_key) >= MIN_REDACTED_KEY else text

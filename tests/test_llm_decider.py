"""The LLM decider against the local fake Messages API: the request (structured output), the prompt, a valid reply,
and adversarial replies, both those breaking the reply schema and those following it with wrong facts."""
from __future__ import annotations

import copy
import logging
import socket
import time

import numpy as np
import pandas as pd
import pytest
import requests

from core import rules_decider
from core.risk import RiskLimits
from core.rules_decider import Decision, Limits
from fake_messages_api import schema_violation
from ports.llm_decider import REPLY_SCHEMA, LlmOutcome, ScanFacts, decide_with_llm

API_KEY = "sk-ant-test-0123456789abcdef"
MODEL = "claude-test-model"
HELD = {"AAPL", "MSFT"}
LIMITS = Limits(free_slots=3, free_cap_slots=3, max_buys=2)
POSITIONS = [
    {"symbol": "AAPL", "reversal_score": 6, "signals": ["rsi_divergence", "volume_climax"], "price": 180.0,
     "roc_10d": 0.02, "sma20": 175.0, "entry_price": 170.0},
    {"symbol": "MSFT", "reversal_score": 1, "signals": [], "price": 420.0, "roc_10d": 0.05, "sma20": 400.0,
     "entry_price": 390.0},
]
CONTEXT = {
    "account": {"equity": 100_000.0, "cash": 40_000.0},
    "market": {"spy": 540.2, "trend": "UP", "vix": 13.5, "breadth": 0.62, "regime": "BULL"},
    "watchlist": ["CRWD"],
    "limits": {"max_positions": 5},
}
POOR_SIGNALS = ["9 unreviewed trades closed by a reversal (RIVN, ...); average P&L -3.1%",
                "entry signals present in trades later closed by a reversal: gap_up>=3% 7 of 9, rsi>70 5 of 9"]


def _row(score: int, stage2: bool, *, stage1: bool = True, price: float = 50.0) -> dict:
    return {"stage1": stage1, "stage2": stage2, "score": score, "price": price, "change_pct": 0.041, "rvol": 2.5,
            "volume_surge": 2.5, "roc_10d": 0.12, "gap_up": 0.01, "rsi_14": 66.0, "atr_14": 1.8,
            "sma_aligned": True, "momentum_breakout": stage2}


def _candidates(rows: dict[str, dict]) -> pd.DataFrame:
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("symbol")


CANDIDATES = _candidates({
    "NVDA": _row(15, True, price=120.0), "AMD": _row(14, True, price=160.0), "TSLA": _row(10, False),
    "PLTR": _row(6, False), "JUNK": _row(3, False, stage1=False, price=4.0),
})

VALID_REPLY = {
    "market_assessment": "Uptrend with healthy breadth; momentum favoured.",
    "position_actions": [
        {"symbol": "AAPL", "action": "CLOSE", "reversal_score": 6, "reasoning": "Reversal score 6: volume climax."},
        {"symbol": "MSFT", "action": "HOLD", "reversal_score": 1, "reasoning": "Trend intact."},
    ],
    "candidate_actions": [
        {"symbol": "AMD", "action": "BUY", "score": 14, "conviction": 8, "reasoning": "Clean breakout."},
        {"symbol": "NVDA", "action": "BUY", "score": 15, "conviction": 7, "reasoning": "Strong volume."},
        {"symbol": "TSLA", "action": "WATCH", "score": 10, "conviction": 4, "reasoning": "No breakout yet."},
    ],
    "execution_plan": {"closes": ["AAPL"], "buys": ["AMD", "NVDA"], "new_watchlist": ["TSLA", "CRWD"]},
    "portfolio_summary": "Rotate out of AAPL into AMD and NVDA.",
}

EXPECTED = Decision(
    closes=[("AAPL", "Reversal score 6: volume climax.")], holds=["MSFT"], buys=["AMD", "NVDA"],
    watch=["TSLA", "CRWD"],
    candidate_decisions={"NVDA": ("BUY", "Strong volume."), "AMD": ("BUY", "Clean breakout."),
                         "TSLA": ("WATCH", "No breakout yet."), "PLTR": ("SKIP", "not chosen by the model")},
    skip_mode=False)


def _decide(fake, *, candidates: pd.DataFrame = CANDIDATES, limits: Limits = LIMITS, timeout: float = 5.0,
            positions: list[dict] = POSITIONS, held: set[str] = HELD, **kwargs) -> LlmOutcome:
    return decide_with_llm(candidates, positions, held, limits, CONTEXT, api_key=API_KEY, base_url=fake.url,
                           model=MODEL, timeout=timeout, poor_signal_patterns=POOR_SIGNALS, **kwargs)


def _reply(**changes) -> dict:
    reply = copy.deepcopy(VALID_REPLY)
    reply.update(changes)
    return reply


def _rules(candidates: pd.DataFrame = CANDIDATES, limits: Limits = LIMITS) -> Decision:
    return rules_decider.decide(candidates, POSITIONS, HELD, limits)


# ---- the request --------------------------------------------------------------------------------------------------

def test_one_request_with_the_documented_headers_and_body(fake_messages):
    fake_messages.reply_decision(VALID_REPLY)
    outcome = _decide(fake_messages)

    assert fake_messages.count() == 1
    sent = fake_messages.requests[0]
    assert sent.path == "/v1/messages"
    assert sent.headers["x-api-key"] == API_KEY
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.headers["content-type"] == "application/json"
    assert "anthropic-beta" not in sent.headers  # structured output is generally available: no beta header
    assert set(sent.body) == {"model", "max_tokens", "system", "messages", "temperature", "output_config"}
    assert (sent.body["model"], sent.body["max_tokens"], sent.body["temperature"]) == (MODEL, 2000, 0)
    assert sent.body["messages"] == [{"role": "user", "content": outcome.prompt}]
    assert "JSON" in sent.body["system"]
    assert sent.body["output_config"] == {"format": {"type": "json_schema", "schema": REPLY_SCHEMA}}


def test_the_schema_sent_is_closed_and_names_every_reply_field():
    assert REPLY_SCHEMA["required"] == ["market_assessment", "position_actions", "candidate_actions",
                                        "execution_plan", "portfolio_summary"]
    assert schema_violation(VALID_REPLY, REPLY_SCHEMA) is None
    assert schema_violation({**VALID_REPLY, "qty": 5}, REPLY_SCHEMA) == "$: unexpected qty"
    action = REPLY_SCHEMA["properties"]["candidate_actions"]["items"]["properties"]["action"]
    assert action == {"type": "string", "enum": ["BUY", "WATCH", "SKIP"]}


def test_prompt_carries_the_facts_and_the_schema(fake_messages):
    fake_messages.reply_decision(VALID_REPLY)
    prompt = _decide(fake_messages).prompt

    lines = prompt.splitlines()
    assert "NVDA | 15 | 120.00 | +4.1 | 2.50 | +12.0 | +1.0 | 66.00 | 1.80 | Y | Y | Y | N" in lines
    assert "AAPL | 170.00 | 180.00 | +5.9 | 6 | +2.0 | 175.00 | [\"rsi_divergence\",\"volume_climax\"]" in lines
    assert "## OPEN POSITIONS (reversal score 0-13: higher means the momentum is reversing)" in lines
    assert "0-10" not in prompt
    assert "JUNK" not in prompt  # not a stage-1 candidate
    assert "- equity: 100000.00" in lines and "- regime: BULL" in lines and "- max_positions: 5" in lines
    assert "CRWD" in prompt and "volume_climax" in prompt
    assert "- " + POOR_SIGNALS[1] in lines and "(RIVN, ...)" in prompt
    assert "- BUY at most 2 symbols" in lines
    assert "conviction" in prompt and "number from 0 (none) to 10 (highest)" in prompt
    for key in ("market_assessment", "position_actions", "candidate_actions", "execution_plan", "new_watchlist",
                "portfolio_summary"):
        assert f'"{key}"' in prompt


GATES = RiskLimits(position_size_frac=0.07, max_exposure_frac=0.45, max_positions=8, max_heat_frac=0.05,
                   max_positions_by_cap={"large": 3, "mid": 1, "small": 0},
                   max_buys_by_cap={"large": 2, "mid": 1, "small": 0})


def test_prompt_states_the_gates_limits_and_the_scan_type_it_is_given(fake_messages):
    fake_messages.reply_conforming(VALID_REPLY)
    lines = _decide(fake_messages, scan=ScanFacts(GATES, "midday", "mid")).prompt.splitlines()
    assert "- this is the midday scan of the mid caps" in lines
    assert "  - position size 7% of equity (fixed sizing; the engine sizes every order)" in lines
    assert "  - invested exposure at most 45% of equity times the regime factor; at most 8 open positions" in lines
    assert ("  - per cap: large 3 positions, 2 buys per scan; mid 1 positions, 1 buys per scan; small 0 positions, "
            "0 buys per scan") in lines
    assert any(line.startswith("  - open risk to stops at most 5% of equity") for line in lines)


def test_prompt_says_when_the_gates_and_scan_type_are_not_given(fake_messages):
    fake_messages.reply_conforming(VALID_REPLY)
    prompt = _decide(fake_messages).prompt
    assert "- this is the scan (type not given)" in prompt
    assert "- risk gates: not given here; the executor still checks every order against them" in prompt
    assert "60%" not in prompt  # nothing hard-coded stands in for the configured limits


def test_the_learned_figure_sits_beside_the_score_with_its_explanation(fake_messages):
    candidates = CANDIDATES.assign(learned=[0.031, 0.0125, np.nan, -0.02, 0.9])
    fake_messages.reply_conforming(VALID_REPLY)
    lines = _decide(fake_messages, candidates=candidates).prompt.splitlines()
    header = lines.index("symbol | score | learned | price | change% | rvol | roc_10d% | gap_up% | rsi_14 | atr_14 | "
                         "sma_aligned | momentum_breakout | stage2 | held")
    assert lines[header + 1].startswith("NVDA | 15 | 0.031 | 120.00 |")
    assert lines[header + 3].startswith("TSLA | 10 | - | 50.00 |")  # no estimate for this row
    assert lines[header + 5].startswith("learned: ") and "higher is better" in lines[header + 5]


@pytest.mark.parametrize("learned", [None, np.nan], ids=["no column", "no model active"])
def test_without_learned_figures_the_table_is_unchanged(fake_messages, learned):
    candidates = CANDIDATES if learned is None else CANDIDATES.assign(learned=learned)
    fake_messages.reply_conforming(VALID_REPLY)
    prompt = _decide(fake_messages, candidates=candidates).prompt
    assert "| learned |" not in prompt and "\nlearned: " not in prompt
    assert "NVDA | 15 | 120.00 | +4.1 | 2.50 | +12.0 | +1.0 | 66.00 | 1.80 | Y | Y | Y | N" in prompt.splitlines()


def test_the_learned_explanation_can_come_with_the_frame(fake_messages):
    candidates = CANDIDATES.assign(learned=0.5)
    candidates.attrs["learned_note"] = "learned: probability of gaining more than the stop risks; higher is better"
    fake_messages.reply_conforming(VALID_REPLY)
    assert "\nlearned: probability of gaining more" in _decide(fake_messages, candidates=candidates).prompt


def test_without_poor_signal_patterns_the_prompt_says_so(fake_messages):
    fake_messages.reply_conforming(VALID_REPLY)
    outcome = decide_with_llm(CANDIDATES, POSITIONS, HELD, LIMITS, CONTEXT, api_key=API_KEY,
                              base_url=fake_messages.url, model=MODEL, timeout=5.0)
    assert "unreviewed trades closed on a reversal; avoid repeating these setups)\n(none unreviewed)" in outcome.prompt


# ---- valid replies ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fenced", [False, True])
def test_valid_reply_becomes_the_decision(fake_messages, fenced):
    fake_messages.reply_conforming(VALID_REPLY, fenced=fenced)
    outcome = _decide(fake_messages)

    assert outcome.valid and outcome.fallback_reason is None
    assert outcome.decision == EXPECTED
    assert outcome.parsed == VALID_REPLY
    assert outcome.reply.startswith("```json\n" if fenced else "{")


def test_long_reasoning_is_truncated(fake_messages):
    reply = _reply()
    reply["position_actions"][0]["reasoning"] = "volume climax " * 40
    fake_messages.reply_decision(reply)
    close_reason = _decide(fake_messages).decision.closes[0][1]
    assert len(close_reason) == 200 and close_reason.endswith("...")


def test_fifty_buys_are_trimmed_to_the_limit(fake_messages, caplog):
    symbols = [f"S{i:02d}" for i in range(50)]
    candidates = _candidates({s: _row(14, True) for s in symbols})
    actions = [{"symbol": s, "action": "BUY", "score": 14, "conviction": 9, "reasoning": "all in"} for s in symbols]
    fake_messages.reply_decision(_reply(
        candidate_actions=actions, execution_plan={"closes": ["AAPL"], "buys": symbols, "new_watchlist": []}))

    with caplog.at_level(logging.WARNING, logger="llm_decider"):
        outcome = _decide(fake_messages, candidates=candidates)

    assert outcome.valid
    assert outcome.decision.buys == ["S00", "S01"]  # max_buys 2, in the model's order
    assert outcome.decision.candidate_decisions["S02"] == ("WATCH", "over the buy limit")
    assert [d for d, _ in outcome.decision.candidate_decisions.values()].count("WATCH") == 48
    assert outcome.decision.watch == ["S02", "S03", "S04", "S05", "S06"]
    assert "proposed 50 buys; 2 kept" in caplog.text


@pytest.mark.parametrize("limits, reason", [
    (Limits(free_slots=3, free_cap_slots=3, max_buys=2, halted=True), "chosen by the model but trading halted"),
    (Limits(free_slots=3, free_cap_slots=3, max_buys=2, regime_blocks_buys=True),
     "chosen by the model but regime CRASH: no buys"),
    (Limits(free_slots=0, free_cap_slots=3, max_buys=2), "over the buy limit"),
])
def test_blocked_buying_demotes_every_buy(fake_messages, limits, reason):
    fake_messages.reply_decision(VALID_REPLY)
    outcome = _decide(fake_messages, limits=limits)
    assert outcome.valid and outcome.decision.buys == []
    assert outcome.decision.candidate_decisions["AMD"] == ("WATCH", reason)
    assert outcome.decision.watch == ["TSLA", "CRWD", "AMD", "NVDA"]
    assert outcome.decision.closes == EXPECTED.closes  # closes are never blocked


def test_skip_mode_blocks_the_models_buys(fake_messages):
    healthy = [dict(POSITIONS[1])]
    reply = _reply(position_actions=[VALID_REPLY["position_actions"][1]],
                   execution_plan={"closes": [], "buys": ["AMD", "NVDA"], "new_watchlist": []})
    fake_messages.reply_decision(reply)
    outcome = _decide(fake_messages, positions=healthy, held={"MSFT"})
    assert outcome.valid and outcome.decision.skip_mode and outcome.decision.buys == []
    assert outcome.decision.candidate_decisions["NVDA"] == ("WATCH", "chosen by the model but skip mode: "
                                                                     "every holding is healthy")


def test_buy_of_a_held_candidate_is_skipped(fake_messages):
    candidates = _candidates({"MSFT": _row(15, True), "AMD": _row(14, True)})
    actions = [{"symbol": s, "action": "BUY", "score": 15, "conviction": 6, "reasoning": "add"}
               for s in ("MSFT", "AMD")]
    fake_messages.reply_decision(_reply(candidate_actions=actions, execution_plan={
        "closes": ["AAPL"], "buys": ["MSFT", "AMD"], "new_watchlist": []}))
    outcome = _decide(fake_messages, candidates=candidates)
    assert outcome.valid and outcome.decision.buys == ["AMD"]
    assert outcome.decision.candidate_decisions["MSFT"] == ("SKIP", "already held")


# ---- fallbacks ----------------------------------------------------------------------------------------------------

def _without(key: str) -> dict:
    reply = _reply()
    del reply[key]
    return reply


def _nested(section: str, index: int, key: str, value) -> dict:
    reply = _reply()
    reply[section][index][key] = value
    return reply


def _plan(**changes) -> dict:
    return _reply(execution_plan={**VALID_REPLY["execution_plan"], **changes})


FIFTY_FOREIGN = [f"X{i:02d}" for i in range(48)] + ["AMD", "NVDA"]

# Replies that follow the schema (what structured output lets through) but are wrong about the scan's facts.
WRONG_FACTS = {
    "buy not a candidate": (_reply(candidate_actions=VALID_REPLY["candidate_actions"] + [
        {"symbol": "GME", "action": "BUY", "score": 20, "conviction": 10, "reasoning": "squeeze"}],
        execution_plan={**VALID_REPLY["execution_plan"], "buys": ["AMD", "NVDA", "GME"]}),
        "candidate_actions names 'GME', which is not a stage-1 candidate"),
    "buy of a row failing stage 1": (_nested("candidate_actions", 2, "symbol", "JUNK"),
                                     "'JUNK', which is not a stage-1 candidate"),
    "plan buys a symbol without a BUY action": (_plan(buys=["AMD", "NVDA", "TSLA"]),
                                                "execution_plan.buys names 'TSLA', which is not a candidate with "
                                                "action BUY"),
    "fifty buys, most not candidates": (_reply(candidate_actions=[
        {"symbol": s, "action": "BUY", "score": 15, "conviction": 9, "reasoning": "x"} for s in FIFTY_FOREIGN],
        execution_plan={"closes": ["AAPL"], "buys": FIFTY_FOREIGN, "new_watchlist": []}),
        "'X00', which is not a stage-1 candidate"),
    "close not held": (_reply(position_actions=VALID_REPLY["position_actions"] + [
        {"symbol": "GOOG", "action": "CLOSE", "reversal_score": 9, "reasoning": "sell"}],
        execution_plan={**VALID_REPLY["execution_plan"], "closes": ["AAPL", "GOOG"]}),
        "position_actions names 'GOOG', which is not held"),
    "plan closes a symbol not held": (_plan(closes=["AAPL", "GOOG"]),
                                      "execution_plan.closes names 'GOOG', which is not held"),
    "plan closes a HOLD": (_plan(closes=["AAPL", "MSFT"]), "closes disagrees with the CLOSE position actions"),
    "BUY action missing from the plan": (_plan(buys=["AMD"]), "buys leaves out candidates with action BUY"),
    "conviction out of range": (_nested("candidate_actions", 0, "conviction", 11), "conviction 11 for 'AMD'"),
    "negative conviction": (_nested("candidate_actions", 0, "conviction", -1), "conviction -1 for 'AMD'"),
    "duplicate buy": (_plan(buys=["AMD", "NVDA", "AMD"]), "execution_plan.buys names 'AMD' twice"),
    "duplicate candidate action": (_reply(candidate_actions=VALID_REPLY["candidate_actions"]
                                          + [VALID_REPLY["candidate_actions"][0]]),
                                   "candidate_actions names 'AMD' twice"),
    "watchlist symbol from nowhere": (_plan(new_watchlist=["TSLA", "DOGE"]),
                                      "new_watchlist names 'DOGE', which is neither a candidate"),
    "empty symbol": (_plan(new_watchlist=[""]), "new_watchlist names '', which is neither a candidate"),
}


@pytest.mark.parametrize("reply, reason", WRONG_FACTS.values(), ids=WRONG_FACTS.keys())
def test_a_reply_following_the_schema_with_wrong_facts_falls_back(fake_messages, reply, reason):
    fake_messages.reply_conforming(reply)
    outcome = _decide(fake_messages)
    assert not outcome.valid
    assert reason in outcome.fallback_reason
    assert outcome.decision == _rules()
    assert outcome.parsed == reply
    assert fake_messages.count() == 1


def _sizing_fields() -> dict:
    reply = _reply(position_size={"AMD": 10_000_000})
    reply["candidate_actions"][0]["qty"] = 1000
    return reply


def _plan_field() -> dict:
    reply = _reply()
    reply["execution_plan"]["position_size_pct"] = 100
    return reply


# Replies breaking the schema sent with the request: structured output should never let these through, and the
# decider does not trust that it never will.
SCHEMA_BREAKS = {
    "sizing fields beside the schema's": (_sizing_fields(), "reply has fields outside the schema: a 13-character"),
    "leverage asked for": (_reply(leverage=10), "reply has fields outside the schema: 'leverage'"),
    "a quantity in an action": (_nested("candidate_actions", 0, "qty", 1000),
                                "candidate_actions[0] has fields outside the schema: 'qty'"),
    "a size in the plan": (_plan_field(), "execution_plan has fields outside the schema"),
    "reversal_score as text": (_nested("position_actions", 0, "reversal_score", "high"),
                               "position_actions[0].reversal_score is not an integer"),
    "reversal_score as bool": (_nested("position_actions", 0, "reversal_score", True), "is not an integer"),
    "reversal_score as a fraction": (_nested("position_actions", 0, "reversal_score", 6.5), "is not an integer"),
    "score as text": (_nested("candidate_actions", 0, "score", "14"), "candidate_actions[0].score is not a number"),
    "conviction as word": (_nested("candidate_actions", 0, "conviction", "high"), "conviction is not a number"),
    "unknown action": (_nested("candidate_actions", 0, "action", "STRONG_BUY"),
                       "candidate_actions[0].action 'STRONG_BUY' is not BUY, WATCH or SKIP"),
    "lower-case action": (_nested("position_actions", 0, "action", "close"),
                          "position_actions[0].action 'close' is not HOLD or CLOSE"),
    "plan as a list": (_reply(execution_plan=[["AAPL"], ["AMD"]]), "reply.execution_plan is not an object"),
    "buys as a string": (_plan(buys="AMD,NVDA"), "execution_plan.buys is not a list"),
    "a number for a symbol": (_plan(closes=[7]), "execution_plan.closes[0] is not a string"),
    "missing key": (_without("portfolio_summary"), "reply lacks portfolio_summary"),
    "missing key in an action": (_reply(position_actions=[{"symbol": "AAPL", "action": "CLOSE"}]),
                                 "position_actions[0] lacks reversal_score, reasoning"),
    "a list instead of an object": ([VALID_REPLY], "JSON but not an object"),
}


@pytest.mark.parametrize("reply, reason", SCHEMA_BREAKS.values(), ids=SCHEMA_BREAKS.keys())
def test_a_reply_breaking_the_schema_falls_back(fake_messages, reply, reason):
    fake_messages.reply_nonconforming(reply)
    outcome = _decide(fake_messages)
    assert not outcome.valid
    assert reason in outcome.fallback_reason
    assert outcome.decision == _rules()
    assert outcome.parsed == reply or not isinstance(reply, dict)
    assert fake_messages.count() == 1


TEXT_REPLIES = {
    "prose": ("I recommend buying AMD and NVDA, and closing AAPL.", "model reply is not JSON"),
    "prose around JSON": ("Here is my decision:\n```json\n{}\n```", "model reply is not JSON"),
    "empty": ("", "model reply is not JSON"),
    "NaN": ('{"score": NaN}', "model reply is JSON with NaN"),
    "repeated key": ('{"a": 1, "a": 2}', "repeated key 'a'"),
}


@pytest.mark.parametrize("text, reason", TEXT_REPLIES.values(), ids=TEXT_REPLIES.keys())
def test_text_that_is_not_one_json_object_falls_back(fake_messages, text, reason):
    fake_messages.reply_text(text)
    outcome = _decide(fake_messages)
    assert not outcome.valid and reason in outcome.fallback_reason
    assert outcome.reply == text and outcome.parsed is None
    assert outcome.decision == _rules()


def test_stop_reason_max_tokens_is_invalid_even_with_complete_json(fake_messages):
    fake_messages.reply_decision(VALID_REPLY, stop_reason="max_tokens")
    outcome = _decide(fake_messages)
    assert not outcome.valid and outcome.fallback_reason == "model reply cut off at max_tokens (2000)"
    assert outcome.decision == _rules()


def test_a_refusal_is_not_an_answer(fake_messages):
    fake_messages.reply_conforming(VALID_REPLY, stop_reason="refusal")
    outcome = _decide(fake_messages)
    assert not outcome.valid and outcome.fallback_reason == "model reply stopped with stop_reason 'refusal'"
    assert outcome.decision == _rules()


def test_reply_cut_off_at_max_tokens_falls_back(fake_messages):
    fake_messages.reply_cut_off(VALID_REPLY)
    outcome = _decide(fake_messages)
    assert not outcome.valid and outcome.fallback_reason == "model reply cut off at max_tokens (2000)"
    assert outcome.reply is not None and outcome.parsed is None


ERRORS = {
    "529 overloaded": (529, {}, "model API answered HTTP 529 overloaded_error: Overloaded"),
    "500 api_error": (500, {}, "model API answered HTTP 500 api_error: Internal server error"),
    "429 rate limit": (429, {"retry_after": 30}, "model API answered HTTP 429 rate_limit_error: Number of request "
                                                 "tokens has exceeded your per-minute rate limit (retry-after 30 s)"),
    "401 authentication": (401, {"message": "invalid x-api-key"},
                           "model API answered HTTP 401 authentication_error: invalid x-api-key"),
}


@pytest.mark.parametrize("status, options, reason", ERRORS.values(), ids=ERRORS.keys())
def test_error_status_falls_back_without_retry(fake_messages, status, options, reason):
    fake_messages.reply_error(status, **options)
    started = time.monotonic()
    outcome = _decide(fake_messages)
    assert time.monotonic() - started < 1.0  # no retry, no sleep on retry-after
    assert not outcome.valid and outcome.fallback_reason == reason
    assert outcome.reply is None and outcome.decision == _rules()
    assert fake_messages.count() == 1


def test_non_json_error_body_falls_back(fake_messages):
    fake_messages.reply_raw(502, "<html><body>Bad gateway</body></html>")
    outcome = _decide(fake_messages)
    assert outcome.fallback_reason == "model API answered HTTP 502"


def test_message_without_a_text_block_falls_back(fake_messages):
    fake_messages.reply_raw(200, {"id": "msg_1", "type": "message", "role": "assistant", "model": MODEL,
                                  "content": [], "stop_reason": "end_turn", "stop_sequence": None,
                                  "usage": {"input_tokens": 1, "output_tokens": 0}})
    outcome = _decide(fake_messages)
    assert not outcome.valid and outcome.fallback_reason == "model reply has no text block"


def test_stall_longer_than_the_timeout_falls_back_within_the_timeout(fake_messages):
    fake_messages.stall(1.5, then=lambda fake: fake.reply_decision(VALID_REPLY))
    started = time.monotonic()
    outcome = _decide(fake_messages, timeout=0.5)
    elapsed = time.monotonic() - started
    assert 0.4 < elapsed < 1.2
    assert not outcome.valid and outcome.fallback_reason == "model API timed out after 0.5 s"
    assert outcome.decision == _rules() and fake_messages.count() == 1


def test_unreachable_api_falls_back():
    with socket.socket() as probe:  # a loopback port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    outcome = decide_with_llm(CANDIDATES, POSITIONS, HELD, LIMITS, CONTEXT, api_key=API_KEY,
                              base_url=f"http://127.0.0.1:{port}", model=MODEL, timeout=0.5)
    assert not outcome.valid and outcome.fallback_reason == "model API unreachable (ConnectionError)"
    assert outcome.decision == _rules()


def test_a_given_session_is_used(fake_messages):
    fake_messages.reply_decision(VALID_REPLY)
    with requests.Session() as session:
        session.headers["user-agent"] = "momentum-agent-test"
        outcome = _decide(fake_messages, session=session)
    assert outcome.valid and fake_messages.requests[0].headers["user-agent"] == "momentum-agent-test"


# ---- the key stays secret -----------------------------------------------------------------------------------------

KEY_LEAKS = {
    "error echoing the key": lambda fake: fake.reply_error(401, message=f"invalid x-api-key: {API_KEY}"),
    "prose echoing the key": lambda fake: fake.reply_text(f"My key is {API_KEY}"),
    "symbol echoing the key": lambda fake: fake.reply_decision(_nested("candidate_actions", 0, "symbol", API_KEY)),
    "timeout": lambda fake: fake.stall(1.5),
}


@pytest.mark.parametrize("queue", KEY_LEAKS.values(), ids=KEY_LEAKS.keys())
def test_api_key_never_in_the_reason_the_prompt_or_the_log(fake_messages, caplog, queue):
    queue(fake_messages)
    context = {**CONTEXT, "note": f"operator pasted {API_KEY} here"}
    with caplog.at_level(logging.DEBUG):
        outcome = decide_with_llm(CANDIDATES, POSITIONS, HELD, LIMITS, context, api_key=API_KEY,
                                  base_url=fake_messages.url, model=MODEL, timeout=0.5)
    assert not outcome.valid and outcome.fallback_reason
    assert "\n" not in outcome.fallback_reason
    assert API_KEY not in outcome.fallback_reason
    assert API_KEY not in outcome.prompt and "operator pasted *** here" in outcome.prompt
    assert API_KEY not in caplog.text
    assert API_KEY[:12] not in outcome.fallback_reason


def test_no_candidates_and_no_positions(fake_messages):
    empty = CANDIDATES.iloc[0:0]
    fake_messages.reply_decision(_reply(position_actions=[], candidate_actions=[],
                                        execution_plan={"closes": [], "buys": [], "new_watchlist": ["CRWD"]}))
    outcome = decide_with_llm(empty, [], set(), LIMITS, CONTEXT, api_key=API_KEY, base_url=fake_messages.url,
                              model=MODEL, timeout=5.0)
    assert outcome.valid
    assert outcome.decision == Decision(watch=["CRWD"])
    assert "(no candidates this scan)" in outcome.prompt and "(no open positions)" in outcome.prompt


# ---- the fake holds the decider to structured output --------------------------------------------------------------

def _post(fake, body: dict) -> requests.Response:
    headers = {"x-api-key": API_KEY, "anthropic-version": "2023-06-01"}
    return requests.post(f"{fake.url}/v1/messages", json=body, headers=headers, timeout=5)


BASE_BODY = {"model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
CLOSED = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"], "additionalProperties": False}


def _format(schema: dict, kind: str = "json_schema") -> dict:
    return {"output_config": {"format": {"type": kind, "schema": schema}}}


REFUSED_REQUESTS = {
    "no output_config": ({}, "output_config.format: a json_schema format is required"),
    "the retired beta parameter": ({"output_format": {"type": "json_schema", "schema": CLOSED}},
                                   "output_format: this parameter moved to output_config.format"),
    "another format type": (_format(CLOSED, "json"), "expected 'json_schema'"),
    "an open object": (_format({**CLOSED, "additionalProperties": True}), "schema: additionalProperties must be false"),
    "a numeric range": (_format({**CLOSED, "properties": {"a": {"type": "integer", "minimum": 0}}}),
                        "schema.properties.a: unsupported keyword 'minimum'"),
}


@pytest.mark.parametrize("extra, message", REFUSED_REQUESTS.values(), ids=REFUSED_REQUESTS.keys())
def test_the_fake_refuses_a_request_without_a_usable_schema(fake_messages, extra, message):
    fake_messages.reply_text("{}")
    response = _post(fake_messages, {**BASE_BODY, **extra})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and message in error["message"]


def test_the_fake_lets_a_plain_request_through_when_told_to(fake_messages):
    fake_messages.require_schema = False
    fake_messages.reply_text("plain")
    assert _post(fake_messages, BASE_BODY).json()["content"][0]["text"] == "plain"


def test_the_decider_without_structured_output_would_be_refused(fake_messages, monkeypatch):
    monkeypatch.setattr("ports.llm_decider.OUTPUT_CONFIG", {"format": {"type": "json_schema", "schema": {
        **REPLY_SCHEMA, "additionalProperties": True}}})
    fake_messages.reply_conforming(VALID_REPLY)
    outcome = _decide(fake_messages)
    assert not outcome.valid
    assert outcome.fallback_reason == ("model API answered HTTP 400 invalid_request_error: "
                                       "schema: additionalProperties must be false")


@pytest.mark.parametrize("queue, label", [
    (lambda fake: fake.reply_conforming(_reply(leverage=10)), "labelled conforming but it breaks the schema"),
    (lambda fake: fake.reply_nonconforming(VALID_REPLY), "labelled non-conforming but it follows the schema"),
])
def test_the_fake_refuses_a_mislabelled_body(fake_messages, queue, label):
    queue(fake_messages)
    outcome = _decide(fake_messages)
    assert not outcome.valid and "HTTP 500 api_error: fake: the queued decision was" in outcome.fallback_reason
    assert label in outcome.fallback_reason

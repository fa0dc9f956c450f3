"""Trading scans with DECIDER=llm against the local fake Messages API: the scan asks for structured output; whatever
the model says, no limit is exceeded; invalid replies fall back to the rules decider with a critical alert; prompt
and reply are stored."""
from __future__ import annotations

import json
import sqlite3

import pytest

from realdata import cli, rows

ASOF = "2016-11-10T12:30"


@pytest.fixture
def llm_env(real_env, fake_messages, monkeypatch):
    monkeypatch.setenv("DECIDER", "llm")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-key-0123456789")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake_messages.url)
    monkeypatch.setenv("LLM_TIMEOUT", "1")
    cli("set", "skip_buys", "off")
    return real_env



def stage1_candidates(env, tmp_path, monkeypatch) -> list[str]:
    """The mid-cap stage-1 candidates at ASOF, from a rules dry run in a separate journal."""
    monkeypatch.setenv("DECIDER", "rules")
    monkeypatch.setenv("MOMENTUM_DB", str(tmp_path / "probe" / "trades.db"))
    assert cli("--asof", ASOF, "scan", "--cap", "mid", "--dry-run").exit_code == 0
    with sqlite3.connect(tmp_path / "probe" / "trades.db") as conn:
        symbols = [r[0] for r in conn.execute("SELECT symbol FROM candidates ORDER BY score DESC")]
    monkeypatch.setenv("DECIDER", "llm")
    monkeypatch.setenv("MOMENTUM_DB", env["MOMENTUM_DB"])
    return symbols


def reply(buys: list[str], candidates: list[str], **extra) -> dict:
    return {"market_assessment": "risk on", "position_actions": [],
            "candidate_actions": [{"symbol": s, "action": "BUY" if s in buys else "SKIP", "score": 15,
                                   "conviction": 9, "reasoning": "strong", **extra} for s in candidates],
            "execution_plan": {"closes": [], "buys": buys, "new_watchlist": []},
            "portfolio_summary": "all in"}


def test_a_buy_of_every_candidate_is_held_to_the_limits(llm_env, fake_messages, tmp_path, monkeypatch):
    candidates = stage1_candidates(llm_env, tmp_path, monkeypatch)
    assert len(candidates) >= 10
    fake_messages.reply_conforming(reply(candidates, candidates))
    result = cli("--asof", ASOF, "scan", "--cap", "mid")
    assert result.exit_code == 0, result.output
    trades = rows(llm_env, "SELECT * FROM trades WHERE status = 'open'")
    assert 1 <= len(trades) <= 2
    equity = 100_000
    assert all(t["qty"] * t["entry_price"] <= 0.1005 * equity for t in trades)
    decision = rows(llm_env, "SELECT * FROM decisions")[0]
    assert decision["decider"] == "llm" and decision["valid"] == 1
    assert candidates[0] in decision["prompt"] and '"market_assessment"' in decision["reply"]
    assert "sk-ant-test-key" not in decision["prompt"]
    assert "reversal score 0-13" in decision["prompt"]
    assert fake_messages.count() == 1
    assert fake_messages.requests[0].body["output_config"]["format"]["type"] == "json_schema"


@pytest.mark.parametrize("arrange, fragment", [
    (lambda fake, c: fake.reply_conforming(reply(["ZZZZ"], c + ["ZZZZ"])), "ZZZZ"),
    (lambda fake, c: fake.reply_nonconforming(reply(c, c, qty=100000)), "outside the schema: 'qty'"),
    (lambda fake, c: fake.reply_text("I think you should buy everything."), "JSON"),
    (lambda fake, c: fake.stall(3.0), "timed out"),
    (lambda fake, c: fake.reply_error(529), "529"),
])
def test_invalid_replies_fall_back_to_the_rules_with_a_critical_alert(llm_env, fake_messages, tmp_path, monkeypatch,
                                                                     arrange, fragment):
    candidates = stage1_candidates(llm_env, tmp_path, monkeypatch)
    arrange(fake_messages, candidates)
    result = cli("--asof", ASOF, "scan", "--cap", "mid")
    assert result.exit_code == 0, result.output
    decision = rows(llm_env, "SELECT * FROM decisions")[0]
    assert decision["valid"] == 0 and fragment.lower() in decision["fallback_reason"].lower()
    alerts = rows(llm_env, "SELECT message FROM events WHERE level = 'critical'")
    assert any(a["message"].startswith("decider fallback to rules") for a in alerts)
    rules_buys = rows(llm_env, "SELECT COUNT(*) AS n FROM candidates WHERE decision = 'BUY'")[0]["n"]
    assert rules_buys <= 2
    assert len(rows(llm_env, "SELECT * FROM trades WHERE status = 'open'")) <= 2


def test_the_prompt_carries_the_gates_the_scan_type_and_only_unreviewed_patterns(llm_env, fake_messages, tmp_path,
                                                                                monkeypatch):
    candidates = stage1_candidates(llm_env, tmp_path, monkeypatch)
    monkeypatch.setenv("MAX_EXPOSURE_PCT", "45")
    monkeypatch.setenv("MAX_BUYS_MID", "1")
    with sqlite3.connect(llm_env["MOMENTUM_DB"]) as conn:
        for n, reviewed in enumerate([0, 0, 1]):
            conn.execute("INSERT INTO poor_signals (symbol, exit_reason, pnl_pct, reversal_signals, entry_signals, "
                         "reviewed) VALUES (?, 'reversal', -3.0, ?, ?, ?)",
                         (f"P{n}", json.dumps(["below_sma20"]), json.dumps({"rsi_14": 75.0}), reviewed))
    fake_messages.reply_conforming(reply([], candidates))
    assert cli("--asof", ASOF, "scan", "--cap", "mid", "--type", "midday").exit_code == 0
    prompt = rows(llm_env, "SELECT prompt FROM decisions")[0]["prompt"]
    assert "- this is the midday scan of the mid caps" in prompt
    assert "invested exposure at most 45% of equity" in prompt and "mid 2 positions, 1 buys per scan" in prompt
    assert "- 2 unreviewed trades closed by a reversal; average P&L -3.0%" in prompt
    assert "rsi>70 2 of 2" in prompt

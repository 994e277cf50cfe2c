"""SessionRecorder fed by real runs: a demo-model tool turn is saved completely and renders into the next
prompt (analysis of the finished turn dropped, cached prefix reused); retries keep the failed text."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import pytest

from mlx_harmony_tui.chat.events import Metrics, Retry, ToolCall, ToolResult, TurnFailed, TurnFinished
from mlx_harmony_tui.chat.settings import ChatSettings
from mlx_harmony_tui.chat.turn import TurnContext, render_options_from_settings, run_turn
from mlx_harmony_tui.demo import demo_model_path
from mlx_harmony_tui.engine.generator import Engine
from mlx_harmony_tui.engine.sampling import SamplingParams
from mlx_harmony_tui.harmony.messages import HMessage
from mlx_harmony_tui.harmony.render import render_prompt
from mlx_harmony_tui.model.load import load_model
from mlx_harmony_tui.sessions import SessionRecorder, SessionStore, to_hmessages
from mlx_harmony_tui.tools import ToolRegistry


def _settings(**kw) -> ChatSettings:
    sampling = SamplingParams(temperature=0.0, logit_bias=kw.pop("logit_bias", {}))
    return ChatSettings(sampling=sampling, max_tokens=kw.pop("max_tokens", 200), conversation_date="2026-11-25",
                        **kw)


@pytest.fixture(scope="module")
def demo_engine() -> Engine:
    mx.set_default_device(mx.cpu)
    model, config = load_model(demo_model_path())
    return Engine(model, config, model_id="demo")


def _turn(rec: SessionRecorder, ctx: TurnContext, text: str, settings: ChatSettings) -> list:
    """One turn as a face runs it: the user's text recorded, then every event of the real stream."""
    rec.add_user(text)
    events = []
    for event in run_turn(ctx, to_hmessages(rec.session), settings):
        rec.on_event(event)
        events.append(event)
    rec.finish()
    return events


def test_tool_turn_is_saved_whole_and_renders_the_next_prompt(tmp_path: Path, demo_engine, encoding) -> None:
    settings = _settings()
    store = SessionStore(tmp_path)
    session = store.create(model="demo")
    rec = SessionRecorder(store, session, save_interval=3600)
    ctx = TurnContext(engine=demo_engine, encoding=encoding, context_limit=4096,
                      tools=ToolRegistry.from_settings(settings))
    events = _turn(rec, ctx, "What is 37*12?", settings)
    call = next(e for e in events if isinstance(e, ToolCall))
    result = next(e for e in events if isinstance(e, ToolResult))
    finished = events[-1]
    assert isinstance(finished, TurnFinished) and finished.reason == "stop"

    doc = json.loads(store.path(session.id).read_text(encoding="utf-8"))
    msgs = doc["messages"]
    shape = [(m["role"], m.get("channel"), m.get("recipient")) for m in msgs]
    assert shape == [
        ("user", None, None),
        ("assistant", "analysis", None),
        ("assistant", "commentary", "python"),
        ("tool", "commentary", "assistant"),
        ("assistant", "analysis", None),
        ("assistant", "final", None),
    ]
    user, analysis, call_rec, tool_rec, analysis2, final = msgs
    assert user["content"] == "What is 37*12?" and analysis["content"].strip()
    assert call_rec["content"] == call.arguments and call_rec["call_id"] == call.call_id
    assert tool_rec["call_id"] == call.call_id and tool_rec["author"] == "python"
    assert tool_rec["content"] == result.output and result.output.strip() == "444"
    assert "duration_s" in tool_rec["metrics"]
    assert "444" in final["content"] and analysis2["content"].strip()
    assert not any(m.get("incomplete") for m in msgs)
    m = finished.metrics
    assert final["metrics"]["finish_reason"] == "stop"
    assert final["metrics"]["prompt_tokens"] == m.prompt_tokens and final["metrics"]["reused_tokens"] > 0
    assert final["metrics"]["generated_tokens"] == m.generated_tokens > 0

    # The next prompt: the finished turn's analysis is gone; the call, its result and the final stay.
    reloaded = SessionStore(tmp_path).load(session.id)
    history = to_hmessages(reloaded) + [HMessage("user", "hello")]
    prompt = encoding.decode(render_prompt(history, render_options_from_settings(settings), encoding))
    assert analysis["content"] not in prompt and analysis2["content"] not in prompt
    assert "<|channel|>analysis" not in prompt
    for kept in (user["content"], call_rec["content"], f"<|message|>{tool_rec['content']}<|end|>",
                 f"<|channel|>final<|message|>{final['content']}<|end|>"):
        assert kept in prompt

    # A second turn on the same engine works and serves the unchanged prefix (up to the dropped analysis)
    # from the cache.
    rec2 = SessionRecorder(store, reloaded, save_interval=3600)
    events2 = _turn(rec2, ctx, "hello", settings)
    assert isinstance(events2[-1], TurnFinished) and events2[-1].reason == "stop"
    first = next(e for e in events2 if isinstance(e, Metrics) and e.final)
    assert first.reused_tokens > 0 and first.prefilled_tokens < first.prompt_tokens
    saved = SessionStore(tmp_path).load(session.id)
    assert [(x.role, x.channel) for x in saved.messages[6:]] == [
        ("user", None), ("assistant", "analysis"), ("assistant", "final")]


RETURN = 200002


@pytest.mark.parametrize(("text", "reason"), [("ab", "loop"), (None, "parse")])
def test_failed_attempts_keep_their_text_in_the_record(tmp_path: Path, tiny_engine, encoding, text, reason) -> None:
    # A huge bias makes the tiny model fail every attempt: repeating "ab" (a loop) or stopping at once with
    # no message at all (a parse failure). Two retries, then the turn fails.
    tok = encoding.encode(text, allowed_special="all")[0] if text else RETURN
    settings = _settings(logit_bias={tok: 1e4}, max_tokens=400, builtin_tools=[])
    store = SessionStore(tmp_path)
    session = store.create(model="tiny")
    rec = SessionRecorder(store, session, save_interval=3600)
    ctx = TurnContext(engine=tiny_engine, encoding=encoding, context_limit=4096)
    events = _turn(rec, ctx, "Hi", settings)
    retries = [e for e in events if isinstance(e, Retry)]
    assert [r.attempt for r in retries] == [1, 2] and all(r.reason == reason for r in retries)
    assert isinstance(events[-1], TurnFailed)

    doc = json.loads(store.path(session.id).read_text(encoding="utf-8"))
    on_messages = [r for m in doc["messages"] for r in m.get("retries", [])]
    errors = doc["extra"]["errors"]
    assert len(errors) == 1 and errors[0]["error"] == events[-1].error
    kept = on_messages + errors[0].get("retries", [])
    assert [(r["attempt"], r["reason"], r["failed_text"]) for r in kept] == [
        (r.attempt, r.reason, r.failed_text) for r in retries]
    if text:  # the last attempt's reply carries the earlier attempts' text
        assert on_messages and all(text in r["failed_text"] for r in kept)
    else:  # no reply at all: the failure entry keeps the retries
        assert not on_messages and len(errors[0]["retries"]) == 2


def test_a_failed_turn_stays_in_the_record_but_not_in_the_next_prompt(tmp_path: Path, tiny_engine, encoding) -> None:
    tok = encoding.encode("ab", allowed_special="all")[0]
    store = SessionStore(tmp_path)
    session = store.create(model="tiny")
    rec = SessionRecorder(store, session, save_interval=3600)
    ctx = TurnContext(engine=tiny_engine, encoding=encoding, context_limit=4096)
    events = _turn(rec, ctx, "Hi", _settings(logit_bias={tok: 1e4}, max_tokens=400, builtin_tools=[]))
    assert isinstance(events[-1], TurnFailed)
    saved = SessionStore(tmp_path).load(session.id)
    failed = [m for m in saved.messages if m.extra.get("failed")]
    assert failed and all(m.role == "assistant" for m in failed) and any("ab" in m.content for m in failed)
    assert [(m.role, m.text) for m in to_hmessages(saved)] == [("user", "Hi")]

"""The turn pipeline end to end on the real demo model: a python tool round trip (events, the result fed back,
prefix reuse), confirmation through the local backend, config-declared function tools and a hanging tool."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import mlx.core as mx
import pytest

from mlx_harmony_tui.backends.base import TurnRequest
from mlx_harmony_tui.backends.local import LocalBackend
from mlx_harmony_tui.chat.events import (
    Delta,
    Event,
    MessageDone,
    Metrics,
    PrefillProgress,
    Retry,
    ToolCall,
    ToolCallArgs,
    ToolCallStarted,
    ToolConfirmation,
    ToolResult,
    TurnFailed,
    TurnFinished,
    TurnStarted,
)
from mlx_harmony_tui.chat.settings import ChatSettings
from mlx_harmony_tui.chat.turn import TurnContext, run_turn
from mlx_harmony_tui.config import load_config
from mlx_harmony_tui.demo import demo_model_path
from mlx_harmony_tui.engine.generator import Engine
from mlx_harmony_tui.engine.sampling import SamplingParams
from mlx_harmony_tui.harmony.messages import HMessage
from mlx_harmony_tui.model.load import load_model
from mlx_harmony_tui.tools import PythonToolConfig, ToolRegistry

QUESTION = "What is 37*12?"


@pytest.fixture(scope="module")
def demo():
    mx.set_default_device(mx.cpu)
    return load_model(demo_model_path())


@pytest.fixture
def engine(demo) -> Engine:
    """A fresh engine (empty prompt cache) on the shared demo weights, so reuse figures are this test's own."""
    model, config = demo
    return Engine(model, config, model_id="demo")


def _settings(**kw) -> ChatSettings:
    return ChatSettings(sampling=SamplingParams(temperature=0.0), max_tokens=200, max_retries=0,
                        conversation_date="2026-11-25", **kw)


def _shape(events: list[Event]) -> list[tuple]:
    """The event sequence with live progress dropped and runs of streamed pieces collapsed to one entry."""
    out: list[tuple] = []
    for e in events:
        if isinstance(e, PrefillProgress) or (isinstance(e, Metrics) and not e.final):
            continue
        if isinstance(e, Delta):
            key: tuple = ("Delta", e.channel)
        elif isinstance(e, MessageDone):
            key = ("MessageDone", e.channel, e.recipient)
        elif isinstance(e, ToolCallStarted | ToolCall | ToolResult):
            key = (type(e).__name__, e.recipient)
        elif isinstance(e, TurnFinished):
            key = ("TurnFinished", e.reason)
        else:
            key = (type(e).__name__,)
        if not out or out[-1] != key or key[0] not in ("Delta", "ToolCallArgs"):
            out.append(key)
    return out


def test_python_tool_round_trip_feeds_the_result_back_and_reuses_the_cache(engine, encoding) -> None:
    tools = ToolRegistry.from_settings(_settings())
    ctx = TurnContext(engine=engine, encoding=encoding, context_limit=4096, tools=tools)
    events = list(run_turn(ctx, [HMessage("user", QUESTION)], _settings()))

    assert _shape(events) == [
        ("TurnStarted",),
        ("Delta", "analysis"),
        ("MessageDone", "analysis", None),
        ("ToolCallStarted", "python"),
        ("ToolCallArgs",),
        ("MessageDone", "commentary", "python"),
        ("ToolCall", "python"),
        ("Metrics",),
        ("ToolResult", "python"),
        ("Delta", "analysis"),
        ("MessageDone", "analysis", None),
        ("Delta", "final"),
        ("MessageDone", "final", None),
        ("Metrics",),
        ("TurnFinished", "stop"),
    ]
    call = next(e for e in events if isinstance(e, ToolCall))
    started = next(e for e in events if isinstance(e, ToolCallStarted))
    args = "".join(e.delta for e in events if isinstance(e, ToolCallArgs))
    result = next(e for e in events if isinstance(e, ToolResult))
    assert started.call_id == call.call_id == result.call_id
    assert args == call.arguments and "37" in call.arguments and "12" in call.arguments
    assert result.error is None and result.output.strip() == "444"
    final = [e for e in events if isinstance(e, MessageDone) and e.channel == "final"][-1]
    assert "444" in final.text

    first, second = [e for e in events if isinstance(e, Metrics) and e.final]
    assert isinstance(events[-1], TurnFinished) and events[-1].metrics == second
    # The second round's prompt is the first prompt + everything the model wrote (re-rendered token for token,
    # so the cache serves all of it) + the tool result; only the result and the assistant header are prefilled.
    assert second.reused_tokens > 0
    assert second.reused_tokens == first.prompt_tokens + first.generated_tokens
    assert second.prefilled_tokens == second.prompt_tokens - second.reused_tokens < 20
    prompt2 = encoding.decode(engine.prompt_cache.tokens[: second.prompt_tokens])
    fed_back = f"<|start|>python to=assistant<|channel|>commentary<|message|>{result.output}<|end|>"
    assert fed_back in prompt2 and prompt2.endswith(fed_back + "<|start|>assistant")
    assert f"to=python<|channel|>commentary<|message|>{call.arguments}<|call|>" in prompt2.replace(
        "<|channel|>commentary to=python", "to=python<|channel|>commentary")
    assert QUESTION in prompt2


def _write_config(tmp_path: Path) -> Path:
    """A config with a function tool (a Python script reading JSON on stdin) and python needing confirmation."""
    script = tmp_path / "add.py"
    script.write_text("import json, sys\nargs = json.load(sys.stdin)\nprint(json.dumps({'sum': args['a'] + args['b']}))\n")
    cfg = tmp_path / "config.toml"
    cfg.write_text(f"""
[tools.python]
confirm = true
timeout_s = 5

[[tools.functions]]
name = "add"
description = "Add two integers."
command = ["{sys.executable}", "{script}"]
parameters = {{ type = "object", properties = {{ a = {{ type = "integer" }}, b = {{ type = "integer" }} }} }}
""")
    return cfg


def test_config_function_tool_is_declared_and_runs_its_command(tmp_path: Path, encoding) -> None:
    config, problems = load_config(_write_config(tmp_path))
    assert problems == []
    tools = ToolRegistry.from_settings(_settings(), config)
    assert [f.name for f in tools.function_tools()] == ["add"]
    assert tools.can_run("functions.add") and tools.needs_confirmation("functions.add")  # not marked safe
    assert tools.needs_confirmation("python")
    out = tools.run("functions.add", '{"a": 37, "b": 12}')
    assert out.error is None and out.output.strip() == '{"sum": 49}'
    bad = tools.run("functions.add", '{"a": 37')
    assert bad.error == "bad arguments" and "not valid JSON" in bad.output


def _run_with_answer(backend: LocalBackend, allowed: bool, timeout: float = 60.0) -> list[Event]:
    handle = backend.start_turn(TurnRequest([HMessage("user", QUESTION)], _settings()))
    events: list[Event] = []
    for event in handle.events(timeout=timeout):
        events.append(event)
        if isinstance(event, ToolConfirmation):
            handle.confirm(event.call_id, allowed)
    return events


@pytest.mark.parametrize("allowed", [False, True])
def test_confirmation_through_the_local_backend(tmp_path: Path, demo, allowed: bool) -> None:
    config, _ = load_config(_write_config(tmp_path))
    tools = ToolRegistry.from_settings(_settings(), config)
    model, cfg = demo
    backend = LocalBackend(model, cfg, demo_model_path(), "demo", tools=tools)
    try:
        events = _run_with_answer(backend, allowed)
    finally:
        backend.close()
    asks = [e for e in events if isinstance(e, ToolConfirmation)]
    call = next(e for e in events if isinstance(e, ToolCall))
    assert [(a.call_id, a.recipient, a.arguments) for a in asks] == [(call.call_id, "python", call.arguments)]
    result = next(e for e in events if isinstance(e, ToolResult))
    assert events.index(asks[0]) < events.index(result) and result.call_id == call.call_id
    prompt = backend.encoding.decode(backend.engine.prompt_cache.tokens)
    assert "type add = (_: {" in prompt and "Add two integers." in prompt  # the config's function is declared
    if not allowed:
        assert result.error == "the user declined this tool call" and result.output == ""
        assert tools.records == []  # nothing ran
        # the model heard about it: the next prompt holds the refusal as python's answer
        fed = "<|start|>python to=assistant<|channel|>commentary<|message|>Error: the user declined this tool call<|end|>"
        assert fed in prompt
    else:
        assert result.error is None and result.output.strip() == "444"
        assert [r.recipient for r in tools.records] == ["python"]
    # either way the model answers again after the result and the turn ends cleanly
    after = events[events.index(result):]
    assert any(isinstance(e, MessageDone) for e in after)
    assert not [e for e in events if isinstance(e, TurnFailed | Retry)]
    assert isinstance(events[-1], TurnFinished) and events[-1].reason == "stop"
    assert isinstance(events[0], TurnStarted)


def test_cancel_while_waiting_for_confirmation_ends_the_turn(tmp_path: Path, demo) -> None:
    config, _ = load_config(_write_config(tmp_path))
    model, cfg = demo
    backend = LocalBackend(model, cfg, demo_model_path(), "demo", tools=ToolRegistry.from_settings(_settings(), config))
    handle = backend.start_turn(TurnRequest([HMessage("user", QUESTION)], _settings()))
    events: list[Event] = []
    for event in handle.events(timeout=60):
        events.append(event)
        if isinstance(event, ToolConfirmation):
            handle.cancel()
    backend.close()
    assert isinstance(events[-1], TurnFinished) and events[-1].reason == "cancelled"
    assert not any(isinstance(e, ToolResult) for e in events)


def test_hanging_python_is_killed_at_the_timeout(tmp_path: Path) -> None:
    tools = ToolRegistry(python=PythonToolConfig(timeout_s=1.0))
    t0 = time.monotonic()
    out = tools.run("python", "print('started', flush=True)\nwhile True:\n    pass\n")
    took = time.monotonic() - t0
    assert out.error == "timeout" and "timed out after 1 seconds" in out.output and "started" in out.output
    assert 1.0 <= took < 3.0


class _HangingPython(ToolRegistry):
    """The real registry and python sandbox, but whatever the model writes, the cell is an endless loop
    (the demo model only writes short arithmetic, so it cannot be asked to hang)."""

    def _dispatch(self, recipient: str, arguments: str, cancel: threading.Event | None):  # type: ignore[override]
        return super()._dispatch(recipient, "while True:\n    pass\n" if recipient == "python" else arguments, cancel)


def test_turn_continues_after_a_tool_timeout(engine, encoding) -> None:
    timeout = 1.5
    tools = _HangingPython(python=PythonToolConfig(timeout_s=timeout))
    ctx = TurnContext(engine=engine, encoding=encoding, context_limit=4096, tools=tools)
    t0 = time.monotonic()
    events = list(run_turn(ctx, [HMessage("user", QUESTION)], _settings()))
    took = time.monotonic() - t0
    result = next(e for e in events if isinstance(e, ToolResult))
    assert result.error == "timeout" and f"timed out after {timeout:g} seconds" in result.output
    assert timeout <= result.duration_s < timeout + 1.0
    fed = f"<|start|>python to=assistant<|channel|>commentary<|message|>Error: timeout\n{result.output}<|end|>"
    assert fed in encoding.decode(engine.prompt_cache.tokens)
    assert any(isinstance(e, MessageDone) for e in events[events.index(result):])  # the model went on
    assert isinstance(events[-1], TurnFinished | TurnFailed)
    assert took < timeout + 5.0

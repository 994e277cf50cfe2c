"""`serve` on the demo model, driven by the official openai SDK: thinking + answer, streamed and not, prefix reuse
on a grown conversation, and a python tool call the client runs itself (the server never runs tools)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import openai
import pytest

from mlx_harmony_tui import cli
from mlx_harmony_tui.backends.base import TurnRequest
from mlx_harmony_tui.chat.settings import ChatSettings
from mlx_harmony_tui.harmony.messages import HMessage
from mlx_harmony_tui.server.command import build_app, serve_in_thread
from mlx_harmony_tui.server.reply import ReplyBuilder
from mlx_harmony_tui.server.schemas import ToolRoute

PYTHON_TOOL = {"type": "function", "function": {
    "name": "python", "description": "Run Python code and return what it prints.",
    "parameters": {"type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"]}}}
GREEDY = {"temperature": 0.0, "seed": 0}


@pytest.fixture(scope="module")
def app() -> object:
    return build_app(cli.build_parser().parse_args(["serve", "--model", "demo"]))


@pytest.fixture(scope="module")
def client(app: object) -> Iterator[openai.OpenAI]:
    with serve_in_thread(app) as url:
        yield openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=120)


def _reasoning(obj: object) -> str:
    return (getattr(obj, "model_extra", None) or {}).get("reasoning_content") or ""


def test_hello_then_a_grown_conversation_reuses_the_prefix(client: openai.OpenAI) -> None:
    convo = [{"role": "user", "content": "hello"}]
    r1 = client.chat.completions.create(model="demo", messages=convo, **GREEDY)
    m1 = r1.choices[0].message
    assert r1.choices[0].finish_reason == "stop"
    assert m1.content and _reasoning(m1) and not m1.tool_calls
    assert m1.content not in _reasoning(m1)  # the answer and the thinking are separate channels
    convo += [{"role": "assistant", "content": m1.content, "reasoning_content": _reasoning(m1)},
              {"role": "user", "content": "thanks"}]
    r2 = client.chat.completions.create(model="demo", messages=convo, **GREEDY)
    assert r2.choices[0].message.content
    cached = r2.usage.prompt_tokens_details.cached_tokens
    assert cached >= r1.usage.prompt_tokens - 1, (cached, r1.usage.prompt_tokens)  # the whole first prompt
    assert r2.usage.prompt_tokens > r1.usage.prompt_tokens + r1.usage.completion_tokens // 4


def test_streaming_hello_has_thinking_answer_and_usage(client: openai.OpenAI) -> None:
    reasoning, content, finish, usage, chunks = "", "", None, None, 0
    for chunk in client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "hello"}],
                                                stream=True, stream_options={"include_usage": True}, **GREEDY):
        usage = chunk.usage or usage
        for ch in chunk.choices:
            chunks += 1
            reasoning += _reasoning(ch.delta)
            content += ch.delta.content or ""
            finish = ch.finish_reason or finish
    assert reasoning.strip() and content.strip() and finish == "stop"
    assert chunks > 10  # token by token
    assert usage is not None and usage.completion_tokens > 0 and usage.prompt_tokens > 0


def test_python_tool_call_round_trip(client: openai.OpenAI) -> None:
    """The client's `python` function is offered as Harmony's python tool; its call comes back as JSON
    arguments, the client runs the code and sends the output, and the model quotes it."""
    convo: list[dict] = [{"role": "user", "content": "What is 37*12?"}]
    calls: dict[int, dict] = {}
    reasoning, finish = "", None
    for chunk in client.chat.completions.create(model="demo", messages=convo, tools=[PYTHON_TOOL], stream=True,
                                                **GREEDY):
        for ch in chunk.choices:
            reasoning += _reasoning(ch.delta)
            finish = ch.finish_reason or finish
            for tc in ch.delta.tool_calls or []:
                entry = calls.setdefault(tc.index, {"id": tc.id, "name": tc.function.name, "args": ""})
                entry["args"] += tc.function.arguments or ""
    assert finish == "tool_calls" and list(calls) == [0] and calls[0]["name"] == "python"
    code = json.loads(calls[0]["args"])["code"]
    assert "37" in code and "12" in code
    whole = client.chat.completions.create(model="demo", messages=convo, tools=[PYTHON_TOOL], **GREEDY)
    assert whole.choices[0].message.tool_calls[0].function.arguments == calls[0]["args"]  # same as streamed

    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30).stdout
    assert output.strip() == str(37 * 12)
    convo += [{"role": "assistant", "content": None, "reasoning_content": reasoning,
               "tool_calls": [{"id": calls[0]["id"], "type": "function",
                               "function": {"name": "python", "arguments": calls[0]["args"]}}]},
              {"role": "tool", "tool_call_id": calls[0]["id"], "content": output}]
    r = client.chat.completions.create(model="demo", messages=convo, tools=[PYTHON_TOOL], **GREEDY)
    assert r.choices[0].finish_reason == "stop" and not r.choices[0].message.tool_calls
    assert str(37 * 12) in (r.choices[0].message.content or "")
    # The history was rendered as the model wrote it, so everything up to the tool result came from cache.
    assert r.usage.prompt_tokens_details.cached_tokens >= whole.usage.prompt_tokens


def test_without_a_python_function_the_demo_answers_instead_of_calling(client: openai.OpenAI) -> None:
    weather = {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}
    r = client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "What is 37*12?"}],
                                       tools=[weather], **GREEDY)
    assert r.choices[0].finish_reason == "stop" and not r.choices[0].message.tool_calls
    assert r.choices[0].message.content


def test_a_call_to_an_undeclared_tool_is_reported_not_passed_on(app: object) -> None:
    """The demo's real python call, as events, against a request that declared no tools: no tool_calls, the
    content says which tool was called and that nothing ran."""
    backend = next(iter(app.state.backends.values()))  # type: ignore[attr-defined]
    settings = ChatSettings(builtin_tools=["python"], conversation_date="2025-01-01", seed=0)
    settings.sampling.temperature = 0.0
    events = list(backend.start_turn(TurnRequest([HMessage("user", "What is 37*12?")], settings),
                                     run_tools=False).events(timeout=120))
    declared = ReplyBuilder(routes={"python": ToolRoute("python", wrap="code")})
    undeclared = ReplyBuilder(routes={})
    for ev in events:
        declared.feed(ev)
        undeclared.feed(ev)
    assert declared.finish_reason == "tool_calls" and declared.tool_calls  # the events really hold a call
    assert undeclared.finish_reason == "stop" and not undeclared.tool_calls
    msg = undeclared.message()
    assert "'python'" in msg["content"] and "did not declare" in msg["content"] and "tool_calls" not in msg
    assert msg["reasoning_content"] == declared.message()["reasoning_content"]


def test_a_retry_is_never_text_and_the_reply_keeps_only_the_last_attempt():
    """A retry is an event, not text: nothing is inserted into the content or the reasoning, and the complete
    message (non-streaming) holds only the attempt that succeeded."""
    from mlx_harmony_tui.chat.events import Retry, TurnFinished
    from mlx_harmony_tui.harmony.events import Delta

    for channel, key in (("final", "content"), ("analysis", "reasoning_content")):
        rb = ReplyBuilder()
        events = [Delta(channel, "first try "), Retry(1, "loop", "the model repeated itself", change="seed 1 -> 2"),
                  Delta("analysis", "think"), Delta("final", "second"), TurnFinished("stop")]
        deltas = [d for ev in events for d in rb.feed(ev)]
        streamed = "".join(d.get(key, "") for d in deltas)
        assert "retry" not in streamed and "repeated" not in streamed
        assert rb.message()["content"] == "second"
        assert rb.message()["reasoning_content"] == "think"
        assert rb.retries == [{"attempt": 1, "reason": "loop", "change": "seed 1 -> 2"}]

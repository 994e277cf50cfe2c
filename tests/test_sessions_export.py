"""Exports as a reader and an OpenAI client see them: Markdown (and `sessions show`) keeps each assistant turn
together, reasoning, calls and results before the answer, with stopped and failed replies marked; the JSON
export's messages go back into our server through the openai SDK as they are."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from mlx_harmony_tui import cli
from mlx_harmony_tui.chat.events import Delta, MessageDone, TurnFailed, TurnFinished, TurnStarted
from mlx_harmony_tui.sessions.export import to_json, to_markdown
from mlx_harmony_tui.sessions.recorder import SessionRecorder
from mlx_harmony_tui.sessions.store import SessionStore

FIXTURES = Path(__file__).parent.parent / "sessions"
PYTHON_TOOL = {"type": "function", "function": {
    "name": "python", "description": "Run Python code and return what it prints.",
    "parameters": {"type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"]}}}


def _example(tmp_path: Path):
    shutil.copy(FIXTURES / "v3-example.json", tmp_path / "example-v3.json")
    return SessionStore(tmp_path).load("example-v3")


def _sections(md: str) -> list[tuple[str, str]]:
    parts = md.split("\n### ")[1:]
    return [(p.split("\n", 1)[0], p.split("\n", 1)[1]) for p in parts]


def test_markdown_keeps_each_assistant_turn_together_and_marks_a_stopped_reply(tmp_path: Path) -> None:
    sections = _sections(to_markdown(_example(tmp_path)))
    assert [h for h, _ in sections] == ["User", "Assistant", "User", "Assistant *(stopped)*"]
    for heading, body in sections:
        if heading == "User":
            assert "Reasoning" not in body and "Tool" not in body
    second = sections[3][1]
    order = [second.index(s) for s in ("Use a sieve.", "**Tool call** `python`", "**Tool result** `python`",
                                        "2, 3, 5, 7, 11, 13, 17 and 1")]
    assert order == sorted(order)


def test_failed_and_stopped_turns_are_marked(tmp_path: Path) -> None:
    store = SessionStore(tmp_path)
    session = store.create(title="t")
    rec = SessionRecorder(store, session)
    rec.add_user("first")
    for ev in (TurnStarted("a"), Delta("analysis", "thinking"), MessageDone("analysis", "thinking"),
               TurnFailed("no usable answer after 2 retries: the model repeated itself")):
        rec.on_event(ev)
    rec.add_user("second")
    for ev in (TurnStarted("b"), TurnFinished("cancelled")):  # stopped before any output
        rec.on_event(ev)
    rec.finish()
    sections = _sections(to_markdown(store.load(session.id)))
    assert [h for h, _ in sections] == [
        "User", "Assistant *(failed: no usable answer after 2 retries: the model repeated itself)*",
        "User", "Assistant *(stopped)*"]


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    from mlx_harmony_tui.server.command import build_app, serve_in_thread

    app = build_app(cli.build_parser().parse_args(["serve", "--model", "demo"]))
    with serve_in_thread(app) as url:
        yield url


@pytest.fixture
def client(server_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server_url, api_key="x", max_retries=0, timeout=120)


def test_json_export_goes_back_into_our_server_as_messages(tmp_path: Path, client: openai.OpenAI) -> None:
    doc = json.loads(to_json(_example(tmp_path)))
    messages = doc["messages"]
    calls = [tc for m in messages for tc in m.get("tool_calls", [])]
    assert calls and all(isinstance(json.loads(tc["function"]["arguments"]), dict) for tc in calls)
    assert json.loads(calls[0]["function"]["arguments"])["code"].startswith("print(")
    convo = [*messages, {"role": "user", "content": "thanks"}]
    for tools in ([PYTHON_TOOL], openai.NOT_GIVEN):
        r = client.chat.completions.create(model="demo", messages=convo, tools=tools, max_tokens=40,
                                           temperature=0.0)
        assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")
        assert r.usage.prompt_tokens > 100  # the whole exported conversation was read


def test_a_remote_chat_records_each_message_once(server_url: str, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import io
    import sys

    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n"))
    rc = cli.main(["chat", "--remote", server_url, "--temperature", "0", "--max-tokens", "200"])
    assert rc == 0, capsys.readouterr().err
    (summary,) = SessionStore().list()
    messages = SessionStore().load(summary.id).messages
    assert [(m.role, m.channel) for m in messages] == [("user", None), ("assistant", "analysis"),
                                                       ("assistant", "final")]
    assert not any(m.incomplete for m in messages)

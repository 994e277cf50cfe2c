"""The one converter between our messages and OpenAI chat messages (chat/openai_messages.py), and each of
its parameters, as the remote backend, the session export and the server use them."""

from __future__ import annotations

import json

import pytest

from mlx_harmony_tui.backends.base import TurnRequest
from mlx_harmony_tui.backends.remote import RemoteBackend, to_openai_messages
from mlx_harmony_tui.chat.openai_messages import OpenAIMessagesError, from_openai, to_openai
from mlx_harmony_tui.chat.settings import ChatSettings
from mlx_harmony_tui.harmony.messages import HMessage
from mlx_harmony_tui.server.app import create_app
from mlx_harmony_tui.server.command import serve_in_thread
from mlx_harmony_tui.sessions import export
from mlx_harmony_tui.sessions.schema import Message, Session
from tests.test_server_protocol import ScriptedBackend

CONVO = [
    HMessage("user", "37*12? and the weather"),
    HMessage("assistant", "compute it", channel="analysis"),
    HMessage("assistant", "print(37*12)", channel="analysis", recipient="python"),
    HMessage("tool", "444", channel="analysis", recipient="assistant", author="python"),
    HMessage("assistant", "now the weather", channel="analysis"),
    HMessage("assistant", '{"city":"Oslo"}', channel="commentary", recipient="functions.weather",
             content_type="<|constrain|>json"),
    HMessage("tool", '{"t": 3}', channel="commentary", recipient="assistant", author="functions.weather"),
    HMessage("assistant", "444, and 3 degrees", channel="final"),
    HMessage("user", "thanks"),
]


def test_one_assistant_message_per_reply_with_reasoning_calls_and_json_arguments() -> None:
    msgs = to_openai(CONVO)
    assert [m["role"] for m in msgs] == ["user", "assistant", "tool", "assistant", "tool", "assistant", "user"]
    first = msgs[1]
    assert first["reasoning_content"] == "compute it" and first["content"] is None
    python = first["tool_calls"][0]
    assert python["function"]["name"] == "python"
    assert json.loads(python["function"]["arguments"]) == {"code": "print(37*12)"}  # JSON, as clients expect
    wrapped = HMessage("assistant", python["function"]["arguments"], channel="analysis", recipient="python")
    assert to_openai([wrapped])[0]["tool_calls"][0]["function"]["arguments"] == python["function"]["arguments"]
    assert msgs[2] == {"role": "tool", "tool_call_id": python["id"], "content": "444"}
    weather = msgs[3]["tool_calls"][0]
    assert weather["function"] == {"name": "weather", "arguments": '{"city":"Oslo"}'}
    assert msgs[4]["tool_call_id"] == weather["id"] != python["id"]
    assert msgs[5] == {"role": "assistant", "content": "444, and 3 degrees"}


def test_results_answer_the_oldest_open_call_of_their_tool_unless_ids_are_given() -> None:
    convo = [HMessage("user", "two"),
             HMessage("assistant", "{}", channel="commentary", recipient="functions.f"),
             HMessage("assistant", "{}", channel="commentary", recipient="functions.f"),
             HMessage("tool", "one", author="functions.f"), HMessage("tool", "two", author="functions.f")]
    numbered = to_openai(convo)
    assert [c["id"] for c in numbered[1]["tool_calls"]] == ["call_1", "call_2"]
    assert [m["tool_call_id"] for m in numbered[2:]] == ["call_1", "call_2"]
    given = to_openai(convo, call_ids=[None, "a", "b", "b", "a"])
    assert [c["id"] for c in given[1]["tool_calls"]] == ["a", "b"]
    assert [m["tool_call_id"] for m in given[2:]] == ["b", "a"]


@pytest.mark.parametrize(("role", "expected"), [("developer", "developer"), ("system", "system")])
def test_developer_role_parameter(role: str, expected: str) -> None:
    msgs = to_openai([HMessage("developer", "be brief"), HMessage("system", "you are"), HMessage("user", "x")],
                     developer_role=role)
    assert [m["role"] for m in msgs] == [expected, "system", "user"]


@pytest.mark.parametrize("named", [True, False])
def test_tool_names_parameter(named: bool) -> None:
    result = to_openai(CONVO, tool_names=named)[2]
    assert ("name" in result) is named and result.get("name", "python") == "python"


def test_the_server_reads_back_what_we_write() -> None:
    back = from_openai(to_openai(CONVO), builtin_python=True)
    strip = [HMessage(m.role, m.text, channel=None if m.role == "user" else "x", recipient=m.recipient,
                      author=m.author) for m in back]
    want = [HMessage(m.role, m.text, channel=None if m.role == "user" else "x", recipient=m.recipient,
                     author=m.author) for m in CONVO]
    assert strip == want  # channels differ by design: a client's history is commentary/final, not analysis
    with pytest.raises(OpenAIMessagesError) as e:
        from_openai([{"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "nope", "content": "1"}])
    assert e.value.index == 1


def test_remote_request_declares_prompts_as_one_system_message_and_reaches_the_server_unchanged() -> None:
    msgs = to_openai_messages(CONVO, ChatSettings(system_prompt="You are terse.", instructions="dev"))
    assert msgs[0] == {"role": "system", "content": "You are terse.\n\ndev"}
    scripted = ScriptedBackend()
    with serve_in_thread(create_app(scripted)) as url:
        settings = ChatSettings(builtin_tools=["python"])
        list(RemoteBackend(url).start_turn(TurnRequest(CONVO, settings)).events(timeout=20))
    got = scripted.requests[0].messages
    assert [(m.role, m.text, m.recipient, m.author) for m in got] == \
        [(m.role, m.text, m.recipient, m.author) for m in CONVO]  # the python code arrives as code again


def test_export_writes_python_arguments_as_json_with_the_recorded_ids_and_tool_names() -> None:
    session = Session(id="s", settings={"system_prompt": "sys", "instructions": "dev"}, messages=[
        Message(id="1", role="user", content="37*12?"),
        Message(id="2", role="assistant", content="print(37*12)", channel="analysis", recipient="python",
                call_id="c1"),
        Message(id="3", role="tool", content="444", author="python", call_id="c1"),
        Message(id="4", role="assistant", content="444", channel="final"),
    ])
    msgs = export.to_openai_messages(session)
    assert [m["role"] for m in msgs] == ["system", "developer", "user", "assistant", "tool", "assistant"]
    call = msgs[3]["tool_calls"][0]
    assert call["id"] == "c1" and json.loads(call["function"]["arguments"]) == {"code": "print(37*12)"}
    assert msgs[4] == {"role": "tool", "tool_call_id": "c1", "name": "python", "content": "444"}

"""RemoteBackend against our own server (real HTTP, real SSE): events, tool calls, usage, errors, cancel."""

from __future__ import annotations

import time

import pytest

from mlx_harmony_tui.backends.base import TurnRequest
from mlx_harmony_tui.backends.remote import RemoteBackend, normalize_url, to_openai_messages
from mlx_harmony_tui.chat.events import (
    Delta,
    MessageDone,
    Metrics,
    ToolCall,
    ToolCallArgs,
    ToolCallStarted,
    ToolConfirmation,
    ToolResult,
    TurnFailed,
    TurnFinished,
)
from mlx_harmony_tui.chat.settings import ChatSettings, FunctionTool
from mlx_harmony_tui.errors import UserError
from mlx_harmony_tui.harmony.messages import HMessage
from mlx_harmony_tui.server.app import create_app
from mlx_harmony_tui.server.command import serve_in_thread
from tests.test_server_protocol import ScriptedBackend


def _events(backend: RemoteBackend, request: TurnRequest) -> list:
    return list(backend.start_turn(request).events(timeout=20))


def test_reasoning_content_tools_and_usage_become_events() -> None:
    scripted = ScriptedBackend()
    scripted.scripts.append([
        Delta("analysis", "plan"), Delta("final", "Hi"), Delta("final", " there"),
        ToolCallStarted("k", "functions.lookup"), ToolCallArgs("k", '{"q":'), ToolCallArgs("k", '"x"}'),
        ToolCall("k", "functions.lookup", '{"q":"x"}'),
        TurnFinished("stop", Metrics(prompt_tokens=12, reused_tokens=5, generated_tokens=4, final=True)),
    ])
    with serve_in_thread(create_app(scripted, api_key="k1")) as url:
        remote = RemoteBackend(url, api_key="k1")
        assert remote.model_name == "scripted"
        settings = ChatSettings(function_tools=[FunctionTool("lookup", "find")], instructions="Be kind")
        settings.set_value("seed", 3)  # as the user sets them: only those are sent
        settings.set_value("top_k", 5)
        events = _events(remote, TurnRequest([HMessage("user", "hello")], settings))
    deltas = [(e.channel, e.text) for e in events if isinstance(e, Delta)]
    assert deltas == [("analysis", "plan"), ("final", "Hi"), ("final", " there")]
    assert [e.recipient for e in events if isinstance(e, ToolCallStarted)] == ["functions.lookup"]
    assert "".join(e.delta for e in events if isinstance(e, ToolCallArgs)) == '{"q":"x"}'
    calls = [e for e in events if isinstance(e, ToolCall)]
    assert [(c.recipient, c.arguments) for c in calls] == [("functions.lookup", '{"q":"x"}')]
    done = {(m.channel, m.text) for m in events if isinstance(m, MessageDone)}
    assert {("analysis", "plan"), ("final", "Hi there")} <= done
    fin = events[-1]
    assert isinstance(fin, TurnFinished) and fin.reason == "stop"
    assert (fin.metrics.prompt_tokens, fin.metrics.reused_tokens, fin.metrics.generated_tokens) == (12, 5, 4)
    assert fin.metrics.context_tokens == 16  # the metrics bar's "ctx" in remote mode (it showed 0)
    sent = scripted.requests[0].settings
    assert (sent.seed, sent.sampling.top_k, sent.instructions) == (3, 5, "Be kind")
    assert [t.name for t in sent.function_tools] == ["lookup"]


def test_server_errors_become_turn_failed() -> None:
    scripted = ScriptedBackend()
    with serve_in_thread(create_app(scripted, api_key="right")) as url:
        events = _events(RemoteBackend(url, api_key="wrong", model="scripted"), TurnRequest([HMessage("user", "x")]))
        assert isinstance(events[-1], TurnFailed) and "API key" in events[-1].error
        events = _events(RemoteBackend(url, api_key="right", model="nope"), TurnRequest([HMessage("user", "x")]))
        assert isinstance(events[-1], TurnFailed) and "does not exist" in events[-1].error
        scripted.scripts.append([Delta("final", "a"), TurnFailed("boom")])
        events = _events(RemoteBackend(url, api_key="right"), TurnRequest([HMessage("user", "x")]))
        assert isinstance(events[-1], TurnFailed) and "boom" in events[-1].error
        with pytest.raises(UserError, match="API key"):
            RemoteBackend(url, api_key="wrong").list_models()
    events = _events(RemoteBackend(url, model="m"), TurnRequest([HMessage("user", "x")]))  # server gone
    assert isinstance(events[-1], TurnFailed) and "cannot reach" in events[-1].error


def test_connect_checks_the_named_model_with_one_request() -> None:
    """The faces call connect() at startup: one GET /models says a wrong --model (or key) at once."""
    with serve_in_thread(create_app(ScriptedBackend(), api_key="k")) as url:
        with pytest.raises(UserError, match="model 'nope' does not exist; this server serves: scripted"):
            RemoteBackend(url, api_key="k", model="nope").connect()
        with pytest.raises(UserError, match="API key"):
            RemoteBackend(url, api_key="wrong", model="scripted").connect()
        assert RemoteBackend(url, api_key="k", model="scripted").connect() == "scripted"
        assert RemoteBackend(url, api_key="k").connect() == "scripted"  # none named: the first listed


def test_a_server_without_models_endpoint_is_trusted_with_the_named_model() -> None:
    """Some OpenAI-compatible servers have no /v1/models (404) or answer it in another shape: a named model
    is then used as given (the first message says if it is wrong), and the check made one request."""
    import http.server
    import threading

    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            seen.append(self.path)
            body = b"not found" if self.path.endswith("/models") and len(seen) == 1 else b"<html>hi</html>"
            self.send_response(404 if len(seen) == 1 else 200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        assert RemoteBackend(url, model="mine").connect() == "mine"  # 404
        assert RemoteBackend(url, model="mine").connect() == "mine"  # 200, not JSON
        assert seen == ["/v1/models", "/v1/models"]
        with pytest.raises(UserError, match="OpenAI-compatible"):
            RemoteBackend(url).connect()  # nothing named: the list is needed
    finally:
        server.shutdown()
        server.server_close()


def test_cancel_stops_the_remote_turn() -> None:
    scripted = ScriptedBackend()
    scripted.scripts.append([("slow", "t")])
    with serve_in_thread(create_app(scripted)) as url:
        handle = RemoteBackend(url).start_turn(TurnRequest([HMessage("user", "x")]))
        got = []
        for ev in handle.events(timeout=20):
            got.append(ev)
            if sum(isinstance(e, Delta) for e in got) == 3:
                handle.cancel()
        assert isinstance(got[-1], TurnFinished) and got[-1].reason == "cancelled"
        deadline = time.monotonic() + 5
        while not scripted.cancelled and time.monotonic() < deadline:
            time.sleep(0.02)
        assert scripted.cancelled  # the server noticed the closed connection and stopped the model


def test_conversation_with_tool_results_round_trips_through_the_server() -> None:
    """HMessages -> OpenAI messages (remote) -> HMessages (server) gives back the same conversation."""
    convo = [
        HMessage("user", "weather?"),
        HMessage("assistant", "need it", channel="analysis"),
        HMessage("assistant", '{"city":"Oslo"}', channel="commentary", recipient="functions.weather",
                 content_type="<|constrain|>json"),
        HMessage("tool", '{"t": 3}', channel="commentary", recipient="assistant", author="functions.weather"),
        HMessage("assistant", "3 degrees", channel="final"),
        HMessage("user", "thanks"),
    ]
    scripted = ScriptedBackend()
    with serve_in_thread(create_app(scripted)) as url:
        _events(RemoteBackend(url), TurnRequest(convo))
    assert scripted.requests[0].messages == convo
    msgs = to_openai_messages(convo, ChatSettings(instructions="dev"))
    assert msgs[0] == {"role": "system", "content": "dev"}
    assert msgs[2]["tool_calls"][0]["id"] == msgs[3]["tool_call_id"]


def test_bad_url_is_a_user_error() -> None:
    with pytest.raises(UserError, match="http://host:port"):
        RemoteBackend("localhost:8000")
    assert normalize_url("http://127.0.0.1:11434") == "http://127.0.0.1:11434/v1"
    assert normalize_url("http://h:1/api/v1/") == "http://h:1/api/v1"


def _python_call(code: str) -> list[object]:
    return [ToolCallStarted("k", "python"), ToolCallArgs("k", code), ToolCall("k", "python", code),
            TurnFinished("stop", Metrics(final=True))]


def test_remote_turn_runs_the_python_tool_and_asks_again() -> None:
    """The sandbox is declared to the server, run here when the model calls it, and its output sent back
    in a second request: the same tool step as a local turn."""
    scripted = ScriptedBackend()
    scripted.scripts += [_python_call("print(6*7)"), [Delta("final", "It is 42."), TurnFinished("stop")]]
    with serve_in_thread(create_app(scripted)) as url:
        events = _events(RemoteBackend(url), TurnRequest([HMessage("user", "6*7?")], ChatSettings()))
    results = [e for e in events if isinstance(e, ToolResult)]
    assert [(r.recipient, r.output.strip(), r.error) for r in results] == [("python", "42", None)]
    assert [(e.channel, e.text) for e in events if isinstance(e, MessageDone)][-1] == ("final", "It is 42.")
    assert isinstance(events[-1], TurnFinished) and events[-1].reason == "stop"
    assert "python" in scripted.requests[0].settings.builtin_tools  # declared: the server offers the built-in
    second = scripted.requests[1].messages
    assert (second[-2].recipient, second[-2].text) == ("python", "print(6*7)")  # unwrapped by the server
    assert (second[-1].role, second[-1].author, second[-1].text.strip()) == ("tool", "python", "42")


def test_remote_tool_confirmation_can_decline() -> None:
    from types import SimpleNamespace

    from mlx_harmony_tui.tools import BrowserToolConfig, PythonToolConfig

    config = SimpleNamespace(tools=SimpleNamespace(python=PythonToolConfig(confirm=True), browser=BrowserToolConfig(),
                                                   functions=[], max_output_chars=20000))
    scripted = ScriptedBackend()
    scripted.scripts += [_python_call("print(1)"), [Delta("final", "Not run."), TurnFinished("stop")]]
    with serve_in_thread(create_app(scripted)) as url:
        handle = RemoteBackend(url, app_config=config).start_turn(TurnRequest([HMessage("user", "x")]))
        events = []
        for e in handle.events(timeout=20):
            events.append(e)
            if isinstance(e, ToolConfirmation):
                handle.confirm(e.call_id, False)
    results = [e for e in events if isinstance(e, ToolResult)]
    assert len(results) == 1 and "declined" in (results[0].error or "")
    assert isinstance(events[-1], TurnFinished) and events[-1].reason == "stop"
    assert "declined" in scripted.requests[1].messages[-1].text


def test_remote_tool_rounds_are_bounded() -> None:
    scripted = ScriptedBackend()
    scripted.scripts += [_python_call("print(1)") for _ in range(3)]
    with serve_in_thread(create_app(scripted)) as url:
        events = _events(RemoteBackend(url), TurnRequest([HMessage("user", "x")], ChatSettings(max_tool_rounds=2)))
    assert sum(isinstance(e, ToolResult) for e in events) == 2
    assert isinstance(events[-1], TurnFinished) and events[-1].reason == "tool_rounds"

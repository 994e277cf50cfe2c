"""The HTTP layer against the official openai SDK, over a scripted backend.

A random tiny model cannot be made to call a tool or to say a stop string, so these tests drive the real
server (real uvicorn, real SDK, real SSE) with a backend that plays a fixed event script and records what it
was asked. The tiny-model end-to-end tests live in test_server_local.py.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from mlx_harmony_tui.backends.base import TurnHandle, TurnRequest
from mlx_harmony_tui.chat.events import (
    Delta,
    Metrics,
    ToolCall,
    ToolCallArgs,
    ToolCallStarted,
    TurnFailed,
    TurnFinished,
    TurnStarted,
)
from mlx_harmony_tui.server.app import create_app
from mlx_harmony_tui.server.command import serve_in_thread

API_KEY = "sk-test-123"


class ScriptedBackend:
    """Plays one event script per turn. A ``("wait", Event)`` step blocks until the test sets that event;
    ``("slow", text)`` streams text tokens until the turn is cancelled."""

    def __init__(self) -> None:
        self.scripts: list[list[object]] = []
        self.requests: list[TurnRequest] = []
        self.cancelled: list[float] = []  # time each turn saw its cancel
        self.active = 0
        self.wait_timeouts = 0  # a gate the test never opened: the server held chunks back
        self.max_active = 0
        self._lock = threading.Lock()

    @property
    def model_name(self) -> str:
        return "scripted"

    @property
    def context_limit(self) -> int:
        return 4096

    def count_tokens(self, request: TurnRequest) -> int | None:
        return None

    def close(self) -> None:
        pass

    def start_turn(self, request: TurnRequest) -> TurnHandle:
        self.requests.append(request)
        script = self.scripts.pop(0) if self.scripts else [Delta("final", "ok"), TurnFinished("stop")]
        handle = TurnHandle()

        def work() -> None:
            with self._lock:
                self.active += 1
                self.max_active = max(self.max_active, self.active)
            try:
                handle.put(TurnStarted("t"))
                for step in script:
                    if isinstance(step, tuple) and step[0] == "wait":
                        if not step[1].wait(5):
                            self.wait_timeouts += 1
                    elif isinstance(step, tuple) and step[0] == "slow":
                        while not handle.cancel_event.wait(0.02):
                            handle.put(Delta("final", step[1]))
                        self.cancelled.append(time.monotonic())
                        handle.put(TurnFinished("cancelled"))
                        return
                    else:
                        if handle.cancel_event.is_set():
                            self.cancelled.append(time.monotonic())
                            handle.put(TurnFinished("cancelled"))
                            return
                        handle.put(step)  # type: ignore[arg-type]
            finally:
                with self._lock:
                    self.active -= 1
                handle.close()

        threading.Thread(target=work, daemon=True).start()
        return handle


@pytest.fixture()
def server() -> Iterator[tuple[str, ScriptedBackend]]:
    backend = ScriptedBackend()
    app = create_app({"scripted": backend, "alias": backend}, max_body_bytes=64 * 1024)
    with serve_in_thread(app) as url:
        yield url, backend


def client(url: str, key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=20)


FINAL_METRICS = Metrics(prompt_tokens=40, reused_tokens=25, prefilled_tokens=15, generated_tokens=7, final=True)


def test_non_streaming_reply_with_reasoning_and_usage(server: tuple[str, ScriptedBackend]) -> None:
    url, backend = server
    backend.scripts.append([Delta("analysis", "Think "), Delta("analysis", "hard."), Delta("final", "Hel"),
                            Delta("final", "lo!"), TurnFinished("stop", FINAL_METRICS)])
    r = client(url).chat.completions.create(
        model="scripted", messages=[{"role": "system", "content": "Be terse."}, {"role": "user", "content": "hi"}],
        temperature=0.3, top_p=0.9, max_tokens=33, seed=7, reasoning_effort="high")
    msg = r.choices[0].message
    assert msg.content == "Hello!"
    assert msg.model_extra["reasoning_content"] == "Think hard."
    assert r.choices[0].finish_reason == "stop"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.prompt_tokens_details.cached_tokens) == (40, 7, 25)
    s = backend.requests[0].settings
    assert (s.sampling.temperature, s.sampling.top_p, s.max_tokens, s.seed, s.reasoning_effort) == (0.3, 0.9, 33, 7, "high")
    assert s.instructions == "Be terse."
    assert [(m.role, m.text) for m in backend.requests[0].messages] == [("user", "hi")]


def test_streaming_is_token_by_token(server: tuple[str, ScriptedBackend]) -> None:
    """The first chunk reaches the client while the backend is still blocked: nothing is buffered."""
    url, backend = server
    gate = threading.Event()
    backend.scripts.append([Delta("analysis", "mm"), Delta("final", "first"), ("wait", gate),
                            Delta("final", " second"), TurnFinished("length", FINAL_METRICS)])
    stream = client(url).chat.completions.create(model="alias", messages=[{"role": "user", "content": "x"}],
                                                 stream=True, stream_options={"include_usage": True})
    content, reasoning, finish, usage = [], [], None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.content:
                content.append(c.delta.content)
                if c.delta.content == "first":
                    assert not gate.is_set()
                    gate.set()  # only now may the backend go on
            if (c.delta.model_extra or {}).get("reasoning_content"):
                reasoning.append(c.delta.model_extra["reasoning_content"])
            finish = c.finish_reason or finish
    assert content == ["first", " second"] and reasoning == ["mm"]
    assert backend.wait_timeouts == 0
    assert finish == "length"
    assert usage.completion_tokens == 7 and usage.prompt_tokens_details.cached_tokens == 25


TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]


def test_tool_call_round_trip(server: tuple[str, ScriptedBackend]) -> None:
    url, backend = server
    backend.scripts.append([Delta("analysis", "Need weather."), ToolCallStarted("c1", "functions.get_weather"),
                            ToolCallArgs("c1", '{"city":'), ToolCallArgs("c1", ' "Oslo"}'),
                            ToolCall("c1", "functions.get_weather", '{"city": "Oslo"}'), TurnFinished("stop")])
    backend.scripts.append([Delta("final", "It is sunny."), TurnFinished("stop")])
    c = client(url)
    msgs: list[dict] = [{"role": "user", "content": "Weather in Oslo?"}]
    stream = c.chat.completions.create(model="scripted", messages=msgs, tools=TOOLS, stream=True)
    calls: dict[int, dict] = {}
    finish = None
    for chunk in stream:
        for ch in chunk.choices:
            for tc in ch.delta.tool_calls or []:
                entry = calls.setdefault(tc.index, {"id": tc.id, "name": tc.function.name, "args": ""})
                entry["args"] += tc.function.arguments or ""
            finish = ch.finish_reason or finish
    assert finish == "tool_calls"
    assert calls[0]["name"] == "get_weather" and json.loads(calls[0]["args"]) == {"city": "Oslo"}
    s = backend.requests[0].settings
    assert [t.name for t in s.function_tools] == ["get_weather"] and s.builtin_tools == []

    msgs += [{"role": "assistant", "content": None, "reasoning_content": "Need weather.",
              "tool_calls": [{"id": calls[0]["id"], "type": "function",
                              "function": {"name": "get_weather", "arguments": calls[0]["args"]}}]},
             {"role": "tool", "tool_call_id": calls[0]["id"], "content": '{"sky": "sunny"}'}]
    r = c.chat.completions.create(model="scripted", messages=msgs, tools=TOOLS)
    assert r.choices[0].message.content == "It is sunny." and r.choices[0].finish_reason == "stop"
    got = [(m.role, m.channel, m.recipient, m.author, m.content_type, m.text) for m in backend.requests[1].messages]
    assert got == [
        ("user", None, None, None, None, "Weather in Oslo?"),
        ("assistant", "analysis", None, None, None, "Need weather."),
        ("assistant", "commentary", "functions.get_weather", None, "<|constrain|>json", '{"city": "Oslo"}'),
        ("tool", "commentary", "assistant", "functions.get_weather", None, '{"sky": "sunny"}'),
    ]


def test_non_streaming_tool_call(server: tuple[str, ScriptedBackend]) -> None:
    url, backend = server
    backend.scripts.append([ToolCall("c9", "functions.get_weather", '{"city": "Rome"}'), TurnFinished("stop")])
    r = client(url).chat.completions.create(model="scripted", messages=[{"role": "user", "content": "?"}],
                                            tools=TOOLS, tool_choice={"type": "function",
                                                                      "function": {"name": "get_weather"}})
    tc = r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "tool_calls" and r.choices[0].message.content is None
    assert tc[0].function.name == "get_weather" and json.loads(tc[0].function.arguments) == {"city": "Rome"}


def test_tool_choice_none_describes_the_tools_and_allows_no_call(server: tuple[str, ScriptedBackend]) -> None:
    """As on the Responses API: the same prompt (and cache) as the tool loop's other requests; the turn's
    constraint (settings.tool_choice "none") allows no call."""
    url, backend = server
    client(url).chat.completions.create(model="scripted", messages=[{"role": "user", "content": "?"}],
                                        tools=TOOLS, tool_choice="none")
    settings = backend.requests[0].settings
    assert [t.name for t in settings.function_tools] == [t["function"]["name"] for t in TOOLS]
    assert settings.tool_choice == "none"


def test_stop_string_cuts_and_cancels(server: tuple[str, ScriptedBackend]) -> None:
    url, backend = server
    backend.scripts.append([Delta("final", "Hello wo"), Delta("final", "rld EN"), Delta("final", "D and more"),
                            Delta("final", " never"), TurnFinished("stop")])
    r = client(url).chat.completions.create(model="scripted", messages=[{"role": "user", "content": "?"}],
                                            stop=["END", "zzz"])
    assert r.choices[0].message.content == "Hello world " and r.choices[0].finish_reason == "stop"
    backend.scripts.append([Delta("final", "abc EN"), Delta("final", "D tail"), TurnFinished("stop")])
    stream = client(url).chat.completions.create(model="scripted", messages=[{"role": "user", "content": "?"}],
                                                 stop="END", stream=True)
    text = "".join(c.delta.content or "" for ch in stream for c in ch.choices)
    assert text == "abc "


def test_disconnect_cancels_generation_and_frees_the_model(server: tuple[str, ScriptedBackend]) -> None:
    url, backend = server
    backend.scripts.append([("slow", "tok ")])
    with httpx.stream("POST", f"{url}/chat/completions", timeout=10,
                      json={"model": "scripted", "stream": True, "messages": [{"role": "user", "content": "go"}]}) as r:
        seen = 0
        for line in r.iter_lines():
            if line.startswith("data:") and "tok" in line:
                seen += 1
                if seen == 3:
                    break
        hung_up = time.monotonic()
    deadline = time.monotonic() + 5
    while not backend.cancelled and time.monotonic() < deadline:
        time.sleep(0.01)
    assert backend.cancelled, "the turn was not cancelled after the client left"
    assert backend.cancelled[0] - hung_up < 1.0
    r2 = client(url).chat.completions.create(model="scripted", messages=[{"role": "user", "content": "again"}])
    assert r2.choices[0].message.content == "ok"


def test_one_generation_at_a_time_in_order(server: tuple[str, ScriptedBackend]) -> None:
    url, backend = server
    gate = threading.Event()
    backend.scripts.append([("wait", gate), Delta("final", "A"), TurnFinished("stop")])
    for name in "BCD":
        backend.scripts.append([Delta("final", name), TurnFinished("stop")])
    results: dict[str, str] = {}

    def ask(tag: str) -> None:
        r = client(url).chat.completions.create(model="scripted", messages=[{"role": "user", "content": tag}])
        results[tag] = r.choices[0].message.content

    threads = []
    for tag in "abcd":
        t = threading.Thread(target=ask, args=(tag,))
        t.start()
        threads.append(t)
        time.sleep(0.15)  # arrival order a, b, c, d
    gate.set()
    for t in threads:
        t.join(20)
    assert results == {"a": "A", "b": "B", "c": "C", "d": "D"}  # served in arrival order
    assert backend.max_active == 1
    assert [r.messages[0].text for r in backend.requests] == list("abcd")


def test_backend_failure_is_an_error_not_a_hang(server: tuple[str, ScriptedBackend]) -> None:
    url, backend = server
    backend.scripts.append([TurnFailed("model exploded")])
    with pytest.raises(openai.InternalServerError, match="model exploded"):
        client(url).chat.completions.create(model="scripted", messages=[{"role": "user", "content": "?"}])
    backend.scripts.append([Delta("final", "x"), TurnFailed("model exploded mid-stream")])
    with pytest.raises(openai.APIError, match="mid-stream"):
        for _ in client(url).chat.completions.create(model="scripted", stream=True,
                                                     messages=[{"role": "user", "content": "?"}]):
            pass
    assert client(url).chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "?"}]).choices[0].message.content == "ok"


def _post(url: str, body: bytes | str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{url}/chat/completions", content=body, timeout=10,
                      headers={"Content-Type": "application/json", **(headers or {})})


def _assert_envelope(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


def test_bad_requests_get_openai_error_envelopes(server: tuple[str, ScriptedBackend]) -> None:
    url, backend = server
    _assert_envelope(_post(url, "{not json"), 400)
    _assert_envelope(_post(url, "[1, 2]"), 400)
    err = _assert_envelope(_post(url, json.dumps({"model": "scripted", "messages": [{"role": "user", "content": "x"}],
                                                  "temperature": "hot"})), 400)
    assert err["param"] == "temperature"
    _assert_envelope(_post(url, json.dumps({"model": "scripted", "messages": []})), 400)
    _assert_envelope(_post(url, json.dumps({"model": "scripted", "messages": [{"role": "wizard", "content": "x"}]})), 400)
    _assert_envelope(_post(url, json.dumps({"model": "scripted", "messages": [{"role": "user", "content": "x"}],
                                            "reasoning_effort": "extreme"})), 400)
    err = _assert_envelope(_post(url, json.dumps({"model": "scripted", "messages": [
        {"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "nope", "content": "1"}]})), 400)
    assert "tool_call_id" in err["message"]
    big = json.dumps({"model": "scripted", "messages": [{"role": "user", "content": "x" * 100_000}]})
    _assert_envelope(_post(url, big), 413)
    err = _assert_envelope(_post(url, json.dumps({"model": "/etc/passwd", "messages": [{"role": "user", "content": "x"}]})), 404)
    assert err["code"] == "model_not_found"
    _assert_envelope(httpx.get(f"{url}/nothing-here"), 404)
    err = _assert_envelope(_post(url, json.dumps({"model": "scripted", "messages": [{"role": "user", "content": "x"}],
                                                  "vendor_x": {"a": 1}})), 400)
    assert err["param"] == "vendor_x" and "vendor_x" in err["message"]  # unknown fields are named, not ignored
    err = _assert_envelope(_post(url, json.dumps({"model": "scripted", "messages": [{"role": "user", "content": "x"}],
                                                  "presence_penalty": 0.5})), 400)
    assert err["param"] == "presence_penalty"
    # Fields OpenAI clients send by habit are accepted and ignored (docs/server.md lists them).
    ok = _post(url, json.dumps({"model": "scripted", "messages": [{"role": "user", "content": "x"}], "user": "u1",
                                "parallel_tool_calls": True, "presence_penalty": 0, "metadata": {"k": "v"}}))
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == "ok"
    assert len(backend.requests) == 1  # none of the bad requests reached the model


def test_models_and_health(server: tuple[str, ScriptedBackend]) -> None:
    url, _ = server
    assert sorted(m.id for m in client(url).models.list()) == ["alias", "scripted"]
    health = httpx.get(url.removesuffix("/v1") + "/health").json()
    assert health["status"] == "ok" and health["busy"] is False


def test_api_key_required() -> None:
    backend = ScriptedBackend()
    with serve_in_thread(create_app(backend, api_key=API_KEY)) as url:
        with pytest.raises(openai.AuthenticationError):
            client(url, "wrong").chat.completions.create(model="scripted", messages=[{"role": "user", "content": "x"}])
        with pytest.raises(openai.AuthenticationError):
            client(url, "wrong").models.list()
        _assert_envelope(httpx.get(f"{url}/models"), 401)
        r = client(url, API_KEY).chat.completions.create(model="scripted", messages=[{"role": "user", "content": "x"}])
        assert r.choices[0].message.content == "ok"
        assert httpx.get(url.removesuffix("/v1") + "/health").status_code == 200
    assert len(backend.requests) == 1


def test_a_streamed_retry_is_an_sse_comment_and_never_text(server: tuple[str, ScriptedBackend]) -> None:
    import httpx

    from mlx_harmony_tui.chat.events import Retry

    url, backend = server
    backend.scripts.append([Delta("analysis", "first try"), Retry(1, "loop", "the model repeated itself",
                                                                  change="repetition_penalty 1 -> 1.15, seed 7 -> 8"),
                            Delta("analysis", "second try"), Delta("final", "done"), TurnFinished("stop")])
    body = {"model": "scripted", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.stream("POST", f"{url}/chat/completions", json=body, timeout=20) as r:
        lines = list(r.iter_lines())
    assert ": retry 1 (loop): repetition_penalty 1 -> 1.15, seed 7 -> 8" in lines
    deltas = [json.loads(x[5:]) for x in lines if x.startswith("data: {")]
    text = "".join(str(c["delta"].get("reasoning_content", "")) + str(c["delta"].get("content") or "")
                   for d in deltas for c in d["choices"])
    assert "retry" not in text and "repeated" not in text
    backend.scripts.append([Delta("final", "a"), Retry(1, "parse", "x"), Delta("final", "b"), TurnFinished("stop")])
    streamed = "".join(ch.choices[0].delta.content or "" for ch in client(url).chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "hi"}], stream=True) if ch.choices)
    assert streamed == "ab"  # the SDK skips the comment line

"""Client mistakes found by using `serve` as a new client developer would (the openai SDK, raw HTTP) on the
demo model: each is a 4xx in OpenAI's error envelope naming the field, never a 500, and the server keeps
serving (on the same keep-alive connection too)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from mlx_harmony_tui.backends.local import LocalBackend
from mlx_harmony_tui.chat.settings import ChatSettings
from mlx_harmony_tui.harmony.render import RenderError
from mlx_harmony_tui.server import app as server_app
from mlx_harmony_tui.server.app import create_app
from mlx_harmony_tui.server.command import serve_in_thread

USER = [{"role": "user", "content": "hi"}]
BAD_PARAMS = {"type": "object", "properties": {"city": {"type": "strin"}}}  # a typo llguidance cannot compile
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    backend = LocalBackend.load("demo")
    with serve_in_thread(create_app({"demo": backend}, ChatSettings(max_tokens=64))) as base:
        yield base
    backend.close()


@pytest.fixture()
def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=120)


def _error(r: httpx.Response, status: int = 400) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["message"], err
    return err


def _serves(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="demo", messages=USER, max_tokens=8)
    assert r.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize(
    "tool,param",
    [
        ({"type": "function"}, "tools[0].name"),
        ({"type": "function", "name": "bad name!"}, "tools[0].name"),
        ({"type": "function", "name": "f", "parameters": "x"}, "tools[0].parameters"),
    ],
)
def test_a_malformed_responses_function_tool_is_a_400_naming_it(
    url: str, client: openai.OpenAI, tool: dict[str, Any], param: str
) -> None:
    err = _error(
        httpx.post(f"{url}/responses", json={"model": "demo", "input": "hi", "tools": [tool]}, timeout=60)
    )
    assert err["param"] == param and "validation error" not in err["message"]
    _serves(client)


@pytest.mark.parametrize("prompt", [[999_999_999], [-1], [201_088]])
def test_token_ids_outside_the_vocabulary_are_a_400(
    url: str, client: openai.OpenAI, prompt: list[int]
) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="demo", prompt=prompt, max_tokens=2)
    assert e.value.body["param"] == "prompt" and "token" in e.value.body["message"]
    _serves(client)


@pytest.mark.parametrize("route", ["chat/completions", "completions"])
@pytest.mark.parametrize("key", ["201088", "999999999999", "²", "1.5", "-3"])
def test_logit_bias_on_a_token_outside_the_vocabulary_is_a_400(url: str, route: str, key: str) -> None:
    """OpenAI rejects an invalid token id in logit_bias; we dropped one silently (the client believed it had
    banned a token), and a Unicode digit such as '²' was a 500."""
    body = {"messages": USER} if route == "chat/completions" else {"prompt": "hi"}
    err = _error(httpx.post(f"{url}/{route}", json={"model": "demo", **body, "logit_bias": {key: -100},
                                                    "max_tokens": 2}, timeout=60))
    assert err["param"] == "logit_bias" and key in err["message"] and err["code"] == "invalid_value"
    r = httpx.post(f"{url}/{route}", json={"model": "demo", **body, "logit_bias": {"201087": -100, "0": 1},
                                            "max_tokens": 2}, timeout=60)
    assert r.status_code == 200, r.text  # the last id of the vocabulary is fine


@pytest.mark.parametrize(
    "extra",
    [
        {"tool_choice": "required"},
        {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
        {"response_format": {"type": "json_object"}},
    ],
)
def test_an_enforced_tool_schema_that_cannot_be_compiled_is_a_400(client: openai.OpenAI, extra: dict) -> None:
    """tool_choice required (or named) and response_format compile each offered function's parameters into
    the reply's grammar: a schema llguidance refuses was a 500 'generation failed' after the request waited."""
    tools = [
        {"type": "function", "function": {"name": "lookup", "parameters": WEATHER}},
        {"type": "function", "function": {"name": "get_weather", "parameters": BAD_PARAMS}},
    ]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="demo", messages=USER, tools=tools, max_tokens=16, **extra)
    assert e.value.body["param"] == "tools[1].function.parameters", e.value.body
    assert "strin" in e.value.body["message"]
    _serves(client)


def test_an_enforced_responses_tool_schema_that_cannot_be_compiled_is_a_400(url: str) -> None:
    tools = [{"type": "function", "name": "get_weather", "parameters": BAD_PARAMS}]
    body = {
        "model": "demo",
        "input": "hi",
        "tools": tools,
        "tool_choice": "required",
        "max_output_tokens": 16,
    }
    err = _error(httpx.post(f"{url}/responses", json=body, timeout=60))  # was a 200 with status "failed"
    assert err["param"] == "tools[0].parameters"


def test_an_unenforced_tool_schema_is_only_described(client: openai.OpenAI) -> None:
    """With tool_choice auto the schema is text for the model, not a grammar: accepted as it is."""
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": BAD_PARAMS}}]
    r = client.chat.completions.create(model="demo", messages=USER, tools=tools, max_tokens=8)
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_tool_choice_that_needs_a_call_without_tools_is_a_400(client: openai.OpenAI, choice: Any) -> None:
    """It promises a call of an offered function; with no function offered it was silently a plain answer."""
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="demo", messages=USER, tool_choice=choice, max_tokens=8)
    assert e.value.body["param"] == "tool_choice"


def test_responses_tool_choice_required_without_tools_is_a_400(url: str) -> None:
    body = {"model": "demo", "input": "hi", "tool_choice": "required", "max_output_tokens": 8}
    assert _error(httpx.post(f"{url}/responses", json=body, timeout=60))["param"] == "tool_choice"


def _http(method: str, path: str, body: bytes = b"") -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def _read_response(sock: socket.socket, buf: bytearray) -> tuple[int, bytes]:
    """One HTTP/1.1 response (Content-Length framed) from ``sock``; what follows it stays in ``buf``."""
    while b"\r\n\r\n" not in buf:
        part = sock.recv(65536)
        if not part:
            raise ConnectionError("the server closed the connection")
        buf += part
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(
        int(v) for k, _, v in (h.partition(":") for h in lines[1:]) if k.lower() == "content-length"
    )
    while len(rest) < length:
        part = sock.recv(65536)
        if not part:
            raise ConnectionError("the server closed the connection")
        rest += part
    buf[:] = rest[length:]
    return int(lines[0].split()[1]), rest[:length]


def test_an_internal_error_is_a_500_envelope_and_the_connection_stays_open(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in a handler: Starlette's catch-all handler answered, then re-raised, and uvicorn closed the
    keep-alive connection, so a client's next request on it failed too (httpx: ReadError)."""

    def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(server_app, "to_hmessages", broken)
    port = int(url.split(":")[2].split("/")[0])
    body = json.dumps({"model": "demo", "messages": USER}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(_http("POST", "/v1/chat/completions", body))
        buf = bytearray()
        status, payload = _read_response(sock, buf)
        assert status == 500
        err = json.loads(payload)["error"]
        assert err["type"] == "server_error" and "RuntimeError: a bug" in err["message"]
        sock.sendall(_http("GET", "/v1/models"))  # the same connection
        status, payload = _read_response(sock, buf)
        assert status == 200 and json.loads(payload)["data"][0]["id"] == "demo"


@pytest.mark.parametrize(
    "path,body,param",
    [
        ("chat/completions", {"messages": USER, "stream": "yes"}, "stream"),
        ("chat/completions", {"messages": USER, "max_tokens": "10"}, "max_tokens"),
        ("chat/completions", {"messages": USER, "logprobs": 1}, "logprobs"),
        ("responses", {"input": "hi", "stream": "true"}, "stream"),
        ("completions", {"prompt": "hi", "echo": "yes"}, "echo"),
        ("completions", {"prompt": "hi", "seed": -1}, "seed"),  # these two were 500s from the sampler
        ("completions", {"prompt": "hi", "seed": 2**70}, "seed"),
        # config, flags and /set cap it at 131072 (a window of token ids: a huge one ran out of memory)
        ("chat/completions", {"messages": USER, "repetition_context": 10**12}, "repetition_context"),
        ("chat/completions", {"messages": USER, "repetition_context": 131073}, "repetition_context"),
    ],
)
def test_a_value_of_the_wrong_type_or_range_is_a_400(url: str, path: str, body: dict, param: str) -> None:
    """docs/server.md: a known field with the wrong type is a 400. pydantic's lax mode read "yes" as true
    (a streamed answer to a client that did not parse one) and "10" as 10."""
    err = _error(httpx.post(f"{url}/{path}", json={"model": "demo", **body}, timeout=60))
    assert err["param"] == param and err["code"] == "invalid_value"


def test_numbers_still_convert_where_openai_accepts_them(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="demo", messages=USER, temperature=1, top_p=1, max_tokens=8)
    assert r.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize(
    "path,body,param",
    [
        ("chat/completions", {"messages": [{"role": "user", "text": "hi"}]}, "messages[0]"),
        (
            "chat/completions",
            {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
            "messages[0]",
        ),
        ("chat/completions", {"messages": [*USER, {"role": "assistant"}, *USER]}, "messages[1]"),
        ("responses", {"input": [{"role": "user", "text": "hi"}]}, "input[0].content"),
    ],
)
def test_a_message_without_its_text_is_a_400(url: str, path: str, body: dict, param: str) -> None:
    """A misspelt key ('text' for 'content') was ignored as an extra field, and the model answered an empty
    message as if the client had sent one."""
    err = _error(httpx.post(f"{url}/{path}", json={"model": "demo", **body}, timeout=60))
    assert err["param"] == param and "content" in err["message"], err


@pytest.mark.parametrize(
    "path,body,param",
    [
        (
            "chat/completions",
            {"messages": USER, "tools": [{"type": "function", "function": {"name": "1lookup"}}]},
            "tools[0].function.name",
        ),
        ("responses", {"input": "hi", "tools": [{"type": "function", "name": "-x"}]}, "tools[0].name"),
        (
            "chat/completions",
            {
                "messages": USER,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "my schema", "schema": {"type": "object"}},
                },
            },
            "response_format.json_schema.name",
        ),
        (
            "responses",
            {
                "input": "hi",
                "text": {"format": {"type": "json_schema", "name": "2nd", "schema": {"type": "object"}}},
            },
            "text.format.name",
        ),
    ],
)
def test_a_name_harmony_cannot_render_is_a_400(url: str, path: str, body: dict, param: str) -> None:
    """Function and schema names become Harmony identifiers (functions.NAME, a TypeScript type): one that
    starts with a digit or '-', or holds a space, was a 500 'internal error: RenderError'."""
    err = _error(httpx.post(f"{url}/{path}", json={"model": "demo", **body}, timeout=60))
    assert err["param"] == param, err


def test_anything_else_harmony_cannot_render_is_a_400(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The net under the checks above: a RenderError (a UserError: the request asked for it) while the
    context is fitted is the client's 400 with the renderer's sentence, not an internal error."""

    def refuse(self: LocalBackend, request: Any) -> int:
        raise RenderError("cannot render a 'wizard' message inside the conversation")

    monkeypatch.setattr(LocalBackend, "count_tokens", refuse)
    err = _error(httpx.post(f"{url}/chat/completions", json={"model": "demo", "messages": USER}, timeout=60))
    assert "wizard" in err["message"] and err["code"] == "invalid_value"


def test_tool_choice_none_keeps_the_tools_described_and_the_cache(client: openai.OpenAI) -> None:
    """As on the Responses API: "none" forbids a call (the constraint) but the tools stay in the prompt. It
    dropped them, so a tool loop's last request (tool_choice none for the answer) rendered another prefix:
    43 of 236 prompt tokens cached instead of the whole conversation, and a python call in the history
    without the python tool declared."""
    python = {
        "type": "function",
        "function": {
            "name": "python",
            "description": "Run Python",
            "parameters": {
                "type": "object",
                "properties": {"code": {"type": "string"}},
                "required": ["code"],
            },
        },
    }
    weather = {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}
    msgs: list[dict[str, Any]] = [{"role": "user", "content": "What is 37*12?"}]

    def ask(choice: str) -> Any:
        return client.chat.completions.create(
            model="demo",
            messages=msgs,
            tools=[python, weather],
            temperature=0,
            tool_choice=choice,
            max_tokens=200,
        )

    r = ask("required")
    call = r.choices[0].message.tool_calls[0]
    msgs += [
        r.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "444"},
    ]
    r2 = ask("none")
    assert not r2.choices[0].message.tool_calls and r2.choices[0].finish_reason in ("stop", "length")
    assert r2.usage.prompt_tokens_details.cached_tokens >= r.usage.prompt_tokens, r2.usage

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


@pytest.mark.parametrize("prompt", [[999_999_999], [-1], [201_088]])
def test_token_ids_outside_the_vocabulary_are_a_400(
    url: str, client: openai.OpenAI, prompt: list[int]
) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="demo", prompt=prompt, max_tokens=2)
    assert e.value.body["param"] == "prompt" and "token" in e.value.body["message"]
    _serves(client)


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

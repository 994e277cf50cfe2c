"""The server cannot be tied up: abandoned non-streaming requests are noticed, a huge request is bounded and
cancellable, SIGTERM stops the server, a full queue is a 429 also when streaming, and client mistakes are
400s, not 500s (docs/server.md, "Limits and status codes")."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mlx_harmony_tui.backends.local import LocalBackend
from mlx_harmony_tui.chat.events import Delta, TurnFinished
from mlx_harmony_tui.chat.settings import ChatSettings
from mlx_harmony_tui.server.app import create_app
from mlx_harmony_tui.server.command import free_port, serve_in_thread
from mlx_harmony_tui.server.guards import MAX_MESSAGES, MAX_TOOLS
from tests.test_server_protocol import ScriptedBackend

KEY = "sk-limits"
HEADERS = {"Authorization": f"Bearer {KEY}"}


class CountingBackend(ScriptedBackend):
    """The scripted backend with a token count (one token per character), so context checks can run."""

    def count_tokens(self, request):  # type: ignore[no-untyped-def]
        return sum(len(m.text) for m in request.messages)


@pytest.fixture()
def scripted() -> Iterator[tuple[str, CountingBackend]]:
    backend = CountingBackend()
    app = create_app({"scripted": backend}, api_key=KEY, max_body_bytes=8 << 20, max_waiting=1)
    with serve_in_thread(app) as url:
        yield url, backend


def _user(text: str = "go") -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _wait_for(cond, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.01)
    return bool(cond())


def test_an_abandoned_non_streaming_request_frees_the_model(scripted: tuple[str, CountingBackend]) -> None:
    url, backend = scripted
    backend.scripts.append([("slow", "tok ")])
    with pytest.raises(httpx.ReadTimeout):  # the client gives up after half a second and hangs up
        httpx.post(
            f"{url}/chat/completions",
            headers=HEADERS,
            timeout=0.5,
            json={"model": "scripted", "messages": _user()},
        )
    hung_up = time.monotonic()
    assert _wait_for(lambda: backend.cancelled), "the turn ran on after its client left"
    assert backend.cancelled[0] - hung_up < 1.5  # noticed within about a second, like a stream
    r = httpx.post(
        f"{url}/chat/completions",
        headers=HEADERS,
        timeout=10,
        json={"model": "scripted", "messages": _user("again")},
    )
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "ok"


def test_the_api_key_is_still_required(scripted: tuple[str, CountingBackend]) -> None:
    url, _ = scripted
    r = httpx.post(f"{url}/chat/completions", json={"messages": _user()}, timeout=10)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(url.removesuffix("/v1") + "/health", timeout=10).status_code == 200


def test_a_full_queue_is_a_429_also_when_streaming(scripted: tuple[str, CountingBackend]) -> None:
    url, backend = scripted
    gate = threading.Event()
    backend.scripts.append([("wait", gate), Delta("final", "A"), TurnFinished("stop")])
    results: dict[str, int] = {}

    def post(name: str) -> None:
        r = httpx.post(
            f"{url}/chat/completions",
            headers=HEADERS,
            timeout=30,
            json={"model": "scripted", "messages": _user(name)},
        )
        results[name] = r.status_code

    first = threading.Thread(target=post, args=("A",))
    first.start()
    assert _wait_for(lambda: backend.active == 1)
    second = threading.Thread(target=post, args=("B",))  # waits in line: the line (max 1) is now full
    second.start()
    assert _wait_for(lambda: httpx.get(url.removesuffix("/v1") + "/health").json()["waiting"] == 1)
    with httpx.stream(
        "POST",
        f"{url}/chat/completions",
        headers=HEADERS,
        timeout=10,
        json={"model": "scripted", "stream": True, "messages": _user("C")},
    ) as r:
        assert r.status_code == 429
        assert json.loads(r.read())["error"]["code"] == "queue_full"
    gate.set()
    first.join(20)
    second.join(20)
    assert results == {"A": 200, "B": 200}


DEEP = (
    b'{"model": "scripted", "messages": [{"role": "user", "content": "x"}], "metadata": '
    + b"[" * 5000
    + b"]" * 5000
    + b"}"
)


@pytest.mark.parametrize(
    "body, code",
    [
        ({"seed": -1}, "invalid_value"),
        ({"seed": 2**64}, "invalid_value"),
        ({"temperature": float("nan")}, "invalid_value"),
        ({"repetition_penalty": float("inf")}, "invalid_value"),
        (DEEP, "invalid_json"),
        (b'{"model": "scripted", "messages": [{"role": "user", "content": "\\ud800"}]}', "invalid_json"),
        ({"messages": _user("x" * 5000)}, "context_length_exceeded"),
        ({"messages": _user() * (MAX_MESSAGES + 1)}, "too_many_messages"),
        (
            {"tools": [{"type": "function", "function": {"name": f"f{i}"}} for i in range(MAX_TOOLS + 1)]},
            "too_many_tools",
        ),
    ],
    ids=[
        "seed -1",
        "seed 2^64",
        "nan temperature",
        "inf penalty",
        "nested 5000 deep",
        "lone surrogate",
        "prompt over the context",
        "too many messages",
        "too many tools",
    ],
)
def test_client_mistakes_are_400s(scripted: tuple[str, CountingBackend], body: object, code: str) -> None:
    url, backend = scripted
    if isinstance(body, dict):
        content = json.dumps({"model": "scripted", "messages": _user(), **body}).encode()
    else:
        content = body  # type: ignore[assignment]
    r = httpx.post(
        f"{url}/chat/completions",
        headers={**HEADERS, "Content-Type": "application/json"},
        content=content,
        timeout=30,
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == code
    assert backend.requests == []  # refused before it cost the model anything


# -- the real tiny model ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> Iterator[LocalBackend]:
    b = LocalBackend.load(tiny_model_dir)
    yield b
    b.close()


def _huge_conversation(turns: int = 1000) -> list[dict[str, str]]:
    out = []
    for i in range(turns):
        out.append({"role": "user", "content": f"question {i}: " + "tell me more about the weather " * 20})
        out.append({"role": "assistant", "content": f"answer {i}: " + "it is sunny and warm today " * 20})
    return [*out, {"role": "user", "content": "and now?"}]


def test_a_huge_abandoned_request_stops_within_seconds(tiny: LocalBackend) -> None:
    """~1 MB, 2,001 messages: it was fitted by one render per dropped turn (minutes of work nobody could
    stop). Now fitting is a few renders and is cancelled when the client leaves: the next request is served
    within seconds."""
    settings = ChatSettings(max_tokens=4000, conversation_date="2025-01-01", context_limit=8192)
    with serve_in_thread(create_app({"tiny": tiny}, settings, max_body_bytes=8 << 20)) as url:
        body = {"model": "tiny", "messages": _huge_conversation(), "max_tokens": 4000}
        assert len(json.dumps(body)) > 900_000
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/chat/completions", json=body, timeout=1.0)
        t0 = time.monotonic()
        r = httpx.post(
            f"{url}/chat/completions",
            timeout=120,
            json={"model": "tiny", "messages": _user("hi"), "max_tokens": 2},
        )
        took = time.monotonic() - t0
    assert r.status_code == 200
    assert took < 20, f"the abandoned request held the model for {took:.1f} s"


def test_sigterm_stops_a_busy_server_within_seconds(tiny_model_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlx_harmony_tui",
            "serve",
            "--model",
            str(tiny_model_dir),
            "--port",
            str(port),
            "--quiet",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        assert _wait_for(lambda: _healthy(base), timeout=120), "the server did not start"
        body = {"messages": _huge_conversation(), "max_tokens": 4000}
        threading.Thread(
            target=lambda: _swallow(lambda: httpx.post(f"{base}/v1/chat/completions", json=body, timeout=60)),
            daemon=True,
        ).start()
        assert _wait_for(lambda: _health(base).get("busy") is True, timeout=30)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        assert time.monotonic() - t0 < 15
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _health(base: str) -> dict:
    try:
        return httpx.get(f"{base}/health", timeout=2).json()
    except httpx.HTTPError:
        return {}


def _healthy(base: str) -> bool:
    return _health(base).get("status") == "ok"


def _swallow(fn) -> None:  # type: ignore[no-untyped-def]
    try:
        fn()
    except httpx.HTTPError:
        pass

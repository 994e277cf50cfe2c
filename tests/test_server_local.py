"""The server end to end with the real tiny model (LocalBackend): SDK streaming and not, prefix reuse across
requests (usage.cached_tokens), disconnect cancel, and RemoteBackend driving the real model over HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from mlx_harmony_tui.backends.base import TurnRequest
from mlx_harmony_tui.backends.local import LocalBackend
from mlx_harmony_tui.backends.remote import RemoteBackend
from mlx_harmony_tui.chat.events import Delta, TurnFinished
from mlx_harmony_tui.chat.settings import ChatSettings
from mlx_harmony_tui.harmony.messages import HMessage
from mlx_harmony_tui.server.app import create_app
from mlx_harmony_tui.server.command import serve_in_thread


@pytest.fixture(scope="module")
def backend(tiny_model_dir: Path) -> Iterator[LocalBackend]:
    b = LocalBackend.load(tiny_model_dir)
    yield b
    b.close()


@pytest.fixture()
def url(backend: LocalBackend) -> Iterator[str]:
    settings = ChatSettings(max_tokens=12, conversation_date="2025-01-01")
    with serve_in_thread(create_app({"tiny": backend}, settings)) as u:
        yield u


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=60)


def test_non_streaming_and_prefix_reuse_on_the_second_request(url: str) -> None:
    c = _client(url)
    convo = [{"role": "user", "content": "Tell me something about the sea and the ships on it, please."}]
    r1 = c.chat.completions.create(model="tiny", messages=convo, max_tokens=10, seed=1, temperature=0.0)
    m1 = r1.choices[0].message
    assert r1.usage.prompt_tokens > 20 and 0 < r1.usage.completion_tokens <= 10 * 3
    assert r1.choices[0].finish_reason in ("stop", "length")
    assert isinstance(m1.content, str)
    convo += [{"role": "assistant", "content": m1.content or "ok"}, {"role": "user", "content": "And more?"}]
    r2 = c.chat.completions.create(model="tiny", messages=convo, max_tokens=5, seed=1, temperature=0.0)
    cached = r2.usage.prompt_tokens_details.cached_tokens
    assert cached >= r1.usage.prompt_tokens - 2, (cached, r1.usage.prompt_tokens)  # the first prompt came from cache
    assert r2.usage.prompt_tokens > cached


def test_streaming_with_seed_matches_non_streaming(url: str) -> None:
    c = _client(url)
    msgs = [{"role": "user", "content": "Count with me."}]
    whole = c.chat.completions.create(model="tiny", messages=msgs, max_tokens=8, seed=5)
    chunks, usage, finish = [], None, None
    for ch in c.chat.completions.create(model="tiny", messages=msgs, max_tokens=8, seed=5, stream=True,
                                        stream_options={"include_usage": True}):
        usage = ch.usage or usage
        for choice in ch.choices:
            finish = choice.finish_reason or finish
            d = choice.delta
            chunks.append((d.content or "") + "\x00" + ((d.model_extra or {}).get("reasoning_content") or ""))
    content = "".join(x.split("\x00")[0] for x in chunks)
    reasoning = "".join(x.split("\x00")[1] for x in chunks)
    assert content == (whole.choices[0].message.content or "")
    assert reasoning == ((whole.choices[0].message.model_extra or {}).get("reasoning_content") or "")
    assert finish == whole.choices[0].finish_reason
    assert usage.completion_tokens == whole.usage.completion_tokens
    assert len(chunks) >= 3  # token by token, not one blob


def test_disconnect_frees_the_model_quickly(url: str) -> None:
    body = {"model": "tiny", "stream": True, "max_tokens": 4000,
            "messages": [{"role": "user", "content": "Write a very long story."}]}
    with httpx.stream("POST", f"{url}/chat/completions", json=body, timeout=30) as r:
        n = 0
        for line in r.iter_lines():
            n += line.startswith("data:")
            if n >= 4:
                break
    t0 = time.monotonic()
    r = _client(url).chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert r.choices[0].finish_reason in ("stop", "length")
    assert time.monotonic() - t0 < 10  # the abandoned 4000-token generation did not run to its end


def test_remote_backend_drives_the_real_model(url: str) -> None:
    remote = RemoteBackend(url)
    assert remote.model_name == "tiny"
    settings = ChatSettings(max_tokens=6, seed=2)
    events = list(remote.start_turn(TurnRequest([HMessage("user", "Hello there")], settings)).events(timeout=60))
    assert any(isinstance(e, Delta) for e in events)
    fin = events[-1]
    assert isinstance(fin, TurnFinished) and fin.reason in ("stop", "length")
    assert fin.metrics.prompt_tokens > 0 and fin.metrics.generated_tokens > 0

"""A reply cut by a token limit is a result, not a failure (OpenAI semantics): the partial output, finish reason
``length``, usage/metrics filled, never retried. Checked on the demo model through the turn, ``generate --json``
and the server (streamed and not, through the openai SDK)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest

from mlx_harmony_tui import cli
from mlx_harmony_tui.chat.events import Delta, Retry, TurnFailed, TurnFinished
from mlx_harmony_tui.chat.settings import ChatSettings
from mlx_harmony_tui.chat.turn import TurnContext, run_turn
from mlx_harmony_tui.demo import demo_model_path
from mlx_harmony_tui.engine.generator import Engine
from mlx_harmony_tui.engine.sampling import SamplingParams
from mlx_harmony_tui.harmony.messages import HMessage
from mlx_harmony_tui.model.load import load_model
from mlx_harmony_tui.server.command import build_app, serve_in_thread

LIMIT = 10


@pytest.fixture(scope="module")
def demo_engine() -> Engine:
    model, config = load_model(demo_model_path())
    return Engine(model, config, model_id="demo")


def test_the_turn_ends_with_length_and_the_partial_reply(demo_engine: Engine, encoding) -> None:
    ctx = TurnContext(engine=demo_engine, encoding=encoding, context_limit=4096)
    settings = ChatSettings(sampling=SamplingParams(temperature=0.0), max_tokens=LIMIT, conversation_date="2026-01-01")
    events = list(run_turn(ctx, [HMessage("user", "hello")], settings))
    assert not any(isinstance(e, Retry | TurnFailed) for e in events)
    end = events[-1]
    assert isinstance(end, TurnFinished) and end.reason == "length"
    assert end.metrics.generated_tokens == LIMIT
    assert "".join(e.text for e in events if isinstance(e, Delta))  # the partial output is there


def test_generate_json_exits_0_with_length_and_metrics(monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(["generate", "--model", "demo", "--json", "--max-tokens", str(LIMIT), "--temperature", "0",
                   "--prompt", "hello"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0, doc
    assert doc["finish_reason"] == "length" and doc["error"] is None and doc["retries"] == []
    assert doc["metrics"]["generated_tokens"] == LIMIT
    assert doc["analysis"] or doc["final"]


@pytest.fixture(scope="module")
def client() -> Iterator[openai.OpenAI]:
    app = build_app(cli.build_parser().parse_args(["serve", "--model", "demo"]))
    with serve_in_thread(app) as url:
        yield openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=120)


def test_server_answers_200_with_length_and_usage(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "hello"}],
                                       max_tokens=LIMIT, temperature=0.0)
    choice = r.choices[0]
    assert choice.finish_reason == "length"
    assert r.usage.completion_tokens == LIMIT and r.usage.prompt_tokens > 0
    reasoning = (choice.message.model_extra or {}).get("reasoning_content") or ""
    assert reasoning or choice.message.content
    assert "retrying" not in reasoning + (choice.message.content or "")


def test_server_stream_ends_with_length_and_usage(client: openai.OpenAI) -> None:
    text, finish, usage = "", None, None
    for chunk in client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "hello"}],
                                                max_tokens=LIMIT, temperature=0.0, stream=True,
                                                stream_options={"include_usage": True}):
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            text += (c.delta.model_extra or {}).get("reasoning_content") or ""
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    assert finish == "length"
    assert usage is not None and usage.completion_tokens == LIMIT
    assert text and "retrying" not in text

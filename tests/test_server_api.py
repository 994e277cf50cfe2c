"""Every endpoint and mode with the official openai SDK, against the tiny random model and the demo model:
/v1/responses (create, stream, a function-tool loop, previous_response_id continuing from the prompt cache,
text.format), /v1/chat/completions (response_format json_schema/json_object, logprobs, streamed and not),
/v1/completions (stop strings, usage, logprobs, streamed and not), and the 400s for fields we do not serve."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonschema
import openai
import pytest

from mlx_harmony_tui.backends.local import LocalBackend
from mlx_harmony_tui.chat.settings import ChatSettings
from mlx_harmony_tui.server.app import create_app
from mlx_harmony_tui.server.command import serve_in_thread

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "days": {"type": "array", "items": {"type": "object", "properties": {
            "day": {"enum": ["mon", "tue", "wed"]}, "celsius": {"type": "integer"}},
            "required": ["day", "celsius"], "additionalProperties": False}},
        "sunny": {"type": "boolean"},
    },
    "required": ["city", "days", "sunny"],
    "additionalProperties": False,
}
WEATHER_TOOL = {"type": "function", "name": "get_weather", "description": "Current weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                               "additionalProperties": False}}
JSON_FORMAT = {"format": {"type": "json_schema", "name": "forecast", "schema": SCHEMA, "strict": True}}


@pytest.fixture(scope="module", params=["tiny", "demo"])
def server(request: pytest.FixtureRequest, tiny_model_dir: Path) -> Iterator[tuple[str, str]]:
    backend = LocalBackend.load(tiny_model_dir if request.param == "tiny" else "demo")
    settings = ChatSettings(max_tokens=200, conversation_date="2025-01-01", builtin_tools=[])
    with serve_in_thread(create_app({request.param: backend}, settings)) as url:
        yield url, request.param
    backend.close()


@pytest.fixture()
def client(server: tuple[str, str]) -> openai.OpenAI:
    return openai.OpenAI(base_url=server[0], api_key="x", max_retries=0, timeout=120)


def _finished(r) -> bool:  # noqa: ANN001
    """Completed, or steered to a valid end by the token limit (the random model's strings can run long)."""
    return r.status == "completed" or (r.status == "incomplete"
                                       and r.incomplete_details.reason == "max_output_tokens")


def _valid(text: str, schema: dict = SCHEMA) -> dict:
    doc = json.loads(text)
    jsonschema.validate(doc, schema)
    return doc


def test_responses_create_with_a_schema_and_a_token_limit(client: openai.OpenAI, server: tuple[str, str]) -> None:
    model = server[1]
    r = client.responses.create(model=model, input="Forecast for Oslo?", text=JSON_FORMAT, max_output_tokens=300,
                                reasoning={"effort": "low"}, instructions="Answer briefly.")
    assert _finished(r) and r.model == model
    _valid(r.output_text)
    assert r.usage.output_tokens <= 300 and r.usage.input_tokens > 20
    assert [o.type for o in r.output][-1] == "message"
    cut = client.responses.create(model=model, input="Tell me a long story.", max_output_tokens=3)
    assert cut.status == "incomplete" and cut.incomplete_details.reason == "max_output_tokens"
    assert cut.usage.output_tokens == 3


def test_responses_stream_has_the_documented_events(client: openai.OpenAI, server: tuple[str, str]) -> None:
    with client.responses.stream(model=server[1], input="Forecast?", text=JSON_FORMAT, max_output_tokens=300,
                                 top_logprobs=2, include=["message.output_text.logprobs"]) as stream:
        events = list(stream)
        final = stream.get_final_response() if events[-1].type == "response.completed" else events[-1].response
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and _finished(final)
    assert kinds[-1] == {"completed": "response.completed", "incomplete": "response.incomplete"}[final.status]
    for k in ("response.output_item.added", "response.content_part.added", "response.output_text.delta",
              "response.output_text.done", "response.content_part.done", "response.output_item.done"):
        assert k in kinds, k
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == final.output_text
    _valid(text)
    lps = [lp for e in events if e.type == "response.output_text.delta" for lp in e.logprobs]
    assert lps and all(lp.logprob <= 0 for lp in lps)
    assert client.responses.retrieve(final.id).output_text == final.output_text  # stored


def test_a_function_tool_loop_continued_by_previous_response_id(client: openai.OpenAI, server: tuple[str, str]) -> None:
    model = server[1]
    first = client.responses.create(model=model, input="What's the weather in Oslo?", tools=[WEATHER_TOOL],
                                    tool_choice="required", text=JSON_FORMAT, max_output_tokens=200)
    calls = [o for o in first.output if o.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    jsonschema.validate(json.loads(calls[0].arguments), WEATHER_TOOL["parameters"])  # enforced by the grammar
    # tool_choice "none": the tool stays declared (the same prompt, so the cache serves it), no call is allowed.
    second = client.responses.create(
        model=model, previous_response_id=first.id, tools=[WEATHER_TOOL], tool_choice="none", text=JSON_FORMAT,
        max_output_tokens=300,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": '{"celsius": 21}'}])
    assert [o.type for o in second.output if o.type == "function_call"] == []
    assert _finished(second) and second.previous_response_id == first.id
    _valid(second.output_text)
    # The conversation so far came from the prompt cache: nothing before the new output was prefilled again.
    assert second.usage.input_tokens_details.cached_tokens >= first.usage.input_tokens
    # The same loop without the server's memory: the client sends the items back itself.
    third = client.responses.create(
        model=model, tools=[WEATHER_TOOL], tool_choice="none", max_output_tokens=120, store=False,
        input=[{"role": "user", "content": "What's the weather in Oslo?"},
               {"type": "function_call", "call_id": calls[0].call_id, "name": "get_weather",
                "arguments": calls[0].arguments},
               {"type": "function_call_output", "call_id": calls[0].call_id, "output": "21 C"}])
    assert [o.type for o in third.output][-1] == "message" and third.output_text  # free text, no call
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(third.id)  # store=False


def test_a_continued_conversation_reuses_the_cache(client: openai.OpenAI, server: tuple[str, str]) -> None:
    model = server[1]
    r1 = client.responses.create(model=model, input="Hello there, who are you?", text=JSON_FORMAT,
                                 max_output_tokens=300)
    r2 = client.responses.create(model=model, input="And what's next?", previous_response_id=r1.id,
                                 text=JSON_FORMAT, max_output_tokens=300)
    assert r2.usage.input_tokens > r1.usage.input_tokens
    assert r2.usage.input_tokens_details.cached_tokens >= r1.usage.input_tokens - 2
    client.responses.delete(r1.id)
    with pytest.raises(openai.NotFoundError) as e:
        client.responses.create(model=model, input="more", previous_response_id=r1.id)
    assert e.value.body["param"] == "previous_response_id"


@pytest.mark.parametrize("fmt", [
    {"type": "json_schema", "json_schema": {"name": "forecast", "schema": SCHEMA, "strict": True}},
    {"type": "json_object"},
])
def test_chat_response_format_and_logprobs(client: openai.OpenAI, server: tuple[str, str], fmt: dict) -> None:
    schema = SCHEMA if fmt["type"] == "json_schema" else {"type": "object"}
    msgs = [{"role": "user", "content": "Forecast for Oslo as JSON."}]
    r = client.chat.completions.create(model=server[1], messages=msgs, response_format=fmt, max_tokens=300,
                                       logprobs=True, top_logprobs=3, seed=3)
    choice = r.choices[0]
    assert choice.finish_reason in ("stop", "length")  # length: the limit closed the JSON early (still valid)
    _valid(choice.message.content, schema)
    toks = choice.logprobs.content
    assert b"".join(bytes(t.bytes) for t in toks).decode() == choice.message.content
    assert all(len(t.top_logprobs) <= 3 and t.logprob <= 0 for t in toks)
    text, lp_tokens = "", 0
    for chunk in client.chat.completions.create(model=server[1], messages=msgs, response_format=fmt, max_tokens=300,
                                                logprobs=True, seed=3, stream=True):
        for c in chunk.choices:
            text += c.delta.content or ""
            lp_tokens += len(c.logprobs.content) if c.logprobs and c.logprobs.content else 0
    _valid(text, schema)
    assert lp_tokens >= 1


def test_chat_rejects_what_it_cannot_do(client: openai.OpenAI, server: tuple[str, str]) -> None:
    msgs = [{"role": "user", "content": "x"}]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=server[1], messages=msgs, n=2)
    assert e.value.body["param"] == "n"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=server[1], messages=msgs, response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}})
    assert "schema" in e.value.body["param"]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=server[1], messages=msgs, extra_body={"guided_regex": "a+"})
    assert e.value.body["param"] == "guided_regex"


def test_completions_raw_text(client: openai.OpenAI, server: tuple[str, str]) -> None:
    model = server[1]
    r = client.completions.create(model=model, prompt="<|start|>user<|message|>Hi<|end|><|start|>assistant",
                                  max_tokens=8, logprobs=2, temperature=0)
    c = r.choices[0]
    assert c.finish_reason in ("stop", "length") and r.usage.completion_tokens <= 8
    assert r.usage.prompt_tokens == 7 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert len(c.logprobs.tokens) == r.usage.completion_tokens - (c.finish_reason == "stop")  # the stop token: none
    assert len(c.logprobs.top_logprobs[0]) <= 2 and all(v <= 0 for v in c.logprobs.token_logprobs)
    stop = c.text[2:4] if len(c.text) >= 4 else None
    if stop:  # the same greedy text, cut before the stop string
        cut = client.completions.create(model=model, prompt="<|start|>user<|message|>Hi<|end|><|start|>assistant",
                                        max_tokens=8, temperature=0, stop=[stop])
        assert cut.choices[0].text == c.text[: c.text.find(stop)] and cut.choices[0].finish_reason == "stop"
    chunks = list(client.completions.create(model=model, prompt="Once upon a time", max_tokens=6, stream=True,
                                            stream_options={"include_usage": True}))
    assert chunks[-1].usage.completion_tokens <= 6 and not chunks[-1].choices
    finish = [ch.choices[0].finish_reason for ch in chunks[:-1]][-1]
    assert finish == ("length" if chunks[-1].usage.completion_tokens == 6 else "stop")
    echo = client.completions.create(model=model, prompt="Once", max_tokens=2, echo=True)
    assert echo.choices[0].text.startswith("Once")


def test_responses_errors_have_the_documented_shape(server: tuple[str, str]) -> None:
    url, model = server
    for body, param in [({"model": model, "input": "x", "seed": 1}, "seed"),
                        ({"model": model, "input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type"),
                        ({"model": model, "input": [{"type": "function_call_output", "call_id": "nope",
                                                     "output": "1"}]}, "input[0].call_id"),
                        ({"model": model, "input": "x", "text": {"format": {"type": "yaml"}}}, "text.format.type")]:
        r = httpx.post(f"{url}/responses", json=body, timeout=60)
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["param"] == param and err["type"] == "invalid_request_error" and err["message"]
    ok = httpx.post(f"{url}/responses", json={"model": model, "input": "x", "max_output_tokens": 2, "user": "u",
                                               "metadata": {"k": "v"}, "parallel_tool_calls": False}, timeout=60)
    assert ok.status_code == 200 and ok.json()["metadata"] == {"k": "v"}  # habitual fields: accepted


def test_streamed_function_calls_and_the_python_tool(client: openai.OpenAI, server: tuple[str, str]) -> None:
    """A required call streams its arguments (function_call_arguments.delta/.done); a function named python is
    GPT-OSS's built-in tool: its plain code comes back as {"code": ...} and goes back in as a call."""
    python = {"type": "function", "name": "python", "description": "Run Python code",
              "parameters": {"type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"]}}
    with client.responses.stream(model=server[1], input="Weather in Oslo?", tools=[WEATHER_TOOL],
                                 tool_choice="required", max_output_tokens=200) as stream:
        events = list(stream)
        final = stream.get_final_response() if events[-1].type == "response.completed" else events[-1].response
    assert _finished(final)
    kinds = [e.type for e in events]
    assert "response.function_call_arguments.delta" in kinds and "response.function_call_arguments.done" in kinds
    call = next(o for o in final.output if o.type == "function_call")
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert done.arguments == call.arguments and json.loads(call.arguments)["city"] is not None
    r = client.responses.create(model=server[1], input="Compute 37*12 with python.", tools=[python],
                                tool_choice="required", max_output_tokens=200)
    call = next(o for o in r.output if o.type == "function_call")
    assert call.name == "python" and isinstance(json.loads(call.arguments)["code"], str)
    back = client.responses.create(
        model=server[1], previous_response_id=r.id, tools=[python], tool_choice="none", max_output_tokens=60,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "444"}])
    assert back.usage.input_tokens_details.cached_tokens >= r.usage.input_tokens
    assert not [o for o in back.output if o.type == "function_call"]

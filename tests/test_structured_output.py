"""Guaranteed structured output and log-probabilities: the engine's mask hook, the Harmony grammar built with
llguidance from our o200k file, and whole turns on the tiny random model (which only writes valid JSON
because the mask leaves it nothing else)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import mlx.core as mx
import numpy as np
import pytest

from mlx_harmony_tui.chat.events import Delta, MessageDone, TokenLogprob, ToolCall, TurnFinished
from mlx_harmony_tui.chat.settings import ChatSettings, FunctionTool
from mlx_harmony_tui.chat.turn import TurnContext, run_turn
from mlx_harmony_tui.engine.generator import GenerationOptions
from mlx_harmony_tui.engine.sampling import SamplingParams
from mlx_harmony_tui.harmony.constraint import SchemaError, check_schema, harmony_grammar, json_constraint
from mlx_harmony_tui.harmony.messages import HMessage
from mlx_harmony_tui.harmony.render import ResponseFormat

V = 201088
SCHEMAS = [
    {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                                      "address": {"type": "object", "properties": {"city": {"type": "string"}},
                                                  "required": ["city"], "additionalProperties": False}},
     "required": ["name", "age", "address"], "additionalProperties": False},
    {"type": "object", "properties": {"items": {"type": "array", "minItems": 1, "items": {
        "type": "object", "properties": {"sku": {"type": "string"}, "qty": {"type": "integer", "minimum": 1}},
        "required": ["sku", "qty"], "additionalProperties": False}}}, "required": ["items"]},
    {"type": "object", "properties": {"mood": {"enum": ["happy", "sad", "neutral"]}, "score": {"type": "number"}},
     "required": ["mood", "score"], "additionalProperties": False},
    {"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"}},
                                      "ok": {"type": "boolean"}, "note": {"type": ["string", "null"]}},
     "required": ["tags", "ok", "note"], "additionalProperties": False},
    {"type": "object"},
]
WEATHER = FunctionTool("get_weather", "Weather in a city", {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"], "additionalProperties": False})


def _allowed(mask: np.ndarray) -> set[int]:
    return set(np.nonzero(np.unpackbits(mask.view(np.uint8), bitorder="little"))[0].tolist())


def _walk(encoding, constraint, text: str) -> None:
    """Feed ``text``'s tokens, checking each was allowed."""
    for tok in encoding.encode(text, allowed_special="all"):
        assert tok in _allowed(constraint.allowed()), (text, encoding.decode([tok]))
        constraint.accept(tok)
    assert constraint.error is None


def _accepts(encoding, constraint, text: str) -> bool:
    for tok in encoding.encode(text, allowed_special="all"):
        if tok not in _allowed(constraint.allowed()):
            return False
        constraint.accept(tok)
    return True


def test_the_grammar_takes_harmony_replies_and_nothing_else(encoding) -> None:
    c = json_constraint(encoding, V, SCHEMAS[2], 400, [WEATHER], ["python"])
    assert _allowed(c.allowed()) == {encoding.encode("<|channel|>", allowed_special="all")[0]}
    _walk(encoding, c, "<|channel|>analysis<|message|>Think: anything goes here, even {\"x\".<|end|>"
                       '<|start|>assistant<|channel|>final<|message|>{"mood": "sad", "score": 0.5}')
    assert _allowed(c.allowed()) == {200002}  # the JSON is complete: <|return|> is the only way on
    c.accept(200002)
    assert c.done
    for reply in ('<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Oslo"}<|call|>',
                  "<|channel|>analysis to=python code<|message|>print(1)<|call|>"):
        c = json_constraint(encoding, V, SCHEMAS[2], 400, [WEATHER], ["python"])
        _walk(encoding, c, reply)
    final = "<|channel|>final<|message|>"
    assert not _accepts(encoding, json_constraint(encoding, V, SCHEMAS[2], 400), final + '{"mood": "angry"')
    assert not _accepts(encoding, json_constraint(encoding, V, SCHEMAS[2], 400), final + '{"score": 1}')
    assert not _accepts(encoding, json_constraint(encoding, V, SCHEMAS[2], 400), "Sure! " + final)
    # A tool call's arguments follow the function's schema too.
    call = "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>"
    assert not _accepts(encoding, json_constraint(encoding, V, SCHEMAS[2], 400, [WEATHER]), call + '{"town": "X"}')


def test_bad_schemas_are_clear_errors() -> None:
    with pytest.raises(SchemaError):
        check_schema({"type": "object", "properties": {"a": {"type": "no-such-type"}}})
    with pytest.raises(SchemaError):
        check_schema(["not", "an", "object"])  # type: ignore[arg-type]
    with pytest.raises(SchemaError, match="nothing the reply could be"):
        harmony_grammar(None, free=False)


def test_the_budget_closes_free_text_and_steering_closes_the_json(encoding) -> None:
    """Random choices among the allowed tokens: free text is cut at the budget, then only the answer may come;
    the JSON (an endless string, left alone) is closed before the token limit."""
    schema = {"type": "object", "properties": {"story": {"type": "string"}}, "required": ["story"]}
    rng = np.random.default_rng(0)
    for seed in range(3):
        c = json_constraint(encoding, V, schema, 120, reasoning_budget=30)
        prefer = encoding.encode("<|channel|>analysis<|message|>" + "blah " * 200, allowed_special="all")
        out: list[int] = []
        while len(out) < 120:
            allowed = sorted(_allowed(c.allowed()))
            want = prefer[len(out)] if len(out) < len(prefer) else None
            tok = want if want in allowed else int(rng.choice(allowed))
            if len(out) >= 40 and encoding.encode('"')[0] in allowed and seed == 0:
                tok = int(rng.choice(allowed))  # no preference for closing: steering must do it
            c.accept(tok)
            out.append(tok)
            if tok == 200002:
                break
        text = encoding.decode(out)
        assert out[-1] == 200002 and len(out) <= 120, text
        free, _, answer = text.partition("<|channel|>final<|message|>")
        assert free.count("blah") <= 30
        jsonschema.validate(json.loads(answer.removesuffix("<|return|>")), schema)


def test_a_mask_in_the_engine_decides_every_token(tiny_engine) -> None:
    class OnlyThese:
        def __init__(self) -> None:
            self.seen: list[int] = []

        def allowed(self) -> np.ndarray:
            words = np.zeros((V + 31) // 32, dtype=np.int32)
            tok = [1000, 2000, 200002][min(len(self.seen), 2)]
            words[tok // 32] = np.int32(np.uint32(1 << (tok % 32)).view(np.int32))
            return words

        def accept(self, token: int) -> None:
            self.seen.append(token)

    c = OnlyThese()
    out = list(tiny_engine.generate([1, 2, 3], GenerationOptions(max_tokens=10, seed=0, constraint=c)))
    assert out == [1000, 2000, 200002] and c.seen == out


def test_logprobs_come_from_the_logits_the_sampler_used(tiny_engine) -> None:
    got = []
    opts = GenerationOptions(max_tokens=6, sampling=SamplingParams(temperature=0), on_logprob=got.append,
                             top_logprobs=3, loop=None)
    out = list(tiny_engine.generate([5, 6, 7], opts))
    assert [g.token for g in got] == out
    for g in got:
        assert [t for t, _ in g.top][0] == g.token  # greedy: the chosen token is the most likely one
        assert g.top[0][1] == pytest.approx(g.logprob) and g.logprob <= 0
        assert [v for _, v in g.top] == sorted((v for _, v in g.top), reverse=True)
    # The first token's value, recomputed from the model's logits directly.
    tiny_engine.prompt_cache.reset()
    logits = tiny_engine.model(mx.array([[5, 6, 7]]), cache=tiny_engine.model.make_cache())[0, -1].astype(mx.float32)
    ref = (logits - mx.logsumexp(logits))[out[0]].item()
    assert got[0].logprob == pytest.approx(ref, abs=1e-3)


@pytest.fixture(scope="module")
def tiny_ctx(tiny_model_dir: Path):
    from mlx_harmony_tui.backends.local import LocalBackend

    b = LocalBackend.load(tiny_model_dir)
    yield TurnContext(engine=b.engine, encoding=b.encoding, context_limit=b.context_limit)
    b.close()


@pytest.mark.parametrize("schema", SCHEMAS, ids=["nested", "array", "enum", "mixed", "object"])
def test_every_reply_of_the_random_model_validates(tiny_ctx, schema) -> None:
    for seed in range(2):
        settings = ChatSettings(max_tokens=160, seed=seed, conversation_date="2025-01-01", builtin_tools=[],
                                response_format=ResponseFormat("answer", schema), logprobs=1)
        events = list(run_turn(tiny_ctx, [HMessage(role="user", text="JSON please")], settings))
        final = "".join(e.text for e in events if isinstance(e, Delta) and e.channel == "final")
        jsonschema.validate(json.loads(final), schema)
        assert isinstance(events[-1], TurnFinished) and events[-1].reason in ("stop", "length")
        lps = [e for e in events if isinstance(e, TokenLogprob) and e.channel == "final"]
        assert b"".join(e.raw for e in lps).decode() == final  # one log-probability per answer token, in order


def test_a_required_tool_call_is_made_with_valid_arguments(tiny_ctx) -> None:
    settings = ChatSettings(max_tokens=120, seed=1, conversation_date="2025-01-01", builtin_tools=[],
                            function_tools=[WEATHER], tool_choice="required")
    events = list(run_turn(tiny_ctx, [HMessage(role="user", text="Weather?")], settings))
    call = next(e for e in events if isinstance(e, ToolCall))
    assert call.recipient == "functions.get_weather"
    jsonschema.validate(json.loads(call.arguments), WEATHER.parameters)
    assert not [e for e in events if isinstance(e, MessageDone) and e.channel == "final"]


def test_generate_json_schema_and_the_config_key(tmp_path: Path, isolated_dirs: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from mlx_harmony_tui import cli

    schema_file = tmp_path / "person.json"
    schema_file.write_text(json.dumps({"title": "person", **SCHEMAS[0]}))
    rc = cli.main(["generate", "--model", "tiny", "--json", "--max-tokens", "160", "--seed", "2", "--prompt", "Who?",
                   "--json-schema", str(schema_file)])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and doc["finish_reason"] in ("stop", "length")  # length: steered to a valid end
    jsonschema.validate(json.loads(doc["final"]), SCHEMAS[0])
    # The same from the config file (what the TUI and chat read).
    from mlx_harmony_tui import paths

    config = paths.config_file()
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(f'response_format_file = "{schema_file}"\n')
    from mlx_harmony_tui.config import load_config, settings_from_config

    settings = settings_from_config(load_config()[0])
    assert settings.response_format is not None and settings.response_format.name == "person"
    # Bad files are one clear line, no traceback, nothing generated.
    bad = tmp_path / "bad.json"
    bad.write_text('{"type": "object", "properties": {"a": {"type": "nope"}}}')
    for path, words in ((bad, "bad.json"), (tmp_path / "missing.json", "cannot read")):
        rc = cli.main(["generate", "--model", "tiny", "--prompt", "x", "--json-schema", str(path)])
        err = capsys.readouterr().err
        assert rc == 2 and words in err and "Traceback" not in err, err


def test_a_structured_answer_steered_to_its_end_is_cut_at_the_token_limit_not_the_context(
    tmp_path: Path, isolated_dirs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Near max_tokens the JSON is closed early (finish 'length' with fewer tokens than max_tokens), which
    `generate` (and `chat`, and the same over --remote) read as 'cut at the end of the context (458 tokens)'
    with 131072 tokens of context."""
    from mlx_harmony_tui import cli

    schema = tmp_path / "g.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"greeting": {"type": "string"}},
                                  "required": ["greeting"], "additionalProperties": False}))
    rc = cli.main(["generate", "--prompt", "hello", "--json-schema", str(schema), "--max-tokens", "200",
                   "--temperature", "0", "--seed", "0"])
    err = capsys.readouterr().err
    assert rc == 0 and "end of the context" not in err and "cut at the token limit (max_tokens 200)" in err, err

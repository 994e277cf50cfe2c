"""HarmonyStream against real token sequences (encoded with the real o200k Harmony encoding).

Where the output is well formed, openai-harmony's own parser is the oracle. Malformed outputs are checked
against the oracle's reading of the repaired (well-formed) sequence, so the expectations are not hard-coded.
"""

from __future__ import annotations

import json

import openai_harmony as oh
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlx_harmony_tui.chat.events import (
    Delta,
    MessageDone,
    Recovery,
    ToolCall,
    ToolCallArgs,
    ToolCallStarted,
)
from mlx_harmony_tui.harmony.stream import HarmonyStream, parse_header


def run(encoding, text: str, reason: str = "stop"):
    stream = HarmonyStream(encoding)
    events = []
    for tok in encoding.encode(text, allowed_special="all"):
        events += stream.feed(tok)
    events += stream.finish(reason)
    return stream, events


def oracle(encoding, text: str) -> list[tuple]:
    """openai-harmony's reading of a well-formed completion."""
    toks = encoding.encode(text, allowed_special="all")
    msgs = encoding.parse_messages_from_completion_tokens(toks, oh.Role.ASSISTANT)
    return [(m.channel, m.content[0].text, m.recipient, m.content_type) for m in msgs]


def ours(stream: HarmonyStream) -> list[tuple]:
    return [(m.channel, m.text, m.recipient, m.content_type) for m in stream.messages]


def kinds(events) -> set[str]:
    return {e.kind for e in events if isinstance(e, Recovery)}


WELL_FORMED = [
    "<|channel|>analysis<|message|>User says hi. Reply.<|end|><|start|>assistant<|channel|>final<|message|>Hello! ünïcødé ✓<|return|>",
    "<|channel|>analysis<|message|>Need weather.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"city\": \"Paris\"}<|call|>",
    "<|channel|>commentary<|message|>Checking the weather now.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"city\": \"Oslo\"}<|call|>",
    "<|channel|>analysis<|message|>Compute.<|end|><|start|>assistant<|channel|>analysis to=python code<|message|>print(2+2)<|call|>",
]


@pytest.mark.parametrize("text", WELL_FORMED)
def test_well_formed_matches_openai_harmony(encoding, text):
    stream, events = run(encoding, text)
    assert ours(stream) == oracle(encoding, text)
    assert not kinds(events) - {"call_on_analysis"}
    assert stream.errors == []
    # streamed deltas add up to each message's text
    done = [e for e in events if isinstance(e, MessageDone)]
    assert [d.text for d in done] == [m.text for m in stream.messages]
    joined: dict[str, str] = {}
    for e in events:
        if isinstance(e, Delta):
            joined[e.channel] = joined.get(e.channel, "") + e.text
    for ch, txt in joined.items():
        assert txt == "".join(m.text for m in stream.messages if m.channel == ch and not m.recipient)


def test_final_answer_and_stop_token(encoding):
    stream, _ = run(encoding, WELL_FORMED[0])
    assert stream.stop_token == "<|return|>"
    assert stream.tool_call is None
    assert stream.text_by_channel["final"].startswith("Hello!")
    assert stream.text_by_channel["analysis"] == "User says hi. Reply."


def test_tool_call_events(encoding):
    stream, events = run(encoding, WELL_FORMED[2])
    started = [e for e in events if isinstance(e, ToolCallStarted)]
    calls = [e for e in events if isinstance(e, ToolCall)]
    args = "".join(e.delta for e in events if isinstance(e, ToolCallArgs))
    assert len(started) == 1 and len(calls) == 1
    assert started[0].call_id == calls[0].call_id and calls[0].call_id.startswith("call_")
    assert calls[0].recipient == "functions.get_weather" and calls[0].channel == "commentary"
    assert json.loads(calls[0].arguments) == {"city": "Oslo"} and args == calls[0].arguments
    assert calls[0].content_type == "<|constrain|>json"
    assert stream.stop_token == "<|call|>"
    assert stream.tool_call == stream.messages[-1]
    # the preamble (commentary without recipient) is a Delta, not tool args
    assert [e.text for e in events if isinstance(e, Delta)] and stream.text_by_channel["commentary"] == (
        "Checking the weather now."
    )
    assert not any(isinstance(e, Delta) and e.channel == "commentary" and "Oslo" in e.text for e in events)


def test_call_ids_are_unique(encoding):
    _, ev1 = run(encoding, WELL_FORMED[1])
    _, ev2 = run(encoding, WELL_FORMED[1])
    ids = [e.call_id for e in ev1 + ev2 if isinstance(e, ToolCall)]
    assert len(set(ids)) == 2


GOOD_FINAL = "<|channel|>analysis<|message|>Think.<|end|><|start|>assistant<|channel|>final<|message|>Answer.<|return|>"

# (malformed, its well-formed equivalent, recovery kind expected)
REPAIRS = [
    ("<|channel|>analysis Think.<|end|><|start|>assistant<|channel|>final<|message|>Answer.<|return|>",
     GOOD_FINAL, "missing_message"),
    ("<|channel|>analysis<|message|>Think.<|end|><|start|>assistant<|channel|>final\n\nAnswer.<|return|>",
     GOOD_FINAL, "missing_message"),
    ("<|channel|>analysis?<|message|>Think.<|end|><|start|>assistant<|channel|>final<|message|>Answer.<|return|>",
     GOOD_FINAL, "channel_name"),
    ("<|channel|>––analysis<|message|>Think.<|end|><|start|>assistant<|channel|>final<|message|>Answer.<|return|>",
     GOOD_FINAL, "channel_name"),
    ("<|channel|>analysis<|message|>Think.<|end|>assistant<|channel|>final<|message|>Answer.<|return|>",
     GOOD_FINAL, "missing_start"),
    ("<|channel|>analysis<|message|>Think.<|end|><|start|><|start|>assistant<|channel|>final<|message|>Answer.<|return|>",
     GOOD_FINAL, "doubled_start"),
    ("<|channel|>analysis<|message|>Think.<|end|><|end|><|start|>assistant<|channel|>final<|message|>Answer.<|return|>",
     GOOD_FINAL, "stray_token"),
    ("<|channel|>analysis<|message|>Think.<|channel|>final<|message|>Answer.<|return|>",
     GOOD_FINAL, "missing_end"),
    ("<|channel|>analysis<|message|>Think.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather<|channel|>commentary <|constrain|>json<|message|>{\"city\": \"Rome\"}<|call|>",
     "<|channel|>analysis<|message|>Think.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"city\": \"Rome\"}<|call|>",
     "special_in_header"),
]


@pytest.mark.parametrize(("bad", "good", "kind"), REPAIRS)
def test_malformed_output_is_repaired(encoding, bad, good, kind):
    stream, events = run(encoding, bad)
    assert ours(stream) == oracle(encoding, good)
    assert kind in kinds(events)
    assert stream.errors == []


def test_final_with_trailing_space_in_channel(encoding):
    stream, _ = run(encoding, "<|channel|>final <|message|>Answer.<|return|>")
    assert ours(stream) == oracle(encoding, "<|channel|>final<|message|>Answer.<|return|>")


def test_bare_answer_without_header_is_final(encoding):
    stream, events = run(encoding, "The capital of France is Paris.<|return|>")
    assert [(m.channel, m.text) for m in stream.messages] == [("final", "The capital of France is Paris.")]
    assert "no_header" in kinds(events)
    # it streams before the end, not only at finish
    first_delta = next(i for i, e in enumerate(events) if isinstance(e, Delta))
    assert first_delta < len(events) - 2


def test_bare_answer_ended_by_finish(encoding):
    stream, events = run(encoding, "Yes.", reason="stop")
    assert [(m.channel, m.text) for m in stream.messages] == [("final", "Yes.")]
    assert stream.incomplete == []


@pytest.mark.parametrize("header", ["<|channel|>final<|constrain|>json", "<|channel|>final <|constrain|>json"])
def test_constrain_on_final_without_recipient(encoding, header):
    stream, _ = run(encoding, header + "<|message|>{\"a\": 1}<|return|>")
    (m,) = stream.messages
    assert (m.channel, m.recipient, m.content_type, json.loads(m.text)) == ("final", None, "<|constrain|>json", {"a": 1})


@pytest.mark.parametrize(
    "text",
    [
        "<|start|>assistant to=functions.f<|channel|>commentary json<|message|>{\"x\": 1}<|call|>",
        " to=functions.f<|channel|>commentary json<|message|>{\"x\": 1}<|call|>",
        "<|channel|>commentary to=functions.f <|constrain|>json<|message|>{\"x\": 1}<|call|>",
        "<|channel|>commentary to=functions.f<|constrain|>json<|message|>{\"x\": 1}<|call|>",
    ],
)
def test_recipient_before_or_after_channel(encoding, text):
    stream, events = run(encoding, text)
    (call,) = [e for e in events if isinstance(e, ToolCall)]
    assert (call.recipient, call.channel, json.loads(call.arguments)) == ("functions.f", "commentary", {"x": 1})
    assert "json" in (call.content_type or "")
    assert "<|" not in call.recipient


def test_special_tokens_leaking_into_tool_name(encoding):
    stream, events = run(encoding, "<|channel|>commentary to=functions.get_weather<|channel|>commentary<|message|>{}<|call|>")
    (call,) = [e for e in events if isinstance(e, ToolCall)]
    assert call.recipient == "functions.get_weather"
    # the raw openai-harmony parser keeps the leaked token in the recipient; we do not
    raw = encoding.parse_messages_from_completion_tokens(
        encoding.encode("<|channel|>commentary to=functions.get_weather<|channel|>commentary<|message|>{}<|call|>",
                        allowed_special="all"), oh.Role.ASSISTANT)
    assert raw[0].recipient != call.recipient


def test_function_call_on_analysis_channel_kept_as_call(encoding):
    stream, events = run(encoding, "<|channel|>analysis to=functions.lookup <|constrain|>json<|message|>{\"q\": \"x\"}<|call|>")
    (call,) = [e for e in events if isinstance(e, ToolCall)]
    assert call.channel == "analysis" and call.recipient == "functions.lookup"
    assert "call_on_analysis" in kinds(events)
    assert stream.tool_call is not None and stream.tool_call.channel == "analysis"


def test_preamble_without_recipient(encoding):
    stream, events = run(encoding, "<|channel|>commentary<|message|>I will look that up.<|end|>")
    assert [(m.channel, m.recipient) for m in stream.messages] == [("commentary", None)]
    assert not any(isinstance(e, ToolCall) for e in events)
    assert "".join(e.text for e in events if isinstance(e, Delta) and e.channel == "commentary") == "I will look that up."


def test_truncated_json_arguments_still_emit_the_call(encoding):
    stream, events = run(encoding, "<|channel|>commentary to=functions.f <|constrain|>json<|message|>{\"city\": \"Par<|call|>")
    (call,) = [e for e in events if isinstance(e, ToolCall)]
    with pytest.raises(json.JSONDecodeError):
        json.loads(call.arguments)
    assert call.arguments == "{\"city\": \"Par"


def test_cut_by_max_tokens_flushes_partial_message(encoding):
    stream, events = run(encoding, GOOD_FINAL.replace("Answer.<|return|>", "An answer that is cut"), reason="length")
    assert stream.messages[-1].text == "An answer that is cut" and stream.messages[-1].channel == "final"
    assert stream.incomplete == [len(stream.messages) - 1]
    assert isinstance([e for e in events if isinstance(e, MessageDone)][-1], MessageDone)
    assert stream.stop_token is None


def test_tool_call_cut_by_length_is_not_run(encoding):
    stream, events = run(encoding, "<|channel|>commentary to=functions.f <|constrain|>json<|message|>{\"a\":", reason="length")
    assert not any(isinstance(e, ToolCall) for e in events)
    assert stream.tool_call is None and stream.errors and "cut off" in stream.errors[0]


def test_model_writing_a_tool_result_is_an_error_not_content(encoding):
    text = ("<|channel|>analysis<|message|>x<|end|><|start|>functions.f to=assistant<|channel|>commentary<|message|>"
            "{\"fake\": 1}<|end|><|start|>assistant<|channel|>final<|message|>ok<|return|>")
    stream, events = run(encoding, text)
    assert [m.text for m in stream.messages] == ["x", "ok"]
    assert any("functions.f" in e for e in stream.errors)
    assert not any("fake" in getattr(e, "text", "") for e in events)


def test_unterminated_message_at_stop_is_kept_complete(encoding):
    stream, events = run(encoding, "<|channel|>final<|message|>Done", reason="stop")
    assert stream.messages[-1].text == "Done" and stream.incomplete == []
    assert "unterminated" in kinds(events)


def test_nothing_produced_is_an_error(encoding):
    stream, _ = run(encoding, "<|return|>", reason="stop")
    assert stream.messages == [] and stream.errors == ["the model produced no message"]
    cut, _ = run(encoding, "<|channel|>analysis", reason="length")  # the turn layer reports length itself
    assert cut.messages == [] and cut.errors == []


def test_multibyte_text_split_across_tokens(encoding):
    text = "<|channel|>final<|message|>日本語のテキスト 🎉<|return|>"
    stream, events = run(encoding, text)
    assert ours(stream) == oracle(encoding, text)
    assert "".join(e.text for e in events if isinstance(e, Delta)) == "日本語のテキスト 🎉"


def test_parse_header_waits_for_unfinished_words():
    assert parse_header("\x01channel\x01comm", complete=False).channel is None
    h = parse_header("\x01channel\x01commentary to=functions.get_wea", complete=False)
    assert h.channel == "commentary" and h.recipient is None and h.content_at is None


# --------------------------------------------------------------------------- fuzz
SPECIAL_NAMES = ["start", "end", "message", "channel", "constrain", "return", "call", "endoftext", "reserved_200004"]
WORDS = ["assistant", "analysis", "commentary", "final", " to=functions.f", " json", "Hello", " world", "{\"a\":", "\n",
         "?", " ", "functions.get_weather", "–", "é"]


@st.composite
def token_streams(draw, encoding):
    pieces = draw(st.lists(st.one_of(st.sampled_from([f"<|{n}|>" for n in SPECIAL_NAMES]), st.sampled_from(WORDS)),
                           max_size=40))
    toks: list[int] = []
    for p in pieces:
        toks += encoding.encode(p, allowed_special="all")
    toks += draw(st.lists(st.integers(0, 201087), max_size=5))  # any id, incl. reserved specials
    return toks


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), reason=st.sampled_from(["stop", "length", "cancelled", "loop"]))
def test_fuzz_no_exception_escapes(encoding, data, reason):
    toks = data.draw(token_streams(encoding))
    stream = HarmonyStream(encoding)
    events = []
    for t in toks:
        events += stream.feed(t)
    events += stream.finish(reason)
    assert not [e for e in stream.errors if "internal" in e]
    # every completed message equals what was streamed for it
    acc = ""
    n_done = 0
    for e in events:
        if isinstance(e, Delta | ToolCallArgs):
            acc += e.text if isinstance(e, Delta) else e.delta
        elif isinstance(e, MessageDone):
            assert e.text == acc
            assert e.channel in ("analysis", "commentary", "final")
            acc = ""
            n_done += 1
    assert n_done == len(stream.messages)


@pytest.mark.parametrize("junk", ["<|channel|> json", "<|channel|>json", "<|channel|> <|constrain|>json",
                                  "<|channel|> code"])
def test_content_type_word_after_a_leaked_token_is_a_content_type(encoding, junk):
    """`to=functions.get_weather<|channel|> json<|message|>{...}`: the word is the content type, the
    arguments stay JSON."""
    args = '{"city": "Paris"}'
    stream, events = run(encoding, f"<|channel|>commentary to=functions.get_weather{junk}<|message|>{args}<|call|>")
    calls = [e for e in events if isinstance(e, ToolCall)]
    assert len(calls) == 1 and calls[0].recipient == "functions.get_weather"
    assert json.loads(calls[0].arguments) == {"city": "Paris"}
    assert junk.rsplit("|>", 1)[-1].strip() in (calls[0].content_type or "")
    assert "special_in_header" in kinds(events)

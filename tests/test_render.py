"""render_prompt against the exact token sequences openai-harmony produces for the messages we expect to keep."""

from __future__ import annotations

from datetime import datetime

import openai_harmony as oh
import pytest

from mlx_harmony_tui.chat.settings import ChatSettings, FunctionTool
from mlx_harmony_tui.chat.turn import render_options_from_settings
from mlx_harmony_tui.harmony.messages import HMessage
from mlx_harmony_tui.harmony.placeholders import expand_placeholders
from mlx_harmony_tui.harmony.render import (
    RenderError,
    RenderOptions,
    ResponseFormat,
    kept_messages,
    render_prompt,
)
from mlx_harmony_tui.harmony.stream import HarmonyStream

WEATHER = FunctionTool(
    "get_weather", "Current weather for a city",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


def opts(**kw) -> RenderOptions:
    base = {"conversation_date": "2025-03-01", "function_tools": [WEATHER], "instructions": "Be brief."}
    base.update(kw)
    return RenderOptions(**base)


def u(t):
    return HMessage("user", t)


def a(t, ch="final", to=None, ct=None):
    return HMessage("assistant", t, channel=ch, recipient=to, content_type=ct)


def tool(t, author="functions.get_weather", ch="commentary"):
    return HMessage("tool", t, channel=ch, recipient="assistant", author=author)


def expected(encoding, kept: list[oh.Message], o: RenderOptions, builtin: list[str] | None = None) -> list[int]:
    """What openai-harmony renders for system + developer + exactly the ``kept`` messages."""
    sc = (oh.SystemContent.new().with_reasoning_effort(oh.ReasoningEffort.MEDIUM)
          .with_conversation_start_date(o.conversation_date).with_knowledge_cutoff("2024-06"))
    for b in builtin or []:
        sc = sc.with_tools(getattr(oh.ToolNamespaceConfig, b)())
    dc = oh.DeveloperContent.new().with_instructions(o.instructions).with_function_tools(
        [oh.ToolDescription.new(WEATHER.name, WEATHER.description, WEATHER.parameters)]
    )
    msgs = [oh.Message.from_role_and_content(oh.Role.SYSTEM, sc), oh.Message.from_role_and_content(oh.Role.DEVELOPER, dc)]
    return encoding.render_conversation_for_completion(
        oh.Conversation.from_messages(msgs + kept), oh.Role.ASSISTANT, oh.RenderConversationConfig(auto_drop_analysis=False)
    )


def H(role, text, ch=None, to=None, ct=None, name=None):
    m = (oh.Message.from_author_and_content(oh.Author.new(oh.Role.TOOL, name), text) if role == "tool"
         else oh.Message.from_role_and_content(oh.Role(role), text))
    if ch:
        m = m.with_channel(ch)
    if to:
        m = m.with_recipient(to)
    if ct:
        m = m.with_content_type(ct)
    return m


def conversation():
    """Two completed turns with tool calls, and a third turn whose tool call is in flight."""
    return [
        u("Weather in Paris?"),
        a("Need the weather tool.", "analysis"),
        a('{"city":"Paris"}', "commentary", "functions.get_weather", "<|constrain|>json"),
        tool('{"temp": 21}'),
        a("Compute in python.", "analysis"),
        a("print(21*9/5+32)", "analysis", "python", "code"),
        tool("69.8", author="python", ch="analysis"),
        a("It is 21 °C (69.8 °F)."),
        u("And Oslo?"),
        a("Call again.", "analysis"),
        a("Looking it up.", "commentary"),
        a('{"city":"Oslo"}', "commentary", "functions.get_weather", "<|constrain|>json"),
        tool('{"temp": 3}'),
        a("3 °C."),
        u("And Rome?"),
        a("Third call; user wants Rome.", "analysis"),
        a('{"city":"Rome"}', "commentary", "functions.get_weather", "<|constrain|>json"),
        tool('{"temp": 17}'),
    ]


def test_multi_turn_matches_openai_harmony_with_cot_rules(encoding):
    o = opts()
    got = render_prompt(conversation(), o, encoding)
    kept = [
        H("user", "Weather in Paris?"),
        H("assistant", '{"city":"Paris"}', "commentary", "functions.get_weather", "<|constrain|>json"),
        H("tool", '{"temp": 21}', "commentary", "assistant", name="functions.get_weather"),
        H("assistant", "It is 21 °C (69.8 °F).", "final"),
        H("user", "And Oslo?"),
        H("assistant", "Looking it up.", "commentary"),
        H("assistant", '{"city":"Oslo"}', "commentary", "functions.get_weather", "<|constrain|>json"),
        H("tool", '{"temp": 3}', "commentary", "assistant", name="functions.get_weather"),
        H("assistant", "3 °C.", "final"),
        H("user", "And Rome?"),
        H("assistant", "Third call; user wants Rome.", "analysis"),  # current turn: analysis kept
        H("assistant", '{"city":"Rome"}', "commentary", "functions.get_weather", "<|constrain|>json"),
        H("tool", '{"temp": 17}', "commentary", "assistant", name="functions.get_weather"),
    ]
    assert got == expected(encoding, kept, o)
    text = encoding.decode(got)
    assert "Need the weather tool." not in text and "print(21*9/5+32)" not in text and "69.8<" not in text
    assert "Third call; user wants Rome." in text


def test_kept_messages_drops_analysis_traffic_of_completed_turns_only():
    conv = conversation()
    dropped = [m.text for m in conv if m not in kept_messages(conv)]
    assert dropped == ["Need the weather tool.", "Compute in python.", "print(21*9/5+32)", "69.8", "Call again."]


def test_current_turn_analysis_dropped_once_completed(encoding):
    conv = conversation() + [a("Rome: 17 °C.")]
    text = encoding.decode(render_prompt(conv, opts(), encoding))
    assert "Third call; user wants Rome." not in text
    assert '{"city":"Rome"}' in text and "Rome: 17 °C." in text


def test_tool_result_and_message_terminators(encoding):
    text = encoding.decode(render_prompt(conversation(), opts(), encoding))
    assert '<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>{"temp": 17}<|end|>' in text
    assert '{"city":"Rome"}<|call|>' in text
    assert "3 °C.<|end|>" in text and "<|return|>" not in text
    assert text.endswith("<|start|>assistant")


def test_prompt_continues_the_parsed_output(encoding):
    """Round trip: what the stream parses from a generation renders back into the next prompt."""
    gen = ("<|channel|>analysis<|message|>Need weather.<|end|><|start|>assistant<|channel|>commentary "
           "to=functions.get_weather <|constrain|>json<|message|>{\"city\": \"Lima\"}<|call|>")
    s = HarmonyStream(encoding)
    for t in encoding.encode(gen, allowed_special="all"):
        s.feed(t)
    s.finish("stop")
    hist = [u("Lima?"), *s.messages, tool('{"temp": 19}')]
    prompt = render_prompt(hist, opts(), encoding)
    first = render_prompt([u("Lima?")], opts(), encoding)
    assert prompt[: len(first)] == first
    text = encoding.decode(prompt[len(first):])
    assert "Need weather." in text and '{"city": "Lima"}<|call|>' in text


def test_builtin_tools_in_system_message(encoding):
    o = opts(builtin_tools=["python", "browser"])
    got = render_prompt([u("hi")], o, encoding)
    assert got == expected(encoding, [H("user", "hi")], o, builtin=["python", "browser"])
    with pytest.raises(RenderError, match="unknown builtin tool"):
        render_prompt([u("hi")], opts(builtin_tools=["shell"]), encoding)


def test_bad_function_tool_name_is_a_user_error(encoding):
    with pytest.raises(RenderError, match="invalid"):
        render_prompt([u("hi")], opts(function_tools=[FunctionTool("bad name")]), encoding)


def test_response_format_section_follows_tools(encoding):
    rf = ResponseFormat("answer", {"type": "object", "properties": {"x": {"type": "integer"}}}, "the result")
    text = encoding.decode(render_prompt([u("hi")], opts(response_format=rf), encoding))
    dev = text.split("<|start|>developer<|message|>")[1].split("<|end|>")[0]
    assert dev.index("# Tools") < dev.index("# Response Formats")
    assert dev.endswith('# Response Formats\n\n## answer\n\n// the result\n{"type":"object","properties":{"x":{"type":"integer"}}}')
    only = encoding.decode(render_prompt([u("hi")], RenderOptions(conversation_date="2025-01-01", response_format=rf), encoding))
    assert "<|start|>developer<|message|># Response Formats\n\n## answer" in only


def test_options_from_settings_and_fixed_date(encoding):
    s = ChatSettings(reasoning_effort="high", instructions="Hi {name}", conversation_date="2024-12-24",
                     builtin_tools=["python"], function_tools=[WEATHER], system_prompt="Speak French.")
    o = render_options_from_settings(s)
    assert (o.reasoning_effort, o.conversation_date, o.builtin_tools) == ("high", "2024-12-24", ["python"])
    text = encoding.decode(render_prompt([u("hi")], o, encoding))
    assert "Current date: 2024-12-24" in text and "Reasoning: high" in text
    assert "Speak French." in text.split("<|end|>")[0]
    assert "Hi {name}" in text  # unknown placeholder left as-is
    assert RenderOptions().conversation_date == datetime.now().date().isoformat()


def test_placeholders_expanded_in_system_and_developer(encoding):
    now = datetime(2025, 5, 6, 7, 8)
    o = opts(instructions="Today is {weekday} {date} at {time}; user {who}; literal {{date}}; json {\"a\": 1}",
             system_prompt="Now: {datetime}", placeholders={"who": "Ada"}, now=now)
    text = encoding.decode(render_prompt([u("hi")], o, encoding))
    assert "Today is Tuesday 2025-05-06 at 07:08; user Ada; literal {date}; json {\"a\": 1}" in text
    assert "Now: 2025-05-06 07:08" in text


def test_expand_placeholders_rules():
    now = datetime(2024, 1, 2, 3, 4)
    assert expand_placeholders("{date} {unknown} {{ {{time}}", now=now) == "2024-01-02 {unknown} { {time}"
    assert expand_placeholders("{date}", {"date": "override"}, now=now) == "override"
    assert expand_placeholders("no braces") == "no braces"


def test_tool_result_without_author_is_a_user_error(encoding):
    with pytest.raises(RenderError, match="author"):
        render_prompt([u("hi"), HMessage("tool", "x", channel="commentary")], opts(), encoding)


def test_incomplete_turn_keeps_analysis(encoding):
    """A turn without a final answer (cancelled) is not completed: its analysis stays."""
    conv = [u("a"), a("thinking...", "analysis"), u("b")]
    assert "thinking..." in encoding.decode(render_prompt(conv, opts(), encoding))

"""Conversation -> Harmony prompt token ids, via openai-harmony, with our own chain-of-thought rules.

Why our own rules: openai-harmony's ``auto_drop_analysis`` only looks at the last final message, so we render
with it off and decide ourselves: the analysis of every *completed* turn (a turn = everything after a user
message; completed = it has a final-channel message) is dropped, including analysis-channel tool calls and
their results; the current turn keeps everything, so a tool call in flight still sees its reasoning. The
system message carries a fixed ``conversation_date`` so the rendered prefix (and the engine's KV cache) stays
valid across days.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Literal

import openai_harmony as oh

from mlx_harmony_tui.errors import UserError
from mlx_harmony_tui.harmony.messages import FunctionTool, HMessage
from mlx_harmony_tui.harmony.placeholders import expand_placeholders

DEFAULT_IDENTITY: str = oh.SystemContent.model_fields["model_identity"].default
BUILTIN_TOOLS = ("python", "browser")
_EFFORT = {"low": oh.ReasoningEffort.LOW, "medium": oh.ReasoningEffort.MEDIUM, "high": oh.ReasoningEffort.HIGH}
# a function or response-format name: a Harmony recipient (functions.NAME) and a TypeScript identifier
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$")


class RenderError(UserError):
    """The conversation or the options cannot be rendered (bad tool name, unknown builtin tool, ...)."""


@dataclass
class ResponseFormat:
    """A JSON schema the final answer must follow (the developer message's "# Response Formats")."""

    name: str
    schema: dict[str, Any]
    description: str = ""


@dataclass
class RenderOptions:
    model_identity: str = DEFAULT_IDENTITY
    reasoning_effort: Literal["low", "medium", "high"] = "medium"
    knowledge_cutoff: str = "2024-06"
    conversation_date: str = field(default_factory=lambda: date.today().isoformat())
    builtin_tools: list[str] = field(default_factory=list)  # "python", "browser"
    instructions: str = ""  # developer message
    function_tools: list[FunctionTool] = field(default_factory=list)
    response_format: ResponseFormat | None = None
    system_prompt: str = ""  # extra system text, after the model identity
    placeholders: dict[str, str] = field(default_factory=dict)  # user-defined {name} values
    examples: list[dict[str, str]] = field(default_factory=list)  # example dialogue [{role, content}]
    now: datetime | None = None  # for {date}/{time} placeholders; None = the current time
    # Per builtin tool, an openai_harmony.ToolNamespaceConfig replacing the stock description (the tools
    # layer describes its own python sandbox, which is not the Jupyter kernel of the stock text).
    tool_namespaces: dict[str, Any] = field(default_factory=dict)


def _system_message(options: RenderOptions, extra_system: list[str]) -> oh.Message:
    if options.reasoning_effort not in _EFFORT:
        raise RenderError(f"reasoning effort must be low, medium or high, not {options.reasoning_effort!r}")
    identity = options.model_identity
    extras = [t for t in [options.system_prompt, *extra_system] if t]
    if extras:
        identity = "\n\n".join([identity, *extras]) if identity else "\n\n".join(extras)
    identity = expand_placeholders(identity, options.placeholders, options.now)
    content = (
        oh.SystemContent.new()
        .with_model_identity(identity)
        .with_reasoning_effort(_EFFORT[options.reasoning_effort])
        .with_knowledge_cutoff(options.knowledge_cutoff)
        .with_conversation_start_date(options.conversation_date)
    )
    for tool in options.builtin_tools:
        if tool in options.tool_namespaces:
            content = content.with_tools(options.tool_namespaces[tool])
        elif tool == "python":
            content = content.with_tools(oh.ToolNamespaceConfig.python())
        elif tool == "browser":
            content = content.with_tools(oh.ToolNamespaceConfig.browser())
        else:
            raise RenderError(f"unknown builtin tool {tool!r}; known: {', '.join(BUILTIN_TOOLS)}")
    return oh.Message.from_role_and_content(oh.Role.SYSTEM, content)


def examples_text(examples: list[dict[str, str]]) -> str:
    """Example dialogue as a section of the developer message (what the model should answer like)."""
    if not examples:
        return ""
    lines = [f"{str(e.get('role', 'user')).capitalize()}: {e.get('content', '')}" for e in examples]
    return "# Examples\n\nAnswer in the way these example exchanges do:\n\n" + "\n\n".join(lines)


def _developer_message(options: RenderOptions, extra_dev: list[str]) -> oh.Message | None:
    sections = [options.instructions, *extra_dev, examples_text(options.examples)]
    instructions = "\n\n".join(t for t in sections if t)
    instructions = expand_placeholders(instructions, options.placeholders, options.now)
    tools: list[oh.ToolDescription] = []
    for ft in options.function_tools:
        if not NAME_RE.match(ft.name or ""):
            raise RenderError(f"function tool name {ft.name!r} is invalid (letters, digits, _ and -; max 64)")
        if not isinstance(ft.parameters, dict):
            raise RenderError(f"function tool {ft.name!r}: parameters must be a JSON-schema object")
        tools.append(oh.ToolDescription.new(ft.name, ft.description or "", ft.parameters))
    if not instructions and not tools and options.response_format is None:
        return None
    content = oh.DeveloperContent.new()
    if instructions:
        content = content.with_instructions(instructions)
    if tools:
        content = content.with_function_tools(tools)
    return oh.Message.from_role_and_content(oh.Role.DEVELOPER, content)


def _response_format_text(rf: ResponseFormat, after_other_sections: bool) -> str:
    if not NAME_RE.match(rf.name or ""):
        raise RenderError(f"response format name {rf.name!r} is invalid (letters, digits, _ and -; max 64)")
    try:
        schema = json.dumps(rf.schema, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError) as e:
        raise RenderError(f"response format {rf.name!r}: schema is not JSON ({e})") from e
    desc = f"// {rf.description}\n" if rf.description else ""
    sep = "\n\n" if after_other_sections else ""
    return f"{sep}# Response Formats\n\n## {rf.name}\n\n{desc}{schema}"


def _completed_turn_mask(messages: list[HMessage]) -> list[bool]:
    """True for each message that belongs to a completed turn (its turn has a final-channel message)."""
    mask = [False] * len(messages)
    start = 0
    bounds = [i for i, m in enumerate(messages) if m.role == "user"] + [len(messages)]
    for end in bounds:
        seg = range(start, end)
        done = any(messages[i].role == "assistant" and messages[i].channel == "final" for i in seg)
        for i in seg:
            mask[i] = done
        start = end + 1
    return mask


def kept_messages(messages: list[HMessage]) -> list[HMessage]:
    """The history as the model sees it: analysis (and analysis-channel tool traffic) of completed turns dropped."""
    mask = _completed_turn_mask(messages)
    return [
        m for m, done in zip(messages, mask, strict=True)
        if not (done and m.channel == "analysis" and m.role in ("assistant", "tool"))
    ]


def to_harmony_message(m: HMessage) -> oh.Message:
    """One conversation HMessage as an openai-harmony Message (user, assistant or tool result)."""
    if m.role == "user":
        return oh.Message.from_role_and_content(oh.Role.USER, m.text)
    if m.role == "assistant":
        msg = oh.Message.from_role_and_content(oh.Role.ASSISTANT, m.text)
        channel = m.channel or ("commentary" if m.recipient else "final")
        msg = msg.with_channel(channel)
        if m.recipient:
            msg = msg.with_recipient(m.recipient)
        if m.content_type:
            msg = msg.with_content_type(m.content_type)
        return msg
    if m.role == "tool":
        if not m.author:
            raise RenderError("a tool result has no author (expected e.g. 'functions.get_weather' or 'python')")
        msg = oh.Message.from_author_and_content(oh.Author.new(oh.Role.TOOL, m.author), m.text)
        if m.channel:
            msg = msg.with_channel(m.channel)
        return msg.with_recipient(m.recipient or "assistant")
    raise RenderError(f"cannot render a {m.role!r} message inside the conversation")


def render_prompt(messages: list[HMessage], options: RenderOptions, encoding: Any) -> list[int]:
    """System + developer + the conversation (CoT rules applied), ending in ``<|start|>assistant``."""
    extra_system = [m.text for m in messages if m.role == "system"]
    extra_dev = [m.text for m in messages if m.role == "developer"]
    convo = [m for m in messages if m.role not in ("system", "developer")]
    hmsgs = [_system_message(options, extra_system)]
    dev = _developer_message(options, extra_dev)
    if dev is not None:
        hmsgs.append(dev)
    hmsgs.extend(to_harmony_message(m) for m in kept_messages(convo))
    try:
        tokens = encoding.render_conversation_for_completion(
            oh.Conversation.from_messages(hmsgs),
            oh.Role.ASSISTANT,
            oh.RenderConversationConfig(auto_drop_analysis=False),
        )
    except Exception as e:  # noqa: BLE001 - openai-harmony raises its own error types from Rust
        raise RenderError(f"openai-harmony could not render the conversation: {e}") from e
    if options.response_format is not None and dev is not None:
        tokens = _insert_response_format(tokens, options.response_format, dev, encoding)
    return list(tokens)


def _insert_response_format(tokens: list[int], rf: ResponseFormat, dev: oh.Message, encoding: Any) -> list[int]:
    """openai-harmony has no response formats: add the section at the end of the developer message."""
    start = encoding.encode("<|start|>developer", allowed_special="all")
    end_tok = encoding.encode("<|end|>", allowed_special="all")[0]
    n = len(start)
    at = next((i for i in range(len(tokens) - n + 1) if tokens[i : i + n] == start), None)
    if at is None:
        raise RenderError("internal: the developer message is missing from the rendered prompt")
    end = tokens.index(end_tok, at)
    content = dev.content[0]
    has_sections = bool(getattr(content, "instructions", None) or getattr(content, "tools", None))
    extra = encoding.encode(_response_format_text(rf, has_sections), allowed_special=set(), disallowed_special=())
    return tokens[:end] + extra + tokens[end:]

"""Requests of the Responses API (POST /v1/responses) and their mapping to HMessages and ChatSettings.

Input items are messages (roles user/system/developer/assistant, text parts), ``reasoning`` items (the
model's analysis), ``function_call`` and ``function_call_output``. A function tool named ``python`` is
offered as GPT-OSS's built-in python tool, which the client runs (as on chat completions). Fields the API
has but this server does not implement are a 400 naming the field; fields clients send by habit are
accepted and ignored (IGNORED, listed in docs/server.md).
"""

from __future__ import annotations

import copy
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mlx_harmony_tui.chat.openai_messages import unwrap_code
from mlx_harmony_tui.chat.settings import ChatSettings, FunctionTool
from mlx_harmony_tui.harmony.messages import HMessage
from mlx_harmony_tui.harmony.render import NAME_RE
from mlx_harmony_tui.server.schemas import (
    PYTHON,
    APIError,
    ToolRoute,
    check_enforced_tools,
    reject_unknown,
    response_format,
    validated,
)

# Sent by common clients (the openai SDK, the Agents SDK, Codex) with values we cannot act on locally.
IGNORED = frozenset({
    "metadata", "user", "safety_identifier", "prompt_cache_key", "prompt_cache_retention", "service_tier",
    "truncation", "parallel_tool_calls", "max_tool_calls", "background", "stream_options", "include",
    "conversation",
})


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False, strict=True)  # as chat's (server/schemas.py)


class FunctionToolDef(_Model):
    type: Literal["function"]
    name: str = Field(pattern=NAME_RE.pattern)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Reasoning(_Model):
    effort: Literal["low", "medium", "high"] | None = None
    summary: str | None = None  # accepted; GPT-OSS's reasoning is returned whole as reasoning_text instead


class TextConfig(_Model):
    format: dict[str, Any] | None = None
    verbosity: str | None = None  # accepted and ignored


class ResponsesRequest(_Model):
    model: str = ""
    input: str | list[dict[str, Any]] = Field(default_factory=list)
    instructions: str | None = None
    previous_response_id: str | None = None
    store: bool = True
    stream: bool = False
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    reasoning: Reasoning | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    text: TextConfig | None = None
    metadata: dict[str, Any] | None = None
    include: list[str] | None = None

    def logprobs_wanted(self) -> int | None:
        asked = "message.output_text.logprobs" in (self.include or [])
        return (self.top_logprobs or 0) if asked or self.top_logprobs else None


def check_fields(data: dict[str, Any]) -> None:
    reject_unknown(data, set(ResponsesRequest.model_fields) | IGNORED)
    if data.get("background"):
        raise APIError(400, "background responses are not supported", param="background",
                       code="unsupported_parameter")


def function_tools(req: ResponsesRequest) -> list[FunctionToolDef]:
    out = []
    for i, t in enumerate(req.tools or []):
        if t.get("type") != "function":
            raise APIError(400, f"tools[{i}]: tool type {t.get('type')!r} is not supported (function tools only;"
                           " a function named 'python' is GPT-OSS's python tool, run by the client)",
                           param=f"tools[{i}].type", code="unsupported_parameter")
        out.append(validated(FunctionToolDef, t, f"tools[{i}]"))
    return out


def _text(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise APIError(400, f"{where}.content must be a string or a list of parts", param=f"{where}.content")
    parts = []
    for j, p in enumerate(content):
        kind = p.get("type") if isinstance(p, dict) else None
        if kind not in ("input_text", "output_text", "text", "reasoning_text", "summary_text"):
            raise APIError(400, f"{where}.content[{j}]: part type {kind!r} is not supported (text only)",
                           param=f"{where}.content[{j}].type", code="unsupported_parameter")
        parts.append(str(p.get("text") or ""))
    return "".join(parts)


def to_messages(items: list[dict[str, Any]], builtin_python: bool, calls: dict[str, str]) -> tuple[list[HMessage], list[str]]:
    """Input items -> (conversation messages, instruction texts from system/developer messages). ``calls``
    (call_id -> Harmony recipient) carries earlier calls, so an output finds the call it answers."""
    out: list[HMessage] = []
    instructions: list[str] = []
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise APIError(400, f"{where} must be an object", param=where)
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if item.get("content") is None:  # e.g. a misspelt "text": the model would answer an empty message
                raise APIError(400, f"{where}.content is required (a string or a list of text parts)",
                               param=f"{where}.content")
            text = _text(item.get("content"), where)
            if role in ("system", "developer"):
                instructions.append(text)
            elif role == "user":
                out.append(HMessage(role="user", text=text))
            elif role == "assistant":
                out.append(HMessage(role="assistant", text=text, channel="final"))
            else:
                raise APIError(400, f"{where}.role {role!r} is not one of user, system, developer, assistant",
                               param=f"{where}.role")
        elif kind == "reasoning":
            text = _text(item.get("content"), where) or _text(item.get("summary"), where)
            if text:
                out.append(HMessage(role="assistant", text=text, channel="analysis"))
        elif kind == "function_call":
            name, call_id = str(item.get("name") or ""), str(item.get("call_id") or "")
            if not name or not call_id:
                raise APIError(400, f"{where}: a function_call needs name and call_id", param=where)
            args = item.get("arguments") or ""
            args = json.dumps(args) if isinstance(args, dict) else str(args)
            if builtin_python and name == PYTHON:
                calls[call_id] = PYTHON
                out.append(HMessage(role="assistant", text=unwrap_code(args), channel="analysis", recipient=PYTHON))
            else:
                calls[call_id] = f"functions.{name}"
                out.append(HMessage(role="assistant", text=args, channel="commentary", recipient=f"functions.{name}",
                                    content_type="<|constrain|>json"))
        elif kind == "function_call_output":
            call_id = str(item.get("call_id") or "")
            recipient = calls.get(call_id)
            if recipient is None:
                raise APIError(400, f"{where}: function_call_output with call_id {call_id!r} answers no earlier "
                               "function_call", param=f"{where}.call_id")
            output = item.get("output")
            text = output if isinstance(output, str) else _text(output, where) if isinstance(output, list) else json.dumps(output)
            channel = "analysis" if recipient == PYTHON else "commentary"
            out.append(HMessage(role="tool", text=text, channel=channel, recipient="assistant", author=recipient))
        else:
            raise APIError(400, f"{where}: input item type {kind!r} is not supported", param=f"{where}.type",
                           code="unsupported_parameter")
    return out, instructions


def to_settings(req: ResponsesRequest, base: ChatSettings, instructions: list[str]) -> tuple[ChatSettings, dict[str, ToolRoute]]:
    """The server's settings with this request's overrides, and the routes of the functions it offered."""
    s = copy.deepcopy(base)
    if req.temperature is not None:
        s.sampling.temperature = req.temperature
    if req.top_p is not None:
        s.sampling.top_p = req.top_p
    if req.max_output_tokens is not None:
        s.max_tokens = req.max_output_tokens
    if req.reasoning and req.reasoning.effort:
        s.reasoning_effort = req.reasoning.effort
    texts = [s.instructions, req.instructions or "", *instructions]
    s.instructions = "\n\n".join(t for t in texts if t)
    s.builtin_tools, s.function_tools = [], []
    s.logprobs = req.logprobs_wanted()
    routes: dict[str, ToolRoute] = {}
    choice = req.tool_choice
    tools = function_tools(req)
    if isinstance(choice, dict):
        name = choice.get("name")
        if choice.get("type") != "function" or not name:
            raise APIError(400, "tool_choice must be 'none', 'auto', 'required' or {type: function, name}",
                           param="tool_choice")
        tools = [t for t in tools if t.name == name]
        if not tools:
            raise APIError(400, f"tool_choice names unknown function {name!r}", param="tool_choice")
    elif choice not in (None, "auto", "none", "required"):
        raise APIError(400, f"tool_choice {choice!r} is not one of none, auto, required", param="tool_choice")
    elif choice == "required" and not tools:
        raise APIError(400, "tool_choice asks for a function call, but the request offers no tools", param="tool_choice")
    if tools:  # with "none" too: declared (same prompt, same cache), but the constraint allows no call
        s.tool_choice = "required" if choice == "required" or isinstance(choice, dict) else choice or "auto"
        for t in tools:
            if t.name == PYTHON:
                s.builtin_tools = [PYTHON]
                props = list((t.parameters or {}).get("properties") or {})
                routes[PYTHON] = ToolRoute(PYTHON, wrap=props[0] if len(props) == 1 else "code")
            else:
                s.function_tools.append(FunctionTool(t.name, t.description or "",
                                                     t.parameters or {"type": "object", "properties": {}}))
                routes[f"functions.{t.name}"] = ToolRoute(t.name)
    fmt = req.text.format if req.text else None
    if fmt is not None:
        s.response_format = response_format(fmt, "text.format")
    check_enforced_tools(s, {t.get("name"): f"tools[{i}].parameters" for i, t in enumerate(req.tools or [])})
    return s, routes

"""Request models of the OpenAI chat-completions API and their mapping to HMessages and ChatSettings.

Unknown fields are accepted and ignored (clients send many vendor extensions), but a known field with the wrong
type is a 400: pydantic validates, the app turns its errors into OpenAI's error envelope.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# PYTHON: a client function of this name is offered as Harmony's built-in python tool
from mlx_harmony_tui.chat.openai_messages import PYTHON, OpenAIMessagesError, from_openai
from mlx_harmony_tui.chat.settings import ChatSettings, FunctionTool
from mlx_harmony_tui.harmony.messages import HMessage

MAX_STOP_STRINGS = 4


class APIError(Exception):
    """An error returned to the client in OpenAI's envelope (never a traceback)."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)  # json.loads accepts NaN and Infinity


class ContentPart(_Model):
    type: str
    text: str | None = None


class FunctionCall(_Model):
    name: str
    arguments: str = ""

    @field_validator("arguments", mode="before")
    @classmethod
    def _args_as_text(cls, v: Any) -> Any:
        # Some clients send the arguments as an object instead of a JSON string.
        return json.dumps(v) if isinstance(v, dict) else v


class ToolCallIn(_Model):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Model):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for p in self.content:
            if p.type not in ("text", "input_text", "output_text"):
                raise APIError(400, f"content part type {p.type!r} is not supported (text only)", param="messages")
            parts.append(p.text or "")
        return "".join(parts)


class FunctionDef(_Model):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-]+$")
    description: str = ""
    parameters: dict[str, Any] | None = None


class ToolDef(_Model):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Model):
    name: str


class NamedToolChoice(_Model):
    type: Literal["function"]
    function: NamedFunction


class StreamOptions(_Model):
    include_usage: bool = False


class ChatCompletionRequest(_Model):
    model: str = ""
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0)
    repetition_context: int | None = Field(default=None, ge=0)  # extension: tokens the penalty looks back over
    logit_bias: dict[str, float] | None = None  # OpenAI's: token id (as a string) -> bias, -100..100
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    seed: int | None = Field(default=None, ge=0, lt=2**64)  # the sampler's seed is an unsigned 64-bit int
    stop: str | list[str] | None = None
    reasoning_effort: Literal["low", "medium", "high"] | None = None
    tools: list[ToolDef] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    n: int | None = Field(default=None, ge=1, le=1)

    def stop_strings(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        stops = [s for s in stops if s]
        if len(stops) > MAX_STOP_STRINGS:
            raise APIError(400, f"at most {MAX_STOP_STRINGS} stop strings are allowed", param="stop")
        return stops


def to_settings(req: ChatCompletionRequest, base: ChatSettings) -> ChatSettings:
    """The server's configured settings with this request's overrides applied (the base is never mutated)."""
    s = copy.deepcopy(base)
    sp = s.sampling
    if req.temperature is not None:
        sp.temperature = req.temperature
    if req.top_p is not None:
        sp.top_p = req.top_p
    if req.top_k is not None:
        sp.top_k = req.top_k
    if req.min_p is not None:
        sp.min_p = req.min_p
    if req.repetition_penalty is not None:
        sp.repetition_penalty = req.repetition_penalty
    if req.repetition_context is not None:
        sp.repetition_context = req.repetition_context
    if req.logit_bias:
        bias: dict[int, float] = {}
        for key, value in req.logit_bias.items():
            if not key.isdigit() or not -100 <= value <= 100:
                raise APIError(400, f"logit_bias: {key!r}: {value}: keys are token ids, biases -100..100",
                               param="logit_bias", code="invalid_value")
            bias[int(key)] = value
        sp.logit_bias = {**sp.logit_bias, **bias}
    limit = req.max_completion_tokens or req.max_tokens
    if limit is not None:
        s.max_tokens = limit
    if req.seed is not None:
        s.seed = req.seed
    if req.reasoning_effort is not None:
        s.reasoning_effort = req.reasoning_effort
    instructions = [m.text() for m in req.messages if m.role in ("system", "developer")]
    if instructions:
        s.instructions = "\n\n".join(t for t in [s.instructions, *instructions] if t)
    s.builtin_tools = list(base.builtin_tools)  # only what `serve --tools` runs here (none by default)
    s.function_tools = []
    choice = req.tool_choice
    if req.tools and choice != "none":
        tools = [
            FunctionTool(
                name=t.function.name,
                description=t.function.description,
                parameters=t.function.parameters or {"type": "object", "properties": {}},
            )
            for t in req.tools
        ]
        if isinstance(choice, NamedToolChoice):
            tools = [t for t in tools if t.name == choice.function.name]
            if not tools:
                raise APIError(400, f"tool_choice names unknown function {choice.function.name!r}", param="tool_choice")
        if any(t.name == PYTHON for t in tools):
            # GPT-OSS is trained to call `python` as a built-in tool with plain code, not as functions.python.
            s.builtin_tools = sorted({*s.builtin_tools, PYTHON})
            tools = [t for t in tools if t.name != PYTHON]
        s.function_tools = tools
    return s


@dataclass(frozen=True)
class ToolRoute:
    """The client function a Harmony recipient stands for; ``wrap`` is the JSON key that plain-text
    arguments (the python tool's code) go under, None for functions whose arguments already are JSON."""

    name: str
    wrap: str | None = None


def _python_key(req: ChatCompletionRequest) -> str:
    """The parameter the client's python function takes its code in (its only property, else "code")."""
    for t in req.tools or []:
        if t.function.name == PYTHON:
            props = (t.function.parameters or {}).get("properties") or {}
            if len(props) == 1:
                return str(next(iter(props)))
    return "code"


def tool_routes(req: ChatCompletionRequest, settings: ChatSettings) -> dict[str, ToolRoute]:
    """Harmony recipient -> client function, for exactly the tools this request offered the model; a call to
    any other recipient is one the client cannot run."""
    routes = {f"functions.{t.name}": ToolRoute(t.name) for t in settings.function_tools}
    if PYTHON in settings.builtin_tools and _declares_python(req):
        routes[PYTHON] = ToolRoute(PYTHON, wrap=_python_key(req))
    return routes


def server_tools(settings: ChatSettings, routes: dict[str, ToolRoute]) -> frozenset[str]:
    """The built-in tools the server runs itself (``serve --tools``), less any the client declared."""
    return frozenset(t for t in settings.builtin_tools if t not in routes)


def _declares_python(req: ChatCompletionRequest) -> bool:
    return any(t.function.name == PYTHON for t in req.tools or [])


def to_hmessages(req: ChatCompletionRequest) -> list[HMessage]:
    """OpenAI messages -> Harmony messages (chat/openai_messages.py). System/developer text goes to
    settings.instructions instead; a tool result finds its function through tool_call_id (or its name)."""
    docs = [
        {"role": m.role, "content": m.text(), "name": m.name, "tool_call_id": m.tool_call_id,
         "reasoning_content": m.reasoning_content, "reasoning": m.reasoning,
         "tool_calls": [{"id": tc.id, "function": {"name": tc.function.name, "arguments": tc.function.arguments}}
                        for tc in m.tool_calls or []]}
        for m in req.messages
    ]
    try:
        out = from_openai(docs, builtin_python=_declares_python(req))
    except OpenAIMessagesError as e:
        raise APIError(400, str(e), param=f"messages[{e.index}].tool_call_id") from None
    if not out:
        raise APIError(400, "messages must contain at least one user message", param="messages")
    return out

"""Request models of the OpenAI chat-completions API and their mapping to HMessages and ChatSettings.

A field this server does not know is a 400 naming it, except the ones OpenAI clients send by habit
(CHAT_IGNORED: accepted and ignored, listed in docs/server.md); a known field with the wrong type is a 400
too: pydantic validates, the app turns its errors into OpenAI's error envelope.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# PYTHON: a client function of this name is offered as Harmony's built-in python tool
from mlx_harmony_tui.chat.openai_messages import PYTHON, OpenAIMessagesError, from_openai
from mlx_harmony_tui.chat.settings import ChatSettings, FunctionTool
from mlx_harmony_tui.config.validate import RANGES
from mlx_harmony_tui.harmony.messages import HMessage
from mlx_harmony_tui.harmony.render import NAME_RE, ResponseFormat

MAX_STOP_STRINGS = 4
# Sent by common clients with values a local model cannot act on: accepted and ignored.
CHAT_IGNORED = frozenset({
    "user", "metadata", "store", "service_tier", "parallel_tool_calls", "modalities", "prompt_cache_key",
    "safety_identifier", "verbosity", "web_search_options", "prediction", "audio",
})
# Accepted only at their neutral value (0): clients send them by default.
NEUTRAL_ONLY = ("frequency_penalty", "presence_penalty")
T = TypeVar("T")


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
    # json.loads accepts NaN and Infinity; strict: "yes" is not a bool nor "10" an int (a 400, not a guess)
    model_config = ConfigDict(extra="allow", allow_inf_nan=False, strict=True)


TEXT_PARTS = ("text", "input_text", "output_text")


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

    @model_validator(mode="after")
    def _has_text(self) -> ChatMessage:
        """A message without content is a 400: a misspelt key ("text") would otherwise be an ignored extra
        field, and the model would answer an empty message. An assistant message may carry only calls."""
        if self.content is None and not (self.role == "assistant" and (self.tool_calls or self.reasoning_content
                                                                        or self.reasoning)):
            raise ValueError(f"a {self.role} message needs content")
        for i, part in enumerate(self.content if isinstance(self.content, list) else []):
            if part.type in TEXT_PARTS and part.text is None:
                raise ValueError(f"content[{i}]: a {part.type} part needs text")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for p in self.content:
            if p.type not in TEXT_PARTS:
                raise APIError(400, f"content part type {p.type!r} is not supported (text only)", param="messages")
            parts.append(p.text or "")
        return "".join(parts)


class FunctionDef(_Model):
    name: str = Field(pattern=NAME_RE.pattern)
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
    # extension: tokens the penalty looks back over, capped as in config/flags/`/set` (config/validate.py)
    repetition_context: int | None = Field(default=None, ge=0, le=RANGES["repetition_context"][1])
    logit_bias: dict[str, float] | None = None  # OpenAI's: token id (as a string) -> bias, -100..100
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    seed: int | None = Field(default=None, ge=0, lt=2**64)  # the sampler's seed is an unsigned 64-bit int
    stop: str | list[str] | None = None
    reasoning_effort: Literal["low", "medium", "high"] | None = None
    tools: list[ToolDef] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    n: int | None = Field(default=None, ge=1, le=1)
    response_format: dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    frequency_penalty: float | None = None
    presence_penalty: float | None = None

    def stop_strings(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        stops = [s for s in stops if s]
        if len(stops) > MAX_STOP_STRINGS:
            raise APIError(400, f"at most {MAX_STOP_STRINGS} stop strings are allowed", param="stop")
        return stops


def reject_unknown(data: dict[str, Any], known: set[str] | frozenset[str]) -> None:
    """A 400 naming the first field this server does not implement, and for the penalties clients send at 0
    by default, any other value."""
    for key in data:
        if key not in known:
            raise APIError(400, f"unsupported field {key!r} (this server does not implement it)", param=key,
                           code="unsupported_parameter")
    for key in NEUTRAL_ONLY:
        if data.get(key) not in (None, 0, 0.0):
            raise APIError(400, f"{key} is not supported (use repetition_penalty)", param=key,
                           code="unsupported_parameter")


def check_chat_fields(data: dict[str, Any]) -> None:
    reject_unknown(data, set(ChatCompletionRequest.model_fields) | CHAT_IGNORED)


M = TypeVar("M", bound=BaseModel)


def param_path(loc: Sequence[int | str], where: str = "") -> str:
    """A pydantic error location as OpenAI writes a parameter: ``tools[0].function.name``. The location stops
    at a union member's tag (``stop.str``, ``tool_choice.literal['none','auto','required']``)."""
    out = where
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.isidentifier() and part not in _TYPE_TAGS and not part[:1].isupper():
            out += f".{part}" if out else part
        else:
            break
    return out


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "dict", "list"})


def validated(model: type[M], data: Any, where: str = "") -> M:
    """The request (or its part at ``where``, e.g. ``tools[0]``) as ``model``; a JSON value that is not an
    object, or the first validation error, is a 400 naming the field."""
    if not isinstance(data, dict):
        raise APIError(400, f"{where} must be a JSON object" if where else "request body must be a JSON object",
                       param=where or None)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        loc = param_path(first["loc"], where)
        raise APIError(400, f"{loc}: {first['msg']}" if loc else first["msg"], param=loc or None,
                       code="invalid_value") from None


def pick(backends: Mapping[str, T], name: str) -> tuple[str, T]:
    """The backend the request's ``model`` names (the first one when empty); another name is a 404."""
    name = name or next(iter(backends))
    backend = backends.get(name)
    if backend is None:
        raise APIError(404, f"model {name!r} does not exist; this server serves: {', '.join(backends)}",
                       param="model", code="model_not_found")
    return name, backend


def vocab_size(backend: object) -> int:
    """The model's vocabulary size (0: unknown, e.g. a distributed engine; then only negatives are refused)."""
    return int(getattr(getattr(backend, "engine", None), "vocab_size", 0) or 0)


def logit_bias(bias: dict[str, float], vocab: int = 0) -> dict[int, float]:
    """OpenAI's ``logit_bias`` (token id as a string -> -100..100) as the sampler takes it. A key that is not
    a token id of the model is a 400, as OpenAI's: the sampler would drop it, and the client would believe
    it had banned (or favoured) a token."""
    out: dict[int, float] = {}
    for key, value in bias.items():
        if not (key.isascii() and key.isdigit()) or not -100 <= value <= 100:
            raise APIError(400, f"logit_bias: {key!r}: {value}: keys are token ids, biases -100..100",
                           param="logit_bias", code="invalid_value")
        if vocab and int(key) >= vocab:
            raise APIError(400, f"logit_bias: token id {key!r} is outside the model's vocabulary (0..{vocab - 1})",
                           param="logit_bias", code="invalid_value")
        out[int(key)] = value
    return out


def response_format(fmt: Any, param: str) -> ResponseFormat | None:
    """``response_format`` (chat) or ``text.format`` (responses) -> the schema the final answer must follow.
    The schema is checked here, so a schema llguidance cannot enforce is a 400 before any generation."""
    from mlx_harmony_tui.harmony.constraint import SchemaError, check_schema

    if not isinstance(fmt, dict):
        raise APIError(400, f"{param} must be an object", param=param)
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return ResponseFormat("json_object", {"type": "object"}, "any JSON object")
    if kind != "json_schema":
        raise APIError(400, f"{param}.type must be text, json_object or json_schema, not {kind!r}",
                       param=f"{param}.type")
    spec = fmt.get("json_schema", fmt)  # chat nests it; the Responses API does not
    where = f"{param}.json_schema" if "json_schema" in fmt else param
    if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
        raise APIError(400, f"{where}.schema must be a JSON-schema object", param=f"{where}.schema")
    name = str(spec.get("name") or "response")
    if not NAME_RE.match(name):
        raise APIError(400, f"{where}.name {name!r}: letters, digits, _ and - (not first), at most 64",
                       param=f"{where}.name", code="invalid_value")
    try:
        check_schema(spec["schema"])
    except SchemaError as e:
        raise APIError(400, f"{where}.schema: {e}", param=f"{where}.schema") from None
    return ResponseFormat(name, spec["schema"], str(spec.get("description") or ""))


def to_settings(req: ChatCompletionRequest, base: ChatSettings, vocab: int = 0) -> ChatSettings:
    """The server's configured settings with this request's overrides applied (the base is never mutated);
    ``vocab``: the model's vocabulary size, which logit_bias keys must fall in."""
    s = copy.deepcopy(base)
    sp = s.sampling
    for key in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "repetition_context"):
        if getattr(req, key) is not None:
            setattr(sp, key, getattr(req, key))
    if req.logit_bias:
        sp.logit_bias = {**sp.logit_bias, **logit_bias(req.logit_bias, vocab)}
    limit = req.max_completion_tokens or req.max_tokens
    if limit is not None:
        s.max_tokens = limit
    if req.seed is not None:
        s.seed = req.seed
    if req.reasoning_effort is not None:
        s.reasoning_effort = req.reasoning_effort
    if req.logprobs:
        s.logprobs = req.top_logprobs or 0
    elif req.top_logprobs:
        raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    if req.response_format is not None:
        s.response_format = response_format(req.response_format, "response_format")
    instructions = [m.text() for m in req.messages if m.role in ("system", "developer")]
    if instructions:
        s.instructions = "\n\n".join(t for t in [s.instructions, *instructions] if t)
    s.builtin_tools = list(base.builtin_tools)  # only what `serve --tools` runs here (none by default)
    s.function_tools = []
    choice = req.tool_choice
    if not req.tools and (choice == "required" or isinstance(choice, NamedToolChoice)):
        raise APIError(400, "tool_choice asks for a function call, but the request offers no tools", param="tool_choice")
    if req.tools:  # with "none" too: described (the same prompt prefix and cache), the constraint allows no call
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
        s.tool_choice = ("required" if choice == "required" or isinstance(choice, NamedToolChoice)
                         else "none" if choice == "none" else "auto")
        if any(t.name == PYTHON for t in tools):
            # GPT-OSS is trained to call `python` as a built-in tool with plain code, not as functions.python.
            s.builtin_tools = sorted({*s.builtin_tools, PYTHON})
            tools = [t for t in tools if t.name != PYTHON]
        s.function_tools = tools
        check_enforced_tools(s, {t.function.name: f"tools[{i}].function.parameters" for i, t in enumerate(req.tools)})
    return s


def check_enforced_tools(s: ChatSettings, params: dict[str, str]) -> None:
    """When the reply is constrained (tool_choice required or a named function, or a response format while
    calls are allowed), each offered function's ``parameters`` become part of its grammar: a schema
    llguidance cannot enforce is a 400 naming it (``params``: function name -> field), not a generation that
    fails after the request waited in line. Unconstrained, the schema is only described to the model."""
    from mlx_harmony_tui.harmony.constraint import SchemaError, check_schema

    if s.tool_choice != "required" and (s.response_format is None or s.tool_choice == "none"):
        return
    for t in s.function_tools:
        try:
            check_schema(t.parameters)
        except SchemaError as e:
            raise APIError(400, f"{params[t.name]}: {e}", param=params[t.name]) from None


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
    """The built-in tools the server runs itself (``serve --tools``), less any the client declared; "mcp"
    when it runs the config's MCP servers' tools (``serve --tools mcp``)."""
    here = {t for t in settings.builtin_tools if t not in routes}
    return frozenset(here | ({"mcp"} if settings.mcp_tools else set()))


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

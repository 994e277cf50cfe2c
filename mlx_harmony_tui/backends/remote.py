"""A Backend over any OpenAI-compatible endpoint (our server, Ollama, LM Studio, vLLM), streaming SSE with httpx.

The conversation is sent as chat-completions messages; the reply's reasoning (``reasoning_content`` or
``reasoning``), text and tool calls come back as the same events the local backend produces, so faces do not
know the difference. The tools the settings turn on (the python sandbox, config functions with a command) are
declared to the server and run here, through the same tool step as the local backend's turns
(chat/turn.py ``run_tool_call``: confirmation, run, result), and the reply is requested again with the
result; a call to a function the client only declared ends the turn, as it does locally.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from mlx_harmony_tui.backends.base import TurnHandle, TurnRequest
from mlx_harmony_tui.backends.hang_up import HangUp
from mlx_harmony_tui.chat.events import (
    Delta,
    MessageDone,
    Metrics,
    ToolCall,
    ToolCallArgs,
    ToolCallStarted,
    TurnFailed,
    TurnFinished,
    TurnStarted,
)
from mlx_harmony_tui.chat.openai_messages import to_openai
from mlx_harmony_tui.chat.settings import REQUEST_KEYS, ChatSettings
from mlx_harmony_tui.chat.turn import run_tool_call
from mlx_harmony_tui.errors import UserError
from mlx_harmony_tui.harmony.messages import HMessage

DEFAULT_CONTEXT = 131072
_FINISH = {"stop": "stop", "length": "length", "tool_calls": "stop", "function_call": "stop", "content_filter": "stop"}


class RemoteError(UserError):
    """The remote server could not be reached or refused the request."""


def _httpx() -> Any:
    try:
        import httpx
    except ImportError:
        raise UserError("--remote needs httpx: pip install 'mlx-harmony-tui[remote]'") from None
    return httpx


def normalize_url(url: str) -> str:
    """``http://host:port`` -> ``http://host:port/v1``; a URL with a path is kept as given (minus a trailing /)."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UserError(f"remote URL must look like http://host:port/v1, not {url!r}")
    path = parts.path.rstrip("/") or "/v1"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def _error_message(response: Any) -> str:
    try:
        body = json.loads(response.read())
    except (ValueError, TypeError):
        return f"HTTP {response.status_code}"
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict) and err.get("message"):
        return f"HTTP {response.status_code}: {err['message']}"
    if isinstance(err, str):
        return f"HTTP {response.status_code}: {err}"
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        return f"HTTP {response.status_code}: {body['detail']}"
    return f"HTTP {response.status_code}"


def to_openai_messages(messages: list[HMessage], settings: ChatSettings) -> list[dict[str, Any]]:
    """HMessages -> chat-completions messages (the inverse of the server's mapping). The prompts go first as
    one system message, and developer messages as system ones: not every server knows the developer role."""
    system = "\n\n".join(t for t in (settings.system_prompt, settings.instructions) if t)
    prefix = [{"role": "system", "content": system}] if system else []
    return prefix + to_openai(messages, developer_role="system")


_PYTHON_PARAMETERS = {"type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"]}


def request_body(request: TurnRequest, model: str, tools: Any | None = None) -> dict[str, Any]:
    """The chat-completions request. ``tools``: a tools.ToolRegistry whose tools are declared too (the
    python sandbox as a function named ``python``, which GPT-OSS servers such as ours map to the built-in).

    Only the values the user set (``settings.explicit``) are sent: the others are placeholders here, and
    the server applies its own model's defaults (e.g. the temperature of its generation_config.json)."""
    s = request.settings
    body: dict[str, Any] = {
        "model": model,
        "messages": to_openai_messages(request.messages, s),
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    # top_k, min_p, repetition_penalty and repetition_context are extensions many local servers accept
    # (ours, vLLM, LM Studio): sent, like the rest, only when the user set them.
    for key in REQUEST_KEYS:
        value = s.value(key)
        if key not in s.explicit or value is None or (key == "logit_bias" and not value):
            continue
        body[key] = {str(k): v for k, v in value.items()} if key == "logit_bias" else value
    if s.response_format is not None:
        rf = s.response_format
        body["response_format"] = {"type": "json_schema", "json_schema": {
            "name": rf.name, "description": rf.description, "schema": rf.schema, "strict": True}}
    functions = {t.name: t for t in [*s.function_tools, *(tools.function_tools() if tools is not None else [])]}
    declared = [
        {"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.parameters}}
        for t in functions.values()
    ]
    if tools is not None and tools.python is not None and "python" not in functions:
        from mlx_harmony_tui.tools.python import python_description

        declared.append({"type": "function", "function": {
            "name": "python", "description": python_description(tools.python), "parameters": _PYTHON_PARAMETERS}})
    if declared:
        body["tools"] = declared
    return body


class RemoteBackend:
    """Implements the Backend protocol over HTTP. ``model`` None = the first model the server lists."""

    server_defaults = True  # values the user did not set are the server's (backends/base.py)

    def __init__(self, url: str, api_key: str | None = None, model: str | None = None, timeout: float = 600.0,
                 app_config: Any | None = None) -> None:
        """``app_config``: the config whose [tools] section sets up the tools run here (None: defaults)."""
        from mlx_harmony_tui.tools import RegistryCache

        self.url = normalize_url(url)
        self.api_key = api_key
        self.timeout = timeout
        self._model = model
        self._threads: list[threading.Thread] = []
        self._registries = RegistryCache(app_config)
        self.trace: Any | None = None  # chat.trace.TurnTrace (--debug-file / --metrics-log), set by the face

    def _headers(self) -> dict[str, str]:
        h = {"Accept": "text/event-stream"}
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        return h

    def list_models(self, *, missing_ok: bool = False) -> list[str] | None:
        """The model ids the server offers (UserError when it cannot be reached or refuses). ``missing_ok``:
        None, not an error, from a server that has no usable /models (404/405/501 or not OpenAI's shape)."""
        httpx = _httpx()
        try:
            r = httpx.get(f"{self.url}/models", headers=self._headers(), timeout=30.0)
        except httpx.HTTPError as e:
            raise RemoteError(f"cannot reach {self.url}: {e}") from None
        if missing_ok and r.status_code in (404, 405, 501):
            return None
        if r.status_code != 200:
            raise RemoteError(f"{self.url}/models: {_error_message(r)}")
        try:
            return [str(m["id"]) for m in r.json().get("data", [])]
        except (ValueError, KeyError, TypeError, AttributeError):
            if missing_ok:
                return None
            raise RemoteError(f"{self.url}/models did not answer like an OpenAI-compatible server") from None

    def connect(self) -> str:
        """One GET /models at startup, so a wrong URL, key or ``--model`` is said at once rather than at the
        first message: the model used (the first one listed when none was named). A named model the list
        lacks is the error the server would give at the first message; a server without /models is trusted
        with the name. An Ollama-style tag (``llama3`` for ``llama3:latest``) counts as listed."""
        models = self.list_models(missing_ok=self._model is not None)
        if self._model is None:
            if not models:
                raise RemoteError(f"{self.url} offers no models")
            self._model = models[0]
        elif models is not None and not any(m == self._model or m.startswith(self._model + ":") for m in models):
            serves = ", ".join(models) if models else "no models"
            raise RemoteError(f"{self.url}: model {self._model!r} does not exist; this server serves: {serves}")
        return self._model

    @property
    def model_name(self) -> str:
        return self.connect() if self._model is None else self._model

    @property
    def context_limit(self) -> int:
        return DEFAULT_CONTEXT

    def count_tokens(self, request: TurnRequest) -> int | None:
        return None  # the remote tokenizer is unknown

    def start_turn(self, request: TurnRequest) -> TurnHandle:
        handle = TurnHandle()
        model = self.model_name
        thread = threading.Thread(target=self._run, args=(handle, request, model), name="remote-turn", daemon=True)
        thread.start()
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        return handle

    def close(self) -> None:
        for t in self._threads:
            t.join(timeout=5)
        self._registries.close()

    def _run(self, handle: TurnHandle, request: TurnRequest, model: str) -> None:
        """One turn: a request per model reply, with the tools it calls run in between."""
        httpx = _httpx()
        if self.trace is not None:
            handle = _Traced(handle, self.trace)  # type: ignore[assignment]
        turn_id = uuid.uuid4().hex[:12]
        handle.put(TurnStarted(turn_id))
        tools = self._registries.get(request.settings)
        messages = list(request.messages)
        rounds = 0

        def confirm(req: Any) -> bool:
            return handle.wait_confirmation(req.call_id)

        hang_up = HangUp(handle.cancel_event)
        try:
            with httpx.Client(timeout=httpx.Timeout(self.timeout, connect=30.0),
                              event_hooks={"request": [hang_up.trace]}) as client:
                while True:
                    body = request_body(TurnRequest(messages, request.settings), model, tools)
                    state = _StreamState(handle, builtin_python=tools.python is not None)
                    t0 = time.perf_counter()
                    if not self._stream(client, body, handle, state, t0):
                        self._trace_round(turn_id, rounds, body, state, t0, "failed or cancelled")
                        return  # failed or cancelled: the state has said so
                    metrics = state.finish_reply(t0)
                    calls = list(state.calls.values())
                    runnable = bool(calls) and all(tools.can_run(state.recipient(c["name"])) for c in calls)
                    self._trace_round(turn_id, rounds, body, state, t0, "run the tool calls" if runnable
                                      else f"done ({state.finish_reason or 'stop'})")
                    if not runnable:
                        handle.put(TurnFinished(_FINISH.get(state.finish_reason or "stop", "stop"), metrics))  # type: ignore[arg-type]
                        return
                    rounds += 1
                    if rounds > request.settings.max_tool_rounds:
                        handle.put(TurnFinished("tool_rounds", metrics))
                        return
                    messages += state.messages()
                    for c in calls:
                        step = run_tool_call(tools, c["id"], state.recipient(c["name"]), c["args"], "commentary",
                                             confirm, handle.cancel_event)
                        reply = _drive(step, handle)
                        if reply is None:
                            handle.put(TurnFinished("cancelled", metrics))
                            return
                        messages.append(reply)
        except httpx.HTTPError as e:
            if handle.cancel_event.is_set():  # hung up while the server had not answered yet
                handle.put(TurnFinished("cancelled", Metrics(final=True)))
            else:
                handle.put(TurnFailed(f"cannot reach {self.url}: {type(e).__name__}: {e}"))
        except Exception as e:  # noqa: BLE001 - a worker must always close its handle
            handle.put(TurnFailed(f"{type(e).__name__}: {e}"))
        finally:
            hang_up.done.set()
            handle.close()

    def _trace_round(self, turn_id: str, rounds: int, body: dict[str, Any], state: _StreamState, t0: float,
                     decision: str) -> None:
        """--debug-file for a remote model: the request as sent and the reply as received (the server
        renders the prompt, so there are no special tokens to show)."""
        if self.trace is None:
            return
        self.trace.attempt({
            "turn_id": turn_id, "attempt": 0, "tool_round": rounds, "url": self.url, "request": body,
            "reasoning": state.reasoning, "content": state.content, "tool_calls": list(state.calls.values()),
            "finish": state.finish_reason, "usage": state.usage, "server_notes": state.comments,
            "decision": decision, "seconds": round(time.perf_counter() - t0, 4),
        })

    def _stream(self, client: Any, body: dict[str, Any], handle: TurnHandle, state: _StreamState, t0: float) -> bool:
        """One streamed reply into ``state``; False when it failed or was cancelled (already reported)."""
        with client.stream("POST", f"{self.url}/chat/completions", json=body, headers=self._headers()) as response:
            if response.status_code != 200:
                handle.put(TurnFailed(_error_message(response)))
                return False
            done = False
            try:
                for line in response.iter_lines():
                    if handle.cancel_event.is_set():
                        break
                    if line.startswith(":") and line[1:].strip():  # our server reports its retries this way
                        state.comments.append(line[1:].strip())
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        done = True
                        break
                    try:
                        doc = json.loads(data)
                    except ValueError:
                        continue
                    if state.feed(doc, t0):
                        return False
            except _httpx().HTTPError as e:
                if not handle.cancel_event.is_set():  # the server went away (or the network did)
                    handle.put(TurnFailed(f"the connection to {self.url} broke off mid-answer: "
                                          f"{type(e).__name__}: {e}"))
                    return False
            if handle.cancel_event.is_set():
                handle.put(TurnFinished("cancelled", state.finish_reply(t0)))
                return False
            if not done and state.finish_reason is None:  # e.g. a proxy's timeout: a clean end, a cut answer
                kind = response.headers.get("content-type", "no content type")
                handle.put(TurnFailed(f"the connection to {self.url} broke off mid-answer: the stream ({kind}) "
                                      "ended without a finish_reason or [DONE]"))
                return False
        return True


def _drive(step: Any, handle: TurnHandle) -> HMessage | None:
    """Put a tool step's events on the handle; its return value (the tool's message, or None)."""
    while True:
        try:
            handle.put(next(step))
        except StopIteration as done:
            return done.value


class _Traced:
    """A turn's handle whose events the trace also sees (the per-turn metrics line)."""

    def __init__(self, handle: TurnHandle, trace: Any) -> None:
        self._handle, self._trace = handle, trace

    def put(self, event: Any) -> None:
        self._handle.put(event)
        self._trace.observe(event)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)


class _StreamState:
    """Chunks -> events for one streamed reply."""

    def __init__(self, handle: TurnHandle, builtin_python: bool = False) -> None:
        self.handle = handle
        self.builtin_python = builtin_python  # a call of "python" is the sandbox, not functions.python
        self.reasoning = ""
        self.content = ""
        self.calls: dict[int, dict[str, str]] = {}
        self.comments: list[str] = []  # SSE comment lines (the server's retries)
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.first_token: float | None = None
        self.reasoning_key: str | None = None  # servers may send both keys with the same text: use one

    def feed(self, doc: dict[str, Any], t0: float) -> bool:
        """Handle one chunk; True when the turn ended in an error."""
        if isinstance(doc.get("error"), dict | str):
            err = doc["error"]
            self.handle.put(TurnFailed(err.get("message", str(err)) if isinstance(err, dict) else err))
            return True
        if isinstance(doc.get("usage"), dict):
            self.usage = doc["usage"]
        for choice in doc.get("choices") or []:
            delta = choice.get("delta") or {}
            if self.reasoning_key is None:
                self.reasoning_key = next((k for k in ("reasoning_content", "reasoning") if delta.get(k)), None)
            text = delta.get(self.reasoning_key) if self.reasoning_key else None
            if text:
                self._mark(t0)
                self.reasoning += text
                self.handle.put(Delta("analysis", text))
            if delta.get("content"):
                self._mark(t0)
                self.content += delta["content"]
                self.handle.put(Delta("final", delta["content"]))
            for tc in delta.get("tool_calls") or []:
                self._mark(t0)
                idx = int(tc.get("index", len(self.calls)))
                fn = tc.get("function") or {}
                call = self.calls.get(idx)
                if call is None:
                    call = {"id": tc.get("id") or f"call_{idx}", "name": fn.get("name") or "", "args": ""}
                    self.calls[idx] = call
                    self.handle.put(ToolCallStarted(call["id"], self.recipient(call["name"])))
                if fn.get("arguments"):
                    call["args"] += fn["arguments"]
                    self.handle.put(ToolCallArgs(call["id"], fn["arguments"]))
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return False

    def _mark(self, t0: float) -> None:
        if self.first_token is None:
            self.first_token = time.perf_counter() - t0

    def recipient(self, name: str) -> str:
        return "python" if name == "python" and self.builtin_python else f"functions.{name}"

    def finish_reply(self, t0: float) -> Metrics:
        """The reply's messages, tool calls and metrics as events (the caller ends the turn or goes on)."""
        if self.reasoning:
            self.handle.put(MessageDone("analysis", self.reasoning))
        if self.content:
            self.handle.put(MessageDone("final", self.content))
        for call in self.calls.values():
            recipient = self.recipient(call["name"])
            self.handle.put(MessageDone("commentary", call["args"], recipient, "<|constrain|>json"))
            self.handle.put(ToolCall(call["id"], recipient, call["args"], content_type="<|constrain|>json"))
        u = self.usage or {}
        details = u.get("prompt_tokens_details") or {}
        elapsed = time.perf_counter() - t0
        generated = int(u.get("completion_tokens") or 0)
        decode_time = elapsed - (self.first_token or 0.0)
        metrics = Metrics(
            prompt_tokens=int(u.get("prompt_tokens") or 0),
            reused_tokens=int(details.get("cached_tokens") or 0),
            prefilled_tokens=int(u.get("prompt_tokens") or 0) - int(details.get("cached_tokens") or 0),
            generated_tokens=generated,
            context_tokens=int(u.get("prompt_tokens") or 0) + generated,  # the TUI's "ctx" (it showed 0)
            ttft_s=self.first_token,
            decode_tps=(generated - 1) / decode_time if generated > 1 and decode_time > 0 else None,
            final=True,
        )
        self.handle.put(metrics)
        return metrics

    def messages(self) -> list[HMessage]:
        """This reply as conversation messages, for the request that follows its tool calls (text beside
        tool calls is their preamble, so it stays in the same assistant message)."""
        out: list[HMessage] = []
        if self.reasoning:
            out.append(HMessage("assistant", self.reasoning, channel="analysis"))
        if self.content:
            out.append(HMessage("assistant", self.content, channel="commentary" if self.calls else "final"))
        for call in self.calls.values():
            out.append(HMessage("assistant", call["args"], channel="commentary", recipient=self.recipient(call["name"]),
                                content_type="<|constrain|>json"))
        return out

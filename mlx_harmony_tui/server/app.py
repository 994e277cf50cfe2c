"""OpenAI-compatible HTTP server over any Backend (FastAPI).

Each request's turn runs on the backend's worker; a pump thread moves its events into the event loop as they
come, and they are turned into SSE chunks one by one (real token streaming). The generation queue keeps one
generation on the model at a time in arrival order; a disconnecting client cancels its turn.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from mlx_harmony_tui.backends.base import Backend, TurnRequest
from mlx_harmony_tui.chat.events import (
    Delta,
    Event,
    Metrics,
    Retry,
    TokenLogprob,
    ToolCall,
    ToolCallArgs,
    ToolCallStarted,
    ToolConfirmation,
    TurnFailed,
    TurnFinished,
)
from mlx_harmony_tui.chat.settings import ChatSettings
from mlx_harmony_tui.server.guards import BearerAuth, check_counts, error_response, parse_json
from mlx_harmony_tui.server.logprobs import entry as logprob_entry
from mlx_harmony_tui.server.logprobs import visible as visible_logprob
from mlx_harmony_tui.server.queue import GenerationQueue, QueueFull
from mlx_harmony_tui.server.schemas import (
    APIError,
    ChatCompletionRequest,
    ToolRoute,
    check_chat_fields,
    error_body,
    pick,
    server_tools,
    to_hmessages,
    to_settings,
    tool_routes,
    validated,
)
from mlx_harmony_tui.tools.mcp import SEPARATOR as MCP_SEPARATOR

DEFAULT_MAX_BODY = 4 * 1024 * 1024
_END = object()


class ReplyBuilder:
    """Turns the event stream of one turn into OpenAI deltas, and accumulates the whole reply.

    Stop strings apply to the visible text: text that could be the start of a stop string is held back until
    it is clear, so a stop string never reaches the client.

    ``routes`` (recipient -> client function) are the tools the request offered; a call to any other recipient
    is not passed on as a tool call (the client could not run it) but reported in the content. None passes
    every call on under its own name.
    """

    def __init__(self, stops: list[str] | None = None, routes: dict[str, ToolRoute] | None = None,
                 runs_here: frozenset[str] = frozenset()) -> None:
        self.runs_here = runs_here  # built-in tools the server runs itself: their calls are not the client's
        self._hidden: set[str] = set()  # call ids of those
        self.stops = stops or []
        self.routes = routes
        self._undeclared: dict[str, str] = {}  # call id -> recipient the request did not offer
        self._recipients: dict[str, str] = {}  # call id -> recipient of each call passed on
        self._hold = max((len(s) for s in self.stops), default=1) - 1
        self._pending = ""
        self.content = ""
        self.reasoning = ""
        self.tool_calls: list[dict[str, Any]] = []
        self._tool_index: dict[str, int] = {}
        self._args_streamed: set[str] = set()
        self.stopped = False  # a stop string was hit: the caller cancels the turn
        self.finish_reason: str | None = None
        self.error: str | None = None
        self.metrics: Metrics | None = None
        self.retries: list[dict[str, Any]] = []
        self.logprobs: list[dict[str, Any]] | None = None  # the answer's token log-probabilities, when asked for
        self._logprobs_pending: list[dict[str, Any]] = []

    def feed(self, ev: Event) -> list[dict[str, Any]]:
        """Deltas (``choices[0].delta`` objects) for one event; an empty list for events clients don't see."""
        if isinstance(ev, Delta):
            if ev.channel == "analysis":
                if self.stopped:
                    return []
                self.reasoning += ev.text
                return [{"reasoning_content": ev.text, "reasoning": ev.text}]
            if ev.recipient is None:  # final answer, or a preamble before tool calls
                return self._content(ev.text)
            return []  # tool-call arguments: sent as tool_calls below
        if isinstance(ev, TokenLogprob):
            if visible_logprob(ev) and not self.stopped:
                e = logprob_entry(ev)
                self.logprobs = [*(self.logprobs or []), e]
                self._logprobs_pending.append(e)
            return []
        if (isinstance(ev, ToolCallStarted | ToolCall) and _tool_root(ev.recipient) in self.runs_here
                and not (self.routes and ev.recipient in self.routes)):  # a client's own function stays its
            self._hidden.add(ev.call_id)
        if isinstance(ev, ToolCallStarted | ToolCallArgs | ToolCall) and ev.call_id in self._hidden:
            return []
        if isinstance(ev, ToolCallStarted):
            if self.stopped:
                return []
            route = self._route(ev.recipient)
            if route is None:
                self._undeclared[ev.call_id] = ev.recipient
                return []
            idx = len(self.tool_calls)
            self._tool_index[ev.call_id] = idx
            self._recipients[ev.call_id] = ev.recipient
            start = _wrap(route, "")[:-2] if route.wrap else ""  # '{"code": "' before the streamed code
            call = {"id": _call_id(ev.call_id), "type": "function",
                    "function": {"name": route.name, "arguments": start}}
            self.tool_calls.append(call)
            return [{"tool_calls": [{"index": idx, "id": call["id"], "type": "function",
                                     "function": {"name": route.name, "arguments": start}}]}]
        if isinstance(ev, ToolCallArgs):
            idx = self._tool_index.get(ev.call_id)
            if idx is None or self.stopped:
                return []
            self._args_streamed.add(ev.call_id)
            route = self._route(self._recipients.get(ev.call_id, ""))
            delta = json.dumps(ev.delta)[1:-1] if route and route.wrap else ev.delta  # escaping is per character
            self.tool_calls[idx]["function"]["arguments"] += delta
            return [{"tool_calls": [{"index": idx, "function": {"arguments": delta}}]}]
        if isinstance(ev, ToolCall):
            if self.stopped:
                return []
            if ev.call_id in self._undeclared or self._route(ev.recipient) is None:
                self._undeclared.pop(ev.call_id, None)
                return self._content(f"{chr(10) * 2 if self.content else ''}[The model called {ev.recipient!r}, "
                                     "a tool this request did not declare; nothing was run.]")
            idx = self._tool_index.get(ev.call_id)
            out: list[dict[str, Any]] = []
            if idx is None:  # a call without a started event: announce it whole
                out = self.feed(ToolCallStarted(ev.call_id, ev.recipient, ev.channel))
                idx = self._tool_index[ev.call_id]
            call = self.tool_calls[idx]
            route = self._route(ev.recipient)
            arguments = _wrap(route, ev.arguments) if route and route.wrap else ev.arguments
            if call["function"]["arguments"] != arguments:
                rest = arguments[len(call["function"]["arguments"]):] if arguments.startswith(
                    call["function"]["arguments"]) else None
                if rest is not None and rest:
                    out.append({"tool_calls": [{"index": idx, "function": {"arguments": rest}}]})
                call["function"]["arguments"] = arguments
            return out
        if isinstance(ev, Retry):
            # The failed attempt is superseded: the complete reply holds only the last attempt. A streaming
            # client already has its text; the retry itself is an SSE comment (see _stream), never text.
            self.retries.append({"attempt": ev.attempt, "reason": ev.reason, "change": ev.change})
            self.content = ""
            self.reasoning = ""
            self._pending = ""
            self.tool_calls.clear()
            self._tool_index.clear()
            self._recipients.clear()
            self._undeclared.clear()
            return []
        if isinstance(ev, Metrics):
            if ev.final:
                self.metrics = ev
            return []
        if isinstance(ev, TurnFinished):
            out = self._flush()
            m = ev.metrics
            if m.prompt_tokens or m.generated_tokens or self.metrics is None:
                self.metrics = m
            if ev.reason == "error":
                self.error = self.error or "generation failed"
            if self.stopped:
                self.finish_reason = "stop"
            elif self.tool_calls:
                self.finish_reason = "tool_calls"
            elif ev.reason == "length":
                self.finish_reason = "length"
            else:
                self.finish_reason = "stop"
            return out
        if isinstance(ev, TurnFailed):
            self.error = ev.error
            return []
        return []

    def _route(self, recipient: str) -> ToolRoute | None:
        if self.routes is None:
            return ToolRoute(_function_name(recipient))
        return self.routes.get(recipient.strip())

    def _content(self, text: str) -> list[dict[str, Any]]:
        if self.stopped or not text:
            return []
        if not self.stops:
            self.content += text
            return [{"content": text}]
        buf = self._pending + text
        hits = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            emit, self._pending, self.stopped = buf[: min(hits)], "", True
        else:
            cut = max(0, len(buf) - self._hold)
            emit, self._pending = buf[:cut], buf[cut:]
        self.content += emit
        return [{"content": emit}] if emit else []

    def _flush(self) -> list[dict[str, Any]]:
        emit, self._pending = self._pending, ""
        if emit and not self.stopped:
            self.content += emit
            return [{"content": emit}]
        return []

    def take_logprobs(self) -> dict[str, Any] | None:
        """The log-probabilities of the text sent since the last call (for one streamed chunk)."""
        if not self._logprobs_pending:
            return None
        out, self._logprobs_pending = self._logprobs_pending, []
        return {"content": out, "refusal": None}

    def usage(self) -> dict[str, Any]:
        m = self.metrics or Metrics()
        return {
            "prompt_tokens": m.prompt_tokens,
            "completion_tokens": m.generated_tokens,
            "total_tokens": m.prompt_tokens + m.generated_tokens,
            "prompt_tokens_details": {"cached_tokens": m.reused_tokens},
        }

    def message(self) -> dict[str, Any]:
        msg: dict[str, Any] = {"role": "assistant", "content": self.content or (None if self.tool_calls else "")}
        if self.reasoning:
            msg["reasoning_content"] = self.reasoning
            msg["reasoning"] = self.reasoning
        if self.tool_calls:
            msg["tool_calls"] = self.tool_calls
        return msg


def _tool_root(recipient: str) -> str:
    """``browser.search`` -> ``browser``; ``python`` -> ``python``; an MCP server's tool
    (``functions.server__tool``) -> ``mcp``."""
    root, _, name = recipient.partition(".")
    return "mcp" if root == "functions" and MCP_SEPARATOR in name else root


def _call_id(call_id: str) -> str:
    return call_id if call_id.startswith("call_") else f"call_{call_id}"


def _function_name(recipient: str) -> str:
    return recipient.removeprefix("functions.")


def _wrap(route: ToolRoute, text: str) -> str:
    """Plain-text arguments (python code) as the JSON object OpenAI clients expect."""
    return json.dumps({route.wrap: text})


def _start_without_tools(backend: Backend, request: TurnRequest, runs_here: frozenset[str] = frozenset()) -> Any:
    """Start a turn that ends at a tool call instead of running it (the client runs its own functions), unless
    the server runs built-in tools itself (``serve --tools``)."""
    if runs_here:
        return backend.start_turn(request)
    try:
        accepts = "run_tools" in inspect.signature(backend.start_turn).parameters
    except (TypeError, ValueError):
        accepts = False
    if accepts:
        return backend.start_turn(request, run_tools=False)  # type: ignore[call-arg]
    return backend.start_turn(request)


class _Turn:
    """Runs one turn on a pump thread and feeds its events into an asyncio queue as they come."""

    def __init__(
        self, backend: Backend, request: TurnRequest, gen_queue: GenerationQueue, running: set[_Turn],
        runs_here: frozenset[str] = frozenset(),
    ) -> None:
        self._runs_here = runs_here
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue[object] = asyncio.Queue()
        self._backend = backend
        self._request = request
        self._gen_queue = gen_queue
        self._cancelled = threading.Event()
        self._handle: Any = None
        self.done = asyncio.Event()
        self._running = running

    def start(self) -> None:
        self._running.add(self)
        threading.Thread(target=self._run, name="mhtui-server-turn", daemon=True).start()

    def cancel(self) -> None:
        self._cancelled.set()
        if self._handle is not None:
            self._handle.cancel()

    def _post(self, item: object) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, item)
        except RuntimeError:  # loop closed (server shutting down)
            self._cancelled.set()
            if self._handle is not None:
                self._handle.cancel()

    def _run(self) -> None:
        try:
            handle = _start_without_tools(self._backend, self._request, self._runs_here)
            self._handle = handle
            if self._cancelled.is_set():
                handle.cancel()
            for ev in handle.events():
                if isinstance(ev, ToolConfirmation):  # only the tools `serve --tools` enabled run here
                    handle.confirm(ev.call_id, _tool_root(ev.recipient) in self._runs_here)
                    continue
                self._post(ev)
        except Exception as e:  # the backend failed: the client gets the message, the server keeps going
            self._post(TurnFailed(f"{type(e).__name__}: {e}"))
        finally:
            try:
                self.loop.call_soon_threadsafe(self._finish)
            except RuntimeError:
                pass

    def _finish(self) -> None:
        self._running.discard(self)
        self.events.put_nowait(_END)
        self.done.set()
        self._gen_queue.release()

    async def __aiter__(self) -> AsyncIterator[Event]:
        while True:
            item = await self.events.get()
            if item is _END:
                return
            yield item  # type: ignore[misc]


def create_app(
    models: Mapping[str, Backend] | Backend,
    settings: ChatSettings | None = None,
    api_key: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY,
    max_waiting: int = 256,
    run_tools: Sequence[str] = (),
) -> FastAPI:
    """The app. ``models`` maps the names clients may ask for to loaded backends; nothing else is ever loaded.
    ``run_tools``: built-in tools ("python", "browser") the server runs itself (``serve --tools``), and "mcp"
    for the config's MCP servers' tools; none by default, whatever ``settings.builtin_tools`` says: a client
    runs its own functions."""
    backends: dict[str, Backend] = dict(models) if isinstance(models, Mapping) else {models.model_name: models}
    if not backends:
        raise ValueError("the server needs at least one model")
    base = dataclasses.replace(settings or ChatSettings(), builtin_tools=[t for t in run_tools if t != "mcp"],
                               mcp_tools="mcp" in run_tools)
    gen_queue = GenerationQueue(max_waiting)
    created = int(time.time())
    turns: set[_Turn] = set()  # running now: cancelled when the server shuts down

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        for turn in list(turns):
            turn.cancel()

    app = FastAPI(title="mlx-harmony-tui", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.queue = gen_queue
    app.state.backends = backends

    envelope = error_response
    app.state.turns = turns
    if api_key:
        app.add_middleware(BearerAuth, api_key=api_key)

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return envelope(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return envelope(APIError(exc.status_code, str(exc.detail), code=code))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        return envelope(APIError(500, f"internal error: {type(exc).__name__}: {exc}", "server_error"))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": list(backends), "busy": gen_queue.busy, "waiting": gen_queue.waiting}

    def model_card(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": created, "owned_by": "mlx-harmony-tui"}

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(n) for n in backends]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str) -> dict[str, Any]:
        if name not in backends:
            raise APIError(404, f"model {name!r} does not exist", param="model", code="model_not_found")
        return model_card(name)

    async def read_json(request: Request) -> Any:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > max_body_bytes):
            raise APIError(413, f"request body is larger than {max_body_bytes} bytes", code="request_too_large")
        body = bytearray()
        async for part in request.stream():
            body += part
            if len(body) > max_body_bytes:
                raise APIError(413, f"request body is larger than {max_body_bytes} bytes", code="request_too_large")
        return parse_json(bytes(body))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        data = await read_json(request)
        if isinstance(data, dict):
            check_chat_fields(data)
        req = validated(ChatCompletionRequest, data)
        check_counts(len(req.messages), len(req.tools or []))
        name, backend = pick(backends, req.model)
        settings = to_settings(req, base)
        turn_request = TurnRequest(messages=to_hmessages(req), settings=settings)
        routes = tool_routes(req, settings)
        stops = req.stop_strings()
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        now = int(time.time())
        await _check_fits(request, backend, turn_request)
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            place = _join(gen_queue)  # a full line is a 429 before the stream's 200 goes out
            claimed: list[bool] = []
            return _SSEResponse(
                _stream(backend, turn_request, gen_queue, place, claimed, turns, stops, cid, now, name,
                        include_usage, routes, request.state),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                on_close=lambda: None if claimed else gen_queue.leave(place),
            )
        return await _complete(request, backend, turn_request, gen_queue, turns, stops, cid, now, name, routes)

    from mlx_harmony_tui.server.completions import register_completions
    from mlx_harmony_tui.server.responses import register_responses

    register_responses(app, backends, base, gen_queue, read_json, turns)
    register_completions(app, backends, base, gen_queue, read_json, turns)
    return app


class _SSEResponse(StreamingResponse):
    """Always watch for the client's disconnect while streaming (also while waiting in the queue); on the
    way out, ``on_close`` gives back a place in line the stream never got to use."""

    def __init__(self, *args: Any, on_close: Callable[[], Any], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        scope = dict(scope)
        scope["asgi"] = {**scope.get("asgi", {}), "spec_version": "2.0"}
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


def _join(gen_queue: GenerationQueue) -> asyncio.Future[None]:
    try:
        return gen_queue.join()
    except QueueFull as e:
        raise APIError(429, f"server busy: {e}", "rate_limit_error", code="queue_full") from None


async def _check_fits(request: Request, backend: Backend, turn_request: TurnRequest) -> None:
    """400 for a request whose current turn (the last user message on, with the system and developer
    messages and tools: what is never dropped) cannot fit the context, before it waits in line."""
    msgs = turn_request.messages
    last_user = max((i for i, m in enumerate(msgs) if m.role == "user"), default=0)
    probe = TurnRequest(messages=msgs[last_user:], settings=turn_request.settings)
    limits = [x for x in (backend.context_limit, turn_request.settings.context_limit) if x]
    counting = asyncio.ensure_future(asyncio.to_thread(backend.count_tokens, probe))
    if not await _until_done(counting, request, lambda: None):
        raise APIError(499, "client disconnected")
    n = counting.result()
    if n is not None and limits and n > min(limits) - 1:
        raise APIError(400, f"the prompt ({n} tokens) does not fit the context ({min(limits)} tokens)",
                       param="messages", code="context_length_exceeded")


async def _until_done(fut: asyncio.Future[Any], request: Request, on_disconnect: Callable[[], Any]) -> bool:
    """Wait for ``fut``, checking every 0.25 s whether the client hung up; on a hang-up call
    ``on_disconnect`` and return False at once. True when ``fut`` finished with the client still there."""
    while not fut.done():
        await asyncio.wait({fut}, timeout=0.25)
        if not fut.done() and await request.is_disconnected():
            on_disconnect()
            return False
    return True


async def _watch_disconnect(request: Request, on_disconnect: Callable[[], Any]) -> None:
    """Every 0.25 s, whether the client hung up (events may arrive faster than that all along, so this is
    not tied to waiting for the next one); on a hang-up call ``on_disconnect`` (the turn then ends)."""
    while not await request.is_disconnected():
        await asyncio.sleep(0.25)
    on_disconnect()


async def _complete(
    request: Request,
    backend: Backend,
    turn_request: TurnRequest,
    gen_queue: GenerationQueue,
    turns: set[_Turn],
    stops: list[str],
    cid: str,
    now: int,
    name: str,
    routes: dict[str, ToolRoute],
) -> JSONResponse:
    place = _join(gen_queue)
    waiter = asyncio.ensure_future(gen_queue.wait(place))
    if not await _until_done(waiter, request, waiter.cancel):  # left the line: the client hung up
        return JSONResponse(error_body("client disconnected", "invalid_request_error"), status_code=499)
    waiter.result()
    here = server_tools(turn_request.settings, routes)
    turn = _Turn(backend, turn_request, gen_queue, turns, here)
    turn.start()
    builder = ReplyBuilder(stops, routes, here)
    watch = asyncio.ensure_future(_watch_disconnect(request, turn.cancel))
    try:
        async for ev in turn:
            builder.feed(ev)
            if builder.stopped:
                turn.cancel()
    except BaseException:
        turn.cancel()
        raise
    finally:
        watch.cancel()
    request.state.usage = builder.usage()  # for the request log line (server/request_log.py)
    if builder.error and builder.finish_reason is None:
        raise APIError(500, f"generation failed: {builder.error}", "server_error")
    return JSONResponse({
        "id": cid,
        "object": "chat.completion",
        "created": now,
        "model": name,
        "system_fingerprint": None,
        "choices": [{"index": 0, "message": builder.message(),
                     "logprobs": None if builder.logprobs is None else {"content": builder.logprobs, "refusal": None},
                     "finish_reason": builder.finish_reason or "stop"}],
        "usage": builder.usage(),
    })


async def _stream(
    backend: Backend,
    turn_request: TurnRequest,
    gen_queue: GenerationQueue,
    place: asyncio.Future[None],
    claimed: list[bool],
    turns: set[_Turn],
    stops: list[str],
    cid: str,
    now: int,
    name: str,
    include_usage: bool,
    routes: dict[str, ToolRoute],
    state: Any = None,
) -> AsyncIterator[str]:
    def chunk(delta: dict[str, Any] | None, finish: str | None = None, usage: dict[str, Any] | None = None) -> str:
        logprobs = builder.take_logprobs() if delta else None
        doc: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": now, "model": name,
                               "system_fingerprint": None,
                               "choices": [] if delta is None else
                               [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]}
        if usage is not None:
            doc["usage"] = usage
        return f"data: {json.dumps(doc, ensure_ascii=False)}\n\n"

    await gen_queue.wait(place)
    claimed.append(True)  # from here the turn releases the slot when it ends
    here = server_tools(turn_request.settings, routes)
    turn = _Turn(backend, turn_request, gen_queue, turns, here)
    turn.start()
    builder = ReplyBuilder(stops, routes, here)
    try:
        yield chunk({"role": "assistant", "content": ""})
        async for ev in turn:
            if isinstance(ev, Retry):  # a comment line: clients skip it, a person reading the stream sees it
                yield f": retry {ev.attempt} ({ev.reason}): {ev.change}\n\n"
            for delta in builder.feed(ev):
                yield chunk(delta)
            if builder.stopped:
                turn.cancel()
        if builder.error and builder.finish_reason is None:
            yield f"data: {json.dumps(error_body(f'generation failed: {builder.error}', 'server_error'))}\n\n"
        else:
            yield chunk({}, builder.finish_reason or "stop")
            if include_usage:
                yield chunk(None, usage=builder.usage())
        yield "data: [DONE]\n\n"
    finally:
        if state is not None:
            state.usage = builder.usage()  # for the request log line (server/request_log.py)
        turn.cancel()  # no-op when the turn ended; stops the model when the client went away

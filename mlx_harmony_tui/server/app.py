"""OpenAI-compatible HTTP server over any Backend (FastAPI).

Each request's turn runs on the backend's worker; a pump thread moves its events into the event loop as they
come, and they are turned into SSE chunks one by one (real token streaming). The generation queue keeps one
generation on the model at a time in arrival order; a disconnecting client cancels its turn.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from mlx_harmony_tui.backends.base import Backend, TurnRequest
from mlx_harmony_tui.chat.events import (
    Retry,
)
from mlx_harmony_tui.chat.settings import ChatSettings
from mlx_harmony_tui.harmony.render import RenderError
from mlx_harmony_tui.server.drive import disconnected, drive
from mlx_harmony_tui.server.guards import BearerAuth, InternalErrors, check_counts, error_response, parse_json
from mlx_harmony_tui.server.queue import GenerationQueue
from mlx_harmony_tui.server.reply import ReplyBuilder
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
    vocab_size,
)
from mlx_harmony_tui.server.turns import (
    SSEResponse,
    Turn,
    check_fits,
    join_queue,
)

DEFAULT_MAX_BODY = 4 * 1024 * 1024


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
    # as many generations at once as the backend batches (LocalBackend.enable_batching), the rest wait in line
    gen_queue = GenerationQueue(max_waiting, max(getattr(b, "max_concurrency", 1) for b in backends.values()))
    created = int(time.time())
    turns: set[Turn] = set()  # running now: cancelled when the server shuts down

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
    app.add_middleware(InternalErrors)
    if api_key:
        app.add_middleware(BearerAuth, api_key=api_key)

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return envelope(exc)

    @app.exception_handler(RenderError)
    async def _render_error(_: Request, exc: RenderError) -> JSONResponse:
        # what the request asked for cannot be rendered as a Harmony prompt (found while fitting the context)
        return envelope(APIError(400, str(exc), code="invalid_value"))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return envelope(APIError(exc.status_code, str(exc.detail), code=code))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": list(backends), "busy": gen_queue.busy, "running": gen_queue.running,
                "waiting": gen_queue.waiting}

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
        settings = to_settings(req, base, vocab_size(backend))
        turn_request = TurnRequest(messages=to_hmessages(req), settings=settings)
        routes = tool_routes(req, settings)
        stops = req.stop_strings()
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        now = int(time.time())
        await check_fits(request, backend, turn_request)
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            place = join_queue(gen_queue)  # a full line is a 429 before the stream's 200 goes out
            claimed: list[bool] = []
            return SSEResponse(
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


async def _complete(
    request: Request,
    backend: Backend,
    turn_request: TurnRequest,
    gen_queue: GenerationQueue,
    turns: set[Turn],
    stops: list[str],
    cid: str,
    now: int,
    name: str,
    routes: dict[str, ToolRoute],
) -> JSONResponse:
    here = server_tools(turn_request.settings, routes)
    builder = ReplyBuilder(stops, routes, here)
    if not await drive(request, backend, turn_request, gen_queue, turns, builder.feed, lambda: builder.stopped,
                       runs_here=here):
        return disconnected()  # left the line: the client hung up
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
    turns: set[Turn],
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
    turn = Turn(backend, turn_request, gen_queue, turns, here)
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

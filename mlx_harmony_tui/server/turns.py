"""Running one request's turn: a pump thread moves the backend's events into the event loop as they come,
the request waits for its place in the generation queue, and the client is watched for a hang-up (which
cancels the turn). The endpoints (app.py, responses.py, completions.py) build their replies from these."""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse

from mlx_harmony_tui.backends.base import Backend, TurnRequest
from mlx_harmony_tui.chat.events import Event, ToolConfirmation, TurnFailed
from mlx_harmony_tui.server.queue import GenerationQueue, QueueFull
from mlx_harmony_tui.server.schemas import APIError
from mlx_harmony_tui.tools.mcp import SEPARATOR as MCP_SEPARATOR

_END = object()


def tool_root(recipient: str) -> str:
    """``browser.search`` -> ``browser``; ``python`` -> ``python``; an MCP server's tool
    (``functions.server__tool``) -> ``mcp``."""
    root, _, name = recipient.partition(".")
    return "mcp" if root == "functions" and MCP_SEPARATOR in name else root


def start_without_tools(
    backend: Backend, request: TurnRequest, runs_here: frozenset[str] = frozenset()
) -> Any:
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


class Turn:
    """Runs one turn on a pump thread and feeds its events into an asyncio queue as they come."""

    def __init__(
        self,
        backend: Backend,
        request: TurnRequest,
        gen_queue: GenerationQueue,
        running: set[Turn],
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
            handle = start_without_tools(self._backend, self._request, self._runs_here)
            self._handle = handle
            if self._cancelled.is_set():
                handle.cancel()
            for ev in handle.events():
                if isinstance(ev, ToolConfirmation):  # only the tools `serve --tools` enabled run here
                    handle.confirm(ev.call_id, tool_root(ev.recipient) in self._runs_here)
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


class SSEResponse(StreamingResponse):
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


def join_queue(gen_queue: GenerationQueue) -> asyncio.Future[None]:
    try:
        return gen_queue.join()
    except QueueFull as e:
        raise APIError(429, f"server busy: {e}", "rate_limit_error", code="queue_full") from None


async def check_fits(request: Request, backend: Backend, turn_request: TurnRequest) -> None:
    """400 for a request whose current turn (the last user message on, with the system and developer
    messages and tools: what is never dropped) cannot fit the context, before it waits in line."""
    msgs = turn_request.messages
    last_user = max((i for i, m in enumerate(msgs) if m.role == "user"), default=0)
    probe = TurnRequest(messages=msgs[last_user:], settings=turn_request.settings)
    limits = [x for x in (backend.context_limit, turn_request.settings.context_limit) if x]
    counting = asyncio.ensure_future(asyncio.to_thread(backend.count_tokens, probe))
    if not await until_done(counting, request, lambda: None):
        raise APIError(499, "client disconnected")
    n = counting.result()
    if n is not None and limits and n > min(limits) - 1:
        raise APIError(
            400,
            f"the prompt ({n} tokens) does not fit the context ({min(limits)} tokens)",
            param="messages",
            code="context_length_exceeded",
        )


async def until_done(fut: asyncio.Future[Any], request: Request, on_disconnect: Callable[[], Any]) -> bool:
    """Wait for ``fut``, checking every 0.25 s whether the client hung up; on a hang-up call
    ``on_disconnect`` and return False at once. True when ``fut`` finished with the client still there."""
    while not fut.done():
        await asyncio.wait({fut}, timeout=0.25)
        if not fut.done() and await request.is_disconnected():
            on_disconnect()
            return False
    return True


async def watch_disconnect(request: Request, on_disconnect: Callable[[], Any]) -> None:
    """Every 0.25 s, whether the client hung up (events may arrive faster than that all along, so this is
    not tied to waiting for the next one); on a hang-up call ``on_disconnect`` (the turn then ends)."""
    while not await request.is_disconnected():
        await asyncio.sleep(0.25)
    on_disconnect()

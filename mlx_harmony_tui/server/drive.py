"""Running one turn for the Responses and raw-completions routes, the way the chat route does (server/app.py):
a place in the generation queue taken before the reply starts (a full line is a 429), the client watched
while it waits and while the model works, the slot given back by the turn when it ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from mlx_harmony_tui.backends.base import TurnRequest
from mlx_harmony_tui.chat.events import Event
from mlx_harmony_tui.server.queue import GenerationQueue
from mlx_harmony_tui.server.schemas import error_body
from mlx_harmony_tui.server.turns import SSEResponse, Turn, join_queue, until_done, watch_disconnect


async def drive(request: Request, backend: Any, turn_request: TurnRequest, gen_queue: GenerationQueue,
                turns: set[Turn], feed: Callable[[Event], Any], stop: Callable[[], bool] = lambda: False,
                runs_here: frozenset[str] = frozenset()) -> bool:
    """Wait for the model, run the turn and give every event to ``feed``; ``stop()`` true cancels the rest.
    False when the client hung up while waiting (nothing ran); a hang-up later cancels the turn.
    ``runs_here``: the built-in tools the server runs itself (``serve --tools``)."""
    place = join_queue(gen_queue)
    waiter = asyncio.ensure_future(gen_queue.wait(place))
    if not await until_done(waiter, request, waiter.cancel):
        return False
    waiter.result()
    turn = Turn(backend, turn_request, gen_queue, turns, runs_here)
    turn.start()
    watch = asyncio.ensure_future(watch_disconnect(request, turn.cancel))
    try:
        async for ev in turn:
            feed(ev)
            if stop():
                turn.cancel()
    except BaseException:
        turn.cancel()
        raise
    finally:
        watch.cancel()
    return True


def disconnected() -> JSONResponse:
    return JSONResponse(error_body("client disconnected", "invalid_request_error"), status_code=499)


StreamBody = Callable[[Callable[[], AsyncIterator[Event]], Callable[[], None]], AsyncIterator[str]]


def stream_response(backend: Any, turn_request: TurnRequest, gen_queue: GenerationQueue, turns: set[Turn],
                    body: StreamBody) -> SSEResponse:
    """An SSE response made by ``body(events, cancel)``: ``events()`` waits for the model, starts the turn and
    yields its events; ``cancel()`` stops the model (a stop string), the events then run to the turn's end.
    The turn is cancelled when the stream ends early (the client went away)."""
    place = join_queue(gen_queue)  # a full line is a 429 before the stream's 200 goes out
    claimed: list[bool] = []
    running: list[Turn] = []

    async def events() -> AsyncIterator[Event]:
        await gen_queue.wait(place)
        claimed.append(True)  # from here the turn releases the slot when it ends
        turn = Turn(backend, turn_request, gen_queue, turns)
        running.append(turn)
        turn.start()
        try:
            async for ev in turn:
                yield ev
        finally:
            turn.cancel()  # no-op when the turn ended; stops the model when the client went away

    def cancel() -> None:
        for turn in running:
            turn.cancel()

    return SSEResponse(body(events, cancel), media_type="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                        on_close=lambda: None if claimed else gen_queue.leave(place))

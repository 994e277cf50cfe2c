"""One line per request on stderr, written when the response is complete (after the last SSE chunk):
``POST /v1/chat/completions 200 prompt=812 completion=64 1234 ms``.

A pure ASGI wrapper, so it sees the status of every response (errors included) and the real end of a stream.
Handlers put the request's token usage in ``request.state.usage`` (OpenAI's usage dict) for the line.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

LOGGER_NAME = "mlx_harmony_tui.server"
LEVELS = ("debug", "info", "warning", "error")


def setup_logging(level: str) -> logging.Logger:
    """The server's logger at ``level`` ("info" shows the request lines; "warning" hides them)."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(level.upper())
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.propagate = False
    return logger


def request_line(method: str, path: str, status: int, usage: dict[str, Any] | None, ms: float) -> str:
    tokens = ""
    if usage:
        tokens = f" prompt={usage.get('prompt_tokens', 0)} completion={usage.get('completion_tokens', 0)}"
    return f"{method} {path} {status}{tokens} {ms:.0f} ms"


class RequestLog:
    """ASGI middleware: ``app.add_middleware(RequestLog)``."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.logger = logging.getLogger(LOGGER_NAME)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500  # what the client gets if the app fails before it answers

        async def send_and_note(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            if self.logger.isEnabledFor(logging.INFO):
                usage = (scope.get("state") or {}).get("usage")
                ms = (time.perf_counter() - t0) * 1000
                self.logger.info(request_line(scope.get("method", "?"), scope.get("path", "?"), status, usage, ms))

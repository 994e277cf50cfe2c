"""What the server checks before a request may cost it anything: the API key, and the shape and size of the
JSON (docs/server.md lists the limits and their status codes); and what it answers when a handler fails.

Authentication is a pure ASGI middleware, not ``@app.middleware("http")``: Starlette's BaseHTTPMiddleware
hands the endpoint a replacement ``receive``, so ``request.is_disconnected()`` never saw a client hang up,
and an abandoned non-streaming request kept the model busy to the end.
"""

from __future__ import annotations

import json
import logging
import secrets
from typing import Any

from fastapi.responses import JSONResponse

from mlx_harmony_tui.server.request_log import LOGGER_NAME
from mlx_harmony_tui.server.schemas import APIError

MAX_JSON_DEPTH = 64  # nesting of arrays/objects in a request body
MAX_MESSAGES = 2048  # messages in one request
MAX_TOOLS = 128  # tool definitions in one request (OpenAI's own limit)


def error_response(err: APIError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


class BearerAuth:
    """Requires ``Authorization: Bearer KEY`` on /v1 paths; passes everything else through untouched."""

    def __init__(self, app: Any, api_key: str) -> None:
        self.app = app
        self.key = api_key.encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1"):
            given = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            scheme, _, token = given.partition(" ")
            if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), self.key):
                err = APIError(
                    401,
                    "invalid or missing API key (send 'Authorization: Bearer KEY')",
                    code="invalid_api_key",
                )
                await error_response(err)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class InternalErrors:
    """A bug in a handler is a 500 in OpenAI's envelope, logged with its traceback, and the keep-alive
    connection stays open. Starlette's catch-all handler answers and then re-raises, and uvicorn closes the
    connection of an app that raised, so a client's next request on that connection failed too."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_and_note(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        except Exception as exc:
            if started:  # a stream broke off: nothing more can be said on this connection
                raise
            logging.getLogger(LOGGER_NAME).error("%s %s failed", scope.get("method"), scope.get("path"),
                                                 exc_info=exc)
            err = APIError(500, f"internal error: {type(exc).__name__}: {exc}", "server_error")
            await error_response(err)(scope, receive, send)


def parse_json(body: bytes) -> Any:
    """The request body as JSON, or a 400: not UTF-8 / not JSON, nested deeper than MAX_JSON_DEPTH (deeper
    input otherwise ends in a RecursionError somewhere later: parsing, validation, rendering), or a string
    with a lone surrogate escape (``"\\ud800"``: valid JSON, but not text that can be encoded or rendered)."""
    try:
        data = json.loads(body)
    except RecursionError:
        raise APIError(
            400, f"request body is nested more than {MAX_JSON_DEPTH} levels deep", code="invalid_json"
        ) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise APIError(400, f"request body is not valid JSON: {e}", code="invalid_json") from None
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack:  # iterative: the depth check must not recurse itself
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth >= MAX_JSON_DEPTH:
                raise APIError(
                    400, f"request body is nested more than {MAX_JSON_DEPTH} levels deep", code="invalid_json"
                )
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            stack.extend((c, depth + 1) for c in children)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise APIError(
                    400,
                    "request body holds a lone surrogate escape (such as \\ud800), which is not text",
                    code="invalid_json",
                ) from None
    return data


def check_counts(messages: int, tools: int) -> None:
    if messages > MAX_MESSAGES:
        raise APIError(
            400,
            f"{messages} messages; at most {MAX_MESSAGES} per request",
            param="messages",
            code="too_many_messages",
        )
    if tools > MAX_TOOLS:
        raise APIError(
            400, f"{tools} tools; at most {MAX_TOOLS} per request", param="tools", code="too_many_tools"
        )

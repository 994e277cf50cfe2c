"""Tools from MCP servers (``[[mcp.servers]]``), through the official ``mcp`` SDK.

Every configured server gets one client on one asyncio loop that runs in a daemon thread, so the model's
worker thread and the UI only ever wait on a future with a timeout. A server's tools are offered to the model
as Harmony function tools named ``<server>__<tool>`` (parameters are the server's JSON schema, passed
through). A server that fails to start, or dies, is reported in its state and its tools are withdrawn: a
broken MCP server never takes the chat down. The servers' stderr goes to a log file, never to the terminal
(Textual draws the screen on stderr).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mlx_harmony_tui.chat.settings import FunctionTool

SEPARATOR = "__"  # between the server's name and its tool's: functions.files__read
HEARTBEAT_S = 5.0  # how often an idle server is checked
Status = Literal["starting", "ready", "failed", "stopped"]


@dataclass
class McpServerConfig:
    """One ``[[mcp.servers]]`` entry: ``command`` (+ ``args``, ``env``) for stdio, or ``url`` for HTTP."""

    name: str = ""
    command: str = ""
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    url: str = ""  # streamable HTTP endpoint, e.g. http://127.0.0.1:8931/mcp
    enabled: bool = True
    confirm: bool = True  # ask before each call (the server's tools can do anything it can)
    timeout_s: float = 60.0  # one call
    start_timeout_s: float = 30.0  # connect + list tools


@dataclass
class McpConfig:
    """The ``[mcp]`` table."""

    servers: list[McpServerConfig] = field(default_factory=list)


@dataclass
class McpTool:
    server: str
    name: str  # the server's own tool name
    description: str
    parameters: dict[str, Any]

    @property
    def function_name(self) -> str:
        return f"{self.server}{SEPARATOR}{self.name}"


@dataclass
class McpServerState:
    name: str
    status: Status = "starting"
    error: str = ""
    tools: list[McpTool] = field(default_factory=list)
    transport: str = "stdio"


@dataclass
class McpCallResult:
    output: str
    error: str | None = None


class McpError(Exception):
    """A call that could not reach its server (the text is meant for the model and the tool pane)."""


def result_text(result: Any) -> tuple[str, bool]:
    """(text for the model, is_error) from a CallToolResult: text parts verbatim, other content summarized."""
    parts: list[str] = []
    for block in getattr(result, "content", None) or []:
        kind = getattr(block, "type", "")
        if kind == "text":
            parts.append(block.text)
        elif kind in ("image", "audio"):
            size = len(getattr(block, "data", "") or "") * 3 // 4
            parts.append(f"[{kind} {getattr(block, 'mime_type', '') or ''}, {size} bytes, not shown]")
        elif kind == "resource_link":
            parts.append(f"[resource link {getattr(block, 'uri', '')}]")
        elif kind == "resource":
            res = getattr(block, "resource", None)
            text = getattr(res, "text", None)
            parts.append(text if isinstance(text, str) else f"[resource {getattr(res, 'uri', '')}, binary]")
        else:
            parts.append(f"[{kind or 'unknown'} content]")
    if not parts and getattr(result, "structured_content", None) is not None:
        import json

        parts.append(json.dumps(result.structured_content, ensure_ascii=False))
    return "\n".join(parts), bool(getattr(result, "is_error", False))


class _Server:
    """One server's client, living in the hub's loop: connect, list tools, then serve calls until closed."""

    def __init__(self, config: McpServerConfig, log_dir: Path | None, on_change: Callable[[], None]) -> None:
        self.config = config
        self.state = McpServerState(config.name, transport="http" if config.url else "stdio")
        self.ready = threading.Event()  # set once ready or failed
        self._log_dir = log_dir
        self._on_change = on_change
        self._client: Any = None
        self._lock: asyncio.Lock | None = None
        self._stop: asyncio.Event | None = None
        self._dead: str | None = None

    def _set(self, status: Status, error: str = "", tools: list[McpTool] | None = None) -> None:
        self.state = McpServerState(
            self.config.name, status, error, tools if tools is not None else [], self.state.transport
        )
        if status != "starting":
            self.ready.set()
        self._on_change()

    def _transport(self, stack: Any) -> Any:
        if self.config.url:
            return self.config.url
        from mcp.client.stdio import StdioServerParameters, stdio_client

        params = StdioServerParameters(
            command=self.config.command,
            args=list(self.config.args),
            env=dict(self.config.env) or None,
            encoding_error_handler="replace",
        )
        log_path = (self._log_dir / f"{self.config.name}.log") if self._log_dir else None
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            errlog = stack.enter_context(open(log_path, "a", encoding="utf-8", errors="replace"))
        else:
            import os

            errlog = stack.enter_context(open(os.devnull, "w"))
        return stdio_client(params, errlog=errlog)

    async def run(self) -> None:
        from contextlib import ExitStack

        from mcp import Client

        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        try:
            with ExitStack() as stack:
                client = Client(self._transport(stack), read_timeout_seconds=self.config.timeout_s)
                async with asyncio.timeout(self.config.start_timeout_s):
                    await client.__aenter__()
                try:
                    async with asyncio.timeout(self.config.start_timeout_s):
                        listing = await client.list_tools()
                    self._client = client
                    self._set("ready", tools=self._tools(listing))
                    await self._watch()
                finally:
                    self._client = None
                    try:
                        async with asyncio.timeout(5):
                            await client.__aexit__(None, None, None)
                    except BaseException:  # a dead server's transport may fail to close cleanly
                        pass
        except asyncio.CancelledError:
            self._set("stopped", "closed")
            raise
        except BaseException as e:  # start-up failure or death: a notice, never a crash
            self._set("failed", _describe(e, self.config))
            return
        if self.state.status == "ready":
            self._set("stopped", "closed")

    async def _watch(self) -> None:
        """Idle until closed or dead. A call that finds the connection closed ends it at once; between
        calls, listing the tools every few seconds notices a server that died (and picks up new tools)."""
        assert self._stop is not None and self._lock is not None
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), timeout=HEARTBEAT_S)
            except TimeoutError:
                pass
            if self._dead is not None:
                raise McpError(self._dead)
            if self._stop.is_set():
                return
            async with self._lock:
                try:
                    async with asyncio.timeout(10):
                        listing = await self._client.list_tools(cache_mode="bypass")
                except Exception as e:
                    raise McpError(f"stopped answering ({_short(e)})") from None
            tools = self._tools(listing)
            if [t.name for t in tools] != [t.name for t in self.state.tools]:
                self._set("ready", tools=tools)

    def _tools(self, listing: Any) -> list[McpTool]:
        return [
            McpTool(self.config.name, t.name, t.description or "", dict(t.input_schema or {"type": "object"}))
            for t in listing.tools
        ]

    async def call(self, tool: str, arguments: dict[str, Any]) -> McpCallResult:
        if self._client is None or self._lock is None:
            raise McpError(
                f"MCP server {self.config.name!r} is not running ({self.state.error or 'not ready'})"
            )
        async with self._lock:
            try:
                async with asyncio.timeout(self.config.timeout_s):
                    result = await self._client.call_tool(tool, arguments)
            except TimeoutError:
                raise McpError(
                    f"MCP tool {self.config.name}.{tool} did not answer within {self.config.timeout_s:g} s"
                ) from None
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the connection is gone: end the server (tools withdrawn)
                self._dead = f"died ({_short(e)})"
                assert self._stop is not None
                self._stop.set()
                raise McpError(f"MCP server {self.config.name!r} failed: {_short(e)}") from None
        text, is_error = result_text(result)
        return McpCallResult(text, "tool error" if is_error else None)

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()


def _short(e: BaseException) -> str:
    if isinstance(e, BaseExceptionGroup) and e.exceptions:
        return _short(e.exceptions[0])
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _describe(e: BaseException, config: McpServerConfig) -> str:
    inner = e
    while isinstance(inner, BaseExceptionGroup) and inner.exceptions:
        inner = inner.exceptions[0]
    if isinstance(inner, FileNotFoundError):
        return f"cannot start {config.command!r}: command not found"
    if isinstance(inner, TimeoutError):
        return f"no answer within {config.start_timeout_s:g} s"
    if isinstance(inner, McpError):
        return str(inner)
    return _short(inner)


class McpHub:
    """Every configured MCP server, started in the background; thread-safe for the faces and the model."""

    def __init__(
        self,
        servers: list[McpServerConfig],
        log_dir: Path | None = None,
        on_change: Callable[[McpServerState], None] | None = None,
    ) -> None:
        self.on_change = on_change
        self._servers: dict[str, _Server] = {}
        for cfg in servers:
            if cfg.enabled and cfg.name and cfg.name not in self._servers:
                self._servers[cfg.name] = _Server(cfg, log_dir, self._changed_cb(cfg.name))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._tasks: list[concurrent.futures.Future[None]] = []

    def _changed_cb(self, name: str) -> Callable[[], None]:
        def changed() -> None:
            if self.on_change is not None:
                try:
                    self.on_change(self._servers[name].state)
                except Exception:  # a face's callback must not kill the server task
                    pass

        return changed

    def __bool__(self) -> bool:
        return bool(self._servers)

    def start(self) -> McpHub:
        """Start every server (returns at once; see ``wait_ready``)."""
        if self._thread is not None or not self._servers:
            return self
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="mcp", daemon=True)
        self._thread.start()
        self._tasks = [asyncio.run_coroutine_threadsafe(s.run(), loop) for s in self._servers.values()]
        return self

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until every server is ready or failed (or the timeout passes)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for server in self._servers.values():
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            server.ready.wait(left)

    def states(self) -> list[McpServerState]:
        return [s.state for s in self._servers.values()]

    def tools(self) -> list[McpTool]:
        return [t for s in self._servers.values() if s.state.status == "ready" for t in s.state.tools]

    def function_tools(self) -> list[FunctionTool]:
        """What the model is told: the ready servers' tools, namespaced by server."""
        return [
            FunctionTool(name=t.function_name, description=t.description, parameters=t.parameters)
            for t in self.tools()
        ]

    def _find(self, function_name: str) -> tuple[_Server, str] | None:
        server, sep, tool = function_name.partition(SEPARATOR)
        s = self._servers.get(server)
        if not sep or s is None:
            return None
        return s, tool

    def has(self, function_name: str) -> bool:
        """Whether a call to ``functions.<function_name>`` belongs to an MCP server (ready or not)."""
        return self._find(function_name) is not None

    def needs_confirmation(self, function_name: str) -> bool:
        found = self._find(function_name)
        return found is not None and found[0].config.confirm

    def call(
        self, function_name: str, arguments: dict[str, Any], cancel: threading.Event | None = None
    ) -> McpCallResult:
        """Run one tool call; never raises for a server's failure (the text says what happened)."""
        found = self._find(function_name)
        if found is None or self._loop is None:
            return McpCallResult(f"Error: no MCP tool {function_name!r}.", "unknown tool")
        server, tool = found
        if server.state.status != "ready":
            why = server.state.error or server.state.status
            return McpCallResult(
                f"Error: the MCP server {server.config.name!r} is not available ({why}).", "mcp"
            )
        if tool not in {t.name for t in server.state.tools}:
            names = ", ".join(t.function_name for t in server.state.tools) or "none"
            return McpCallResult(
                f"Error: unknown tool {function_name!r}. This server offers: {names}.", "unknown tool"
            )
        future = asyncio.run_coroutine_threadsafe(server.call(tool, arguments), self._loop)
        deadline = time.monotonic() + server.config.timeout_s + 5
        while True:
            try:
                return future.result(timeout=0.1)
            except concurrent.futures.TimeoutError:
                if cancel is not None and cancel.is_set():
                    future.cancel()
                    return McpCallResult("Error: cancelled by the user.", "cancelled")
                if time.monotonic() > deadline:
                    future.cancel()
                    return McpCallResult(f"Error: the MCP tool {function_name} did not answer.", "timeout")
            except McpError as e:
                return McpCallResult(f"Error: {e}.", "mcp")
            except concurrent.futures.CancelledError:
                return McpCallResult("Error: the call was cancelled.", "cancelled")

    def close(self, timeout: float = 8.0) -> None:
        """Stop every server (their processes end with their stdin) and the loop."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        # No more notices: a server's "stopped" notice would go to an app that is waiting right here for this
        # close (call_from_thread blocks), and both sides would wait out the timeouts (quitting took ~10 s).
        self.on_change = None
        for server in self._servers.values():
            loop.call_soon_threadsafe(server.stop)
        concurrent.futures.wait(self._tasks, timeout=timeout)
        for task in self._tasks:
            task.cancel()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=2.0)
        self._loop = self._thread = None

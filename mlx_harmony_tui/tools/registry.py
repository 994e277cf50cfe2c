"""The tool registry: which tools a conversation has, what the model is told about them, and running them.

``run`` never raises for anything the model did (unknown tool, bad JSON, a failing command): the problem
comes back as text in ``ToolOutcome.output`` so it can be fed to the model, with ``error`` set for the UI.
Every call is recorded as a ``ToolRecord`` for the TUI's tool log and the session.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from openai_harmony import ToolNamespaceConfig

from mlx_harmony_tui import paths
from mlx_harmony_tui.chat.settings import ChatSettings, FunctionTool
from mlx_harmony_tui.tools.browser import Browser, BrowserError, BrowserToolConfig
from mlx_harmony_tui.tools.functions import FunctionToolConfig, parse_arguments, run_function
from mlx_harmony_tui.tools.mcp import McpConfig, McpHub
from mlx_harmony_tui.tools.python import PythonTool, PythonToolConfig, python_description
from mlx_harmony_tui.tools.runner import truncate_text

BROWSER_FUNCTIONS = {
    "search": ("query", "topn", "source"),
    "open": ("id", "cursor", "loc", "num_lines", "view_source", "source"),
    "find": ("pattern", "cursor"),
}


class ToolsSection(Protocol):
    """The ``[tools]`` part of the app config (config.ToolsConfig), described here because config.py sits
    above the tools layer (it builds on these tool configs)."""

    python: PythonToolConfig
    browser: BrowserToolConfig
    functions: list[FunctionToolConfig]
    max_output_chars: int


class HasToolsSection(Protocol):
    """What ``from_settings`` reads from config.AppConfig (``mcp``, an McpConfig, is read if present)."""

    tools: ToolsSection


@dataclass
class ToolOutcome:
    """``output`` is always what goes back to the model (error text included); ``error`` is a short label."""

    output: str
    error: str | None = None
    duration_s: float = 0.0


@dataclass
class ToolRecord:
    recipient: str
    arguments: str
    output: str
    error: str | None
    started: float  # time.time() when the call began
    duration_s: float


@dataclass
class ToolRegistry:
    python: PythonToolConfig | None = None  # None = python off
    browser: BrowserToolConfig | None = None  # None = browser off
    functions: dict[str, FunctionToolConfig] = field(default_factory=dict)  # runnable (have a command)
    declared: list[FunctionTool] = field(default_factory=list)  # declared only (e.g. by a server client)
    max_output_chars: int = 20000
    mcp: McpHub | None = None  # tools of MCP servers (functions.<server>__<tool>), shared across registries
    mcp_wait_s: float = 10.0  # the first turn waits this long at most for servers still starting
    on_record: Callable[[ToolRecord], None] | None = None
    records: list[ToolRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._python_tool = PythonTool(self.python) if self.python else None
        self._browser = Browser(self.browser) if self.browser else None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(
        cls, settings: ChatSettings, config: HasToolsSection | None = None, mcp: McpHub | None = None
    ) -> ToolRegistry:
        """Built-ins on/off come from the resolved settings; their parameters and the functions from config."""
        tools = config.tools if config is not None else None
        python = (
            (tools.python if tools else PythonToolConfig()) if "python" in settings.builtin_tools else None
        )
        browser = (
            (tools.browser if tools else BrowserToolConfig()) if "browser" in settings.builtin_tools else None
        )
        functions = {f.name: f for f in (tools.functions if tools else []) if f.name}
        declared = [t for t in settings.function_tools if t.name not in functions]
        limit = tools.max_output_chars if tools else 20000
        return cls(
            python=python,
            browser=browser,
            functions=functions,
            declared=declared,
            max_output_chars=limit,
            mcp=mcp or None,
        )

    # what the model is told -------------------------------------------------------------------------------
    def function_tools(self) -> list[FunctionTool]:
        """For the developer message (``functions`` namespace)."""
        own = [*self.declared, *(f.as_function_tool() for f in self.functions.values())]
        if self.mcp is None:
            return own
        if self.mcp_wait_s:  # once: servers started with the app are usually ready by the first message
            self.mcp.wait_ready(self.mcp_wait_s)
            self.mcp_wait_s = 0.0
        taken = {f.name for f in own}
        return own + [f for f in self.mcp.function_tools() if f.name not in taken]

    def builtin_names(self) -> list[str]:
        return [n for n, on in (("browser", self.browser), ("python", self.python)) if on is not None]

    def builtin_namespaces(self) -> list[ToolNamespaceConfig]:
        """For the system message; the python description matches this app's sandbox, not Jupyter."""
        out: list[ToolNamespaceConfig] = []
        if self.browser is not None:
            out.append(ToolNamespaceConfig.browser())
        if self.python is not None:
            out.append(
                ToolNamespaceConfig(name="python", description=python_description(self.python), tools=[])
            )
        return out

    def can_run(self, recipient: str) -> bool:
        """False for functions the client of the server executes itself (declared without a command)."""
        r = recipient.strip()
        if r == "python":
            return self.python is not None
        if r.startswith("browser."):
            return self.browser is not None and r.split(".", 1)[1] in BROWSER_FUNCTIONS
        if not r.startswith("functions."):
            return False
        name = r.split(".", 1)[1]
        return name in self.functions or (self.mcp is not None and self.mcp.has(name))

    def needs_confirmation(self, recipient: str) -> bool:
        r = recipient.strip()
        if r == "python":
            return self._python_tool is not None and self._python_tool.needs_confirmation()
        if r.startswith("browser."):
            return self.browser is not None and self.browser.confirm
        if r.startswith("functions."):
            name = r.split(".", 1)[1]
            tool = self.functions.get(name)
            if tool is not None:
                return tool.needs_confirmation()
            return self.mcp is not None and self.mcp.needs_confirmation(name)
        return False

    def confirmation_note(self, recipient: str) -> str:
        """What the user should know before allowing the call (e.g. that there is no OS sandbox)."""
        if recipient.strip() == "python" and self._python_tool is not None:
            return self._python_tool.confirmation_note()
        return ""

    # running ----------------------------------------------------------------------------------------------
    def run(self, recipient: str, arguments: str, cancel: threading.Event | None = None) -> ToolOutcome:
        started = time.time()
        t0 = time.monotonic()
        try:
            outcome = self._dispatch(recipient.strip(), arguments, cancel)
        except Exception as e:  # a bug in a tool must not kill the turn; the model and the log hear about it
            outcome = ToolOutcome(
                f"Error: the tool {recipient} failed internally: {type(e).__name__}: {e}", "internal"
            )
        outcome.duration_s = time.monotonic() - t0
        outcome.output = truncate_text(outcome.output, self.max_output_chars)
        record = ToolRecord(recipient, arguments, outcome.output, outcome.error, started, outcome.duration_s)
        with self._lock:
            self.records.append(record)
        if self.on_record is not None:
            self.on_record(record)
        return outcome

    def _dispatch(self, recipient: str, arguments: str, cancel: threading.Event | None) -> ToolOutcome:
        if recipient == "python" and self._python_tool is not None:
            res = self._python_tool.run(_python_code(arguments), cancel)
            return ToolOutcome(res.output, res.error)
        if recipient.startswith("browser.") and self._browser is not None:
            return self._run_browser(recipient.split(".", 1)[1], arguments)
        if recipient.startswith("functions."):
            name = recipient.split(".", 1)[1]
            tool = self.functions.get(name)
            if tool is not None:
                try:
                    args = parse_arguments(arguments)
                except ValueError as e:
                    return ToolOutcome(f"Error: {e}.", "bad arguments")
                res = run_function(tool, args, cancel)
                return ToolOutcome(res.output, res.error)
            if self.mcp is not None and self.mcp.has(name):
                try:
                    args = parse_arguments(arguments)
                except ValueError as e:
                    return ToolOutcome(f"Error: {e}.", "bad arguments")
                mres = self.mcp.call(name, args, cancel)
                return ToolOutcome(mres.output, mres.error)
        return ToolOutcome(
            f"Error: unknown tool {recipient!r}. Available tools: {self._available()}.", "unknown tool"
        )

    def _run_browser(self, fn: str, arguments: str) -> ToolOutcome:
        assert self._browser is not None
        if fn not in BROWSER_FUNCTIONS:
            return ToolOutcome(
                f"Error: unknown tool 'browser.{fn}'. Available tools: {self._available()}.", "unknown tool"
            )
        try:
            args = parse_arguments(arguments)
        except ValueError as e:
            return ToolOutcome(f"Error: {e}.", "bad arguments")
        unknown = sorted(set(args) - set(BROWSER_FUNCTIONS[fn]))
        if unknown:
            allowed = ", ".join(BROWSER_FUNCTIONS[fn])
            return ToolOutcome(
                f"Error: browser.{fn} has no argument {', '.join(unknown)} (it takes {allowed}).",
                "bad arguments",
            )
        try:
            args = {k: _number(v) for k, v in args.items()}
            return ToolOutcome(getattr(self._browser, fn)(**args))
        except BrowserError as e:
            return ToolOutcome(f"Error: {e}", "browser")
        except TypeError as e:  # a required argument is missing
            return ToolOutcome(f"Error: browser.{fn}: {e}.", "bad arguments")

    def _available(self) -> str:
        names = [
            *(["python"] if self.python else []),
            *(f"browser.{f}" for f in BROWSER_FUNCTIONS if self.browser),
        ]
        names += [f"functions.{t.name}" for t in self.function_tools()]
        return ", ".join(names) or "none"

    def close(self) -> None:
        """Stop the persistent python kernel, if one runs."""
        if self._python_tool is not None:
            self._python_tool.close()


class RegistryCache:
    """One registry per tool selection, kept across turns (a persistent python kernel lives on); shared by
    the backends that run tools themselves (local model, remote server). Owns the MCP servers: started here
    (in the background, so a slow server never delays the app) and stopped by ``close``."""

    def __init__(self, config: HasToolsSection | None = None, mcp_log_dir: Path | None = None) -> None:
        self.config = config
        self._by_key: dict[tuple, ToolRegistry] = {}
        mcp_config: McpConfig | None = getattr(config, "mcp", None)
        servers = mcp_config.servers if mcp_config else []
        log_dir = mcp_log_dir or (paths.cache_dir() / "mcp-logs")
        self.mcp = McpHub(servers, log_dir=log_dir).start()

    def get(self, settings: ChatSettings) -> ToolRegistry:
        mcp = self.mcp if settings.mcp_tools else None
        key = (tuple(sorted(settings.builtin_tools)), tuple(f.name for f in settings.function_tools), bool(mcp))
        if key not in self._by_key:
            self._by_key[key] = ToolRegistry.from_settings(settings, self.config, mcp=mcp)
        return self._by_key[key]

    def close(self) -> None:
        for registry in self._by_key.values():
            registry.close()
        self._by_key.clear()
        self.mcp.close()


def _number(v: Any) -> Any:
    """JSON numbers arrive as floats (``"topn": 5.0``); the browser wants ints."""
    return int(v) if isinstance(v, float) and v.is_integer() else v


def _python_code(arguments: str) -> str:
    """The model writes raw code; a few variants wrap it as ``{"code": "..."}``: accept both."""
    text = arguments.strip()
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return arguments
        if isinstance(value, dict) and isinstance(value.get("code"), str):
            return value["code"]
    return arguments

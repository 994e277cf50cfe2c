"""Function tools declared in the config: the user's way to give the model their own tools.

Each ``[[tools.functions]]`` entry names a ``command``; a call runs it (no shell) with the model's arguments
as JSON on stdin, and its stdout is the result. The command is the user's own program, so it gets the
user's environment; what limits it is the timeout and the output cap. Tools that change things are
confirmed in the TUI unless marked ``safe = true`` (or ``confirm = false``).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import threading
from dataclasses import dataclass, field
from typing import Any

from mlx_harmony_tui.chat.settings import FunctionTool
from mlx_harmony_tui.tools.runner import run_process

NAME_RE = r"^[A-Za-z_][A-Za-z0-9_\-]*$"


@dataclass
class FunctionToolConfig:
    """One ``[[tools.functions]]`` entry."""

    name: str = ""
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})
    command: str | list[str] = ""
    timeout_s: float = 30.0
    safe: bool = False  # true = read-only; runs without asking
    confirm: bool | None = None  # explicit override of `safe`
    cwd: str | None = None
    max_output_chars: int = 20000

    def needs_confirmation(self) -> bool:
        return self.confirm if self.confirm is not None else not self.safe

    def as_function_tool(self) -> FunctionTool:
        return FunctionTool(name=self.name, description=self.description, parameters=dict(self.parameters))

    def argv(self) -> list[str]:
        """The command line; ValueError for a string with unbalanced quotes."""
        parts = shlex.split(self.command) if isinstance(self.command, str) else list(self.command)
        if parts:
            parts[0] = os.path.expanduser(parts[0])
        return parts

    def problem(self) -> str | None:
        """Why this command cannot start (checked when the config is read and before every call)."""
        try:
            argv = self.argv()
        except ValueError as e:
            return f"command {self.command!r} cannot be split into words ({e})"
        if not argv:
            return "no command configured"
        return program_problem(argv[0], os.path.expanduser(self.cwd) if self.cwd else None)


def program_problem(program: str, cwd: str | None = None) -> str | None:
    """Why ``program`` cannot be executed: missing, not executable, or a script without a ``#!`` line."""
    if os.sep in program:
        path = os.path.join(cwd, program) if cwd and not os.path.isabs(program) else program
        if not os.path.isfile(path):
            return f"{program!r} does not exist"
    else:
        found = shutil.which(program)
        if found is None:
            return f"{program!r} is not on the PATH"
        path = found
    if not os.access(path, os.X_OK):
        return f"{program!r} is not executable (chmod +x it)"
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        return f"{program!r} cannot be read: {e.strerror}"
    if head[:2] != b"#!" and head not in (b"\x7fELF", b"\xcf\xfa\xed\xfe", b"\xca\xfe\xba\xbe"):
        return (
            f"{program!r} is a script without a '#!' line (add one, or name its interpreter in the command)"
        )
    return None


@dataclass
class FunctionResult:
    output: str
    error: str | None
    duration_s: float


def parse_arguments(arguments: str) -> dict[str, Any]:
    """The model's JSON arguments; raises ValueError with a message the model can act on."""
    text = arguments.strip()
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"arguments are not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); "
            "send a JSON object matching the tool's parameters"
        ) from None
    if not isinstance(value, dict):
        raise ValueError(f"arguments must be a JSON object, got {type(value).__name__}")
    return value


def run_function(
    tool: FunctionToolConfig, args: dict[str, Any], cancel: threading.Event | None = None
) -> FunctionResult:
    """Run the tool's command with ``args`` as JSON on stdin; stdout (and stderr) is the result. Everything
    the command starts ends with the call (runner's reaper), a ``setsid`` child included."""
    if not tool.command:
        return FunctionResult(f"Error: function {tool.name} has no command configured.", "no command", 0.0)
    why = tool.problem()
    if why is not None:
        return FunctionResult(f"Error: could not start function {tool.name}: {why}", "could not start", 0.0)
    argv = tool.argv()
    cwd = os.path.expanduser(tool.cwd) if tool.cwd else None
    try:
        res = run_process(
            argv,
            stdin_data=json.dumps(args).encode("utf-8"),
            cwd=cwd,
            env=os.environ,
            timeout_s=tool.timeout_s,
            max_output=tool.max_output_chars,
            cancel=cancel,
        )
    except (FileNotFoundError, PermissionError, NotADirectoryError) as e:
        msg = f"Error: could not start {argv[0]!r} for function {tool.name}: {e.strerror or e}"
        return FunctionResult(msg, "could not start", 0.0)
    out = res.output
    if res.timed_out:
        return FunctionResult(
            f"{out}\n[timed out after {tool.timeout_s:g} seconds]".lstrip(), "timeout", res.duration_s
        )
    if res.cancelled:
        return FunctionResult(f"{out}\n[cancelled]".lstrip(), "cancelled", res.duration_s)
    if res.returncode:
        note = f"[{tool.name} failed with exit status {res.returncode}]"
        return FunctionResult(f"{out}\n{note}".lstrip(), f"exit status {res.returncode}", res.duration_s)
    return FunctionResult(out, None, res.duration_s)

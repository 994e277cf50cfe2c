r"""``mlx-harmony-tui chat``: line-mode chat for pipes and plain terminals.

Each input line is a user message (``//text`` sends text starting with ``/``; a line ending in ``\`` continues
on the next line); lines starting with ``/`` are commands. ``--session ID`` continues a saved session. The answer streams to stdout as tokens arrive; analysis and tool calls are shown when asked. Every
turn is recorded in a session (SessionRecorder), so nothing is lost if the process dies mid-answer.
"""

from __future__ import annotations

import argparse
import copy
import io
import sys
from typing import Any, TextIO

from mlx_harmony_tui.backends.base import leaves_defaults_to_server
from mlx_harmony_tui.chat.events import (
    Delta,
    Retry,
    ToolCall,
    ToolConfirmation,
    ToolResult,
    TurnFailed,
    TurnFinished,
)
from mlx_harmony_tui.chat.settings import REQUEST_KEYS, ChatSettings
from mlx_harmony_tui.controller import ChatController
from mlx_harmony_tui.errors import UserError
from mlx_harmony_tui.faces.common import (
    StreamPrinter,
    add_model_flags,
    add_settings_flags,
    apply_overrides,
    finish_note,
    make_backend,
    parse_value,
    release_mlx_streams,
    resume_overrides,
)

HELP = r"""commands:
  /help               this help
  /set key=value      change a setting: temperature, top_p, top_k, min_p, repetition_penalty,
                      repetition_context, logit_bias (id:bias,...), max_tokens, context_limit,
                      seed, reasoning_effort, instructions, system (none unsets seed, context_limit)
  /set                show the current settings
  /models             list the models available
  /save [title]       name the session (recorded from the first message) and show where it is
  /attach PATH        add a text file (up to 256 KB) to the next message; /attach lists, /detach drops
  /quit               leave (also end of input)
  //text              send text that starts with '/'
  text\               a line ending in a backslash continues on the next line
  ctrl+c              stop the answer (kept as far as it got), or drop the line being typed;
                      twice in a row at the prompt leaves"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("chat", help="line-mode chat (stdin/stdout), for pipes and plain terminals")
    add_model_flags(p)
    add_settings_flags(p)
    p.add_argument("--show-analysis", action="store_true", help="print the model's reasoning")
    p.add_argument("--show-tools", action="store_true", help="print tool calls and results")
    p.add_argument("--yes", action="store_true", help="run tool calls without asking")
    p.add_argument("--session", default=None, metavar="ID",
                   help="continue a saved session (an id or a unique prefix; see 'sessions list')")
    p.set_defaults(func=run)



def settings_line(s: ChatSettings, server_defaults: bool) -> str:
    """What `/set` alone shows: every value, or with a remote server the ones the user set and then the
    ones the server chooses (its model's defaults, unknown here: showing ours would mislead)."""
    shown, left = [], []
    for key in REQUEST_KEYS:
        value = s.value(key)
        if server_defaults and key not in s.explicit:
            left.append(key)
        elif key == "logit_bias":
            shown.append(f"logit_bias={','.join(f'{k}:{v:g}' for k, v in value.items()) or 'none'}")
        else:
            shown.append(f"{key}={value}")
    if not server_defaults:  # a local model's context; a server keeps its own
        shown.append(f"context_limit={s.context_limit}")
    return " ".join(shown) + (f"{'; ' if shown else ''}server defaults: {' '.join(left)}" if left else "")

class LineChat:
    """The chat loop over a ChatController, separated from argument parsing so tests can drive it with any
    streams. The controller records the session (created with the first message) and the /set changes."""

    def __init__(self, backend: Any, settings: ChatSettings, args: argparse.Namespace,
                 stdin: TextIO, stdout: TextIO, stderr: TextIO) -> None:
        self.args = args
        self.stdin, self.out, self.err = stdin, stdout, stderr
        # Prompt-cache files only for a resumed session: a new one is rarely reopened from the line chat.
        resume = getattr(args, "session", None)
        self.chat = ChatController(backend, settings, keep_prompt_cache=bool(resume), notify=self._notice)
        if resume:
            session = self.chat.open_session(resume)  # UserError (not found, damaged, open elsewhere): exit 2
            overrides = resume_overrides(args)
            if overrides is not None:
                self.chat.set_settings(overrides(self.chat.settings))
            stderr.write(f"continuing session {session.id} '{session.title}' ({len(session.messages)} messages)\n")
        self.failures = 0
        self.interactive = stdin.isatty()

    @property
    def backend(self) -> Any:
        return self.chat.backend

    @property
    def settings(self) -> ChatSettings:
        return self.chat.settings

    def run(self) -> int:
        if self.interactive:
            self.err.write(f"chat with {self.backend.model_name} (/help for commands)\n")
        if self.chat.greeting:
            self.out.write(self.chat.greeting + "\n")
        interrupted = False  # ctrl+c at the prompt just before
        try:
            while True:
                try:
                    text = self._read_message()
                except KeyboardInterrupt:
                    if not self.interactive:
                        raise  # a script's SIGINT: exit 130
                    if interrupted:
                        self.err.write("\n")
                        break  # a second ctrl+c in a row leaves
                    # Dropping the line, not leaving: a ctrl+c meant for an answer that just ended lands here.
                    self.err.write("\n(input dropped; ctrl+c again, ctrl+d or /quit leaves)\n")
                    interrupted = True
                    continue
                interrupted = False
                if text is None:
                    break
                if not text.strip():
                    continue
                if text.startswith("//"):
                    text = text[1:]
                elif text.startswith("/"):
                    if self.command(text) == "quit":
                        break
                    continue
                try:
                    self.turn(text)
                except KeyboardInterrupt:
                    self.err.write("\n(cancelled)\n")
        finally:
            self.chat.close()
        return 1 if self.failures else 0

    def _read_message(self) -> str | None:
        """One message: a line, or several joined where a line ends in a backslash. None at end of input."""
        parts: list[str] = []
        while True:
            if self.interactive:
                self.out.write("> " if not parts else ". ")
                self.out.flush()
            line = self.stdin.readline()
            if not line:
                return "\n".join(parts) if parts else None
            line = line.rstrip("\r\n")
            if line.endswith("\\") and not line.endswith("\\\\"):
                parts.append(line[:-1])
                continue
            parts.append(line[:-1] if line.endswith("\\\\") else line)  # "\\" at the end: one literal "\"
            return "\n".join(parts)

    def command(self, text: str) -> str | None:
        name, _, rest = text[1:].partition(" ")
        rest = rest.strip()
        try:
            if name in ("quit", "exit", "q"):
                return "quit"
            if name in ("help", "?"):
                self.out.write(HELP + "\n")
            elif name == "set":
                self.set(rest)
            elif name == "models":
                self.models()
            elif name == "save":
                self.save(rest)
            elif name == "attach":
                self.attach(rest)
            elif name == "detach":
                dropped = ", ".join(a.name for a in self.chat.attachments) or "nothing"
                self.chat.attachments = []
                self.out.write(f"detached {dropped}\n")
            else:
                self.err.write(f"unknown command /{name} (/help lists them; //text sends text starting with '/')\n")
        except UserError as e:
            self.err.write(f"error: {e}\n")
        self.out.flush()
        return None

    def set(self, rest: str) -> None:
        if not rest:
            self.out.write(settings_line(self.settings, leaves_defaults_to_server(self.backend)) + "\n")
            return
        key, eq, value = rest.partition("=")
        if not eq:
            raise UserError("usage: /set key=value")
        typed = key.strip()
        key = typed.replace("-", "_")
        new = copy.deepcopy(self.settings)
        apply_overrides(new, {key: parse_value(key, value, typed)}, typed)
        self.chat.set_settings(new)  # recorded in the session with the next message
        self.out.write(f"{key} = {value.strip()}\n")

    def attach(self, path: str) -> None:
        if not path:
            pending = ", ".join(a.describe() for a in self.chat.attachments)
            self.out.write(f"attached to the next message: {pending}\n" if pending else "usage: /attach PATH\n")
            return
        a = self.chat.attach(path)
        self.out.write(f"attached {a.describe()}: it goes with your next message (/detach drops it)\n")

    def models(self) -> None:
        list_models = getattr(self.backend, "list_models", None)
        if callable(list_models):
            names = list_models()
        else:
            from mlx_harmony_tui.catalog.listing import columns, find_models
            from mlx_harmony_tui.faces.common import load_app_config

            cfg = load_app_config(self.args)  # the same rows as `models list`
            found = find_models(
                cfg.models_dirs, context=self.settings.context_limit, kv_bits=cfg.kv_bits, kv_mode=cfg.kv_mode
            )
            names = ["  ".join(columns(e)[:-1]) + f"  fits: {columns(e)[-1]}" for e in found]
        self.out.write(f"current: {self.backend.model_name}\n")
        for n in names:
            self.out.write(f"  {n}\n")

    def save(self, title: str) -> None:
        session = self.chat.session
        if session is None:
            if title:
                self.chat.title = title
            named = f" as '{title}'" if title else ""
            self.out.write(f"the session is saved{named} with the first message\n")
            return
        if title:
            session.title = title
        assert self.chat.recorder is not None
        self.chat.recorder.save()
        self.out.write(f"saved session {session.id} '{session.title}' -> {self.chat.store.path(session.id)}\n")

    def turn(self, text: str) -> None:
        self.chat.send(text)
        show_tools = self.args.show_tools
        printer = StreamPrinter(self.out, self.args.show_analysis)
        try:
            for ev in self.chat.events():
                if isinstance(ev, Delta):
                    printer.delta(ev)
                elif isinstance(ev, ToolCall) and show_tools:
                    self._line(f"[tool call] {ev.recipient}({ev.arguments})")
                    printer.new_line()
                elif isinstance(ev, ToolResult) and show_tools:
                    out = ev.error or ev.output
                    self._line(f"[tool result] {ev.recipient}: {out[:2000]}")
                    printer.new_line()
                elif isinstance(ev, ToolConfirmation):
                    self.chat.confirmation(ev)(self._confirm(ev))
                elif isinstance(ev, Retry):
                    self.err.write(f"\n(retry {ev.attempt}: {ev.reason} {ev.detail}; {ev.change})\n")
                    printer.new_line()
                elif isinstance(ev, TurnFailed):
                    self.failures += 1
                    self.err.write(f"\nerror: {ev.error}\n")
                elif isinstance(ev, TurnFinished):
                    note = finish_note(ev, self.settings, "/set max_tokens=N")
                    if note:
                        self.err.write(f"\nnote: the answer was {note}\n")
        except KeyboardInterrupt:
            self.chat.cancel()
            for _ in self.chat.events():  # let the turn end so the record is complete
                pass
            raise
        finally:
            self.out.write("\n")
            self.out.flush()

    def _notice(self, message: str, severity: str) -> None:
        self.err.write(f"\n{'error' if severity == 'error' else 'note'}: {message}\n")

    def _line(self, text: str) -> None:
        self.out.write(("\n" if text else "") + text + "\n")
        self.out.flush()

    def _confirm(self, ev: ToolConfirmation) -> bool:
        if self.args.yes:
            return True
        if not self.interactive:
            self.err.write(f"\n(tool call {ev.recipient} refused: run with --yes to allow tools in a pipe)\n")
            return False
        if ev.note:
            self.err.write(f"\n{ev.note}")
        self.err.write(f"\nrun {ev.recipient}({ev.arguments[:500]})? [y/N] ")
        answer = self.stdin.readline().strip().lower()
        return answer in ("y", "yes")


def run(args: argparse.Namespace) -> int:
    if isinstance(sys.stdin, io.TextIOWrapper):  # invalid UTF-8 in a pipe: U+FFFD, never a crash at save
        sys.stdin.reconfigure(errors="replace")
    try:
        backend, settings = make_backend(args, progress=_progress)
    finally:
        _progress_done()
    _report_mcp(backend)
    try:
        line_chat = LineChat(backend, settings, args, sys.stdin, sys.stdout, sys.stderr)
    except BaseException:
        backend.close()  # e.g. --session names a session that cannot be opened
        release_mlx_streams()
        raise
    try:
        return line_chat.run()
    finally:
        line_chat.chat.close()  # the session and the backend (a no-op when run() got to close them)
        release_mlx_streams()


def _report_mcp(backend: Any) -> None:
    """A note on stderr for each MCP server that comes up or fails, now and later (from the MCP thread)."""
    hub = getattr(backend, "mcp", None)
    if not hub:
        return

    def note(state: Any) -> None:
        if state.status == "ready":
            sys.stderr.write(f"note: MCP server {state.name}: {len(state.tools)} tools\n")
        elif state.status == "failed":
            sys.stderr.write(f"note: MCP server {state.name} is off: {state.error}\n")

    hub.on_change = note
    for state in hub.states():
        note(state)


def _progress(fraction: float, message: str) -> None:
    """The model's loading, on one line of a terminal (the cursor stays at its start)."""
    if sys.stderr.isatty():
        sys.stderr.write(f"\r[{fraction:4.0%}] {message[:70]:70}\r")
        sys.stderr.flush()


def _progress_done() -> None:
    """Wipe the loading line: the chat's first line (or an error) takes its place."""
    if sys.stderr.isatty():
        sys.stderr.write(f"\r{'':77}\r")
        sys.stderr.flush()

"""``mlx-harmony-tui chat``: line-mode chat for pipes and plain terminals.

Each input line is a user message (``//text`` sends text starting with ``/``); lines starting with ``/`` are
commands. The answer streams to stdout as tokens arrive; analysis and tool calls are shown when asked. Every
turn is recorded in a session (SessionRecorder), so nothing is lost if the process dies mid-answer.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from mlx_harmony_tui.backends.base import TurnRequest
from mlx_harmony_tui.chat.events import (
    Delta,
    Retry,
    ToolCall,
    ToolConfirmation,
    ToolResult,
    TurnFailed,
    TurnFinished,
)
from mlx_harmony_tui.chat.settings import ChatSettings
from mlx_harmony_tui.errors import UserError
from mlx_harmony_tui.faces.common import (
    StreamPrinter,
    add_model_flags,
    add_settings_flags,
    apply_overrides,
    make_backend,
    parse_value,
    release_mlx_streams,
)

HELP = """commands:
  /help               this help
  /set key=value      change a setting: temperature, top_p, top_k, min_p, repetition_penalty,
                      max_tokens, seed, reasoning_effort, instructions, system
  /set                show the current settings
  /models             list the models available
  /save [title]       name the session (it is always recorded) and show where it is
  /quit               leave (also end of input)
  //text             send text that starts with '/'"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("chat", help="line-mode chat (stdin/stdout), for pipes and plain terminals")
    add_model_flags(p)
    add_settings_flags(p)
    p.add_argument("--show-analysis", action="store_true", help="print the model's reasoning")
    p.add_argument("--show-tools", action="store_true", help="print tool calls and results")
    p.add_argument("--yes", action="store_true", help="run tool calls without asking")
    p.set_defaults(func=run)


class LineChat:
    """The chat loop, separated from argument parsing so tests can drive it with any streams."""

    def __init__(self, backend: Any, settings: ChatSettings, args: argparse.Namespace,
                 stdin: TextIO, stdout: TextIO, stderr: TextIO) -> None:
        from mlx_harmony_tui.sessions.recorder import SessionRecorder
        from mlx_harmony_tui.sessions.store import SessionStore

        self.backend = backend
        self.settings = settings
        self.args = args
        self.stdin, self.out, self.err = stdin, stdout, stderr
        self.store = SessionStore()
        self.session = self.store.create(model=backend.model_name)
        self.recorder = SessionRecorder(self.store, self.session)
        self.failures = 0
        self.interactive = stdin.isatty()

    def run(self) -> int:
        if self.interactive:
            self.err.write(f"chat with {self.backend.model_name} (/help for commands)\n")
        while True:
            if self.interactive:
                self.out.write("> ")
                self.out.flush()
            line = self.stdin.readline()
            if not line:
                break
            text = line.rstrip("\r\n")
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
        self.recorder.finish()
        return 1 if self.failures else 0

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
            else:
                self.err.write(f"unknown command /{name} (/help lists them; //text sends text starting with '/')\n")
        except UserError as e:
            self.err.write(f"error: {e}\n")
        self.out.flush()
        return None

    def set(self, rest: str) -> None:
        if not rest:
            s = self.settings
            sp = s.sampling
            self.out.write(f"temperature={sp.temperature} top_p={sp.top_p} top_k={sp.top_k} min_p={sp.min_p} "
                           f"repetition_penalty={sp.repetition_penalty} max_tokens={s.max_tokens} seed={s.seed} "
                           f"reasoning_effort={s.reasoning_effort}\n")
            return
        key, eq, value = rest.partition("=")
        if not eq:
            raise UserError("usage: /set key=value")
        key = key.strip().replace("-", "_")
        apply_overrides(self.settings, {key: parse_value(key, value)})
        self.out.write(f"{key} = {value.strip()}\n")

    def models(self) -> None:
        list_models = getattr(self.backend, "list_models", None)
        if callable(list_models):
            names = list_models()
        else:
            from mlx_harmony_tui.backends.discovery import find_models
            from mlx_harmony_tui.faces.common import load_app_config

            cfg = load_app_config(self.args)
            names = [f"{e.name}  ({e.path})" for e in find_models(cfg.models_dirs)]
        self.out.write(f"current: {self.backend.model_name}\n")
        for n in names:
            self.out.write(f"  {n}\n")

    def save(self, title: str) -> None:
        if title:
            self.session.title = title
        self.recorder.save()
        self.out.write(f"saved session {self.session.id} '{self.session.title}' -> {self.store.path(self.session.id)}\n")

    def turn(self, text: str) -> None:
        from mlx_harmony_tui.sessions.recorder import to_hmessages

        self.recorder.add_user(text)
        handle = self.backend.start_turn(TurnRequest(to_hmessages(self.session), self.settings))
        show_tools = self.args.show_tools
        printer = StreamPrinter(self.out, self.args.show_analysis)
        try:
            for ev in handle.events():
                self.recorder.on_event(ev)
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
                    handle.confirm(ev.call_id, self._confirm(ev))
                elif isinstance(ev, Retry):
                    self.err.write(f"\n(retry {ev.attempt}: {ev.reason} {ev.detail}; {ev.change})\n")
                    printer.new_line()
                elif isinstance(ev, TurnFailed):
                    self.failures += 1
                    self.err.write(f"\nerror: {ev.error}\n")
                elif isinstance(ev, TurnFinished) and ev.reason not in ("stop", "cancelled"):
                    self.err.write(f"\n(stopped: {ev.reason})\n")
        except KeyboardInterrupt:
            handle.cancel()
            for ev in handle.events():  # let the turn end so the record is complete
                self.recorder.on_event(ev)
            raise
        finally:
            self.recorder.finish()
            self.out.write("\n")
            self.out.flush()

    def _line(self, text: str) -> None:
        self.out.write(("\n" if text else "") + text + "\n")
        self.out.flush()

    def _confirm(self, ev: ToolConfirmation) -> bool:
        if self.args.yes:
            return True
        if not self.interactive:
            self.err.write(f"\n(tool call {ev.recipient} refused: run with --yes to allow tools in a pipe)\n")
            return False
        self.err.write(f"\nrun {ev.recipient}({ev.arguments[:500]})? [y/N] ")
        answer = self.stdin.readline().strip().lower()
        return answer in ("y", "yes")


def run(args: argparse.Namespace) -> int:
    backend, settings = make_backend(args, progress=_progress)
    try:
        return LineChat(backend, settings, args, sys.stdin, sys.stdout, sys.stderr).run()
    finally:
        backend.close()
        release_mlx_streams()


def _progress(fraction: float, message: str) -> None:
    if sys.stderr.isatty():
        sys.stderr.write(f"\r[{fraction:4.0%}] {message[:70]:70}")
        if fraction >= 1:
            sys.stderr.write("\n")
        sys.stderr.flush()

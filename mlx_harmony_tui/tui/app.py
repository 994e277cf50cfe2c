"""The Textual app: widgets, key bindings and drawing over one ChatController (controller/), which owns the
conversation, its session record and the backend.

The model runs on a worker thread (the backend's); a 25 Hz timer drains the turn's events through the
controller (which records them) and draws them in one batch (tui/turn_view.py), so the UI never waits for
the model and the model never waits for the UI.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from textual.app import App
from textual.containers import VerticalScroll
from textual.css.query import NoMatches
from textual.screen import Screen

from mlx_harmony_tui import paths
from mlx_harmony_tui.backends.base import Backend, TurnHandle, leaves_defaults_to_server
from mlx_harmony_tui.chat import events as ev
from mlx_harmony_tui.chat.settings import ChatSettings
from mlx_harmony_tui.controller import ChatController
from mlx_harmony_tui.errors import UserError
from mlx_harmony_tui.harmony.messages import HMessage
from mlx_harmony_tui.tui import mcp_notices
from mlx_harmony_tui.tui.actions import ScreenActions
from mlx_harmony_tui.tui.branch_actions import BranchActions
from mlx_harmony_tui.tui.keymap import validate_keymap
from mlx_harmony_tui.tui.latency import LatencyProbe
from mlx_harmony_tui.tui.loading import ModelLoading
from mlx_harmony_tui.tui.quick_actions import QuickActions
from mlx_harmony_tui.tui.screens.chat import ChatScreen
from mlx_harmony_tui.tui.screens.dialogs import ConfirmScreen
from mlx_harmony_tui.tui.session_view import clear_tool_log, show_session
from mlx_harmony_tui.tui.textual_patch import one_layout_pass_per_change
from mlx_harmony_tui.tui.themes import load_themes
from mlx_harmony_tui.tui.turn_view import TurnView
from mlx_harmony_tui.tui.widgets.chat_input import ChatInput
from mlx_harmony_tui.tui.widgets.header import REST_SERVER_DEFAULTS, SEP, SERVER_DEFAULTS
from mlx_harmony_tui.tui.widgets.messages import AssistantMessage, UserMessage
from mlx_harmony_tui.tui.widgets.metrics_bar import MetricsBar
from mlx_harmony_tui.tui.widgets.tool_log import ToolLog

PUMP_HZ = 25  # how often the UI drains the turn's queue
# The model thread's per-token Python needs the GIL back as soon as MLX returns; with Python's default 5 ms
# it waits out a whole slice of UI work each time. 1 ms measured the best balance of tok/s and key latency.
GIL_SWITCH_S = float(os.environ.get("MHT_GIL_SWITCH_S", "0.001"))
BackendLoader = Callable[[str, Callable[[float, str], None]], Backend]


def default_loader(model: str, progress: Callable[[float, str], None]) -> Backend:
    from mlx_harmony_tui.backends.local import LocalBackend

    return LocalBackend.load(model, progress=progress)


DEMO_NOTE = "tiny and built in: knows greetings, this app, short lists\nand arithmetic (try: What is 37*12?)"


def welcome_text(model: str, config_file: Path | None = None) -> str:
    """First-run hints, a line each within the 72 columns the panel has at 80 (longer ones wrapped raggedly)."""
    about = f"Model: {model}" + (f", {DEMO_NOTE}" if model == "demo" else "")
    return (
        f"{about}\n"
        f"Sessions: {paths.sessions_dir()}\n"
        f"Config:   {config_file or paths.config_file()}\n"
        "For gpt-oss-20b: mlx-harmony-tui models pull openai/gpt-oss-20b, then\n"
        "start with --model openai/gpt-oss-20b (or a folder), set  model = \"...\"\n"
        "in the config, or press ctrl+o.\n"
        "Enter sends, ctrl+j adds a line (or shift+enter), esc stops the reply,\n"
        "F1 lists every key, ctrl+p every command, ctrl+q quits."
    )


class HarmonyApp(ModelLoading, ScreenActions, BranchActions, QuickActions, App[None]):
    TITLE = "mlx-harmony-tui"
    CSS_PATH = ["screens/chat.tcss"]  # app-level: a default screen's own CSS_PATH is not loaded in time

    ERROR_TIMEOUT = 15.0  # an error (a failed download, a bad path) must stay long enough to be read

    def notify(self, message: str, *, title: str = "", severity: str = "information",
               timeout: float | None = None, markup: bool = True) -> None:
        """Errors without their own timeout stay ERROR_TIMEOUT seconds, not Textual's 5 (a background
        download that fails while the user types was gone before it was read). Never markup (``markup`` is
        ignored; screens pass True): messages carry paths, titles and config text, where "[keymap]" vanished
        and "[/b]" raised a MarkupError."""
        if timeout is None and severity == "error":
            timeout = self.ERROR_TIMEOUT
        super().notify(message, title=title, severity=severity, timeout=timeout, markup=False)  # type: ignore[arg-type]

    def action_help_quit(self) -> None:
        """ctrl+c (Textual's hint) without markup, as every notification here: the key name, plainly."""
        keys = [key for key, b in self.active_bindings.items() if b.binding.action in ("quit", "app.quit")]
        if keys:
            self.notify(f"Press {keys[0]} to quit the app", title="Do you want to quit?")

    def __init__(
        self,
        *,
        model: str = "demo",
        backend: Backend | None = None,
        loader: BackendLoader | None = None,
        settings: ChatSettings | None = None,
        session_id: str | None = None,
        keymap: dict[str, Any] | None = None,
        theme: str | None = None,
        fallback_theme: str | None = None,
        models_dirs: Iterable[str | Path] = (),
        show_welcome: bool = True,
        on_theme_change: Callable[[str], None] | None = None,
        startup_notes: Iterable[str] = (),
        config_file: Path | None = None,
        remote: str | None = None,
        resumed_settings: Callable[[ChatSettings], ChatSettings] | None = None,
    ) -> None:
        """``config_file``: the file given with --config, shown instead of the default location; ``remote``:
        the server's URL when the loader connects to one (the model is the server's: ctrl+o reconnects);
        ``resumed_settings``: applied to the settings of the session resumed with ``session_id`` (the command
        line's flags, which win over what the session recorded: docs/config.md)."""
        super().__init__()
        self.chat = ChatController(backend, settings, model_ref=model, notify=self._notify_from_chat)
        self.view = TurnView(self)
        self.loader = loader or default_loader
        self.loading = False
        self.models_dirs = list(models_dirs)
        self._resume_id = session_id
        self._resumed_settings = resumed_settings
        self._keymap, keymap_problems = validate_keymap(keymap)
        self._theme_name = theme
        self._fallback_theme = fallback_theme
        self.load_error: str | None = None  # why the model could not be loaded (shown when sending)
        self.next_backend: Backend | None = None  # loaded while a reply streamed: used once it ends
        self._quitting = False
        self._show_welcome = show_welcome
        self._on_theme_change = on_theme_change
        self.pump_count = 0  # batches applied (measured by scripts/ui_latency.py)
        self.theme_problems: list[str] = []
        self.startup_notes = [*startup_notes, *keymap_problems]  # config problems, shown once the screen is up
        self.config_file = config_file or paths.config_file()
        self.remote = remote
        self.latency_probe = LatencyProbe.from_env()  # key-to-frame timing for scripts/ui_latency.py

    # ---- the controller's state, as the app's (tests and scripts read these) --------------------------
    @property
    def backend(self) -> Backend | None:
        return self.chat.backend

    @backend.setter
    def backend(self, backend: Backend | None) -> None:
        self.chat.backend = backend

    @property
    def settings(self) -> ChatSettings:
        return self.chat.settings

    @property
    def history(self) -> list[HMessage]:
        return self.chat.history

    @property
    def session_id(self) -> str | None:
        return self.chat.session_id

    @property
    def model_ref(self) -> str:
        return self.chat.model_ref

    @property
    def handle(self) -> TurnHandle | None:
        return self.chat.handle

    @property
    def generating(self) -> bool:
        return self.chat.generating

    def _notify_from_chat(self, message: str, severity: str) -> None:
        if severity == "error":
            self.notify(message, title="Session", severity="error", timeout=8)
        else:
            self.notify(message, severity=severity)  # type: ignore[arg-type]

    # ---- start-up -------------------------------------------------------------------------------------
    def get_default_screen(self) -> Screen[Any]:
        return ChatScreen(welcome_text(self.model_ref, self.config_file) if self._show_welcome else "")

    def on_mount(self) -> None:
        one_layout_pass_per_change()
        self._saved_switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(GIL_SWITCH_S)
        themes, self.theme_problems = load_themes()
        for t in themes:
            self.register_theme(t)
        if self._theme_name:
            if self._theme_name in self.available_themes:
                self.theme = self._theme_name
            else:
                if self._fallback_theme in self.available_themes:
                    self.theme = self._fallback_theme  # the configured theme, not Textual's default
                self.notify(f"Unknown theme {self._theme_name!r}; using {self.theme}", severity="warning")
        for p in [*self.startup_notes, *self.theme_problems]:
            self.notify(p, severity="warning", timeout=10)
        if self._keymap:
            self.set_keymap(self._keymap)
        self._saved_theme = self.theme
        self.theme_changed_signal.subscribe(self, self._theme_changed)

    def on_ready(self) -> None:
        """The chat screen exists now: start the pump and the model."""
        self.set_interval(1 / PUMP_HZ, self.pump)
        for p in self.chat.store.problems:
            self.notify(p, severity="warning")
        if self._resume_id:
            self.call_later(self._resume, self._resume_id)
        if self.backend is None:
            self.start_loading(self.model_ref)
        else:
            self._backend_ready()

    def _theme_changed(self, theme: Any) -> None:
        """Persist only real changes (the start-up theme arrives here too)."""
        if self._on_theme_change is not None and theme.name != self._saved_theme:
            self._saved_theme = theme.name
            try:
                self._on_theme_change(theme.name)
            except UserError as e:  # e.g. a config file that is not valid TOML is never overwritten
                self.notify(str(e), severity="warning", timeout=10)

    def _backend_ready(self) -> None:
        assert self.backend is not None
        mcp_notices.watch(self, self.backend)
        self.chat.model_ref = self.backend.model_name
        self.screen_chat.query_one(MetricsBar).context_limit = self.backend.context_limit
        self._update_header()
        self.chat.restore_cache()

    def _update_header(self) -> None:
        s = self.settings
        sp = s.sampling
        # most telling first: a narrow terminal drops the end (tools= came last and was the first to go)
        bits = [self.backend.model_name if self.backend else "no model"]
        if s.builtin_tools:
            bits.append("tools=" + ",".join(s.builtin_tools))
        shown = [("reasoning_effort", f"effort={s.reasoning_effort}", True),
                 ("temperature", f"T={sp.temperature:g}", True), ("top_p", f"top_p={sp.top_p:g}", True),
                 ("top_k", f"top_k={sp.top_k}", bool(sp.top_k)),
                 ("min_p", f"min_p={sp.min_p:g}", bool(sp.min_p)),
                 ("repetition_penalty", f"rep={sp.repetition_penalty:g}", sp.repetition_penalty != 1.0),
                 ("max_tokens", f"max={s.max_tokens}", True)]
        # a remote server picks what the user did not set: its values are unknown here, ours would mislead
        server = leaves_defaults_to_server(self.backend)
        mine = [text for key, text, on in shown if (key in s.explicit if server else on)]
        bits += mine
        if server and any(key not in s.explicit for key, _, _ in shown):
            bits.append(REST_SERVER_DEFAULTS if mine else SERVER_DEFAULTS)  # kept when the line is fitted
        self.sub_title = SEP.join(bits)

    @property
    def screen_chat(self) -> ChatScreen:
        for s in self.screen_stack:
            if isinstance(s, ChatScreen):
                return s
        raise RuntimeError("no chat screen")

    @property
    def conversation(self) -> VerticalScroll:
        return self.screen_chat.query_one("#conversation", VerticalScroll)

    # ---- turns ----------------------------------------------------------------------------------------
    async def on_chat_input_submitted(self, message: ChatInput.Submitted) -> None:
        if await self.send(message.text):
            self.screen_chat.query_one(ChatInput).clear()  # a message that was not sent stays in the box

    async def send(self, text: str) -> bool:
        """Send a message; False (with the reason shown) when it cannot be sent now."""
        if self.generating:
            self.notify("Still generating: esc stops it first", severity="warning")
            return False
        if self.backend is None:
            if self.loading:
                self.notify("The model is still loading; your message stays in the box", severity="warning")
            else:
                reason = f"The model could not be loaded: {self.load_error}\n" if self.load_error else ""
                self.notify(f"{reason}{self.pick_hint()}", title="No model", severity="error", timeout=10)
            return False
        for w in self.conversation.query("#welcome"):
            await w.remove()
        greeting = self.chat.greeting  # the config's greeting opens a new conversation
        self.chat.add_user(text)
        self.show_attachments()  # they went with this message
        if greeting:
            await self.conversation.mount(AssistantMessage(done=[("final", greeting)]))
        session = self.chat.session
        position = len(session.messages) - 1 if session is not None else None
        branch = self.chat.branch_points().get(position) if position is not None else None
        await self.conversation.mount(UserMessage(self.chat.history[-1].text, position=position, branch=branch))
        await self.start_turn()
        return True

    async def start_turn(self) -> None:
        view = self.view
        for note in self.conversation.query(".partial-note"):
            await note.remove()  # "earlier versions here": this turn fills the place, its number says so
        session = self.chat.session
        position = len(session.messages) if session is not None else None
        others = self.chat.branch_points().get(position) if position is not None else None
        branch = (others[1] + 1, others[1] + 1) if others else None  # a regenerated reply: the newest version
        view.current = AssistantMessage(position=position, branch=branch)
        await self.conversation.mount(view.current)
        self.conversation.scroll_end(animate=False)
        bar = self.screen_chat.query_one(MetricsBar)
        bar.reset_spark()
        bar.set_status("generating")
        try:
            self.chat.start_turn()
        except UserError as e:
            await view.current.notice(str(e), error=True)
            view.current = None
            bar.set_status("ready")

    async def pump(self) -> None:
        """One batch: everything queued since the last tick, recorded by the controller, then drawn."""
        try:
            handle = self.chat.handle
            if handle is None:
                return
            events, done = self.chat.drain()
            if events:
                self.pump_count += 1
            if events or done or self.view.pending:
                await self.view.apply(events, final=done)
            if done and self.chat.handle is handle:
                msg, self.view.current = self.view.current, None
                if msg is not None:
                    await msg.finish()
                self.chat.end_turn()
                self.screen_chat.query_one(MetricsBar).set_status("ready")
                if self.next_backend is not None and not self._quitting:  # quitting: on_unmount closes it
                    backend, self.next_backend = self.next_backend, None
                    self.switch_backend(backend)
        except NoMatches:
            pass  # the chat screen's widgets are gone: the app is shutting down

    def confirm_tool(self, e: ev.ToolConfirmation) -> None:
        body = f"{e.note}\n\n{e.arguments}" if e.note else e.arguments  # e.g. "No OS sandbox: ..."
        self.push_screen(ConfirmScreen(f"Run tool {e.recipient}?", body), self.chat.confirmation(e))

    async def wait_idle(self, timeout: float = 60.0) -> None:
        """For tests and scripts: until the running turn has been fully applied."""
        import asyncio

        deadline = time.monotonic() + timeout
        while self.generating and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    # ---- actions ----------------------------------------------------------------------------------------
    def action_stop(self) -> None:
        if self.generating:
            self.chat.cancel()
            self.screen_chat.query_one(MetricsBar).set_status("stopping")

    async def _stop_and_wait(self) -> None:
        if self.generating:
            self.action_stop()
            await self.wait_idle(5)

    async def action_new_session(self) -> None:
        await self._stop_and_wait()
        self.view.unfollow()
        await self.conversation.remove_children()
        await clear_tool_log(self.screen_chat.query_one(ToolLog))
        self.chat.new_session()

    async def _resume(self, id_or_prefix: str) -> None:
        """--session at startup: open it, then let the command line's settings win over the session's."""
        if await self.open_session(id_or_prefix) and self._resumed_settings is not None:
            self.chat.set_settings(self._resumed_settings(self.chat.settings))
            self._update_header()

    async def open_session(self, id_or_prefix: str) -> bool:
        """Show a saved session and continue it; False (with the reason shown) when it cannot be opened."""
        await self._stop_and_wait()
        try:
            session = self.chat.open_session(id_or_prefix)
        except UserError as e:
            self.notify(str(e), title="Session", severity="error", timeout=10)
            return False
        self.view.unfollow()
        await show_session(self.conversation, self.screen_chat.query_one(ToolLog), session)
        self._update_header()
        return True

    # ---- shutting down --------------------------------------------------------------------------------
    def on_unmount(self) -> None:
        """However the app ends, the session's lock is released, its prompt cache saved, the model freed."""
        self._quitting = True
        self.chat.close()
        if self.next_backend is not None:
            self.next_backend.close()
        if self.latency_probe is not None:
            self.latency_probe.save()
        sys.setswitchinterval(getattr(self, "_saved_switch_interval", sys.getswitchinterval()))

    def post_display_hook(self) -> None:
        """Textual calls this after each frame is written: the probe's end of a key's latency."""
        if self.latency_probe is not None:
            self.latency_probe.frame_written()

    async def action_quit(self) -> None:
        self._quitting = True  # a model still loading stops at its next layer
        self.chat.cancel()
        await self.wait_idle(5)
        self.chat.close_session()
        self.exit()

"""The Textual app: owns the backend, the conversation and the running turn, and feeds events to widgets.

The model runs on a worker thread (the backend's); a 25 Hz timer drains the turn's queue and applies the
events in one batch, so the UI never waits for the model and the model never waits for the UI.
"""

from __future__ import annotations

import copy
import gc
import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from textual import work
from textual.app import App, SystemCommand
from textual.containers import VerticalScroll
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.widgets import Collapsible, ProgressBar, Static

from mlx_harmony_tui import paths
from mlx_harmony_tui.backends.base import Backend, TurnHandle, TurnRequest
from mlx_harmony_tui.chat import events as ev
from mlx_harmony_tui.chat.settings import ChatSettings
from mlx_harmony_tui.errors import UserError
from mlx_harmony_tui.harmony.messages import HMessage
from mlx_harmony_tui.tui.keymap import CHAT_BINDINGS, normalize
from mlx_harmony_tui.tui.latency import LatencyProbe
from mlx_harmony_tui.tui.screens.chat import ChatScreen
from mlx_harmony_tui.tui.screens.dialogs import ConfirmScreen
from mlx_harmony_tui.tui.screens.help import HelpScreen
from mlx_harmony_tui.tui.screens.models import ModelPickerScreen
from mlx_harmony_tui.tui.screens.params import ParamsScreen
from mlx_harmony_tui.tui.screens.sessions import SessionBrowserScreen
from mlx_harmony_tui.tui.themes import load_themes
from mlx_harmony_tui.tui.widgets.chat_input import ChatInput
from mlx_harmony_tui.tui.widgets.messages import AssistantMessage, UserMessage
from mlx_harmony_tui.tui.widgets.metrics_bar import MetricsBar
from mlx_harmony_tui.tui.widgets.tool_log import ToolLog

PUMP_HZ = 25  # how often the UI drains the turn's queue
TEXT_FLUSH_S = float(os.environ.get("MHT_TEXT_FLUSH_S", "0.2"))  # streamed text is written at most this often
# The model thread's per-token Python needs the GIL back as soon as MLX returns; with Python's default 5 ms
# it waits out a whole slice of UI work each time. 1 ms measured the best balance of tok/s and key latency.
GIL_SWITCH_S = float(os.environ.get("MHT_GIL_SWITCH_S", "0.001"))
BackendLoader = Callable[[str, Callable[[float, str], None]], Backend]


def one_layout_pass_per_change() -> None:
    """Textual's full reflow hands every resized widget its new virtual size through a reactive declared
    with layout=True, which queues a second, redundant reflow: two layout passes per streamed text write.
    Setting it without that refresh (what Textual's own scroll-only reflow does) halves them; the
    scrollbars are still updated. Measured in a streamed reply: 146 -> 115 layout passes, UI thread CPU
    -27% (docs/user-guide.md). Applied once, process-wide; MHT_LAYOUT_PATCH=0 turns it off."""
    from textual.widget import Widget

    original = Widget._size_updated
    if getattr(original, "_mht_one_pass", False) or os.environ.get("MHT_LAYOUT_PATCH", "1") == "0":
        return
    import inspect

    if list(inspect.signature(original).parameters) != ["self", "size", "virtual_size", "container_size", "layout"]:
        return  # a Textual whose private method changed: keep its behaviour rather than guess

    def size_updated(self: Widget, size: Any, virtual_size: Any, container_size: Any, layout: bool = True) -> bool:
        return original(self, size, virtual_size, container_size, layout=False)

    size_updated._mht_one_pass = True  # type: ignore[attr-defined]
    Widget._size_updated = size_updated  # type: ignore[method-assign]


def default_loader(model: str, progress: Callable[[float, str], None]) -> Backend:
    from mlx_harmony_tui.backends.local import LocalBackend

    return LocalBackend.load(model, progress=progress)


def welcome_text(model: str, config_file: Path | None = None) -> str:
    return (
        f"Model: {model}\n"
        f"Sessions: {paths.sessions_dir()}\n"
        f"Config:   {config_file or paths.config_file()}\n"
        "To chat with gpt-oss-20b: start with --model PATH (a folder with config.json and *.safetensors),\n"
        "or set  model = \"PATH\"  in the config file, or pick one with ctrl+o.\n"
        "Enter sends, shift+enter / ctrl+j adds a line, esc stops, F1 lists every key."
    )


class HarmonyApp(App[None]):
    TITLE = "mlx-harmony-tui"
    CSS_PATH = ["screens/chat.tcss"]  # app-level: a default screen's own CSS_PATH is not loaded in time
    _analysis_break = False  # the last finished message was analysis: the next one starts a paragraph

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
        models_dirs: Iterable[str | Path] = (),
        show_welcome: bool = True,
        on_theme_change: Callable[[str], None] | None = None,
        startup_notes: Iterable[str] = (),
        config_file: Path | None = None,
    ) -> None:
        """``config_file``: the file given with --config, shown instead of the default location."""
        super().__init__()
        self.model_ref = model
        self.backend: Backend | None = backend
        self.loader = loader or default_loader
        self.settings = settings or ChatSettings()
        self.history: list[HMessage] = []
        self.handle: TurnHandle | None = None
        self.current: AssistantMessage | None = None
        self.loading = False
        self.models_dirs = list(models_dirs)
        self.session_id: str | None = None  # set once the session is open (the argument may be a prefix)
        self._resume_id = session_id
        self._keymap = normalize(keymap)
        self._theme_name = theme
        self._show_welcome = show_welcome
        self._on_theme_change = on_theme_change
        self._turn_started_at = 0.0
        self._text_buf: list[tuple[str, list[str]]] = []
        self._last_text_flush = 0.0
        self._live_metrics: ev.Metrics | None = None  # the newest live figures, not yet shown
        self._settings_dirty = False
        self.pump_count = 0  # batches applied (measured by scripts/ui_latency.py)
        self.theme_problems: list[str] = []
        self.startup_notes = list(startup_notes)  # config problems, shown once the screen is up
        self.config_file = config_file or paths.config_file()
        self.store: Any = None  # sessions.store.SessionStore
        self.recorder: Any = None  # sessions.recorder.SessionRecorder of the open session
        self._cache_loaded_for: str | None = None
        self.latency_probe = LatencyProbe.from_env()  # key-to-frame timing for scripts/ui_latency.py

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
        from mlx_harmony_tui.sessions.store import SessionStore

        self.store = SessionStore()
        for p in self.store.problems:
            self.notify(p, severity="warning")
        if self._resume_id:
            self.call_later(self.open_session, self._resume_id)
        if self.backend is None:
            self.load_model(self.model_ref)
        else:
            self._backend_ready()

    def _theme_changed(self, theme: Any) -> None:
        """Persist only real changes (the start-up theme arrives here too)."""
        if self._on_theme_change is not None and theme.name != self._saved_theme:
            self._saved_theme = theme.name
            self._on_theme_change(theme.name)

    def _backend_ready(self) -> None:
        assert self.backend is not None
        self.model_ref = self.backend.model_name
        self.screen_chat.query_one(MetricsBar).context_limit = self.backend.context_limit
        self._update_header()
        self._restore_cache()

    def _update_header(self) -> None:
        s = self.settings
        sp = s.sampling
        name = self.backend.model_name if self.backend else "no model"
        bits = [name, f"T={sp.temperature:g}", f"top_p={sp.top_p:g}"]
        if sp.top_k:
            bits.append(f"top_k={sp.top_k}")
        if sp.min_p:
            bits.append(f"min_p={sp.min_p:g}")
        if sp.repetition_penalty != 1.0:
            bits.append(f"rep={sp.repetition_penalty:g}")
        bits.append(f"effort={s.reasoning_effort}")
        bits.append(f"max={s.max_tokens}")
        if s.builtin_tools:
            bits.append("tools=" + ",".join(s.builtin_tools))
        self.sub_title = " · ".join(bits)

    # ---- model loading --------------------------------------------------------------------------------
    @work(thread=True, exclusive=True, group="load")
    def load_model(self, model: str) -> None:
        """Slow (reads GBs): runs on a thread; a failure keeps the previous model."""
        self.loading = True
        self.call_from_thread(self._show_progress, 0.0, f"loading {model}")

        def progress(frac: float, msg: str) -> None:
            self.call_from_thread(self._show_progress, frac, msg)

        try:
            backend = self.loader(model, progress)
        except UserError as e:
            self.call_from_thread(self._load_failed, str(e))
            return
        except Exception as e:  # noqa: BLE001 - show it, keep the previous model
            self.call_from_thread(self._load_failed, f"{type(e).__name__}: {e}")
            return
        self.call_from_thread(self._load_done, backend)

    def _show_progress(self, frac: float, msg: str) -> None:
        bar = self.screen_chat.query_one("#load-bar")
        bar.remove_class("hidden")
        self.screen_chat.query_one("#load-text", Static).update(f"{msg} ")
        self.screen_chat.query_one("#load-progress", ProgressBar).update(progress=max(0.0, min(1.0, frac)))
        self.screen_chat.query_one(MetricsBar).set_status("loading")

    def _load_failed(self, message: str) -> None:
        self.loading = False
        self.screen_chat.query_one("#load-bar").add_class("hidden")
        self.notify(message, title="Model not loaded", severity="error", timeout=10)
        self.screen_chat.query_one(MetricsBar).set_status("ready" if self.backend else "no model")

    def _load_done(self, backend: Backend) -> None:
        self.loading = False
        old, self.backend = self.backend, backend
        if old is not None and old is not backend:
            old.close()
            del old
            gc.unfreeze()  # the previous model's objects may be in the frozen generation: let them go
            gc.collect()
        # Python's full collections walked every object of the app and the model: 30-60 ms pauses of the
        # UI, several per streamed reply. What exists once the model is loaded lives for the session;
        # frozen, those pauses measured 7-15 ms (headless, tiny model).
        gc.freeze()
        self.screen_chat.query_one("#load-bar").add_class("hidden")
        self.screen_chat.query_one(MetricsBar).set_status("ready")
        self._backend_ready()
        self.notify(f"Model ready: {backend.model_name}")

    @property
    def screen_chat(self) -> ChatScreen:
        for s in self.screen_stack:
            if isinstance(s, ChatScreen):
                return s
        raise RuntimeError("no chat screen")

    # ---- sending --------------------------------------------------------------------------------------
    @property
    def conversation(self) -> VerticalScroll:
        return self.screen_chat.query_one("#conversation", VerticalScroll)

    @property
    def generating(self) -> bool:
        return self.handle is not None

    async def on_chat_input_submitted(self, message: ChatInput.Submitted) -> None:
        await self.send(message.text)
        self.screen_chat.query_one(ChatInput).clear()

    async def send(self, text: str) -> None:
        if self.generating:
            self.notify("Still generating: esc stops it first", severity="warning")
            return
        if self.backend is None:
            self.notify("No model loaded yet", severity="warning")
            return
        for w in self.conversation.query("#welcome"):
            await w.remove()
        self.history.append(HMessage(role="user", text=text))
        if self._ensure_session():
            self.recorder.set_params(settings_params(self.settings))
            self.recorder.add_user(text)
            self._save_settings_to_session()
            self.history = self._session_history()
        await self.conversation.mount(UserMessage(text))
        await self._start_turn()

    async def _start_turn(self) -> None:
        assert self.backend is not None
        self.current = AssistantMessage()
        await self.conversation.mount(self.current)
        self.conversation.scroll_end(animate=False)
        self.screen_chat.query_one(MetricsBar).reset_spark()
        self.screen_chat.query_one(MetricsBar).set_status("generating")
        request = TurnRequest(messages=list(self.history), settings=copy.deepcopy(self.settings))
        self._turn_started_at = time.perf_counter()
        try:
            self.handle = self.backend.start_turn(request)
        except UserError as e:
            await self.current.notice(str(e), error=True)
            self.current = None
            self.screen_chat.query_one(MetricsBar).set_status("ready")

    # ---- applying events ------------------------------------------------------------------------------
    async def pump(self) -> None:
        """One batch: everything queued since the last tick; consecutive deltas become one write."""
        try:
            await self._pump()
        except NoMatches:
            pass  # the chat screen's widgets are gone: the app is shutting down

    async def _pump(self) -> None:
        handle = self.handle
        if handle is None:
            return
        events, done = handle.drain()
        if events:
            self.pump_count += 1
            self._record(events)
        if events or done or self._text_buf or self._live_metrics:
            await self.apply(events, final=done)
        if done and self.handle is handle:
            await self._turn_ended()

    async def apply(self, events: list[Any], final: bool = False) -> None:
        """Other events apply at once; streamed text is buffered and written at most every TEXT_FLUSH_S,
        because each write re-lays out the screen, and that work competes with the model for the CPU."""
        for e in events:
            if isinstance(e, ev.Metrics) and not e.final:
                self._live_metrics = e  # shown with the next text write: one frame for both
                continue
            if isinstance(e, ev.Delta):
                if e.recipient:  # tool-call arguments: shown in the tool pane via ToolCallArgs
                    continue
                text = e.text
                if e.channel == "analysis" and self._analysis_break:
                    # A new analysis message (e.g. after a tool result): its own paragraph.
                    self._analysis_break = False
                    if self.current is not None and self.current.analysis_text:
                        text = "\n\n" + text
                if self._text_buf and self._text_buf[-1][0] == e.channel:
                    self._text_buf[-1][1].append(text)
                else:
                    self._text_buf.append((e.channel, [text]))
                continue
            await self._flush_text()
            await self.apply_one(e)
        if final or time.perf_counter() - self._last_text_flush >= TEXT_FLUSH_S:
            await self._flush_text()

    async def _flush_text(self) -> None:
        """Write the buffered text and the latest live metrics in the same tick, so they share a frame."""
        buf, self._text_buf = self._text_buf, []
        m, self._live_metrics = self._live_metrics, None
        if m is not None:
            self.screen_chat.query_one(MetricsBar).show(m)
        msg = self.current
        if not buf or msg is None:
            return
        self._last_text_flush = time.perf_counter()
        self._follow()
        with self.batch_update():  # text and metrics in one layout and one frame
            for channel, parts in buf:
                await msg.write(channel, "".join(parts))
        # A screen update tick that lands inside a batch (ours, or Markdown.append's around its mounts) is
        # skipped and pauses the screen's update timer until the screen next goes idle, which in a busy
        # stream can be a second later: a key typed meanwhile is handled but not drawn (measured: 0.5-1 s
        # outliers in scripts/ui_latency.py). Prompting the screen now resumes it at once.
        self.screen.check_idle()

    def _follow(self) -> None:
        """Keep the newest text in view without a scroll frame per write: anchored, the conversation
        scrolls inside the layout pass that grows it. Anchored only once it overflows (Textual 8.2.8 gives
        short anchored content a negative offset, textual#6652); a user who scrolled up is left alone, and
        following resumes once they are back within two lines of the end (textual#6677)."""
        conv = self.conversation
        if conv.max_scroll_y <= 0:
            return
        if not conv.is_anchored:
            conv.anchor()  # first overflow of this turn, which started at the end (_start_turn)
        elif conv.max_scroll_y - 2 <= conv.scroll_y < conv.max_scroll_y:
            conv.scroll_end(animate=False)  # back near the end: re-engage the released anchor

    def _unfollow(self) -> None:
        """Before the conversation shrinks (see _follow)."""
        self.conversation.anchor(False)

    async def apply_one(self, e: Any) -> None:
        msg = self.current
        bar = self.screen_chat.query_one(MetricsBar)
        tools = self.screen_chat.query_one(ToolLog)
        if isinstance(e, ev.MessageDone):
            if e.channel == "analysis":
                self._analysis_break = True  # stays set across the tool call that may follow
            self.history.append(
                HMessage(role="assistant", text=e.text, channel=e.channel, recipient=e.recipient,
                         content_type=e.content_type)
            )
        elif isinstance(e, ev.TurnStarted):
            if e.attempt and msg is not None:
                await msg.notice(f"↻ attempt {e.attempt + 1}")
        elif isinstance(e, ev.Metrics):
            bar.show(e)
        elif isinstance(e, ev.PrefillProgress):
            bar.set_status(f"prefill {e.done}/{e.total}")
        elif isinstance(e, ev.ToolCallStarted):
            tools.remove_class("hidden")
            await tools.entry(e.call_id, e.recipient)
            if msg is not None:
                await msg.notice(f"⚙ calling {e.recipient}")
        elif isinstance(e, ev.ToolCallArgs):
            (await tools.entry(e.call_id, "?")).add_args(e.delta)
        elif isinstance(e, ev.ToolCall):
            (await tools.entry(e.call_id, e.recipient)).set_args(e.arguments)
        elif isinstance(e, ev.ToolResult):
            (await tools.entry(e.call_id, e.recipient)).set_result(e.output, e.error, e.duration_s)
            self.history.append(
                HMessage(role="tool", text=e.error or e.output, author=e.recipient, channel="commentary",
                         recipient="assistant")
            )
        elif isinstance(e, ev.ToolConfirmation):
            self.confirm_tool(e)
        elif isinstance(e, ev.Recovery):
            if msg is not None:
                await msg.notice(f"repaired model output: {e.kind} {e.detail}".strip())
        elif isinstance(e, ev.Retry):
            if msg is not None:
                await msg.notice(f"↻ retrying ({e.reason}{': ' + e.detail if e.detail else ''})")
        elif isinstance(e, ev.ContextTrimmed):
            if msg is not None:
                await msg.notice(f"context full: dropped {e.dropped_messages} old message(s)")
        elif isinstance(e, ev.TurnFinished):
            bar.show(e.metrics)
            if msg is not None and e.reason not in ("stop",):
                await msg.notice({"cancelled": "⏹ stopped (partial reply kept)",
                                  "length": "max tokens reached"}.get(e.reason, f"finished: {e.reason}"))
        elif isinstance(e, ev.TurnFailed):
            if msg is not None:
                await msg.notice(f"error: {e.error}", error=True)

    def confirm_tool(self, e: ev.ToolConfirmation) -> None:
        handle = self.handle

        def answer(allowed: bool | None) -> None:
            if handle is not None:
                handle.confirm(e.call_id, bool(allowed))

        self.push_screen(ConfirmScreen(f"Run tool {e.recipient}?", e.arguments), answer)

    async def _turn_ended(self) -> None:
        msg, self.current, self.handle = self.current, None, None
        if msg is not None:
            await msg.finish()
        if self.recorder is not None:
            self._guard(self.recorder.finish)
            self.history = self._session_history()
        self.screen_chat.query_one(MetricsBar).set_status("ready")

    async def wait_idle(self, timeout: float = 60.0) -> None:
        """For tests and scripts: until the running turn has been fully applied."""
        import asyncio

        deadline = time.monotonic() + timeout
        while self.generating and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    # ---- actions ----------------------------------------------------------------------------------------
    def action_stop(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.screen_chat.query_one(MetricsBar).set_status("stopping")

    def _last_user_index(self) -> int | None:
        for i in range(len(self.history) - 1, -1, -1):
            if self.history[i].role == "user":
                return i
        return None

    async def _drop_last_exchange(self, keep_user: bool) -> str | None:
        """Forget the last reply (and the user message unless keep_user) in history and on screen."""
        i = self._last_user_index()
        if i is None:
            return None
        text = self.history[i].text
        del self.history[i + (1 if keep_user else 0):]
        if self.recorder is not None:
            msgs = self.recorder.session.messages
            users = [k for k, m in enumerate(msgs) if m.role == "user"]
            if users:
                del msgs[users[-1] + (1 if keep_user else 0):]
                self._guard(self.recorder.save)
                self.recorder = self._new_recorder(self.recorder.session)
        self._unfollow()
        widgets = list(self.conversation.children)
        last_user = max((k for k, w in enumerate(widgets) if isinstance(w, UserMessage)), default=None)
        if last_user is not None:
            for w in widgets[last_user + (1 if keep_user else 0):]:
                await w.remove()
        return text

    async def action_regenerate(self) -> None:
        if self.generating or self.backend is None:
            return
        if await self._drop_last_exchange(keep_user=True) is None:
            self.notify("Nothing to regenerate")
            return
        await self._start_turn()

    async def action_edit_last(self) -> None:
        if self.generating:
            return
        text = await self._drop_last_exchange(keep_user=False)
        if text is None:
            self.notify("No message to edit")
            return
        box = self.screen_chat.query_one(ChatInput)
        box.text = text
        box.focus()

    def action_toggle_analysis(self) -> None:
        boxes = [b for b in self.conversation.query(Collapsible) if b.has_class("analysis")]
        if not boxes:
            return
        collapse = not all(b.collapsed for b in boxes)
        for b in boxes:
            b.collapsed = collapse
        for m in self.conversation.query(AssistantMessage):
            m.user_toggled = True

    def _last_assistant(self) -> AssistantMessage | None:
        msgs = [m for m in self.conversation.query(AssistantMessage) if m.final_text]
        return msgs[-1] if msgs else None

    def action_copy_reply(self) -> None:
        m = self._last_assistant()
        if m is None:
            self.notify("No reply to copy")
            return
        self.copy_to_clipboard(m.final_text)
        self.notify("Reply copied to the clipboard")

    def action_copy_code(self) -> None:
        for m in reversed(list(self.conversation.query(AssistantMessage))):
            blocks = m.code_blocks()
            if blocks:
                self.copy_to_clipboard(blocks[-1])
                self.notify("Code block copied to the clipboard")
                return
        self.notify("No code block to copy")

    def action_help(self) -> None:
        rows = []
        for b in CHAT_BINDINGS:
            keys = self._keymap.get(b.id or "", b.key)
            rows.append((keys, b.description, b.id or ""))
        self.push_screen(HelpScreen(rows))

    def action_params(self) -> None:
        def done(new: ChatSettings | None) -> None:
            if new is not None:
                self.settings = new
                self._settings_dirty = True
                self._update_header()
                self.notify("Parameters apply from the next turn")

        self.push_screen(ParamsScreen(self.settings), done)

    def action_models(self) -> None:
        from mlx_harmony_tui.backends.discovery import find_models

        if self.loading:
            self.notify("A model is already loading")
            return

        def done(choice: str | None) -> None:
            if choice:
                self.load_model(choice)

        self.push_screen(ModelPickerScreen(find_models(self.models_dirs), self.model_ref), done)

    def action_sessions(self) -> None:
        async def done(result: tuple[str, str] | None) -> None:
            if result is None:
                return
            what, sid = result
            if what == "new":
                await self.action_new_session()
            elif sid != self.session_id:
                await self.open_session(sid)

        self.push_screen(SessionBrowserScreen(self.store, self.session_id), done)

    async def action_new_session(self) -> None:
        if self.generating:
            self.action_stop()
            await self.wait_idle(5)
        self.history = []
        self._unfollow()
        await self.conversation.remove_children()
        for e in list(self.screen_chat.query_one(ToolLog).entries.values()):
            await e.remove()
        self.screen_chat.query_one(ToolLog).entries.clear()
        self._close_session()

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        """Every bound action is also in the command palette (ctrl+p)."""
        yield from super().get_system_commands(screen)
        for b in CHAT_BINDINGS:
            name = b.action.removeprefix("app.")
            if name in ("quit", "command_palette"):
                continue
            if name == "toggle_tools":
                yield SystemCommand(b.description, f"toggle the tool-call pane ({b.key})",
                                    self.screen_chat.action_toggle_tools)
                continue
            yield SystemCommand(b.description, f"{b.id} ({b.key})", getattr(self, f"action_{name}"))

    # ---- sessions ---------------------------------------------------------------------------------------
    def _guard(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Session writes must never kill the chat: show the problem and carry on."""
        try:
            return fn(*args)
        except UserError as e:
            self.notify(str(e), title="Session", severity="error", timeout=8)
        except OSError as e:
            self.notify(f"could not save the session: {e}", title="Session", severity="error", timeout=8)
        return None

    def _new_recorder(self, session: Any) -> Any:
        from mlx_harmony_tui.sessions.recorder import SessionRecorder

        return SessionRecorder(self.store, session, params=settings_params(self.settings))

    def _session_history(self) -> list[HMessage]:
        from mlx_harmony_tui.sessions.recorder import to_hmessages

        return to_hmessages(self.recorder.session) if self.recorder is not None else list(self.history)

    def _ensure_session(self) -> bool:
        """Sessions are created on the first message, so opening the app leaves no empty files."""
        if self.recorder is not None:
            return True
        if self.store is None:
            return False
        if not self.settings.conversation_date:
            self.settings.conversation_date = time.strftime("%Y-%m-%d")
        model = self.backend.model_name if self.backend else self.model_ref
        session = self._guard(self.store.create, "", model, settings_params(self.settings),
                              session_settings(self.settings))
        if session is None:
            return False
        self._guard(self.store.lock, session.id)
        self.session_id = session.id
        self.recorder = self._new_recorder(session)
        return True

    def _save_settings_to_session(self) -> None:
        if self.recorder is not None and self._settings_dirty:
            self.recorder.session.settings.update(session_settings(self.settings))
            self._settings_dirty = False
            self._guard(self.recorder.save)

    def _record(self, events: list[Any]) -> None:
        if self.recorder is None:
            return
        for e in events:
            self._guard(self.recorder.on_event, e)

    def cache_path(self, session_id: str) -> Path:
        return paths.cache_dir() / "prompt-cache" / f"{session_id}.safetensors"

    def _restore_cache(self) -> None:
        sid = self.session_id
        if not sid or self.backend is None or self._cache_loaded_for == sid:
            return
        load = getattr(self.backend, "load_cache", None)
        path = self.cache_path(sid)
        if load is None or not path.exists():
            return
        self._cache_loaded_for = sid
        try:
            if load(path):
                self.notify("Prompt cache restored")
        except (UserError, OSError, ValueError) as e:
            self.notify(f"prompt cache not restored: {e}", severity="warning")

    def save_cache(self) -> None:
        """Save the prompt cache of the open session so resuming it skips the prefill."""
        save = getattr(self.backend, "save_cache", None)
        if not self.session_id or save is None or self.generating:
            return
        path = self.cache_path(self.session_id)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            save(path)
        except (UserError, OSError, ValueError) as e:
            self.notify(f"prompt cache not saved: {e}", severity="warning")

    def _close_session(self) -> None:
        if self.session_id:
            self.save_cache()
            if self.store is not None:
                self.store.unlock(self.session_id)
        self.recorder = None
        self.session_id = None
        self._cache_loaded_for = None

    async def open_session(self, id_or_prefix: str) -> bool:
        """Show a saved session and continue it; False (with the reason shown) when it cannot be opened."""
        from mlx_harmony_tui.sessions.recorder import to_hmessages

        if self.generating:
            self.action_stop()
            await self.wait_idle(5)
        try:
            sid = self.store.resolve(id_or_prefix)
            if sid != self.session_id:
                self.store.lock(sid)
            session = self.store.load(sid)
        except UserError as e:
            self.notify(str(e), title="Session", severity="error", timeout=10)
            return False
        if sid != self.session_id:
            self._close_session()
        self.session_id = sid
        self.settings = settings_from_session(self.settings, session)
        self.recorder = self._new_recorder(session)
        self.history = to_hmessages(session)
        await self._show_session(session)
        self._update_header()
        self._restore_cache()
        return True

    async def _show_session(self, session: Any) -> None:
        """Rebuild the conversation from the record: widgets are built first and mounted in one go."""
        conv = self.conversation
        self._unfollow()
        await conv.remove_children()
        tools = self.screen_chat.query_one(ToolLog)
        for entry in list(tools.entries.values()):
            await entry.remove()
        tools.entries.clear()
        widgets: list[Any] = []
        reply: list[tuple[str, str]] = []
        partial = False

        def close_reply() -> None:
            nonlocal reply, partial
            if reply:
                widgets.append(AssistantMessage(done=reply))
                if partial:
                    widgets.append(Static("(partial reply)", classes="partial-note"))
            reply, partial = [], False

        for m in session.messages:
            if m.role == "user":
                close_reply()
                widgets.append(UserMessage(m.content))
            elif m.role == "assistant" and m.recipient:
                entry = await tools.entry(m.call_id or m.id, m.recipient)
                entry.set_args(m.content)
            elif m.role == "tool":
                entry = await tools.entry(m.call_id or m.id, m.author or "tool")
                entry.set_result(m.content, None, 0.0)
            elif m.role == "assistant":
                reply.append((m.channel or "final", m.content))
                partial = partial or m.incomplete
        close_reply()
        if widgets:
            await conv.mount_all(widgets)
        conv.scroll_end(animate=False)

    def on_unmount(self) -> None:
        """However the app ends, the session's lock is released and its prompt cache saved."""
        if self.handle is not None:
            self.handle.cancel()
        self._close_session()
        if self.backend is not None:
            self.backend.close()  # stops the model worker (and frees its MLX streams) before exit
        if self.latency_probe is not None:
            self.latency_probe.save()
        sys.setswitchinterval(getattr(self, "_saved_switch_interval", sys.getswitchinterval()))

    def post_display_hook(self) -> None:
        """Textual calls this after each frame is written: the probe's end of a key's latency."""
        if self.latency_probe is not None:
            self.latency_probe.frame_written()

    async def action_quit(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            await self.wait_idle(5)
        self._close_session()
        self.exit()


def settings_params(s: ChatSettings) -> dict[str, Any]:
    """What the session records as the generation parameters of a reply."""
    sp = s.sampling
    return {
        "temperature": sp.temperature, "top_p": sp.top_p, "top_k": sp.top_k, "min_p": sp.min_p,
        "repetition_penalty": sp.repetition_penalty, "max_tokens": s.max_tokens,
        "context_limit": s.context_limit, "reasoning_effort": s.reasoning_effort,
    }


def session_settings(s: ChatSettings) -> dict[str, Any]:
    return {
        "system_prompt": s.system_prompt, "instructions": s.instructions,
        "reasoning_effort": s.reasoning_effort, "conversation_date": s.conversation_date,
        "builtin_tools": list(s.builtin_tools),
    }


def settings_from_session(base: ChatSettings, session: Any) -> ChatSettings:
    """Resume with the session's prompts and its last recorded parameters."""
    from dataclasses import replace

    s = copy.deepcopy(base)
    params = dict(session.params or {})
    for m in session.messages:
        if m.params:
            params = dict(m.params)
    sampling = {k: params[k] for k in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")
                if k in params}
    s.sampling = replace(s.sampling, **sampling)
    for k in ("max_tokens", "context_limit", "reasoning_effort"):
        if k in params:
            setattr(s, k, params[k])
    for k in ("system_prompt", "instructions", "reasoning_effort", "conversation_date", "builtin_tools"):
        if session.settings.get(k) is not None:
            setattr(s, k, session.settings[k])
    return s

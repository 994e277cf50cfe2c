"""The chat screen: conversation, tool-call pane, metrics bar and the message box."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, ProgressBar, Static

from mlx_harmony_tui.tui.keymap import CHAT_BINDINGS
from mlx_harmony_tui.tui.widgets.chat_input import ChatInput
from mlx_harmony_tui.tui.widgets.header import SettingsHeader
from mlx_harmony_tui.tui.widgets.metrics_bar import MetricsBar
from mlx_harmony_tui.tui.widgets.tool_log import ToolLog


class Conversation(VerticalScroll):
    """The messages. Streaming anchors it to its end once it overflows (tui/turn_view.py)."""

    def on_resize(self) -> None:
        self.call_after_refresh(self._unanchor_if_it_fits)

    def _unanchor_if_it_fits(self) -> None:
        """Anchored, then wider or taller (the terminal grew, ctrl+l hid the tool pane) so that it fits:
        Textual 8.2.8 gives short anchored content a negative offset (textual#6652), blank lines above the
        first message. Not anchored, it starts at the top; the next overflowing reply anchors it again."""
        if self.is_anchored and self.max_scroll_y <= 0:
            self.anchor(False)
            self.set_scroll(None, 0)  # scroll_home() leaves a negative offset as it is


class ChatScreen(Screen[None]):
    """Layout only; the app drives it (turns, events), so every screen and the palette share one logic."""

    BINDINGS = CHAT_BINDINGS
    AUTO_FOCUS = "ChatInput"

    def __init__(self, welcome: str = "") -> None:
        super().__init__()
        self.welcome = welcome

    def compose(self) -> ComposeResult:
        yield SettingsHeader()  # fitted to a narrow terminal
        with Horizontal(id="body"):
            with Conversation(id="conversation"):
                if self.welcome:
                    yield Static(self.welcome, id="welcome", markup=False)
            yield ToolLog(id="tool-log", classes="hidden")
        with Horizontal(id="load-bar", classes="hidden"):
            yield Static("", id="load-text", markup=False)  # "loading <path>"
            yield ProgressBar(total=1.0, show_eta=False, id="load-progress")
        yield MetricsBar(id="metrics-bar")
        yield ChatInput(id="input")
        yield Footer(compact=True)  # one cell between keys: at 80 columns quit to stop fit

    def action_toggle_tools(self) -> None:
        self.query_one(ToolLog).toggle_class("hidden")

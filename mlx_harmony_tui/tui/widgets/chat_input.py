"""The message box: a multi-line TextArea where Enter sends and ctrl+j / shift+enter insert a newline."""

from __future__ import annotations

from textual import events
from textual.binding import Binding
from textual.message import Message
from textual.widgets import TextArea

NEWLINE_KEYS = ("shift+enter", "ctrl+j", "alt+enter")


class ChatInput(TextArea):
    """TextArea inserts a newline on Enter; a chat box must send instead, so the key handling is changed."""

    class Submitted(Message):
        def __init__(self, text: str) -> None:
            self.text = text
            super().__init__()

    BINDINGS = [  # the conversation, not the few lines of the message box, is what a user pages through
        Binding("pageup", "page_conversation(-1)", "Page up", show=False),
        Binding("pagedown", "page_conversation(1)", "Page down", show=False),
    ]

    def action_page_conversation(self, direction: int) -> None:
        for conv in self.screen.query("#conversation"):
            if direction < 0:
                conv.scroll_page_up()
            else:
                conv.scroll_page_down()

    def __init__(self, **kwargs: object) -> None:
        super().__init__(soft_wrap=True, show_line_numbers=False, tab_behavior="focus", **kwargs)  # type: ignore[arg-type]

    async def _on_key(self, event: events.Key) -> None:
        if event.key == "enter":
            event.stop()
            event.prevent_default()
            text = self.text
            if text.strip():
                self.post_message(self.Submitted(text))
            return
        if event.key in NEWLINE_KEYS:
            event.stop()
            event.prevent_default()
            start, end = self.selection
            self._replace_via_keyboard("\n", start, end)
            return
        await super()._on_key(event)
        probe = getattr(self.app, "latency_probe", None)
        if probe is not None and getattr(self.app, "generating", False):  # only keys typed while streaming
            probe.key_applied(event.time)

"""Messages of the conversation. Assistant text is appended through Textual's MarkdownStream, so a token
costs an append to the last block, not a re-parse of the whole message."""

from __future__ import annotations

import re

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Collapsible, Markdown, Static

CODE_BLOCK = re.compile(r"```[^\n]*\n(.*?)```", re.S)


class UserMessage(Vertical):
    DEFAULT_CSS = """
    UserMessage { height: auto; margin: 1 0 0 0; padding: 0 1; border-left: thick $accent; }
    UserMessage > Static.who { color: $accent; text-style: bold; }
    """

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def compose(self) -> ComposeResult:
        yield Static("You", classes="who")
        yield Markdown(self.text, classes="body")


class _Part:
    """One streamed Markdown widget and its stream (created lazily: most replies have no commentary)."""

    def __init__(self, widget: Markdown) -> None:
        self.widget = widget
        self.stream = Markdown.get_stream(widget)
        self.text = ""


class AssistantMessage(Vertical):
    """Analysis (collapsible, open while it streams), commentary preambles, the final answer, notices."""

    DEFAULT_CSS = """
    AssistantMessage { height: auto; margin: 1 0 0 0; padding: 0 1; border-left: thick $primary; }
    AssistantMessage > Static.who { color: $primary; text-style: bold; }
    AssistantMessage > Static.notice { color: $warning; text-style: italic; }
    AssistantMessage > Static.error { color: $error; }
    AssistantMessage Collapsible.analysis { background: $surface; color: $text-muted; padding: 0; border: none; }
    AssistantMessage Markdown.commentary { color: $text-muted; border-left: outer $secondary; padding-left: 1; }
    AssistantMessage Markdown { margin: 0; }
    """

    def __init__(self) -> None:
        super().__init__()
        self._parts: dict[str, _Part] = {}
        self.analysis_box: Collapsible | None = None
        self.user_toggled = False

    def compose(self) -> ComposeResult:
        yield Static("Assistant", classes="who")

    @property
    def final_text(self) -> str:
        p = self._parts.get("final")
        return p.text if p else ""

    @property
    def analysis_text(self) -> str:
        p = self._parts.get("analysis")
        return p.text if p else ""

    @property
    def commentary_text(self) -> str:
        p = self._parts.get("commentary")
        return p.text if p else ""

    async def _part(self, channel: str) -> _Part:
        part = self._parts.get(channel)
        if part is not None:
            return part
        md = Markdown(classes=channel)
        if channel == "analysis":
            self.analysis_box = Collapsible(md, title="Thinking", collapsed=False, classes="analysis")
            await self.mount(self.analysis_box)
        else:
            await self.mount(md)
        part = _Part(md)
        self._parts[channel] = part
        return part

    async def write(self, channel: str, text: str) -> None:
        """Append streamed text; the analysis folds when the final answer starts."""
        if not text:
            return
        if channel == "final" and self.analysis_box is not None and not self.user_toggled:
            self.analysis_box.collapsed = True
        part = await self._part(channel)
        part.text += text
        await part.stream.write(text)

    async def notice(self, text: str, error: bool = False) -> None:
        await self.mount(Static(text, classes="error" if error else "notice", markup=False))

    async def finish(self) -> None:
        for part in self._parts.values():
            await part.stream.stop()
        if self.analysis_box is not None and self.final_text and not self.user_toggled:
            self.analysis_box.collapsed = True

    def code_blocks(self) -> list[str]:
        return CODE_BLOCK.findall(self.final_text)

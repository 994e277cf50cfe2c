"""Messages of the conversation. Assistant text is appended through Textual's MarkdownStream while it
streams, so a token costs an append to the last block, not a re-parse of the whole message. A finished
message is frozen into one Static holding a Rich Markdown renderable: Textual's Markdown widget is a tree
of block widgets, and every layout walks all of them, so a long conversation of live Markdown widgets
would make each streamed update slower."""

from __future__ import annotations

import re

from rich.markdown import Markdown as RichMarkdown
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widget import Widget
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
        yield frozen_markdown(self.text, "body")


def frozen_markdown(text: str, classes: str) -> Static:
    """One widget for a finished Markdown text (code highlighted by Rich)."""
    return Static(RichMarkdown(text, code_theme="monokai"), classes=f"md {classes}")


class _Part:
    """One streamed Markdown widget and its stream (created lazily: most replies have no commentary)."""

    def __init__(self, widget: Widget, streaming: bool = True) -> None:
        self.widget = widget
        self.stream = Markdown.get_stream(widget) if streaming and isinstance(widget, Markdown) else None
        self.text = ""


class AssistantMessage(Vertical):
    """Analysis (collapsible, open while it streams), commentary preambles, the final answer, notices."""

    DEFAULT_CSS = """
    AssistantMessage { height: auto; margin: 1 0 0 0; padding: 0 1; border-left: thick $primary; }
    AssistantMessage > Static.who { color: $primary; text-style: bold; }
    AssistantMessage > Static.notice { color: $warning; text-style: italic; }
    AssistantMessage > Static.error { color: $error; }
    AssistantMessage Collapsible.analysis { background: $surface; color: $text-muted; padding: 0; border: none; }
    AssistantMessage .commentary { color: $text-muted; border-left: outer $secondary; padding-left: 1; }
    AssistantMessage Markdown { margin: 0; }
    AssistantMessage Static.md { margin: 0 0 1 0; padding: 0 1; }
    """

    def __init__(self, done: list[tuple[str, str]] | None = None) -> None:
        """``done``: (channel, text) of an already finished message (a resumed session)."""
        super().__init__()
        self._parts: dict[str, _Part] = {}
        self.analysis_box: Collapsible | None = None
        self.user_toggled = False
        self._done = done

    def compose(self) -> ComposeResult:
        yield Static("Assistant", classes="who")
        merged: dict[str, str] = {}
        for channel, text in self._done or []:
            merged[channel] = merged.get(channel, "") + ("\n\n" if channel in merged else "") + text
        for channel, text in merged.items():
            w = frozen_markdown(text, channel)
            part = _Part(w, streaming=False)
            part.text = text
            self._parts[channel] = part
            if channel == "analysis":
                self.analysis_box = Collapsible(w, title="Thinking", collapsed=True, classes="analysis")
                yield self.analysis_box
            else:
                yield w

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
        if part.stream is not None:
            await part.stream.write(text)
        else:  # already frozen (a message continued after finish): re-render the whole text
            part.widget.update(RichMarkdown(part.text, code_theme="monokai"))  # type: ignore[attr-defined]

    async def notice(self, text: str, error: bool = False) -> None:
        await self.mount(Static(text, classes="error" if error else "notice", markup=False))

    async def finish(self) -> None:
        """Stop the streams and freeze each part into one cheap widget."""
        for channel, part in self._parts.items():
            if part.stream is None:
                continue
            await part.stream.stop()
            part.stream = None
            frozen = frozen_markdown(part.text, channel)
            parent = part.widget.parent
            if parent is not None:
                await parent.mount(frozen, before=part.widget)
                await part.widget.remove()
            part.widget = frozen
        if self.analysis_box is not None and self.final_text and not self.user_toggled:
            self.analysis_box.collapsed = True

    def code_blocks(self) -> list[str]:
        return CODE_BLOCK.findall(self.final_text)

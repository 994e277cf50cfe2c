"""Messages of the conversation. Assistant text is appended to a Textual Markdown widget while it
streams (Markdown.append), so a write costs a parse of the new text into the last block, not a re-parse of
the whole message; long replies move their settled paragraphs into frozen blocks as they go. A finished
message is frozen into Statics holding Rich Markdown renderables: Textual's Markdown widget is a tree
of block widgets, and every layout walks all of them, so a long conversation of live Markdown widgets
would make each streamed update slower."""

from __future__ import annotations

import re

from rich.markdown import Markdown as RichMarkdown
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widget import Widget
from textual.widgets import Collapsible, Markdown, Static

from mlx_harmony_tui.sessions.export import keep_line_breaks

CODE_BLOCK = re.compile(r"```[^\n]*\n(.*?)```", re.S)
Branch = tuple[int, int] | None  # (this version's number, how many versions), when there is more than one


class ChatMessage(Vertical, can_focus=True):
    """A message of the conversation that can be selected (alt+up, then up/down; or a click) to act on it:
    copy it, edit it (yours) or regenerate it (the assistant's), flip between its versions."""

    BINDINGS = [
        Binding("c", "act('copy')", "Copy", id="message.copy"),
        Binding("left_square_bracket", "act('prev')", "Previous version", id="message.prev_branch"),
        Binding("right_square_bracket", "act('next')", "Next version", id="message.next_branch"),
        Binding("up", "step(-1)", "Previous message", id="message.up", show=False),
        Binding("down", "step(1)", "Next message", id="message.down", show=False),
        Binding("escape", "leave", "Back to the message box", id="message.leave", show=False),
    ]
    WHO = ""

    class Act(Message):
        """What the user asked of a selected message; the app does it (it owns the conversation)."""

        def __init__(self, action: str, message: ChatMessage) -> None:
            self.action, self.message = action, message
            super().__init__()

    def __init__(self, position: int | None = None, branch: Branch = None) -> None:
        super().__init__()
        self.position = position  # index of its (first) record in the session, when it has one
        self.branch = branch

    def who(self) -> Static:
        label = self.WHO
        if self.branch:
            label += f"  ‹ {self.branch[0]}/{self.branch[1]} ›"
        return Static(label, classes="who", markup=False)

    def copy_text(self) -> str:
        return ""

    def action_act(self, action: str) -> None:
        self.post_message(self.Act(action, self))

    def action_step(self, step: int) -> None:
        siblings = [w for w in self.parent.children if isinstance(w, ChatMessage)] if self.parent else []
        i = siblings.index(self) + step
        if 0 <= i < len(siblings):
            siblings[i].focus()
            siblings[i].scroll_visible(animate=False)
        elif step > 0:
            self.action_leave()

    def action_leave(self) -> None:
        for box in self.screen.query("ChatInput"):
            box.focus()


class UserMessage(ChatMessage):
    DEFAULT_CSS = """
    UserMessage { height: auto; margin: 1 0 0 0; padding: 0 1; border-left: thick $accent; }
    UserMessage:focus { background: $boost; border-left: thick $warning; }
    UserMessage > Static.who { color: $accent; text-style: bold; }
    """
    BINDINGS = [Binding("e", "act('edit')", "Edit", id="message.edit")]
    WHO = "You"

    def __init__(self, text: str, position: int | None = None, branch: Branch = None) -> None:
        super().__init__(position, branch)
        self.text = text

    def compose(self) -> ComposeResult:
        yield self.who()
        yield frozen_markdown(keep_line_breaks(self.text), "body")

    def copy_text(self) -> str:
        return self.text


def frozen_markdown(text: str, classes: str) -> Static:
    """One widget for a finished Markdown text (code highlighted by Rich)."""
    return Static(RichMarkdown(text, code_theme="monokai"), classes=f"md {classes}")


# A streaming part moves its text into a frozen block once the live Markdown holds this much: every
# streamed write lays out and renders the live widget, so its cost grows with its length (frames went from
# 24 to 62 ms p95 over a 3000-token reply); frozen blocks are laid out from cache.
FREEZE_CHARS = 1500


def safe_split(text: str, separators: tuple[str, ...] = ("\n\n",)) -> int:
    """Where `text` may be cut into two Markdown documents: after the last of the first separator found
    outside a code fence (a blank line: the two render as one), 0 for nowhere."""
    for sep in separators:
        cut = text.rfind(sep)
        while cut > 0:
            if text.count("```", 0, cut) % 2 == 0 and text.count("~~~", 0, cut) % 2 == 0:
                return cut + len(sep)
            cut = text.rfind(sep, 0, cut)
    return 0


def freeze_point(live: str) -> int:
    """Where to freeze the live text, 0 for not yet. Past twice the limit without a blank line, a line
    break or a space will do: that paragraph then shows as two (rendering a long reply whole again at the
    end cost one frame of over half a second; the copied and saved text is the model's, unchanged)."""
    if len(live) <= FREEZE_CHARS:
        return 0
    if len(live) <= 2 * FREEZE_CHARS:
        return safe_split(live)
    return safe_split(live, ("\n\n", "\n", " "))


class _Part:
    """One streamed channel: its live Markdown widget and the blocks frozen before it (created lazily:
    most replies have no commentary)."""

    def __init__(self, widget: Widget, streaming: bool = True) -> None:
        self.widget = widget
        self.streaming = streaming and isinstance(widget, Markdown)
        self.text = ""
        self.live_from = 0  # text[live_from:] is in the live widget, the rest in `frozen`
        self.frozen: list[Static] = []


class AssistantMessage(ChatMessage):
    """Analysis (collapsible, open while it streams), commentary preambles, the final answer, notices."""

    BINDINGS = [Binding("r", "act('regenerate')", "Regenerate", id="message.regenerate")]
    WHO = "Assistant"
    DEFAULT_CSS = """
    AssistantMessage { height: auto; margin: 1 0 0 0; padding: 0 1; border-left: thick $primary; }
    AssistantMessage:focus { background: $boost; border-left: thick $warning; }
    AssistantMessage > Static.who { color: $primary; text-style: bold; }
    AssistantMessage > Static.notice { color: $warning; text-style: italic; }
    AssistantMessage > Static.error { color: $error; }
    AssistantMessage Collapsible.analysis { background: $surface; color: $text-muted; padding: 0; border: none; }
    AssistantMessage .commentary { color: $text-muted; border-left: outer $secondary; padding-left: 1; }
    AssistantMessage Markdown { margin: 0; }
    AssistantMessage Static.md { margin: 0 0 1 0; padding: 0 1; }
    """

    def __init__(self, done: list[tuple[str, str]] | None = None, position: int | None = None,
                 branch: Branch = None, notices: list[tuple[str, bool]] | None = None,
                 steps: list[tuple[str, bool]] | None = None) -> None:
        """``done``: (channel, text) of an already finished message (a resumed session), ``steps`` (text, is
        an error: tool calls, retries) shown before its answer and ``notices`` after it, as they were live."""
        super().__init__(position, branch)
        self._parts: dict[str, _Part] = {}
        self.analysis_box: Collapsible | None = None
        self.user_toggled = False
        self._done = done
        self._notices = notices or []
        self._steps = steps or []

    def copy_text(self) -> str:
        return self.final_text or self.commentary_text or self.analysis_text

    def compose(self) -> ComposeResult:
        yield self.who()
        merged: dict[str, str] = {}
        for channel, text in self._done or []:
            merged[channel] = merged.get(channel, "") + ("\n\n" if channel in merged else "") + text
        # as it was live: thinking and preambles, then the tool calls, then the answer, then how it ended
        final = merged.pop("final", None)
        for channel, text in merged.items():
            yield self._frozen_part(channel, text)
        yield from self._notes(self._steps)
        if final is not None:
            yield self._frozen_part("final", final)
        yield from self._notes(self._notices)

    def _frozen_part(self, channel: str, text: str) -> Widget:
        w = frozen_markdown(text, channel)
        part = _Part(w, streaming=False)
        part.text = text
        self._parts[channel] = part
        if channel == "analysis":
            self.analysis_box = Collapsible(w, title="Thinking", collapsed=True, classes="analysis")
            return self.analysis_box
        return w

    @staticmethod
    def _notes(notes: list[tuple[str, bool]]) -> ComposeResult:
        for text, error in notes:
            yield Static(text, classes="error" if error else "notice", markup=False)

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
        if not part.streaming:  # already frozen (a message continued after finish): re-render its last block
            part.widget.update(RichMarkdown(part.text[part.live_from :], code_theme="monokai"))  # type: ignore[attr-defined]
            return
        # Markdown.append parses only the new text into the last blocks. The app batches writes itself
        # (a few a second, in one batch_update with the metrics), which is what MarkdownStream's queue
        # would do, but inside the same frame.
        md: Markdown = part.widget  # type: ignore[assignment]
        await md.append(text)
        live = part.text[part.live_from :]
        if cut := freeze_point(live):
            block = frozen_markdown(live[:cut], f"{channel} block")
            part.frozen.append(block)
            await md.parent.mount(block, before=md)  # type: ignore[union-attr]
            part.live_from += cut
            await md.update(live[cut:])

    async def notice(self, text: str, error: bool = False) -> None:
        await self.mount(Static(text, classes="error" if error else "notice", markup=False))

    async def finish(self) -> None:
        """Freeze each streaming part's live widget into a cheap Static after its frozen blocks."""
        for channel, part in self._parts.items():
            if not part.streaming:
                continue
            part.streaming = False
            frozen = frozen_markdown(part.text[part.live_from :], channel)  # only the live rest is rendered
            parent = part.widget.parent
            if parent is not None:
                await parent.mount(frozen, before=part.widget)
                await part.widget.remove()
            part.widget = frozen
        if self.analysis_box is not None and self.final_text and not self.user_toggled:
            self.analysis_box.collapsed = True

    def code_blocks(self) -> list[str]:
        return CODE_BLOCK.findall(self.final_text)

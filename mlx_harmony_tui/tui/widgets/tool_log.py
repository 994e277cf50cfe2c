"""The tool-call pane: one expandable entry per call with tool, arguments, result or error and duration."""

from __future__ import annotations

from textual.containers import VerticalScroll
from textual.content import Content
from textual.widgets import Collapsible, Static


class ToolEntry(Collapsible):
    DEFAULT_CSS = """
    ToolEntry { height: auto; }
    ToolEntry Static.args { color: $text-muted; }
    ToolEntry Static.result { color: $success; }
    ToolEntry Static.err { color: $error; }
    """

    def __init__(self, call_id: str, recipient: str) -> None:
        self.call_id = call_id
        self.recipient = recipient
        self.args = ""
        self._args_view = Static("", classes="args", markup=False)
        self._result_view = Static("running…", classes="result", markup=False)
        super().__init__(self._args_view, self._result_view, title="", collapsed=True)
        self.set_reactive(Collapsible.title, f"⚙ {recipient}")
        self._watch_title(self.title)

    def _watch_title(self, title: str) -> None:
        """Shown as written: the tool's name comes from the model ("[/b]" in it raised a MarkupError)."""
        self._title.label = Content(title)

    def add_args(self, delta: str) -> None:
        self.args += delta
        self._args_view.update(self.args)

    def set_args(self, args: str) -> None:
        self.args = args
        self._args_view.update(args)

    def set_result(self, output: str, error: str | None, duration_s: float) -> None:
        if error:
            self._result_view.set_classes("err")
            self._result_view.update(f"error: {error}")
            self.title = f"✗ {self.recipient} ({duration_s:.2f}s)"
        else:
            self._result_view.update(output)
            self.title = f"✓ {self.recipient} ({duration_s:.2f}s)"


class ToolLog(VerticalScroll):
    DEFAULT_CSS = """
    ToolLog { width: 35%; min-width: 26; max-width: 56; border-left: solid $panel; padding: 0 1; }
    ToolLog.hidden { display: none; }
    ToolLog > Static.title { text-style: bold; }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(Static("Tool calls", classes="title"), **kwargs)  # type: ignore[arg-type]
        self.entries: dict[str, ToolEntry] = {}

    async def entry(self, call_id: str, recipient: str) -> ToolEntry:
        e = self.entries.get(call_id)
        if e is None:
            e = ToolEntry(call_id, recipient)
            self.entries[call_id] = e
            await self.mount(e)
            self.scroll_end(animate=False)
        return e

"""The session browser: search, open, rename, delete (with confirm) and new session."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Input, Static

from mlx_harmony_tui.errors import UserError
from mlx_harmony_tui.tui.screens.dialogs import ConfirmScreen, PromptScreen

# Result: ("open", session_id) | ("new", "") | None
BrowserResult = tuple[str, str] | None


def _when(iso: str) -> str:
    return iso[:16].replace("T", " ")


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(1, width - 1)] + "…"


class SessionBrowserScreen(ModalScreen[BrowserResult]):
    """Search (the whole text of every message, sessions/index.py), open, rename, delete, new."""

    CSS_PATH = "sessions.tcss"
    BINDINGS = [
        Binding("escape", "close", "Close", id="sessions.close"),
        Binding("f2", "rename", "Rename", id="sessions.rename", priority=True),
        Binding("ctrl+d", "delete", "Delete", id="sessions.delete", priority=True),
        Binding("ctrl+n", "new", "New session", id="sessions.new", priority=True),
        Binding("down", "focus_table", "List", id="sessions.focus_list", show=False),
    ]

    def __init__(self, store: Any, current_id: str | None = None) -> None:
        super().__init__()
        self.store = store
        self.current_id = current_id
        self.ids: list[str] = []
        self._rows: list[Any] = []
        self._widths: tuple[int, ...] = ()

    def compose(self) -> ComposeResult:
        with Vertical(id="browser-box"):
            yield Static("[b]Sessions[/b]")
            yield Input(placeholder="search titles and messages…", id="session-search")
            yield DataTable(cursor_type="row", zebra_stripes=True, id="session-table")
            yield Static("", id="session-empty", classes="hidden", markup=False)
            yield Static("", id="session-problems", classes="hidden", markup=False)
            yield Static("enter open · f2 rename · ctrl+d delete · ctrl+n new · esc close", classes="hint")

    def on_mount(self) -> None:
        self.refresh_list()

    def on_resize(self) -> None:
        self._fill(self.selected_id())

    def refresh_list(self, query: str | None = None) -> None:
        keep = self.selected_id()
        seen = len(self.store.problems)
        self._rows = self.store.list(query or None)
        self._show_problems(self.store.problems[seen:])
        self.ids = [s.id for s in self._rows]
        empty = self.query_one("#session-empty", Static)
        if not self._rows:
            empty.update(f"No sessions match {query!r}." if query else
                         "No saved sessions yet: a session is saved from its first message.")
        empty.set_class(bool(self._rows), "hidden")
        self._fill(keep)

    def _show_problems(self, problems: list[str]) -> None:
        """Files this listing could not read (damaged, from a newer version): said here, or a session would
        be missing from the list without a word."""
        names = list(dict.fromkeys(p.split(": ")[0].split(" is not ")[0] for p in problems))  # "<file>: why"
        box = self.query_one("#session-problems", Static)
        box.update(f"Not listed, could not be read: {', '.join(names)} (why: mlx-harmony-tui sessions list; "
                   "sessions repair moves damaged files aside)" if names else "")
        box.set_class(not names, "hidden")

    def _column_widths(self, width: int) -> tuple[int, ...]:
        """(title, updated, created, model, turns): fixed columns first, the title takes the rest; the
        created date only where there is room. DataTable pads each cell by one on both sides."""
        usable = max(width - 2, 40)  # the scrollbar
        model = min(18, max([len(s.model) for s in self._rows] + [len("Model")]), max(8, usable // 6))
        fixed = [16, 16 if usable >= 110 else 0, model, 5]
        pads = 2 * (1 + sum(1 for f in fixed if f))
        return (max(12, usable - sum(fixed) - pads), *fixed)

    def _fill(self, keep: str | None = None) -> None:
        table = self.query_one(DataTable)
        widths = self._column_widths(table.size.width or self.size.width)
        if widths != self._widths:
            self._widths = widths
            table.clear(columns=True)
            for label, w in zip(("Title", "Updated", "Created", "Model", "Turns"), widths, strict=True):
                if w:
                    table.add_column(label, width=w, key=label.lower())
        else:
            table.clear()
        title_w, _u, created_w, model_w, _t = widths
        for s in self._rows:
            mark = "● " if s.id == self.current_id else ""
            cells = [_fit(mark + (s.title or "(untitled)"), title_w), _when(s.updated_at)]
            if created_w:
                cells.append(_when(s.created_at))
            cells += [_fit(s.model, model_w), str(s.exchanges)]
            table.add_row(*(Text(c) for c in cells), key=s.id)  # Text: a title's "[/b]" is not markup
        if keep in self.ids:
            table.move_cursor(row=self.ids.index(keep))

    def on_input_changed(self, event: Input.Changed) -> None:
        self.refresh_list(event.value.strip())

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if self.ids:
            self.dismiss(("open", self.selected_id() or self.ids[0]))

    def selected_id(self) -> str | None:
        table = self.query_one(DataTable)
        if not self.ids or table.row_count == 0:
            return None
        return self.ids[min(table.cursor_row, len(self.ids) - 1)]

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.dismiss(("open", str(event.row_key.value)))

    def action_focus_table(self) -> None:
        self.query_one(DataTable).focus()

    def action_close(self) -> None:
        self.dismiss(None)

    def action_new(self) -> None:
        self.dismiss(("new", ""))

    def action_rename(self) -> None:
        sid = self.selected_id()
        if sid is None:
            return

        def done(title: str | None) -> None:
            if title is not None and title.strip():
                try:
                    self.store.rename(sid, title.strip())
                except UserError as e:
                    self.notify(str(e), severity="error")
                self.refresh_list(self.query_one(Input).value.strip())

        current = next((s.title for s in self._rows if s.id == sid), "")
        self.app.push_screen(PromptScreen("New title", current), done)

    def action_delete(self) -> None:
        sid = self.selected_id()
        if sid is None:
            return
        if sid == self.current_id:
            self.notify("That session is open; start a new one first", severity="warning")
            return

        def done(yes: bool | None) -> None:
            if yes:
                try:
                    self.store.delete(sid)
                except UserError as e:
                    self.notify(str(e), severity="error")
                self.refresh_list(self.query_one(Input).value.strip())

        title = next((s.title for s in self._rows if s.id == sid), sid)
        self.app.push_screen(ConfirmScreen(f"Delete session {title!r}?", yes="Delete", no="Keep"), done)

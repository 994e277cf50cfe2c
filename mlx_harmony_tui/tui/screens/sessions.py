"""The session browser: search, open, rename, delete (with confirm) and new session."""

from __future__ import annotations

from typing import Any

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


class SessionBrowserScreen(ModalScreen[BrowserResult]):
    DEFAULT_CSS = """
    SessionBrowserScreen { align: center middle; }
    SessionBrowserScreen > Vertical { width: 110; height: 85%; border: thick $primary; background: $surface; padding: 0 1; }
    SessionBrowserScreen DataTable { height: 1fr; }
    SessionBrowserScreen Static.hint { color: $text-muted; }
    """
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

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static("[b]Sessions[/b]")
            yield Input(placeholder="search titles and text…", id="session-search")
            table: DataTable[str] = DataTable(cursor_type="row", zebra_stripes=True, id="session-table")
            table.add_columns("Title", "Updated", "Created", "Model", "Msgs")
            yield table
            yield Static("enter open · f2 rename · ctrl+d delete · ctrl+n new · esc close", classes="hint")

    def on_mount(self) -> None:
        self.refresh_list()

    def refresh_list(self, query: str | None = None) -> None:
        table = self.query_one(DataTable)
        table.clear()
        self.ids = []
        for s in self.store.list(query or None):
            mark = "● " if s.id == self.current_id else ""
            table.add_row(mark + (s.title or "(untitled)"), _when(s.updated_at), _when(s.created_at),
                          s.model, str(s.message_count), key=s.id)
            self.ids.append(s.id)

    def on_input_changed(self, event: Input.Changed) -> None:
        self.refresh_list(event.value.strip())

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if self.ids:
            self.dismiss(("open", self.selected_id() or self.ids[0]))

    def selected_id(self) -> str | None:
        table = self.query_one(DataTable)
        if not self.ids:
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

        current = self.query_one(DataTable).get_row(sid)[0].removeprefix("● ")
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

        title = self.query_one(DataTable).get_row(sid)[0]
        self.app.push_screen(ConfirmScreen(f"Delete session {title!r}?", yes="Delete", no="Keep"), done)

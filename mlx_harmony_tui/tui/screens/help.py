"""Lists every key binding (after the user's keymap) with its id, so remapping is discoverable."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Static

from mlx_harmony_tui import paths
from mlx_harmony_tui.tui.keymap import NEWLINE_HELP


class HelpScreen(ModalScreen[None]):
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > Vertical { width: 90; height: 90%; border: thick $primary; background: $surface; padding: 0 1; }
    HelpScreen DataTable { height: 1fr; }
    """
    BINDINGS = [Binding("escape,f1,q", "close", "Close", id="help.close")]

    def __init__(self, rows: list[tuple[str, str, str]]) -> None:
        super().__init__()
        self.rows = rows

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static("[b]Keys[/b]  (remap in config.toml: \\[keymap] ID = \"key\")")
            table: DataTable[str] = DataTable(cursor_type="row", zebra_stripes=True)
            table.add_columns("Key", "Action", "Id")
            table.add_row("enter", "Send message", "-")
            table.add_row(NEWLINE_HELP, "New line in the message", "-")
            for row in self.rows:
                table.add_row(*row)
            yield table
            config_file = getattr(self.app, "config_file", None) or paths.config_file()
            yield Static(f"Config: {config_file}\nSessions: {paths.sessions_dir()}", markup=False)

    def action_close(self) -> None:
        self.dismiss(None)

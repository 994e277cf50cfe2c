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
    """Every key with its action and id, after the user's keymap (only entries that work are applied)."""

    CSS_PATH = "help.tcss"
    BINDINGS = [Binding("escape,f1,q", "close", "Close", id="help.close")]

    def __init__(self, rows: list[tuple[str, str, str]]) -> None:
        super().__init__()
        self.rows = [("enter", "Send message", "-"), ("ctrl+j", f"New line in the message ({NEWLINE_HELP})", "-"),
                     ("pageup/pagedown", "Scroll the conversation (also from the message box)", "-"), *rows]

    def compose(self) -> ComposeResult:
        with Vertical(id="help-box"):
            yield Static("[b]Keys[/b]  (remap in config.toml: \\[keymap] ID = \"key\")")
            yield DataTable(cursor_type="row", zebra_stripes=True, id="help-table")
            config_file = getattr(self.app, "config_file", None) or paths.config_file()
            yield Static(f"Config: {config_file}\nSessions: {paths.sessions_dir()}", markup=False, id="help-where")

    def on_resize(self) -> None:
        """Columns sized to the box: key and id as wide as they need (up to a limit), the action the rest."""
        table = self.query_one(DataTable)
        usable = max(table.size.width - 2, 40) - 6  # scrollbar, one cell of padding each side of 3 columns
        key_w = min(max(len(r[0]) for r in self.rows), 18 if usable < 90 else 34)
        id_w = min(max(len(r[2]) for r in self.rows), 22)
        action_w = max(10, usable - key_w - id_w)
        table.clear(columns=True)
        table.add_column("Key", width=key_w)
        table.add_column("Action", width=action_w)
        table.add_column("Id", width=id_w)
        for key, action, ident in self.rows:
            table.add_row(_fit(key, key_w), _fit(action, action_w), ident)

    def action_close(self) -> None:
        self.dismiss(None)


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(1, width - 1)] + "…"

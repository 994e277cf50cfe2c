"""Every key binding of the app, with an id so the config's ``[keymap]`` table can remap it."""

from __future__ import annotations

from collections.abc import Mapping

from textual.binding import Binding

# (id, default keys, action, description, shown in footer)
CHAT_BINDINGS: list[Binding] = [
    Binding("ctrl+q", "app.quit", "Quit", id="app.quit", priority=True),
    Binding("escape", "app.stop", "Stop", id="chat.stop"),
    Binding("ctrl+r", "app.regenerate", "Regenerate", id="chat.regenerate"),
    Binding("f2", "app.edit_last", "Edit last", id="chat.edit_last"),
    Binding("ctrl+t", "app.toggle_analysis", "Thinking", id="chat.toggle_analysis"),
    Binding("f3", "app.copy_reply", "Copy reply", id="chat.copy_reply"),
    Binding("f4", "app.copy_code", "Copy code", id="chat.copy_code"),
    Binding("ctrl+s", "app.sessions", "Sessions", id="chat.sessions"),
    Binding("ctrl+n", "app.new_session", "New", id="chat.new_session"),
    Binding("ctrl+o", "app.models", "Model", id="chat.models"),
    Binding("ctrl+g", "app.params", "Params", id="chat.params"),
    Binding("ctrl+l", "toggle_tools", "Tools pane", id="chat.toggle_tools", show=False),
    Binding("f1", "app.help", "Help", id="app.help"),
    Binding("ctrl+p", "app.command_palette", "Commands", id="app.command_palette", show=False),
]

NEWLINE_HELP = "shift+enter / ctrl+j / alt+enter"


def normalize(keymap: Mapping[str, object] | None) -> dict[str, str]:
    """Config values may be a string ("ctrl+x") or a list of keys; Textual wants one comma-joined string."""
    out: dict[str, str] = {}
    for binding_id, keys in (keymap or {}).items():
        if isinstance(keys, str):
            out[binding_id] = keys
        elif isinstance(keys, list | tuple) and all(isinstance(k, str) for k in keys):
            out[binding_id] = ",".join(keys)
    return out

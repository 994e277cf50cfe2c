"""Every key binding of the app, with an id so the config's ``[keymap]`` table can remap it."""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence

from textual.binding import Binding
from textual.keys import Keys

CHAT_BINDINGS: list[Binding] = [
    # the footer shows them in this order, as many as fit: at 80 columns, quit to stop
    Binding("ctrl+q", "app.quit", "Quit", id="app.quit", priority=True),
    Binding("f1", "app.help", "Help", id="app.help"),
    Binding("ctrl+s", "app.sessions", "Sessions", id="chat.sessions"),
    Binding("ctrl+o", "app.models", "Model", id="chat.models"),
    Binding("ctrl+g", "app.params", "Params", id="chat.params"),
    Binding("escape", "app.stop", "Stop", id="chat.stop"),
    Binding("ctrl+r", "app.regenerate", "Regenerate", id="chat.regenerate"),
    Binding("f2", "app.edit_last", "Edit last", id="chat.edit_last"),
    Binding("ctrl+t", "app.toggle_analysis", "Thinking", id="chat.toggle_analysis"),
    Binding("f3", "app.copy_reply", "Copy reply", id="chat.copy_reply"),
    Binding("f4", "app.copy_code", "Copy code", id="chat.copy_code"),
    Binding("ctrl+n", "app.new_session", "New", id="chat.new_session"),
    Binding("ctrl+f", "app.attach", "Attach file", id="chat.attach", show=False),
    Binding("f5", "app.next_branch", "Next version", id="chat.next_branch", show=False),
    Binding("alt+up", "app.select_message", "Select a message", id="chat.select_message", show=False),
    Binding("f9", "app.cycle_effort", "Reasoning effort", id="chat.cycle_effort", show=False),
    Binding("f10", "app.set_temperature", "Temperature", id="chat.temperature", show=False),
    Binding("f8", "app.toggle_builtin_tools", "Tools on/off", id="chat.toggle_builtin_tools", show=False),
    Binding("ctrl+l", "toggle_tools", "Tools pane", id="chat.toggle_tools", show=False),
    Binding("ctrl+p", "app.command_palette", "Commands", id="app.command_palette", show=False),
]

NEWLINE_HELP = "shift+enter / ctrl+j / alt+enter"


MODIFIERS = frozenset({"ctrl", "shift", "alt", "meta", "super", "hyper"})
_NAMED_KEYS = frozenset(k.value.split("+")[-1] for k in Keys) | {"space", "tab", "enter", "backspace"} | {
    f"f{i}" for i in range(1, 25)
}


def valid_key(key: str) -> bool:
    """A key Textual can deliver: modifiers (each once) + one key, a character or a named key ("f1",
    "pageup", "question_mark"); "ctrl+zz" is not one."""
    *mods, base = key.split("+")
    if not base or any(m not in MODIFIERS for m in mods) or len(set(mods)) != len(mods):
        return False
    if len(base) == 1 or base in _NAMED_KEYS:
        return True
    try:
        unicodedata.lookup(base.replace("_", " "))  # Textual names characters by their Unicode name
    except KeyError:
        return False
    return True


def screen_bindings() -> dict[str, list[Binding]]:
    """The bindings of each screen, by screen name: ids must be known, and keys unique within a screen."""
    from mlx_harmony_tui.tui.screens import dialogs, help, models, params, sessions

    return {
        "chat": CHAT_BINDINGS,
        "confirm": dialogs.ConfirmScreen.BINDINGS,
        "prompt": dialogs.PromptScreen.BINDINGS,
        "help": help.HelpScreen.BINDINGS,
        "models": models.ModelPickerScreen.BINDINGS,
        "params": params.ParamsScreen.BINDINGS,
        "sessions": sessions.SessionBrowserScreen.BINDINGS,
    }  # type: ignore[return-value]


def validate_keymap(keymap: Mapping[str, object] | None) -> tuple[dict[str, str], list[str]]:
    """The ``[keymap]`` entries that work, and a warning naming each one that does not: an unknown action
    id, a key Textual cannot deliver, or a key the same screen already uses for another action (the
    default stays). Dropping them keeps the footer and F1 showing only keys that work."""
    scopes = screen_bindings()
    by_id: dict[str, tuple[str, Binding]] = {
        b.id: (scope, b) for scope, bindings in scopes.items() for b in bindings if b.id  # type: ignore[union-attr]
    }
    problems: list[str] = []
    accepted: dict[str, list[str]] = {}
    for binding_id, value in (keymap or {}).items():
        where = f"[keymap] {binding_id!r}"
        if binding_id not in by_id:
            problems.append(f"{where}: no such action id (F1 lists them); ignored")
            continue
        keys = [value] if isinstance(value, str) else value if isinstance(value, list | tuple) else None
        if keys is None or not all(isinstance(k, str) for k in keys):
            problems.append(f"{where}: give a key as text, e.g. \"ctrl+x\", or a list of them; ignored")
            continue
        good = [k.strip() for k in keys if valid_key(k.strip())]
        for bad in (k for k in keys if not valid_key(k.strip())):
            problems.append(f"{where} = {bad!r}: not a key name (e.g. ctrl+x, f5, pageup); ignored")
        if good:
            accepted[binding_id] = good
    # a key bound twice in one screen: the entry that caused it is dropped, the default binding stays
    for scope, bindings in scopes.items():
        owner: dict[str, str] = {}
        ordered = sorted((b for b in bindings if b.id), key=lambda b: b.id not in accepted)  # type: ignore[arg-type]
        for b in ordered[::-1]:  # defaults claim their keys first, then remapped entries
            for key in _effective(b, accepted):
                if key in owner and owner[key] != b.id:
                    problems.append(
                        f"[keymap] {b.id!r} = {key!r}: {key} is already bound to {owner[key]!r} in the {scope} "
                        "screen; ignored"
                    )
                    accepted[b.id] = [k for k in accepted.get(b.id, []) if k != key]  # type: ignore[index]
                    continue
                owner[key] = b.id  # type: ignore[assignment]
    return {k: ",".join(v) for k, v in accepted.items() if v}, problems


def _effective(binding: Binding, accepted: Mapping[str, Sequence[str]]) -> list[str]:
    keys = accepted.get(binding.id or "")
    return list(keys) if keys else [k.strip() for k in binding.key.split(",")]


# What each action does, in the command palette and F1 (the binding's description is the short title).
ACTION_HELP = {
    "app.help": "every key and its id",
    "chat.sessions": "browse, search, open, rename and delete saved sessions",
    "chat.models": "pick or load another model",
    "chat.params": "sampling, limits, reasoning effort, prompts",
    "chat.stop": "stop generating; the partial reply is kept",
    "chat.regenerate": "a new version of the last reply (the old one stays as a branch)",
    "chat.edit_last": "edit your last message (the old exchange stays as a branch)",
    "chat.toggle_analysis": "open or fold every Thinking section",
    "chat.copy_reply": "copy the last reply to the clipboard",
    "chat.copy_code": "copy the last code block to the clipboard",
    "chat.new_session": "start an empty conversation",
    "chat.attach": "attach a file to the next message",
    "chat.next_branch": "flip the last edited or regenerated message to its next version",
    "chat.select_message": "select a message to copy (c), edit (e), regenerate (r) or flip ([ ])",
    "chat.cycle_effort": "reasoning effort low -> medium -> high (remote: -> server default)",
    "chat.temperature": "set the sampling temperature",
    "chat.toggle_builtin_tools": "turn the built-in tools (python, browser) off or back on",
    "chat.toggle_tools": "show or hide the tool-call pane",
}

"""The parameters panel: sampling, limits, reasoning effort and prompts, applied to the next turn.

With a remote backend a value the user has not set is the server's choice (its model's default), unknown
here: its field is empty with a "server default" hint, and emptying a field gives it back to the server.
"""

from __future__ import annotations

import copy

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, Label, Select, Static, TextArea

from mlx_harmony_tui.chat.settings import REQUEST_KEYS, ChatSettings
from mlx_harmony_tui.errors import UserError
from mlx_harmony_tui.faces.common import check, parse_value

# (setting key, label); values are read and checked as the flags and /set do (faces/common.py)
NUMERIC = [
    ("temperature", "Temperature"),
    ("top_p", "Top p"),
    ("top_k", "Top k (0 = off)"),
    ("min_p", "Min p (0 = off)"),
    ("repetition_penalty", "Repetition penalty (1 = off)"),
    ("max_tokens", "Max tokens"),
    ("context_limit", "Context limit (empty = model's)"),
]


class ParamsScreen(ModalScreen[ChatSettings | None]):
    """Dismisses with new settings (Enter in a field, ctrl+s or Apply) or None (Esc or Cancel); an invalid
    number keeps the panel open and names the field. The first field has the focus, so typing edits it.
    ``server_defaults``: the backend leaves unset values to its server (empty fields say so)."""

    CSS_PATH = "params.tcss"
    AUTO_FOCUS = "#p-temperature"
    BINDINGS = [
        Binding("ctrl+s", "apply", "Apply", id="params.apply", priority=True),
        Binding("escape", "cancel", "Cancel", id="params.cancel"),
    ]

    def __init__(self, settings: ChatSettings, server_defaults: bool = False) -> None:
        super().__init__()
        self.settings = settings
        self.server_defaults = server_defaults

    def _servers(self, name: str) -> bool:
        """Whether this value is left to the server (shown empty)."""
        return self.server_defaults and name in REQUEST_KEYS and name not in self.settings.explicit

    def compose(self) -> ComposeResult:
        s = self.settings
        with Vertical(id="params-box"):
            yield Static("[b]Parameters[/b] for the next turn · enter applies · esc cancels")
            with VerticalScroll(id="params-fields"):
                for name, label in NUMERIC:
                    value = None if self._servers(name) else s.value(name)
                    hint = "server default" if self.server_defaults and name in REQUEST_KEYS else ""
                    with Horizontal(classes="row"):
                        yield Label(label)
                        yield Input("" if value is None else str(value), placeholder=hint, id=f"p-{name}",
                                    compact=True)
                with Horizontal(classes="row"):
                    yield Label("Reasoning effort")
                    yield Select(
                        [(x, x) for x in ("low", "medium", "high")],
                        value=Select.NULL if self._servers("reasoning_effort") else s.reasoning_effort,
                        allow_blank=self.server_defaults,
                        prompt="server default",
                        id="p-reasoning_effort",
                        compact=True,
                    )
                with Horizontal(classes="row"):
                    yield Label("Built-in tools")
                    yield Checkbox("python", "python" in s.builtin_tools, id="p-tool-python", compact=True)
                    yield Checkbox("browser", "browser" in s.builtin_tools, id="p-tool-browser", compact=True)
                yield Label("Developer instructions")
                yield TextArea(s.instructions, id="p-instructions")
                yield Label("System prompt (extra system text)")
                yield TextArea(s.system_prompt, id="p-system_prompt")
            yield Static("", id="params-error")
            with Horizontal(id="params-buttons"):
                yield Button("Apply (ctrl+s)", variant="primary", id="apply", compact=True)
                yield Button("Cancel (esc)", id="cancel", compact=True)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "apply":
            self.action_apply()
        elif event.button.id == "cancel":
            self.action_cancel()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        """Enter in a field applies the panel, as in any form."""
        event.stop()
        self.action_apply()

    def read(self) -> ChatSettings:
        """The panel's values as new settings; ValueError names the bad field. A changed value (any value,
        with server defaults) becomes the user's; an empty field of a server's value gives it back."""
        s = copy.deepcopy(self.settings)
        for name, label in NUMERIC:
            raw = self.query_one(f"#p-{name}", Input).value.strip()
            if raw == "" and self.server_defaults and name in REQUEST_KEYS:
                s.unset(name)
                continue
            try:  # the parsing and ranges of the command-line flags and chat's /set (faces/common.py)
                value = parse_value(name, raw, label)
                check(name, value, label)
            except UserError as e:
                raise ValueError(str(e)) from None
            if self.server_defaults or value != s.value(name):
                s.set_value(name, value)
        effort = self.query_one("#p-reasoning_effort", Select).value
        if effort == Select.NULL:
            s.unset("reasoning_effort")
        elif self.server_defaults or effort != s.reasoning_effort:
            s.set_value("reasoning_effort", effort)
        s.builtin_tools = [t for t in ("python", "browser") if self.query_one(f"#p-tool-{t}", Checkbox).value]
        s.instructions = self.query_one("#p-instructions", TextArea).text
        s.system_prompt = self.query_one("#p-system_prompt", TextArea).text
        return s

    def action_apply(self) -> None:
        try:
            new = self.read()
        except ValueError as e:
            self.query_one("#params-error", Static).update(str(e))
            return
        self.dismiss(new)

    def action_cancel(self) -> None:
        self.dismiss(None)

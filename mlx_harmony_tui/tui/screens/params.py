"""The parameters panel: sampling, limits, reasoning effort and prompts, applied to the next turn."""

from __future__ import annotations

import copy
from dataclasses import replace

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, Label, Select, Static, TextArea

from mlx_harmony_tui.chat.settings import ChatSettings

# (field id, label, type, where: "sampling" or "settings")
NUMERIC = [
    ("temperature", "Temperature", float, "sampling"),
    ("top_p", "Top p", float, "sampling"),
    ("top_k", "Top k (0 = off)", int, "sampling"),
    ("min_p", "Min p (0 = off)", float, "sampling"),
    ("repetition_penalty", "Repetition penalty (1 = off)", float, "sampling"),
    ("max_tokens", "Max tokens", int, "settings"),
    ("context_limit", "Context limit (empty = model's)", int, "settings"),
]


class ParamsScreen(ModalScreen[ChatSettings | None]):
    """Dismisses with new settings (Enter in a field, ctrl+s or Apply) or None (Esc or Cancel); an invalid
    number keeps the panel open and names the field. The first field has the focus, so typing edits it."""

    CSS_PATH = "params.tcss"
    AUTO_FOCUS = "#p-temperature"
    BINDINGS = [
        Binding("ctrl+s", "apply", "Apply", id="params.apply", priority=True),
        Binding("escape", "cancel", "Cancel", id="params.cancel"),
    ]

    def __init__(self, settings: ChatSettings) -> None:
        super().__init__()
        self.settings = settings

    def compose(self) -> ComposeResult:
        s = self.settings
        with Vertical(id="params-box"):
            yield Static("[b]Parameters[/b] for the next turn · enter applies · esc cancels")
            with VerticalScroll(id="params-fields"):
                for name, label, _typ, where in NUMERIC:
                    value = getattr(s.sampling if where == "sampling" else s, name)
                    with Horizontal(classes="row"):
                        yield Label(label)
                        yield Input("" if value is None else str(value), id=f"p-{name}", compact=True)
                with Horizontal(classes="row"):
                    yield Label("Reasoning effort")
                    yield Select(
                        [(x, x) for x in ("low", "medium", "high")],
                        value=s.reasoning_effort,
                        allow_blank=False,
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
        """The panel's values as new settings; ValueError names the bad field."""
        s = copy.deepcopy(self.settings)
        sampling_changes: dict[str, object] = {}
        for name, label, typ, where in NUMERIC:
            raw = self.query_one(f"#p-{name}", Input).value.strip()
            if raw == "" and name == "context_limit":
                value: object = None
            else:
                try:
                    value = typ(raw)
                except ValueError:
                    raise ValueError(f"{label}: {raw!r} is not a valid {typ.__name__}") from None
                if isinstance(value, int | float) and value < 0:
                    raise ValueError(f"{label}: must not be negative")
            if where == "sampling":
                sampling_changes[name] = value
            else:
                setattr(s, name, value)
        s.sampling = replace(s.sampling, **sampling_changes)  # type: ignore[arg-type]
        s.reasoning_effort = self.query_one("#p-reasoning_effort", Select).value  # type: ignore[assignment]
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

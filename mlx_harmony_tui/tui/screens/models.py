"""The model picker: GPT-OSS checkpoints found on disk, plus the built-in demo model and a typed path."""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, OptionList, Static
from textual.widgets.option_list import Option

from mlx_harmony_tui.backends.discovery import ModelEntry


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n else ""


class ModelPickerScreen(ModalScreen[str | None]):
    """Dismisses with a model reference ("demo" or a path) or None."""

    DEFAULT_CSS = """
    ModelPickerScreen { align: center middle; }
    ModelPickerScreen > Vertical { width: 100; height: 80%; border: thick $primary; background: $surface; padding: 0 1; }
    ModelPickerScreen OptionList { height: 1fr; }
    """
    BINDINGS = [Binding("escape", "cancel", "Cancel", id="models.cancel")]

    def __init__(self, entries: list[ModelEntry], current: str = "") -> None:
        super().__init__()
        self.entries = entries
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(f"[b]Choose a model[/b]  (current: {self.current or 'none'})")
            options = [Option("demo  (built-in tiny model)", id="demo")]
            for i, e in enumerate(self.entries):
                bits = [e.name, e.source, e.quantization or "", _size(e.size_bytes), str(e.path)]
                options.append(Option("  ".join(b for b in bits if b), id=f"m{i}"))
            yield OptionList(*options, id="model-list")
            if not self.entries:
                yield Static(
                    "No GPT-OSS models found in the configured folders or the Hugging Face cache.",
                    classes="hint",
                )
            yield Input(placeholder="…or type a path to a model folder and press Enter", id="model-path")

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        oid = event.option.id or ""
        self.dismiss("demo" if oid == "demo" else str(self.entries[int(oid[1:])].path))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.value.strip():
            self.dismiss(str(Path(event.value.strip()).expanduser()))

    def action_cancel(self) -> None:
        self.dismiss(None)

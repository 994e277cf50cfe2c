"""The model picker (ctrl+o): the same list as ``models list``, what fits marked, and a box that loads a
folder, a name or a downloaded repo, or starts downloading a repo in the background."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.markup import escape
from textual.screen import ModalScreen
from textual.widgets import Input, OptionList, Static
from textual.widgets.option_list import Option

from mlx_harmony_tui.catalog import hub
from mlx_harmony_tui.catalog.listing import ModelEntry, columns
from mlx_harmony_tui.catalog.resolve import resolve
from mlx_harmony_tui.engine import memory
from mlx_harmony_tui.errors import UserError

_FITS_STYLE = {"yes": "green", "no": "bold red", "broken": "yellow", "?": "dim"}
_FITS_WORD = {"yes": "fits", "no": "too big", "broken": "broken", "?": "fit ?"}


def entry_label(entry: ModelEntry, widths: dict[int, int], current: bool) -> Text:
    """One aligned row of the columns in ``widths`` (index into ``columns``), then whether it fits (coloured)."""
    cells = columns(entry)
    fit = cells[-1]
    text = Text("● " if current else "  ")
    text.append("  ".join(cells[i][:w].ljust(w) for i, w in widths.items()))
    text.append("  ")
    text.append(_FITS_WORD[fit], style=_FITS_STYLE[fit])
    return text


def fit_columns(entries: list[ModelEntry], room: int) -> dict[int, int]:
    """Which of name, source, size, layout, quantization fit in ``room`` cells, by priority, with widths:
    a narrow terminal keeps name, size and the fit word on one line and drops the rest."""
    widths = {i: max([len(columns(e)[i]) for e in entries] + [0]) for i in range(5)}
    room -= 2 + 2 + len("too big")  # the current mark, the gap before the fit word, the fit word
    chosen: dict[int, int] = {}
    for i in (0, 2, 4, 3, 1):  # name, size, quantization, layout, source
        need = widths[i] + (2 if chosen else 0)
        if need <= room:
            chosen[i] = widths[i]
            room -= need
        elif i == 0:
            chosen[i] = max(8, room)  # a long name is cut rather than wrapped
            room = 0
    return dict(sorted(chosen.items()))


class ModelPickerScreen(ModalScreen[str | None]):
    """Dismisses with what to load ("demo", a folder, a name or a repo id) or None."""

    DEFAULT_CSS = """
    ModelPickerScreen { align: center middle; }
    ModelPickerScreen > Vertical { width: 90%; max-width: 130; height: 80%; border: thick $primary;
                                   background: $surface; padding: 0 1; }
    ModelPickerScreen OptionList { height: 1fr; }
    ModelPickerScreen #model-hint { color: $text-muted; }
    ModelPickerScreen #model-hint.error { color: $error; }
    """
    BINDINGS = [Binding("escape", "cancel", "Cancel", id="models.cancel")]

    def __init__(
        self, entries: list[ModelEntry], current: str = "", models_dirs: Iterable[str | Path] = ()
    ) -> None:
        super().__init__()
        self.entries = entries
        self.current = current
        self.models_dirs = list(models_dirs)

    def compose(self) -> ComposeResult:
        # the dialog is 90% of the screen (at most 130) minus its border, padding and the list's gutter
        widths = fit_columns(self.entries, min(130, int(self.app.size.width * 0.9)) - 6)
        with Vertical():
            yield Static(f"[b]Choose a model[/b]  (current: {escape(self.current or 'none')})")
            options = [
                Option(
                    Text(("● " if self.current == "demo" else "  ") + "demo  (built-in tiny model)"),
                    id="demo",
                )
            ]
            for i, e in enumerate(self.entries):
                current = self.current in (e.name, str(e.path))
                options.append(Option(entry_label(e, widths, current), id=f"m{i}"))
            yield OptionList(*options, id="model-list")
            if self.entries:
                budget = memory.memory_budget()
                have = f"{budget.nbytes / 1e9:.1f} GB, {budget.source}" if budget.nbytes else "unknown"
                hint = f"fits: weights + KV cache for the configured context + working memory within {have}"
            else:
                hint = "No GPT-OSS models in models_dirs or the Hugging Face cache yet: type a repo id below to get one."
            yield Static(hint, id="model-hint", markup=False)
            yield Input(
                placeholder="a folder, a name, or a Hugging Face repo (OWNER/NAME[@REV]) to download, then Enter",
                id="model-path",
                select_on_focus=False,  # a key typed in the list moves here; it must not select itself away
            )

    def on_key(self, event: events.Key) -> None:
        """Typing while the list has focus goes into the box below it (the hint says "type a repo id below");
        otherwise the letters would vanish and Enter would load the highlighted model instead."""
        box = self.query_one("#model-path", Input)
        if event.is_printable and event.character and self.focused is not box:
            event.prevent_default()
            event.stop()
            box.focus()
            box.insert_text_at_cursor(event.character)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        oid = event.option.id or ""
        if oid == "demo":
            self.dismiss("demo")
            return
        entry = self.entries[int(oid[1:])]
        if entry.problem:
            self._say(entry.problem, error=True)
            return
        # hub-cache models by their repo id (the title shows it), folders by path (unambiguous)
        self.dismiss(entry.name if entry.source == "hf-cache" else str(entry.path))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        if not text:
            return
        try:
            resolve(text, self.models_dirs)
        except UserError as e:
            repo = hub.parse_repo(text)
            if repo is None or not str(e).startswith(f"{repo[0]} is not downloaded"):
                self._say(str(e), error=True)
                return
            self._pull(text)
            return
        self.dismiss(text if not text.startswith(("~", ".", "/")) else str(Path(text).expanduser()))

    def _pull(self, repo: str) -> None:
        from mlx_harmony_tui.tui.pull import start_pull

        if hub.offline():
            self._say(f"cannot download {repo}: HF_HUB_OFFLINE is set", error=True)
            return
        app = self.app

        def done(name: str, status: int, error: str) -> None:
            if status == 0:
                app.notify(f"Downloaded {name}: ctrl+o to load it", title="Model ready", timeout=10)
            else:
                app.notify(error or f"download of {name} stopped", title="Download failed", severity="error")

        if start_pull(app, repo, done) is None:
            self._say("a download is already running; wait for it to finish", error=True)
            return
        app.notify(f"Downloading {repo} in the background; the current model keeps chatting")
        self.dismiss(None)

    def _say(self, message: str, error: bool = False) -> None:
        hint = self.query_one("#model-hint", Static)
        hint.update(message)
        hint.set_class(error, "error")

    def action_cancel(self) -> None:
        self.dismiss(None)

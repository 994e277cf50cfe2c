"""The chat screen's header: the model and the next turn's settings on one line. A line too long for the
terminal first loses the app's name (18 of the 62 cells an 80-column header has, for what the user knows),
then whole items from its end, shown by "…", instead of being cut mid-word; a remote server's "server
defaults" item stays: without it the values shown would read as all there is."""

from __future__ import annotations

from rich.cells import cell_len
from textual.content import Content
from textual.widgets import Header, Static

SEP = " · "
SERVER_DEFAULTS = "server defaults"  # remote, nothing set: the server chooses every value
REST_SERVER_DEFAULTS = "rest: server defaults"  # remote: the values shown are the user's
MORE = "…"


def fit_header(title: str, parts: list[str], width: int) -> tuple[str, list[str]]:
    """The title (or "" once dropped) and the parts that fit ``width`` cells, in their order; a last part
    naming the server's defaults is kept. Past the first part alone, the header cuts what is left."""

    def fits(t: str, ps: list[str]) -> bool:
        return cell_len((f"{t} — " if t else "") + SEP.join(ps)) <= width

    if width <= 0 or fits(title, parts):  # width 0: not laid out yet
        return title, parts
    if fits("", parts):
        return "", parts
    pinned = parts[-1:] if parts and parts[-1] in (SERVER_DEFAULTS, REST_SERVER_DEFAULTS) else []
    kept = parts[: len(parts) - len(pinned)]
    while len(kept) > 1:
        kept.pop()
        if fits("", [*kept, MORE, *pinned]):
            break
    return "", [*kept, MORE, *pinned]


class SettingsHeader(Header):
    """Textual's header whose sub-title (items joined by ``SEP``) is fitted to the room it has."""

    def on_resize(self) -> None:
        self.call_after_refresh(self._refit)  # once the title's new width is laid out

    def _refit(self) -> None:
        self._title().update(self.format_title())

    def _title(self) -> Static:
        return self.query_one("HeaderTitle", Static)

    def format_title(self) -> Content:
        sub = self.screen_sub_title
        width = self._title().content_size.width if self.is_mounted else 0
        title, parts = fit_header(self.screen_title, sub.split(SEP) if sub else [], width)
        if title or not parts:
            return self.app.format_title(title, SEP.join(parts))
        rest = SEP.join(parts[1:])  # in the title's place: the model undimmed, the settings dim as before
        return Content.assemble(parts[0], (f"{SEP}{rest}" if rest else "", "dim"))

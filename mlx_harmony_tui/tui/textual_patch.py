"""A process-wide adjustment of Textual's layout for streaming, applied once when the app mounts."""

from __future__ import annotations

import inspect
import os
from typing import Any


def one_layout_pass_per_change() -> None:
    """Textual's full reflow hands every resized widget its new virtual size through a reactive declared
    with layout=True, which queues a second, redundant reflow: two layout passes per streamed text write.
    Setting it without that refresh (what Textual's own scroll-only reflow does) halves them; the
    scrollbars are still updated. Measured in a streamed reply: 146 -> 115 layout passes, UI thread CPU
    -27% (docs/benchmarks.md). Applied once, process-wide; MHT_LAYOUT_PATCH=0 turns it off."""
    from textual.widget import Widget

    original = Widget._size_updated
    if getattr(original, "_mht_one_pass", False) or os.environ.get("MHT_LAYOUT_PATCH", "1") == "0":
        return
    if list(inspect.signature(original).parameters) != ["self", "size", "virtual_size", "container_size", "layout"]:
        return  # a Textual whose private method changed: keep its behaviour rather than guess

    def size_updated(self: Widget, size: Any, virtual_size: Any, container_size: Any, layout: bool = True) -> bool:
        return original(self, size, virtual_size, container_size, layout=False)

    size_updated._mht_one_pass = True  # type: ignore[attr-defined]
    Widget._size_updated = size_updated  # type: ignore[method-assign]

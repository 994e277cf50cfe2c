"""What a new user met in the first minutes of the app (QA round of 2026-12-03), each test failing on the code
before its fix: the footer's last column, branch notes left behind, the parameters panel's ranges, damaged
session files skipped without a word."""

from __future__ import annotations

import pytest
from textual.widgets._footer import FooterKey
from tui_fakes import ScriptedBackend, simple_reply

from mlx_harmony_tui.tui.app import HarmonyApp

SMALL, LARGE = (80, 24), (200, 50)


def make_app(**kwargs) -> HarmonyApp:
    return HarmonyApp(backend=ScriptedBackend(simple_reply("Think.", "ok")), show_welcome=False, **kwargs)


@pytest.mark.parametrize("size", [SMALL, LARGE])
async def test_the_palette_key_covers_the_footer_to_its_last_column(size) -> None:
    """At 80 columns the keys that do not fit scroll under the palette key docked at the right; its margin
    left the last column uncovered, so a letter of a hidden key showed there ("^p palettea")."""
    app = make_app()
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        palette = next(k for k in app.screen.query(FooterKey) if k.has_class("-command-palette"))
        assert palette.region.right == size[0]

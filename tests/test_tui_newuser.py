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


async def send(pilot, text: str) -> None:
    pilot.app.screen.query_one("ChatInput").focus()
    await pilot.press(*text, "enter")
    await pilot.app.wait_idle(10)
    await pilot.pause()


def shown(app: HarmonyApp) -> str:
    return "\n".join(str(w.render()) for w in app.conversation.query("Static"))


async def test_no_stale_earlier_versions_note_after_regenerate_or_edit() -> None:
    """ctrl+r and F2 take the old version back and show "earlier version(s) here: f5 brings one back" where
    it was; the new reply or message then takes that place (numbered 2/2), but the note stayed above it."""
    app = make_app()
    async with app.run_test(size=LARGE) as pilot:
        await send(pilot, "one")
        await pilot.press("ctrl+r")
        await app.wait_idle(10)
        await pilot.pause()
        assert "Assistant  ‹ 2/2 ›" in shown(app)
        assert "earlier version" not in shown(app)
        await pilot.press("f2")
        await pilot.pause()
        assert "earlier version" in shown(app)  # while the message is being edited, the note says where
        await pilot.press(*" more", "enter")
        await app.wait_idle(10)
        await pilot.pause()
        assert "You  ‹ 2/2 ›" in shown(app)
        assert "earlier version" not in shown(app)

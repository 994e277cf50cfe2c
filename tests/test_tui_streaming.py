"""Streaming cost and responsiveness: the conversation follows new text through Textual's anchor (no
scroll frame per write) but never past a user who scrolled up, and the key-latency probe of
scripts/ui_latency.py records real key-to-frame times."""

from __future__ import annotations

import json

from tui_fakes import ScriptedBackend, simple_reply

from mlx_harmony_tui.tui.app import HarmonyApp
from mlx_harmony_tui.tui.latency import ENV
from mlx_harmony_tui.tui.widgets.chat_input import ChatInput

SIZE = (100, 30)
LONG = "\n\n".join(f"Paragraph {i} of a long answer that needs scrolling." for i in range(60))


async def send(pilot, text: str) -> None:
    box = pilot.app.screen.query_one(ChatInput)
    box.focus()
    box.text = text
    await pilot.press("enter")


async def test_short_reply_stays_at_the_top() -> None:
    app = HarmonyApp(backend=ScriptedBackend(simple_reply("hm", "Short.")), show_welcome=False)
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "hi")
        await app.wait_idle(10)
        await pilot.pause(0.1)
        conv = app.conversation
        assert conv.max_scroll_y == 0 and conv.scroll_y == 0  # textual#6652 would make it negative


async def test_long_reply_is_followed_unless_the_user_scrolls_up() -> None:
    app = HarmonyApp(backend=ScriptedBackend(simple_reply("", LONG, delay=0.005, chunk=20)),
                     show_welcome=False)
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "long please")
        await app.wait_idle(20)
        await pilot.pause(0.2)
        conv = app.conversation
        assert conv.max_scroll_y > 50
        assert conv.scroll_y == conv.max_scroll_y  # followed to the end

        await send(pilot, "again")
        while app.generating and conv.scroll_y < 20:  # let it stream past a screen, then scroll up
            await pilot.pause(0.02)
        assert app.generating
        conv.scroll_to(y=5, animate=False)
        await app.wait_idle(20)
        await pilot.pause(0.2)
        assert conv.scroll_y == 5  # left where the user put it

        conv.scroll_end(animate=False)  # back at the end: following resumes for the next reply
        await send(pilot, "once more")
        await app.wait_idle(20)
        await pilot.pause(0.2)
        assert conv.scroll_y == conv.max_scroll_y


async def test_latency_probe_records_keys_typed_while_streaming(tmp_path, monkeypatch) -> None:
    log = tmp_path / "latency.json"
    monkeypatch.setenv(ENV, str(log))
    app = HarmonyApp(backend=ScriptedBackend(simple_reply("", LONG, delay=0.01, chunk=10)),
                     show_welcome=False)
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "long please")
        await pilot.pause(0.2)
        for ch in "abcdef":
            assert app.generating
            await pilot.press(ch)
            await pilot.pause(0.05)
        assert app.screen.query_one(ChatInput).text == "abcdef"
        app.action_stop()
        await app.wait_idle(10)
    samples = json.loads(log.read_text())
    assert len(samples) == 6
    assert all(0 <= s < 1.0 for s in samples)

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
    # ~30 s of reply at the least (stopped below): on a loaded machine the six keys may take seconds
    app = HarmonyApp(backend=ScriptedBackend(simple_reply("", LONG * 10, delay=0.01, chunk=10)),
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
    doc = json.loads(log.read_text())
    assert len(doc["frames"]) == len(doc["queued"]) == 6
    # durations in seconds, the frame after the key's queueing; the bound only catches garbage (a loaded
    # machine once took over a second for a frame: timings are benchmarks, scripts/ui_latency.py)
    assert all(0 <= q <= f < 30.0 for q, f in zip(doc["queued"], doc["frames"], strict=True))


def test_freeze_point_keeps_code_fences_whole() -> None:
    from mlx_harmony_tui.tui.widgets.messages import FREEZE_CHARS, freeze_point, safe_split

    assert safe_split("a\n\nb\n\nc") == len("a\n\nb\n\n")
    fenced = "intro\n\n```\nx = 1\n\ny = 2\n"  # the blank line inside the open fence is not a cut
    assert safe_split(fenced) == len("intro\n\n")
    assert safe_split("```\ncode\n\nmore") == 0
    assert freeze_point("short\n\ntext") == 0  # under the limit: nothing moves
    one_line = "word " * (FREEZE_CHARS // 2)  # past twice the limit with no blank line: a space will do
    assert freeze_point(one_line) == len(one_line)
    assert freeze_point("w" * (3 * FREEZE_CHARS)) == 0  # no place to cut at all


async def test_long_streamed_reply_freezes_settled_blocks_and_ends_whole() -> None:
    """While a long reply streams, settled paragraphs leave the live Markdown widget (so each write stays
    cheap); the finished message has no live widget left, its blocks in order, and exactly the text."""
    from textual.widgets import Markdown

    from mlx_harmony_tui.tui.widgets.messages import FREEZE_CHARS, AssistantMessage

    text = LONG + "\n\n```python\nprint('done')\n```\n"
    app = HarmonyApp(backend=ScriptedBackend(simple_reply("", text, delay=0.01, chunk=40)), show_welcome=False)
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "long please")
        most_frozen, live_max = 0, 0
        for _ in range(400):
            await pilot.pause(0.02)
            msgs = list(app.screen.query(AssistantMessage))
            part = msgs[-1]._parts.get("final") if msgs else None
            if part is not None and part.streaming:
                most_frozen = max(most_frozen, len(part.frozen))
                live_max = max(live_max, len(part.text) - part.live_from)
            if app.handle is None:
                break
        await app.wait_idle(10)
        await pilot.pause(0.1)
        msg = app.screen.query_one(AssistantMessage)
        assert most_frozen >= 1 and live_max < 2 * FREEZE_CHARS
        assert msg.final_text == text and not msg.query(Markdown)  # nothing live
        blocks = [w.content.markup for w in msg.query(".final")]  # the Rich Markdown sources
        assert len(blocks) >= 2 and "".join(blocks) == text and "Paragraph 59 " not in blocks[0]
        assert msg.code_blocks() == ["print('done')\n"]


async def test_a_write_after_a_skipped_screen_tick_still_reaches_the_screen(monkeypatch) -> None:
    """Textual skips a screen update tick that lands inside a batch_update and pauses the screen's update
    timer until the screen next goes idle outside a batch; text writes run inside batches, so without a
    prompt afterwards the screen could stay unpainted (keys typed meanwhile too) until some later message:
    0.5-1 s in a real terminal. After a write the screen must paint on its own."""
    import asyncio

    from mlx_harmony_tui.tui.widgets.messages import AssistantMessage

    app = HarmonyApp(backend=ScriptedBackend(simple_reply("", "Short.")), show_welcome=False)
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "hello")
        await app.wait_idle(10)
        await pilot.pause(0.2)
        msg = app.screen.query(AssistantMessage).last()
        write = msg.write

        async def write_then_tick(channel: str, text: str) -> None:
            await write(channel, text)
            app.screen._on_timer_update()  # an update tick lands inside the batch: skipped, timer paused
            await asyncio.sleep(0.05)  # the screen drains its queue and goes idle while the batch is open

        monkeypatch.setattr(msg, "write", write_then_tick)
        app.view.current, app.view.text_buf = msg, [("final", [" More text."])]
        frames: list[int] = []
        monkeypatch.setattr(app, "post_display_hook", lambda: frames.append(1))
        await app.view.flush_text()
        await asyncio.sleep(0.3)
        assert frames, "the write never reached a frame"
        app.view.current = None


async def test_a_growing_widget_costs_one_layout_pass(monkeypatch) -> None:
    """Streamed text grows a widget; Textual's reflow would then queue a second, redundant one (its
    virtual_size reactive refreshes the layout). The app's one_layout_pass_per_change removes it."""
    from textual.screen import Screen
    from textual.widgets import Static

    app = HarmonyApp(backend=ScriptedBackend(simple_reply("", "x")), show_welcome=False)
    async with app.run_test(size=SIZE) as pilot:
        static = Static("one")
        await app.conversation.mount(static)
        await pilot.pause(0.2)
        passes: list[int] = []
        original = Screen._refresh_layout

        def counting(self, *args, **kwargs):
            passes.append(1)
            return original(self, *args, **kwargs)

        monkeypatch.setattr(Screen, "_refresh_layout", counting)
        for _ in range(30):  # on a busy machine start-up work (the footer's recompose) may still be due
            passes.clear()
            await pilot.pause(0.3)
            if not passes:
                break
        static.update("one\ntwo\nthree\nfour")
        await pilot.pause(0.3)
        assert static.size.height == 4
        assert len(passes) == 1

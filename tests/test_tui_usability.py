"""The app as a new user meets it (issue 18): every dialog usable at 80x24, keys that do what they say.

Each test here failed on the code before its fix."""

from __future__ import annotations

import pytest
from textual.widgets import Button, Input
from tui_fakes import ScriptedBackend, simple_reply

from mlx_harmony_tui.tui.app import HarmonyApp

SMALL, LARGE = (80, 24), (160, 48)


def make_app(**kwargs) -> HarmonyApp:
    return HarmonyApp(backend=ScriptedBackend(simple_reply("", "ok")), show_welcome=False, **kwargs)


def visible(screen, widget) -> bool:
    """The widget lies entirely inside the terminal (what a user can see and click)."""
    r, size = widget.region, screen.size
    return r.width > 0 and r.height > 0 and r.x >= 0 and r.y >= 0 and r.right <= size.width and r.bottom <= size.height


@pytest.mark.parametrize("size", [SMALL, LARGE])
async def test_params_panel_focuses_first_field_fits_and_enter_applies(size) -> None:
    app = make_app()
    async with app.run_test(size=size) as pilot:
        await pilot.press("ctrl+g")
        screen = app.screen
        assert screen.__class__.__name__ == "ParamsScreen"
        first = screen.query_one("#p-temperature", Input)
        assert screen.focused is first  # typing edits the first field at once
        assert visible(screen, screen.query_one("#apply", Button))
        # every field can be reached and is scrolled into view when focused
        for field in screen.query("#params-fields Input, #params-fields Select, #params-fields TextArea"):
            field.focus()
            for _ in range(50):  # scrolling into view may animate: wait for it, generously
                await pilot.pause(0.05)
                if visible(screen, field):
                    break
            assert visible(screen, field), f"{field.id} is off screen at {size}"
        first.focus()
        await pilot.press("end", *["backspace"] * 6, "0", ".", "4", "enter")
        assert app.screen.__class__.__name__ != "ParamsScreen"
        assert app.settings.sampling.temperature == 0.4


async def test_params_panel_esc_cancels() -> None:
    app = make_app()
    async with app.run_test(size=SMALL) as pilot:
        await pilot.press("ctrl+g")
        await pilot.press("9")
        await pilot.press("escape")
        assert app.screen.__class__.__name__ != "ParamsScreen"
        assert app.settings.sampling.temperature == 1.0


async def test_bad_keymap_entries_warn_and_help_shows_what_works() -> None:
    from textual.widgets import DataTable

    keymap = {
        "app.quit": "ctrl+zz",  # not a key
        "chat.no_such_action": "f5",  # not an action id
        "chat.regenerate": "ctrl+s",  # already Sessions
        "chat.copy_reply": ["f12", "ctrl+alt+ctrl+c"],  # one good, one with a doubled modifier
    }
    app = make_app(keymap=keymap)
    async with app.run_test(size=LARGE) as pilot:
        notes = "\n".join(app.startup_notes)
        assert "'app.quit' = 'ctrl+zz'" in notes and "not a key name" in notes
        assert "'chat.no_such_action'" in notes and "no such action id" in notes
        assert "'chat.regenerate' = 'ctrl+s'" in notes and "'chat.sessions'" in notes
        assert "ctrl+alt+ctrl+c" in notes
        shown = " ".join(str(n.message) for n in app._notifications)
        assert "ctrl+zz" in shown  # warned on screen at start, not only logged
        await pilot.press("f1")
        table = app.screen.query_one(DataTable)
        rows = {table.get_row_at(i)[2]: table.get_row_at(i)[0] for i in range(table.row_count)}
        assert rows["app.quit"] == "ctrl+q" and rows["chat.regenerate"] == "ctrl+r"
        assert rows["chat.copy_reply"] == "f12"
        await pilot.press("escape")
        await pilot.press("ctrl+s")  # still opens the sessions browser
        assert app.screen.__class__.__name__ == "SessionBrowserScreen"


def _saved_sessions(n: int = 3) -> list[str]:
    from mlx_harmony_tui.sessions.schema import Message, Session
    from mlx_harmony_tui.sessions.store import SessionStore

    store, ids = SessionStore(), []
    for i in range(n):
        when = f"2025-0{i + 1}-1{i}T09:30:00.000Z"
        s = Session(id=f"2025010{i}-093000-abcde{i}", title=f"A rather long session title number {i} " * 2,
                    model="gpt-oss-20b-mlx-q4", created_at=when, updated_at=when)
        for k in range(i + 1):
            s.messages += [Message(id=f"u{k}", role="user", content=f"question {k}" + " filler" * 50),
                           Message(id=f"a{k}", role="assistant", channel="analysis", content="hmm"),
                           Message(id=f"f{k}", role="assistant", channel="final", content=f"answer {k}")]
        s.messages[-1].content += " mentions okapi"
        store.save(s, touch=False)
        ids.append(s.id)
    return ids


@pytest.mark.parametrize("size", [SMALL, (140, 40), LARGE])
async def test_session_browser_fits_counts_turns_and_says_no_matches(size) -> None:
    from textual.widgets import DataTable, Static

    ids = _saved_sessions()
    app = make_app()
    async with app.run_test(size=size) as pilot:
        await pilot.press("ctrl+s")
        screen = app.screen
        box, table = screen.query_one("#browser-box"), screen.query_one(DataTable)
        assert box.region.right <= size[0] and box.region.x >= 0
        # every column, the turn count included, ends inside the table (nothing cut off at the right edge)
        assert sum(c.get_render_width(table) for c in table.columns.values()) <= table.scrollable_content_region.width
        labels = [str(c.label) for c in table.columns.values()]
        assert labels[-1] == "Turns"
        turns = {str(table.get_row(i)[-1]) for i in ids}
        assert turns == {"1", "2", "3"}  # exchanges, not the 3/6/9 Harmony records
        await pilot.press(*"okapi")
        await pilot.pause()
        assert table.row_count == 3  # found in the last reply, past the first 160 characters
        await pilot.press(*" zebra")
        await pilot.pause()
        assert table.row_count == 0
        empty = screen.query_one("#session-empty", Static)
        assert empty.display and "No sessions match 'okapi zebra'" in str(empty.render())


async def _long_chat(pilot, n: int = 8) -> None:
    from mlx_harmony_tui.tui.widgets.chat_input import ChatInput

    box = pilot.app.screen.query_one(ChatInput)
    for i in range(n):
        box.focus()
        await pilot.press(*f"m{i}", "enter")
        await pilot.app.wait_idle(10)
    await pilot.pause()


async def test_page_keys_scroll_the_conversation_from_the_message_box() -> None:
    from mlx_harmony_tui.tui.widgets.chat_input import ChatInput

    app = HarmonyApp(backend=ScriptedBackend(simple_reply("", "line\n\n" * 12)), show_welcome=False)
    async with app.run_test(size=SMALL) as pilot:
        await _long_chat(pilot, 4)
        conv = app.conversation
        assert conv.max_scroll_y > 0 and app.screen.focused is app.screen.query_one(ChatInput)
        bottom = conv.scroll_y
        await pilot.press("pageup")
        await pilot.pause(0.3)
        assert conv.scroll_y < bottom
        await pilot.press("pagedown")
        await pilot.pause(0.3)
        assert conv.scroll_y > bottom - 1 - conv.size.height // 2


async def test_80x24_footer_header_metrics_tool_pane_and_toasts() -> None:
    from textual.widgets import Footer

    from mlx_harmony_tui.chat.events import Metrics
    from mlx_harmony_tui.tui.widgets.chat_input import ChatInput
    from mlx_harmony_tui.tui.widgets.metrics_bar import MetricsBar
    from mlx_harmony_tui.tui.widgets.tool_log import ToolLog

    app = make_app()
    app.settings.builtin_tools = ["python"]
    async with app.run_test(size=SMALL) as pilot:
        app._update_header()
        await pilot.pause()
        footer = app.screen.query_one(Footer)
        shown = {k.key for k in footer.query("FooterKey") if k.region.right <= SMALL[0] and k.region.width}
        assert {"ctrl+s", "ctrl+o", "ctrl+g", "f1", "ctrl+q"} <= shown, shown
        assert "tools=python" in app.sub_title.split(" · ")[1]  # right after the model name
        bar = app.screen.query_one(MetricsBar)
        bar.context_limit = 131072
        bar.show(Metrics(decode_tps=12.3, context_tokens=2048, context_limit=131072, ttft_s=0.5,
                         mlx_active_bytes=12 * 2**30, mlx_peak_bytes=13 * 2**30))
        await pilot.pause()
        text = str(bar.query_one("#metrics-text").render())
        assert "12.3 tok/s" in text and "ctx 2048/131072" in text and "MLX 12.00 GiB" in text, text
        assert not bar.query_one("#tps-spark").display  # the sparkline goes before memory
        assert str(bar.query_one("#status").render()).strip()
        tools = app.screen.query_one(ToolLog)
        tools.remove_class("hidden")
        await pilot.pause()
        assert tools.region.width <= 30  # was 40 of 80
        app.notify("a toast")
        await pilot.pause(0.3)
        box = app.screen.query_one(ChatInput).region
        for toast in app.screen.query("Toast"):
            assert not toast.region.overlaps(box)


async def test_help_fits_80x24() -> None:
    from textual.widgets import DataTable

    app = make_app()
    async with app.run_test(size=SMALL) as pilot:
        await pilot.press("f1")
        box = app.screen.query_one("#help-box")
        assert box.region.right <= SMALL[0]
        table = app.screen.query_one(DataTable)
        assert sum(c.get_render_width(table) for c in table.columns.values()) <= table.scrollable_content_region.width

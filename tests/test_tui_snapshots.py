"""Snapshots of the main screens at 80x24 (the smallest usual terminal) and 200x60. Deterministic: scripted
replies with fixed metrics, fixed session dates, no welcome text (it shows per-test temporary paths)."""

from __future__ import annotations

import pytest
from tui_fakes import ScriptedBackend, simple_reply

from mlx_harmony_tui.chat.settings import ChatSettings
from mlx_harmony_tui.sessions.schema import Session
from mlx_harmony_tui.sessions.store import SessionStore
from mlx_harmony_tui.tui.app import HarmonyApp
from mlx_harmony_tui.tui.widgets.chat_input import ChatInput

SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((200, 60), id="200x60")]
REPLY = "Here is a function:\n\n```python\ndef add(a, b):\n    return a + b\n```\n\nIt **adds** two numbers."


def make_app() -> HarmonyApp:
    return HarmonyApp(backend=ScriptedBackend(simple_reply("The user wants code. Keep it short.", REPLY),
                                              name="gpt-oss-test"), show_welcome=False)


async def no_blink(pilot) -> None:
    """A blinking cursor would make the snapshot depend on timing."""
    box = pilot.app.screen.query_one(ChatInput)
    box.cursor_blink = False
    await pilot.pause()


def opened(key: str):
    """run_before: press ``key``, then steady the cursors of the dialog's fields (a focused field's cursor
    blinked: the snapshot then differed by one cell, now and then)."""

    async def run(pilot) -> None:
        await no_blink(pilot)
        await pilot.press(key)
        await pilot.pause()
        for field in pilot.app.screen.query("Input"):
            field.cursor_blink = False
        await pilot.pause()

    return run


async def send(pilot, text: str = "write add") -> None:
    await no_blink(pilot)
    pilot.app.screen.query_one(ChatInput).focus()
    await pilot.press(*text, "enter")
    await pilot.app.wait_idle(10)
    await pilot.pause(0.2)


@pytest.mark.parametrize("size", SIZES)
def test_snapshot_chat_after_reply(snap_compare, size) -> None:
    assert snap_compare(make_app(), terminal_size=size, run_before=send)


def test_snapshot_chat_analysis_open(snap_compare) -> None:
    async def run(pilot) -> None:
        await send(pilot)
        await pilot.press("ctrl+t")
        await pilot.pause(0.2)

    assert snap_compare(make_app(), terminal_size=(120, 40), run_before=run)


@pytest.mark.parametrize("size", SIZES)
def test_snapshot_params(snap_compare, size) -> None:
    assert snap_compare(make_app(), terminal_size=size, run_before=opened("ctrl+g"))


@pytest.mark.parametrize("size", SIZES)
def test_snapshot_params_remote(snap_compare, size) -> None:
    """With a remote server, unset values are the server's: empty fields say "server default"."""
    from mlx_harmony_tui.backends.remote import RemoteBackend
    from mlx_harmony_tui.server.app import create_app
    from mlx_harmony_tui.server.command import serve_in_thread
    from tests.test_server_protocol import ScriptedBackend as ServedBackend

    settings = ChatSettings()
    settings.set_value("temperature", 0.7)
    with serve_in_thread(create_app(ServedBackend())) as url:
        app = HarmonyApp(backend=RemoteBackend(url), settings=settings, show_welcome=False)
        assert snap_compare(app, terminal_size=size, run_before=opened("ctrl+g"))


@pytest.mark.parametrize("size", SIZES)
def test_snapshot_help(snap_compare, size) -> None:
    async def run(pilot) -> None:
        await no_blink(pilot)
        await pilot.press("f1")
        where = "Config: /home/user/.config/mlx-harmony-tui/config.toml\nSessions: /home/user/.local/share/mlx-harmony-tui/sessions"
        pilot.app.screen.query_one("#help-where").update(where)  # not the test's temporary paths
        await pilot.pause()

    assert snap_compare(make_app(), terminal_size=size, run_before=run)


@pytest.mark.parametrize("size", SIZES)
def test_snapshot_session_browser(snap_compare, size) -> None:
    store = SessionStore()
    for i, title in enumerate(["Weather in Paris", "Sorting algorithms", "Trip planning"]):
        when = f"2025-0{i + 1}-1{i}T09:30:00.000Z"
        store.save(Session(id=f"2025010{i}-093000-abcde{i}", title=title, model="gpt-oss-20b",
                           created_at=when, updated_at=when), touch=False)
    assert snap_compare(make_app(), terminal_size=size, run_before=opened("ctrl+s"))

"""Pilot tests of session recording, the session browser (search/open/rename/delete/new) and resuming."""

from __future__ import annotations

from tui_fakes import ScriptedBackend, simple_reply

from mlx_harmony_tui.sessions.store import SessionStore
from mlx_harmony_tui.tui.app import HarmonyApp
from mlx_harmony_tui.tui.widgets.chat_input import ChatInput
from mlx_harmony_tui.tui.widgets.messages import AssistantMessage, UserMessage

SIZE = (120, 40)


async def chat(pilot, text: str) -> None:
    pilot.app.screen.query_one(ChatInput).focus()
    await pilot.press(*list(text), "enter")
    await pilot.app.wait_idle(10)
    await pilot.pause()


async def test_reply_is_recorded_and_resumed() -> None:
    app = HarmonyApp(backend=ScriptedBackend(simple_reply("think", "answer one")))
    async with app.run_test(size=SIZE) as pilot:
        await chat(pilot, "first question")
        sid = app.session_id
        assert sid
    store = SessionStore()
    session = store.load(sid)
    assert session.title == "first question"
    assert [(m.role, m.channel, m.content) for m in session.messages] == [
        ("user", None, "first question"), ("assistant", "analysis", "think"), ("assistant", "final", "answer one")
    ]
    assert session.messages[0].incomplete is False and not session.messages[-1].incomplete
    assert session.settings["conversation_date"]

    backend = ScriptedBackend(simple_reply("", "answer two"))
    app2 = HarmonyApp(backend=backend, session_id=sid[:8])
    async with app2.run_test(size=SIZE) as pilot:
        for _ in range(50):
            await pilot.pause(0.02)
            if app2.session_id == sid:
                break
        assert app2.session_id == sid
        assert [m.text for m in app2.screen.query(UserMessage)] == ["first question"]
        assert app2.screen.query_one(AssistantMessage).final_text == "answer one"
        await chat(pilot, "second")
        sent = backend.requests[0].messages
        assert [m.text for m in sent] == ["first question", "think", "answer one", "second"]
    assert len(SessionStore().load(sid).messages) == 5


async def test_session_browser_search_rename_delete_open_new() -> None:
    store = SessionStore()
    a = store.create(title="alpha talk", model="m")
    b = store.create(title="beta talk", model="m")
    app = HarmonyApp(backend=ScriptedBackend(simple_reply("", "ok")))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("ctrl+s")
        browser = app.screen
        assert browser.__class__.__name__ == "SessionBrowserScreen"
        assert set(browser.ids) == {a.id, b.id}
        await pilot.press(*"beta")
        await pilot.pause()
        assert browser.ids == [b.id]
        # rename
        await pilot.press("f2")
        prompt = app.screen
        prompt.query_one("Input").value = "gamma"
        await pilot.press("enter")
        await pilot.pause()
        assert store.load(b.id).title == "gamma"
        # delete with confirmation: "n" keeps, "y" deletes
        browser.query_one("Input").value = ""
        await pilot.pause()
        browser.query_one("DataTable").move_cursor(row=browser.ids.index(a.id))
        await pilot.press("ctrl+d")
        await pilot.press("n")
        assert a.id in [s.id for s in store.list()]
        await pilot.press("ctrl+d")
        await pilot.press("y")
        await pilot.pause()
        assert [s.id for s in store.list()] == [b.id]
        # open
        browser.query_one("DataTable").focus()
        await pilot.press("enter")
        await pilot.pause()
        assert app.session_id == b.id
        # new session from the browser
        await pilot.press("ctrl+s")
        await pilot.press("ctrl+n")
        await pilot.pause()
        assert app.session_id is None and not list(app.screen.query(UserMessage))


async def test_locked_session_is_refused_with_a_clear_message() -> None:
    store = SessionStore()
    s = store.create(title="busy")
    other = SessionStore()
    other.lock(s.id)  # same process, other store: flock conflicts like another process would
    app = HarmonyApp(backend=ScriptedBackend(simple_reply("", "ok")))
    async with app.run_test(size=SIZE) as pilot:
        ok = await app.open_session(s.id)
        await pilot.pause()
        assert ok is False and app.session_id is None
        assert any("busy" in n.message or s.id in n.message for n in app._notifications)
    other.unlock(s.id)

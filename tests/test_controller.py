"""The chat controller without any UI: the tiny real model (and the demo model for a tool call) through the
real LocalBackend, session store and recorder; what a face would do is done here by hand."""

from __future__ import annotations

import copy
import shutil
import stat

import pytest

from mlx_harmony_tui.backends.local import LocalBackend
from mlx_harmony_tui.chat import events as ev
from mlx_harmony_tui.chat.settings import ChatSettings
from mlx_harmony_tui.controller import ChatController
from mlx_harmony_tui.controller.prompt_cache import cache_path
from mlx_harmony_tui.errors import UserError
from mlx_harmony_tui.sessions.store import SessionStore


@pytest.fixture(scope="module")
def tiny() -> LocalBackend:
    backend = LocalBackend.load("tiny")
    yield backend
    backend.close()


def settings(**kw: object) -> ChatSettings:
    s = ChatSettings(max_tokens=6, seed=1, builtin_tools=[])
    for k, v in kw.items():
        setattr(s, k, v)
    return s


class Notes(list):
    def __call__(self, message: str, severity: str) -> None:
        self.append((severity, message))


def run(chat: ChatController, text: str | None = None) -> list[ev.Event]:
    if text is not None:
        chat.send(text)
    return list(chat.events())


def test_a_turn_is_recorded_and_the_session_exists_only_from_the_first_message(tiny: LocalBackend) -> None:
    chat = ChatController(tiny, settings())
    assert SessionStore().list() == [] and chat.session is None
    events = run(chat, "hello")
    assert isinstance(events[0], ev.TurnStarted) and isinstance(events[-1], (ev.TurnFinished, ev.TurnFailed))
    assert not chat.generating and chat.session_id is not None
    saved = SessionStore().load(chat.session_id)
    assert [m.role for m in saved.messages][0] == "user" and len(saved.messages) >= 2
    assert saved.settings["conversation_date"] == chat.settings.conversation_date  # fixed for the session
    assert [m.text for m in chat.history] == [m.content for m in saved.messages if not m.extra.get("failed")]
    run(chat, "again")
    assert [m.content for m in SessionStore().load(chat.session_id).messages if m.role == "user"] == \
        ["hello", "again"]
    chat.close_session()
    assert SessionStore().lock(saved.id)  # the controller let go of its lock


def test_new_settings_are_recorded_with_the_next_message(tiny: LocalBackend) -> None:
    chat = ChatController(tiny, settings())
    run(chat, "one")
    new = copy.deepcopy(chat.settings)
    new.sampling.temperature = 0.25
    new.instructions = "Be brief."
    chat.set_settings(new)
    run(chat, "two")
    session = SessionStore().load(chat.session_id)
    assert session.settings["instructions"] == "Be brief."
    second_user = [k for k, m in enumerate(session.messages) if m.role == "user"][1]
    params = [m.params for m in session.messages[second_user:] if m.role == "assistant" and m.params]
    assert params and params[0]["temperature"] == 0.25


def test_regenerate_and_take_back_change_history_and_record_alike(tiny: LocalBackend) -> None:
    chat = ChatController(tiny, settings())
    assert chat.drop_last_exchange(keep_user=True) is None  # nothing yet
    run(chat, "first")
    run(chat, "second")
    assert chat.drop_last_exchange(keep_user=True) == "second"
    assert chat.history[-1].role == "user" and chat.history[-1].text == "second"
    chat.start_turn()
    run(chat)
    record = SessionStore().load(chat.session_id).messages
    assert [m.content for m in record if m.role == "user"] == ["first", "second"]
    assert chat.drop_last_exchange(keep_user=False) == "second"
    record = SessionStore().load(chat.session_id).messages
    assert [m.content for m in record if m.role == "user"] == ["first"] and record[-1].role != "user"
    assert [m.text for m in chat.history if m.role == "user"] == ["first"]


def test_the_prompt_cache_is_saved_on_close_and_restored_on_open(tiny_model_dir) -> None:
    notes = Notes()
    backend = LocalBackend.load(tiny_model_dir)
    chat = ChatController(backend, settings(), notify=notes)
    run(chat, "remember this")
    sid = chat.session_id
    chat.close()
    assert cache_path(sid).is_file() and chat.backend is None
    # A conversation is private on a shared machine: the cache holds its tokens, so only the user reads it.
    assert stat.S_IMODE(cache_path(sid).stat().st_mode) == 0o600
    assert stat.S_IMODE(cache_path(sid).parent.stat().st_mode) == 0o700

    again = ChatController(LocalBackend.load(tiny_model_dir), settings(), notify=notes)
    session = again.open_session(sid[:6])  # a unique prefix is enough
    assert session.id == sid and again.session_id == sid
    assert ("information", "Prompt cache restored") in notes
    events = run(again, "and this")
    finished = [e for e in events if isinstance(e, ev.TurnFinished)]
    assert finished and finished[0].metrics.reused_tokens > 0  # the restored prefix was not prefilled again
    again.close()


def test_opening_a_missing_session_keeps_the_open_one(tiny: LocalBackend) -> None:
    chat = ChatController(tiny, settings())
    run(chat, "hi")
    sid = chat.session_id
    with pytest.raises(UserError):
        chat.open_session("ffffffffffff")
    assert chat.session_id == sid
    run(chat, "still here")
    assert len([m for m in SessionStore().load(sid).messages if m.role == "user"]) == 2
    chat.new_session()
    assert chat.session_id is None and chat.history == []


def test_a_session_that_cannot_be_written_is_reported_and_the_chat_goes_on(tiny: LocalBackend) -> None:
    notes = Notes()
    store = SessionStore()
    chat = ChatController(tiny, settings(), store=store, notify=notes)
    shutil.rmtree(store.root)
    store.root.write_text("not a folder")  # every write into it fails
    events = run(chat, "hello")
    assert any(isinstance(e, ev.TurnFinished) for e in events)
    assert notes and notes[0][0] == "error" and "could not save the session" in notes[0][1]
    assert chat.session is None and [m.role for m in chat.history][0] == "user"  # kept in memory


def test_start_turn_refuses_without_a_model_or_while_generating(tiny: LocalBackend) -> None:
    with pytest.raises(UserError, match="no model"):
        ChatController(None, settings(), record=False).send("x")
    chat = ChatController(tiny, settings(max_tokens=64), record=False)
    chat.send("x")
    with pytest.raises(UserError, match="still generating"):
        chat.start_turn()
    chat.cancel()
    events = run(chat)
    assert isinstance(events[-1], ev.TurnFinished) and not chat.generating
    assert SessionStore().list() == []  # record=False keeps no session


def test_the_answer_to_a_tool_confirmation_reaches_the_turn_that_asked() -> None:
    """The demo model calls python for arithmetic; the face's answer goes through the controller."""
    from mlx_harmony_tui.config import AppConfig, ToolsConfig
    from mlx_harmony_tui.tools.python import PythonToolConfig

    ask = AppConfig(tools=ToolsConfig(python=PythonToolConfig(confirm=True)))
    backend = LocalBackend.load("demo", app_config=ask)
    chat = ChatController(backend, ChatSettings(seed=3, max_tokens=300))
    chat.settings.sampling.temperature = 0.0
    chat.send("What is 37*12?")
    asked: list[ev.ToolConfirmation] = []
    results: list[ev.ToolResult] = []
    for e in chat.events():
        if isinstance(e, ev.ToolConfirmation):
            asked.append(e)
            chat.confirmation(e)(True)
        elif isinstance(e, ev.ToolResult):
            results.append(e)
    sid = chat.session_id
    assert sid is not None
    assert [m.text for m in chat.history if m.role == "tool"] == [results[0].output]
    chat.close()
    assert asked and results and "444" in results[0].output
    record = SessionStore().load(sid).messages
    assert [m.content for m in record if m.role == "tool"] == [results[0].output]

"""Branches through the controller: regenerating or editing keeps the old version; flipping brings it back,
and the model sees the active branch. A scripted backend (real handle and thread), so replies are known."""

from __future__ import annotations

from tui_fakes import ScriptedBackend, simple_reply

from mlx_harmony_tui.controller import ChatController
from mlx_harmony_tui.sessions.store import SessionStore


def reply(chat: ChatController, answer: str, text: str | None = None) -> None:
    chat.backend.script = simple_reply("", answer)  # type: ignore[union-attr]
    if text is not None:
        chat.send(text)
    else:
        chat.start_turn()
    for _ in chat.events():
        pass


def finals(chat: ChatController) -> list[str]:
    return [m.text for m in chat.history if m.role == "assistant" or m.role == "user"]


def test_regenerate_and_edit_keep_branches_and_the_model_sees_the_active_one() -> None:
    backend = ScriptedBackend(simple_reply("", "a1"))
    chat = ChatController(backend)
    reply(chat, "a1", "q1")
    reply(chat, "a2", "q2")
    assert chat.drop_last_exchange(keep_user=True) == "q2"  # regenerate the last reply
    reply(chat, "a2 again")
    assert finals(chat) == ["q1", "a1", "q2", "a2 again"]
    assert chat.branch_points() == {3: (2, 2)}
    assert chat.flip(step=-1)
    assert finals(chat) == ["q1", "a1", "q2", "a2"]
    # edit the first message: everything after it becomes a branch, the new text starts another
    assert chat.fork_at(0) == "q1"
    assert chat.history == []
    reply(chat, "b1", "q1 edited")
    assert [m.text for m in backend.requests[-1].messages] == ["q1 edited"]  # the model saw only the new branch
    assert chat.branch_points() == {0: (2, 2)}
    assert chat.flip(0)
    assert finals(chat) == ["q1", "a1", "q2", "a2"]  # the old conversation, with the branch that was active
    assert chat.branch_points() == {0: (1, 2), 3: (1, 2)}
    reply(chat, "a3", "q3")
    assert [m.text for m in backend.requests[-1].messages] == ["q1", "a1", "q2", "a2", "q3"]
    saved = SessionStore().load(chat.session_id)  # all of it is in the file, the active branch in messages
    assert [m.content for m in saved.messages if m.role == "user"] == ["q1", "q2", "q3"]
    assert {m.content for m in saved.alternatives} >= {"q1 edited", "b1", "a2 again"}

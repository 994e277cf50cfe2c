"""Text that used to crash us: lone surrogates in session files (every face: list, show, export, import, the
TUI browser, resume + send), invalid UTF-8 on `chat` stdin and from the model, a FIFO in the sessions folder,
and saving through a symlink or over a file with its own permissions."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from tui_fakes import ScriptedBackend, simple_reply

from mlx_harmony_tui import cli
from mlx_harmony_tui.harmony.stream import HarmonyStream
from mlx_harmony_tui.sessions.schema import Message, new_id
from mlx_harmony_tui.sessions.store import SessionError, SessionStore
from mlx_harmony_tui.tui.app import HarmonyApp
from mlx_harmony_tui.tui.widgets.chat_input import ChatInput
from mlx_harmony_tui.tui.widgets.messages import UserMessage

BAD = "\\ud800"  # as it is spelled in the JSON file


def _surrogate_session(store: SessionStore) -> tuple[str, Path, bytes]:
    """A session whose title and first message hold a lone surrogate escape (as a damaged disk or another
    program could leave it): valid JSON, but not text."""
    s = store.create(title="good title", model="m")
    s.messages.append(Message(id=new_id("m"), role="user", content="before MARK after"))
    s.messages.append(Message(id=new_id("m"), role="assistant", content="an answer", channel="final"))
    store.save(s)
    path = store.path(s.id)
    raw = path.read_bytes().replace(b"good title", f"bad {BAD} title".encode()).replace(b"MARK", BAD.encode())
    path.write_bytes(raw)
    return s.id, path, raw


def test_reading_and_listing_a_lone_surrogate_session(capsys: pytest.CaptureFixture[str]) -> None:
    store = SessionStore()
    sid, path, raw = _surrogate_session(store)
    (summary,) = store.list()
    assert summary.title == "bad \ufffd title"
    assert store.load(sid).messages[0].content == "before \ufffd after"
    assert (store.root / ".index.json").exists()  # the index could be written
    assert path.read_bytes() == raw  # reading never changes the user's file
    for argv in (
        ["sessions", "list"],
        ["sessions", "show", sid[:8]],
        ["sessions", "export", sid[:8]],
        ["sessions", "export", sid[:8], "--format", "json"],
    ):
        assert cli.main(argv) == 0, argv
        out = capsys.readouterr()
        assert "Traceback" not in out.err and "\ufffd" in out.out, argv
    assert path.read_bytes() == raw


def test_importing_a_file_with_a_lone_surrogate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "chat.json"
    src.write_text(
        '{"messages": [{"role": "user", "content": "hi ' + BAD + '"}, '
        '{"role": "assistant", "content": "hello"}]}'
    )
    assert cli.main(["sessions", "import", str(src)]) == 0
    assert "Traceback" not in capsys.readouterr().err
    (summary,) = SessionStore().list()
    assert SessionStore().load(summary.id).messages[0].content == "hi \ufffd"


def test_a_surrogate_that_reaches_the_writer_is_saved_not_fatal() -> None:
    store = SessionStore()
    s = store.create(title="t")
    s.messages.append(
        Message(id=new_id("m"), role="user", content="x\udcffy")
    )  # e.g. surrogateescape'd input
    store.save(s)
    assert store.load(s.id).messages[0].content == "x\ufffdy"


async def test_the_browser_and_resume_and_send_survive_a_lone_surrogate() -> None:
    store = SessionStore()
    sid, _, _ = _surrogate_session(store)
    backend = ScriptedBackend(simple_reply("", "fine"))
    app = HarmonyApp(backend=backend)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("ctrl+s")
        await pilot.pause()
        browser = app.screen
        assert browser.__class__.__name__ == "SessionBrowserScreen" and browser.ids == [sid]
        browser.query_one("DataTable").focus()
        await pilot.press("enter")  # open it
        for _ in range(100):
            await pilot.pause(0.02)
            if app.session_id == sid:
                break
        assert app.session_id == sid
        assert [m.text for m in app.screen.query(UserMessage)] == ["before \ufffd after"]
        app.screen.query_one(ChatInput).focus()
        await pilot.press(*"next", "enter")
        await app.wait_idle(10)
        await pilot.pause()
    assert backend.requests[0].messages[0].text == "before \ufffd after"
    assert [m.content for m in SessionStore().load(sid).messages][-2:] == ["next", "fine"]


def test_invalid_utf8_on_chat_stdin_is_replaced_and_saved() -> None:
    """`printf 'h\\xffi\\n/quit\\n' | mlx-harmony-tui chat` (the demo model)."""
    proc = subprocess.run(
        [sys.executable, "-m", "mlx_harmony_tui", "chat", "--max-tokens", "8"],
        input=b"h\xffi\n/quit\n",
        capture_output=True,
        timeout=300,
        env=dict(os.environ),
    )
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")
    assert b"Traceback" not in proc.stderr
    (summary,) = SessionStore().list()
    assert SessionStore().load(summary.id).messages[0].content == "h\ufffdi"


def test_invalid_utf8_from_the_model_is_replaced(encoding) -> None:  # type: ignore[no-untyped-def]
    stray = next(t for t in range(200, 5000) if not encoding.is_special_token(t) and _not_utf8(encoding, t))
    stream = HarmonyStream(encoding)
    head = encoding.encode("<|channel|>final<|message|>ok ", allowed_special="all")
    for tok in [*head, stray, *encoding.encode(" end", allowed_special="all")]:
        stream.feed(tok)
    stream.finish("stop")
    text = stream.messages[-1].text
    assert text.startswith("ok ") and "\ufffd" in text and text.endswith(" end")
    store = SessionStore()
    s = store.create(title="t")
    s.messages.append(Message(id=new_id("m"), role="assistant", content=text, channel="final"))
    store.save(s)
    assert store.load(s.id).messages[0].content == text


def _not_utf8(encoding, tok: int) -> bool:  # type: ignore[no-untyped-def]
    try:
        encoding.decode_utf8([tok])
    except Exception:  # noqa: BLE001 - HarmonyError: a token that is only part of a character
        return True
    return False


def test_a_fifo_in_the_sessions_folder_never_blocks(capsys: pytest.CaptureFixture[str]) -> None:
    store = SessionStore()
    good = store.create(title="real one")
    os.mkfifo(store.root / "x.json")
    done: list[object] = []
    t = threading.Thread(target=lambda: done.append(store.list()), daemon=True)
    t.start()
    t.join(20)
    assert done, "listing blocked on the FIFO"
    assert [s.id for s in done[0]] == [good.id]  # type: ignore[attr-defined]
    assert any("x.json is not a regular file" in p for p in store.problems)
    with pytest.raises(SessionError, match="not a regular file"):
        store.load("x")
    assert cli.main(["sessions", "show", "x"]) == 2
    assert "not a regular file" in capsys.readouterr().err
    assert cli.main(["sessions", "list"]) == 0


def test_saving_keeps_a_symlinked_sessions_link_and_target(tmp_path: Path) -> None:
    store = SessionStore()
    s = store.create(title="linked")
    elsewhere = tmp_path / "synced" / f"{s.id}.json"
    elsewhere.parent.mkdir()
    store.path(s.id).rename(elsewhere)
    store.path(s.id).symlink_to(elsewhere)
    s.title = "renamed"
    store.save(s)
    assert store.path(s.id).is_symlink() and store.path(s.id).resolve() == elsewhere.resolve()
    assert SessionStore().load(s.id).title == "renamed"
    assert b"renamed" in elsewhere.read_bytes()


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o000])
def test_saving_keeps_the_files_mode(mode: int) -> None:
    store = SessionStore()
    s = store.create(title="private")
    store.path(s.id).chmod(mode)
    s.title = "still private"
    try:
        store.save(s)
        assert stat.S_IMODE(store.path(s.id).stat().st_mode) == mode
    finally:
        store.path(s.id).chmod(0o644)
    assert SessionStore().load(s.id).title == "still private"


def test_sessions_and_their_index_are_private_to_the_user(tmp_path: Path) -> None:
    """Other users of a shared machine cannot read a conversation: files 0600 and folders 0700 whatever the
    umask, for the app's own folder and for a `--dir` folder the first save creates."""
    old = os.umask(0o022)
    try:
        for store in (SessionStore(), SessionStore(tmp_path / "new" / "sessions")):
            s = store.create(title="secret")
            s.messages.append(Message(id="u", role="user", content="my diagnosis"))
            store.save(s)
            store.list(query="diagnosis")  # writes the listing and search indexes next to the sessions
            assert stat.S_IMODE(store.root.stat().st_mode) == 0o700
            written = [p for p in store.root.iterdir() if p.is_file()]
            assert len(written) >= 3  # the session and both indexes
            assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in written} == {p.name: 0o600 for p in written}
    finally:
        os.umask(old)

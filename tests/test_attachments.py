"""Files in the conversation: /attach in the line chat (the real CLI, the tiny model) and the controller's
rules (text only, size limit, clear messages), recorded in the session."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import pytest

from mlx_harmony_tui import cli
from mlx_harmony_tui.chat.attachments import MAX_BYTES, AttachmentError, read_attachment, with_attachments
from mlx_harmony_tui.sessions.store import SessionStore


class _Stdin(io.StringIO):
    def isatty(self) -> bool:
        return False


def test_text_file_goes_into_the_next_message_under_its_name(tmp_path: Path) -> None:
    f = tmp_path / "notes.md"
    f.write_text("line one\nuses ``` inside\n")
    a = read_attachment(f)
    assert a.name == "notes.md" and a.describe() == "notes.md (25 B, 2 lines)"
    text = with_attachments("Summarize this.", [a])
    assert text.startswith("Summarize this.\n\nAttached file `notes.md`:\n````\nline one\n")
    assert text.endswith("````")  # a longer fence than the file's own ``` run


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing.txt", "no such file"),
    (lambda d: d, "not a regular file"),
    (lambda d: _write(d / "x.bin", b"ab\x00cd"), "looks binary"),
    (lambda d: _write(d / "latin1.txt", "caf\xe9".encode("latin-1")), "not UTF-8"),
    (lambda d: _write(d / "big.log", b"x" * (MAX_BYTES + 1)), "can be attached"),
    (lambda d: _fifo(d / "pipe"), "not a regular file"),
])
def test_bad_files_are_refused_with_a_clear_message(tmp_path: Path, make, message: str) -> None:
    with pytest.raises(AttachmentError, match=message):
        read_attachment(make(tmp_path))


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _fifo(path: Path) -> Path:
    os.mkfifo(path)  # opening it would block: it must be refused before any open
    return path


def test_line_chat_attach_sends_the_file_and_the_session_records_it(tmp_path: Path, monkeypatch, capsys) -> None:
    doc = tmp_path / "todo.txt"
    doc.write_text("buy milk\ncall Bob\n")
    binary = tmp_path / "photo.jpg"
    binary.write_bytes(b"\xff\xd8\x00\x10JFIF")
    script = f"/attach {binary}\n/attach {doc}\n/attach\nWhat is on my list?\nand now?\n/quit\n"
    monkeypatch.setattr(sys, "stdin", _Stdin(script))
    rc = cli.main(["chat", "--model", "tiny", "--max-tokens", "4", "--seed", "1"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "photo.jpg looks binary" in err
    assert "attached todo.txt (18 B, 2 lines)" in out and "attached to the next message: todo.txt" in out
    session = SessionStore().load(SessionStore().list()[0].id)
    users = [m.content for m in session.messages if m.role == "user"]
    assert users[0].startswith("What is on my list?\n\nAttached file `todo.txt`:\n```\nbuy milk\ncall Bob\n```")
    assert users[1] == "and now?"  # an attachment goes with one message only

"""Text files in the conversation: ``/attach PATH`` (line chat) or the TUI's attach command put a file's
contents, with its name, into the next user message.

Only text: a file with NUL bytes, or that is not UTF-8 (after stripping a BOM), is refused with a message
saying so, as is one over the size limit (a model's context is finite, and a 10 MB log would push the whole
conversation out). The model sees the file as a fenced block after the user's own words; the session records
exactly that text, so a reopened session shows what was attached.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from mlx_harmony_tui.errors import UserError

MAX_BYTES = 256 * 1024  # ~64k tokens of English at most: half of gpt-oss's context


class AttachmentError(UserError):
    """The file cannot be attached (missing, not a regular file, binary, too large, unreadable)."""


@dataclass(frozen=True)
class Attachment:
    name: str
    path: Path
    text: str

    @property
    def size(self) -> int:
        return len(self.text.encode("utf-8"))

    def describe(self) -> str:
        lines = self.text.count("\n") + (1 if self.text and not self.text.endswith("\n") else 0)
        return f"{self.name} ({_human(self.size)}, {lines} line{'s' if lines != 1 else ''})"


def _human(n: int) -> str:
    return f"{n} B" if n < 1024 else f"{n / 1024:.1f} KB"


def read_attachment(path: str | Path, max_bytes: int = MAX_BYTES) -> Attachment:
    """Read a text file to attach; AttachmentError with a sentence a user can act on otherwise."""
    p = Path(os.path.expanduser(str(path).strip()))
    if not str(path).strip():
        raise AttachmentError("name a file to attach, e.g. /attach notes.md")
    try:
        st = p.stat()
    except FileNotFoundError:
        raise AttachmentError(f"{p}: no such file") from None
    except OSError as e:
        raise AttachmentError(f"{p}: cannot read ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):  # a folder, a FIFO (would block), a device
        raise AttachmentError(f"{p}: not a regular file")
    if st.st_size > max_bytes:
        raise AttachmentError(
            f"{p.name} is {_human(st.st_size)}; files up to {_human(max_bytes)} can be attached "
            "(attach a part of it, e.g. with head/tail into a new file)"
        )
    try:
        with open(p, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise AttachmentError(f"{p}: cannot read ({e.strerror})") from None
    if b"\x00" in data:
        raise AttachmentError(f"{p.name} looks binary (it has NUL bytes); only text files can be attached")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise AttachmentError(f"{p.name} is not UTF-8 text; only text files can be attached") from None
    return Attachment(p.name, p, text)


def with_attachments(text: str, attachments: list[Attachment]) -> str:
    """The user's words, then each file as a fenced block under its name (a fence longer than any run of
    backticks inside, so the file cannot close it)."""
    parts = [text] if text.strip() else []
    for a in attachments:
        fence = "`" * max(3, _longest_backticks(a.text) + 1)
        body = a.text if a.text.endswith("\n") else a.text + "\n"
        parts.append(f"Attached file `{a.name}`:\n{fence}\n{body}{fence}")
    return "\n\n".join(parts)


def _longest_backticks(text: str) -> int:
    best = run = 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        best = max(best, run)
    return best

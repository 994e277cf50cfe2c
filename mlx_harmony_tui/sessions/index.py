"""A cache of session summaries so listing and searching thousands of sessions does not parse them all.

``.index.json`` in the sessions folder maps each file name to (mtime_ns, size, inode) and the summary.
Listing scans the folder (one stat per file) and re-reads only files whose mtime, size or inode changed
(every atomic save is a new inode, which catches rewrites within one coarse mtime tick); entries of removed
files disappear. The index is only a cache: a missing, unreadable or foreign index is rebuilt, and two
processes writing it at once merely redo some work (the write is atomic).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path

from mlx_harmony_tui.sessions.schema import Session, session_text

INDEX_NAME = ".index.json"
INDEX_VERSION = 2
SNIPPET_CHARS = 160  # searchable start of the conversation kept per session


@dataclass(frozen=True)
class SessionSummary:
    id: str
    title: str
    created_at: str
    updated_at: str
    model: str
    message_count: int
    file: str  # the session file's path as text (a Path per row costs too much with 10,000 rows)
    snippet: str = ""  # the start of the visible conversation

    @property
    def path(self) -> Path:
        return Path(self.file)

    def matches(self, terms: list[str]) -> bool:
        """Every term (lower-case) appears in the title, model, id or snippet."""
        hay = f"{self.title}\n{self.model}\n{self.id}\n{self.snippet}".lower()
        return all(t in hay for t in terms)


def summarize(session: Session, path: Path) -> SessionSummary:
    return SessionSummary(
        id=session.id, title=session.title, created_at=session.created_at, updated_at=session.updated_at,
        model=session.model, message_count=len(session.messages), file=str(path),
        snippet=session_text(session)[:SNIPPET_CHARS],
    )


def _read_index(path: Path) -> dict[str, list]:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != INDEX_VERSION:
        return {}
    entries = data.get("entries")
    return entries if isinstance(entries, dict) else {}


def _valid_row(row: object) -> bool:
    return isinstance(row, list) and len(row) == 10


def scan(
    root: Path,
    load: Callable[[Path], Session | None],
    write: Callable[[Path, bytes], None],
) -> list[SessionSummary]:
    """Summaries of every ``*.json`` session in ``root``, newest update first; refreshes the index file.

    ``load`` parses one file (None when it cannot be used: the caller has reported or quarantined it);
    ``write`` writes the index atomically.
    """
    index_path = root / INDEX_NAME
    old = _read_index(index_path)
    new: dict[str, list] = {}
    changed = False
    summaries: list[SessionSummary] = []
    with os.scandir(root) as it:
        entries = [e for e in it if e.name.endswith(".json") and not e.name.startswith(".")]
    for entry in entries:
        try:
            st = entry.stat()
        except FileNotFoundError:  # deleted while we looked
            changed = True
            continue
        row = old.get(entry.name)
        if _valid_row(row) and row[0] == st.st_mtime_ns and row[1] == st.st_size and row[2] == st.st_ino:
            new[entry.name] = row
            summaries.append(
                SessionSummary(row[3], row[4], row[5], row[6], row[7], row[8], entry.path, row[9])
            )
            continue
        changed = True
        session = load(root / entry.name)
        if session is None:
            continue
        s = summarize(session, root / entry.name)
        new[entry.name] = [st.st_mtime_ns, st.st_size, st.st_ino, s.id, s.title, s.created_at, s.updated_at, s.model,
                           s.message_count, s.snippet]
        summaries.append(s)
    if changed or len(new) != len(old):
        payload = {"version": INDEX_VERSION, "entries": new}
        try:
            write(index_path, json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode())
        except OSError:
            pass  # a read-only folder still lists, just without the cache
    summaries.sort(key=attrgetter("id"), reverse=True)  # two stable sorts beat one tuple key
    summaries.sort(key=attrgetter("updated_at"), reverse=True)
    return summaries

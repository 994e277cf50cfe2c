"""A cache of session summaries and their text, so listing and searching thousands of sessions does not
parse them all.

``.index.json`` in the sessions folder maps each file name to (mtime_ns, size, inode) and the summary;
``.search.json`` maps it to the same key and the lower-cased text of every message (all channels, tool
calls and results, other branches), read only when there is a query and then kept in memory by the
SessionIndex. Listing scans the folder (one stat per file) and re-reads only files whose mtime, size or
inode changed (every atomic save is a new inode, which catches rewrites within one coarse mtime tick);
entries of removed files disappear. Both files are only caches: a missing, unreadable or foreign one is
rebuilt, and two processes writing one at once merely redo some work (the write is atomic).
Measured (scripts/bench_sessions.py, 10,000 sessions x 20 messages, this 2-core box): see its output.
"""

from __future__ import annotations

import json
import os
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path

from mlx_harmony_tui.sessions.schema import Session, session_text

INDEX_NAME = ".index.json"
SEARCH_NAME = ".search.json"
INDEX_VERSION = 3
SEARCH_VERSION = 1
SNIPPET_CHARS = 160  # the start of the conversation, kept per session for display


@dataclass(frozen=True)
class SessionSummary:
    id: str
    title: str
    created_at: str
    updated_at: str
    model: str
    message_count: int  # records in the file (each Harmony message, tool call and result is one)
    file: str  # the session file's path as text (a Path per row costs too much with 10,000 rows)
    snippet: str = ""  # the start of the visible conversation
    exchanges: int = 0  # user messages of the conversation, each with its reply: what a user counts

    @property
    def path(self) -> Path:
        return Path(self.file)

    def matches(self, terms: list[str], text: str = "") -> bool:
        """Every term (lower-case) appears in the title, model, id or ``text`` (the search text)."""
        head = f"{self.title}\n{self.model}\n{self.id}\n{self.snippet}".lower()
        return all(t in text or t in head for t in terms)


def summarize(session: Session, path: Path) -> SessionSummary:
    return SessionSummary(
        id=session.id, title=session.title, created_at=session.created_at, updated_at=session.updated_at,
        model=session.model, message_count=len(session.messages), file=str(path),
        snippet=session_text(session)[:SNIPPET_CHARS],
        exchanges=sum(1 for m in session.messages if m.role == "user"),
    )


def search_text(session: Session) -> str:
    """What a search looks in: the text of every message, other branches included, lower-cased."""
    parts = [m.content for m in session.messages]
    parts += [m.content for m in getattr(session, "alternatives", ())]
    return "\n".join(parts).lower()


def _read_index(path: Path, version: int) -> dict[str, list]:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != version:
        return {}
    entries = data.get("entries")
    return entries if isinstance(entries, dict) else {}


def _valid_row(row: object) -> bool:
    return isinstance(row, list) and len(row) == 11


StatKey = tuple[int, int, int]  # mtime_ns, size, inode


def scan(
    root: Path,
    load: Callable[[Path], Session | None],
    write: Callable[[Path, bytes], None],
    seen: dict[str, tuple[StatKey, str | None]] | None = None,
) -> list[SessionSummary]:
    """Summaries of every ``*.json`` session in ``root``, newest update first; refreshes the index file.

    ``load`` parses one file (None when it cannot be used: the caller has reported or quarantined it);
    ``write`` writes the index atomically. ``seen``, when given, receives each listed file's stat key and,
    for the files parsed in this scan, their search text (None for the others).
    """
    index_path = root / INDEX_NAME
    old = _read_index(index_path, INDEX_VERSION)
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
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        if _valid_row(row) and (row[0], row[1], row[2]) == key:
            new[entry.name] = row
            summaries.append(
                SessionSummary(row[3], row[4], row[5], row[6], row[7], row[8], entry.path, row[9], row[10])
            )
            if seen is not None:
                seen[entry.name] = (key, None)
            continue
        changed = True
        session = load(root / entry.name)
        if session is None:
            continue
        s = summarize(session, root / entry.name)
        new[entry.name] = [*key, s.id, s.title, s.created_at, s.updated_at, s.model, s.message_count, s.snippet,
                           s.exchanges]
        summaries.append(s)
        if seen is not None:
            seen[entry.name] = (key, search_text(session))
    if changed or len(new) != len(old):
        payload = {"version": INDEX_VERSION, "entries": new}
        try:
            write(index_path, json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode())
        except OSError:
            pass  # a read-only folder still lists, just without the cache
    summaries.sort(key=attrgetter("id"), reverse=True)  # two stable sorts beat one tuple key
    summaries.sort(key=attrgetter("updated_at"), reverse=True)
    return summaries


class SessionIndex:
    """The listing of one sessions folder, with full-text search. The search text stays in memory between
    calls as one string (documents separated by NUL) searched with str.find, jumping to the next document
    after a hit: a word costs one C-speed pass however many sessions contain it, and typing in the
    browser's search box re-reads nothing but changed files."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._rows: dict[str, list] | None = None  # file name -> [mtime_ns, size, inode, text]
        self._blob = ""
        self._starts: list[int] = []  # where each document of _blob starts
        self._doc_of: dict[str, int] = {}  # file name -> its document number
        self._blob_stale = True

    def list(
        self,
        load: Callable[[Path], Session | None],
        write: Callable[[Path, bytes], None],
        query: str | None = None,
    ) -> list[SessionSummary]:
        """All sessions, newest first; with ``query``, those whose title, model, id or message text contains
        every word (case-insensitive)."""
        seen: dict[str, tuple[StatKey, str | None]] = {}
        summaries = scan(self.root, load, write, seen)
        terms = [t for t in (query or "").lower().replace("\0", " ").split() if t]
        if not terms:
            return summaries
        self._refresh(summaries, seen, load, write)
        hits = [self._hits(t) for t in terms]
        out = []
        cut = len(os.path.join(self.root, ""))  # a summary's file is root/name (a Path per row costs too much)
        for s in summaries:
            doc = self._doc_of.get(s.file[cut:], -1)
            if all(doc in h for h in hits) or s.matches(
                [t for t, h in zip(terms, hits, strict=True) if doc not in h]
            ):
                out.append(s)
        return out

    def _hits(self, term: str) -> set[int]:
        """Documents containing ``term``."""
        blob, starts, found = self._blob, self._starts, set()
        pos = blob.find(term)
        while pos != -1:
            doc = bisect_right(starts, pos) - 1
            found.add(doc)
            if doc + 1 >= len(starts):
                break
            pos = blob.find(term, starts[doc + 1])
        return found

    def _refresh(
        self,
        summaries: list[SessionSummary],
        seen: dict[str, tuple[StatKey, str | None]],
        load: Callable[[Path], Session | None],
        write: Callable[[Path, bytes], None],
    ) -> None:
        """Bring the search text up to date with the files listed now (and its file, when it changed)."""
        if self._rows is None:
            self._rows = _read_index(self.root / SEARCH_NAME, SEARCH_VERSION)
            self._blob_stale = True
        rows = self._rows
        changed = False
        cut = len(os.path.join(self.root, ""))
        for s in summaries:
            name = s.file[cut:]
            key, fresh = seen[name]
            row = rows.get(name)
            if fresh is None and isinstance(row, list) and len(row) == 4 and tuple(row[:3]) == key:
                continue
            if fresh is None:  # listed from the summary index, but its text is not cached yet
                session = load(s.path)
                fresh = search_text(session) if session is not None else ""
            rows[name] = [*key, fresh.replace("\0", " ")]
            changed = True
        for name in [n for n in rows if n not in seen]:
            del rows[name]
            changed = True
        if changed:
            self._blob_stale = True
            payload = {"version": SEARCH_VERSION, "entries": rows}
            try:
                write(self.root / SEARCH_NAME, json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode())
            except OSError:
                pass  # a read-only folder still searches, just without the cache
        if self._blob_stale:
            names = list(rows)
            texts = [rows[n][3] if isinstance(rows[n], list) and len(rows[n]) == 4 else "" for n in names]
            self._starts, pos = [], 0
            for t in texts:
                self._starts.append(pos)
                pos += len(t) + 1
            self._blob = "\0".join(texts)
            self._doc_of = {n: i for i, n in enumerate(names)}
            self._blob_stale = False

"""One JSON file per session, written atomically; damaged files are reported, never overwritten.

Layout of the sessions folder (``paths.sessions_dir()`` by default):
``<id>.json`` the session (current schema; the file name is the id), ``<id>.v<N>.bak`` the original of a
migrated file (written once), ``<id>.json.corrupt-<time>`` a damaged file moved aside (only by ``migrate``,
``sessions repair`` or a save over it: reading never moves a file), ``<id>.lock`` the lock of the process that has it open,
``.index.json`` the listing cache, ``.search.json`` the search text cache, ``.<name>.<pid>.<rand>.tmp`` a write in progress.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import secrets
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlx_harmony_tui import paths
from mlx_harmony_tui.sessions import jsontext
from mlx_harmony_tui.sessions.index import SessionIndex, SessionSummary
from mlx_harmony_tui.sessions.lock import SessionLock, SessionLockedError, lock_owner
from mlx_harmony_tui.sessions.migrations import SessionVersionError, migrate
from mlx_harmony_tui.sessions.schema import (
    SCHEMA_VERSION,
    SchemaError,
    Session,
    SessionError,
    new_id,
    now_iso,
    session_from_dict,
    session_to_dict,
    valid_id,
)

__all__ = ["SessionStore", "SessionNotFoundError", "CorruptSessionError", "SessionLockedError",
           "SessionVersionError", "atomic_write"]


class SessionNotFoundError(SessionError):
    """No session with that id (or prefix)."""


class CorruptSessionError(SessionError):
    """The file could not be parsed or failed validation (left in place, or moved aside by a repair)."""


PRIVATE_FILE = 0o600  # sessions, their indexes and backups: readable by their user only
PRIVATE_DIR = 0o700  # a sessions folder the app creates (an existing one keeps its mode)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class NotRegularFileError(SessionError):
    """A session name that is a FIFO, a device or a folder: never opened (a FIFO would block forever)."""


def read_regular(path: Path) -> bytes:
    """The bytes of a regular file (symlinks followed); anything else is refused without blocking."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegularFileError(f"{path.name} is not a regular file; skipped")
        os.set_blocking(fd, True)
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read()
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Temp file in the same folder, fsync, rename over the target, fsync the folder: the file is always
    either the old or the new complete version, even after a crash or power loss. A symlinked file is
    written at its target (the link stays), and an existing file keeps its permission bits (a user's
    chmod is theirs); a new file is 0600, as conversations are private on a shared machine."""
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    try:
        mode: int | None = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        mode = None
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    try:
        try:
            if mode is not None:
                os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def encode_session(session: Session) -> bytes:
    return jsontext.dumps(session_to_dict(session), indent=1)


def parse_session(data: bytes) -> tuple[Session, int]:
    """Bytes -> (validated current-version session, the file's schema version). Every kind of damage is a
    SchemaError; a newer app's file is a SessionVersionError. Nothing is written."""
    try:
        doc = jsontext.loads(data)
        current, original = migrate(doc)
        return session_from_dict(current), original
    except (SchemaError, SessionVersionError):
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise SchemaError(f"not valid JSON ({type(e).__name__}: {e})") from None


def decode_document(data: bytes) -> dict[str, Any]:
    """Bytes -> current-version document (migrated in memory). Raises SchemaError / SessionVersionError."""
    try:
        doc = jsontext.loads(data)
    except (UnicodeDecodeError, ValueError) as e:
        raise SchemaError(f"not valid JSON ({e})") from None
    except RecursionError:
        raise SchemaError("not valid JSON (nested too deeply)") from None
    current, _ = migrate(doc)
    return current


class SessionStore:
    """The sessions folder. ``problems`` collects what was quarantined or skipped, for the faces to show."""

    def __init__(self, root: Path | None = None) -> None:
        # The app's own folder is made now (best effort: a user may copy files into it before any save);
        # another (`sessions --dir DIR`, perhaps mistyped) only by the first save, never by reading.
        self.root = Path(root) if root is not None else paths.sessions_dir()
        if root is None:
            with contextlib.suppress(OSError):  # unusable: reported by list() and save()
                self.root.mkdir(PRIVATE_DIR, parents=True, exist_ok=True)
        self.problems: list[str] = []
        self._locks: dict[str, SessionLock] = {}
        self._checked: set[str] = set()  # ids whose file on disk we know is ours at the current version
        self._source_version: dict[str, int] = {}
        self._index = SessionIndex(self.root)

    # paths -------------------------------------------------------------------------------------------
    def path(self, session_id: str) -> Path:
        if not valid_id(session_id):
            raise SessionNotFoundError(f"not a valid session id: {session_id!r}")
        return self.root / f"{session_id}.json"

    def _lock_path(self, session_id: str) -> Path:
        return self.root / f"{session_id}.lock"

    def _ensure_root(self) -> None:
        try:
            self.root.mkdir(PRIVATE_DIR, parents=True, exist_ok=True)
        except OSError as e:
            why = "a file is in the way" if isinstance(e, FileExistsError) else e.strerror or str(e)
            raise SessionError(f"could not save the session: cannot create the sessions folder {self.root} "
                               f"({why})") from None

    # quarantine --------------------------------------------------------------------------------------
    def quarantine(self, path: Path, reason: str) -> Path:
        """Move a bad file aside (never delete or overwrite it) and record the problem."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        target = path.with_name(f"{path.name}.corrupt-{stamp}")
        n = 1
        while target.exists():
            n += 1
            target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        os.replace(path, target)
        _fsync_dir(self.root)
        self.problems.append(f"{path.name}: {reason}; moved aside to {target.name}")
        return target

    # reading -----------------------------------------------------------------------------------------
    def _read(self, path: Path, *, repair: bool = False) -> Session:
        """Parse, migrate and validate one file. A damaged file raises CorruptSessionError and is left where
        it is (reading never moves a user's file); with ``repair`` it is moved aside. The file name is the
        session's id: a file copied in under another name opens under that name, it is not damage."""
        try:
            data = read_regular(path)
        except FileNotFoundError:
            raise SessionNotFoundError(f"no session file {path}") from None
        except NotRegularFileError as e:
            self.problems.append(str(e))
            raise
        except OSError as e:
            raise SessionError(f"cannot read {path}: {e.strerror}") from None
        try:
            session, original = parse_session(data)
        except SessionVersionError as e:
            self.problems.append(f"{path.name}: {e}")
            raise SessionVersionError(f"{path}: {e}") from None
        except SchemaError as e:
            if repair:
                target = self.quarantine(path, str(e))
                raise CorruptSessionError(f"{path.name} is damaged ({e}); moved aside to {target}") from None
            self.problems.append(f"{path.name}: damaged ({e}); skipped (`sessions repair` moves it aside)")
            raise CorruptSessionError(f"{path.name} is damaged ({e}); left unchanged") from None
        stem = path.name.removesuffix(".json")
        if session.id != stem and valid_id(stem):
            session.id = stem
        self._source_version[session.id] = original
        if original == SCHEMA_VERSION:
            self._checked.add(session.id)
        return session

    def load(self, session_id: str) -> Session:
        return self._read(self.path(session_id))

    def resolve(self, id_or_prefix: str) -> str:
        """A full id from a unique prefix (the CLI accepts short ids)."""
        if valid_id(id_or_prefix) and self.path(id_or_prefix).exists():
            return id_or_prefix
        hits = [p.name[:-5] for p in self.root.glob("*.json") if p.name.startswith(id_or_prefix)
                and not p.name.startswith(".")] if id_or_prefix else []
        if len(hits) == 1:
            return hits[0]
        if not hits:
            raise SessionNotFoundError(f"no session {id_or_prefix!r} in {self.root}")
        raise SessionNotFoundError(f"{id_or_prefix!r} matches {len(hits)} sessions: {', '.join(sorted(hits)[:5])}")

    def list(self, query: str | None = None) -> builtins.list[SessionSummary]:
        """All sessions (newest first) via the index; ``query`` keeps those whose title or message text
        contains every word (sessions/index.py)."""

        def load(path: Path) -> Session | None:
            try:
                return self._read(path)
            except SessionError:
                return None  # reported in self.problems

        try:
            return self._index.list(load, atomic_write, query)
        except FileNotFoundError:
            return []  # nothing saved yet
        except OSError as e:  # e.g. the data dir lies below a file
            self.problems.append(f"cannot read the sessions folder {self.root}: {e.strerror or e}")
            return []

    # writing -----------------------------------------------------------------------------------------
    def _check_not_locked_elsewhere(self, session_id: str, doing: str = "saving over it") -> None:
        if session_id in self._locks:
            return
        pid = lock_owner(self._lock_path(session_id))
        if pid is not None:
            raise SessionLockedError(f"session {session_id} is open in process {pid}; not {doing}")

    def _prepare_overwrite(self, session_id: str, path: Path) -> None:
        """Before the first save over an existing file: back up an old version once, move a bad file aside."""
        if session_id in self._checked or not path.exists():
            self._checked.add(session_id)
            return
        try:
            original = read_regular(path)
        except FileNotFoundError:
            return
        try:
            _, version = migrate(json.loads(original.decode("utf-8")))
        except SessionVersionError:
            raise
        except (SchemaError, UnicodeDecodeError, ValueError, RecursionError) as e:
            self.quarantine(path, f"unreadable before save ({e})")
            version = SCHEMA_VERSION
        if version < SCHEMA_VERSION:
            backup = self.root / f"{session_id}.v{version}.bak"
            if not backup.exists():
                atomic_write(backup, original)
        self._checked.add(session_id)

    def save(self, session: Session, *, touch: bool = True) -> None:
        """Write the session atomically (current schema); ``touch`` sets ``updated_at`` to now."""
        path = self.path(session.id)
        self._ensure_root()
        self._check_not_locked_elsewhere(session.id)
        self._prepare_overwrite(session.id, path)
        if touch:
            session.updated_at = now_iso()
        try:
            atomic_write(path, encode_session(session))
        except OSError as e:
            raise SessionError(f"could not save the session: cannot write {path} ({e.strerror or e})") from None

    def create(self, title: str = "", model: str = "", params: dict | None = None,
               settings: dict | None = None) -> Session:
        session = Session(id=new_id(), title=title, model=model, params=dict(params or {}),
                          settings=dict(settings or {}))
        self.save(session)
        return session

    def delete(self, session_id: str) -> None:
        path = self.path(session_id)
        self._check_not_locked_elsewhere(session_id, "deleting it")
        if not path.exists():
            raise SessionNotFoundError(f"no session {session_id!r} in {self.root}")
        path.unlink()
        _fsync_dir(self.root)
        self._checked.discard(session_id)
        with contextlib.suppress(OSError):  # its saved prompt cache has no other use (and may be GBs)
            paths.prompt_cache_file(session_id).unlink()

    def rename(self, session_id: str, title: str) -> Session:
        session = self.load(session_id)
        session.title = title
        self.save(session)
        return session

    # locking -----------------------------------------------------------------------------------------
    def lock(self, session_id: str) -> SessionLock:
        """Take the session's lock for this store (SessionLockedError if another live process has it)."""
        self.path(session_id)  # validates the id
        self._ensure_root()
        held = self._locks.get(session_id)
        if held is not None and held.held:
            return held
        lock = SessionLock(self._lock_path(session_id), session_id)
        self._locks[session_id] = lock
        return lock

    def unlock(self, session_id: str) -> None:
        lock = self._locks.pop(session_id, None)
        if lock is not None:
            lock.release()

    @contextlib.contextmanager
    def open_locked(self, session_id: str) -> Iterator[Session]:
        """Lock, load, yield the session; saves made meanwhile are ours; unlock on exit."""
        already = session_id in self._locks
        self.lock(session_id)
        try:
            yield self.load(session_id)
        finally:
            if not already:
                self.unlock(session_id)

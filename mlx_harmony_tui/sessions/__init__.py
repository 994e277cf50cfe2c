"""Saved chats: one JSON file per session, migrations, index, locking, import/export (docs/sessions.md)."""

from mlx_harmony_tui.sessions.index import SessionSummary
from mlx_harmony_tui.sessions.lock import SessionLock, SessionLockedError
from mlx_harmony_tui.sessions.recorder import SessionRecorder, to_hmessages
from mlx_harmony_tui.sessions.schema import SCHEMA_VERSION, Message, SchemaError, Session, SessionError
from mlx_harmony_tui.sessions.store import CorruptSessionError, SessionNotFoundError, SessionStore

__all__ = [
    "SCHEMA_VERSION", "CorruptSessionError", "Message", "SchemaError", "Session", "SessionError",
    "SessionLock", "SessionLockedError", "SessionNotFoundError", "SessionRecorder", "SessionStore",
    "SessionSummary", "to_hmessages",
]

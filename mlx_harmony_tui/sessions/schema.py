"""The session record (current schema) and its strict JSON validation.

Files on disk are plain JSON so they stay readable and diffable; ``session_to_dict`` omits fields that hold
their default value to keep thousands of files small, and ``session_from_dict`` rejects anything whose
types are wrong (the store moves such files aside instead of guessing).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from mlx_harmony_tui.errors import UserError

SCHEMA_VERSION = 4

Role = Literal["user", "assistant", "tool", "system", "developer"]
ROLES: frozenset[str] = frozenset({"user", "assistant", "tool", "system", "developer"})
ASSISTANT_CHANNELS: frozenset[str] = frozenset({"analysis", "commentary", "final"})

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class SessionError(UserError):
    """Base of the session errors a user sees."""


class SchemaError(SessionError):
    """A session document does not match the schema; the message names the field."""


def now_iso() -> str:
    """UTC timestamp with milliseconds: sortable as text, readable in the file."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_id(prefix: str = "") -> str:
    """Time-sortable id (also the file name), random suffix so two instances never collide."""
    return f"{prefix}{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def valid_id(session_id: str) -> bool:
    """Ids become file names: no separators, no leading dot, no ``..``."""
    return bool(_ID_RE.match(session_id)) and ".." not in session_id


@dataclass
class Message:
    """One record: a user text, an assistant message on one channel, a tool call or a tool result."""

    id: str
    role: Role
    content: str
    channel: str | None = None  # analysis | commentary | final for assistant; the call's channel for tool
    recipient: str | None = None  # e.g. "functions.get_weather" on a tool call
    content_type: str | None = None
    author: str | None = None  # tool name for role tool
    call_id: str | None = None  # ties a tool call to its result
    created_at: str = field(default_factory=now_iso)
    params: dict[str, Any] | None = None  # generation parameters, only when they changed
    metrics: dict[str, Any] | None = None  # tokens, tok/s, ttft, finish reason
    incomplete: bool = False  # a partial reply (crash, cancel, length)
    retries: list[dict[str, Any]] = field(default_factory=list)  # {attempt, reason, detail, failed_text}
    extra: dict[str, Any] = field(default_factory=dict)  # fields we do not understand, kept verbatim
    # only on Session.alternatives: the id of the message this one follows ("" = the start); messages of the
    # conversation follow the one before them
    parent: str | None = None


@dataclass
class Session:
    id: str
    title: str = ""
    created_at: str = field(default_factory=now_iso)
    updated_at: str = field(default_factory=now_iso)
    model: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    # system_prompt, instructions (developer), reasoning_effort, tools, conversation_date, ...
    settings: dict[str, Any] = field(default_factory=dict)
    messages: list[Message] = field(default_factory=list)  # the active branch: what the model sees
    # the other branches (edited messages, regenerated replies), each message with its ``parent``; see
    # sessions/branches.py
    alternatives: list[Message] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


_MSG_STR_OPT = ("channel", "recipient", "content_type", "author", "call_id", "parent")
_MSG_DICT_OPT = ("params", "metrics")
_MSG_KEYS = frozenset(
    {"id", "role", "content", "created_at", "incomplete", "retries", "extra", *_MSG_STR_OPT, *_MSG_DICT_OPT}
)
_SESSION_KEYS = frozenset(
    {"schema_version", "id", "title", "created_at", "updated_at", "model", "params", "settings", "messages",
     "alternatives", "extra"}
)


def message_to_dict(m: Message) -> dict[str, Any]:
    d: dict[str, Any] = {"id": m.id, "role": m.role, "content": m.content}
    for key in _MSG_STR_OPT:
        value = getattr(m, key)
        if value is not None:
            d[key] = value
    d["created_at"] = m.created_at
    for key in _MSG_DICT_OPT:
        value = getattr(m, key)
        if value is not None:
            d[key] = value
    if m.incomplete:
        d["incomplete"] = True
    if m.retries:
        d["retries"] = m.retries
    if m.extra:
        d["extra"] = m.extra
    return d


def session_to_dict(s: Session) -> dict[str, Any]:
    d: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "id": s.id,
        "title": s.title,
        "created_at": s.created_at,
        "updated_at": s.updated_at,
        "model": s.model,
        "params": s.params,
        "settings": s.settings,
        "messages": [message_to_dict(m) for m in s.messages],
    }
    if s.alternatives:
        d["alternatives"] = [message_to_dict(m) for m in s.alternatives]
    if s.extra:
        d["extra"] = s.extra
    return d


def _expect(cond: bool, where: str, what: str) -> None:
    if not cond:
        raise SchemaError(f"{where}: {what}")


def _opt_dict(d: dict[str, Any], key: str, where: str) -> dict[str, Any] | None:
    value = d.get(key)
    _expect(value is None or isinstance(value, dict), f"{where}.{key}", "must be an object")
    return value


def message_from_dict(d: Any, where: str = "message") -> Message:
    _expect(isinstance(d, dict), where, "must be an object")
    for key in ("id", "content", "created_at"):
        _expect(isinstance(d.get(key), str), f"{where}.{key}", "must be a string")
    _expect(isinstance(d.get("role"), str) and d["role"] in ROLES, f"{where}.role", f"must be one of {sorted(ROLES)}")
    for key in _MSG_STR_OPT:
        _expect(d.get(key) is None or isinstance(d[key], str), f"{where}.{key}", "must be a string")
    if d["role"] == "assistant":
        _expect(isinstance(d.get("channel"), str) and d["channel"] in ASSISTANT_CHANNELS, f"{where}.channel",
                "assistant needs a valid channel")
    _expect(isinstance(d.get("incomplete", False), bool), f"{where}.incomplete", "must be true/false")
    retries = d.get("retries", [])
    _expect(isinstance(retries, list) and all(isinstance(r, dict) for r in retries), f"{where}.retries",
            "must be a list of objects")
    extra = dict(d.get("extra") or {}) if isinstance(d.get("extra", {}), dict) else None
    _expect(extra is not None, f"{where}.extra", "must be an object")
    assert extra is not None
    for key in d.keys() - _MSG_KEYS:  # written by a newer app: keep rather than lose
        extra[key] = d[key]
    return Message(
        id=d["id"], role=d["role"], content=d["content"], channel=d.get("channel"),
        recipient=d.get("recipient"), content_type=d.get("content_type"), author=d.get("author"),
        call_id=d.get("call_id"), created_at=d["created_at"], params=_opt_dict(d, "params", where),
        metrics=_opt_dict(d, "metrics", where), incomplete=d.get("incomplete", False), retries=list(retries),
        extra=extra, parent=d.get("parent"),
    )


def session_from_dict(d: Any) -> Session:
    """Validate a current-version document and build the Session; raises SchemaError naming the field."""
    _expect(isinstance(d, dict), "session", "must be a JSON object")
    _expect(d.get("schema_version") == SCHEMA_VERSION, "schema_version", f"must be {SCHEMA_VERSION}")
    _expect(isinstance(d.get("id"), str) and valid_id(d["id"]), "id", "must be a safe file-name id")
    for key in ("title", "created_at", "updated_at", "model"):
        _expect(isinstance(d.get(key), str), key, "must be a string")
    for key in ("params", "settings"):
        _expect(isinstance(d.get(key), dict), key, "must be an object")
    _expect(isinstance(d.get("messages"), list), "messages", "must be a list")
    _expect(isinstance(d.get("alternatives", []), list), "alternatives", "must be a list")
    extra = d.get("extra", {})
    _expect(isinstance(extra, dict), "extra", "must be an object")
    extra = dict(extra)
    for key in d.keys() - _SESSION_KEYS:
        extra[key] = d[key]
    messages = [message_from_dict(m, f"messages[{i}]") for i, m in enumerate(d["messages"])]
    alternatives = [message_from_dict(m, f"alternatives[{i}]") for i, m in enumerate(d.get("alternatives", []))]
    for i, m in enumerate(alternatives):
        _expect(m.parent is not None, f"alternatives[{i}].parent", "must be a message id or \"\" (the start)")
    return Session(
        id=d["id"], title=d["title"], created_at=d["created_at"], updated_at=d["updated_at"],
        model=d["model"], params=d["params"], settings=d["settings"], messages=messages,
        alternatives=alternatives, extra=extra,
    )


def session_text(s: Session) -> str:
    """The visible conversation text (user + final), used for titles and search."""
    return "\n".join(
        m.content for m in s.messages if m.role == "user" or (m.role == "assistant" and m.channel == "final")
    )


def auto_title(s: Session, limit: int = 60) -> str:
    """A title from the first user message, for sessions the user never named."""
    for m in s.messages:
        if m.role == "user" and m.content.strip():
            line = " ".join(m.content.split())
            return line if len(line) <= limit else line[: limit - 1] + "…"
    return ""

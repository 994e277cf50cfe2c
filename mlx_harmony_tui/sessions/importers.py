"""Import chat files of the seed project ``mlx-harmony`` (and our own session files) as sessions.

Seed forms: flat v1 ``{metadata, messages}`` and the v2 container ``{schema_version: 2, chat_order,
active_chat_id, chats: {id: {chat_id, metadata, messages}}}``. Messages carry role, content, optional
``analysis``, ``timestamp`` (ISO text or ``{unix, iso}``) and ``hyperparameters``. Every chat becomes a
session; fields we have no place for are kept in ``extra`` and listed in the report, never dropped.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlx_harmony_tui.sessions import jsontext
from mlx_harmony_tui.sessions.migrations import SessionVersionError, migrate
from mlx_harmony_tui.sessions.schema import (
    ROLES,
    Message,
    SchemaError,
    Session,
    SessionError,
    auto_title,
    new_id,
    now_iso,
    session_from_dict,
    valid_id,
)


class ImportFormatError(SessionError):
    """The file is not a chat file we know how to import."""


@dataclass
class ImportResult:
    sessions: list[Session] = field(default_factory=list)
    report: list[str] = field(default_factory=list)  # what was kept in extra, renamed or assumed


_META_KNOWN = {"chat_id", "title", "model_path", "model", "hyperparameters", "created_at", "updated_at", "tools",
               "system_prompt", "developer_prompt", "instructions", "reasoning_effort"}
_MSG_KNOWN = {"role", "content", "analysis", "timestamp", "hyperparameters", "id", "channel", "name",
              "recipient"}


def _parse_time(value: Any) -> str | None:
    """Seed timestamps are ISO text or {unix, iso}; None for anything else (the caller keeps it in extra)."""
    if isinstance(value, dict):
        if isinstance(value.get("iso"), str):
            value = value["iso"]
        elif isinstance(value.get("unix"), int | float):
            return datetime.fromtimestamp(value["unix"], UTC).isoformat(timespec="milliseconds").replace(
                "+00:00", "Z")
    if isinstance(value, str) and value:
        try:
            datetime.fromisoformat(value.replace("Z", "+00:00"))
            return value
        except ValueError:
            pass
    return None


def _timestamp(value: Any, fallback: str) -> str:
    return _parse_time(value) or fallback


def _chat_to_session(chat_id: str | None, metadata: Any, messages: Any, where: str,
                     kept: Counter[str]) -> Session:
    if not isinstance(metadata, dict):
        metadata = {} if metadata is None else {"metadata": metadata}
    if not isinstance(messages, list):
        raise ImportFormatError(f"{where}: 'messages' must be a list")
    created = _timestamp(metadata.get("created_at"), now_iso())
    sid = chat_id if isinstance(chat_id, str) and valid_id(chat_id) else new_id()
    settings: dict[str, Any] = {}
    if metadata.get("system_prompt"):
        settings["system_prompt"] = str(metadata["system_prompt"])
    for key in ("developer_prompt", "instructions"):
        if metadata.get(key):
            settings["instructions"] = str(metadata[key])
    if metadata.get("reasoning_effort"):
        settings["reasoning_effort"] = metadata["reasoning_effort"]
    if metadata.get("tools"):
        settings["tools"] = metadata["tools"]
    params = metadata.get("hyperparameters") if isinstance(metadata.get("hyperparameters"), dict) else {}
    session = Session(
        id=sid, title=str(metadata.get("title") or ""), created_at=created,
        updated_at=_timestamp(metadata.get("updated_at"), created),
        model=str(metadata.get("model_path") or metadata.get("model") or ""), params=dict(params),
        settings=settings, extra={"imported_from": "mlx-harmony"},
    )
    meta_extra = {k: v for k, v in metadata.items() if k not in _META_KNOWN}
    for key in ("created_at", "updated_at"):  # unreadable times are replaced, so keep the originals
        if metadata.get(key) is not None and _parse_time(metadata[key]) is None:
            meta_extra[key] = metadata[key]
    if metadata.get("hyperparameters") is not None and not isinstance(metadata.get("hyperparameters"), dict):
        meta_extra["hyperparameters"] = metadata["hyperparameters"]
    if meta_extra:
        session.extra["metadata"] = meta_extra
        kept.update(f"metadata.{k}" for k in meta_extra)
    last_params: dict[str, Any] = session.params
    seen_ids: set[str] = set()
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            session.extra.setdefault("unreadable_messages", []).append(m)
            kept["unreadable message"] += 1
            continue
        role = m["role"]
        parsed = _parse_time(m.get("timestamp"))
        when = parsed or session.created_at
        extra = {k: v for k, v in m.items() if k not in _MSG_KNOWN}
        if parsed is None and m.get("timestamp") is not None:
            extra["timestamp"] = m["timestamp"]
        kept.update(f"message.{k}" for k in extra)
        mid = m.get("id") if isinstance(m.get("id"), str) and m["id"] not in seen_ids else f"m{i}"
        seen_ids.add(mid)
        content = m.get("content")
        if not isinstance(content, str):
            extra["content"] = content
            kept["message.content (not text)"] += 1
            content = "" if content is None else json.dumps(content, ensure_ascii=False)
        if role == "assistant":
            analysis = m.get("analysis")
            if isinstance(analysis, str) and analysis:
                session.messages.append(Message(id=f"{mid}-analysis", role="assistant", channel="analysis",
                                                content=analysis, created_at=when))
            elif analysis not in (None, ""):
                extra["analysis"] = analysis
                kept["message.analysis (not text)"] += 1
            channel = m.get("channel") if m.get("channel") in ("commentary", "final") else "final"
            msg = Message(id=mid, role="assistant", channel=channel, content=content, created_at=when,
                          recipient=m.get("recipient") if isinstance(m.get("recipient"), str) else None,
                          extra=extra)
            hp = m.get("hyperparameters")
            if isinstance(hp, dict) and hp != last_params:
                msg.params = dict(hp)
                last_params = msg.params
        elif role == "tool":
            name = m.get("name") or m.get("recipient")
            msg = Message(id=mid, role="tool", content=content, author=name if isinstance(name, str) else None,
                          channel="commentary", recipient="assistant", created_at=when, extra=extra)
        else:
            msg = Message(id=mid, role=role, content=content, created_at=when, extra=extra)
        session.messages.append(msg)
    if not session.title:
        session.title = auto_title(session)
    return session


def import_data(data: Any, name: str = "chat") -> ImportResult:
    """Convert a parsed chat file (any supported form) into sessions plus a report of kept fields."""
    result = ImportResult()
    kept: Counter[str] = Counter()
    if not isinstance(data, dict):
        raise ImportFormatError(f"{name}: expected a JSON object, found {type(data).__name__}")
    if "chats" in data:  # seed v2 container
        chats = data["chats"]
        if not isinstance(chats, dict):
            raise ImportFormatError(f"{name}: 'chats' must be an object")
        order = [c for c in data.get("chat_order") or [] if c in chats]
        order += [c for c in chats if c not in order]
        for chat_id in order:
            entry = chats[chat_id]
            if not isinstance(entry, dict):
                raise ImportFormatError(f"{name}: chat {chat_id!r} must be an object")
            session = _chat_to_session(entry.get("chat_id") or chat_id, entry.get("metadata"),
                                       entry.get("messages", []), f"{name}:{chat_id}", kept)
            if chat_id == data.get("active_chat_id"):
                session.extra["active"] = True
            other = {k: v for k, v in entry.items() if k not in ("chat_id", "metadata", "messages")}
            if other:
                session.extra["chat"] = other
                kept.update(f"chat.{k}" for k in other)
            result.sessions.append(session)
        other = {k: v for k, v in data.items()
                 if k not in ("schema_version", "chat_order", "active_chat_id", "chats")}
        if other and result.sessions:
            result.sessions[0].extra["container"] = other
            kept.update(f"container.{k}" for k in other)
    elif "id" in data and "schema_version" in data:  # one of our own session files, any version
        try:
            current, version = migrate(data)
            result.sessions.append(session_from_dict(current))
        except SchemaError as e:
            raise ImportFormatError(f"{name}: not a valid session file: {e}") from None
        except SessionVersionError as e:  # several files may be named: say which
            raise ImportFormatError(f"{name}: {e}") from None
        if version != current["schema_version"]:
            result.report.append(f"{name}: migrated from schema v{version}")
    elif "messages" in data:  # seed v1 flat form
        metadata = data.get("metadata")
        chat_id = metadata.get("chat_id") if isinstance(metadata, dict) else None
        result.sessions.append(_chat_to_session(chat_id, metadata, data["messages"], name, kept))
        other = {k: v for k, v in data.items() if k not in ("metadata", "messages")}
        if other:
            result.sessions[0].extra["file"] = other
            kept.update(f"file.{k}" for k in other)
    else:
        raise ImportFormatError(f"{name}: not an mlx-harmony chat file (no 'messages' or 'chats')")
    for key, n in sorted(kept.items()):
        result.report.append(f"{name}: kept {key} in extra ({n}x)")
    return result


def import_file(path: Path) -> ImportResult:
    try:
        data = jsontext.loads(Path(path).read_bytes())
    except FileNotFoundError:
        raise ImportFormatError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        hint = ""
        if isinstance(e, ValueError) and not isinstance(e, UnicodeDecodeError):
            hint = (f"; for dialogue text ('user:' / 'assistant:' lines) use: mlx-harmony-tui sessions "
                    f"convert-dialogue {path}")
        raise ImportFormatError(f"{path}: cannot read JSON ({e}){hint}") from None
    return import_data(data, Path(path).name)

"""v1 -> v2: split inline analysis and tool calls into their own records; settings become one object.

v1 (the early form) kept an assistant turn as one message: ``content`` (the final answer) plus optional
inline ``analysis`` and ``tool_call`` {name, arguments}; tool results were role ``tool`` with ``name``;
``system_prompt`` / ``developer_prompt`` sat at the top level and messages had no ids. v2 stores each
Harmony message as its own record with ``channel``, ``recipient``, ``call_id`` and a stable ``id``.
"""

from __future__ import annotations

import copy
from typing import Any


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{where} must be a string")
    return value


def migrate(doc: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    settings: dict[str, Any] = {}
    if doc.get("system_prompt"):
        settings["system_prompt"] = _text(doc["system_prompt"], "system_prompt")
    if doc.get("developer_prompt"):
        settings["instructions"] = _text(doc["developer_prompt"], "developer_prompt")
    messages: list[dict[str, Any]] = []
    open_calls: dict[str, str] = {}  # tool name -> call id of its latest unanswered call
    if not isinstance(doc.get("messages"), list):
        raise TypeError("messages must be a list")
    for i, m in enumerate(doc["messages"]):
        if not isinstance(m, dict):
            raise TypeError(f"messages[{i}] must be an object")
        role = _text(m.get("role"), f"messages[{i}].role")
        time = _text(m.get("time", doc.get("created_at", "")), f"messages[{i}].time")
        content = _text(m.get("content", ""), f"messages[{i}].content")
        if role == "assistant":
            if m.get("analysis"):
                messages.append({"id": f"m{i}a", "role": "assistant", "channel": "analysis",
                                 "content": _text(m["analysis"], f"messages[{i}].analysis"), "created_at": time})
            call = m.get("tool_call")
            if call is not None:
                name = _text(call.get("name"), f"messages[{i}].tool_call.name")
                call_id = f"call_m{i}"
                open_calls[name] = call_id
                messages.append({"id": f"m{i}c", "role": "assistant", "channel": "commentary",
                                 "recipient": name, "content_type": "<|constrain|>json",
                                 "content": _text(call.get("arguments", ""), "tool_call.arguments"),
                                 "call_id": call_id, "created_at": time})
            if content or call is None:
                messages.append({"id": f"m{i}", "role": "assistant", "channel": "final", "content": content,
                                 "created_at": time})
        elif role == "tool":
            name = _text(m.get("name", ""), f"messages[{i}].name")
            messages.append({"id": f"m{i}", "role": "tool", "author": name, "channel": "commentary",
                             "recipient": "assistant", "call_id": open_calls.pop(name, None),
                             "content": content, "created_at": time})
        else:
            messages.append({"id": f"m{i}", "role": role, "content": content, "created_at": time})
    for m in messages:
        for key in [k for k, v in m.items() if v is None]:
            del m[key]
    out = {k: v for k, v in doc.items() if k not in ("system_prompt", "developer_prompt", "messages")}
    out.update(schema_version=2, settings=settings, messages=messages)
    return out

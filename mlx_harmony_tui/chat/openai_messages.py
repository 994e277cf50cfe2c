"""The one mapping between our (Harmony) messages and OpenAI chat-completions messages, both ways.

Used by the remote backend (our history -> a request), the session export (a record -> JSON that OpenAI
clients read) and the server (a request -> our history). OpenAI's shape: one assistant message per reply
with its reasoning (``reasoning_content``), text (``content``) and ``tool_calls`` (a function name without
the ``functions.`` namespace; JSON arguments); tool results are role ``tool`` messages with the
``tool_call_id`` of the call they answer. The built-in python tool is the function ``python`` whose one
parameter (``code``) holds what the model wrote.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from mlx_harmony_tui.harmony.messages import HMessage

PYTHON = "python"
FUNCTIONS = "functions."


class OpenAIMessagesError(ValueError):
    """A request's messages that cannot be one conversation (``index``: the message at fault)."""

    def __init__(self, message: str, index: int) -> None:
        super().__init__(message)
        self.index = index


def function_name(recipient: str | None) -> str:
    """``functions.get_weather`` -> ``get_weather``; a built-in (``python``) keeps its name."""
    return (recipient or "").removeprefix(FUNCTIONS)


def call_arguments(recipient: str, text: str) -> str:
    """A call's arguments as OpenAI clients expect them: a JSON object. A built-in tool's plain text is
    wrapped (python's code as ``{"code": ...}``, as our server sends it); text that is an object already (a
    function's arguments, or a call that came through the remote backend) is kept."""
    if recipient.startswith(FUNCTIONS):
        return text
    try:
        if isinstance(json.loads(text), dict):
            return text
    except ValueError:
        pass
    return json.dumps({"code" if recipient == PYTHON else "input": text}, ensure_ascii=False)


def unwrap_code(arguments: str) -> str:
    """A python call's arguments as clients send them back (``{"code": "..."}``) -> the plain code."""
    try:
        doc = json.loads(arguments)
    except json.JSONDecodeError:
        return arguments
    if isinstance(doc, dict) and len(doc) == 1 and isinstance(next(iter(doc.values())), str):
        return str(next(iter(doc.values())))
    return arguments


def to_openai(
    messages: Sequence[HMessage],
    *,
    call_ids: Sequence[str | None] | None = None,
    developer_role: str = "developer",
    tool_names: bool = False,
) -> list[dict[str, Any]]:
    """Our messages -> OpenAI messages.

    ``call_ids``: the recorded id of each message's call or result (a session keeps them), else calls are
    numbered ``call_1``... and each result answers the oldest open call of its tool. ``developer_role``:
    the role system/developer messages take (``"system"`` for servers that know no developer role).
    ``tool_names``: also name the tool on result messages (the export does, a request need not).
    A reply's messages join into one assistant message; its analysis after text or calls starts the next.
    """
    out: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None  # the assistant message being assembled
    open_calls: dict[str, list[str]] = {}  # function name -> ids of calls not answered yet
    numbered = 0

    def assistant() -> dict[str, Any]:
        nonlocal current
        if current is None:
            current = {"role": "assistant", "content": None}
            out.append(current)
        return current

    for i, m in enumerate(messages):
        given = call_ids[i] if call_ids is not None else None
        if m.role != "assistant":
            current = None
            if m.role == "tool":
                name = function_name(m.author)
                waiting = open_calls.get(name) or []
                call_id = given or (waiting.pop(0) if waiting else f"call_{name}")
                if given and given in waiting:
                    waiting.remove(given)
                result: dict[str, Any] = {"role": "tool", "tool_call_id": call_id}
                if tool_names:
                    result["name"] = name
                result["content"] = m.text
                out.append(result)
            elif m.role in ("system", "developer"):
                out.append({"role": developer_role if m.role == "developer" else "system", "content": m.text})
            else:
                out.append({"role": m.role, "content": m.text})
            continue
        if m.recipient and m.recipient != "assistant":  # a call, on whichever channel (python: analysis)
            numbered += 1
            call_id = given or f"call_{numbered}"
            name = function_name(m.recipient)
            open_calls.setdefault(name, []).append(call_id)
            assistant().setdefault("tool_calls", []).append(
                {"id": call_id, "type": "function",
                 "function": {"name": name, "arguments": call_arguments(m.recipient, m.text)}}
            )
        elif m.channel == "analysis":
            if current is not None and (current.get("content") is not None or current.get("tool_calls")):
                current = None  # reasoning starts the next assistant message
            a = assistant()
            a["reasoning_content"] = _join(a.get("reasoning_content"), m.text)
        else:
            a = assistant()
            a["content"] = _join(a["content"], m.text)
            if m.channel in (None, "final"):
                current = None  # the reply's answer ends it
    return out


def _join(before: str | None, text: str) -> str:
    return text if not before else before + "\n\n" + text


def from_openai(messages: Sequence[dict[str, Any]], *, builtin_python: bool = False) -> list[HMessage]:
    """OpenAI messages (already validated; ``content`` as text) -> our messages. System and developer
    messages are left out (they become the settings' instructions). ``builtin_python``: the client declared
    the function ``python``, which is then the built-in tool (its calls carry plain code, as the model
    wrote them). OpenAIMessagesError when a tool result answers no earlier call."""
    out: list[HMessage] = []
    call_names: dict[str, str] = {}  # tool_call_id -> Harmony recipient
    for i, m in enumerate(messages):
        role = m["role"]
        text = m.get("content") or ""
        if role in ("system", "developer"):
            continue
        if role == "user":
            out.append(HMessage(role="user", text=text))
        elif role == "assistant":
            reasoning = m.get("reasoning_content") or m.get("reasoning")
            if reasoning:
                out.append(HMessage(role="assistant", text=reasoning, channel="analysis"))
            calls = m.get("tool_calls") or []
            if calls:
                if text:
                    out.append(HMessage(role="assistant", text=text, channel="commentary"))
                for tc in calls:
                    fn = tc["function"]
                    if builtin_python and fn["name"] == PYTHON:
                        call_names[tc["id"]] = PYTHON
                        out.append(HMessage(role="assistant", text=unwrap_code(fn.get("arguments") or ""),
                                            channel="commentary", recipient=PYTHON))
                        continue
                    call_names[tc["id"]] = FUNCTIONS + fn["name"]
                    out.append(HMessage(role="assistant", text=fn.get("arguments") or "", channel="commentary",
                                        recipient=FUNCTIONS + fn["name"], content_type="<|constrain|>json"))
            elif text or not reasoning:
                out.append(HMessage(role="assistant", text=text, channel="final"))
        else:  # tool
            named = m.get("name")
            by_name = (PYTHON if builtin_python and named == PYTHON else FUNCTIONS + named) if named else None
            name = call_names.get(m.get("tool_call_id") or "") or by_name
            if not name:
                raise OpenAIMessagesError(
                    f"messages[{i}]: tool message with tool_call_id {m.get('tool_call_id')!r} answers no "
                    "earlier tool call", i)
            out.append(HMessage(role="tool", text=text, channel="commentary", recipient="assistant", author=name))
    return out

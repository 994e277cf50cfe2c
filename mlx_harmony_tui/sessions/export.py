"""Export a session as Markdown (reasoning collapsible) or as OpenAI-style chat messages JSON.

The JSON form is what OpenAI-compatible tools read: analysis becomes ``reasoning_content`` on the
assistant message it precedes, tool calls become ``tool_calls`` (function name without the ``functions.``
namespace), tool results become role ``tool`` messages with ``tool_call_id``.
"""

from __future__ import annotations

import json
from typing import Any

from mlx_harmony_tui.sessions.schema import Message, Session


def _fence(text: str, lang: str = "") -> str:
    """A code fence longer than any backtick run inside the text, so content cannot break out."""
    longest = run = 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{text}\n{fence}"


def _tool_name(recipient: str | None) -> str:
    name = recipient or ""
    return name.split(".", 1)[1] if name.startswith("functions.") else name


def to_markdown(session: Session) -> str:
    out = [f"# {session.title or session.id}", ""]
    meta = [f"- id: `{session.id}`", f"- created: {session.created_at}", f"- updated: {session.updated_at}"]
    if session.model:
        meta.append(f"- model: `{session.model}`")
    if session.params:
        meta.append("- parameters: " + ", ".join(f"{k}={v}" for k, v in sorted(session.params.items())))
    out += [*meta, ""]
    for key, label in (("system_prompt", "System"), ("instructions", "Developer")):
        if session.settings.get(key):
            out += [f"## {label}", "", str(session.settings[key]), ""]
    for m in session.messages:
        out += _message_md(m)
    return "\n".join(out).rstrip() + "\n"


def _message_md(m: Message) -> list[str]:
    flag = " *(incomplete)*" if m.incomplete else ""
    if m.role == "assistant" and m.channel == "analysis":
        return ["<details>", f"<summary>Reasoning{flag}</summary>", "", m.content, "", "</details>", ""]
    if m.role == "assistant" and m.recipient:
        lang = "python" if m.recipient == "python" else "json"
        return [f"**Tool call** `{m.recipient}`{flag}", "", _fence(m.content, lang), ""]
    if m.role == "tool":
        return [f"**Tool result** `{m.author or 'tool'}`", "", _fence(m.content), ""]
    heading = {"user": "User", "assistant": "Assistant", "system": "System", "developer": "Developer"}[m.role]
    lines = [f"### {heading}{flag}", "", m.content, ""]
    if m.retries:
        reasons = ", ".join(str(r.get("reason", "?")) for r in m.retries)
        lines += [f"*retried {len(m.retries)}x: {reasons}*", ""]
    if m.metrics and m.metrics.get("decode_tps"):
        lines += [f"*{m.metrics.get('generated_tokens', '?')} tokens, {m.metrics['decode_tps']:.1f} tok/s*", ""]
    return lines


def to_openai_messages(session: Session) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if session.settings.get("system_prompt"):
        out.append({"role": "system", "content": str(session.settings["system_prompt"])})
    if session.settings.get("instructions"):
        out.append({"role": "developer", "content": str(session.settings["instructions"])})
    current: dict[str, Any] | None = None  # the assistant message being assembled

    def assistant() -> dict[str, Any]:
        nonlocal current
        if current is None:
            current = {"role": "assistant", "content": None}
            out.append(current)
        return current

    call_n = 0
    for m in session.messages:
        if m.role == "assistant":
            if m.channel == "analysis":
                if current is not None and (current.get("content") is not None or current.get("tool_calls")):
                    current = None  # reasoning starts the next assistant message
                a = assistant()
                a["reasoning_content"] = (a.get("reasoning_content", "") + "\n\n" + m.content).lstrip("\n")
            elif m.recipient:
                call_n += 1
                a = assistant()
                a.setdefault("tool_calls", []).append({
                    "id": m.call_id or f"call_{call_n}", "type": "function",
                    "function": {"name": _tool_name(m.recipient), "arguments": m.content},
                })
            else:
                a = assistant()
                a["content"] = m.content if a["content"] is None else a["content"] + "\n\n" + m.content
        else:
            current = None
            if m.role == "tool":
                out.append({"role": "tool", "tool_call_id": m.call_id or "", "name": _tool_name(m.author),
                            "content": m.content})
            else:
                out.append({"role": m.role, "content": m.content})
    return out


def to_json(session: Session) -> str:
    doc = {"id": session.id, "title": session.title, "model": session.model,
           "messages": to_openai_messages(session)}
    return json.dumps(doc, ensure_ascii=False, indent=2) + "\n"

"""Export a session as Markdown (reasoning collapsible) or as OpenAI-style chat messages JSON.

The JSON form is what OpenAI-compatible tools read, and the openai SDK accepts its ``messages`` as they are:
analysis becomes ``reasoning_content`` on the assistant message it precedes, tool calls become ``tool_calls``
(function name without the ``functions.`` namespace; arguments are JSON: the python tool's plain code as
``{"code": ...}``, as our server sends it), tool results become role ``tool`` messages with ``tool_call_id``.
What the next prompt would not contain is left out, as in ``to_hmessages``: a failed turn's messages and a
tool call cut off before it ran.
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
    """The conversation as Markdown; ``sessions show`` prints the same. Each assistant turn is one section:
    its reasoning, tool calls and their results in order, then the answer; stopped and failed replies are
    marked."""
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
    for lead, reply in _turns(session.messages):
        if lead is not None:
            heading = {"user": "User", "system": "System", "developer": "Developer"}.get(lead.role, lead.role)
            out += [f"### {heading}", "", lead.content, ""]
        if reply or (lead is not None and (lead.extra.get("error") or lead.extra.get("finish_reason"))):
            out += _assistant_md(reply, lead)
    return "\n".join(out).rstrip() + "\n"


def _turns(messages: list[Message]) -> list[tuple[Message | None, list[Message]]]:
    """(user/system/developer message, the assistant and tool messages after it) in order."""
    turns: list[tuple[Message | None, list[Message]]] = [(None, [])]
    for m in messages:
        if m.role in ("assistant", "tool"):
            turns[-1][1].append(m)
        else:
            turns.append((m, []))
    return [t for t in turns if t[0] is not None or t[1]]


def _assistant_md(reply: list[Message], lead: Message | None) -> list[str]:
    last = next((m for m in reversed(reply) if m.role == "assistant" and m.metrics), None)
    finish = (last.metrics or {}).get("finish_reason") if last else None
    if finish is None and lead is not None:
        finish = lead.extra.get("finish_reason")  # a turn that ended before any reply
    failed = (lead.extra.get("error") if lead is not None else None) or next(
        ("failed" for m in reply if m.extra.get("failed")), None)
    if failed:
        mark = f" *(failed: {failed})*" if failed != "failed" else " *(failed)*"
    elif finish == "cancelled":
        mark = " *(stopped)*"
    elif finish == "length":
        mark = " *(cut at the token limit)*"
    elif any(m.incomplete for m in reply):
        mark = " *(incomplete)*"
    else:
        mark = ""
    lines = [f"### Assistant{mark}", ""]
    for m in reply:
        lines += _part_md(m)
    for m in reply:
        for r in m.retries:
            about = "; ".join(str(r[k]) for k in ("change", "outcome") if r.get(k)) or str(r.get("detail") or "")
            about = f" ({about})" if about else ""
            lines += [f"*retry {r.get('attempt', '?')}: {r.get('reason', '?')}{about}*", ""]
        if m.metrics and m.metrics.get("decode_tps"):
            lines += [f"*{m.metrics.get('generated_tokens', '?')} tokens, {m.metrics['decode_tps']:.1f} tok/s*", ""]
    return lines


def _part_md(m: Message) -> list[str]:
    flag = " *(incomplete)*" if m.incomplete else ""
    if m.role == "assistant" and m.channel == "analysis" and not m.recipient:
        return ["<details>", f"<summary>Reasoning{flag}</summary>", "", m.content, "", "</details>", ""]
    if m.role == "assistant" and m.recipient:
        lang = "python" if m.recipient == "python" else "json"
        return [f"**Tool call** `{m.recipient}`{flag}", "", _fence(m.content, lang), ""]
    if m.role == "tool":
        return [f"**Tool result** `{m.author or 'tool'}`", "", _fence(m.content), ""]
    return [m.content + flag, ""]


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
        if m.extra.get("failed") or (m.incomplete and m.role == "assistant" and m.recipient):
            continue
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
                    "function": {"name": _tool_name(m.recipient), "arguments": _arguments(m)},
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


def _arguments(m: Message) -> str:
    """A call's arguments as a JSON object string; built-in tools (python) take plain text, wrapped."""
    if (m.recipient or "").startswith("functions."):
        return m.content
    try:
        if isinstance(json.loads(m.content), dict):
            return m.content
    except ValueError:
        pass
    return json.dumps({"code" if m.recipient == "python" else "input": m.content}, ensure_ascii=False)


def to_json(session: Session) -> str:
    doc = {"id": session.id, "title": session.title, "model": session.model,
           "messages": to_openai_messages(session)}
    return json.dumps(doc, ensure_ascii=False, indent=2) + "\n"

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

from mlx_harmony_tui.chat.openai_messages import to_openai
from mlx_harmony_tui.harmony.messages import HMessage
from mlx_harmony_tui.sessions.schema import Message, Session


def _fence(text: str, lang: str = "") -> str:
    """A code fence longer than any backtick run inside the text, so content cannot break out."""
    longest = run = 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{text}\n{fence}"


def keep_line_breaks(text: str) -> str:
    """A user's text as Markdown with its line breaks kept: Markdown joins single lines into one paragraph,
    so each line outside a code fence ends in a hard break (a trailing backslash)."""
    lines, fenced = text.split("\n"), False
    for i, line in enumerate(lines[:-1]):
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        if not fenced and line.strip() and lines[i + 1].strip() and not line.endswith("\\"):
            lines[i] = line + "\\"
    return "\n".join(lines)


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
            out += [f"### {heading}", "", keep_line_breaks(lead.content), ""]
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
    """The session's prompts (system, developer) and its conversation, as chat messages."""
    out: list[dict[str, Any]] = []
    if session.settings.get("system_prompt"):
        out.append({"role": "system", "content": str(session.settings["system_prompt"])})
    if session.settings.get("instructions"):
        out.append({"role": "developer", "content": str(session.settings["instructions"])})
    kept = [m for m in session.messages
            if not (m.extra.get("failed") or (m.incomplete and m.role == "assistant" and m.recipient))]
    messages = [HMessage(role=m.role, text=m.content, channel=m.channel, recipient=m.recipient,
                         content_type=m.content_type, author=m.author) for m in kept]
    return out + to_openai(messages, call_ids=[m.call_id for m in kept], tool_names=True)


def to_json(session: Session) -> str:
    doc = {"id": session.id, "title": session.title, "model": session.model,
           "messages": to_openai_messages(session)}
    return json.dumps(doc, ensure_ascii=False, indent=2) + "\n"

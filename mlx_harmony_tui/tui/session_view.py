"""Rebuilds the conversation on screen from a saved session (the record, not the events, is the source), so
a reopened session looks as it did live: tool-call lines and their durations, retries, the stopped or cut
marker, and the version number of every message that has other versions (branches)."""

from __future__ import annotations

from typing import Any

from textual.containers import VerticalScroll
from textual.widgets import Static

from mlx_harmony_tui.sessions import branches
from mlx_harmony_tui.sessions.schema import Message, Session
from mlx_harmony_tui.tui.turn_view import FINISH_NOTES
from mlx_harmony_tui.tui.widgets.messages import AssistantMessage, UserMessage
from mlx_harmony_tui.tui.widgets.tool_log import ToolLog


async def clear_tool_log(tools: ToolLog) -> None:
    for entry in list(tools.entries.values()):
        await entry.remove()
    tools.entries.clear()


def _reply_notices(reply: list[Message]) -> tuple[list[tuple[str, bool]], list[tuple[str, bool]]]:
    """The lines the live reply showed: each tool call and retry (above the answer, as they came before
    it), then how it ended if not normally (below it)."""
    steps: list[tuple[str, bool]] = []
    for m in reply:
        if m.role == "assistant" and m.recipient:
            steps.append((f"⚙ calling {m.recipient}", False))
        for r in m.retries:
            detail = r.get("detail") or ""
            steps.append((f"↻ retried ({r.get('reason', '?')}{': ' + detail if detail else ''})", False))
    notes: list[tuple[str, bool]] = []
    finish = next((m.metrics.get("finish_reason") for m in reversed(reply) if m.metrics and
                   m.metrics.get("finish_reason")), None)
    if finish and finish != "stop":
        notes.append((FINISH_NOTES.get(finish, f"finished: {finish}"), False))
    elif any(m.incomplete for m in reply if m.role == "assistant"):
        notes.append(("(partial reply)", False))
    if any(m.extra.get("failed") for m in reply):
        notes.append(("this reply failed and is not shown to the model", True))
    return steps, notes


async def show_session(conv: VerticalScroll, tools: ToolLog, session: Session) -> None:
    """Replace the conversation and the tool pane; widgets are built first and mounted in one go."""
    await conv.remove_children()
    await clear_tool_log(tools)
    points = branches.branch_points(session)
    widgets: list[Any] = []
    reply: list[Message] = []
    start = 0

    def close_reply() -> None:
        nonlocal reply
        parts = [(m.channel or "final", m.content) for m in reply if m.role == "assistant" and not m.recipient]
        if reply:
            steps, notes = _reply_notices(reply)
            widgets.append(AssistantMessage(done=parts, position=start, branch=points.get(start),
                                            steps=steps, notices=notes))
        reply = []

    for k, m in enumerate(session.messages):
        if m.role == "user":
            close_reply()
            widgets.append(UserMessage(m.content, position=k, branch=points.get(k)))
            continue
        if not reply:
            start = k
        if m.role == "assistant" and m.recipient:
            entry = await tools.entry(m.call_id or m.id, m.recipient)
            entry.set_args(m.content)
        elif m.role == "tool":
            entry = await tools.entry(m.call_id or m.id, m.author or "tool")
            duration = float((m.metrics or {}).get("duration_s") or 0.0)
            entry.set_result(m.content, m.extra.get("error"), duration)
        if m.role in ("assistant", "tool"):
            reply.append(m)
    close_reply()
    end = len(session.messages)
    if end in points:  # a message taken back for editing: its old versions are one flip away
        widgets.append(Static(f"‹ {points[end][1]} earlier version(s) here: f5 brings one back ›",
                              classes="partial-note", markup=False))
    if widgets:
        await conv.mount_all(widgets)
    conv.scroll_end(animate=False)

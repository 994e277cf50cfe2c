"""Rebuilds the conversation on screen from a saved session (the record, not the events, is the source)."""

from __future__ import annotations

from typing import Any

from textual.containers import VerticalScroll
from textual.widgets import Static

from mlx_harmony_tui.sessions.schema import Session
from mlx_harmony_tui.tui.widgets.messages import AssistantMessage, UserMessage
from mlx_harmony_tui.tui.widgets.tool_log import ToolLog


async def clear_tool_log(tools: ToolLog) -> None:
    for entry in list(tools.entries.values()):
        await entry.remove()
    tools.entries.clear()


async def show_session(conv: VerticalScroll, tools: ToolLog, session: Session) -> None:
    """Replace the conversation and the tool pane; widgets are built first and mounted in one go."""
    await conv.remove_children()
    await clear_tool_log(tools)
    widgets: list[Any] = []
    reply: list[tuple[str, str]] = []
    partial = False

    def close_reply() -> None:
        nonlocal reply, partial
        if reply:
            widgets.append(AssistantMessage(done=reply))
            if partial:
                widgets.append(Static("(partial reply)", classes="partial-note"))
        reply, partial = [], False

    for m in session.messages:
        if m.role == "user":
            close_reply()
            widgets.append(UserMessage(m.content))
        elif m.role == "assistant" and m.recipient:
            entry = await tools.entry(m.call_id or m.id, m.recipient)
            entry.set_args(m.content)
        elif m.role == "tool":
            entry = await tools.entry(m.call_id or m.id, m.author or "tool")
            entry.set_result(m.content, None, 0.0)
        elif m.role == "assistant":
            reply.append((m.channel or "final", m.content))
            partial = partial or m.incomplete
    close_reply()
    if widgets:
        await conv.mount_all(widgets)
    conv.scroll_end(animate=False)

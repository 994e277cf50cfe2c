"""Notices about the config's MCP servers: how many tools each one brought, or why it is off."""

from __future__ import annotations

from typing import Any


def describe(state: Any) -> tuple[str, str] | None:
    """(message, severity) for a server state worth telling, or None (still starting, or stopped by us)."""
    if state.status == "ready":
        n = len(state.tools)
        return f"MCP server {state.name}: {n} tool{'s' if n != 1 else ''}", "information"
    if state.status == "failed":
        return f"MCP server {state.name} is off: {state.error} (its tools are withdrawn)", "warning"
    return None


def watch(app: Any, backend: Any) -> None:
    """Notify now about servers already up or failed, and later about every change (from the MCP thread)."""
    hub = getattr(backend, "mcp", None)
    if not hub:
        return

    def show(state: Any) -> None:
        told = describe(state)
        if told is not None:
            app.notify(told[0], severity=told[1], timeout=8)

    def changed(state: Any) -> None:
        try:
            app.call_from_thread(show, state)
        except RuntimeError:  # the app has exited
            pass

    hub.on_change = changed
    for state in hub.states():
        show(state)

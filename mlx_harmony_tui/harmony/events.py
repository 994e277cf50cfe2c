"""The events the Harmony parser emits for each model message (harmony/stream.py).

They are part of the one event stream every face consumes; chat/events.py re-exports them with the turn-level
events, so faces import every event from there. They live here because the parser sits below the chat layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Channel = Literal["analysis", "commentary", "final"]


@dataclass(frozen=True)
class Delta:
    """Streamed text of one message. ``recipient`` is set for commentary addressed to a tool."""

    channel: Channel
    text: str
    recipient: str | None = None


@dataclass(frozen=True)
class MessageDone:
    """A complete Harmony message from the model (what goes into the session record)."""

    channel: Channel
    text: str
    recipient: str | None = None
    content_type: str | None = None


@dataclass(frozen=True)
class ToolCallStarted:
    call_id: str
    recipient: str  # e.g. "functions.get_weather", "python", "browser.search"
    channel: Channel = "commentary"


@dataclass(frozen=True)
class ToolCallArgs:
    call_id: str
    delta: str


@dataclass(frozen=True)
class ToolCall:
    call_id: str
    recipient: str
    arguments: str  # raw text the model wrote (JSON for functions, code for python)
    channel: Channel = "commentary"
    content_type: str | None = None


@dataclass(frozen=True)
class Recovery:
    """Malformed model output that the parser repaired; shown so nothing is silently changed."""

    kind: str
    detail: str = ""


StreamEvent = Delta | MessageDone | ToolCallStarted | ToolCallArgs | ToolCall | Recovery

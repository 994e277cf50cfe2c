"""The neutral records passed between the chat layer and the Harmony renderer/parser: messages and the
function tools the model is told about."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["system", "developer", "user", "assistant", "tool"]


@dataclass(frozen=True)
class HMessage:
    """One Harmony message. For tool results: role="tool", author="functions.NAME" (or "python", ...),
    channel = the channel of the call it answers, recipient="assistant"."""

    role: Role
    text: str
    channel: str | None = None
    recipient: str | None = None
    content_type: str | None = None
    author: str | None = None


@dataclass
class FunctionTool:
    """A function the model may call (``functions.NAME``); JSON-schema parameters."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})

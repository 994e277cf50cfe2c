"""The neutral message record passed between the chat layer and the Harmony renderer/parser."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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

"""The one typed event stream every face consumes (TUI, line chat, generate --json, server).

Events are small frozen dataclasses so they can cross threads safely and be batched. ``call_id`` ties the
tool-call events of one call together; ``attempt`` counts retries within a turn (0 = first try).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mlx_harmony_tui.engine.metrics import Metrics, PrefillProgress
from mlx_harmony_tui.harmony.events import (
    Channel,
    Delta,
    MessageDone,
    Recovery,
    ToolCall,
    ToolCallArgs,
    ToolCallStarted,
)

# Re-exported: the parser's message events live in harmony/ (below chat), but faces import every event here.
__all__ = [
    "Channel",
    "Delta",
    "MessageDone",
    "Metrics",
    "PrefillProgress",
    "Recovery",
    "ToolCall",
    "ToolCallArgs",
    "ToolCallStarted",
]

FinishReason = Literal["stop", "length", "cancelled", "loop", "tool_rounds", "error"]


@dataclass(frozen=True)
class TurnStarted:
    turn_id: str
    attempt: int = 0


@dataclass(frozen=True)
class ToolResult:
    call_id: str
    recipient: str
    output: str
    error: str | None = None
    duration_s: float = 0.0


@dataclass(frozen=True)
class ContextTrimmed:
    dropped_messages: int
    prompt_tokens: int


@dataclass(frozen=True)
class Retry:
    """A failed attempt is being retried. Faces show it as a notice, never inside the reply's text."""

    attempt: int
    reason: str  # "parse", "loop", "analysis_only"
    detail: str = ""
    failed_text: str = ""  # what the failed attempt produced, kept for the session record
    change: str = ""  # what this retry changes, e.g. "repetition_penalty 1 -> 1.15, seed 7 -> 8"


@dataclass(frozen=True)
class RetryReport:
    """One retry of a finished turn: why, what it changed, and how that attempt ended ("ok", "failed: loop",
    "length", "cancelled")."""

    attempt: int
    reason: str
    change: str
    outcome: str


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log-probability (settings.logprobs), just before the Delta it produced."""

    channel: str | None
    recipient: str | None
    token: str
    logprob: float
    top: tuple[tuple[str, float, bytes], ...] = ()  # the most likely tokens: text, log-probability, bytes
    raw: bytes = b""  # the token's exact bytes (``token`` shows a split character as U+FFFD)


@dataclass(frozen=True)
class TurnFinished:
    reason: FinishReason
    metrics: Metrics = field(default_factory=Metrics)
    retries: tuple[RetryReport, ...] = ()


@dataclass(frozen=True)
class TurnFailed:
    error: str
    retries: tuple[RetryReport, ...] = ()


Event = (
    TurnStarted
    | Delta
    | MessageDone
    | ToolCallStarted
    | ToolCallArgs
    | ToolCall
    | ToolResult
    | Recovery
    | ContextTrimmed
    | Retry
    | PrefillProgress
    | Metrics
    | TokenLogprob
    | TurnFinished
    | TurnFailed
)


@dataclass(frozen=True)
class ToolConfirmation:
    """The turn waits until the face calls ``TurnHandle.confirm(call_id, allowed)``."""

    call_id: str
    recipient: str
    arguments: str
    note: str = ""  # what the user should know first, e.g. that no OS sandbox will contain the code


Event = Event | ToolConfirmation  # type: ignore[misc]

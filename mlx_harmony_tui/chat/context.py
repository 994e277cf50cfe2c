"""Fit a conversation into the context window by dropping the oldest whole turns.

System and developer messages are rendered from settings, so they are never dropped; the current turn (the
last user message and everything after it) is never dropped either. Whole turns go, so the model never sees
a tool result without its call or an answer without its question.
"""

from __future__ import annotations

from collections.abc import Callable

from mlx_harmony_tui.harmony.messages import HMessage


def turn_starts(messages: list[HMessage]) -> list[int]:
    return [i for i, m in enumerate(messages) if m.role == "user"]


def fit_messages(
    messages: list[HMessage], count: Callable[[list[HMessage]], int], budget: int
) -> tuple[list[HMessage], int, int]:
    """Return (kept messages, number dropped, token count). Drops oldest turns until ``count`` <= budget."""
    n = count(messages)
    if n <= budget:
        return messages, 0, n
    starts = turn_starts(messages)
    if not starts:
        return messages, 0, n
    current = starts[-1]
    # Candidate cut points: the start of each later turn; cutting at starts[k] drops turns before it.
    cuts = [s for s in starts[1:] if s <= current]
    lo_msgs = messages
    for cut in cuts:
        lo_msgs = messages[cut:]
        n = count(lo_msgs)
        if n <= budget:
            return lo_msgs, cut, n
    return lo_msgs, len(messages) - len(lo_msgs), n

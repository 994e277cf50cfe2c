"""Fit a conversation into the context window by dropping the oldest whole turns.

System and developer messages are rendered from settings, so they are never dropped; the current turn (the
last user message and everything after it) is never dropped either. Whole turns go, so the model never sees
a tool result without its call or an answer without its question.

Rendering a long conversation is the expensive part (about a second at 200k tokens), so the cut is not found
by re-rendering once per dropped turn: the whole conversation is rendered once, each turn's share is
estimated from its length in characters, and an exponential search from that estimate checks a few cuts
(usually two renders). ``cancelled`` is asked before every render, so a client that left stops the work.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import accumulate

from mlx_harmony_tui.harmony.messages import HMessage


class FitCancelled(Exception):
    """The turn was cancelled while its context was being fitted."""


def turn_starts(messages: list[HMessage]) -> list[int]:
    return [i for i, m in enumerate(messages) if m.role == "user"]


def _chars(m: HMessage) -> int:
    return len(m.text) + len(m.recipient or "") + len(m.channel or "") + len(m.author or "") + 16


def first_true(pred: Callable[[int], bool], n: int, guess: int) -> int:
    """The smallest i in [0, n) with ``pred(i)`` for a monotone ``pred`` (False ... False True ... True), or
    n if there is none; probes around ``guess`` first, so a good guess costs about two calls."""
    if n == 0:
        return 0
    guess = min(max(guess, 0), n - 1)
    step = 1
    if pred(guess):
        lo, hi = -1, guess
        while hi - step >= 0:
            if not pred(hi - step):
                lo = hi - step
                break
            hi -= step
            step *= 2
    else:
        lo, hi = guess, n
        while lo + step < n:
            if pred(lo + step):
                hi = lo + step
                break
            lo += step
            step *= 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if pred(mid):
            hi = mid
        else:
            lo = mid
    return hi


def fit_messages(
    messages: list[HMessage],
    count: Callable[[list[HMessage]], int],
    budget: int,
    cancelled: Callable[[], bool] | None = None,
) -> tuple[list[HMessage], int, int]:
    """Return (kept messages, number dropped, token count). Drops the fewest oldest turns so that ``count``
    <= budget (all droppable turns when even that is not enough). Raises FitCancelled."""

    def counted(msgs: list[HMessage]) -> int:
        if cancelled is not None and cancelled():
            raise FitCancelled()
        return count(msgs)

    n = counted(messages)
    if n <= budget:
        return messages, 0, n
    starts = turn_starts(messages)
    if not starts:
        return messages, 0, n
    # Candidate cut points: the start of each later turn; cutting at cuts[k] drops the turns before it.
    cuts = [s for s in starts[1:] if s <= starts[-1]]
    if not cuts:
        return messages, 0, n
    sizes: dict[int, int] = {}

    def fits(k: int) -> bool:
        if k not in sizes:
            sizes[k] = counted(messages[cuts[k] :])
        return sizes[k] <= budget

    # The estimate: tokens per character of this conversation, times the characters each cut drops.
    chars = list(accumulate((_chars(m) for m in messages), initial=0))
    per_char = n / max(1, chars[-1])
    guess = next((k for k, cut in enumerate(cuts) if n - chars[cut] * per_char <= budget), len(cuts) - 1)
    k = first_true(fits, len(cuts), guess)
    k = min(k, len(cuts) - 1)
    fits(k)
    return messages[cuts[k] :], cuts[k], sizes[k]

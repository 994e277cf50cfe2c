"""Loop detection: stop a generation that repeats itself instead of burning the token budget.

One detector covers both failure modes seen with small/quantised models:

- identical-token runs (``max_run`` times the same id in a row), and
- repeated spans: the last ``p`` tokens repeated ``min_repeats`` times back to back, for any period
  ``2 <= p <= max_period``, with at least ``min_span`` repeated tokens (so short legitimate patterns such
  as table rows or bullet markers do not trigger it).

A sequence has period ``p`` over its tail exactly when ``t[i] == t[i - p]`` for every position of that
tail, so the detector keeps, per period, the length of the current streak of such matches. Each token
costs O(max_period) integer comparisons, independent of how long the generation already is.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class LoopConfig:
    """Thresholds of the loop detector (defaults are conservative: normal prose never trips them)."""

    max_run: int = 64  # identical tokens in a row
    max_period: int = 128  # longest repeated span looked for, in tokens
    min_repeats: int = 4  # how many back-to-back copies of the span
    min_span: int = 96  # repeated tokens needed beyond the first copy (guards short periods)


class LoopDetector:
    """Feed tokens one by one; ``feed`` returns a reason string once a loop is detected."""

    def __init__(self, config: LoopConfig | None = None) -> None:
        self.config = config or LoopConfig()
        c = self.config
        self._window: deque[int] = deque(maxlen=max(c.max_period, 1))
        self._streak = [0] * (c.max_period + 1)  # _streak[p]: consecutive positions with t[i] == t[i-p]
        self._run = 0
        self._last: int | None = None
        self.reason: str | None = None

    def feed(self, token: int) -> str | None:
        """Returns the loop description if this token completes a loop, else None."""
        c = self.config
        self._run = self._run + 1 if token == self._last else 1
        self._last = token
        if self._run >= c.max_run > 0:
            self.reason = f"token {token} repeated {self._run} times in a row"
            return self.reason
        window = self._window
        n = len(window)
        streak = self._streak
        found: str | None = None
        # window[-p] is the token p positions back (the deque holds the last max_period tokens).
        for p in range(2, min(c.max_period, n) + 1):
            if window[n - p] == token:
                s = streak[p] + 1
                streak[p] = s
                if found is None and s >= max((c.min_repeats - 1) * p, c.min_span):
                    found = f"a span of {p} tokens repeated {1 + s // p} times"
            else:
                streak[p] = 0
        window.append(token)
        if found:
            self.reason = found
        return found

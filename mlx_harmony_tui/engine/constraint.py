"""The engine's hooks into each decode step: a token constraint (a logits mask) and log-probabilities.

A constraint sees every generated token and says which tokens may come next; the sampler sets every other
logit to -inf before it draws (engine/sampling.py). The engine knows nothing about grammars or Harmony: the
structured-output constraint (harmony/constraint.py) implements this protocol with llguidance, and any later
constraint can too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np


class TokenConstraint(Protocol):
    def allowed(self) -> np.ndarray | None:
        """The tokens allowed next as int32 words (bit ``i % 32`` of word ``i // 32`` = token ``i``), or None
        when any token may come."""

    def accept(self, token: int) -> None:
        """The token that was generated (always one that ``allowed`` allowed)."""


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token's log-probability and the most likely alternatives, from the logits the sampler
    drew from (after repetition penalty, logit bias and the constraint's mask; before temperature)."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


LogprobCallback = Callable[[TokenLogprob], None]

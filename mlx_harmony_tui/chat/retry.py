"""When a turn retries and what each retry changes.

Only failures a retry can fix are retried: malformed output (an unrecoverable parse, or the model ending the
turn with no answer) and a loop. A token limit is never retried: it is the user's (or the context's) limit
and the turn ends with what it has (finish reason ``length``). Each retry changes something, since the same
prompt with the same settings fails the same way: a loop gets a higher repetition penalty and another seed;
malformed output gets a fresh sample (another seed, and a non-zero temperature where decoding was greedy,
because greedy decoding would repeat the same tokens).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from mlx_harmony_tui.engine.sampling import SamplingParams
from mlx_harmony_tui.harmony.stream import HarmonyStream

LOOP_PENALTY_STEP = 0.15  # added to the repetition penalty per loop retry (1.0 -> 1.15 -> 1.3)
RESAMPLE_TEMPERATURE = 0.7  # a greedy turn's retry samples at this temperature


@dataclass(frozen=True)
class Attempt:
    """The sampling settings of one attempt and, for a retry, what changed from the user's settings."""

    sampling: SamplingParams
    seed: int
    change: str = ""


def first_attempt(sampling: SamplingParams, seed: int | None) -> Attempt:
    """The user's settings; a seed is drawn here when none was set, so a retry can say what it changed."""
    return Attempt(sampling, seed if seed is not None else int.from_bytes(os.urandom(4), "little") >> 1)


def next_attempt(first: Attempt, reason: str, attempt: int) -> Attempt:
    """The settings of retry number ``attempt`` (1-based) after a failure of kind ``reason``."""
    base = first.sampling
    seed = first.seed + attempt
    changes = []
    sampling = base
    if reason == "loop":
        penalty = round(max(base.repetition_penalty, 1.0) + LOOP_PENALTY_STEP * attempt, 3)
        sampling = replace(base, repetition_penalty=penalty)
        changes.append(f"repetition_penalty {base.repetition_penalty:g} -> {penalty:g}")
    elif base.temperature == 0:
        sampling = replace(base, temperature=RESAMPLE_TEMPERATURE)
        changes.append(f"temperature 0 -> {RESAMPLE_TEMPERATURE:g} (greedy decoding would repeat itself)")
    changes.append(f"seed {first.seed} -> {seed}")
    return Attempt(sampling, seed, ", ".join(changes))


def failure_reason(stream: HarmonyStream, finish: str) -> tuple[str, str] | None:
    """Why this attempt should be retried, or None when it stands (an answer, a tool call, a cancel, or a
    token limit: the partial reply is the result)."""
    if finish in ("cancelled", "length"):
        return None
    if finish == "loop":  # a looping answer is garbage even if it reached the final channel
        return "loop", "the model repeated itself"
    if stream.tool_call is not None:
        return None
    if any(m.channel == "final" and m.text.strip() for m in stream.messages):
        return None
    if stream.errors:
        return "parse", "; ".join(stream.errors)
    return "analysis_only", "the model stopped without a final answer"

"""Loop detector: fires on repeating streams, never on ordinary text-like streams."""

from __future__ import annotations

import random

from mlx_harmony_tui.engine.repetition import LoopConfig, LoopDetector


def _first_fire(tokens: list[int], config: LoopConfig | None = None) -> tuple[int, str] | None:
    d = LoopDetector(config)
    for i, t in enumerate(tokens):
        r = d.feed(t)
        if r:
            return i, r
    return None


def test_identical_run_fires() -> None:
    hit = _first_fire([1, 2, 3] + [9] * 100, LoopConfig(max_run=20))
    assert hit is not None and hit[0] == 3 + 19 and "repeated 20 times" in hit[1]


def test_repeated_span_fires_with_reason() -> None:
    span = list(range(100, 137))  # 37 tokens
    stream = list(range(5000, 5050)) + span * 10
    hit = _first_fire(stream, LoopConfig(min_repeats=4, min_span=96))
    assert hit is not None
    i, reason = hit
    assert "span of 37 tokens" in reason
    # fires once the span is seen 4 times (3 repeats after the first copy), not earlier
    assert i == 50 + 4 * 37 - 1


def test_short_period_needs_min_span() -> None:
    stream = [1, 2] * 20  # period 2, 40 tokens: a legitimate short pattern
    assert _first_fire(stream, LoopConfig(min_span=96)) is None
    assert _first_fire([1, 2] * 100, LoopConfig(min_span=96)) is not None


def test_normal_stream_does_not_fire() -> None:
    rng = random.Random(0)
    words = list(range(1000, 1400))
    # Zipf-like "text" with common tokens repeating often, but no repeated long spans.
    weights = [1 / (r + 1) for r in range(len(words))]
    stream = rng.choices(words, weights=weights, k=5000)
    assert _first_fire(stream) is None


def test_long_period_beyond_max_is_ignored() -> None:
    span = list(range(300))
    assert _first_fire(span * 5, LoopConfig(max_period=128)) is None

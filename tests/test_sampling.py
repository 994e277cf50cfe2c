"""The on-device sampler: greedy, top_k/top_p/min_p, repetition penalty, logit bias, seeding."""

from __future__ import annotations

import mlx.core as mx
import pytest

from mlx_harmony_tui.engine.sampling import FIRST_SPECIAL_ID, Sampler, SamplingParams

V = 1000


@pytest.fixture
def logits() -> mx.array:
    return mx.random.normal((1, V), key=mx.random.key(7)) * 3


def _argmax(x: mx.array) -> int:
    return int(mx.argmax(x).item())


def test_defaults_follow_model_card() -> None:
    p = SamplingParams()
    assert (p.temperature, p.top_p, p.top_k, p.min_p, p.repetition_penalty) == (1.0, 1.0, 0, 0.0, 1.0)


def test_temperature_zero_is_greedy(logits: mx.array) -> None:
    s = Sampler(SamplingParams(temperature=0), V)
    assert [int(s(logits).item()) for _ in range(3)] == [_argmax(logits)] * 3


def test_top_k_one_equals_greedy(logits: mx.array) -> None:
    s = Sampler(SamplingParams(temperature=1.0, top_k=1), V, seed=3)
    assert {int(s(logits).item()) for _ in range(20)} == {_argmax(logits)}


def test_top_k_restricts_to_k_best(logits: mx.array) -> None:
    best = set(mx.argsort(-logits[0])[:5].tolist())
    s = Sampler(SamplingParams(temperature=5.0, top_k=5), V, seed=0)
    seen = {int(s(logits).item()) for _ in range(60)}
    assert seen <= best and len(seen) > 1


def test_top_p_keeps_the_nucleus() -> None:
    # probabilities 0.5, 0.3, 0.2: top_p=0.6 keeps the first two only
    lg = mx.log(mx.array([[0.5, 0.3, 0.2]]))
    s = Sampler(SamplingParams(top_p=0.6), 3, seed=1)
    seen = {int(s(lg).item()) for _ in range(80)}
    assert seen == {0, 1}


def test_min_p_drops_unlikely_tokens() -> None:
    lg = mx.log(mx.array([[0.6, 0.35, 0.05]]))
    s = Sampler(SamplingParams(min_p=0.2), 3, seed=2)
    seen = {int(s(lg).item()) for _ in range(80)}
    assert seen == {0, 1}


def test_logit_bias_forces_and_bans(logits: mx.array) -> None:
    forced = (_argmax(logits) + 17) % V
    s = Sampler(SamplingParams(temperature=1.0, logit_bias={forced: 100.0}), V, seed=0)
    assert {int(s(logits).item()) for _ in range(10)} == {forced}
    banned = _argmax(logits)
    s = Sampler(SamplingParams(temperature=0, logit_bias={banned: -100.0}), V)
    assert int(s(logits).item()) != banned


def test_repetition_penalty_over_window(logits: mx.array) -> None:
    top = _argmax(logits)
    s = Sampler(SamplingParams(temperature=0, repetition_penalty=1e6, repetition_context=4), V, history=[top])
    assert int(s(logits).item()) != top
    # outside the window the token is allowed again
    s = Sampler(SamplingParams(temperature=0, repetition_penalty=1e6, repetition_context=2), V,
                history=[top, 1, 2])
    assert int(s(logits).item()) == top


def test_repetition_penalty_updates_with_generated_tokens() -> None:
    lg = mx.array([[5.0, 4.0, 3.0, -1.0]])
    s = Sampler(SamplingParams(temperature=0, repetition_penalty=100.0, repetition_context=8), 4)
    assert [int(s(lg).item()) for _ in range(3)] == [0, 1, 2]


def test_special_tokens_are_never_penalised() -> None:
    vocab = FIRST_SPECIAL_ID + 10
    lg = mx.zeros((1, vocab)).at[0, FIRST_SPECIAL_ID + 4].add(5.0)
    s = Sampler(SamplingParams(temperature=0, repetition_penalty=1e6), vocab, history=[FIRST_SPECIAL_ID + 4])
    assert int(s(lg).item()) == FIRST_SPECIAL_ID + 4


def test_seed_reproduces_and_differs(logits: mx.array) -> None:
    def run(seed: int) -> list[int]:
        s = Sampler(SamplingParams(temperature=2.0), V, seed=seed)
        return [int(s(logits).item()) for _ in range(12)]

    assert run(5) == run(5)
    assert run(5) != run(6)


def test_sampling_distribution_matches_softmax() -> None:
    lg = mx.log(mx.array([[0.7, 0.2, 0.1]]))
    s = Sampler(SamplingParams(temperature=1.0), 3, seed=11)
    n = 600
    counts = [0, 0, 0]
    for _ in range(n):
        counts[int(s(lg).item())] += 1
    assert abs(counts[0] / n - 0.7) < 0.07 and abs(counts[2] / n - 0.1) < 0.05

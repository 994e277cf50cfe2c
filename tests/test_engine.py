"""Generator on the real tiny model: prefix reuse exactness, cancel, stop, sampling, loops, cache files."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from mlx_harmony_tui.engine.cache import PromptCacheError
from mlx_harmony_tui.engine.generator import Engine, GenerationOptions, GenerationResult
from mlx_harmony_tui.engine.metrics import Metrics, PrefillProgress
from mlx_harmony_tui.engine.repetition import LoopConfig
from mlx_harmony_tui.engine.sampling import SamplingParams
from mlx_harmony_tui.model import load_model, write_tiny_checkpoint

WINDOW = 8  # the tiny model's sliding window: prompts below are longer, so the sliding layers wrap


@pytest.fixture(scope="session")
def tiny(tiny_model_dir: Path):
    """(model, config) of the shared tiny checkpoint; tests build fresh engines on it."""
    return load_model(tiny_model_dir)


@pytest.fixture
def engine(tiny) -> Engine:
    model, config = tiny
    return Engine(model, config, model_id="tiny")


def greedy(max_tokens: int = 12, **kw) -> GenerationOptions:
    return GenerationOptions(SamplingParams(temperature=0), max_tokens=max_tokens, loop=None, **kw)


def run(engine: Engine, prompt: list[int], options: GenerationOptions, **kw) -> tuple[list[int], GenerationResult]:
    out = list(engine.generate(prompt, options, **kw))
    assert engine.last_result is not None
    return out, engine.last_result


PROMPT = [1000 + 37 * i % 5000 for i in range(30)]


def fresh(tiny) -> Engine:
    return Engine(*tiny)


def test_greedy_is_deterministic_and_fills_result(engine: Engine, tiny) -> None:
    a, res = run(engine, PROMPT, greedy())
    b, _ = run(fresh(tiny), PROMPT, greedy())
    assert a == b and len(a) == 12 and res.tokens == a
    assert res.finish_reason == "length"
    m = res.metrics
    assert m.final and m.prompt_tokens == 30 and m.prefilled_tokens == 30 and m.reused_tokens == 0
    assert m.generated_tokens == 12 and m.ttft_s and m.decode_tps and m.prefill_tps
    assert m.mlx_active_bytes > 0 and m.rss_bytes > 0


def test_next_turn_prefills_only_new_tokens_and_matches_fresh(engine: Engine, tiny) -> None:
    a, _ = run(engine, PROMPT, greedy())
    turn2 = PROMPT + a + [4242, 4343, 4444]
    assert engine.count_cached(turn2) == len(PROMPT) + len(a) - 1  # the last generated token was never fed
    b, res = run(engine, turn2, greedy())
    assert res.metrics.reused_tokens == len(PROMPT) + len(a) - 1
    assert res.metrics.prefilled_tokens == 4
    assert b == run(fresh(tiny), turn2, greedy())[0]


def test_trim_back_into_wrapped_window_is_exact(engine: Engine, tiny) -> None:
    run(engine, PROMPT, greedy(max_tokens=20))
    # Diverge at position 17: the cache holds ~49 positions, trimmed back well inside the wrapped window.
    other = PROMPT[:17] + [777, 888, 999, 1111, 2222]
    assert engine.count_cached(other) == 17
    b, res = run(engine, other, greedy())
    assert res.metrics.reused_tokens == 17 and res.metrics.prefilled_tokens == 5
    assert b == run(fresh(tiny), other, greedy())[0]


def test_identical_prompt_recomputes_last_token(engine: Engine) -> None:
    a, _ = run(engine, PROMPT, greedy())
    b, res = run(engine, PROMPT, greedy())
    assert a == b
    assert res.metrics.reused_tokens == len(PROMPT) - 1 and res.metrics.prefilled_tokens == 1


def test_chunked_prefill_matches_and_reports_progress(engine: Engine, tiny) -> None:
    seen: list[Metrics | PrefillProgress] = []
    a, _ = run(engine, PROMPT, greedy(prefill_step=7), on_progress=seen.append)
    assert a == run(fresh(tiny), PROMPT, greedy(prefill_step=512))[0]
    progress = [p for p in seen if isinstance(p, PrefillProgress)]
    assert [p.done for p in progress][:4] == [7, 14, 21, 28] and progress[-1] == PrefillProgress(30, 30)
    assert isinstance(seen[-1], Metrics) and seen[-1].final


def test_stop_token_is_yielded_last_and_ends(engine: Engine, tiny) -> None:
    a, _ = run(fresh(tiny), PROMPT, greedy())
    stop = a[4]
    first = a.index(stop)
    b, res = run(engine, PROMPT, greedy(stop_ids=frozenset({stop})))
    assert b == a[: first + 1] and res.finish_reason == "stop"
    # The Harmony stop tokens are the default
    forced = GenerationOptions(SamplingParams(temperature=1.0, logit_bias={200012: 100.0}), loop=None)
    c, res = run(engine, PROMPT, forced)
    assert c == [200012] and res.finish_reason == "stop"


def test_cancel_stops_within_one_token_and_cache_stays_exact(engine: Engine, tiny) -> None:
    cancel = threading.Event()
    got: list[int] = []
    for tok in engine.generate(PROMPT, greedy(max_tokens=50), cancel=cancel):
        got.append(tok)
        if len(got) == 3:
            cancel.set()
    res = engine.last_result
    assert res is not None and res.finish_reason == "cancelled" and got == res.tokens and len(got) == 3
    pc = engine.prompt_cache
    assert pc.tokens == PROMPT + got and all(c.offset == len(pc.tokens) for c in pc.caches)
    # Continuing from the cancelled state is exact.
    nxt = PROMPT + got + [5555]
    assert run(engine, nxt, greedy())[0] == run(fresh(tiny), nxt, greedy())[0]


def test_cancel_from_another_thread(engine: Engine) -> None:
    cancel = threading.Event()
    got: list[int] = []

    def worker() -> None:
        for tok in engine.generate(PROMPT, greedy(max_tokens=100_000), cancel=cancel):
            got.append(tok)
            if len(got) == 5:
                cancel.set()

    t = threading.Thread(target=worker)
    t.start()
    t.join(60)
    assert not t.is_alive() and len(got) == 5
    assert engine.last_result is not None and engine.last_result.finish_reason == "cancelled"


def test_closing_the_iterator_counts_as_cancel(engine: Engine, tiny) -> None:
    it = engine.generate(PROMPT, greedy(max_tokens=50))
    got = [next(it), next(it)]
    it.close()
    assert engine.last_result is not None and engine.last_result.finish_reason == "cancelled"
    assert engine.prompt_cache.tokens == PROMPT + got
    nxt = PROMPT + got + [6]
    assert run(engine, nxt, greedy())[0] == run(fresh(tiny), nxt, greedy())[0]


def test_top_k_one_equals_greedy(engine: Engine, tiny) -> None:
    a, _ = run(fresh(tiny), PROMPT, greedy())
    opts = GenerationOptions(SamplingParams(temperature=1.0, top_k=1), max_tokens=12, seed=3, loop=None)
    assert run(engine, PROMPT, opts)[0] == a


def test_seed_reproduces(engine: Engine, tiny) -> None:
    opts = GenerationOptions(SamplingParams(temperature=1.0), max_tokens=10, seed=42, loop=None)
    a, _ = run(engine, PROMPT, opts)
    assert run(fresh(tiny), PROMPT, opts)[0] == a


def test_logit_bias_forces_a_token(engine: Engine) -> None:
    opts = GenerationOptions(SamplingParams(temperature=1.0, logit_bias={31337: 100.0}), max_tokens=5, loop=None)
    assert run(engine, PROMPT, opts)[0] == [31337] * 5


def test_loop_detector_fires_on_repetition_not_on_sampling(engine: Engine) -> None:
    opts = GenerationOptions(SamplingParams(logit_bias={31337: 100.0}), max_tokens=100, loop=LoopConfig(max_run=10))
    toks, res = run(engine, PROMPT, opts)
    assert res.finish_reason == "loop" and len(toks) == 10 and "repeated 10 times" in res.detail
    normal = GenerationOptions(SamplingParams(temperature=1.0), max_tokens=150, seed=1)
    _, res = run(engine, PROMPT, normal)
    assert res.finish_reason == "length"


def test_live_metrics_callback(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlx_harmony_tui.engine import metrics

    monkeypatch.setattr(metrics.MetricsTracker, "LIVE_INTERVAL_S", 0.0)
    seen: list[Metrics | PrefillProgress] = []
    run(engine, PROMPT, greedy(max_tokens=6), on_progress=seen.append)
    live = [m for m in seen if isinstance(m, Metrics) and not m.final]
    assert live and [m.generated_tokens for m in live] == sorted(m.generated_tokens for m in live)
    assert sum(1 for m in seen if isinstance(m, Metrics) and m.final) == 1


def test_prompt_cache_save_load_round_trip(engine: Engine, tiny, tmp_path: Path) -> None:
    a, _ = run(engine, PROMPT, greedy())
    path = tmp_path / "session.cache.safetensors"
    engine.save_cache(str(path))
    other = fresh(tiny)
    assert other.load_cache(str(path)) is True
    assert other.prompt_cache.tokens == engine.prompt_cache.tokens
    turn2 = PROMPT + a + [1234]
    assert other.count_cached(turn2) == len(PROMPT) + len(a) - 1
    b, res = run(other, turn2, greedy())
    assert res.metrics.prefilled_tokens == 2
    assert b == run(fresh(tiny), turn2, greedy())[0]
    assert other.load_cache(str(tmp_path / "missing.safetensors")) is False


def test_prompt_cache_refuses_another_model(engine: Engine, tmp_path: Path) -> None:
    run(engine, PROMPT, greedy(max_tokens=3))
    path = tmp_path / "c.safetensors"
    engine.save_cache(str(path))
    model2, config2 = load_model(write_tiny_checkpoint(tmp_path / "other", layout="float", seed=1))
    with pytest.raises(PromptCacheError, match="another model"):
        Engine(model2, config2).load_cache(str(path))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(PromptCacheError):
        engine.load_cache(str(bad))

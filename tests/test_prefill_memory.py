"""A long prefill on the CPU holds little beyond the weights and the KV cache (issue 23: "peak during a
prefill <= weights + KV + 10%"): the blocked attention's scores (model/gpt_oss.py ``_attend``) stay a few
MiB however many keys there are."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import mlx.core as mx
import pytest
from mlx.utils import tree_flatten

from mlx_harmony_tui.engine.generator import Engine, GenerationOptions
from mlx_harmony_tui.engine.sampling import SamplingParams
from mlx_harmony_tui.model import gpt_oss, load_model
from mlx_harmony_tui.model.kv_quant import QuantizedKVCache

pytestmark = pytest.mark.skipif(not gpt_oss._cpu_backend(), reason="the CPU's attention path")


def peak_above_active(fn: Callable[[], mx.array | None]) -> tuple[int, mx.array | None]:
    """(MLX's peak bytes while ``fn`` runs, above what was active before it; its result, evaluated)."""
    mx.synchronize()
    base = mx.get_active_memory()
    mx.reset_peak_memory()
    out = fn()
    if out is not None:
        mx.eval(out)
    return mx.get_peak_memory() - base, out


def test_a_chunks_attention_over_many_keys_holds_few_scores_at_once() -> None:
    """512 queries over 4,096 keys (the tiny model's heads): 32 MiB of float32 scores in all, which were all
    alive at once (+45 MiB); in chained blocks of CPU_SCORES_BUDGET only a few blocks' worth are."""
    mx.random.seed(0)
    L, T = 512, 4096
    q = mx.random.normal((1, 4, L, 16))
    k, v = mx.random.normal((1, 2, T, 16)), mx.random.normal((1, 2, T, 16))
    sinks = mx.random.normal((4,))
    mx.eval(q, k, v, sinks)
    ref = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.25, mask="causal", sinks=sinks)
    peak, out = peak_above_active(lambda: gpt_oss._attend(q, k, v, 0.25, "causal", sinks, bounded=True))
    assert peak <= 8 * 2**20, f"{peak / 2**20:.1f} MiB"  # blocks of 1 MiB (CPU_SCORES_BUDGET): ~6 MiB
    assert out is not None and mx.abs(out - ref).max().item() < 5e-5


def test_a_long_prefill_peaks_within_weights_kv_and_ten_percent(tiny_model_dir: Path) -> None:
    """2,048 prompt tokens through the engine (chunks of 512): MLX's peak stays under weights + KV + 10%
    (it was weights + 35 MiB for 99 MiB of weights)."""
    model, config = load_model(tiny_model_dir)
    engine = Engine(model, config)
    opts = GenerationOptions(SamplingParams(temperature=0), max_tokens=1, stop_ids=frozenset(), loop=None)
    list(engine.generate(list(range(1000, 1064)), opts))  # compile the decoder, warm the allocator
    engine.prompt_cache.reset()
    weights = sum(a.nbytes for _, a in tree_flatten(model.parameters()))
    prompt = [1000 + (37 * i) % 90_000 for i in range(2048)]
    peak, _ = peak_above_active(lambda: list(engine.generate(prompt, opts)) and None)
    assert engine.last_result is not None
    kv = engine.last_result.metrics.kv_bytes
    assert peak <= kv + 0.1 * (weights + kv), (
        f"{peak / 2**20:.1f} MiB above the weights, KV {kv / 2**20:.1f} MiB"
    )


def test_a_quantized_cache_allocates_what_the_prefill_reserved() -> None:
    """A quantized full layer honours ``reserve`` (set by the engine before a chunked prefill) as the float
    one does: one allocation, not a copy of the whole packed cache at every chunk."""
    c = QuantizedKVCache(8, 64)
    c.reserve = 1000
    capacities = []
    for _ in range(4):
        c.update(mx.random.normal((1, 2, 300, 64)), mx.random.normal((1, 2, 300, 64)))
        assert c.qkeys is not None
        capacities.append(c.qkeys[0].shape[2])
    assert capacities == [1000, 1000, 1000, 1280]  # past the reservation: 1,200 rounded up to 256 again


def test_a_long_prefill_reserves_room_for_the_first_generated_tokens(tiny_model_dir: Path) -> None:
    """The reservation covers the first generated tokens too: a prompt that filled its buffers exactly grew
    them at the first generated token, copying the whole cache beside the new one (the tiny model at 32,768
    tokens: peak 122.4 -> 125.4 MiB)."""
    model, config = load_model(tiny_model_dir)
    engine = Engine(model, config, optimize=False)
    opts = GenerationOptions(
        SamplingParams(temperature=0), max_tokens=4, stop_ids=frozenset(), loop=None, prefill_step=256
    )
    list(engine.generate([1000 + (37 * i) % 90_000 for i in range(1024)], opts))
    full = [c for c in engine.prompt_cache.caches if type(c).__name__ == "KVCache"]
    assert full and all(c.keys.shape[2] == 1024 + 4 for c in full)  # not grown to 1,280 after the prompt

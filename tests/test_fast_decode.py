"""The optimized model (fused QKV, compiled one-token step) must give the eager path's results."""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from mlx_harmony_tui.engine.generator import Engine, GenerationOptions
from mlx_harmony_tui.engine.sampling import SamplingParams
from mlx_harmony_tui.model import load_model


def _greedy(path, optimize: bool, prompt: list[int], n: int) -> tuple[list[int], list[int]]:
    model, config = load_model(path)
    engine = Engine(model, config, optimize=optimize)
    assert (model.decoder is not None) == optimize
    opts = GenerationOptions(sampling=SamplingParams(temperature=0.0), max_tokens=n, stop_ids=frozenset(), loop=None)
    first = list(engine.generate(prompt, opts))
    # A second turn that reuses part of the first (cache trimmed back inside the sliding window).
    second = list(engine.generate(prompt + first[: n // 2] + [17, 18, 19], opts))
    return first, second


def test_greedy_tokens_identical_to_eager(tiny_model_dir):
    prompt = list(range(2000, 2040))  # longer than the tiny model's sliding window
    eager = _greedy(tiny_model_dir, False, prompt, 48)
    fast = _greedy(tiny_model_dir, True, prompt, 48)
    assert fast == eager


def test_decode_logits_within_tolerance(tiny_model_dir):
    model, _ = load_model(tiny_model_dir)
    tokens = mx.array([list(range(3000, 3030))], dtype=mx.int32)
    reference = model(tokens)  # eager, whole sequence
    model.optimize()
    cache = model.make_cache()
    model(tokens[:, :20], cache=cache)
    steps = [model(tokens[:, i : i + 1], cache=cache) for i in range(20, 30)]
    got = mx.concatenate(steps, axis=1)
    np.testing.assert_allclose(np.array(got), np.array(reference[:, 20:30]), rtol=1e-4, atol=1e-4)


def test_per_expert_prefill_matches_gather(tiny_model_dir, tmp_path, monkeypatch):
    """The CUDA prefill MoE path (one matmul per expert) gives the gather path's logits, float and MXFP4."""
    from mlx_harmony_tui.model import write_tiny_checkpoint
    from mlx_harmony_tui.model.gpt_oss import Experts

    for path in (tiny_model_dir, write_tiny_checkpoint(tmp_path / "q", layout="mlx", seed=3)):
        model, _ = load_model(path)
        tokens = mx.array([list(range(1000, 1200))], dtype=mx.int32)  # 200 tokens x top-2 >= 256 rows
        monkeypatch.setattr(Experts, "per_expert_prefill", False)
        gathered = model(tokens)
        monkeypatch.setattr(Experts, "per_expert_prefill", True)
        per_expert = model(tokens)
        np.testing.assert_allclose(np.array(per_expert), np.array(gathered), rtol=1e-4, atol=1e-4)

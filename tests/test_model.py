"""The MLX model on its own: cached decode equals the full forward, across the sliding window and after trim."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from mlx_harmony_tui.model import GptOss, KVCache, ModelConfig, load_model, write_tiny_checkpoint

WINDOW = 8


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[GptOss, ModelConfig]:
    folder = write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "m", layout="hf", seed=7)
    return load_model(folder)


SMALL = 4096  # vocabulary for tests that write their own checkpoint (the real one is 100 MB a write)


def _ids(n: int, seed: int = 0, vocab: int = 201088) -> list[int]:
    return [int(t) for t in np.random.default_rng(seed).integers(0, vocab, n)]


def _full(model: GptOss, ids: list[int]) -> np.ndarray:
    return np.array(model(mx.array([ids])))[0]


def _assert_close(a: np.ndarray, b: np.ndarray) -> None:
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-4)


def test_token_by_token_decode_matches_full_forward(tiny: tuple[GptOss, ModelConfig]) -> None:
    model, config = tiny
    assert config.sliding_window == WINDOW
    ids = _ids(3 * WINDOW + 3)
    full = _full(model, ids)
    cache = model.make_cache()
    assert len(cache) == config.num_hidden_layers and all(isinstance(c, KVCache) for c in cache)
    steps = [np.array(model(mx.array([[t]]), cache=cache))[0, 0] for t in ids]
    _assert_close(np.stack(steps), full)
    assert all(c.offset == len(ids) for c in cache)


@pytest.mark.parametrize("chunks", [[5, 7, 1, 14], [9, 9, 9], [1, 26]])
def test_chunked_prefill_matches_full_forward(tiny: tuple[GptOss, ModelConfig], chunks: list[int]) -> None:
    """Chunks that start inside, at and past the window exercise every mask shape."""
    model, _ = tiny
    ids = _ids(sum(chunks), seed=1)
    full = _full(model, ids)
    cache = model.make_cache()
    outs, pos = [], 0
    for n in chunks:
        outs.append(np.array(model(mx.array([ids[pos : pos + n]]), cache=cache))[0])
        pos += n
    _assert_close(np.concatenate(outs), full)


def test_trim_back_inside_a_wrapped_window_is_exact(tiny: tuple[GptOss, ModelConfig]) -> None:
    """The prefix-reuse case: cache 30 tokens, trim 11 (back past the window), continue differently."""
    model, _ = tiny
    first = _ids(30, seed=2)
    cache = model.make_cache()
    mx.eval(model(mx.array([first]), cache=cache))
    assert all(c.trim(11) == 11 for c in cache)
    assert all(c.offset == 19 for c in cache)
    tail = _ids(6, seed=3)
    out = np.array(model(mx.array([tail[:4]]), cache=cache))[0]
    out = np.concatenate([out, *(np.array(model(mx.array([[t]]), cache=cache))[0] for t in tail[4:])])
    _assert_close(out, _full(model, first[:19] + tail)[19:])


def test_last_only_is_the_last_row(tiny: tuple[GptOss, ModelConfig]) -> None:
    model, _ = tiny
    ids = _ids(12, seed=4)
    last = np.array(model(mx.array([ids]), last_only=True))
    assert last.shape == (1, 1, 201088)
    _assert_close(last[0, 0], _full(model, ids)[-1])


def test_sliding_layers_forget_beyond_their_window(tmp_path: Path) -> None:
    """With only sliding layers, a token further back than the receptive field cannot change the logits."""
    n_layers = 2
    folder = write_tiny_checkpoint(
        tmp_path / "s", num_hidden_layers=n_layers, layer_types=["sliding_attention"] * n_layers, vocab_size=SMALL
    )
    model, _ = load_model(folder)
    ids = _ids(30, seed=5, vocab=SMALL)
    changed = [ids[0] + 1, *ids[1:]]
    a, b = _full(model, ids), _full(model, changed)
    reach = n_layers * (WINDOW - 1)  # position 0 influences positions up to this one
    assert np.abs(a[reach] - b[reach]).max() > 1e-3
    np.testing.assert_array_equal(a[reach + 1 :], b[reach + 1 :])


def test_full_layers_see_everything(tmp_path: Path) -> None:
    folder = write_tiny_checkpoint(tmp_path / "f", num_hidden_layers=2, layer_types=["full_attention"] * 2, vocab_size=SMALL)
    model, _ = load_model(folder)
    ids = _ids(30, seed=5, vocab=SMALL)
    a, b = _full(model, ids), _full(model, [ids[0] + 1, *ids[1:]])
    assert np.abs(a[-1] - b[-1]).max() > 1e-4


def test_bfloat16_override(tmp_path: Path) -> None:
    folder = write_tiny_checkpoint(tmp_path / "m", layout="float", seed=7, vocab_size=SMALL)
    model32, _ = load_model(folder)
    model16, _ = load_model(folder, dtype="bfloat16")
    assert model16.model.embed_tokens.weight.dtype == mx.bfloat16
    ids = _ids(12, seed=6, vocab=SMALL)
    out16 = model16(mx.array([ids]))
    assert out16.dtype == mx.bfloat16
    a, b = np.array(out16.astype(mx.float32))[0], _full(model32, ids)
    rel = np.linalg.norm(a - b, axis=-1) / np.linalg.norm(b, axis=-1)
    assert np.median(rel) < 0.1
    # The cache works in bfloat16 too.
    cache = model16.make_cache()
    model16(mx.array([ids[:-1]]), cache=cache)
    step = model16(mx.array([ids[-1:]]), cache=cache)
    assert cache[0].keys is not None and cache[0].keys.dtype == mx.bfloat16
    np.testing.assert_allclose(np.array(step.astype(mx.float32))[0, 0], a[-1], atol=0.25)


def test_kv_cache_growth_state_and_trim() -> None:
    cache = KVCache()
    assert cache.offset == 0 and cache.nbytes == 0 and cache.state == (None, None)
    k = mx.random.normal((1, 2, 300, 4))
    v = mx.random.normal((1, 2, 300, 4))
    keys, values = cache.update_and_fetch(k[:, :, :200], v[:, :, :200])
    assert keys.shape == (1, 2, 200, 4) and cache.nbytes == 2 * (1 * 2 * 256 * 4 * 4)
    keys, values = cache.update_and_fetch(k[:, :, 200:], v[:, :, 200:])  # grows past one step
    assert keys.shape == (1, 2, 300, 4) and cache.keys is not None and cache.keys.shape[2] == 512
    np.testing.assert_array_equal(np.array(keys), np.array(k))
    assert cache.trim(50) == 50 and cache.offset == 250
    assert cache.trim(1000) == 250 and cache.offset == 0
    cache.update_and_fetch(k[:, :, :10], v[:, :, :10])
    sk, sv = cache.state
    assert sk is not None and sv is not None
    restored = KVCache.from_state(sk, sv)
    assert restored.offset == 10
    keys, values = restored.update_and_fetch(k[:, :, 10:12], v[:, :, 10:12])
    np.testing.assert_array_equal(np.array(keys), np.array(k[:, :, :12]))
    np.testing.assert_array_equal(np.array(values), np.array(v[:, :, :12]))


def test_loading_reports_progress(tmp_path: Path) -> None:
    folder = write_tiny_checkpoint(tmp_path / "m", layout="mlx", vocab_size=SMALL)
    calls: list[tuple[float, str]] = []
    load_model(folder, progress=lambda f, msg: calls.append((f, msg)))
    fractions = [f for f, _ in calls]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(calls) >= 4
    assert all(isinstance(m, str) and m for _, m in calls)


GPT_OSS_20B_CONFIG = {
    "architectures": ["GptOssForCausalLM"], "attention_bias": True, "attention_dropout": 0.0, "eos_token_id": 200002,
    "experts_per_token": 4, "head_dim": 64, "hidden_act": "silu", "hidden_size": 2880, "initial_context_length": 4096,
    "initializer_range": 0.02, "intermediate_size": 2880,
    "layer_types": ["sliding_attention", "full_attention"] * 12, "max_position_embeddings": 131072,
    "model_type": "gpt_oss", "num_attention_heads": 64, "num_experts_per_tok": 4, "num_hidden_layers": 24,
    "num_key_value_heads": 8, "num_local_experts": 32, "output_router_logits": False, "pad_token_id": 199999,
    "quantization_config": {
        "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"],
        "quant_method": "mxfp4",
    },
    "rms_norm_eps": 1e-05,
    "rope_scaling": {"beta_fast": 32.0, "beta_slow": 1.0, "factor": 32.0, "original_max_position_embeddings": 4096,
                     "rope_type": "yarn", "truncate": False},
    "rope_theta": 150000, "router_aux_loss_coef": 0.9, "sliding_window": 128, "swiglu_limit": 7.0,
    "tie_word_embeddings": False, "use_cache": True, "vocab_size": 201088,
}


def test_real_20b_config_and_parameter_layout() -> None:
    """The published gpt-oss-20b config parses, and our expert tensors have the shapes its MXFP4 blocks map to."""
    from mlx.utils import tree_flatten

    from mlx_harmony_tui.model.config import QuantSpec

    config = ModelConfig.from_dict(GPT_OSS_20B_CONFIG)
    assert config.quant_method == "mxfp4" and config.quantization is None
    assert config.sliding_window == 128 and config.layer_types[:2] == ["sliding_attention", "full_attention"]
    assert config.attention_scale_factor == pytest.approx(0.1 * np.log(32.0) + 1.0)
    mxfp4 = QuantSpec("mxfp4", 32, 4)
    quant = {f"model.layers.{i}.mlp.experts.{n}": mxfp4 for i in range(24) for n in ("gate_up", "down")}
    shapes = {k: tuple(v.shape) for k, v in tree_flatten(GptOss(config, quant).parameters())}  # lazy: nothing allocated
    # HF: gate_up_proj_blocks (32, 5760, 90, 16) uint8 -> (32, 5760, 360) uint32; scales (32, 5760, 90).
    assert shapes["model.layers.0.mlp.experts.gate_up.weight"] == (32, 5760, 360)
    assert shapes["model.layers.0.mlp.experts.gate_up.scales"] == (32, 5760, 90)
    assert shapes["model.layers.0.mlp.experts.down.weight"] == (32, 2880, 360)
    assert shapes["model.layers.0.self_attn.sinks"] == (64,)
    assert shapes["model.layers.23.self_attn.k_proj.weight"] == (512, 2880)
    assert shapes["lm_head.weight"] == (201088, 2880)


def test_yarn_frequencies_match_transformers() -> None:
    """The real gpt-oss RoPE (head_dim 64, YaRN factor 32, truncate false) against HF's own yarn init."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("torch")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from mlx_harmony_tui.model.gpt_oss import rope_frequencies

    cfg = dict(GPT_OSS_20B_CONFIG)
    hf_cfg = transformers.GptOssConfig(**{k: v for k, v in cfg.items() if k != "quantization_config"})
    inv_freq, attention_factor = ROPE_INIT_FUNCTIONS["yarn"](hf_cfg, "cpu")
    ours = ModelConfig.from_dict(cfg)
    np.testing.assert_allclose(1.0 / np.array(rope_frequencies(ours)), inv_freq.numpy(), rtol=1e-5)
    assert ours.attention_scale_factor == pytest.approx(attention_factor)
    truncated = ModelConfig.from_dict({**cfg, "rope_scaling": {**cfg["rope_scaling"], "truncate": True}})
    assert not np.allclose(np.array(rope_frequencies(truncated)), np.array(rope_frequencies(ours)))

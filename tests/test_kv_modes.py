"""The 8.25-bit KV caches that fit gpt-oss-20b's 131,072 positions in 1.7 GB: ``kv_mode = "affine128"``
(affine, a bf16 scale and bias per 128 values: one position of two KV heads) and ``"mxfp8"`` (8-bit floats,
one scale byte per 32, no bias); through the real tiny model, engine, prompt-cache files, config and
metrics bar."""

from __future__ import annotations

import re
from pathlib import Path

import mlx.core as mx
import pytest

from mlx_harmony_tui.engine.cache import PromptCacheError
from mlx_harmony_tui.engine.generator import Engine
from mlx_harmony_tui.errors import UserError
from mlx_harmony_tui.model.cache import SlidingKVCache
from mlx_harmony_tui.model.kv_quant import KVQuantError, QuantizedKVCache, check_heads, quantized_attention
from tests.test_kv_bounded import forward_chunks, ids, run, tiny  # noqa: F401 - tiny: the fixture


def test_cache_bytes_at_gpt_oss_20b_shapes_meet_1_7_gb() -> None:
    """A full layer's position at gpt-oss-20b's shapes (8 KV heads x 64, keys and values): mxfp8 2 x 8 x (64
    value bytes + 2 scale bytes), affine128 2 x 4 x (128 + 2 + 2) = 1,056 bytes, against 1,088 for affine 8-bit
    in groups of 64 and 2,048 in bf16; 12 full layers x 131,072 positions + the 12 sliding layers'
    1,024-position buffers: 1.686 GB (scripts/long_context_gpu.py --kv-only measures it from filled caches)."""
    per_position = {}
    for mode in ("affine", "affine128", "mxfp8"):
        c = QuantizedKVCache(8, 64, mode)
        kv = mx.random.normal((1, 8, 256, 64)).astype(mx.bfloat16)  # one step of the buffer
        c.update(kv, kv)
        per_position[mode] = c.nbytes // 256
    assert per_position == {"affine": 1088, "affine128": 1056, "mxfp8": 1056}
    sliding = 12 * 1024 * 2 * 8 * 64 * 2
    assert 12 * 131072 * per_position["mxfp8"] + sliding == 1_686_110_208 <= 1.7e9
    assert 12 * 131072 * per_position["affine"] + sliding > 1.7e9


@pytest.mark.parametrize(
    ("mode", "kind", "label", "words"),
    [("mxfp8", "mxfp8", "mxfp8", "mxfp8"), ("affine128", "affine128-q8", "8-bit g128", "8-bit in groups of 128")],
)
def test_cache_runs_trims_saves_and_stays_near_float(
    tiny, tmp_path: Path, mode: str, kind: str, label: str, words: str  # noqa: F811
) -> None:
    model, config = tiny
    tokens = ids(300)
    ref = forward_chunks(model, tokens, model.make_cache())
    caches = model.make_cache(kv_bits=8, kv_mode=mode)
    assert [type(c) for c in caches] == [SlidingKVCache, QuantizedKVCache] * 2 and caches[1].kind == kind
    got = forward_chunks(model, tokens, caches)
    same = (got.argmax(-1) == ref.argmax(-1)).mean().item()
    rel = (mx.abs(got - ref).mean() / mx.abs(ref).mean()).item()
    assert same >= 0.9 and rel <= 0.1, (same, rel)
    # 300 positions in a 512-position buffer, 2 heads of 64 (float32 here): mxfp8 a byte per value + a scale
    # byte per 32; affine128 one row of both heads: a byte per value + a float32 scale and bias per 128
    assert caches[1].nbytes == {"mxfp8": 2 * 512 * 2 * (64 + 2), "affine128": 2 * 512 * (128 + 8)}[mode]

    engine = Engine(model, config, kv_mode=mode)  # turns 8-bit quantization on by itself
    assert (engine.kv_bits, engine.kv_mode) == (8, mode)
    prompt = ids(200)
    reply, first = run(engine, prompt, max_tokens=20)
    assert first.metrics.kv_format == label and first.metrics.kv_bytes == engine.prompt_cache.nbytes
    turn2 = prompt + reply[:5] + ids(10, seed=7)
    out, res = run(engine, turn2)
    assert res.metrics.reused_tokens == 205
    assert out == run(Engine(model, config, kv_bits=8, kv_mode=mode), turn2)[0]  # trimming is exact

    path = tmp_path / "mx.safetensors"
    engine.save_cache(str(path))
    other = Engine(model, config, kv_mode=mode)
    assert other.load_cache(str(path)) and other.prompt_cache.tokens == engine.prompt_cache.tokens
    assert run(other, turn2 + ids(3, seed=9))[0] == run(engine, turn2 + ids(3, seed=9))[0]
    affine = Engine(model, config, kv_bits=8)
    with pytest.raises(PromptCacheError, match=rf"\({words}\), the model runs with quantized \(8-bit\)"):
        affine.load_cache(str(path))
    run(affine, prompt, max_tokens=2)
    affine.save_cache(str(tmp_path / "q8.safetensors"))
    with pytest.raises(PromptCacheError, match=r"saved with KV cache quantized \(8-bit\)"):
        Engine(model, config, kv_mode=mode).load_cache(str(tmp_path / "q8.safetensors"))


@pytest.mark.parametrize("mode", ["mxfp8", "affine128", "affine"])
@pytest.mark.parametrize("bits", [8, 4])
def test_attention_equals_attention_over_the_dequantized_cache(mode: str, bits: int) -> None:
    """The quantized matmuls read the cache as MLX's dequantize does: mxfp8's e4m3 values and e8m0 scales;
    affine128's rows of two heads (each query padded to its head's half, each head keeping its slice)."""
    if mode == "mxfp8" and bits == 4:
        pytest.skip("mxfp8 is 8 bits")
    mx.random.seed(3)
    q = mx.random.normal((1, 8, 3, 64))  # 8 query heads over 4 KV heads (2 rows of affine128)
    k, v = mx.random.normal((1, 4, 40, 64)), mx.random.normal((1, 4, 40, 64))
    sinks = mx.random.normal((8,))
    c = QuantizedKVCache(bits, 64, mode)
    c.update(k, v)
    qk, qv = c.state
    g = 2 if mode == "affine128" else 1

    def dequantized(a: tuple[mx.array, ...]) -> mx.array:
        x = mx.dequantize(*a, group_size=c.group_size, bits=bits, mode="mxfp8" if mode == "mxfp8" else "affine")
        return x.reshape(1, 4 // g, 40, g, 64).transpose(0, 1, 3, 2, 4).reshape(1, 4, 40, 64)

    ref = mx.fast.scaled_dot_product_attention(q, dequantized(qk), dequantized(qv), scale=0.125, mask="causal",
                                               sinks=sinks)  # fmt: skip
    got = quantized_attention(q, qk, qv, 0.125, "causal", sinks, *c.quant)
    assert mx.abs(got - ref).max().item() < 1e-4


def test_kv_setting_errors_are_clear(tiny) -> None:  # noqa: F811
    model, config = tiny
    with pytest.raises(UserError, match="mxfp8 is 8 bits"):
        Engine(model, config, kv_bits=4, kv_mode="mxfp8")
    with pytest.raises(UserError, match="kv_mode must be one of affine, affine128, mxfp8"):
        Engine(model, config, kv_bits=8, kv_mode="nvfp4")
    assert Engine(model, config, kv_mode="affine").kv_bits is None  # affine alone: no quantization asked
    assert Engine(model, config, kv_bits=4, kv_mode="affine128").kv_bits == 4
    with pytest.raises(KVQuantError, match="pairs; this model has 3"):
        check_heads(3, "affine128")


def test_affine128_needs_kv_heads_in_pairs(tmp_path: Path) -> None:
    from mlx_harmony_tui.model import load_model, write_tiny_checkpoint

    one = write_tiny_checkpoint(tmp_path / "t", layout="float", head_dim=64, num_key_value_heads=1)
    model, config = load_model(one)
    with pytest.raises(KVQuantError, match="kv_mode affine128 groups KV heads in pairs; this model has 1"):
        Engine(model, config, kv_mode="affine128")
    assert Engine(model, config, kv_mode="mxfp8").kv_mode == "mxfp8"  # per head: any number of them


def test_kv_mode_config_key_reaches_the_local_engine_and_the_metrics_bar(tmp_path: Path) -> None:
    """`kv_mode = "mxfp8"` in the config file quantizes the demo model's full layers that way; the metrics
    bar names the format beside the KV memory; an unknown mode is reported with its line."""
    from mlx_harmony_tui.backends.local import LocalBackend
    from mlx_harmony_tui.config import load_config
    from mlx_harmony_tui.engine.metrics import Metrics
    from mlx_harmony_tui.tui.widgets.metrics_bar import format_metrics

    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    good.write_text('kv_mode = "mxfp8"\n')
    bad.write_text('theme = "textual-dark"\nkv_mode = "fp8"\n')
    config, problems = load_config(good)
    assert problems == [] and config.kv_mode == "mxfp8" and config.kv_bits is None
    backend = LocalBackend.load("demo", app_config=config)
    try:
        full = [c for c in backend.engine.prompt_cache.caches if isinstance(c, QuantizedKVCache)]
        assert full and {c.kind for c in full} == {"mxfp8"}
    finally:
        backend.close()
    config, problems = load_config(bad)
    assert config.kv_mode is None and [(p.line, p.key) for p in problems] == [(2, "kv_mode")]
    assert "KV 1.50 GiB mxfp8" in format_metrics(Metrics(kv_bytes=3 * 2**29, kv_format="mxfp8"))
    assert "KV 1.50 GiB 8-bit" in format_metrics(Metrics(kv_bytes=3 * 2**29, kv_format="8-bit"))


async def test_the_tui_metrics_bar_names_the_kv_format_after_a_turn(tmp_path: Path) -> None:
    """The real app on the demo model with `kv_mode = "mxfp8"`: after a reply the bar reads `KV ... mxfp8`."""
    from mlx_harmony_tui.backends.local import LocalBackend
    from mlx_harmony_tui.chat.settings import ChatSettings
    from mlx_harmony_tui.config import load_config
    from mlx_harmony_tui.tui.app import HarmonyApp
    from mlx_harmony_tui.tui.widgets.chat_input import ChatInput

    cfg = tmp_path / "c.toml"
    cfg.write_text('kv_mode = "mxfp8"\n')
    config, problems = load_config(cfg)
    assert not problems
    backend = LocalBackend.load("demo", app_config=config)
    app = HarmonyApp(backend=backend, settings=ChatSettings(max_tokens=8, seed=1))
    async with app.run_test(size=(120, 40)) as pilot:
        app.screen.query_one(ChatInput).focus()
        await pilot.press(*"hi", "enter")
        await app.wait_idle(60)
        await pilot.pause()
        bar = str(app.screen.query_one("#metrics-text").render())
        assert re.search(r"KV \d+ KiB mxfp8", bar), bar

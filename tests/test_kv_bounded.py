"""Bounded KV memory on the real tiny model: sliding layers keep window + margin, prefix reuse stays exact
(trim inside the margin, checkpoints beyond it), prompt-cache files versioned, quantized full layers."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from mlx_harmony_tui.engine.cache import PromptCacheError
from mlx_harmony_tui.engine.generator import Engine, GenerationOptions, GenerationResult
from mlx_harmony_tui.engine.sampling import SamplingParams
from mlx_harmony_tui.model import KVCache, load_model, write_tiny_checkpoint
from mlx_harmony_tui.model.cache import SlidingKVCache
from mlx_harmony_tui.model.kv_quant import KVQuantError, QuantizedKVCache

MARGIN = 5  # small, so a few hundred tokens cross it (the tiny model's window is 8)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    """The tiny model with 64-wide heads (KV quantization groups need a head size divisible by 32)."""
    return load_model(
        write_tiny_checkpoint(tmp_path_factory.mktemp("m") / "tiny64", layout="float", head_dim=64)
    )


def ids(n: int, seed: int = 0) -> list[int]:
    return [1000 + (37 * i + 101 * seed) % 5000 for i in range(n)]


def greedy(max_tokens: int) -> GenerationOptions:
    return GenerationOptions(
        SamplingParams(temperature=0), max_tokens=max_tokens, loop=None, stop_ids=frozenset(), prefill_step=64
    )


def run(engine: Engine, prompt: list[int], max_tokens: int = 6) -> tuple[list[int], GenerationResult]:
    out = list(engine.generate(prompt, greedy(max_tokens)))
    assert engine.last_result is not None
    return out, engine.last_result


def forward_chunks(model, tokens: list[int], caches, chunk: int = 48) -> mx.array:
    """Chunked prefill of all but the last 20 tokens, then one token at a time; the logits of each chunk's
    last position and of every step (all of a chunk's would be 0.8 MB a token with the real vocabulary)."""
    outs = [
        model(mx.array([tokens[s : min(s + chunk, len(tokens) - 20)]]), cache=caches, last_only=True)
        for s in range(0, len(tokens) - 20, chunk)
    ]
    outs += [model(mx.array([[t]]), cache=caches) for t in tokens[-20:]]
    return mx.concatenate(outs, axis=1)


@pytest.mark.parametrize("optimized", [False, True])
def test_bounded_sliding_cache_gives_the_full_caches_logits(tiny, optimized: bool) -> None:
    """Sliding layers that dropped all but window + margin positions (compacted several times) give the very
    logits of caches holding every position, eager and through the compiled decode step."""
    model, _ = tiny
    if optimized:
        model.optimize()
    tokens = ids(700)
    full = forward_chunks(model, tokens, [KVCache() for _ in model.layers])
    bounded = model.make_cache(margin=MARGIN)
    got = forward_chunks(model, tokens, bounded)
    np.testing.assert_array_equal(np.array(got), np.array(full))
    sliding = [c for c in bounded if isinstance(c, SlidingKVCache)]
    assert sliding and all(c.start > 0 and c.offset == 700 for c in sliding)
    # what a sliding layer holds is bounded by window - 1 + margin + one chunk, rounded up to the step
    assert all(c.keys is not None and c.keys.shape[2] <= 256 for c in sliding)
    assert all(c.max_trim == c.offset - c.start - 7 for c in sliding)


def test_sliding_trim_beyond_its_margin_is_refused(tiny) -> None:
    model, _ = tiny
    c = model.make_cache(margin=MARGIN)[0]
    k = mx.random.normal((1, 2, 600, 64))
    for s in range(0, 600, 50):
        c.update_and_fetch(k[:, :, s : s + 50], k[:, :, s : s + 50])
    assert c.start > 0
    with pytest.raises(ValueError, match="can go back"):
        c.trim(c.max_trim + 1)
    assert c.trim(c.max_trim) > 0 and c.max_trim == 0
    assert c.trim(c.offset) and c.offset == 0 and c.start == 0 and c.nbytes == 0  # emptying is always exact


def test_kv_bytes_bounded_in_a_long_conversation(tiny) -> None:
    """Only the full layers grow with the context; Metrics reports the KV bytes."""
    model, config = tiny
    engine = Engine(model, config, optimize=False, kv_margin=MARGIN)
    _, res = run(engine, ids(1500), max_tokens=4)
    per_pos = 2 * 2 * 64 * 4  # keys + values, 2 kv heads, head_dim 64, float32
    full = sum(c.nbytes for c in engine.prompt_cache.caches if not isinstance(c, SlidingKVCache))
    sliding = sum(c.nbytes for c in engine.prompt_cache.caches if isinstance(c, SlidingKVCache))
    assert full == 2 * 1504 * per_pos  # two full layers, the 1,500 + 4 positions the prefill reserved
    assert sliding <= 2 * 256 * per_pos  # not 1536 positions each
    ckpts = engine.prompt_cache.nbytes - full - sliding
    assert ckpts == 2 * 7 * per_pos  # one checkpoint (the prompt's end): the window's 7 positions per layer
    assert res.metrics.kv_bytes == engine.prompt_cache.nbytes


def test_divergence_inside_the_margin_reuses_everything(tiny) -> None:
    model, config = tiny
    engine = Engine(model, config, kv_margin=MARGIN)
    prompt = ids(400)
    run(engine, prompt, max_tokens=3)
    changed = prompt[:-3] + [4321, 4322, 4323]  # diverges 3 tokens before the cached end (within margin)
    out, res = run(engine, changed)
    assert res.metrics.reused_tokens == 397 and res.metrics.reprefilled_tokens == 0
    assert res.metrics.prefilled_tokens == 3
    assert out == run(Engine(model, config, kv_margin=MARGIN), changed)[0]


def test_chat_turn_dropping_the_reply_goes_back_to_the_prompts_checkpoint(tiny) -> None:
    """Turn 2 keeps only the first 3 tokens of a 300-token reply (the analysis is dropped): the sliding
    layers go back to the window saved at the end of turn 1's prompt; only those 3 tokens are prefilled
    again, and the reply equals a fresh engine's."""
    model, config = tiny
    engine = Engine(model, config, kv_margin=MARGIN)
    prompt = ids(200)
    reply, _ = run(engine, prompt, max_tokens=300)
    turn2 = prompt + reply[:3] + ids(30, seed=1)
    out, res = run(engine, turn2)
    m = res.metrics
    assert m.reused_tokens == 200 and m.reprefilled_tokens == 3 and m.prefilled_tokens == 33
    assert out == run(Engine(model, config, kv_margin=MARGIN), turn2)[0]
    # regenerate turn 2: the same prompt again, back to its own checkpoint, nothing re-prefilled
    again, res = run(engine, turn2)
    assert again == out and res.metrics.reprefilled_tokens == 0 and res.metrics.prefilled_tokens == 1


def test_divergence_before_every_checkpoint_reprefills_from_the_start(tiny) -> None:
    model, config = tiny
    engine = Engine(model, config, kv_margin=MARGIN)
    prompt = ids(300)
    run(engine, prompt, max_tokens=2)
    edited = prompt[:100] + ids(50, seed=2)
    out, res = run(engine, edited)
    assert res.metrics.reused_tokens == 0 and res.metrics.reprefilled_tokens == 100
    assert res.metrics.prefilled_tokens == 150
    assert out == run(Engine(model, config, kv_margin=MARGIN), edited)[0]


def test_many_turns_each_prefill_only_their_new_tokens(tiny) -> None:
    """A growing conversation (reply kept, new user tokens) never re-prefills, however long it gets."""
    model, config = tiny
    engine = Engine(model, config, kv_margin=MARGIN)
    prompt = ids(120)
    for turn in range(8):
        reply, res = run(engine, prompt, max_tokens=40)
        if turn:
            assert res.metrics.reprefilled_tokens == 0 and res.metrics.prefilled_tokens == 41
        prompt = prompt + reply + ids(40, seed=turn + 3)


def test_prompt_cache_file_round_trip_keeps_bounded_layers_and_checkpoints(tiny, tmp_path: Path) -> None:
    model, config = tiny
    engine = Engine(model, config, kv_margin=MARGIN)
    prompt = ids(250)
    reply, _ = run(engine, prompt, max_tokens=300)
    path = tmp_path / "c.safetensors"
    engine.save_cache(str(path))
    other = Engine(model, config, kv_margin=MARGIN)
    assert other.load_cache(str(path))
    assert other.prompt_cache.tokens == engine.prompt_cache.tokens
    # sliding layers come back with their window + margin (the saved buffer may hold a few more)
    assert [getattr(c, "start", 0) for c in other.prompt_cache.caches] == [
        549 - 7 - MARGIN,
        0,
    ] * 2  # 250 + 299 fed
    assert [at for at, _ in other.prompt_cache.checkpoints] == [250]
    turn2 = prompt + reply[:2] + ids(20, seed=4)
    out, res = run(other, turn2)
    assert res.metrics.reprefilled_tokens == 2  # the loaded checkpoint served
    assert out == run(Engine(model, config, kv_margin=MARGIN), turn2)[0]


def write_v1_file(engine: Engine, path: Path) -> None:
    """A prompt-cache file as version 1 wrote them: every layer's every position, no checkpoints."""
    pc = engine.prompt_cache
    arrays = {"tokens": mx.array(np.asarray(pc.tokens, dtype=np.int32))}
    for i, c in enumerate(pc.caches):
        arrays[f"layer.{i}.keys"], arrays[f"layer.{i}.values"] = c.state
    meta = {
        "format": "mlx-harmony-tui-prompt-cache/1",
        "fingerprint": pc.fingerprint,
        "num_tokens": str(len(pc.tokens)),
        "num_layers": str(len(pc.caches)),
    }
    mx.save_safetensors(str(path), arrays, metadata=meta)


def test_version_1_files_load_into_bounded_caches(tiny, tmp_path: Path) -> None:
    model, config = tiny
    old = Engine(model, config, kv_margin=10_000)  # holds every position, as version 1 did
    prompt = ids(400)
    run(old, prompt, max_tokens=2)
    path = tmp_path / "v1.safetensors"
    write_v1_file(old, path)
    engine = Engine(model, config, kv_margin=MARGIN)
    assert engine.load_cache(str(path))
    sliding = [c for c in engine.prompt_cache.caches if isinstance(c, SlidingKVCache)]
    assert all(c.offset == 401 and c.offset - c.start == 7 + MARGIN for c in sliding)
    turn2 = engine.prompt_cache.tokens + ids(10, seed=5)
    out, res = run(engine, turn2)
    assert res.metrics.reused_tokens == 401 and res.metrics.reprefilled_tokens == 0
    assert out == run(Engine(model, config), turn2)[0]


def test_unknown_version_and_kv_setting_mismatch_are_refused_cleanly(tiny, tmp_path: Path) -> None:
    model, config = tiny
    engine = Engine(model, config)
    run(engine, ids(40), max_tokens=2)
    path = tmp_path / "c.safetensors"
    engine.save_cache(str(path))
    arrays, meta = mx.load(str(path), return_metadata=True)
    newer = tmp_path / "v9.safetensors"
    mx.save_safetensors(str(newer), arrays, metadata={**meta, "format": "mlx-harmony-tui-prompt-cache/9"})
    q8 = Engine(model, config, kv_bits=8)
    run(q8, ids(30, seed=6), max_tokens=2)
    before = list(q8.prompt_cache.tokens)
    with pytest.raises(PromptCacheError, match="newer"):
        q8.load_cache(str(newer))
    with pytest.raises(PromptCacheError, match="full precision"):
        q8.load_cache(str(path))
    assert q8.prompt_cache.tokens == before  # untouched: the next turn goes on with what it had
    assert json.loads(meta["kv"])[1] == "float"


def test_quantized_cache_trims_saves_and_stays_close_to_float(tiny, tmp_path: Path) -> None:
    model, config = tiny
    tokens = ids(300)
    ref = forward_chunks(model, tokens, model.make_cache())
    for bits, agree, dev in ((8, 0.97, 0.05), (4, 0.8, 0.3)):
        caches = model.make_cache(kv_bits=bits)
        assert [type(c) for c in caches] == [SlidingKVCache, QuantizedKVCache] * 2
        got = forward_chunks(model, tokens, caches)
        same = (got.argmax(-1) == ref.argmax(-1)).mean().item()
        rel = (mx.abs(got - ref).mean() / mx.abs(ref).mean()).item()
        assert same >= agree and rel <= dev, (bits, same, rel)
        # 300 positions in a 512-position buffer, 2 heads: packed values + float32 scale and bias per 64
        assert caches[1].nbytes == 2 * 512 * 2 * (64 * bits // 8 + 8)
    engine = Engine(model, config, kv_bits=8)
    prompt = ids(200)
    reply, _ = run(engine, prompt, max_tokens=20)
    turn2 = prompt + reply[:5] + ids(10, seed=7)
    out, res = run(engine, turn2)
    assert res.metrics.reused_tokens == 205
    assert out == run(Engine(model, config, kv_bits=8), turn2)[0]
    path = tmp_path / "q.safetensors"
    engine.save_cache(str(path))
    other = Engine(model, config, kv_bits=8)
    assert other.load_cache(str(path)) and other.prompt_cache.tokens == engine.prompt_cache.tokens
    with pytest.raises(PromptCacheError, match="8-bit"):
        Engine(model, config).load_cache(str(path))


def test_kv_quantization_needs_a_head_size_it_can_group(tmp_path: Path) -> None:
    model, config = load_model(write_tiny_checkpoint(tmp_path / "t16", layout="float"))  # head_dim 16
    with pytest.raises(KVQuantError, match="divisible by 32"):
        Engine(model, config, kv_bits=8)


def test_metrics_bar_shows_kv_memory_and_recomputed_tokens() -> None:
    from mlx_harmony_tui.engine.metrics import Metrics
    from mlx_harmony_tui.tui.widgets.metrics_bar import format_metrics

    text = format_metrics(
        Metrics(
            reused_tokens=900,
            reprefilled_tokens=3,
            mlx_active_bytes=13 * 2**30,
            kv_bytes=3 * 2**29,
            context_tokens=1000,
        )
    )
    assert (
        "reused 900" in text and "recomputed 3" in text and "MLX 13.00 GiB" in text and "KV 1.50 GiB" in text
    )
    assert "KV 96 KiB" in format_metrics(Metrics(kv_bytes=96 * 1024))
    assert "KV" not in format_metrics(Metrics()) and "recomputed" not in format_metrics(Metrics())


def test_quantized_attention_of_half_precision_queries_keeps_float32_scores() -> None:
    """bfloat16 queries against 8-bit keys: the scores and probabilities stay float32, so the result is the
    exact attention over the dequantized cache up to the output's rounding (bfloat16 scores were 10x off:
    the demo model's top-1 agreement fell to 89%)."""
    from mlx_harmony_tui.model.kv_quant import quantized_attention

    k, v = (mx.random.normal((1, 2, 600, 64), key=mx.random.key(i)).astype(mx.bfloat16) for i in (0, 1))
    q = (mx.random.normal((1, 8, 1, 64), key=mx.random.key(2)) * 8).astype(mx.bfloat16)
    sinks = mx.random.normal((8,), key=mx.random.key(3)).astype(mx.bfloat16)
    qk, qv = (mx.quantize(a, group_size=64, bits=8) for a in (k, v))
    dk, dv = (
        mx.dequantize(a[0], *(x.astype(mx.float32) for x in a[1:]), group_size=64, bits=8) for a in (qk, qv)
    )
    ref = mx.fast.scaled_dot_product_attention(
        q.astype(mx.float32), dk, dv, scale=0.125, sinks=sinks.astype(mx.float32)
    )
    got = quantized_attention(q, qk, qv, 0.125, None, sinks, 8, 64)
    assert got.dtype == mx.bfloat16
    assert mx.abs(got.astype(mx.float32) - ref).max().item() < 0.02


def test_kv_bits_config_key_reaches_the_local_engine(tmp_path: Path) -> None:
    """`kv_bits = 8` in the config file quantizes the local model's full layers (the demo model's heads are
    64 wide); a value other than 4 or 8 is reported with its line and left unset."""
    from mlx_harmony_tui.backends.local import LocalBackend
    from mlx_harmony_tui.config import load_config

    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    good.write_text("kv_bits = 8\n")
    bad.write_text('theme = "textual-dark"\nkv_bits = 3\n')
    config, problems = load_config(good)
    assert problems == [] and config.kv_bits == 8
    backend = LocalBackend.load("demo", app_config=config)
    try:
        kinds = {type(c).__name__ for c in backend.engine.prompt_cache.caches}
        assert kinds == {"SlidingKVCache", "QuantizedKVCache"} and backend.engine.kv_bits == 8
    finally:
        backend.close()
    config, problems = load_config(bad)
    assert config.kv_bits is None
    assert [(p.line, p.key) for p in problems] == [(2, "kv_bits")] and "one of 4, 8" in problems[0].message

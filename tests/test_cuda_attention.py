"""The split-K decode attention kernel (model/cuda_attention.py): equal to MLX's sdpa within tolerance on
CUDA; elsewhere the decoder keeps MLX's sdpa (the portable path)."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from mlx_harmony_tui.model import cuda_attention, load_model, write_tiny_checkpoint
from mlx_harmony_tui.model.cuda_moe import cuda_available

needs_cuda = pytest.mark.skipif(not cuda_available(), reason="needs CUDA")


def test_split_counts_are_bounded_powers_of_two() -> None:
    assert cuda_attention.splits_for(1) == 1 and cuda_attention.splits_for(511) == 1
    assert cuda_attention.splits_for(4096) == 16 and cuda_attention.splits_for(16384) == 64
    assert cuda_attention.splits_for(131072) == cuda_attention.MAX_SPLITS
    assert cuda_attention.splits_for(100_000, window=128) == 1
    assert cuda_attention.supports(64, 8, 64, mx.bfloat16) and not cuda_attention.supports(
        64, 8, 62, mx.bfloat16
    )


def test_portable_decoder_does_not_use_the_kernel_off_cuda(tmp_path: Path) -> None:
    if cuda_available():
        pytest.skip("CPU/Metal only")
    model, _ = load_model(write_tiny_checkpoint(tmp_path / "t", layout="float"))
    model.optimize()
    assert model.decoder.flash is None


def test_v2_serves_shapes_with_whole_warps_of_head_dims(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cuda_attention, "KERNEL", "2")
    assert cuda_attention.version_for(64, 8, 64) == "2"
    assert cuda_attention.version_for(4, 2, 16) == "1"  # the tiny model's head_dim: v1
    assert cuda_attention.version_for(64, 2, 64) == "1"  # 32 query heads a kv head: more than v2 keeps
    monkeypatch.setattr(cuda_attention, "KERNEL", "1")
    assert cuda_attention.version_for(64, 8, 64) == "1"


@needs_cuda
@pytest.mark.parametrize("kernel", ["1", "2"])
@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16])
def test_kernel_equals_sdpa_with_sinks_and_window(
    dtype: mx.Dtype, kernel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Against MLX's sdpa on the sliced keys: gpt-oss's shapes (64 query heads over 8 kv heads, head 64),
    random sinks, garbage past the valid length, from one key to 40,000 (up to 128 splits)."""
    monkeypatch.setattr(cuda_attention, "KERNEL", kernel)
    cap = 40_960
    keys, values = (mx.random.normal((1, 8, cap, 64), key=mx.random.key(j)).astype(dtype) for j in (0, 1))
    q = mx.random.normal((1, 64, 1, 64), key=mx.random.key(2)).astype(dtype)
    sinks = mx.random.normal((64,), key=mx.random.key(3)).astype(dtype)
    scale = 0.125
    tol = 1e-4 if dtype == mx.float32 else 2e-2
    for window in (None, 128):
        for n in (1, 5, 33, 127, 128, 300, 4097, 16_384, 40_000):
            lo = max(0, n - window) if window else 0
            ref = mx.fast.scaled_dot_product_attention(
                q, keys[:, :, lo:n], values[:, :, lo:n], scale=scale, sinks=sinks
            )
            got = cuda_attention.decode_attention(
                q,
                keys,
                values,
                mx.array([n], dtype=mx.int32),
                n,
                mx.array([scale], dtype=mx.float32),
                sinks,
                window,
            )
            np.testing.assert_allclose(
                np.array(got.astype(mx.float32)), np.array(ref.astype(mx.float32)), rtol=tol, atol=tol
            )
            # The last positions in a tail buffer (KVCache's), garbage past them and in the main buffer
            for t in {1, min(n, 37), min(n, 256)}:
                base = n - t
                tk, tv = (mx.concatenate([a[:, :, base:n], a[:, :, :300]], axis=2) for a in (keys, values))
                main_k, main_v = (mx.concatenate([a[:, :, :base], a[:, :, -500:]], axis=2) for a in (keys, values))
                got = cuda_attention.decode_attention(
                    q, main_k, main_v, mx.array([n, base], dtype=mx.int32), n,
                    mx.array([scale], dtype=mx.float32), sinks, window, tail=(tk, tv),
                )
                np.testing.assert_allclose(
                    np.array(got.astype(mx.float32)), np.array(ref.astype(mx.float32)), rtol=tol, atol=tol
                )


@needs_cuda
def test_decoder_with_the_kernel_matches_sdpa_decoder(tmp_path: Path) -> None:
    """The compiled decoder with the kernel on every full layer (from the first position) and with MLX's
    sdpa continue one prefilled cache alike (greedy tokens; logits within tolerance)."""
    from mlx_harmony_tui.model.cache import KVCache, SlidingKVCache
    from mlx_harmony_tui.model.fast import CompiledDecoder

    def copy(c: KVCache) -> KVCache:
        new = SlidingKVCache(c.window, c.margin) if isinstance(c, SlidingKVCache) else KVCache()
        new.state = c.state  # 400 positions: nothing dropped yet, positions 0..400
        return new

    model, _ = load_model(write_tiny_checkpoint(tmp_path / "t", layout="float"))
    model.optimize(compiled_decode=False)
    prefilled = model.make_cache()  # one prefill for both (two prefills may differ on a GPU)
    mx.eval(model(mx.array([list(range(500, 900))]), prefilled, last_only=True))
    runs = []
    for flash in (False, True):
        decoder = CompiledDecoder(model, fused_moe=False, flash=flash)
        decoder.flash_min = 1
        assert (decoder.flash is not None) == flash
        cache = [copy(c) for c in prefilled]
        for c in cache:
            c.TAIL = 5  # the full layers' tail (KVCache) fills and folds several times
        tok, toks, logits = mx.array([7]), [], []
        for _ in range(16):
            out = decoder(tok[:, None].astype(mx.int32), cache)[:, -1]
            logits.append(out)
            tok = mx.argmax(out, axis=-1)
            toks.append(tok.item())
        runs.append((toks, mx.concatenate(logits)))
    assert any(c.tail_n for c in cache)  # the flash run's caches: the kernel read a tail
    assert runs[0][0] == runs[1][0]
    np.testing.assert_allclose(np.array(runs[0][1]), np.array(runs[1][1]), rtol=2e-2, atol=2e-2)

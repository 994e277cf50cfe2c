"""The CPU's multi-query attention (model/gpt_oss.py ``cpu_attention``: base-2 exponentials, the causal mask
on the last key columns only, the sink folded into the denominator) equals MLX's sdpa."""

from __future__ import annotations

import mlx.core as mx
import pytest

from mlx_harmony_tui.model.gpt_oss import cpu_attention


@pytest.mark.parametrize("mask", ["causal", "window", None])
@pytest.mark.parametrize("shape", [(4, 2, 40, 1375, 16), (8, 2, 64, 64, 64), (4, 4, 1, 30, 16), (2, 1, 7, 7, 32)])
@pytest.mark.parametrize("with_sinks", [True, False])
def test_cpu_attention_equals_sdpa(shape: tuple[int, ...], mask: str | None, with_sinks: bool) -> None:
    H, hkv, L, T, D = shape
    mx.random.seed(L * T + D)
    q = mx.random.normal((1, H, L, D))
    k, v = mx.random.normal((1, hkv, T, D)) * 3, mx.random.normal((1, hkv, T, D))  # peaked scores too
    sinks = mx.random.normal((H,)) * 2 if with_sinks else None
    m: mx.array | str | None = mask
    if mask == "window":  # a sliding layer's: query i (at T - L + i) sees the 8 positions up to itself
        qp, kp = mx.arange(T - L, T)[:, None], mx.arange(T)[None]
        m = (kp <= qp) & (qp - kp < 8)
    ref = mx.fast.scaled_dot_product_attention(q, k, v, scale=D**-0.5, mask=m, sinks=sinks)
    got = cpu_attention(q, k, v, scale=D**-0.5, mask=m, sinks=sinks)
    assert got.shape == ref.shape and got.dtype == q.dtype
    assert mx.abs(got - ref).max().item() < 2e-5


def test_cpu_attention_of_bfloat16_inputs_keeps_float32_inside() -> None:
    mx.random.seed(1)
    q, k, v = (mx.random.normal((1, 4, 16, 32)).astype(mx.bfloat16) for _ in range(3))
    sinks = mx.zeros((4,), dtype=mx.bfloat16)
    f32 = [a.astype(mx.float32) for a in (q, k, v)]
    ref = mx.fast.scaled_dot_product_attention(*f32, scale=0.2, mask="causal", sinks=sinks.astype(mx.float32))
    got = cpu_attention(q, k, v, scale=0.2, mask="causal", sinks=sinks)
    assert got.dtype == mx.bfloat16 and mx.abs(got.astype(mx.float32) - ref).max().item() < 1e-2

"""One decode step for several sequences at once, each over its own per-layer caches.

Continuous batching (engine/batch.py) decodes the requests of many users together. Everything but attention
is shared: the embedding, the QKV and output projections, the MoE (router, expert matmuls) and the LM head run
once on a (B, 1, H) batch, so the weights are read once per step instead of once per sequence. Attention runs
per row over that row's own cache (its own length, RoPE offset and sliding window), exactly the computation of
a solo step, so no padding, masks or cache copies are needed and a sequence may join or leave between steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import mlx.core as mx

from mlx_harmony_tui.model.gpt_oss import _attend


def _attention(attn: Any, x: mx.array, caches: Sequence[Any]) -> mx.array:
    """``attn`` (a model Attention) for a (B, 1, H) batch, row i over ``caches[i]``."""
    B = x.shape[0]
    q, k, v = attn.project(x)
    sinks = attn.sinks.astype(q.dtype)
    outs = []
    for i, cache in enumerate(caches):
        rope = partial(
            mx.fast.rope,
            dims=attn.head_dim,
            traditional=False,
            base=None,
            scale=1.0,
            offset=cache.offset,
            freqs=attn._freqs,
        )
        ki, vi = cache.update_and_fetch(rope(k[i : i + 1]), v[i : i + 1])
        quant = cache.quant if cache.quantized else None
        if attn.window is not None and quant is None and ki.shape[2] > attn.window:
            ki, vi = ki[..., -attn.window :, :], vi[..., -attn.window :, :]
        outs.append(
            _attend(
                rope(q[i : i + 1]), ki, vi, attn.scale, None, sinks, attn.bounded_scores, attn.window, quant
            )
        )
    out = mx.concatenate(outs, axis=0) if B > 1 else outs[0]
    return attn.o_proj(out.transpose(0, 2, 1, 3).reshape(B, 1, -1))


def decode_batch(model: Any, tokens: mx.array, caches: Sequence[Sequence[Any]]) -> mx.array:
    """Logits (B, vocab) for ``tokens`` (B,) int32, row i appended to the per-layer caches ``caches[i]``.
    An optimized model's compiled decoder does it (model/fast.py ``step_rows``); else the eager layers."""
    if getattr(model, "decoder", None) is not None:
        return model.decoder.step_rows(tokens.reshape(-1, 1), caches)[:, -1, :]
    x = model.model.embed_tokens(tokens.reshape(-1, 1))
    for li, layer in enumerate(model.layers):
        x = x + _attention(layer.self_attn, layer.input_layernorm(x), [c[li] for c in caches])
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    x = model.model.norm(x)
    if model.config.tie_word_embeddings:
        return model.model.embed_tokens.as_linear(x)[:, -1, :]
    return model.lm_head(x)[:, -1, :]

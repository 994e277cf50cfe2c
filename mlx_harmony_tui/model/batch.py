"""One decode step for several sequences at once, each over its own per-layer caches.

Continuous batching (engine/batch.py) decodes the requests of many users together. Everything but attention
is shared: the embedding, the QKV and output projections, the MoE (router, expert matmuls) and the LM head run
once on a (B, 1, H) batch, so the weights are read once per step instead of once per sequence. Attention runs
per row over that row's own cache (its own length, RoPE offset and sliding window), exactly the computation of
a solo step, so no padding or masks are needed and a sequence may join or leave between steps; rows holding
the same number of keys (a sliding layer past its window) share one attention call (``attend_rows``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import mlx.core as mx

from mlx_harmony_tui.model.gpt_oss import _attend


def attend_rows(
    qs: Sequence[mx.array],
    ks: Sequence[mx.array],
    vs: Sequence[mx.array],
    caches: Sequence[Any],
    window: int | None,
    attend: Callable[[mx.array, Any, Any, Any], mx.array],
) -> mx.array:
    """Append row b's (1, kv_heads, 1, D) ``ks[b]``/``vs[b]`` to ``caches[b]`` and attend ``qs[b]`` over
    that cache: (B, heads, 1, D). Rows whose caches hold the same number of keys (every row of a sliding
    layer once past its window, rows of equal length) are attended in one call over their stacked keys;
    each row's arithmetic is the same as alone, with one call instead of one per row (the attention of one
    row is ~20 operations, most of the work a row adds to a step). ``attend(q, keys, values, cache)``."""
    fetched = [c.update_and_fetch(k, v, keep=window) for c, k, v in zip(caches, ks, vs, strict=True)]
    groups: dict[object, list[int]] = {}
    for b, (c, (keys, _)) in enumerate(zip(caches, fetched, strict=True)):
        groups.setdefault(("row", b) if c.quantized else keys.shape[2], []).append(b)
    outs, order = [], []
    for rows in groups.values():
        if len(rows) == 1:
            b = rows[0]
            outs.append(attend(qs[b], *fetched[b], caches[b]))
        else:
            cat = [
                mx.concatenate([part[b] for b in rows], axis=0) for part in (qs, *zip(*fetched, strict=True))
            ]
            outs.append(attend(*cat, caches[rows[0]]))
        order += rows
    out = mx.concatenate(outs, axis=0) if len(outs) > 1 else outs[0]
    if order != sorted(order):
        out = out[mx.array([order.index(b) for b in range(len(order))], dtype=mx.int32)]
    return out


def _attention(attn: Any, x: mx.array, caches: Sequence[Any]) -> mx.array:
    """``attn`` (a model Attention) for a (B, 1, H) batch, row i over ``caches[i]``."""
    B = x.shape[0]
    q, k, v = attn.project(x)
    sinks = attn.sinks.astype(q.dtype)
    qs, ks = [], []
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
        qs.append(rope(q[i : i + 1]))
        ks.append(rope(k[i : i + 1]))

    def attend(qg: mx.array, kg: Any, vg: Any, cache: Any) -> mx.array:
        quant = cache.quant if cache.quantized else None
        return _attend(qg, kg, vg, attn.scale, None, sinks, attn.bounded_scores, attn.window, quant)

    out = attend_rows(qs, ks, [v[i : i + 1] for i in range(B)], caches, attn.window, attend)
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

"""Decode-speed transforms of a loaded GptOss: fused QKV projection and a compiled one-token step.

Eager MLX pays a fixed host cost per operation (~16 us on an H100, see docs/benchmarks.md), and a decoded
token of gpt-oss-20b is ~1,300 small operations, so mlx-lm's decode is bound by that overhead, not by memory
bandwidth. Here a token costs one compiled graph per layer boundary (o_proj, residuals, norms, router, top-k,
the two expert matmuls, SwiGLU and the next layer's QKV + RoPE, fused by ``mx.compile``) plus a few eager
ops per layer for the KV-cache write and the attention itself, whose key length changes every token.
All of that is backend-neutral; on CUDA the MXFP4 MoE inside the graph (with its RMSNorm) is
model/cuda_moe.py's three kernels and the 8-bit QKV (with its norm and RoPE), o_proj and LM head are
model/cuda_matvec.py's, and a full layer's attention at long contexts model/cuda_attention.py's split-K
kernel (falling back to MLX's own kernels if they cannot be built). There decode is bound
by the host's cost per operation (~3 us each when evaluated, docs/benchmarks.md), so the kernels take and
return the shapes their neighbours use: no reshape, transpose or slice operations between them.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from mlx_harmony_tui.model.cache import KVCache
from mlx_harmony_tui.model.kv_quant import quantized_attention


def _fuse_linears(mods: list[Any]) -> nn.Module:
    """One Linear/QuantizedLinear whose output is the concatenation of ``mods``' outputs."""
    first = mods[0]
    cat = lambda name: mx.concatenate([getattr(m, name) for m in mods], axis=0)  # noqa: E731
    has_bias = "bias" in first
    if isinstance(first, nn.QuantizedLinear):
        fused = nn.QuantizedLinear.__new__(nn.QuantizedLinear)
        nn.Module.__init__(fused)
        fused.group_size, fused.bits = first.group_size, first.bits
        fused.mode = getattr(first, "mode", "affine")
        fused.weight, fused.scales = cat("weight"), cat("scales")
        if first.get("biases") is not None:
            fused.biases = cat("biases")
        if has_bias:
            fused.bias = cat("bias")
        fused.freeze()
        return fused
    out_dims = sum(m.weight.shape[0] for m in mods)
    fused = nn.Linear(first.weight.shape[1], out_dims, bias=has_bias)
    fused.weight = cat("weight")
    if has_bias:
        fused.bias = cat("bias")
    return fused


def fuse_qkv(model: Any) -> None:
    """Replace q/k/v projections by one matmul per layer (3 kernels -> 1), freeing the separate copies."""
    for layer in model.layers:
        attn = layer.self_attn
        if "qkv_proj" in attn:
            continue
        attn.qkv_proj = _fuse_linears([attn.q_proj, attn.k_proj, attn.v_proj])
        attn._qkv_split = (attn.n_heads * attn.head_dim, (attn.n_heads + attn.n_kv) * attn.head_dim)
        del attn.q_proj, attn.k_proj, attn.v_proj
        layer.mlp.experts.fuse_biases()
    mx.eval(model.parameters(), [layer.mlp.experts._biases for layer in model.layers])


def _fused_moe(layers: list[Any]) -> list[Any] | None:
    """The CUDA kernels of model/cuda_moe.py for every layer's one-token MoE, where they apply (CUDA, MXFP4
    experts); else None: the portable path."""
    from mlx_harmony_tui.model import cuda_moe

    if not cuda_moe.cuda_available():
        return None
    if not all(cuda_moe.supports(layer.mlp) for layer in layers):
        return None
    return [cuda_moe.FusedDecodeMoE(layer.mlp) for layer in layers]


def _matvecs(model: Any) -> dict[int, Any]:
    """model/cuda_matvec.py's kernel for each one-token QKV, o_proj and LM-head matmul it applies to (CUDA,
    affine 8-bit), keyed by the module's id; empty elsewhere or with MHT_CUDA_MATVEC=0."""
    from mlx_harmony_tui.model import cuda_matvec, cuda_moe

    if os.environ.get("MHT_CUDA_MATVEC", "1") == "0" or not cuda_moe.cuda_available():
        return {}
    mods = [m for layer in model.layers for m in (layer.self_attn.get("qkv_proj"), layer.self_attn.o_proj)]
    if not model.config.tie_word_embeddings:
        mods.append(model.lm_head)
    return {id(m): cuda_matvec.DecodeMatvec(m) for m in mods if m is not None and cuda_matvec.supports(m)}


def _flash_decode() -> Any:
    """model/cuda_attention.py (the module) on CUDA unless MHT_FLASH_DECODE=0; else None."""
    from mlx_harmony_tui.model import cuda_attention, cuda_moe

    if os.environ.get("MHT_FLASH_DECODE", "1") == "0" or not cuda_moe.cuda_available():
        return None
    return cuda_attention


class CompiledDecoder:
    """The one-token forward of ``model`` as per-layer-boundary compiled graphs. Same math as the eager
    path (the tests compare greedy outputs token for token)."""

    def __init__(self, model: Any, fused_moe: bool | None = None, matvec: bool = True, flash: bool = True) -> None:
        """``fused_moe``: None = the CUDA MoE kernels where they apply unless MHT_FUSED_MOE=0; True = them
        or a ValueError; False = the portable MoE. ``matvec``: the CUDA 8-bit matvec where it applies
        (unless MHT_CUDA_MATVEC=0), or MLX's quantized_matmul. ``flash``: model/cuda_attention.py's
        split-K kernel for full layers from ``flash_min`` cached positions on (CUDA, unless
        MHT_FLASH_DECODE=0; MHT_FLASH_DECODE_MIN sets the length), else MLX's sdpa."""
        self.model = model
        layers = model.layers
        self.n = len(layers)
        want = os.environ.get("MHT_FUSED_MOE", "1") != "0" if fused_moe is None else fused_moe
        self.moe = _fused_moe(layers) if want else None
        if fused_moe and self.moe is None:
            raise ValueError("the fused MoE needs CUDA and MXFP4 experts")
        self.matvec = _matvecs(model) if matvec else {}
        self.flash = _flash_decode() if flash else None
        self.flash_min = int(os.environ.get("MHT_FLASH_DECODE_MIN", "0")) or (
            self.flash.MIN_KEYS if self.flash is not None else 0
        )
        self._scales = [mx.array([layer.self_attn.scale], dtype=mx.float32) for layer in layers]
        self._segments = [mx.compile(self._make_segment(i)) for i in range(self.n + 1)]
        self._sinks: dict[mx.Dtype, list[mx.array]] = {}  # per activation dtype: no per-token astype

    def warm_up(self) -> None:
        """Trace the compiled graphs now (on a scratch cache), not during the user's first token. If the
        CUDA MoE kernels fail to build or run here (a driver or dtype they were not tried with), warn and
        continue on the portable MoE rather than fail the model load."""
        try:
            mx.eval(self(mx.zeros((1, 1), dtype=mx.int32), self.model.make_cache()))
        except Exception as e:
            if self.moe is None and not self.matvec:
                raise
            warnings.warn(f"CUDA decode kernels unavailable, using MLX's: {e}", RuntimeWarning, stacklevel=2)
            self.moe, self.matvec = None, {}
            self._segments = [mx.compile(self._make_segment(i)) for i in range(self.n + 1)]
            mx.eval(self(mx.zeros((1, 1), dtype=mx.int32), self.model.make_cache()))
        if self.flash is not None:
            try:  # build the kernel now (it runs only once a context is long)
                attn = self.model.layers[0].self_attn
                kv = mx.zeros((1, attn.n_kv, 256, attn.head_dim), dtype=self._sinks_dtype())
                q = mx.zeros((1, attn.n_heads, 1, attn.head_dim), dtype=kv.dtype)
                n = mx.array([256, 256], dtype=mx.int32)
                mx.eval(self.flash.decode_attention(q, kv, kv, n, 256, self._scales[0], q[0, :, 0, 0], tail=(kv, kv)))
            except Exception as e:
                warnings.warn(f"CUDA decode attention unavailable, using MLX's: {e}", RuntimeWarning, stacklevel=2)
                self.flash = None

    def _sinks_dtype(self) -> mx.Dtype:
        return next(iter(self._sinks)) if self._sinks else mx.float32

    def _flash_fits(self, q: mx.array) -> bool:
        attn = self.model.layers[0].self_attn
        assert self.flash is not None
        return bool(self.flash.supports(attn.n_heads, attn.n_kv, attn.head_dim, q.dtype))

    def _linear(self, mod: Any, x: mx.array, norm: Any = None, residual: mx.array | None = None) -> mx.array:
        """``residual + mod(norm(x))`` (each part optional), as one CUDA matvec kernel where it applies to a
        one-token batch."""
        mv = self.matvec.get(id(mod))
        if mv is not None and x.size == mv.d:
            return mv(x, norm=norm, residual=residual)
        y = mod(norm(x) if norm is not None else x)
        return y if residual is None else residual + y

    def _qkv_rope(self, i: int, x: mx.array, offset: mx.array) -> tuple[mx.array, mx.array, mx.array]:
        layer = self.model.layers[i]
        attn = layer.self_attn
        B = x.shape[0]
        rope = dict(dims=attn.head_dim, traditional=False, base=None, scale=1.0, offset=offset, freqs=attn._freqs)
        nq, nkv = attn.n_heads, attn.n_kv
        if "qkv_proj" in attn:
            mv = self.matvec.get(id(attn.qkv_proj))
            if mv is not None and B == 1 and x.size == mv.d and mv.fits_rope(attn.head_dim):
                # norm, QKV and RoPE in one CUDA kernel, q/k/v written as the attention takes them
                return mv.qkv_rope(x, layer.input_layernorm, attn._freqs, offset, nq, nkv, attn.head_dim)
            # One RoPE over all q, k and v heads (one kernel instead of two; v's rotated copy is unused).
            y = self._linear(attn.qkv_proj, x, norm=layer.input_layernorm)
            y = y.reshape(B, 1, nq + 2 * nkv, -1).transpose(0, 2, 1, 3)
            r = mx.fast.rope(y, **rope)
            return r[:, :nq], r[:, nq : nq + nkv], y[:, nq + nkv :]
        h = layer.input_layernorm(x)
        q, k, v = attn.q_proj(h), attn.k_proj(h), attn.v_proj(h)
        q = q.reshape(B, 1, nq, -1).transpose(0, 2, 1, 3)
        k = k.reshape(B, 1, nkv, -1).transpose(0, 2, 1, 3)
        v = v.reshape(B, 1, nkv, -1).transpose(0, 2, 1, 3)
        return mx.fast.rope(q, **rope), mx.fast.rope(k, **rope), v

    def _finish_layer(self, i: int, x: mx.array, attn_out: mx.array) -> mx.array:
        layer = self.model.layers[i]
        B = x.shape[0]
        o_proj = layer.self_attn.o_proj
        if id(o_proj) in self.matvec and B == 1:
            # One token's (1, heads, 1, head_dim) output is already in o_proj's input order: no reshape ops.
            x = self._linear(o_proj, attn_out, residual=x)
        else:
            x = self._linear(o_proj, attn_out.transpose(0, 2, 1, 3).reshape(B, 1, -1), residual=x)
        if self.moe is not None and B == 1:
            return self.moe[i](x, layer.post_attention_layernorm)
        return x + layer.mlp(layer.post_attention_layernorm(x))

    def _make_segment(self, i: int):
        """Segment i: finish layer i-1 (if any), then layer i's norm + QKV + RoPE (or the LM head at the end)."""
        model = self.model

        if i == 0:

            def first(tokens: mx.array, offset: mx.array):
                x = model.model.embed_tokens(tokens)
                return (x, *self._qkv_rope(0, x, offset))

            return first
        if i == self.n:

            def last(x: mx.array, attn_out: mx.array):
                x = self._finish_layer(i - 1, x, attn_out)
                if model.config.tie_word_embeddings:
                    return model.model.embed_tokens.as_linear(model.model.norm(x))
                return self._linear(model.lm_head, x, norm=model.model.norm)

            return last

        def middle(x: mx.array, attn_out: mx.array, offset: mx.array):
            x = self._finish_layer(i - 1, x, attn_out)
            return (x, *self._qkv_rope(i, x, offset))

        return middle

    def __call__(self, tokens: mx.array, cache: list[KVCache]) -> mx.array:
        """tokens (B, 1) -> logits (B, 1, vocab); appends this position to every cache."""
        offset = mx.array(cache[0].offset, dtype=mx.int32)
        x, q, k, v = self._segments[0](tokens, offset)
        sinks = self._sinks.get(q.dtype)
        if sinks is None:
            sinks = self._sinks[q.dtype] = [layer.self_attn.sinks.astype(q.dtype) for layer in self.model.layers]
            mx.eval(sinks)
        flash = self.flash is not None and q.shape[0] == 1 and self._flash_fits(q)
        n_arr = None
        for i, (layer, c) in enumerate(zip(self.model.layers, cache, strict=True)):
            attn = layer.self_attn
            if flash and attn.window is None and not c.quantized and c.offset + 1 >= self.flash_min:
                c.use_tail = True  # (KVCache: no copy of the whole buffer per token)
                c.update(k, v)  # the kernel reads the buffers in place, up to the valid length given as data
                if n_arr is None:  # every full layer holds the same positions
                    n_arr = mx.array([c.offset, c.offset - c.tail_n], dtype=mx.int32)
                assert self.flash is not None and c.keys is not None and c.values is not None
                tail = (c.tail_keys, c.tail_values) if c.tail_n else (c.keys, c.values)
                out = self.flash.decode_attention(q, c.keys, c.values, n_arr, c.offset, self._scales[i], sinks[i],
                                                  tail=tail)
            else:
                keys, values = c.update_and_fetch(k, v, keep=attn.window)
                if c.quantized:
                    out = quantized_attention(q, keys, values, attn.scale, None, sinks[i], *c.quant)
                else:
                    out = mx.fast.scaled_dot_product_attention(q, keys, values, scale=attn.scale, sinks=sinks[i])
            if i + 1 < self.n:
                x, q, k, v = self._segments[i + 1](x, out, offset)
            else:
                return self._segments[self.n](x, out)
        raise AssertionError("unreachable")

    def step_rows(self, tokens: mx.array, caches: Sequence[Sequence[KVCache]]) -> mx.array:
        """Continuous batching (engine/batch.py): tokens (B, 1), row b over its own ``caches[b]`` -> logits
        (B, 1, vocab). The compiled segments (projections, MoE, LM head) run once for the batch, with one
        RoPE offset per row; attention runs per row over that row's cache (its own length and window), in
        one call for rows holding as many keys (model/batch.py ``attend_rows``)."""
        from mlx_harmony_tui.model.batch import attend_rows

        offset = mx.array([c[0].offset for c in caches], dtype=mx.int32)
        x, q, k, v = self._segments[0](tokens, offset)
        sinks = self._sinks.get(q.dtype)
        if sinks is None:
            sinks = self._sinks[q.dtype] = [layer.self_attn.sinks.astype(q.dtype) for layer in self.model.layers]
        B = len(caches)
        for i, layer in enumerate(self.model.layers):
            attn = layer.self_attn

            def attend(qg: mx.array, kg: Any, vg: Any, c: KVCache, i: int = i, attn: Any = attn) -> mx.array:
                if c.quantized:
                    return quantized_attention(qg, kg, vg, attn.scale, None, sinks[i], *c.quant)
                return mx.fast.scaled_dot_product_attention(qg, kg, vg, scale=attn.scale, sinks=sinks[i])

            qs, ks, vs = (mx.split(a, B, axis=0) for a in (q, k, v))  # one operation each, not one per row
            out = attend_rows(qs, ks, vs, [row[i] for row in caches], attn.window, attend)
            if i + 1 < self.n:
                x, q, k, v = self._segments[i + 1](x, out, offset)
            else:
                return self._segments[self.n](x, out)
        raise AssertionError("unreachable")

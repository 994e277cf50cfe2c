"""GPT-OSS in plain MLX: sink attention (sliding + full), YaRN RoPE, top-k MoE with clamped SwiGLU.

Written for decode speed: gate and up are one fused matrix per expert (one gather_(q)mm gives [gate | up]),
masks are built once per forward, the YaRN attention factor is folded into the softmax scale, and nothing in
the forward pass syncs with the host.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from functools import partial
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from mlx_harmony_tui.model.cache import DEFAULT_MARGIN, KVCache, SlidingKVCache
from mlx_harmony_tui.model.config import FULL, SLIDING, ModelConfig, QuantSpec
from mlx_harmony_tui.model.cuda_moe import cuda_available

Mask = mx.array | str | None


def parameter_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters (quantized arrays at their packed size)."""
    from mlx.utils import tree_flatten

    return sum(int(a.nbytes) for _, a in tree_flatten(module.parameters()))


def rope_frequencies(config: ModelConfig) -> mx.array:
    """Per-pair wavelengths for mx.fast.rope (1 / inv_freq), YaRN-blended as in HF gpt-oss."""
    dim = config.head_dim
    base = config.rope_theta
    pos_freqs = base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    inv_freq = 1.0 / pos_freqs
    rs = config.rope_scaling or {}
    if rs.get("rope_type", rs.get("type")) == "yarn" and float(rs.get("factor", 1.0)) != 1.0:
        factor = float(rs["factor"])
        beta_fast = float(rs.get("beta_fast") or 32.0)
        beta_slow = float(rs.get("beta_slow") or 1.0)
        orig = float(rs.get("original_max_position_embeddings", 4096))

        def correction_dim(rotations: float) -> float:
            return dim * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(base))

        low, high = correction_dim(beta_fast), correction_dim(beta_slow)
        if rs.get("truncate", True):
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, dim - 1)
        if low == high:
            high += 0.001
        ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
        extrapolation = 1.0 - ramp
        inv_freq = (inv_freq / factor) * (1.0 - extrapolation) + inv_freq * extrapolation
    return mx.array((1.0 / inv_freq).astype(np.float32))


class Attention(nn.Module):
    """Grouped-query attention with biases and one learned sink logit per head."""

    bounded_scores = False  # query-blocked prefill attention (see _attend); set by GptOss.optimize
    cpu_scores_budget = 0  # scores bytes per CPU query block (0: CPU_SCORES_BUDGET); set by GptOss.optimize

    def __init__(self, config: ModelConfig, sliding: bool, freqs: mx.array) -> None:
        super().__init__()
        self.n_heads = config.num_attention_heads
        self.n_kv = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.window = config.sliding_window if sliding else None
        h, d = config.hidden_size, config.head_dim
        self.q_proj = nn.Linear(h, self.n_heads * d, bias=True)
        self.k_proj = nn.Linear(h, self.n_kv * d, bias=True)
        self.v_proj = nn.Linear(h, self.n_kv * d, bias=True)
        self.o_proj = nn.Linear(self.n_heads * d, h, bias=True)
        self.sinks = mx.zeros((self.n_heads,))
        # HF multiplies cos/sin by the YaRN factor, i.e. both q and k: fold factor^2 into the softmax scale.
        self.scale = d**-0.5 * config.attention_scale_factor**2
        self._freqs = freqs  # underscore: not a parameter

    def project(self, x: mx.array) -> tuple[mx.array, mx.array, mx.array]:
        """q, k, v of ``x`` (B, L, H) as (B, heads, L, head_dim), before RoPE."""
        B, L, _ = x.shape
        if "qkv_proj" in self:  # fused by model/fast.py
            y = self.qkv_proj(x)
            a, b = self._qkv_split
            q, k, v = y[..., :a], y[..., a:b], y[..., b:]
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = q.reshape(B, L, self.n_heads, -1).transpose(0, 2, 1, 3)
        k = k.reshape(B, L, self.n_kv, -1).transpose(0, 2, 1, 3)
        v = v.reshape(B, L, self.n_kv, -1).transpose(0, 2, 1, 3)
        return q, k, v

    def __call__(self, x: mx.array, mask: Mask, cache: KVCache | None, offset: int) -> mx.array:
        B, L, _ = x.shape
        q, k, v = self.project(x)
        rope = partial(
            mx.fast.rope, dims=self.head_dim, traditional=False, base=None, scale=1.0, offset=offset, freqs=self._freqs
        )
        q, k = rope(q), rope(k)
        quant = None
        if cache is not None:
            k, v = cache.update_and_fetch(k, v)
            if cache.quantized:  # model/kv_quant.py: full layers only
                quant = cache.quant
        if self.window is not None:
            keep = self.window - 1 + L
            if k.shape[2] > keep:
                k, v = k[..., -keep:, :], v[..., -keep:, :]
        out = _attend(q, k, v, self.scale, mask, self.sinks.astype(q.dtype), self.bounded_scores, self.window, quant,
                      self.cpu_scores_budget)
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(B, L, -1))


# Bytes of attention scores one unfused attention call may materialize (see _attend).
SCORES_BUDGET = 1 << 26
# Query rows per block where the CPU computes attention in blocks (see _attend).
QUERY_BLOCK = 64
# Bytes of float32 scores one query block may hold on the CPU, at least (see _attend): a chunk's attention
# then peaks at ~6x this above its inputs. GptOss.optimize raises it to 1/128 of the weights.
CPU_SCORES_BUDGET = 1 << 20


def _fused_attention(dtype: mx.Dtype) -> bool:
    """Whether this backend's multi-query sdpa is one fused kernel (no (L, T) score matrix in memory):
    Metal's full-attention kernel, cuDNN on CUDA for half precision. CPU and float32 on CUDA fall back to
    matmul + softmax + matmul."""
    if mx.metal.is_available():
        return True
    return cuda_available() and dtype in (mx.float16, mx.bfloat16)


def _cpu_backend() -> bool:
    return not mx.metal.is_available() and not cuda_available()


_LOG2E = 1 / math.log(2)


def cpu_attention(q: mx.array, k: mx.array, v: mx.array, *, scale: float, mask: Mask = None,
                  sinks: mx.array | None = None) -> mx.array:
    """``mx.fast.scaled_dot_product_attention``'s result for several queries on the CPU, with less work than
    its unfused fallback there: base-2 exponentials (MLX's CPU ``exp`` takes ~2.5x as long as ``2 ** x``), the
    causal mask applied to the last L key columns only (the earlier keys are visible to every query), and
    the sink logit folded into the denominator instead of a concatenated score column. In float32.
    40 queries over 1,375 keys of the tiny model: 4.8 -> 3.7 ms a call (docs/benchmarks.md, issue 23)."""
    B, H, L, D = q.shape
    hkv, T = k.shape[1], k.shape[2]
    rep = H // hkv
    qs = (q.astype(mx.float32) * (scale * _LOG2E)).reshape(B, hkv, rep, L, D)
    s = qs @ mx.expand_dims(k, 2).swapaxes(-1, -2).astype(mx.float32)  # (B, hkv, rep, L, T), log2 units
    if isinstance(mask, str):
        if L > 1:
            tri = mx.arange(L)[:, None] >= mx.arange(L)[None]
            s = mx.concatenate([s[..., : T - L], mx.where(tri, s[..., T - L :], -mx.inf)], axis=-1)
    elif mask is not None:
        s = mx.where(mask, s, -mx.inf)
    m = s.max(axis=-1, keepdims=True)
    if sinks is not None:
        sink = (sinks.astype(mx.float32) * _LOG2E).reshape(1, hkv, rep, 1, 1)
        m = mx.maximum(m, sink)
    e = mx.power(2.0, s - m)
    den = e.sum(axis=-1, keepdims=True)
    if sinks is not None:
        den = den + mx.power(2.0, sink - m)
    out = (e @ mx.expand_dims(v, 2).astype(mx.float32)) / den
    return out.reshape(B, H, L, -1).astype(q.dtype)


def _attend(q: mx.array, k: Any, v: Any, scale: float, mask: Mask, sinks: mx.array,
            bounded: bool = False, window: int | None = None, quant: tuple[int, int, str] | None = None,
            cpu_budget: int = 0) -> mx.array:
    """sdpa, or (when `bounded`, i.e. inference, on a backend that materializes the scores) the same in
    query blocks, each over only the keys its queries can see.

    Memory: a 512-token chunk over 4096 keys with 64 heads is 0.5 GB of float32 scores, plus probabilities
    and mask, per layer: that set the peak memory of a long prefill on CUDA. There, blocks of at most
    SCORES_BUDGET bytes, each evaluated before the next is built (blocks only queued together stay in memory
    together: scripts/lab/probe_memory.py); the eval also makes this unusable under mx.grad/compile.
    On the CPU, blocks of at most `cpu_budget` (default CPU_SCORES_BUDGET) bytes of float32 scores, each
    made to depend on the previous one's output (mx.depends) instead of evaluated: MLX schedules a graph
    breadth-first, so independent blocks ran step by step side by side and all their scores were alive at
    once (a 512-token chunk over 32,768 keys of the tiny model: +96 MiB; chained 2-row blocks: +6 MiB, at
    no cost in speed, where an eval per block halved it: docs/benchmarks.md).
    Work (CPU, where it was measured): the unfused path computes every masked score too, and its exp is
    most of a prefill there; blocks of at most QUERY_BLOCK rows stop at the diagonal (causal) and start at
    the window (sliding layers), about half the scores of a 512-token chunk on full layers and a quarter on
    sliding ones.
    `quant` (bits, group size, mode): k and v are (packed, scales[, biases]) of a quantized cache
    (model/kv_quant.py), always attended to unfused, with float32 scores."""
    B, H, L, _ = q.shape
    if quant is not None:
        from mlx_harmony_tui.model.kv_quant import quantized_attention

        T = k[0].shape[2]
        per_row = B * H * T * 4
        unfused = L > 1

        def sdpa(q: mx.array, k: Any, v: Any, mask: Mask) -> mx.array:
            return quantized_attention(q, k, v, scale, mask, sinks, *quant)

        def cut(a: Any, lo: int, hi: int) -> Any:
            return tuple(x[:, :, lo:hi] for x in a)
    else:
        T = k.shape[2]
        per_row = B * H * T * q.dtype.size
        unfused = bounded and L > 1 and not _fused_attention(q.dtype)
        attention = cpu_attention if unfused and _cpu_backend() else mx.fast.scaled_dot_product_attention

        def sdpa(q: mx.array, k: Any, v: Any, mask: Mask) -> mx.array:
            return attention(q, k, v, scale=scale, mask=mask, sinks=sinks)

        def cut(a: Any, lo: int, hi: int) -> Any:
            return a[:, :, lo:hi]
    cpu = unfused and _cpu_backend()
    over_budget = unfused and L * per_row > SCORES_BUDGET
    rows = max(16, SCORES_BUDGET // per_row) if over_budget else L
    if cpu:  # float32 scores there
        rows = max(1, min(rows, QUERY_BLOCK, (cpu_budget or CPU_SCORES_BUDGET) // (B * H * T * 4)))
    if rows >= L:
        return sdpa(q, k, v, mask)
    outs: list[mx.array] = []
    for s in range(0, L, rows):
        e = min(L, s + rows)
        if mask is None:
            lo, hi, part_mask = 0, T, None
        elif isinstance(mask, str):  # "causal", aligned to the end of the keys: rows s..e see keys[:hi]
            lo, hi, part_mask = 0, T - L + e, mask
        else:  # the sliding-window mask: rows s..e see nothing before the first row's window
            hi = T - L + e
            lo = max(0, hi - (e - s) - window + 1) if window is not None else 0
            part_mask = mask[..., s:e, lo:hi]
        qs = q[:, :, s:e]
        if cpu and outs:
            qs = mx.depends(qs, outs[-1])
        part = sdpa(qs, cut(k, lo, hi), cut(v, lo, hi), part_mask)
        if over_budget and not cpu:
            mx.eval(part)
        outs.append(part)
    return mx.concatenate(outs, axis=2)


class ExpertLinear(nn.Module):
    """Per-expert linear layers with bias, applied to gathered rows by expert index.

    Float: `weight` is (E, in, out) so gather_mm needs no transpose. Quantized: `weight` is packed
    (E, out, in * bits / 32) with `scales` (and `biases` for affine), as mx.quantize lays it out.
    """

    def __init__(self, num_experts: int, in_dims: int, out_dims: int, quant: QuantSpec | None = None) -> None:
        super().__init__()
        self.quant = quant
        if quant is None:
            self.weight = mx.zeros((num_experts, in_dims, out_dims))
        else:
            g, b = quant.group_size, quant.bits
            self.weight = mx.zeros((num_experts, out_dims, in_dims * b // 32), dtype=mx.uint32)
            scale_dtype = mx.float32 if quant.mode == "affine" else mx.uint8
            self.scales = mx.zeros((num_experts, out_dims, in_dims // g), dtype=scale_dtype)
            if quant.mode == "affine":
                self.biases = mx.zeros((num_experts, out_dims, in_dims // g))
        self.bias = mx.zeros((num_experts, out_dims))

    def __call__(self, x: mx.array, indices: mx.array, sorted_indices: bool) -> mx.array:
        return self.matmul(x, indices, sorted_indices) + mx.expand_dims(self.bias[indices], -2)

    def matmul(self, x: mx.array, indices: mx.array, sorted_indices: bool) -> mx.array:
        """The gathered matmul without the bias (see Experts.fuse_biases)."""
        q = self.quant
        if q is None:
            # The CPU backend's gather_mm is float32-only, so float experts may be kept in float32.
            w = self.weight
            y = mx.gather_mm(x.astype(w.dtype), w, rhs_indices=indices, sorted_indices=sorted_indices)
            y = y.astype(x.dtype)
        else:
            y = mx.gather_qmm(
                x,
                self.weight,
                self.scales,
                self.get("biases"),
                rhs_indices=indices,
                transpose=True,
                group_size=q.group_size,
                bits=q.bits,
                mode=q.mode,
                sorted_indices=sorted_indices,
            )
        return y

    def one(self, x: mx.array, e: int) -> mx.array:
        """Rows x (n, in) through expert e alone: a plain (quantized) matmul, no gather."""
        q = self.quant
        if q is None:
            w = self.weight[e]
            return (x.astype(w.dtype) @ w).astype(x.dtype) + self.bias[e]
        biases = self.get("biases")
        y = mx.quantized_matmul(
            x, self.weight[e], self.scales[e], None if biases is None else biases[e],
            transpose=True, group_size=q.group_size, bits=q.bits, mode=q.mode,
        )
        return y + self.bias[e]


@partial(mx.compile, shapeless=True)
def _swiglu_halves(gate: mx.array, up: mx.array, alpha: mx.array, limit: mx.array) -> mx.array:
    """GPT-OSS SwiGLU: gate clamped above, up clamped both sides, +1 on up."""
    gate = mx.minimum(gate, limit)
    up = mx.clip(up, -limit, limit)
    return (up + 1) * (gate * mx.sigmoid(alpha * gate))


def _swiglu(h: mx.array, alpha: mx.array, limit: mx.array) -> mx.array:
    """SwiGLU on the fused [gate | up] output of one gather_(q)mm."""
    half = h.shape[-1] // 2
    return _swiglu_halves(h[..., :half], h[..., half:], alpha.astype(h.dtype), limit.astype(h.dtype))


def _row_bucket(n: int) -> int:
    """Rows padded to a power of two from 64 up to 256, then to a multiple of 256. On CUDA each new
    quantized-matmul kernel variant costs a ~28 s JIT compile the first time (measured on an H100,
    scripts/lab/probe_shapes.py); at least 64 rows keeps every call on the large-M variant."""
    return max(64, 1 << (n - 1).bit_length()) if n <= 256 else -(-n // 256) * 256


class Experts(nn.Module):
    # From 16 rows per expert on average (128 tokens of gpt-oss-20b): one matmul per expert over its sorted
    # rows instead of one gather_(q)mm. Measured on an H100 (CUDA, MXFP4 experts, 20b shapes, one MoE layer,
    # scripts/lab/probe_memory.py): 12.0 vs 52.6 ms at 512 tokens, 9.8 vs 13.9 ms at 128, but 10.2 vs 5.0 ms at
    # 41 and 6.8 vs 1.4 ms at 8 (every expert's matmul runs on at least 64 padded rows). It costs one host
    # sync per layer and chunk (the per-expert counts). Off on Metal and CPU, where gather_qmm on sorted rows
    # is the tuned path and this was not measured.
    per_expert_prefill: bool = cuda_available()
    # Evaluate the per-expert path's outputs every this many experts (0: one graph per layer). Probe for a
    # long prefill's peak on CUDA, where a large matmul's temporaries live until its batch of work ends
    # (MHT_MOE_EVAL_EVERY; docs/benchmarks.md).
    eval_every: int = int(os.environ.get("MHT_MOE_EVAL_EVERY", "0"))

    def __init__(self, config: ModelConfig, gate_up_quant: QuantSpec | None, down_quant: QuantSpec | None) -> None:
        super().__init__()
        e, h, i = config.num_local_experts, config.hidden_size, config.intermediate_size
        self.gate_up = ExpertLinear(e, h, 2 * i, gate_up_quant)
        self.down = ExpertLinear(e, i, h, down_quant)
        self._alpha = mx.array(config.swiglu_alpha)
        self._limit = mx.array(config.swiglu_limit)

    def __call__(self, x: mx.array, indices: mx.array) -> mx.array:
        """x (N, H), indices (N, k) -> (N, k, H) expert outputs."""
        N, H = x.shape
        k = indices.shape[-1]
        if self.per_expert_prefill and (indices.size >= 16 * self.gate_up.bias.shape[0]
                                        or (indices.size >= 64 and self.gate_up.quant is None)):
            # Float experts on CUDA always take this path for prefill: MLX 0.32.4's CUDA gather_mm over
            # sorted rows gave wrong logits for the tiny float model (argmax agreeing with the CPU on 1.5% of
            # positions; this path: 100%; scripts/lab/check_cuda_prefill.py).
            return self._per_expert(x, indices)
        if indices.size >= 64:
            # Many tokens (prefill): sort rows by expert so each expert's weights are read once.
            flat = indices.flatten()
            order = mx.argsort(flat)
            inverse = mx.argsort(order)
            xs = x[order // k][:, None, :]  # (N*k, 1, H)
            ids = flat[order]
            h = self.gate_up(xs, ids, True)
            y = self.down(_swiglu(h, self._alpha, self._limit), ids, True)
            return y[inverse].reshape(N, k, H)
        xs = x[:, None, None, :]  # (N, 1, 1, H) broadcast against (N, k)
        fused = self.get("_biases")
        if fused is not None:  # both experts' biases in one gather (one kernel fewer per layer)
            b = mx.expand_dims(fused[indices], -2)
            split = self.gate_up.bias.shape[-1]
            h = self.gate_up.matmul(xs, indices, False) + b[..., :split]
            y = self.down.matmul(_swiglu(h, self._alpha, self._limit), indices, False) + b[..., split:]
        else:
            h = self.gate_up(xs, indices, False)
            y = self.down(_swiglu(h, self._alpha, self._limit), indices, False)
        return y.squeeze(-2)

    def fuse_biases(self) -> None:
        """Keep [gate_up bias | down bias] per expert in one table for the few-token path (underscore: not a
        parameter, so checkpoints and training never see it)."""
        self._biases = mx.concatenate([self.gate_up.bias, self.down.bias], axis=-1)

    def _per_expert(self, x: mx.array, indices: mx.array) -> mx.array:
        N, H = x.shape
        k = indices.shape[-1]
        flat = indices.flatten()
        order = mx.argsort(flat)
        n_experts = self.gate_up.bias.shape[0]
        counts = (flat[:, None] == mx.arange(n_experts)[None]).sum(axis=0).tolist()  # the one host sync
        xs = x[order // k]
        outs, start = [], 0
        for e, c in enumerate(counts):
            if c:
                seg = xs[start : start + c]
                m = _row_bucket(c)
                if m > c:  # a bounded set of matmul shapes, so backends that JIT per shape compile few
                    seg = mx.concatenate([seg, mx.zeros((m - c, H), seg.dtype)])
                h = self.gate_up.one(seg, e)
                outs.append(self.down.one(_swiglu(h, self._alpha, self._limit), e)[:c])
                start += c
                if self.eval_every and len(outs) % self.eval_every == 0:
                    mx.eval(outs[-self.eval_every :])
        return mx.concatenate(outs)[mx.argsort(order)].reshape(N, k, H)


def route(router: nn.Module, x: mx.array, k: int) -> tuple[mx.array, mx.array]:
    """Each row's top-k experts and their weights: a softmax over the chosen logits only (as HF gpt-oss)."""
    logits = router(x)
    indices = mx.stop_gradient(mx.argpartition(logits, kth=-k, axis=-1)[..., -k:])
    return indices, mx.softmax(mx.take_along_axis(logits, indices, axis=-1), axis=-1, precise=True)


class MoE(nn.Module):
    def __init__(self, config: ModelConfig, gate_up_quant: QuantSpec | None, down_quant: QuantSpec | None) -> None:
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.router = nn.Linear(config.hidden_size, config.num_local_experts, bias=True)
        self.experts = Experts(config, gate_up_quant, down_quant)

    def __call__(self, x: mx.array) -> mx.array:
        B, L, H = x.shape
        x = x.reshape(B * L, H)
        indices, weights = route(self.router, x, self.top_k)
        y = self.experts(x, indices)
        return (y * weights[..., None].astype(y.dtype)).sum(axis=-2).reshape(B, L, H)


class DecoderLayer(nn.Module):
    def __init__(
        self,
        config: ModelConfig,
        layer_type: str,
        freqs: mx.array,
        gate_up_quant: QuantSpec | None,
        down_quant: QuantSpec | None,
    ) -> None:
        super().__init__()
        self.layer_type = layer_type
        self.self_attn = Attention(config, layer_type == SLIDING, freqs)
        self.mlp = MoE(config, gate_up_quant, down_quant)
        self.input_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def __call__(self, x: mx.array, mask: Mask, cache: KVCache | None, offset: int) -> mx.array:
        x = x + self.self_attn(self.input_layernorm(x), mask, cache, offset)
        return x + self.mlp(self.post_attention_layernorm(x))


class GptOssModel(nn.Module):
    def __init__(self, config: ModelConfig, quant: Mapping[str, QuantSpec]) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        freqs = rope_frequencies(config)
        self.layers = [
            DecoderLayer(
                config,
                t,
                freqs,
                quant.get(f"model.layers.{i}.mlp.experts.gate_up"),
                quant.get(f"model.layers.{i}.mlp.experts.down"),
            )
            for i, t in enumerate(config.layer_types)
        ]
        self.norm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)


class GptOss(nn.Module):
    """The causal LM: `model(inputs (B, L) int32, cache=None) -> logits (B, L, vocab)`.

    `quant` maps module paths (e.g. "lm_head", "model.layers.0.self_attn.q_proj",
    "model.layers.0.mlp.experts.gate_up") to their quantization; the loader fills it from the checkpoint.
    """

    def __init__(self, config: ModelConfig, quant: Mapping[str, QuantSpec] | None = None) -> None:
        super().__init__()
        quant = dict(quant or {})
        self.config = config
        self.window = config.sliding_window
        self.model = GptOssModel(config, quant)
        if not config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        dense = {p: q for p, q in quant.items() if ".mlp.experts." not in p}
        if dense:

            def predicate(path: str, module: nn.Module) -> bool | dict[str, Any]:
                spec = dense.get(path)
                if spec is None:
                    return False
                return {"group_size": spec.group_size, "bits": spec.bits, "mode": spec.mode}

            nn.quantize(self, class_predicate=predicate)

    decoder: Any = None  # a model/fast.py CompiledDecoder once optimize() ran

    def optimize(self, compiled_decode: bool = True) -> GptOss:
        """For inference: fuse QKV, bound prefill attention memory, compile the one-token step
        (model/fast.py); returns self."""
        from mlx_harmony_tui.model.fast import CompiledDecoder, fuse_qkv

        fuse_qkv(self)
        weights = parameter_bytes(self)
        for layer in self.layers:
            layer.self_attn.bounded_scores = True
            # Attention's transient memory in proportion to the model (~5% of the weights, see _attend):
            # smaller blocks would cost a big model speed (each re-reads its keys: 64 heads on the CPU at 4,096
            # keys, 1-row blocks took 14% longer than 64-row ones) for memory it does not need.
            layer.self_attn.cpu_scores_budget = max(CPU_SCORES_BUDGET, weights // 128)
        self.decoder = CompiledDecoder(self) if compiled_decode else None
        return self

    @property
    def layers(self) -> list[DecoderLayer]:
        return self.model.layers

    def make_cache(self, kv_bits: int | None = None, kv_group_size: int = 64,
                   margin: int = DEFAULT_MARGIN, kv_mode: str = "affine") -> list[KVCache]:
        """One cache per layer: sliding layers keep their window + ``margin`` positions, full layers all of
        them, quantized to ``kv_bits`` (4 or 8) in ``kv_mode`` if given (model/cache.py, model/kv_quant.py)."""
        caches: list[KVCache] = []
        for layer in self.model.layers:
            if layer.layer_type == SLIDING:
                caches.append(SlidingKVCache(self.window, margin))
            elif kv_bits:
                from mlx_harmony_tui.model.kv_quant import QuantizedKVCache, check_heads, group_size_for

                check_heads(self.config.num_key_value_heads, kv_mode)
                group = group_size_for(self.config.head_dim, kv_group_size)
                caches.append(QuantizedKVCache(kv_bits, group, kv_mode))
            else:
                caches.append(KVCache())
        return caches

    def _masks(self, L: int, offset: int) -> tuple[Mask, Mask]:
        """(full, sliding) masks for L queries after `offset` cached positions, built once per forward."""
        if L == 1:
            return None, None  # one query sees all (sliced) keys
        full: Mask = "causal"
        if offset + L <= self.window:
            return full, "causal"
        T = min(offset + L, self.window - 1 + L)  # keys the sliding layers keep after slicing
        q_pos = mx.arange(offset, offset + L)[:, None]
        k_pos = mx.arange(offset + L - T, offset + L)[None, :]
        sliding = (k_pos <= q_pos) & (q_pos - k_pos < self.window)
        return full, sliding

    def __call__(self, inputs: mx.array, cache: list[KVCache] | None = None, last_only: bool = False) -> mx.array:
        """Logits for every position, or only the last one when `last_only` (saves the vocab matmul in prefill)."""
        if self.decoder is not None and cache and inputs.shape[1] == 1:
            return self.decoder(inputs, cache)
        x = self.model.embed_tokens(inputs)
        L = x.shape[1]
        offset = cache[0].offset if cache else 0
        full_mask, sliding_mask = self._masks(L, offset)
        caches: list[KVCache | None] = list(cache) if cache else [None] * len(self.model.layers)
        for layer, c in zip(self.model.layers, caches, strict=True):
            x = layer(x, sliding_mask if layer.layer_type == SLIDING else full_mask, c, offset)
        if last_only:
            x = x[:, -1:, :]
        x = self.model.norm(x)
        if self.config.tie_word_embeddings:
            return self.model.embed_tokens.as_linear(x)
        return self.lm_head(x)


__all__ = ["FULL", "SLIDING", "GptOss", "parameter_bytes", "rope_frequencies"]

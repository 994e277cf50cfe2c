"""One-query attention with sinks over a whole KV buffer, its length read from an array (CUDA only).

MLX's ``scaled_dot_product_attention`` needs the keys sliced to the valid length, a shape that changes every
token, so the attention (and the KV write before it) had to stay outside the compiled decode graph: about
eight eager operations per layer per token, each a fixed host cost (docs/benchmarks.md). These two kernels
take the preallocated buffer and the position as data, so one compiled graph holds the whole token
(model/fast.py). Other backends get the same graph with a masked ``sdpa`` over the buffer.

- ``partial``: block (kv head g, split s), one warp per query head of the group; lanes score one key each
  (32 keys a round), keep an online softmax, and accumulate V with lanes over the head dims.
- ``combine``: per query head, merges the splits' (max, sum, acc) with the sink logit.

Every loop over memory is unrolled over a fixed count (32 rows of V, S splits): the first version looped over
the valid count and waited one memory latency per row (30-50 us per layer on an H200).
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx

# Inputs: q (HQ, D), k and v (HKV, C, D) buffers, pos (1) int32 position of the query (keys 0..pos valid),
# scale (1) float32. Output part (HQ, S, D + 2) float32: acc, max, sum per split.
_PARTIAL = r"""
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = blockIdx.x / S, s = blockIdx.x % S;
  const int h = g * (HQ / HKV) + warp;
  const int len = pos[0] + 1;
  const int lo = W > 0 ? max(0, len - W) : 0;
  const int chunk = (len - lo + S - 1) / S;
  const int k0 = lo + s * chunk, k1 = min(len, k0 + chunk);
  const float sc = scale[0];
  float qf[D];
  #pragma unroll
  for (int d = 0; d < D; ++d) qf[d] = static_cast<float>(q[h * D + d]) * sc;
  constexpr int A = (D + 31) / 32;
  constexpr int V = 16 / sizeof(T);
  float acc[A];
  #pragma unroll
  for (int a = 0; a < A; ++a) acc[a] = 0.f;
  float m = -INFINITY, l = 0.f;
  const size_t C = k_shape[1];
  const T* kh = k + (size_t)g * C * D;
  const T* vh = v + (size_t)g * C * D;
  for (int t0 = k0; t0 < k1; t0 += 32) {
    const int j = t0 + lane;
    float score = -INFINITY;
    if (j < k1) {
      const uint4* kr = reinterpret_cast<const uint4*>(kh + (size_t)j * D);
      float dot = 0.f;
      #pragma unroll
      for (int c = 0; c < D / V; ++c) {
        const uint4 raw = __ldg(kr + c);
        const T* e = reinterpret_cast<const T*>(&raw);
        #pragma unroll
        for (int u = 0; u < V; ++u) dot += qf[c * V + u] * static_cast<float>(e[u]);
      }
      score = dot;
    }
    float mt = score;
    #pragma unroll
    for (int off = 16; off > 0; off >>= 1) mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, off));
    const float mn = fmaxf(m, mt);
    const float p = j < k1 ? __expf(score - mn) : 0.f;
    const float corr = __expf(m - mn);
    float ps = p;
    #pragma unroll
    for (int off = 16; off > 0; off >>= 1) ps += __shfl_xor_sync(0xffffffffu, ps, off);
    l = l * corr + ps;
    #pragma unroll
    for (int a = 0; a < A; ++a) acc[a] *= corr;
    // All 32 rows of the round, unrolled so their loads are in flight together (a row past k1 has p = 0;
    // it is read from a valid row instead).
    #pragma unroll
    for (int jj = 0; jj < 32; ++jj) {
      const float pj = __shfl_sync(0xffffffffu, p, jj);
      const T* vr = vh + (size_t)min(t0 + jj, k1 - 1) * D;
      #pragma unroll
      for (int a = 0; a < A; ++a) {
        const int d = lane + 32 * a;
        if (d < D) acc[a] += pj * static_cast<float>(vr[d]);
      }
    }
    m = mn;
  }
  float* out = part + ((size_t)h * S + s) * (D + 2);
  #pragma unroll
  for (int a = 0; a < A; ++a) {
    const int d = lane + 32 * a;
    if (d < D) out[d] = acc[a];
  }
  if (lane == 0) { out[D] = m; out[D + 1] = l; }
"""

# Inputs: part from above, sinks (HQ). Output o (HQ, D) in T. One warp per query head: lanes hold one split
# each for the max and the sum, then the head dims for the weighted sum of the splits' accumulators.
_COMBINE = r"""
  const int lane = threadIdx.x & 31;
  const int h = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (h >= HQ) return;
  const float* p = part + (size_t)h * S * (D + 2);
  const float sink = static_cast<float>(sinks[h]);
  const float ms = lane < S ? p[lane * (D + 2) + D] : -INFINITY;
  const float ls = lane < S ? p[lane * (D + 2) + D + 1] : 0.f;
  float mx_ = fmaxf(ms, sink);
  #pragma unroll
  for (int off = 16; off > 0; off >>= 1) mx_ = fmaxf(mx_, __shfl_xor_sync(0xffffffffu, mx_, off));
  const float w = lane < S ? __expf(ms - mx_) : 0.f;
  float den = w * ls;
  #pragma unroll
  for (int off = 16; off > 0; off >>= 1) den += __shfl_xor_sync(0xffffffffu, den, off);
  den += __expf(sink - mx_);
  constexpr int A = (D + 31) / 32;
  float num[A];
  #pragma unroll
  for (int a = 0; a < A; ++a) num[a] = 0.f;
  #pragma unroll
  for (int s = 0; s < S; ++s) {
    const float ws = __shfl_sync(0xffffffffu, w, s);
    #pragma unroll
    for (int a = 0; a < A; ++a) {
      const int d = lane + 32 * a;
      if (d < D) num[a] += ws * p[s * (D + 2) + d];
    }
  }
  #pragma unroll
  for (int a = 0; a < A; ++a) {
    const int d = lane + 32 * a;
    if (d < D) o[h * D + d] = static_cast<T>(num[a] / den);
  }
"""

# Splits per kv head: enough blocks to cover the GPU at long contexts for full layers; sliding layers
# never see more than the window.
_SPLITS_FULL, _SPLITS_WINDOW = 32, 4  # at most 32: the combine kernel holds one split per lane

_kernels: tuple[Any, Any] | None = None


def supports(n_heads: int, n_kv: int, head_dim: int, dtype: mx.Dtype) -> bool:
    """Shapes the kernels are written for: whole 16-byte rows, at most 32 query heads per kv head."""
    group = n_heads // n_kv
    return (n_heads % n_kv == 0 and group <= 32 and (head_dim * dtype.size) % 16 == 0
            and head_dim <= 256 and dtype in (mx.float32, mx.float16, mx.bfloat16))


def decode_attention(q: mx.array, keys: mx.array, values: mx.array, pos: mx.array, scale: mx.array,
                     sinks: mx.array, window: int | None) -> mx.array:
    """q (1, HQ, 1, D) against keys/values (1, HKV, C, D) positions 0..pos (the last ``window`` of them on a
    sliding layer) -> (1, HQ, 1, D). ``pos`` an int32 array of one value, ``scale`` float32 of one."""
    global _kernels
    if _kernels is None:
        _kernels = (
            mx.fast.cuda_kernel(name="mht_attn_partial", input_names=["q", "k", "v", "pos", "scale"],
                                output_names=["part"], source=_PARTIAL),
            mx.fast.cuda_kernel(name="mht_attn_combine", input_names=["part", "sinks"], output_names=["o"],
                                source=_COMBINE),
        )
    _, hq, _, d = q.shape
    hkv = keys.shape[1]
    splits = _SPLITS_WINDOW if window else _SPLITS_FULL
    (part,) = _kernels[0](
        inputs=[q.reshape(hq, d), keys.reshape(hkv, -1, d), values.reshape(hkv, -1, d), pos.reshape(1), scale],
        template=[("T", q.dtype), ("HQ", hq), ("HKV", hkv), ("D", d), ("S", splits), ("W", window or 0)],
        grid=(hkv * splits * 32 * (hq // hkv), 1, 1), threadgroup=(32 * (hq // hkv), 1, 1),
        output_shapes=[(hq, splits, d + 2)], output_dtypes=[mx.float32],
    )
    (o,) = _kernels[1](
        inputs=[part, sinks], template=[("T", q.dtype), ("HQ", hq), ("D", d), ("S", splits)],
        grid=(-(-hq // 8) * 256, 1, 1), threadgroup=(256, 1, 1), output_shapes=[(hq, d)], output_dtypes=[q.dtype],
    )
    return o.reshape(1, hq, 1, d)

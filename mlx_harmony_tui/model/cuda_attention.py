"""One-query attention with sinks over a KV-cache buffer (CUDA only; other backends keep MLX's sdpa).

MLX's one-query sdpa kernel took ~16 us per layer under Nsight Compute for a few MB of keys, and the
decoder had to slice the cache (and the sliding window) into views first: eager operations, each a host
cost. These two kernels read the preallocated buffer directly, positions ``0..pos`` (the last ``window``
of them on a sliding layer):

- ``partial``: block (kv head g, split s), one warp per query head of the group. Each round, the block
  copies 32 keys and values into shared memory with coalesced 16-byte loads (every query head of the group
  reads the same rows); then each lane scores one key, the warp keeps an online softmax and accumulates
  V with lanes over the head dims.
- ``combine``: per query head, merges the splits' (max, sum, acc) with the sink logit.

A first version had every lane read its own key row from global memory (32 rows per load instruction,
repeated by each of the 8 query heads): 30-50 us per layer on an H200 (commit 650696d).
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx

# Inputs: q (HQ, D), k and v (HKV, C, D) buffers, pos (1) int32 position of the query (keys 0..pos valid),
# scale (1) float32. Output part (HQ, S, D + 2) float32: acc, max, sum per split; S = gridDim.x / HKV.
_PARTIAL = r"""
  constexpr int G = HQ / HKV, NT = 32 * G, P = D + 4;  // padded rows: per-lane float4 reads hit all banks
  constexpr int V = 16 / sizeof(T), CH = 32 * D / V;    // 16-byte chunks in one round of 32 rows
  __shared__ __align__(16) float ks[32 * P];
  __shared__ __align__(16) float vs[32 * P];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int S = gridDim.x / HKV;
  const int g = blockIdx.x / S, s = blockIdx.x % S;
  const int h = g * G + warp;
  const int len = pos[0] + 1;
  const int lo = W > 0 ? max(0, len - W) : 0;
  const int chunk = ((len - lo + S - 1) / S + 31) / 32 * 32;
  const int k0 = lo + s * chunk, k1 = min(len, k0 + chunk);
  const float sc = scale[0];
  float qf[D];
  #pragma unroll
  for (int d = 0; d < D; ++d) qf[d] = static_cast<float>(q[h * D + d]) * sc;
  constexpr int A = (D + 31) / 32;
  float acc[A];
  #pragma unroll
  for (int a = 0; a < A; ++a) acc[a] = 0.f;
  float m = -INFINITY, l = 0.f;
  const size_t C = k_shape[1];
  const T* kh = k + (size_t)g * C * D;
  const T* vh = v + (size_t)g * C * D;
  for (int t0 = k0; t0 < k1; t0 += 32) {
    const int n = min(32, k1 - t0);
    #pragma unroll
    for (int it = 0; it < (CH + NT - 1) / NT; ++it) {
      const int ch = threadIdx.x + it * NT;
      if (ch < CH) {
        const int row = ch / (D / V), col = (ch % (D / V)) * V;
        if (row < n) {
          const uint4 rk = *reinterpret_cast<const uint4*>(kh + (size_t)(t0 + row) * D + col);
          const uint4 rv = *reinterpret_cast<const uint4*>(vh + (size_t)(t0 + row) * D + col);
          const T* ek = reinterpret_cast<const T*>(&rk);
          const T* ev = reinterpret_cast<const T*>(&rv);
          #pragma unroll
          for (int u = 0; u < V; ++u) {
            ks[row * P + col + u] = static_cast<float>(ek[u]);
            vs[row * P + col + u] = static_cast<float>(ev[u]);
          }
        }
      }
    }
    __syncthreads();
    float score = -INFINITY;
    if (lane < n) {
      const float4* kr = reinterpret_cast<const float4*>(ks + lane * P);
      float dot = 0.f;
      #pragma unroll
      for (int c = 0; c < D / 4; ++c) {
        const float4 kv = kr[c];
        dot += qf[4 * c] * kv.x + qf[4 * c + 1] * kv.y + qf[4 * c + 2] * kv.z + qf[4 * c + 3] * kv.w;
      }
      score = dot;
    }
    float mt = score;
    #pragma unroll
    for (int off = 16; off > 0; off >>= 1) mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, off));
    const float mn = fmaxf(m, mt);
    const float p = lane < n ? __expf(score - mn) : 0.f;
    const float corr = __expf(m - mn);
    float ps = p;
    #pragma unroll
    for (int off = 16; off > 0; off >>= 1) ps += __shfl_xor_sync(0xffffffffu, ps, off);
    l = l * corr + ps;
    #pragma unroll
    for (int a = 0; a < A; ++a) acc[a] *= corr;
    #pragma unroll
    for (int jj = 0; jj < 32; ++jj) {
      const float pj = __shfl_sync(0xffffffffu, p, jj);  // 0 past n: those rows hold stale values
      #pragma unroll
      for (int a = 0; a < A; ++a) {
        const int d = lane + 32 * a;
        if (d < D && jj < n) acc[a] += pj * vs[jj * P + d];
      }
    }
    m = mn;
    __syncthreads();
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
  const int S = part_shape[1];
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
  for (int s = 0; s < 32; ++s) {
    const float ws = __shfl_sync(0xffffffffu, w, s);
    if (s < S) {
      #pragma unroll
      for (int a = 0; a < A; ++a) {
        const int d = lane + 32 * a;
        if (d < D) num[a] += ws * p[s * (D + 2) + d];
      }
    }
  }
  #pragma unroll
  for (int a = 0; a < A; ++a) {
    const int d = lane + 32 * a;
    if (d < D) o[h * D + d] = static_cast<T>(num[a] / den);
  }
"""

# Keys per split at least (two rounds of 32), splits at most 32 (the combine kernel holds one per lane).
_MIN_KEYS, _MAX_SPLITS = 64, 32

_kernels: tuple[Any, Any] | None = None


def supports(n_heads: int, n_kv: int, head_dim: int, dtype: mx.Dtype) -> bool:
    """Shapes the kernels are written for: whole 16-byte chunks per row, at most 32 query heads per kv head,
    shared memory for 2 x 32 rows."""
    group = n_heads // n_kv
    return (n_heads % n_kv == 0 and group <= 32 and (head_dim * dtype.size) % 16 == 0
            and head_dim % 4 == 0 and 2 * 32 * (head_dim + 4) * 4 <= 48 * 1024
            and dtype in (mx.float32, mx.float16, mx.bfloat16))


def decode_attention(q: mx.array, keys: mx.array, values: mx.array, pos: mx.array, n_valid: int,
                     scale: mx.array, sinks: mx.array, window: int | None) -> mx.array:
    """q (1, HQ, 1, D) against the buffers keys/values (1, HKV, C, D), positions 0..pos (the last
    ``window`` of them on a sliding layer) -> (1, HQ, 1, D). ``pos`` an int32 array holding the query's
    position, ``n_valid`` = pos + 1 as an int (it sets the split count), ``scale`` float32 of one value."""
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
    span = min(n_valid, window) if window else n_valid
    splits = max(1, min(_MAX_SPLITS, span // _MIN_KEYS))
    (part,) = _kernels[0](
        inputs=[q.reshape(hq, d), keys.reshape(hkv, -1, d), values.reshape(hkv, -1, d), pos, scale],
        template=[("T", q.dtype), ("HQ", hq), ("HKV", hkv), ("D", d), ("W", window or 0)],
        grid=(hkv * splits * 32 * (hq // hkv), 1, 1), threadgroup=(32 * (hq // hkv), 1, 1),
        output_shapes=[(hq, splits, d + 2)], output_dtypes=[mx.float32],
    )
    (o,) = _kernels[1](
        inputs=[part, sinks], template=[("T", q.dtype), ("HQ", hq), ("D", d)],
        grid=(-(-hq // 8) * 256, 1, 1), threadgroup=(256, 1, 1), output_shapes=[(hq, d)], output_dtypes=[q.dtype],
    )
    return o.reshape(1, hq, 1, d)

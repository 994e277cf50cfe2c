"""Split-K ("flash-decoding") attention of one query token over a KV-cache buffer, with gpt-oss's sink logits
and an optional sliding window (CUDA only; Metal and CPU keep MLX's ``scaled_dot_product_attention``).

At long contexts the full layers' decode attention is most of a token's memory traffic (16,384 positions:
0.4 GB a token for the 20b), and one query per head gives MLX's one-query kernel little to run in parallel.
Here the keys are split over many blocks:

- ``partial``: block (kv head g, split s), one warp per query head of the group. Each round the block copies
  32 keys and values into shared memory with 16-byte loads (all query heads of the group read the same
  rows); each lane scores one key, the warp keeps an online softmax and accumulates V with lanes over the
  head dims. Out: (max, sum, unnormalized output) per head and split, in float32.
- ``combine``: per query head, merges the splits with the sink logit (one more term of the softmax's
  denominator, no value).

The kernels read the preallocated buffer in place (no slice of the cache: another operation, and a copy
for a custom kernel's input), up to a valid length given as data. An earlier version of this kernel was
slower than MLX's for the sliding layers' 128 keys (35 against 14 us a layer on an H200), so the decoder
uses it for full layers at long contexts only (``MIN_KEYS``; docs/benchmarks.md).
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx

# Inputs: q (1, HQ, 1, D), k and v buffers (1, HKV, C, D), n (1) int32: valid positions in the buffer,
# scale (1) float32. Output part (HQ, S, D + 2) float32: acc, max, sum per split; S = gridDim.x / HKV.
_PARTIAL = r"""
  constexpr int G = HQ / HKV, NT = 32 * G, P = D + 4;  // padded rows: per-lane float4 reads hit all banks
  constexpr int V = 16 / sizeof(T), CH = 32 * D / V;    // 16-byte chunks in one round of 32 rows
  __shared__ __align__(16) float ks[32 * P];
  __shared__ __align__(16) float vs[32 * P];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int S = gridDim.x / HKV;
  const int blk = blockIdx.x;
  const int g = blk / S, s = blk % S;
  const int h = g * G + warp;
  const int len = n[0];
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
  const size_t C = k_shape[2];
  const T* kh = k + (size_t)g * C * D;
  const T* vh = v + (size_t)g * C * D;
  for (int t0 = k0; t0 < k1; t0 += 32) {
    const int cnt = min(32, k1 - t0);
    #pragma unroll
    for (int it = 0; it < (CH + NT - 1) / NT; ++it) {
      const int ch = threadIdx.x + it * NT;
      if (ch < CH) {
        const int row = ch / (D / V), col = (ch % (D / V)) * V;
        if (row < cnt) {
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
    if (lane < cnt) {
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
    const float p = lane < cnt ? __expf(score - mn) : 0.f;
    const float corr = __expf(m - mn);
    float ps = p;
    #pragma unroll
    for (int off = 16; off > 0; off >>= 1) ps += __shfl_xor_sync(0xffffffffu, ps, off);
    l = l * corr + ps;
    #pragma unroll
    for (int a = 0; a < A; ++a) acc[a] *= corr;
    #pragma unroll
    for (int jj = 0; jj < 32; ++jj) {
      const float pj = __shfl_sync(0xffffffffu, p, jj);  // 0 past cnt: those rows hold stale values
      #pragma unroll
      for (int a = 0; a < A; ++a) {
        const int d = lane + 32 * a;
        if (d < D && jj < cnt) acc[a] += pj * vs[jj * P + d];
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

# Inputs: part from above, sinks (HQ). Output o (1, HQ, 1, D) in T. One warp per query head: the lanes
# reduce the splits' maxima and sums (any number of splits), then hold the head dims for the weighted sum.
_COMBINE = r"""
  const int lane = threadIdx.x & 31;
  const int h = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (h >= HQ) return;
  const int S = part_shape[1];
  const float* p = part + (size_t)h * S * (D + 2);
  const float sink = static_cast<float>(sinks[h]);
  float mx_ = sink;
  for (int s = lane; s < S; s += 32) mx_ = fmaxf(mx_, p[s * (D + 2) + D]);
  #pragma unroll
  for (int off = 16; off > 0; off >>= 1) mx_ = fmaxf(mx_, __shfl_xor_sync(0xffffffffu, mx_, off));
  float den = 0.f;
  for (int s = lane; s < S; s += 32) den += __expf(p[s * (D + 2) + D] - mx_) * p[s * (D + 2) + D + 1];
  #pragma unroll
  for (int off = 16; off > 0; off >>= 1) den += __shfl_xor_sync(0xffffffffu, den, off);
  den += __expf(sink - mx_);
  constexpr int A = (D + 31) / 32;
  float num[A];
  #pragma unroll
  for (int a = 0; a < A; ++a) num[a] = 0.f;
  for (int s = 0; s < S; ++s) {
    const float ws = __expf(p[s * (D + 2) + D] - mx_);
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

# Context length from which the decoder uses the kernel on full layers (below it MLX's kernel is as fast;
# MHT_FLASH_DECODE_MIN overrides; measured on an H200, docs/benchmarks.md).
MIN_KEYS = 2048
# Keys per split at least, splits at most: enough blocks to fill the GPU at long contexts.
KEYS_PER_SPLIT, MAX_SPLITS = 256, 128

_kernels: tuple[Any, Any] | None = None


def splits_for(n_valid: int, window: int | None = None) -> int:
    """Splits for ``n_valid`` keys: a power of two (few distinct launch shapes), 1..MAX_SPLITS."""
    span = min(n_valid, window) if window else n_valid
    s = 1
    while s * 2 <= MAX_SPLITS and s * 2 * KEYS_PER_SPLIT <= span:
        s *= 2
    return s


def supports(n_heads: int, n_kv: int, head_dim: int, dtype: mx.Dtype) -> bool:
    """Shapes the kernels are written for: whole 16-byte chunks per row, at most 32 query heads per kv head,
    shared memory for 2 x 32 rows."""
    group = n_heads // n_kv
    return (
        n_heads % n_kv == 0
        and group <= 32
        and (head_dim * dtype.size) % 16 == 0
        and head_dim % 4 == 0
        and 2 * 32 * (head_dim + 4) * 4 <= 48 * 1024
        and dtype in (mx.float32, mx.float16, mx.bfloat16)
    )


def decode_attention(
    q: mx.array,
    keys: mx.array,
    values: mx.array,
    n: mx.array,
    n_valid: int,
    scale: mx.array,
    sinks: mx.array,
    window: int | None = None,
) -> mx.array:
    """q (1, HQ, 1, D) against the buffers keys/values (1, HKV, C, D), positions 0..n (the last ``window``
    of them if given) -> (1, HQ, 1, D). ``n``: an int32 array holding the valid length, ``n_valid`` the
    same as an int (it sets the split count), ``scale`` float32 of one value, ``sinks`` (HQ)."""
    global _kernels
    if _kernels is None:
        _kernels = (
            mx.fast.cuda_kernel(
                name="mht_flash_decode_partial",
                input_names=["q", "k", "v", "n", "scale"],
                output_names=["part"],
                source=_PARTIAL,
            ),
            mx.fast.cuda_kernel(
                name="mht_flash_decode_combine",
                input_names=["part", "sinks"],
                output_names=["o"],
                source=_COMBINE,
            ),
        )
    _, hq, _, d = q.shape
    hkv = keys.shape[1]
    s = splits_for(n_valid, window)
    g = hq // hkv
    (part,) = _kernels[0](
        inputs=[q, keys, values, n, scale],
        template=[("T", q.dtype), ("HQ", hq), ("HKV", hkv), ("D", d), ("W", window or 0)],
        grid=(hkv * s * 32 * g, 1, 1),
        threadgroup=(32 * g, 1, 1),
        output_shapes=[(hq, s, d + 2)],
        output_dtypes=[mx.float32],
    )
    (o,) = _kernels[1](
        inputs=[part, sinks],
        template=[("T", q.dtype), ("HQ", hq), ("D", d)],
        grid=(-(-hq // 8) * 256, 1, 1),
        threadgroup=(256, 1, 1),
        output_shapes=[(1, hq, 1, d)],
        output_dtypes=[q.dtype],
    )
    return o

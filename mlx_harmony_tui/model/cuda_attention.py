"""Split-K ("flash-decoding") attention of one query token over a KV-cache buffer, with gpt-oss's sink logits
and an optional sliding window (CUDA only; Metal and CPU keep MLX's ``scaled_dot_product_attention``).

At long contexts the full layers' decode attention is most of a token's memory traffic (16,384 positions:
0.4 GB a token for the 20b), and one query per head gives MLX's one-query kernel little to run in parallel.
Here the keys are split over many blocks:

- ``partial``: block (kv head g, split s); out: (max, sum, unnormalized output) per head and split, in
  float32. v2 (the default where head_dim % 32 == 0): each warp owns a range of keys and scores every
  query head of the group from registers (see _PARTIAL_V2); 27-30 against v1's 51-55 us a layer at 16,384
  keys on an H200. v1 (other shapes, e.g. the tiny test model): one warp per query head, the block staging
  32 keys and values at a time in shared memory.
- ``combine``: per query head, merges the splits with the sink logit (one more term of the softmax's
  denominator, no value).

The kernels read the preallocated buffers in place (no slice of the cache: another operation, and a copy
for a custom kernel's input), up to a valid length given as data: the main buffers up to ``base`` and
KVCache's tail buffers after it. An earlier version of this kernel was
slower than MLX's for the sliding layers' 128 keys (35 against 14 us a layer on an H200), so the decoder
uses it for full layers at long contexts only (``MIN_KEYS``; docs/benchmarks.md).
"""

from __future__ import annotations

import os
from typing import Any

import mlx.core as mx

# Kv head g's rows in the main buffers (kh, vh: positions 0..base) and the tail buffers (kth, vth: from base on).
_HEAD_BUFFERS = r"""  const size_t C = k_shape[2], CT = kt_shape[2];
  const T* kh = k + (size_t)g * C * D;
  const T* vh = v + (size_t)g * C * D;
  const T* kth = kt + (size_t)g * CT * D;
  const T* vth = vt + (size_t)g * CT * D;
"""

# Inputs: q (1, HQ, 1, D), k and v buffers (1, HKV, C, D), kt and vt tail buffers (1, HKV, CT, D), n (2) int32:
# valid positions, and how many of them are in k/v (the rest, from there on, in kt/vt), scale (1) float32. Output part (HQ, S, D + 2) float32: acc, max, sum per split; S = gridDim.x / HKV.
_PARTIAL = (
    r"""
  constexpr int G = HQ / HKV, NT = 32 * G, P = D + 4;  // padded rows: per-lane float4 reads hit all banks
  constexpr int V = 16 / sizeof(T), CH = 32 * D / V;    // 16-byte chunks in one round of 32 rows
  __shared__ __align__(16) float ks[32 * P];
  __shared__ __align__(16) float vs[32 * P];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int S = gridDim.x / HKV;
  const int blk = blockIdx.x;
  const int g = blk / S, s = blk % S;
  const int h = g * G + warp;
  const int len = n[0], base = n[1];
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
"""
    + _HEAD_BUFFERS
    + r"""  for (int t0 = k0; t0 < k1; t0 += 32) {
    const int cnt = min(32, k1 - t0);
    #pragma unroll
    for (int it = 0; it < (CH + NT - 1) / NT; ++it) {
      const int ch = threadIdx.x + it * NT;
      if (ch < CH) {
        const int row = ch / (D / V), col = (ch % (D / V)) * V;
        if (row < cnt) {
          const int p = t0 + row;
          const size_t o = (size_t)(p < base ? p : p - base) * D + col;
          const uint4 rk = *reinterpret_cast<const uint4*>((p < base ? kh : kth) + o);
          const uint4 rv = *reinterpret_cast<const uint4*>((p < base ? vh : vth) + o);
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
)

# The same partials from a layout that keeps more memory requests in flight (v1 above waits on each round's
# loads, then on two block barriers: 0.5 TB/s of a layer's cache on an H200). Block (kv head g, split s) of NW
# warps; each warp owns a range of keys and scores every query head of the group itself: a lane loads one
# key row straight into registers (no shared staging, no block barrier in the loop), keeps G scores, the warp
# keeps G online softmaxes (log2 units), shares the G probabilities of its 32 keys through shared memory and
# accumulates V with lanes over head dims (rows read coalesced). At the end the block merges its warps.
# Needs D % 32 == 0; m is written in natural-log units, so the combine kernel serves both versions.
_PARTIAL_V2 = (
    r"""
  constexpr int G = HQ / HKV;
  constexpr int V = 16 / sizeof(T);
  constexpr int R = D / V;
  constexpr int A = D / 32;
  struct alignas(A * sizeof(T)) Pack { T e[A]; };  // a lane's head dims of one V row: one vector load
  __shared__ __align__(16) float qs[G * D];
  __shared__ __align__(16) float ps[NW][32][G];
  __shared__ float ms[NW][G];
  __shared__ float ls[NW][G];
  __shared__ float accs[NW][G][D];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int S = gridDim.x / HKV;
  const int g = blockIdx.x / S, s = blockIdx.x % S;
  const int len = n[0], base = n[1];
  const int lo = W > 0 ? max(0, len - W) : 0;
  const int per = ((len - lo + S * NW - 1) / (S * NW) + 31) / 32 * 32;
  const int k0 = lo + (s * NW + warp) * per, k1 = min(len, k0 + per);
  const float sc = scale[0] * 1.4426950408889634f;
  for (int i = threadIdx.x; i < G * D; i += NW * 32) qs[i] = static_cast<float>(q[g * G * D + i]) * sc;
  __syncthreads();
  float acc[G][A], l[G], m[G];
  #pragma unroll
  for (int h = 0; h < G; ++h) {
    l[h] = 0.f;
    m[h] = -INFINITY;
    #pragma unroll
    for (int a = 0; a < A; ++a) acc[h][a] = 0.f;
  }
"""
    + _HEAD_BUFFERS
    + r"""  for (int t0 = k0; t0 < k1; t0 += 32) {
    const int cnt = min(32, k1 - t0);
    const int row = t0 + min(lane, cnt - 1);
    const T* kr = row < base ? kh + (size_t)row * D : kth + (size_t)(row - base) * D;
    uint4 raw[R];
    #pragma unroll
    for (int r = 0; r < R; ++r) raw[r] = *reinterpret_cast<const uint4*>(kr + r * V);
    float sco[G];
    #pragma unroll
    for (int h = 0; h < G; ++h) sco[h] = 0.f;
    #pragma unroll
    for (int r = 0; r < R; ++r) {
      const T* e = reinterpret_cast<const T*>(&raw[r]);
      float kf[V];
      #pragma unroll
      for (int u = 0; u < V; ++u) kf[u] = static_cast<float>(e[u]);
      #pragma unroll
      for (int h = 0; h < G; ++h) {
        #pragma unroll
        for (int u = 0; u < V; u += 4) {
          const float4 qq = *reinterpret_cast<const float4*>(qs + h * D + r * V + u);
          sco[h] += qq.x * kf[u] + qq.y * kf[u + 1] + qq.z * kf[u + 2] + qq.w * kf[u + 3];
        }
      }
    }
    #pragma unroll
    for (int h = 0; h < G; ++h) {
      const float sv = lane < cnt ? sco[h] : -INFINITY;
      float mt = sv;
      #pragma unroll
      for (int off = 16; off > 0; off >>= 1) mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, off));
      const float mn = fmaxf(m[h], mt);
      const float corr = exp2f(m[h] - mn);
      const float p = exp2f(sv - mn);
      l[h] = l[h] * corr + p;
      #pragma unroll
      for (int a = 0; a < A; ++a) acc[h][a] *= corr;
      m[h] = mn;
      ps[warp][lane][h] = p;
    }
    __syncwarp();
    #pragma unroll 4
    for (int j = 0; j < cnt; ++j) {
      const int p = t0 + j;
      const T* vr = p < base ? vh + (size_t)p * D : vth + (size_t)(p - base) * D;
      const Pack pk = *reinterpret_cast<const Pack*>(vr + lane * A);
      float vf[A];
      #pragma unroll
      for (int a = 0; a < A; ++a) vf[a] = static_cast<float>(pk.e[a]);
      #pragma unroll
      for (int h = 0; h < G; ++h) {
        const float pj = ps[warp][j][h];
        #pragma unroll
        for (int a = 0; a < A; ++a) acc[h][a] += pj * vf[a];
      }
    }
    __syncwarp();
  }
  #pragma unroll
  for (int h = 0; h < G; ++h) {
    float lt = l[h];
    #pragma unroll
    for (int off = 16; off > 0; off >>= 1) lt += __shfl_xor_sync(0xffffffffu, lt, off);
    if (lane == 0) {
      ms[warp][h] = m[h];
      ls[warp][h] = lt;
    }
    #pragma unroll
    for (int a = 0; a < A; ++a) accs[warp][h][lane * A + a] = acc[h][a];
  }
  __syncthreads();
  for (int i = threadIdx.x; i < G * D; i += NW * 32) {
    const int h = i / D, d = i % D;
    float mm = -INFINITY;
    #pragma unroll
    for (int w = 0; w < NW; ++w) mm = fmaxf(mm, ms[w][h]);
    float num = 0.f, den = 0.f;
    if (mm != -INFINITY) {
      #pragma unroll
      for (int w = 0; w < NW; ++w) {
        const float f = exp2f(ms[w][h] - mm);
        num += f * accs[w][h][d];
        den += f * ls[w][h];
      }
    }
    float* out = part + ((size_t)(g * G + h) * S + s) * (D + 2);
    out[d] = num;
    if (d == 0) {
      out[D] = mm * 0.6931471805599453f;
      out[D + 1] = den;
    }
  }
"""
)

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
# v1: keys per split at least, splits at most: enough blocks to fill the GPU at long contexts.
KEYS_PER_SPLIT, MAX_SPLITS = 256, 128
# v2: warps per block, keys per warp at least, blocks per kv head at most.
V2_WARPS, V2_KEYS_PER_WARP, V2_MAX_SPLITS = 4, 256, 256
# Which partial kernel: "2" where its shapes allow (D % 32 == 0, G <= 16), else "1" (MHT_FLASH_DECODE_KERNEL).
KERNEL = os.environ.get("MHT_FLASH_DECODE_KERNEL", "2")

_kernels: dict[str, Any] = {}


def _pow2_splits(span: int, per: int, cap: int) -> int:
    s = 1
    while s * 2 <= cap and s * 2 * per <= span:
        s *= 2
    return s


def splits_for(n_valid: int, window: int | None = None) -> int:
    """v1's splits for ``n_valid`` keys: a power of two (few distinct launch shapes), 1..MAX_SPLITS."""
    span = min(n_valid, window) if window else n_valid
    return _pow2_splits(span, KEYS_PER_SPLIT, MAX_SPLITS)


def version_for(n_heads: int, n_kv: int, head_dim: int) -> str:
    """The partial kernel used for these shapes (v2 needs whole warps of head dims, and G scores a lane)."""
    return "2" if KERNEL == "2" and head_dim % 32 == 0 and n_heads // n_kv <= 16 else "1"


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


def _kernel(name: str) -> Any:
    if name not in _kernels:
        inputs = ["part", "sinks"] if name == "combine" else ["q", "k", "v", "kt", "vt", "n", "scale"]
        source = {"1": _PARTIAL, "2": _PARTIAL_V2, "combine": _COMBINE}[name]
        kname = "mht_flash_decode_combine" if name == "combine" else f"mht_flash_decode_partial{'_v2' if name == '2' else ''}"
        _kernels[name] = mx.fast.cuda_kernel(
            name=kname, input_names=inputs, output_names=["o" if name == "combine" else "part"], source=source
        )
    return _kernels[name]


def decode_attention(
    q: mx.array,
    keys: mx.array,
    values: mx.array,
    n: mx.array,
    n_valid: int,
    scale: mx.array,
    sinks: mx.array,
    window: int | None = None,
    tail: tuple[mx.array, mx.array] | None = None,
) -> mx.array:
    """q (1, HQ, 1, D) against the buffers keys/values (1, HKV, C, D), positions 0..n (the last ``window``
    of them if given) -> (1, HQ, 1, D). ``n``: an int32 array holding the valid length (and, with ``tail``,
    how many of the positions are in keys/values: the others are the first ones of the tail buffers,
    see KVCache), ``n_valid`` the valid length as an int (it sets the split count), ``scale`` float32 of
    one value, ``sinks`` (HQ)."""
    if tail is None:
        tail = (keys, values)
        n = mx.concatenate([n[:1], n[:1]])
    _, hq, _, d = q.shape
    hkv = keys.shape[1]
    g = hq // hkv
    template = [("T", q.dtype), ("HQ", hq), ("HKV", hkv), ("D", d), ("W", window or 0)]
    span = min(n_valid, window) if window else n_valid
    if version_for(hq, hkv, d) == "2":
        nw = V2_WARPS
        s = _pow2_splits(span, nw * V2_KEYS_PER_WARP, V2_MAX_SPLITS)
        partial, template, threads = _kernel("2"), [*template, ("NW", nw)], 32 * nw
    else:
        s = splits_for(n_valid, window)
        partial, threads = _kernel("1"), 32 * g
    (part,) = partial(
        inputs=[q, keys, values, tail[0], tail[1], n, scale],
        template=template,
        grid=(hkv * s * threads, 1, 1),
        threadgroup=(threads, 1, 1),
        output_shapes=[(hq, s, d + 2)],
        output_dtypes=[mx.float32],
    )
    (o,) = _kernel("combine")(
        inputs=[part, sinks],
        template=[("T", q.dtype), ("HQ", hq), ("D", d)],
        grid=(-(-hq // 8) * 256, 1, 1),
        threadgroup=(256, 1, 1),
        output_shapes=[(1, hq, 1, d)],
        output_dtypes=[q.dtype],
    )
    return o

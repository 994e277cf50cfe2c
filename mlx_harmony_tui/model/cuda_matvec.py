"""One-token affine 8-bit ``QuantizedLinear`` (with its bias, and the RMSNorm before it or the residual add
after it) as one custom CUDA kernel (CUDA only); for the fused QKV layer also RoPE, writing q, k and v as
the attention takes them.

A decoded token multiplies one activation row by the QKV, o_proj and LM-head weights. MLX's 8-bit
``quantized_matmul`` reads them at ~0.6 TB/s on an H200 with float32 scales (the LM head, 579 MB, took
639 us per token) and adds the bias as a second kernel; this kernel reads at 0.7-3.5 TB/s (LM head
185 us) and adds the bias itself (scripts/lab/cuda_kernel_lab.py, docs/benchmarks.md). Other backends and
other formats keep MLX's kernel.

y[n] = sum over groups g of scale[n, g] * (q[n, g] . x[g]) + bias_q[n, g] * sum(x[g]), + b[n]
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn

# Inputs: x (D) activations, w (N, D/4) uint32 (four uint8 per word, low byte first), scales and biases
# (N, D/GS), bias (N) (zeros when the layer has none); with NORM, x is first RMS-normalized with weight nw
# and eps (the RMSNorm before QKV or the LM head), with RES the residual res (N) is added to the output
# (o_proj's x + o_proj(a)), each rounded as the separate MLX ops round. A warp computes R rows; each lane reads 16 bytes
# (16 weights, inside one group) per row at a time, its four float4 of activations in an order rotated by
# lane so the lanes' shared-memory reads spread over the banks.
LOAD4 = r"""
// Four consecutive values as floats, one 16- or 8-byte load.
__device__ __forceinline__ float4 mht_load4(const float* p) { return *reinterpret_cast<const float4*>(p); }
__device__ __forceinline__ float4 mht_load4(const __nv_bfloat16* p) {
  const uint2 r = *reinterpret_cast<const uint2*>(p);
  const __nv_bfloat162 a = *reinterpret_cast<const __nv_bfloat162*>(&r.x), b = *reinterpret_cast<const __nv_bfloat162*>(&r.y);
  return make_float4(__low2float(a), __high2float(a), __low2float(b), __high2float(b));
}
__device__ __forceinline__ float4 mht_load4(const __half* p) {
  const uint2 r = *reinterpret_cast<const uint2*>(p);
  const __half2 a = *reinterpret_cast<const __half2*>(&r.x), b = *reinterpret_cast<const __half2*>(&r.y);
  return make_float4(__low2float(a), __high2float(a), __low2float(b), __high2float(b));
}

// Stage D values of x in shared memory as floats (RMS-normalized with weight nw and eps when NORM, rounded
// through x's type as the separate RMSNorm rounds). Each thread issues a fixed number of 4-value loads,
// unrolled, before using any: a loop over blockDim waited one memory latency per round. Ends synchronized.
template <int D, int NT, bool NORM, typename T, typename W>
__device__ __forceinline__ void mht_stage(const T* x, const W* nw, float eps, float* xs) {
  constexpr int ROUNDS = (D / 4 + NT - 1) / NT;
  float4 xv[ROUNDS], wv[ROUNDS];
  #pragma unroll
  for (int r = 0; r < ROUNDS; ++r) {
    const int i = threadIdx.x + r * NT;
    if (i < D / 4) {
      xv[r] = mht_load4(x + 4 * i);
      if (NORM) wv[r] = mht_load4(nw + 4 * i);
    }
  }
  float inv = 1.f;
  if (NORM) {
    __shared__ float part[32];
    float ss = 0.f;
    #pragma unroll
    for (int r = 0; r < ROUNDS; ++r) {
      if (threadIdx.x + r * NT < D / 4) ss += xv[r].x * xv[r].x + xv[r].y * xv[r].y + xv[r].z * xv[r].z + xv[r].w * xv[r].w;
    }
    #pragma unroll
    for (int off = 16; off > 0; off >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, off);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = ss;
    __syncthreads();
    float tot = 0.f;
    #pragma unroll
    for (int i = 0; i < NT / 32; ++i) tot += part[i];
    inv = rsqrtf(tot / D + eps);
  }
  #pragma unroll
  for (int r = 0; r < ROUNDS; ++r) {
    const int i = threadIdx.x + r * NT;
    if (i < D / 4) {
      float4 v = xv[r];
      if (NORM) {
        const float4 w = wv[r];
        v = make_float4(static_cast<float>(static_cast<T>(w.x * (v.x * inv))), static_cast<float>(static_cast<T>(w.y * (v.y * inv))),
                        static_cast<float>(static_cast<T>(w.z * (v.z * inv))), static_cast<float>(static_cast<T>(w.w * (v.w * inv))));
      }
      reinterpret_cast<float4*>(xs)[i] = v;
    }
  }
  __syncthreads();
}
"""

# R rows (rows[0..R-1]) of an affine 8-bit matrix times x, staged in shared memory (RMS-normalized when
# NORM). Every lane of the warp gets the R sums; every thread of the block must call it (the staging
# synchronizes), a warp with live false only helps stage. PRE: this lane's first chunk of each row is
# requested before the staging, whose latency it then shares. Bytes become floats as (2^23 + b) - 2^23: a
# byte permute and an add instead of an integer conversion (a quarter-rate instruction that held the LM
# head to ~3.0 TB/s).
_ROWS_FN = r"""
template <int D, int R, int GS, int NT, bool NORM, bool PRE, typename T, typename W, typename S>
__device__ __forceinline__ void mht_q8_rows(const T* x, const W* nw, float eps, const uint32_t* w,
                                            const S* scales, const S* biases, const int* rows, bool live,
                                            float* xs, float* acc) {
  constexpr int NC = D / 16;
  const int lane = threadIdx.x & 31;
  const uint4* w4 = reinterpret_cast<const uint4*>(w);
  uint4 q0[R];
  if (PRE && live && lane < NC) {
    #pragma unroll
    for (int r = 0; r < R; ++r) q0[r] = w4[(size_t)rows[r] * NC + lane];
  }
  mht_stage<D, NT, NORM>(x, nw, eps, xs);
  #pragma unroll
  for (int r = 0; r < R; ++r) acc[r] = 0.f;
  if (!live) return;
  const float4* x4 = reinterpret_cast<const float4*>(xs);
  auto chunk = [&](int c, const uint4* q) {
    float dot[R];
    float xsum = 0.f;
    #pragma unroll
    for (int r = 0; r < R; ++r) dot[r] = 0.f;
    #pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int wi = (i + lane) & 3;
      const float4 a = x4[c * 4 + wi];
      xsum += a.x + a.y + a.z + a.w;
      #pragma unroll
      for (int r = 0; r < R; ++r) {
        const uint32_t v = wi == 0 ? q[r].x : (wi == 1 ? q[r].y : (wi == 2 ? q[r].z : q[r].w));
        dot[r] += (__uint_as_float(__byte_perm(v, 0x4B000000u, 0x7650)) - 8388608.f) * a.x
            + (__uint_as_float(__byte_perm(v, 0x4B000000u, 0x7651)) - 8388608.f) * a.y
            + (__uint_as_float(__byte_perm(v, 0x4B000000u, 0x7652)) - 8388608.f) * a.z
            + (__uint_as_float(__byte_perm(v, 0x4B000000u, 0x7653)) - 8388608.f) * a.w;
      }
    }
    #pragma unroll
    for (int r = 0; r < R; ++r) {
      const size_t gi = (size_t)rows[r] * (D / GS) + c / (GS / 16);
      acc[r] += static_cast<float>(scales[gi]) * dot[r] + static_cast<float>(biases[gi]) * xsum;
    }
  };
  int cs = lane;
  if (PRE) {
    if (lane < NC) chunk(lane, q0);
    cs += 32;
  }
  #pragma unroll 2
  for (int c = cs; c < NC; c += 32) {
    uint4 q[R];
    #pragma unroll
    for (int r = 0; r < R; ++r) q[r] = w4[(size_t)rows[r] * NC + c];
    chunk(c, q);
  }
  #pragma unroll
  for (int r = 0; r < R; ++r) {
    #pragma unroll
    for (int off = 16; off > 0; off >>= 1) acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], off);
  }
}
"""

# Inputs: x (D) activations, w (N, D/4) uint32 (four uint8 per word, low byte first), scales and biases
# (N, D/GS), bias (N) (zeros when the layer has none); with NORM, x is first RMS-normalized with weight nw
# and eps (the RMSNorm before QKV or the LM head), with RES the residual res (N) is added to the output
# (o_proj's x + o_proj(a)), each rounded as the separate MLX ops round. A warp computes R consecutive rows.
_SOURCE = r"""
  __shared__ __align__(16) float xs[D];
  const int lane = threadIdx.x & 31;
  const int n0 = ((blockIdx.x * blockDim.x + threadIdx.x) >> 5) * R;
  int rows[R];
  #pragma unroll
  for (int r = 0; r < R; ++r) rows[r] = n0 + r;
  float acc[R];
  mht_q8_rows<D, R, GS, 32 * WARPS, NORM, PRE>(x, nw, NORM ? static_cast<float>(eps[0]) : 0.f, w, scales, biases,
                                             rows, n0 < N, xs, acc);
  if (n0 >= N) return;
  #pragma unroll
  for (int r = 0; r < R; ++r) {
    if (lane == r) {
      float v = acc[r] + static_cast<float>(bias[n0 + r]);
      if (RES) v = static_cast<float>(res[n0 + r]) + static_cast<float>(static_cast<T>(v));
      y[n0 + r] = static_cast<T>(v);
    }
  }
"""

# The fused QKV projection of one token with its RMSNorm, bias and RoPE (non-traditional: dims d and
# d + HD/2 rotate together, by pos / freqs[d]), written straight into q (NQ, HD), k and v (NK, HD) heads:
# one kernel instead of the matvec, RoPE and the reshapes and slices between them (each an operation the
# host pays for every token). A warp computes R/2 rotation pairs of one head, so both values of a pair are
# in the warp; rows are in the fused weight's order (q heads, k heads, v heads). Rounded as MLX rounds.
_QKV_SOURCE = r"""
  __shared__ __align__(16) float xs[D];
  constexpr int RH = R / 2, HALF = HD / 2, PER_HEAD = HALF / RH;
  const int lane = threadIdx.x & 31;
  const int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const int head = warp / PER_HEAD, d0 = (warp % PER_HEAD) * RH;
  const bool live = head < NQ + 2 * NK;
  int rows[R];
  #pragma unroll
  for (int j = 0; j < RH; ++j) {
    rows[j] = head * HD + d0 + j;
    rows[RH + j] = head * HD + d0 + j + HALF;
  }
  float acc[R];
  mht_q8_rows<D, R, GS, 32 * WARPS, true, PRE>(x, nw, static_cast<float>(eps[0]), w, scales, biases, rows, live,
                                             xs, acc);
  if (!live) return;
  float v[R];
  #pragma unroll
  for (int r = 0; r < R; ++r) v[r] = static_cast<float>(static_cast<T>(acc[r] + static_cast<float>(bias[rows[r]])));
  #pragma unroll
  for (int r = 0; r < R; ++r) {
    if (lane == r) {
      float o = v[r];
      const int j = r % RH;
      if (head < NQ + NK) {
        const float theta = static_cast<float>(pos[0]) * (1.f / static_cast<float>(freqs[d0 + j]));
        const float c = cosf(theta), s = sinf(theta);
        o = r < RH ? v[j] * c - v[RH + j] * s : v[j] * s + v[RH + j] * c;
      }
      const int n = rows[r];
      if (head < NQ) yq[n] = static_cast<T>(o);
      else if (head < NQ + NK) yk[n - NQ * HD] = static_cast<T>(o);
      else yv[n - (NQ + NK) * HD] = static_cast<T>(o);
    }
  }
"""

# Rows per warp and warps per block: the best of scripts/lab/cuda_kernel_lab.py's sweep on an H200 (QKV,
# o_proj and LM head all within 5% of their best with these).
_ROWS, _WARPS = 4, 8
_PRE = 1  # the first weights requested before the staging (lab: LM head 185 against 212 us without)
_SMEM_LIMIT = 48 * 1024

_kernels: dict[str, Any] = {}


def _kernel(name: str) -> Any:
    """The compiled kernel objects, built once and shared by every layer."""
    if not _kernels:
        header = LOAD4 + _ROWS_FN
        common = ["x", "w", "scales", "biases", "bias", "nw", "eps"]
        _kernels["matvec"] = mx.fast.cuda_kernel(
            name="mht_q8_matvec", input_names=[*common, "res"], output_names=["y"], source=_SOURCE,
            header=header,
        )
        _kernels["qkv"] = mx.fast.cuda_kernel(
            name="mht_q8_qkv_rope", input_names=[*common, "freqs", "pos"], output_names=["yq", "yk", "yv"],
            source=_QKV_SOURCE, header=header,
        )
    return _kernels[name]


def supports(layer: Any) -> bool:
    """Whether ``layer`` is an affine 8-bit QuantizedLinear the kernel is written for."""
    if not isinstance(layer, nn.QuantizedLinear) or getattr(layer, "mode", "affine") != "affine":
        return False
    if layer.bits != 8 or layer.group_size % 16 or layer.get("biases") is None:
        return False
    n, words = layer.weight.shape
    d = words * 4
    return n % _ROWS == 0 and d % layer.group_size == 0 and d * 4 <= _SMEM_LIMIT


class DecodeMatvec:
    """``layer(x)`` for one token (x of any shape holding D values), one kernel with the bias."""

    def __init__(self, layer: Any) -> None:
        self.layer = layer
        self.n, words = layer.weight.shape
        self.d = words * 4
        bias = layer.get("bias")
        self.bias = bias if bias is not None else mx.zeros((self.n,), dtype=layer.scales.dtype)
        mx.eval(self.bias)

    def _inputs(self, x: mx.array, norm: Any) -> list[mx.array]:
        lay = self.layer
        nw, eps = (norm.weight, mx.array([norm.eps], dtype=mx.float32)) if norm is not None else (x, x)
        return [x, lay.weight, lay.scales, lay.biases, self.bias, nw, eps]

    def __call__(self, x: mx.array, norm: Any = None, residual: mx.array | None = None, rows: int = _ROWS,
                 warps: int = _WARPS, pre: int | None = None) -> mx.array:
        """``layer(norm(x))`` (+ ``residual``): ``norm`` an nn.RMSNorm applied first, in the same kernel.
        x is read as its D values in memory order, so any contiguous shape does (the attention output of one
        token is already in o_proj's order); the result has the residual's shape, else x's with D -> N.
        ``rows``/``warps``: the launch shape (scripts/lab/cuda_kernel_lab.py sweeps them; rows must divide N)."""
        shape = residual.shape if residual is not None else (*x.shape[:-1], self.n)
        (y,) = _kernel("matvec")(
            inputs=[*self._inputs(x, norm), residual if residual is not None else x],
            template=[("T", x.dtype), ("N", self.n), ("D", self.d), ("R", rows), ("GS", self.layer.group_size),
                      ("NORM", int(norm is not None)), ("RES", int(residual is not None)),
                      ("WARPS", warps), ("PRE", _PRE if pre is None else pre)],
            grid=(self.n // rows * 32, 1, 1), threadgroup=(32 * warps, 1, 1), output_shapes=[shape],
            output_dtypes=[x.dtype],
        )
        return y

    def fits_rope(self, head_dim: int) -> bool:
        """Whether qkv_rope's warps (R/2 rotation pairs of one head each) tile this head size."""
        return head_dim % _ROWS == 0 and self.n % head_dim == 0

    def qkv_rope(self, x: mx.array, norm: Any, freqs: mx.array, pos: mx.array, n_q: int, n_kv: int,
                 head_dim: int) -> tuple[mx.array, mx.array, mx.array]:
        """The fused QKV layer of one token (B = 1) with its RMSNorm and RoPE at position ``pos``: q (1, n_q,
        1, head_dim), k and v (1, n_kv, 1, head_dim), as the attention takes them."""
        (q, k, v) = _kernel("qkv")(
            inputs=[*self._inputs(x, norm), freqs, pos],
            template=[("T", x.dtype), ("D", self.d), ("R", _ROWS), ("GS", self.layer.group_size), ("WARPS", _WARPS),
                      ("PRE", _PRE), ("NQ", n_q), ("NK", n_kv), ("HD", head_dim)],
            grid=(self.n // _ROWS * 32, 1, 1), threadgroup=(32 * _WARPS, 1, 1),
            output_shapes=[(1, n_q, 1, head_dim), (1, n_kv, 1, head_dim), (1, n_kv, 1, head_dim)],
            output_dtypes=[x.dtype] * 3,
        )
        return q, k, v

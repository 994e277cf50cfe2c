"""One-token affine 8-bit ``QuantizedLinear`` (with its bias, and the RMSNorm before it or the residual add
after it) as one custom CUDA kernel (CUDA only).

A decoded token multiplies one activation row by the QKV, o_proj and LM-head weights. MLX's 8-bit
``quantized_matmul`` reads them at ~0.6 TB/s on an H200 with float32 scales (the LM head, 579 MB, took
639 us per token) and adds the bias as a second kernel; this kernel reads at 1.0-3.0 TB/s (LM head
213 us) and adds the bias itself (scripts/cuda_kernel_lab.py, docs/benchmarks.md). Other backends and
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

_SOURCE = r"""
  __shared__ __align__(16) float xs[D];
  const int lane = threadIdx.x & 31;
  const int n0 = ((blockIdx.x * blockDim.x + threadIdx.x) >> 5) * R;
  constexpr int NC = D / 16;
  const uint4* w4 = reinterpret_cast<const uint4*>(w);
  mht_stage<D, 32 * WARPS, NORM>(x, nw, NORM ? static_cast<float>(eps[0]) : 0.f, xs);
  if (n0 >= N) return;
  const float4* x4 = reinterpret_cast<const float4*>(xs);
  float acc[R];
  #pragma unroll
  for (int r = 0; r < R; ++r) acc[r] = 0.f;
  #pragma unroll 2
  for (int c = lane; c < NC; c += 32) {
    uint4 q[R];
    #pragma unroll
    for (int r = 0; r < R; ++r) q[r] = w4[(size_t)(n0 + r) * NC + c];
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
        dot[r] += static_cast<float>(v & 255u) * a.x + static_cast<float>((v >> 8) & 255u) * a.y
            + static_cast<float>((v >> 16) & 255u) * a.z + static_cast<float>(v >> 24) * a.w;
      }
    }
    #pragma unroll
    for (int r = 0; r < R; ++r) {
      const size_t gi = (size_t)(n0 + r) * (D / GS) + c / (GS / 16);
      acc[r] += static_cast<float>(scales[gi]) * dot[r] + static_cast<float>(biases[gi]) * xsum;
    }
  }
  #pragma unroll
  for (int r = 0; r < R; ++r) {
    float v = acc[r];
    #pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    if (lane == r) {
      v = v + static_cast<float>(bias[n0 + r]);
      if (RES) v = static_cast<float>(res[n0 + r]) + static_cast<float>(static_cast<T>(v));
      y[n0 + r] = static_cast<T>(v);
    }
  }
"""

# Rows per warp and warps per block: the best of scripts/cuda_kernel_lab.py's sweep on an H200 (QKV,
# o_proj and LM head all within 5% of their best with these).
_ROWS, _WARPS = 4, 8
_SMEM_LIMIT = 48 * 1024

_kernel: Any = None


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
        global _kernel
        if _kernel is None:
            _kernel = mx.fast.cuda_kernel(
                name="mht_q8_matvec", input_names=["x", "w", "scales", "biases", "bias", "nw", "eps", "res"],
                output_names=["y"],
                source=_SOURCE, header=LOAD4,
            )
        self.layer = layer
        self.n, words = layer.weight.shape
        self.d = words * 4
        bias = layer.get("bias")
        self.bias = bias if bias is not None else mx.zeros((self.n,), dtype=layer.scales.dtype)
        mx.eval(self.bias)

    def __call__(self, x: mx.array, norm: Any = None, residual: mx.array | None = None, rows: int = _ROWS,
                 warps: int = _WARPS) -> mx.array:
        """``layer(norm(x))`` (+ ``residual``): ``norm`` an nn.RMSNorm applied first, in the same kernel.
        ``rows``/``warps``: the launch shape (scripts/cuda_kernel_lab.py sweeps them; rows must divide N)."""
        lay = self.layer
        one = self.bias[:1]
        nw, eps = (norm.weight, mx.array([norm.eps], dtype=mx.float32)) if norm is not None else (one, one)
        res = residual.reshape(self.n) if residual is not None else one
        (y,) = _kernel(
            inputs=[x.reshape(self.d), lay.weight, lay.scales, lay.biases, self.bias, nw, eps, res],
            template=[("T", x.dtype), ("N", self.n), ("D", self.d), ("R", rows), ("GS", lay.group_size),
                      ("NORM", int(norm is not None)), ("RES", int(residual is not None)),
                      ("WARPS", warps)],
            grid=(self.n // rows * 32, 1, 1), threadgroup=(32 * warps, 1, 1), output_shapes=[(self.n,)],
            output_dtypes=[x.dtype],
        )
        return y.reshape(*x.shape[:-1], self.n)

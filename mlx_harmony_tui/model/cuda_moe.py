"""The one-token MoE of an MXFP4 GPT-OSS as two custom CUDA kernels (CUDA only; other backends keep
model/gpt_oss.py's portable path).

On CUDA a decoded token is bound by the number of kernels, not by bytes (docs/benchmarks.md): the portable
one-token MoE is ~11 kernels per layer (router bias, top-k, gather, softmax, bias gather, two gather_qmm,
SwiGLU, weighting, sum, residual). Here it is the router matmul plus two kernels:

- ``gate_up``: every warp picks the token's top-k experts from the router logits itself (k rounds of a warp
  arg-max, then a softmax over the k), computes one gate row and one up row of its expert over the
  activations held in shared memory, adds the biases and applies the clamped SwiGLU.
- ``down``: every warp computes one hidden output over all k experts, adds their biases, weights them by
  the routing softmax and adds the residual.

Same math as the portable path (the GPU check, scripts/check_cuda_moe.py, compares both); float32
accumulation.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn

_HEADER = r"""
// Top-k experts of one token and their softmax weights; every lane of the warp gets the same result.
template <int E, int K, typename L, typename B>
__device__ __forceinline__ void mht_route(const L* logits, const B* rbias, int lane, int* idx, float* wts) {
  constexpr int PER = (E + 31) / 32;
  float v[PER];
  #pragma unroll
  for (int p = 0; p < PER; ++p) {
    int e = lane + 32 * p;
    v[p] = e < E ? static_cast<float>(logits[e]) + static_cast<float>(rbias[e]) : -INFINITY;
  }
  #pragma unroll
  for (int k = 0; k < K; ++k) {
    float best = -INFINITY;
    int bi = E;
    #pragma unroll
    for (int p = 0; p < PER; ++p) {
      int e = lane + 32 * p;
      if (e < E && (v[p] > best || (v[p] == best && e < bi))) { best = v[p]; bi = e; }
    }
    #pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      float ob = __shfl_xor_sync(0xffffffffu, best, off);
      int oi = __shfl_xor_sync(0xffffffffu, bi, off);
      if (ob > best || (ob == best && oi < bi)) { best = ob; bi = oi; }
    }
    if (bi >= E) bi = 0;  // only for NaN logits
    idx[k] = bi;
    wts[k] = best;
    #pragma unroll
    for (int p = 0; p < PER; ++p) {
      if (lane + 32 * p == bi) v[p] = -INFINITY;
    }
  }
  float m = wts[0], sum = 0.f;
  #pragma unroll
  for (int k = 0; k < K; ++k) { wts[k] = __expf(wts[k] - m); sum += wts[k]; }
  #pragma unroll
  for (int k = 0; k < K; ++k) wts[k] /= sum;
}

// Eight e2m1 values of one packed word times eight activations.
__device__ __forceinline__ float mht_fp4x8(uint32_t q, const float* lut, float4 a, float4 b) {
  return lut[q & 15u] * a.x + lut[(q >> 4) & 15u] * a.y + lut[(q >> 8) & 15u] * a.z
      + lut[(q >> 12) & 15u] * a.w + lut[(q >> 16) & 15u] * b.x + lut[(q >> 20) & 15u] * b.y
      + lut[(q >> 24) & 15u] * b.z + lut[(q >> 28) & 15u] * b.w;
}

__device__ __forceinline__ float mht_e8m0(uint8_t s) {
  return exp2f(static_cast<float>(s) - 127.f);
}

__device__ __forceinline__ float mht_warp_sum(float v) {
  #pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}
"""

_LUT_INIT = r"""
  __shared__ float lut[16];
  if (threadIdx.x < 16) {
    const float fp4[16] = {0.f, .5f, 1.f, 1.5f, 2.f, 3.f, 4.f, 6.f, -0.f, -.5f, -1.f, -1.5f, -2.f, -3.f, -4.f, -6.f};
    lut[threadIdx.x] = fp4[threadIdx.x];
  }
"""

# Inputs: h (H) normed activations, logits (E) router output without bias, rbias (E), w (E, 2I, H/8) packed
# mxfp4 [gate rows | up rows], s (E, 2I, H/32) e8m0 scales, b (E, 2I) biases, al (2) alpha and limit.
_GATE_UP = _LUT_INIT + r"""
  __shared__ __align__(16) float xs[H];
  for (int i = threadIdx.x; i < H; i += blockDim.x) xs[i] = static_cast<float>(h[i]);
  __syncthreads();
  const int lane = threadIdx.x & 31;
  const int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  if (warp >= K * I) return;
  const int slot = warp / I, j = warp % I;
  int idx[K];
  float wts[K];
  mht_route<E, K>(logits, rbias, lane, idx, wts);
  const int e = idx[slot];
  constexpr int NW = H / 8;
  const uint32_t* wg = w + ((size_t)e * 2 * I + j) * NW;
  const uint32_t* wu = w + ((size_t)e * 2 * I + I + j) * NW;
  const uint8_t* sg = s + ((size_t)e * 2 * I + j) * (H / 32);
  const uint8_t* su = s + ((size_t)e * 2 * I + I + j) * (H / 32);
  const float4* x4 = reinterpret_cast<const float4*>(xs);
  float g = 0.f, u = 0.f;
  #pragma unroll 4
  for (int wd = lane; wd < NW; wd += 32) {
    float4 a = x4[2 * wd], b4 = x4[2 * wd + 1];
    g += mht_fp4x8(wg[wd], lut, a, b4) * mht_e8m0(sg[wd >> 2]);
    u += mht_fp4x8(wu[wd], lut, a, b4) * mht_e8m0(su[wd >> 2]);
  }
  g = mht_warp_sum(g);
  u = mht_warp_sum(u);
  if (lane == 0) {
    g = static_cast<float>(static_cast<T>(g + static_cast<float>(b[(size_t)e * 2 * I + j])));
    u = static_cast<float>(static_cast<T>(u + static_cast<float>(b[(size_t)e * 2 * I + I + j])));
    const float alpha = static_cast<float>(al[0]), limit = static_cast<float>(al[1]);
    g = fminf(g, limit);
    u = fminf(fmaxf(u, -limit), limit);
    act[slot * I + j] = static_cast<T>((u + 1.f) * (g / (1.f + __expf(-alpha * g))));
  }
"""

# Inputs: act (K, I) from gate_up, logits, rbias, w (E, H, I/8), s (E, H, I/32), b (E, H), x (H) residual.
_DOWN = _LUT_INIT + r"""
  __shared__ __align__(16) float acts[K * I];
  for (int i = threadIdx.x; i < K * I; i += blockDim.x) acts[i] = static_cast<float>(act[i]);
  __syncthreads();
  const int lane = threadIdx.x & 31;
  const int o = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  if (o >= H) return;
  int idx[K];
  float wts[K];
  mht_route<E, K>(logits, rbias, lane, idx, wts);
  constexpr int NW = I / 8;
  float acc[K];
  #pragma unroll
  for (int k = 0; k < K; ++k) acc[k] = 0.f;
  const float4* a4 = reinterpret_cast<const float4*>(acts);
  #pragma unroll 2
  for (int wd = lane; wd < NW; wd += 32) {
    #pragma unroll
    for (int k = 0; k < K; ++k) {
      const size_t row = (size_t)idx[k] * H + o;
      float4 a = a4[(k * I) / 4 + 2 * wd], b4 = a4[(k * I) / 4 + 2 * wd + 1];
      acc[k] += mht_fp4x8(w[row * NW + wd], lut, a, b4) * mht_e8m0(s[row * (I / 32) + (wd >> 2)]);
    }
  }
  float y = 0.f;
  #pragma unroll
  for (int k = 0; k < K; ++k) {
    float d = mht_warp_sum(acc[k]);
    d = static_cast<float>(static_cast<T>(d + static_cast<float>(b[(size_t)idx[k] * H + o])));
    y += wts[k] * d;
  }
  if (lane == 0) out[o] = static_cast<T>(static_cast<float>(x[o]) + y);
"""

_WARPS_PER_BLOCK = 8
_SMEM_LIMIT = 48 * 1024


def _kernels() -> tuple[Any, Any]:
    gate_up = mx.fast.cuda_kernel(
        name="mht_moe_gate_up", input_names=["h", "logits", "rbias", "w", "s", "b", "al"],
        output_names=["act"], source=_GATE_UP, header=_HEADER,
    )
    down = mx.fast.cuda_kernel(
        name="mht_moe_down", input_names=["act", "logits", "rbias", "w", "s", "b", "x"],
        output_names=["out"], source=_DOWN, header=_HEADER,
    )
    return gate_up, down


def cuda_available() -> bool:
    """Whether MLX runs on a CUDA GPU here (the CPU-only and Metal builds have no usable mx.cuda)."""
    return bool(getattr(mx, "cuda", None) and mx.cuda.is_available())


def supports(moe: Any) -> bool:
    """Whether this MoE layer has the shapes and formats the kernels are written for."""
    ex = moe.experts
    gu, dn = ex.gate_up.quant, ex.down.quant
    if gu is None or dn is None:
        return False
    if any(q.mode != "mxfp4" or q.group_size != 32 or q.bits != 4 for q in (gu, dn)):
        return False
    E, two_i, words = ex.gate_up.weight.shape
    hidden, inter, k = words * 8, two_i // 2, moe.top_k
    if hidden % 32 or inter % 32 or k > E or E > 128:
        return False
    return hidden * 4 + 64 <= _SMEM_LIMIT and k * inter * 4 + 64 <= _SMEM_LIMIT


class FusedDecodeMoE:
    """``x + moe(h)`` for one token (x the residual stream, h its normed copy), three kernels."""

    _compiled: tuple[Any, Any] | None = None  # the two kernel objects, shared by all layers

    def __init__(self, moe: Any) -> None:
        if FusedDecodeMoE._compiled is None:
            FusedDecodeMoE._compiled = _kernels()
        ex = moe.experts
        self.router = moe.router
        self.gu, self.dn = ex.gate_up, ex.down
        self.E, two_i, words = ex.gate_up.weight.shape
        self.hidden, self.inter, self.k = words * 8, two_i // 2, moe.top_k
        self.al = mx.array([float(ex._alpha.item()), float(ex._limit.item())], dtype=mx.float32)

    def _logits(self, h: mx.array) -> mx.array:
        r = self.router
        if isinstance(r, nn.QuantizedLinear):
            return mx.quantized_matmul(
                h, r.weight, r.scales, r.get("biases"), transpose=True, group_size=r.group_size, bits=r.bits,
                mode=getattr(r, "mode", "affine"),
            )
        return h @ r.weight.T

    def __call__(self, x: mx.array, h: mx.array) -> mx.array:
        hv = h.reshape(self.hidden)
        logits = self._logits(hv[None])[0]
        return self.down(self.gate_up(hv, logits), logits, x.reshape(self.hidden)).reshape(x.shape)

    def _template(self, dtype: mx.Dtype) -> list[tuple[str, Any]]:
        return [("T", dtype), ("H", self.hidden), ("I", self.inter), ("E", self.E), ("K", self.k)]

    def gate_up(self, h: mx.array, logits: mx.array) -> mx.array:
        """(hidden,) normed activations -> (k, inter) SwiGLU outputs of the token's top-k experts."""
        assert self._compiled is not None
        (act,) = self._compiled[0](
            inputs=[h, logits, self.router.bias, self.gu.weight, self.gu.scales, self.gu.bias, self.al],
            template=self._template(h.dtype), grid=(self.k * self.inter * 32, 1, 1),
            threadgroup=(32 * _WARPS_PER_BLOCK, 1, 1), output_shapes=[(self.k, self.inter)], output_dtypes=[h.dtype],
        )
        return act

    def down(self, act: mx.array, logits: mx.array, x: mx.array) -> mx.array:
        """x + the routing-weighted sum of the experts' down projections (with biases), (hidden,)."""
        assert self._compiled is not None
        (out,) = self._compiled[1](
            inputs=[act, logits, self.router.bias, self.dn.weight, self.dn.scales, self.dn.bias, x],
            template=self._template(x.dtype), grid=(self.hidden * 32, 1, 1),
            threadgroup=(32 * _WARPS_PER_BLOCK, 1, 1), output_shapes=[(self.hidden,)], output_dtypes=[x.dtype],
        )
        return out

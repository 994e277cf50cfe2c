"""The one-token MoE of an MXFP4 GPT-OSS as two custom CUDA kernels (CUDA only; other backends keep
model/gpt_oss.py's portable path).

The portable one-token MoE is ~11 kernels per layer (router bias, top-k, gather, softmax, bias gather, two
gather_qmm, SwiGLU, weighting, sum, residual) after the RMSNorm. Here it is three kernels:

- ``router``: one block per expert, the post-attention RMSNorm of x and that expert's router logit (block
  0 also writes the normalized activations).

- ``gate_up``: every warp picks the token's top-k experts from the router logits (k rounds of a warp
  arg-max, then a softmax over the k), computes R gate and R up rows of its expert over the normalized
  activations held in shared memory, adds the biases and applies the clamped SwiGLU.
- ``down``: a block of k warps computes R hidden outputs, warp i over the i-th routed expert, with its
  biases; the block combines them with the routing softmax and adds the residual.

Both read the packed weights 16 bytes (one 32-value scale group) per lane at a time and decode e2m1 without
a lookup table (the shared-memory table was what bound the first version: docs/benchmarks.md). Same math as
the portable path (scripts/lab/check_cuda_moe.py compares both on the GPU); float32 accumulation.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn

from mlx_harmony_tui.model import cuda_matvec

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

// Two e2m1 values (bits 0-3 and 16-19 of t) as floats times 2^-14: an e2m1 nibble placed in the low
// exponent and top mantissa bits of an fp16 is that value times 2^-14 (subnormals included), so no table.
__device__ __forceinline__ void mht_fp4pair(uint32_t t, float& lo, float& hi) {
  const uint32_t hb = ((t & 0x00080008u) << 12) | ((t & 0x00070007u) << 9);
  asm("{.reg .b16 l, h; mov.b32 {l, h}, %2; cvt.f32.f16 %0, l; cvt.f32.f16 %1, h;}" : "=f"(lo), "=f"(hi) : "r"(hb));
}

// Eight e2m1 values of one packed word (element i in bits 4i..4i+3) times eight activations, times 2^-14.
__device__ __forceinline__ float mht_fp4x8(uint32_t q, float4 a, float4 b) {
  float l0, h0, l1, h1, l2, h2, l3, h3;
  mht_fp4pair(q, l0, h0);
  mht_fp4pair(q >> 4, l1, h1);
  mht_fp4pair(q >> 8, l2, h2);
  mht_fp4pair(q >> 12, l3, h3);
  return l0 * a.x + l1 * a.y + l2 * a.z + l3 * a.w + h0 * b.x + h1 * b.y + h2 * b.z + h3 * b.w;
}

__device__ __forceinline__ uint32_t mht_word(uint4 q, int i) {
  return i == 0 ? q.x : (i == 1 ? q.y : (i == 2 ? q.z : q.w));
}

// The e8m0 scale times 2^14 (undoing mht_fp4x8's 2^-14).
__device__ __forceinline__ float mht_e8m0(uint8_t s) {
  return exp2f(static_cast<float>(s) - 113.f);
}

__device__ __forceinline__ float mht_warp_sum(float v) {
  #pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}
"""

# Inputs: x (H) activations (with NORM the residual stream, RMS-normalized with nw and eps by every block
# while staging it in shared memory; else the normalized h from the router kernel), logits (E) router
# output without bias, rbias (E), w (E, 2I, H/8) packed
# mxfp4 [gate rows | up rows], s (E, 2I, H/32) e8m0 scales, b (E, 2I) biases, al (2) alpha and limit.
# Output act (K, I) float32, rounded through T as the portable path rounds. A warp computes R consecutive
# gate and up rows of one slot; each lane reads 16 bytes (32 values, one scale) of a row at a time, and its
# four words in an order rotated by lane so that the lanes' shared-memory reads spread over the banks.
_GATE_UP = r"""
  __shared__ __align__(16) float xs[H];
  const int lane = threadIdx.x & 31;
  const int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  mht_stage<H, 32 * WARPS, NORM>(x, nw, NORM ? static_cast<float>(eps[0]) : 0.f, xs);
  int idx[K];
  float wts[K];
  mht_route<E, K>(logits, rbias, lane, idx, wts);
  if (warp >= K * (I / R)) return;
  const int slot = warp / (I / R), j0 = (warp % (I / R)) * R;
  const int e = idx[slot];
  constexpr int NC = H / 32;
  const uint4* w4 = reinterpret_cast<const uint4*>(w);
  const float4* x4 = reinterpret_cast<const float4*>(xs);
  float g[R], u[R];
  #pragma unroll
  for (int r = 0; r < R; ++r) { g[r] = 0.f; u[r] = 0.f; }
  #pragma unroll
  for (int t = 0; t < (NC + 31) / 32; ++t) {
    const int c = lane + 32 * t;
    if (c < NC) {
      uint4 qg[R], qu[R];
      float sg[R], su[R];
      #pragma unroll
      for (int r = 0; r < R; ++r) {
        const size_t rg = (size_t)e * 2 * I + j0 + r, ru = rg + I;
        qg[r] = w4[rg * NC + c];
        qu[r] = w4[ru * NC + c];
        sg[r] = mht_e8m0(s[rg * NC + c]);
        su[r] = mht_e8m0(s[ru * NC + c]);
      }
      float pg[R], pu[R];
      #pragma unroll
      for (int r = 0; r < R; ++r) { pg[r] = 0.f; pu[r] = 0.f; }
      #pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int wi = (i + lane) & 3;
        const float4 a = x4[c * 8 + 2 * wi], b4 = x4[c * 8 + 2 * wi + 1];
        #pragma unroll
        for (int r = 0; r < R; ++r) {
          pg[r] += mht_fp4x8(mht_word(qg[r], wi), a, b4);
          pu[r] += mht_fp4x8(mht_word(qu[r], wi), a, b4);
        }
      }
      #pragma unroll
      for (int r = 0; r < R; ++r) { g[r] += pg[r] * sg[r]; u[r] += pu[r] * su[r]; }
    }
  }
  #pragma unroll
  for (int r = 0; r < R; ++r) {
    float gg = mht_warp_sum(g[r]), uu = mht_warp_sum(u[r]);
    if (lane == r) {
      const int j = j0 + r;
      gg = static_cast<float>(static_cast<T>(gg + static_cast<float>(b[(size_t)e * 2 * I + j])));
      uu = static_cast<float>(static_cast<T>(uu + static_cast<float>(b[(size_t)e * 2 * I + I + j])));
      const float alpha = static_cast<float>(al[0]), limit = static_cast<float>(al[1]);
      gg = fminf(gg, limit);
      uu = fminf(fmaxf(uu, -limit), limit);
      act[slot * I + j] = static_cast<float>(static_cast<T>((uu + 1.f) * (gg / (1.f + __expf(-alpha * gg)))));
    }
  }
"""

# Inputs: x (H), nw (H), eps (1): the residual stream and its RMSNorm; rw (E, H) the float router weight.
# Outputs logits (E) without the bias, and h (H) the normalized x, rounded through T as the separate norm
# and matmul round. One block per expert (one row each): the norm and the router were two MLX kernels.
_ROUTER = r"""
  __shared__ __align__(16) float xs[H];
  __shared__ float part[32];
  constexpr int NT = 32 * WARPS, ROUNDS = (H / 4 + NT - 1) / NT;
  const int e = blockIdx.x;
  float4 wv[ROUNDS];
  #pragma unroll
  for (int r = 0; r < ROUNDS; ++r) {  // the row's loads go out before the staging waits
    const int i = threadIdx.x + r * NT;
    if (i < H / 4) wv[r] = mht_load4(rw + (size_t)e * H + 4 * i);
  }
  mht_stage<H, NT, true>(x, nw, static_cast<float>(eps[0]), xs);
  if (e == 0) {  // the normalized activations, for gate_up (which would otherwise normalize in every block)
    for (int i = threadIdx.x; i < H; i += NT) h[i] = static_cast<T>(xs[i]);
  }
  float acc = 0.f;
  #pragma unroll
  for (int r = 0; r < ROUNDS; ++r) {
    const int i = threadIdx.x + r * NT;
    if (i < H / 4) {
      const float4 a = reinterpret_cast<const float4*>(xs)[i], w = wv[r];
      acc += a.x * w.x + a.y * w.y + a.z * w.z + a.w * w.w;
    }
  }
  acc = mht_warp_sum(acc);
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    float tot = 0.f;
    #pragma unroll
    for (int i = 0; i < NT / 32; ++i) tot += part[i];
    logits[e] = static_cast<T>(tot);
  }
"""

# Inputs: act (K, I) float32 from gate_up, logits, rbias, w (E, H, I/8), s (E, H, I/32), b (E, H), x the
# residual (H values). A block of K warps computes R outputs, warp k over the k-th routed expert, combined
# in shared memory with the routing weights and the residual. The activations are read from global memory
# (the block's warps share them through L1) rather than copied into 46 KB of shared memory per block, which
# had held an earlier version to a third of the SM's warps; one warp per output row over all K experts
# (the version before this one) left 720 warps for the whole GPU, 8.5% occupancy.
_DOWN = r"""
  __shared__ float part[K][R];
  const int lane = threadIdx.x & 31, k = threadIdx.x >> 5;
  const int o0 = blockIdx.x * R;
  int idx[K];
  float wts[K];
  mht_route<E, K>(logits, rbias, lane, idx, wts);
  constexpr int NC = I / 32;
  const uint4* w4 = reinterpret_cast<const uint4*>(w);
  const float4* a4 = reinterpret_cast<const float4*>(act) + (k * I) / 4;
  int e = idx[0];
  float wk = wts[0];
  #pragma unroll
  for (int kk = 1; kk < K; ++kk) {  // a select, not a dynamic index (which would put idx in local memory)
    if (k == kk) { e = idx[kk]; wk = wts[kk]; }
  }
  float acc[R];
  #pragma unroll
  for (int r = 0; r < R; ++r) acc[r] = 0.f;
  #pragma unroll
  for (int t = 0; t < (NC + 31) / 32; ++t) {
    const int c = lane + 32 * t;
    if (c < NC) {
      uint4 q[R];
      float sc[R];
      #pragma unroll
      for (int r = 0; r < R; ++r) {
        const size_t row = (size_t)e * H + o0 + r;
        q[r] = w4[row * NC + c];
        sc[r] = mht_e8m0(s[row * NC + c]);
      }
      float p[R];
      #pragma unroll
      for (int r = 0; r < R; ++r) p[r] = 0.f;
      #pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float4 a = __ldg(a4 + c * 8 + 2 * i), b4 = __ldg(a4 + c * 8 + 2 * i + 1);
        #pragma unroll
        for (int r = 0; r < R; ++r) p[r] += mht_fp4x8(mht_word(q[r], i), a, b4);
      }
      #pragma unroll
      for (int r = 0; r < R; ++r) acc[r] += p[r] * sc[r];
    }
  }
  #pragma unroll
  for (int r = 0; r < R; ++r) {
    const float d = mht_warp_sum(acc[r]);
    if (lane == 0) part[k][r] = wk * static_cast<float>(static_cast<T>(d + static_cast<float>(b[(size_t)e * H + o0 + r])));
  }
  __syncthreads();
  if (threadIdx.x < R) {
    const int r = threadIdx.x;
    float y = 0.f;
    #pragma unroll
    for (int kk = 0; kk < K; ++kk) y += part[kk][r];
    out[o0 + r] = static_cast<T>(static_cast<float>(x[o0 + r]) + y);
  }
"""

# Rows per warp and warps per block: the fastest of scripts/lab/cuda_kernel_lab.py's sweep on an H200.
_GATE_UP_ROWS, _GATE_UP_WARPS = 2, 8
_DOWN_ROWS = 8
_ROUTER_WARPS = 8
_SMEM_LIMIT = 48 * 1024


def _kernels() -> tuple[Any, Any, Any]:
    gate_up = mx.fast.cuda_kernel(
        name="mht_moe_gate_up", input_names=["x", "nw", "eps", "logits", "rbias", "w", "s", "b", "al"],
        output_names=["act"], source=_GATE_UP, header=_HEADER + cuda_matvec.LOAD4,
    )
    router = mx.fast.cuda_kernel(
        name="mht_moe_router", input_names=["x", "nw", "eps", "rw"], output_names=["logits", "h"], source=_ROUTER,
        header=_HEADER + cuda_matvec.LOAD4,
    )
    down = mx.fast.cuda_kernel(
        name="mht_moe_down", input_names=["act", "logits", "rbias", "w", "s", "b", "x"],
        output_names=["out"], source=_DOWN, header=_HEADER,
    )
    return gate_up, down, router


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
    if hidden % 32 or inter % 32 or inter % _GATE_UP_ROWS or hidden % _DOWN_ROWS or k > E or E > 128:
        return False
    return hidden * 4 <= _SMEM_LIMIT


class FusedDecodeMoE:
    """``x + moe(norm(x))`` for one token (x the residual stream, norm the post-attention RMSNorm), three
    kernels: router (with the norm), gate_up, down (with the residual)."""

    _compiled: tuple[Any, Any, Any] | None = None  # the kernel objects, shared by all layers

    def __init__(self, moe: Any) -> None:
        if FusedDecodeMoE._compiled is None:
            FusedDecodeMoE._compiled = _kernels()
        ex = moe.experts
        self.router = moe.router
        self.gu, self.dn = ex.gate_up, ex.down
        self.E, two_i, words = ex.gate_up.weight.shape
        self.hidden, self.inter, self.k = words * 8, two_i // 2, moe.top_k
        self.al = mx.array([float(ex._alpha.item()), float(ex._limit.item())], dtype=mx.float32)
        # The router kernel takes a float router; a quantized one keeps MLX's matmul (after MLX's norm).
        self.router_kernel = not isinstance(self.router, nn.QuantizedLinear)

    def _logits(self, h: mx.array) -> mx.array:
        r = self.router
        if isinstance(r, nn.QuantizedLinear):
            return mx.quantized_matmul(
                h, r.weight, r.scales, r.get("biases"), transpose=True, group_size=r.group_size, bits=r.bits,
                mode=getattr(r, "mode", "affine"),
            )
        return h @ r.weight.T

    def __call__(self, x: mx.array, norm: Any) -> mx.array:
        """The kernels read x as its hidden values in memory order and return x's shape: no reshape ops
        (each one more operation for the host to evaluate per layer and token)."""
        if self.router_kernel:
            logits, h = self.route(x, norm)
        else:
            h = norm(x.reshape(self.hidden))
            logits = self._logits(h[None])[0]
        return self.down(self.gate_up(h, None, logits), logits, x)

    def _template(self, dtype: mx.Dtype, rows: int, warps: int) -> list[tuple[str, Any]]:
        return [("T", dtype), ("H", self.hidden), ("I", self.inter), ("E", self.E), ("K", self.k), ("R", rows),
                ("WARPS", warps)]

    @staticmethod
    def _eps(norm: Any) -> mx.array:
        return mx.array([norm.eps], dtype=mx.float32)

    def route(self, x: mx.array, norm: Any) -> tuple[mx.array, mx.array]:
        """(hidden,) residual stream -> (E,) router logits of norm(x) without the bias, and norm(x) (both
        rounded through x's dtype)."""
        assert self._compiled is not None
        logits, h = self._compiled[2](
            inputs=[x, norm.weight, self._eps(norm), self.router.weight],
            template=self._template(x.dtype, 1, _ROUTER_WARPS), grid=(self.E * 32 * _ROUTER_WARPS, 1, 1),
            threadgroup=(32 * _ROUTER_WARPS, 1, 1), output_shapes=[(self.E,), (self.hidden,)],
            output_dtypes=[x.dtype, x.dtype],
        )
        return logits, h

    def gate_up(self, x: mx.array, norm: Any, logits: mx.array, rows: int = _GATE_UP_ROWS,
                warps: int = _GATE_UP_WARPS) -> mx.array:
        """(hidden,) activations -> (k, inter) SwiGLU outputs of the token's top-k experts (float32, rounded
        through x's dtype): x already normalized (norm None), or normalized here by every block. ``rows``/
        ``warps``: the launch shape (the lab sweeps them)."""
        assert self._compiled is not None
        # Without a norm the kernel never reads nw or eps: pass arrays of their types, not new ones (an
        # astype here was one more kernel per layer and token for bfloat16 activations).
        nw, eps = (norm.weight, self._eps(norm)) if norm is not None else (x, self.al)
        (act,) = self._compiled[0](
            inputs=[x, nw, eps, logits, self.router.bias, self.gu.weight, self.gu.scales, self.gu.bias, self.al],
            template=[*self._template(x.dtype, rows, warps), ("NORM", int(norm is not None))],
            grid=(self.k * self.inter // rows * 32, 1, 1), threadgroup=(32 * warps, 1, 1),
            output_shapes=[(self.k, self.inter)], output_dtypes=[mx.float32],
        )
        return act

    def down(self, act: mx.array, logits: mx.array, x: mx.array, rows: int = _DOWN_ROWS) -> mx.array:
        """x + the routing-weighted sum of the experts' down projections (with biases), in x's shape.
        ``rows``: outputs per block (the lab sweeps them; must divide hidden)."""
        assert self._compiled is not None
        (out,) = self._compiled[1](
            inputs=[act, logits, self.router.bias, self.dn.weight, self.dn.scales, self.dn.bias, x],
            template=self._template(x.dtype, rows, self.k), grid=(self.hidden // rows * 32 * self.k, 1, 1),
            threadgroup=(32 * self.k, 1, 1), output_shapes=[x.shape], output_dtypes=[x.dtype],
        )
        return out

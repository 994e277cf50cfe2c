"""GPU lab for the decode matrix-vector kernels: how fast can a one-token layer read its weights?

Run on the GPU machine (shared/gpu.md): ``python scripts/cuda_kernel_lab.py``. Builds 24 layers of random
gpt-oss-20b-shaped weights (so the chain cannot run from the L2 cache, as the real decode cannot) and
times, per layer (24 chained calls, best of several rounds):

- ``launch``: an almost empty custom kernel (the floor of one kernel in the chain);
- ``read``: a plain 16-byte-load read of the 4 experts' bytes (what bandwidth a kernel can reach here);
- the one-token MoE kernels: v1 (the first model/cuda_moe.py: shared-memory e2m1 table, 4-byte loads, a row
  per warp), v2 (16-byte loads, R rows per warp, lane-rotated shared-memory reads) and v3 (v2 without the
  table; down reads its activations from L1): v3 is what model/cuda_moe.py runs now (gate_up R=2 x 8 warps,
  down R=4 x 4 warps), each checked against v1's outputs;
- MLX's 8-bit ``quantized_matmul`` for QKV, o_proj and the LM head against the 8-bit affine matvec of
  model/cuda_matvec.py (with the bias; R rows x warps swept).
"""

from __future__ import annotations

import argparse
import time

import mlx.core as mx

H, I, E, K, LAYERS = 2880, 2880, 32, 4, 24  # noqa: E741
QKV, O_IN, VOCAB = 5120, 4096, 201088

# The first version of model/cuda_moe.py (third session): a shared-memory e2m1 table, 4-byte loads, one
# row per warp; kept here as the baseline of the rewrites below.
_V1_HEADER = r"""
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

_V1_LUT = r"""
  __shared__ float lut[16];
  if (threadIdx.x < 16) {
    const float fp4[16] = {0.f, .5f, 1.f, 1.5f, 2.f, 3.f, 4.f, 6.f, -0.f, -.5f, -1.f, -1.5f, -2.f, -3.f, -4.f, -6.f};
    lut[threadIdx.x] = fp4[threadIdx.x];
  }
"""

_GATE_UP_V1 = _V1_LUT + r"""
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

_DOWN_V1 = _V1_LUT + r"""
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

_V2_HEADER = _V1_HEADER + r"""
__device__ __forceinline__ uint32_t mht_word(uint4 q, int i) {
  return i == 0 ? q.x : (i == 1 ? q.y : (i == 2 ? q.z : q.w));
}
"""

_V3_HEADER = _V2_HEADER + r"""
// Two e2m1 nibbles (bits 0-3 and 16-19 of t) as floats times 2^-14, via their fp16 bit patterns: no table.
__device__ __forceinline__ void mht_fp4pair(uint32_t t, float& lo, float& hi) {
  const uint32_t hb = ((t & 0x00080008u) << 12) | ((t & 0x00070007u) << 9);
  asm("{.reg .b16 l, h; mov.b32 {l, h}, %2; cvt.f32.f16 %0, l; cvt.f32.f16 %1, h;}" : "=f"(lo), "=f"(hi) : "r"(hb));
}
// Eight e2m1 values of one packed word (element i in bits 4i..4i+3) times eight activations, times 2^-14.
__device__ __forceinline__ float mht_fp4x8h(uint32_t q, float4 a, float4 b) {
  float l0, h0, l1, h1, l2, h2, l3, h3;
  mht_fp4pair(q, l0, h0);
  mht_fp4pair(q >> 4, l1, h1);
  mht_fp4pair(q >> 8, l2, h2);
  mht_fp4pair(q >> 12, l3, h3);
  return l0 * a.x + l1 * a.y + l2 * a.z + l3 * a.w + h0 * b.x + h1 * b.y + h2 * b.z + h3 * b.w;
}
"""

# v2 gate_up: warp = R consecutive j (gate and up rows) of one slot; 16-byte loads (one scale group each).
_GATE_UP_V2 = _V1_LUT + r"""
  __shared__ __align__(16) float xs[H];
  for (int i = threadIdx.x; i < H; i += blockDim.x) xs[i] = static_cast<float>(h[i]);
  const int lane = threadIdx.x & 31;
  const int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  int idx[K];
  float wts[K];
  mht_route<E, K>(logits, rbias, lane, idx, wts);
  __syncthreads();
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
          pg[r] += mht_fp4x8(mht_word(qg[r], wi), lut, a, b4);
          pu[r] += mht_fp4x8(mht_word(qu[r], wi), lut, a, b4);
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
      act[slot * I + j] = static_cast<T>((uu + 1.f) * (gg / (1.f + __expf(-alpha * gg))));
    }
  }
"""

# v2 down: warp = R consecutive outputs over all K experts; 16-byte loads; activations in shared memory.
_DOWN_V2 = _V1_LUT + r"""
  __shared__ __align__(16) float acts[K * I];
  for (int i = threadIdx.x; i < K * I; i += blockDim.x) acts[i] = static_cast<float>(act[i]);
  const int lane = threadIdx.x & 31;
  const int o0 = ((blockIdx.x * blockDim.x + threadIdx.x) >> 5) * R;
  int idx[K];
  float wts[K];
  mht_route<E, K>(logits, rbias, lane, idx, wts);
  __syncthreads();
  if (o0 >= H) return;
  constexpr int NC = I / 32;
  const uint4* w4 = reinterpret_cast<const uint4*>(w);
  const float4* a4 = reinterpret_cast<const float4*>(acts);
  float acc[K][R];
  #pragma unroll
  for (int k = 0; k < K; ++k) {
    #pragma unroll
    for (int r = 0; r < R; ++r) acc[k][r] = 0.f;
  }
  #pragma unroll
  for (int k = 0; k < K; ++k) {
    #pragma unroll
    for (int t = 0; t < (NC + 31) / 32; ++t) {
      const int c = lane + 32 * t;
      if (c < NC) {
        uint4 q[R];
        float sc[R];
        #pragma unroll
        for (int r = 0; r < R; ++r) {
          const size_t row = (size_t)idx[k] * H + o0 + r;
          q[r] = w4[row * NC + c];
          sc[r] = mht_e8m0(s[row * NC + c]);
        }
        float p[R];
        #pragma unroll
        for (int r = 0; r < R; ++r) p[r] = 0.f;
        #pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int wi = (i + lane) & 3;
          const float4 a = a4[(k * I) / 4 + c * 8 + 2 * wi], b4 = a4[(k * I) / 4 + c * 8 + 2 * wi + 1];
          #pragma unroll
          for (int r = 0; r < R; ++r) p[r] += mht_fp4x8(mht_word(q[r], wi), lut, a, b4);
        }
        #pragma unroll
        for (int r = 0; r < R; ++r) acc[k][r] += p[r] * sc[r];
      }
    }
  }
  #pragma unroll
  for (int r = 0; r < R; ++r) {
    float y = 0.f;
    #pragma unroll
    for (int k = 0; k < K; ++k) {
      float d = mht_warp_sum(acc[k][r]);
      d = static_cast<float>(static_cast<T>(d + static_cast<float>(b[(size_t)idx[k] * H + o0 + r])));
      y += wts[k] * d;
    }
    if (lane == r) out[o0 + r] = static_cast<T>(static_cast<float>(x[o0 + r]) + y);
  }
"""

# v3: v2 with the table-free fp4 conversion (the 2^14 goes into the scale).
_GATE_UP_V3 = _GATE_UP_V2.replace("mht_fp4x8(", "mht_fp4x8h(").replace(", lut, a, b4)", ", a, b4)").replace(
    "g[r] += pg[r] * sg[r]; u[r] += pu[r] * su[r];", "g[r] += pg[r] * sg[r] * 16384.f; u[r] += pu[r] * su[r] * 16384.f;")

# v3 down: activations (float32) read from global memory (L1-cached) instead of a 46 KB shared copy per block.
_DOWN_V3 = r"""
  const int lane = threadIdx.x & 31;
  const int o0 = ((blockIdx.x * blockDim.x + threadIdx.x) >> 5) * R;
  if (o0 >= H) return;
  int idx[K];
  float wts[K];
  mht_route<E, K>(logits, rbias, lane, idx, wts);
  constexpr int NC = I / 32;
  const uint4* w4 = reinterpret_cast<const uint4*>(w);
  const float4* a4 = reinterpret_cast<const float4*>(act);
  float acc[K][R];
  #pragma unroll
  for (int k = 0; k < K; ++k) {
    #pragma unroll
    for (int r = 0; r < R; ++r) acc[k][r] = 0.f;
  }
  #pragma unroll
  for (int k = 0; k < K; ++k) {
    #pragma unroll
    for (int t = 0; t < (NC + 31) / 32; ++t) {
      const int c = lane + 32 * t;
      if (c < NC) {
        uint4 q[R];
        float sc[R];
        #pragma unroll
        for (int r = 0; r < R; ++r) {
          const size_t row = (size_t)idx[k] * H + o0 + r;
          q[r] = w4[row * NC + c];
          sc[r] = mht_e8m0(s[row * NC + c]) * 16384.f;
        }
        float p[R];
        #pragma unroll
        for (int r = 0; r < R; ++r) p[r] = 0.f;
        #pragma unroll
        for (int i = 0; i < 4; ++i) {
          const float4 a = __ldg(a4 + (k * I) / 4 + c * 8 + 2 * i), b4 = __ldg(a4 + (k * I) / 4 + c * 8 + 2 * i + 1);
          const uint32_t sel = i;
          #pragma unroll
          for (int r = 0; r < R; ++r) p[r] += mht_fp4x8h(mht_word(q[r], sel), a, b4);
        }
        #pragma unroll
        for (int r = 0; r < R; ++r) acc[k][r] += p[r] * sc[r];
      }
    }
  }
  #pragma unroll
  for (int r = 0; r < R; ++r) {
    float y = 0.f;
    #pragma unroll
    for (int k = 0; k < K; ++k) {
      float d = mht_warp_sum(acc[k][r]);
      d = static_cast<float>(static_cast<T>(d + static_cast<float>(b[(size_t)idx[k] * H + o0 + r])));
      y += wts[k] * d;
    }
    if (lane == r) out[o0 + r] = static_cast<T>(static_cast<float>(x[o0 + r]) + y);
  }
"""

# 8-bit affine matvec with the layer bias: y[n] = sum_g scale[n,g] * (q . x)_g + bias_q[n,g] * sum(x_g) + b[n].
# w (N, D/4) uint32 (four uint8 per word), scales/biases (N, D/64). Warp = R rows; 16-byte loads.
_Q8_MV = r"""
  __shared__ __align__(16) float xs[D];
  for (int i = threadIdx.x; i < D; i += blockDim.x) xs[i] = static_cast<float>(x[i]);
  __syncthreads();
  const int lane = threadIdx.x & 31;
  const int n0 = ((blockIdx.x * blockDim.x + threadIdx.x) >> 5) * R;
  if (n0 >= N) return;
  constexpr int NC = D / 16;  // 16-byte chunks per row; 4 chunks per group of 64
  const uint4* w4 = reinterpret_cast<const uint4*>(w);
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
      const size_t gi = (size_t)(n0 + r) * (D / 64) + c / 4;
      acc[r] += static_cast<float>(scales[gi]) * dot[r] + static_cast<float>(biases[gi]) * xsum;
    }
  }
  #pragma unroll
  for (int r = 0; r < R; ++r) {
    float v = cuda_warp_sum_(acc[r]);
    if (lane == r) y[n0 + r] = static_cast<T>(v + static_cast<float>(bias[n0 + r]));
  }
"""
_Q8_HEADER = r"""
__device__ __forceinline__ float cuda_warp_sum_(float v) {
  #pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}
"""

_LAUNCH = "if (threadIdx.x == 0) out[0] = inp[0] + 1.0f;"

_READ = r"""
  const uint4* w4 = reinterpret_cast<const uint4*>(w);
  float acc = 0.f;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < N4; i += (size_t)gridDim.x * blockDim.x) {
    const uint4 q = w4[i];
    acc += __uint_as_float((q.x ^ q.y ^ q.z ^ q.w) & 0x3f7fffffu);
  }
  #pragma unroll
  for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
  if ((threadIdx.x & 31) == 0) out[(blockIdx.x * blockDim.x + threadIdx.x) >> 5] = acc + inp[0];
"""


ROUNDS = 12


def timeit(name: str, step, nbytes: float = 0.0) -> float:
    """Per-call us of ``step(i, y) -> y`` over the layers (all evaluated), best of ROUNDS after 2 warm-ups."""
    best, layers = float("inf"), LAYERS
    for r in range(ROUNDS + 2):
        y, outs = None, []
        t0 = time.perf_counter()
        for i in range(layers):
            y = step(i, y)
            outs.append(y)
        mx.eval(outs)  # every layer's call, not only the last one's graph
        dt = (time.perf_counter() - t0) / layers
        if r >= 2:
            best = min(best, dt)
    bw = f"  {nbytes / best / 1e12:5.2f} TB/s" if nbytes else ""
    print(f"  {name:34s} {best * 1e6:8.1f} us{bw}", flush=True)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--once", action="store_true", help="2 layers, 2 rounds: for ncu")
    a = ap.parse_args()
    global LAYERS, ROUNDS
    if a.once:
        LAYERS, ROUNDS = 2, 1
    dt = getattr(mx, a.dtype)
    mx.random.seed(0)
    # MXFP4 experts: packed words, e8m0 scales near 2^-4 (values ~ N(0, 0.1)), float biases.
    gu_w = [mx.random.randint(0, 2**31 - 1, (E, 2 * I, H // 8), dtype=mx.int32).view(mx.uint32) for _ in range(LAYERS)]
    gu_s = [mx.random.randint(118, 124, (E, 2 * I, H // 32)).astype(mx.uint8) for _ in range(LAYERS)]
    gu_b = [(mx.random.normal((E, 2 * I)) * 0.1).astype(dt) for _ in range(LAYERS)]
    dn_w = [mx.random.randint(0, 2**31 - 1, (E, H, I // 8), dtype=mx.int32).view(mx.uint32) for _ in range(LAYERS)]
    dn_s = [mx.random.randint(118, 124, (E, H, I // 32)).astype(mx.uint8) for _ in range(LAYERS)]
    dn_b = [(mx.random.normal((E, H)) * 0.1).astype(dt) for _ in range(LAYERS)]
    rbias = [(mx.random.normal((E,)) * 0.1).astype(dt) for _ in range(LAYERS)]
    logits = [mx.random.normal((E,)).astype(dt) for _ in range(LAYERS)]
    al = mx.array([1.702, 7.0], dtype=mx.float32)
    h = mx.random.normal((H,)).astype(dt)
    x = mx.random.normal((H,)).astype(dt)
    mx.eval(gu_w, gu_s, gu_b, dn_w, dn_s, dn_b, rbias, logits, h, x)
    moe_bytes = K * (2 * I * H // 2 + 2 * I * H // 32 + H * I // 2 + H * I // 32)
    print(f"== MoE, 20b shapes, {a.dtype}: {moe_bytes / 1e6:.1f} MB of expert bytes per token and layer", flush=True)
    tmpl = [("T", dt), ("H", H), ("I", I), ("E", E), ("K", K)]
    gate_up1 = mx.fast.cuda_kernel(
        name="lab_gate_up1", input_names=["h", "logits", "rbias", "w", "s", "b", "al"], output_names=["act"],
        source=_GATE_UP_V1, header=_V1_HEADER)
    down1 = mx.fast.cuda_kernel(
        name="lab_down1", input_names=["act", "logits", "rbias", "w", "s", "b", "x"], output_names=["out"],
        source=_DOWN_V1, header=_V1_HEADER)

    launch = mx.fast.cuda_kernel(name="lab_launch", input_names=["inp"], output_names=["out"], source=_LAUNCH)
    one = mx.zeros((1,), dtype=mx.float32)
    timeit("launch (1 block, chained)", lambda i, y: launch(
        inputs=[one if y is None else y], grid=(32, 1, 1), threadgroup=(32, 1, 1),
        output_shapes=[(1,)], output_dtypes=[mx.float32])[0])
    read = mx.fast.cuda_kernel(name="lab_read", input_names=["w", "inp"], output_names=["out"], source=_READ)
    n4 = K * (2 * I * H // 8) // 4  # 4 experts' gate_up words, as uint4
    for blocks in (264, 1056):
        timeit(f"read 4 experts' gate_up ({blocks} blk)", lambda i, y, blocks=blocks: read(
            inputs=[gu_w[i], one], template=[("N4", n4)], grid=(blocks * 256, 1, 1), threadgroup=(256, 1, 1),
            output_shapes=[(blocks * 8,)], output_dtypes=[mx.float32])[0], nbytes=n4 * 16)

    def gu1(i: int, y):
        return gate_up1(inputs=[h, logits[i], rbias[i], gu_w[i], gu_s[i], gu_b[i], al], template=tmpl,
                        grid=(K * I * 32, 1, 1), threadgroup=(256, 1, 1), output_shapes=[(K, I)],
                        output_dtypes=[dt])[0]

    act = [gu1(i, None) for i in range(LAYERS)]
    mx.eval(act)

    def dn1(i: int, y):
        return down1(inputs=[act[i], logits[i], rbias[i], dn_w[i], dn_s[i], dn_b[i], x], template=tmpl,
                     grid=(H * 32, 1, 1), threadgroup=(256, 1, 1), output_shapes=[(H,)], output_dtypes=[dt])[0]

    ref_dn = [dn1(i, None) for i in range(LAYERS)]
    mx.eval(ref_dn)
    gu_bytes = K * (2 * I * H // 2 + 2 * I * H // 32)
    dn_bytes = K * (H * I // 2 + H * I // 32)
    timeit("gate_up v1", gu1, nbytes=gu_bytes)
    timeit("down v1", dn1, nbytes=dn_bytes)
    timeit("gate_up v1 + down v1", lambda i, y: dn1(i, gu1(i, None)), nbytes=gu_bytes + dn_bytes)

    gate_up2 = mx.fast.cuda_kernel(
        name="lab_gate_up2", input_names=["h", "logits", "rbias", "w", "s", "b", "al"], output_names=["act"],
        source=_GATE_UP_V2, header=_V2_HEADER)
    down2 = mx.fast.cuda_kernel(
        name="lab_down2", input_names=["act", "logits", "rbias", "w", "s", "b", "x"], output_names=["out"],
        source=_DOWN_V2, header=_V2_HEADER)
    best_gu = (None, float("inf"))
    for R in (1, 2, 4):
        for warps in (4, 8):
            def gu2(i: int, y, R=R, warps=warps):
                return gate_up2(inputs=[h, logits[i], rbias[i], gu_w[i], gu_s[i], gu_b[i], al],
                                template=tmpl + [("R", R)], grid=(K * (I // R) * 32, 1, 1),
                                threadgroup=(32 * warps, 1, 1), output_shapes=[(K, I)], output_dtypes=[dt])[0]
            try:
                got = gu2(0, None)
                err = (mx.abs(got - act[0]).max() / mx.abs(act[0]).max()).item()
                t = timeit(f"gate_up v2 R={R} warps={warps} err={err:.1e}", gu2, nbytes=gu_bytes)
                if err < 1e-4 and t < best_gu[1]:
                    best_gu = ((R, warps), t)
            except Exception as e:  # noqa: BLE001 - a lab: report and go on
                print(f"  gate_up v2 R={R} warps={warps}: FAILED {str(e)[:300]}", flush=True)
    best_dn = (None, float("inf"))
    for R in (1, 2, 4):
        for warps in (2, 4, 8):
            def dn2(i: int, y, R=R, warps=warps):
                return down2(inputs=[act[i], logits[i], rbias[i], dn_w[i], dn_s[i], dn_b[i], x],
                             template=tmpl + [("R", R)], grid=((H // R) * 32, 1, 1), threadgroup=(32 * warps, 1, 1),
                             output_shapes=[(H,)], output_dtypes=[dt])[0]
            try:
                got = dn2(0, None)
                err = (mx.abs(got - ref_dn[0]).max() / mx.abs(ref_dn[0] - x).max()).item()
                t = timeit(f"down v2 R={R} warps={warps} err={err:.1e}", dn2, nbytes=dn_bytes)
                if err < 1e-4 and t < best_dn[1]:
                    best_dn = ((R, warps), t)
            except Exception as e:  # noqa: BLE001
                print(f"  down v2 R={R} warps={warps}: FAILED {str(e)[:300]}", flush=True)
    print(f"  best gate_up v2 {best_gu}, best down v2 {best_dn}", flush=True)
    gate_up3 = mx.fast.cuda_kernel(
        name="lab_gate_up3", input_names=["h", "logits", "rbias", "w", "s", "b", "al"], output_names=["act"],
        source=_GATE_UP_V3, header=_V3_HEADER)
    down3 = mx.fast.cuda_kernel(
        name="lab_down3", input_names=["act", "logits", "rbias", "w", "s", "b", "x"], output_names=["out"],
        source=_DOWN_V3, header=_V3_HEADER)
    for R in (1, 2, 4):
        for warps in (4, 8):
            def gu3(i: int, y, R=R, warps=warps):
                return gate_up3(inputs=[h, logits[i], rbias[i], gu_w[i], gu_s[i], gu_b[i], al],
                                template=tmpl + [("R", R)], grid=(K * (I // R) * 32, 1, 1),
                                threadgroup=(32 * warps, 1, 1), output_shapes=[(K, I)], output_dtypes=[dt])[0]
            try:
                got = gu3(0, None)
                err = (mx.abs(got - act[0]).max() / mx.abs(act[0]).max()).item()
                timeit(f"gate_up v3 R={R} warps={warps} err={err:.1e}", gu3, nbytes=gu_bytes)
            except Exception as e:  # noqa: BLE001
                print(f"  gate_up v3 R={R} warps={warps}: FAILED {str(e)[:600]}", flush=True)
    act32 = [t.astype(mx.float32) for t in act]
    mx.eval(act32)
    for R in (1, 2, 4):
        for warps in (2, 4, 8):
            def dn3(i: int, y, R=R, warps=warps):
                return down3(inputs=[act32[i], logits[i], rbias[i], dn_w[i], dn_s[i], dn_b[i], x],
                             template=tmpl + [("R", R)], grid=((H // R) * 32, 1, 1), threadgroup=(32 * warps, 1, 1),
                             output_shapes=[(H,)], output_dtypes=[dt])[0]
            try:
                got = dn3(0, None)
                err = (mx.abs(got - ref_dn[0]).max() / mx.abs(ref_dn[0] - x).max()).item()
                timeit(f"down v3 R={R} warps={warps} err={err:.1e}", dn3, nbytes=dn_bytes)
            except Exception as e:  # noqa: BLE001
                print(f"  down v3 R={R} warps={warps}: FAILED {str(e)[:600]}", flush=True)

    print("== 8-bit affine QKV (5120 x 2880) + o_proj (2880 x 4096), bias", flush=True)
    shapes = ((QKV, H, LAYERS), (H, O_IN, LAYERS), (VOCAB, H, 2))  # lm_head: two copies, each > L2
    q8 = []
    for n, d, copies in shapes:
        ws = []
        for _ in range(copies):
            wf = mx.random.normal((n, d)) * 0.02
            qw, sc, bi = mx.quantize(wf, group_size=64, bits=8)
            ws.append((qw, sc.astype(dt), bi.astype(dt), (mx.random.normal((n,)) * 0.1).astype(dt)))
            mx.eval(ws)
        q8.append(ws)
    xin = {H: mx.random.normal((1, H)).astype(dt), O_IN: mx.random.normal((1, O_IN)).astype(dt)}
    mx.eval(xin)
    q8_bytes = lambda n, d: n * d + 2 * n * (d // 64) * (4 if dt == mx.float32 else 2)  # noqa: E731
    mv = mx.fast.cuda_kernel(name="lab_q8mv", input_names=["x", "w", "scales", "biases", "bias"],
                             output_names=["y"], source=_Q8_MV, header=_Q8_HEADER)
    for which, (n, d, _) in enumerate(shapes):
        ws = q8[which]

        def mlx_q(i, y, ws=ws, d=d):
            qw, sc, bi, b = ws[i % len(ws)]
            return mx.quantized_matmul(xin[d], qw, sc, bi, transpose=True, group_size=64, bits=8) + b

        ref = mlx_q(0, None)
        timeit(f"mlx quantized_matmul {n}x{d} + bias", mlx_q, nbytes=q8_bytes(n, d))
        for R in (1, 2, 4):
            for warps in (4, 8):
                def mine(i, y, ws=ws, n=n, d=d, R=R, warps=warps):
                    qw, sc, bi, b = ws[i % len(ws)]
                    return mv(inputs=[xin[d].reshape(d), qw, sc, bi, b], template=[("T", dt), ("N", n), ("D", d), ("R", R)],
                              grid=((n // R) * 32, 1, 1), threadgroup=(32 * warps, 1, 1), output_shapes=[(n,)],
                              output_dtypes=[dt])[0]
                try:
                    got = mine(0, None)
                    err = (mx.abs(got - ref.reshape(n)).max() / mx.abs(ref).max()).item()
                    timeit(f"q8 matvec R={R} warps={warps} err={err:.1e}", mine, nbytes=q8_bytes(n, d))
                except Exception as e:  # noqa: BLE001
                    print(f"  q8 matvec R={R} warps={warps}: FAILED {str(e)[:300]}", flush=True)


if __name__ == "__main__":
    main()

"""GPU lab for the one-token decode kernels: how fast can a layer read its weights?

Run on the GPU machine (shared/gpu.md): ``python scripts/lab/cuda_kernel_lab.py``. Builds 24 layers of random
gpt-oss-20b-shaped weights (so the chain cannot run from the L2 cache, as the real decode cannot) and
times, per layer (24 chained calls, best of several rounds):

- ``launch``: an almost empty custom kernel (the floor of one kernel in the chain);
- ``read``: a plain 16-byte-load read of the 4 experts' bytes (what bandwidth a kernel can reach here);
- model/cuda_moe.py's gate_up kernel over a sweep of rows per warp and warps per block, and its down
  kernel over rows per block, each checked against the module's own configuration;
- MLX's 8-bit ``quantized_matmul`` (+ bias) for QKV, o_proj and the LM head against model/cuda_matvec.py's
  kernel over rows, warps and PRE (first weights requested before the staging, or after it).

The variants this lab compared on 2026-11-26 (the first table-based kernels, v2, v3) are in commit ff01a25;
their figures are in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import time

import mlx.core as mx
import mlx.nn as nn

from mlx_harmony_tui.model import cuda_matvec, cuda_moe

H, I, E, K, LAYERS = 2880, 2880, 32, 4, 24  # noqa: E741
QKV, O_IN, VOCAB = 5120, 4096, 201088

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

    # The module's kernels, called as FusedDecodeMoE calls them but with the rows/warps of each variant.
    gate_up, down, _ = cuda_moe._kernels()
    nw, eps = mx.ones((H,), dt), mx.array([1e-5], dtype=mx.float32)

    def tmpl(rows: int, warps: int) -> list[tuple[str, object]]:
        return [("T", dt), ("H", H), ("I", I), ("E", E), ("K", K), ("R", rows), ("WARPS", warps)]

    def gu(i: int, rows: int, warps: int, norm: int = 0) -> mx.array:
        return gate_up(inputs=[h, nw, eps, logits[i], rbias[i], gu_w[i], gu_s[i], gu_b[i], al],
                       template=[*tmpl(rows, warps), ("NORM", norm)],
                       grid=(K * I // rows * 32, 1, 1), threadgroup=(32 * warps, 1, 1), output_shapes=[(K, I)],
                       output_dtypes=[mx.float32])[0]

    def dn(i: int, rows: int) -> mx.array:
        return down(inputs=[act[i], logits[i], rbias[i], dn_w[i], dn_s[i], dn_b[i], x], template=tmpl(rows, K),
                    grid=(H // rows * 32 * K, 1, 1), threadgroup=(32 * K, 1, 1), output_shapes=[(H,)],
                    output_dtypes=[dt])[0]

    act = [gu(i, cuda_moe._GATE_UP_ROWS, cuda_moe._GATE_UP_WARPS) for i in range(LAYERS)]
    ref_dn = [dn(i, cuda_moe._DOWN_ROWS) for i in range(LAYERS)]
    mx.eval(act, ref_dn)
    gu_bytes = K * (2 * I * H // 2 + 2 * I * H // 32)
    dn_bytes = K * (H * I // 2 + H * I // 32)
    for norm in (0, 1):  # 1: every block normalizes x itself (err is then against the unnormalized run)
        for rows in (1, 2, 4):
            for warps in (4, 8):
                try:
                    err = (mx.abs(gu(0, rows, warps, norm) - act[0]).max() / mx.abs(act[0]).max()).item()
                    timeit(f"gate_up NORM={norm} R={rows} warps={warps} err={err:.1e}",
                           lambda i, y, r=rows, w=warps, n=norm: gu(i, r, w, n), nbytes=gu_bytes)
                except Exception as e:  # noqa: BLE001 - a lab: report and go on
                    print(f"  gate_up R={rows} warps={warps}: FAILED {str(e)[:300]}", flush=True)
    for rows in (2, 4, 8, 16):
        try:
            err = (mx.abs(dn(0, rows) - ref_dn[0]).max() / mx.abs(ref_dn[0] - x).max()).item()
            timeit(f"down R={rows} err={err:.1e}", lambda i, y, r=rows: dn(i, r), nbytes=dn_bytes)
        except Exception as e:  # noqa: BLE001
            print(f"  down R={rows}: FAILED {str(e)[:300]}", flush=True)

    print("== 8-bit affine QKV (5120 x 2880), o_proj (2880 x 4096), LM head (201088 x 2880), bias", flush=True)
    shapes = ((QKV, H, LAYERS), (H, O_IN, LAYERS), (VOCAB, H, 2))  # lm_head: two copies, each > L2
    layers = []
    for n, d, copies in shapes:
        mods = []
        for _ in range(copies):
            lin = nn.QuantizedLinear(d, n, bias=True, group_size=64, bits=8)
            lin.update({"bias": (mx.random.normal((n,)) * 0.1).astype(dt)})
            lin.set_dtype(dt)
            mx.eval(lin.parameters())
            mods.append(lin)
        layers.append(mods)
    xin = {H: mx.random.normal((1, H)).astype(dt), O_IN: mx.random.normal((1, O_IN)).astype(dt)}
    mx.eval(xin)
    q8_bytes = lambda n, d: n * d + 2 * n * (d // 64) * (4 if dt == mx.float32 else 2)  # noqa: E731
    for (n, d, _), mods in zip(shapes, layers, strict=True):
        ref = mods[0](xin[d])
        timeit(f"mlx quantized_matmul {n}x{d} + bias", lambda i, y, m=mods, d=d: m[i % len(m)](xin[d]),
               nbytes=q8_bytes(n, d))
        mvs = [cuda_matvec.DecodeMatvec(m) for m in mods]
        for rows, warps in ((2, 8), (4, 4), (4, 8)):
            for pre in (0, 1):
                try:
                    got = mvs[0](xin[d], rows=rows, warps=warps, pre=pre)
                    err = (mx.abs(got - ref).max() / mx.abs(ref).max()).item()
                    timeit(f"matvec R={rows} warps={warps} PRE={pre} err={err:.1e}",
                           lambda i, y, v=mvs, d=d, r=rows, w=warps, p=pre: v[i % len(v)](
                               xin[d], rows=r, warps=w, pre=p),
                           nbytes=q8_bytes(n, d))
                except Exception as e:  # noqa: BLE001
                    print(f"  matvec R={rows} warps={warps}: FAILED {str(e)[:300]}", flush=True)


if __name__ == "__main__":
    main()

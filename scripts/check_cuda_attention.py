"""GPU check of model/cuda_attention.py.

Run on the GPU machine (shared/gpu.md): ``python scripts/check_cuda_attention.py [--kind 20b]``.
1. The kernels against MLX's sdpa on the sliced keys (what the decoder ran before), for lengths around
   the 32-key rounds, the splits and the sliding window, with garbage past the valid length; float32 and
   bfloat16; and their time against sdpa's (sliced as the decoder sliced).
2. A greedy decode of a random model after a 512-token prompt with the kernels and with MLX's sdpa: tokens
   equal, first-step logits difference, tok/s of both in alternation.
"""

from __future__ import annotations

import argparse
import time

import mlx.core as mx

from mlx_harmony_tui.model import cuda_attention
from mlx_harmony_tui.model.fast import CompiledDecoder


def check_kernel(hq: int, hkv: int, d: int, dtype: mx.Dtype) -> bool:
    ok = True
    scale = d**-0.5
    for window in (None, 128):
        for n in (1, 2, 31, 32, 33, 127, 128, 129, 200, 513, 1000, 4097):
            cap = -(-n // 1024) * 1024
            keys = mx.random.normal((1, hkv, cap, d)).astype(dtype)
            values = mx.random.normal((1, hkv, cap, d)).astype(dtype)
            q = mx.random.normal((1, hq, 1, d)).astype(dtype)
            sinks = mx.random.normal((hq,)).astype(dtype)
            lo = max(0, n - window) if window else 0
            ref = mx.fast.scaled_dot_product_attention(q, keys[:, :, lo:n], values[:, :, lo:n], scale=scale,
                                                       sinks=sinks)
            got = cuda_attention.decode_attention(q, keys, values, mx.array(n - 1, dtype=mx.int32), n,
                                                  mx.array([scale], dtype=mx.float32), sinks, window)
            err = mx.abs(ref.astype(mx.float32) - got.astype(mx.float32)).max().item()
            tol = 1e-5 if dtype == mx.float32 else 2e-2
            if not err < tol:
                ok = False
                print(f"  MISMATCH hq={hq} hkv={hkv} d={d} {dtype} window={window} n={n}: {err:.2e}")
    print(f"  kernel vs sdpa, heads {hq}/{hkv}, dim {d}, {dtype}: {'OK' if ok else 'MISMATCH'}")
    return ok


def time_kernel(n: int, dtype: mx.Dtype, window: int | None, layers: int = 24) -> None:
    """us per attention, ``layers`` distinct buffers chained (as a token runs them), kernel vs sliced sdpa."""
    hq, hkv, d = 64, 8, 64
    cap = -(-(n + 1) // 1024) * 1024
    bufs = [(mx.random.normal((1, hkv, cap, d)).astype(dtype), mx.random.normal((1, hkv, cap, d)).astype(dtype))
            for _ in range(layers)]
    sinks = mx.zeros((hq,), dtype)
    q0 = mx.random.normal((1, hq, 1, d)).astype(dtype)
    mx.eval(bufs, q0)
    pos, sc = mx.array(n - 1, dtype=mx.int32), mx.array([0.125], dtype=mx.float32)
    lo = max(0, n - window) if window else 0

    def kern(q):
        for k, v in bufs:
            q = cuda_attention.decode_attention(q, k, v, pos, n, sc, sinks, window)
        return q

    def sdpa(q):
        for k, v in bufs:
            q = mx.fast.scaled_dot_product_attention(q, k[:, :, lo:n], v[:, :, lo:n], scale=0.125, sinks=sinks)
        return q

    for name, f in (("kernel", kern), ("sdpa", sdpa)) * 2:
        mx.eval(f(q0))
        t0 = time.perf_counter()
        for _ in range(20):
            mx.eval(f(q0))
        us = (time.perf_counter() - t0) / (20 * layers) * 1e6
        print(f"  attention {n:5d} keys window={window} {dtype}: {name:6s} {us:6.1f} us per layer")


def check_decode(kind: str, dtype: str, prompt_len: int, n: int) -> None:
    from mlx_harmony_tui.engine import bench

    model, config = bench.build_random(kind, dtype=dtype)
    model.optimize(compiled_decode=False)
    prompt = mx.random.randint(0, config.vocab_size, (prompt_len,), key=mx.random.key(1))
    decs = {"sdpa": CompiledDecoder(model, attention=False), "kernel": CompiledDecoder(model)}
    for dec in decs.values():
        dec.warm_up()
    res: dict[str, tuple[list[int], mx.array, float]] = {}
    for name in ("sdpa", "kernel") * 2:
        dec = decs[name]
        cache = model.make_cache()
        tok = mx.argmax(model(prompt[None], cache, last_only=True)[:, -1], axis=-1)
        mx.eval(tok)
        out, first, prev = [], None, None
        t0 = time.perf_counter()
        for _ in range(n):
            logits = dec(tok[:, None].astype(mx.int32), cache)
            first = logits if first is None else first
            tok = mx.argmax(logits[:, -1], axis=-1)
            mx.async_eval(tok)
            if prev is not None:
                out.append(prev.item())
            prev = tok
        out.append(tok.item())
        res[name] = (out, first, n / (time.perf_counter() - t0))
        print(f"  {kind} {dtype} decode after {prompt_len}: {name:8s} {res[name][2]:7.1f} tok/s")
    (a, fa, _), (b, fb, _) = res["sdpa"], res["kernel"]
    same = sum(x == y for x, y in zip(a, b, strict=True))
    diff = mx.abs(fa.astype(mx.float32) - fb.astype(mx.float32)).max().item()
    print(f"  {kind}: greedy tokens equal {same}/{n}; first-step logits max difference {diff:.2e}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kind", action="append", default=None)
    ap.add_argument("--dtype", default="float32")
    a = ap.parse_args()
    for dtype in (mx.float32, mx.bfloat16):
        check_kernel(64, 8, 64, dtype)
        check_kernel(4, 2, 16, dtype)
    for n, w in ((512, None), (4096, None), (4096, 128)):
        time_kernel(n, mx.bfloat16, w)
    for kind in a.kind or ["20b"]:
        check_decode(kind, a.dtype, 512, 64)


if __name__ == "__main__":
    main()

# ruff: noqa: B023  (the timing lambdas run inside their own loop iteration)
"""Where the bytes above the weights go in a long prefill on random gpt-oss-20b: peak memory of one chunk's
attention (one call, query blocks, query blocks evaluated one by one) and MoE (per-expert and gather paths),
then a whole 4096-token prefill per chunk size. Run on the GPU machine (shared/gpu.md)."""

from __future__ import annotations

import argparse
import time

import mlx.core as mx
from profile_gpu import peak_of, timed  # scripts/ is on sys.path when run as a script

from mlx_harmony_tui.engine.bench import build_random
from mlx_harmony_tui.model import gpt_oss
from mlx_harmony_tui.model.gpt_oss import Experts

M = 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("kind", nargs="?", default="20b", help="random model shape (bench's --random kinds; default 20b)")
    model, config = build_random(ap.parse_args().kind)
    model.optimize()
    mx.synchronize()
    w = mx.get_active_memory()
    print(f"weights active {w / 2**30:.2f} GiB", flush=True)
    L, T = 512, 4096
    q = mx.random.normal((1, 64, L, 64))
    k = mx.random.normal((1, 8, T, 64))
    v = mx.random.normal((1, 8, T, 64))
    sinks = mx.zeros((64,))
    sdpa = mx.fast.scaled_dot_product_attention
    print(f"attention one call:   {peak_of(lambda: sdpa(q, k, v, scale=0.125, mask='causal', sinks=sinks)):.0f} MiB")
    print(f"attention bounded:    {peak_of(lambda: gpt_oss._attend(q, k, v, 0.125, 'causal', sinks, True)):.0f} MiB")
    x = mx.random.normal((1, L, config.hidden_size))
    moe = model.layers[0].mlp
    for per_expert in (True, False):
        Experts.per_expert_prefill = per_expert
        print(f"moe per_expert={per_expert}: {peak_of(lambda: moe(x)):.0f} MiB", flush=True)
        for n in (8, 41, 128, 512):
            xn = x[:, :n]
            print(f"   {n} tokens: {timed(lambda: moe(xn), 20):.2f} ms, {peak_of(lambda: moe(xn)):.0f} MiB", flush=True)
    q1 = q[:, :, :1]
    for t in (512, 4096):
        kt, vt = k[:, :, :t], v[:, :, :t]
        a = timed(lambda: sdpa(q1, kt, vt, scale=0.125, sinks=sinks), 20)
        qg = q1.reshape(1, 8, 8, 64)

        def by_matmul():
            s = (qg @ kt.transpose(0, 1, 3, 2)) * 0.125  # (1, 8, 8, t)
            s = mx.concatenate([mx.broadcast_to(sinks.reshape(1, 8, 8, 1), (1, 8, 8, 1)), s], axis=-1)
            p = mx.softmax(s, axis=-1, precise=True)[..., 1:]
            return p @ vt

        b = timed(by_matmul, 20)
        print(f"decode attention T={t}: sdpa {a:.3f} ms, matmul {b:.3f} ms", flush=True)
    Experts.per_expert_prefill = True
    for step in (512, 256):
        cache = model.make_cache()
        tokens = mx.array([[i % 50000 + 1000 for i in range(T)]])
        mx.synchronize()
        mx.clear_cache()
        t = time.perf_counter()
        peaks = []
        for s in range(0, T, step):
            mx.reset_peak_memory()
            model(tokens[:, s : s + step], cache=cache, last_only=True)
            mx.eval([c.keys for c in cache] + [c.values for c in cache])
            peaks.append(mx.get_peak_memory())
            mx.clear_cache()
        print(f"prefill step={step}: {time.perf_counter() - t:.2f}s, peak x{max(peaks) / w:.3f} weights, "
              f"first chunk +{(peaks[0] - w) / M:.0f} MiB, last +{(peaks[-1] - w) / M:.0f} MiB", flush=True)
        del cache


if __name__ == "__main__":
    main()

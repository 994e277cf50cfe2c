# ruff: noqa: B023  (the timing lambdas run inside their own loop iteration)
"""Where the time and memory of gpt-oss-20b go, per part, on the current device (random weights).

Run: python scripts/lab/profile_gpu.py. Prints per-part timings and peak memory deltas; used to decide which
optimization to write next (docs/benchmarks.md keeps the figures and the predictions they fed).
"""

from __future__ import annotations

import argparse
import time

import mlx.core as mx

from mlx_harmony_tui.engine.bench import build_random
from mlx_harmony_tui.model.gpt_oss import _swiglu


def timed(fn, n: int = 5) -> float:
    mx.eval(fn())
    mx.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        mx.eval(fn())
    mx.synchronize()
    return (time.perf_counter() - t) / n * 1000


def peak_of(fn) -> float:
    mx.synchronize()
    mx.clear_cache()
    base = mx.get_active_memory()
    mx.reset_peak_memory()
    mx.eval(fn())
    mx.synchronize()
    return (mx.get_peak_memory() - base) / 2**20


def moe_per_expert(moe, x):
    """Alternative prefill MoE: rows sorted by expert, one quantized_matmul per expert (one host sync)."""
    B, L, H = x.shape
    x2 = x.reshape(-1, H)
    logits = moe.router(x2)
    k = moe.top_k
    idx = mx.argpartition(logits, kth=-k, axis=-1)[..., -k:]
    w = mx.softmax(mx.take_along_axis(logits, idx, axis=-1), axis=-1, precise=True)
    flat = idx.flatten()
    order = mx.argsort(flat)
    E = moe.router.weight.shape[0]
    counts = (flat[:, None] == mx.arange(E)[None]).sum(0).tolist()
    xs = x2[order // k]
    gu, dn = moe.experts.gate_up, moe.experts.down
    outs, start = [], 0
    for e, c in enumerate(counts):
        if c == 0:
            continue
        seg = xs[start : start + c]
        h = mx.quantized_matmul(seg, gu.weight[e], gu.scales[e], None, transpose=True, group_size=32, bits=4,
                                mode="mxfp4") + gu.bias[e]
        a = _swiglu(h, moe.experts._alpha, moe.experts._limit)
        y = mx.quantized_matmul(a, dn.weight[e], dn.scales[e], None, transpose=True, group_size=32, bits=4,
                                mode="mxfp4") + dn.bias[e]
        outs.append(y)
        start += c
    ys = mx.concatenate(outs)[mx.argsort(order)].reshape(-1, k, H)
    return (ys * w[..., None].astype(ys.dtype)).sum(axis=-2).reshape(B, L, H)


def main() -> None:
    argparse.ArgumentParser(description=__doc__).parse_args()
    t0 = time.perf_counter()
    model, config = build_random("20b")
    print(f"built in {time.perf_counter() - t0:.1f}s, active {mx.get_active_memory() / 2**30:.2f} GiB", flush=True)
    layer = model.layers[1]
    moe = layer.mlp
    for N in (1, 4, 512, 2048):
        x = (mx.random.normal((1, N, config.hidden_size)) * 0.1).astype(mx.bfloat16)
        mx.eval(x)
        a = timed(lambda: moe(x))
        pa = peak_of(lambda: moe(x))
        line = f"MoE N={N:5d}: gather_qmm {a:8.2f} ms ({a / N * 1000:8.1f} us/tok) peak +{pa:7.0f} MiB"
        if N >= 512:
            b = timed(lambda: moe_per_expert(moe, x))
            pb = peak_of(lambda: moe_per_expert(moe, x))
            diff = mx.abs(moe(x).astype(mx.float32) - moe_per_expert(moe, x).astype(mx.float32)).max().item()
            line += f" | per-expert {b:8.2f} ms peak +{pb:7.0f} MiB (max diff {diff:.3g})"
        print(line, flush=True)
    attn = layer.self_attn
    for L, T in ((512, 4096), (2048, 4096), (1, 4096)):
        q = mx.random.normal((1, 64, L, 64)).astype(mx.bfloat16)
        k = mx.random.normal((1, 8, T, 64)).astype(mx.bfloat16)
        v = mx.random.normal((1, 8, T, 64)).astype(mx.bfloat16)
        mask = "causal" if L > 1 else None
        f = lambda: mx.fast.scaled_dot_product_attention(q, k, v, scale=0.125, mask=mask, sinks=attn.sinks)  # noqa: E731
        print(f"sdpa L={L} T={T}: {timed(f):.2f} ms peak +{peak_of(f):.0f} MiB", flush=True)
    # Decode step pieces (compiled path).
    model.optimize()
    cache = model.make_cache()
    prompt = mx.random.randint(1000, 100000, (1, 512))
    model(prompt, cache=cache)
    mx.eval([c.state for c in cache])
    tok = mx.array([[5]], dtype=mx.int32)

    def step():
        out = model(tok, cache=cache)
        for c in cache:
            c.trim(1)
        return out

    print(f"decode step (compiled, ctx 512): {timed(step, 20):.2f} ms", flush=True)
    x = (mx.random.normal((1, 1, config.hidden_size)) * 0.1).astype(mx.bfloat16)
    f24 = lambda: [layer.mlp(x) for layer in model.layers]  # noqa: E731
    print(f"24 x MoE(1 token) eager: {timed(f24, 20):.2f} ms", flush=True)
    lm = lambda: model.lm_head(x)  # noqa: E731
    print(f"lm_head (1 token): {timed(lm, 20):.2f} ms", flush=True)


if __name__ == "__main__":
    main()

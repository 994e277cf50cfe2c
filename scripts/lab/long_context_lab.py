"""GPU lab for issue 23 (one process, ours only, random gpt-oss-20b with bf16 float parts): which decode
attention kernel and which prefill MoE path, measured before the product bench (scripts/long_context_gpu.py).

    python scripts/lab/long_context_lab.py --out $OUT [--budget-s 520]

Sections, each written to OUT/lab.json when it ends and skipped once the time budget is spent:

1. ``check``: model/cuda_attention.py's v1 and v2 partial kernels against MLX's sdpa (gpt-oss shapes, bf16,
   with and without the 128 window, 1 to 40,000 keys, garbage past the valid length).
2. ``kernels``: time a layer's decode attention takes at 4,096-65,536 cached positions (12 layers' distinct
   buffers, one compiled chain, so neither L2 nor host launches decide): sdpa, v1, v2 variants, and a plain
   read of the same bytes (the bandwidth floor).
3. ``decode``: the model's decode at 16,384 positions with v1, v2 and sdpa, alternated on one cache.
4. ``prefill``: 16,384-token prefills in chunks of 512, 2048 and 4096 tokens, each twice (the first pays new
   shapes). (Until commit f181c98 also dequantized per-expert prefill matmuls: slower, removed.)
5. ``peak``: a 32,768-token prefill with the fastest setting: MLX peak against weights + KV.

OUT/choice.json: the settings the product bench should use (read by scripts/lab/apply_choice.py).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import mlx.core as mx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from long_context_gpu import decode_only  # noqa: E402

from mlx_harmony_tui.engine.bench import build_random, run_ours  # noqa: E402
from mlx_harmony_tui.engine.generator import Engine  # noqa: E402
from mlx_harmony_tui.engine.memory import weights_nbytes  # noqa: E402
from mlx_harmony_tui.model import cuda_attention as ca  # noqa: E402

HQ, HKV, D, LAYERS = 64, 8, 64, 12
V2_VARIANTS = {  # name -> (warps, keys per warp, max splits)
    "v2_w4_k32": (4, 32, 256),
    "v2_w4_k64": (4, 64, 256),
    "v2_w4_k128": (4, 128, 256),
    "v2_w8_k32": (8, 32, 256),
    "v2_w8_k64": (8, 64, 128),
    "v2_w4_k64_s512": (4, 64, 512),
    "v2_w4_k256": (4, 256, 256),
    "v2_w8_k128": (8, 128, 256),
    "v2_w2_k128": (2, 128, 512),
    "v2_w2_k64": (2, 64, 512),
}

_READ = r"""
  const uint4* a4 = reinterpret_cast<const uint4*>(k);
  const uint4* b4 = reinterpret_cast<const uint4*>(v);
  const size_t n4 = (size_t)k_shape[1] * k_shape[2] * k_shape[3] * sizeof(k[0]) / 16;
  float acc = 0.f;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n4; i += (size_t)gridDim.x * blockDim.x) {
    const uint4 x = a4[i], y = b4[i];
    acc += __uint_as_float((x.x ^ x.y ^ x.z ^ x.w ^ y.x ^ y.y ^ y.z ^ y.w) & 0x3f7fffffu);
  }
  #pragma unroll
  for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
  if ((threadIdx.x & 31) == 0) out[(blockIdx.x * blockDim.x + threadIdx.x) >> 5] = acc;
"""


def use(variant: str) -> None:
    """Point model/cuda_attention.py at one kernel variant (module settings read at each call)."""
    if variant.startswith("v2"):
        ca.KERNEL = "2"
        ca.V2_WARPS, ca.V2_KEYS_PER_WARP, ca.V2_MAX_SPLITS = V2_VARIANTS[variant]
    else:
        ca.KERNEL = "1"
        ca.KEYS_PER_SPLIT, ca.MAX_SPLITS = (128, 256) if variant == "v1_k128" else (256, 128)


def check(out: dict[str, Any]) -> None:
    cap = 40_960
    dt = mx.bfloat16
    keys, values = (mx.random.normal((1, HKV, cap, D), key=mx.random.key(j)).astype(dt) for j in (0, 1))
    q = mx.random.normal((1, HQ, 1, D), key=mx.random.key(2)).astype(dt)
    sinks = mx.random.normal((HQ,), key=mx.random.key(3)).astype(dt)
    scale = 0.125
    res: dict[str, float] = {}
    for variant in ["v1", *V2_VARIANTS]:
        use(variant)
        worst = 0.0
        for window in (None, 128):
            for n in (1, 5, 33, 127, 128, 300, 4097, 16_384, 40_000):
                lo = max(0, n - window) if window else 0
                ref = mx.fast.scaled_dot_product_attention(q, keys[:, :, lo:n], values[:, :, lo:n], scale=scale,
                                                           sinks=sinks)
                got = ca.decode_attention(q, keys, values, mx.array([n], dtype=mx.int32), n,
                                          mx.array([scale], dtype=mx.float32), sinks, window)
                err = mx.abs(got.astype(mx.float32) - ref.astype(mx.float32)).max().item()
                worst = max(worst, err if err == err else float("inf"))
        res[variant] = worst
    out["check"] = res


def time_chain(fn: Any, args: list[Any], reps: int = 20) -> float:
    """Seconds per call of fn over LAYERS distinct argument sets (compiled chain, best of 3)."""

    def chain(*flat: mx.array) -> list[mx.array]:
        return [fn(*flat[i * 2 : i * 2 + 2]) for i in range(LAYERS)]

    try:
        run = mx.compile(chain)
        mx.eval(run(*args))
    except Exception:  # a custom kernel that compile cannot take: eager (host launches included)
        run = chain
    flat = args
    for _ in range(2):
        mx.eval(run(*flat))
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        outs = [run(*flat) for _ in range(reps)]
        mx.eval(outs)
        best = min(best, (time.perf_counter() - t0) / (reps * LAYERS))
    return best


def kernels(out: dict[str, Any], lengths: list[int], deadline: float) -> None:
    dt = mx.bfloat16
    read = mx.fast.cuda_kernel(name="mht_lab_read", input_names=["k", "v"], output_names=["out"], source=_READ)
    sinks = mx.random.normal((HQ,)).astype(dt)
    scale = mx.array([0.125], dtype=mx.float32)
    q = mx.random.normal((1, HQ, 1, D)).astype(dt)
    rows: dict[str, Any] = out.setdefault("kernels", {})
    for n in lengths:
        if time.perf_counter() > deadline:
            break
        bufs: list[mx.array] = []
        for i in range(LAYERS):
            bufs += [mx.random.normal((1, HKV, n, D), key=mx.random.key(10 + 2 * i + j)).astype(dt) for j in (0, 1)]
        mx.eval(bufs)
        narr = mx.array([n], dtype=mx.int32)
        row: dict[str, float] = {}
        nbytes = 2 * HKV * n * D * 2

        def attn(k: mx.array, v: mx.array, narr: mx.array = narr, n: int = n) -> mx.array:
            return ca.decode_attention(q, k, v, narr, n, scale, sinks)

        def sdpa(k: mx.array, v: mx.array) -> mx.array:
            return mx.fast.scaled_dot_product_attention(q, k, v, scale=0.125, sinks=sinks)

        def plain_read(k: mx.array, v: mx.array) -> mx.array:
            return read(inputs=[k, v], grid=(132 * 8 * 256, 1, 1), threadgroup=(256, 1, 1),
                        output_shapes=[(132 * 8 * 8,)], output_dtypes=[mx.float32])[0]

        for name, fn in [("read", plain_read), ("sdpa", sdpa)]:
            row[name] = time_chain(fn, bufs)
        for variant in ["v1", "v1_k128", *V2_VARIANTS]:
            use(variant)
            row[variant] = time_chain(attn, bufs)
        rows[str(n)] = {k: {"us": round(t * 1e6, 2), "GB/s": round(nbytes / t / 1e9)} for k, t in row.items()}
        del bufs
        mx.clear_cache()


def best_kernel(out: dict[str, Any]) -> str:
    """The variant that passed the check and is fastest at 16,384 (else the longest length measured)."""
    ok = [v for v, e in out.get("check", {}).items() if e < 3e-2]
    rows = out.get("kernels", {})
    if not rows or not ok:
        return "v1"
    row = rows.get("16384") or rows[max(rows, key=int)]
    return min((v for v in ok if v in row), key=lambda v: row[v]["us"], default="v1")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("."))
    ap.add_argument("--budget-s", type=float, default=520)
    ap.add_argument("--lengths", default="4096,16384,65536")
    ap.add_argument("--kernels-only", action="store_true", help="sections 1 and 2 only (no model)")
    ap.add_argument("--kind", default="20b", help="tiny: a CPU smoke test of the script")
    ap.add_argument("--prompt", type=int, default=16_384)
    ap.add_argument("--peak-length", type=int, default=32_768)
    a = ap.parse_args()
    start = time.perf_counter()
    deadline = start + a.budget_s
    a.out.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"device": str(mx.default_device()), "mlx": mx.__version__}
    choice: dict[str, Any] = {"kernel": "v1", "prefill_step": 512}

    def save(msg: str) -> None:
        (a.out / "lab.json").write_text(json.dumps(out, indent=1) + "\n")
        (a.out / "choice.json").write_text(json.dumps(choice) + "\n")
        print(f"{time.perf_counter() - start:6.0f}s {msg}", flush=True)

    def left() -> bool:
        return time.perf_counter() < deadline

    for name, step in [("check", lambda: check(out)),
                       ("kernels", lambda: kernels(out, [int(x) for x in a.lengths.split(",")], deadline - 300))]:
        try:
            step()
        except Exception as e:  # keep going: the later sections still tell something
            out[f"{name}_error"] = repr(e)
        save(f"{name}: {out.get(name, out.get(name + '_error'))}")
    choice["kernel"] = best_kernel(out)
    save(f"kernel choice {choice['kernel']}")
    if a.kernels_only:
        return 0

    model, config = build_random(a.kind, dtype="bfloat16")
    out["weights_bytes"] = weights_nbytes(model)
    engine = Engine(model, config, model_id="random 20b")
    decoder = engine.model.decoder
    rng = random.Random(0)
    warm = [rng.randrange(1000, 100_000) for _ in range(64)]
    run_ours(engine, warm, 8, 512)
    save("model built, warm")

    prompt = [rng.randrange(1000, 100_000) for _ in range(a.prompt)]
    out["prefill_first_512"] = run_ours(engine, prompt, 8, 512)
    save(f"16k first prefill {out['prefill_first_512']}")
    dec: dict[str, list[float]] = {}
    for _ in range(2):
        for variant in ["v1", choice["kernel"], "sdpa"]:
            if variant == "sdpa":
                decoder.flash_min = 1 << 30
            else:
                decoder.flash_min = 1
                use(variant)
            dec.setdefault(variant, []).append(decode_only(engine, prompt, 64))
    decoder.flash_min = ca.MIN_KEYS
    use(choice["kernel"])
    out["decode"] = dec
    save(f"decode {dec}")

    pre: dict[str, list[float]] = {}
    for step in (512, 2048, 4096):
        for _ in range(2):
            if not left():
                break
            r = run_ours(engine, prompt, 2, step)
            pre.setdefault(str(step), []).append(round(r["prefill_tps"], 1))
            save(f"prefill {step}: {pre}")
    out["prefill"] = pre
    if pre:
        choice["prefill_step"] = int(max(pre, key=lambda k: pre[k][-1]))
    save(f"prefill choice {choice}")

    if left():
        p32 = [rng.randrange(1000, 100_000) for _ in range(a.peak_length)]
        r = run_ours(engine, p32, 8, choice["prefill_step"])
        out["peak"] = {**r, "weights_bytes": out["weights_bytes"],
                             "limit": (out["weights_bytes"] + r["kv_bytes"]) * 1.1}
        save(f"peak {out['peak']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

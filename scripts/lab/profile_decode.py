"""Where a decoded token's time goes on the GPU: kernel durations (ncu) against the token's wall time.

    python scripts/lab/profile_decode.py --kind 20b                       # wall time per token
    ncu --profile-from-start off --metrics gpu__time_duration.sum --csv --print-units base \
        python scripts/lab/profile_decode.py --kind 20b --profile > ncu.csv  # every kernel of 2 tokens
    python scripts/lab/profile_decode.py --summarize ncu.csv              # sum by kernel name

If the kernels' summed durations are well under the wall time, decode is bound by launches/host work,
not by the kernels; otherwise the biggest kernels are the ones to make faster.
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import time
from collections import defaultdict


def _profiler() -> tuple[object, object]:
    """cuProfilerStart/Stop of the CUDA driver (the runtime's cudaProfilerStart of a separately loaded
    libcudart does not reach MLX's context: ncu then profiles nothing)."""
    lib = ctypes.CDLL("libcuda.so.1")
    return lib.cuProfilerStart, lib.cuProfilerStop


def summarize(path: str) -> None:
    rows = []
    with open(path) as f:
        lines = [ln for ln in f if ln.startswith('"')]
    for r in csv.DictReader(lines):
        if r.get("Metric Name") == "gpu__time_duration.sum":
            rows.append((r["Kernel Name"], float(r["Metric Value"].replace(",", ""))))
    by: dict[str, list[float]] = defaultdict(list)
    for name, ns in rows:
        by[name[:90]].append(ns)
    total = sum(ns for _, ns in rows)
    print(f"{len(rows)} kernels, {total / 1e3:.1f} us in all")
    for name, v in sorted(by.items(), key=lambda kv: -sum(kv[1])):
        print(f"{sum(v) / 1e3:9.1f} us  {len(v):4d} x {sum(v) / len(v) / 1e3:7.2f} us  {name}")


def compare(model, cache, variants: list[str], run, pipelined) -> None:
    """Pipelined ms per token of the default decoder and of each variant, alternating, two rounds."""
    import importlib

    from mlx_harmony_tui.model.fast import CompiledDecoder

    specs = [("default", {})]
    for v in variants:
        name, _, flags = v.partition(":")
        specs.append((name, dict(kv.split("=", 1) for kv in flags.split(",") if kv)))
    defaults: dict[tuple[str, str], object] = {}
    for _, flags in specs:
        for key in flags:
            mod, attr = key.rsplit(".", 1)
            m = importlib.import_module(f"mlx_harmony_tui.model.{mod}")
            defaults[(mod, attr)] = getattr(m, attr)
    results: dict[str, list[float]] = {name: [] for name, _ in specs}
    start = cache[0].offset
    for _ in range(2):
        for name, flags in specs:
            for (mod, attr), val in defaults.items():
                setattr(importlib.import_module(f"mlx_harmony_tui.model.{mod}"), attr, val)
            for key, val in flags.items():
                mod, attr = key.rsplit(".", 1)
                setattr(importlib.import_module(f"mlx_harmony_tui.model.{mod}"), attr, int(val))
            model.decoder = CompiledDecoder(model)
            for c in cache:  # every variant decodes from the same context length
                c.trim(c.offset - start)
            run(8)
            results[name].append(pipelined(64) * 1e3)
    base = min(results["default"])
    for name, ms in results.items():
        print(f"  {name:24s} {' '.join(f'{m:.3f}' for m in ms)} ms/token pipelined, best {min(ms):.3f} "
              f"({base / min(ms):.3f}x the default)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kind", default="20b")
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--tokens", type=int, default=2, help="tokens decoded while profiling")
    ap.add_argument("--profile", action="store_true", help="bracket the profiled tokens for ncu")
    ap.add_argument("--summarize")
    ap.add_argument("--variant", action="append", default=[],
                    help="NAME:module.FLAG=V,...: also time the decoder rebuilt with these kernel flags "
                         "(e.g. mv:cuda_matvec._CVT=1); the variants and the default alternate, twice")
    a = ap.parse_args()
    if a.summarize:
        return summarize(a.summarize)
    import mlx.core as mx

    from mlx_harmony_tui.engine import bench

    model, config = bench.build_random(a.kind)
    model = model.optimize()  # the compiled one-token step, as the engine uses it
    cache = model.make_cache()
    prompt = mx.random.randint(0, config.vocab_size, (1, a.prompt), key=mx.random.key(1))
    logits = model(prompt, cache, last_only=True)
    tok = mx.argmax(logits[:, -1], axis=-1)
    mx.eval(tok)
    step = model

    def run(n: int) -> float:
        nonlocal tok
        t0 = time.perf_counter()
        for _ in range(n):
            tok = mx.argmax(step(tok[:, None].astype(mx.int32), cache)[:, -1], axis=-1)
            mx.eval(tok)
        return (time.perf_counter() - t0) / n

    def pipelined(n: int) -> float:
        """As the engine decodes: the next token's graph is queued before the previous one is read."""
        nonlocal tok
        t0 = time.perf_counter()
        prev = None
        for _ in range(n):
            t1 = time.perf_counter()
            tok = mx.argmax(step(tok[:, None].astype(mx.int32), cache)[:, -1], axis=-1)
            t2 = time.perf_counter()
            mx.async_eval(tok)
            t3 = time.perf_counter()
            if prev is not None:
                prev.item()
            parts[0] += t2 - t1
            parts[1] += t3 - t2
            parts[2] += time.perf_counter() - t3
            prev = tok
        tok.item()
        return (time.perf_counter() - t0) / n

    parts = [0.0, 0.0, 0.0]  # host: building the graph, async_eval (encoding and launching), waiting

    if a.variant:
        return compare(model, cache, a.variant, run, pipelined)
    run(16)
    per = run(64)
    pipe = pipelined(64)
    print(f"{a.kind}: {per * 1e3:.3f} ms per token with a sync per token ({1 / per:.1f} tok/s), "
          f"{pipe * 1e3:.3f} ms pipelined ({1 / pipe:.1f} tok/s); pipelined host time per token: "
          f"graph {parts[0] / 64 * 1e3:.3f} ms, async_eval {parts[1] / 64 * 1e3:.3f} ms, "
          f"waiting for the GPU {parts[2] / 64 * 1e3:.3f} ms", flush=True)
    if a.profile:
        start, stop = _profiler()
        mx.synchronize()
        start()
        run(a.tokens)
        mx.synchronize()
        stop()


if __name__ == "__main__":
    main()

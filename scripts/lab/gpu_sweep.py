"""Run `bench` under several MLX environment settings, one process each, and print the decode/prefill table.

MLX reads some settings once per process (e.g. MLX_USE_CUDA_GRAPHS, MLX_MAX_OPS_PER_BUFFER), so each
variant is its own subprocess; ours and mlx-lm still alternate inside each one, so every ratio comes from
one process. Usage (GPU machine, see shared/gpu.md):

    python scripts/lab/gpu_sweep.py --out $OUT --variant base: --variant nographs:MLX_USE_CUDA_GRAPHS=0 \
        -- --random 20b --prompt-lengths 512,4096 --gen-tokens 64 --repeats 1 --turns 0 --vs-mlx-lm
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def parse_variant(text: str) -> tuple[str, dict[str, str], list[str]]:
    """NAME:VAR=V,VAR=V[:extra bench args separated by spaces]."""
    name, _, rest = text.partition(":")
    env_part, _, extra = rest.partition(":")
    env = dict(kv.split("=", 1) for kv in env_part.split(",") if kv)
    return name, env, extra.split()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("."))
    ap.add_argument("--variant", action="append", required=True)
    ap.add_argument("--timeout", type=float, default=280)
    ap.add_argument("bench_args", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    args = [x for x in a.bench_args if x != "--"]
    a.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for spec in a.variant:
        name, env, extra = parse_variant(spec)
        out = a.out / f"sweep-{name}.json"
        cmd = [sys.executable, "-m", "mlx_harmony_tui", "bench", *args, *extra, "--json-out", str(out)]
        t0 = time.perf_counter()
        try:
            p = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, timeout=a.timeout)
            status = f"rc {p.returncode}"
            (a.out / f"sweep-{name}.log").write_text(p.stdout[-4000:] + "\n--- stderr ---\n" + p.stderr[-8000:])
        except subprocess.TimeoutExpired:
            status = "timeout"
        wall = time.perf_counter() - t0
        print(f"== {name} {env} {extra}: {status}, {wall:.0f} s", flush=True)
        if not out.exists():
            continue
        doc = json.loads(out.read_text())
        for r in doc["prompt_lengths"]:
            o, t = r["ours"], r.get("mlx_lm")
            line = {"variant": name, "prompt": r["prompt_tokens"], "ours_prefill": o["prefill_tps"],
                    "ours_decode": o["decode_tps"], "ours_peak_gib": o["peak_bytes"] / 2**30}
            if t:
                line |= {"lm_prefill": t["prefill_tps"], "lm_decode": t["decode_tps"],
                         "x_prefill": o["prefill_tps"] / t["prefill_tps"], "x_decode": o["decode_tps"] / t["decode_tps"]}
            rows.append(line)
            print("   " + "  ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in line.items()),
                  flush=True)
    (a.out / "sweep.json").write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

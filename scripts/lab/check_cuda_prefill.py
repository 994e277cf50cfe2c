"""GPU check of the prefill MoE paths against the CPU: the per-expert path (used on CUDA for long chunks) and
the gather path, float and MXFP4 tiny models and two layers of gpt-oss-20b's shapes, each against the same model's logits computed on the CPU
stream. Prints max |difference| and NaN counts. ``python scripts/lab/check_cuda_prefill.py``."""

from __future__ import annotations

import argparse

import mlx.core as mx

from mlx_harmony_tui.model import load_tiny_model
from mlx_harmony_tui.model.gpt_oss import Experts


def models():
    for layout in ("float", "mlx"):
        yield f"tiny-{layout}", load_tiny_model(layout=layout, seed=3)[0]
    from mlx_harmony_tui.engine import bench

    bench._REAL["20b-2"] = {"num_hidden_layers": 2, "num_local_experts": 32}  # 2 layers of the real shapes
    yield "20b-2", bench.build_random("20b-2")[0]


def main() -> None:
    argparse.ArgumentParser(description=__doc__).parse_args()
    tokens = mx.array([list(range(1000, 1200))], dtype=mx.int32)
    for layout, model in models():
        with mx.stream(mx.cpu):
            Experts.per_expert_prefill = False
            ref = model(tokens)
            mx.eval(ref)
        for per_expert in (False, True):
            Experts.per_expert_prefill = per_expert
            got = model(tokens)
            diff = mx.abs(got - ref)
            print(f"{layout:10s} per_expert={per_expert!s:5s}: max |gpu - cpu| {diff.max().item():.3e}, "
                  f"NaN gpu {mx.isnan(got).sum().item()}, cpu {mx.isnan(ref).sum().item()}, "
                  f"argmax equal {(mx.argmax(got, -1) == mx.argmax(ref, -1)).mean().item():.3f}", flush=True)


if __name__ == "__main__":
    main()

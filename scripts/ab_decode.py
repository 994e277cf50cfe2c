"""Decode A/B in one process: the whole-token compiled step vs the per-layer-boundary graphs (model/fast.py),
and mlx-lm, alternating on the same weights, so the ratios share the machine's state.

    python scripts/ab_decode.py [20b|tiny] [--prompt-lengths 512,4096] [--gen-tokens 128] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import random

from mlx_harmony_tui.engine.bench import build_random, run_mlx_lm, run_ours, to_mlx_lm
from mlx_harmony_tui.engine.generator import Engine
from mlx_harmony_tui.model.fast import CompiledDecoder


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", nargs="?", default="20b")
    ap.add_argument("--prompt-lengths", default="512,4096")
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    model, config = build_random(a.kind)
    lm = to_mlx_lm(model, config)
    engine = Engine(model, config, model_id=a.kind, optimize=True)
    rng = random.Random(0)
    warm = [rng.randrange(1000, 100_000) for _ in range(64)]
    for whole in (True, False):
        CompiledDecoder.whole_step = whole
        run_ours(engine, warm, 8, 512)
    run_mlx_lm(lm, warm, 8, 512)
    rows = []
    for plen in [int(x) for x in a.prompt_lengths.split(",")]:
        prompt = [rng.randrange(1000, 100_000) for _ in range(plen)]
        best = {"whole": 0.0, "segments": 0.0, "mlx_lm": 0.0}
        for _ in range(a.repeats):
            for name, whole in (("whole", True), ("segments", False)):
                CompiledDecoder.whole_step = whole
                best[name] = max(best[name], run_ours(engine, prompt, a.gen_tokens, 512)["decode_tps"])
            best["mlx_lm"] = max(best["mlx_lm"], run_mlx_lm(lm, prompt, a.gen_tokens, 512)["decode_tps"])
        row = {"prompt": plen, **{k: round(v, 1) for k, v in best.items()},
               "whole/segments": round(best["whole"] / best["segments"], 3),
               "whole/mlx_lm": round(best["whole"] / best["mlx_lm"], 3),
               "segments/mlx_lm": round(best["segments"] / best["mlx_lm"], 3)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    CompiledDecoder.whole_step = True


if __name__ == "__main__":
    main()

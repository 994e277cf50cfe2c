"""Where a later turn's TTFT goes on the tiny model, against an early turn's: the engine's steps of one
turn (41 new tokens, as in `bench --turns`) timed one by one, each evaluated, at two cached lengths (turn 2's
183 and turn 20's 1,335 tokens). Two prompts that differ in their last 41 tokens alternate, so every call
trims the previous turn and prefills 41 tokens. Min / median ms over ``--runs``.

    python scripts/turn_ttft_parts.py --runs 80
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time

import mlx.core as mx

from mlx_harmony_tui.engine.bench import build_random
from mlx_harmony_tui.engine.generator import Engine, GenerationOptions
from mlx_harmony_tui.engine.sampling import SamplingParams


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--reused", default="183,1335", help="cached tokens before the turn's 41 new ones")
    a = ap.parse_args()
    model, config = build_random("tiny")
    engine = Engine(model, config)
    pc = engine.prompt_cache
    opts = GenerationOptions(
        SamplingParams(temperature=0), max_tokens=24, stop_ids=frozenset(), prefill_step=512, loop=None
    )
    rng = random.Random(0)

    def tokens(n: int) -> list[int]:
        return [rng.randrange(1000, 100_000) for _ in range(n)]

    for reused in (int(x) for x in a.reused.split(",")):
        base = tokens(reused)
        prompts = (base + tokens(41), base + tokens(41))
        for p in prompts:
            list(engine.generate(p, opts))
        parts: dict[str, list[float]] = {
            k: [] for k in ("prepare", "prefill 40", "first token", "checkpoint")
        }
        for i in range(a.runs):
            p = prompts[i % 2]
            t0 = time.perf_counter()
            keep = pc.prepare(p)
            t1 = time.perf_counter()
            rest = p[keep:]
            engine._logits(rest[:-1])
            mx.eval([c.state for c in pc.caches])
            pc.extend(rest[:-1])
            t2 = time.perf_counter()
            mx.eval(mx.argmax(engine._logits(rest[-1:]), axis=-1))
            pc.extend(rest[-1:])
            t3 = time.perf_counter()
            mx.eval(pc.checkpoint())
            t4 = time.perf_counter()
            for v, dt in zip(parts.values(), (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                v.append(1000 * dt)
        summary = "  ".join(f"{k} {min(v):.2f} / {statistics.median(v):.2f}" for k, v in parts.items())
        print(f"{reused} cached tokens: {summary}  (ms, min / median of {a.runs})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

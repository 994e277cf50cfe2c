"""Measure a sharded model under mlx.launch: bytes each rank puts into collectives per decoded token (counted
on the eager forward), and decode tok/s of the real DistributedEngine. Rank 0 prints a table.

    mlx.launch -n 2 --backend ring --python .venv/bin/python scripts/distributed_bench.py --model tiny
    python scripts/distributed_bench.py --model tiny --tokens 64      # one process, for the ratio

The per-token bytes of gpt-oss-20b / 120b then follow from their configs (docs/distributed.md).
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", help="a model name or folder (default: tiny)")
    ap.add_argument("--tokens", type=int, default=64, help="tokens to decode for the rate")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    args = ap.parse_args()

    import mlx.core as mx
    from mlx.utils import tree_flatten

    from mlx_harmony_tui.backends.local import resolve_model_path
    from mlx_harmony_tui.engine import distributed
    from mlx_harmony_tui.engine.generator import Engine, GenerationOptions
    from mlx_harmony_tui.engine.sampling import SamplingParams
    from mlx_harmony_tui.model import load_model
    from mlx_harmony_tui.model.shard import shard_model

    group = distributed.init("any") if distributed.launched() else None
    rank = group.rank() if group is not None else 0
    path = resolve_model_path(args.model)
    info: dict = {}
    shard = (lambda m: info.update(s=shard_model(m, group))) if group is not None else None
    model, config = load_model(path, shard=shard)
    weight_bytes = sum(v.nbytes for _, v in tree_flatten(model.parameters()))

    # 1. bytes per token: count what enters each collective in one eager one-token forward
    counted = {"all_sum": 0, "all_gather": 0, "calls": 0}
    real_sum, real_gather = mx.distributed.all_sum, mx.distributed.all_gather

    def count_sum(x, **kw):
        counted["all_sum"] += x.nbytes
        counted["calls"] += 1
        return real_sum(x, **kw)

    def count_gather(x, **kw):
        counted["all_gather"] += x.nbytes
        counted["calls"] += 1
        return real_gather(x, **kw)

    cache = model.make_cache()
    prompt = mx.array([[(i * 7919) % 200000 for i in range(args.prompt_tokens)]])
    mx.eval(model(prompt, cache=cache))
    if group is not None:
        mx.distributed.all_sum, mx.distributed.all_gather = count_sum, count_gather
    mx.eval(model(mx.array([[11]]), cache=cache))
    mx.distributed.all_sum, mx.distributed.all_gather = real_sum, real_gather

    # 2. decode rate of the real engine (compiled step; the token shared with one more all-sum)
    engine = distributed.DistributedEngine(model, config, group) if group is not None else Engine(model, config)
    if rank != 0:
        engine.follow()
        return
    engine.warm_up()
    opts = GenerationOptions(sampling=SamplingParams(temperature=0.0), max_tokens=args.tokens, loop=None)
    ids = prompt[0].tolist()
    list(engine.generate(ids, GenerationOptions(sampling=SamplingParams(temperature=0.0), max_tokens=4, loop=None)))
    engine.prompt_cache.reset() if group is None else None
    t0 = time.perf_counter()
    out = list(engine.generate(ids[: args.prompt_tokens // 2], opts))
    dt = time.perf_counter() - t0
    m = engine.last_result.metrics
    if hasattr(engine, "close"):
        engine.close()
    ranks = group.size() if group is not None else 1
    print(f"model {path.name}: {ranks} rank(s), weights on rank 0: {weight_bytes / 2**20:.1f} MiB")
    print(f"collectives per token: {counted['calls']}  all-sum bytes in: {counted['all_sum']}  "
          f"all-gather bytes in: {counted['all_gather']}  (+4 for the shared token)")
    print(f"decode: {m.decode_tps:.1f} tok/s over {len(out)} tokens ({dt:.2f} s with prefill)")


if __name__ == "__main__":
    main()

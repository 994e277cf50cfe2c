"""What MLX's peak memory above the weights and KV consists of during one prefill chunk late in a long
prompt, on a random model (default the tiny one, on whatever backend MLX runs).

The caches are filled directly with random keys/values for ``--cached`` positions (a 32,256-token prefill
takes a minute on the CPU), then one ``--chunk``-token chunk runs as the engine's prefill does (the caches'
new state evaluated, logits of the last position only). Printed: the chunk's peak above what was active
before it, then the same chunk with each part evaluated on its own (attention call, KV append, MoE), the
largest peak of each part above its inputs. ``--no-reserve`` leaves the full layers' buffers to grow at
the chunk as they did before the engine set ``KVCache.reserve`` (docs/benchmarks.md "CPU: peak memory of a
long prefill").

    PYTHONPATH=. python scripts/prefill_peak_parts.py --cached 32256
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable
from typing import Any

import mlx.core as mx

from mlx_harmony_tui.engine.bench import build_random
from mlx_harmony_tui.model import KVCache, gpt_oss
from mlx_harmony_tui.model.cache import SlidingKVCache

MIB = 2**20


def filled_caches(model: Any, cached: int, chunk: int, reserve: bool) -> list[KVCache]:
    """The model's caches holding ``cached`` random positions (sliding ones their window and margin)."""
    caches = model.make_cache()
    hkv, d = model.config.num_key_value_heads, model.config.head_dim
    for c in caches:
        n = min(cached, c.retain) if isinstance(c, SlidingKVCache) else cached
        keys, values = mx.random.normal((1, hkv, n, d)), mx.random.normal((1, hkv, n, d))
        if isinstance(c, SlidingKVCache):
            c.restore({"keys": keys, "values": values}, cached - n)
        else:
            if reserve:  # as the engine does before a chunked prefill (older code ignores it)
                c.reserve = cached + chunk
            c.update(keys, values)
    mx.eval([c.state for c in caches])
    return caches


def run_chunk(model: Any, caches: list[KVCache], chunk: int) -> int:
    """Peak bytes above the active ones while one chunk is prefilled."""
    ids = mx.array([[random.randrange(1000, 100_000) for _ in range(chunk)]], dtype=mx.int32)
    mx.synchronize()
    mx.clear_cache()
    base = mx.get_active_memory()
    mx.reset_peak_memory()
    model(ids, cache=caches, last_only=True)
    mx.eval([c.state for c in caches])
    return mx.get_peak_memory() - base


def measured(parts: dict[str, int], name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with its inputs evaluated first and its output after, its peak above the inputs recorded."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        mx.eval([a for a in args if isinstance(a, mx.array)])
        mx.synchronize()
        base = mx.get_active_memory()
        mx.reset_peak_memory()
        out = fn(*args, **kwargs)
        mx.eval(out if out is not None else [args[0].keys, args[0].values])
        parts[name] = max(parts.get(name, 0), mx.get_peak_memory() - base)
        return out

    return wrapper


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", default="tiny", help="random model shape (bench's --random kinds)")
    ap.add_argument("--cached", type=int, default=32256, help="positions in the cache before the chunk")
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--no-reserve", action="store_true", help="let the KV buffers grow at the chunk")
    args = ap.parse_args()
    model, _ = build_random(args.kind)
    model.optimize()
    reserve = not args.no_reserve
    run_chunk(model, filled_caches(model, 64, args.chunk, reserve), args.chunk)  # warm up
    caches = filled_caches(model, args.cached, args.chunk, reserve)
    kv = sum(c.nbytes for c in caches)
    whole = run_chunk(model, caches, args.chunk)
    print(
        f"{args.kind}: {args.chunk} tokens after {args.cached}: peak +{whole / MIB:.1f} MiB above weights "
        f"and KV ({kv / MIB:.1f} MiB before the chunk, {sum(c.nbytes for c in caches) / MIB:.1f} after)"
    )
    parts: dict[str, int] = {}
    caches = filled_caches(model, args.cached, args.chunk, reserve)
    gpt_oss._attend = measured(parts, "attention", gpt_oss._attend)
    append = "_append" if hasattr(KVCache, "_append") else "update"  # what update_and_fetch calls
    setattr(KVCache, append, measured(parts, "KV append", getattr(KVCache, append)))
    gpt_oss.MoE.__call__ = measured(parts, "MoE", gpt_oss.MoE.__call__)  # type: ignore[method-assign]
    run_chunk(model, caches, args.chunk)
    print("  each part on its own: " + ", ".join(f"{k} +{v / MIB:.1f} MiB" for k, v in parts.items()))


if __name__ == "__main__":
    main()

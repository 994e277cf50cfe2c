"""Long-context figures of issue 23 on the GPU, in one process: KV bytes at 131,072 tokens (float, 8-bit,
4-bit, mxfp8, affine128), and for each prompt length ours against mlx-lm on the same random gpt-oss-20b arrays (prefill,
decode, peak memory, KV bytes), our decode with the split-K attention kernel and with MLX's sdpa
(alternated on the same cache), and the 8-bit KV cache's decode. Results are written after every step, so
a run cut short still reports what it measured.

    python scripts/long_context_gpu.py --out $OUT --lengths 4096,16384,32768,65536
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

from mlx_harmony_tui.engine.bench import build_random, real_config, run_mlx_lm, run_ours, to_mlx_lm
from mlx_harmony_tui.engine.generator import Engine, GenerationOptions, default_prefill_step
from mlx_harmony_tui.engine.memory import weights_nbytes
from mlx_harmony_tui.engine.sampling import SamplingParams
from mlx_harmony_tui.model import tiny_config

# KV cache settings measured: name -> (kv_bits, kv_mode)
KV_SETTINGS = {
    "None": (None, None),
    "8": (8, "affine"),
    "4": (4, "affine"),
    "mxfp8": (8, "mxfp8"),
    "affine128": (8, "affine128"),
}


def kv_bytes_at(kind: str, tokens: int, bits: int | None, step: int = 512, mode: str | None = None) -> int:
    """The caches' bytes after ``tokens`` positions of ``kind``'s shapes (bf16 keys/values), ending with a
    chunk of the engine's prefill step (it sets the sliding layers' buffers; the earlier chunks are larger,
    which leaves the same buffers and is faster on a CPU). Needs no weights."""
    from mlx_harmony_tui.model import ModelConfig
    from mlx_harmony_tui.model.cache import KVCache, SlidingKVCache
    from mlx_harmony_tui.model.kv_quant import QuantizedKVCache

    cfg = ModelConfig.from_dict(real_config(kind) if kind != "tiny" else tiny_config())
    caches = [
        SlidingKVCache(cfg.sliding_window)
        if t == "sliding_attention"
        else QuantizedKVCache(bits, mode=mode or "affine")
        if bits
        else KVCache()
        for t in cfg.layer_types
    ]
    sizes = (
        [8192] * ((tokens - step) // 8192)
        + ([(tokens - step) % 8192] if (tokens - step) % 8192 else [])
        + [step]
    )
    for n in sizes:
        kv = mx.zeros((1, cfg.num_key_value_heads, n, cfg.head_dim), dtype=mx.bfloat16)
        for c in caches:
            c.update(kv, kv)
        mx.eval([c.state for c in caches])
    total = sum(c.nbytes for c in caches)
    del caches
    mx.clear_cache()
    return total


def decode_only(engine: Engine, prompt: list[int], tokens: int) -> float:
    """Decode tok/s going on from the cached prompt (one token re-run), greedy."""
    opts = GenerationOptions(
        SamplingParams(temperature=0), max_tokens=tokens, stop_ids=frozenset(), loop=None
    )
    for _ in engine.generate(prompt, opts):
        pass
    assert engine.last_result is not None
    return float(engine.last_result.metrics.decode_tps or 0.0)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("."))
    ap.add_argument("--lengths", default="4096,16384,32768,65536", help="LEN or LENxREPEATS, comma-separated")
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--prefill-step", type=int, default=0, help="our prefill chunk (0: the engine's default)")
    ap.add_argument("--lm-prefill-step", type=int, default=2048, help="mlx-lm's prefill_step_size (its default)")
    ap.add_argument("--peak-steps", default="", help="after the rows: a --peak-length prefill of ours per "
                    "prefill step given (e.g. 1024,2048): peak over what was resident before it")
    ap.add_argument("--peak-length", type=int, default=32768)
    ap.add_argument("--repeats", type=int, default=1, help="runs of each side per length, alternated")
    ap.add_argument("--lm-first", action="store_true", help="mlx-lm runs first at each length (it pays the "
                    "first use of new shapes: cuDNN plans, JIT)")
    ap.add_argument("--no-mlx-lm", action="store_true")
    ap.add_argument("--kind", default="20b", help="random model: 20b, 120b or tiny (a CPU smoke test)")
    ap.add_argument("--kv-tokens", type=int, default=131072, help="0: skip the KV-bytes step")
    ap.add_argument(
        "--kv-only", action="store_true", help="only the KV bytes (no weights: runs on a CPU too)"
    )
    ap.add_argument(
        "--kv8-length", type=int, default=16384, help="prompt length of the 8-bit KV run (0: skip)"
    )
    a = ap.parse_args()
    a.prefill_step = a.prefill_step or default_prefill_step()
    a.out.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {"device": str(mx.default_device()), "mlx": mx.__version__, "rows": []}

    def save(msg: str) -> None:
        (a.out / "long_context.json").write_text(json.dumps(doc, indent=1) + "\n")
        print(time.strftime("%H:%M:%S"), msg, flush=True)

    if a.kv_only:
        doc["kv_bytes"] = {
            "tokens": a.kv_tokens,
            **{name: kv_bytes_at(a.kind, a.kv_tokens, b, mode=m) for name, (b, m) in KV_SETTINGS.items()},
        }
        save(f"KV bytes: {doc['kv_bytes']}")
        return 0
    t0 = time.perf_counter()
    model, config = build_random(a.kind, dtype="bfloat16")
    doc["weights_bytes"] = weights_nbytes(model)
    save(f"model built in {time.perf_counter() - t0:.0f} s")
    quantizable = model.layers[0].self_attn.head_dim % 32 == 0
    settings = KV_SETTINGS if quantizable else {"None": (None, None)}
    if a.kv_tokens:
        doc["kv_bytes"] = {
            "tokens": a.kv_tokens,
            **{name: kv_bytes_at(a.kind, a.kv_tokens, b, mode=m) for name, (b, m) in settings.items()},
        }
        save(f"KV bytes: {doc['kv_bytes']}")
    lm = None if a.no_mlx_lm else to_mlx_lm(model, config)
    engine = Engine(model, config, model_id="random 20b")
    decoder = engine.model.decoder
    rng = random.Random(0)
    warm = [rng.randrange(1000, 100_000) for _ in range(64)]
    run_ours(engine, warm, 8, a.prefill_step)
    if lm is not None:
        run_mlx_lm(lm, warm, 8, a.lm_prefill_step)
    doc["flash_min_default"] = decoder.flash_min
    doc["flash"] = decoder.flash is not None
    save(f"warm; flash kernel {'on' if decoder.flash is not None else 'OFF'} from {decoder.flash_min} keys")
    for item in a.lengths.split(","):  # LEN or LENxREPEATS
        plen, _, reps = item.partition("x")
        plen, reps = int(plen), int(reps or a.repeats)
        prompt = [rng.randrange(1000, 100_000) for _ in range(plen)]
        row: dict[str, Any] = {"prompt_tokens": plen, "prefill_step": a.prefill_step,
                               "lm_prefill_step": a.lm_prefill_step, "lm_first": a.lm_first}
        ours_runs, lm_runs = [], []
        for _ in range(max(1, reps)):
            if lm is not None and a.lm_first:
                lm_runs.append(run_mlx_lm(lm, prompt, a.gen_tokens, a.lm_prefill_step))
                save(f"{plen}: mlx-lm {lm_runs[-1]}")
            ours_runs.append(run_ours(engine, prompt, a.gen_tokens, a.prefill_step))
            save(f"{plen}: ours {ours_runs[-1]}")
            if lm is not None and not a.lm_first:
                lm_runs.append(run_mlx_lm(lm, prompt, a.gen_tokens, a.lm_prefill_step))
                save(f"{plen}: mlx-lm {lm_runs[-1]}")
        row["ours"], row["ours_runs"] = ours_runs[-1], ours_runs
        default_min = decoder.flash_min
        kernel, sdpa = [], []
        for _ in range(2):  # alternated on the same cache: kernel on every full layer, then MLX's sdpa
            decoder.flash_min = 1
            kernel.append(decode_only(engine, prompt, a.gen_tokens))
            decoder.flash_min = 1 << 30
            sdpa.append(decode_only(engine, prompt, a.gen_tokens))
        decoder.flash_min = default_min
        row["decode_kernel"], row["decode_sdpa"] = kernel, sdpa
        save(f"{plen}: decode kernel {kernel} sdpa {sdpa}")
        if lm is not None:
            row["mlx_lm"] = t = lm_runs[-1]
            row["mlx_lm_runs"] = lm_runs
            o = row["ours"]
            row["ratio"] = {k: o[k] / t[k] if t[k] else None for k in ("prefill_tps", "decode_tps")}
            save(f"{plen}: mlx-lm {t} ratio {row['ratio']}")
        doc["rows"].append(row)
        save(f"{plen} done")
    if a.peak_steps:
        prompt = [rng.randrange(1000, 100_000) for _ in range(a.peak_length)]
        doc["peak"] = []
        from mlx_harmony_tui.model.gpt_oss import Experts

        for item in a.peak_steps.split(","):  # STEP or STEP:EVAL_EVERY (Experts.eval_every)
            step, _, every = item.partition(":")
            step, Experts.eval_every = int(step), int(every or 0)
            r = run_ours(engine, prompt, 8, step)
            over = r["peak_bytes"] - r["resident_bytes"]  # this run's KV and working memory
            doc["peak"].append({"prompt_tokens": a.peak_length, "prefill_step": step,
                                "eval_every": Experts.eval_every, **r, "over_resident": over,
                                "over_kv_share": (over - r["kv_bytes"]) / (doc["weights_bytes"] + r["kv_bytes"])})
            save(f"peak {doc['peak'][-1]}")
        Experts.eval_every = 0
    if a.kv8_length and quantizable:
        engine8 = Engine(model, config, model_id="random 20b", kv_bits=8)
        prompt = [rng.randrange(1000, 100_000) for _ in range(a.kv8_length)]
        doc["kv8"] = {"prompt_tokens": a.kv8_length,
                      "ours": run_ours(engine8, prompt, a.gen_tokens, a.prefill_step)}
        save(f"kv8 {doc['kv8']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

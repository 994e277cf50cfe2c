"""Benchmarks: TTFT, prefill/decode speed and peak memory per prompt length, a multi-turn scenario, and
an optional head-to-head with mlx-lm's ``generate_step`` on the very same weights (in alternation).

mlx-lm is imported only inside ``to_mlx_lm``/``run_mlx_lm`` (the ``bench`` extra); the app never needs it.
"""

from __future__ import annotations

import platform
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import mlx.core as mx

from mlx_harmony_tui.engine.generator import Engine, GenerationOptions, default_prefill_step
from mlx_harmony_tui.engine.sampling import SamplingParams
from mlx_harmony_tui.errors import UserError

# Real shapes of the published checkpoints (config.json of openai/gpt-oss-20b and -120b).
_REAL: dict[str, dict[str, Any]] = {
    "20b": {"num_hidden_layers": 24, "num_local_experts": 32},
    "120b": {"num_hidden_layers": 36, "num_local_experts": 128},
}


def real_config(kind: str) -> dict[str, Any]:
    """config.json of gpt-oss-20b/120b (shapes only; the weights will be random)."""
    from mlx_harmony_tui.model import tiny_config

    layers = _REAL[kind]["num_hidden_layers"]
    return tiny_config(
        hidden_size=2880, intermediate_size=2880, num_hidden_layers=layers, num_attention_heads=64,
        num_key_value_heads=8, head_dim=64, num_local_experts=_REAL[kind]["num_local_experts"],
        num_experts_per_tok=4, experts_per_token=4, sliding_window=128, torch_dtype="bfloat16",
        layer_types=["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)],
    )


def float_dtype(model: Any) -> str:
    """The dtype of the model's float parts (norms, biases, scales), e.g. "bfloat16"."""
    return str(model.model.norm.weight.dtype).removeprefix("mlx.core.")


def cast_float_parts(model: Any, dtype: str) -> Any:
    """Every floating-point array of ``model`` in ``dtype`` (new arrays; packed weights untouched), except
    float experts' weights on the CPU, whose gather_mm takes float32 only. Returns ``model``."""
    from mlx.utils import tree_flatten, tree_unflatten

    from mlx_harmony_tui.model.gpt_oss import _cpu_backend

    fdt = getattr(mx, dtype)
    keep = _cpu_backend()
    params = [(k, v.astype(fdt) if mx.issubdtype(v.dtype, mx.floating)
               and not (keep and ".experts." in k and k.endswith("weight")) else v)
              for k, v in tree_flatten(model.parameters())]
    model.update(tree_unflatten(params))
    mx.eval(model.parameters())
    return model


def build_random(kind: str, seed: int = 0, dtype: str | None = None) -> tuple[Any, Any]:
    """A model with random weights: "tiny" (via the tiny checkpoint: float32 like it and the demo model unless
    ``dtype`` says otherwise) or "20b"/"120b" with the real shapes and formats (experts MXFP4, everything
    else 8-bit affine, group 64, float parts ``dtype``, default bfloat16 as in the published checkpoints)."""
    from mlx_harmony_tui.model import load_tiny_model

    if kind == "tiny":
        model, config = load_tiny_model(seed=seed, prefix="mht-bench-")
        if dtype not in (None, "float32"):
            cast_float_parts(model, dtype)
        return model, config
    dtype = dtype or "bfloat16"
    if kind not in _REAL:
        raise UserError(f"--random must be one of tiny, 20b, 120b (got {kind!r})")
    from mlx.utils import tree_flatten, tree_unflatten

    from mlx_harmony_tui.engine.memory import available_memory, check_fits
    from mlx_harmony_tui.model import GptOss, ModelConfig
    from mlx_harmony_tui.model.config import QuantSpec

    cfg_dict = real_config(kind)
    config = ModelConfig.from_dict(cfg_dict)
    e, h, i, n = config.num_local_experts, config.hidden_size, config.intermediate_size, config.num_hidden_layers
    expert_bytes = n * e * 3 * h * i * 17 // 32  # 4-bit values + one uint8 scale per 32
    dense_bytes = 2 * config.vocab_size * h * 9 // 8 + n * 4 * 64 * 64 * h * 9 // 8
    check_fits(expert_bytes + dense_bytes, f"a random gpt-oss-{kind}", available=available_memory())
    mxfp4 = QuantSpec(mode="mxfp4", group_size=32, bits=4)
    affine = QuantSpec(mode="affine", group_size=64, bits=8)
    quant: dict[str, QuantSpec] = {"lm_head": affine, "model.embed_tokens": affine}
    for li in range(n):
        p = f"model.layers.{li}."
        quant[p + "mlp.experts.gate_up"] = quant[p + "mlp.experts.down"] = mxfp4
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            quant[f"{p}self_attn.{proj}"] = affine
    model = GptOss(config, quant)
    fdt = getattr(mx, dtype)
    key = mx.random.key(seed)
    params = []
    for name, a in tree_flatten(model.parameters()):
        key, sub = mx.random.split(key)
        if a.dtype == mx.uint32:
            r = mx.random.randint(0, 1 << 31, a.shape, key=sub).astype(mx.uint32)
        elif a.dtype == mx.uint8:  # mxfp4 scales: exponents around 2^-6
            r = mx.random.randint(118, 124, a.shape, key=sub).astype(mx.uint8)
        elif name.endswith("norm.weight"):
            r = mx.ones(a.shape, fdt)
        else:  # scales, biases, norms, sinks: --dtype (real checkpoints: bfloat16)
            r = (mx.random.normal(a.shape, key=sub) * 0.02).astype(fdt)
        mx.eval(r)  # one array at a time: peak memory stays at the final size
        params.append((name, r))
    model.update(tree_unflatten(params))
    return model, config


# --- mlx-lm on our weights --------------------------------------------------------------------------------


def _import_mlx_lm() -> Any:
    try:
        from mlx_lm.models import gpt_oss
    except ImportError:
        raise UserError(
            "--vs-mlx-lm needs mlx-lm: pip install 'mlx-harmony-tui[bench]' (or pip install mlx-lm)"
        ) from None
    return gpt_oss


def to_mlx_lm(model: Any, config: Any) -> Any:
    """mlx-lm's gpt_oss Model built from the same config, holding the same arrays (names mapped)."""
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    gpt_oss = _import_mlx_lm()
    args = gpt_oss.ModelArgs.from_dict(config.raw)
    lm = gpt_oss.Model(args)
    ours = dict(tree_flatten(model.parameters()))
    quantized = {k.rsplit(".", 1)[0] for k in ours if k.endswith(".scales")}
    if quantized:
        specs = {}
        for path in quantized:
            spec = config.quant_spec(path) if config.quantization else None
            if spec is None:  # --random models carry their specs on the modules
                mod = dict(model.named_modules()).get(path)
                spec = getattr(mod, "quant", None) or _spec_of(mod)
            lm_path = path.replace("experts.gate_up", "experts.gate_proj").replace("experts.down", "experts.down_proj")
            specs[lm_path] = spec
            if "gate_proj" in lm_path:
                specs[lm_path.replace("gate_proj", "up_proj")] = spec

        def predicate(path: str, _m: nn.Module) -> bool | dict[str, Any]:
            s = specs.get(path)
            return False if s is None else {"group_size": s.group_size, "bits": s.bits, "mode": s.mode}

        nn.quantize(lm, class_predicate=predicate)
    weights: list[tuple[str, mx.array]] = []
    for k, v in ours.items():
        if ".mlp.experts.gate_up." in k:
            base, leaf = k.split(".gate_up.")
            quant = base + ".gate_up" in quantized
            if leaf == "bias":
                half = v.shape[-1] // 2
                gate, up = v[..., :half], v[..., half:]
            elif quant:  # packed (E, 2I, ...) rows: [gate | up]
                half = v.shape[1] // 2
                gate, up = v[:, :half], v[:, half:]
            else:  # float (E, H, 2I) -> mlx-lm's (E, I, H)
                half = v.shape[-1] // 2
                gate, up = v[..., :half].transpose(0, 2, 1), v[..., half:].transpose(0, 2, 1)
            weights += [(f"{base}.gate_proj.{leaf}", mx.contiguous(gate)), (f"{base}.up_proj.{leaf}", mx.contiguous(up))]
        elif ".mlp.experts.down." in k:
            base, leaf = k.split(".down.")
            if leaf == "weight" and base + ".down" not in quantized:
                v = mx.contiguous(v.transpose(0, 2, 1))
            weights.append((f"{base}.down_proj.{leaf}", v))
        else:
            weights.append((k, v))
    lm.load_weights(weights, strict=True)
    mx.eval(lm.parameters())
    return lm


def _spec_of(module: Any) -> Any:
    from mlx_harmony_tui.model.config import QuantSpec

    return QuantSpec(mode=getattr(module, "mode", "affine"), group_size=module.group_size, bits=module.bits)


def run_mlx_lm(lm: Any, prompt: list[int], gen_tokens: int, prefill_step: int) -> dict[str, float]:
    """One greedy generation with mlx-lm's generate_step; same figure definitions as ours."""
    from mlx_lm.generate import generate_step
    from mlx_lm.models.cache import make_prompt_cache

    cache = make_prompt_cache(lm)
    mx.reset_peak_memory()
    start = time.perf_counter()
    first = last = start
    n = 0
    for n, (tok, _lp) in enumerate(  # noqa: B007 - n counts the tokens
        generate_step(mx.array(prompt), lm, max_tokens=gen_tokens, prompt_cache=cache,
                      prefill_step_size=prefill_step, sampler=lambda x: mx.argmax(x, axis=-1)),
        start=1,
    ):
        int(tok)
        last = time.perf_counter()
        if n == 1:
            first = last
    out = _figures(len(prompt), first - start, n, last - first)
    out["kv_bytes"] = sum(int(getattr(c, "nbytes", 0)) for c in cache)
    return out


def _figures(prompt_len: int, ttft: float, n: int, decode_span: float) -> dict[str, float]:
    return {
        "ttft_s": ttft,
        "prefill_tps": prompt_len / ttft if ttft > 0 else 0.0,
        "decode_tps": (n - 1) / decode_span if n > 1 and decode_span > 0 else 0.0,
        "generated": n,
        "peak_bytes": int(mx.get_peak_memory()),
    }


def run_ours(engine: Engine, prompt: list[int], gen_tokens: int, prefill_step: int) -> dict[str, float]:
    """One greedy generation from an empty cache with our engine."""
    engine.prompt_cache.reset()
    mx.clear_cache()
    resident = mx.get_active_memory()  # weights and whatever else is held before this run (e.g. mlx-lm's)
    mx.reset_peak_memory()
    opts = GenerationOptions(SamplingParams(temperature=0), max_tokens=gen_tokens, stop_ids=frozenset(),
                             prefill_step=prefill_step, loop=None)
    for _ in engine.generate(prompt, opts):
        pass
    assert engine.last_result is not None
    m = engine.last_result.metrics
    return {"ttft_s": m.ttft_s or 0.0, "prefill_tps": m.prefill_tps or 0.0, "decode_tps": m.decode_tps or 0.0,
            "generated": m.generated_tokens, "peak_bytes": m.mlx_peak_bytes, "kv_bytes": m.kv_bytes,
            "resident_bytes": resident}


@dataclass
class BenchConfig:
    prompt_lengths: list[int] = field(default_factory=lambda: [128, 512, 4096])
    gen_tokens: int = 64
    repeats: int = 3
    turns: int = 20
    turn_new_tokens: int = 40  # user message tokens added each turn
    turn_gen_tokens: int = 24
    prefill_step: int = 0  # 0: the engine's default (default_prefill_step)
    vs_mlx_lm: bool = False
    seed: int = 0
    optimize: bool = True  # False: our eager path (no fused QKV, no compiled decode), for comparison
    kv_bits: int | None = None  # quantized full-layer KV cache (ours only)
    kv_mode: str | None = None  # "affine" or "mxfp8" (ours only)
    mlx_lm_bf16: bool = True  # with vs_mlx_lm, also mlx-lm on its own bfloat16 copy when ours is not bfloat16


def _best(runs: list[dict[str, float]]) -> dict[str, float]:
    """Best of the runs: on a shared machine other work only ever slows a run down, so the best run is the
    least disturbed estimate (medians of 3 still swing 2x on a busy 2-core box)."""
    out = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    out["ttft_s"] = min(r["ttft_s"] for r in runs)
    out["prefill_tps"] = max(r["prefill_tps"] for r in runs)
    out["decode_tps"] = max(r["decode_tps"] for r in runs)
    return out


def _ratios(o: dict[str, float], t: dict[str, float]) -> dict[str, float | None]:
    """ours / theirs for speeds, theirs / ours for TTFT: > 1 means we are faster."""
    q: dict[str, float | None] = {k: (o[k] / t[k] if t[k] else None) for k in ("prefill_tps", "decode_tps")}
    q["ttft"] = t["ttft_s"] / o["ttft_s"] if o["ttft_s"] else None
    return q


def run_bench(model: Any, config: Any, bc: BenchConfig, label: str = "",
              log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Everything the ``bench`` command prints, as one JSON-able document."""
    rng = random.Random(bc.seed)
    if bc.prefill_step <= 0:  # the engine's default, and mlx-lm runs with the same step
        bc = replace(bc, prefill_step=default_prefill_step())
    # mlx-lm first: it shares our arrays, and Engine's optimize() then fuses QKV into new ones.
    lm = to_mlx_lm(model, config) if bc.vs_mlx_lm else None
    # What users run: mlx-lm on a bfloat16 checkpoint, when our float parts are not bfloat16 already.
    lm16 = (cast_float_parts(to_mlx_lm(model, config), "bfloat16")
            if lm is not None and bc.mlx_lm_bf16 and float_dtype(model) != "bfloat16" else None)
    engine = Engine(model, config, model_id=label, optimize=bc.optimize, kv_bits=bc.kv_bits, kv_mode=bc.kv_mode)
    # Warm up both (compilation, allocator) so the first measured run is not penalised.
    warm = [rng.randrange(1000, 100_000) for _ in range(64)]
    run_ours(engine, warm, 8, bc.prefill_step)
    for other in (lm, lm16):
        if other is not None:
            run_mlx_lm(other, warm, 8, bc.prefill_step)
    results = []
    for plen in bc.prompt_lengths:
        prompt = [rng.randrange(1000, 100_000) for _ in range(plen)]
        ours, theirs, theirs16 = [], [], []
        for _ in range(bc.repeats):  # alternate so drift on a shared machine hits both alike
            ours.append(run_ours(engine, prompt, bc.gen_tokens, bc.prefill_step))
            if lm is not None:
                theirs.append(run_mlx_lm(lm, prompt, bc.gen_tokens, bc.prefill_step))
            if lm16 is not None:
                theirs16.append(run_mlx_lm(lm16, prompt, bc.gen_tokens, bc.prefill_step))
        row: dict[str, Any] = {"prompt_tokens": plen, "ours": _best(ours)}
        for key, runs in (("mlx_lm", theirs), ("mlx_lm_bf16", theirs16)):
            if runs:
                row[key] = t = _best(runs)
                row["ratio" + key.removeprefix("mlx_lm")] = _ratios(row["ours"], t)
        log(f"prompt {plen}: done")
        results.append(row)
    turns = multi_turn(engine, bc, rng) if bc.turns > 0 else []
    return {
        "model": label,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "device": str(mx.default_device()), "mlx": mx.__version__},
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "settings": asdict(bc),
        "float_dtype": float_dtype(model),
        "prompt_lengths": results,
        "multi_turn": turns,
        "multi_turn_ttft_ratio": turn_ttft_ratio(turns),
    }


def multi_turn(engine: Engine, bc: BenchConfig, rng: random.Random) -> list[dict[str, Any]]:
    """A growing conversation: each turn's prompt = previous prompt + its reply + new user tokens.

    The whole conversation runs ``bc.repeats`` times with the same tokens (greedy replies, the same random
    user tokens), from an empty cache each time; a turn's TTFT and decode speed are its best over the runs
    (``ttft_s_runs`` keeps them all): one sample per turn swings 2x on a shared machine."""
    opts = GenerationOptions(SamplingParams(temperature=0), max_tokens=bc.turn_gen_tokens, stop_ids=frozenset(),
                             prefill_step=bc.prefill_step, loop=None)
    start = rng.getstate()
    rows: list[dict[str, Any]] = []
    for _ in range(max(1, bc.repeats)):
        engine.prompt_cache.reset()
        rng.setstate(start)
        prompt = [rng.randrange(1000, 100_000) for _ in range(bc.turn_new_tokens * 4)]  # a system prompt
        for turn in range(1, bc.turns + 1):
            # New this turn: the user tokens plus the previous reply's last token (a generation that ends never
            # feeds its final token back through the model, so its keys/values are computed in the next turn).
            new = bc.turn_new_tokens + 1 if turn > 1 else len(prompt)
            reply = list(engine.generate(prompt, opts))
            res = engine.last_result
            assert res is not None
            m = res.metrics
            if len(rows) < turn:
                rows.append({"turn": turn, "prompt_tokens": m.prompt_tokens, "new_tokens": new,
                             "reused_tokens": m.reused_tokens, "prefilled_tokens": m.prefilled_tokens,
                             "reprefilled_tokens": m.reprefilled_tokens, "ttft_s": m.ttft_s,
                             "decode_tps": m.decode_tps, "kv_bytes": m.kv_bytes, "ttft_s_runs": []})
            row = rows[turn - 1]
            row["ttft_s_runs"].append(m.ttft_s)
            row["ttft_s"] = min(row["ttft_s"], m.ttft_s or row["ttft_s"])
            row["decode_tps"] = max(row["decode_tps"] or 0.0, m.decode_tps or 0.0)
            prompt = prompt + reply + [rng.randrange(1000, 100_000) for _ in range(bc.turn_new_tokens)]
    return rows


def turn_ttft_ratio(turns: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The last turn's TTFT over turn 2's (the first that reuses the cache): best of the runs, and in each run."""
    if len(turns) < 3:
        return None
    last, second = turns[-1], turns[1]
    per_run = [a / b for a, b in zip(last["ttft_s_runs"], second["ttft_s_runs"], strict=True) if a and b]
    return {"turn": last["turn"], "best": last["ttft_s"] / second["ttft_s"], "per_run": per_run}


def format_table(doc: dict[str, Any]) -> str:
    """Human-readable summary of ``run_bench``'s document."""
    lines = [f"model: {doc['model']} ({doc.get('float_dtype', '?')} float parts)   machine: "
             f"{doc['machine']['platform']}   mlx {doc['machine']['mlx']}"]
    head = f"{'prompt':>7} {'TTFT ms':>9} {'prefill t/s':>12} {'decode t/s':>11} {'peak MiB':>9} {'KV MiB':>8}"
    vs = any("mlx_lm" in r for r in doc["prompt_lengths"])
    if vs:
        head += f" | {'mlx-lm TTFT':>11} {'prefill':>9} {'decode':>8} | {'x prefill':>9} {'x decode':>8}"
    lines.append(head)
    for r in doc["prompt_lengths"]:
        o = r["ours"]
        line = (f"{r['prompt_tokens']:>7} {o['ttft_s'] * 1000:>9.1f} {o['prefill_tps']:>12.0f} {o['decode_tps']:>11.1f}"
                f" {o['peak_bytes'] / 2**20:>9.0f} {o.get('kv_bytes', 0) / 2**20:>8.1f}")
        if "mlx_lm" in r:
            t, q = r["mlx_lm"], r["ratio"]
            line += (f" | {t['ttft_s'] * 1000:>11.1f} {t['prefill_tps']:>9.0f} {t['decode_tps']:>8.1f}"
                     f" | {q['prefill_tps']:>9.2f} {q['decode_tps']:>8.2f}")
        lines.append(line)
        if "mlx_lm_bf16" in r:
            t, q = r["mlx_lm_bf16"], r["ratio_bf16"]
            lines.append(f"{'':>7} {'mlx-lm, its own bfloat16 copy':>53} | {t['ttft_s'] * 1000:>11.1f} "
                         f"{t['prefill_tps']:>9.0f} {t['decode_tps']:>8.1f} | {q['prefill_tps']:>9.2f} "
                         f"{q['decode_tps']:>8.2f}")
    if doc["multi_turn"]:
        lines.append("")
        lines.append(f"{'turn':>4} {'prompt':>7} {'new':>5} {'reused':>7} {'prefilled':>9} {'TTFT ms':>8}"
                     f" {'decode t/s':>11}")
        for t in doc["multi_turn"]:
            lines.append(f"{t['turn']:>4} {t['prompt_tokens']:>7} {t['new_tokens']:>5} {t['reused_tokens']:>7}"
                         f" {t['prefilled_tokens']:>9} {t['ttft_s'] * 1000:>8.1f} {t['decode_tps']:>11.1f}")
        ratio = doc.get("multi_turn_ttft_ratio")
        if ratio:
            runs = sorted(ratio["per_run"])
            spread = f"; single runs {runs[0]:.2f}-{runs[-1]:.2f}x" if len(runs) > 1 else ""
            lines.append(f"turn {ratio['turn']} / turn 2 TTFT: {ratio['best']:.2f}x (best of {len(runs)} per turn"
                         f"{spread})")
    return "\n".join(lines)

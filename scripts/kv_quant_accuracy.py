"""Accuracy of the quantized KV cache (affine 8 and 4 bits, mxfp8) against the model's own-dtype cache, on a long prompt.

Two measures, both after a prompt of real text rendered as a Harmony conversation (the README pasted a few
times as a document):
- teacher-forced: the float cache's greedy continuation is fed to every cache; at each of its positions,
  the logits' deviation from the float cache's (mean and max |diff|, relative to the mean |logit|) and
  whether the argmax agrees;
- free-running: each cache generates greedily on its own; the tokens equal to the float cache's before
  the first difference, and the share of equal tokens at the same positions.

    python scripts/kv_quant_accuracy.py --model demo --prompt-tokens 4000 --tokens 128
    python scripts/kv_quant_accuracy.py --model tiny --prompt-tokens 4000 --tokens 128
    (--kv 8,mxfp8 measures only those settings)
"""

from __future__ import annotations

import argparse
import atexit
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import mlx.core as mx

from mlx_harmony_tui.engine.generator import Engine, GenerationOptions
from mlx_harmony_tui.engine.sampling import SamplingParams


def load(name: str, dtype: str | None) -> tuple[Any, Any, Path]:
    from mlx_harmony_tui.demo import demo_model_path
    from mlx_harmony_tui.model import load_model, write_tiny_checkpoint

    if name == "demo":
        path = demo_model_path()
    elif name == "tiny":  # 64-wide heads: KV quantization groups need a head size divisible by 32
        tmp = tempfile.mkdtemp(prefix="mht-kvq-")
        atexit.register(shutil.rmtree, tmp, True)
        path = write_tiny_checkpoint(Path(tmp) / "tiny64", layout="float", head_dim=64)
    else:
        path = Path(name)
    model, config = load_model(path, dtype=getattr(mx, dtype) if dtype else None)
    return model, config, path


def prompt_ids(path: Path, n: int) -> list[int]:
    """A Harmony conversation whose user message is the README, repeated to about ``n`` tokens."""
    from mlx_harmony_tui.harmony.messages import HMessage
    from mlx_harmony_tui.harmony.render import RenderOptions, render_prompt
    from mlx_harmony_tui.harmony.vocab import load_encoding

    enc = load_encoding(str(path))
    doc = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    per = len(enc.encode(doc, allowed_special="all"))
    text = "\n\n".join([doc] * max(1, n // per)) + "\n\nSummarize the document above in three sentences."
    return render_prompt([HMessage(role="user", text=text)], RenderOptions(), enc)


def greedy(engine: Engine, prompt: list[int], n: int) -> list[int]:
    opts = GenerationOptions(SamplingParams(temperature=0), max_tokens=n, stop_ids=frozenset(), loop=None)
    return list(engine.generate(prompt, opts))


# The settings measured: name -> (kv_bits, kv_mode)
SETTINGS = {"8": (8, "affine"), "4": (4, "affine"), "mxfp8": (8, "mxfp8"), "affine128": (8, "affine128")}


def forced_logits(
    model: Any, prompt: list[int], cont: list[int], bits: int | None, mode: str = "affine"
) -> mx.array:
    """Logits after the prompt and after each continuation token but the last, with a fresh cache."""
    cache = model.make_cache(kv_bits=bits, kv_mode=mode)
    outs = []
    for s in range(0, len(prompt) - 1, 512):
        model(mx.array([prompt[s : min(s + 512, len(prompt) - 1)]]), cache=cache, last_only=True)
        mx.eval([c.state for c in cache])
    for t in [prompt[-1], *cont[:-1]]:
        out = model(mx.array([[t]]), cache=cache)[0, -1].astype(mx.float32)
        mx.eval(out)
        outs.append(out)
    return mx.stack(outs)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="demo", help="demo, tiny or a model folder")
    ap.add_argument("--prompt-tokens", type=int, default=4000)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument(
        "--dtype", choices=["bfloat16", "float16", "float32"], help="load the weights in this type"
    )
    ap.add_argument("--kv", default=",".join(SETTINGS), help=f"settings to measure, of {', '.join(SETTINGS)}")
    ap.add_argument("--json-out", type=Path)
    a = ap.parse_args()
    model, config, path = load(a.model, a.dtype)
    prompt = (
        prompt_ids(path, a.prompt_tokens)
        if a.model != "tiny"
        else [1000 + 37 * i % 90000 for i in range(a.prompt_tokens)]
    )
    ref_tokens = greedy(Engine(model, config), prompt, a.tokens)
    ref = forced_logits(model, prompt, ref_tokens, None)
    doc: dict[str, Any] = {
        "model": a.model,
        "dtype": str(model.layers[0].self_attn.sinks.dtype),
        "prompt_tokens": len(prompt),
        "tokens": a.tokens,
        "bits": {},
    }
    scale = mx.abs(ref).mean().item()
    for name in a.kv.split(","):
        bits, mode = SETTINGS[name]
        got = forced_logits(model, prompt, ref_tokens, bits, mode)
        diff = mx.abs(got - ref)
        agree = (got.argmax(-1) == ref.argmax(-1)).mean().item()
        free = greedy(Engine(model, config, kv_bits=bits, kv_mode=mode), prompt, a.tokens)
        same = next((i for i, (x, y) in enumerate(zip(free, ref_tokens, strict=True)) if x != y), len(free))
        doc["bits"][name] = {
            "forced_top1_agreement": agree,
            "forced_mean_abs_diff": diff.mean().item(),
            "forced_max_abs_diff": diff.max().item(),
            "forced_mean_abs_diff_rel": diff.mean().item() / scale,
            "greedy_identical_prefix": same,
            "greedy_equal_share": sum(x == y for x, y in zip(free, ref_tokens, strict=True)) / len(free),
        }
        print(name, doc["bits"][name], flush=True)
    text = json.dumps(doc, indent=1)
    print(text)
    if a.json_out:
        a.json_out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

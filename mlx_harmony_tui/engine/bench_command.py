"""`mlx-harmony-tui bench`: speed and memory of the engine, optionally against mlx-lm on the same weights."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mlx_harmony_tui.errors import UserError


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 2 for v in values):
        raise argparse.ArgumentTypeError("prompt lengths must be integers >= 2")
    return values


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("bench", help="measure TTFT, prefill/decode speed and memory",
                              description="Benchmark the generation engine on a model folder or random weights.")
    p.add_argument("model", nargs="?", help="model folder (HF or MLX-community layout)")
    p.add_argument("--random", choices=["tiny", "20b", "120b"], help="random weights with the real shapes instead")
    p.add_argument("--prompt-lengths", type=_int_list, default=[128, 512, 4096], metavar="N,N,...")
    p.add_argument("--gen-tokens", type=int, default=64, help="tokens generated per run (default 64)")
    p.add_argument("--repeats", type=int, default=3, help="runs per prompt length, and of the whole multi-turn scenario; the best is shown")
    p.add_argument("--turns", type=int, default=20, help="turns of the multi-turn scenario (0 = skip)")
    p.add_argument("--prefill-step", type=int, default=0, help="prompt tokens per prefill chunk (default: the engine's, 2048 on CUDA, else 512)")
    p.add_argument("--vs-mlx-lm", action="store_true", help="also run mlx-lm's generate_step, in alternation")
    p.add_argument("--json-out", type=Path, metavar="FILE",
                   help="also write every figure as one JSON document to FILE (stdout gets the table)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                   help="float parts (scales, norms, biases) of --random weights (default: bfloat16 for 20b/120b "
                        "as in the published checkpoints; float32 for tiny, as the tiny and demo checkpoints)")
    p.add_argument("--eager", action="store_true",
                   help="run our unoptimized path (no fused QKV, no compiled decode) for comparison")
    p.add_argument("--kv-bits", type=int, choices=[4, 8], help="quantize our full-attention KV cache (default: off)")
    p.add_argument("--kv-mode", choices=["affine", "affine128", "mxfp8"],
                   help="how --kv-bits quantizes (affine128: groups of 128 over two heads; mxfp8: 8-bit floats; "
                        "either alone implies --kv-bits 8)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mlx_harmony_tui.engine.bench import BenchConfig, build_random, format_table, run_bench

    if bool(args.model) == bool(args.random):
        raise UserError("bench needs either a model folder or --random tiny|20b|120b")
    if args.gen_tokens < 2:
        raise UserError("--gen-tokens must be at least 2 (decode speed excludes the first token)")
    if args.model:
        from mlx_harmony_tui.model import load_model

        model, config = load_model(args.model)
        label = str(args.model)
    else:
        model, config = build_random(args.random, seed=args.seed, dtype=args.dtype)
        label = f"random {args.random}"
    bc = BenchConfig(prompt_lengths=args.prompt_lengths, gen_tokens=args.gen_tokens, repeats=max(1, args.repeats),
                     turns=max(0, args.turns), prefill_step=args.prefill_step, vs_mlx_lm=args.vs_mlx_lm,
                     seed=args.seed, optimize=not args.eager, kv_bits=args.kv_bits,
                     kv_mode=args.kv_mode)
    if args.json_out and not args.json_out.parent.is_dir():
        raise UserError(f"--json-out: folder {args.json_out.parent} does not exist")
    doc = run_bench(model, config, bc, label=label, log=lambda s: print(s, file=sys.stderr))
    print(format_table(doc))
    if args.json_out:
        try:
            args.json_out.write_text(json.dumps(doc, indent=2) + "\n")
        except OSError as e:
            raise UserError(f"--json-out: cannot write {args.json_out}: {e.strerror}") from None
        print(f"wrote {args.json_out}", file=sys.stderr)
    return 0

"""Structured output figures: how many replies parse and validate, and what the constraint costs per token.

For each model and schema, ``--runs`` turns (different seeds) run through the real turn pipeline with the
schema as ``response_format``; every final answer is parsed and validated with jsonschema. Each is paired
with the same prompt and seed without a schema (run first, alternating), and the decode time per token of
both is compared (the engine's own metrics: decode tokens / decode seconds, so prefill and the grammar's
one-time compile are not counted). The constraint's own host time per token (mask + accept) is measured
around its two calls.

    .venv/bin/python scripts/structured_output.py --model tiny --model demo --runs 10
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SCHEMAS: dict[str, dict] = {
    "person (nested object)": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer"},
            "address": {
                "type": "object",
                "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
                "required": ["street", "city"],
                "additionalProperties": False,
            },
        },
        "required": ["name", "age", "address"],
        "additionalProperties": False,
    },
    "order (array of objects)": {
        "type": "object",
        "properties": {
            "items": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "properties": {"product": {"type": "string"}, "quantity": {"type": "integer", "minimum": 1}},
                    "required": ["product", "quantity"],
                    "additionalProperties": False,
                },
            },
        },
        "required": ["items"],
        "additionalProperties": False,
    },
    "sentiment (enums)": {
        "type": "object",
        "properties": {
            "sentiment": {"type": "string", "enum": ["positive", "neutral", "negative"]},
            "confidence": {"type": "number"},
            "language": {"enum": ["en", "de", "fr"]},
        },
        "required": ["sentiment", "confidence", "language"],
        "additionalProperties": False,
    },
    "tags (arrays, booleans, null)": {
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"type": "string"}},
            "scores": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
            "done": {"type": "boolean"},
            "note": {"type": ["string", "null"]},
        },
        "required": ["tags", "scores", "done", "note"],
        "additionalProperties": False,
    },
    "json_object": {"type": "object"},
}
PROMPT = "Describe a customer who just bought two books, as the requested JSON."


def run(model: str, runs: int, max_tokens: int) -> list[dict]:
    import jsonschema

    import mlx_harmony_tui.harmony.constraint as hc
    from mlx_harmony_tui.backends.local import LocalBackend
    from mlx_harmony_tui.chat.events import Delta, Metrics
    from mlx_harmony_tui.chat.settings import ChatSettings
    from mlx_harmony_tui.chat.turn import TurnContext, run_turn
    from mlx_harmony_tui.harmony.messages import HMessage
    from mlx_harmony_tui.harmony.render import ResponseFormat

    backend = LocalBackend.load(model)
    ctx = TurnContext(engine=backend.engine, encoding=backend.encoding, context_limit=backend.context_limit)
    rows = []
    host = {"s": 0.0, "n": 0}  # the constraint's own time (mask + accept), measured around its two calls
    orig_allowed, orig_accept = hc.HarmonyJsonConstraint.allowed, hc.HarmonyJsonConstraint.accept

    def timed_allowed(self):  # type: ignore[no-untyped-def]
        t = time.perf_counter()
        try:
            return orig_allowed(self)
        finally:
            host["s"] += time.perf_counter() - t

    def timed_accept(self, token):  # type: ignore[no-untyped-def]
        t = time.perf_counter()
        try:
            return orig_accept(self, token)
        finally:
            host["s"] += time.perf_counter() - t
            host["n"] += 1

    hc.HarmonyJsonConstraint.allowed, hc.HarmonyJsonConstraint.accept = timed_allowed, timed_accept

    def turn(rf: ResponseFormat | None, seed: int) -> tuple[str, Metrics | None, str]:
        settings = ChatSettings(max_tokens=max_tokens, seed=seed, conversation_date="2025-01-01",
                                builtin_tools=[], response_format=rf, max_retries=0)
        final, metrics, finish = "", None, "?"
        for ev in run_turn(ctx, [HMessage(role="user", text=PROMPT)], settings):
            if isinstance(ev, Delta) and ev.channel == "final" and ev.recipient is None:
                final += ev.text
            elif isinstance(ev, Metrics) and ev.final:
                metrics = ev
            elif type(ev).__name__ in ("TurnFinished", "TurnFailed"):
                finish = getattr(ev, "reason", None) or "failed"
        return final, metrics, finish

    for name, schema in SCHEMAS.items():
        valid, constrained_ms, free_ms, tokens, ratios = 0, [], [], [], []
        host["s"], host["n"] = 0.0, 0
        for seed in range(runs):
            # Free and constrained alternate, so a change in the machine's load hits both alike.
            _, m2, _ = turn(None, seed)
            if m2 and m2.decode_tps:
                free_ms.append(1000 / m2.decode_tps)
            text, m, finish = turn(ResponseFormat("answer", schema), seed)
            try:
                jsonschema.validate(json.loads(text), schema)
                valid += 1
            except (ValueError, jsonschema.ValidationError) as e:
                print(f"  invalid ({finish}): {text[:120]!r}: {str(e)[:120]}", file=sys.stderr)
            if m and m.decode_tps:
                constrained_ms.append(1000 / m.decode_tps)
                tokens.append(m.generated_tokens)
                if m2 and m2.decode_tps:
                    ratios.append(m2.decode_tps / m.decode_tps)  # constrained ms / free ms, this pair
        c, f = statistics.median(constrained_ms), statistics.median(free_ms)
        rows.append({"model": model, "schema": name, "valid": valid, "runs": runs,
                     "tokens": statistics.median(tokens), "ms_constrained": c, "ms_free": f,
                     "overhead_pct": 100 * (statistics.median(ratios) - 1),
                     "host_ms": 1000 * host["s"] / max(1, host["n"])})
        print(json.dumps(rows[-1]), file=sys.stderr)
    backend.close()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", default=[], help="tiny, demo or a model folder (repeatable)")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--max-tokens", type=int, default=512)
    args = ap.parse_args()
    t0 = time.time()
    rows = [r for m in args.model or ["tiny"] for r in run(m, args.runs, args.max_tokens)]
    print("| model | schema | valid | median tokens | ms/token free | ms/token constrained | overhead (median "
          "of pairs) | constraint's own ms/token | its share of free ms/token |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['schema']} | {r['valid']}/{r['runs']} | {r['tokens']:.0f} | {r['ms_free']:.2f} "
              f"| {r['ms_constrained']:.2f} | {r['overhead_pct']:+.1f}% | {r['host_ms']:.3f} "
              f"| {100 * r['host_ms'] / r['ms_free']:.1f}% |")
    print(f"\nload average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"\n({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()

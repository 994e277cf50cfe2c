"""Evaluate the demo model through the app's real pipeline (chat.turn.run_turn: render -> engine -> Harmony
stream parser -> real python tool -> generate again), on held-out dialogues made with another seed.

Measures (greedy unless ``--temperature``): share of replies that are valid Harmony (an analysis and a final message, no retry, no parser
recovery, no failure); share of arithmetic requests answered through a python call whose real result ends up
in the final answer; decode tok/s; load time. Greedy decoding, no retries (``max_retries=0``).

Run: ``python -m training.evaluate --seed 1 --n 200 --report docs/demo-model.md``
"""

from __future__ import annotations

import argparse
import platform
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlx_harmony_tui.chat.settings import ChatSettings
from mlx_harmony_tui.engine.sampling import SamplingParams
from mlx_harmony_tui.harmony.messages import HMessage
from training.datagen import Dialogue, make_dialogues
from training.heldout import HONEST_MARK, load_engine, run_messages


@dataclass
class Outcome:
    kind: str
    valid: bool
    arith_ok: bool | None  # None: not an arithmetic-with-python request
    problems: list[str] = field(default_factory=list)
    decode_tps: list[float] = field(default_factory=list)
    final: str = ""


def request_of(d: Dialogue) -> list[HMessage]:
    """The conversation up to (and including) the last user message: what the app sends for the new turn."""
    last_user = max(i for i, m in enumerate(d.messages) if m.role == "user")
    return d.messages[: last_user + 1]


def settings_of(d: Dialogue, max_tokens: int, temperature: float = 0.0, seed: int = 0) -> ChatSettings:
    return ChatSettings(
        sampling=SamplingParams(temperature=temperature),
        seed=seed if temperature > 0 else None,
        max_tokens=max_tokens,
        reasoning_effort=d.effort,  # type: ignore[arg-type]
        conversation_date=d.date,
        builtin_tools=["python"] if d.python_tool else [],
        max_retries=0,
    )


def run_one(engine: Any, encoding: Any, d: Dialogue, max_tokens: int = 256, temperature: float = 0.0) -> Outcome:
    t = run_messages(engine, encoding, request_of(d), settings_of(d, max_tokens, temperature))
    out = Outcome(kind=d.kind, valid=False, arith_ok=None, problems=list(t.problems), decode_tps=t.decode_tps,
                  final=t.final)
    if "analysis" not in t.channels:
        out.problems.append("no analysis")
    if "final" not in t.channels:
        out.problems.append("no final")
    out.valid = not out.problems
    if d.kind.endswith("arith") and d.python_tool:
        ok_call = bool(t.calls) and t.calls[0].recipient == "python" and bool(t.results) and not t.results[0].error
        expected = d.answer or ""
        out.arith_ok = ok_call and expected in out.final and expected in t.results[0].output
        if not out.arith_ok:
            out.problems.append(f"arith: expected {expected}, final {out.final[:50]!r}")
    if d.kind.endswith("offtopic") and (t.calls or HONEST_MARK not in t.final):
        out.problems.append(f"offtopic: final {out.final[:50]!r}")
    return out


def evaluate(model_path: Path, seed: int, n: int, n_arith: int, temperature: float = 0.0) -> dict[str, Any]:
    engine, encoding, load_s = load_engine(model_path)

    held = make_dialogues(seed, n)
    extra = [d for d in make_dialogues(seed + 1000, 20 * n_arith) if d.kind.endswith("arith") and d.python_tool]
    arith_only = extra[:n_arith]
    outcomes = [run_one(engine, encoding, d, temperature=temperature) for d in held]
    extra_outcomes = [run_one(engine, encoding, d, temperature=temperature) for d in arith_only]
    arith_outcomes = [o for o in outcomes if o.arith_ok is not None] + extra_outcomes
    tps = [t for o in outcomes for t in o.decode_tps]
    problems = Counter(p.split(":")[0] for o in outcomes + extra_outcomes for p in o.problems)
    return {
        "model": str(model_path),
        "load_s": load_s,
        "n": len(outcomes),
        "valid": sum(o.valid for o in outcomes),
        "by_kind": Counter(o.kind for o in outcomes),
        "valid_by_kind": Counter(o.kind for o in outcomes if o.valid),
        "n_arith": len(arith_outcomes),
        "arith_ok": sum(bool(o.arith_ok) for o in arith_outcomes),
        "decode_tps_median": statistics.median(tps) if tps else 0.0,
        "decode_tps_min": min(tps) if tps else 0.0,
        "problems": problems.most_common(8),
        "failures": [o.problems for o in outcomes + extra_outcomes if o.problems][:6],
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores, MLX CPU",
    }


def render_report(r: dict[str, Any], command: str) -> str:
    pct = lambda a, b: f"{100.0 * a / max(b, 1):.1f}%"  # noqa: E731
    lines = [
        "## Measured (training/evaluate.py)",
        "",
        f"Command: `{command}` on {r['machine']} (shared with other work while it ran).",
        "",
        "| measure | result | target |",
        "|---|---|---|",
        f"| valid Harmony replies (analysis + final, no retry, no recovery) | {r['valid']}/{r['n']} = "
        f"{pct(r['valid'], r['n'])} | >= 95% |",
        f"| arithmetic via python tool with the correct final answer | {r['arith_ok']}/{r['n_arith']} = "
        f"{pct(r['arith_ok'], r['n_arith'])} | >= 80% |",
        f"| decode tok/s (median / min over replies) | {r['decode_tps_median']:.1f} / {r['decode_tps_min']:.1f} "
        "| >= 30 |",
        f"| load time (load_model, incl. vocab expansion) | {r['load_s']:.2f} s | < 3 s |",
        "",
        "Valid by kind: " + ", ".join(f"{k} {r['valid_by_kind'][k]}/{v}" for k, v in sorted(r["by_kind"].items())),
        "",
        "Problems (all prompts): " + (", ".join(f"{p} x{c}" for p, c in r["problems"]) or "none"),
        "",
        *(f"- {'; '.join(f)}" for f in r["failures"]),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    import sys

    from mlx_harmony_tui.demo import demo_model_path

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", type=Path, default=demo_model_path())
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--arith", type=int, default=50, help="extra arithmetic-only held-out requests")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (the targets); 1 = app default")
    p.add_argument("--report", type=Path, help="markdown file whose '## Measured' section is replaced")
    a = p.parse_args(argv)
    r = evaluate(a.model, a.seed, a.n, a.arith, a.temperature)
    text = render_report(r, "python -m training.evaluate " + " ".join(sys.argv[1:] if argv is None else argv))
    print(text)
    if a.report:
        old = a.report.read_text() if a.report.exists() else ""
        head = old.split("## Measured")[0].rstrip() + "\n\n" if old else ""
        a.report.write_text(head + text)


if __name__ == "__main__":
    main()

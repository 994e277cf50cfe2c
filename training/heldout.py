"""Evaluate the demo model on the hand-written held-out set (training/heldout.jsonl), through the app's real
pipeline: chat.turn.run_turn renders the prompt, the engine generates, the Harmony parser reads it, and the real
python tool runs the code the model wrote.

The held-out prompts were typed by hand, as a newcomer would, *without* looking at the generator's templates,
and nothing in training/ reads that file. Measured: arithmetic answered through python with the right number
(within the answer's rounding), operands copied digit for digit into the code, off-topic requests answered
with the honest line and no invented arithmetic, short chat prompts, and valid Harmony at the given
temperature.

Run: ``python -m training.heldout`` (greedy) and ``python -m training.heldout --temperature shipped``.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlx_harmony_tui.chat.events import (
    MessageDone,
    Metrics,
    Recovery,
    Retry,
    ToolCall,
    ToolResult,
    TurnFailed,
)
from mlx_harmony_tui.chat.settings import ChatSettings
from mlx_harmony_tui.engine.sampling import SamplingParams
from mlx_harmony_tui.harmony.messages import HMessage

HELDOUT = Path(__file__).with_name("heldout.jsonl")
HONEST_MARK = "tiny built-in demo"
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


@dataclass
class Trace:
    """What one turn did, as the app's events report it."""

    channels: list[str] = field(default_factory=list)
    calls: list[ToolCall] = field(default_factory=list)
    results: list[ToolResult] = field(default_factory=list)
    final: str = ""
    problems: list[str] = field(default_factory=list)
    decode_tps: list[float] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        """Valid Harmony: an analysis and a final, no retry, no parser recovery, no failure."""
        return not self.problems and "analysis" in self.channels and "final" in self.channels


def run_messages(engine: Any, encoding: Any, messages: list[HMessage], settings: ChatSettings) -> Trace:
    """One turn through chat.turn.run_turn with the real tool registry (python sandbox, confirmation on)."""
    from mlx_harmony_tui.chat.turn import TurnContext, run_turn
    from mlx_harmony_tui.tools.registry import ToolRegistry

    tools = ToolRegistry.from_settings(settings)
    ctx = TurnContext(
        engine=engine, encoding=encoding, context_limit=4096, tools=tools, confirm=lambda _r: True
    )
    t = Trace()
    try:
        for ev in run_turn(ctx, messages, settings):
            if isinstance(ev, MessageDone):
                t.channels.append(ev.channel)
                if ev.channel == "final":
                    t.final = ev.text
            elif isinstance(ev, ToolCall):
                t.calls.append(ev)
            elif isinstance(ev, ToolResult):
                t.results.append(ev)
            elif isinstance(ev, Recovery):
                t.problems.append(f"recovery:{ev.kind}")
            elif isinstance(ev, Retry):
                t.problems.append(f"retry:{ev.reason}")
            elif isinstance(ev, TurnFailed):
                t.problems.append(f"failed:{ev.error[:60]}")
            elif isinstance(ev, Metrics) and ev.final and ev.decode_tps:
                t.decode_tps.append(ev.decode_tps)
    finally:
        tools.close()
    return t


def literals(code: str) -> list[str] | None:
    """The number literals of python code as written (sign dropped), leaving out round()'s digits argument;
    None when the code does not parse."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return None
    skip = {
        id(n.args[1])
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "round" and len(n.args) == 2
    }
    return sorted(
        ast.get_source_segment(code, n) or ""
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, int | float) and id(n) not in skip
    )


def close_enough(text: str, expected: float) -> bool:
    """The last number of the final answer equals ``expected`` up to rounding to 4 decimals."""
    nums = NUMBER.findall(text.replace(",", ""))
    return bool(nums) and abs(float(nums[-1]) - expected) <= 5.01e-5 + 1e-12 * abs(expected)


@dataclass
class Score:
    kind: str
    prompt: str
    valid: bool
    ok: bool
    copied: bool | None = None  # arithmetic with a python call: operands digit-exact
    note: str = ""


def score(item: dict[str, Any], t: Trace) -> Score:
    kind, prompt, final = item["kind"], item["prompt"], t.final
    s = Score(kind, prompt, t.valid, False)
    if kind == "arith":
        code = t.calls[0].arguments if t.calls else ""
        if t.calls:
            s.copied = literals(code) == literals(item["expr"])
        ran = bool(t.results) and not t.results[0].error
        s.ok = ran and close_enough(final, float(item["answer"]))
        s.note = f"code {code!r} final {final[:60]!r}"
    elif kind == "offtopic":
        invented = (
            bool(t.calls) or "=" in final or bool(set(NUMBER.findall(final)) - set(NUMBER.findall(prompt)))
        )
        s.ok = not invented and HONEST_MARK in final
        s.note = ("invented arithmetic: " if invented else "") + f"final {final[:70]!r}"
    else:
        s.ok = item["expect"] in final
        s.note = f"final {final[:70]!r}"
    if t.problems:
        s.note += " " + ",".join(sorted(set(t.problems)))
    return s


def load_engine(model_path: Path) -> tuple[Any, Any, float]:
    """(engine, encoding, seconds load_model took) for a model on the CPU, as the app loads it."""
    import mlx.core as mx

    from mlx_harmony_tui.engine.generator import Engine
    from mlx_harmony_tui.harmony.vocab import load_encoding
    from mlx_harmony_tui.model.load import load_model

    encoding = load_encoding()
    mx.set_default_device(mx.cpu)
    t0 = time.perf_counter()
    model, config = load_model(model_path)
    load_s = time.perf_counter() - t0
    return Engine(model, config, model_id="demo"), encoding, load_s


def evaluate(model_path: Path, temperature: float, seed: int, effort: str, limit: int = 0) -> dict[str, Any]:
    engine, encoding, load_s = load_engine(model_path)
    items = [json.loads(line) for line in HELDOUT.read_text().splitlines() if line.strip()]
    items = items[:: max(1, len(items) // limit)][:limit] if limit else items
    scores, tps = [], []
    for k, item in enumerate(items):
        settings = ChatSettings(
            sampling=SamplingParams(temperature=temperature),
            seed=seed + k if temperature else None,
            max_tokens=256,
            reasoning_effort=effort,
            max_retries=0,
        )  # type: ignore[arg-type]
        t = run_messages(engine, encoding, [HMessage(role="user", text=item["prompt"])], settings)
        scores.append(score(item, t))
        tps += t.decode_tps
    return {"scores": scores, "load_s": load_s, "tps": tps}


def report(r: dict[str, Any], command: str) -> str:
    sc: list[Score] = r["scores"]
    by = {k: [s for s in sc if s.kind == k] for k in ("arith", "offtopic", "chat")}
    calls = [s for s in by["arith"] if s.copied is not None]
    invented = [s for s in by["offtopic"] if s.note.startswith("invented")]
    pct = lambda a, b: f"{a}/{b} = {100.0 * a / max(b, 1):.1f}%"  # noqa: E731
    lines = [
        f"`{command}`",
        "",
        "| measure | result | target |",
        "|---|---|---|",
        f"| arithmetic: correct final answer through the python tool | {pct(sum(s.ok for s in by['arith']), len(by['arith']))} | >= 90% |",
        f"| arithmetic: operands copied digit-exactly into the call | {pct(sum(bool(s.copied) for s in calls), len(calls))} | >= 98% |",
        f"| off-topic: honest line, no invented arithmetic | {pct(sum(s.ok for s in by['offtopic']), len(by['offtopic']))}; invented: {len(invented)} | 0 invented |",
        f"| chat prompts (greeting, app, lists) | {pct(sum(s.ok for s in by['chat']), len(by['chat']))} | |",
        f"| valid Harmony (analysis + final, no retry/recovery) | {pct(sum(s.valid for s in sc), len(sc))} | >= 95% |",
        f"| decode tok/s (median / min over replies) | {statistics.median(r['tps']):.1f} / {min(r['tps']):.1f} | >= 30 |",
        f"| load time | {r['load_s']:.2f} s | < 0.5 s |",
        "",
        "Misses:",
        "",
        *[f"- {s.kind}: {s.prompt!r} -> {s.note}" for s in sc if not s.ok or s.copied is False][:30],
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    import sys

    from mlx_harmony_tui.config import read_model_defaults
    from mlx_harmony_tui.demo import demo_model_path

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", type=Path, default=demo_model_path())
    p.add_argument(
        "--temperature", default="0", help="a number, or 'shipped' (the model's generation_config)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--effort", default="medium", choices=["low", "medium", "high"])
    p.add_argument("--limit", type=int, default=0, help="evaluate only this many items (spread over the set)")
    a = p.parse_args(argv)
    temp = (
        float(read_model_defaults(a.model).get("temperature", 1.0))
        if a.temperature == "shipped"
        else float(a.temperature)
    )
    r = evaluate(a.model, temp, a.seed, a.effort, a.limit)
    print(report(r, "python -m training.heldout " + " ".join(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    main()

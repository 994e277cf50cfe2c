"""How far back each generation of a real chat goes into the cached tokens (what the sliding layers' rollback
margin has to cover), with the demo model through the real turn pipeline: a multi-turn chat, then a
regenerate and an edit of the last message.

For every generation: cached tokens before it, the common prefix with its prompt, the distance back
(cached - kept), whether the margin covered it (a trim) or a checkpoint served it, and the tokens
prefilled again.

    python scripts/rollback_distances.py --turns 6
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from mlx_harmony_tui.chat.events import MessageDone
from mlx_harmony_tui.chat.settings import ChatSettings
from mlx_harmony_tui.chat.turn import TurnContext, run_turn
from mlx_harmony_tui.demo import demo_model_path
from mlx_harmony_tui.engine.generator import Engine
from mlx_harmony_tui.engine.sampling import SamplingParams
from mlx_harmony_tui.harmony.messages import HMessage
from mlx_harmony_tui.harmony.vocab import load_encoding
from mlx_harmony_tui.model import load_model
from mlx_harmony_tui.model.cache import DEFAULT_MARGIN

QUESTIONS = [
    "hello",
    "What is 37 times 12?",
    "Tell me a short story about a fox.",
    "Why is the sky blue?",
    "List three fruits.",
    "Thanks! Anything else?",
    "Explain recursion briefly.",
    "Goodbye.",
]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--turns", type=int, default=6)
    ap.add_argument("--max-tokens", type=int, default=400)
    ap.add_argument(
        "--document",
        action="store_true",
        help="paste the README into the first message (a long "
        "context: the sliding layers have dropped positions, so the margin and checkpoints matter)",
    )
    a = ap.parse_args()
    path = demo_model_path()
    model, config = load_model(path)
    engine = Engine(model, config)
    pc = engine.prompt_cache
    rows: list[dict[str, Any]] = []
    prepare = pc.prepare

    def recording(prompt: list[int]) -> int:
        cached = len(pc.tokens)
        common = pc.reusable(prompt)
        trim_ok = all(c.max_trim >= cached - common for c in pc.caches)
        kept = prepare(prompt)
        rows.append(
            {
                "cached": cached,
                "prompt": len(prompt),
                "common": common,
                "back": cached - common,
                "by": "trim" if trim_ok else "checkpoint" if kept else "restart",
                "reprefilled": pc.rebuilt,
            }
        )
        return kept

    pc.prepare = recording  # type: ignore[method-assign]
    settings = ChatSettings(
        sampling=SamplingParams(temperature=0.7),
        max_tokens=a.max_tokens,
        seed=1,
        conversation_date="2026-12-03",
    )
    ctx = TurnContext(engine=engine, encoding=load_encoding(str(path)), context_limit=8192)
    history: list[HMessage] = []

    def turn(label: str, messages: list[HMessage]) -> list[HMessage]:
        start = len(rows)
        new = [
            HMessage(
                role="assistant",
                text=e.text,
                channel=e.channel,
                recipient=e.recipient,
                content_type=e.content_type,
            )
            for e in run_turn(ctx, messages, settings)
            if isinstance(e, MessageDone)
        ]
        for r in rows[start:]:
            r["step"] = label
        return new

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for i in range(a.turns):
        text = QUESTIONS[i % len(QUESTIONS)]
        if i == 0 and a.document:
            text = readme + "\n\n" + text
        history = history + [HMessage(role="user", text=text)]
        history = history + turn(f"turn {i + 1}", history)
    user_at = max(i for i, m in enumerate(history) if m.role == "user")
    turn("regenerate", history[: user_at + 1])
    turn("edit last", history[:user_at] + [HMessage(role="user", text="Say it in one word.")])
    print(f"margin {DEFAULT_MARGIN}")
    for r in rows:
        print("  ".join(f"{k}={v}" for k, v in r.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

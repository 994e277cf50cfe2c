"""Synthetic Harmony conversations for the built-in demo model, reproducible from a seed.

Each dialogue is a list of ``HMessage`` plus the chat settings it was held under. It is cut into
*generation steps*: the prompt the app would render at that point (system message with date, knowledge cutoff,
reasoning effort and, when enabled, the python tool) and the tokens the model must write next (analysis, then
either a python call ending in ``<|call|>`` or a final message ending in ``<|return|>``). Training on steps
rendered the way the app renders them is what lets a tiny model behave at inference exactly as in training.

Run: ``python -m training.datagen --seed 0 --n 4000 --out /tmp/demo_train.npz``
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlx_harmony_tui.harmony.messages import HMessage
from training import arith
from training import content as C

EFFORTS = ("low", "medium", "high")
CUTOFFS = ("2024-06",)


@dataclass
class Dialogue:
    """One conversation: settings + messages. ``answer`` is the expected number for arithmetic checks."""

    effort: str
    date: str
    python_tool: bool
    messages: list[HMessage] = field(default_factory=list)
    kind: str = "chat"
    answer: str | None = None
    stock_tool_text: bool = False


@dataclass
class Step:
    """One generation: what the app feeds the model and what the model must write (loss on completion only)."""

    prompt: list[int]
    completion: list[int]
    kind: str


# --------------------------------------------------------------------------- rendering


def _system_content(d: Dialogue) -> Any:
    import openai_harmony as oh

    sc = (
        oh.SystemContent.new()
        .with_reasoning_effort(oh.ReasoningEffort(d.effort.capitalize()))
        .with_conversation_start_date(d.date)
        .with_knowledge_cutoff(CUTOFFS[0])
    )
    if d.python_tool:
        sc = sc.with_python_tool()
    return sc


def _to_oh(m: HMessage) -> Any:
    import openai_harmony as oh

    if m.role == "tool":
        msg = oh.Message.from_author_and_content(oh.Author.new(oh.Role.TOOL, m.author or "python"), m.text)
    else:
        msg = oh.Message.from_role_and_content(oh.Role(m.role), m.text)
    if m.channel:
        msg = msg.with_channel(m.channel)
    if m.recipient:
        msg = msg.with_recipient(m.recipient)
    if m.content_type:
        msg = msg.with_content_type(m.content_type)
    return msg


def _fallback_render(d: Dialogue, history: Sequence[HMessage], encoding: Any) -> list[int]:
    """Until harmony/render.py lands: the same system message the app builds, via openai-harmony."""
    import openai_harmony as oh

    msgs = [oh.Message.from_role_and_content(oh.Role.SYSTEM, _system_content(d))]
    msgs += [_to_oh(m) for m in history]
    conv = oh.Conversation.from_messages(msgs)
    return list(encoding.render_conversation_for_completion(conv, oh.Role.ASSISTANT))


def _app_python_namespace() -> Any:
    """The python tool description the app puts in the system message (tools layer, default config)."""
    from mlx_harmony_tui.tools.python import PythonToolConfig
    from mlx_harmony_tui.tools.registry import ToolRegistry

    reg = ToolRegistry(python=PythonToolConfig())
    try:
        return next(ns for ns in reg.builtin_namespaces() if ns.name == "python")
    finally:
        reg.close()


def make_renderer(encoding: Any) -> Callable[[Dialogue, Sequence[HMessage]], list[int]]:
    """The app's own renderer (harmony/render.py, options as chat/turn.py builds them with the tool registry),
    so training prompts equal inference prompts token for token. Dialogues marked ``stock_tool_text`` use
    openai-harmony's stock python description instead, for robustness to tool configs."""
    try:
        from mlx_harmony_tui.harmony import render as hr
    except ImportError:
        return lambda d, h: _fallback_render(d, h, encoding)
    app_ns = _app_python_namespace()

    def render(d: Dialogue, history: Sequence[HMessage]) -> list[int]:
        opts = hr.RenderOptions(
            reasoning_effort=d.effort,  # type: ignore[arg-type]
            knowledge_cutoff=CUTOFFS[0],
            conversation_date=d.date,
            builtin_tools=["python"] if d.python_tool else [],
            tool_namespaces={} if d.stock_tool_text else {"python": app_ns},
        )
        return list(hr.render_prompt(list(history), opts, encoding))

    return render


def completion_tokens(msgs: Sequence[HMessage], encoding: Any) -> list[int]:
    """Tokens the model writes after ``<|start|>assistant``: its messages, the last ending in return/call."""
    start = encoding.encode("<|start|>", allowed_special="all")[0]
    head = encoding.encode("<|start|>assistant", allowed_special="all")
    end, ret = (encoding.encode(t, allowed_special="all")[0] for t in ("<|end|>", "<|return|>"))
    out: list[int] = []
    for m in msgs:
        toks = list(encoding.render(_to_oh(m)))
        assert toks[0] == start
        out += toks
    assert out[: len(head)] == head, "assistant header must tokenize as in the prompt"
    out = out[len(head) :]
    if out[-1] == end:
        out[-1] = ret
    return out


def steps_of(d: Dialogue, encoding: Any, render: Callable[[Dialogue, Sequence[HMessage]], list[int]]) -> list[Step]:
    """Cut a dialogue into generation steps. Earlier turns keep only their final (analysis dropped), as the
    app does; within the current turn the analysis stays while a tool call is in flight."""
    steps: list[Step] = []
    msgs = d.messages
    i = 0
    history: list[HMessage] = []
    while i < len(msgs):
        m = msgs[i]
        if m.role != "assistant":
            history.append(m)
            i += 1
            continue
        j = i
        while j < len(msgs) and msgs[j].role == "assistant":
            j += 1
        gen = msgs[i:j]
        steps.append(Step(render(d, history), completion_tokens(gen, encoding), d.kind))
        history += gen
        i = j
        if gen[-1].channel == "final":
            # completed turn: the app drops its analysis from later prompts (tool calls and results stay)
            start = max(k for k, h in enumerate(history) if h.role == "user")
            history = history[: start + 1] + [h for h in history[start + 1 :] if h.channel != "analysis"]
    return steps


# --------------------------------------------------------------------------- dialogues

def _date(rng: random.Random) -> str:
    return (dt.date(2025, 1, 1) + dt.timedelta(days=rng.randrange(0, 1500))).isoformat()


def _think(rng: random.Random, effort: str, base: str, extra: str) -> str:
    """Analysis length follows the reasoning effort, so the setting visibly changes the thinking."""
    if effort == "low":
        return base
    if effort == "medium":
        return f"{base} {extra}"
    return f"{base} {extra} Let me double-check that this answers the request. Yes, it does."


def _a(text: str, channel: str, recipient: str | None = None) -> HMessage:
    return HMessage(role="assistant", text=text, channel=channel, recipient=recipient)


def _user(text: str) -> HMessage:
    return HMessage(role="user", text=text)


def _chat_turn(rng: random.Random, effort: str) -> tuple[list[HMessage], str]:
    kind = rng.choices(["greet", "app", "list", "offtopic"], weights=[8, 13, 8, 21])[0]
    if kind == "greet":
        return [_user(rng.choice(C.GREETINGS)),
                _a(_think(rng, effort, "The user greets me. I should greet back and offer help.",
                          "I am the demo model, so I mention what I can do."), "analysis"),
                _a(rng.choice(C.GREET_FINAL), "final")], "greet"
    if kind == "app":
        qs, think, ans = rng.choice(C.APP_QA)
        return [_user(rng.choice(qs)), _a(_think(rng, effort, think, "A short, clear answer is best."), "analysis"),
                _a(ans, "final")], "app"
    if kind == "offtopic":
        return [_user(C.off_topic(rng)),
                _a(_think(rng, effort, C.HONEST_THINK, "I only know a few demo skills."), "analysis"),
                _a(C.HONEST, "final")], "offtopic"
    what = rng.choice(list(C.LISTS))
    items = C.LISTS[what]
    n = rng.randint(2, 5)
    nword = C.NUMWORDS[n] if rng.random() < 0.5 else str(n)
    q = rng.choice(C.LIST_TEMPLATES).format(n=nword, what=what)
    start = rng.randrange(0, len(items) - n + 1)
    chosen = items[start : start + n]
    think = _think(rng, effort, f"The user wants {n} {what}. I will pick {', '.join(chosen)}.",
                   "A bulleted list fits.")
    return [_user(q), _a(think, "analysis"), _a("\n".join(f"- {x}" for x in chosen), "final")], "list"


def _arith_turn(rng: random.Random, effort: str, tool: bool) -> tuple[list[HMessage], str, str]:
    """Arithmetic goes through python: analysis, call (operands copied as typed), tool result, analysis, and a
    final that quotes the result."""
    p = arith.conversion(rng) if rng.random() < 0.1 else arith.problem(rng)
    if not tool:
        return [_user(p.question),
                _a(_think(rng, effort, "The user asks for a calculation, but the python tool is not enabled.",
                          "I am too small to compute reliably without it."), "analysis"),
                _a("I'm a tiny demo model and can't calculate reliably without the python tool. Enable the python "
                   "tool and ask again.", "final")], "arith_notool", p.answer()
    result = p.result()
    if p.units:
        goal = f"{p.display} {p.units[0]} in {p.units[1]}"
        extra = "Rounding to two decimals is enough."
    else:
        goal = p.display
        extra = "Python gives an exact answer." if "round(" not in p.code else "I'll round to 4 decimals."
    think1 = _think(rng, effort, f"The user wants {goal}. I'll compute it with python.", extra)
    think2 = f"Python printed {result}, so the answer is {p.answer()}."
    msgs = [
        _user(p.question),
        _a(think1, "analysis"),
        _a(p.code, "commentary", "python"),
        HMessage(role="tool", text=result + "\n", channel="commentary", recipient="assistant", author="python"),
        _a(think2, "analysis"),
        _a(arith.final_text(rng, p), "final"),
    ]
    return msgs, "arith", p.answer()


def make_dialogue(rng: random.Random) -> Dialogue:
    """One random dialogue: 1 turn mostly, sometimes 2-3 turns (earlier analysis dropped at render time)."""
    d = Dialogue(effort=rng.choice(EFFORTS), date=_date(rng), python_tool=rng.random() < 0.85,
                 stock_tool_text=rng.random() < 0.15)
    n_turns = 1 if rng.random() < 0.75 else rng.randint(2, 3)
    for t in range(n_turns):
        if rng.random() < 0.5:
            msgs, kind, ans = _arith_turn(rng, d.effort, d.python_tool)
        else:
            (msgs, kind), ans = _chat_turn(rng, d.effort), None
        d.messages += msgs
        if t == n_turns - 1:
            d.kind, d.answer = kind, ans
    if n_turns > 1:
        d.kind = "multi_" + d.kind
    return d


CHUNK = 500  # dialogues per independently seeded chunk: the data is the same for any number of workers


def _chunk(seed: int, index: int, n: int) -> list[Dialogue]:
    rng = random.Random(seed * 1_000_003 + index)
    return [make_dialogue(rng) for _ in range(n)]


def make_dialogues(seed: int, n: int) -> list[Dialogue]:
    out: list[Dialogue] = []
    for c in range((n + CHUNK - 1) // CHUNK):
        out += _chunk(seed, c, min(CHUNK, n - c * CHUNK))
    return out


def make_steps(seed: int, n: int, encoding: Any) -> list[Step]:
    render = make_renderer(encoding)
    out: list[Step] = []
    for d in make_dialogues(seed, n):
        out += steps_of(d, encoding, render)
    return out


def _chunk_steps(job: tuple[int, int, int]) -> list[Step]:
    """One chunk's steps, in a worker process (each loads the vocabulary once)."""
    from mlx_harmony_tui.harmony.vocab import load_encoding

    seed, index, n = job
    encoding = load_encoding()
    render = make_renderer(encoding)
    return [s for d in _chunk(seed, index, n) for s in steps_of(d, encoding, render)]


def make_steps_parallel(seed: int, n: int, workers: int) -> list[Step]:
    """``make_steps`` over worker processes (the same steps, in the same order)."""
    from multiprocessing import get_context

    jobs = [(seed, c, min(CHUNK, n - c * CHUNK)) for c in range((n + CHUNK - 1) // CHUNK)]
    with get_context("spawn").Pool(workers) as pool:
        return [s for part in pool.imap(_chunk_steps, jobs) for s in part]


def vocab_from(steps: Sequence[Step], encoding: Any, min_count: int = 4) -> list[int]:
    """The compact vocabulary: every token the assistant writes, prompt tokens seen at least ``min_count``
    times, all Harmony specials and the digit chunks 0-999 (so any number a user types is known). Rarer
    prompt words map to one extra unknown row (``save_npz``), which is what any unseen word maps to at
    inference, so the model learns to read past words it does not know."""
    from collections import Counter

    counts: Counter[int] = Counter()
    ids: set[int] = set()
    for s in steps:
        counts.update(s.prompt)
        ids.update(s.completion)
    ids.update(t for t, c in counts.items() if c >= min_count)
    for k in range(1000):
        for t in (str(k), f" {k}", f"{k:03d}"):
            ids.update(encoding.encode(t))
    ids.update(t for t in range(199998, 201088) if encoding.is_special_token(t))
    return sorted(ids)


def save_npz(steps: Sequence[Step], vocab_ids: Sequence[int], path: Path) -> None:
    """Flat arrays: tokens mapped to compact ids (tokens outside the vocabulary to the unknown row,
    ``len(vocab_ids)``), and a mask of completion positions."""
    import numpy as np

    unk = len(vocab_ids)
    remap = np.full(201088, unk, np.int64)
    remap[np.asarray(vocab_ids)] = np.arange(unk)
    flat = np.fromiter((t for s in steps for t in s.prompt + s.completion), np.int64)
    mask = np.fromiter((m for s in steps for m in [0] * len(s.prompt) + [1] * len(s.completion)), np.uint8)
    toks = remap[flat]
    assert not np.any((toks == unk) & (mask == 1)), "the assistant only writes vocabulary tokens"
    offsets = np.cumsum([0] + [len(s.prompt) + len(s.completion) for s in steps])
    dtype = np.uint16 if unk < 65535 else np.int32
    np.savez_compressed(path, tokens=toks.astype(dtype), mask=mask, offsets=offsets.astype(np.int64),
                        vocab_ids=np.array(vocab_ids, np.int32))


def main(argv: Sequence[str] | None = None) -> None:
    from mlx_harmony_tui.harmony.vocab import load_encoding

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=4000, help="dialogues")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--workers", type=int, default=1, help="processes (the data does not depend on it)")
    a = p.parse_args(argv)
    enc = load_encoding()
    steps = make_steps(a.seed, a.n, enc) if a.workers <= 1 else make_steps_parallel(a.seed, a.n, a.workers)
    vocab = vocab_from(steps, enc)
    save_npz(steps, vocab, a.out)
    n_tok = sum(len(s.prompt) + len(s.completion) for s in steps)
    print(f"{len(steps)} steps, {n_tok} tokens, {sum(len(s.completion) for s in steps)} trained, vocab {len(vocab)}")


if __name__ == "__main__":
    main()

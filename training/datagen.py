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


# --------------------------------------------------------------------------- content

GREETINGS = [
    "hi", "Hi!", "hello", "Hello!", "hey", "Hey there", "good morning", "Good evening!", "yo", "hi there",
    "Hello, who are you?", "hey, how are you?",
]
GREET_FINAL = [
    "Hello! I'm the small demo model built into mlx-harmony-tui. Ask me some arithmetic and watch me use the python tool.",
    "Hi! I'm a tiny demo model that runs right here on your CPU. Try asking me what 37 times 12 is.",
    "Hey! I'm the built-in demo model. I can chat a little, do arithmetic with the python tool, and explain this app.",
]
APP_QA: list[tuple[list[str], str, str]] = [
    (["What can you do?", "what can you do", "What are you able to do?", "Help"],
     "The user asks about my abilities. I am a tiny demo model, so I should be honest and list a few things.",
     "I'm a tiny demo model, so I can do only a few things: greet you, explain this app, list simple things, "
     "and do arithmetic or unit conversions with the python tool."),
    (["What is this app?", "what is mlx-harmony-tui?", "Tell me about this program", "What is this?"],
     "The user asks what this application is. I should describe mlx-harmony-tui briefly.",
     "mlx-harmony-tui is a terminal chat app for OpenAI's GPT-OSS models. It runs the model in-process with MLX "
     "and shows the model's thinking, tool calls and final answers as they stream."),
    (["Which model are you?", "What model is this?", "Are you gpt-oss?", "Who made you?"],
     "The user asks which model they are talking to. I am the built-in demo model, not the real gpt-oss.",
     "I'm the built-in demo model: a tiny network with the GPT-OSS architecture, trained only to show the app "
     "at work. Load a real model with --model PATH for real answers."),
    (["How do I quit?", "how do I exit", "How can I close the app?"],
     "The user wants to leave the app. Textual apps quit with ctrl+q.",
     "Press ctrl+q to quit the app."),
    (["How do I load a real model?", "How can I use gpt-oss-20b?", "How do I change the model?"],
     "The user wants a real model instead of me. They pass its folder on the command line.",
     "Start the app with mlx-harmony-tui --model PATH, where PATH is a folder with a GPT-OSS checkpoint such as "
     "gpt-oss-20b."),
    (["What is Harmony?", "what is the harmony format?", "Explain Harmony"],
     "The user asks about the Harmony format. I should explain channels briefly.",
     "Harmony is the chat format of GPT-OSS models. Each reply has an analysis channel for thinking, a commentary "
     "channel for tool calls, and a final channel for the answer."),
    (["What is the thinking panel?", "Why do I see your thoughts?", "What is the analysis?"],
     "The user asks about the thinking shown in the app. That is my analysis channel.",
     "That panel shows my analysis channel: the reasoning I write before the answer. It streams while I think and "
     "folds away when the final answer starts."),
    (["Can you use tools?", "Do you have tools?", "What is the python tool?"],
     "The user asks about tools. I can call python when it is enabled.",
     "Yes. When the python tool is enabled I send code to it, the app runs it and shows the call and its result "
     "in the log, and I use the output in my answer."),
    (["How do I open the command palette?", "Where are the commands?"],
     "The user asks about commands in the app. Textual has a command palette on ctrl+p.",
     "Press ctrl+p to open the command palette and search for a command."),
    (["thanks", "Thank you!", "thank you", "Thanks a lot"],
     "The user thanks me. I should reply politely.",
     "You're welcome! Ask me anything else."),
    (["bye", "Goodbye!", "see you"],
     "The user says goodbye.",
     "Goodbye! Press ctrl+q when you want to quit."),
]
LISTS: dict[str, list[str]] = {
    "colors": ["red", "green", "blue", "yellow", "purple", "orange"],
    "fruits": ["apple", "banana", "cherry", "mango", "pear", "grape"],
    "animals": ["cat", "dog", "horse", "rabbit", "fox", "owl"],
    "planets": ["Mercury", "Venus", "Earth", "Mars", "Jupiter", "Saturn"],
    "days of the week": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"],
}
NUMWORDS = {2: "two", 3: "three", 4: "four", 5: "five"}
LIST_TEMPLATES = ["List {n} {what}.", "Name {n} {what}", "Give me {n} {what} as a list", "list {n} {what} please"]
ARITH: dict[str, tuple[list[str], str, str]] = {
    # op: (user templates, python operator, word for the analysis)
    "mul": (["What is {a} times {b}?", "What is {a}*{b}?", "Compute {a} x {b}", "how much is {a} times {b}",
             "Multiply {a} by {b}", "{a}*{b}=?"], "*", "product"),
    "add": (["What is {a} plus {b}?", "What is {a}+{b}?", "Add {a} and {b}", "compute {a} + {b}",
             "What's the sum of {a} and {b}?"], "+", "sum"),
    "sub": (["What is {a} minus {b}?", "What is {a}-{b}?", "Subtract {b} from {a}", "compute {a} - {b}"], "-",
            "difference"),
    "div": (["What is {a} divided by {b}?", "What is {a}/{b}?", "Divide {a} by {b}", "compute {a} / {b}"], "//",
            "quotient"),
}
UNITS: list[tuple[str, str, str, float]] = [
    # (from, to, template, factor)
    ("km", "miles", "Convert {x} km to miles", 0.621371),
    ("miles", "km", "How many km is {x} miles?", 1.609344),
    ("kg", "pounds", "Convert {x} kg to pounds", 2.204623),
    ("pounds", "kg", "How many kg are {x} pounds?", 0.453592),
    ("inches", "cm", "Convert {x} inches to cm", 2.54),
    ("feet", "meters", "How many meters is {x} feet?", 0.3048),
]
CELSIUS = ["Convert {x} C to Fahrenheit", "What is {x} degrees Celsius in Fahrenheit?"]


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
    kind = rng.choice(["greet", "app", "app", "list"])
    if kind == "greet":
        return [_user(rng.choice(GREETINGS)),
                _a(_think(rng, effort, "The user greets me. I should greet back and offer help.",
                          "I am the demo model, so I mention what I can do."), "analysis"),
                _a(rng.choice(GREET_FINAL), "final")], "greet"
    if kind == "app":
        qs, think, ans = rng.choice(APP_QA)
        return [_user(rng.choice(qs)), _a(_think(rng, effort, think, "A short, clear answer is best."), "analysis"),
                _a(ans, "final")], "app"
    what = rng.choice(list(LISTS))
    items = LISTS[what]
    n = rng.randint(2, 5)
    nword = NUMWORDS[n] if rng.random() < 0.5 else str(n)
    q = rng.choice(LIST_TEMPLATES).format(n=nword, what=what)
    start = rng.randrange(0, len(items) - n + 1)
    chosen = items[start : start + n]
    think = _think(rng, effort, f"The user wants {n} {what}. I will pick {', '.join(chosen)}.",
                   "A bulleted list fits.")
    return [_user(q), _a(think, "analysis"), _a("\n".join(f"- {x}" for x in chosen), "final")], "list"


def _fmt_num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _arith_turn(rng: random.Random, effort: str, tool: bool) -> tuple[list[HMessage], str, str]:
    """Arithmetic goes through python: analysis, call, tool result, analysis, final that quotes the result."""
    if rng.random() < 0.75:
        op = rng.choice(list(ARITH))
        templates, sym, word = ARITH[op]
        if op == "mul":
            a, b = rng.randint(2, 99), rng.randint(2, 99)
        elif op == "div":
            b = rng.randint(2, 30)
            a = b * rng.randint(2, 60)
        else:
            a, b = rng.randint(1, 999), rng.randint(1, 999)
            if op == "sub" and b > a and rng.random() < 0.7:
                a, b = b, a
        q = rng.choice(templates).format(a=a, b=b)
        code = f"print({a}{sym}{b})"
        result = str(eval(f"{a}{sym}{b}"))  # noqa: S307 - our own generated integers
        think1 = _think(rng, effort, f"The user wants the {word} of {a} and {b}. I'll compute it with python.",
                        "Python gives an exact answer.")
        think2 = f"Python printed {result}, so the {word} is {result}."
        final = f"{a} {'x' if sym == '*' else '/' if sym == '//' else sym} {b} = {result}"
    else:
        if rng.random() < 0.2:
            x = rng.randint(-20, 45)
            q = rng.choice(CELSIUS).format(x=x)
            code = f"print(round({x}*9/5+32, 2))"
            result = str(round(x * 9 / 5 + 32, 2))
            unit_from, unit_to = "C", "F"
        else:
            unit_from, unit_to, tpl, factor = rng.choice(UNITS)
            x = rng.randint(1, 200)
            q = tpl.format(x=x)
            code = f"print(round({x}*{factor}, 2))"
            result = str(round(x * factor, 2))
        think1 = _think(rng, effort, f"The user wants {x} {unit_from} in {unit_to}. I'll compute it with python.",
                        "Rounding to two decimals is enough.")
        think2 = f"Python printed {result}, so {x} {unit_from} is {result} {unit_to}."
        final = f"{x} {unit_from} is about {result} {unit_to}."
    if not tool:
        return [_user(q),
                _a(_think(rng, effort, "The user asks for a calculation, but the python tool is not enabled.",
                          "I am too small to compute reliably without it."), "analysis"),
                _a("I'm a tiny demo model and can't calculate reliably without the python tool. Enable the python "
                   "tool and ask again.", "final")], "arith_notool", result
    msgs = [
        _user(q),
        _a(think1, "analysis"),
        _a(code, "commentary", "python"),
        HMessage(role="tool", text=result + "\n", channel="commentary", recipient="assistant", author="python"),
        _a(think2, "analysis"),
        _a(final, "final"),
    ]
    return msgs, "arith", result


def make_dialogue(rng: random.Random) -> Dialogue:
    """One random dialogue: 1 turn mostly, sometimes 2-3 turns (earlier analysis dropped at render time)."""
    d = Dialogue(effort=rng.choice(EFFORTS), date=_date(rng), python_tool=rng.random() < 0.8,
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


def make_dialogues(seed: int, n: int) -> list[Dialogue]:
    rng = random.Random(seed)
    return [make_dialogue(rng) for _ in range(n)]


def make_steps(seed: int, n: int, encoding: Any) -> list[Step]:
    render = make_renderer(encoding)
    out: list[Step] = []
    for d in make_dialogues(seed, n):
        out += steps_of(d, encoding, render)
    return out


def vocab_from(steps: Sequence[Step], encoding: Any) -> list[int]:
    """Every token id the data uses, plus all Harmony specials and the number tokens 0-999 (so held-out
    numbers never fall outside the compact vocabulary)."""
    ids: set[int] = set()
    for s in steps:
        ids.update(s.prompt)
        ids.update(s.completion)
    for k in range(1000):
        for t in (str(k), f" {k}", f"{k:03d}"):
            ids.update(encoding.encode(t))
    ids.update(t for t in range(199998, 201088) if encoding.is_special_token(t))
    return sorted(ids)


def save_npz(steps: Sequence[Step], vocab_ids: Sequence[int], path: Path) -> None:
    """Flat arrays: tokens mapped to compact ids, and a mask of completion positions."""
    import numpy as np

    remap = {t: i for i, t in enumerate(vocab_ids)}
    toks: list[int] = []
    mask: list[int] = []
    offsets = [0]
    for s in steps:
        toks += [remap[t] for t in s.prompt + s.completion]
        mask += [0] * len(s.prompt) + [1] * len(s.completion)
        offsets.append(len(toks))
    np.savez_compressed(path, tokens=np.array(toks, np.int32), mask=np.array(mask, np.uint8),
                        offsets=np.array(offsets, np.int64), vocab_ids=np.array(vocab_ids, np.int32))


def main(argv: Sequence[str] | None = None) -> None:
    from mlx_harmony_tui.harmony.vocab import load_encoding

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=4000, help="dialogues")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    enc = load_encoding()
    steps = make_steps(a.seed, a.n, enc)
    vocab = vocab_from(steps, enc)
    save_npz(steps, vocab, a.out)
    n_tok = sum(len(s.prompt) + len(s.completion) for s in steps)
    print(f"{len(steps)} steps, {n_tok} tokens, {sum(len(s.completion) for s in steps)} trained, vocab {len(vocab)}")


if __name__ == "__main__":
    main()

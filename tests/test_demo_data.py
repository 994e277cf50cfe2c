"""The demo's training data: reproducible, rendered exactly as the app renders prompts, loss only on what the
assistant writes, and arithmetic answers that the real python tool agrees with."""

from __future__ import annotations

import json
import random
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import openai_harmony as oh

import training
from training import arith
from training.content import HONEST
from training.datagen import make_dialogues, make_renderer, make_steps, save_npz, steps_of, vocab_from
from training.heldout import literals


def test_same_seed_same_data_other_seed_other_data(encoding) -> None:
    a = make_steps(3, 6, encoding)
    b = make_steps(3, 6, encoding)
    c = make_steps(4, 6, encoding)
    assert [(s.prompt, s.completion) for s in a] == [(s.prompt, s.completion) for s in b]
    assert [s.completion for s in a] != [s.completion for s in c]


def test_prompts_equal_the_apps_rendering(encoding) -> None:
    """The prompt of the last step is what chat/turn.py renders for that conversation with the tool registry."""
    from mlx_harmony_tui.chat.turn import render_options_from_settings
    from mlx_harmony_tui.harmony.render import render_prompt
    from mlx_harmony_tui.tools.registry import ToolRegistry
    from training.evaluate import request_of, settings_of

    render = make_renderer(encoding)
    checked = 0
    for d in make_dialogues(11, 30):
        if d.stock_tool_text:
            continue
        settings = settings_of(d, 256)
        tools = ToolRegistry.from_settings(settings)
        opts = render_options_from_settings(settings)
        opts = replace(opts, builtin_tools=sorted(set(opts.builtin_tools) | set(tools.builtin_names())),
                       tool_namespaces={ns.name: ns for ns in tools.builtin_namespaces()})
        expected = render_prompt(request_of(d), opts, encoding)
        tools.close()
        assert any(s.prompt == expected for s in steps_of(d, encoding, render))
        checked += 1
    assert checked >= 20


def test_completions_are_assistant_harmony_ending_in_return_or_call(encoding) -> None:
    ret, call = (encoding.encode(t, allowed_special="all")[0] for t in ("<|return|>", "<|call|>"))
    start_assistant = encoding.encode("<|start|>assistant", allowed_special="all")
    for s in make_steps(5, 40, encoding):
        assert s.prompt[-2:] == start_assistant
        assert s.completion[-1] in (ret, call)
        msgs = encoding.parse_messages_from_completion_tokens(s.completion, oh.Role.ASSISTANT)
        assert all(m.author.role == oh.Role.ASSISTANT for m in msgs)
        assert msgs[0].channel == "analysis"
        if s.completion[-1] == call:
            assert msgs[-1].recipient == "python" and msgs[-1].channel == "commentary"
        else:
            assert msgs[-1].channel == "final"


def test_arithmetic_answers_match_the_real_python_tool(encoding) -> None:
    """What the data says python prints is what the real tool prints, and the final quotes it (an
    integral float like 3.0 written as 3)."""
    from mlx_harmony_tui.tools.python import PythonToolConfig
    from mlx_harmony_tui.tools.registry import ToolRegistry

    reg = ToolRegistry(python=PythonToolConfig())
    try:
        n = 0
        for d in make_dialogues(9, 80):
            for i, m in enumerate(d.messages):
                if m.role == "assistant" and m.recipient == "python" and n < 8:
                    out = reg.run("python", m.text)
                    assert out.error is None and out.output == d.messages[i + 1].text
                    printed = out.output.strip()
                    assert (printed[:-2] if printed.endswith(".0") else printed) in d.messages[i + 3].text
                    n += 1
        assert n == 8
    finally:
        reg.close()


def test_operands_are_copied_digit_exactly_and_division_is_true_division() -> None:
    """The python code holds every number of the question exactly as typed (no other numbers but round()'s
    digits), and ``/`` is true division, rounded by python where the result need not be an integer."""
    rng = random.Random(0)
    for _ in range(3000):
        p = arith.problem(rng)
        typed = sorted(n.lstrip("-") for n in re.findall(r"-?\d+(?:\.\d+)?", p.question))
        assert literals(p.code) == typed, (p.question, p.code)
        assert "//" not in p.code
        if "/" in p.expr or "." in p.expr:
            assert p.code.startswith("print(round(") and p.code.endswith(", 4))")
    assert arith.Problem("7 / 2", "7/2", "7 / 2", "print(round(7/2, 4))", ["7", "2"]).answer() == "3.5"
    assert arith.Problem("9 / 3", "9/3", "9 / 3", "print(round(9/3, 4))", ["9", "3"]).answer() == "3"


def test_requests_vary_the_way_people_write_arithmetic() -> None:
    rng = random.Random(1)
    qs = [arith.problem(rng).question for _ in range(4000)]
    text = "\n".join(qs)
    for word in (" x ", " times ", "multiplied by", "divided by", " over ", " plus ", " minus ", "compute ",
                 "calculate ", "what's ", "how much is ", "×", "÷", "subtract "):
        assert word in text.lower(), word
    assert any(re.search(r"\d[*+/-]\d", q) for q in qs) and any(re.search(r"\d [*+/-] \d", q) for q in qs)
    lengths = {len(n) for q in qs for n in re.findall(r"\d+", q)}
    assert set(range(1, 7)) <= lengths
    assert any(re.search(r"(^|[ (*+/x])-\d", q) for q in qs)  # negative operands
    assert any(re.search(r"\d\.\d", q) for q in qs)  # decimals
    assert sum(len(re.findall(r"\d+(?:\.\d+)?", q)) == 3 for q in qs) > 400  # two operations
    assert any(q.isupper() for q in qs) and any(q[0].isupper() for q in qs) and any(q.islower() for q in qs)
    assert {q[-1] for q in qs} >= {"?", ".", "!", "="} and any(q[-1].isdigit() for q in qs)


def test_off_topic_requests_get_the_honest_line_and_no_tool() -> None:
    seen = 0
    for d in make_dialogues(4, 300):
        for i, m in enumerate(d.messages):
            if m.role == "assistant" and m.channel == "final" and m.text == HONEST:
                assert d.messages[i - 1].channel == "analysis" and d.messages[i - 2].role == "user"
                seen += 1
    assert seen > 40
    assert "ctrl+o" in HONEST and "arithmetic" in HONEST


def test_heldout_set_is_separate_from_the_generator() -> None:
    """No generator module reads the held-out file, and none of its prompts is a generated request."""
    root = Path(training.__file__).parent
    for mod in ("datagen", "arith", "content", "train"):
        assert "heldout" not in (root / f"{mod}.py").read_text()
    items = [json.loads(line) for line in (root / "heldout.jsonl").read_text().splitlines()]
    assert sum(i["kind"] == "arith" for i in items) >= 150 and sum(i["kind"] == "offtopic" for i in items) >= 40
    generated = {m.text for d in make_dialogues(5, 3000) for m in d.messages if m.role == "user"}
    clash = [i["prompt"] for i in items if i["prompt"] in generated]
    assert len(clash) <= 3, clash  # a bare "1+1" may be typed by both


def test_npz_masks_only_completions(tmp_path, encoding) -> None:
    steps = make_steps(2, 10, encoding)
    vocab = vocab_from(steps, encoding)
    save_npz(steps, vocab, tmp_path / "d.npz")
    d = np.load(tmp_path / "d.npz")
    off, mask, toks = d["offsets"], d["mask"], d["tokens"]
    ids = d["vocab_ids"]
    known = set(ids.tolist())
    for k, s in enumerate(steps):
        seg = slice(off[k], off[k + 1])
        unk = len(ids)
        want = [t if t in known else -1 for t in s.prompt + s.completion]
        assert [int(ids[t]) if t < unk else -1 for t in toks[seg]] == want
        assert all(t < unk for t in toks[seg][mask[seg] == 1])  # the assistant writes known tokens only
        assert mask[seg].tolist() == [0] * len(s.prompt) + [1] * len(s.completion)

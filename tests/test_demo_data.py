"""The demo's training data: reproducible, rendered exactly as the app renders prompts, loss only on what the
assistant writes, and arithmetic answers that the real python tool agrees with."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import openai_harmony as oh

from training.datagen import make_dialogues, make_renderer, make_steps, save_npz, steps_of, vocab_from


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
    from mlx_harmony_tui.tools.python import PythonToolConfig
    from mlx_harmony_tui.tools.registry import ToolRegistry

    reg = ToolRegistry(python=PythonToolConfig())
    try:
        n = 0
        for d in make_dialogues(9, 60):
            for i, m in enumerate(d.messages):
                if m.role == "assistant" and m.recipient == "python" and n < 6:
                    out = reg.run("python", m.text)
                    assert out.error is None and out.output == d.messages[i + 1].text
                    assert out.output.strip() in d.messages[i + 3].text  # the final quotes the result
                    n += 1
        assert n == 6
    finally:
        reg.close()


def test_npz_masks_only_completions(tmp_path, encoding) -> None:
    steps = make_steps(2, 10, encoding)
    vocab = vocab_from(steps, encoding)
    save_npz(steps, vocab, tmp_path / "d.npz")
    d = np.load(tmp_path / "d.npz")
    off, mask, toks = d["offsets"], d["mask"], d["tokens"]
    ids = d["vocab_ids"]
    for k, s in enumerate(steps):
        seg = slice(off[k], off[k + 1])
        assert ids[toks[seg]].tolist() == s.prompt + s.completion
        assert mask[seg].tolist() == [0] * len(s.prompt) + [1] * len(s.completion)

"""The built-in demo model: ships in the package, loads fast through the normal loader, answers in Harmony,
and its compact vocabulary expands exactly."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from mlx_harmony_tui.demo import demo_model_path
from mlx_harmony_tui.demo.compact import install_compact
from mlx_harmony_tui.harmony.messages import HMessage
from mlx_harmony_tui.model.config import ModelLoadError
from mlx_harmony_tui.model.load import load_model


@pytest.fixture(scope="module")
def demo():
    mx.set_default_device(mx.cpu)
    t0 = time.perf_counter()
    model, config = load_model(demo_model_path())
    return model, config, time.perf_counter() - t0


def test_demo_ships_in_package_and_is_small() -> None:
    folder = demo_model_path()
    assert (folder / "config.json").is_file()
    weights = folder / "model.safetensors"
    assert weights.is_file() and weights.stat().st_size < 20 * 1024 * 1024
    assert json.loads((folder / "config.json").read_text())["vocab_size"] == 201088


def test_demo_loads_fast_with_full_vocabulary(demo) -> None:
    model, config, seconds = demo
    assert seconds < 3.0  # ~0.1 s measured (docs/demo-model.md); generous for a busy machine
    assert config.vocab_size == 201088
    logits = model(mx.array([[200005, 12, 199990]]))  # an unused id reads the unknown-word row
    assert logits.shape == (1, 3, 201088) and logits.dtype == mx.float32


def test_greeting_gets_analysis_and_final_through_run_turn(demo, encoding) -> None:
    from mlx_harmony_tui.chat.events import MessageDone, Recovery, Retry, TurnFailed, TurnFinished
    from mlx_harmony_tui.chat.settings import ChatSettings
    from mlx_harmony_tui.chat.turn import TurnContext, run_turn
    from mlx_harmony_tui.engine.generator import Engine
    from mlx_harmony_tui.engine.sampling import SamplingParams
    from mlx_harmony_tui.harmony.messages import HMessage

    model, config, _ = demo
    settings = ChatSettings(sampling=SamplingParams(temperature=0.0), max_tokens=200, max_retries=0,
                            conversation_date="2026-11-25")
    ctx = TurnContext(engine=Engine(model, config), encoding=encoding, context_limit=4096)
    events = list(run_turn(ctx, [HMessage(role="user", text="hello")], settings))
    assert not [e for e in events if isinstance(e, Recovery | Retry | TurnFailed)]
    done = [e for e in events if isinstance(e, MessageDone)]
    assert [m.channel for m in done] == ["analysis", "final"]
    assert done[0].text.strip() and done[1].text.strip()
    assert isinstance(events[-1], TurnFinished) and events[-1].reason == "stop"


def test_compact_head_gives_the_trained_distribution(demo) -> None:
    """Used tokens get the stored head's logits, every other token logit 0, so the full softmax equals the
    trained softmax over [compact logits, log(n_unused)]; unknown ids embed as the unknown-word row."""
    model, _, _ = demo
    raw = mx.load(str(demo_model_path() / "model.safetensors"))
    ids = np.array(raw["vocab_ids"])
    head = raw["lm_head.weight"].astype(mx.float32)
    emb = raw["model.embed_tokens.weight"].astype(mx.float32)
    assert head.shape[0] == len(ids) and emb.shape[0] == len(ids) + 1
    unused = np.setdiff1d(np.arange(201088), ids)
    looked_up = model.model.embed_tokens(mx.array([int(ids[5]), int(unused[0])]))
    assert mx.array_equal(looked_up, mx.stack([emb[5], emb[-1]]))
    x = mx.random.normal((2, head.shape[1]), key=mx.random.key(0))
    full = model.lm_head(x)
    assert mx.allclose(full[:, mx.array(ids)], x @ head.T, atol=1e-5)
    assert mx.all(full[:, mx.array(unused[::5])] == 0).item()
    rest = math.log(201088 - len(ids))
    f = np.array(full, dtype=np.float64)
    lp_full = f - np.log(np.exp(f).sum(-1, keepdims=True))
    comp = np.concatenate([np.array(x @ head.T, dtype=np.float64), np.full((2, 1), rest)], axis=-1)
    lp_trained = comp - np.log(np.exp(comp).sum(-1, keepdims=True))
    np.testing.assert_allclose(lp_full[:, ids], lp_trained[:, :-1], atol=1e-4)
    # A decode batch (rows, 1, hidden): each row's logits exactly as alone (continuous batching, engine/batch.py).
    rows = model.lm_head(x[:, None, :])
    assert rows.shape == (2, 1, 201088) and mx.array_equal(rows[:, 0], full)
    assert mx.array_equal(model.lm_head(x[1:2]), full[1:2])


def test_install_compact_rejects_bad_index() -> None:
    from mlx_harmony_tui.model.config import ModelConfig
    from mlx_harmony_tui.model.gpt_oss import GptOss

    cfg = json.loads((demo_model_path() / "config.json").read_text())
    cfg.pop("demo", None)
    model = GptOss(ModelConfig.from_dict(cfg))
    h = cfg["hidden_size"]
    ok = {"vocab_ids": mx.array([0, 5, 300]), "lm_head.weight": mx.ones((3, h)),
          "model.embed_tokens.weight": mx.ones((4, h))}
    install_compact(model, dict(ok), 301)
    assert model.lm_head.weight.shape == (3, h) and model.model.embed_tokens.weight.shape == (4, h)
    with pytest.raises(ValueError, match="outside"):
        install_compact(model, dict(ok), 100)
    with pytest.raises(ValueError, match="lm_head"):
        install_compact(model, {**ok, "lm_head.weight": mx.ones((2, h))}, 301)
    with pytest.raises(ValueError, match="unknown-word row"):
        install_compact(model, {**ok, "model.embed_tokens.weight": mx.ones((3, h))}, 301)


def test_loader_reports_broken_compact_index(tmp_path: Path) -> None:
    folder = demo_model_path()
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    w = mx.load(str(folder / "model.safetensors"))
    w["vocab_ids"] = w["vocab_ids"][:-1]  # one row too few for the matrices
    mx.save_safetensors(str(tmp_path / "model.safetensors"), w)
    with pytest.raises(ModelLoadError, match="vocab_ids|compact"):
        load_model(tmp_path)


def _turn(demo, encoding, text: str, tools: bool = True):
    """One greedy turn through run_turn with the real python tool: (final text, python codes, tool outputs)."""
    from mlx_harmony_tui.chat.settings import ChatSettings
    from mlx_harmony_tui.engine.generator import Engine
    from mlx_harmony_tui.engine.sampling import SamplingParams
    from training.heldout import run_messages

    model, config, _ = demo
    settings = ChatSettings(sampling=SamplingParams(temperature=0.0), max_tokens=256, max_retries=0,
                            conversation_date="2026-11-25", builtin_tools=["python"] if tools else [])
    t = run_messages(Engine(model, config), encoding, [HMessage(role="user", text=text)], settings)
    assert t.valid, t.problems
    return t.final, [c.arguments for c in t.calls], [r.output.strip() for r in t.results]


# Issue 20's targets. The shipped model (issue 8's) only copies operands in its training wordings; a retrained
# one is pending GPU time (docs/demo-model.md), so these are strict xfails: they flip to errors the day a model
# that meets them ships, and then the marks go.
NOT_YET = pytest.mark.xfail(strict=True, reason="shipped demo predates issue 20's training data")


@pytest.mark.parametrize(
    ("prompt", "code", "answer"),
    [
        ("What is 37*12?", "37*12", "444"),  # the README's prompt
        pytest.param("What is 17 * 23?", "17*23", "391", marks=NOT_YET),
        pytest.param("What is 7 / 2?", "7/2", "3.5", marks=NOT_YET),
        pytest.param("Compute 1234 + 4321.", "1234+4321", "5555", marks=NOT_YET),
    ],
)
def test_arithmetic_goes_through_python_with_the_operands_as_typed(demo, encoding, prompt, code, answer) -> None:
    final, codes, outputs = _turn(demo, encoding, prompt)
    assert len(codes) == 1 and code in codes[0].replace(" ", "") and "//" not in codes[0]
    assert outputs[0].removesuffix(".0") == answer and final.rstrip(".").endswith(answer)


@NOT_YET
def test_off_topic_question_gets_the_honest_line(demo, encoding) -> None:
    from training.content import HONEST

    for prompt in ("Who painted the Sistine Chapel?", "Tell me everything about this app"):
        final, codes, _ = _turn(demo, encoding, prompt)
        assert not codes
        if "app" in prompt:
            assert "terminal chat app" in final  # about the app: its description, not a quotient
        else:
            assert final == HONEST


def test_demo_default_temperature_is_its_own() -> None:
    """It ships its own sampling default (docs/demo-model.md: measured held-out accuracy at that temperature)."""
    from mlx_harmony_tui.config import read_model_defaults

    assert read_model_defaults(demo_model_path())["temperature"] == 0.5

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

from mlx_harmony_tui.demo import demo_model_path, expand_compact
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
    assert seconds < 3.0
    assert config.vocab_size == 201088
    assert model.lm_head.weight.shape[0] == 201088 and model.lm_head.weight.dtype == mx.float32


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


def test_compact_expansion_is_exact(demo, tmp_path: Path) -> None:
    """Full-vocabulary logits on used tokens equal those of the same weights loaded as a small-vocabulary
    model; the full softmax equals the trained softmax over [compact logits, log(n_unused)]."""
    model, _, _ = demo
    folder = demo_model_path()
    raw = mx.load(str(folder / "model.safetensors"))
    ids = np.array(raw.pop("vocab_ids"))
    cfg = json.loads((folder / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "vocab_size": len(ids)}))
    mx.save_safetensors(str(tmp_path / "model.safetensors"), raw)
    compact, _ = load_model(tmp_path)
    rng = np.random.default_rng(0)
    positions = rng.integers(0, len(ids), size=40).astype(np.int32)
    sel = mx.array(ids)
    logits_full = model(mx.array(ids[positions][None]))[0]
    logits_compact = compact(mx.array(positions[None]))[0]
    assert mx.array_equal(logits_full[:, sel], logits_compact)
    unused = np.setdiff1d(np.arange(201088), ids)
    assert mx.all(logits_full[:, mx.array(unused[::7])] == 0).item()
    # compare log-probabilities in float64 (a float32 sum over 201088 terms alone drifts by ~1e-3)
    rest = math.log(201088 - len(ids))
    full = np.array(logits_full, dtype=np.float64)
    lp_full = full - np.log(np.exp(full).sum(-1, keepdims=True))
    comp = np.concatenate([np.array(logits_compact, dtype=np.float64), np.full((40, 1), rest)], axis=-1)
    lp_trained = comp - np.log(np.exp(comp).sum(-1, keepdims=True))
    np.testing.assert_allclose(lp_full[:, ids], lp_trained[:, :-1], atol=1e-9)


def test_expand_compact_rejects_bad_index() -> None:
    w = {"vocab_ids": mx.array([0, 5, 300], dtype=mx.int32), "lm_head.weight": mx.ones((3, 4))}
    out = expand_compact(dict(w), 301)
    assert out["lm_head.weight"].shape == (301, 4) and out["lm_head.weight"][5].sum().item() == 4
    assert out["lm_head.weight"][1].sum().item() == 0 and "vocab_ids" not in out
    with pytest.raises(ValueError, match="outside"):
        expand_compact(dict(w), 100)
    with pytest.raises(ValueError, match="shape"):
        expand_compact({**w, "lm_head.weight": mx.ones((2, 4))}, 301)


def test_loader_reports_broken_compact_index(tmp_path: Path) -> None:
    folder = demo_model_path()
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    w = mx.load(str(folder / "model.safetensors"))
    w["vocab_ids"] = w["vocab_ids"][:-1]  # one row too few for the matrices
    mx.save_safetensors(str(tmp_path / "model.safetensors"), w)
    with pytest.raises(ModelLoadError, match="vocab_ids|compact"):
        load_model(tmp_path)


def test_demo_default_temperature_is_its_own() -> None:
    """At temperature 1 the tiny model miscopies numbers (60% arithmetic); it ships 0.5 as its model default."""
    from mlx_harmony_tui.config import read_model_defaults

    assert read_model_defaults(demo_model_path())["temperature"] == 0.5

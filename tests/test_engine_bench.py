"""The bench: mlx-lm sees the same weights, and the command produces a coherent document."""

from __future__ import annotations

import json

import mlx.core as mx
import pytest

from mlx_harmony_tui.cli import main
from mlx_harmony_tui.engine.bench import build_random, to_mlx_lm


def test_mlx_lm_gets_the_same_weights() -> None:
    pytest.importorskip("mlx_lm")
    model, config = build_random("tiny", seed=3)
    lm = to_mlx_lm(model, config)
    x = mx.array([[11, 2222, 33333]])
    ours, theirs = model(x), lm(x)
    # Position 0 has no rotary effect: identical weights must give (numerically) identical logits.
    assert mx.allclose(ours[:, 0], theirs[:, 0], atol=1e-4).item()
    assert (mx.argmax(ours, -1) == mx.argmax(theirs, -1)).all().item()


def test_bench_command_prints_a_table_and_writes_json_on_request(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "bench.json"
    rc = main(["bench", "--random", "tiny", "--prompt-lengths", "16,48", "--gen-tokens", "6", "--repeats", "2",
               "--turns", "4", "--prefill-step", "16", "--json-out", str(target)])
    assert rc == 0
    out = capsys.readouterr().out
    assert out.startswith("model:") and "{" not in out  # the table only; the document goes to the file
    lines = out.splitlines()
    turn_head = next(i for i, line in enumerate(lines) if line.split()[:1] == ["turn"])
    assert lines[turn_head].split()[-2:] == ["decode", "t/s"] and len(lines[turn_head + 1:]) == 5
    assert all(float(row.split()[-1]) > 0 for row in lines[turn_head + 1 : turn_head + 5])
    # the conversation runs --repeats times: a turn's TTFT is its best run, and the ratio line says so
    assert lines[-1].startswith("turn 4 / turn 2 TTFT: ") and "(best of 2 per turn; single runs " in lines[-1]
    doc = json.loads(target.read_text())
    assert [r["prompt_tokens"] for r in doc["prompt_lengths"]] == [16, 48]
    for r in doc["prompt_lengths"]:
        assert r["ours"]["generated"] == 6 and r["ours"]["decode_tps"] > 0 and r["ours"]["peak_bytes"] > 0
    turns = doc["multi_turn"]
    assert len(turns) == 4 and turns[0]["reused_tokens"] == 0
    for t in turns[1:]:  # every later turn prefills exactly its new tokens
        assert t["prefilled_tokens"] == t["new_tokens"]
    assert all(len(t["ttft_s_runs"]) == 2 and t["ttft_s"] == min(t["ttft_s_runs"]) for t in turns)
    ratio = doc["multi_turn_ttft_ratio"]
    assert ratio["best"] == turns[3]["ttft_s"] / turns[1]["ttft_s"] and len(ratio["per_run"]) == 2
    assert "prefill t/s" in out


def test_bench_needs_a_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench"]) == 2
    assert "model folder or --random" in capsys.readouterr().err


def test_bench_compares_with_mlx_lm_on_our_arrays_and_on_its_own_bfloat16_copy(
    tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("mlx_lm")
    target = tmp_path / "bench.json"
    rc = main(["bench", "--random", "tiny", "--prompt-lengths", "16", "--gen-tokens", "4", "--repeats", "1",
               "--turns", "0", "--vs-mlx-lm", "--json-out", str(target)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "(float32 float parts)" in out and "mlx-lm, its own bfloat16 copy" in out
    (row,) = json.loads(target.read_text())["prompt_lengths"]
    assert row["mlx_lm"]["decode_tps"] > 0 and row["mlx_lm_bf16"]["decode_tps"] > 0
    assert row["ratio_bf16"]["decode_tps"] == pytest.approx(row["ours"]["decode_tps"] / row["mlx_lm_bf16"]["decode_tps"])


def test_random_tiny_in_bfloat16_runs_on_this_backend() -> None:
    """--random tiny --dtype bfloat16: float parts in bfloat16 (float experts stay float32 on the CPU, whose
    gather_mm takes nothing else), and it generates."""
    from mlx_harmony_tui.engine.bench import float_dtype
    from mlx_harmony_tui.engine.generator import Engine, GenerationOptions

    model, config = build_random("tiny", seed=1, dtype="bfloat16")
    assert float_dtype(model) == "bfloat16" and model.layers[0].self_attn.q_proj.weight.dtype == mx.bfloat16
    engine = Engine(model, config)
    out = list(engine.generate(list(range(1000, 1040)), GenerationOptions(max_tokens=5, stop_ids=frozenset())))
    assert len(out) == 5


def test_bench_random_tiny_leaves_no_checkpoint_in_the_temp_folder(tmp_path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Each random tiny checkpoint is ~100 MB: bench runs that left theirs in /tmp once filled the disk."""
    import tempfile

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    rc = main(["bench", "--random", "tiny", "--prompt-lengths", "16", "--gen-tokens", "2", "--repeats", "1",
               "--turns", "0"])
    assert rc == 0 and capsys.readouterr().out.startswith("model:")
    assert list(scratch.iterdir()) == []

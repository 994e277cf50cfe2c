"""load_model: every layout loads to the same model; every bad input is a clear ModelLoadError."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from mlx_harmony_tui.errors import UserError
from mlx_harmony_tui.model import ModelLoadError, load_model, write_tiny_checkpoint
from mlx_harmony_tui.model.load import weight_problems

# A small vocabulary keeps these tests fast (the real one is 100 MB per checkpoint); parity tests use the real one.
SMALL = {"vocab_size": 4096}
IDS = [3, 4005, 17, 900, 42, 4006, 11, 12, 13, 14, 15, 16]


def _logits(folder: Path) -> np.ndarray:
    model, _ = load_model(folder)
    return np.array(model(mx.array([IDS])))[0]


def _rewrite(folder: Path, edit) -> None:
    """Load model.safetensors, let `edit` change the dict, save it back."""
    file = folder / "model.safetensors"
    tensors = dict(mx.load(str(file)))
    edit(tensors)
    mx.save_safetensors(str(file), tensors)


def _edit_config(folder: Path, **changes) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


@pytest.fixture
def float_dir(tmp_path: Path) -> Path:
    return write_tiny_checkpoint(tmp_path / "m", layout="float", **SMALL)


def test_all_layouts_give_nearly_the_same_model(tmp_path: Path) -> None:
    """Same random weights; hf (MXFP4 experts) and mlx (plus 8-bit attention) are quantized versions of float."""
    ref = _logits(write_tiny_checkpoint(tmp_path / "f", layout="float", **SMALL))
    for layout in ("hf", "mlx"):
        out = _logits(write_tiny_checkpoint(tmp_path / layout, layout=layout, **SMALL))
        rel = np.linalg.norm(out - ref, axis=-1) / np.linalg.norm(ref, axis=-1)
        assert np.median(rel) < 0.5, layout  # MXFP4 of random weights is coarse (and flips routing)
        other = _logits(write_tiny_checkpoint(tmp_path / (layout + "2"), layout=layout, seed=1, **SMALL))
        rel_other = np.linalg.norm(other - ref, axis=-1) / np.linalg.norm(ref, axis=-1)
        assert np.median(rel_other) > 3 * np.median(rel), layout


@pytest.mark.parametrize("layout", ["float", "hf", "mlx"])
def test_sharded_checkpoint_loads_the_same(tmp_path: Path, layout: str) -> None:
    one = write_tiny_checkpoint(tmp_path / "one", layout=layout, **SMALL)
    three = write_tiny_checkpoint(tmp_path / "three", layout=layout, shards=3, **SMALL)
    assert (three / "model.safetensors.index.json").exists() and len(list(three.glob("*.safetensors"))) == 3
    np.testing.assert_array_equal(_logits(one), _logits(three))


def test_mlx_layout_with_quantized_router_and_float_experts(tmp_path: Path) -> None:
    """mlx-lm variants: router quantized 8-bit (its quant_predicate), and an unquantized conversion."""
    folder = write_tiny_checkpoint(tmp_path / "q", layout="mlx", **SMALL)
    ref = _logits(folder)
    cfg = json.loads((folder / "config.json").read_text())

    def quantize_router(t: dict) -> None:
        for i in range(cfg["num_hidden_layers"]):
            p = f"model.layers.{i}.mlp.router"
            t[p + ".weight"], t[p + ".scales"], t[p + ".biases"] = mx.quantize(t[p + ".weight"], 64, 8)
            cfg["quantization"][p] = {"group_size": 64, "bits": 8}

    _rewrite(folder, quantize_router)
    (folder / "config.json").write_text(json.dumps(cfg))
    model, _ = load_model(folder)
    assert isinstance(model.layers[0].mlp.router, nn.QuantizedLinear)
    out = np.array(model(mx.array([IDS])))[0]
    rel = np.linalg.norm(out - ref, axis=-1) / np.linalg.norm(ref, axis=-1)
    assert np.median(rel) < 0.2  # 8-bit router noise can flip a close top-2 choice

    # Unquantized mlx-lm layout: (E, out, in) float experts with separate gate/up.
    float_mlx = tmp_path / "fm"
    write_tiny_checkpoint(float_mlx, layout="mlx", **SMALL)

    def dequantize_experts(t: dict) -> None:
        for k in [k for k in t if ".mlp.experts." in k and k.endswith(".weight")]:
            base = k[: -len(".weight")]
            t[k] = mx.dequantize(t[k], t.pop(base + ".scales"), group_size=32, bits=4, mode="mxfp4")

    _rewrite(float_mlx, dequantize_experts)
    out = _logits(float_mlx)
    np.testing.assert_allclose(out, ref, rtol=1e-3, atol=1e-3)


def _error(path: Path, *words: str) -> str:
    with pytest.raises(ModelLoadError) as info:
        load_model(path)
    message = str(info.value)
    assert isinstance(info.value, UserError)
    for word in words:
        assert word in message, message
    return message


def test_missing_folder(tmp_path: Path) -> None:
    _error(tmp_path / "nope", "nope", "no such model folder")


def test_path_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "model.bin"
    f.write_bytes(b"x")
    _error(f, "model.bin", "not a folder")


def test_missing_config(float_dir: Path) -> None:
    (float_dir / "config.json").unlink()
    _error(float_dir, "config.json", "missing")


def test_config_not_json(float_dir: Path) -> None:
    (float_dir / "config.json").write_text("{not json")
    _error(float_dir, "config.json", "not valid JSON")


def test_other_architecture(float_dir: Path) -> None:
    _edit_config(float_dir, model_type="llama")
    _error(float_dir, "config.json", "'llama'", "gpt_oss")


def test_config_missing_field(float_dir: Path) -> None:
    cfg = json.loads((float_dir / "config.json").read_text())
    del cfg["hidden_size"]
    (float_dir / "config.json").write_text(json.dumps(cfg))
    _error(float_dir, "config.json", "hidden_size")


def test_no_weights(float_dir: Path) -> None:
    (float_dir / "model.safetensors").unlink()
    _error(float_dir, "no *.safetensors")


def test_missing_shard(tmp_path: Path) -> None:
    folder = write_tiny_checkpoint(tmp_path / "m", layout="mlx", shards=2, **SMALL)
    (folder / "model-00002-of-00002.safetensors").unlink()
    _error(folder, "model-00002-of-00002.safetensors", "missing weight file", "listed in model.safetensors.index.json")


def test_dangling_weight_link_is_not_blamed_on_an_index(float_dir: Path) -> None:
    """A single-file model whose model.safetensors is a link to a deleted blob (a Hugging Face cache snapshot):
    the error named an index file the model does not have."""
    weights = float_dir / "model.safetensors"
    weights.unlink()
    weights.symlink_to(float_dir / "blob-that-was-deleted")
    message = _error(float_dir, "model.safetensors", "a link to a file that is not there")
    assert "index" not in message
    ((_, problem),) = weight_problems(float_dir)
    assert "a link to a file that is not there" in problem and "index" not in problem


@pytest.mark.parametrize("keep", [4, 1000, -5000])
def test_truncated_shard(float_dir: Path, keep: int) -> None:
    file = float_dir / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[:keep])
    _error(float_dir, "model.safetensors", "truncated")


def test_wrong_shape(float_dir: Path) -> None:
    key = "model.layers.1.self_attn.q_proj.weight"
    _rewrite(float_dir, lambda t: t.__setitem__(key, mx.zeros((64, 32))))
    _error(float_dir, "model.safetensors", key, "(64, 32)", "(64, 64)")


def test_config_does_not_match_weights(float_dir: Path) -> None:
    _edit_config(float_dir, hidden_size=128)
    _error(float_dir, "model.safetensors", "shape")


def test_missing_tensor(float_dir: Path) -> None:
    key = "model.layers.2.self_attn.sinks"
    _rewrite(float_dir, lambda t: t.pop(key))
    _error(float_dir, key, "missing")


def test_missing_expert_tensors(tmp_path: Path) -> None:
    folder = write_tiny_checkpoint(tmp_path / "m", layout="hf", **SMALL)
    _rewrite(folder, lambda t: t.pop("model.layers.3.mlp.experts.down_proj_scales"))
    _error(folder, "model.layers.3.mlp.experts.down_proj_scales", "missing")


def test_unknown_hf_quantization(float_dir: Path) -> None:
    _edit_config(float_dir, quantization_config={"quant_method": "gptq", "bits": 4})
    _error(float_dir, "config.json", "gptq")


def test_unknown_mlx_quantization_mode(tmp_path: Path) -> None:
    folder = write_tiny_checkpoint(tmp_path / "m", layout="mlx", **SMALL)
    _edit_config(folder, quantization={"group_size": 64, "bits": 4, "mode": "nf4"})
    _error(folder, "config.json", "nf4")


def test_quantized_tensor_without_config(tmp_path: Path) -> None:
    folder = write_tiny_checkpoint(tmp_path / "m", layout="mlx", **SMALL)
    cfg = json.loads((folder / "config.json").read_text())
    del cfg["quantization"], cfg["quantization_config"]
    (folder / "config.json").write_text(json.dumps(cfg))
    _error(folder, "quantized", "config.json")


def test_unknown_dtype(float_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="float8"):
        load_model(float_dir, dtype="float8")

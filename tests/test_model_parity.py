"""Our MLX GPT-OSS against transformers' GptOssForCausalLM (torch, float32) on the same tiny checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from mlx_harmony_tui.model import load_model, write_tiny_checkpoint

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

SEQ = 40  # several times the tiny sliding window (8)


def _hf_state_dict(folder: Path, layout: str) -> dict:
    """The checkpoint as an unquantized HF state dict, dequantized independently of our loader."""
    if layout == "float":
        return safetensors_torch.load_file(str(folder / "model.safetensors"))
    if layout == "hf":
        from transformers.integrations.mxfp4 import convert_moe_packed_tensors

        raw = safetensors_torch.load_file(str(folder / "model.safetensors"))
        sd = {}
        for k, v in raw.items():
            if k.endswith("_blocks"):
                base = k[: -len("_blocks")]
                sd[base] = convert_moe_packed_tensors(v, raw[base + "_scales"], dtype=torch.float32)
            elif not k.endswith("_scales"):
                sd[k] = v
        return sd
    # mlx-community layout: dequantize with MLX and re-interleave gate/up the HF way.
    cfg = json.loads((folder / "config.json").read_text())
    raw = mx.load(str(folder / "model.safetensors"))
    q = cfg["quantization"]

    def deq(path: str) -> np.ndarray:
        spec = q.get(path) if isinstance(q.get(path), dict) else q
        w = mx.dequantize(
            raw[path + ".weight"], raw[path + ".scales"], raw.get(path + ".biases"),
            group_size=spec["group_size"], bits=spec["bits"], mode=spec["mode"],
        )
        return np.array(w.astype(mx.float32))

    sd = {}
    for k in raw:
        path, _, leaf = k.rpartition(".")
        if leaf in ("scales", "biases"):
            continue
        if ".mlp.experts." in k:
            base, _, name = path.rpartition(".")
            if name == "gate_proj":
                gate, up = deq(path), deq(base + ".up_proj")  # (E, I, H)
                rows = np.empty((gate.shape[0], 2 * gate.shape[1], gate.shape[2]), np.float32)
                rows[:, ::2], rows[:, 1::2] = gate, up
                bias = np.empty((gate.shape[0], 2 * gate.shape[1]), np.float32)
                bias[:, ::2] = np.array(raw[path + ".bias"])
                bias[:, 1::2] = np.array(raw[base + ".up_proj.bias"])
                sd[base + ".gate_up_proj"] = torch.from_numpy(np.ascontiguousarray(rows.transpose(0, 2, 1)))
                sd[base + ".gate_up_proj_bias"] = torch.from_numpy(bias)
            elif name == "down_proj":
                if leaf == "weight":
                    sd[base + ".down_proj"] = torch.from_numpy(np.ascontiguousarray(deq(path).transpose(0, 2, 1)))
                else:
                    sd[base + ".down_proj_bias"] = torch.from_numpy(np.array(raw[k]))
            continue
        if leaf == "weight" and path + ".scales" in raw:
            sd[k] = torch.from_numpy(deq(path))
        else:
            sd[k] = torch.from_numpy(np.array(raw[k]))
    return sd


def _hf_logits(folder: Path, layout: str, ids: list[int]) -> np.ndarray:
    cfg = json.loads((folder / "config.json").read_text())
    cfg.pop("quantization_config", None)
    cfg.pop("quantization", None)
    hf_cfg = transformers.GptOssConfig(**cfg)
    hf_cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = transformers.GptOssForCausalLM(hf_cfg).eval()
    model.load_state_dict(_hf_state_dict(folder, layout), strict=True)
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def _close_fraction(ours: np.ndarray, ref: np.ndarray, tol: float = 1e-3) -> tuple[float, float]:
    rel = np.linalg.norm(ours - ref, axis=-1) / np.linalg.norm(ref, axis=-1)
    return float((rel < tol).mean()), float(np.median(rel))


@pytest.mark.parametrize("layout", ["float", "hf", "mlx"])
def test_logits_match_transformers(tmp_path: Path, layout: str) -> None:
    folder = write_tiny_checkpoint(tmp_path / layout, layout=layout, seed=3)
    ids = [int(t) for t in np.random.default_rng(1).integers(0, 201088, SEQ)]
    ids[5] = 200005  # a Harmony special token (<|channel|>) near the top of the vocabulary
    model, config = load_model(folder)
    assert config.sliding_window < SEQ
    ours = np.array(model(mx.array([ids])))[0]
    ref = _hf_logits(folder, layout, ids)
    assert ours.shape == ref.shape == (SEQ, 201088)
    frac, median = _close_fraction(ours, ref)
    assert frac >= 0.95, f"{layout}: only {frac:.0%} of positions within 1e-3 (median rel err {median:.2e})"


def test_parity_check_detects_a_wrong_model(tmp_path: Path) -> None:
    """Guard against a vacuous comparison: a different seed must fail the same criterion."""
    ours_dir = write_tiny_checkpoint(tmp_path / "a", layout="float", seed=3)
    other_dir = write_tiny_checkpoint(tmp_path / "b", layout="float", seed=4)
    ids = list(range(100, 100 + SEQ))
    model, _ = load_model(ours_dir)
    frac, _ = _close_fraction(np.array(model(mx.array([ids])))[0], _hf_logits(other_dir, "float", ids))
    assert frac < 0.5


def test_all_sliding_layers_match_transformers(tmp_path: Path) -> None:
    """Only sliding layers: any off-by-one in the window (which includes the current token) shows up here."""
    folder = write_tiny_checkpoint(
        tmp_path / "s", layout="float", seed=5, sliding_window=4, layer_types=["sliding_attention"] * 4
    )
    ids = list(range(1000, 1000 + 24))
    model, _ = load_model(folder)
    frac, median = _close_fraction(np.array(model(mx.array([ids])))[0], _hf_logits(folder, "float", ids))
    assert frac >= 0.95, f"median rel err {median:.2e}"


"""A tiny random GPT-OSS checkpoint in any of the three layouts we load.

It has the real vocabulary size (so every Harmony token id is valid) but a 64-wide, 4-layer body, so tests
and the pre-demo app can run the whole pipeline in well under a second. The sliding window is small (8) so
tests cross it with short prompts.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Literal

import mlx.core as mx
import numpy as np

from mlx_harmony_tui.model.config import FULL, SLIDING

Layout = Literal["float", "hf", "mlx"]

# Harmony's eos tokens: <|return|>, <|endoftext|>, <|call|>.
_EOS = [200002, 199999, 200012]


def tiny_config(**overrides: Any) -> dict[str, Any]:
    """config.json of the tiny model (HF gpt_oss keys); overrides replace keys, layer_types follows layers."""
    cfg: dict[str, Any] = {
        "architectures": ["GptOssForCausalLM"],
        "model_type": "gpt_oss",
        "vocab_size": 201088,
        "hidden_size": 64,
        "intermediate_size": 64,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "num_local_experts": 4,
        "num_experts_per_tok": 2,
        "experts_per_token": 2,
        "sliding_window": 8,
        "rms_norm_eps": 1e-5,
        "rope_theta": 150000.0,
        "rope_scaling": {
            "rope_type": "yarn",
            "factor": 32.0,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "truncate": False,
            "original_max_position_embeddings": 4096,
        },
        "swiglu_limit": 7.0,
        "max_position_embeddings": 131072,
        "initial_context_length": 4096,
        "tie_word_embeddings": False,
        "attention_bias": True,
        "attention_dropout": 0.0,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "eos_token_id": 200002,
        "pad_token_id": 199999,
        "torch_dtype": "float32",
    }
    cfg.update(overrides)
    if "layer_types" not in overrides:
        cfg["layer_types"] = [SLIDING if i % 2 == 0 else FULL for i in range(cfg["num_hidden_layers"])]
    return cfg


def tiny_float_weights(cfg: dict[str, Any], seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 weights in the Hugging Face unquantized layout (experts interleaved gate/up, (E, in, out))."""
    rng = np.random.default_rng(seed)
    H, inter, E = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_local_experts"]
    D, nH, nKV, V = cfg["head_dim"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["vocab_size"]

    def normal(shape: tuple[int, ...], std: float) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * np.float32(std)).astype(np.float32)

    w: dict[str, np.ndarray] = {
        "model.embed_tokens.weight": normal((V, H), 1.0),
        "model.norm.weight": 1.0 + normal((H,), 0.1),
        # Logits with std ~3: neither uniform nor one-hot, so sampling tests see real distributions.
        "lm_head.weight": normal((V, H), 3.0 / H**0.5),
    }
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = 1.0 + normal((H,), 0.1)
        w[p + "post_attention_layernorm.weight"] = 1.0 + normal((H,), 0.1)
        for name, out_dim in (("q_proj", nH * D), ("k_proj", nKV * D), ("v_proj", nKV * D)):
            w[p + f"self_attn.{name}.weight"] = normal((out_dim, H), 1.0 / H**0.5)
            w[p + f"self_attn.{name}.bias"] = normal((out_dim,), 0.1)
        w[p + "self_attn.o_proj.weight"] = normal((H, nH * D), 1.0 / (nH * D) ** 0.5)
        w[p + "self_attn.o_proj.bias"] = normal((H,), 0.1)
        w[p + "self_attn.sinks"] = normal((nH,), 1.0)
        w[p + "mlp.router.weight"] = normal((E, H), 1.0 / H**0.5)
        w[p + "mlp.router.bias"] = normal((E,), 0.1)
        w[p + "mlp.experts.gate_up_proj"] = normal((E, H, 2 * inter), 1.5 / H**0.5)
        w[p + "mlp.experts.gate_up_proj_bias"] = normal((E, 2 * inter), 0.1)
        w[p + "mlp.experts.down_proj"] = normal((E, inter, H), 0.5 / inter**0.5)
        w[p + "mlp.experts.down_proj_bias"] = normal((E, H), 0.1)
    return w


_FP4_MAGNITUDES = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


def mxfp4_quantize(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """OCP MXFP4 in numpy: (..., n) floats -> packed uint8 (..., n/2) (low nibble first), e8m0 scales (..., n/32).

    Our own encoder (not mx.quantize, which is slow and memory hungry on the CPU backend), so the loader
    is tested against bytes it did not produce.
    """
    groups = w.astype(np.float64).reshape(*w.shape[:-1], -1, 32)
    amax = np.abs(groups).max(axis=-1, keepdims=True)
    # Smallest power of two that brings the group's max within e2m1's largest value (6): no clipping.
    exponent = np.where(amax > 0, np.ceil(np.log2(np.maximum(amax, 1e-300) / 6.0)), -127)
    exponent = np.clip(exponent, -127, 127)
    scaled = np.abs(groups) / np.exp2(exponent)
    code = np.searchsorted((_FP4_MAGNITUDES[1:] + _FP4_MAGNITUDES[:-1]) / 2, scaled).astype(np.uint8)
    code |= (groups < 0).astype(np.uint8) << 3
    code = code.reshape(w.shape)
    packed = code[..., 0::2] | (code[..., 1::2] << 4)
    return np.ascontiguousarray(packed), (exponent[..., 0] + 127).astype(np.uint8)


def _to_hf_mxfp4(w: dict[str, np.ndarray]) -> dict[str, mx.array]:
    """Experts as HF MXFP4: `*_blocks` uint8 (E, out, in/32, 16) and `*_scales` uint8 (E, out, in/32)."""
    out: dict[str, mx.array] = {}
    for k, v in w.items():
        if k.endswith(("experts.gate_up_proj", "experts.down_proj")):
            packed, scales = mxfp4_quantize(np.swapaxes(v, -1, -2))  # rows are (E, out, in)
            out[k + "_blocks"] = mx.array(packed.reshape(*packed.shape[:-1], -1, 16))
            out[k + "_scales"] = mx.array(scales)
        else:
            out[k] = mx.array(v)
    return out


def _mlx_mxfp4(rows: np.ndarray) -> tuple[mx.array, mx.array]:
    """MLX's mxfp4 layout: the same nibbles packed eight to a uint32 (little endian), e8m0 scales."""
    packed, scales = mxfp4_quantize(rows)
    return mx.array(packed.view(np.uint32)), mx.array(scales)


def _to_mlx(w: dict[str, np.ndarray], cfg: dict[str, Any]) -> tuple[dict[str, mx.array], dict[str, Any]]:
    """mlx-community layout: split gate/up experts as mxfp4, attention/embed/lm_head 8-bit affine."""
    out: dict[str, mx.array] = {}
    quant: dict[str, Any] = {"group_size": 64, "bits": 8, "mode": "affine"}
    mxfp4 = {"group_size": 32, "bits": 4, "mode": "mxfp4"}

    def affine(path: str, weight: np.ndarray) -> None:
        q, s, b = mx.quantize(mx.array(weight), group_size=64, bits=8)
        out[path + ".weight"], out[path + ".scales"], out[path + ".biases"] = q, s, b

    for k, v in w.items():
        path = k.rsplit(".", 1)[0]
        if k.endswith(("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                       "self_attn.o_proj.weight", "embed_tokens.weight", "lm_head.weight")):
            affine(path, v)
        elif k.endswith("experts.gate_up_proj"):
            base = k[: -len("gate_up_proj")]
            rows = np.swapaxes(v, -1, -2)  # (E, 2I, H), rows interleaved gate/up
            for name, part in (("gate_proj", rows[:, ::2]), ("up_proj", rows[:, 1::2])):
                out[base + name + ".weight"], out[base + name + ".scales"] = _mlx_mxfp4(part)
                quant[base.rstrip(".") + "." + name] = mxfp4
        elif k.endswith("experts.gate_up_proj_bias"):
            base = k[: -len("gate_up_proj_bias")]
            out[base + "gate_proj.bias"] = mx.array(np.ascontiguousarray(v[:, ::2]))
            out[base + "up_proj.bias"] = mx.array(np.ascontiguousarray(v[:, 1::2]))
        elif k.endswith("experts.down_proj"):
            base = k[: -len("down_proj")]
            out[base + "down_proj.weight"], out[base + "down_proj.scales"] = _mlx_mxfp4(np.swapaxes(v, -1, -2))
            quant[base + "down_proj"] = mxfp4
        elif k.endswith("experts.down_proj_bias"):
            out[k.replace("down_proj_bias", "down_proj.bias")] = mx.array(v)
        else:
            out[k] = mx.array(v)
    return out, quant


def write_tiny_checkpoint(
    path: str | Path, *, layout: Layout = "float", seed: int = 0, shards: int = 1, **config_overrides: Any
) -> Path:
    """Write config.json, generation_config.json and safetensors of a tiny random GPT-OSS; returns the folder.

    layout "float": HF unquantized keys; "hf": experts as HF MXFP4 blocks/scales; "mlx": the mlx-community
    layout (experts mxfp4, attention/embedding/lm_head 8-bit affine). shards > 1 writes an index file.
    """
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = tiny_config(**config_overrides)
    weights = tiny_float_weights(cfg, seed)
    metadata = {"format": "pt"}
    if layout == "float":
        tensors = {k: mx.array(v) for k, v in weights.items()}
    elif layout == "hf":
        tensors = _to_hf_mxfp4(weights)
        cfg["quantization_config"] = {
            "quant_method": "mxfp4",
            "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"],
        }
    elif layout == "mlx":
        tensors, cfg["quantization"] = _to_mlx(weights, cfg)
        cfg["quantization_config"] = cfg["quantization"]
        metadata = {"format": "mlx"}
    else:
        raise ValueError(f"unknown layout {layout!r} (expected 'float', 'hf' or 'mlx')")

    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    gen = {"bos_token_id": 199998, "eos_token_id": _EOS, "pad_token_id": 199999, "do_sample": True}
    (folder / "generation_config.json").write_text(json.dumps(gen, indent=2))
    if shards <= 1:
        mx.save_safetensors(str(folder / "model.safetensors"), tensors, metadata=metadata)
        return folder
    names = sorted(tensors)
    weight_map: dict[str, str] = {}
    for s in range(shards):
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: tensors[k] for k in names[s::shards]}
        mx.save_safetensors(str(folder / fname), part, metadata=metadata)
        weight_map.update(dict.fromkeys(part, fname))
    total = sum(t.nbytes for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return folder


def load_tiny_model(*, layout: Layout = "float", seed: int = 0, prefix: str = "mht-tiny-",
                    **config_overrides: Any) -> tuple[Any, Any]:
    """(model, config) of a tiny checkpoint written to a temporary folder, read through the real loader and
    evaluated, then the folder removed: each one is ~100 MB (the real vocabulary), and bench runs that left
    theirs behind once filled the disk."""
    from mlx_harmony_tui.model.load import load_model

    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        model, config = load_model(write_tiny_checkpoint(Path(tmp) / "tiny", layout=layout, seed=seed,
                                                         **config_overrides))
        mx.eval(model.parameters())  # read every weight before the files go
    return model, config

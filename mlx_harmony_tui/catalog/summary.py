"""What a model folder holds, from config.json and the safetensors headers alone (no tensor is read).

Shared by ``models list``/``info``, the picker and the memory check, so all of them show the same numbers.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlx_harmony_tui.model.cache import DEFAULT_MARGIN
from mlx_harmony_tui.model.config import FULL, ModelConfig, ModelLoadError
from mlx_harmony_tui.model.load import read_header, weight_files, weight_problems

_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}
_QUANT_META = (".scales", ".biases", "_scales")  # quantization side tensors, not parameters


@dataclass(frozen=True)
class ModelSummary:
    layers: int
    full_layers: int  # the rest use the sliding window
    sliding_window: int
    experts: int
    experts_per_token: int
    context: int  # max_position_embeddings
    parameters: int  # logical weights (a 4-bit value counts as one)
    weight_bytes: int  # on disk, which is what the loaded weights take in memory
    kv_bytes_per_token: int  # keys + values of one position on one layer, at the compute dtype
    layout: str  # "hf-mxfp4", "hf-float" or "mlx"
    quantization: str  # human words: "mxfp4 experts", "mxfp4 4-bit, 8-bit affine", "bf16"
    dtype_bytes: int = 2  # of the compute dtype (the KV cache's)

    def kv_bytes(self, tokens: int, kv_bits: int | None = None, kv_mode: str | None = None) -> int:
        """KV cache bytes for ``tokens`` of context, as model/cache.py keeps it: full layers every position
        (``kv_bits``: quantized, plus a scale and bias per 64 values, per 128 with ``kv_mode`` "affine128";
        "mxfp8": 8 bits plus one scale byte per 32), sliding layers their window + margin."""
        sliding = self.layers - self.full_layers
        kept = min(tokens, self.sliding_window + DEFAULT_MARGIN)
        full = self.kv_bytes_per_token * tokens
        if kv_mode == "mxfp8":
            full = int(full * (1 + 1 / 32) / self.dtype_bytes)
        elif kv_bits or kv_mode == "affine128":
            group = 128 if kv_mode == "affine128" else 64
            full = int(full * ((kv_bits or 8) / 8 + 2 * self.dtype_bytes / group) / self.dtype_bytes)
        return self.full_layers * full + sliding * self.kv_bytes_per_token * kept


def read_config(folder: Path) -> dict[str, Any]:
    file = folder / "config.json"
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(f"{file}: missing (a GPT-OSS model folder needs config.json)") from None
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{file}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{file}: expected a JSON object")
    return data


def _layout_and_quant(cfg: ModelConfig, dtype: str) -> tuple[str, str]:
    if cfg.quant_method == "mxfp4":
        return "hf-mxfp4", f"mxfp4 experts, {dtype.lower()} rest"
    if cfg.quantization:
        q = cfg.quantization
        kinds = {(q.get("mode", "affine"), q.get("bits"))}
        kinds |= {(v.get("mode", "affine"), v.get("bits")) for v in q.values() if isinstance(v, dict)}
        words = sorted(f"{mode} {bits}-bit" if bits else str(mode) for mode, bits in kinds)
        return "mlx", ", ".join(words)
    return "hf-float", dtype.lower()


def _parameters(key: str, info: dict[str, Any], cfg: ModelConfig) -> int:
    n = math.prod(info.get("shape") or [0])
    if key.endswith(_QUANT_META) or key == "vocab_ids":
        return 0
    if key.endswith("_blocks"):  # HF MXFP4: two 4-bit values per byte
        return 2 * n
    if info.get("dtype") == "U32" and key.endswith(".weight"):  # MLX packed: 32 / bits values per word
        spec = cfg.quant_spec(key[: -len(".weight")])
        if spec is not None:
            return n * 32 // spec.bits
    return n


def summarize(folder: str | Path) -> ModelSummary:
    """Raises ModelLoadError (naming the file) for a folder the loader would refuse for its config or files."""
    folder = Path(folder)
    cfg = ModelConfig.from_dict(read_config(folder), source=str(folder / "config.json"))
    problems = weight_problems(folder)
    if problems:
        raise ModelLoadError(problems[0][1])
    files = weight_files(folder)
    headers = {key: info for file in files for key, info in read_header(file).items()}
    return _summary(cfg, headers, sum(file.stat().st_size for file in files))


def tiny_summary() -> ModelSummary:
    """The built-in ``tiny`` model described from its config and weights in memory, so `models info tiny`
    need not write its ~100 MB checkpoint (only the file's small header is not counted in weight_bytes)."""
    import numpy as np

    from mlx_harmony_tui.model.tiny import tiny_config, tiny_float_weights

    config = tiny_config()
    weights = tiny_float_weights(config, seed=0)
    dtypes = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16"}
    headers = {k: {"dtype": dtypes.get(a.dtype, "BF16"), "shape": list(a.shape)} for k, a in weights.items()}
    size = sum(a.nbytes for a in weights.values())
    return _summary(ModelConfig.from_dict(config, source="tiny"), headers, size)


def _summary(cfg: ModelConfig, headers: dict[str, Any], size: int) -> ModelSummary:
    """From the config, the safetensors headers' tensor entries and the files' size in bytes."""
    params, compute = 0, "BF16"
    for key, info in headers.items():
        if not isinstance(info, dict) or key == "__metadata__":
            continue
        params += _parameters(key, info, cfg)
        if key == "model.norm.weight":
            compute = str(info.get("dtype", compute))
    layout, quant = _layout_and_quant(cfg, compute)
    per_token = 2 * cfg.num_key_value_heads * cfg.head_dim * _BYTES.get(compute, 2)
    return ModelSummary(
        layers=cfg.num_hidden_layers,
        full_layers=sum(t == FULL for t in cfg.layer_types),
        sliding_window=cfg.sliding_window,
        experts=cfg.num_local_experts,
        experts_per_token=cfg.num_experts_per_tok,
        context=cfg.max_position_embeddings,
        parameters=params,
        weight_bytes=size,
        kv_bytes_per_token=per_token,
        layout=layout,
        quantization=quant,
        dtype_bytes=_BYTES.get(compute, 2),
    )

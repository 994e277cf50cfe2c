"""Load GPT-OSS checkpoints: Hugging Face (MXFP4 or float) and mlx-community layouts.

Safetensors headers are checked first (so truncated shards fail with a clear message, not deep in MLX),
then tensors are memory-mapped lazily with mx.load and only materialized layer by layer, which is also what
drives the progress callback. Experts end up with gate and up fused as one [gate | up] matrix.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlx.core as mx
from mlx.utils import tree_flatten

from mlx_harmony_tui.model.config import ModelConfig, ModelLoadError, QuantSpec
from mlx_harmony_tui.model.gpt_oss import GptOss

Progress = Callable[[float, str], None]

_DTYPES: dict[str, mx.Dtype] = {
    "float32": mx.float32,
    "float16": mx.float16,
    "bfloat16": mx.bfloat16,
}
_ST_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8,
             "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
_MXFP4 = QuantSpec(mode="mxfp4", group_size=32, bits=4)


def parse_dtype(dtype: str | mx.Dtype | None) -> mx.Dtype | None:
    """Map a user-given dtype name ("bfloat16", "bf16", ...) to MLX; unknown names are a UserError."""
    if dtype is None or isinstance(dtype, mx.Dtype):
        return dtype
    aliases = {"fp32": "float32", "f32": "float32", "fp16": "float16", "f16": "float16", "half": "float16",
               "bf16": "bfloat16"}
    name = aliases.get(dtype.lower(), dtype.lower())
    if name not in _DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r} (choose one of {', '.join(_DTYPES)})")
    return _DTYPES[name]


def _read_header(file: Path) -> dict[str, Any]:
    """Parse and check a safetensors header: every tensor's bytes must lie inside the file."""
    try:
        size = file.stat().st_size
        with file.open("rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise ModelLoadError(f"{file}: truncated safetensors file ({size} bytes, no header)")
            (n,) = struct.unpack("<Q", raw)
            if n > size - 8 or n > 100_000_000:
                raise ModelLoadError(f"{file}: truncated or corrupt safetensors file (header length {n})")
            header = json.loads(f.read(n))
    except OSError as e:
        raise ModelLoadError(f"{file}: cannot read ({e.strerror or e})") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{file}: corrupt safetensors header ({e})") from e
    header.pop("__metadata__", None)
    data = size - 8 - n
    for key, info in header.items():
        try:
            start, end = info["data_offsets"]
            nbytes = math.prod(info["shape"]) * _ST_SIZES[info["dtype"]]
        except (KeyError, TypeError, ValueError) as e:
            raise ModelLoadError(f"{file}: corrupt safetensors entry for {key!r}") from e
        if end > data:
            raise ModelLoadError(
                f"{file}: truncated: tensor {key!r} needs bytes up to {end} but the file holds {data} "
                "(an interrupted download?)"
            )
        if end - start != nbytes:
            raise ModelLoadError(f"{file}: corrupt safetensors entry for {key!r} (size does not match shape)")
    return header


def _listed_weight_files(folder: Path) -> list[Path]:
    """The shards the index names (present or not), else the folder's *.safetensors."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            return [folder / name for name in sorted(set(weight_map.values()))]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ModelLoadError(f"{index}: unreadable shard index ({e})") from e
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{folder}: no *.safetensors weight files found")
    return files


def _why_missing(folder: Path) -> str:
    """Where a missing weight file was named: the shard index, else a link found by name whose target is
    gone (a Hugging Face cache snapshot whose blob was deleted or never finished)."""
    if (folder / "model.safetensors.index.json").exists():
        return "listed in model.safetensors.index.json"
    return "a link to a file that is not there"


def _weight_files(folder: Path) -> list[Path]:
    files = _listed_weight_files(folder)
    missing = [f.name for f in files if not f.exists()]
    if missing:
        raise ModelLoadError(f"{folder}: missing weight file(s) ({_why_missing(folder)}): {', '.join(missing)}")
    return files


def weight_problems(folder: str | Path) -> list[tuple[Path, str]]:
    """(file, problem) for every shard that is missing or whose safetensors header does not fit its size.

    Reads only headers, so checking a 60 GB model takes milliseconds; an empty list means every tensor's
    bytes are on disk (their values are not checked: that would mean reading everything).
    """
    out: list[tuple[Path, str]] = []
    for file in _listed_weight_files(Path(folder)):
        if not file.exists():
            out.append((file, f"{file}: missing ({_why_missing(Path(folder))})"))
            continue
        try:
            _read_header(file)
        except ModelLoadError as e:
            out.append((file, str(e)))
    return out


def weight_files(folder: str | Path) -> list[Path]:
    """The checkpoint's safetensors files (the index's shards if it has one); ModelLoadError if one is missing."""
    return _weight_files(Path(folder))


def read_header(file: str | Path) -> dict[str, Any]:
    """A checked safetensors header: tensor name -> {dtype, shape, data_offsets}."""
    return _read_header(Path(file))


def _deinterleave(a: mx.array, axis: int) -> mx.array:
    """HF stores gate/up rows interleaved (gate0, up0, gate1, ...); we want [gate | up] in one matrix."""
    idx = [slice(None)] * a.ndim
    idx[axis] = slice(0, None, 2)
    even = a[tuple(idx)]
    idx[axis] = slice(1, None, 2)
    return mx.concatenate([even, a[tuple(idx)]], axis=axis)


class _Weights:
    """Lazily loaded checkpoint tensors with the file each came from (for error messages)."""

    def __init__(self, files: list[Path]) -> None:
        self.arrays: dict[str, mx.array] = {}
        self.source: dict[str, Path] = {}
        for file in files:
            header = _read_header(file)
            try:
                loaded = mx.load(str(file))
            except Exception as e:  # MLX raises plain RuntimeError/ValueError for bad files
                raise ModelLoadError(f"{file}: cannot load safetensors ({e})") from e
            assert isinstance(loaded, dict)
            for key in header:
                if key not in loaded:
                    raise ModelLoadError(f"{file}: tensor {key!r} is in the header but could not be read")
            self.arrays.update(loaded)
            self.source.update(dict.fromkeys(loaded, file))

    def where(self, key: str) -> str:
        return str(self.source.get(key, "the checkpoint"))

    def pop(self, key: str) -> mx.array:
        if key not in self.arrays:
            raise ModelLoadError(f"missing tensor {key!r} in the checkpoint ({', '.join(self.files())})")
        return self.arrays.pop(key)

    def files(self) -> list[str]:
        return sorted({p.name for p in self.source.values()})


def _convert_experts(w: _Weights, cfg: ModelConfig, i: int, quant: dict[str, QuantSpec]) -> dict[str, mx.array]:
    """Map one layer's expert tensors (any layout) to our fused names; records their quantization."""
    p = f"model.layers.{i}.mlp.experts."
    out: dict[str, mx.array] = {}
    a = w.arrays

    def blocks(key: str) -> mx.array:
        b = w.pop(key)
        if b.dtype != mx.uint8 or b.ndim != 4 or b.shape[-1] != 16:
            raise ModelLoadError(
                f"{w.where(key)}: tensor {key!r} has dtype {b.dtype} shape {tuple(b.shape)}, "
                "expected uint8 MXFP4 blocks (E, rows, groups, 16)"
            )
        return b.view(mx.uint32).reshape(*b.shape[:2], -1)

    try:
        if p + "gate_up_proj_blocks" in a:  # HF MXFP4
            out[p + "gate_up.weight"] = _deinterleave(blocks(p + "gate_up_proj_blocks"), 1)
            out[p + "gate_up.scales"] = _deinterleave(w.pop(p + "gate_up_proj_scales"), 1)
            out[p + "gate_up.bias"] = _deinterleave(w.pop(p + "gate_up_proj_bias"), -1)
            out[p + "down.weight"] = blocks(p + "down_proj_blocks")
            out[p + "down.scales"] = w.pop(p + "down_proj_scales")
            out[p + "down.bias"] = w.pop(p + "down_proj_bias")
            quant[p + "gate_up"] = quant[p + "down"] = _MXFP4
        elif p + "gate_up_proj" in a:  # HF float: (E, in, out), interleaved columns
            out[p + "gate_up.weight"] = _deinterleave(w.pop(p + "gate_up_proj"), -1)
            out[p + "gate_up.bias"] = _deinterleave(w.pop(p + "gate_up_proj_bias"), -1)
            out[p + "down.weight"] = w.pop(p + "down_proj")
            out[p + "down.bias"] = w.pop(p + "down_proj_bias")
        elif p + "gate_proj.weight" in a:  # mlx-community: separate gate/up, (E, out, in)
            for ours, parts in (("gate_up", ("gate_proj", "up_proj")), ("down", ("down_proj",))):
                names = [p + part for part in parts]
                out[p + ours + ".bias"] = mx.concatenate([w.pop(n + ".bias") for n in names], axis=-1)
                if names[0] + ".scales" in a:
                    spec = cfg.quant_spec(names[0])
                    if spec is None:
                        raise ModelLoadError(
                            f"{w.where(names[0] + '.scales')}: {names[0]} is quantized but config.json has no "
                            "quantization entry for it"
                        )
                    quant[p + ours] = spec
                    for field in ("weight", "scales") + (("biases",) if spec.mode == "affine" else ()):
                        out[p + ours + "." + field] = mx.concatenate([w.pop(f"{n}.{field}") for n in names], axis=1)
                else:
                    weight = mx.concatenate([w.pop(n + ".weight") for n in names], axis=1)
                    out[p + ours + ".weight"] = weight.swapaxes(-1, -2)
        else:
            raise ModelLoadError(
                f"missing expert tensors for layer {i} (expected {p}gate_up_proj_blocks, {p}gate_up_proj or "
                f"{p}gate_proj.weight) in {', '.join(w.files())}"
            )
    except ValueError as e:  # shape errors from view/concatenate on malformed tensors
        raise ModelLoadError(f"malformed expert tensors for layer {i} in {', '.join(w.files())}: {e}") from e
    return out


def _build(
    folder: Path, dtype: str | mx.Dtype | None, progress: Progress | None, shard: Callable[[GptOss], Any] | None = None
) -> tuple[GptOss, ModelConfig]:
    report = progress or (lambda fraction, message: None)
    compute = parse_dtype(dtype)
    if not folder.exists():
        raise ModelLoadError(f"{folder}: no such model folder")
    if not folder.is_dir():
        raise ModelLoadError(f"{folder}: not a folder (expected a model folder with config.json)")
    cfg_path = folder / "config.json"
    if not cfg_path.exists():
        raise ModelLoadError(f"{cfg_path}: missing (a GPT-OSS model folder needs config.json)")
    try:
        raw = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{cfg_path}: not valid JSON ({e})") from e
    config = ModelConfig.from_dict(raw, source=str(cfg_path))

    report(0.0, "reading safetensors headers")
    w = _Weights(_weight_files(folder))
    compact = w.arrays.pop("vocab_ids", None)  # compact checkpoint (the built-in demo): used rows only

    quant: dict[str, QuantSpec] = {}
    converted: dict[str, mx.array] = {}
    for i in range(config.num_hidden_layers):
        converted.update(_convert_experts(w, config, i, quant))
    for key in [k for k in w.arrays if k.endswith(".scales")]:
        path = key[: -len(".scales")]
        spec = config.quant_spec(path)
        if spec is None:
            raise ModelLoadError(f"{w.where(key)}: {path} is quantized but config.json has no quantization for it")
        quant[path] = spec
    converted.update(w.arrays)  # the rest keeps its name

    if compute is None:
        ref = converted.get("model.norm.weight")
        compute = ref.dtype if ref is not None and ref.dtype in _DTYPES.values() else mx.float32
    cpu = mx.default_device() == mx.cpu
    for key, value in converted.items():
        if value.dtype in (mx.uint8, mx.uint32):
            continue
        float_expert = key.endswith("experts.gate_up.weight") or key.endswith("experts.down.weight")
        converted[key] = value.astype(mx.float32 if (float_expert and cpu) else compute)

    model = GptOss(config, quant)
    if compact is not None:
        from mlx_harmony_tui.demo.compact import install_compact

        try:
            install_compact(model, {**converted, "vocab_ids": compact}, config.vocab_size)
        except ValueError as e:
            raise ModelLoadError(f"{w.where('vocab_ids')}: {e}") from e
    expected = dict(tree_flatten(model.parameters()))
    for key, param in expected.items():
        if key not in converted:
            raise ModelLoadError(f"missing tensor {key!r} in {folder} ({', '.join(w.files())})")
        got = converted[key]
        if tuple(got.shape) != tuple(param.shape):
            raise ModelLoadError(
                f"{w.where(key)}: tensor {key!r} has shape {tuple(got.shape)}, expected {tuple(param.shape)} "
                "for this config.json"
            )
        if (param.dtype in (mx.uint8, mx.uint32)) != (got.dtype in (mx.uint8, mx.uint32)):
            raise ModelLoadError(f"{w.where(key)}: tensor {key!r} has dtype {got.dtype}, expected {param.dtype}")
    model.load_weights([(k, converted[k]) for k in expected], strict=True)
    del converted, w
    if shard is not None:  # split over ranks before anything is read: each rank reads only its part
        try:
            shard(model)
        except ValueError as e:
            raise ModelLoadError(f"{folder}: {e}") from e

    # Materialize layer by layer: bounded transient memory and a meaningful progress bar.
    parts: list[tuple[str, Any]] = [("embeddings", model.model.embed_tokens.parameters())]
    parts += [(f"layer {i + 1}/{len(model.layers)}", layer.parameters()) for i, layer in enumerate(model.layers)]
    head = [model.model.norm.parameters()] + ([model.lm_head.parameters()] if "lm_head" in model else [])
    parts.append(("output head", head))
    for n, (label, params) in enumerate(parts):
        try:
            mx.eval(params)
        except Exception as e:
            raise ModelLoadError(f"{folder}: failed to read weights for {label} ({e})") from e
        report((n + 1) / len(parts), f"loaded {label}")
    model.eval()
    return model, config


def load_model(
    path: str | Path,
    dtype: str | mx.Dtype | None = None,
    progress: Progress | None = None,
    shard: Callable[[GptOss], Any] | None = None,
) -> tuple[GptOss, ModelConfig]:
    """Load a GPT-OSS model folder; `dtype` overrides the compute dtype of unquantized weights; `shard`
    (model/shard.py) splits the model over ranks before its weights are read.

    Raises ModelLoadError (a UserError) naming the file and the problem for anything a user can cause.
    """
    return _build(Path(path).expanduser(), dtype, progress, shard)

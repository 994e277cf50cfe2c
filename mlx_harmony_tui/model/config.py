"""GPT-OSS configuration parsed from config.json, validated up front so bad files fail with a clear message."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from mlx_harmony_tui.errors import UserError

SLIDING = "sliding_attention"
FULL = "full_attention"

# Quantization modes the model can run: mode -> allowed bits.
SUPPORTED_MODES: dict[str, tuple[int, ...]] = {
    "affine": (2, 3, 4, 5, 6, 8),
    "mxfp4": (4,),
    "mxfp8": (8,),
}


class ModelLoadError(UserError):
    """A model folder that cannot be loaded; the message names the file and the problem."""


@dataclass(frozen=True)
class QuantSpec:
    """How one weight is quantized (MLX semantics: packed along the input dimension)."""

    mode: str = "affine"
    group_size: int = 64
    bits: int = 4


@dataclass
class ModelConfig:
    """The fields of a GPT-OSS config.json that the model needs; `raw` keeps the whole dict."""

    vocab_size: int = 201088
    hidden_size: int = 2880
    intermediate_size: int = 2880
    num_hidden_layers: int = 24
    num_attention_heads: int = 64
    num_key_value_heads: int = 8
    head_dim: int = 64
    num_local_experts: int = 32
    num_experts_per_tok: int = 4
    sliding_window: int = 128
    layer_types: list[str] = field(default_factory=list)
    rms_norm_eps: float = 1e-5
    rope_theta: float = 150000.0
    rope_scaling: dict[str, Any] | None = None
    swiglu_limit: float = 7.0
    swiglu_alpha: float = 1.702
    max_position_embeddings: int = 131072
    tie_word_embeddings: bool = False
    eos_token_id: list[int] = field(default_factory=list)
    # MLX-community layout: {"group_size", "bits", "mode", "<module path>": {...} | False}; None if absent.
    quantization: dict[str, Any] | None = None
    # Hugging Face layout: "mxfp4" when experts are stored as *_blocks/*_scales; None for float.
    quant_method: str | None = None
    model_type: str = "gpt_oss"
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config.json") -> ModelConfig:
        """Parse and validate; raises ModelLoadError naming `source` for anything we cannot run."""
        if not isinstance(d, dict):
            raise ModelLoadError(f"{source}: expected a JSON object, got {type(d).__name__}")
        model_type = d.get("model_type")
        if model_type != "gpt_oss":
            raise ModelLoadError(
                f"{source}: model_type is {model_type!r}, but only GPT-OSS models (model_type 'gpt_oss') are supported"
            )
        required = (
            "vocab_size hidden_size intermediate_size num_hidden_layers num_attention_heads "
            "num_key_value_heads num_local_experts"
        ).split()
        missing = [k for k in required if k not in d]
        if missing:
            raise ModelLoadError(f"{source}: missing required field(s): {', '.join(missing)}")

        def _int(key: str, default: int | None = None) -> int:
            value = d.get(key, default)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ModelLoadError(f"{source}: {key} must be a positive integer, got {value!r}")
            return value

        n_layers = _int("num_hidden_layers")
        n_heads = _int("num_attention_heads")
        n_kv = _int("num_key_value_heads")
        if n_heads % n_kv:
            raise ModelLoadError(
                f"{source}: num_attention_heads ({n_heads}) is not a multiple of num_key_value_heads ({n_kv})"
            )
        head_dim = d.get("head_dim") or d["hidden_size"] // n_heads
        layer_types = d.get("layer_types") or [SLIDING if i % 2 == 0 else FULL for i in range(n_layers)]
        if len(layer_types) != n_layers or any(t not in (SLIDING, FULL) for t in layer_types):
            raise ModelLoadError(
                f"{source}: layer_types must list {n_layers} entries of {SLIDING!r} or {FULL!r}"
            )
        n_experts = _int("num_local_experts")
        top_k = _int("num_experts_per_tok", 4)
        if top_k > n_experts:
            raise ModelLoadError(f"{source}: num_experts_per_tok ({top_k}) > num_local_experts ({n_experts})")

        rope_params = d.get("rope_parameters") or {}
        rope_scaling = d.get("rope_scaling") or (rope_params if rope_params.get("rope_type") else None)
        rope_theta = float(d.get("rope_theta") or rope_params.get("rope_theta") or 150000.0)
        if rope_scaling is not None:
            kind = rope_scaling.get("rope_type", rope_scaling.get("type"))
            if kind not in ("yarn", "default", None):
                raise ModelLoadError(f"{source}: unsupported rope_scaling type {kind!r} (expected 'yarn')")

        eos = d.get("eos_token_id")
        eos_list = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)

        quantization, quant_method = _parse_quantization(d, source)
        return cls(
            vocab_size=_int("vocab_size"),
            hidden_size=_int("hidden_size"),
            intermediate_size=_int("intermediate_size"),
            num_hidden_layers=n_layers,
            num_attention_heads=n_heads,
            num_key_value_heads=n_kv,
            head_dim=int(head_dim),
            num_local_experts=n_experts,
            num_experts_per_tok=top_k,
            sliding_window=_int("sliding_window", 128),
            layer_types=list(layer_types),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-5)),
            rope_theta=rope_theta,
            rope_scaling=dict(rope_scaling) if rope_scaling else None,
            swiglu_limit=float(d.get("swiglu_limit", 7.0)),
            swiglu_alpha=float(d.get("swiglu_alpha", 1.702)),
            max_position_embeddings=int(d.get("max_position_embeddings", 131072)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            eos_token_id=eos_list,
            quantization=quantization,
            quant_method=quant_method,
            raw=dict(d),
        )

    def quant_spec(self, path: str) -> QuantSpec | None:
        """The MLX-layout quantization of module `path` per config (None: not quantized / not said)."""
        q = self.quantization
        if not q:
            return None
        entry = q.get(path, True)
        if entry is False:
            return None
        if isinstance(entry, dict):
            return _spec(entry, path)
        return _spec(q, "quantization")

    @property
    def attention_scale_factor(self) -> float:
        """YaRN's attention factor (0.1 ln(factor) + 1) that HF multiplies into cos and sin."""
        rs = self.rope_scaling or {}
        if rs.get("attention_factor") is not None:
            return float(rs["attention_factor"])
        factor = float(rs.get("factor", 1.0) or 1.0)
        return 0.1 * math.log(factor) + 1.0 if factor > 1.0 else 1.0


def _spec(entry: dict[str, Any], where: str) -> QuantSpec:
    mode = entry.get("mode", "affine")
    defaults = {"affine": (64, 4), "mxfp4": (32, 4), "mxfp8": (32, 8)}
    if mode not in SUPPORTED_MODES:
        raise ModelLoadError(
            f"config.json: unknown quantization mode {mode!r} for {where} (supported: {', '.join(SUPPORTED_MODES)})"
        )
    group_size = int(entry.get("group_size") or defaults[mode][0])
    bits = int(entry.get("bits") or defaults[mode][1])
    if bits not in SUPPORTED_MODES[mode] or group_size not in (16, 32, 64, 128):
        raise ModelLoadError(
            f"config.json: unsupported quantization for {where}: mode {mode!r}, {bits} bits, group size {group_size}"
        )
    return QuantSpec(mode=mode, group_size=group_size, bits=bits)


def _parse_quantization(d: dict[str, Any], source: str) -> tuple[dict[str, Any] | None, str | None]:
    """MLX `quantization` wins; else HF `quantization_config` must be mxfp4 (or MLX-shaped)."""
    q = d.get("quantization")
    qc = d.get("quantization_config")
    if q is None and isinstance(qc, dict) and "quant_method" not in qc and ("bits" in qc or "group_size" in qc):
        q = qc  # older mlx-lm wrote only quantization_config
    if q is not None:
        if not isinstance(q, dict):
            raise ModelLoadError(f"{source}: 'quantization' must be an object, got {q!r}")
        _spec(q, "quantization")  # validate the global entry
        for key, value in q.items():
            if isinstance(value, dict):
                _spec(value, key)
        return dict(q), None
    if qc is not None:
        method = qc.get("quant_method") if isinstance(qc, dict) else None
        if method != "mxfp4":
            raise ModelLoadError(
                f"{source}: unknown quantization_config.quant_method {method!r} (supported: 'mxfp4', "
                "or an MLX 'quantization' entry)"
            )
        return None, "mxfp4"
    return None, None

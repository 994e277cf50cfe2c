"""Quantized KV cache for the full-attention layers and the attention over it, with gpt-oss's sink logits.

Modes: "affine" (8 or 4 bits, groups of 64 along head_dim with a scale and a bias in the cache's dtype, as
mlx-lm's ``kv_bits``: 8.5 / 4.5 bits a value in bf16) or "mxfp8" (8-bit floats, e4m3, in groups of 32 with
one power-of-two scale byte and no bias: 8.25 bits a value, so gpt-oss-20b's 131,072 positions fit in
1.7 GB; coarser, see docs/benchmarks.md).

Full layers are where a long conversation's KV memory goes (sliding layers keep a few hundred positions,
model/cache.py), so only they are quantized. Each position is quantized on its own, so trimming stays
exact and prefix reuse works as with the float cache. The attention multiplies by the packed keys and
values directly (``mx.quantized_matmul``), never materializing a float copy of the cache; MLX's fused
sdpa has no quantized form, so this is the portable matmul + softmax + matmul path on every backend.
Accuracy against the float cache: docs/benchmarks.md ("KV-cache quantization").
"""

from __future__ import annotations

import mlx.core as mx

from mlx_harmony_tui.errors import UserError
from mlx_harmony_tui.model.cache import KVCache

QuantArrays = tuple[mx.array, ...]  # packed uint32, scales (, biases: affine only)
KV_MODES = ("affine", "mxfp8")


def _parts(mode: str) -> tuple[str, ...]:
    return ("q", "scales", "biases") if mode == "affine" else ("q", "scales")


class KVQuantError(UserError):
    """KV quantization asked for a model whose head size MLX cannot quantize in groups."""


def group_size_for(head_dim: int, preferred: int = 64) -> int:
    """The quantization group: ``preferred`` (64, mlx-lm's default) or 32 when it does not divide the head."""
    for g in (preferred, 64, 32):
        if g in (32, 64, 128) and head_dim % g == 0:
            return g
    raise KVQuantError(
        f"KV-cache quantization needs a head size divisible by 32 (this model's is {head_dim})"
    )


class QuantizedKVCache(KVCache):
    """A full layer's cache holding (packed, scales[, biases]) for keys and values, grown in steps."""

    quantized = True

    def __init__(self, bits: int = 8, group_size: int = 64, mode: str = "affine") -> None:
        super().__init__()
        if mode not in KV_MODES:
            raise ValueError(f"KV cache mode must be one of {', '.join(KV_MODES)}, not {mode!r}")
        if bits not in ((4, 8) if mode == "affine" else (8,)):
            raise ValueError(f"KV cache bits must be 4 or 8 (mxfp8: 8), not {bits}")
        if mode == "mxfp8":
            group_size = 32  # the format's block
        self.bits, self.group_size, self.mode = bits, group_size, mode
        self.qkeys: list[mx.array] | None = None
        self.qvalues: list[mx.array] | None = None

    @property
    def quant(self) -> tuple[int, int, str]:
        """(bits, group size, mode): what ``quantized_attention`` needs to read this cache."""
        return self.bits, self.group_size, self.mode

    @property
    def kind(self) -> str:
        """How a prompt-cache file names this layer's storage ("q8", "q4", "mxfp8")."""
        return f"q{self.bits}" if self.mode == "affine" else self.mode

    def _quantize(self, x: mx.array) -> QuantArrays:
        return tuple(mx.quantize(x, group_size=self.group_size, bits=self.bits, mode=self.mode))

    def update(self, keys: mx.array, values: mx.array) -> None:
        prev, n = self.offset, keys.shape[2]
        qk, qv = self._quantize(keys), self._quantize(values)
        if self.qkeys is None or self.qvalues is None or prev + n > self.qkeys[0].shape[2]:
            grow = ((prev + n + self.step - 1) // self.step) * self.step - prev

            def extend(old: list[mx.array] | None, new: QuantArrays) -> list[mx.array]:
                fresh = [mx.zeros((*a.shape[:2], grow, a.shape[3]), a.dtype) for a in new]
                if old is None:
                    return fresh
                return [
                    mx.concatenate([o[..., :prev, :], f], axis=2) for o, f in zip(old, fresh, strict=True)
                ]

            self.qkeys, self.qvalues = extend(self.qkeys, qk), extend(self.qvalues, qv)
        self.offset = prev + n
        for buf, new in ((self.qkeys, qk), (self.qvalues, qv)):
            for i, a in enumerate(new):
                buf[i][..., prev : self.offset, :] = a

    def update_and_fetch(self, keys: mx.array, values: mx.array, keep: int | None = None):  # type: ignore[override]
        """Append (float keys/values in, quantized out): ((packed, scales, biases) of the keys, of the values)."""
        self.update(keys, values)
        return self.state

    @property
    def state(self):  # type: ignore[override]
        if self.qkeys is None or self.qvalues is None:
            return None, None
        n = self.offset
        return tuple(a[..., :n, :] for a in self.qkeys), tuple(a[..., :n, :] for a in self.qvalues)

    @state.setter
    def state(self, kv) -> None:  # type: ignore[override]
        keys, values = kv
        self.qkeys = None if keys is None else list(keys)
        self.qvalues = None if values is None else list(values)
        self.offset = 0 if keys is None else keys[0].shape[2]

    def arrays(self) -> dict[str, mx.array]:
        k, v = self.state
        if k is None or v is None or self.offset == 0:
            return {}
        parts = _parts(self.mode)
        return {
            **{f"keys.{p}": a for p, a in zip(parts, k, strict=True)},
            **{f"values.{p}": a for p, a in zip(parts, v, strict=True)},
        }

    def restore(self, arrays: dict[str, mx.array], start: int) -> None:
        del start
        parts = _parts(self.mode)
        self.state = (tuple(arrays[f"keys.{p}"] for p in parts), tuple(arrays[f"values.{p}"] for p in parts))

    @property
    def nbytes(self) -> int:
        if self.qkeys is None or self.qvalues is None:
            return 0
        return sum(a.nbytes for a in (*self.qkeys, *self.qvalues))

    def __repr__(self) -> str:
        cap = 0 if self.qkeys is None else self.qkeys[0].shape[2]
        return f"QuantizedKVCache({self.kind}, offset={self.offset}, capacity={cap})"


def quantized_attention(
    q: mx.array,
    keys: QuantArrays,
    values: QuantArrays,
    scale: float,
    mask,
    sinks: mx.array,
    bits: int,
    group_size: int = 64,
    mode: str = "affine",
) -> mx.array:
    """Sink attention of q (B, H, L, D) over quantized keys/values (B, Hkv, T, ...) -> (B, H, L, D).

    ``mask``: None, "causal" (aligned to the end of the keys) or a boolean (L, T) array. The sink is one
    more logit per head in the softmax's denominator, with no value (gpt-oss)."""
    B, H, L, D = q.shape
    hkv, T = keys[0].shape[1], keys[0].shape[2]
    rep = H // hkv
    # float32 queries and probabilities: scores in bfloat16 (8-bit mantissa) would cost more accuracy than
    # the 8-bit keys themselves (the demo model in bfloat16: 89% against 100% top-1 agreement)
    qs = (q.astype(mx.float32) * scale).reshape(B, hkv, rep, L, D)
    kx = [mx.expand_dims(a, 2) for a in keys]
    vx = [mx.expand_dims(a, 2) for a in values]
    scores = mx.quantized_matmul(qs, *kx, transpose=True, group_size=group_size, bits=bits, mode=mode)
    if mask is not None:
        if isinstance(mask, str):
            mask = mx.arange(T - L, T)[:, None] >= mx.arange(T)[None]
        scores = mx.where(mask, scores, -mx.inf)
    sink = mx.broadcast_to(sinks.astype(mx.float32).reshape(1, hkv, rep, 1, 1), (B, hkv, rep, L, 1))
    probs = mx.softmax(mx.concatenate([sink, scores], axis=-1), axis=-1)[..., 1:]
    out = mx.quantized_matmul(probs, *vx, transpose=False, group_size=group_size, bits=bits, mode=mode)
    out = out.astype(q.dtype)
    return out.reshape(B, H, L, D)

"""Quantized KV cache for the full-attention layers and the attention over it, with gpt-oss's sink logits.

Modes: "affine" (8 or 4 bits, groups of 64 along head_dim with a scale and a bias in the cache's dtype, as
mlx-lm's ``kv_bits``: 8.5 / 4.5 bits a value in bf16); "affine128" (the same in groups of 128: one
position's values of two KV heads side by side, since head_dim is 64; 8.25 / 4.25 bits); "mxfp8" (8-bit
floats, e4m3, in groups of 32 with one power-of-two scale byte and no bias: 8.25 bits). At 8.25 bits
gpt-oss-20b's 131,072 positions fit in 1.7 GB; accuracy of each: docs/benchmarks.md.

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
KV_MODES = ("affine", "affine128", "mxfp8")


def _parts(mode: str) -> tuple[str, ...]:
    return ("q", "scales") if mode == "mxfp8" else ("q", "scales", "biases")


def heads_per_row(mode: str) -> int:
    """KV heads whose values at one position form one quantized row (their groups span them)."""
    return 2 if mode == "affine128" else 1


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


def check_heads(kv_heads: int, mode: str) -> None:
    """Raise KVQuantError when ``mode`` cannot group this model's KV heads."""
    g = heads_per_row(mode)
    if kv_heads % g:
        raise KVQuantError(f"kv_mode {mode} groups KV heads in pairs; this model has {kv_heads}")


class QuantizedKVCache(KVCache):
    """A full layer's cache holding (packed, scales[, biases]) for keys and values, grown in steps."""

    quantized = True

    def __init__(self, bits: int = 8, group_size: int = 64, mode: str = "affine") -> None:
        super().__init__()
        if mode not in KV_MODES:
            raise ValueError(f"KV cache mode must be one of {', '.join(KV_MODES)}, not {mode!r}")
        if bits not in ((8,) if mode == "mxfp8" else (4, 8)):
            raise ValueError(f"KV cache bits must be 4 or 8 (mxfp8: 8), not {bits}")
        if mode == "mxfp8":
            group_size = 32  # the format's block
        elif mode == "affine128":
            group_size = 128
        self.bits, self.group_size, self.mode = bits, group_size, mode
        self.qkeys: list[mx.array] | None = None
        self.qvalues: list[mx.array] | None = None

    @property
    def quant(self) -> tuple[int, int, str]:
        """(bits, group size, mode): what ``quantized_attention`` needs to read this cache."""
        return self.bits, self.group_size, self.mode

    @property
    def kind(self) -> str:
        """How a prompt-cache file names this layer's storage ("q8", "q4", "mxfp8", "affine128-q8"...)."""
        return {"affine": f"q{self.bits}", "mxfp8": "mxfp8"}.get(self.mode, f"{self.mode}-q{self.bits}")

    def _quantize(self, x: mx.array) -> QuantArrays:
        g = heads_per_row(self.mode)
        if g > 1:  # (B, H, L, D) -> (B, H / g, L, g * D): a position's g heads side by side
            B, H, L, D = x.shape
            x = x.reshape(B, H // g, g, L, D).transpose(0, 1, 3, 2, 4).reshape(B, H // g, L, g * D)
        mode = "mxfp8" if self.mode == "mxfp8" else "affine"
        return tuple(mx.quantize(x, group_size=self.group_size, bits=self.bits, mode=mode))

    def update(self, keys: mx.array, values: mx.array) -> None:
        prev, n = self.offset, keys.shape[2]
        qk, qv = self._quantize(keys), self._quantize(values)
        if self.qkeys is None or self.qvalues is None or prev + n > self.qkeys[0].shape[2]:
            grow = max(((prev + n + self.step - 1) // self.step) * self.step, self.reserve) - prev

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
    """Sink attention of q (B, H, L, D) over quantized keys/values (B, Hkv / g, T, ...) -> (B, H, L, D),
    g = ``heads_per_row(mode)``.

    ``mask``: None, "causal" (aligned to the end of the keys) or a boolean (L, T) array. The sink is one
    more logit per head in the softmax's denominator, with no value (gpt-oss). With g = 2 a row holds two
    heads' keys: each query is zero-padded to the row's width at its head's place, so the matmul gives its
    own head's score (twice the multiply-adds, the same bytes read), and each head keeps its slice of the
    value product."""
    B, H, L, D = q.shape
    rows, T = keys[0].shape[1], keys[0].shape[2]
    g = heads_per_row(mode)
    rep = H // (rows * g)
    # float32 queries and probabilities: scores in bfloat16 (8-bit mantissa) would cost more accuracy than
    # the 8-bit keys themselves (the demo model in bfloat16: 89% against 100% top-1 agreement)
    qs = (q.astype(mx.float32) * scale).reshape(B, rows, g, rep, L, D)
    if g > 1:
        pad = [(0, 0)] * 4
        qs = mx.concatenate([mx.pad(qs[:, :, j], [*pad, (j * D, (g - 1 - j) * D)]) for j in range(g)], axis=2)
    else:
        qs = qs.reshape(B, rows, rep, L, D)
    mx_mode = "mxfp8" if mode == "mxfp8" else "affine"
    kx = [mx.expand_dims(a, 2) for a in keys]
    vx = [mx.expand_dims(a, 2) for a in values]
    scores = mx.quantized_matmul(qs, *kx, transpose=True, group_size=group_size, bits=bits, mode=mx_mode)
    if mask is not None:
        if isinstance(mask, str):
            mask = mx.arange(T - L, T)[:, None] >= mx.arange(T)[None]
        scores = mx.where(mask, scores, -mx.inf)
    sink = mx.broadcast_to(sinks.astype(mx.float32).reshape(1, rows, g * rep, 1, 1), (B, rows, g * rep, L, 1))
    probs = mx.softmax(mx.concatenate([sink, scores], axis=-1), axis=-1)[..., 1:]
    out = mx.quantized_matmul(probs, *vx, transpose=False, group_size=group_size, bits=bits, mode=mx_mode)
    if g > 1:  # (B, rows, g * rep, L, g * D): head j of a row keeps its rep queries' j-th slice
        out = mx.concatenate([out[:, :, j * rep : (j + 1) * rep, :, j * D : (j + 1) * D] for j in range(g)], axis=2)
    return out.astype(q.dtype).reshape(B, H, L, D)

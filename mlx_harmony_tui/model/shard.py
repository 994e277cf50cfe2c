"""One GPT-OSS split over the ranks of an MLX distributed group (tensor and expert parallelism).

Each rank keeps 1/N of the attention heads (q/k/v rows by head, o_proj columns, sinks), 1/N of the experts
(the router runs everywhere and picks from all of them), and either 1/N of the vocabulary (embedding rows and
LM-head rows) or a full copy of both. Per layer and token that costs one all-sum after attention and one
after the MoE (``hidden`` values each), plus an all-sum of the embedding and an all-gather of the logits when
the vocabulary is split. ``shard_model`` runs on the lazily loaded weights, before they are evaluated, so a
rank materializes only its own part (model/load.py's ``shard`` hook).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import mlx.core as mx
import mlx.nn as nn

from mlx_harmony_tui.model.gpt_oss import MoE, parameter_bytes, route

VocabMode = Literal["auto", "split", "replicate"]


@dataclass(frozen=True)
class ShardInfo:
    rank: int
    size: int
    vocab_split: bool
    heads: tuple[int, int]  # this rank's query heads [start, end)
    kv_heads: tuple[int, int]
    experts: tuple[int, int]


class AllSum(nn.Module):
    """``inner(x)`` summed over the group: the output projection of a row-split matmul."""

    def __init__(self, inner: nn.Module, group: Any) -> None:
        super().__init__()
        self.inner = inner
        self._group = group

    def __call__(self, x: mx.array) -> mx.array:
        return mx.distributed.all_sum(self.inner(x), group=self._group)


class ShardedMoE(nn.Module):
    """The MoE with this rank's experts only: the router sees all experts; a token's slots that chose another
    rank's expert get weight 0 here (their rank adds them in the all-sum)."""

    def __init__(self, moe: MoE, start: int, count: int, group: Any) -> None:
        super().__init__()
        self.top_k = moe.top_k
        self.router = moe.router
        self.experts = moe.experts
        self._start, self._count, self._group = start, count, group

    def __call__(self, x: mx.array) -> mx.array:
        B, L, H = x.shape
        x = x.reshape(B * L, H)
        indices, weights = route(self.router, x, self.top_k)
        local = indices - self._start
        mine = (local >= 0) & (local < self._count)
        y = self.experts(x, mx.clip(local, 0, self._count - 1))
        w = mx.where(mine, weights, 0.0)[..., None].astype(y.dtype)
        return mx.distributed.all_sum((y * w).sum(axis=-2).reshape(B, L, H), group=self._group)


class VocabEmbedding(nn.Module):
    """Embedding rows [start, start + n) on this rank; other ids look up zeros, and the all-sum fills them."""

    def __init__(self, inner: nn.Module, start: int, group: Any) -> None:
        super().__init__()
        self.inner = inner
        self._start, self._group = start, group

    def __call__(self, ids: mx.array) -> mx.array:
        n = self.inner.weight.shape[0]
        local = ids - self._start
        mine = (local >= 0) & (local < n)
        x = self.inner(mx.clip(local, 0, n - 1))
        return mx.distributed.all_sum(mx.where(mine[..., None], x, mx.zeros_like(x)), group=self._group)

    def as_linear(self, x: mx.array) -> mx.array:
        return _gather_vocab(self.inner.as_linear(x), self._group)


class VocabHead(nn.Module):
    """LM-head rows [start, start + n): this rank's slice of the logits, gathered in rank order."""

    def __init__(self, inner: nn.Module, group: Any) -> None:
        super().__init__()
        self.inner = inner
        self._group = group

    def __call__(self, x: mx.array) -> mx.array:
        return _gather_vocab(self.inner(x), self._group)


def _gather_vocab(part: mx.array, group: Any) -> mx.array:
    """(..., V/N) on every rank -> (..., V): all_gather stacks along axis 0, so move the vocab there."""
    lead = part.shape[:-1]
    n = part.shape[-1]
    flat = part.reshape(-1, n).T  # (V/N, rows)
    full = mx.distributed.all_gather(flat, group=group)  # (V, rows)
    return full.T.reshape(*lead, -1)


def _rows(module: nn.Module, start: int, end: int) -> None:
    """Keep output rows [start, end) of a Linear / QuantizedLinear / Embedding (weight, scales, biases, bias)."""
    for name in ("weight", "scales", "biases", "bias"):
        if name in module:
            setattr(module, name, getattr(module, name)[start:end])


def _cols(module: nn.Module, start: int, end: int) -> None:
    """Keep input columns [start, end) of a Linear / QuantizedLinear (packed columns for quantized)."""
    w = module.weight
    if "scales" in module:
        in_dims = module.scales.shape[-1] * module.group_size
        per = w.shape[-1] / in_dims  # packed words per input column
        g = module.group_size
        if start % g or end % g:
            raise ValueError(f"cannot split a quantized matmul at column {start} (group size {g})")
        module.weight = w[:, int(start * per) : int(end * per)]
        module.scales = module.scales[:, start // g : end // g]
        if module.get("biases") is not None:
            module.biases = module.biases[:, start // g : end // g]
    else:
        module.weight = w[:, start:end]


def _split(n: int, size: int, rank: int, what: str) -> tuple[int, int]:
    if n % size:
        raise ValueError(f"{what}: {n} cannot be split over {size} ranks")
    per = n // size
    return rank * per, (rank + 1) * per


def _vocab_bytes(model: Any) -> tuple[int, int]:
    """(bytes of the embedding + LM head, bytes of the whole model)."""
    total = parameter_bytes(model)
    vocab = parameter_bytes(model.model.embed_tokens)
    if "lm_head" in model:
        vocab += parameter_bytes(model.lm_head)
    return vocab, total


def shard_model(model: Any, group: Any, vocab: VocabMode = "auto") -> ShardInfo:
    """Split ``model`` (a GptOss, weights not yet evaluated) in place for this rank of ``group``.

    ``vocab``: "split" the embedding and LM head by rows, "replicate" them, or "auto": split when they are
    more than a third of the weights (small models; for gpt-oss-20b/120b they are ~10% / 2%, and a copy on
    every rank saves the logits' all-gather, V floats per token)."""
    size, rank = group.size(), group.rank()
    cfg = model.config
    hq, hkv = cfg.num_attention_heads, cfg.num_key_value_heads
    per_q = hq // size if hq % size == 0 else 0
    group_q = hq // hkv
    if not per_q or (per_q % group_q and group_q % per_q):
        raise ValueError(f"{hq} query / {hkv} key-value heads cannot be split over {size} ranks")
    q0, q1 = rank * per_q, (rank + 1) * per_q
    k0, k1 = q0 // group_q, (q1 - 1) // group_q + 1
    e0, e1 = _split(cfg.num_local_experts, size, rank, "experts")
    d = cfg.head_dim
    for layer in model.layers:
        attn = layer.self_attn
        _rows(attn.q_proj, q0 * d, q1 * d)
        _rows(attn.k_proj, k0 * d, k1 * d)
        _rows(attn.v_proj, k0 * d, k1 * d)
        attn.sinks = attn.sinks[q0:q1]
        _cols(attn.o_proj, q0 * d, q1 * d)
        if rank and "bias" in attn.o_proj:
            attn.o_proj.bias = mx.zeros_like(attn.o_proj.bias)  # added once, by rank 0
        attn.n_heads, attn.n_kv = q1 - q0, k1 - k0
        attn.o_proj = AllSum(attn.o_proj, group)
        experts = layer.mlp.experts
        for lin in (experts.gate_up, experts.down):
            _rows(lin, e0, e1)  # every expert tensor has the expert first
        layer.mlp = ShardedMoE(layer.mlp, e0, e1 - e0, group)
    vocab_part, total = _vocab_bytes(model)
    split = vocab == "split" or (vocab == "auto" and vocab_part * 3 > total)
    if split:
        v0, v1 = _split(cfg.vocab_size, size, rank, "vocabulary")
        _rows(model.model.embed_tokens, v0, v1)
        model.model.embed_tokens = VocabEmbedding(model.model.embed_tokens, v0, group)
        if "lm_head" in model:
            _rows(model.lm_head, v0, v1)
            model.lm_head = VocabHead(model.lm_head, group)
    return ShardInfo(rank, size, split, (q0, q1), (k0, k1), (e0, e1))


def exchanged_bytes_per_token(model: Any, info: ShardInfo, dtype_size: int = 2) -> dict[str, int]:
    """Bytes each rank contributes to collectives for one decoded token (what the network carries, per
    rank, before the backend's own framing): two all-sums of ``hidden`` per layer, plus the embedding's
    all-sum and the logits' all-gather when the vocabulary is split, plus the sampled token's broadcast."""
    cfg = model.config
    h = cfg.hidden_size * dtype_size
    out = {"attention all-sum (per layer)": h, "MoE all-sum (per layer)": h, "layers": 2 * h * cfg.num_hidden_layers}
    if info.vocab_split:
        out["embedding all-sum"] = h
        out["logits all-gather"] = cfg.vocab_size // info.size * 4
    out["token broadcast"] = 8
    out["total"] = sum(v for k, v in out.items() if "per layer" not in k)
    return out

"""Embedding and output head over a compact vocabulary (the demo checkpoint's ``vocab_ids``), with
full-vocabulary ids in and full-vocabulary logits out.

Training used a softmax over [used logits, log(n_unused)]; giving every unused token logit 0 is exactly that
(n_unused * e^0 = e^log(n_unused)), so the model's distribution over all 201088 tokens is the trained one,
while the head's matmul covers only the used rows.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from mlx_harmony_tui.demo import VOCAB_IDS_KEY

EMBED_KEY, HEAD_KEY = "model.embed_tokens.weight", "lm_head.weight"


class CompactEmbedding(nn.Module):
    """Embedding over the compact rows: a token id is looked up through a full-vocabulary index; tokens
    outside the vocabulary read the last row, the unknown-word row trained on rare words."""

    def __init__(self, vocab_ids: mx.array, vocab_size: int, dims: int) -> None:
        super().__init__()
        n = vocab_ids.size
        index = mx.full((vocab_size,), n, dtype=mx.int32)
        index[vocab_ids] = mx.arange(n, dtype=mx.int32)
        mx.eval(index)  # now: generation may run on another thread, without this thread's stream
        self._index = index
        self.weight = mx.zeros((n + 1, dims))

    def __call__(self, tokens: mx.array) -> mx.array:
        return self.weight[self._index[tokens]]


class CompactHead(nn.Module):
    """The output head over the compact rows, returning full-vocabulary logits: used tokens get their
    logit, every other token logit 0 (exactly what the trained extra logit log(n_unused) stands for), so the
    matmul is over a few thousand rows instead of 201088 (the CPU decode cost of a wider model). The
    logits are scattered into a zero row (not gathered from [logits, 0] for every vocabulary id): on the
    CPU that took 1.6 of a 3.1 ms decode step per row, the scatter 0.2-0.3 ms (scripts/batch_step_profile.py)."""

    def __init__(self, vocab_ids: mx.array, vocab_size: int, dims: int) -> None:
        super().__init__()
        self._ids = vocab_ids.astype(mx.int32)
        mx.eval(self._ids)
        self._vocab_size = vocab_size
        self.weight = mx.zeros((vocab_ids.size, dims))

    def __call__(self, x: mx.array) -> mx.array:
        logits = x @ self.weight.T
        full = mx.zeros((*logits.shape[:-1], self._vocab_size), dtype=logits.dtype)
        return mx.put_along_axis(full, mx.broadcast_to(self._ids, logits.shape), logits, axis=-1)


def install_compact(model: nn.Module, weights: dict[str, mx.array], vocab_size: int) -> None:
    """Pop ``vocab_ids`` from ``weights`` and give ``model`` compact embedding/head modules shaped for the
    stored rows (the loader then loads them like any weight).

    Raises ValueError when the index does not fit the matrices or the vocabulary (the loader turns it into a
    ModelLoadError naming the file).
    """
    ids = weights.pop(VOCAB_IDS_KEY).astype(mx.int32)
    if ids.ndim != 1 or ids.size == 0:
        raise ValueError(f"{VOCAB_IDS_KEY} must be a non-empty 1-D index, got shape {tuple(ids.shape)}")
    lo, hi = mx.min(ids).item(), mx.max(ids).item()
    if lo < 0 or hi >= vocab_size:
        raise ValueError(f"{VOCAB_IDS_KEY} holds ids outside 0..{vocab_size - 1} ({lo}..{hi})")
    head, embed = weights.get(HEAD_KEY), weights.get(EMBED_KEY)
    if embed is None or embed.ndim != 2 or embed.shape[0] != ids.size + 1:
        shape = None if embed is None else tuple(embed.shape)
        raise ValueError(
            f"{EMBED_KEY} has shape {shape}, expected ({ids.size + 1}, hidden) for the compact "
            "vocabulary and its unknown-word row"
        )
    if head is not None and (head.ndim != 2 or head.shape[0] != ids.size):
        raise ValueError(
            f"{HEAD_KEY} has shape {tuple(head.shape)}, expected ({ids.size}, hidden) for the "
            "compact vocabulary"
        )
    dims = embed.shape[1]
    model.model.embed_tokens = CompactEmbedding(ids, vocab_size, dims)
    if head is not None:
        model.lm_head = CompactHead(ids, vocab_size, dims)


__all__ = ["CompactEmbedding", "CompactHead", "install_compact"]

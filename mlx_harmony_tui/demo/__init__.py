"""The built-in demo model: a tiny GPT-OSS trained on synthetic Harmony chats (see training/ and
docs/demo-model.md), so the app runs with a real Harmony-speaking model on a fresh machine.

The checkpoint is *compact*: ``model.safetensors`` stores only the embedding and ``lm_head`` rows of the tokens
the training data uses, plus a ``vocab_ids`` index. ``expand_compact`` scatters them into the full 201088-row
matrices (unused rows zero) so the normal loader and engine see an ordinary GPT-OSS checkpoint. Training used a
softmax over [used logits, log(n_unused)], which is exactly what zero ``lm_head`` rows (logit 0 each) give, so
expansion changes no probability.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import mlx.core as mx

VOCAB_IDS_KEY = "vocab_ids"
COMPACT_KEYS = ("model.embed_tokens.weight", "lm_head.weight")


def demo_model_path() -> Path:
    """The folder of the shipped demo model: this package itself holds config.json + model.safetensors
    (package data, so ``pip install`` brings them)."""
    return Path(__file__).parent


def is_compact(weights: dict[str, mx.array]) -> bool:
    return VOCAB_IDS_KEY in weights


def expand_compact(weights: dict[str, mx.array], vocab_size: int) -> dict[str, mx.array]:
    """Return weights with compact embedding/lm_head rows placed at their token ids in full-size matrices.

    Raises ValueError when the index does not fit the matrices or the vocabulary (the loader turns it into a
    ModelLoadError naming the file).
    """
    import mlx.core as mx

    out = dict(weights)
    ids = out.pop(VOCAB_IDS_KEY).astype(mx.int32)
    if ids.ndim != 1 or ids.size == 0:
        raise ValueError(f"{VOCAB_IDS_KEY} must be a non-empty 1-D index, got shape {tuple(ids.shape)}")
    lo, hi = mx.min(ids).item(), mx.max(ids).item()
    if lo < 0 or hi >= vocab_size:
        raise ValueError(f"{VOCAB_IDS_KEY} holds ids outside 0..{vocab_size - 1} ({lo}..{hi})")
    for key in COMPACT_KEYS:
        if key not in out:
            continue
        w = out[key]
        if w.ndim != 2 or w.shape[0] != ids.size:
            raise ValueError(f"{key} has shape {tuple(w.shape)}, expected ({ids.size}, hidden) for the compact vocabulary")
        full = mx.zeros((vocab_size, w.shape[1]), dtype=w.dtype)
        full[ids] = w
        out[key] = full
    return out


__all__ = ["demo_model_path", "expand_compact", "is_compact"]

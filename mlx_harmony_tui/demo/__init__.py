"""The built-in demo model: a tiny GPT-OSS trained on synthetic Harmony chats (see training/ and
docs/demo-model.md), so the app runs with a real Harmony-speaking model on a fresh machine.

The checkpoint is *compact*: ``model.safetensors`` stores only the embedding and ``lm_head`` rows of the tokens
the training data uses (plus one unknown-word embedding row) and a ``vocab_ids`` index; ``demo/compact.py``
gives the model embedding/head modules over those rows that still take and return full-vocabulary ids and
logits, so the engine sees an ordinary GPT-OSS.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import mlx.core as mx

VOCAB_IDS_KEY = "vocab_ids"


def demo_model_path() -> Path:
    """The folder of the shipped demo model: this package itself holds config.json + model.safetensors
    (package data, so ``pip install`` brings them)."""
    return Path(__file__).parent


def is_compact(weights: dict[str, mx.array]) -> bool:
    return VOCAB_IDS_KEY in weights


__all__ = ["demo_model_path", "is_compact"]

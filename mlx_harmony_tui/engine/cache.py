"""Exact prefix reuse of the per-layer KV caches across generations, and saving/loading them.

The model's ``KVCache`` keeps every position on every layer (sliding-window layers included) and can be
trimmed, so the next prompt only needs the positions after its longest common prefix with what is cached:
turn N of a conversation prefills only the tokens that are new in turn N.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from mlx_harmony_tui.errors import UserError

FORMAT = "mlx-harmony-tui-prompt-cache/1"


class PromptCacheError(UserError):
    """A prompt-cache file that cannot be used (corrupt, wrong format, or made for another model)."""


def model_fingerprint(model: Any, config: Any, model_id: str = "") -> str:
    """Identifies a model's weights well enough to refuse a cache made by another model.

    Hashes the config (shapes, layer types...) and a sample of the first and last parameter arrays, so two
    checkpoints with identical configs but different weights differ too. Cheap: a few KiB are read.
    """
    from mlx.utils import tree_flatten

    h = hashlib.sha256()
    raw = getattr(config, "raw", None) or getattr(config, "__dict__", {})
    h.update(json.dumps(raw, sort_keys=True, default=str).encode())
    try:
        params = tree_flatten(model.parameters())
    except AttributeError:
        params = []
    for name, arr in [*params[:1], *params[-1:]]:
        flat = arr.reshape(-1)[:1024]
        h.update(name.encode())
        h.update(str(arr.shape).encode())
        h.update(np.asarray(flat.astype(mx.float32) if flat.dtype == mx.bfloat16 else flat).tobytes())
    del model_id  # the id is a label only: the same weights under another name are still the same model
    return h.hexdigest()[:32]


class PromptCache:
    """The token ids currently held in the per-layer caches, and the caches themselves.

    Invariant: every layer's ``offset == len(tokens)``; ``tokens[i]`` is the token whose keys/values
    sit at position ``i``.
    """

    def __init__(self, make_cache: Callable[[], list[Any]], fingerprint: str = "") -> None:
        self._make_cache = make_cache
        self.fingerprint = fingerprint
        self.caches: list[Any] = make_cache()
        self.tokens: list[int] = []

    def reset(self) -> None:
        """Forget everything (e.g. after a failure mid-forward left the caches in an unknown state)."""
        self.caches = self._make_cache()
        self.tokens = []

    def common_prefix(self, prompt_ids: Sequence[int]) -> int:
        """Length of the longest common prefix of the cached tokens and ``prompt_ids``."""
        n = min(len(self.tokens), len(prompt_ids))
        if n == 0:
            return 0
        a = np.asarray(self.tokens[:n], dtype=np.int64)
        b = np.asarray(prompt_ids[:n], dtype=np.int64)
        diff = np.flatnonzero(a != b)
        return int(diff[0]) if diff.size else n

    def reusable(self, prompt_ids: Sequence[int]) -> int:
        """How many prompt tokens would be served from the cache (never all: the last one gives logits)."""
        return max(0, min(self.common_prefix(prompt_ids), len(prompt_ids) - 1))

    def prepare(self, prompt_ids: Sequence[int]) -> int:
        """Trim the caches back to the reusable prefix of ``prompt_ids``; returns its length."""
        keep = self.reusable(prompt_ids)
        drop = len(self.tokens) - keep
        if drop > 0:
            for c in self.caches:
                c.trim(drop)
            del self.tokens[keep:]
        return keep

    def extend(self, ids: Sequence[int]) -> None:
        """Record that the keys/values of ``ids`` were appended to every layer."""
        self.tokens.extend(int(t) for t in ids)

    def check(self) -> None:
        """Assert the invariant (cheap; used after each generation)."""
        for c in self.caches:
            if c.offset != len(self.tokens):
                raise RuntimeError(f"prompt cache out of sync: layer offset {c.offset} != {len(self.tokens)} tokens")

    @property
    def nbytes(self) -> int:
        return sum(int(getattr(c, "nbytes", 0)) for c in self.caches)

    # --- persistence ------------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write tokens + keys/values to a safetensors file (atomic: temp file then rename)."""
        path = Path(path)
        arrays: dict[str, mx.array] = {"tokens": mx.array(np.asarray(self.tokens, dtype=np.int32))}
        for i, c in enumerate(self.caches):
            k, v = c.state
            if k is not None and c.offset > 0:
                arrays[f"layer.{i}.keys"] = k
                arrays[f"layer.{i}.values"] = v
        meta = {"format": FORMAT, "fingerprint": self.fingerprint, "num_tokens": str(len(self.tokens)),
                "num_layers": str(len(self.caches))}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.safetensors")
        mx.save_safetensors(str(tmp), arrays, metadata=meta)
        os.replace(tmp, path)

    def load(self, path: str | os.PathLike[str]) -> bool:
        """Replace the cache with the file's content; False if the file does not exist.

        Raises ``PromptCacheError`` for an unreadable file or one made for another model.
        """
        from mlx_harmony_tui.model.cache import KVCache

        path = Path(path)
        if not path.exists():
            return False
        try:
            arrays, meta = mx.load(str(path), return_metadata=True)
        except Exception as e:  # noqa: BLE001 - MLX raises plain RuntimeError/ValueError for bad files
            raise PromptCacheError(f"{path}: not a readable prompt-cache file ({e})") from None
        if not isinstance(arrays, dict) or meta.get("format") != FORMAT or "tokens" not in arrays:
            raise PromptCacheError(f"{path}: not a prompt-cache file of this application")
        if meta.get("fingerprint") != self.fingerprint:
            raise PromptCacheError(f"{path}: this prompt cache was made for another model; not loaded")
        n_layers = int(meta.get("num_layers", -1))
        if n_layers != len(self.caches):
            raise PromptCacheError(f"{path}: cache has {n_layers} layers, model has {len(self.caches)}")
        tokens = [int(t) for t in np.asarray(arrays["tokens"]).tolist()]
        caches: list[Any] = []
        for i in range(n_layers):
            k, v = arrays.get(f"layer.{i}.keys"), arrays.get(f"layer.{i}.values")
            if k is None or v is None:
                if tokens:
                    raise PromptCacheError(f"{path}: layer {i} is missing")
                caches.append(self._make_cache()[i])
                continue
            if k.shape[2] != len(tokens) or v.shape[2] != len(tokens):
                raise PromptCacheError(f"{path}: layer {i} holds {k.shape[2]} positions, expected {len(tokens)}")
            caches.append(KVCache.from_state(k, v))
        mx.eval([c.state for c in caches if c.offset])
        self.caches, self.tokens = caches, tokens
        return True

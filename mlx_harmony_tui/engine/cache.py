"""Exact prefix reuse of the per-layer KV caches across generations, and saving/loading them.

Full-attention layers keep every position; sliding-window layers keep their window plus a rollback margin
(model/cache.py). The next prompt reuses the longest common prefix with the cached tokens: within the
margin every layer just trims; further back (a chat's next turn drops the previous reply's analysis, a
regenerate drops the whole reply) the sliding layers go back to a checkpoint of their window taken at the
end of an earlier prompt, and only the tokens between that checkpoint and the divergence are prefilled
again (``PromptCache.rebuilt``, reported as ``Metrics.reprefilled_tokens``). Without a checkpoint early
enough, the prompt is prefilled from the start. Either way the result is exact.
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
from mlx_harmony_tui.model.kv_quant import KV_MODES

FORMAT = "mlx-harmony-tui-prompt-cache/2"
# Version 1 (every layer held every position, no checkpoints) still loads: its sliding layers are cut
# to what they keep now.
OLD_FORMATS = ("mlx-harmony-tui-prompt-cache/1",)
# Sliding-window checkpoints kept (newest last): one per generation's prompt end, so going back to any
# of the last few prompts (regenerate, edit the last message, next turn) never re-prefills from zero.
MAX_CHECKPOINTS = 8


class PromptCacheError(UserError):
    """A prompt-cache file that cannot be used (corrupt, wrong format, or made for another model)."""


def kv_setting(bits: int | None, mode: str | None) -> tuple[int | None, str | None]:
    """Checked (bits, mode) of the KV cache: (None, None) unquantized; "affine" takes 4 or 8 bits; another
    mode turns quantization on by itself (8 bits unless told 4), "mxfp8" being 8 bits only."""
    if mode is not None and mode not in KV_MODES:
        raise UserError(f"kv_mode must be one of {', '.join(KV_MODES)}, not {mode!r}")
    if bits not in (None, 4, 8):
        raise UserError(f"kv_bits must be 4 or 8 (or unset), not {bits}")
    if mode == "mxfp8" and bits == 4:
        raise UserError("kv_mode mxfp8 is 8 bits a value: use kv_bits = 8 (or leave it unset) with it")
    if mode not in (None, "affine"):
        return bits or 8, mode
    return bits, (mode if bits else None)


def kv_label(bits: int | None, mode: str | None) -> str:
    """How the metrics name a (checked) KV setting: "" unquantized, "8-bit"/"4-bit" affine, "8-bit g128"
    (affine128), "mxfp8"."""
    if not bits:
        return ""
    return {"mxfp8": "mxfp8", "affine128": f"{bits}-bit g128"}.get(mode or "", f"{bits}-bit")


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
    """The token ids currently held in the per-layer caches, the caches themselves, and checkpoints of the
    sliding layers' windows.

    Invariant: every layer's ``offset == len(tokens)``; ``tokens[i]`` is the token whose keys/values
    sit at position ``i``; every checkpoint's position is at most ``len(tokens)``.
    """

    def __init__(self, make_cache: Callable[[], list[Any]], fingerprint: str = "") -> None:
        self._make_cache = make_cache
        self.fingerprint = fingerprint
        self.caches: list[Any] = make_cache()
        self.tokens: list[int] = []
        self.checkpoints: list[tuple[int, dict[int, Any]]] = []  # (position, {layer: SlidingCheckpoint})
        self.rebuilt = 0  # cached prompt tokens the last prepare() had to drop and prefill again

    def reset(self) -> None:
        """Forget everything (e.g. after a failure mid-forward left the caches in an unknown state)."""
        self.caches = self._make_cache()
        self.tokens = []
        self.checkpoints = []

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
        """How many prompt tokens match the cache (never all: the last one gives logits). Going back there
        may still cost a partial re-prefill (see ``prepare``)."""
        return max(0, min(self.common_prefix(prompt_ids), len(prompt_ids) - 1))

    def prepare(self, prompt_ids: Sequence[int]) -> int:
        """Bring the caches back to the reusable prefix of ``prompt_ids``, or to the latest checkpoint
        before it; returns how many prompt tokens are served from the cache. ``rebuilt`` is set to how many
        matching tokens have to be prefilled again."""
        keep = self.reusable(prompt_ids)
        self.rebuilt = 0
        drop = len(self.tokens) - keep
        if drop > 0:
            if all(c.max_trim >= drop for c in self.caches):
                for c in self.caches:
                    c.trim(drop)
            else:
                base = self._back_to_checkpoint(keep)
                self.rebuilt, keep = keep - base, base
            del self.tokens[keep:]
        self.checkpoints = [ck for ck in self.checkpoints if ck[0] <= keep]
        return keep

    def _back_to_checkpoint(self, pos: int) -> int:
        """Restore the latest checkpoint at or before ``pos`` (full layers trimmed to it); returns its
        position, or 0 after a reset when there is none."""
        for at, layers in reversed(self.checkpoints):
            if at <= pos:
                for i, c in enumerate(self.caches):
                    if i in layers:
                        c.restore_checkpoint(layers[i])
                    else:
                        c.trim(c.offset - at)
                return at
        self.caches = self._make_cache()
        self.checkpoints = []
        return 0

    def checkpoint(self) -> list[mx.array]:
        """Checkpoint the sliding layers' windows at the current end (call it at a prompt's end); returns the
        new arrays, to evaluate with the next step."""
        pos = len(self.tokens)
        if pos == 0 or (self.checkpoints and self.checkpoints[-1][0] == pos):
            return []
        layers = {i: c.checkpoint() for i, c in enumerate(self.caches) if hasattr(c, "checkpoint")}
        if not layers:
            return []
        self.checkpoints = [*self.checkpoints, (pos, layers)][-MAX_CHECKPOINTS:]
        return [a for ck in layers.values() for a in (ck.keys, ck.values)]

    def extend(self, ids: Sequence[int]) -> None:
        """Record that the keys/values of ``ids`` were appended to every layer."""
        self.tokens.extend(int(t) for t in ids)

    def check(self) -> None:
        """Assert the invariant (cheap; used after each generation)."""
        for c in self.caches:
            if c.offset != len(self.tokens):
                raise RuntimeError(
                    f"prompt cache out of sync: layer offset {c.offset} != {len(self.tokens)} tokens"
                )

    @property
    def nbytes(self) -> int:
        """KV memory: the layers' buffers and the checkpoints."""
        held = sum(int(getattr(c, "nbytes", 0)) for c in self.caches)
        return held + sum(ck.nbytes for _, layers in self.checkpoints for ck in layers.values())

    # --- persistence ------------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write tokens, keys/values and checkpoints to a safetensors file (atomic: temp file then rename)."""
        path = Path(path)
        arrays: dict[str, mx.array] = {"tokens": mx.array(np.asarray(self.tokens, dtype=np.int32))}
        for i, c in enumerate(self.caches):
            arrays.update({f"layer.{i}.{k}": a for k, a in c.arrays().items()} if c.offset > 0 else {})
        for j, (_, layers) in enumerate(self.checkpoints):
            for i, ck in layers.items():
                arrays[f"ckpt.{j}.layer.{i}.keys"], arrays[f"ckpt.{j}.layer.{i}.values"] = ck.keys, ck.values
        meta = {
            "format": FORMAT,
            "fingerprint": self.fingerprint,
            "num_tokens": str(len(self.tokens)),
            "num_layers": str(len(self.caches)),
            "kv": json.dumps(_kinds(self.caches)),
            "starts": json.dumps([int(getattr(c, "start", 0)) for c in self.caches]),
            "checkpoints": json.dumps([at for at, _ in self.checkpoints]),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.safetensors")
        mx.save_safetensors(str(tmp), arrays, metadata=meta)
        os.replace(tmp, path)

    def load(self, path: str | os.PathLike[str]) -> bool:
        """Replace the cache with the file's content; False if the file does not exist.

        Raises ``PromptCacheError`` (the cache in memory unchanged) for an unreadable file, one made for
        another model or with another KV-cache setting, or one of an unknown format version."""
        path = Path(path)
        if not path.exists():
            return False
        try:
            arrays, meta = mx.load(str(path), return_metadata=True)
        except Exception as e:  # noqa: BLE001 - MLX raises plain RuntimeError/ValueError for bad files
            raise PromptCacheError(f"{path}: not a readable prompt-cache file ({e})") from None
        fmt = meta.get("format", "") if isinstance(arrays, dict) else ""
        if not fmt.startswith("mlx-harmony-tui-prompt-cache/") or "tokens" not in arrays:
            raise PromptCacheError(f"{path}: not a prompt-cache file of this application")
        if fmt != FORMAT and fmt not in OLD_FORMATS:
            raise PromptCacheError(
                f"{path}: prompt-cache format {fmt!r} is newer than this version; not loaded"
            )
        if meta.get("fingerprint") != self.fingerprint:
            raise PromptCacheError(f"{path}: this prompt cache was made for another model; not loaded")
        n_layers = int(meta.get("num_layers", -1))
        if n_layers != len(self.caches):
            raise PromptCacheError(f"{path}: cache has {n_layers} layers, model has {len(self.caches)}")
        try:
            tokens = [int(t) for t in np.asarray(arrays["tokens"]).tolist()]
            caches, checkpoints = self._rebuild(arrays, meta, fmt, len(tokens))
        except (KeyError, ValueError, IndexError, TypeError) as e:
            raise PromptCacheError(f"{path}: damaged prompt-cache file ({e}); not loaded") from None
        mx.eval([c.state for c in caches if c.offset])
        self.caches, self.tokens, self.checkpoints = caches, tokens, checkpoints
        return True

    def _rebuild(
        self, arrays: dict[str, mx.array], meta: dict[str, str], fmt: str, n: int
    ) -> tuple[list[Any], list[tuple[int, dict[int, Any]]]]:
        """The caches and checkpoints a file describes, in fresh cache objects of this engine's kinds."""
        caches = self._make_cache()
        kinds = json.loads(meta["kv"]) if fmt == FORMAT else ["float"] * len(caches)
        if kinds != _kinds(caches) and any(k != "float" for k in (*kinds, *_kinds(caches))):
            raise PromptCacheError(
                f"the prompt cache was saved with KV cache {_describe(kinds)}, the model runs "
                f"with {_describe(_kinds(caches))}; not loaded (it is rebuilt as you chat)"
            )
        starts = json.loads(meta["starts"]) if fmt == FORMAT else [0] * len(caches)
        for i, c in enumerate(caches):
            layer = {k.split(".", 2)[2]: a for k, a in arrays.items() if k.startswith(f"layer.{i}.")}
            if not layer:
                if n:
                    raise ValueError(f"layer {i} is missing")
                continue
            c.restore(layer, int(starts[i]))
            if c.offset != n:
                raise ValueError(f"layer {i} ends at position {c.offset}, expected {n}")
        checkpoints: list[tuple[int, dict[int, Any]]] = []
        if fmt == FORMAT:
            from mlx_harmony_tui.model.cache import SlidingCheckpoint

            for j, at in enumerate(json.loads(meta.get("checkpoints", "[]"))):
                layers = {
                    i: SlidingCheckpoint(
                        int(at), arrays[f"ckpt.{j}.layer.{i}.keys"], arrays[f"ckpt.{j}.layer.{i}.values"]
                    )
                    for i, c in enumerate(caches)
                    if hasattr(c, "checkpoint")
                }
                if int(at) <= n:
                    checkpoints.append((int(at), layers))
        return caches, checkpoints


def _kinds(caches: list[Any]) -> list[str]:
    """Each layer's storage as a file names it: "float", "q8"/"q4" (affine), "affine128-q8", "mxfp8"."""
    return [c.kind if getattr(c, "quantized", False) else "float" for c in caches]


def _word(kind: str) -> str:
    if kind.startswith("q"):
        return f"{kind[1:]}-bit"
    if kind.startswith("affine128-q"):
        return f"{kind.removeprefix('affine128-q')}-bit in groups of 128"
    return kind


def _describe(kinds: list[str]) -> str:
    quant = sorted({k for k in kinds if k != "float"})
    return f"quantized ({', '.join(_word(k) for k in quant)})" if quant else "in full precision"

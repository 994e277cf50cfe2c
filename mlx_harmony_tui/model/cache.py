"""Trimmable KV cache, one per layer.

Sliding-window layers use this same cache holding every position (the attention slices the last
`window - 1 + L` keys), so trimming back into a wrapped window stays exact and prefix reuse across turns
never needs a re-prefill.
"""

from __future__ import annotations

import mlx.core as mx


class KVCache:
    """Keys/values of shape (B, n_kv_heads, T, head_dim), grown in preallocated steps so appends are cheap."""

    step = 256

    def __init__(self) -> None:
        self.keys: mx.array | None = None
        self.values: mx.array | None = None
        self.offset: int = 0

    def update_and_fetch(self, keys: mx.array, values: mx.array, keep: int | None = None) -> tuple[mx.array, mx.array]:
        """Append (B, H, L, D) keys/values at `offset`; return all cached positions including them, or the
        last ``keep`` of them (a sliding window: one slice, not two, per decoded token)."""
        prev = self.offset
        n = keys.shape[2]
        if self.keys is None or prev + n > self.keys.shape[2]:
            B, H, _, Dk = keys.shape
            Dv = values.shape[3]
            grow = ((prev + n + self.step - 1) // self.step) * self.step - prev  # capacity: a multiple of step
            new_k = mx.zeros((B, H, grow, Dk), keys.dtype)
            new_v = mx.zeros((B, H, grow, Dv), values.dtype)
            if self.keys is not None and self.values is not None:
                # Drop stale positions past offset (left there by trim) before extending.
                self.keys = mx.concatenate([self.keys[..., :prev, :], new_k], axis=2)
                self.values = mx.concatenate([self.values[..., :prev, :], new_v], axis=2)
            else:
                self.keys, self.values = new_k, new_v
        assert self.values is not None
        self.offset = prev + n
        self.keys[..., prev : self.offset, :] = keys
        self.values[..., prev : self.offset, :] = values
        start = max(0, self.offset - keep) if keep is not None else 0
        return self.keys[..., start : self.offset, :], self.values[..., start : self.offset, :]

    def trim(self, n: int) -> int:
        """Forget the last n positions (only the offset moves); returns how many were dropped."""
        n = max(0, min(self.offset, n))
        self.offset -= n
        return n

    def is_trimmable(self) -> bool:
        """Always true: every layer keeps every position (what makes exact prefix reuse possible)."""
        return True

    @property
    def state(self) -> tuple[mx.array, mx.array] | tuple[None, None]:
        """The valid keys and values (views up to offset), e.g. for saving a prompt cache."""
        if self.keys is None or self.values is None:
            return None, None
        return self.keys[..., : self.offset, :], self.values[..., : self.offset, :]

    @state.setter
    def state(self, kv: tuple[mx.array, mx.array]) -> None:
        keys, values = kv
        self.keys, self.values = keys, values
        self.offset = 0 if keys is None else keys.shape[2]

    @classmethod
    def from_state(cls, keys: mx.array, values: mx.array) -> KVCache:
        """A cache holding exactly these keys/values (B, H, T, D); the next append reallocates."""
        cache = cls()
        cache.state = (keys, values)
        return cache

    @property
    def nbytes(self) -> int:
        """Bytes held by the buffers (allocated capacity, not only the valid part)."""
        if self.keys is None or self.values is None:
            return 0
        return self.keys.nbytes + self.values.nbytes

    def empty(self) -> bool:
        return self.offset == 0

    def __repr__(self) -> str:
        cap = 0 if self.keys is None else self.keys.shape[2]
        return f"KVCache(offset={self.offset}, capacity={cap})"

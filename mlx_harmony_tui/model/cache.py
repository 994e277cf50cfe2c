"""Per-layer KV caches: full layers keep every position; sliding-window layers keep their window plus a
rollback margin, so a conversation's KV memory grows only with its full-attention layers.

Every cache answers ``max_trim`` (how many of the last positions it can forget exactly). A full layer can
always go back to any position. A sliding layer holding positions ``start..offset`` can go back to any
position ``p`` that still has its ``window - 1`` predecessors, i.e. by up to ``margin`` positions after a
compaction; further back it needs a ``SlidingCheckpoint`` (the window at an earlier position, a few MB
even for gpt-oss-20b) or a re-prefill (engine/cache.py decides, and reports it).
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx

# Positions a sliding layer keeps beyond its window, so the next prompt may diverge up to this many
# tokens before the end of the cached ones and still reuse the cache exactly (docs/architecture.md: what
# a chat's turns roll back). Costs margin x 2 KiB per sliding layer on gpt-oss-20b (0.5 MiB at 256).
DEFAULT_MARGIN = 256


def _round_up(n: int, step: int) -> int:
    return ((n + step - 1) // step) * step


class KVCache:
    """Keys/values of shape (B, n_kv_heads, T, head_dim), grown in preallocated steps so appends are cheap.

    Tail (``use_tail``, set by the CUDA decoder for the layers its kernel reads): one-position appends go
    to a small buffer of ``TAIL`` positions, folded into the main buffers when it is full or before
    anything reads the cache as one array. A slice update of a buffer that a pipelined decode step still
    reads is a copy of the whole buffer (gpt-oss-20b at 16,384 positions: 400 MB a token over its full
    layers; tests/test_kv_tail.py shows it on the CPU): the tail makes that copy 0.5 MB.
    """

    step = 256
    quantized = False
    start = 0  # first position held (full layers hold every position)
    TAIL = 256

    def __init__(self) -> None:
        self.keys: mx.array | None = None
        self.values: mx.array | None = None
        self.offset: int = 0
        self.use_tail = False
        self.tail_keys: mx.array | None = None
        self.tail_values: mx.array | None = None
        self.tail_n = 0  # the last tail_n positions are in the tail buffers, the rest in keys/values
        self.reserve = 0  # capacity to allocate at the next growth at least (a long prefill: one allocation)

    def update(self, keys: mx.array, values: mx.array) -> None:
        """Append (B, H, L, D) keys/values at ``offset``: to the tail (see the class) or to the buffers
        ``self.keys``/``self.values``, which then hold positions ``0..offset - tail_n`` (a CUDA decode kernel
        reads both in place)."""
        if self.use_tail and keys.shape[2] == 1 and keys.shape[0] == 1 and self.keys is not None:
            if self.tail_n == self.TAIL:
                self.fold()
            if self.tail_keys is None or self.tail_values is None or self.tail_keys.dtype != keys.dtype:
                B, H, _, Dk = keys.shape
                self.tail_keys = mx.zeros((B, H, self.TAIL, Dk), keys.dtype)
                self.tail_values = mx.zeros((B, H, self.TAIL, values.shape[3]), values.dtype)
            t = self.tail_n
            self.tail_keys[..., t : t + 1, :] = keys
            self.tail_values[..., t : t + 1, :] = values
            self.tail_n += 1
            self.offset += 1
            return
        self.fold()
        self._append(keys, values)

    def fold(self) -> None:
        """Move the tail's positions into the main buffers."""
        t = self.tail_n
        if not t:
            return
        assert self.tail_keys is not None and self.tail_values is not None
        self.offset -= t
        self.tail_n = 0
        self._append(self.tail_keys[..., :t, :], self.tail_values[..., :t, :])

    def _append(self, keys: mx.array, values: mx.array) -> None:
        prev = self.offset
        n = keys.shape[2]
        if self.keys is None or prev + n > self.keys.shape[2]:
            B, H, _, Dk = keys.shape
            Dv = values.shape[3]
            grow = max(_round_up(prev + n, self.step), self.reserve) - prev  # capacity: a multiple of step
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

    def update_and_fetch(
        self, keys: mx.array, values: mx.array, keep: int | None = None
    ) -> tuple[mx.array, mx.array]:
        """Append (B, H, L, D) keys/values at `offset`; return all cached positions including them, or the
        last ``keep`` of them (a sliding window: one slice, not two, per decoded token)."""
        self.fold()
        self._append(keys, values)
        assert self.keys is not None and self.values is not None
        start = max(0, self.offset - keep) if keep is not None else 0
        return self.keys[..., start : self.offset, :], self.values[..., start : self.offset, :]

    @property
    def max_trim(self) -> int:
        """How many of the last positions can be forgotten exactly: all of them."""
        return self.offset

    def trim(self, n: int) -> int:
        """Forget the last n positions (only the offset moves); returns how many were dropped."""
        self.fold()
        n = max(0, min(self.offset, n))
        self.offset -= n
        return n

    def is_trimmable(self) -> bool:
        return True

    @property
    def state(self) -> tuple[mx.array, mx.array] | tuple[None, None]:
        """The valid keys and values (views up to offset), e.g. for saving a prompt cache."""
        self.fold()
        if self.keys is None or self.values is None:
            return None, None
        return self.keys[..., : self.offset, :], self.values[..., : self.offset, :]

    @state.setter
    def state(self, kv: tuple[mx.array, mx.array]) -> None:
        keys, values = kv
        self.keys, self.values = keys, values
        self.offset = 0 if keys is None else keys.shape[2]
        self.tail_n = 0

    @classmethod
    def from_state(cls, keys: mx.array, values: mx.array) -> KVCache:
        """A cache holding exactly these keys/values (B, H, T, D); the next append reallocates."""
        cache = cls()
        cache.state = (keys, values)
        return cache

    def arrays(self) -> dict[str, mx.array]:
        """What a prompt-cache file stores for this layer (the held positions)."""
        k, v = self.state
        return {} if k is None or v is None or self.offset == 0 else {"keys": k, "values": v}

    def restore(self, arrays: dict[str, mx.array], start: int) -> None:
        """Inverse of ``arrays`` (``start`` is always 0 for a full layer)."""
        del start
        self.state = (arrays["keys"], arrays["values"])

    @property
    def nbytes(self) -> int:
        """Bytes held by the buffers (allocated capacity, not only the valid part)."""
        if self.keys is None or self.values is None:
            return 0
        tail = self.tail_keys.nbytes + self.tail_values.nbytes if self.tail_keys is not None and self.tail_values is not None else 0
        return self.keys.nbytes + self.values.nbytes + tail

    def empty(self) -> bool:
        return self.offset == 0

    def __repr__(self) -> str:
        cap = 0 if self.keys is None else self.keys.shape[2]
        return f"{type(self).__name__}(offset={self.offset}, capacity={cap})"


@dataclass(frozen=True)
class SlidingCheckpoint:
    """A sliding layer's last ``window - 1`` keys/values before position ``pos`` (copies): enough to go on
    from ``pos`` exactly after the cache itself has moved past its margin."""

    pos: int
    keys: mx.array
    values: mx.array

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes


class SlidingKVCache(KVCache):
    """A sliding-window layer's cache: positions ``start..offset``, at most ``window - 1 + margin`` of them
    between appends (plus the appended chunk while it is attended to).

    ``keys[..., i, :]`` is position ``start + i``. The buffer is compacted (the kept positions copied to
    its front) when an append would overflow it, so the allocation stays at about
    ``window - 1 + margin + chunk`` positions rounded up to ``step``.
    """

    def __init__(self, window: int, margin: int = DEFAULT_MARGIN) -> None:
        super().__init__()
        self.window = window
        self.margin = max(0, margin)
        self.start = 0

    @property
    def retain(self) -> int:
        return self.window - 1 + self.margin

    def update(self, keys: mx.array, values: mx.array) -> None:
        n = keys.shape[2]
        held = self.offset - self.start
        if self.keys is None or self.values is None or held + n > self.keys.shape[2]:
            B, H, _, Dk = keys.shape
            Dv = values.shape[3]
            kept = min(held, self.retain)
            cap = _round_up(kept + n, self.step)
            new_k = mx.zeros((B, H, cap, Dk), keys.dtype)
            new_v = mx.zeros((B, H, cap, Dv), values.dtype)
            if kept and self.keys is not None and self.values is not None:
                new_k[..., :kept, :] = self.keys[..., held - kept : held, :]
                new_v[..., :kept, :] = self.values[..., held - kept : held, :]
            self.keys, self.values = new_k, new_v
            self.start = self.offset - kept
            held = kept
        self.keys[..., held : held + n, :] = keys
        self.values[..., held : held + n, :] = values
        self.offset += n

    def update_and_fetch(
        self, keys: mx.array, values: mx.array, keep: int | None = None
    ) -> tuple[mx.array, mx.array]:
        """Append; return the held positions, or the last ``keep`` of them."""
        self.update(keys, values)
        assert self.keys is not None and self.values is not None
        held = self.offset - self.start
        lo = max(0, held - keep) if keep is not None else 0
        return self.keys[..., lo:held, :], self.values[..., lo:held, :]

    @property
    def max_trim(self) -> int:
        """Everything while nothing was dropped; else as far back as the window stays complete."""
        if self.start == 0:
            return self.offset
        return max(0, self.offset - self.start - (self.window - 1))

    def trim(self, n: int) -> int:
        """Forget the last n positions; forgetting all of them empties the cache. Raises ValueError beyond
        ``max_trim`` otherwise (the dropped window cannot be recomputed here)."""
        n = max(0, min(self.offset, n))
        if n == self.offset:
            self.keys = self.values = None
            self.offset = self.start = 0
            return n
        if n > self.max_trim:
            raise ValueError(f"sliding cache can go back {self.max_trim} positions, not {n}")
        self.offset -= n
        return n

    @property
    def state(self) -> tuple[mx.array, mx.array] | tuple[None, None]:
        if self.keys is None or self.values is None:
            return None, None
        held = self.offset - self.start
        return self.keys[..., :held, :], self.values[..., :held, :]

    @state.setter
    def state(self, kv: tuple[mx.array, mx.array]) -> None:  # positions 0..T, as KVCache.from_state
        self.keys, self.values = kv
        self.offset = 0 if self.keys is None else self.keys.shape[2]
        self.start = 0

    def restore(self, arrays: dict[str, mx.array], start: int) -> None:
        """Hold ``arrays``' keys/values as positions ``start..start + T``; only the last ``window - 1 +
        margin`` of them are kept (a file written before sliding caches were bounded holds all)."""
        k, v = arrays["keys"], arrays["values"]
        t = k.shape[2]
        drop = max(0, t - self.retain)
        if drop:  # copies, so the file's full arrays are freed
            k, v = mx.array(k[..., drop:, :]), mx.array(v[..., drop:, :])
        self.keys, self.values = k, v
        self.start, self.offset = start + drop, start + t

    def checkpoint(self) -> SlidingCheckpoint:
        """The window needed to go on from ``offset``, copied (the buffer itself changes on every append)."""
        k, v = self.state
        if k is None or v is None:
            raise ValueError("nothing to checkpoint")
        held = k.shape[2]
        lo = max(0, held - (self.window - 1))
        return SlidingCheckpoint(self.offset, mx.array(k[..., lo:, :]), mx.array(v[..., lo:, :]))

    def restore_checkpoint(self, ck: SlidingCheckpoint) -> None:
        """Go back to ``ck.pos`` (earlier than anything ``trim`` can reach)."""
        t = ck.keys.shape[2]
        self.keys, self.values = ck.keys, ck.values
        self.start, self.offset = ck.pos - t, ck.pos

    def __repr__(self) -> str:
        cap = 0 if self.keys is None else self.keys.shape[2]
        return (
            f"SlidingKVCache(start={self.start}, offset={self.offset}, capacity={cap}, window={self.window})"
        )

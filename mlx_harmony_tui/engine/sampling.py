"""Sampling parameters and the on-device sampler.

Order of operations (one step, all in MLX on the device, no host round trip except reading the token):

1. repetition penalty over the last ``repetition_context`` tokens (prompt tail + generated), CTRL style:
   positive logits are divided by the penalty, negative ones multiplied. Harmony/special tokens
   (ids >= ``FIRST_SPECIAL_ID``) are never penalised: they repeat in every message by design.
2. logit bias (added to the logits; +100 forces a token, -100 bans it).
2b. a token mask (a constraint's allowed tokens, one bit per token id; see engine/constraint.py): every
   other token gets -inf. The log-probabilities a client asks for are taken here, from exactly these logits.
3. temperature 0 -> greedy argmax (steps 4-7 are skipped).
4. temperature scaling (logits / T); log-softmax only when top_p needs real probabilities.
5. top_k (keep the k most likely; 0 = off).
6. top_p (keep the smallest set whose probability mass reaches p; 1.0 = off).
7. min_p (drop tokens whose probability is below min_p x the top probability; 0 = off).
8. categorical sample with a per-generation key (``mx.random.key(seed)``, split every step), so a seed
   reproduces a generation regardless of what other threads do with MLX's global random state.

Defaults follow the GPT-OSS model card: temperature 1.0, top_p 1.0, everything else off.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx

# o200k_base's ordinary tokens end below this id; Harmony's control tokens (<|start|>, <|channel|>...) follow.
FIRST_SPECIAL_ID = 199998


@dataclass
class SamplingParams:
    """Defaults follow the GPT-OSS model card: temperature 1.0, top_p 1.0, nothing else on."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    min_p: float = 0.0  # 0 = off
    repetition_penalty: float = 1.0  # 1 = off
    repetition_context: int = 64
    logit_bias: dict[int, float] = field(default_factory=dict)


def _apply_top_k(logprobs: mx.array, k: int) -> mx.array:
    vocab = logprobs.shape[-1]
    if k >= vocab:
        return logprobs
    # The k-th largest value is the threshold; ties at the threshold are kept (harmless, deterministic).
    kth = mx.min(mx.topk(logprobs, k, axis=-1), axis=-1, keepdims=True)
    return mx.where(logprobs >= kth, logprobs, -mx.inf)


def _apply_top_p(logprobs: mx.array, p: float) -> mx.array:
    order = mx.argsort(-logprobs, axis=-1)
    sorted_lp = mx.take_along_axis(logprobs, order, axis=-1)
    probs = mx.exp(sorted_lp)
    cum = mx.cumsum(probs, axis=-1)
    # Keep a token if the mass *before* it is still below p (so the top token is always kept).
    keep_sorted = (cum - probs) < p
    threshold = mx.min(mx.where(keep_sorted, sorted_lp, mx.inf), axis=-1, keepdims=True)
    return mx.where(logprobs >= threshold, logprobs, -mx.inf)


def _apply_min_p(logprobs: mx.array, min_p: float) -> mx.array:
    top = mx.max(logprobs, axis=-1, keepdims=True)
    return mx.where(logprobs >= top + math.log(min_p), logprobs, -mx.inf)


_COMPILED: dict[tuple[object, ...], Callable[..., mx.array]] = {}


class Sampler:
    """Turns the last position's logits into the next token, entirely on device.

    One instance per generation: it owns the random key and the repetition window, both MLX arrays
    updated lazily each step, so sampling adds no host sync and no per-token work that grows with context.
    """

    def __init__(self, params: SamplingParams, vocab_size: int, seed: int | None = None,
                 history: list[int] | None = None, masked: bool = False, logprobs: bool = False) -> None:
        self.params = params
        self.vocab_size = vocab_size
        self._masked = masked
        self._want_logprobs = logprobs
        self.last_logprobs: mx.array | None = None  # the last call's log-softmax row (lazy), with logprobs=True
        self._full_mask: mx.array | None = None
        if params.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if seed is None:
            seed = int.from_bytes(os.urandom(4), "little")
        self._key = mx.random.key(seed)
        self._penalty = params.repetition_penalty != 1.0 and params.repetition_context > 0
        self._history: mx.array | None = None
        if self._penalty:
            n = params.repetition_context
            tail = list(history or [])[-n:]
            # Fixed-size window padded with -1 (ignored), so shapes never change between steps.
            padded = [-1] * (n - len(tail)) + tail
            self._history = mx.array(padded, dtype=mx.int32)
        bias = {int(k): float(v) for k, v in params.logit_bias.items() if 0 <= int(k) < vocab_size}
        self._bias_idx = mx.array(list(bias), dtype=mx.int32) if bias else None
        self._bias_val = mx.array(list(bias.values()), dtype=mx.float32) if bias else None
        self._greedy = params.temperature == 0
        sig = (params.temperature, params.top_k, params.top_p, params.min_p, params.repetition_penalty,
               self._penalty, self._bias_idx is not None, vocab_size, masked, logprobs)
        fn = _COMPILED.get(sig)
        if fn is None:  # compiled once per distinct setting, not per generation (tracing costs TTFT)
            fn = _COMPILED[sig] = self._build()
        self._fn = fn

    def _build(self) -> Callable[..., Any]:
        p = self.params
        penalty = float(p.repetition_penalty)
        greedy = self._greedy
        inv_t = 1.0 / p.temperature if not greedy else 1.0
        top_k = int(p.top_k)
        top_p = float(p.top_p)
        min_p = float(p.min_p)
        use_pen = self._penalty
        use_bias = self._bias_idx is not None
        use_mask = self._masked
        want_lp = self._want_logprobs
        limit = min(FIRST_SPECIAL_ID, self.vocab_size)

        def _draw(logits: mx.array, key: mx.array) -> mx.array:
            if greedy:
                return mx.argmax(logits, axis=-1).astype(mx.int32)
            logprobs = logits * inv_t if inv_t != 1.0 else logits
            if 0.0 < top_p < 1.0:  # only top_p needs normalised probabilities; the rest is shift-invariant
                logprobs = logprobs - mx.logsumexp(logprobs, axis=-1, keepdims=True)
            if top_k > 0:
                logprobs = _apply_top_k(logprobs, top_k)
            if 0.0 < top_p < 1.0:
                logprobs = _apply_top_p(logprobs, top_p)
            if min_p > 0.0:
                logprobs = _apply_min_p(logprobs, min_p)
            return mx.random.categorical(logprobs, axis=-1, key=key).astype(mx.int32)

        def step(logits: mx.array, key: mx.array, history: mx.array, bias_idx: mx.array,
                 bias_val: mx.array, mask: mx.array) -> mx.array | tuple[mx.array, mx.array]:
            logits = logits.astype(mx.float32)
            if use_pen:
                valid = (history >= 0) & (history < limit)
                ids = mx.where(valid, history, 0)
                # A presence mask (max-scatter) is immune to duplicate ids in the window.
                seen = mx.zeros((logits.shape[-1],), dtype=mx.float32).at[ids].maximum(valid.astype(mx.float32))
                penalised = mx.where(logits > 0, logits / penalty, logits * penalty)
                logits = mx.where(seen > 0, penalised, logits)
            if use_bias:
                logits = logits.at[:, bias_idx].add(bias_val)  # ids are unique (dict keys)
            if use_mask:
                vocab = logits.shape[-1]
                bits = mx.right_shift(mask[:, None], mx.arange(32, dtype=mx.int32)[None, :]) & 1
                logits = mx.where(bits.reshape(1, -1)[:, :vocab] > 0, logits, -mx.inf)
            lp = logits - mx.logsumexp(logits, axis=-1, keepdims=True) if want_lp else None
            tok = _draw(logits, key)
            return (tok, lp) if lp is not None else tok

        return mx.compile(step)

    def __call__(self, logits: mx.array, mask: mx.array | None = None) -> mx.array:
        """logits: (vocab,) or (1, vocab) -> token id array of shape (1,), lazy. ``mask``: int32 words, bit
        ``i % 32`` of word ``i // 32`` set for each allowed token (a sampler made with masked=True; None
        allows every token). With logprobs=True, ``last_logprobs`` then holds this step's log-softmax row."""
        if logits.ndim == 1:
            logits = logits[None]
        if self._greedy:
            sub = self._key
        else:
            self._key, sub = mx.random.split(self._key)
        empty = mx.zeros((1,), dtype=mx.int32)
        if self._masked and mask is None:
            if self._full_mask is None:
                self._full_mask = mx.full(((logits.shape[-1] + 31) // 32,), -1, dtype=mx.int32)
            mask = self._full_mask
        out = self._fn(
            logits,
            sub,
            self._history if self._history is not None else empty,
            self._bias_idx if self._bias_idx is not None else empty,
            self._bias_val if self._bias_val is not None else empty.astype(mx.float32),
            mask if self._masked else empty,
        )
        if self._want_logprobs:
            tok, self.last_logprobs = out[0], out[1][0]
        else:
            tok = out
        tok = tok.reshape(1)
        if self._history is not None:
            self._history = mx.concatenate([self._history[1:], tok])
        return tok


"""Streaming generation: prefix reuse, chunked prefill, pipelined decode, stop/cancel/loop handling.

Decode is pipelined with ``mx.async_eval``: the graph for token n+1 is built and queued before the host
reads token n, so the device never idles waiting for Python and the host only syncs on the token id.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

import mlx.core as mx

from mlx_harmony_tui.engine.cache import PromptCache, kv_label, kv_setting, model_fingerprint
from mlx_harmony_tui.engine.constraint import LogprobCallback, TokenConstraint, TokenLogprob
from mlx_harmony_tui.engine.metrics import Metrics, MetricsTracker, PrefillProgress
from mlx_harmony_tui.engine.repetition import LoopConfig, LoopDetector
from mlx_harmony_tui.engine.sampling import Sampler, SamplingParams
from mlx_harmony_tui.errors import UserError

HARMONY_STOP_IDS = frozenset({200002, 200012})  # <|return|>, <|call|>

FinishReason = Literal["stop", "length", "cancelled", "loop"]
ProgressCallback = Callable[[Metrics | PrefillProgress], None]


class ContextTooLongError(UserError):
    """The prompt does not fit the model's context window."""


def default_prefill_step() -> int:
    """Prompt tokens a prefill chunk takes: 2048 on CUDA, where a chunk's MoE and attention run as large
    matmuls (random gpt-oss-20b on an H200, 16,384-token prompt: 1,434 -> 5,933 tok/s against 512;
    docs/benchmarks.md), 512 elsewhere (CPU and Metal: bounded attention working memory, measured there)."""
    from mlx_harmony_tui.model.cuda_moe import cuda_available

    return 2048 if cuda_available() else 512


@dataclass
class GenerationOptions:
    sampling: SamplingParams = field(default_factory=SamplingParams)
    max_tokens: int = 4096
    stop_ids: frozenset[int] = HARMONY_STOP_IDS
    seed: int | None = None
    prefill_step: int | None = None  # prompt tokens per prefill chunk; None: the engine's (Engine.prefill_step)
    loop: LoopConfig | None = field(default_factory=LoopConfig)
    constraint: TokenConstraint | None = None  # masks the logits of every step (structured output)
    on_logprob: LogprobCallback | None = None  # called with each token's log-probability before it is yielded
    top_logprobs: int = 0  # alternatives per token given to on_logprob


@dataclass
class GenerationResult:
    finish_reason: FinishReason
    metrics: Metrics
    tokens: list[int]
    detail: str = ""


class Engine:
    """Runs one model; one generation at a time (a lock), callable from any thread."""

    def __init__(self, model: Any, config: Any, *, model_id: str = "", optimize: bool = True,
                 kv_bits: int | None = None, kv_margin: int | None = None, kv_mode: str | None = None,
                 prefill_step: int | None = None) -> None:
        """``kv_bits``: quantize the full-attention layers' KV cache to 8 or 4 bits (None: the model's
        dtype; model/kv_quant.py); ``kv_mode``: "affine" (the default) or "mxfp8" (8 bits, smaller scales;
        implies ``kv_bits`` 8). ``kv_margin``: positions sliding layers keep beyond their window (None:
        model/cache.py's default). ``prefill_step``: prompt tokens per prefill chunk when a request does
        not say (None: default_prefill_step(); the config key ``prefill_step``)."""
        if optimize and getattr(model, "decoder", False) is None and hasattr(model, "optimize"):
            model.optimize()  # fused QKV + compiled one-token step (model/fast.py)
        self.model = model
        self.config = config
        self.model_id = model_id
        self.vocab_size = int(getattr(config, "vocab_size", 0))
        self.context_limit = int(getattr(config, "max_position_embeddings", 0) or 0)
        kv_bits, kv_mode = kv_setting(kv_bits, kv_mode)
        self.kv_bits, self.kv_mode = kv_bits, kv_mode
        self.prefill_step = max(1, int(prefill_step)) if prefill_step else default_prefill_step()
        kw = {k: v for k, v in (("kv_bits", kv_bits), ("margin", kv_margin), ("kv_mode", kv_mode)) if v is not None}
        make_cache = partial(model.make_cache, **kw) if kw else model.make_cache
        self.make_cache = make_cache  # also for the per-request caches of continuous batching (engine/batch.py)
        self.prompt_cache = PromptCache(make_cache, model_fingerprint(model, config, model_id))
        self.last_result: GenerationResult | None = None
        self._lock = threading.Lock()
        try:
            self._last_only = "last_only" in inspect.signature(model.__call__).parameters
        except (TypeError, ValueError):
            self._last_only = False
        # A dedicated stream keeps generation work apart from other device work; MLX streams belong to a
        # thread, so use a thread-local one (generate may run on any thread).
        new_tls = getattr(mx, "new_thread_local_stream", None)
        self._stream = new_tls(mx.default_device()) if new_tls else None

    # --- public helpers ---------------------------------------------------------------------------------

    def warm_up(self) -> None:
        """Trace the model's compiled decode step on the calling thread (MLX keeps compiled graphs per
        thread), so the first token of the first turn does not pay for it."""
        decoder = getattr(self.model, "decoder", None)
        if decoder is not None:
            with self._lock, (mx.stream(self._stream) if self._stream is not None else contextlib.nullcontext()):
                decoder.warm_up()

    def count_cached(self, prompt_ids: list[int]) -> int:
        """How many tokens of ``prompt_ids`` the next generation would reuse from the cache."""
        return self.prompt_cache.reusable(prompt_ids)

    def save_cache(self, path: str) -> None:
        with self._lock:
            self.prompt_cache.save(path)

    def load_cache(self, path: str) -> bool:
        with self._lock:
            return self.prompt_cache.load(path)

    # --- generation -------------------------------------------------------------------------------------

    def _logits(self, ids: list[int], caches: list[Any] | None = None) -> mx.array:
        """Forward ``ids`` through the cached model (``caches``: default the prompt cache's); logits of the
        last position, shape (1, vocab)."""
        inputs = mx.array([ids], dtype=mx.int32)
        caches = self.prompt_cache.caches if caches is None else caches
        if self._last_only:
            out = self.model(inputs, cache=caches, last_only=True)
        else:
            out = self.model(inputs, cache=caches)
        return out[:, -1, :]

    def step_for(self, options: GenerationOptions) -> int:
        """Prompt tokens per prefill chunk for a request: its own, else the engine's."""
        return max(1, int(options.prefill_step or self.prefill_step))

    def checked_prompt(self, prompt_ids: list[int]) -> list[int]:
        """The prompt as ints; empty or too long for the context is an error before anything runs."""
        prompt = [int(t) for t in prompt_ids]
        if not prompt:
            raise ValueError("generate() needs at least one prompt token")
        if self.context_limit and len(prompt) >= self.context_limit:
            raise ContextTooLongError(
                f"the prompt has {len(prompt)} tokens; the model's context holds {self.context_limit}"
            )
        return prompt

    def generate(
        self,
        prompt_ids: list[int],
        options: GenerationOptions | None = None,
        cancel: threading.Event | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> Iterator[int]:
        """Yields generated token ids; a stop token is yielded last (so the Harmony parser sees it).

        Afterwards ``self.last_result`` is set. Holds a lock: one generation at a time.
        """
        options = options or GenerationOptions()
        prompt = self.checked_prompt(prompt_ids)
        with self._lock, (mx.stream(self._stream) if self._stream is not None else contextlib.nullcontext()):
            yield from self._generate(prompt, options, cancel or threading.Event(), on_progress)

    def _generate(
        self, prompt: list[int], opt: GenerationOptions, cancel: threading.Event, on_progress: ProgressCallback | None
    ) -> Iterator[int]:
        pc = self.prompt_cache
        reused = pc.prepare(prompt)
        tracker = MetricsTracker(
            len(prompt), reused, self.context_limit, pc.rebuilt, lambda: pc.nbytes, kv_label(self.kv_bits, self.kv_mode)
        )
        generated: list[int] = []
        reason: FinishReason = "length"
        detail = ""
        max_tokens = opt.max_tokens
        if self.context_limit:
            max_tokens = min(max_tokens, self.context_limit - len(prompt))
        try:
            rest = prompt[reused:]
            total = len(rest)
            step = self.step_for(opt)
            reserve_prefill(pc.caches, total, step, max_tokens)
            # Prefill all but the last token in chunks; eval each chunk's keys/values and drop the rest of
            # its graph (the logits are never computed), so peak memory is bounded by one chunk.
            done = 0
            while total - done > 1:
                if self._agree_stop(cancel.is_set()):
                    reason = "cancelled"
                    return
                chunk = rest[done : min(done + step, total - 1)]
                self._logits(chunk)  # builds the graph; only the caches are evaluated below
                mx.eval([c.state for c in pc.caches])
                pc.extend(chunk)
                done += len(chunk)
                mx.clear_cache()
                if on_progress is not None and total > step:
                    on_progress(PrefillProgress(done, total))
            if max_tokens <= 0:
                return
            constraint = opt.constraint
            sampler = Sampler(opt.sampling, self.vocab_size or 1 << 30, opt.seed, history=prompt,
                              masked=constraint is not None, logprobs=opt.on_logprob is not None)
            detector = LoopDetector(opt.loop) if opt.loop is not None else None
            stop_ids = opt.stop_ids

            def draw(logits: mx.array) -> tuple[mx.array, Any]:
                mask = constraint.allowed() if constraint is not None else None
                tok = self._share(sampler(logits, None if mask is None else mx.array(mask)), cancel)
                extra = self._top(sampler.last_logprobs, tok, opt.top_logprobs) if opt.on_logprob else None
                mx.async_eval(tok, *(extra or ()))
                return tok, extra

            # The last prompt token gives the first logits.
            y, y_lp = draw(self._logits(rest[-1:]))
            pc.extend(rest[-1:])
            mx.async_eval(y, *pc.checkpoint())  # the sliding windows at the prompt's end (engine/cache.py)
            while True:
                n = len(generated)
                feed_next = n + 1 < max_tokens
                if feed_next:
                    # Queue token n+1 before reading token n: the host never waits on the device in between.
                    # A constraint needs token n before it can mask n+1: then only the forward pass is
                    # queued ahead, and the (cheap) masked draw follows the read.
                    next_logits = self._logits_from(y)
                    if constraint is None:
                        next_y, next_lp = draw(next_logits)
                    else:
                        mx.async_eval(next_logits)
                tok = int(y.item())
                if tok < 0:  # a stop marker shared by the first rank (engine/distributed.py)
                    reason = "cancelled"
                    return
                if constraint is not None:
                    constraint.accept(tok)
                if y_lp is not None and opt.on_logprob is not None:
                    opt.on_logprob(_logprob(tok, y_lp))
                if n == 0:
                    tracker.prefill_done()
                    if on_progress is not None and total > step:
                        on_progress(PrefillProgress(total, total))
                if feed_next:
                    pc.extend((tok,))
                tracker.token()
                generated.append(tok)
                yield tok
                if tok in stop_ids:
                    reason = "stop"
                    return
                if detector is not None:
                    found = detector.feed(tok)
                    if found:
                        reason, detail = "loop", found
                        return
                if not feed_next:
                    reason = "length"
                    return
                if cancel.is_set() and not self.stops_by_token:
                    reason = "cancelled"
                    return
                if on_progress is not None and tracker.due():
                    on_progress(tracker.snapshot())
                if constraint is not None:
                    next_y, next_lp = draw(next_logits)
                y, y_lp = next_y, next_lp
        except GeneratorExit:
            reason = "cancelled"
            raise
        except BaseException:
            pc.reset()  # a failure mid-forward leaves the caches in an unknown state
            reason, detail = "cancelled", "error"
            raise
        finally:
            if pc.caches and pc.caches[0].offset != len(pc.tokens):
                pc.reset()
            else:
                # Materialise the in-flight step (at most one token) so the cache is complete before
                # another thread, stream or a save touches it.
                with contextlib.suppress(Exception):
                    mx.eval([c.state for c in pc.caches if c.offset])
            final = tracker.snapshot(final=True)
            self.last_result = GenerationResult(reason, final, generated, detail)
            if on_progress is not None:
                try:
                    on_progress(final)
                except Exception:  # noqa: BLE001 - a failing callback must not mask the generation's outcome
                    pass

    # --- hooks for generation over several ranks (engine/distributed.py) ------------------------------

    stops_by_token = False  # True: a cancel travels inside the token stream (see _share), not by returning

    def _share(self, y: mx.array, cancel: threading.Event) -> mx.array:
        """The sampled token as every rank uses it (one process: itself)."""
        return y

    def _agree_stop(self, stop: bool) -> bool:
        """Whether every rank stops the prefill here (one process: this one's wish)."""
        return stop

    @staticmethod
    def _top(row: mx.array | None, tok: mx.array, k: int) -> tuple[mx.array, ...] | None:
        """The chosen token's log-probability and the k best (ids, values), lazily, from a log-softmax row."""
        if row is None:
            return None
        chosen = row[tok.reshape(())]
        if k <= 0:
            return (chosen,)
        ids = mx.argpartition(-row, kth=k - 1)[:k]
        vals = row[ids]
        order = mx.argsort(-vals)
        return chosen, ids[order], vals[order]

    def _logits_from(self, y: mx.array, caches: list[Any] | None = None) -> mx.array:
        """Like ``_logits`` for a token still on the device (no host sync to read it first)."""
        inputs = y.reshape(1, 1)
        caches = self.prompt_cache.caches if caches is None else caches
        if self._last_only:
            return self.model(inputs, cache=caches, last_only=True)[:, -1, :]
        return self.model(inputs, cache=caches)[:, -1, :]


def reserve_prefill(caches: list[Any], total: int, step: int, max_tokens: int) -> None:
    """Before a chunked prefill of ``total`` new positions: each full layer allocates its buffers once, not
    chunk by chunk (each growth copies the whole buffer beside the new one), with room for the first
    generated tokens (growing right after the prefill copied it all too: the tiny model's peak at 32,768
    tokens 122.4 -> 125.4 MiB). A prompt that fits one chunk grows once anyway."""
    if total > step:
        for c in caches:
            c.reserve = c.offset + total + min(max(0, max_tokens), 256)


def _logprob(tok: int, extra: tuple[mx.array, ...]) -> TokenLogprob:
    """Host values; tokens a mask ruled out (-inf) are no alternatives, and -inf itself is not JSON (-9999,
    as OpenAI writes it)."""
    chosen = float(extra[0].item())
    top: tuple[tuple[int, float], ...] = ()
    if len(extra) == 3:
        top = tuple((t, v) for t, v in zip(extra[1].tolist(), extra[2].tolist(), strict=True) if math.isfinite(v))
    return TokenLogprob(tok, chosen if math.isfinite(chosen) else -9999.0, top)

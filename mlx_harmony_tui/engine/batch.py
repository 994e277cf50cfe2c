"""Continuous batching: concurrent generations decode together, one batched step for all of them.

Each request keeps everything that is its own: a slot's prompt cache (reused across the requests that land in
that slot, like the engine's one cache for a single user), its sampler and seed, stop ids, max tokens, loop
detector, constraint and logprobs. Only the forward pass of a decode step is shared (model/batch.py). The
scheduler runs on the model's thread as a chain of short jobs (``tick``): each admits waiting requests into
free slots and prefills them alone, as the engine does (a chunk per tick while others are decoding), runs
one step for every request past its prefill, hands each its token, and drops the ones that finished, were
cancelled or whose reader went away; then it queues itself again. Other jobs on that thread (raw
completions, cache files) run between two ticks.

The per-request face is ``BatchedEngine``: ``generate`` has the Engine's signature and contract, so the turn
pipeline (chat/turn.py) runs unchanged on its own thread and reads tokens from a queue.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx

from mlx_harmony_tui.engine.cache import PromptCache
from mlx_harmony_tui.engine.generator import (
    Engine,
    FinishReason,
    GenerationOptions,
    GenerationResult,
    ProgressCallback,
    _logprob,
    reserve_prefill,
)
from mlx_harmony_tui.engine.metrics import MetricsTracker, PrefillProgress
from mlx_harmony_tui.engine.repetition import LoopDetector
from mlx_harmony_tui.engine.sampling import Sampler

DEFAULT_MAX_CONCURRENCY = 4


@dataclass
class _Seq:
    """One request inside the scheduler (touched by the model's thread only, but ``dropped``)."""

    prompt: list[int]
    options: GenerationOptions
    cancel: threading.Event
    progress: bool
    out: queue.SimpleQueue[tuple[str, Any]] = field(default_factory=queue.SimpleQueue)
    dropped: bool = False  # the reader went away (client disconnect, closed generator)
    slot: int = -1
    generated: list[int] = field(default_factory=list)
    next_id: int | None = None  # a token known on the host that the next step feeds (after the prefill)
    y: mx.array | None = None  # the token drawn by the step in flight, not read yet (the next step feeds it)
    y_extra: Any = None  # its logprobs, when asked for
    held: mx.array | None = None  # a constrained row's logits, drawn once the token before is accepted
    tracker: MetricsTracker | None = None
    sampler: Sampler | None = None
    detector: LoopDetector | None = None
    max_tokens: int = 0
    total: int = 0
    rest: list[int] = field(default_factory=list)  # the prompt beyond the slot's reused prefix
    done: int = 0  # of ``rest``, prefilled
    prefilling: bool = False  # admitted, its first token not drawn yet
    admitted: int = 0  # admission order (prefills run first come, first served)

    @property
    def stopped(self) -> bool:
        return self.dropped or self.cancel.is_set()


class BatchScheduler:
    """Admits requests into at most ``max_concurrency`` slots and decodes the active ones together.

    ``kv_budget``: bytes of KV cache all slots may hold together; idle slots are emptied first, and a request
    waits while the active ones alone are over it. ``submit`` runs a job on the model's thread."""

    def __init__(
        self,
        engine: Engine,
        submit: Callable[[Callable[[], None]], None],
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        kv_budget: int | None = None,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self.engine = engine
        self.max_concurrency = max_concurrency
        self.kv_budget = kv_budget
        self._submit = submit
        self._slots: list[PromptCache | None] = [None] * max_concurrency  # made on first use
        self._busy: list[_Seq | None] = [None] * max_concurrency
        self._pending: queue.SimpleQueue[_Seq] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._running = False
        self.steps = 0  # batched steps run, the rows they carried, the most at once, requests cancelled
        self.rows = 0
        self.widest = 0
        self.cancelled = 0
        self.admissions = 0

    # --- any thread ---------------------------------------------------------------------------------------

    def add(self, seq: _Seq) -> None:
        self._pending.put(seq)
        with self._lock:
            if self._running:
                return
            self._running = True
        self._submit(self.tick)

    @property
    def active(self) -> int:
        return sum(s is not None for s in self._busy)

    # --- the model's thread -------------------------------------------------------------------------------

    def warm_up(self) -> None:
        """Trace the batched step for every batch size now (scratch caches), not in the first busy moment:
        the compiled graphs are traced per shape (model/fast.py)."""
        from mlx_harmony_tui.model.batch import decode_batch

        stream = self.engine._stream
        with mx.stream(stream) if stream is not None else contextlib.nullcontext():
            for b in range(2, self.max_concurrency + 1):
                caches = [self.engine.make_cache() for _ in range(b)]
                mx.eval(decode_batch(self.engine.model, mx.zeros((b,), dtype=mx.int32), caches))

    def tick(self) -> None:
        """Admit, step once, queue the next tick while there is work."""
        stream = self.engine._stream
        try:
            with mx.stream(stream) if stream is not None else contextlib.nullcontext():
                self._admit()
                self._prefill()
                self._step()
        except BaseException as e:  # noqa: BLE001 - every request learns of the failure; the thread lives on
            for i, s in enumerate(self._busy):
                if s is not None:
                    self._slot(i).reset()  # a failure mid-forward leaves the caches in an unknown state
                    self._finish(s, "cancelled", "error", error=e)
        finally:
            with self._lock:
                more = self.active > 0 or not self._pending.empty()
                self._running = more
            if more:
                self._submit(self.tick)

    def _slot(self, i: int) -> PromptCache:
        pc = self._slots[i]
        if pc is None:
            pc = self._slots[i] = PromptCache(self.engine.make_cache, self.engine.prompt_cache.fingerprint)
        return pc

    def _admit(self) -> None:
        """Move waiting requests into free slots: the slot whose cache shares the longest prefix with the
        prompt (a user's next turn finds its conversation), else the emptiest."""
        while not self._pending.empty():
            free = [i for i, s in enumerate(self._busy) if s is None]
            if not free or (
                self.kv_budget is not None and any(s is not None and s.prefilling for s in self._busy)
            ):
                return  # under a KV budget, the next one waits until the last one's cache has its size
            seq = self._pending.get()
            if seq.stopped:
                self._finish(seq, "cancelled")
                continue
            best = max(
                free,
                key=lambda i: (
                    self._slots[i] is not None and self._slots[i].reusable(seq.prompt),
                    -(self._slots[i].nbytes if self._slots[i] is not None else 0),
                ),
            )
            if not self._fits(best):
                self._pending.put(seq)  # back in line (behind the others: they wait for memory too)
                return
            seq.slot = best
            self._busy[best] = seq
            self.admissions += 1
            seq.admitted = self.admissions
            try:
                self._start(seq)
            except BaseException as e:  # noqa: BLE001 - this request fails alone
                self._slot(best).reset()
                self._finish(seq, "cancelled", "error", error=e)

    def _fits(self, slot: int) -> bool:
        """Whether the KV budget leaves room: idle slots' caches (other than ``slot``) are emptied first."""
        if self.kv_budget is None:
            return True
        held = lambda: sum(pc.nbytes for pc in self._slots if pc is not None)  # noqa: E731
        for i, pc in enumerate(self._slots):
            if held() <= self.kv_budget:
                break
            if pc is not None and self._busy[i] is None and i != slot:
                self._slots[i] = None
        active = sum(
            pc.nbytes for i, pc in enumerate(self._slots) if pc is not None and self._busy[i] is not None
        )
        return active <= self.kv_budget or self.active == 0

    def _start(self, seq: _Seq) -> None:
        """Ready a request's slot: reuse the prefix its cache shares with the prompt (engine/cache.py)."""
        eng, opt, pc = self.engine, seq.options, self._slot(seq.slot)
        reused = pc.prepare(seq.prompt)
        seq.tracker = MetricsTracker(
            len(seq.prompt), reused, eng.context_limit, pc.rebuilt, lambda: pc.nbytes
        )
        seq.max_tokens = opt.max_tokens
        if eng.context_limit:
            seq.max_tokens = min(seq.max_tokens, eng.context_limit - len(seq.prompt))
        seq.rest = seq.prompt[reused:]
        seq.total, seq.done, seq.prefilling = len(seq.rest), 0, True
        reserve_prefill(pc.caches, seq.total, eng.step_for(opt), seq.max_tokens)

    def _prefill(self) -> None:
        """Prefill the requests that joined, first come first served: all of it while no other request is
        decoding (as the engine alone), else one chunk (``prefill_step`` tokens) per tick, so a long prompt
        joining pauses the others' streams for one chunk at a time, not for its whole prefill."""
        decoding = any(s is not None and not s.prefilling for s in self._busy)
        for seq in sorted(
            (s for s in self._busy if s is not None and s.prefilling), key=lambda s: s.admitted
        ):
            try:
                while seq.prefilling and self._busy[seq.slot] is seq:
                    self._prefill_chunk(seq)
                    if decoding:
                        return
            except BaseException as e:  # noqa: BLE001 - this request fails alone
                self._slot(seq.slot).reset()
                self._finish(seq, "cancelled", "error", error=e)

    def _prefill_chunk(self, seq: _Seq) -> None:
        """One chunk of the engine's prefill for ``seq`` in its slot; after the last, its first token."""
        eng, opt, pc = self.engine, seq.options, self._slot(seq.slot)
        if seq.stopped:
            return self._finish(seq, "cancelled")
        rest, total, step = seq.rest, seq.total, eng.step_for(opt)
        if total - seq.done > 1:
            chunk = rest[seq.done : min(seq.done + step, total - 1)]
            eng._logits(chunk, pc.caches)
            mx.eval([c.state for c in pc.caches])
            pc.extend(chunk)
            seq.done += len(chunk)
            if seq.progress and total > step:
                seq.out.put(("progress", PrefillProgress(seq.done, total)))
            return None
        seq.prefilling = False
        if seq.max_tokens <= 0:
            return self._finish(seq, "length")
        seq.sampler = Sampler(
            opt.sampling,
            eng.vocab_size or 1 << 30,
            opt.seed,
            history=seq.prompt,
            masked=opt.constraint is not None,
            logprobs=opt.on_logprob is not None,
        )
        seq.detector = LoopDetector(opt.loop) if opt.loop is not None else None
        y, extra = self._draw(seq, eng._logits(rest[-1:], pc.caches))
        pc.extend(rest[-1:])
        mx.eval(y, *(extra or ()), *pc.checkpoint())
        self._accept(seq, int(y.item()), extra)
        return None

    def _draw(self, seq: _Seq, logits: mx.array) -> tuple[mx.array, Any]:
        opt = seq.options
        mask = opt.constraint.allowed() if opt.constraint is not None else None
        assert seq.sampler is not None
        tok = seq.sampler(logits, None if mask is None else mx.array(mask))
        extra = Engine._top(seq.sampler.last_logprobs, tok, opt.top_logprobs) if opt.on_logprob else None
        return tok, extra

    def _step(self) -> None:
        """One forward for every request with a token to feed, queued before the host reads the tokens of the
        step before (``mx.async_eval``), so the host's work per token (reading, stop checks, handing tokens
        to the readers, building the next graph) overlaps the device's. A row feeds its drawn, still unread
        token; one that turns out to finish there costs one wasted row in one step, as in Engine._generate.
        A constrained row's next draw waits for its token to be accepted (its mask depends on it)."""
        for s in self._busy:
            if s is not None and s.stopped:
                self._finish(s, "cancelled")
        active = [s for s in self._busy if s is not None]
        unread = [(s, s.y, s.y_extra) for s in active if s.y is not None]
        rows = [
            s
            for s in active
            if s.next_id is not None or (s.y is not None and len(s.generated) + 1 < s.max_tokens)
        ]
        fed = {id(s) for s in rows}
        for s in active:
            if id(s) not in fed:
                s.y = s.y_extra = None  # its unread token is its last (the length limit)
        if rows:
            self._forward(rows)  # the fed rows' next tokens (or held logits) are now in flight
        for s, y, extra in unread:
            assert y is not None
            tok = int(y.item())
            if id(s) in fed:
                self._slot(s.slot).extend((tok,))  # the step just queued appended it to the cache
            self._accept(s, tok, extra)
            if self._busy[s.slot] is not s:  # finished: what the step in flight drew for it is dropped
                s.y = s.y_extra = s.held = None
            elif s.held is not None:
                s.y, s.y_extra = self._draw(s, s.held)
                s.held = None
                mx.async_eval(s.y, *(s.y_extra or ()))

    def _forward(self, rows: list[_Seq]) -> None:
        """Queue one step for ``rows``: feed each its unread token (or the host's ``next_id``), draw the next
        token of every row whose draw does not wait on the host (lazily), and start evaluating it all."""
        ids = [s.y if s.y is not None else mx.array([s.next_id], dtype=mx.int32) for s in rows]
        tokens = mx.concatenate([i.reshape(1) for i in ids]) if len(ids) > 1 else ids[0].reshape(1)
        caches = [self._slot(s.slot).caches for s in rows]
        if len(rows) == 1:  # alone: the engine's own (compiled) one-token step
            logits = self.engine._logits_from(tokens, caches[0])
        else:
            from mlx_harmony_tui.model.batch import decode_batch

            logits = decode_batch(self.engine.model, tokens, caches)
        self.steps += 1
        self.rows += len(rows)
        self.widest = max(self.widest, len(rows))
        pending: list[mx.array] = []
        for i, s in enumerate(rows):
            row = logits[i : i + 1]
            if s.next_id is not None:
                self._slot(s.slot).extend((s.next_id,))
                s.next_id = None
            elif s.options.constraint is not None:
                s.held = row  # its mask needs the unread token accepted first
                pending.append(row)
                continue
            s.y, s.y_extra = self._draw(s, row)
            pending += [s.y, *(s.y_extra or ())]
        mx.async_eval(*pending)

    def _accept(self, seq: _Seq, tok: int, extra: Any) -> None:
        """Hand ``tok`` to the request's reader; finish it on a stop token, loop, length or cancel."""
        opt, tracker = seq.options, seq.tracker
        assert tracker is not None
        seq.next_id = None
        if opt.constraint is not None:
            opt.constraint.accept(tok)
        lp = _logprob(tok, extra) if extra is not None else None
        if not seq.generated:
            tracker.prefill_done()
            if seq.progress and seq.total > self.engine.step_for(opt):
                seq.out.put(("progress", PrefillProgress(seq.total, seq.total)))
        tracker.token()
        seq.generated.append(tok)
        seq.out.put(("token", (tok, lp)))
        if tok in opt.stop_ids:
            return self._finish(seq, "stop")
        found = seq.detector.feed(tok) if seq.detector is not None else None
        if found:
            return self._finish(seq, "loop", found)
        if len(seq.generated) >= seq.max_tokens:
            return self._finish(seq, "length")
        if seq.stopped:
            return self._finish(seq, "cancelled")
        if seq.progress and tracker.due():
            seq.out.put(("progress", tracker.snapshot()))
        if seq.y is None and seq.held is None:  # nothing in flight: the next step feeds this token
            seq.next_id = tok

    def _finish(
        self, seq: _Seq, reason: FinishReason, detail: str = "", error: BaseException | None = None
    ) -> None:
        """The request leaves its slot now (its cache stays for the next request there)."""
        if 0 <= seq.slot < len(self._busy) and self._busy[seq.slot] is seq:
            self._busy[seq.slot] = None
            pc = self._slots[seq.slot]
            if pc is not None and pc.caches and pc.caches[0].offset != len(pc.tokens):
                pc.reset()
        self.cancelled += reason == "cancelled"
        tracker = seq.tracker or MetricsTracker(len(seq.prompt), 0, self.engine.context_limit, 0, lambda: 0)
        result = GenerationResult(reason, tracker.snapshot(final=True), seq.generated, detail)
        seq.out.put(("error", error) if error is not None else ("end", result))


class BatchedEngine:
    """The engine as one request sees it under continuous batching: ``generate`` joins the scheduler's batch
    and yields this request's tokens; ``last_result`` is this request's. Everything else is the engine's."""

    def __init__(self, scheduler: BatchScheduler) -> None:
        self._scheduler = scheduler
        self.last_result: GenerationResult | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._scheduler.engine, name)

    def generate(
        self,
        prompt_ids: list[int],
        options: GenerationOptions | None = None,
        cancel: threading.Event | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> Iterator[int]:
        """As Engine.generate (a stop token is yielded last, then ``last_result`` is set); runs on any thread."""
        options = options or GenerationOptions()
        prompt = self._scheduler.engine.checked_prompt(prompt_ids)
        seq = _Seq(prompt, options, cancel or threading.Event(), on_progress is not None)
        self._scheduler.add(seq)
        try:
            while True:
                kind, value = seq.out.get()
                if kind == "token":
                    tok, lp = value
                    if lp is not None and options.on_logprob is not None:
                        options.on_logprob(lp)
                    yield tok
                elif kind == "progress":
                    if on_progress is not None:
                        on_progress(value)
                elif kind == "error":
                    raise value
                else:
                    self.last_result = value
                    if on_progress is not None:
                        on_progress(value.metrics)
                    return
        finally:
            seq.dropped = True  # a reader that stopped early frees the slot at the next step

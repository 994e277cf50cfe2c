"""Generation with one model split over the ranks of an MLX distributed group (model/shard.py).

Rank 0 runs the face and the engine as usual; every other rank runs ``DistributedEngine.follow``, a loop that
receives each request from rank 0 and runs the very same generation, so every forward pass (and every
collective inside it) happens on all ranks in the same order. Only rank 0's sampled token counts: it is
shared with an all-sum in the graph, so nothing waits on the host. A stop (the user cancels, or the face stops
reading) travels in that stream as the token -1, which every rank reads at the same step; a cancel during the
prefill is agreed with one all-sum per chunk. Prefix reuse works unchanged: each rank keeps the KV cache of
its own heads and trims it the same way.

Launch with ``mlx.launch`` (ring over TCP, JACCL over Thunderbolt, NCCL on CUDA) and ``--distributed``; a
rank that dies makes the others' collectives fail within about a second ("connection to a peer was lost"),
which ends the followers and fails rank 0's turn with that message. MLX's ring backend sometimes leaves the
wait hanging instead (about 1 kill in 4 here): a watchdog ends a rank whose step has waited
``MHT_PEER_TIMEOUT`` seconds (default 120) with that message, since a thread inside ``mx.eval`` cannot be
interrupted.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import Any

import mlx.core as mx

from mlx_harmony_tui.engine.generator import Engine, GenerationOptions, ProgressCallback
from mlx_harmony_tui.engine.repetition import LoopConfig
from mlx_harmony_tui.errors import UserError

GENERATE, WARM_UP, SHUTDOWN = 1, 2, 3
PEER_TIMEOUT_ENV = "MHT_PEER_TIMEOUT"
_group: Any = None


class DistributedError(UserError):
    """The distributed group could not be set up (not launched by mlx.launch, a backend missing)."""


def launched() -> bool:
    """Whether this process was started by ``mlx.launch`` (it sets MLX_RANK, and a hostfile or NCCL vars)."""
    return "MLX_RANK" in os.environ or "OMPI_COMM_WORLD_RANK" in os.environ


def init(backend: str = "any") -> Any:
    """Join the group once per process (``mx.distributed.init``); a clear error when there is none."""
    global _group
    if _group is None:
        if not launched():
            raise DistributedError(
                "--distributed needs the ranks started by mlx.launch, e.g. "
                "mlx.launch -n 2 --backend ring -- mlx-harmony-tui generate --distributed ... "
                "(docs/distributed.md)"
            )
        try:
            _group = mx.distributed.init(strict=True, backend=backend)
        except (RuntimeError, ValueError) as e:
            raise DistributedError(f"cannot join the distributed group ({backend} backend): {e}") from None
    return _group


def group() -> Any:
    """The joined group, or None in a single process."""
    return _group


def _options_to_json(options: GenerationOptions) -> str:
    return json.dumps(
        {
            "max_tokens": options.max_tokens,
            "stop_ids": sorted(options.stop_ids),
            "prefill_step": options.prefill_step,
            "loop": asdict(options.loop) if options.loop is not None else None,
        }
    )


def _options_from_json(text: str) -> GenerationOptions:
    d = json.loads(text)
    return GenerationOptions(
        max_tokens=int(d["max_tokens"]),
        stop_ids=frozenset(int(t) for t in d["stop_ids"]),
        prefill_step=int(d["prefill_step"]) if d["prefill_step"] is not None else None,
        loop=LoopConfig(**d["loop"]) if d["loop"] is not None else None,
    )


def _exit_on_stall(rank: int, waited: float) -> None:
    print(f"mlx-harmony-tui: rank {rank}: a step has waited {waited:.0f} s for the other ranks: connection to a "
          f"peer was lost (a rank died or hangs); exiting", file=sys.stderr, flush=True)  # fmt: skip
    os._exit(1)


class StallWatch:
    """Watches the steps that wait on collectives: one that has not returned after ``timeout`` seconds calls
    ``on_stall(waited)`` (once), from a daemon thread."""

    def __init__(self, timeout: float, on_stall: Callable[[float], None]) -> None:
        self.timeout = timeout
        self.on_stall = on_stall
        self._since: float | None = None
        threading.Thread(target=self._run, name="mht-stall-watch", daemon=True).start()

    @contextlib.contextmanager
    def watch(self) -> Iterator[None]:
        self._since = time.monotonic()
        try:
            yield
        finally:
            self._since = None

    def _run(self) -> None:
        while True:
            time.sleep(min(1.0, self.timeout / 4))
            since = self._since
            if since is not None and time.monotonic() - since > self.timeout:
                self.on_stall(time.monotonic() - since)
                return


class DistributedEngine(Engine):
    """An Engine whose model is sharded over ``group``; rank 0 drives, the others ``follow``."""

    stops_by_token = True

    def __init__(self, model: Any, config: Any, group: Any, **engine_options: Any) -> None:
        """``engine_options``: Engine's (model_id, optimize, kv_bits, kv_mode, kv_margin, prefill_step); the same on every rank."""
        self.group = group
        self.rank = group.rank()
        self._root = mx.array(1 if self.rank == 0 else 0, dtype=mx.int32)
        super().__init__(model, config, **engine_options)
        self._closed = False
        self._drive = threading.Lock()  # rank 0: one request (send + generation) at a time, in order
        timeout = float(os.environ.get(PEER_TIMEOUT_ENV) or 120)
        self.stall = StallWatch(timeout, lambda waited: _exit_on_stall(self.rank, waited))

    # --- the collectives ------------------------------------------------------------------------------

    def _sum(self, x: mx.array) -> mx.array:
        return mx.distributed.all_sum(x, group=self.group)

    def _broadcast_ints(self, values: list[int] | None, n: int) -> list[int]:
        """Rank 0's ``values`` (length n) on every rank."""
        local = mx.array(values, dtype=mx.int32) if self.rank == 0 and values is not None else mx.zeros((n,), mx.int32)
        return self._sum(local).tolist() if n else []

    def _send(self, kind: int, prompt: list[int] | None = None, options: GenerationOptions | None = None) -> None:
        payload = list(_options_to_json(options).encode()) if options is not None else []
        prompt = prompt or []
        self._broadcast_ints([kind, len(prompt), len(payload)], 3)
        self._broadcast_ints(prompt, len(prompt))
        self._broadcast_ints(payload, len(payload))

    def _receive(self) -> tuple[int, list[int], GenerationOptions | None]:
        kind, n_prompt, n_payload = self._broadcast_ints(None, 3)
        prompt = self._broadcast_ints(None, n_prompt)
        payload = bytes(self._broadcast_ints(None, n_payload)) if n_payload else b""
        return kind, prompt, _options_from_json(payload.decode()) if payload else None

    def _share(self, y: mx.array, cancel: threading.Event) -> mx.array:
        local = y.astype(mx.int32)
        if self.rank == 0 and cancel.is_set():
            # -1, still computed from this step's token: every rank must run this step's forward (and its
            # collectives); a constant would let rank 0 skip it while the others wait in it.
            local = local * 0 - 1
        shared = self._sum(local * self._root)
        # Evaluated now rather than queued behind the next step: with two steps in flight the ranks' CPU
        # schedulers were seen to run their collectives in different orders and wait on each other forever.
        with self.stall.watch():
            mx.eval(shared)
        return shared

    def _agree_stop(self, stop: bool) -> bool:
        flag = mx.array(1 if (self.rank == 0 and stop) else 0, dtype=mx.int32)
        with self.stall.watch():
            return bool(self._sum(flag).item())

    # --- rank 0 -------------------------------------------------------------------------------------------

    def warm_up(self) -> None:
        if self.rank != 0:
            super().warm_up()
            return
        with self._drive:
            self._send(WARM_UP)
            super().warm_up()

    def generate(
        self,
        prompt_ids: list[int],
        options: GenerationOptions | None = None,
        cancel: threading.Event | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> Iterator[int]:
        """As Engine.generate, on rank 0. If the caller stops reading early, the generation still runs to
        the shared stop marker (one or two more steps), so every rank leaves it at the same step."""
        if self.rank != 0:
            raise RuntimeError("only rank 0 drives generation; the other ranks run follow()")
        options = options or GenerationOptions()
        cancel = cancel or threading.Event()
        with self._drive:
            self._send(GENERATE, [int(t) for t in prompt_ids], options)
            inner = super().generate(prompt_ids, options, cancel, on_progress)
            for token in inner:  # not `yield from`: that would close `inner` before we can drain it
                try:
                    yield token
                except GeneratorExit:
                    cancel.set()
                    for _ in inner:  # to the shared stop marker, reading nothing
                        pass
                    raise

    def save_cache(self, path: str) -> None:
        """Saved prompt caches hold one rank's heads: not kept in a distributed run."""

    def load_cache(self, path: str) -> bool:
        return False

    def close(self) -> None:
        """Tell the followers to exit (rank 0; idempotent)."""
        if self.rank == 0 and not self._closed:
            self._closed = True
            with self._drive, contextlib.suppress(Exception):
                self._send(SHUTDOWN)

    # --- the other ranks -------------------------------------------------------------------------------

    def follow(self) -> None:
        """Run rank 0's requests until it shuts down (returns) or a rank dies (raises RuntimeError)."""
        while True:
            kind, prompt, options = self._receive()
            if kind == SHUTDOWN:
                return
            if kind == WARM_UP:
                super().warm_up()
            elif kind == GENERATE and options is not None:
                try:
                    for _ in super().generate(prompt, options, threading.Event()):
                        pass
                except UserError:  # e.g. a prompt too long for the context: rank 0 failed the same way
                    continue
            else:
                raise RuntimeError(f"unexpected request {kind} from rank 0")

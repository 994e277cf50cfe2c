"""The one thread that touches MLX for a loaded model: loading, warm-up, turns and prompt-cache files.

MLX keeps streams per thread, and a thread that used MLX and ends (or is still inside MLX) when the
interpreter goes down makes the process abort ("terminate called without an active exception", exit 134;
ml-explore/mlx#3126). Measured: loading the demo model on a pool thread and exiting aborted 10 of 10 runs;
quitting the app at random moments aborted 6 of 20. So every MLX call of a model runs on its MlxThread,
which frees its streams when it stops, and an atexit hook stops the threads still running (a load the app
stopped waiting for, a backend nobody closed) before the interpreter is torn down.
"""

from __future__ import annotations

import atexit
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

T = TypeVar("T")
STOP_TIMEOUT_S = 30.0  # a cancelled turn stops within a token or a prefill chunk; loading within a layer

_live: set[MlxThread] = set()
_live_lock = threading.Lock()


def release_thread_streams() -> None:
    """Free the calling thread's MLX streams (MLX needs it at the end of every thread that used it)."""
    try:
        import mlx.core as mx

        mx.clear_streams()
    except Exception:  # noqa: BLE001 - cleanup must never fail
        pass


class MlxThread:
    """A worker thread running jobs in order; ``call`` runs one and waits for its result."""

    def __init__(self, name: str = "mlx-harmony-model") -> None:
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self.interrupt: Callable[[], None] | None = None  # cancels the running job (set by its owner)
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        with _live_lock:
            _live.add(self)
        self.thread.start()

    def _run(self) -> None:
        try:
            while (job := self._jobs.get()) is not None:
                try:
                    job()
                except Exception:  # noqa: BLE001 - a job reports its own failure; the thread must live on
                    pass
        finally:
            release_thread_streams()
            with _live_lock:
                _live.discard(self)

    def submit(self, job: Callable[[], None]) -> None:
        self._jobs.put(job)

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the thread (after the jobs before it) and return its result or raise its error."""
        if threading.current_thread() is self.thread:
            return fn()
        future: Future[T] = Future()

        def job() -> None:
            try:
                future.set_result(fn())
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                future.set_exception(e)

        self._jobs.put(job)
        return future.result()

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Let the queued jobs finish, then end the thread (and free its streams)."""
        self._jobs.put(None)
        if self.thread is not threading.current_thread():
            self.thread.join(timeout)

    def is_alive(self) -> bool:
        return self.thread.is_alive()


@atexit.register
def _stop_all() -> None:
    """At exit, before MLX's own teardown: end every model thread still running."""
    with _live_lock:
        threads = list(_live)
    for t in threads:
        if t.interrupt is not None:
            t.interrupt()
        t.stop()

"""What a face needs from a backend: start a turn, read its events, cancel it, answer confirmations.

Local (in-process MLX) and remote (OpenAI-compatible HTTP) backends implement the same protocol, so the TUI
and the line chat do not know which one they drive.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from mlx_harmony_tui.chat.events import Event
from mlx_harmony_tui.chat.settings import ChatSettings
from mlx_harmony_tui.harmony.messages import HMessage


@dataclass
class TurnRequest:
    messages: list[HMessage]  # the conversation so far, ending with the new user message
    settings: ChatSettings = field(default_factory=ChatSettings)


_DONE = object()


class TurnHandle:
    """A running turn. Events are produced on a worker thread and read here from any thread."""

    def __init__(self) -> None:
        self._queue: queue.Queue[object] = queue.Queue()
        self.cancel_event = threading.Event()
        self._confirmations: dict[str, bool] = {}
        self._confirm_cv = threading.Condition()

    # producer side
    def put(self, event: Event) -> None:
        self._queue.put(event)

    def close(self) -> None:
        self._queue.put(_DONE)

    def wait_confirmation(self, call_id: str, timeout: float | None = None) -> bool:
        """Block the worker until the face answers (or the turn is cancelled: then False)."""
        with self._confirm_cv:
            ok = self._confirm_cv.wait_for(
                lambda: call_id in self._confirmations or self.cancel_event.is_set(), timeout
            )
            return bool(ok) and self._confirmations.get(call_id, False)

    # consumer side
    def cancel(self) -> None:
        self.cancel_event.set()
        with self._confirm_cv:
            self._confirm_cv.notify_all()

    def confirm(self, call_id: str, allowed: bool) -> None:
        with self._confirm_cv:
            self._confirmations[call_id] = allowed
            self._confirm_cv.notify_all()

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """Blocking iterator over the turn's events until it ends."""
        while True:
            item = self._queue.get(timeout=timeout)
            if item is _DONE:
                return
            yield item  # type: ignore[misc]

    def drain(self, max_items: int = 1000) -> tuple[list[Event], bool]:
        """Non-blocking: what is queued now, and whether the turn has ended (for batched UI updates)."""
        out: list[Event] = []
        done = False
        while len(out) < max_items:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _DONE:
                done = True
                break
            out.append(item)  # type: ignore[arg-type]
        return out, done


class Backend(Protocol):
    """Implemented by backends/local.py and backends/remote.py."""

    @property
    def model_name(self) -> str: ...

    @property
    def context_limit(self) -> int: ...

    def start_turn(self, request: TurnRequest) -> TurnHandle: ...

    def count_tokens(self, request: TurnRequest) -> int | None: ...

    def close(self) -> None: ...


def leaves_defaults_to_server(backend: object) -> bool:
    """Whether the settings' unset values are left to a server's model (a remote backend sends only what
    the user set), so they are not what the model uses and faces show "server default" instead. A backend
    says so with ``server_defaults = True``; a local one uses the values it was given."""
    return bool(getattr(backend, "server_defaults", False))


ProgressCallback = Callable[[float, str], None]  # fraction 0..1, message

"""A scripted backend for UI tests: real TurnHandle and worker thread, events chosen by the test.

The real LocalBackend is used where the test is about the model (see test_tui_local.py); this one lets UI
tests drive exact event sequences (tool calls, retries, confirmations) that a random tiny model never emits.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from mlx_harmony_tui.backends.base import TurnHandle, TurnRequest
from mlx_harmony_tui.chat import events as ev

Script = Callable[[TurnRequest, TurnHandle], None]


def simple_reply(analysis: str, final: str, delay: float = 0.0, chunk: int = 3) -> Script:
    def run(request: TurnRequest, handle: TurnHandle) -> None:
        handle.put(ev.TurnStarted("t1"))
        for channel, text in (("analysis", analysis), ("final", final)):
            if not text:
                continue
            for i in range(0, len(text), chunk):
                if handle.cancel_event.is_set():
                    handle.put(ev.TurnFinished("cancelled", ev.Metrics(generated_tokens=i, final=True)))
                    return
                handle.put(ev.Delta(channel, text[i : i + chunk]))  # type: ignore[arg-type]
                if delay:
                    time.sleep(delay)
            handle.put(ev.MessageDone(channel, text))  # type: ignore[arg-type]
            handle.put(ev.Metrics(generated_tokens=42, decode_tps=12.5, ttft_s=0.25, context_tokens=100,
                                  context_limit=4096))
        handle.put(ev.TurnFinished("stop", ev.Metrics(generated_tokens=42, decode_tps=12.5, ttft_s=0.25,
                                                      context_tokens=120, context_limit=4096, final=True)))

    return run


class ScriptedBackend:
    def __init__(self, script: Script, name: str = "scripted") -> None:
        self.script = script
        self._name = name
        self.requests: list[TurnRequest] = []
        self.closed = False

    @property
    def model_name(self) -> str:
        return self._name

    @property
    def context_limit(self) -> int:
        return 4096

    def start_turn(self, request: TurnRequest) -> TurnHandle:
        self.requests.append(request)
        handle = TurnHandle()

        def work() -> None:
            try:
                self.script(request, handle)
            finally:
                handle.close()

        threading.Thread(target=work, daemon=True).start()
        return handle

    def count_tokens(self, request: TurnRequest) -> int | None:
        return sum(len(m.text) for m in request.messages)

    def close(self) -> None:
        self.closed = True

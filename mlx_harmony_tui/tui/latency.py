"""Key-to-frame latency probe, on only when MHT_KEY_LATENCY_LOG names a file (scripts/ui_latency.py).

It measures inside the process, from the moment the input thread turned the bytes into a key event until
the next frame was written to the terminal, so it excludes the terminal (tmux) and any polling of it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

ENV = "MHT_KEY_LATENCY_LOG"


class LatencyProbe:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.pending: list[float] = []  # event times of keys applied but not yet on screen
        self.samples: list[float] = []  # key event -> frame written
        self.queued: list[float] = []  # key event -> handled by the input widget (the part spent waiting)

    @classmethod
    def from_env(cls) -> LatencyProbe | None:
        path = os.environ.get(ENV)
        return cls(path) if path else None

    def key_applied(self, event_time: float) -> None:
        self.pending.append(event_time)
        self.queued.append(time.monotonic() - event_time)

    def frame_written(self) -> None:
        if self.pending:
            now = time.monotonic()  # the clock of Textual's event times
            self.samples.extend(now - t for t in self.pending)
            self.pending.clear()

    def save(self) -> None:
        self.path.write_text(json.dumps({"frames": self.samples, "queued": self.queued}))

"""The debug trace and the per-turn metrics log (``--debug-file PATH``, ``--metrics-log PATH``).

When a model misbehaves, the debug trace says why: one JSON line per attempt with the rendered prompt as text
(special tokens included), the raw completion, what the parser made of it and what it repaired, the retry
decision and the timings. The metrics log is one line per turn (JSON lines, or TSV when the file name ends in
``.tsv``) that a user can load into a spreadsheet or pandas and plot. Both files are appended to, never
rewritten; writes are serialized (the server's turns run one at a time anyway).
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from pathlib import Path
from typing import Any

from mlx_harmony_tui.chat.events import Event, Metrics, Retry, TurnFailed, TurnFinished, TurnStarted
from mlx_harmony_tui.errors import UserError

METRIC_COLUMNS = ("time", "model", "turn_id", "finish_reason", "retries", "prompt_tokens", "reused_tokens",
                  "prefilled_tokens", "generated_tokens", "ttft_s", "prefill_tps", "decode_tps",
                  "mlx_peak_bytes", "kv_bytes", "rss_bytes", "error")


def _open_for_append(path: Path, flag: str) -> Path:
    path = Path(path).expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8"):
            pass
    except OSError as e:
        raise UserError(f"{flag}: cannot write {path}: {e.strerror}") from None
    return path


class TurnTrace:
    """Both files (either may be None). ``attempt`` is called by the turn pipeline; ``observe`` sees every
    event of a turn and writes the metrics line when the turn ends."""

    def __init__(self, debug_file: Path | None = None, metrics_log: Path | None = None, model: str = "") -> None:
        self.debug_file = _open_for_append(debug_file, "--debug-file") if debug_file else None
        self.metrics_log = _open_for_append(metrics_log, "--metrics-log") if metrics_log else None
        self.model = model
        self._lock = threading.Lock()
        self._turn_id = ""
        self._retries = 0
        self._metrics: Metrics | None = None

    def _append(self, path: Path, line: str) -> None:
        with self._lock, path.open("a", encoding="utf-8") as f:
            f.write(line + "\n")

    def attempt(self, record: dict[str, Any]) -> None:
        """One generation attempt (see chat/turn.py for the fields)."""
        if self.debug_file is not None:
            doc = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "model": self.model, **record}
            self._append(self.debug_file, json.dumps(doc, ensure_ascii=False, default=str))

    def observe(self, event: Event) -> None:
        if isinstance(event, TurnStarted):
            self._turn_id, self._retries, self._metrics = event.turn_id, 0, None
        elif isinstance(event, Retry):
            self._retries += 1
        elif isinstance(event, Metrics) and event.final:
            self._metrics = event
        elif isinstance(event, TurnFinished | TurnFailed) and self.metrics_log is not None:
            m = event.metrics if isinstance(event, TurnFinished) else (self._metrics or Metrics())
            figures = dataclasses.asdict(m)
            row = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "model": self.model, "turn_id": self._turn_id,
                   "finish_reason": event.reason if isinstance(event, TurnFinished) else "error",
                   "retries": self._retries, **{k: figures.get(k) for k in METRIC_COLUMNS if k in figures},
                   "error": event.error if isinstance(event, TurnFailed) else ""}
            self._write_metrics(row)

    def _write_metrics(self, row: dict[str, Any]) -> None:
        assert self.metrics_log is not None
        if self.metrics_log.suffix != ".tsv":
            self._append(self.metrics_log, json.dumps(row, ensure_ascii=False, default=str))
            return
        cells = ["" if row.get(c) is None else str(row.get(c)).replace("\t", " ").replace("\n", " ")
                 for c in METRIC_COLUMNS]
        if self.metrics_log.stat().st_size == 0:
            self._append(self.metrics_log, "\t".join(METRIC_COLUMNS))
        self._append(self.metrics_log, "\t".join(cells))

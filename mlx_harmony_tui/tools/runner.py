"""Running tool subprocesses: timeout, cancel, bounded output, whole-process-group kill.

Shared by the python tool and config-declared function tools, so both get the same guarantees: a runaway
child never hangs the turn and never outlives it (the whole process tree is killed: on Linux through the
reaper, which also catches children that left the process group with ``setsid``) and never floods memory
(output beyond the limit is counted, not kept; the tail is kept because tracebacks end there).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

TAIL_CHARS = 2000
_REAPER = (Path(__file__).parent / "reaper.py").read_text(encoding="utf-8")


@dataclass
class ProcessResult:
    output: str  # stdout + stderr interleaved, truncated with a marker
    returncode: int | None
    timed_out: bool = False
    cancelled: bool = False
    truncated_chars: int = 0
    duration_s: float = 0.0


def truncate_text(text: str, limit: int, tail: int = TAIL_CHARS) -> str:
    """Keep the head (and a short tail) of ``text``; say how much was cut so the model knows."""
    if len(text) <= limit:
        return text
    tail = min(tail, limit // 4)
    cut = len(text) - limit
    head_len = limit - tail
    return f"{text[:head_len]}\n[... truncated {cut} chars]\n{text[len(text) - tail :] if tail else ''}"


class _BoundedReader:
    """Reads a pipe to EOF keeping at most ``limit`` bytes (head + tail), counting the rest."""

    def __init__(self, stream, limit: int) -> None:  # type: ignore[no-untyped-def]
        self._stream = stream
        self._tail_limit = min(TAIL_CHARS, limit // 4)
        self._head_limit = limit - self._tail_limit
        self.head = bytearray()
        self.tail: deque[bytes] = deque()
        self._tail_len = 0
        self.total = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while True:
                chunk = (
                    self._stream.read1(65536) if hasattr(self._stream, "read1") else self._stream.read(65536)
                )
                if not chunk:
                    break
                self.total += len(chunk)
                room = self._head_limit - len(self.head)
                if room > 0:
                    self.head += chunk[:room]
                    chunk = chunk[room:]
                if chunk and self._tail_limit:
                    self.tail.append(chunk)
                    self._tail_len += len(chunk)
                    while self.tail and self._tail_len - len(self.tail[0]) >= self._tail_limit:
                        self._tail_len -= len(self.tail.popleft())
        except (OSError, ValueError):
            pass

    def text(self) -> tuple[str, int]:
        tail = b"".join(self.tail)[-self._tail_limit :] if self._tail_limit else b""
        kept = len(self.head) + len(tail)
        cut = self.total - kept
        head_s = self.head.decode("utf-8", "replace")
        if cut <= 0:
            return head_s + tail.decode("utf-8", "replace"), 0
        return f"{head_s}\n[... truncated {cut} chars]\n{tail.decode('utf-8', 'replace')}", cut


def reaped(argv: Sequence[str]) -> list[str]:
    """``argv`` under the reaper (tools/reaper.py) on Linux, so that nothing it starts outlives it."""
    if not sys.platform.startswith("linux"):
        return list(argv)
    return [sys.executable, "-I", "-S", "-c", _REAPER, *argv]


def kill_group(proc: subprocess.Popen) -> None:  # type: ignore[type-arg]
    """Kill the child and everything it started (it runs in its own session). SIGTERM first: a reaper then
    kills its whole tree (setsid children included) before it exits; then SIGKILL to the group."""
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=2.0)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.kill()
    except ProcessLookupError:
        pass


def run_process(
    argv: Sequence[str],
    *,
    stdin_data: bytes | None = None,
    cwd: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 10.0,
    max_output: int = 20000,
    cancel: threading.Event | None = None,
    preexec: Callable[[], None] | None = None,
    reap: bool = True,
) -> ProcessResult:
    """Run ``argv`` in a new session; stdin gets ``stdin_data`` (or is closed); kill the tree on timeout.
    ``reap=False`` where something else already ends the whole tree (the python tool's bubblewrap)."""
    start = time.monotonic()
    proc = subprocess.Popen(
        reaped(argv) if reap else list(argv),
        stdin=subprocess.PIPE if stdin_data is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=str(cwd) if cwd is not None else None,
        env=dict(env) if env is not None else None,
        start_new_session=True,
        preexec_fn=preexec,
    )
    reader = _BoundedReader(proc.stdout, max_output)
    if stdin_data is not None:
        assert proc.stdin is not None

        def _feed() -> None:
            try:
                proc.stdin.write(stdin_data)  # type: ignore[union-attr]
                proc.stdin.close()  # type: ignore[union-attr]
            except (BrokenPipeError, OSError):
                pass

        threading.Thread(target=_feed, daemon=True).start()
    timed_out = cancelled = False
    deadline = start + timeout_s
    while True:
        try:
            proc.wait(timeout=0.05)
            break
        except subprocess.TimeoutExpired:
            pass
        if cancel is not None and cancel.is_set():
            cancelled = True
        elif time.monotonic() >= deadline:
            timed_out = True
        if cancelled or timed_out:
            kill_group(proc)
            proc.wait()
            break
    # Background grandchildren must not outlive the call (or hold the pipe open forever).
    reader.thread.join(timeout=0.2)
    kill_group(proc)
    reader.thread.join(timeout=1.0)
    text, cut = reader.text()
    return ProcessResult(
        output=text,
        returncode=proc.returncode,
        timed_out=timed_out,
        cancelled=cancelled,
        truncated_chars=cut,
        duration_s=time.monotonic() - start,
    )

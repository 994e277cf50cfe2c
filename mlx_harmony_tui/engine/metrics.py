"""Per-generation figures: speed, cache reuse and memory. Filled in by the generator."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Metrics:
    """Live (final=False, every ~0.25 s) and end-of-generation (final=True) figures."""

    prompt_tokens: int = 0
    reused_tokens: int = 0  # prompt tokens served from the prefix cache
    prefilled_tokens: int = 0  # prompt tokens actually computed
    reprefilled_tokens: int = 0  # of those, tokens that matched the cache but had to be computed again
    generated_tokens: int = 0
    ttft_s: float | None = None
    prefill_tps: float | None = None
    decode_tps: float | None = None  # excludes prefill and the first token
    context_tokens: int = 0  # tokens in the cache after this step
    context_limit: int = 0
    mlx_active_bytes: int = 0
    mlx_peak_bytes: int = 0
    mlx_cache_bytes: int = 0
    kv_bytes: int = 0  # the prompt cache's KV memory (part of mlx_active_bytes)
    kv_format: str = ""  # how its full layers are stored: "" (the model's dtype), "8-bit", "4-bit", "mxfp8"
    rss_bytes: int = 0
    wired_bytes: int | None = None  # macOS only
    final: bool = False


@dataclass(frozen=True)
class PrefillProgress:
    """Prompt processing progress for long prompts (chat/events.py re-exports it)."""

    done: int
    total: int


# --- collectors -------------------------------------------------------------------------------------------


def mlx_memory() -> tuple[int, int, int]:
    """(active, peak, cache) bytes as MLX reports them; zeros if this MLX build lacks the calls."""
    import mlx.core as mx

    try:
        return int(mx.get_active_memory()), int(mx.get_peak_memory()), int(mx.get_cache_memory())
    except AttributeError:  # pragma: no cover - very old MLX
        return 0, 0, 0


def rss_bytes() -> int:
    """Resident set size of this process: /proc on Linux; peak RSS from getrusage elsewhere (no psutil)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)
    except (ImportError, OSError):  # pragma: no cover
        return 0


_PAGE_SIZE_RE = re.compile(r"page size of (\d+) bytes")
_WIRED_RE = re.compile(r"^Pages wired down:\s+(\d+)\.?\s*$", re.MULTILINE)


def parse_vm_stat(text: str) -> int | None:
    """Wired bytes from macOS ``vm_stat`` output ("Pages wired down" x the page size in its header)."""
    page = _PAGE_SIZE_RE.search(text)
    wired = _WIRED_RE.search(text)
    if not page or not wired:
        return None
    return int(wired.group(1)) * int(page.group(1))


def wired_bytes() -> int | None:
    """System-wide wired memory on macOS (where Metal pins model weights); None elsewhere or on failure."""
    if sys.platform != "darwin":
        return None
    try:
        out = subprocess.run(["vm_stat"], capture_output=True, text=True, timeout=2, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_vm_stat(out)


class MetricsTracker:
    """Accumulates the timings of one generation and builds ``Metrics`` snapshots from them.

    Only cheap host-side arithmetic per token; memory is read when a snapshot is taken (~4 per second).
    """

    LIVE_INTERVAL_S = 0.25

    def __init__(self, prompt_tokens: int, reused_tokens: int, context_limit: int = 0, reprefilled_tokens: int = 0,
                 kv_bytes: Callable[[], int] | None = None, kv_format: str = "") -> None:
        self.prompt_tokens = prompt_tokens
        self.reused_tokens = reused_tokens
        self.prefilled_tokens = prompt_tokens - reused_tokens
        self.reprefilled_tokens = reprefilled_tokens
        self.kv_bytes = kv_bytes
        self.kv_format = kv_format
        self.context_limit = context_limit
        self.start = time.perf_counter()
        self.prefill_end: float | None = None  # when the first token is known (prefill + first token)
        self.prefill_compute_s: float | None = None  # prefill alone (all prompt tokens' forward passes)
        self.first_token_time: float | None = None
        self.last_token_time: float | None = None
        self.generated = 0
        self._last_emit = self.start
        self._wired_cache: int | None = None

    def prefill_done(self) -> None:
        self.prefill_compute_s = time.perf_counter() - self.start

    def token(self) -> None:
        now = time.perf_counter()
        if self.first_token_time is None:
            self.first_token_time = now
        self.last_token_time = now
        self.generated += 1

    def due(self) -> bool:
        """True every ~0.25 s: time for a live snapshot."""
        now = time.perf_counter()
        if now - self._last_emit >= self.LIVE_INTERVAL_S:
            self._last_emit = now
            return True
        return False

    def snapshot(self, final: bool = False) -> Metrics:
        ttft = self.first_token_time - self.start if self.first_token_time is not None else None
        prefill_tps = None
        pre_s = self.prefill_compute_s if self.prefill_compute_s is not None else ttft
        if pre_s and self.prefilled_tokens > 0:
            prefill_tps = self.prefilled_tokens / pre_s
        decode_tps = None
        if self.generated > 1 and self.first_token_time is not None and self.last_token_time is not None:
            span = self.last_token_time - self.first_token_time
            if span > 0:
                decode_tps = (self.generated - 1) / span
        active, peak, cache = mlx_memory()
        if final or self._wired_cache is None:
            self._wired_cache = wired_bytes()
        return Metrics(
            prompt_tokens=self.prompt_tokens,
            reused_tokens=self.reused_tokens,
            prefilled_tokens=self.prefilled_tokens,
            reprefilled_tokens=self.reprefilled_tokens,
            generated_tokens=self.generated,
            ttft_s=ttft,
            prefill_tps=prefill_tps,
            decode_tps=decode_tps,
            context_tokens=self.prompt_tokens + self.generated,
            context_limit=self.context_limit,
            mlx_active_bytes=active,
            mlx_peak_bytes=peak,
            mlx_cache_bytes=cache,
            kv_bytes=self.kv_bytes() if self.kv_bytes is not None else 0,
            kv_format=self.kv_format,
            rss_bytes=rss_bytes(),
            wired_bytes=self._wired_cache,
            final=final,
        )

"""Per-generation figures: speed, cache reuse and memory. Filled in by the generator."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metrics:
    """Live (final=False, every ~0.25 s) and end-of-generation (final=True) figures."""

    prompt_tokens: int = 0
    reused_tokens: int = 0  # prompt tokens served from the prefix cache
    prefilled_tokens: int = 0  # prompt tokens actually computed
    generated_tokens: int = 0
    ttft_s: float | None = None
    prefill_tps: float | None = None
    decode_tps: float | None = None  # excludes prefill and the first token
    context_tokens: int = 0  # tokens in the cache after this step
    context_limit: int = 0
    mlx_active_bytes: int = 0
    mlx_peak_bytes: int = 0
    mlx_cache_bytes: int = 0
    rss_bytes: int = 0
    wired_bytes: int | None = None  # macOS only
    final: bool = False

"""Live generation figures: tok/s (with a sparkline), TTFT, context used, MLX memory and the KV cache's share of
it, wired memory (macOS)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Sparkline, Static

from mlx_harmony_tui.chat.events import Metrics


def _gib(n: int) -> str:
    if n < 2**20:
        return f"{n / 2**10:.0f} KiB"
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.0f} MiB"


def format_metrics(m: Metrics, context_limit: int = 0) -> str:
    parts = []
    parts.append(f"{m.decode_tps:.1f} tok/s" if m.decode_tps else "-- tok/s")
    parts.append(f"TTFT {m.ttft_s:.2f}s" if m.ttft_s is not None else "TTFT --")
    limit = m.context_limit or context_limit
    parts.append(f"ctx {m.context_tokens}/{limit}" if limit else f"ctx {m.context_tokens}")
    if m.reused_tokens:
        parts.append(f"reused {m.reused_tokens}")
    if m.reprefilled_tokens:
        parts.append(f"recomputed {m.reprefilled_tokens}")
    if m.mlx_active_bytes or m.mlx_peak_bytes:
        parts.append(f"MLX {_gib(m.mlx_active_bytes)} (peak {_gib(m.mlx_peak_bytes)})")
    if m.kv_bytes:
        parts.append(f"KV {_gib(m.kv_bytes)}")
    if m.wired_bytes is not None:
        parts.append(f"wired {_gib(m.wired_bytes)}")
    return "  │  ".join(parts)


class MetricsBar(Horizontal):
    DEFAULT_CSS = """
    MetricsBar { height: 1; background: $panel; padding: 0 1; }
    MetricsBar > Static#metrics-text { width: 1fr; height: 1; }
    MetricsBar > Static#status { width: 20; height: 1; color: $accent; padding-right: 1; }
    MetricsBar > Sparkline { width: 24; }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.history: list[float] = []
        self.last: Metrics | None = None
        self.context_limit = 0

    def compose(self) -> ComposeResult:
        yield Static("idle", id="status")
        yield Static(format_metrics(Metrics()), id="metrics-text")
        yield Sparkline([], id="tps-spark")

    def set_status(self, text: str) -> None:
        # fixed-size cells: repaint only, no screen layout (these change several times a second)
        self.query_one("#status", Static).update(text, layout=False)

    def show(self, m: Metrics) -> None:
        self.last = m
        if m.decode_tps and not m.final:
            self.history = [*self.history[-59:], float(m.decode_tps)]
            self.query_one(Sparkline).data = list(self.history)
        self.query_one("#metrics-text", Static).update(format_metrics(m, self.context_limit), layout=False)

    def reset_spark(self) -> None:
        self.history = []
        self.query_one(Sparkline).data = []

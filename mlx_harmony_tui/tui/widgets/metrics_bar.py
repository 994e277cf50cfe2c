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


def metric_parts(m: Metrics, context_limit: int = 0) -> list[str]:
    """The figures in the order they are dropped last: tok/s, context, memory, then the rest."""
    parts = [f"{m.decode_tps:.1f} tok/s" if m.decode_tps else "-- tok/s"]
    limit = m.context_limit or context_limit
    parts.append(f"ctx {m.context_tokens}/{limit}" if limit else f"ctx {m.context_tokens}")
    if m.mlx_active_bytes or m.mlx_peak_bytes:
        parts.append(f"MLX {_gib(m.mlx_active_bytes)} (peak {_gib(m.mlx_peak_bytes)})")
    if m.kv_bytes:
        parts.append(f"KV {_gib(m.kv_bytes)}{f' {m.kv_format}' if m.kv_format else ''}")
    if m.wired_bytes is not None:
        parts.append(f"wired {_gib(m.wired_bytes)}")
    parts.append(f"TTFT {m.ttft_s:.2f}s" if m.ttft_s is not None else "TTFT --")
    if m.reused_tokens:
        parts.append(f"reused {m.reused_tokens}")
    if m.reprefilled_tokens:
        parts.append(f"recomputed {m.reprefilled_tokens}")
    return parts


SEP = "  │  "


def format_metrics(m: Metrics, context_limit: int = 0, width: int | None = None) -> str:
    """The figures that fit in ``width`` cells, in priority order (all of them without a width)."""
    out = ""
    for part in metric_parts(m, context_limit):
        candidate = f"{out}{SEP}{part}" if out else part
        if width is not None and len(candidate) > width:
            break
        out = candidate
    return out


SPARK_WIDTH = 24


class MetricsBar(Horizontal):
    """Status, then the figures that fit (tok/s, context, memory, TTFT, reuse), then the sparkline if
    room is left: at 80 columns the status and the first figures stay, the sparkline goes first."""

    DEFAULT_CSS = """
    MetricsBar { height: 1; background: $panel; padding: 0 1; }
    MetricsBar > Static#metrics-text { width: 1fr; height: 1; }
    MetricsBar > Static#status { width: 20; height: 1; color: $accent; padding-right: 1; }
    MetricsBar.-narrow > Static#status { width: 13; }
    MetricsBar > Sparkline { width: 24; margin-left: 2; }
    MetricsBar.-no-spark > Sparkline { display: none; }
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

    def set_prefill(self, done: int, total: int) -> None:
        """Shows "prefill n/N" where it fits the status cell, else the share done; "generating" once over."""
        if done >= total:
            self.set_status("generating")
            return
        text = f"prefill {done}/{total}"
        if len(text) > self._status_width() - 1:
            text = f"prefill {100 * done // max(total, 1)}%"
        self.set_status(text)

    def on_resize(self) -> None:
        self.set_class(self.size.width < 100, "-narrow")  # size: inside the padding
        self._render_text()

    def _status_width(self) -> int:
        return 13 if self.has_class("-narrow") else 20

    def _render_text(self) -> None:
        """The sparkline shows only if tok/s, context and memory fit beside it; the remaining figures
        (TTFT, reuse) take what is left. The class changes rarely, so the layout it costs is rare too."""
        m = self.last or Metrics()
        room = self.size.width - self._status_width()
        core = SEP.join(p for p in metric_parts(m, self.context_limit)
                        if not p.startswith(("TTFT", "reused", "recomputed")))
        spark = room - len(core) >= SPARK_WIDTH + 2
        if spark == self.has_class("-no-spark"):
            self.set_class(not spark, "-no-spark")
        width = room - (SPARK_WIDTH + 2 if spark else 0)
        text = format_metrics(m, self.context_limit, width if self.size.width else None)
        self.query_one("#metrics-text", Static).update(text, layout=False)

    def show(self, m: Metrics) -> None:
        self.last = m
        if m.decode_tps and not m.final:
            self.history = [*self.history[-59:], float(m.decode_tps)]
            self.query_one(Sparkline).data = list(self.history)
        self._render_text()

    def reset_spark(self) -> None:
        self.history = []
        self.query_one(Sparkline).data = []

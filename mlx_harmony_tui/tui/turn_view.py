"""Draws the events of the running turn on the chat screen: streamed text, notices, tool pane, metrics.

Other events apply at once; streamed text is buffered and written at most every TEXT_FLUSH_S, because each
write re-lays out the screen, and that work competes with the model for the CPU.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from mlx_harmony_tui.chat import events as ev
from mlx_harmony_tui.tui.widgets.messages import AssistantMessage
from mlx_harmony_tui.tui.widgets.metrics_bar import MetricsBar
from mlx_harmony_tui.tui.widgets.tool_log import ToolLog

if TYPE_CHECKING:
    from mlx_harmony_tui.tui.app import HarmonyApp

TEXT_FLUSH_S = float(os.environ.get("MHT_TEXT_FLUSH_S", "0.2"))  # streamed text is written at most this often
FINISH_NOTES = {"cancelled": "⏹ stopped (partial reply kept)", "length": "max tokens reached"}


class TurnView:
    """The reply being drawn (``current``) and what is waiting to be written to it."""

    def __init__(self, app: HarmonyApp) -> None:
        self.app = app
        self.current: AssistantMessage | None = None
        self.text_buf: list[tuple[str, list[str]]] = []
        self.live_metrics: ev.Metrics | None = None  # the newest live figures, not yet shown
        self.last_flush = 0.0
        self.analysis_break = False  # the last finished message was analysis: the next one starts a paragraph

    @property
    def pending(self) -> bool:
        return bool(self.text_buf or self.live_metrics)

    async def apply(self, events: list[Any], final: bool = False) -> None:
        """One batch: consecutive deltas become one write."""
        for e in events:
            if isinstance(e, ev.Metrics) and not e.final:
                self.live_metrics = e  # shown with the next text write: one frame for both
                continue
            if isinstance(e, ev.Delta):
                if e.recipient:  # tool-call arguments: shown in the tool pane via ToolCallArgs
                    continue
                text = e.text
                if e.channel == "analysis" and self.analysis_break:
                    # A new analysis message (e.g. after a tool result): its own paragraph.
                    self.analysis_break = False
                    if self.current is not None and self.current.analysis_text:
                        text = "\n\n" + text
                if self.text_buf and self.text_buf[-1][0] == e.channel:
                    self.text_buf[-1][1].append(text)
                else:
                    self.text_buf.append((e.channel, [text]))
                continue
            await self.flush_text()
            await self.apply_one(e)
        if final or time.perf_counter() - self.last_flush >= TEXT_FLUSH_S:
            await self.flush_text()

    async def flush_text(self) -> None:
        """Write the buffered text and the latest live metrics in the same tick, so they share a frame."""
        app = self.app
        buf, self.text_buf = self.text_buf, []
        m, self.live_metrics = self.live_metrics, None
        if m is not None:
            app.screen_chat.query_one(MetricsBar).show(m)
        msg = self.current
        if not buf or msg is None:
            return
        self.last_flush = time.perf_counter()
        self.follow()
        with app.batch_update():  # text and metrics in one layout and one frame
            for channel, parts in buf:
                await msg.write(channel, "".join(parts))
        # A screen update tick that lands inside a batch (ours, or Markdown.append's around its mounts) is
        # skipped and pauses the screen's update timer until the screen next goes idle, which in a busy
        # stream can be a second later: a key typed meanwhile is handled but not drawn (measured: 0.5-1 s
        # outliers in scripts/ui_latency.py). Prompting the screen now resumes it at once.
        app.screen.check_idle()

    def follow(self) -> None:
        """Keep the newest text in view without a scroll frame per write: anchored, the conversation
        scrolls inside the layout pass that grows it. Anchored only once it overflows (Textual 8.2.8 gives
        short anchored content a negative offset, textual#6652); a user who scrolled up is left alone, and
        following resumes once they are back within two lines of the end (textual#6677)."""
        conv = self.app.conversation
        if conv.max_scroll_y <= 0:
            return
        if not conv.is_anchored:
            conv.anchor()  # first overflow of this turn, which started at the end (HarmonyApp.start_turn)
        elif conv.max_scroll_y - 2 <= conv.scroll_y < conv.max_scroll_y:
            conv.scroll_end(animate=False)  # back near the end: re-engage the released anchor

    def unfollow(self) -> None:
        """Before the conversation shrinks (see follow)."""
        self.app.conversation.anchor(False)

    async def apply_one(self, e: Any) -> None:  # noqa: C901 - one branch per event type reads best
        msg = self.current
        screen = self.app.screen_chat
        bar = screen.query_one(MetricsBar)
        tools = screen.query_one(ToolLog)
        if isinstance(e, ev.MessageDone):
            if e.channel == "analysis":
                self.analysis_break = True  # stays set across the tool call that may follow
        elif isinstance(e, ev.TurnStarted):
            if e.attempt and msg is not None:
                await msg.notice(f"↻ attempt {e.attempt + 1}")
        elif isinstance(e, ev.Metrics):
            bar.show(e)
        elif isinstance(e, ev.PrefillProgress):
            bar.set_prefill(e.done, e.total)
        elif isinstance(e, ev.ToolCallStarted):
            tools.remove_class("hidden")
            await tools.entry(e.call_id, e.recipient)
            if msg is not None:
                await msg.notice(f"⚙ calling {e.recipient}")
        elif isinstance(e, ev.ToolCallArgs):
            (await tools.entry(e.call_id, "?")).add_args(e.delta)
        elif isinstance(e, ev.ToolCall):
            (await tools.entry(e.call_id, e.recipient)).set_args(e.arguments)
        elif isinstance(e, ev.ToolResult):
            (await tools.entry(e.call_id, e.recipient)).set_result(e.output, e.error, e.duration_s)
        elif isinstance(e, ev.ToolConfirmation):
            self.app.confirm_tool(e)
        elif isinstance(e, ev.Retry) and msg is not None:
            # The failed attempt stays on screen, marked; the retry writes a reply of its own, so no text of
            # the failed attempt ends up inside the answer (the session record drops it the same way).
            await msg.notice(notice_for(e))
            self.current = AssistantMessage()
            self.analysis_break = False
            await self.app.conversation.mount(self.current)
        elif isinstance(e, ev.TurnFinished):
            bar.show(e.metrics)
            if msg is not None and e.reason != "stop":
                await msg.notice(FINISH_NOTES.get(e.reason, f"finished: {e.reason}"))
        elif msg is not None:
            note = notice_for(e)
            if note:
                await msg.notice(note, error=isinstance(e, ev.TurnFailed))


def notice_for(e: Any) -> str:
    """The one-line note a reply shows for a repair, a retry, a trimmed context or a failure."""
    if isinstance(e, ev.Recovery):
        return f"repaired model output: {e.kind} {e.detail}".strip()
    if isinstance(e, ev.Retry):
        about = "; ".join(t for t in (e.detail, e.change) if t)
        return f"↻ retrying ({e.reason}{': ' + about if about else ''})"
    if isinstance(e, ev.ContextTrimmed):
        return f"context full: dropped {e.dropped_messages} old message(s)"
    if isinstance(e, ev.TurnFailed):
        return f"error: {e.error}"
    return ""

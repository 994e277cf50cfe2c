"""Records a streaming turn (chat/events.py events) into a session, saving so a crash loses little.

Every completed message is saved at once; while a reply streams, the partial text is saved at most every
``save_interval`` seconds with ``incomplete=True``, so after a crash the file holds every completed message
and most of the partial one. A failed attempt's messages are removed when the turn retries, and the retry
(reason, detail and the failed text) is attached to the next reply that completes, or, when the turn
fails with none, to the failure's entry in ``session.extra["errors"]``.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from typing import Any

from mlx_harmony_tui.chat.events import (
    Delta,
    Event,
    MessageDone,
    Metrics,
    Retry,
    ToolCall,
    ToolCallArgs,
    ToolCallStarted,
    ToolResult,
    TurnFailed,
    TurnFinished,
    TurnStarted,
)
from mlx_harmony_tui.harmony.messages import HMessage
from mlx_harmony_tui.sessions.schema import Message, Session, now_iso
from mlx_harmony_tui.sessions.store import SessionStore

_METRIC_KEYS = ("prompt_tokens", "reused_tokens", "prefilled_tokens", "generated_tokens", "ttft_s",
                "prefill_tps", "decode_tps")


def _msg_id() -> str:
    return secrets.token_hex(6)


def metrics_dict(m: Metrics) -> dict[str, Any]:
    """The figures worth keeping per reply (memory gauges are not)."""
    d = dataclasses.asdict(m)
    return {k: d[k] for k in _METRIC_KEYS if d.get(k) is not None}


class SessionRecorder:
    """Feed it the user's text and then every event of the turn, in order; it keeps the session saved."""

    def __init__(self, store: SessionStore, session: Session, *, save_interval: float = 2.0,
                 params: dict[str, Any] | None = None) -> None:
        self.store = store
        self.session = session
        self.save_interval = save_interval
        self.params = params  # the generation parameters of the coming turns (set_params to change)
        self._streaming: Message | None = None
        self._attempt_start = len(session.messages)
        self._turn_start = len(session.messages)
        self._pending_retries: list[dict[str, Any]] = []
        self._last_save = 0.0
        self._delta_fed: set[str] = set()  # messages streamed by Delta (ToolCallArgs would repeat the text)
        self._last_params = self._effective_params()

    # helpers -----------------------------------------------------------------------------------------
    def _effective_params(self) -> dict[str, Any]:
        for m in reversed(self.session.messages):
            if m.params is not None:
                return m.params
        return self.session.params

    def set_params(self, params: dict[str, Any]) -> None:
        """Parameters for the next replies; recorded on the first reply whose parameters differ."""
        self.params = dict(params)

    def save(self) -> None:
        self.store.save(self.session)
        self._last_save = time.monotonic()

    def _append(self, message: Message) -> Message:
        if message.role == "assistant" and self.params is not None and self.params != self._last_params:
            message.params = dict(self.params)
            self._last_params = message.params
        self.session.messages.append(message)
        return message

    def _assistant(self, channel: str, text: str, recipient: str | None = None,
                   incomplete: bool = True) -> Message:
        return self._append(Message(id=_msg_id(), role="assistant", content=text, channel=channel,
                                    recipient=recipient, incomplete=incomplete))

    def _turn_messages(self) -> list[Message]:
        return self.session.messages[self._turn_start:]

    def _turn_user(self) -> Message | None:
        """The user message this turn answers (None for a turn that started without one)."""
        before = self.session.messages[self._turn_start - 1] if self._turn_start > 0 else None
        return before if before is not None and before.role == "user" else None

    # public ------------------------------------------------------------------------------------------
    def add_user(self, text: str) -> Message:
        """Append the user's message and save; the next events belong to the reply."""
        self._close_streaming()
        message = self._append(Message(id=_msg_id(), role="user", content=text))
        if not self.session.title:
            self.session.title = " ".join(text.split())[:60]
        self._turn_start = self._attempt_start = len(self.session.messages)
        self.save()
        return message

    def add_assistant_text(self, text: str) -> Message:
        """A complete assistant answer that no turn produced (the configured greeting)."""
        self._close_streaming()
        message = self._assistant("final", text, incomplete=False)
        self.save()
        return message

    def _close_streaming(self) -> None:
        self._streaming = None

    def _completed(self, message: Message) -> None:
        message.incomplete = False
        if self._pending_retries:
            message.retries.extend(self._pending_retries)
            self._pending_retries = []
        if self._streaming is message:
            self._streaming = None
        self.save()

    def _find_call(self, call_id: str) -> Message | None:
        for m in reversed(self._turn_messages()):
            if m.role == "assistant" and m.call_id == call_id:
                return m
        return None

    def on_event(self, event: Event) -> None:  # noqa: C901 - one branch per event type reads best
        """Update the session from one event; saves after completed messages, throttled while streaming."""
        if isinstance(event, TurnStarted):
            self._streaming = None
            if event.attempt == 0:
                self._turn_start = self._attempt_start = len(self.session.messages)
        elif isinstance(event, Delta):
            cur = self._streaming
            if cur is None or cur.channel != event.channel or cur.recipient != event.recipient:
                cur = self._streaming = self._assistant(event.channel, "", event.recipient)
            cur.content += event.text
            self._delta_fed.add(cur.id)
            if time.monotonic() - self._last_save >= self.save_interval:
                self.save()
        elif isinstance(event, MessageDone):
            cur = self._streaming
            last = self.session.messages[-1] if len(self.session.messages) > self._attempt_start else None
            if (event.recipient is not None and last is not None and last.call_id is not None
                    and last.recipient == event.recipient and not last.incomplete):
                return  # the ToolCall event already recorded this message
            if cur is None or cur.channel != event.channel or cur.recipient != event.recipient:
                # A backend may close its messages only at the end (the remote one closes the analysis after
                # the answer streamed): complete the streamed message, never add a second copy of it.
                streamed = [m for m in self.session.messages[self._attempt_start:] if m.role == "assistant"
                            and m.incomplete and m.channel == event.channel and m.recipient == event.recipient]
                cur = streamed[0] if streamed else self._assistant(event.channel, event.text, event.recipient)
            cur.content = event.text
            cur.content_type = event.content_type
            cur.created_at = now_iso()
            self._completed(cur)
        elif isinstance(event, ToolCallStarted):
            cur = self._streaming
            if cur is None or cur.recipient != event.recipient:
                cur = self._streaming = self._assistant(event.channel, "", event.recipient)
            cur.call_id = event.call_id
        elif isinstance(event, ToolCallArgs):
            cur = self._find_call(event.call_id)
            if cur is not None and cur.incomplete and cur.id not in self._delta_fed:
                cur.content += event.delta
            if time.monotonic() - self._last_save >= self.save_interval:
                self.save()
        elif isinstance(event, ToolCall):
            cur = self._find_call(event.call_id)
            if cur is None:
                last = self._streaming
                if last is not None and last.recipient == event.recipient:
                    cur = last
                else:
                    done = [m for m in self.session.messages[self._attempt_start:]
                            if m.role == "assistant" and m.recipient == event.recipient and m.call_id is None]
                    cur = done[-1] if done else self._assistant(event.channel, "", event.recipient)
            cur.call_id = event.call_id
            cur.channel = event.channel
            cur.content = event.arguments
            cur.content_type = event.content_type or cur.content_type
            self._completed(cur)
        elif isinstance(event, ToolResult):
            self._streaming = None
            call = self._find_call(event.call_id)
            # the same text the turn gives the model, so the next prompt renders what it saw
            text = event.output
            if event.error:
                text = f"Error: {event.error}\n{event.output}" if event.output else f"Error: {event.error}"
            message = Message(id=_msg_id(), role="tool", content=text, author=event.recipient,
                              channel=call.channel if call else "commentary", recipient="assistant",
                              call_id=event.call_id, metrics={"duration_s": round(event.duration_s, 4)})
            if event.error:
                message.extra["error"] = event.error
            self._append(message)
            self._attempt_start = len(self.session.messages)  # a later retry redoes only the next round
            self.save()
        elif isinstance(event, Retry):
            # the failed attempt's messages are not part of the conversation; keep its text in the record,
            # and the earlier retries its messages carried (they move on to the next attempt's reply)
            failed = self.session.messages[self._attempt_start:]
            self._pending_retries[:0] = [r for m in failed for r in m.retries]
            del self.session.messages[self._attempt_start:]
            self._last_params = self._effective_params()  # the deleted messages may have carried params
            self._streaming = None
            self._pending_retries.append({"attempt": event.attempt, "reason": event.reason,
                                          "detail": event.detail, "change": event.change,
                                          "failed_text": event.failed_text,
                                          "at": now_iso()})
            self.save()
        elif isinstance(event, TurnFinished):
            self._streaming = None
            replies = [m for m in self._turn_messages() if m.role == "assistant"]
            if not replies and event.reason != "stop" and (user := self._turn_user()) is not None:
                user.extra["finish_reason"] = event.reason  # stopped before any reply: the export marks it
            if replies:
                target = next((m for m in reversed(replies) if m.channel == "final"), replies[-1])
                target.metrics = {**metrics_dict(event.metrics), "finish_reason": event.reason}
                if self._pending_retries:
                    outcomes = {r.attempt: r.outcome for r in event.retries}
                    for entry in self._pending_retries:
                        entry.setdefault("outcome", outcomes.get(entry.get("attempt"), ""))
                    target.retries.extend(self._pending_retries)
                    self._pending_retries = []
            self.save()
        elif isinstance(event, TurnFailed):
            self._streaming = None
            error: dict[str, Any] = {"at": now_iso(), "error": event.error}
            if self._pending_retries:  # no reply took them: the failure keeps what the attempts wrote
                error["retries"], self._pending_retries = self._pending_retries, []
            self.session.extra.setdefault("errors", []).append(error)
            if (user := self._turn_user()) is not None:
                user.extra["error"] = event.error  # the export marks the turn failed
            # The failed turn's messages stay in the record (nothing is lost) but are marked, so the next
            # prompt does not feed a looping or broken answer back to the model.
            for m in reversed(self.session.messages):
                if m.role == "user":
                    break
                m.extra["failed"] = True
            self.save()
        # Metrics (live), PrefillProgress, Recovery, ContextTrimmed, ToolConfirmation: nothing to keep

    def finish(self) -> None:
        """Save whatever is pending (call at the end of a turn or on cancel)."""
        self._streaming = None
        self.save()


def to_hmessages(session: Session) -> list[HMessage]:
    """The conversation for rendering the next prompt. A partial reply stays (the user saw it) except an
    unfinished tool call, which has no result and would confuse the model, and the messages of a turn that
    failed (kept in the record, marked ``extra["failed"]``)."""
    out: list[HMessage] = []
    for m in session.messages:
        if m.incomplete and m.role == "assistant" and m.recipient is not None:
            continue
        if m.extra.get("failed"):
            continue
        out.append(HMessage(role=m.role, text=m.content, channel=m.channel, recipient=m.recipient,
                            content_type=m.content_type, author=m.author))
    return out

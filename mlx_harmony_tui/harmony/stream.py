"""Generated token ids -> typed events, tolerant of the malformed Harmony that GPT-OSS really produces.

openai-harmony's ``StreamableParser`` is strict about message framing: a doubled ``<|start|>``, a stray
``assistant`` between messages or bare text with no header make it raise or stall, and it misreads some
header variants (``<|channel|>final<|constrain|>json`` becomes a recipient). So we frame messages ourselves
from the special-token ids (which are unambiguous), read and repair each header, and then feed a fresh
``StreamableParser`` the canonical header plus the message's content token ids; it does the incremental UTF-8
decoding of the content. Every repair is reported as a ``Recovery`` event; what cannot be repaired goes to
``errors``. Nothing here raises on model output.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Any

import openai_harmony as oh

from mlx_harmony_tui.harmony.events import (
    Channel,
    Delta,
    MessageDone,
    Recovery,
    StreamEvent,
    ToolCall,
    ToolCallArgs,
    ToolCallStarted,
)
from mlx_harmony_tui.harmony.header import MAX_HEADER_TOKENS, Header, parse_header
from mlx_harmony_tui.harmony.messages import HMessage

__all__ = ["HarmonyStream", "Header", "parse_header"]  # parse_header is re-exported for the tests

@dataclass
class _Open:
    """The message being streamed."""

    channel: Channel
    recipient: str | None
    content_type: str | None
    call_id: str | None
    parser: Any  # oh.StreamableParser | None (None after it failed: we decode ourselves)
    skip: bool = False
    ids: list[int] = field(default_factory=list)
    text: str = ""


class HarmonyStream:
    """Tokens of one generation (after a prompt ending in ``<|start|>assistant``) -> events."""

    def __init__(self, encoding: Any) -> None:
        self._enc = encoding
        sp = {n: encoding.encode(f"<|{n}|>", allowed_special="all")[0] for n in
              ("start", "end", "message", "channel", "constrain", "return", "call", "endoftext")}
        self._id = sp
        self._names = {v: k for k, v in sp.items()}
        self._state = "header"  # "start" | "header" | "content"
        self._expect_role = False  # the prompt already gave the role
        self._hdr: list[int] = []
        self._msg: _Open | None = None
        self._finished = False
        self._pending_call: HMessage | None = None
        self.messages: list[HMessage] = []
        self.incomplete: list[int] = []  # indexes into messages of partial (cut off) messages
        self.errors: list[str] = []
        self.recoveries: list[Recovery] = []
        self.stop_token: str | None = None  # "<|return|>", "<|call|>" or "<|endoftext|>"

    # ---------------------------------------------------------------- public
    @property
    def tool_call(self) -> HMessage | None:
        """The call the output ended in (to run before the next generation), if any."""
        return self._pending_call

    @property
    def open_message(self) -> tuple[Channel, str | None] | None:
        """(channel, recipient) of the message whose content the next token belongs to, or None in a header."""
        if self._state != "content" or self._msg is None or self._msg.skip:
            return None
        return self._msg.channel, self._msg.recipient

    @property
    def text_by_channel(self) -> dict[str, str]:
        """Text per channel of messages without a recipient (tool arguments excluded), incl. the open one."""
        out: dict[str, list[str]] = {}
        for m in self.messages:
            if m.recipient is None and m.channel:
                out.setdefault(m.channel, []).append(m.text)
        if self._msg is not None and self._msg.recipient is None and not self._msg.skip:
            out.setdefault(self._msg.channel, []).append(self._msg.text)
        return {k: "\n\n".join(v) for k, v in out.items()}

    def feed(self, token_id: int) -> list[StreamEvent]:
        """Process one generated token id; returns the events it completes."""
        if self._finished:
            return []
        out: list[StreamEvent] = []
        try:
            self._feed(int(token_id), out)
        except Exception as e:  # noqa: BLE001 - a parser bug must not take the turn down; it is reported
            self.errors.append(f"internal parser error at token {token_id}: {e!r}")
            self._msg = None
            self._hdr = []
            self._state = "start"
        return out

    def finish(self, reason: str) -> list[StreamEvent]:
        """Flush at the end of generation. reason: "stop" | "length" | "cancelled" | "loop"."""
        if self._finished:
            return []
        self._finished = True
        out: list[StreamEvent] = []
        try:
            partial = reason != "stop"
            if self._state == "header" and self._hdr:
                h = self._parse(complete=True)
                if h.content_at is not None or h.words:
                    self._open(h, out)
                    if self._msg is not None and (self._msg.text or not partial):
                        self._close(None, out, partial=partial, reason=reason)
                    else:
                        self._msg = None
            elif self._state == "content" and self._msg is not None:
                if not partial:
                    self._recover(out, "unterminated", "the output ended inside a message")
                self._close(None, out, partial=partial, reason=reason)
            if not self.messages and reason == "stop":
                self.errors.append("the model produced no message")
        except Exception as e:  # noqa: BLE001
            self.errors.append(f"internal parser error at finish: {e!r}")
        return out

    # ---------------------------------------------------------------- framing
    def _feed(self, tok: int, out: list[StreamEvent]) -> None:
        name = self._names.get(tok)
        if name is None and self._is_special(tok):
            self._recover(out, "stray_token", f"{self._token_text(tok)} ignored")
            return
        if name in ("return", "call", "endoftext"):
            self.stop_token = f"<|{name}|>"
        if self._state == "start":
            if name == "start":
                self._begin_header(expect_role=True)
                return
            if name in ("end", "return", "call", "endoftext"):
                if name == "end":
                    self._recover(out, "stray_token", "<|end|> between messages ignored")
                return
            self._recover(out, "missing_start", f"message began with {self._token_text(tok)!r}, not <|start|>")
            self._begin_header(expect_role=True)
            self._header_token(tok, name, out)
            return
        if self._state == "header":
            self._header_token(tok, name, out)
            return
        # content
        if name is None:
            self._content_token(tok, out)
        elif name in ("end", "return", "call", "endoftext"):
            self._close(tok, out)
        elif name == "start":
            self._recover(out, "missing_end", "a new message began before <|end|>")
            self._close(None, out)
            self._begin_header(expect_role=True)
        elif name == "channel":
            self._recover(out, "missing_end", "<|channel|> inside a message began a new one")
            self._close(None, out)
            self._begin_header(expect_role=False)
            self._hdr.append(tok)
        else:  # <|message|> or <|constrain|> inside content
            self._recover(out, "stray_token", f"<|{name}|> inside a message ignored")

    def _begin_header(self, expect_role: bool) -> None:
        self._state = "header"
        self._expect_role = expect_role
        self._hdr = []

    def _header_token(self, tok: int, name: str | None, out: list[StreamEvent]) -> None:
        if name == "start":
            if self._hdr:
                self._recover(out, "abandoned_header", repr(self._header_text().replace("\x01", "|")))
            else:
                self._recover(out, "doubled_start", "repeated <|start|> ignored")
            self._begin_header(expect_role=True)
            return
        if name == "message":
            h = self._parse(complete=True)
            leaked = h.content_at is not None
            self._open(h, out, leaked_kind="header_junk" if leaked else None)
            return
        if name in ("end", "return", "call", "endoftext"):
            h = self._parse(complete=True)
            if h.content_at is None and not h.words and h.channel is None:
                if self._hdr:
                    self._recover(out, "empty_message", "a header with nothing in it was dropped")
                self._state = "start"
                self._hdr = []
                return
            self._open(h, out)
            self._close(tok, out)
            return
        self._hdr.append(tok)
        if name is not None:
            return
        h = self._parse(complete=False)
        if h.content_at is not None:
            self._open(h, out)
        elif len(self._hdr) > MAX_HEADER_TOKENS:
            h = self._parse(complete=True)
            if h.content_at is None:
                h.content_at = 0
            self._open(h, out)

    # ---------------------------------------------------------------- header -> message
    def _header_text(self) -> str:
        parts: list[str] = []
        run: list[int] = []
        for t in self._hdr:
            nm = self._names.get(t)
            if nm is None:
                run.append(t)
                continue
            if run:
                parts.append(self._enc.decode(run))
                run = []
            parts.append(f"\x01{nm}\x01")
        if run:
            parts.append(self._enc.decode(run))
        return "".join(parts)

    def _parse(self, complete: bool) -> Header:
        return parse_header(self._header_text(), complete, self._expect_role)

    def _open(self, h: Header, out: list[StreamEvent], leaked_kind: str | None = None) -> None:
        """Start the message a header describes; leaked header text becomes its first content."""
        text = self._header_text()
        leaked = ""
        if h.content_at is not None:
            leaked = re.sub(r"\x01\w+\x01", "", text[h.content_at :]).lstrip("\n")
            if h.channel is None and h.recipient is None:
                self._recover(out, "no_header", "text with no Harmony header, read as the final answer")
            else:
                self._recover(out, leaked_kind or "missing_message", "header ran into content with no <|message|>")
        elif h.channel is None:
            self._recover(out, "missing_channel", "header without a channel")
        for kind, detail in h.notes:
            self._recover(out, kind, detail)
        self._hdr = []
        self._state = "content"
        self._pending_call = None
        if h.role is not None and h.role != "assistant":
            self.errors.append(f"the model wrote a message as {h.role!r} (not assistant); it was ignored")
            self._msg = _Open("final", None, None, None, None, skip=True)
            return
        recipient = h.recipient
        if recipient in ("assistant", "user", "all"):
            self._recover(out, "bad_recipient", f"recipient {recipient!r} dropped")
            recipient = None
        channel: Channel = h.channel or ("commentary" if recipient else "final")  # type: ignore[assignment]
        call_id = "call_" + uuid.uuid4().hex[:12] if recipient else None
        parser: Any = None
        try:
            parser = oh.StreamableParser(self._enc, oh.Role.ASSISTANT)
            for t in self._enc.encode(f"<|channel|>{channel}<|message|>", allowed_special="all"):
                parser.process(t)
        except Exception as e:  # noqa: BLE001
            self.errors.append(f"openai-harmony parser failed on a canonical header: {e}")
            parser = None
        self._msg = _Open(channel, recipient, h.content_type, call_id, parser)
        if recipient:
            out.append(ToolCallStarted(call_id or "", recipient, channel))
            if channel == "analysis":
                self._recover(out, "call_on_analysis", f"call to {recipient} on the analysis channel kept as a call")
        if leaked:
            before = len(out)
            for t in self._enc.encode(leaked, disallowed_special=()):
                self._content_token(t, out)
            _merge_deltas(out, before)

    def _content_token(self, tok: int, out: list[StreamEvent]) -> None:
        msg = self._msg
        if msg is None or msg.skip:
            return
        msg.ids.append(tok)
        delta: str | None = None
        if msg.parser is not None:
            try:
                msg.parser.process(tok)
                delta = msg.parser.last_content_delta
            except Exception as e:  # noqa: BLE001
                self.errors.append(f"openai-harmony parser failed on content: {e}; decoding directly")
                msg.parser = None
        if msg.parser is None:
            full = self._enc.decode(msg.ids)
            if full.endswith("\ufffd"):
                return  # an unfinished UTF-8 sequence: wait for its next byte
            delta = full[len(msg.text) :]
        if not delta:
            return
        msg.text += delta
        if msg.recipient:
            out.append(ToolCallArgs(msg.call_id or "", delta))
        else:
            out.append(Delta(msg.channel, delta))

    def _close(self, term: int | None, out: list[StreamEvent], partial: bool = False, reason: str = "") -> None:
        msg = self._msg
        self._msg = None
        self._state = "start"
        if msg is None or msg.skip:
            return
        term_name = self._names.get(term) if term is not None else None
        hm = HMessage(role="assistant", text=msg.text, channel=msg.channel, recipient=msg.recipient,
                      content_type=msg.content_type)
        self.messages.append(hm)
        if partial:
            self.incomplete.append(len(self.messages) - 1)
        out.append(MessageDone(msg.channel, msg.text, msg.recipient, msg.content_type))
        if msg.recipient:
            if partial:
                self.errors.append(f"the call to {msg.recipient} was cut off ({reason}); it was not run")
                return
            if term_name != "call":
                self._recover(out, "call_terminator", f"call to {msg.recipient} ended with "
                              f"{'<|' + term_name + '|>' if term_name else 'nothing'}, not <|call|>")
            out.append(ToolCall(msg.call_id or "", msg.recipient, msg.text, msg.channel, msg.content_type))
            self._pending_call = hm
        elif term_name == "call":
            self._recover(out, "call_without_recipient", "<|call|> ended a message with no recipient")

    # ---------------------------------------------------------------- helpers
    def _recover(self, out: list[StreamEvent], kind: str, detail: str) -> None:
        ev = Recovery(kind, detail)
        self.recoveries.append(ev)
        out.append(ev)

    def _is_special(self, tok: int) -> bool:
        try:
            return bool(self._enc.is_special_token(tok))
        except Exception:  # noqa: BLE001 - an id outside the vocabulary
            return True

    def _token_text(self, tok: int) -> str:
        try:
            return self._enc.decode([tok])
        except Exception:  # noqa: BLE001
            return f"<token {tok}>"


def _merge_deltas(out: list[StreamEvent], start: int) -> None:
    """Join the consecutive deltas produced from one recovered chunk, so faces get one update."""
    merged: list[StreamEvent] = []
    for ev in out[start:]:
        prev = merged[-1] if merged else None
        if isinstance(ev, Delta) and isinstance(prev, Delta) and prev.channel == ev.channel:
            merged[-1] = Delta(ev.channel, prev.text + ev.text, ev.recipient)
        elif isinstance(ev, ToolCallArgs) and isinstance(prev, ToolCallArgs) and prev.call_id == ev.call_id:
            merged[-1] = ToolCallArgs(ev.call_id, prev.delta + ev.delta)
        else:
            merged.append(ev)
    out[start:] = merged

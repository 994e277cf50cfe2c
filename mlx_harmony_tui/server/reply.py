"""A turn's events -> an OpenAI chat completion: one message, or SSE chunks as the events come
(``reasoning_content``, ``content``, ``tool_calls`` with JSON arguments, usage), with stop strings applied
and calls to tools the request did not declare reported instead of passed on."""

from __future__ import annotations

import json
from typing import Any

from mlx_harmony_tui.chat.events import (
    Delta,
    Event,
    Metrics,
    Retry,
    TokenLogprob,
    ToolCall,
    ToolCallArgs,
    ToolCallStarted,
    TurnFailed,
    TurnFinished,
)
from mlx_harmony_tui.chat.openai_messages import function_name
from mlx_harmony_tui.server.logprobs import entry as logprob_entry
from mlx_harmony_tui.server.logprobs import visible as visible_logprob
from mlx_harmony_tui.server.schemas import ToolRoute
from mlx_harmony_tui.server.turns import tool_root


class ReplyBuilder:
    """Turns the event stream of one turn into OpenAI deltas, and accumulates the whole reply.

    Stop strings apply to the visible text: text that could be the start of a stop string is held back until
    it is clear, so a stop string never reaches the client.

    ``routes`` (recipient -> client function) are the tools the request offered; a call to any other recipient
    is not passed on as a tool call (the client could not run it) but reported in the content. None passes
    every call on under its own name.
    """

    def __init__(
        self,
        stops: list[str] | None = None,
        routes: dict[str, ToolRoute] | None = None,
        runs_here: frozenset[str] = frozenset(),
    ) -> None:
        self.runs_here = runs_here  # built-in tools the server runs itself: their calls are not the client's
        self._hidden: set[str] = set()  # call ids of those
        self.stops = stops or []
        self.routes = routes
        self._undeclared: dict[str, str] = {}  # call id -> recipient the request did not offer
        self._recipients: dict[str, str] = {}  # call id -> recipient of each call passed on
        self._hold = max((len(s) for s in self.stops), default=1) - 1
        self._pending = ""
        self.content = ""
        self.reasoning = ""
        self.tool_calls: list[dict[str, Any]] = []
        self._tool_index: dict[str, int] = {}
        self._args_streamed: set[str] = set()
        self.stopped = False  # a stop string was hit: the caller cancels the turn
        self.finish_reason: str | None = None
        self.error: str | None = None
        self.metrics: Metrics | None = None
        self.retries: list[dict[str, Any]] = []
        self.logprobs: list[dict[str, Any]] | None = (
            None  # the answer's token log-probabilities, when asked for
        )
        self._logprobs_pending: list[dict[str, Any]] = []

    def feed(self, ev: Event) -> list[dict[str, Any]]:
        """Deltas (``choices[0].delta`` objects) for one event; an empty list for events clients don't see."""
        if isinstance(ev, Delta):
            if ev.channel == "analysis":
                if self.stopped:
                    return []
                self.reasoning += ev.text
                return [{"reasoning_content": ev.text, "reasoning": ev.text}]
            if ev.recipient is None:  # final answer, or a preamble before tool calls
                return self._content(ev.text)
            return []  # tool-call arguments: sent as tool_calls below
        if isinstance(ev, TokenLogprob):
            if visible_logprob(ev) and not self.stopped:
                e = logprob_entry(ev)
                self.logprobs = [*(self.logprobs or []), e]
                self._logprobs_pending.append(e)
            return []
        if (
            isinstance(ev, ToolCallStarted | ToolCall)
            and tool_root(ev.recipient) in self.runs_here
            and not (self.routes and ev.recipient in self.routes)
        ):  # a client's own function stays its
            self._hidden.add(ev.call_id)
        if isinstance(ev, ToolCallStarted | ToolCallArgs | ToolCall) and ev.call_id in self._hidden:
            return []
        if isinstance(ev, ToolCallStarted):
            if self.stopped:
                return []
            route = self._route(ev.recipient)
            if route is None:
                self._undeclared[ev.call_id] = ev.recipient
                return []
            idx = len(self.tool_calls)
            self._tool_index[ev.call_id] = idx
            self._recipients[ev.call_id] = ev.recipient
            start = (
                wrap_arguments(route, "")[:-2] if route.wrap else ""
            )  # '{"code": "' before the streamed code
            call = {
                "id": call_id_for(ev.call_id),
                "type": "function",
                "function": {"name": route.name, "arguments": start},
            }
            self.tool_calls.append(call)
            return [
                {
                    "tool_calls": [
                        {
                            "index": idx,
                            "id": call["id"],
                            "type": "function",
                            "function": {"name": route.name, "arguments": start},
                        }
                    ]
                }
            ]
        if isinstance(ev, ToolCallArgs):
            idx = self._tool_index.get(ev.call_id)
            if idx is None or self.stopped:
                return []
            self._args_streamed.add(ev.call_id)
            route = self._route(self._recipients.get(ev.call_id, ""))
            delta = (
                json.dumps(ev.delta)[1:-1] if route and route.wrap else ev.delta
            )  # escaping is per character
            self.tool_calls[idx]["function"]["arguments"] += delta
            return [{"tool_calls": [{"index": idx, "function": {"arguments": delta}}]}]
        if isinstance(ev, ToolCall):
            if self.stopped:
                return []
            if ev.call_id in self._undeclared or self._route(ev.recipient) is None:
                self._undeclared.pop(ev.call_id, None)
                return self._content(
                    f"{chr(10) * 2 if self.content else ''}[The model called {ev.recipient!r}, "
                    "a tool this request did not declare; nothing was run.]"
                )
            idx = self._tool_index.get(ev.call_id)
            out: list[dict[str, Any]] = []
            if idx is None:  # a call without a started event: announce it whole
                out = self.feed(ToolCallStarted(ev.call_id, ev.recipient, ev.channel))
                idx = self._tool_index[ev.call_id]
            call = self.tool_calls[idx]
            route = self._route(ev.recipient)
            arguments = wrap_arguments(route, ev.arguments) if route and route.wrap else ev.arguments
            if call["function"]["arguments"] != arguments:
                rest = (
                    arguments[len(call["function"]["arguments"]) :]
                    if arguments.startswith(call["function"]["arguments"])
                    else None
                )
                if rest is not None and rest:
                    out.append({"tool_calls": [{"index": idx, "function": {"arguments": rest}}]})
                call["function"]["arguments"] = arguments
            return out
        if isinstance(ev, Retry):
            # The failed attempt is superseded: the complete reply holds only the last attempt. A streaming
            # client already has its text; the retry itself is an SSE comment (see _stream), never text.
            self.retries.append({"attempt": ev.attempt, "reason": ev.reason, "change": ev.change})
            self.content = ""
            self.reasoning = ""
            self._pending = ""
            self.tool_calls.clear()
            self._tool_index.clear()
            self._recipients.clear()
            self._undeclared.clear()
            return []
        if isinstance(ev, Metrics):
            if ev.final:
                self.metrics = ev
            return []
        if isinstance(ev, TurnFinished):
            out = self._flush()
            m = ev.metrics
            if m.prompt_tokens or m.generated_tokens or self.metrics is None:
                self.metrics = m
            if ev.reason == "error":
                self.error = self.error or "generation failed"
            if self.stopped:
                self.finish_reason = "stop"
            elif self.tool_calls:
                self.finish_reason = "tool_calls"
            elif ev.reason == "length":
                self.finish_reason = "length"
            else:
                self.finish_reason = "stop"
            return out
        if isinstance(ev, TurnFailed):
            self.error = ev.error
            return []
        return []

    def _route(self, recipient: str) -> ToolRoute | None:
        if self.routes is None:
            return ToolRoute(function_name(recipient))
        return self.routes.get(recipient.strip())

    def _content(self, text: str) -> list[dict[str, Any]]:
        if self.stopped or not text:
            return []
        if not self.stops:
            self.content += text
            return [{"content": text}]
        buf = self._pending + text
        hits = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            emit, self._pending, self.stopped = buf[: min(hits)], "", True
        else:
            cut = max(0, len(buf) - self._hold)
            emit, self._pending = buf[:cut], buf[cut:]
        self.content += emit
        return [{"content": emit}] if emit else []

    def _flush(self) -> list[dict[str, Any]]:
        emit, self._pending = self._pending, ""
        if emit and not self.stopped:
            self.content += emit
            return [{"content": emit}]
        return []

    def take_logprobs(self) -> dict[str, Any] | None:
        """The log-probabilities of the text sent since the last call (for one streamed chunk)."""
        if not self._logprobs_pending:
            return None
        out, self._logprobs_pending = self._logprobs_pending, []
        return {"content": out, "refusal": None}

    def usage(self) -> dict[str, Any]:
        m = self.metrics or Metrics()
        return {
            "prompt_tokens": m.prompt_tokens,
            "completion_tokens": m.generated_tokens,
            "total_tokens": m.prompt_tokens + m.generated_tokens,
            "prompt_tokens_details": {"cached_tokens": m.reused_tokens},
        }

    def message(self) -> dict[str, Any]:
        msg: dict[str, Any] = {
            "role": "assistant",
            "content": self.content or (None if self.tool_calls else ""),
        }
        if self.reasoning:
            msg["reasoning_content"] = self.reasoning
            msg["reasoning"] = self.reasoning
        if self.tool_calls:
            msg["tool_calls"] = self.tool_calls
        return msg


def call_id_for(call_id: str) -> str:
    return call_id if call_id.startswith("call_") else f"call_{call_id}"


def wrap_arguments(route: ToolRoute, text: str) -> str:
    """Plain-text arguments (python code) as the JSON object OpenAI clients expect."""
    return json.dumps({route.wrap: text})

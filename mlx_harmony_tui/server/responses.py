"""POST /v1/responses (the Responses API, GPT-OSS's native API), GET/DELETE /v1/responses/{id}.

The turn's events become output items (reasoning, message, function_call) and, when streaming, the
documented event sequence: response.created, response.in_progress, then per item output_item.added,
content_part.added, the deltas (reasoning_text / output_text / function_call_arguments), their .done events
and output_item.done, and at the end response.completed (or .incomplete when max_output_tokens cut the reply,
or .failed). Stored responses (store, the default) keep their whole conversation, so a request with
previous_response_id renders the same prefix again and the engine's prompt cache serves it without prefill.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from mlx_harmony_tui.backends.base import Backend, TurnRequest
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
from mlx_harmony_tui.chat.settings import ChatSettings
from mlx_harmony_tui.harmony.messages import HMessage
from mlx_harmony_tui.server.drive import disconnected, drive, stream_response
from mlx_harmony_tui.server.logprobs import entry as logprob_entry
from mlx_harmony_tui.server.logprobs import visible
from mlx_harmony_tui.server.queue import GenerationQueue
from mlx_harmony_tui.server.responses_input import ResponsesRequest, check_fields, to_messages, to_settings
from mlx_harmony_tui.server.schemas import PYTHON, APIError, ToolRoute, pick, validated
from mlx_harmony_tui.server.turns import check_fits

MAX_STORED = 1000


@dataclass
class Stored:
    doc: dict[str, Any]
    history: list[HMessage]  # the conversation including this response's output
    calls: dict[str, str] = field(default_factory=dict)  # call_id -> Harmony recipient


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


class OutputBuilder:
    """One turn's events -> Responses output items, and the stream events that build them."""

    def __init__(self, routes: dict[str, ToolRoute]) -> None:
        self.routes = routes
        self.items: list[dict[str, Any]] = []
        self._first = 0  # index of the current attempt's first item (a retry supersedes earlier ones)
        self._open: dict[str, Any] | None = None  # the reasoning or message item text is going to
        self._calls: dict[str, dict[str, Any]] = {}  # turn call id -> function_call item
        self._pending_lp: list[dict[str, Any]] = []
        self.call_ids: dict[str, str] = {}  # client call_id -> Harmony recipient
        self.metrics: Metrics | None = None
        self.finish: str | None = None
        self.error: str | None = None

    @property
    def output(self) -> list[dict[str, Any]]:
        return self.items[self._first:]

    def feed(self, ev: Event) -> list[dict[str, Any]]:
        if isinstance(ev, TokenLogprob):
            if visible(ev):
                self._pending_lp.append(logprob_entry(ev))
            return []
        if isinstance(ev, Delta):
            if ev.recipient is not None or not ev.text:
                return []  # tool-call arguments arrive as ToolCallArgs
            return self._text("reasoning" if ev.channel == "analysis" else ev.channel or "final", ev.text)
        if isinstance(ev, ToolCallStarted):
            route = self.routes.get(ev.recipient.strip())
            if route is None:
                return []
            out = self._close()
            item = {"id": _id("fc"), "type": "function_call", "status": "in_progress", "name": route.name,
                    "call_id": ev.call_id if ev.call_id.startswith("call_") else f"call_{ev.call_id}",
                    "arguments": ""}
            self._calls[ev.call_id] = item
            self.call_ids[item["call_id"]] = ev.recipient.strip()
            return out + self._add(item)
        if isinstance(ev, ToolCallArgs):
            item = self._calls.get(ev.call_id)
            route = self.routes.get(self.call_ids.get(item["call_id"], "")) if item else None
            if item is None or route is None or route.wrap:
                return []  # python code: sent whole, wrapped as JSON, when the call is complete
            item["arguments"] += ev.delta
            return [{"type": "response.function_call_arguments.delta", "item_id": item["id"],
                     "output_index": self.items.index(item), "delta": ev.delta}]
        if isinstance(ev, ToolCall):
            return self._tool_call(ev)
        if isinstance(ev, Retry):
            out = self._close()
            self._first = len(self.items)
            self._calls.clear()
            return out
        if isinstance(ev, Metrics):
            if ev.final:
                self.metrics = ev
            return []
        if isinstance(ev, TurnFinished):
            if ev.metrics.prompt_tokens or ev.metrics.generated_tokens or self.metrics is None:
                self.metrics = ev.metrics
            self.finish = ev.reason
            return self._close()
        if isinstance(ev, TurnFailed):
            self.error = ev.error
            return self._close()
        return []

    def _tool_call(self, ev: ToolCall) -> list[dict[str, Any]]:
        recipient = ev.recipient.strip()
        route = self.routes.get(recipient)
        if route is None:  # a tool the request did not offer: nothing the client could run
            return self._text("final", f"[The model called {recipient!r}, a tool this request did not declare; "
                                       "nothing was run.]")
        out: list[dict[str, Any]] = []
        item = self._calls.get(ev.call_id)
        if item is None:
            out += self.feed(ToolCallStarted(ev.call_id, ev.recipient, ev.channel))
            item = self._calls[ev.call_id]
        args = json.dumps({route.wrap: ev.arguments}) if route.wrap else ev.arguments
        index = self.items.index(item)
        if args != item["arguments"]:
            rest = args[len(item["arguments"]):] if args.startswith(item["arguments"]) else args
            if not args.startswith(item["arguments"]):
                item["arguments"] = ""
            item["arguments"] += rest
            out.append({"type": "response.function_call_arguments.delta", "item_id": item["id"],
                        "output_index": index, "delta": rest})
        item["status"] = "completed"
        out.append({"type": "response.function_call_arguments.done", "item_id": item["id"], "output_index": index,
                    "name": item["name"], "arguments": item["arguments"]})
        out.append({"type": "response.output_item.done", "output_index": index, "item": dict(item)})
        return out

    def _add(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        self.items.append(item)
        return [{"type": "response.output_item.added", "output_index": len(self.items) - 1, "item": dict(item)}]

    def _text(self, kind: str, text: str) -> list[dict[str, Any]]:
        want = "reasoning" if kind == "reasoning" else "message"
        phase = "commentary" if kind == "commentary" else "final_answer"
        out: list[dict[str, Any]] = []
        cur = self._open
        if cur is None or cur["type"] != want or cur.get("phase", phase) != phase:
            out += self._close()
            if want == "reasoning":
                cur = {"id": _id("rs"), "type": "reasoning", "status": "in_progress", "summary": [], "content": []}
                part = {"type": "reasoning_text", "text": ""}
            else:
                cur = {"id": _id("msg"), "type": "message", "role": "assistant", "status": "in_progress",
                       "content": [], "phase": phase}
                part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            out += self._add(cur)
            cur["content"].append(part)
            self._open = cur
            out.append({"type": "response.content_part.added", "item_id": cur["id"],
                        "output_index": len(self.items) - 1, "content_index": 0, "part": dict(part)})
        part = cur["content"][0]
        part["text"] += text
        index = len(self.items) - 1
        if want == "reasoning":
            out.append({"type": "response.reasoning_text.delta", "item_id": cur["id"], "output_index": index,
                        "content_index": 0, "delta": text})
        else:
            lps, self._pending_lp = self._pending_lp, []
            part["logprobs"] += lps
            out.append({"type": "response.output_text.delta", "item_id": cur["id"], "output_index": index,
                        "content_index": 0, "delta": text, "logprobs": lps})
        return out

    def _close(self) -> list[dict[str, Any]]:
        cur, self._open = self._open, None
        if cur is None:
            return []
        cur["status"] = "completed"
        index = self.items.index(cur)
        part = cur["content"][0]
        base = {"item_id": cur["id"], "output_index": index, "content_index": 0}
        if cur["type"] == "reasoning":
            done = {"type": "response.reasoning_text.done", **base, "text": part["text"]}
        else:
            done = {"type": "response.output_text.done", **base, "text": part["text"], "logprobs": part["logprobs"]}
        return [done, {"type": "response.content_part.done", **base, "part": dict(part)},
                {"type": "response.output_item.done", "output_index": index, "item": json.loads(json.dumps(cur))}]

    def messages(self) -> list[HMessage]:
        """The output as conversation messages, for a later previous_response_id."""
        out = []
        for item in self.output:
            if item["type"] == "reasoning":
                out.append(HMessage(role="assistant", text=item["content"][0]["text"], channel="analysis"))
            elif item["type"] == "message":
                channel = "commentary" if item.get("phase") == "commentary" else "final"
                out.append(HMessage(role="assistant", text=item["content"][0]["text"], channel=channel))
            elif item["type"] == "function_call":
                recipient = self.call_ids.get(item["call_id"], f"functions.{item['name']}")
                if recipient == PYTHON:
                    code = json.loads(item["arguments"]).popitem()[1] if item["arguments"] else ""
                    out.append(HMessage(role="assistant", text=code, channel="analysis", recipient=PYTHON))
                else:
                    out.append(HMessage(role="assistant", text=item["arguments"], channel="commentary",
                                        recipient=recipient, content_type="<|constrain|>json"))
        return out


ReadJson = Callable[[Request], Awaitable[Any]]


def register_responses(app: FastAPI, backends: Mapping[str, Backend], base: ChatSettings,
                       gen_queue: GenerationQueue, read_json: ReadJson, turns: set[Any]) -> None:
    stored: OrderedDict[str, Stored] = OrderedDict()

    @app.post("/v1/responses")
    async def create_response(request: Request) -> Any:
        data = await read_json(request)
        req = validated(ResponsesRequest, data)
        check_fields(data)
        name, backend = pick(backends, req.model)
        history: list[HMessage] = []
        calls: dict[str, str] = {}
        if req.previous_response_id:
            prev = stored.get(req.previous_response_id)
            if prev is None:
                raise APIError(404, f"previous response {req.previous_response_id!r} was not found (not stored, "
                               "or the server restarted)", param="previous_response_id",
                               code="previous_response_not_found")
            history, calls = list(prev.history), dict(prev.calls)
        items = [{"role": "user", "content": req.input}] if isinstance(req.input, str) else req.input
        settings, routes = to_settings(req, base, [])
        new, instructions = to_messages(items, PYTHON in settings.builtin_tools, calls)
        if instructions:
            settings.instructions = "\n\n".join(t for t in [settings.instructions, *instructions] if t)
        if not new:
            raise APIError(400, "input must contain at least one item", param="input")
        messages = history + new
        turn_request = TurnRequest(messages=messages, settings=settings)
        doc = _response_doc(_id("resp"), name, req, settings)
        await check_fits(request, backend, turn_request)  # a 400 before waiting in line

        def finish(builder: OutputBuilder) -> dict[str, Any]:
            _complete_doc(doc, builder, getattr(backend, "encoding", None))
            usage = doc["usage"]  # for the request log line (server/request_log.py)
            request.state.usage = {"prompt_tokens": usage["input_tokens"], "completion_tokens": usage["output_tokens"]}
            if req.store and doc["status"] != "failed":
                stored[doc["id"]] = Stored(json.loads(json.dumps(doc)), messages + builder.messages(),
                                           {**calls, **builder.call_ids})
                while len(stored) > MAX_STORED:
                    stored.popitem(last=False)
            return doc

        if req.stream:
            return stream_response(backend, turn_request, gen_queue, turns,
                                   lambda events, _cancel: _stream(events, routes, doc, finish))
        builder = OutputBuilder(routes)
        if not await drive(request, backend, turn_request, gen_queue, turns, builder.feed):
            return disconnected()
        return JSONResponse(finish(builder))

    @app.get("/v1/responses/{rid}")
    async def get_response(rid: str) -> Any:
        s = stored.get(rid)
        if s is None:
            raise APIError(404, f"response {rid!r} was not found", param="response_id", code="not_found")
        return s.doc

    @app.delete("/v1/responses/{rid}")
    async def delete_response(rid: str) -> Any:
        if stored.pop(rid, None) is None:
            raise APIError(404, f"response {rid!r} was not found", param="response_id", code="not_found")
        return {"id": rid, "object": "response.deleted", "deleted": True}


def _response_doc(rid: str, model: str, req: ResponsesRequest, settings: ChatSettings) -> dict[str, Any]:
    fmt = (req.text.format if req.text else None) or {"type": "text"}
    return {
        "id": rid, "object": "response", "created_at": int(time.time()), "status": "in_progress", "error": None,
        "incomplete_details": None, "instructions": req.instructions, "max_output_tokens": req.max_output_tokens,
        "model": model, "output": [], "parallel_tool_calls": True, "previous_response_id": req.previous_response_id,
        "reasoning": {"effort": settings.reasoning_effort, "summary": None}, "store": req.store,
        "temperature": settings.sampling.temperature, "text": {"format": fmt}, "tool_choice": req.tool_choice or "auto",
        "tools": req.tools or [], "top_p": settings.sampling.top_p, "top_logprobs": req.top_logprobs,
        "truncation": "disabled", "usage": None, "user": None, "metadata": req.metadata or {},
    }


def _complete_doc(doc: dict[str, Any], b: OutputBuilder, encoding: Any) -> None:
    doc["output"] = json.loads(json.dumps(b.output))
    if b.error and b.finish is None:
        doc["status"] = "failed"
        doc["error"] = {"code": "server_error", "message": f"generation failed: {b.error}"}
    elif b.finish in ("length", "cancelled"):
        doc["status"] = "incomplete"
        doc["incomplete_details"] = {"reason": "max_output_tokens" if b.finish == "length" else "cancelled"}
    else:
        doc["status"] = "completed"
    m = b.metrics or Metrics()
    reasoning = "".join(i["content"][0]["text"] for i in b.output if i["type"] == "reasoning")
    reasoning_tokens = len(encoding.encode(reasoning, allowed_special=set())) if reasoning and encoding else 0
    doc["usage"] = {
        "input_tokens": m.prompt_tokens, "input_tokens_details": {"cached_tokens": m.reused_tokens},
        "output_tokens": m.generated_tokens,
        "output_tokens_details": {"reasoning_tokens": min(reasoning_tokens, m.generated_tokens)},
        "total_tokens": m.prompt_tokens + m.generated_tokens,
    }


async def _stream(events: Callable[[], AsyncIterator[Event]], routes: dict[str, ToolRoute], doc: dict[str, Any],
                  finish: Callable[[OutputBuilder], dict[str, Any]]) -> AsyncIterator[str]:
    seq = 0

    def sse(event: dict[str, Any]) -> str:
        nonlocal seq
        event = {**event, "sequence_number": seq}
        seq += 1
        return f"event: {event['type']}\ndata: {json.dumps(event, ensure_ascii=False)}\n\n"

    builder = OutputBuilder(routes)
    yield sse({"type": "response.created", "response": dict(doc)})
    yield sse({"type": "response.in_progress", "response": dict(doc)})
    async for ev in events():
        for event in builder.feed(ev):
            yield sse(event)
    final = finish(builder)
    kind = {"failed": "response.failed", "incomplete": "response.incomplete"}.get(final["status"], "response.completed")
    yield sse({"type": kind, "response": final})

"""POST /v1/completions: raw prompt text in, raw text out (evaluation harnesses), no Harmony rendering.

The prompt is encoded as it is (Harmony's special tokens written in it are read as those tokens), the model
continues it until max_tokens, a stop string, or one of Harmony's stop tokens (``<|return|>``, ``<|call|>``,
``<|endoftext|>``). The generation runs on the backend's model worker like any turn, through the same
generation queue; its text goes through the chat server's ReplyBuilder, so stop strings, usage and
finish_reason behave as on chat completions.
"""

from __future__ import annotations

import copy
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from mlx_harmony_tui.backends.base import Backend, TurnHandle, TurnRequest
from mlx_harmony_tui.chat.events import Delta, Event, Metrics, TurnFailed, TurnFinished
from mlx_harmony_tui.chat.settings import ChatSettings
from mlx_harmony_tui.chat.turn import token_logprob
from mlx_harmony_tui.engine.batch import BatchedEngine
from mlx_harmony_tui.engine.constraint import TokenLogprob as EngineLogprob
from mlx_harmony_tui.engine.generator import GenerationOptions
from mlx_harmony_tui.server.drive import disconnected, drive, stream_response
from mlx_harmony_tui.server.queue import GenerationQueue
from mlx_harmony_tui.server.reply import ReplyBuilder
from mlx_harmony_tui.server.schemas import (
    MAX_STOP_STRINGS,
    APIError,
    logit_bias,
    pick,
    reject_unknown,
    validated,
    vocab_size,
)

STOP_IDS = frozenset({200002, 200012, 199999})  # <|return|>, <|call|>, <|endoftext|>
IGNORED = frozenset({"user", "metadata", "store", "service_tier", "stream_options", "prompt_cache_key"})


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False, strict=True)  # as chat's (server/schemas.py)

    model: str = ""
    prompt: str | list[str] | list[int]
    max_tokens: int = Field(default=16, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, lt=2**64)  # as chat's: the sampler's seed is an unsigned 64-bit int
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: bool = False
    n: int | None = Field(default=None, ge=1, le=1)
    best_of: int | None = Field(default=None, ge=1, le=1)
    logit_bias: dict[str, float] | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None


def _check(data: Any) -> CompletionRequest:
    req = validated(CompletionRequest, data)
    reject_unknown(data, set(CompletionRequest.model_fields) | IGNORED)
    if isinstance(req.prompt, list) and req.prompt and isinstance(req.prompt[0], str) and len(req.prompt) != 1:
        raise APIError(400, "one prompt per request (a list of prompts is not supported)", param="prompt")
    return req


class _RawBackend:
    """Presents one raw generation on a LocalBackend's model worker as a turn (Delta/TurnFinished events)."""

    def __init__(self, backend: Any, prompt: list[int], options: GenerationOptions, logprobs: bool) -> None:
        self.backend, self.prompt, self.options, self.logprobs = backend, prompt, options, logprobs

    def start_turn(self, request: TurnRequest) -> TurnHandle:
        handle = TurnHandle()
        scheduler = getattr(self.backend, "scheduler", None)  # continuous batching: join the batch
        engine = BatchedEngine(scheduler) if scheduler is not None else self.backend.engine
        encoding = self.backend.encoding
        lps: list[EngineLogprob] = []
        if self.logprobs:
            self.options.on_logprob = lps.append

        def work() -> None:
            try:
                pending: list[int] = []

                def flush() -> None:
                    for lp in lps:
                        if lp.token not in self.options.stop_ids:
                            handle.put(token_logprob(lp, "final", None, encoding))
                    lps.clear()
                    if pending:
                        handle.put(Delta("final", encoding.decode(pending)))
                        pending.clear()

                for tok in engine.generate(self.prompt, self.options, cancel=handle.cancel_event):
                    if tok in self.options.stop_ids:
                        break
                    pending.append(tok)
                    if not (encoding.decode(pending).endswith("\ufffd") and len(pending) < 4):
                        flush()  # else a character split over tokens: wait for the rest
                flush()
                result = engine.last_result
                reason = result.finish_reason if result else "stop"
                handle.put(TurnFinished(reason, result.metrics if result else Metrics(final=True)))
            except Exception as e:  # noqa: BLE001 - the client gets the message, the server keeps going
                handle.put(TurnFailed(f"{type(e).__name__}: {e}"))
            finally:
                handle.close()

        if scheduler is not None:
            threading.Thread(target=work, name="mlx-harmony-completion", daemon=True).start()
        else:
            self.backend.submit(work)
        return handle


ReadJson = Callable[[Request], Awaitable[Any]]


def register_completions(app: FastAPI, backends: Mapping[str, Backend], base: ChatSettings,
                         gen_queue: GenerationQueue, read_json: ReadJson, turns: set[Any]) -> None:
    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        req = _check(await read_json(request))
        name, backend = pick(backends, req.model)
        if not hasattr(backend, "submit") or not hasattr(backend, "engine"):
            raise APIError(400, "this model does not take raw prompts (use /v1/chat/completions)", param="model")
        vocab = vocab_size(backend)
        if isinstance(req.prompt, str) or (req.prompt and isinstance(req.prompt[0], str)):
            text = req.prompt if isinstance(req.prompt, str) else str(req.prompt[0])
            ids = list(backend.encoding.encode(text, allowed_special="all"))
        else:
            ids = [int(t) for t in req.prompt]
            bad = next((t for t in ids if t < 0 or (vocab and t >= vocab)), None)
            if bad is not None:  # the model would index its embedding out of bounds (MLX: a segfault)
                raise APIError(400, f"prompt: token id {bad} is outside the model's vocabulary (0..{vocab - 1})",
                               param="prompt", code="invalid_value")
            text = backend.encoding.decode(ids)
        if not ids:
            raise APIError(400, "prompt is empty", param="prompt")
        limit = int(getattr(backend, "context_limit", 0) or 0)
        if limit and len(ids) >= limit:
            raise APIError(400, f"the prompt has {len(ids)} tokens; the model's context holds {limit}",
                           param="prompt", code="context_length_exceeded")
        sampling = copy.deepcopy(base.sampling)
        if req.temperature is not None:
            sampling.temperature = req.temperature
        if req.top_p is not None:
            sampling.top_p = req.top_p
        if req.logit_bias:
            sampling.logit_bias = logit_bias(req.logit_bias, vocab)
        stops = [req.stop] if isinstance(req.stop, str) else [s for s in req.stop or [] if s]
        if len(stops) > MAX_STOP_STRINGS:
            raise APIError(400, f"at most {MAX_STOP_STRINGS} stop strings are allowed", param="stop")
        options = GenerationOptions(sampling=sampling, max_tokens=req.max_tokens, stop_ids=STOP_IDS,
                                    seed=req.seed if req.seed is not None else base.seed,
                                    top_logprobs=req.logprobs or 0)
        raw = _RawBackend(backend, ids, options, req.logprobs is not None)
        doc = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
               "model": name, "system_fingerprint": None}
        echo = text if req.echo else ""
        turn_request = TurnRequest(messages=[], settings=base)
        if req.stream:
            usage = bool((req.stream_options or {}).get("include_usage"))
            return stream_response(raw, turn_request, gen_queue, turns, lambda events, cancel: _stream(
                events, cancel, stops, doc, echo, usage, request.state))
        builder = ReplyBuilder(stops)
        if not await drive(request, raw, turn_request, gen_queue, turns, builder.feed, lambda: builder.stopped):
            return disconnected()
        request.state.usage = builder.usage()  # for the request log line (server/request_log.py)
        if builder.error and builder.finish_reason is None:
            raise APIError(500, f"generation failed: {builder.error}", "server_error")
        choice = {"index": 0, "text": echo + builder.content, "logprobs": _legacy(builder.logprobs),
                  "finish_reason": builder.finish_reason or "stop"}
        return JSONResponse({**doc, "choices": [choice], "usage": builder.usage()})


def _legacy(entries: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """Chat-style log-probability entries -> the completions API's parallel lists."""
    if entries is None:
        return None
    offsets, pos = [], 0
    for e in entries:
        offsets.append(pos)
        pos += len(e["token"])
    return {"tokens": [e["token"] for e in entries], "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in entries],
            "text_offset": offsets}


async def _stream(events: Callable[[], AsyncIterator[Event]], cancel: Callable[[], None], stops: list[str],
                  doc: dict[str, Any], echo: str, include_usage: bool, state: Any) -> AsyncIterator[str]:
    def chunk(text: str | None, finish: str | None = None, usage: dict[str, Any] | None = None,
              logprobs: dict[str, Any] | None = None) -> str:
        body = {**doc, "choices": [] if text is None else
                [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}]}
        if usage is not None:
            body["usage"] = usage
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    builder = ReplyBuilder(stops)
    try:
        if echo:
            yield chunk(echo)
        async for ev in events():
            for delta in builder.feed(ev):
                if delta.get("content"):
                    lp = builder.take_logprobs()
                    yield chunk(delta["content"], logprobs=_legacy(lp["content"]) if lp else None)
            if builder.stopped:
                cancel()
        if builder.error and builder.finish_reason is None:
            yield f"data: {json.dumps(APIError(500, f'generation failed: {builder.error}', 'server_error').body())}\n\n"
        else:
            yield chunk("", builder.finish_reason or "stop")
            if include_usage:
                yield chunk(None, usage=builder.usage())
        yield "data: [DONE]\n\n"
    finally:
        state.usage = builder.usage()  # for the request log line (server/request_log.py)

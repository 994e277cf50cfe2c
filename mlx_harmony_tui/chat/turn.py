"""The one turn pipeline every face uses: prompt -> generate -> parse -> tools -> generate again -> final.

It is a plain generator of events (chat/events.py), so the local backend can run it on a worker thread and
the tests can drive it directly. Retries (at most ``settings.max_retries``, policy in chat/retry.py) happen
when a retry can fix the output: an unrecoverable parse, a loop, analysis with no answer; a token limit ends
the turn with its partial reply (``length``). The failed attempt's text travels in the ``Retry`` event so the
session record keeps it; ``TurnFinished``/``TurnFailed`` carry each retry's reason, change and outcome.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from mlx_harmony_tui.chat.context import FitCancelled, fit_messages
from mlx_harmony_tui.chat.events import (
    ContextTrimmed,
    Event,
    Metrics,
    PrefillProgress,
    Retry,
    RetryReport,
    TokenLogprob,
    ToolCall,
    ToolConfirmation,
    ToolResult,
    TurnFailed,
    TurnFinished,
    TurnStarted,
)
from mlx_harmony_tui.chat.retry import failure_reason, first_attempt, next_attempt
from mlx_harmony_tui.chat.settings import ChatSettings
from mlx_harmony_tui.engine.constraint import TokenLogprob as EngineLogprob
from mlx_harmony_tui.engine.generator import Engine, GenerationOptions
from mlx_harmony_tui.engine.sampling import FIRST_SPECIAL_ID
from mlx_harmony_tui.harmony.constraint import constraint_for
from mlx_harmony_tui.harmony.messages import HMessage
from mlx_harmony_tui.harmony.render import RenderOptions, ResponseFormat, render_prompt
from mlx_harmony_tui.harmony.stream import HarmonyStream
from mlx_harmony_tui.harmony.vocab import token_bytes

ConfirmFn = Callable[[ToolConfirmation], bool]


def render_options_from_settings(settings: ChatSettings) -> RenderOptions:
    """RenderOptions from resolved chat settings (fields the settings lack keep their defaults)."""
    opts = RenderOptions(
        reasoning_effort=settings.reasoning_effort,
        knowledge_cutoff=settings.knowledge_cutoff,
        builtin_tools=list(settings.builtin_tools),
        instructions=settings.instructions,
        function_tools=list(settings.function_tools),
        system_prompt=settings.system_prompt,
    )
    if settings.conversation_date:
        opts.conversation_date = settings.conversation_date
    rf = getattr(settings, "response_format", None)
    if isinstance(rf, ResponseFormat):
        opts.response_format = rf
    elif isinstance(rf, dict) and "schema" in rf:
        opts.response_format = ResponseFormat(str(rf.get("name", "response")), rf["schema"], rf.get("description", ""))
    opts.placeholders = {str(k): str(v) for k, v in settings.placeholders.items()}
    opts.examples = list(settings.examples)
    return opts


@dataclass
class TurnContext:
    """What a turn needs besides the conversation. ``tools`` is a tools.ToolRegistry (or None: no tools run,
    a tool call ends the turn, as the server wants for client-side functions)."""

    engine: Engine
    encoding: Any
    context_limit: int
    tools: Any | None = None
    confirm: ConfirmFn | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    trace: Any | None = None  # chat.trace.TurnTrace: one debug record per attempt (--debug-file)
    # Where live figures go at once (a face's queue). A prefill has no token to carry them: without this they
    # wait for the first token, and a long prompt shows no progress until its prefill is over.
    live: Callable[[Event], None] | None = None


def _attempt_text(stream: HarmonyStream) -> str:
    return "\n".join(f"[{m.channel or '?'}] {m.text}" for m in stream.messages if m.text)


def _attempt_record(ctx: TurnContext, turn_id: str, attempt: int, rounds: int, current: Any, prompt: list[int],
                    result: Any, stream: HarmonyStream, finish: str, problem: tuple[str, str] | None,
                    retrying: bool, seconds: float) -> dict[str, Any]:
    """What --debug-file keeps of one attempt: enough to see why a model misbehaved."""
    tokens = list(result.tokens) if result is not None else []
    if problem is None:
        decision = "tool call" if stream.tool_call is not None and finish == "stop" else f"done ({finish})"
    else:
        decision = f"retry: {problem[0]} ({problem[1]})" if retrying else f"give up: {problem[0]} ({problem[1]})"
    return {
        "turn_id": turn_id, "attempt": attempt, "tool_round": rounds,
        "sampling": asdict(current.sampling), "seed": current.seed, "change": current.change,
        "prompt_tokens": len(prompt), "prompt": ctx.encoding.decode(prompt),
        "completion_tokens": len(tokens), "completion": ctx.encoding.decode(tokens) if tokens else "",
        "finish": finish,
        "parsed": [{"channel": m.channel, "recipient": m.recipient, "content_type": m.content_type, "text": m.text}
                   for m in stream.messages],
        "recoveries": [{"kind": r.kind, "detail": r.detail} for r in stream.recoveries],
        "errors": list(stream.errors), "decision": decision, "seconds": round(seconds, 4),
        "metrics": asdict(result.metrics) if result is not None else None,
    }


def _merge_functions(a: list, b: list) -> list:
    """Declared functions by name, first wins (the registry repeats the settings' client functions)."""
    seen: dict[str, Any] = {}
    for f in [*a, *b]:
        seen.setdefault(f.name, f)
    return list(seen.values())


def turn_render_options(settings: ChatSettings, tools: Any | None) -> RenderOptions:
    """How a turn renders its prompt: the settings' options plus the tools of ``tools`` (a registry)."""
    options = render_options_from_settings(settings)
    if tools is not None:
        options = replace(
            options,
            builtin_tools=sorted(set(options.builtin_tools) | set(tools.builtin_names())),
            function_tools=_merge_functions(options.function_tools, tools.function_tools()),
            tool_namespaces={ns.name: ns for ns in tools.builtin_namespaces()},
        )
    return options


def run_turn(ctx: TurnContext, messages: list[HMessage], settings: ChatSettings) -> Iterator[Event]:
    """Run one user turn. ``messages`` ends with the new user message; the events say everything that
    happens, including the messages to append to the conversation (``MessageDone``) and tool results."""
    turn_id = uuid.uuid4().hex[:12]
    yield TurnStarted(turn_id)
    options = turn_render_options(settings, ctx.tools)
    limit = min(x for x in (settings.context_limit, ctx.context_limit) if x) if (settings.context_limit or ctx.context_limit) else 131072
    reserve = min(settings.max_tokens, limit // 2)
    history = list(messages)
    new_messages: list[HMessage] = []  # this turn's assistant/tool messages so far
    attempt = 0
    first = first_attempt(settings.sampling, settings.seed)
    current = first
    reports: list[RetryReport] = []
    rounds = 0
    last_metrics = Metrics(final=True)

    def count(msgs: list[HMessage]) -> int:
        return len(render_prompt(msgs, options, ctx.encoding))

    pending: list[Event] = []  # live metrics/progress from the engine, yielded between tokens

    def on_progress(item: Metrics | PrefillProgress) -> None:
        if isinstance(item, Metrics) and item.final:
            return  # the engine's closing snapshot is ``last_result.metrics``, yielded once below
        if ctx.live is not None:
            ctx.live(item)
        else:
            pending.append(item)

    while True:
        convo = history + new_messages
        try:
            kept, dropped, n_tokens = fit_messages(convo, count, limit - reserve, ctx.cancel.is_set)
        except FitCancelled:  # the client left while a long conversation was being fitted
            yield TurnFinished(reason="cancelled", metrics=last_metrics, retries=tuple(reports))
            return
        if dropped:
            history = history[dropped:]
            yield ContextTrimmed(dropped_messages=dropped, prompt_tokens=n_tokens)
        if n_tokens > limit - 1:
            yield TurnFailed(f"the prompt ({n_tokens} tokens) does not fit the context limit ({limit})")
            return
        prompt = render_prompt(kept, options, ctx.encoding)
        gen_opts = GenerationOptions(
            sampling=current.sampling,
            max_tokens=max(1, min(settings.max_tokens, limit - len(prompt))),
            seed=current.seed,
        )
        if options.response_format is not None or settings.tool_choice != "auto":
            gen_opts.constraint = constraint_for(options, ctx.encoding, ctx.engine.vocab_size, gen_opts.max_tokens,
                                                 settings.tool_choice)
        logprobs: list[EngineLogprob] = []
        if settings.logprobs is not None:
            gen_opts.on_logprob, gen_opts.top_logprobs = logprobs.append, settings.logprobs
        stream = HarmonyStream(ctx.encoding)
        pending.clear()
        call_event: ToolCall | None = None
        started = time.perf_counter()

        try:
            for token in ctx.engine.generate(prompt, gen_opts, cancel=ctx.cancel, on_progress=on_progress):
                if pending:
                    yield from pending
                    pending.clear()
                where = stream.open_message if logprobs else None
                events = stream.feed(token)
                if logprobs:  # before the text they belong to, so a face can send both in one piece
                    if where is not None and token < FIRST_SPECIAL_ID:  # a content token, not a header's
                        yield token_logprob(logprobs[-1], where[0], where[1], ctx.encoding)
                    logprobs.clear()
                for event in events:
                    if isinstance(event, ToolCall):
                        call_event = event
                    yield event
        except Exception as e:  # noqa: BLE001 - the model failing must end the turn, not the app
            yield TurnFailed(f"generation failed: {type(e).__name__}: {e}", tuple(reports))
            return
        yield from pending
        result = ctx.engine.last_result
        finish = result.finish_reason if result else "stop"
        if finish == "stop" and getattr(gen_opts.constraint, "steered", False):
            finish = "length"  # the token limit closed the JSON early: complete, but its values may be cut short
        if result is not None:
            last_metrics = result.metrics
            yield result.metrics
        for event in stream.finish(finish):
            if isinstance(event, ToolCall):
                call_event = event
            yield event

        problem = failure_reason(stream, finish)
        if ctx.trace is not None:
            retrying = problem is not None and attempt < settings.max_retries and not ctx.cancel.is_set()
            ctx.trace.attempt(_attempt_record(ctx, turn_id, attempt, rounds, current, prompt, result, stream,
                                              finish, problem, retrying, time.perf_counter() - started))
        if reports and reports[-1].outcome == "":
            outcome = f"failed: {problem[0]}" if problem else ("ok" if finish == "stop" else finish)
            reports[-1] = replace(reports[-1], outcome=outcome)
        if problem is not None and attempt < settings.max_retries and not ctx.cancel.is_set():
            attempt += 1
            current = next_attempt(first, problem[0], attempt)
            reports.append(RetryReport(attempt, problem[0], current.change, ""))
            yield Retry(attempt=attempt, reason=problem[0], detail=problem[1], failed_text=_attempt_text(stream),
                        change=current.change)
            continue
        current = first  # a later tool round starts from the user's settings again
        done = tuple(reports)
        if problem is not None:
            yield TurnFailed(f"no usable answer after {attempt} retries: {problem[1]}", done)
            return

        produced = [m for m in stream.messages]
        call = stream.tool_call
        if finish in ("cancelled", "length") or call is None:
            yield TurnFinished(reason=finish, metrics=last_metrics, retries=done)  # type: ignore[arg-type]
            return
        new_messages.extend(produced)
        recipient = call.recipient or ""
        client_side = {f"functions.{f.name}" for f in settings.function_tools}
        if ctx.tools is None or (recipient in client_side and not ctx.tools.can_run(recipient)):
            # A client-side function (server): the caller runs it and sends the result back.
            yield TurnFinished(reason="stop", metrics=last_metrics, retries=done)
            return
        rounds += 1
        call_id = call_event.call_id if call_event else f"call_{uuid.uuid4().hex[:8]}"
        if rounds > settings.max_tool_rounds:
            yield TurnFinished(reason="tool_rounds", metrics=last_metrics, retries=done)
            return
        reply = yield from run_tool_call(ctx.tools, call_id, recipient, call.text, call.channel, ctx.confirm, ctx.cancel)
        if reply is None:
            yield TurnFinished(reason="cancelled", metrics=last_metrics, retries=done)
            return
        new_messages.append(reply)


def token_logprob(lp: EngineLogprob, channel: str | None, recipient: str | None, encoding: Any) -> TokenLogprob:
    """The engine's ids -> text and bytes for the faces."""
    top = tuple((encoding.decode([t]), v, token_bytes(t, encoding)) for t, v in lp.top)
    return TokenLogprob(channel, recipient, encoding.decode([lp.token]), lp.logprob, top,
                        token_bytes(lp.token, encoding))


def run_tool_call(
    tools: Any, call_id: str, recipient: str, arguments: str, channel: str | None, confirm: ConfirmFn | None,
    cancel: threading.Event,
) -> Generator[Event, None, HMessage | None]:
    """The tool step of a turn, shared by every backend that runs tools (local model or remote server):
    ask for confirmation where the tool needs it, run it, report the result. Returns the tool's message for
    the model, or None when the turn was cancelled before the tool ran."""
    allowed = True
    if tools.needs_confirmation(recipient):
        note = tools.confirmation_note(recipient) if hasattr(tools, "confirmation_note") else ""
        request = ToolConfirmation(call_id=call_id, recipient=recipient, arguments=arguments, note=note)
        yield request
        allowed = bool(confirm(request)) if confirm else False
    if cancel.is_set():
        return None
    if allowed:
        outcome = tools.run(recipient, arguments, cancel=cancel)
        output, error, duration = outcome.output, outcome.error, outcome.duration_s
    else:
        output, error, duration = "", "the user declined this tool call", 0.0
    yield ToolResult(call_id=call_id, recipient=recipient, output=output, error=error, duration_s=duration)
    text = output if not error else (f"Error: {error}\n{output}" if output else f"Error: {error}")
    return HMessage(role="tool", text=text, author=recipient, channel=channel or "commentary", recipient="assistant")

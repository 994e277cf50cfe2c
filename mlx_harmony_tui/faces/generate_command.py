"""``mlx-harmony-tui generate``: one turn from --prompt (or stdin); plain text, or one JSON document.

A face over a ChatController that keeps no session (one turn, nothing to resume)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

from mlx_harmony_tui.chat.events import (
    Delta,
    MessageDone,
    Metrics,
    Retry,
    ToolCall,
    ToolConfirmation,
    ToolResult,
    TurnFailed,
    TurnFinished,
)
from mlx_harmony_tui.controller import ChatController
from mlx_harmony_tui.errors import UserError
from mlx_harmony_tui.faces.common import (
    StreamPrinter,
    add_model_flags,
    add_settings_flags,
    finish_note,
    make_backend,
    release_mlx_streams,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("generate", help="answer one prompt (--prompt or stdin) and exit")
    add_model_flags(p)
    add_settings_flags(p)
    p.add_argument("--prompt", "-p", default=None, help="the user message (default: read stdin)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON document: analysis, final, tool calls, finish reason, metrics")
    p.add_argument("--show-analysis", action="store_true", help="also print the reasoning (text mode)")
    p.add_argument("--json-schema", default=None, metavar="FILE",
                   help="the answer is JSON following this JSON schema (guaranteed by constrained decoding)")
    p.add_argument("--yes", action="store_true", help="run tool calls without asking")
    p.set_defaults(func=run)


def read_prompt(args: argparse.Namespace) -> str:
    if args.prompt is not None:
        prompt = args.prompt
    elif sys.stdin.isatty():
        raise UserError("give --prompt TEXT, or pipe the prompt on stdin")
    else:
        prompt = sys.stdin.read().rstrip("\r\n")  # the newline echo or a file ends with is not part of it
    if not prompt.strip():
        raise UserError("the prompt is empty")
    return prompt


def run(args: argparse.Namespace) -> int:
    prompt = read_prompt(args)
    backend, settings = make_backend(args)
    chat = ChatController(backend, settings, record=False)  # one turn, no session
    try:
        chat.send(prompt)
        doc: dict[str, Any] = {"model": backend.model_name, "analysis": "", "final": "", "tool_calls": [],
                               "tool_results": [], "retries": [], "finish_reason": None, "error": None,
                               "metrics": None}
        last_metrics: Metrics | None = None
        printer = None if args.json else StreamPrinter(sys.stdout, args.show_analysis)
        analysis_break = False
        note: str | None = None  # why the answer is incomplete (the JSON document has finish_reason)
        try:
            for ev in chat.events():
                if isinstance(ev, Delta) and ev.recipient is None:
                    if ev.channel == "analysis":
                        if analysis_break and doc["analysis"]:
                            doc["analysis"] += "\n\n"  # one paragraph per analysis message
                        analysis_break = False
                        doc["analysis"] += ev.text
                    else:
                        doc["final"] += ev.text
                    if printer is not None:
                        printer.delta(ev)
                elif isinstance(ev, MessageDone) and ev.channel == "analysis":
                    analysis_break = True
                elif isinstance(ev, ToolCall):
                    doc["tool_calls"].append({"id": ev.call_id, "recipient": ev.recipient, "arguments": ev.arguments})
                elif isinstance(ev, ToolResult):
                    doc["tool_results"].append({"id": ev.call_id, "recipient": ev.recipient, "output": ev.output,
                                                "error": ev.error})
                elif isinstance(ev, ToolConfirmation):
                    if not args.yes:  # e.g. python with no OS sandbox: say why it did not run
                        why = f" ({ev.note})" if ev.note else ""
                        print(f"tool call {ev.recipient} refused{why}: --yes allows it", file=sys.stderr)
                    chat.confirmation(ev)(bool(args.yes))
                elif isinstance(ev, Retry):
                    doc["retries"].append({"attempt": ev.attempt, "reason": ev.reason, "detail": ev.detail,
                                           "change": ev.change, "outcome": None})
                    doc["analysis"], doc["final"] = "", ""  # the document holds the attempt that counts
                    if printer is not None:  # the retry's text starts on a line of its own
                        print(f"\n(retry {ev.attempt}: {ev.reason}; {ev.change})", file=sys.stderr)
                        sys.stdout.write("\n")
                        printer.new_line()
                elif isinstance(ev, Metrics) and ev.final:
                    last_metrics = ev
                elif isinstance(ev, TurnFinished | TurnFailed) and ev.retries:
                    for entry, report in zip(doc["retries"], ev.retries, strict=False):
                        entry["outcome"] = report.outcome
                if isinstance(ev, TurnFinished):
                    doc["finish_reason"] = ev.reason
                    note = finish_note(ev, settings, "--max-tokens N")
                    m = ev.metrics if (ev.metrics.prompt_tokens or ev.metrics.generated_tokens) else last_metrics
                    doc["metrics"] = dataclasses.asdict(m) if m else None
                elif isinstance(ev, TurnFailed):
                    doc["error"] = ev.error
                    doc["finish_reason"] = doc["finish_reason"] or "error"
        except KeyboardInterrupt:
            chat.cancel()
            for _ in chat.events():
                pass
            if printer is not None:  # end the line it cut, so the shell's prompt starts on its own
                sys.stdout.write("\n")
                sys.stdout.flush()
            raise
    finally:
        chat.close()
        release_mlx_streams()
    if args.json:
        json.dump(doc, sys.stdout, ensure_ascii=False, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write("\n")
        if doc["error"]:
            print(f"mlx-harmony-tui: {doc['error']}", file=sys.stderr)
        elif note:  # e.g. cut in the reasoning: the answer printed above is empty
            print(f"mlx-harmony-tui: the answer was {note}", file=sys.stderr)
    sys.stdout.flush()
    return 1 if doc["error"] else 0

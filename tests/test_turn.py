"""The turn pipeline on a tiny real model: event order, retries with the failed text kept, cancel, trimming."""

from __future__ import annotations

import threading

import pytest

from mlx_harmony_tui.chat.events import (
    ContextTrimmed,
    MessageDone,
    Metrics,
    Retry,
    TurnFailed,
    TurnFinished,
    TurnStarted,
)
from mlx_harmony_tui.chat.settings import ChatSettings
from mlx_harmony_tui.chat.turn import TurnContext, run_turn
from mlx_harmony_tui.engine.sampling import SamplingParams
from mlx_harmony_tui.harmony.messages import HMessage

RETURN = 200002


def _settings(**kw) -> ChatSettings:
    sampling = SamplingParams(temperature=0.0, logit_bias=kw.pop("logit_bias", {}))
    return ChatSettings(sampling=sampling, max_tokens=kw.pop("max_tokens", 24), conversation_date="2026-01-01", **kw)


@pytest.fixture
def ctx(tiny_engine, encoding):
    return TurnContext(engine=tiny_engine, encoding=encoding, context_limit=4096)


def test_events_start_and_end_once(ctx):
    events = list(run_turn(ctx, [HMessage("user", "Hello there")], _settings()))
    assert isinstance(events[0], TurnStarted)
    terminal = [e for e in events if isinstance(e, TurnFinished | TurnFailed)]
    assert terminal == [events[-1]]
    finals = [e for e in events if isinstance(e, Metrics) and e.final]
    assert finals and finals[-1].generated_tokens > 0
    if isinstance(events[-1], TurnFinished):
        assert events[-1].reason in ("stop", "length")
        assert any(isinstance(e, MessageDone) for e in events)


def test_unusable_output_is_retried_twice_then_fails(ctx):
    # A huge bias on <|return|> makes the real model stop at once: no message at all, every attempt.
    events = list(run_turn(ctx, [HMessage("user", "Hi")], _settings(logit_bias={RETURN: 1e4})))
    retries = [e for e in events if isinstance(e, Retry)]
    assert [r.attempt for r in retries] == [1, 2]
    assert all(r.reason == "parse" for r in retries)
    assert isinstance(events[-1], TurnFailed) and "2 retries" in events[-1].error


def test_loop_is_detected_and_retried_with_failed_text_kept(ctx, encoding):
    tok = encoding.encode("ab", allowed_special="all")[0]
    events = list(run_turn(ctx, [HMessage("user", "Hi")], _settings(logit_bias={tok: 1e4}, max_tokens=400)))
    retries = [e for e in events if isinstance(e, Retry)]
    assert retries and retries[0].reason == "loop"
    assert "ab" in retries[0].failed_text


class _Recording:
    """The real engine, remembering the options of every generation (what each retry changed)."""

    def __init__(self, engine):
        self.engine, self.options = engine, []

    def generate(self, prompt, options, **kw):
        self.options.append(options)
        return self.engine.generate(prompt, options, **kw)

    @property
    def last_result(self):
        return self.engine.last_result


def test_each_retry_changes_something_and_reports_its_outcome(ctx, encoding):
    rec = _Recording(ctx.engine)
    c = TurnContext(engine=rec, encoding=encoding, context_limit=4096)
    tok = encoding.encode("ab", allowed_special="all")[0]
    events = list(run_turn(c, [HMessage("user", "Hi")], _settings(logit_bias={tok: 1e4}, max_tokens=400, seed=7)))
    penalties = [o.sampling.repetition_penalty for o in rec.options]
    assert penalties == [1.0, 1.15, 1.3]  # a loop: a higher repetition penalty on each retry
    assert [o.seed for o in rec.options] == [7, 8, 9]  # and another seed
    retries = [e for e in events if isinstance(e, Retry)]
    assert retries[0].change == "repetition_penalty 1 -> 1.15, seed 7 -> 8"
    end = events[-1]
    assert isinstance(end, TurnFailed)
    assert [(r.reason, r.outcome) for r in end.retries] == [("loop", "failed: loop"), ("loop", "failed: loop")]

    # malformed output (greedy): a fresh sample, i.e. a non-zero temperature and another seed
    rec.options.clear()
    events = list(run_turn(c, [HMessage("user", "Hi")], _settings(logit_bias={RETURN: 1e4})))
    temps = [o.sampling.temperature for o in rec.options]
    assert temps[0] == 0.0 and all(t > 0 for t in temps[1:]) and len(temps) == 3
    assert len({o.seed for o in rec.options}) == 3
    assert "temperature 0 -> 0.7" in [e for e in events if isinstance(e, Retry)][0].change


def test_cancel_before_start_finishes_cancelled(ctx):
    cancel = threading.Event()
    cancel.set()
    c = TurnContext(engine=ctx.engine, encoding=ctx.encoding, context_limit=4096, cancel=cancel)
    events = list(run_turn(c, [HMessage("user", "Hello")], _settings()))
    assert isinstance(events[-1], TurnFinished) and events[-1].reason == "cancelled"
    assert not any(isinstance(e, Retry) for e in events)


def test_old_turns_are_dropped_to_fit_the_context(ctx):
    history: list[HMessage] = []
    for i in range(12):
        history += [HMessage("user", f"question {i} " * 20), HMessage("assistant", f"answer {i} " * 20, channel="final")]
    history.append(HMessage("user", "last question"))
    events = list(run_turn(ctx, history, _settings(context_limit=700, max_tokens=16)))
    trimmed = [e for e in events if isinstance(e, ContextTrimmed)]
    assert trimmed and trimmed[0].dropped_messages % 2 == 0 and trimmed[0].prompt_tokens <= 700 - 16
    assert isinstance(events[-1], TurnFinished | TurnFailed)

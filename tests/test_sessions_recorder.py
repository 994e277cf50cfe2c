"""SessionRecorder: events -> session records; partial replies survive; SIGKILL at random moments is safe."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from mlx_harmony_tui.chat.events import (
    Delta,
    MessageDone,
    Metrics,
    Retry,
    ToolCall,
    ToolCallArgs,
    ToolCallStarted,
    ToolResult,
    TurnFinished,
    TurnStarted,
)
from mlx_harmony_tui.harmony.messages import HMessage
from mlx_harmony_tui.sessions import SCHEMA_VERSION, SessionRecorder, SessionStore, to_hmessages

ROOT = Path(__file__).resolve().parents[1]


def _disk(store: SessionStore, sid: str) -> dict:
    return json.loads(store.path(sid).read_text(encoding="utf-8"))


def test_tool_turn_with_retry_is_recorded_as_separate_records(tmp_path: Path) -> None:
    store = SessionStore(tmp_path)
    session = store.create(model="tiny", params={"temperature": 1.0})
    rec = SessionRecorder(store, session, save_interval=3600, params={"temperature": 1.0})
    rec.add_user("weather in Paris?")
    assert [m["content"] for m in _disk(store, session.id)["messages"]] == ["weather in Paris?"]
    assert session.title == "weather in Paris?"
    rec.set_params({"temperature": 0.5})
    rec.on_event(TurnStarted("t1"))
    rec.on_event(Delta("final", "garbage"))
    rec.on_event(Retry(attempt=1, reason="parse", detail="no header", failed_text="garbage"))
    assert [m.role for m in session.messages] == ["user"]  # the failed attempt is not conversation
    for part in ("need ", "weather"):
        rec.on_event(Delta("analysis", part))
    rec.on_event(MessageDone("analysis", "need weather"))
    rec.on_event(ToolCallStarted("call_1", "functions.get_weather"))
    rec.on_event(ToolCallArgs("call_1", '{"city":'))
    rec.on_event(ToolCallArgs("call_1", ' "Paris"}'))
    rec.on_event(MessageDone("commentary", '{"city": "Paris"}', "functions.get_weather", "<|constrain|>json"))
    rec.on_event(ToolCall("call_1", "functions.get_weather", '{"city": "Paris"}', content_type="<|constrain|>json"))
    rec.on_event(ToolResult("call_1", "functions.get_weather", '{"temp": 18}', duration_s=0.25))
    rec.on_event(Delta("final", "18 degrees"))
    rec.on_event(Metrics(generated_tokens=5, final=False))
    rec.on_event(MessageDone("final", "18 degrees"))
    rec.on_event(TurnFinished("stop", Metrics(prompt_tokens=90, generated_tokens=30, decode_tps=41.5, final=True)))
    rec.finish()

    loaded = SessionStore(tmp_path).load(session.id)
    assert loaded == session
    kinds = [(m.role, m.channel, m.recipient, m.call_id) for m in loaded.messages]
    assert kinds == [
        ("user", None, None, None),
        ("assistant", "analysis", None, None),
        ("assistant", "commentary", "functions.get_weather", "call_1"),
        ("tool", "commentary", "assistant", "call_1"),
        ("assistant", "final", None, None),
    ]
    analysis, call, result, final = loaded.messages[1:]
    assert call.content == '{"city": "Paris"}' and call.content_type == "<|constrain|>json"
    assert result.author == "functions.get_weather" and result.metrics == {"duration_s": 0.25}
    assert analysis.params == {"temperature": 0.5}  # changed for this turn: recorded once
    assert call.params is None and final.params is None
    assert final.metrics == {"prompt_tokens": 90, "reused_tokens": 0, "prefilled_tokens": 0,
                             "generated_tokens": 30, "decode_tps": 41.5, "finish_reason": "stop"}
    assert [r["reason"] for r in analysis.retries] == ["parse"] and analysis.retries[0]["failed_text"] == "garbage"
    assert not any(m.incomplete for m in loaded.messages)
    assert to_hmessages(loaded) == [
        HMessage("user", "weather in Paris?"),
        HMessage("assistant", "need weather", channel="analysis"),
        HMessage("assistant", '{"city": "Paris"}', channel="commentary", recipient="functions.get_weather",
                 content_type="<|constrain|>json"),
        HMessage("tool", '{"temp": 18}', channel="commentary", recipient="assistant", author="functions.get_weather"),
        HMessage("assistant", "18 degrees", channel="final"),
    ]


def test_partial_reply_is_saved_incomplete_while_streaming(tmp_path: Path) -> None:
    store = SessionStore(tmp_path)
    session = store.create()
    rec = SessionRecorder(store, session, save_interval=0.05)
    rec.add_user("count")
    rec.on_event(TurnStarted("t"))
    time.sleep(0.06)
    rec.on_event(Delta("final", "one "))  # nothing saved for 0.05 s: this delta saves
    on_disk = _disk(store, session.id)["messages"][-1]
    assert on_disk["content"] == "one " and on_disk["incomplete"] is True
    rec.on_event(Delta("final", "two "))  # throttled: not saved yet
    assert _disk(store, session.id)["messages"][-1]["content"] == "one "
    time.sleep(0.06)
    rec.on_event(Delta("final", "three"))
    assert _disk(store, session.id)["messages"][-1]["content"] == "one two three"
    rec.on_event(TurnFinished("cancelled"))
    last = SessionStore(tmp_path).load(session.id).messages[-1]
    assert last.incomplete and last.content == "one two three" and last.metrics["finish_reason"] == "cancelled"
    assert to_hmessages(SessionStore(tmp_path).load(session.id))[-1].text == "one two three"


def test_error_results_keep_what_the_model_saw(tmp_path: Path) -> None:
    store = SessionStore(tmp_path)
    session = store.create()
    rec = SessionRecorder(store, session)
    rec.add_user("run it")
    rec.on_event(TurnStarted("t"))
    rec.on_event(ToolCall("c9", "python", "1/0"))
    rec.on_event(ToolResult("c9", "python", "", error="ZeroDivisionError"))
    tool = SessionStore(tmp_path).load(session.id).messages[-1]
    assert tool.content == "Error: ZeroDivisionError" and tool.extra == {"error": "ZeroDivisionError"}
    assert session.messages[-2].recipient == "python" and session.messages[-2].content == "1/0"


_WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from mlx_harmony_tui.chat.events import Delta, MessageDone, TurnFinished, TurnStarted
    from mlx_harmony_tui.sessions import SessionRecorder, SessionStore
    store = SessionStore(Path(sys.argv[1]))
    session = store.create(title="crash")
    store.lock(session.id)
    print("ID", session.id, flush=True)
    rec = SessionRecorder(store, session, save_interval=0.002)
    for turn in range(10_000):
        m = rec.add_user(f"question {turn}")
        sys.stdout.write(f"DONE {m.id} {m.content}\\n")
        sys.stdout.flush()
        rec.on_event(TurnStarted(str(turn)))
        for channel in ("analysis", "final"):
            words = [f"{channel}{turn}w{i} " for i in range(40)]
            for w in words:
                rec.on_event(Delta(channel, w))
            rec.on_event(MessageDone(channel, "".join(words)))
            m = session.messages[-1]
            sys.stdout.write(f"DONE {m.id} {m.content}\\n")
        sys.stdout.flush()
        rec.on_event(TurnFinished("stop"))
""")


def test_sigkill_at_random_moments_never_loses_completed_messages(tmp_path: Path) -> None:
    rng = random.Random(1234)
    for run in range(30):
        root = tmp_path / f"run{run}"
        child = subprocess.Popen([sys.executable, "-c", _WRITER, str(root)], cwd=ROOT, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        assert child.stdout is not None
        first = child.stdout.readline()
        assert first.startswith("ID "), child.stderr.read() if child.stderr else ""
        sid = first.split()[1]
        time.sleep(rng.uniform(0.0, 0.25))
        child.send_signal(signal.SIGKILL)
        out, _ = child.communicate(timeout=30)
        done = {}
        for line in out.split("\n")[:-1]:  # a line cut off by the kill is not a report
            if line.startswith("DONE "):
                _, mid, content = line.split(" ", 2)
                done[mid] = content
        store = SessionStore(root)
        raw = json.loads(store.path(sid).read_text(encoding="utf-8"))  # valid JSON every time
        assert raw["schema_version"] == SCHEMA_VERSION
        session = store.load(sid)  # valid schema, nothing quarantined
        assert not store.problems
        saved = {m.id: m for m in session.messages}
        for mid, content in done.items():
            assert mid in saved and saved[mid].content.rstrip() == content.rstrip() and not saved[mid].incomplete
        assert all(not m.incomplete for m in session.messages[:-1])
        store.lock(sid)  # the killed writer's lock is stale, not blocking
        store.unlock(sid)
        assert [s.id for s in store.list()] == [sid]

"""Pilot tests of the chat screen and its actions, driven by a scripted backend (real handle and thread)."""

from __future__ import annotations

import time

from tui_fakes import ScriptedBackend, simple_reply

from mlx_harmony_tui.backends.base import TurnHandle, TurnRequest
from mlx_harmony_tui.chat import events as ev
from mlx_harmony_tui.tui.app import HarmonyApp
from mlx_harmony_tui.tui.widgets.chat_input import ChatInput
from mlx_harmony_tui.tui.widgets.messages import AssistantMessage, UserMessage
from mlx_harmony_tui.tui.widgets.metrics_bar import MetricsBar

SIZE = (120, 40)


async def type_and_send(pilot, text: str) -> None:
    box = pilot.app.screen.query_one(ChatInput)
    box.focus()
    await pilot.press(*list(text))
    await pilot.press("enter")


async def test_send_streams_analysis_and_final() -> None:
    backend = ScriptedBackend(simple_reply("I think hard.", "Hello **there**!\n\n```py\nprint(1)\n```\n"))
    app = HarmonyApp(backend=backend)
    async with app.run_test(size=SIZE) as pilot:
        await type_and_send(pilot, "hi")
        await app.wait_idle(10)
        await pilot.pause()
        msg = app.screen.query_one(AssistantMessage)
        assert msg.analysis_text == "I think hard."
        assert msg.final_text.startswith("Hello **there**!")
        assert msg.analysis_box is not None and msg.analysis_box.collapsed  # folded once the final started
        assert [m.role for m in app.history] == ["user", "assistant", "assistant"]
        assert backend.requests[0].messages[-1].text == "hi"
        assert app.screen.query_one(ChatInput).text == ""
        assert "12.5 tok/s" in str(app.screen.query_one("#metrics-text").render())
        # the toggle key opens every analysis section, and again folds them
        await pilot.press("ctrl+t")
        assert not msg.analysis_box.collapsed
        await pilot.press("ctrl+t")
        assert msg.analysis_box.collapsed


async def test_newline_keys_do_not_send() -> None:
    backend = ScriptedBackend(simple_reply("a", "b"))
    app = HarmonyApp(backend=backend)
    async with app.run_test(size=SIZE) as pilot:
        app.screen.query_one(ChatInput).focus()
        await pilot.press("a", "ctrl+j", "b")
        assert app.screen.query_one(ChatInput).text == "a\nb"
        assert backend.requests == []
        await pilot.press("enter")
        await app.wait_idle(10)
        assert backend.requests[0].messages[-1].text == "a\nb"


async def test_escape_stops_and_keeps_partial_reply() -> None:
    backend = ScriptedBackend(simple_reply("", "word " * 400, delay=0.01, chunk=5))
    app = HarmonyApp(backend=backend)
    async with app.run_test(size=SIZE) as pilot:
        await type_and_send(pilot, "go")
        for _ in range(100):
            await pilot.pause(0.02)
            msg = app.screen.query_one(AssistantMessage)
            if msg.final_text:
                break
        await pilot.press("escape")
        await app.wait_idle(10)
        await pilot.pause()
        msg = app.screen.query_one(AssistantMessage)
        assert 0 < len(msg.final_text) < len("word " * 400)
        notices = [str(s.render()) for s in msg.query(".notice")]
        assert any("stopped" in n for n in notices)


async def test_regenerate_and_edit_last() -> None:
    backend = ScriptedBackend(simple_reply("x", "first"))
    app = HarmonyApp(backend=backend)
    async with app.run_test(size=SIZE) as pilot:
        await type_and_send(pilot, "q1")
        await app.wait_idle(10)
        backend.script = simple_reply("y", "second")
        await pilot.press("ctrl+r")
        await app.wait_idle(10)
        await pilot.pause()
        msgs = list(app.screen.query(AssistantMessage))
        assert len(msgs) == 1 and msgs[0].final_text == "second"
        assert [m.text for m in backend.requests[1].messages] == ["q1"]
        await pilot.press("f2")
        assert app.screen.query_one(ChatInput).text == "q1"
        assert not list(app.screen.query(UserMessage)) and app.history == []


async def test_tool_calls_confirmation_and_notices() -> None:
    answers: list[bool] = []

    def script(request: TurnRequest, handle: TurnHandle) -> None:
        handle.put(ev.TurnStarted("t"))
        handle.put(ev.Delta("commentary", "Let me check the weather."))
        handle.put(ev.ToolCallStarted("c1", "functions.get_weather"))
        handle.put(ev.ToolCallArgs("c1", '{"city": '))
        handle.put(ev.ToolCallArgs("c1", '"Paris"}'))
        handle.put(ev.ToolCall("c1", "functions.get_weather", '{"city": "Paris"}'))
        handle.put(ev.ToolConfirmation("c1", "functions.get_weather", '{"city": "Paris"}'))
        answers.append(handle.wait_confirmation("c1", timeout=10))
        handle.put(ev.ToolResult("c1", "functions.get_weather", '{"temp": 20}', duration_s=0.5))
        handle.put(ev.Recovery("missing_message", "inserted <|message|>"))
        handle.put(ev.Retry(1, "parse", "bad header"))
        handle.put(ev.Delta("final", "It is 20 degrees."))
        handle.put(ev.TurnFinished("stop"))

    app = HarmonyApp(backend=ScriptedBackend(script))
    async with app.run_test(size=SIZE) as pilot:
        await type_and_send(pilot, "weather?")
        for _ in range(200):
            await pilot.pause(0.02)
            if app.screen.__class__.__name__ == "ConfirmScreen":
                break
        assert app.screen.__class__.__name__ == "ConfirmScreen"
        await pilot.press("y")
        await app.wait_idle(10)
        await pilot.pause()
        assert answers == [True]
        entry = app.screen.query_one("ToolEntry")
        assert entry.args == '{"city": "Paris"}'
        assert "get_weather" in str(entry.title) and "0.50s" in str(entry.title)
        msg, retried = app.screen.query(AssistantMessage)  # the retry writes a reply of its own
        assert msg.commentary_text == "Let me check the weather."
        notices = " ".join(str(s.render()) for s in msg.query(".notice"))
        assert "repaired" in notices and "retrying (parse" in notices
        assert retried.final_text == "It is 20 degrees." and "20 degrees" not in msg.final_text
        assert app.history[-1].role == "tool" or any(m.role == "tool" for m in app.history)


async def test_params_panel_applies_to_next_turn() -> None:
    backend = ScriptedBackend(simple_reply("", "ok"))
    app = HarmonyApp(backend=backend)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("ctrl+g")
        screen = app.screen
        assert screen.__class__.__name__ == "ParamsScreen"
        screen.query_one("#p-temperature").value = "0.3"
        screen.query_one("#p-top_k").value = "40"
        screen.query_one("#p-max_tokens").value = "256"
        screen.query_one("#p-reasoning_effort").value = "high"
        screen.query_one("#p-instructions").text = "Answer briefly."
        screen.query_one("#p-tool-python").value = True
        await pilot.press("ctrl+s")
        assert app.settings.sampling.temperature == 0.3 and app.settings.sampling.top_k == 40
        assert "T=0.3" in app.sub_title and "effort=high" in app.sub_title
        await type_and_send(pilot, "hi")
        await app.wait_idle(10)
        s = backend.requests[0].settings
        assert (s.max_tokens, s.reasoning_effort, s.instructions) == (256, "high", "Answer briefly.")
        assert s.builtin_tools == ["python"] and "tools=python" in app.sub_title
        await pilot.press("ctrl+g")
        app.screen.query_one("#p-temperature").value = "0.7"
        await pilot.press("ctrl+s")
        await type_and_send(pilot, "again")
        await app.wait_idle(10)
        assert backend.requests[1].settings.sampling.temperature == 0.7
        sid = app.session_id
    from mlx_harmony_tui.sessions.store import SessionStore

    recorded = SessionStore().load(sid)
    assert recorded.settings["instructions"] == "Answer briefly."
    assert recorded.settings["builtin_tools"] == ["python"]
    assert recorded.params["temperature"] == 0.3  # the session started with these parameters
    assert recorded.messages[-1].params["temperature"] == 0.7  # the change is recorded on its reply


async def test_params_panel_rejects_bad_number() -> None:
    app = HarmonyApp(backend=ScriptedBackend(simple_reply("", "ok")))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("ctrl+g")
        app.screen.query_one("#p-top_p").value = "abc"
        await pilot.press("ctrl+s")
        assert app.screen.__class__.__name__ == "ParamsScreen"
        assert "Top p" in str(app.screen.query_one("#params-error").render())
        await pilot.press("escape")
        assert app.settings.sampling.top_p == 1.0


async def test_failed_load_keeps_previous_model() -> None:
    from mlx_harmony_tui.errors import UserError

    good = ScriptedBackend(simple_reply("", "ok"), name="good")

    def loader(model: str, progress) -> ScriptedBackend:
        progress(0.5, "reading")
        time.sleep(0.05)
        if model == "bad":
            raise UserError("bad: no config.json in /nowhere")
        return good

    app = HarmonyApp(model="good", loader=loader)
    async with app.run_test(size=SIZE) as pilot:
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert app.backend is good and "good" in app.sub_title
        app.load_model("bad")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert app.backend is good
        assert any("no config.json" in n.message for n in app._notifications)


async def test_help_and_keymap_remap() -> None:
    app = HarmonyApp(backend=ScriptedBackend(simple_reply("a", "b")), keymap={"chat.toggle_analysis": "ctrl+b"})
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f1")
        assert app.screen.__class__.__name__ == "HelpScreen"
        table = app.screen.query_one("DataTable")
        rows = [table.get_row_at(i) for i in range(table.row_count)]
        assert ["ctrl+b", "Thinking", "chat.toggle_analysis"] in [list(r) for r in rows]
        await pilot.press("escape")
        await type_and_send(pilot, "x")
        await app.wait_idle(10)
        await pilot.pause()
        box = app.screen.query_one(AssistantMessage).analysis_box
        assert box is not None and box.collapsed
        await pilot.press("ctrl+b")
        assert not box.collapsed


async def test_copy_reply_and_code() -> None:
    app = HarmonyApp(backend=ScriptedBackend(simple_reply("", "See:\n\n```python\nx = 1\n```\n")))
    async with app.run_test(size=SIZE) as pilot:
        await type_and_send(pilot, "code")
        await app.wait_idle(10)
        await pilot.pause()
        await pilot.press("f4")
        assert app.clipboard == "x = 1\n"
        await pilot.press("f3")
        assert app.clipboard.startswith("See:")


async def test_command_palette_lists_actions() -> None:
    app = HarmonyApp(backend=ScriptedBackend(simple_reply("", "ok")))
    async with app.run_test(size=SIZE):
        titles = {c.title for c in app.get_system_commands(app.screen)}
        assert {"Regenerate", "Edit last", "Thinking", "Sessions", "Model", "Params", "Help", "Stop"} <= titles


async def test_metrics_bar_format() -> None:
    app = HarmonyApp(backend=ScriptedBackend(simple_reply("", "ok")))
    async with app.run_test(size=SIZE):
        bar = app.screen.query_one(MetricsBar)
        bar.show(ev.Metrics(decode_tps=30.0, ttft_s=1.5, context_tokens=500, context_limit=8192,
                            mlx_active_bytes=3 * 2**30, mlx_peak_bytes=4 * 2**30, wired_bytes=2**30))
        text = str(bar.query_one("#metrics-text").render())
        assert "30.0 tok/s" in text and "TTFT 1.50s" in text and "ctx 500/8192" in text
        assert "3.00 GiB" in text and "wired 1.00 GiB" in text
        assert bar.history == [30.0]




async def test_command_palette_runs_an_action() -> None:
    app = HarmonyApp(backend=ScriptedBackend(simple_reply("", "ok")))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("ctrl+p")
        await pilot.pause()
        assert app.screen.__class__.__name__ == "CommandPalette"
        await pilot.press(*"Params")
        await pilot.pause(0.5)
        await pilot.press("enter")
        await pilot.pause(0.2)
        assert app.screen.__class__.__name__ == "ParamsScreen"

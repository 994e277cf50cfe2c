"""Issue 18, the app's keys and features: edit/regenerate any message with branches, copy any message,
export, quick settings, and the defects 3, 4, 8, 9 and 10. Pilot with a scripted backend; each failed
on the code before its fix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tui_fakes import ScriptedBackend, simple_reply

from mlx_harmony_tui.chat import events as ev
from mlx_harmony_tui.sessions.store import SessionStore
from mlx_harmony_tui.tui.app import HarmonyApp
from mlx_harmony_tui.tui.widgets.chat_input import ChatInput
from mlx_harmony_tui.tui.widgets.messages import AssistantMessage, UserMessage

SIZE = (120, 40)
ROOT = Path(__file__).resolve().parents[1]


async def say(pilot, text: str, answer: str = "ok") -> None:
    pilot.app.backend.script = simple_reply("", answer)
    box = pilot.app.screen.query_one(ChatInput)
    box.focus()
    await pilot.press(*text, "enter")
    await pilot.app.wait_idle(10)
    await pilot.pause()


def texts(app: HarmonyApp) -> list[str]:
    return [w.text if isinstance(w, UserMessage) else w.final_text
            for w in app.conversation.query("UserMessage, AssistantMessage")]


async def test_f2_puts_the_cursor_at_the_end() -> None:
    app = HarmonyApp(backend=ScriptedBackend(simple_reply("", "ok")), show_welcome=False)
    async with app.run_test(size=SIZE) as pilot:
        await say(pilot, "hello")
        await pilot.press("f2")
        await pilot.press("X")
        assert app.screen.query_one(ChatInput).text == "helloX"


async def test_multi_line_messages_keep_their_lines_on_screen_reopened_and_in_sessions_show(capsys) -> None:
    from rich.console import Console

    app = HarmonyApp(backend=ScriptedBackend(simple_reply("", "ok")), show_welcome=False)
    async with app.run_test(size=SIZE) as pilot:
        box = app.screen.query_one(ChatInput)
        box.focus()
        await pilot.press(*"first line", "ctrl+j", *"second line", "enter")
        await app.wait_idle(10)
        await pilot.pause()
        body = app.conversation.query_one(UserMessage).query_one(".body")
        console = Console(width=80, record=True)
        console.print(body.content)
        lines = [x.strip() for x in console.export_text().splitlines() if x.strip()]
        assert "first line" in lines and "second line" in lines, lines  # two lines, not "first line second line"
        sid = app.session_id
    from mlx_harmony_tui.cli import main
    from mlx_harmony_tui.sessions.export import to_markdown

    md = to_markdown(SessionStore().load(sid))
    console = Console(width=80, record=True)
    from rich.markdown import Markdown

    console.print(Markdown(md))
    shown = [x.strip() for x in console.export_text().splitlines()]
    assert "first line" in shown and "second line" in shown, shown
    assert main(["sessions", "show", sid]) == 0
    assert "first line" in capsys.readouterr().out


async def test_a_reopened_session_shows_tool_lines_durations_and_the_stop_marker() -> None:
    from mlx_harmony_tui.tui.widgets.tool_log import ToolLog

    def script(request, handle) -> None:
        handle.put(ev.TurnStarted("t"))
        handle.put(ev.ToolCallStarted("c1", "python"))
        handle.put(ev.ToolCall("c1", "python", "print(2)"))
        handle.put(ev.ToolResult("c1", "python", "2\n", None, 1.25))
        handle.put(ev.Delta("final", "The answer is 2, and"))
        handle.put(ev.TurnFinished("cancelled", ev.Metrics(final=True)))

    app = HarmonyApp(backend=ScriptedBackend(script), show_welcome=False)
    async with app.run_test(size=SIZE) as pilot:
        box = app.screen.query_one(ChatInput)
        box.focus()
        await pilot.press(*"compute", "enter")
        await app.wait_idle(10)
        await pilot.pause()
        sid = app.session_id
    app = HarmonyApp(backend=ScriptedBackend(script), show_welcome=False, session_id=sid)
    async with app.run_test(size=SIZE) as pilot:
        for _ in range(50):
            await pilot.pause(0.05)
            if app.session_id == sid and list(app.conversation.query(AssistantMessage)):
                break
        msg = app.conversation.query_one(AssistantMessage)
        notes = " ".join(str(s.render()) for s in msg.query(".notice"))
        assert "⚙ calling python" in notes and "stopped" in notes
        entry = app.screen.query_one(ToolLog).entries["c1"]
        assert "1.25s" in str(entry.title)


async def test_no_model_keeps_the_text_and_says_how_to_pick_one() -> None:
    from mlx_harmony_tui.errors import UserError

    def loader(model, progress):
        raise UserError("model not found: /nowhere")

    app = HarmonyApp(model="/nowhere", loader=loader)
    async with app.run_test(size=SIZE) as pilot:
        for _ in range(100):
            await pilot.pause(0.05)
            if not app.loading:
                break
        box = app.screen.query_one(ChatInput)
        box.focus()
        await pilot.press(*"keep me", "enter")
        await pilot.pause()
        assert box.text == "keep me"
        shown = " ".join(str(n.message) for n in app._notifications)
        assert "could not be loaded" in shown and "ctrl+o" in shown
        assert "could not be loaded" in str(app.screen.query_one("#welcome").render())


async def test_unknown_theme_falls_back_to_the_configured_one() -> None:
    app = HarmonyApp(backend=ScriptedBackend(simple_reply("", "ok")), theme="no-such-theme",
                     fallback_theme="harmony-dusk", show_welcome=False)
    async with app.run_test(size=SIZE):
        assert app.theme == "harmony-dusk"


def test_the_full_screen_app_refuses_a_pipe_and_points_to_chat(tmp_path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "mlx_harmony_tui", "--model", "demo"], capture_output=True,
                       text=True, env=env, stdin=subprocess.DEVNULL, timeout=120, cwd=tmp_path)
    assert r.returncode == 2 and "chat" in r.stderr and "terminal" in r.stderr
    assert "\x1b[" not in r.stdout  # no escape codes written into the pipe


async def test_palette_shows_titles_keys_and_the_quick_settings() -> None:
    app = HarmonyApp(backend=ScriptedBackend(simple_reply("", "ok")), show_welcome=False)
    async with app.run_test(size=SIZE) as pilot:
        commands = {c.title: c.help for c in app.get_system_commands(app.screen)}
        assert "Copy code" in commands and "chat.copy_code" not in commands["Copy code"]
        assert commands["Copy code"].endswith("· f4")
        for title in ("Reasoning effort: low", "Reasoning effort: high", "Temperature", "Tools on/off",
                      "Export session as Markdown", "Export session as JSON", "Next version"):
            assert title in commands, title
        efforts = ["low", "medium", "high"]
        after = efforts[(efforts.index(app.settings.reasoning_effort) + 1) % 3]
        await pilot.press("f9")
        assert app.settings.reasoning_effort == after and f"effort={after}" in app.sub_title
        await pilot.press("f8")
        assert app.settings.builtin_tools == [] and "tools=" not in app.sub_title
        await pilot.press("f8")
        assert app.settings.builtin_tools
        await pilot.press("f10")
        await pilot.press("end", *["backspace"] * 5, "0", ".", "3", "enter")
        assert app.settings.sampling.temperature == 0.3
        await say(pilot, "hi")
        assert app.backend.requests[-1].settings.sampling.temperature == 0.3


async def test_export_copy_any_message_and_branches(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    backend = ScriptedBackend(simple_reply("", "a1"))
    app = HarmonyApp(backend=backend, show_welcome=False)
    copied: list[str] = []
    monkeypatch.setattr(app, "copy_to_clipboard", copied.append)
    async with app.run_test(size=SIZE) as pilot:
        await say(pilot, "q1", "a1")
        await say(pilot, "q2", "a2")
        # select the first message (alt+up, then up) and copy it
        await pilot.press("alt+up", "up", "up", "up")
        assert isinstance(app.focused, UserMessage) and app.focused.text == "q1"
        await pilot.press("c")
        assert copied == ["q1"]
        # regenerate the first reply: the old one stays as a branch
        backend.script = simple_reply("", "a1 again")
        await pilot.press("down", "r")
        await app.wait_idle(10)
        await pilot.pause()
        assert texts(app) == ["q1", "a1 again"]
        assert app.chat.branch_points() == {1: (2, 2)}
        label = str(app.conversation.query(AssistantMessage).first().query_one(".who").render())
        assert "2/2" in label
        await pilot.press("f5")  # flips back to the old reply with what followed it
        await pilot.pause()
        assert texts(app) == ["q1", "a1", "q2", "a2"]
        # edit the first message: its text in the box, cursor at the end; sending makes a new branch
        msgs = list(app.conversation.query(UserMessage))
        msgs[0].focus()
        await pilot.press("e")
        box = app.screen.query_one(ChatInput)
        assert box.text == "q1" and app.focused is box
        backend.script = simple_reply("", "b1")
        await pilot.press("!", "enter")
        await app.wait_idle(10)
        await pilot.pause()
        assert texts(app) == ["q1!", "b1"]
        assert [m.text for m in backend.requests[-1].messages] == ["q1!"]
        label = str(app.conversation.query(UserMessage).first().query_one(".who").render())
        assert "2/2" in label
        md = app.export_session("md")
        js = app.export_session("json")
        assert md == tmp_path / f"{app.session_id}.md" and "q1!" in md.read_text()
        assert js is not None and '"messages"' in js.read_text()

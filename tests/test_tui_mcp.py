"""The TUI with MCP tools and attachments: the real app (Pilot), the real local backend, registry and MCP
client against a real MCP server (tests/mcp_test_server.py); only the model's text is scripted."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from scripted_engine import ScriptedEngine
from tui_fakes import ScriptedBackend, simple_reply

from mlx_harmony_tui.backends.local import LocalBackend
from mlx_harmony_tui.config import load_config
from mlx_harmony_tui.tui.app import HarmonyApp
from mlx_harmony_tui.tui.widgets.chat_input import ChatInput
from mlx_harmony_tui.tui.widgets.tool_log import ToolLog

SERVER = str(Path(__file__).with_name("mcp_test_server.py"))
SIZE = (120, 40)


async def _wait_for(pilot, cond, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await pilot.pause(0.05)


async def test_an_mcp_tool_call_shows_in_the_tool_pane_end_to_end(tmp_path, tiny_model_dir, encoding) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[[mcp.servers]]\nname = "t"\ncommand = {json.dumps(sys.executable)}\nargs = [{json.dumps(SERVER)}]\n'
                   "confirm = false\nstart_timeout_s = 60\n"
                   '[[mcp.servers]]\nname = "bad"\ncommand = "no-such-mcp-server"\n')
    config, problems = load_config(cfg)
    assert not problems
    backend = LocalBackend.load(str(tiny_model_dir), app_config=config)
    backend.engine = ScriptedEngine(encoding, [
        '<|channel|>commentary to=functions.t__echo <|constrain|>json<|message|>{"text": "from the TUI"}<|call|>',
        "<|channel|>final<|message|>It said: echo: from the TUI<|return|>",
    ])
    app = HarmonyApp(backend=backend)
    async with app.run_test(size=SIZE) as pilot:
        box = app.screen.query_one(ChatInput)
        box.focus()
        await pilot.press(*"echo please")
        await pilot.press("enter")
        await app.wait_idle(90)
        log = app.screen.query_one(ToolLog)
        await _wait_for(pilot, lambda: bool(log.entries))
        entry = next(iter(log.entries.values()))
        assert entry.recipient == "functions.t__echo"
        assert '"from the TUI"' in entry.args
        assert entry.title.startswith("✓ functions.t__echo")
        assert str(entry._result_view.render()) == "echo: from the TUI"
        assert "t__echo" in backend.engine.prompts[0] and "echo: from the TUI" in backend.engine.prompts[1]
        notes = [n.message for n in app._notifications]
        assert "MCP server t: 3 tools" in notes
        assert any(n.startswith("MCP server bad is off: cannot start 'no-such-mcp-server'") for n in notes)
    backend.close()


async def test_ctrl_f_attaches_a_file_to_the_next_message(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # short paths to type: each key is a Pilot round trip
    doc = tmp_path / "plan.txt"
    doc.write_text("step 1\nstep 2\n")
    backend = ScriptedBackend(simple_reply("", "ok"))
    app = HarmonyApp(backend=backend)
    async with app.run_test(size=SIZE) as pilot:
        app.screen.query_one(ChatInput).focus()
        await pilot.press("ctrl+f")
        await pilot.pause()
        await pilot.press(*"~/nope.bin")
        await pilot.press("enter")
        await pilot.pause()
        assert app.chat.attachments == []  # refused with a notice, nothing attached
        await pilot.press("ctrl+f")
        await pilot.pause()
        await pilot.press(*"~/plan.txt")
        await pilot.press("enter")
        await pilot.pause()
        assert [a.name for a in app.chat.attachments] == ["plan.txt"], (app.screen_stack, [n.message for n in app._notifications])
        app.screen.query_one(ChatInput).focus()
        await pilot.press(*"read it")
        await pilot.press("enter")
        await app.wait_idle(10)
        sent = backend.requests[0].messages[-1].text
        assert sent.startswith("read it\n\nAttached file `plan.txt`:\n```\nstep 1\nstep 2\n```")
        assert app.chat.attachments == []

"""MCP tools end to end: a real MCP server (tests/mcp_test_server.py, the official SDK, stdio) driven by our
real client (tools/mcp.py), the real tool registry, the real Harmony parser and turn pipeline. Only the
model is scripted (it writes fixed Harmony text, token by token), because a tiny model cannot be made to
call a given tool."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from scripted_engine import ScriptedEngine

from mlx_harmony_tui.chat.events import ToolCall, ToolConfirmation, ToolResult, TurnFinished
from mlx_harmony_tui.chat.settings import ChatSettings
from mlx_harmony_tui.chat.turn import TurnContext, run_turn
from mlx_harmony_tui.config import load_config
from mlx_harmony_tui.engine.sampling import SamplingParams
from mlx_harmony_tui.harmony.messages import HMessage
from mlx_harmony_tui.tools.mcp import McpHub, McpServerConfig
from mlx_harmony_tui.tools.registry import RegistryCache

SERVER = str(Path(__file__).with_name("mcp_test_server.py"))
START_S = 60.0  # generous: the SDK's import takes seconds on a loaded 2-core machine


def server_config(name: str = "t", **kw) -> McpServerConfig:
    return McpServerConfig(name=name, command=sys.executable, args=[SERVER], start_timeout_s=START_S, **kw)


def wait_until(cond, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def server_pids(hub_marker: str = SERVER) -> list[int]:
    out = subprocess.run(["pgrep", "-f", hub_marker], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out if int(p) != os.getpid()]


@pytest.fixture
def hub(tmp_path):
    h = McpHub([server_config(), McpServerConfig(name="bad", command="/nonexistent/mcp-server")], log_dir=tmp_path)
    h.start().wait_ready(START_S)
    yield h
    h.close()


def test_tools_are_listed_namespaced_and_calls_reach_the_server(hub):
    states = {s.name: s for s in hub.states()}
    assert states["t"].status == "ready", states["t"].error
    names = [f.name for f in hub.function_tools()]
    assert names == ["t__echo", "t__fail", "t__sleep"]
    echo = hub.function_tools()[0]
    assert echo.parameters["properties"]["text"]["type"] == "string" and "echo" in echo.description.lower()
    assert hub.call("t__echo", {"text": "hello"}).output == "echo: hello"


def test_a_failing_tool_and_an_unknown_tool_are_reported_not_raised(hub):
    res = hub.call("t__fail", {"reason": "for the test"})
    assert res.error == "tool error" and "failed for the test" in res.output
    res = hub.call("t__nope", {})
    assert res.error == "unknown tool" and "t__echo" in res.output


def test_a_server_that_cannot_start_is_a_notice_with_no_tools(hub):
    bad = {s.name: s for s in hub.states()}["bad"]
    assert bad.status == "failed" and "command not found" in bad.error
    assert not any(f.name.startswith("bad__") for f in hub.function_tools())
    res = hub.call("bad__anything", {})
    assert res.error == "mcp" and "not available" in res.output


def test_a_server_killed_mid_session_is_noticed_and_its_tools_withdrawn(tmp_path):
    changes: list[str] = []
    h = McpHub([server_config("k")], log_dir=tmp_path, on_change=lambda s: changes.append(s.status))
    try:
        h.start().wait_ready(START_S)
        assert [f.name for f in h.function_tools()][:1] == ["k__echo"]
        for pid in server_pids():
            os.kill(pid, signal.SIGKILL)
        # idle: the heartbeat notices within a few seconds; a call meanwhile fails cleanly
        res = h.call("k__echo", {"text": "x"})
        assert res.error is not None
        assert wait_until(lambda: h.states()[0].status == "failed", timeout=30)
        assert h.function_tools() == [] and "failed" in changes
    finally:
        h.close()


def test_a_call_in_flight_is_cancelled_by_the_user(hub):
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    t0 = time.monotonic()
    res = hub.call("t__sleep", {"seconds": 30}, cancel=cancel)
    assert res.error == "cancelled" and time.monotonic() - t0 < 10


def test_close_stops_the_server_processes(tmp_path):
    h = McpHub([server_config("c")], log_dir=tmp_path).start()
    h.wait_ready(START_S)
    assert server_pids()
    h.close()
    assert wait_until(lambda: not server_pids(), timeout=20)


def test_config_reads_mcp_servers_and_reports_bad_entries(tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        '[[mcp.servers]]\nname = "files"\ncommand = "npx"\nargs = ["-y", "x"]\nenv = {TOKEN = "1"}\n'
        '[[mcp.servers]]\nname = "web"\nurl = "http://127.0.0.1:9/mcp"\nconfirm = false\n'
        '[[mcp.servers]]\nname = "both"\ncommand = "a"\nurl = "http://b"\n'
        '[[mcp.servers]]\nname = "a__b"\ncommand = "a"\n'
        '[[mcp.servers]]\nname = "files"\ncommand = "again"\n'
    )
    config, problems = load_config(cfg)
    assert [s.name for s in config.mcp.servers] == ["files", "web"]
    assert config.mcp.servers[0].args == ["-y", "x"] and config.mcp.servers[0].env == {"TOKEN": "1"}
    assert config.mcp.servers[1].confirm is False
    text = "\n".join(map(str, problems))
    assert "'both' needs either command or url" in text and "'a__b'" in text and "defined twice" in text


def test_a_model_turn_calls_an_mcp_tool_and_gets_its_result(tmp_path, encoding):
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[[mcp.servers]]\nname = "t"\ncommand = {json.dumps(sys.executable)}\nargs = [{json.dumps(SERVER)}]\n'
                   f"start_timeout_s = {START_S}\n")
    config, problems = load_config(cfg)
    assert not problems
    registries = RegistryCache(config, mcp_log_dir=tmp_path)
    try:
        engine = ScriptedEngine(encoding, [
            '<|channel|>analysis<|message|>Use the echo tool.<|end|><|start|>assistant<|channel|>commentary '
            'to=functions.t__echo <|constrain|>json<|message|>{"text": "ping"}<|call|>',
            "<|channel|>final<|message|>The server said: echo: ping<|return|>",
        ])
        settings = ChatSettings(sampling=SamplingParams(temperature=0.0), builtin_tools=[], conversation_date="2026-01-01")
        asked: list[ToolConfirmation] = []

        def confirm(request: ToolConfirmation) -> bool:
            asked.append(request)
            return True

        ctx = TurnContext(engine=engine, encoding=encoding, context_limit=4096, tools=registries.get(settings),
                          confirm=confirm)
        events = list(run_turn(ctx, [HMessage("user", "Echo ping please")], settings))
        assert "t__echo" in engine.prompts[0]  # the model was told about the MCP tool
        calls = [e for e in events if isinstance(e, ToolCall)]
        assert calls and calls[0].recipient == "functions.t__echo"
        assert [a.recipient for a in asked] == ["functions.t__echo"]  # MCP calls are confirmed by default
        results = [e for e in events if isinstance(e, ToolResult)]
        assert results and results[0].output == "echo: ping" and results[0].error is None
        assert "echo: ping" in engine.prompts[1]  # the result reached the model
        assert isinstance(events[-1], TurnFinished) and events[-1].reason == "stop"
    finally:
        registries.close()


def test_mcp_list_command_shows_states_and_tools(tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[[mcp.servers]]\nname = "t"\ncommand = {json.dumps(sys.executable)}\nargs = [{json.dumps(SERVER)}]\n'
                   '[[mcp.servers]]\nname = "bad"\ncommand = "no-such-mcp-server"\n')
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    r = subprocess.run([sys.executable, "-m", "mlx_harmony_tui", "mcp", "--config", str(cfg), "list"],
                       capture_output=True, text=True, env=env, timeout=180, cwd=Path(__file__).parent.parent)
    assert r.returncode == 1, r.stderr  # one server failed
    assert "t [stdio]: ready" in r.stdout and "functions.t__echo" in r.stdout
    assert "bad [stdio]: failed: cannot start 'no-such-mcp-server': command not found" in r.stdout
    assert "Traceback" not in r.stderr


def test_serve_tools_mcp_runs_the_mcp_tool_on_the_server(tmp_path, tiny_model_dir, encoding):
    """`serve --tools mcp`: the model's MCP call runs on the server (the client never sees it); without it the
    server offers no MCP tool at all."""
    import openai

    from mlx_harmony_tui.backends.local import LocalBackend
    from mlx_harmony_tui.server.app import create_app
    from mlx_harmony_tui.server.command import serve_in_thread

    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[[mcp.servers]]\nname = "t"\ncommand = {json.dumps(sys.executable)}\nargs = [{json.dumps(SERVER)}]\n'
                   f"start_timeout_s = {START_S}\n")
    config, _ = load_config(cfg)
    backend = LocalBackend.load(str(tiny_model_dir), app_config=config)
    try:
        backend.engine = ScriptedEngine(encoding, [
            '<|channel|>commentary to=functions.t__echo <|constrain|>json<|message|>{"text": "srv"}<|call|>',
            "<|channel|>final<|message|>Server says echo: srv<|return|>",
            "<|channel|>final<|message|>No tools here.<|return|>",
        ])
        settings = ChatSettings(sampling=SamplingParams(temperature=0.0), conversation_date="2026-01-01")
        with serve_in_thread(create_app({"tiny": backend}, settings, run_tools=["mcp"])) as url:
            client = openai.OpenAI(base_url=url, api_key="none")
            reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "echo srv"}])
            assert reply.choices[0].message.content == "Server says echo: srv"
            assert not reply.choices[0].message.tool_calls  # run here, not handed to the client
            assert "t__echo" in backend.engine.prompts[0] and "echo: srv" in backend.engine.prompts[1]
        with serve_in_thread(create_app({"tiny": backend}, settings)) as url:
            client = openai.OpenAI(base_url=url, api_key="none")
            client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])
            assert "t__echo" not in backend.engine.prompts[2]  # not asked for: not offered
    finally:
        backend.close()


def test_a_streamable_http_server_by_url(tmp_path):
    """``url = ...``: the same tools over streamable HTTP, from a real MCP server process on loopback."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path / "http-server.log", "w")
    proc = subprocess.Popen([sys.executable, SERVER, str(port)], stdout=log, stderr=log)
    try:
        def listening() -> bool:
            with socket.socket() as c:
                return c.connect_ex(("127.0.0.1", port)) == 0

        assert wait_until(listening, timeout=60), (tmp_path / "http-server.log").read_text()
        h = McpHub([McpServerConfig(name="web", url=f"http://127.0.0.1:{port}/mcp", start_timeout_s=START_S)])
        try:
            h.start().wait_ready(START_S)
            state = h.states()[0]
            assert state.status == "ready" and state.transport == "http", state.error
            assert h.call("web__echo", {"text": "over http"}).output == "echo: over http"
        finally:
            h.close()
    finally:
        proc.kill()
        proc.wait(10)
        log.close()

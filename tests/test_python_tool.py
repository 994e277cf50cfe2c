"""The python tool: results, timeout kill, memory limit, truncation, scrubbed env, and the no-sandbox fallback
(the escape probes against the OS sandbox are in test_sandbox_probes.py)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from mlx_harmony_tui.tools import sandbox
from mlx_harmony_tui.tools.python import PythonTool, PythonToolConfig, python_description
from mlx_harmony_tui.tools.registry import ToolRegistry


@pytest.fixture
def tool() -> PythonTool:
    return PythonTool(PythonToolConfig(enabled=True, timeout_s=1.5, memory_mb=512, max_output_chars=2000))


def test_prints_and_shows_last_expression(tool: PythonTool) -> None:
    res = tool.run("import math\nprint('hello')\nmath.factorial(5)")
    assert res.error is None and res.output == "hello\n120\n"


def test_exceptions_come_back_as_traceback_text(tool: PythonTool) -> None:
    res = tool.run("x = 1\n1 / 0")
    assert res.error is None  # a failing cell is a normal result for the model
    assert "ZeroDivisionError" in res.output and 'File "<cell>", line 2' in res.output


def test_infinite_loop_is_killed_at_the_timeout(tool: PythonTool) -> None:
    start = time.monotonic()
    res = tool.run("print('started', flush=True)\nwhile True:\n    pass")
    elapsed = time.monotonic() - start
    assert res.error == "timeout" and "timed out after 1.5 seconds" in res.output and "started" in res.output
    assert 1.4 < elapsed < 4.0


def test_cancel_stops_a_running_cell(tool: PythonTool) -> None:
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    start = time.monotonic()
    res = tool.run("import time\ntime.sleep(30)", cancel)
    assert res.error == "cancelled" and time.monotonic() - start < 1.4


def test_memory_bomb_fails_cleanly() -> None:
    # zero-filling 512 MB is slow on a busy machine: a generous timeout
    tool = PythonTool(PythonToolConfig(timeout_s=20, memory_mb=512))
    res = tool.run("blocks = []\nwhile True:\n    blocks.append(bytearray(64 << 20))")
    assert res.error is None and "MemoryError" in res.output
    assert tool.run("1 + 1").output == "2\n"  # the next call is unaffected


def test_write_outside_working_directory_fails(tool: PythonTool, tmp_path: Path) -> None:
    target = tmp_path / "outside.txt"
    res = tool.run(f"open({str(target)!r}, 'w').write('x')")
    assert "Error" in res.output and not target.exists()
    res = tool.run(f"import os\nos.remove({str(Path(__file__))!r})")
    assert "Error" in res.output and Path(__file__).exists()


def test_writes_inside_the_fresh_working_directory_work_and_vanish(tool: PythonTool) -> None:
    # (a Python installed under /tmp shows read-only in the sandbox's /tmp: see test_sandbox_probes.py)
    own = sorted({Path(r).parts[2] for r in sandbox.python_roots() if Path(r).parts[1:2] == ("tmp",)})
    own = own if sandbox.detect().kind == sandbox.BWRAP else []
    code = "import os\nopen('a.txt', 'w').write('hi')\nprint(sorted(os.listdir('.')), open('a.txt').read())"
    assert tool.run(code).output == f"{sorted(['a.txt', *own])} hi\n"
    # stateless: a fresh directory each time
    assert tool.run("import os\nsorted(os.listdir('.'))").output == f"{own}\n"


def test_environment_is_scrubbed(tool: PythonTool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRET_TOKEN", "hunter2")
    res = tool.run("import os\nprint(sorted(os.environ))\nprint(os.environ['HOME'] == os.getcwd())")
    assert "SECRET_TOKEN" not in res.output and "hunter2" not in res.output
    assert res.output.splitlines()[1] == "True"


def test_no_network_but_programs_run_inside_the_sandbox(tool: PythonTool) -> None:
    res = tool.run("import socket\nsocket.create_connection(('example.com', 80), timeout=1)")
    assert "gaierror" in res.output or "unreachable" in res.output
    res = tool.run("import subprocess\nsubprocess.run(['echo', 'hi'], check=True)")
    assert res.output == "hi\nCompletedProcess(args=['echo', 'hi'], returncode=0)\n"


def test_stdin_is_closed(tool: PythonTool) -> None:
    assert tool.run("import sys\nsys.stdin.read()").output == "''\n"


def test_output_is_truncated_with_marker(tool: PythonTool) -> None:
    res = tool.run("print('x' * 100000)\nprint('THE END')")
    assert len(res.output) < 2200
    assert "[... truncated" in res.output and res.output.rstrip().endswith("THE END")
    cut = int(res.output.split("[... truncated ")[1].split(" ")[0])
    assert cut + len(res.output) >= 100000


def test_persistent_kernel_keeps_globals_until_timeout() -> None:
    tool = PythonTool(PythonToolConfig(enabled=True, timeout_s=1.0, persistent=True))
    try:
        assert tool.run("x = 41").output == ""
        assert tool.run("x + 1").output == "42\n"
        res = tool.run("while True: pass")
        assert res.error == "timeout" and "restarted" in res.output
        assert "NameError" in tool.run("x").output
    finally:
        tool.close()


def test_description_tells_the_model_how_it_behaves() -> None:
    text = python_description(PythonToolConfig(timeout_s=7, memory_mb=256))
    assert "nothing is kept between calls" in text and "7 seconds" in text and "no internet" in text
    assert "256 MB" in text and "Jupyter" not in text
    assert "persistent" in python_description(PythonToolConfig(persistent=True))


def test_without_an_os_sandbox_every_run_is_confirmed_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "detect", lambda: sandbox.Sandbox(sandbox.NONE, reason="bwrap is missing"))
    tool = PythonTool(PythonToolConfig(confirm=False))
    assert tool.needs_confirmation() and "No OS sandbox: bwrap is missing" in tool.confirmation_note()
    registry = ToolRegistry(python=PythonToolConfig(confirm=False))
    assert registry.needs_confirmation("python")
    assert "No OS sandbox" in registry.confirmation_note("python")
    assert tool.run("print(37 * 12)").output == "444\n"  # once allowed, it still runs (unsandboxed)


def test_with_the_os_sandbox_python_runs_without_asking() -> None:
    if not sandbox.detect().available:
        pytest.skip(sandbox.detect().reason)
    registry = ToolRegistry(python=PythonToolConfig(confirm=False))
    assert not registry.needs_confirmation("python") and registry.confirmation_note("python") == ""
    assert registry.run("python", "print(37*12)").output == "444\n"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the reaper is Linux-only")
def test_without_an_os_sandbox_the_kernel_still_works_and_ends_its_children(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sandbox, "detect", lambda: sandbox.Sandbox(sandbox.NONE, reason="none here"))
    marker = f"mht-kernel-child-{time.monotonic_ns()}"
    tool = PythonTool(PythonToolConfig(persistent=True, timeout_s=10))
    try:
        assert tool.run("x = 2").output == ""
        code = f"import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', {marker!r}], start_new_session=True)\nx * 21"
        assert tool.run(code).output == "42\n"
    finally:
        tool.close()
    deadline = time.monotonic() + 10
    while _alive(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(marker)


def _alive(marker: str) -> bool:
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and marker.encode() in (p / "cmdline").read_bytes():
                return True
        except OSError:
            pass
    return False


def test_generate_says_why_python_did_not_run_without_a_sandbox(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from mlx_harmony_tui import cli

    monkeypatch.setattr(sandbox, "detect", lambda: sandbox.Sandbox(sandbox.NONE, reason="bwrap is missing"))
    argv = ["generate", "--temperature", "0", "--max-tokens", "200", "--prompt", "What is 37*12?"]
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    assert "tool call python refused (No OS sandbox: bwrap is missing." in err and "--yes allows it" in err


async def test_the_tui_confirmation_says_there_is_no_sandbox() -> None:
    from textual.widgets import Static
    from tui_fakes import ScriptedBackend

    from mlx_harmony_tui.backends.base import TurnHandle, TurnRequest
    from mlx_harmony_tui.chat import events as ev
    from mlx_harmony_tui.tui.app import HarmonyApp
    from mlx_harmony_tui.tui.widgets.chat_input import ChatInput

    answers: list[bool] = []
    note = "No OS sandbox: bwrap is missing. The code will run with your permissions and can read your files."

    def script(request: TurnRequest, handle: TurnHandle) -> None:
        handle.put(ev.TurnStarted("t"))
        handle.put(ev.ToolCall("c1", "python", "print(37*12)"))
        handle.put(ev.ToolConfirmation("c1", "python", "print(37*12)", note=note))
        answers.append(handle.wait_confirmation("c1", timeout=10))
        handle.put(ev.TurnFinished("stop"))

    app = HarmonyApp(backend=ScriptedBackend(script))
    async with app.run_test(size=(120, 40)) as pilot:
        app.screen.query_one(ChatInput).focus()
        await pilot.press(*"compute", "enter")
        for _ in range(200):
            await pilot.pause(0.02)
            if app.screen.__class__.__name__ == "ConfirmScreen":
                break
        assert app.screen.__class__.__name__ == "ConfirmScreen"
        detail = str(app.screen.query_one(".detail", Static).render())
        assert detail.startswith("No OS sandbox: bwrap is missing.") and "print(37*12)" in detail
        await pilot.press("n")
        await app.wait_idle(10)
    assert answers == [False]


@pytest.mark.skipif(sandbox.detect().kind != sandbox.BWRAP, reason="bubblewrap only")
def test_a_python_installed_under_tmp_stays_visible_in_the_sandbox(monkeypatch: pytest.MonkeyPatch) -> None:
    """A clone and its venv under /tmp (as CI runners often have): the sandbox's private /tmp must not hide
    the interpreter (bwrap said 'execvp .../bin/python: No such file or directory')."""
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="mht-py-") as root:
        Path(root, "marker").write_text("the install\n")
        roots = sandbox.python_roots()
        monkeypatch.setattr(sandbox, "python_roots", lambda: [*roots, root])
        box = sandbox.Sandbox(sandbox.BWRAP, sandbox._find_bwrap() or "bwrap")
        code = f"import os; print(open({str(Path(root, 'marker'))!r}).read(), os.getcwd())"
        argv, inside = box.wrap([sys.executable, "-I", "-c", code], workdir="/", env={}, tmp_bytes=1 << 20)
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        assert out.stdout.split() == ["the", "install", "/tmp"], out.stderr

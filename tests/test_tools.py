"""The tool registry: built from settings + config, dispatch by recipient, errors fed back, records kept."""

from __future__ import annotations

import json
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mlx_harmony_tui.chat.settings import ChatSettings, FunctionTool
from mlx_harmony_tui.config import load_config
from mlx_harmony_tui.tools import FunctionToolConfig, ToolRecord, ToolRegistry
from mlx_harmony_tui.tools.functions import run_function

SCRIPT = textwrap.dedent(
    """\
    import json, sys
    args = json.load(sys.stdin)
    if args.get("fail"):
        print("bad things", file=sys.stderr)
        sys.exit(3)
    if args.get("sleep"):
        import time; time.sleep(args["sleep"])
    print(json.dumps({"sum": args["a"] + args["b"]}))
    """
)


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "add.py"
    path.write_text(SCRIPT)
    return path


def make_config(tmp_path: Path, script: Path) -> Path:
    f = tmp_path / "config.toml"
    f.write_text(
        textwrap.dedent(
            f"""\
            [tools.python]
            enabled = true
            timeout_s = 2
            [[tools.functions]]
            name = "add"
            description = "Add two numbers"
            command = [{json.dumps(sys.executable)}, {json.dumps(str(script))}]
            parameters = {{ type = "object", properties = {{ a = {{ type = "number" }}, b = {{ type = "number" }} }} }}
            timeout_s = 1
            safe = true
            [[tools.functions]]
            name = "deploy"
            command = "false"
            """
        )
    )
    return f


def test_function_tool_via_small_script(script: Path) -> None:
    tool = FunctionToolConfig(name="add", command=[sys.executable, str(script)], timeout_s=2)
    res = run_function(tool, {"a": 2, "b": 40})
    assert res.error is None and json.loads(res.output) == {"sum": 42}
    res = run_function(tool, {"fail": True})
    assert res.error == "exit status 3" and "bad things" in res.output and "exit status 3" in res.output
    start = time.monotonic()
    res = run_function(
        FunctionToolConfig(name="add", command=[sys.executable, str(script)], timeout_s=0.5), {"sleep": 30}
    )
    assert res.error == "timeout" and time.monotonic() - start < 2.5


def test_missing_command_program_is_reported() -> None:
    res = run_function(FunctionToolConfig(name="x", command="/no/such/program --flag"), {})
    assert res.error == "could not start" and "/no/such/program" in res.output


def _alive(marker: str) -> bool:
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and marker.encode() in (p / "cmdline").read_bytes():
                return True
        except OSError:
            pass
    return False


def _gone(marker: str, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _alive(marker)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the reaper is Linux-only")
@pytest.mark.parametrize("timeout_s", [30.0, 1.0], ids=["after it exits", "at the timeout"])
def test_a_setsid_child_of_a_function_tool_ends_with_the_call(tmp_path: Path, timeout_s: float) -> None:
    marker = f"mht-fn-probe-{time.monotonic_ns()}"
    code = (
        "import subprocess, sys, time\n"
        f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)', {marker!r}], start_new_session=True)\n"
        f"time.sleep({0 if timeout_s > 5 else 60})\nprint('done')"
    )
    res = run_function(
        FunctionToolConfig(name="f", command=[sys.executable, "-c", code], timeout_s=timeout_s), {}
    )
    assert (res.error is None) == (timeout_s > 5), res.output
    assert _gone(marker)


def test_commands_that_cannot_start_are_found_before_the_call(tmp_path: Path) -> None:
    noshebang = tmp_path / "tool.sh"
    noshebang.write_text("echo hi\n")
    noshebang.chmod(0o755)
    notexec = tmp_path / "tool2.sh"
    notexec.write_text("#!/bin/sh\necho hi\n")
    cases = {
        "say 'unbalanced": "cannot be split into words",
        str(noshebang): "without a '#!' line",
        str(notexec): "not executable",
        "no-such-program-anywhere": "not on the PATH",
    }
    for command, why in cases.items():
        tool = FunctionToolConfig(name="f", command=command)
        assert why in (tool.problem() or ""), command
        res = run_function(tool, {})
        assert res.error == "could not start" and why in res.output
    assert FunctionToolConfig(name="f", command="echo 'balanced quotes'").problem() is None


def test_registry_from_settings_and_config(tmp_path: Path, script: Path) -> None:
    config, problems = load_config(make_config(tmp_path, script))
    assert problems == []
    settings = ChatSettings(
        builtin_tools=config.layers["config"]["builtin_tools"], function_tools=[FunctionTool("client_fn")]
    )
    reg = ToolRegistry.from_settings(settings, config)
    assert reg.builtin_names() == ["python"]
    assert [t.name for t in reg.function_tools()] == ["client_fn", "add", "deploy"]
    assert reg.function_tools()[1].parameters["properties"]["a"] == {"type": "number"}
    (ns,) = reg.builtin_namespaces()
    assert ns.name == "python" and "2 seconds" in ns.description
    assert reg.needs_confirmation("functions.deploy") and not reg.needs_confirmation("functions.add")
    assert not reg.needs_confirmation("python")
    assert (
        reg.can_run("functions.add")
        and not reg.can_run("functions.client_fn")
        and not reg.can_run("browser.open")
    )


def test_run_dispatches_and_records(tmp_path: Path, script: Path) -> None:
    config, _ = load_config(make_config(tmp_path, script))
    seen: list[ToolRecord] = []
    reg = ToolRegistry.from_settings(ChatSettings(builtin_tools=["python"]), config)
    reg.on_record = seen.append
    out = reg.run("functions.add", '{"a": 1, "b": 2}')
    assert out.error is None and json.loads(out.output) == {"sum": 3} and out.duration_s > 0
    out = reg.run("python", "6 * 7")
    assert out.output == "42\n"
    out = reg.run("python", '{"code": "print(5)"}')  # JSON-wrapped code variant
    assert out.output == "5\n"
    assert [r.recipient for r in seen] == ["functions.add", "python", "python"] and seen == reg.records
    assert seen[0].arguments == '{"a": 1, "b": 2}' and seen[0].started <= time.time()


def test_errors_are_fed_back_not_raised(tmp_path: Path, script: Path) -> None:
    config, _ = load_config(make_config(tmp_path, script))
    reg = ToolRegistry.from_settings(ChatSettings(builtin_tools=["python"]), config)
    out = reg.run("functions.nope", "{}")
    assert out.error == "unknown tool" and "unknown tool 'functions.nope'" in out.output
    assert "functions.add" in out.output and "python" in out.output
    out = reg.run("browser.search", '{"query": "x"}')  # browser is off here
    assert out.error == "unknown tool"
    out = reg.run("functions.add", '{"a": 1,')
    assert out.error == "bad arguments" and "not valid JSON" in out.output
    out = reg.run("functions.add", "[1, 2]")
    assert out.error == "bad arguments" and "JSON object" in out.output
    out = reg.run("functions.add", '{"a": 1}')  # the script itself fails with a KeyError
    assert out.error == "exit status 1" and "KeyError" in out.output
    assert len(reg.records) == 5 and all(r.error for r in reg.records)


def test_browser_through_registry_argument_errors() -> None:
    reg = ToolRegistry.from_settings(ChatSettings(builtin_tools=["browser"]))
    assert reg.builtin_names() == ["browser"] and reg.builtin_namespaces()[0].name == "browser"
    out = reg.run("browser.search", '{"query": "cats", "topn": 3.0}')
    assert out.error == "browser" and "search is turned off" in out.output
    out = reg.run("browser.open", '{"url": "http://x"}')
    assert out.error == "bad arguments" and "no argument url" in out.output
    out = reg.run("browser.find", "{}")
    assert out.error == "bad arguments" and "pattern" in out.output
    out = reg.run("browser.find", '{"pattern": "x"}')
    assert out.error == "browser" and "No page is open" in out.output
    assert reg.run("browser.click", "{}").error == "unknown tool"


def test_output_limit_applies_to_every_tool(tmp_path: Path) -> None:
    reg = ToolRegistry(
        functions={
            "big": FunctionToolConfig(name="big", command=[sys.executable, "-c", "print('z' * 50000)"])
        },
        max_output_chars=1000,
    )
    out = reg.run("functions.big", "{}")
    assert len(out.output) < 1100 and "[... truncated" in out.output

"""`serve` as the command line builds it: only the configured model (and its aliases) can be asked for."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading

import openai
import pytest

from mlx_harmony_tui import cli
from mlx_harmony_tui.server.command import build_app, free_port, serve_in_thread


def test_serve_builds_an_app_for_the_configured_model_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLX_HARMONY_TUI_API_KEY", "envkey")
    args = cli.build_parser().parse_args(["serve", "--model", "tiny", "--name", "gpt-oss-20b", "--max-tokens", "4",
                                          "--temperature", "0"])
    app = build_app(args)
    assert sorted(app.state.backends) == ["gpt-oss-20b", "tiny"]
    with serve_in_thread(app) as url:
        c = openai.OpenAI(base_url=url, api_key="envkey", max_retries=0, timeout=60)
        r = c.chat.completions.create(model="gpt-oss-20b", messages=[{"role": "user", "content": "hi"}])
        assert r.usage.completion_tokens <= 4 * 3  # (up to 3 attempts) the CLI's --max-tokens is the server's default
        with pytest.raises(openai.NotFoundError, match="model_not_found|does not exist"):
            c.chat.completions.create(model="/tmp", messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url, api_key="bad", max_retries=0).models.list()


def test_serve_rejects_bad_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve", "--model", "tiny", "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err
    assert cli.main(["serve", "--model", "/no/such/dir"]) == 2
    assert "model not found" in capsys.readouterr().err


def _serve(*argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "mlx_harmony_tui", "serve", "--model", "tiny", *argv],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


class _Lines:
    """The process's stderr lines, read on a thread so the test can wait for one with a timeout."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.reader = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.reader.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        for line in proc.stderr:  # type: ignore[union-attr]
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()

    def wait_for(self, pattern: str, timeout: float = 120) -> str:
        with self.cond:
            found = self.cond.wait_for(lambda: next((ln for ln in self.lines if re.search(pattern, ln)), None),
                                       timeout)
        assert found, f"no line matching {pattern!r} in {self.lines}"
        return found


def test_serve_on_a_taken_port_fails_before_loading_and_names_the_flag() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "mlx_harmony_tui", "serve", "--model", "demo", "--port",
                               str(port)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert f"127.0.0.1:{port}" in proc.stderr and "--port" in proc.stderr
    assert "loading" not in proc.stderr and "Traceback" not in proc.stderr  # checked before the model loads


@pytest.mark.parametrize("quiet", [False, True])
def test_serve_logs_one_line_per_request(quiet: bool) -> None:
    port = free_port()
    proc = _serve("--port", str(port), "--max-tokens", "4", *(["--quiet"] if quiet else []))
    try:
        lines = _Lines(proc)
        lines.wait_for(r"serving .* on http://")
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=60)
        c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])
        for _ in c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], stream=True):
            pass
        with pytest.raises(openai.NotFoundError):
            c.models.retrieve("nope")
        c.models.list()
        if quiet:  # all of stderr, up to the process's end: no request line in it
            proc.terminate()
            proc.wait(timeout=30)
            lines.reader.join(timeout=30)
            assert lines.lines and not any("/v1/" in ln for ln in lines.lines)
            return
        lines.wait_for(r"GET /v1/models 200 \d+ ms$")
        posts = [ln for ln in lines.lines if "POST /v1/chat/completions" in ln]
        assert len(posts) == 2 and all(re.search(r" 200 prompt=\d+ completion=[1-9]\d* \d+ ms$", ln) for ln in posts)
        assert any(re.search(r"GET /v1/models/nope 404 \d+ ms$", ln) for ln in lines.lines)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_serve_tools_python_runs_the_sandbox_for_clients_that_declare_no_python() -> None:
    """`serve --tools python`: the server runs the model's python calls itself and the client gets the answer;
    without the flag no tool is offered and nothing runs."""
    question = [{"role": "user", "content": "What is 37*12?"}]
    app = build_app(cli.build_parser().parse_args(["serve", "--model", "demo", "--tools", "python",
                                                    "--temperature", "0"]))
    with serve_in_thread(app) as url:
        c = openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=120)
        r = c.chat.completions.create(model="demo", messages=question)
        msg = r.choices[0].message
        assert r.choices[0].finish_reason == "stop" and not msg.tool_calls
        assert "444" in (msg.content or "") and "did not declare" not in (msg.content or "")
        streamed = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
            model="demo", messages=question, stream=True) if ch.choices)
        assert "444" in streamed
    app = build_app(cli.build_parser().parse_args(["serve", "--model", "demo", "--temperature", "0"]))
    with serve_in_thread(app) as url:
        c = openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=120)
        content = c.chat.completions.create(model="demo", messages=question).choices[0].message.content or ""
        assert "444" not in content  # no tool offered: the demo says it needs the python tool

"""End to end in a real terminal: start the app in tmux, chat, toggle the analysis, open the session
browser, quit, restart and find the session again; a python tool call shown in the tool-call pane."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
ROOT = Path(__file__).resolve().parents[1]


class Tmux:
    def __init__(self, socket: str, env: dict[str, str]) -> None:
        self.socket, self.env, self.name = socket, env, "app"

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True,
                              env=self.env, timeout=20).stdout

    def start(self, *app_args: str) -> None:
        cmd = " ".join([sys.executable, "-m", "mlx_harmony_tui", *app_args])
        self.tmux("new-session", "-d", "-s", self.name, "-x", "120", "-y", "40", "-c", str(ROOT), cmd)

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", self.name)

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", self.name, *keys)

    def wait_for(self, text: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen()
            if text in screen:
                return screen
            time.sleep(0.2)
        raise AssertionError(f"{text!r} not on screen after {timeout}s:\n{screen}")

    def wait_until(self, ok: Callable[[str], bool], what: str, timeout: float = 60.0) -> str:
        """The screen once ``ok(screen)`` holds: a widget's parts can reach the screen in separate frames."""
        deadline = time.monotonic() + timeout
        screen = self.screen()
        while not ok(screen):
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not on screen after {timeout}s:\n{screen}")
            time.sleep(0.2)
            screen = self.screen()
        return screen

    def click(self, text: str) -> None:
        """Left-click the first cell of ``text`` on screen (SGR mouse report, as a terminal sends it)."""
        lines = self.screen().splitlines()
        y = next(i for i, line in enumerate(lines) if text in line)
        x = lines[y].index(text)
        report = f"\x1b[<0;{x + 1};{y + 1}M\x1b[<0;{x + 1};{y + 1}m".encode()
        self.tmux("send-keys", "-t", self.name, "-H", *(f"{b:02x}" for b in report))

    def alive(self) -> bool:
        return subprocess.run(["tmux", "-L", self.socket, "has-session", "-t", self.name],
                              capture_output=True, env=self.env).returncode == 0

    def kill(self) -> None:
        self.tmux("kill-server")

    def quit(self, timeout: float = 20.0) -> None:
        """ctrl+q, then wait for the app (and so the tmux session) to end."""
        self.keys("C-q")
        deadline = time.monotonic() + timeout
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not self.alive(), "the app did not quit"


def test_chat_in_tmux_and_find_session_after_restart(isolated_dirs: Path, tmp_path: Path) -> None:
    env = dict(os.environ)
    env.update(TERM="xterm-256color", PYTHONPATH=str(ROOT), TMUX_TMPDIR=str(tmp_path))
    env.pop("TMUX", None)
    t = Tmux(f"mht-{os.getpid()}", env)
    cfg = tmp_path / "config.toml"
    cfg.write_text("[sampling]\nmax_tokens = 120\nseed = 1\n")
    args = ("--config", str(cfg))  # no --model: the first-run default, the built-in demo model
    try:
        t.start(*args)
        screen = t.wait_for("Model ready", 120)
        assert "Sessions:" in screen and "models pull" in screen  # the first-run hints
        t.keys("-l", "hello from tmux")
        t.keys("Enter")
        t.wait_for("You", 30)
        screen = t.wait_for("Assistant", 30)
        deadline = time.monotonic() + 60
        while (" ready " not in screen or "-- tok/s" in screen) and time.monotonic() < deadline:
            time.sleep(0.3)
            screen = t.screen()
        assert "hello from tmux" in screen and "Assistant" in screen
        assert "▶ Thinking" in screen  # the demo model reasons first; folded once the answer came
        t.keys("C-t")
        t.wait_for("▼ Thinking", 5)
        t.keys("C-t")
        t.wait_for("▶ Thinking", 5)
        t.keys("C-s")
        screen = t.wait_for("enter open", 10)  # the browser's hint line
        assert "hello from tmux" in screen.split("search titles")[1]
        t.keys("Escape")
        time.sleep(0.5)
        t.quit()

        t.start(*args)
        t.wait_for("Model ready", 120)
        t.keys("C-s")
        screen = t.wait_for("enter open", 10)
        screen = t.screen()
        assert "hello from tmux" in screen and "demo" in screen
        t.keys("Enter")  # the search box is focused: Enter opens the first (only) session
        t.wait_for("█ You", 10)
        assert "hello from tmux" in t.screen()
        t.keys("C-q")
    finally:
        t.kill()


def test_python_tool_call_in_the_tool_pane(isolated_dirs: Path, tmp_path: Path) -> None:
    """The demo model computes 37*12 with the python tool: the pane lists the call, expanding it shows the
    code and the real result, and the answer quotes it."""
    env = dict(os.environ)
    env.update(TERM="xterm-256color", PYTHONPATH=str(ROOT), TMUX_TMPDIR=str(tmp_path))
    env.pop("TMUX", None)
    t = Tmux(f"mht-tool-{os.getpid()}", env)
    cfg = tmp_path / "config.toml"
    cfg.write_text("[sampling]\ntemperature = 0.0\nseed = 1\n")
    try:
        t.start("--config", str(cfg))
        t.wait_for("Model ready", 120)
        t.keys("-l", "What is 37*12?")
        t.keys("Enter")
        screen = t.wait_for("✓ python", 60)  # the call ran without an error
        pane = [line.split("│", 1)[1] for line in screen.splitlines() if "│" in line]
        assert "Tool calls" in pane[0] and any("✓ python" in line for line in pane)
        t.click("✓ python")
        def pane_of(screen: str) -> str:
            return "\n".join(line.split("│", 1)[1] for line in screen.splitlines() if "│" in line)

        # the header turns first; the code and result may reach the screen a frame later (a busy machine)
        screen = t.wait_until(lambda s: "▼ ✓ python" in s and "print(" in pane_of(s)
                              and any(line.strip() == str(37 * 12) for line in pane_of(s).splitlines()),
                              "the expanded call with its code and result", 20)  # fmt: skip
        pane_text = pane_of(screen)
        code_line = next(line for line in pane_text.splitlines() if "print(" in line)
        assert "37" in code_line and "12" in code_line
        assert any(line.strip() == str(37 * 12) for line in pane_text.splitlines())  # the tool's real output
        deadline = time.monotonic() + 60
        while " ready " not in screen and time.monotonic() < deadline:
            time.sleep(0.3)
            screen = t.screen()
        chat = "\n".join(line.split("│", 1)[0] for line in screen.splitlines())
        answer = chat.split("calling python", 1)[1]
        assert str(37 * 12) in answer  # the final answer, after the call, quotes the result
        t.keys("C-q")
    finally:
        t.kill()

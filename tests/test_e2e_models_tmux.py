"""From nothing to chatting in a real terminal: `models pull` a repo (from the local Hub-layout server),
start the app in tmux with --model REPO, chat, see it in the picker marked as fitting, quit."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hub_server import REPO, FakeHub
from test_e2e_tmux import ROOT, Tmux

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


def test_pull_then_chat_in_tmux(fake_hub: FakeHub, isolated_dirs: Path, tmp_path: Path) -> None:
    env = dict(os.environ)
    env.update(TERM="xterm-256color", PYTHONPATH=str(ROOT), TMUX_TMPDIR=str(tmp_path))
    env.pop("TMUX", None)
    pulled = subprocess.run([sys.executable, "-m", "mlx_harmony_tui", "models", "pull", REPO], env=env,
                            capture_output=True, text=True, timeout=180)  # fmt: skip
    assert pulled.returncode == 0, pulled.stderr
    cfg = tmp_path / "config.toml"
    cfg.write_text("[sampling]\nmax_tokens = 16\nseed = 1\n")
    t = Tmux(f"mht-models-{os.getpid()}", env)
    try:
        t.start("--model", REPO, "--config", str(cfg))
        screen = t.wait_for(f"Model ready: {REPO}", 120)
        assert REPO in screen.splitlines()[0]  # the title names the repo
        t.keys("-l", "hello")
        t.keys("Enter")
        t.wait_for("Assistant", 30)
        deadline = time.monotonic() + 60
        while " ready " not in t.screen() and time.monotonic() < deadline:
            time.sleep(0.3)
        t.keys("C-o")
        screen = t.wait_for("Choose a model", 10)
        row = next(line for line in screen.splitlines() if REPO in line and "hf-cache" in line)
        assert "● " in row and "fits" in row
        t.keys("Escape")
        time.sleep(0.5)
        t.quit()
    finally:
        t.kill()

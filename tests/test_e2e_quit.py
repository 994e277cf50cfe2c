"""Quitting at any moment exits cleanly: the real app in tmux, ctrl+q at random moments (model load, prefill,
decode, session save) while two busy processes load the CPU; every run must exit 0 (an MLX thread still
running at interpreter exit aborted with 134 in 3 of ~30 such runs) and every sent message must be saved."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_e2e_tmux import ROOT, Tmux
from test_e2e_tmux import pytestmark as needs_tmux

# the same skip when tmux is missing; and its busy processes are its own load: no other test runs beside it
pytestmark = [needs_tmux, pytest.mark.alone]

RUNS = 30
LANES = 4  # apps side by side, each quitting its share of the runs in turn: ~1.5 min in all


def _lane_env(base: dict[str, str], root: Path) -> dict[str, str]:
    env = dict(base)
    for var in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME"):
        d = root / var.lower()
        d.mkdir(parents=True, exist_ok=True)
        env[var] = str(d)
    return env


def _status(screen: str) -> str:
    """The metrics bar's status word (loading, ready, generating, prefill, ...)."""
    bar = [line for line in screen.splitlines() if "tok/s" in line]
    return bar[-1].split()[0] if bar and bar[-1].split() else "?"


class Run:
    """One app from start to exit: up on screen -> send at a random moment -> ctrl+q a random moment later."""

    def __init__(
        self, t: Tmux, n: int, home: Path, cfg: Path, base: dict[str, str], rng: random.Random, slow_model: Path
    ) -> None:
        self.t, self.n, self.home, self.name = t, n, home, f"r{n}"
        self.rc = home / "rc"
        env = _lane_env(base, home)
        exports = " ".join(f"{k}={env[k]}" for k in env if k.startswith("XDG_"))
        self.during_load = n % 2 == 0
        model = f" --model {slow_model}" if self.during_load else ""  # a load that lasts long enough to hit
        cmd = f"env {exports} {sys.executable} -m mlx_harmony_tui --config {cfg}{model}; echo $? > {self.rc}"
        t.tmux(
            "new-session", "-d", "-s", self.name, "-x", "120", "-y", "40", "-c", str(ROOT), "sh", "-c", cmd
        )
        # even runs quit while a model loads (0-0.3 s after the screen is up; they load a ~0.5 GB random model,
        # since the demo loads in ~0.3 s and is often ready before the screen is drawn on a busy machine), odd
        # ones send to the demo once it is ready and quit 0.3-3 s later: prefill, decode and the saves in
        # between; every fourth asks what the demo model computes with python and quits while the tool runs
        self.tool = n % 4 == 3
        self.text = "What is 37*12?" if self.tool else "hello there"
        self.send_after, self.quit_after = rng.uniform(0.0, 0.5), rng.uniform(0.3, 3.0)
        if self.during_load:
            self.send_after, self.quit_after = 0.0, rng.uniform(0.0, 0.3)
        self.up_at: float | None = None
        self.sent = self.quit_at = self.last_quit = 0.0
        self.phase = ""  # the status bar when ctrl+q was first pressed
        self.shown = False  # the message was on screen as sent
        self.started = time.monotonic()

    def screen(self) -> str:
        return self.t.tmux("capture-pane", "-p", "-t", self.name)

    def step(self, now: float) -> bool:
        """Advance; True once the app has exited (or given up on)."""
        if self.rc.exists() or now - self.started > 120:
            return True
        if self.up_at is None:
            screen = self.screen()
            # the welcome panel: the app is drawing and reading keys; or the status bar says the model is ready
            if ("Sessions:" in screen) if self.during_load else (_status(screen) == "ready"):
                self.up_at = now
            return False
        if not self.sent and now >= self.up_at + self.send_after:
            if not self.during_load:
                self.t.tmux("send-keys", "-t", self.name, "-l", self.text)
                self.t.tmux("send-keys", "-t", self.name, "Enter")
            self.sent = now
        elif self.sent and now >= self.sent + self.quit_after and now - self.last_quit >= 3.0:
            if not self.last_quit:
                screen = self.screen()
                called = "calling python" in screen or "✓ python" in screen  # its line or its pane entry
                if self.tool and not called and now < self.sent + 30:
                    return False  # wait for the call to show (the header's tools=python does not count)
                self.shown = "You" in screen and self.text in screen
                self.phase = "tool" if self.tool and called else _status(screen)
            self.t.tmux("send-keys", "-t", self.name, "C-q")  # pressed again if the first was not read
            self.last_quit = now
        return False

    def result(self) -> tuple[int, str, str, bool, bool]:
        status = self.rc.read_text().strip() if self.rc.exists() else "did not exit within 120 s"
        files = list((self.home / "xdg_data_home").rglob("sessions/*.json"))
        saved = any(
            self.text in m.get("content", "") for f in files for m in json.loads(f.read_text())["messages"]
        )
        return self.n, status, self.phase, self.shown, saved


def test_quit_at_random_moments_never_aborts(tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("MHT_QUIT_SEED", "18")))
    base = dict(os.environ)
    base.update(TERM="xterm-256color", PYTHONPATH=str(ROOT), TMUX_TMPDIR=str(tmp_path))
    base.pop("TMUX", None)
    cfg = tmp_path / "config.toml"
    cfg.write_text("[sampling]\nmax_tokens = 200\ntemperature = 0.0\nseed = 1\n")  # the demo's python call
    from mlx_harmony_tui.model import write_tiny_checkpoint

    slow_model = write_tiny_checkpoint(tmp_path / "slow-model", layout="float", hidden_size=256,
                                       intermediate_size=256, num_hidden_layers=8, num_local_experts=16)
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    t = Tmux(f"mht-quit-{os.getpid()}", base)
    t.tmux("start-server")
    results = []
    started = 0
    running: list[Run] = []
    try:
        while started < RUNS or running:
            while len(running) < LANES and started < RUNS:
                running.append(Run(t, started, tmp_path / f"run{started}", cfg, base, rng, slow_model))
                started += 1
            now = time.monotonic()
            for r in list(running):
                if r.step(now):
                    results.append(r.result())
                    t.tmux("kill-session", "-t", r.name)
                    running.remove(r)
            time.sleep(0.1)
    finally:
        for b in busy:
            b.kill()
        t.kill()
    print("runs (n, exit, status bar at quit, shown as sent, saved):", *results, sep="\n")
    bad = [r for r in results if r[1] != "0"]
    assert not bad, f"{len(bad)} of {len(results)} runs did not exit 0: {bad}"
    lost = [r for r in results if r[3] and not r[4]]
    assert not lost, f"a message shown as sent was not saved: {lost}"
    assert sum(r[3] for r in results) >= 4, "too few runs got as far as sending: the test did not test saving"
    assert sum(r[2] == "loading" for r in results) >= 3, "too few runs quit during the load"
    assert sum(r[2] == "tool" for r in results) >= 3, "too few runs quit around a tool call"

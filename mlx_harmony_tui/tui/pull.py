"""A model download in the background, shown as a bar above the metrics while the current model chats.

The download runs in a child process (``mlx-harmony-tui models pull REPO``): hashing and writing gigabytes
in the app's process would compete with the UI and the model for the interpreter, and huggingface_hub's
download threads cannot be stopped, so quitting the app would wait for them. The child reports byte counts
on stdout; quitting (or ``cancel``) ends it, and the next pull of the same repo keeps its finished files.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable

from textual.app import App, ComposeResult
from textual.containers import Horizontal
from textual.widgets import ProgressBar, Static


def pull_command(repo: str) -> list[str]:
    return [sys.executable, "-m", "mlx_harmony_tui", "models", "pull", repo, "--progress-lines"]


class PullBar(Horizontal):
    """``pulling REPO  [=====     ] 41%  5.2 of 12.8 GB``; removes itself when the download ends."""

    DEFAULT_CSS = """
    PullBar { height: 1; padding: 0 1; }
    PullBar > #pull-text { width: auto; }
    """

    def __init__(self, repo: str, on_done: Callable[[str, int, str], None] | None = None) -> None:
        super().__init__(id="pull-bar")
        self.repo = repo
        self.proc: subprocess.Popen[str] | None = None
        self.on_done = on_done  # (repo, exit status, last error line)

    def compose(self) -> ComposeResult:
        yield Static(f"pulling {self.repo} ", id="pull-text")
        yield ProgressBar(total=None, show_eta=False, id="pull-progress")

    def show(self, done: int, total: int) -> None:
        bar = self.query_one(ProgressBar)
        if total:
            bar.update(total=total, progress=done)
            self.query_one("#pull-text", Static).update(
                f"pulling {self.repo} {done / 1e9:.1f} of {total / 1e9:.1f} GB "
            )

    def cancel(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()

    def on_unmount(self) -> None:
        self.cancel()  # the app is quitting: stop the child; the next pull continues from its finished files


def start_pull(app: App, repo: str, on_done: Callable[[str, int, str], None]) -> PullBar | None:
    """Mount a PullBar on the chat screen and run the download; None if one is already running."""
    from mlx_harmony_tui.tui.screens.chat import ChatScreen

    screen = next((s for s in app.screen_stack if isinstance(s, ChatScreen)), None)
    if screen is None or screen.query("#pull-bar"):
        return None
    bar = PullBar(repo, on_done)
    screen.mount(bar, before=screen.query_one("#metrics-bar"))

    def run() -> None:
        env = dict(os.environ, HF_HUB_DISABLE_PROGRESS_BARS="1")
        bar.proc = proc = subprocess.Popen(
            pull_command(repo), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        assert proc.stdout is not None and proc.stderr is not None
        shown = 0.0
        for line in proc.stdout:
            parts = line.split()
            now = time.monotonic()
            if len(parts) == 3 and parts[0] == "progress" and now - shown > 0.1:
                shown = now
                app.call_from_thread(bar.show, int(parts[1]), int(parts[2]))
        status = proc.wait()
        errors = [e for e in proc.stderr.read().splitlines() if e.strip()]
        app.call_from_thread(finish, status, errors[-1] if errors else "")

    def finish(status: int, error: str) -> None:
        bar.remove()
        on_done(repo, status, error.removeprefix("mlx-harmony-tui: "))

    app.run_worker(run, thread=True, group="pull", exit_on_error=False)
    return bar

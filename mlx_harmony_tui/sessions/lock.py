"""One writer per session across processes: ``<id>.lock`` held with flock, holding the owner's pid.

flock is released by the kernel when a process dies (even on SIGKILL), so a lock left behind by a crash is
never mistaken for a live one: stale-lock detection needs no guessing from pids. The pid written in the
file is only there to name the other process in the error message (and for a cheap check before saving).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from pathlib import Path

from mlx_harmony_tui.sessions.schema import SessionError


class SessionLockedError(SessionError):
    """Another live process has the session open."""


def _read_owner(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_owner(path: Path) -> int | None:
    """The pid of a live process (other than us) that holds the lock file, if any; no locking involved."""
    owner = _read_owner(path)
    try:
        pid = int(owner.split()[0])
        host = owner.split()[1] if len(owner.split()) > 1 else socket.gethostname()
    except (ValueError, IndexError):
        return None
    if pid == os.getpid() or host != socket.gethostname() or not _pid_alive(pid):
        return None
    return pid


class SessionLock:
    """An acquired lock; release() (or the context manager) frees it and removes the file."""

    def __init__(self, path: Path, session_id: str) -> None:
        self.path = path
        self.session_id = session_id
        self._fd: int | None = None
        self._acquire()

    def _acquire(self) -> None:
        for _ in range(20):  # retry only if the file was replaced under us
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                owner = _read_owner(self.path)
                who = f"process {owner.split()[0]}" if owner else "another process"
                raise SessionLockedError(
                    f"session {self.session_id} is open in {who} (lock file {self.path}); close it there first"
                ) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # a previous owner unlinked it between our open and flock
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
            self._fd = fd
            return
        raise SessionLockedError(f"could not lock session {self.session_id}: lock file keeps changing")

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # while still holding it, so no one else can own the unlinked inode
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> SessionLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.release()

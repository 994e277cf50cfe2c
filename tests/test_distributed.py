"""One model over several processes with MLX's ring backend (``mlx.launch -n N --backend ring``), on this CPU.

The sharded runs (tests/distributed_worker.py, and the real CLI with ``--distributed``) must give exactly the
single process's greedy tokens across turns with prefix reuse, a cancel and a reader that stops early; each
rank must hold about 1/N of the weights; a rank that dies ends the run with an error within seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import pytest
from mlx.utils import tree_flatten

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).with_name("distributed_worker.py")
LAUNCH = Path(sys.executable).with_name("mlx.launch")
pytestmark = pytest.mark.skipif(not LAUNCH.exists() and not shutil.which("mlx.launch"), reason="needs mlx.launch")

sys.path.insert(0, str(Path(__file__).parent))
from distributed_worker_data import NEXT, PROMPT  # noqa: E402


def free_ports(n: int) -> int:
    """The first of ``n`` consecutive free local ports: mlx.launch's ranks listen on 32323, 32324, ... unless
    told otherwise, so two runs at once on one machine (another checkout's tests) would meet each other."""
    rng = random.Random()
    while True:
        base = rng.randrange(20000, 60000 - n)
        try:
            with contextlib.ExitStack() as stack:
                for port in range(base, base + n):
                    s = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                    s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue


def launch(n: int, *args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    exe = str(LAUNCH) if LAUNCH.exists() else "mlx.launch"
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([exe, "-n", str(n), "--backend", "ring", "--starting-port", str(free_ports(n)),
                           "--python", sys.executable, *args],
                          capture_output=True, text=True, env=full_env, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def single(tiny_model_dir):
    """The single-process reference: the same requests on the unsharded model."""
    from mlx_harmony_tui.engine.generator import Engine, GenerationOptions
    from mlx_harmony_tui.engine.sampling import SamplingParams
    from mlx_harmony_tui.model import load_model

    model, config = load_model(tiny_model_dir)
    logits = model(mx.array([PROMPT]))[0, -1]
    weight_bytes = sum(v.nbytes for _, v in tree_flatten(model.parameters()))
    engine = Engine(model, config)
    greedy = GenerationOptions(sampling=SamplingParams(temperature=0.0), max_tokens=12, loop=None)
    turn1 = list(engine.generate(PROMPT, greedy))
    turn2 = list(engine.generate(PROMPT + turn1 + NEXT, greedy))
    cont = list(engine.generate(PROMPT + NEXT, GenerationOptions(sampling=SamplingParams(temperature=0.0),
                                                                 max_tokens=3, loop=None)))
    return {"turn1": turn1, "turn2": turn2, "cont": cont, "logits": logits, "bytes": weight_bytes}


@pytest.mark.parametrize("ranks", [2, 4])
def test_sharded_greedy_tokens_equal_one_process(ranks, tiny_model_dir, single, tmp_path):
    report = tmp_path / "report.json"
    quick = {"MHT_TEST_QUICK": "1"} if ranks > 2 else {}  # 4 processes on 2 cores: the first turn only
    r = launch(ranks, str(WORKER), str(tiny_model_dir), str(report), env=quick)
    assert report.exists(), r.stdout[-2000:] + r.stderr[-4000:]
    got = json.loads(report.read_text())
    assert got["turn1"] == single["turn1"]
    if quick:
        assert max(got["bytes"]) / single["bytes"] <= 1 / ranks + 0.05
        return
    assert got["turn2"] == single["turn2"]  # the second turn reused the first's prefix on every rank
    assert got["reused"] > len(PROMPT)
    assert got["cancelled"][:3] == single["cont"] and len(got["cancelled"]) <= 5  # stopped within 2 tokens
    assert got["early"] == single["turn1"][:2] and got["after"] == single["turn1"]  # still in step after both
    ref = single["logits"]
    assert got["top5"] == mx.argsort(ref)[-5:].tolist()
    diff = mx.abs(mx.array(got["logits"]) - ref[:2000]).max().item()
    assert diff < 1e-3, diff
    assert max(got["bytes"]) / single["bytes"] <= 0.55  # ~1/N of the weights on every rank


def test_cli_generate_with_distributed_equals_one_process(tiny_model_dir):
    args = ["-m", "mlx_harmony_tui", "generate", "--model", str(tiny_model_dir), "--prompt", "Hello there",
            "--temperature", "0", "--max-tokens", "8", "--json"]
    one = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert one.returncode == 0, one.stderr
    two = launch(2, *args, "--distributed")
    doc = two.stdout[two.stdout.index("{"):]
    dist, ref = json.loads(doc), json.loads(one.stdout)
    assert dist["final"] == ref["final"] and dist["finish_reason"] == ref["finish_reason"]
    assert dist["metrics"]["generated_tokens"] == ref["metrics"]["generated_tokens"] == 8


def test_a_killed_rank_ends_the_run_with_an_error_within_seconds(tiny_model_dir, tmp_path):
    report = tmp_path / "kill.json"
    """Rank 0's collective fails ("connection to a peer was lost"), or, where MLX's ring leaves it hanging (about
    1 kill in 4 here), the stall watchdog ends it with that message; either way within seconds, not never."""
    run = launch(2, str(WORKER), str(tiny_model_dir), str(report), timeout=240,
                 env={"MHT_TEST_KILL_RANK": "1", "MHT_PEER_TIMEOUT": "4"})
    killed_at = float(Path(str(report) + ".killed").read_text())
    got = json.loads(report.read_text())
    assert got["outcome"].startswith("error:") and "peer" in got["outcome"]
    if "watchdog" in got["outcome"]:
        assert "rank 0: a step has waited" in run.stderr + run.stdout and "connection to a peer was lost" in (
            run.stderr + run.stdout)
    assert got["at"] - killed_at < 10


def test_distributed_without_the_launcher_is_a_clear_error():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLX_")}
    r = subprocess.run([sys.executable, "-m", "mlx_harmony_tui", "generate", "--distributed", "--prompt", "hi"],
                       capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert r.returncode == 2 and "mlx.launch" in r.stderr and "Traceback" not in r.stderr


def test_worker_help_does_nothing_else():
    r = subprocess.run([sys.executable, str(WORKER), "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "mlx.launch" in r.stdout


def test_the_stall_watch_ends_a_step_that_waits_too_long_and_only_that():
    """The watchdog behind the killed-rank test's rarer path: a step still waiting after the timeout is
    reported once; steps that return in time are not."""
    import threading
    import time

    from mlx_harmony_tui.engine.distributed import StallWatch

    stalled = threading.Event()
    waits: list[float] = []
    watch = StallWatch(0.4, lambda waited: (waits.append(waited), stalled.set()))
    for _ in range(5):
        with watch.watch():
            time.sleep(0.05)
    time.sleep(1.0)
    assert not stalled.is_set()
    with watch.watch():
        assert stalled.wait(30)
    assert len(waits) == 1 and waits[0] > 0.4

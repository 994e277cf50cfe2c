"""Run under ``mlx.launch``: one model sharded over the ranks (model/shard.py, engine/distributed.py).

Rank 0 writes a JSON report to argv[2]: greedy tokens of two turns (the second reuses the first's prefix),
a cancelled generation and a generation whose reader stops early (both must leave the ranks in step: the
next turn still matches), last-position logits, and every rank's weight bytes. Used by
tests/test_distributed.py; ``python tests/distributed_worker.py --help`` says this.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

if len(sys.argv) != 3 or sys.argv[1].startswith("-"):
    print(__doc__)
    sys.exit(0 if "--help" in sys.argv else 2)

import faulthandler  # noqa: E402

import mlx.core as mx  # noqa: E402

faulthandler.dump_traceback_later(240, exit=True)  # a hang becomes a traceback, not a stuck test
from distributed_worker_data import NEXT, PROMPT  # noqa: E402
from mlx.utils import tree_flatten  # noqa: E402

from mlx_harmony_tui.engine import distributed  # noqa: E402
from mlx_harmony_tui.engine.generator import GenerationOptions  # noqa: E402
from mlx_harmony_tui.engine.sampling import SamplingParams  # noqa: E402
from mlx_harmony_tui.model.load import load_model  # noqa: E402
from mlx_harmony_tui.model.shard import shard_model  # noqa: E402

group = distributed.init("ring")
info = {}
model, config = load_model(sys.argv[1], shard=lambda m: info.update(s=shard_model(m, group)))
weight_bytes = sum(v.nbytes for _, v in tree_flatten(model.parameters()))
engine = distributed.DistributedEngine(model, config, group)
# Every rank runs this forward together (it has collectives inside), before the request loop starts.
logits = model(mx.array([PROMPT]))[0, -1]
mx.eval(logits)
all_bytes = mx.distributed.all_gather(mx.array([float(weight_bytes)]), group=group).tolist()
kill_rank = os.environ.get("MHT_TEST_KILL_RANK")
if kill_rank is not None:  # a rank dies mid-generation: the others must end with an error, not hang
    if group.rank() == int(kill_rank):
        def die() -> None:
            time.sleep(3.0)
            with open(sys.argv[2] + ".killed", "w") as f:
                f.write(str(time.time()))
            os._exit(9)

        threading.Thread(target=die, daemon=True).start()
    if group.rank() == 0:
        # mlx.launch ends every rank once one has died; to see rank 0's own error path, outlive that.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        exit_on_stall = engine.stall.on_stall

        def stalled(waited: float) -> None:  # the watchdog's path (MLX's ring left the wait hanging)
            with open(sys.argv[2], "w") as f:
                json.dump({"outcome": "error: watchdog: connection to a peer was lost", "at": time.time()}, f)
            exit_on_stall(waited)

        engine.stall.on_stall = stalled
        try:
            list(engine.generate(PROMPT, GenerationOptions(sampling=SamplingParams(temperature=0.0),
                                                           max_tokens=100000, loop=None)))
            outcome = "finished"
        except RuntimeError as e:
            outcome = f"error: {e}"
        with open(sys.argv[2], "w") as f:
            json.dump({"outcome": outcome, "at": time.time()}, f)
        os._exit(1)  # the ring's threads may still wait on the dead peer: no interpreter teardown
if group.rank() != 0:
    try:
        engine.follow()
    except RuntimeError:
        os._exit(1)
    sys.exit(0)

greedy = GenerationOptions(sampling=SamplingParams(temperature=0.0), max_tokens=12, loop=None)
engine.warm_up()
turn1 = list(engine.generate(PROMPT, greedy))
turn2 = reused = cancelled = first = after = None
if not os.environ.get("MHT_TEST_QUICK"):  # the full set (2 ranks); 4 ranks run only the first turn
    turn2 = list(engine.generate(PROMPT + turn1 + NEXT, greedy))
    reused = engine.last_result.metrics.reused_tokens
    cancel = threading.Event()
    cancelled = []
    for tok in engine.generate(PROMPT + NEXT, GenerationOptions(sampling=SamplingParams(temperature=0.0),
                                                                  max_tokens=40, loop=None), cancel):
        cancelled.append(tok)
        if len(cancelled) == 3:
            cancel.set()
    early = engine.generate(PROMPT, greedy)
    first = [next(early), next(early)]
    early.close()  # the face stops reading: the ranks must still leave this generation together
    after = list(engine.generate(PROMPT, greedy))
top = mx.argsort(logits)[-5:].tolist()
report = {"turn1": turn1, "turn2": turn2, "reused": reused, "cancelled": cancelled,
          "early": first, "after": after, "top5": top, "logits": logits.tolist()[:2000], "bytes": all_bytes,
          "vocab_split": info["s"].vocab_split}
engine.close()
with open(sys.argv[2], "w") as f:
    json.dump(report, f)

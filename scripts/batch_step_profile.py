"""What one batched decode step costs against a solo step, and what continuous batching gains end to end.

Three parts, all in one process (ratios within one run; the machine may be busy with other work):

1. ops: the primitives in one step's graph (forward + each row's draw), for 1..B rows, counted from
   ``mx.export_to_dot``: what grows with the rows is per-row work (attention over each row's own cache, the
   draws); the compiled segments (projections, MoE, LM head) are shared.
2. phases: host time to build a step's graph, time waiting for its evaluation, host time to read the tokens;
   and the LM head's matmul alone for the same rows (the largest weight of the tiny model).
3. scheduler: B greedy requests decoded together through engine/batch.py's BatchScheduler against the same
   requests one at a time (no server, no HTTP), per round and the median.

    .venv/bin/python scripts/batch_step_profile.py                 # tiny random model, B = 4
    .venv/bin/python scripts/batch_step_profile.py --model demo --rows 4 --tokens 64 --rounds 3
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import mlx.core as mx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mlx_harmony_tui.backends.mlx_thread import MlxThread  # noqa: E402
from mlx_harmony_tui.engine.batch import BatchedEngine, BatchScheduler  # noqa: E402
from mlx_harmony_tui.engine.generator import Engine, GenerationOptions  # noqa: E402
from mlx_harmony_tui.engine.sampling import Sampler, SamplingParams  # noqa: E402
from mlx_harmony_tui.model.batch import decode_batch  # noqa: E402


def greedy(n: int) -> GenerationOptions:
    return GenerationOptions(
        sampling=SamplingParams(temperature=0.0), max_tokens=n, stop_ids=frozenset(), loop=None
    )


def prompts(rows: int) -> list[list[int]]:
    # distinct lengths, past the sliding window of the demo (128) as a chat's system + developer prompt is
    return [[1000 + 7 * i + j for j in range(150 + 13 * i)] for i in range(rows)]


def step_graph(engine: Engine, rows: int) -> tuple[Any, list[Any], list[Sampler]]:
    """Fresh caches prefilled with ``rows`` prompts, and a closure building one step over them."""
    caches = [engine.make_cache() for _ in range(rows)]
    for p, c in zip(prompts(rows), caches, strict=True):
        engine._logits(p, c)
        mx.eval([x.state for x in c])
    samplers = [Sampler(SamplingParams(temperature=0.0), engine.vocab_size, 0) for _ in range(rows)]

    def build(ids: mx.array) -> list[mx.array]:
        if rows == 1:
            logits = engine._logits_from(ids, caches[0])
        else:
            logits = decode_batch(engine.model, ids, caches)
        return [s(logits[i : i + 1]) for i, s in enumerate(samplers)]

    return build, caches, samplers


def count_ops(outputs: list[mx.array]) -> collections.Counter[str]:
    with tempfile.NamedTemporaryFile("r", suffix=".dot") as f:
        mx.export_to_dot(f.name, *outputs)
        return collections.Counter(re.findall(r'label ="([^"]+)", shape=rectangle', f.read()))


def ops_and_phases(engine: Engine, max_rows: int, reps: int) -> None:
    """Steps of 1..max_rows rows timed in turn, rep after rep, so a change in the machine's load reaches
    every row count alike (medians)."""
    head = engine.model.lm_head
    counts = range(1, max_rows + 1)
    builds = {n: step_graph(engine, n)[0] for n in counts}
    ids = {n: mx.array([1234 + r for r in range(n)], dtype=mx.int32) for n in counts}
    ops = {n: count_ops(builds[n](ids[n])) for n in counts}  # builds one step (the caches advance once)
    xs = {n: mx.random.normal((n, 1, head.weight.shape[-1])).astype(head.weight.dtype) for n in counts}
    mx.eval(list(xs.values()))
    t: dict[tuple[str, int], list[float]] = collections.defaultdict(list)
    for _ in range(reps):
        for n in counts:
            t0 = time.perf_counter()
            toks = builds[n](ids[n])
            t1 = time.perf_counter()
            mx.eval(toks)
            t2 = time.perf_counter()
            ids[n] = mx.array([int(tok.item()) for tok in toks], dtype=mx.int32)
            t3 = time.perf_counter()
            mx.eval(head(xs[n]))
            t4 = time.perf_counter()
            for key, dt in (
                ("build", t1 - t0),
                ("eval", t2 - t1),
                ("read", t3 - t2),
                ("step", t3 - t0),
                ("head", t4 - t3),
            ):
                t[key, n].append(dt)
    med = lambda key, n: 1e3 * statistics.median(t[key, n])  # noqa: E731
    print(
        "rows | ops in a step (added per row) | build ms | eval ms | read ms | step ms (x one row's) | LM head matmul ms"
    )
    for n in counts:
        total = sum(ops[n].values())
        added = f"({(total - sum(ops[1].values())) / (n - 1):3.0f})" if n > 1 else "     "
        print(
            f"{n:>4} | {total:>5} {added} | {med('build', n):8.2f} | {med('eval', n):7.2f} | {med('read', n):7.2f} | "
            f"{med('step', n):7.2f} ({med('step', n) / med('step', 1):4.2f}x) | {med('head', n):.2f}"
        )
    if max_rows > 1:
        grown = {
            k: (v - ops[1].get(k, 0)) / (max_rows - 1)
            for k, v in ops[max_rows].items()
            if v > ops[1].get(k, 0)
        }
        print(
            "  ops added per extra row: "
            + ", ".join(f"{k} {v:.0f}" for k, v in sorted(grown.items(), key=lambda kv: -kv[1]))
        )


def run_requests(scheduler: BatchScheduler, jobs: list[list[int]], tokens: int, together: bool) -> float:
    """Seconds to decode ``jobs`` (together, or one after another) through the scheduler."""

    def one(p: list[int]) -> None:
        n = len(list(BatchedEngine(scheduler).generate(p, greedy(tokens))))
        assert n == tokens

    t0 = time.perf_counter()
    if together:
        threads = [threading.Thread(target=one, args=(p,)) for p in jobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        for p in jobs:
            one(p)
    return time.perf_counter() - t0


def scheduler_rounds(thread: MlxThread, engine: Engine, rows: int, tokens: int, rounds: int) -> None:
    scheduler = BatchScheduler(engine, thread.submit, max_concurrency=rows)
    thread.call(scheduler.warm_up)
    jobs = prompts(rows)
    run_requests(scheduler, jobs, 4, True)  # warm
    ratios, sums = [], [0.0, 0.0, 0.0, 0.0]
    for r in range(1, rounds + 1):
        c0 = time.process_time()
        together = run_requests(scheduler, jobs, tokens, True)
        c1 = time.process_time()
        alone = run_requests(scheduler, jobs, tokens, False)
        c2 = time.process_time()
        ratios.append(alone / together)
        sums = [a + b for a, b in zip(sums, (together, alone, c1 - c0, c2 - c1), strict=True)]
        n = rows * tokens
        # CPU time per token (this process, all threads): what batching saves however busy the machine is
        print(
            f"round {r}: {rows} together {n / together:.1f} tok/s, one at a time {n / alone:.1f} tok/s: "
            f"{alone / together:.2f}x; CPU {1e3 * (c1 - c0) / n:.2f} vs {1e3 * (c2 - c1) / n:.2f} ms/token"
        )
    print(
        f"together / one at a time: median {statistics.median(ratios):.2f}x  (min {min(ratios):.2f}x, "
        f"max {max(ratios):.2f}x); all rounds: {sums[1] / sums[0]:.2f}x, CPU per token {sums[3] / sums[2]:.2f}x "
        "less together"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model", default="tiny", help="tiny (the tiny random model, default), demo, or a folder"
    )
    ap.add_argument("--rows", type=int, default=4, help="requests decoded together (default 4)")
    ap.add_argument("--tokens", type=int, default=64, help="tokens per request in part 3 (default 64)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=20, help="steps timed per row count in part 2")
    args = ap.parse_args()
    if not 1 <= args.rows <= 16 or not 1 <= args.tokens <= 1024 or not 1 <= args.rounds <= 20:
        ap.error("--rows 1..16, --tokens 1..1024, --rounds 1..20")
    from mlx_harmony_tui.backends.local import resolve_model_path
    from mlx_harmony_tui.model import load_model

    path: Path
    if args.model == "tiny":
        from mlx_harmony_tui.model.tiny import write_tiny_checkpoint

        path = write_tiny_checkpoint(
            Path(tempfile.mkdtemp(prefix="mhtui-prof-")) / "tiny", layout="float", seed=0
        )
    else:
        path = resolve_model_path(args.model)
    thread = MlxThread()
    try:
        model, config = thread.call(lambda: load_model(path))
        engine = thread.call(lambda: Engine(model, config, model_id=args.model))
        thread.call(engine.warm_up)
        if args.model == "tiny":
            shutil.rmtree(path.parent, ignore_errors=True)  # loaded and evaluated: ~100 MB less in /tmp
        print(f"model: {args.model}  rows: {args.rows}  load average: {__import__('os').getloadavg()[0]:.1f}")
        thread.call(lambda: ops_and_phases(engine, args.rows, args.reps))
        scheduler_rounds(thread, engine, args.rows, args.tokens, args.rounds)
    finally:
        thread.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Cold start: launch -> first token of the first message, in a fresh process, as a user runs it.

Runs ``mlx-harmony-tui generate`` (the same model load, warm-up and turn pipeline as ``chat`` and the TUI)
several times and reports, per run, the time from the process start to the first streamed byte of the reply
(its reasoning, with --show-analysis: the first token the user sees) and to the end, plus the engine's own
TTFT from --metrics-log. The first run also pays for reading the weights from disk if they are not in the
page cache; the later ones show a warm page cache.

    .venv/bin/python scripts/cold_start.py                      # the demo model, 5 runs
    .venv/bin/python scripts/cold_start.py --model tiny --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one(model: str, max_tokens: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "metrics.jsonl"
        cmd = [sys.executable, "-m", "mlx_harmony_tui", "generate", "-m", model, "-p", "Hello! Who are you?",
               "--show-analysis", "--max-tokens", str(max_tokens), "--temperature", "0", "--metrics-log", str(log)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        assert proc.stdout is not None
        first = proc.stdout.read(1)
        t_first = time.perf_counter() - t0
        proc.stdout.read()
        rc = proc.wait()
        t_end = time.perf_counter() - t0
        if rc != 0 or not first:
            raise SystemExit(f"generate failed (exit {rc})")
        ttft = None
        if log.exists():
            for line in log.read_text().splitlines():
                ttft = json.loads(line).get("ttft_s", ttft)
        return {"first_byte_s": t_first, "end_s": t_end, "engine_ttft_s": ttft or float("nan")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="demo")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=16)
    args = ap.parse_args()
    runs = [one(args.model, args.max_tokens) for _ in range(max(1, args.runs))]
    for i, r in enumerate(runs, 1):
        print(f"run {i}: first token {r['first_byte_s']:.2f} s  (engine TTFT {r['engine_ttft_s'] * 1000:.0f} ms)"
              f"  done {r['end_s']:.2f} s")
    later = runs[1:] or runs
    print(f"median of runs 2..{len(runs)}: launch -> first token "
          f"{statistics.median(r['first_byte_s'] for r in later):.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

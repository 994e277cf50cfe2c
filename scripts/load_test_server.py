"""Load test of the OpenAI-compatible server: N concurrent streaming clients on loopback.

Every client asks with its own prompt and seed. Checks: every stream completes ([DONE], a finish_reason, a
usage chunk), and there is no cross-talk: each streamed reply equals the reply the same request gets when
asked alone afterwards (same text, same usage token counts). Throughput: completion tokens per second of the
concurrent run against the same requests one at a time (the server's continuous batching, engine/batch.py,
decodes up to --max-concurrency of them together), over --rounds rounds (the ratio of each round, then their
median and spread: the ratio is measured within a round, as the machine's load changes between rounds).

The server runs in a process of its own (``mlx-harmony-tui serve``, as users run it), so the clients do not
share its interpreter lock; the clients are one asyncio process (httpx streams) whose own CPU time is
printed, to show it is not what bounds the figure. Bounded: loopback only, a fixed number of clients, a small
token limit and an overall timeout.

    .venv/bin/python scripts/load_test_server.py              # starts `serve` with the tiny model
    .venv/bin/python scripts/load_test_server.py --clients 4 --max-tokens 64 --max-concurrency 4 --rounds 3
    .venv/bin/python scripts/load_test_server.py --model demo --clients 4 --max-tokens 64
    .venv/bin/python scripts/load_test_server.py --url http://127.0.0.1:8000/v1 --model demo
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


async def stream_one(
    client: httpx.AsyncClient, url: str, model: str, i: int, max_tokens: int
) -> dict[str, Any]:
    body = {
        "model": model,
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": max_tokens,
        "seed": 1000 + i,
        "temperature": 0.0,
        "messages": [
            {
                "role": "user",
                "content": f"Client {i}: say something about the number {i * 7}."
                + " Please." * (8 * (i % 4)),
            }
        ],
    }  # four prompt lengths
    t0 = time.perf_counter()
    ttft = None
    content, reasoning, finish, usage, done, ids = [], [], None, None, False, set()
    async with client.stream("POST", f"{url}/chat/completions", json=body) as r:
        if r.status_code != 200:
            return {"i": i, "error": f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"}
        async for line in r.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                done = True
                break
            doc = json.loads(data)
            if "error" in doc:
                return {"i": i, "error": doc["error"]["message"]}
            ids.add(doc["id"])
            usage = doc.get("usage") or usage
            for ch in doc["choices"]:
                d = ch["delta"]
                if (d.get("content") or d.get("reasoning_content")) and ttft is None:
                    ttft = time.perf_counter() - t0
                content.append(d.get("content") or "")
                reasoning.append(d.get("reasoning_content") or "")
                finish = ch.get("finish_reason") or finish
    return {
        "i": i,
        "content": "".join(content),
        "reasoning": "".join(reasoning),
        "finish": finish,
        "usage": usage,
        "done": done,
        "ids": ids,
        "latency": time.perf_counter() - t0,
        "ttft": ttft,
    }


def _tokens(results: list[dict[str, Any]]) -> int:
    return sum((r.get("usage") or {}).get("completion_tokens", 0) for r in results if "error" not in r)


def _problems(results: list[dict[str, Any]], alone: list[dict[str, Any]]) -> list[str]:
    problems = []
    for r, ref in zip(results, alone, strict=True):
        i = r["i"]
        if "error" in r:
            problems.append(f"client {i}: {r['error']}")
            continue
        if not r["done"] or r["finish"] is None or r["usage"] is None:
            problems.append(f"client {i}: incomplete stream (done={r['done']}, finish={r['finish']})")
        if len(r["ids"]) != 1:
            problems.append(f"client {i}: chunks from {len(r['ids'])} completions")
        if (r["content"], r["reasoning"]) != (ref.get("content"), ref.get("reasoning")):
            problems.append(f"client {i}: reply differs from the same request asked alone")
        u, ru = r["usage"] or {}, ref.get("usage") or {}
        if (u.get("prompt_tokens"), u.get("completion_tokens")) != (
            ru.get("prompt_tokens"),
            ru.get("completion_tokens"),
        ):
            problems.append(f"client {i}: usage {u} != alone {ru}")
    return problems


def _stream_rate(r: dict[str, Any]) -> float | None:
    """A reply's tokens per second after its first (its decode rate, without the wait for a place)."""
    n = (r.get("usage") or {}).get("completion_tokens", 0)
    if "error" in r or r.get("ttft") is None or n < 2 or r["latency"] <= r["ttft"]:
        return None
    return float((n - 1) / (r["latency"] - r["ttft"]))


def _cpu_seconds(pid: int | None) -> float | None:
    """CPU time (user + system) the server process has used so far (Linux /proc), else None."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


async def run(
    url: str, model: str, clients: int, max_tokens: int, timeout: float, rounds: int, server_pid: int | None
) -> int:
    problems: list[str] = []
    ratios, rows, shares = [], [], []  # shares: each client's decode rate against its own rate alone
    first: list[dict[str, Any]] | None = None
    async with httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=clients + 4)) as client:
        await stream_one(client, url, model, 0, 2)  # warm: the server's first request pays for tracing
        for rnd in range(1, rounds + 1):
            load0 = os.getloadavg()[0]
            cpu0, srv0, t0 = time.process_time(), _cpu_seconds(server_pid), time.perf_counter()
            results = await asyncio.wait_for(
                asyncio.gather(*(stream_one(client, url, model, i, max_tokens) for i in range(clients))),
                timeout,
            )
            wall = time.perf_counter() - t0
            client_cpu, srv1 = time.process_time() - cpu0, _cpu_seconds(server_pid)
            # The same requests one at a time: the reference each concurrent stream must equal.
            t1 = time.perf_counter()
            alone = [await stream_one(client, url, model, i, max_tokens) for i in range(clients)]
            alone_wall, srv2 = time.perf_counter() - t1, _cpu_seconds(server_pid)
            problems += [f"round {rnd}: {p}" for p in _problems(results, alone)]
            if first is not None and [r.get("content") for r in results] != [r.get("content") for r in first]:
                problems.append(f"round {rnd}: replies differ from round 1's")
            first = first or results
            tokens, solo_tokens = _tokens(results), _tokens(alone)
            rate, solo_rate = tokens / wall, solo_tokens / alone_wall
            ratio = rate / solo_rate if solo_rate else 0.0
            ratios.append(ratio)
            ok = [r for r in results if "error" not in r]
            ttfts = sorted(r["ttft"] for r in ok if r["ttft"] is not None)
            lat = sorted(r["latency"] for r in ok)
            pairs = [(_stream_rate(r), _stream_rate(a)) for r, a in zip(results, alone, strict=True)]
            shares += [c / a for c, a in pairs if c and a]
            srv = ""
            if srv0 is not None and srv1 is not None and srv2 is not None and tokens and solo_tokens:
                # CPU time per token: what batching saves, however much CPU the busy machine gave the server
                srv = (
                    f"; server CPU {(srv1 - srv0) / wall:.2f} cores, {1e3 * (srv1 - srv0) / tokens:.1f} vs "
                    f"{1e3 * (srv2 - srv1) / solo_tokens:.1f} ms/token"
                )
            print(
                f"round {rnd}: concurrent {tokens} tok in {wall:.2f} s = {rate:.1f} tok/s; one at a time "
                f"{solo_rate:.1f} tok/s; concurrent/one {ratio:.2f}x  (client CPU {client_cpu / wall:.2f} cores"
                f"{srv}; load {load0:.1f})"
            )
            rows.append((ttfts, lat))
    print(
        f"clients: {clients}  max tokens: {max_tokens}  rounds: {rounds}  "
        f"complete+consistent: {clients - len({p.split(':')[1] for p in problems if p.count(':') > 1})}"
    )
    if ratios:
        print(
            f"concurrent/one: median {statistics.median(ratios):.2f}x  min {min(ratios):.2f}x  "
            f"max {max(ratios):.2f}x"
        )
    if shares:
        print(
            f"each client's decode rate / its rate alone: min {min(shares):.2f}  median "
            f"{statistics.median(shares):.2f}  max {max(shares):.2f}"
        )
    ttfts = sorted(t for tt, _ in rows for t in tt)
    lat = sorted(t for _, ll in rows for t in ll)
    if lat:
        print(f"latency s: min {lat[0]:.2f}  median {statistics.median(lat):.2f}  max {lat[-1]:.2f}")
    if ttfts:
        print(
            f"first token s: min {ttfts[0]:.2f}  median {statistics.median(ttfts):.2f}  max {ttfts[-1]:.2f}"
        )
    if first:
        print(
            f"distinct prompt lengths: {len({(r.get('usage') or {}).get('prompt_tokens') for r in first})}  "
            f"distinct replies: {len({r.get('content') for r in first})}"
        )
    for p in problems[:20]:
        print("PROBLEM", p)
    print("RESULT", "PASS" if not problems else f"FAIL ({len(problems)} problems)")
    return 0 if not problems else 1


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def started_server(model: str, max_concurrency: int, max_queue: int) -> Iterator[tuple[str, int]]:
    """``serve`` in a child process on a free loopback port (the tiny model written to a temporary folder for
    ``tiny``); yields (base URL, its pid) once it answers, and stops it afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix="mhtui-load-"))
    env = dict(os.environ)
    vocab = ROOT / "tests" / ".cache" / "vocab"
    if vocab.is_dir():
        env.setdefault("TIKTOKEN_ENCODINGS_BASE", str(vocab))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    if model == "tiny":
        from mlx_harmony_tui.model.tiny import write_tiny_checkpoint

        write_tiny_checkpoint(tmp / "tiny", layout="float", seed=0)
        model = str(tmp / "tiny")
    (tmp / "config.toml").write_text("")  # the user's own config (profiles, tools) stays out of the figures
    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "mlx_harmony_tui",
        "serve",
        "--model",
        model,
        "--config",
        str(tmp / "config.toml"),
        "--port",
        str(port),
        "--max-concurrency",
        str(max_concurrency),
        "--max-queue",
        str(max_queue),
        "--name",
        "load-test",
        "--quiet",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"the server exited ({proc.returncode}): {proc.stderr.read()[-2000:]}")  # type: ignore[union-attr]
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the server did not answer within 300 s")
            time.sleep(0.2)
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default=None, help="a running server on loopback (default: start one)")
    ap.add_argument(
        "--model",
        default=None,
        help="the model to serve (default tiny: the tiny random model; demo, a folder...) or, with "
        "--url, the model name on that server (default demo)",
    )
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=1, help="concurrent + one-at-a-time rounds (default 1)")
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument(
        "--max-concurrency",
        type=int,
        default=4,
        help="the started server's continuous batching (1: one request at a time)",
    )
    args = ap.parse_args()
    if not 1 <= args.clients <= 200 or not 1 <= args.max_tokens <= 512 or not 1 <= args.rounds <= 20:
        ap.error("--clients must be 1..200, --max-tokens 1..512 and --rounds 1..20")
    if args.url and urlsplit(args.url).hostname not in ("127.0.0.1", "localhost", "::1"):
        ap.error("this load test only targets loopback servers")
    if args.url:
        return asyncio.run(
            run(
                args.url, args.model or "demo", args.clients, args.max_tokens, args.timeout, args.rounds, None
            )
        )
    with started_server(args.model or "tiny", args.max_concurrency, args.clients + 8) as (url, pid):
        return asyncio.run(
            run(url, "load-test", args.clients, args.max_tokens, args.timeout, args.rounds, pid)
        )


if __name__ == "__main__":
    sys.exit(main())

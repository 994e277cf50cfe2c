"""Load test of the OpenAI-compatible server: N concurrent streaming clients on loopback.

Every client asks with its own prompt and seed. Checks: every stream completes ([DONE], a finish_reason, a
usage chunk), and there is no cross-talk: each streamed reply equals the reply the same request gets when
asked alone afterwards (same text, same usage token counts). Throughput: completion tokens per second of the
concurrent run against the same requests one at a time (the server's continuous batching, engine/batch.py,
decodes up to --max-concurrency of them together). Bounded: loopback only, a fixed number of clients, a small
token limit and an overall timeout.

    .venv/bin/python scripts/load_test_server.py              # starts its own server with the tiny model
    .venv/bin/python scripts/load_test_server.py --clients 4 --max-tokens 64 --max-concurrency 4
    .venv/bin/python scripts/load_test_server.py --url http://127.0.0.1:8000/v1 --model demo
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


async def stream_one(client: httpx.AsyncClient, url: str, model: str, i: int, max_tokens: int) -> dict[str, Any]:
    body = {"model": model, "stream": True, "stream_options": {"include_usage": True}, "max_tokens": max_tokens,
            "seed": 1000 + i, "temperature": 0.0,
            "messages": [{"role": "user", "content": f"Client {i}: say something about the number {i * 7}."
                          + " Please." * (8 * (i % 4))}]}  # four prompt lengths
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
    return {"i": i, "content": "".join(content), "reasoning": "".join(reasoning), "finish": finish,
            "usage": usage, "done": done, "ids": ids, "latency": time.perf_counter() - t0, "ttft": ttft}


async def run(url: str, model: str, clients: int, max_tokens: int, timeout: float) -> int:
    async with httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=clients + 4)) as client:
        t0 = time.perf_counter()
        results = await asyncio.wait_for(
            asyncio.gather(*(stream_one(client, url, model, i, max_tokens) for i in range(clients))), timeout)
        wall = time.perf_counter() - t0
        # The same requests one at a time: the reference each concurrent stream must equal.
        t1 = time.perf_counter()
        alone = [await stream_one(client, url, model, i, max_tokens) for i in range(clients)]
        alone_wall = time.perf_counter() - t1
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
        if (u.get("prompt_tokens"), u.get("completion_tokens")) != (ru.get("prompt_tokens"), ru.get("completion_tokens")):
            problems.append(f"client {i}: usage {u} != alone {ru}")
    ok = [r for r in results if "error" not in r]
    lat = sorted(r["latency"] for r in ok)
    ttfts = sorted(r["ttft"] for r in ok if r["ttft"] is not None)
    tokens = sum((r["usage"] or {}).get("completion_tokens", 0) for r in ok)
    distinct_prompts = len({(r["usage"] or {}).get("prompt_tokens") for r in ok})
    print(f"clients: {clients}  served: {len(ok)}  complete+consistent: {clients - len({p.split(':')[0] for p in problems})}")
    print(f"wall: {wall:.2f} s  completion tokens: {tokens}  aggregate: {tokens / wall:.1f} tok/s")
    solo_tokens = sum((r.get("usage") or {}).get("completion_tokens", 0) for r in alone)
    if solo_tokens and tokens:
        solo_rate = solo_tokens / alone_wall
        print(f"one client at a time: {alone_wall:.2f} s  {solo_rate:.1f} tok/s  "
              f"concurrent/one: {tokens / wall / solo_rate:.2f}x")
    if lat:
        print(f"latency s: min {lat[0]:.2f}  median {statistics.median(lat):.2f}  max {lat[-1]:.2f}")
    if ttfts:
        print(f"first token s: min {ttfts[0]:.2f}  median {statistics.median(ttfts):.2f}  max {ttfts[-1]:.2f}")
    print(f"distinct prompt lengths: {distinct_prompts}  distinct replies: {len({r['content'] for r in ok})}")
    for p in problems[:20]:
        print("PROBLEM", p)
    print("RESULT", "PASS" if not problems else f"FAIL ({len(problems)} problems)")
    return 0 if not problems else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default=None, help="a running server on loopback (default: start one)")
    ap.add_argument("--model", default=None, help="model name on that server")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--max-concurrency", type=int, default=4,
                    help="the started server's continuous batching (1: one request at a time)")
    args = ap.parse_args()
    if not 1 <= args.clients <= 200 or not 1 <= args.max_tokens <= 512:
        ap.error("--clients must be 1..200 and --max-tokens 1..512")
    if args.url and urlsplit(args.url).hostname not in ("127.0.0.1", "localhost", "::1"):
        ap.error("this load test only targets loopback servers")
    if args.url:
        ctx: Any = nullcontext(args.url)
        model = args.model or "demo"
    else:
        import os

        from mlx_harmony_tui.backends.local import LocalBackend
        from mlx_harmony_tui.chat.settings import ChatSettings
        from mlx_harmony_tui.model.tiny import write_tiny_checkpoint
        from mlx_harmony_tui.server.app import create_app
        from mlx_harmony_tui.server.command import serve_in_thread

        vocab = Path(__file__).resolve().parents[1] / "tests" / ".cache" / "vocab"
        if vocab.is_dir():
            os.environ.setdefault("TIKTOKEN_ENCODINGS_BASE", str(vocab))
        tmp = Path(tempfile.mkdtemp(prefix="mhtui-load-"))
        write_tiny_checkpoint(tmp / "tiny", layout="float", seed=0)
        backend = LocalBackend.load(tmp / "tiny")
        backend.enable_batching(args.max_concurrency)
        from mlx_harmony_tui.faces.common import release_mlx_streams

        release_mlx_streams()
        model = "tiny"
        ctx = serve_in_thread(create_app({model: backend}, ChatSettings(conversation_date="2025-01-01"),
                                         max_waiting=args.clients + 8))
    with ctx as url:
        return asyncio.run(run(url, model, args.clients, args.max_tokens, args.timeout))


if __name__ == "__main__":
    sys.exit(main())

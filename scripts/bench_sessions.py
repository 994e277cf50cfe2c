"""How fast is the session list with many sessions? (Not a timed test: run it by hand.)

    .venv/bin/python scripts/bench_sessions.py [--count 10000] [--messages 20]

Creates COUNT sessions in a temporary folder (written directly, without fsync, to set up quickly), then
times: the first list (builds the index: parses every file), a warm list in a new SessionStore (what an app
start sees), a title search, full-text searches (first, warm, and the next one in the same store, as the
browser does while you type), and a list after one session changed.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from mlx_harmony_tui.sessions.schema import Message, Session
from mlx_harmony_tui.sessions.store import SessionStore, encode_session


def populate(root: Path, count: int, messages: int) -> list[str]:
    ids = []
    for i in range(count):
        s = Session(id=f"bench-{i:06d}", title=f"Session {i} about topic {i % 97}", model="gpt-oss-20b",
                    params={"temperature": 1.0}, updated_at=f"2025-01-01T00:00:{i % 60:02d}.000Z")
        for j in range(messages):
            role = "user" if j % 2 == 0 else "assistant"
            s.messages.append(Message(id=f"m{j}", role=role, channel=None if role == "user" else "final",
                                      content=f"message {j} of session {i}: " + "lorem ipsum " * 20))
        (root / f"{s.id}.json").write_bytes(encode_session(s))
        ids.append(s.id)
    return ids


def timed(fn, repeat: int = 1) -> tuple[float, object]:
    """Median seconds of CPU time (this process, one thread): on a machine busy with other work, wall time
    measures the other work; CPU time is what the listing costs (file reads wait on I/O, not counted)."""
    times, result = [], None
    for _ in range(repeat):
        t = time.process_time()
        result = fn()
        times.append(time.process_time() - t)
    return statistics.median(times), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=10_000)
    ap.add_argument("--messages", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        t = time.perf_counter()
        ids = populate(root, args.count, args.messages)
        print(f"created {args.count} sessions x {args.messages} messages in {time.perf_counter() - t:.1f} s")
        cold, rows = timed(lambda: SessionStore(root).list())
        assert len(rows) == args.count  # type: ignore[arg-type]
        print(f"cold list (index built from {args.count} files): {cold * 1000:.0f} ms")
        warm, rows = timed(lambda: SessionStore(root).list(), args.repeat)
        print(f"warm list (new store, index valid):          {warm * 1000:.0f} ms  (median of {args.repeat})")
        search, hits = timed(lambda: SessionStore(root).list("topic 42"), args.repeat)
        print(f"search 'topic 42' ({len(hits)} hits):               {search * 1000:.0f} ms")  # type: ignore[arg-type]
        deep = f"message {args.messages - 1} of session 4242:"  # the last message of one session
        first, hits = timed(lambda: SessionStore(root).list(deep))
        print(f"first full-text search (builds .search.json): {first * 1000:.0f} ms  ({len(hits)} hit)")  # type: ignore[arg-type]
        warm_search, hits = timed(lambda: SessionStore(root).list(deep), args.repeat)
        assert [h.id for h in hits] == ["bench-004242"], hits  # type: ignore[union-attr]
        print(f"warm full-text search (new store):           {warm_search * 1000:.0f} ms")
        same = SessionStore(root)
        same.list(deep)
        typing, _ = timed(lambda: same.list("lorem ipsum 4242"), args.repeat)
        print(f"next search in the same store (browser):     {typing * 1000:.0f} ms")
        store = SessionStore(root)
        s = store.load(ids[0])
        s.title = "changed"
        store.save(s)
        one, rows = timed(lambda: SessionStore(root).list())
        assert rows[0].title == "changed"  # type: ignore[index]
        print(f"list after one session changed:              {one * 1000:.0f} ms")
        print(f"target: warm list < 300 ms -> {'OK' if warm < 0.3 else 'TOO SLOW'}")
        print(f"target: warm full-text search < 1 s -> {'OK' if warm_search < 1.0 else 'TOO SLOW'}")


if __name__ == "__main__":
    main()

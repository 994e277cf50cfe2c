"""Continuous batching (engine/batch.py, model/batch.py) on the real tiny model: every request's greedy output
equals its solo output, requests join and leave between steps, a cancelled one leaves at once, the KV budget
holds requests back; and through the real server with the openai SDK (4 concurrent streams of different
prompt lengths and max_tokens, one cancelled midway)."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from mlx_harmony_tui.backends.local import LocalBackend
from mlx_harmony_tui.backends.mlx_thread import MlxThread
from mlx_harmony_tui.chat.settings import ChatSettings
from mlx_harmony_tui.engine.batch import BatchedEngine, BatchScheduler
from mlx_harmony_tui.engine.generator import Engine, GenerationOptions
from mlx_harmony_tui.engine.sampling import SamplingParams
from mlx_harmony_tui.server.app import create_app
from mlx_harmony_tui.server.command import serve_in_thread

TIMEOUT = 240.0


def _greedy(n: int) -> GenerationOptions:
    return GenerationOptions(
        sampling=SamplingParams(temperature=0.0), max_tokens=n, stop_ids=frozenset(), loop=None
    )


@pytest.fixture(scope="module")
def model_thread(tiny_model_dir: Path) -> Iterator[tuple[MlxThread, Engine]]:
    from mlx_harmony_tui.model import load_model

    thread = MlxThread()
    model, config = thread.call(lambda: load_model(tiny_model_dir))
    engine = thread.call(lambda: Engine(model, config, model_id="tiny"))
    yield thread, engine
    thread.stop()


PROMPTS = [[1000 + 7 * i + j for j in range(3 + 37 * i)] for i in range(4)]  # 3, 40, 77, 114 tokens
MAX_TOKENS = [40, 25, 50, 33]
JOBS = list(zip(PROMPTS, MAX_TOKENS, strict=True))


def _solo(thread: MlxThread, engine: Engine) -> list[list[int]]:
    return [thread.call(lambda p=p, n=n: list(engine.generate(p, _greedy(n)))) for p, n in JOBS]


def _concurrent(
    scheduler: BatchScheduler,
    jobs: list[tuple[list[int], GenerationOptions]],
    stop_after: dict[int, int] | None = None,
) -> list[list[int]]:
    outs: list[list[int]] = [[] for _ in jobs]
    start = threading.Barrier(len(jobs))

    def one(i: int) -> None:
        start.wait()
        for tok in BatchedEngine(scheduler).generate(*jobs[i]):
            outs[i].append(tok)
            if stop_after and len(outs[i]) >= stop_after.get(i, 1 << 30):
                break  # the reader goes away: the request must leave its slot

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert not any(t.is_alive() for t in threads)
    return outs


def test_each_request_decodes_as_it_would_alone(model_thread: tuple[MlxThread, Engine]) -> None:
    thread, engine = model_thread
    solo = _solo(thread, engine)
    scheduler = BatchScheduler(engine, thread.submit, max_concurrency=4)
    thread.call(scheduler.warm_up)
    outs = _concurrent(scheduler, [(p, _greedy(n)) for p, n in JOBS])
    assert outs == solo
    assert scheduler.widest >= 2 and scheduler.rows > scheduler.steps  # they really shared steps
    assert scheduler.active == 0
    # Again, now that the slots hold these conversations: the prefix is reused and the result is the same.
    again = _concurrent(scheduler, [(p, _greedy(n)) for p, n in JOBS])
    assert again == solo


def test_a_reader_that_goes_away_frees_its_slot_and_others_are_unaffected(
    model_thread: tuple[MlxThread, Engine],
) -> None:
    thread, engine = model_thread
    long = _greedy(400)
    solo = _solo(thread, engine)
    scheduler = BatchScheduler(engine, thread.submit, max_concurrency=4)
    jobs = [(PROMPTS[0], long), *[(p, _greedy(n)) for p, n in JOBS[1:]]]
    outs = _concurrent(scheduler, jobs, stop_after={0: 5})
    assert outs[1:] == solo[1:]
    assert outs[0] == solo[0][:5]
    deadline = time.monotonic() + TIMEOUT
    while scheduler.active and time.monotonic() < deadline:
        time.sleep(0.05)
    assert scheduler.active == 0 and scheduler.cancelled == 1
    assert scheduler.rows < sum(len(o) for o in solo[1:]) + 100  # the 400-token request stopped early


def test_a_set_cancel_event_stops_only_that_request(model_thread: tuple[MlxThread, Engine]) -> None:
    thread, engine = model_thread
    scheduler = BatchScheduler(engine, thread.submit, max_concurrency=2)
    cancel = threading.Event()
    cancel.set()
    gen = BatchedEngine(scheduler)
    assert list(gen.generate(PROMPTS[1], _greedy(30), cancel=cancel)) == []
    assert gen.last_result is not None and gen.last_result.finish_reason == "cancelled"
    other = BatchedEngine(scheduler)
    assert len(list(other.generate(PROMPTS[1], _greedy(7)))) == 7
    assert other.last_result is not None and other.last_result.finish_reason == "length"


class _Recording(BatchScheduler):
    """Records, as each token is handed over, how many positions the request's cache holds beyond the prompt
    and the tokens handed over before (1: the step that feeds this token is already queued)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.ahead: dict[int, list[int]] = {}

    def _accept(self, seq, tok, extra):  # type: ignore[no-untyped-def]
        offset = self._slot(seq.slot).caches[0].offset
        self.ahead.setdefault(len(seq.prompt), []).append(offset - len(seq.prompt) - len(seq.generated))
        super()._accept(seq, tok, extra)


@pytest.mark.parametrize("together", [1, 3])
def test_the_next_step_is_queued_before_a_token_is_read(
    model_thread: tuple[MlxThread, Engine], together: int
) -> None:
    """Pipelining: the host reads token k (and hands it over) only after the step feeding it is queued, so its
    work overlaps the device's; the first token (the prefill's) and the last (nothing more to feed) are
    the exceptions. Outputs stay as alone."""
    thread, engine = model_thread
    solo = _solo(thread, engine)[:together]
    scheduler = _Recording(engine, thread.submit, max_concurrency=together)
    outs = _concurrent(scheduler, [(p, _greedy(n)) for p, n in JOBS[:together]])
    assert outs == solo
    for p, n in JOBS[:together]:
        assert scheduler.ahead[len(p)] == [0] + [1] * (n - 2) + [0]
    assert scheduler.steps == max(n for _, n in JOBS[:together]) - 1  # no step beyond the length limit


def test_a_stop_token_ends_a_request_and_its_slot_stays_consistent(
    model_thread: tuple[MlxThread, Engine],
) -> None:
    """A request that stops on a stop token was already fed into the next step (one wasted row); its slot's
    cache still matches its tokens, so the next request there reuses the prefix and decodes as alone."""
    thread, engine = model_thread
    solo = _solo(thread, engine)
    jobs, expected = [], []
    for (p, n), out in zip(JOBS, solo, strict=True):
        stop = out[6]
        opts = _greedy(n)
        opts.stop_ids = frozenset({stop})
        jobs.append((p, opts))
        expected.append(out[: out.index(stop) + 1])
    scheduler = BatchScheduler(engine, thread.submit, max_concurrency=4)
    assert _concurrent(scheduler, jobs) == expected
    for pc in scheduler._slots:
        assert pc is not None and pc.caches[0].offset == len(pc.tokens)
    again = _concurrent(scheduler, [(p, _greedy(n)) for p, n in JOBS])
    assert again == solo


Job = tuple[list[int], GenerationOptions]


def _join_while_decoding(scheduler: BatchScheduler, first: Job, second: Job) -> list[list[int]]:
    """Both requests' tokens; ``second`` is submitted once ``first`` has decoded three tokens."""
    outs: list[list[int]] = [[], []]
    started = threading.Event()

    def read(i: int) -> None:
        for tok in BatchedEngine(scheduler).generate(*(first, second)[i]):
            outs[i].append(tok)
            if len(outs[i]) == 3:
                started.set()

    threads = [threading.Thread(target=read, args=(i,)) for i in range(2)]
    threads[0].start()
    assert started.wait(TIMEOUT)
    threads[1].start()
    for t in threads:
        t.join(TIMEOUT)
    assert not any(t.is_alive() for t in threads)
    return outs


def test_a_long_prompt_joins_a_chunk_at_a_time_between_the_others_steps(
    model_thread: tuple[MlxThread, Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request with a long prompt joining while another decodes is prefilled one chunk per step, so the
    other's stream pauses for one chunk at a time, not for the whole prefill; both decode as alone."""
    thread, engine = model_thread

    def opts(n: int) -> GenerationOptions:
        o = _greedy(n)
        o.prefill_step = 16
        return o

    short, long = (PROMPTS[0], opts(300)), ([3000 + j for j in range(200)], opts(10))  # short: still decoding
    solo = [thread.call(lambda p=p, o=o: list(engine.generate(p, o))) for p, o in (short, long)]
    log: list[str] = []
    logits = engine._logits

    def logged(ids: list[int], caches: object = None) -> object:
        if len(ids) > 1:
            log.append("chunk")  # a prefill chunk (decode steps feed one token)
        return logits(ids, caches)  # type: ignore[arg-type]

    class Logged(BatchScheduler):
        def _accept(self, seq, tok, extra):  # type: ignore[no-untyped-def]
            log.append("long token" if len(seq.prompt) == 200 else "token")
            super()._accept(seq, tok, extra)

    monkeypatch.setattr(engine, "_logits", logged)
    scheduler = Logged(engine, thread.submit, max_concurrency=2)
    assert _join_while_decoding(scheduler, short, long) == solo
    chunks = [i for i, e in enumerate(log) if e == "chunk" and i > log.index("token")]  # the long one's
    assert len(chunks) == 13 and log.index("long token") > chunks[-1]  # 199 tokens in chunks of 16
    assert all("token" in log[a + 1 : b] for a, b in itertools.pairwise(chunks))  # a step between every two


def test_a_long_prompt_joining_allocates_its_full_layers_once(model_thread: tuple[MlxThread, Engine]) -> None:
    """A long prompt prefilled chunk by chunk into a batch slot reserves its positions first, as the engine
    does: each full layer's buffers are allocated once at the prompt's length plus its first generated
    tokens (growing by a step per chunk copied the whole buffer each time); the replies are as alone."""
    from mlx_harmony_tui.model.cache import KVCache

    thread, engine = model_thread
    long_prompt = [(i * 7919) % 50_000 + 100 for i in range(1500)]
    short, long = (PROMPTS[1], _greedy(200)), (long_prompt, _greedy(4))
    long[1].prefill_step = 512
    solo = [thread.call(lambda p=p, o=o: list(engine.generate(p, o))) for p, o in (short, long)]
    scheduler = BatchScheduler(engine, thread.submit, max_concurrency=2)
    assert _join_while_decoding(scheduler, short, long) == solo
    (slot,) = [pc for pc in scheduler._slots if pc is not None and len(pc.tokens) > 1000]
    full = [c for c in slot.caches if type(c) is KVCache]
    assert full and [c.keys.shape[2] for c in full] == [1500 + 4] * len(full)  # not 1536: 6 steps of 256


def test_rows_holding_as_many_keys_share_one_attention_call() -> None:
    """model/batch.py attend_rows: rows whose caches hold the same number of keys are attended in one call
    (here lengths 5, 9, 5, 9, 12 and a quantized row: four calls, not six), in row order, each row exactly
    as attended alone."""
    import mlx.core as mx

    from mlx_harmony_tui.model.batch import attend_rows
    from mlx_harmony_tui.model.cache import KVCache
    from mlx_harmony_tui.model.kv_quant import QuantizedKVCache, quantized_attention

    lengths, heads, kv_heads, dim = [5, 9, 5, 9, 12, 9], 4, 2, 64
    key = iter(mx.random.split(mx.random.key(3), 20))

    def caches() -> list[KVCache]:
        out: list[KVCache] = []
        for b, n in enumerate(lengths):
            c: KVCache = QuantizedKVCache(8, 64) if b == 5 else KVCache()
            c.update_and_fetch(
                *(mx.random.normal((1, kv_heads, n, dim), key=mx.random.key(10 * b + j)) for j in (0, 1))
            )
            out.append(c)
        return out

    qs = [mx.random.normal((1, heads, 1, dim), key=next(key)) for _ in lengths]
    ks = [mx.random.normal((1, kv_heads, 1, dim), key=next(key)) for _ in lengths]
    vs = [mx.random.normal((1, kv_heads, 1, dim), key=next(key)) for _ in lengths]
    sinks = mx.zeros((heads,))
    calls: list[int] = []

    def attend(q: mx.array, k: object, v: object, cache: KVCache) -> mx.array:
        calls.append(q.shape[0])
        if cache.quantized:
            return quantized_attention(q, k, v, 0.125, None, sinks, *cache.quant)
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=0.125, sinks=sinks)

    out = attend_rows(qs, ks, vs, caches(), None, attend)
    assert sorted(calls) == [1, 1, 2, 2] and out.shape == (len(lengths), heads, 1, dim)
    for b, c in enumerate(caches()):
        alone = attend(qs[b], *c.update_and_fetch(ks[b], vs[b]), c)
        assert mx.array_equal(out[b : b + 1], alone), b


def test_equal_lengths_and_a_quantized_cache_decode_as_alone() -> None:
    """Requests of equal prompt lengths (their full layers share attention calls too) on the demo model with
    an 8-bit KV cache (quantized rows are attended one by one): the same tokens as alone."""
    from mlx_harmony_tui.demo import demo_model_path
    from mlx_harmony_tui.model import load_model

    thread = MlxThread()
    try:
        model, config = thread.call(lambda: load_model(demo_model_path()))
        engine = thread.call(lambda: Engine(model, config, model_id="demo", kv_bits=8))
        jobs = [([2000 + 11 * i + j for j in range(30 + 9 * (i % 2))], 20 + 5 * i) for i in range(4)]
        solo = [thread.call(lambda p=p, n=n: list(engine.generate(p, _greedy(n)))) for p, n in jobs]
        scheduler = BatchScheduler(engine, thread.submit, max_concurrency=4)
        assert _concurrent(scheduler, [(p, _greedy(n)) for p, n in jobs]) == solo
        assert scheduler.widest >= 2
    finally:
        thread.stop()


@pytest.mark.parametrize("layout", ["mlx", "hf"])
def test_quantized_checkpoints_decode_as_alone(tmp_path: Path, layout: str) -> None:
    """The layouts real checkpoints come in (mlx-community: MXFP4 experts, 8-bit attention and LM head; HF:
    MXFP4 experts): the batched step's quantized matmuls give every request its solo tokens."""
    from mlx_harmony_tui.model import write_tiny_checkpoint

    path = write_tiny_checkpoint(tmp_path / layout, layout=layout, seed=1)  # type: ignore[arg-type]
    _batched_equals_solo(path, model_id=layout)


def _batched_equals_solo(path: Path, **engine_options: object) -> Engine:
    """Load ``path`` on its own MLX thread; JOBS batched give each request its solo greedy tokens."""
    from mlx_harmony_tui.model import load_model

    thread = MlxThread()
    try:
        model, config = thread.call(lambda: load_model(path))
        engine = thread.call(lambda: Engine(model, config, **engine_options))
        solo = _solo(thread, engine)
        scheduler = BatchScheduler(engine, thread.submit, max_concurrency=4)
        assert _concurrent(scheduler, [(p, _greedy(n)) for p, n in JOBS]) == solo
        assert scheduler.widest >= 2
        return engine
    finally:
        thread.stop()


def test_the_kv_budget_holds_requests_back(model_thread: tuple[MlxThread, Engine]) -> None:
    thread, engine = model_thread
    solo = _solo(thread, engine)
    scheduler = BatchScheduler(
        engine, thread.submit, max_concurrency=4, kv_budget=1
    )  # room for one at a time
    outs = _concurrent(scheduler, [(p, _greedy(n)) for p, n in JOBS])
    assert outs == solo
    assert scheduler.widest == 1


# --- through the server ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def batching_url(tiny_model_dir: Path) -> Iterator[tuple[str, LocalBackend]]:
    backend = LocalBackend.load(tiny_model_dir)
    backend.enable_batching(4)
    settings = ChatSettings(conversation_date="2025-01-01")
    try:
        with serve_in_thread(create_app({"tiny": backend}, settings)) as url:
            yield url, backend
    finally:
        backend.close()


def _ask(
    client: openai.OpenAI, i: int, max_tokens: int, stop_after: int | None = None
) -> tuple[str, int | None]:
    words = " ".join(f"word{j}" for j in range(1 + 25 * i))  # four prompt lengths
    stream = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": f"Client {i}: {words}"}],
        max_tokens=max_tokens,
        temperature=0.0,
        seed=1,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, chunks, usage = [], 0, None
    for chunk in stream:
        usage = chunk.usage or usage
        for ch in chunk.choices:
            text.append((ch.delta.content or "") + (getattr(ch.delta, "reasoning_content", None) or ""))
            chunks += 1
        if stop_after is not None and chunks >= stop_after:
            stream.close()  # the client disconnects midway
            break
    return "".join(text), usage.completion_tokens if usage else None


def test_server_concurrent_streams_equal_their_solo_replies(batching_url: tuple[str, LocalBackend]) -> None:
    url, backend = batching_url
    client = openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=TIMEOUT)
    budgets = [24, 40, 16]
    solo = [_ask(client, i, n) for i, n in enumerate(budgets)]
    assert all(n for _, n in solo)
    scheduler = backend.scheduler
    assert scheduler is not None
    before = (scheduler.steps, scheduler.rows, scheduler.cancelled)
    results: list[tuple[str, int | None] | None] = [None] * 4
    start = threading.Barrier(4)

    def one(i: int) -> None:
        start.wait()
        results[i] = _ask(client, i, 300, stop_after=3) if i == 3 else _ask(client, i, budgets[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]  # three, and one that gives up
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert results[:3] == solo
    assert scheduler.rows - before[1] > scheduler.steps - before[0]  # steps carried several requests
    deadline = time.monotonic() + TIMEOUT
    while (scheduler.active or scheduler.cancelled == before[2]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert scheduler.active == 0 and scheduler.cancelled == before[2] + 1  # the one that gave up left at once
    assert scheduler.rows - before[1] < sum(n or 0 for _, n in solo) + 150  # not all its 300 tokens
    health = httpx.get(url.removesuffix("/v1") + "/health", timeout=30).json()
    assert health["running"] == 0 and not health["busy"]


def test_the_queue_hands_out_as_many_places_as_slots() -> None:
    import asyncio

    from mlx_harmony_tui.server.queue import GenerationQueue

    async def main() -> None:
        q = GenerationQueue(max_waiting=8, slots=2)
        a, b, c = q.join(), q.join(), q.join()
        assert a.done() and b.done() and not c.done()  # two run, the third waits in line
        assert q.running == 2 and q.waiting == 1
        q.release()
        assert c.done() and q.running == 2
        q.release()
        q.release()
        assert q.running == 0 and not q.busy

    asyncio.run(main())


def _together(backend: LocalBackend, calls: list[Callable[[], Any]]) -> list[Any]:
    """Run ``calls`` at once from threads; their results, after checking that they shared batched steps."""
    scheduler = backend.scheduler
    assert scheduler is not None
    rows, steps = scheduler.rows, scheduler.steps
    results: list[Any] = [None] * len(calls)
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, calls[i]())) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert scheduler.rows - rows > scheduler.steps - steps
    return results


def test_server_raw_completions_join_the_batch(batching_url: tuple[str, LocalBackend]) -> None:
    url, backend = batching_url
    client = openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=TIMEOUT)
    prompts = ["Once upon a time", "The sea " * 30]

    def ask(p: str) -> str:
        return (
            client.completions.create(model="tiny", prompt=p, max_tokens=20, temperature=0.0).choices[0].text
        )

    calls = [lambda p=p: ask(p) for p in prompts]
    solo = [call() for call in calls]
    assert _together(backend, calls) == solo


def test_the_eager_batched_step_matches_too(tiny_model_dir: Path) -> None:
    """A model without the compiled decoder (Engine(optimize=False)) batches through model/batch.py's eager
    layers: the same tokens as alone."""
    engine = _batched_equals_solo(tiny_model_dir, model_id="tiny", optimize=False)
    assert getattr(engine.model, "decoder", None) is None


def test_server_requests_with_their_own_settings_batch_together(
    batching_url: tuple[str, LocalBackend],
) -> None:
    """A JSON-schema request (a logits mask per step), one with logprobs and a sampled one with a seed decode
    in the same steps, each as it would alone."""
    url, backend = batching_url
    client = openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=TIMEOUT)
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer"}},
        "required": ["n"],
        "additionalProperties": False,
    }
    msgs = [{"role": "user", "content": "Give me a number."}]
    calls = [
        lambda: client.chat.completions.create(
            model="tiny",
            messages=msgs,
            max_tokens=40,
            temperature=0.0,
            response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": schema}},
        ),
        lambda: client.chat.completions.create(
            model="tiny", messages=msgs, max_tokens=12, temperature=0.0, logprobs=True, top_logprobs=2
        ),
        lambda: client.chat.completions.create(
            model="tiny", messages=msgs, max_tokens=16, temperature=1.0, seed=7
        ),
    ]

    def key(r: object) -> object:
        choice = r.choices[0]  # type: ignore[attr-defined]
        lps = [(t.token, round(t.logprob, 4)) for t in choice.logprobs.content] if choice.logprobs else None
        return choice.message.content, getattr(choice.message, "reasoning_content", None), lps

    solo = [key(call()) for call in calls]
    assert [key(r) for r in _together(backend, calls)] == solo

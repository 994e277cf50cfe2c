"""KVCache's tail (model/cache.py): one-position appends to a small buffer, folded into the main buffers,
so a pipelined decode step does not copy a long context's whole buffer every token."""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from mlx_harmony_tui.model.cache import KVCache


def _kv(n: int, seed: int) -> tuple[mx.array, mx.array]:
    k = mx.random.normal((1, 2, n, 8), key=mx.random.key(seed))
    return k, k * 2 + 1


def _same(a: KVCache, b: KVCache) -> None:
    assert a.offset == b.offset
    for x, y in zip(a.state, b.state, strict=True):
        assert x is not None and y is not None
        np.testing.assert_array_equal(np.array(x), np.array(y))


def test_a_tailed_cache_holds_what_a_plain_one_holds() -> None:
    plain, tailed = KVCache(), KVCache()
    tailed.use_tail, tailed.TAIL = True, 8
    seed = 0
    for n in [20, *([1] * 30), 3, *([1] * 9)]:  # a prefill, decode steps (folds at 8), a prompt, decode
        seed += 1
        for c in (plain, tailed):
            c.update(*_kv(n, seed))
    assert tailed.tail_n == 9 - 8 and tailed.offset == 20 + 30 + 3 + 9
    assert tailed.nbytes > plain.nbytes  # the tail's buffers count
    # the main buffer and the tail together are the positions; reading the cache as one folds the tail
    main = tailed.offset - tailed.tail_n
    assert tailed.keys is not None and tailed.tail_keys is not None
    both = mx.concatenate([tailed.keys[..., :main, :], tailed.tail_keys[..., : tailed.tail_n, :]], axis=2)
    np.testing.assert_array_equal(np.array(both), np.array(plain.state[0]))
    _same(plain, tailed)
    assert tailed.tail_n == 0
    for c in (plain, tailed):
        c.update(*_kv(1, 99))
        c.update(*_kv(1, 100))
        assert c.trim(5) == 5  # trimming across the tail and the main buffer
    _same(plain, tailed)
    got_t = tailed.update_and_fetch(*_kv(1, 7))
    got_p = plain.update_and_fetch(*_kv(1, 7))
    for x, y in zip(got_t, got_p, strict=True):
        np.testing.assert_array_equal(np.array(x), np.array(y))


def test_pipelined_one_position_appends_do_not_copy_the_buffer() -> None:
    """MLX copies a buffer on a slice update while an evaluation still in flight reads it (the decode
    loop's next step is built while the previous one runs). With the tail, only the tail is copied: the
    peak stays near the buffer's size (without it: about three buffers)."""
    cap = 1 << 15
    c = KVCache()
    c.use_tail = True
    k = mx.zeros((1, 8, cap - 64, 64), dtype=mx.bfloat16)
    c.update(k, k)
    mx.eval(c.keys, c.values)
    buffers = c.keys.nbytes + c.values.nbytes
    one = mx.ones((1, 8, 1, 64), dtype=mx.bfloat16)
    mx.reset_peak_memory()
    base = mx.get_active_memory()
    prev = None
    for i in range(40):  # within one tail (a fold copies the main buffer once: every TAIL tokens)
        c.update(one * i, one * i)
        main = c.offset - c.tail_n
        assert c.keys is not None and c.values is not None
        y = c.keys[..., main - 1 : main, :].sum() + c.values[..., :1, :].sum()  # reads the buffers, as a kernel
        if c.tail_keys is not None and c.tail_values is not None:
            y = y + c.tail_keys.sum() + c.tail_values.sum()
        mx.async_eval(y)  # like the decode loop: this step runs while the next is built
        if prev is not None:
            prev.item()
        prev = y
    assert prev is not None
    prev.item()
    extra = mx.get_peak_memory() - base
    assert extra < buffers / 2, f"{extra / 2**20:.0f} MiB over {buffers / 2**20:.0f} MiB of buffers"
    _ = c.state  # and the tail folds back into place
    assert c.tail_n == 0 and c.offset == cap - 64 + 40


def test_a_long_prefill_allocates_each_full_layer_once(tiny_model_dir) -> None:
    """The engine reserves the prompt's positions before a chunked prefill: the full layers' buffers are
    allocated once (not grown chunk by chunk, each growth a copy of the whole buffer beside the new one),
    and the answer is the same."""
    from mlx_harmony_tui.engine.generator import Engine, GenerationOptions
    from mlx_harmony_tui.engine.sampling import SamplingParams
    from mlx_harmony_tui.model import load_model

    model, config = load_model(tiny_model_dir)
    prompt = [(i * 7919) % 50_000 + 100 for i in range(1500)]
    outs = []
    for step in (512, 4096):
        engine = Engine(model, config, model_id="tiny")
        opts = GenerationOptions(SamplingParams(temperature=0), max_tokens=0, stop_ids=frozenset(), prefill_step=step)
        list(engine.generate(prompt, opts))  # the prefill alone: all positions but the last
        full = [c for c in engine.prompt_cache.caches if type(c) is KVCache]
        assert full and all(c.offset == 1499 for c in full)
        # chunked: one allocation of the reserved 1,500 positions; one chunk: rounded up to a step
        assert [c.keys.shape[2] for c in full] == [1500 if step == 512 else 1536] * len(full)
        opts = GenerationOptions(SamplingParams(temperature=0), max_tokens=4, stop_ids=frozenset())
        outs.append(list(engine.generate(prompt, opts)))
    assert outs[0] == outs[1]

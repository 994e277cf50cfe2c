"""The optimized model (fused QKV, compiled one-token step) must give the eager path's results."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from mx_close import assert_close

from mlx_harmony_tui.engine.generator import Engine, GenerationOptions
from mlx_harmony_tui.engine.sampling import SamplingParams
from mlx_harmony_tui.model import load_model
from mlx_harmony_tui.model.cuda_moe import cuda_available

_CUDA = cuda_available()
# Same math on different paths (prefill vs decode, gather vs per-expert): within 1e-4 on the CPU; CUDA's
# float32 matmuls differ by up to 1.2e-2 between such paths (measured on an H200).
_TOL = 2e-2 if _CUDA else 1e-4


def _greedy(path, optimize: bool, prompt: list[int], n: int) -> tuple[list[int], list[int]]:
    model, config = load_model(path)
    engine = Engine(model, config, optimize=optimize)
    assert (model.decoder is not None) == optimize
    opts = GenerationOptions(sampling=SamplingParams(temperature=0.0), max_tokens=n, stop_ids=frozenset(), loop=None)
    first = list(engine.generate(prompt, opts))
    # A second turn that reuses part of the first (cache trimmed back inside the sliding window).
    second = list(engine.generate(prompt + first[: n // 2] + [17, 18, 19], opts))
    return first, second


def test_greedy_tokens_identical_to_eager(tiny_model_dir):
    prompt = list(range(2000, 2040))  # longer than the tiny model's sliding window
    eager = _greedy(tiny_model_dir, False, prompt, 48)
    fast = _greedy(tiny_model_dir, True, prompt, 48)
    assert fast == eager


def test_decode_logits_within_tolerance(tiny_model_dir):
    model, _ = load_model(tiny_model_dir)
    tokens = mx.array([list(range(3000, 3030))], dtype=mx.int32)
    reference = model(tokens)  # eager, whole sequence
    model.optimize()
    cache = model.make_cache()
    model(tokens[:, :20], cache=cache)
    steps = [model(tokens[:, i : i + 1], cache=cache) for i in range(20, 30)]
    got = mx.concatenate(steps, axis=1)
    np.testing.assert_allclose(np.array(got), np.array(reference[:, 20:30]), rtol=_TOL, atol=_TOL)


@pytest.mark.xfail(_CUDA, reason="MLX 0.32.4's CUDA gather_mm over sorted rows gives wrong logits for the tiny "
                   "float model (scripts/lab/check_cuda_prefill.py); the per-expert path agrees with the CPU",
                   strict=False)
def test_per_expert_prefill_matches_gather(tiny_model_dir, tmp_path, monkeypatch):
    """The CUDA prefill MoE path (one matmul per expert) gives the gather path's logits, float and MXFP4."""
    from mlx_harmony_tui.model import write_tiny_checkpoint
    from mlx_harmony_tui.model.gpt_oss import Experts

    for path in (tiny_model_dir, write_tiny_checkpoint(tmp_path / "q", layout="mlx", seed=3)):
        model, _ = load_model(path)
        tokens = mx.array([list(range(1000, 1200))], dtype=mx.int32)  # 200 tokens x top-2: past the per-expert threshold (16 rows per expert)
        monkeypatch.setattr(Experts, "per_expert_prefill", False)
        gathered = model(tokens)
        monkeypatch.setattr(Experts, "per_expert_prefill", True)
        per_expert = model(tokens)
        assert_close(per_expert, gathered, rtol=_TOL, atol=_TOL)


def test_query_blocked_attention_matches_one_call(tiny_model_dir, monkeypatch):
    """Prefill attention split into query blocks (bounded score memory) gives the one-call logits, for the
    causal full layers and the sliding-window mask, with and without cached positions before the chunk."""
    from mlx_harmony_tui.model import gpt_oss

    model, _ = load_model(tiny_model_dir)
    model.optimize()  # inference only: the blocks are evaluated one by one
    tokens = mx.array([list(range(2000, 2040))], dtype=mx.int32)

    def run() -> mx.array:
        cache = model.make_cache()
        first = model(tokens[:, :13], cache=cache)
        rest = model(tokens[:, 13:], cache=cache)
        return mx.concatenate([first, rest], axis=1)  # the graph (and the attention calls) is built here

    whole = run()
    calls = []
    monkeypatch.setattr(gpt_oss, "SCORES_BUDGET", 1)  # forces the smallest blocks (16 query rows)
    for owner, name in ((mx.fast, "scaled_dot_product_attention"), (gpt_oss, "cpu_attention")):  # CPU: the latter
        real = getattr(owner, name)
        monkeypatch.setattr(owner, name, lambda *a, real=real, **k: calls.append(a[0].shape[2]) or real(*a, **k))
    blocked = run()
    assert max(calls) == 16 and len(calls) > 2 * len(model.layers)
    tol = _TOL if _CUDA else 1e-5  # CUDA float32 matmuls: path-dependent rounding (see _TOL)
    assert_close(blocked, whole, rtol=tol, atol=tol)


def test_cpu_attention_blocks_see_only_their_keys(tiny_model_dir, monkeypatch):
    """On the CPU a long chunk's attention runs in blocks of QUERY_BLOCK queries over only the keys they
    can see (up to the diagonal; from the window on sliding layers); the logits are the one-call ones."""
    from mlx_harmony_tui.model import gpt_oss

    if not gpt_oss._cpu_backend():
        pytest.skip("CPU backend only")
    tokens = mx.array([list(range(3000, 3300))], dtype=mx.int32)

    def run(optimize: bool) -> mx.array:
        model, _ = load_model(tiny_model_dir)
        if optimize:
            model.optimize(compiled_decode=False)
        cache = model.make_cache()
        first = model(tokens[:, :170], cache=cache)
        rest = model(tokens[:, 170:], cache=cache)
        return mx.concatenate([first, rest], axis=1)  # the graph (and the attention calls) is built here

    whole = run(False)
    keys = []
    real = gpt_oss.cpu_attention
    monkeypatch.setattr(gpt_oss, "cpu_attention", lambda *a, **k: keys.append((a[0].shape[2], a[1].shape[2])) or real(*a, **k))
    blocked = run(True)
    assert max(q for q, _ in keys) == gpt_oss.QUERY_BLOCK
    last = 170 % gpt_oss.QUERY_BLOCK
    assert (last, last + 7) in keys  # a sliding layer's last block of the first chunk: its rows + window - 1 keys
    # 5e-5: the blocks' base-2 softmax rounds differently from sdpa's (5 of 60M logits were 1.2e-5 apart)
    assert_close(blocked, whole, rtol=5e-5, atol=5e-5)


def test_fused_moe_only_where_it_applies(tiny_model_dir, tmp_path, monkeypatch):
    """The CUDA MoE kernels are chosen for MXFP4 experts on CUDA only; elsewhere (and with MHT_FUSED_MOE=0)
    the compiled step keeps the portable MoE, and asking for the kernels where they cannot run fails loudly."""
    from mlx_harmony_tui.model import cuda_moe, write_tiny_checkpoint
    from mlx_harmony_tui.model.fast import CompiledDecoder

    float_model, _ = load_model(tiny_model_dir)
    mxfp4_model, _ = load_model(write_tiny_checkpoint(tmp_path / "q", layout="mlx", seed=3))
    assert not cuda_moe.supports(float_model.layers[0].mlp)
    assert cuda_moe.supports(mxfp4_model.layers[0].mlp)
    assert (CompiledDecoder(mxfp4_model.optimize(compiled_decode=False)).moe is not None) == _CUDA
    assert CompiledDecoder(float_model.optimize(compiled_decode=False)).moe is None
    monkeypatch.setenv("MHT_FUSED_MOE", "0")
    assert CompiledDecoder(mxfp4_model).moe is None
    if not _CUDA:
        with pytest.raises(ValueError, match="CUDA"):
            CompiledDecoder(mxfp4_model, fused_moe=True)


def test_fused_moe_matches_portable_on_cuda(tmp_path):
    """On a CUDA machine: the kernels' one-token MoE equals the portable one, the 8-bit matvec equals the
    dequantized matmul, and greedy decoding with and without the MoE kernels agrees.
    (CI has no GPU; scripts/lab/check_cuda_moe.py runs the same comparison at gpt-oss-20b/120b shapes.)"""
    if not _CUDA:
        pytest.skip("needs CUDA")
    from mlx_harmony_tui.model import cuda_matvec, cuda_moe, write_tiny_checkpoint
    from mlx_harmony_tui.model.fast import CompiledDecoder

    model, _ = load_model(write_tiny_checkpoint(tmp_path / "q", layout="mlx", seed=3))
    model.optimize(compiled_decode=False)
    layer = model.layers[0]
    attn = layer.self_attn
    fused = cuda_moe.FusedDecodeMoE(layer.mlp)
    x = mx.random.normal((1, 1, model.config.hidden_size), key=mx.random.key(0))
    norm = layer.post_attention_layernorm
    ref = x + layer.mlp(norm(x))
    np.testing.assert_allclose(np.array(fused(x, norm)), np.array(ref), rtol=1e-4, atol=1e-4)
    logits, h = fused.route(x.reshape(-1), norm)  # the router kernel (norm included) against MLX's norm + matmul
    np.testing.assert_allclose(np.array(h), np.array(norm(x).reshape(-1)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.array(logits), np.array(norm(x).reshape(-1) @ layer.mlp.router.weight.T),
                               rtol=1e-4, atol=1e-4)
    for normed in (True, False):  # gate_up on the router's h, or normalizing x in every block itself
        act = fused.gate_up(h if normed else x.reshape(-1), None if normed else norm, logits)
        np.testing.assert_allclose(np.array(fused.down(act, logits, x.reshape(-1))), np.array(ref.reshape(-1)),
                                   rtol=1e-4, atol=1e-4)
    # The 8-bit matvec against the dequantized weights (not against MLX's quantized_matmul, whose CUDA
    # kernel returns NaN for some rows of this tiny 201088 x 64 LM head: docs/benchmarks.md).
    for mod, norm, with_res in ((layer.self_attn.qkv_proj, layer.input_layernorm, False),
                                (layer.self_attn.o_proj, None, True), (model.lm_head, model.model.norm, False)):
        mv = cuda_matvec.DecodeMatvec(mod)
        xin = mx.random.normal((1, 1, mv.d), key=mx.random.key(1))
        res = mx.random.normal((1, 1, mv.n), key=mx.random.key(2)) if with_res else None
        w = mx.dequantize(mod.weight, mod.scales, mod.biases, group_size=mod.group_size, bits=mod.bits)
        ref = (norm(xin) if norm is not None else xin) @ w.T + (mod.bias if "bias" in mod else 0)
        ref = ref + res if res is not None else ref
        got = mv(xin, norm=norm, residual=res)
        np.testing.assert_allclose(np.array(got), np.array(ref), rtol=1e-4, atol=1e-4)
        if with_res:  # o_proj reads the attention's (1, heads, 1, head_dim) output as it is, no reshape
            heads = xin.reshape(1, 1, attn.n_heads, attn.head_dim).transpose(0, 2, 1, 3)
            np.testing.assert_allclose(np.array(mv(heads, residual=res)), np.array(ref), rtol=1e-4, atol=1e-4)
    # QKV with its norm and RoPE in one kernel, against the dequantized matmul and MLX's rope.
    mv = cuda_matvec.DecodeMatvec(attn.qkv_proj)
    nq, nkv, hd = attn.n_heads, attn.n_kv, attn.head_dim
    xin = mx.random.normal((1, 1, mv.d), key=mx.random.key(3))
    mod = attn.qkv_proj
    w = mx.dequantize(mod.weight, mod.scales, mod.biases, group_size=mod.group_size, bits=mod.bits)
    y = (layer.input_layernorm(xin) @ w.T + mod.bias).reshape(1, 1, nq + 2 * nkv, hd).transpose(0, 2, 1, 3)
    for pos in (0, 37, 5000):
        r = mx.fast.rope(y, hd, traditional=False, base=None, scale=1.0, offset=pos, freqs=attn._freqs)
        got = mv.qkv_rope(xin, layer.input_layernorm, attn._freqs, mx.array(pos, dtype=mx.int32), nq, nkv, hd)
        for g, want in zip(got, (r[:, :nq], r[:, nq : nq + nkv], y[:, nq + nkv :]), strict=True):
            np.testing.assert_allclose(np.array(g), np.array(want), rtol=1e-4, atol=1e-4)
    # Both decoders continue from one prefilled cache and a fixed token: the prefill runs MLX's
    # quantized_matmul, whose output for these tiny shapes differed between two prefills on an H200 (and
    # holds NaN at the LM head, see above).
    from mlx_harmony_tui.model.cache import KVCache

    prefilled = model.make_cache()
    mx.eval(model(mx.array([list(range(500, 540))]), prefilled, last_only=True))
    tokens = []
    for fused_moe in (False, True):
        decoder = CompiledDecoder(model, fused_moe=fused_moe)
        cache = [KVCache.from_state(*c.state) for c in prefilled]
        tok = mx.array([7])
        out = []
        for _ in range(24):
            tok = mx.argmax(decoder(tok[:, None].astype(mx.int32), cache)[:, -1], axis=-1)
            out.append(tok.item())
        tokens.append(out)
    assert tokens[0] == tokens[1]


@pytest.mark.parametrize("which", ["moe", "matvec"])
def test_kernel_failure_at_warm_up_falls_back_to_mlx_kernels(tiny_model_dir, which):
    """A CUDA kernel that cannot be built (here: one that raises when traced), of the MoE or of the 8-bit
    matvec, must not stop the model: the warm-up warns and the decoder continues on MLX's own kernels, with
    the eager path's logits."""
    from mlx_harmony_tui.model.fast import CompiledDecoder

    model, _ = load_model(tiny_model_dir)
    model.optimize(compiled_decode=False)

    def broken(*args: mx.array, **kwargs: object) -> mx.array:
        raise RuntimeError("nvrtc: compilation failed")

    decoder = CompiledDecoder(model, fused_moe=False)
    if which == "moe":
        decoder.moe = [broken] * len(model.layers)
    else:
        class BrokenMatvec:  # the QKV layer's kernel: the fused norm + QKV + RoPE call raises
            d = model.config.hidden_size
            __call__ = qkv_rope = staticmethod(broken)

            @staticmethod
            def fits_rope(head_dim: int) -> bool:
                return True

        decoder.matvec = {id(layer.self_attn.qkv_proj): BrokenMatvec() for layer in model.layers}
    decoder._segments = [mx.compile(decoder._make_segment(i)) for i in range(decoder.n + 1)]
    with pytest.warns(RuntimeWarning, match="using MLX's: nvrtc"):
        decoder.warm_up()
    assert decoder.moe is None and decoder.matvec == {}
    tokens = mx.array([[5, 6, 7, 8]], dtype=mx.int32)
    reference = model(tokens)
    cache = model.make_cache()
    model(tokens[:, :3], cache=cache)
    got = decoder(tokens[:, 3:], cache)
    np.testing.assert_allclose(np.array(got[:, 0]), np.array(reference[:, 3]), rtol=_TOL, atol=_TOL)

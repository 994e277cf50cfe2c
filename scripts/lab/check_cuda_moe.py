"""GPU check of model/cuda_moe.py and model/cuda_matvec.py against MLX's own kernels: outputs, timings,
greedy decode.

Run on the GPU machine (shared/gpu.md): ``python scripts/lab/check_cuda_moe.py --kind tiny --kind 20b``.
Prints, per model: the largest difference of one MoE layer (fused vs portable, same inputs), the time of
24 chained one-token MoE layers each way (compiled, like the decoder), and for a whole-model greedy decode
after a 512-token prompt: tokens equal or not, first-step logits difference, tok/s of both decoders in
alternation ("portable": MLX's kernels only).
"""

from __future__ import annotations

import argparse
import time

import mlx.core as mx

from mlx_harmony_tui.model import cuda_moe, load_tiny_model
from mlx_harmony_tui.model.fast import CompiledDecoder


def build(kind: str, dtype: str = "float32"):
    if kind == "tiny":
        model, config = load_tiny_model(layout="mlx", prefix="mht-moe-")
        model.set_dtype(getattr(mx, dtype))  # float parts only; packed weights and scales keep theirs
        return model.optimize(compiled_decode=False), config
    from mlx_harmony_tui.engine import bench

    if kind == "120b-2":  # two layers of gpt-oss-120b (128 experts): the kernels' E > 32 path
        bench._REAL[kind] = {"num_hidden_layers": 2, "num_local_experts": 128}
    model, config = bench.build_random(kind, dtype=dtype)
    return model.optimize(compiled_decode=False), config


def check_matvec(model) -> None:
    """model/cuda_matvec.py against the dequantized float matmul (+ bias) on QKV, o_proj and the LM head, and
    its time against MLX's quantized_matmul."""
    from mlx_harmony_tui.model import cuda_matvec

    layer = model.layers[0]
    attn = layer.self_attn
    cases = (("qkv_proj+norm", attn.qkv_proj, layer.input_layernorm, False), ("o_proj+residual", attn.o_proj, None, True),
             ("lm_head+norm", model.lm_head, model.model.norm, False))
    for name, mod, norm, with_res in cases:
        if not cuda_matvec.supports(mod):
            print(f"  matvec {name}: not supported ({type(mod).__name__})")
            continue
        mv = cuda_matvec.DecodeMatvec(mod)
        x = mx.random.normal((1, 1, mv.d)).astype(model.lm_head.scales.dtype)
        res = mx.random.normal((1, 1, mv.n)).astype(x.dtype) if with_res else None
        xin = norm(x) if norm is not None else x
        w = mx.dequantize(mod.weight, mod.scales, mod.biases, group_size=mod.group_size, bits=mod.bits)
        ref = xin.astype(mx.float32) @ w.astype(mx.float32).T + (mod.bias if "bias" in mod else 0)
        if res is not None:
            ref = ref + res
        mlx_out, got = mod(xin), mv(x, norm=norm, residual=res)
        bad = [mx.isnan(a).sum().item() for a in (mlx_out, got)]
        if any(bad):
            print(f"  matvec {name}: NaN in MLX's output: {bad[0]}, in the kernel's: {bad[1]} of {ref.size}")
        err = (mx.abs(ref - got).max() / mx.abs(ref).max()).astype(mx.float32).item()
        tol = 1e-4 if x.dtype == mx.float32 else 3e-2
        f_mlx = mx.compile(lambda x, mod=mod: mod(x))
        f_mv = mx.compile(lambda x, mv=mv, n=norm, r=res: mv(x, norm=n, residual=r))
        times = {}
        for label, f in (("mlx", f_mlx), ("kernel", f_mv)) * 2:
            mx.eval([f(x) for _ in range(8)])
            t0 = time.perf_counter()
            mx.eval([f(x) for _ in range(64)])
            times[label] = (time.perf_counter() - t0) / 64
        print(f"  matvec {name} {mv.n}x{mv.d}: relative difference {err:.2e} {'OK' if err < tol else 'MISMATCH'}; "
              f"mlx {times['mlx'] * 1e6:.1f} us, kernel {times['kernel'] * 1e6:.1f} us (64 unchained calls)")


def check_layer(model, chain: int = 24) -> None:
    layer = model.layers[0]
    dt = layer.post_attention_layernorm.weight.dtype
    moe = layer.mlp
    H = model.config.hidden_size
    norm = layer.post_attention_layernorm
    variants = {"portable": mx.compile(lambda x, h: x + moe(norm(x)))}
    fused = cuda_moe.FusedDecodeMoE(moe)
    worst = worst_logits = 0.0
    for seed in range(5):
        mx.random.seed(seed)
        x = mx.random.normal((1, 1, H)).astype(dt)
        ref = x + moe(norm(x))
        diff = mx.abs(ref - fused(x, norm)).astype(mx.float32).max().item()
        worst = max(worst, diff / max(mx.abs(ref - x).astype(mx.float32).max().item(), 1e-12))
        if fused.router_kernel:
            want = fused._logits(norm(x).reshape(1, H))[0]
            got = fused.route(x.reshape(H), norm)[0]
            worst_logits = max(worst_logits, (mx.abs(want - got).max() / mx.abs(want).max()).astype(mx.float32).item())
    tol = 1e-4 if dt == mx.float32 else 3e-2
    print(f"  fused vs portable ({dt}): worst relative difference over 5 inputs {worst:.3e}  "
          f"{'OK' if worst < tol else 'MISMATCH'}; router kernel (norm + matmul) vs MLX: {worst_logits:.3e}  "
          f"{'OK' if worst_logits < tol else 'MISMATCH'}")
    variants["fused"] = mx.compile(lambda x, h: fused(x, norm))
    logits = fused._logits(norm(x).reshape(1, H))[0]
    act = fused.gate_up(norm(x).reshape(H), None, logits)
    variants["router kernel"] = mx.compile(lambda x, h: x + fused.route(x.reshape(H), norm)[0].sum())
    variants["gate_up kernel"] = mx.compile(lambda x, h: fused.gate_up(x.reshape(H), None, logits)[0].reshape(1, 1, H))
    variants["down kernel"] = mx.compile(lambda x, h: fused.down(act, logits, x.reshape(H)).reshape(1, 1, H))
    attn = layer.self_attn
    width = attn.n_heads * attn.head_dim
    variants["o_proj+qkv"] = mx.compile(
        lambda x, h: attn.qkv_proj(attn.o_proj(mx.tile(x, (1, 1, width // H + 1))[..., :width]))[..., :H])
    x = mx.random.normal((1, 1, H)).astype(dt)
    h = layer.post_attention_layernorm(x)
    for name, f in list(variants.items()) * 2:
        for _ in range(3):
            y = x
            for _ in range(chain):
                y = f(y, h)
            mx.eval(y)
        t0 = time.perf_counter()
        for _ in range(10):
            y = x
            for _ in range(chain):
                y = f(y, h)
            mx.eval(y)
        dt = (time.perf_counter() - t0) / (10 * chain)
        print(f"  {name:14s}: {dt * 1e6:7.1f} us per call ({chain} chained)")


def decode(model, decoder, prompt: mx.array, n: int) -> tuple[list[int], mx.array, float]:
    cache = model.make_cache()
    logits = model(prompt[None], cache, last_only=True)
    tok = mx.argmax(logits[:, -1], axis=-1)
    out: list[int] = []
    first = None
    mx.eval(tok)
    t0 = time.perf_counter()
    for _ in range(n):
        logits = decoder(tok[:, None].astype(mx.int32), cache)
        if first is None:
            first = logits
        tok = mx.argmax(logits[:, -1], axis=-1)
        mx.async_eval(tok)
        out.append(tok.item())
    dt = time.perf_counter() - t0
    return out, first, n / dt


def check_decode(model, prompt_len: int, n: int) -> None:
    V = model.config.vocab_size
    prompt = mx.random.randint(0, V, (prompt_len,), key=mx.random.key(1))
    fused = CompiledDecoder(model, fused_moe=True)
    port = CompiledDecoder(model, fused_moe=False, matvec=False)
    fused.warm_up()
    port.warm_up()
    res = {}
    for name, dec in (("portable", port), ("fused", fused), ("portable", port), ("fused", fused)):
        toks, first, tps = decode(model, dec, prompt, n)
        prev = res.get(name)
        res[name] = (toks, first, max(tps, prev[2]) if prev else tps)
    (pt, pf, ptps), (ft, ff, ftps) = res["portable"], res["fused"]
    same = sum(a == b for a, b in zip(pt, ft, strict=True))
    ldiff = mx.abs(pf - ff).max().item()
    print(f"  decode {n} tokens after {prompt_len}: tokens equal {same}/{n}, first logits max diff {ldiff:.3e}")
    print(f"  tok/s portable {ptps:.1f}  fused {ftps:.1f}  ratio {ftps / ptps:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kind", action="append", default=[])
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--dtype", default="float32", help="float parts of the model (real checkpoints: bfloat16)")
    ap.add_argument("--no-decode", dest="decode", action="store_false", help="only the one-layer checks")
    a = ap.parse_args()
    if not cuda_moe.cuda_available():
        raise SystemExit("needs CUDA")
    for kind in a.kind or ["tiny"]:
        t0 = time.perf_counter()
        model, _ = build(kind, a.dtype)
        print(f"== {kind} (built in {time.perf_counter() - t0:.0f} s), supports: {cuda_moe.supports(model.layers[0].mlp)}",
              flush=True)
        check_layer(model)
        check_matvec(model)
        for L in (512, 4096) if kind != "tiny" else (64,):
            if a.decode:
                check_decode(model, L, a.tokens)
        del model
        mx.clear_cache()


if __name__ == "__main__":
    main()

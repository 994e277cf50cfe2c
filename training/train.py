"""Train the demo model with MLX on OUR model code (mlx_harmony_tui.model.GptOss) over a compact vocabulary.

The model is built with ``vocab_size = len(vocab_ids)``; the loss is a softmax over [compact logits, one
constant logit log(n_unused)]. At load the compact rows are scattered into 201088-row matrices with zeros
elsewhere; a zero ``lm_head`` row gives logit 0, and n_unused of them carry exactly the mass of that constant
logit, so the full-vocabulary distribution equals the one trained here.

Run: ``python -m training.train --data demo_train.npz --out mlx_harmony_tui/demo --minutes 4``
(the learning-rate schedule follows elapsed time, so a time budget gives a finished cosine decay).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np

from mlx_harmony_tui.model.config import ModelConfig
from mlx_harmony_tui.model.gpt_oss import Experts, GptOss, _swiglu

FULL_VOCAB = 201088

# Small enough to decode fast on a 2-core CPU with the full 201088-row lm_head; big enough to copy numbers.
DEMO_CONFIG: dict[str, Any] = {
    "model_type": "gpt_oss",
    "architectures": ["GptOssForCausalLM"],
    "vocab_size": FULL_VOCAB,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "num_local_experts": 4,
    "num_experts_per_tok": 2,
    "sliding_window": 128,
    "layer_types": ["sliding_attention", "full_attention"] * 2,
    "rms_norm_eps": 1e-5,
    "rope_theta": 150000.0,
    "rope_scaling": {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
                     "original_max_position_embeddings": 4096, "truncate": False},
    "swiglu_limit": 7.0,
    "max_position_embeddings": 131072,
    "tie_word_embeddings": False,
    "eos_token_id": [200002, 200012],
    "pad_token_id": 199999,
    "torch_dtype": "float16",
}


def dense_experts(self: Experts, x: mx.array, indices: mx.array) -> mx.array:
    """Training forward of float experts: every token through all experts, then its top-k picked. With 4
    experts this costs 2x the sparse matmuls but has no host sync (the model's CUDA prefill path counts rows
    per expert on the host, which compile and grad transformations refuse) and no gather_mm (wrong on CUDA
    for float experts in MLX 0.32.4, see model/gpt_oss.py). Same math as ``Experts.__call__``."""
    gu, dn = self.gate_up, self.down
    h = mx.einsum("nh,ehf->nef", x, gu.weight) + gu.bias  # (N, E, 2I)
    y = mx.einsum("nei,eih->neh", _swiglu(h, self._alpha, self._limit), dn.weight) + dn.bias  # (N, E, H)
    return mx.take_along_axis(y, indices[..., None], axis=1)  # (N, k, H)


def load_data(path: Path, max_len: int) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    d = np.load(path)
    toks, mask, off = d["tokens"], d["mask"], d["offsets"]
    xs, ms = [], []
    for a, b in zip(off[:-1], off[1:], strict=True):
        if b - a <= max_len:
            xs.append(toks[a:b].astype(np.int32))
            ms.append(mask[a:b])
    return xs, ms, d["vocab_ids"]


def make_batch(xs: list[np.ndarray], ms: list[np.ndarray], idx: np.ndarray, bucket: int) -> tuple[mx.array, ...]:
    """Right-padded batch; lengths rounded up to `bucket` so compiled shapes repeat."""
    n = max(len(xs[i]) for i in idx)
    L = ((n + bucket - 1) // bucket) * bucket
    x = np.zeros((len(idx), L), np.int32)
    m = np.zeros((len(idx), L), np.float32)
    for r, i in enumerate(idx):
        x[r, : len(xs[i])] = xs[i]
        m[r, : len(ms[i])] = ms[i]
    return mx.array(x[:, :-1]), mx.array(x[:, 1:]), mx.array(m[:, 1:])


def compact_loss(model: GptOss, x: mx.array, y: mx.array, m: mx.array, rest_logit: float) -> mx.array:
    """Cross-entropy over [the compact vocabulary's logits, log(n_unused)]; the last row of the model's
    vocabulary is the unknown-word input row, never an output, so its logit is left out."""
    logits = model(x)[..., :-1].astype(mx.float32)
    rest = mx.full((*logits.shape[:-1], 1), rest_logit, dtype=mx.float32)
    ce = nn.losses.cross_entropy(mx.concatenate([logits, rest], axis=-1), y)
    return (ce * m).sum() / mx.maximum(m.sum(), 1.0)


def to_hf_layout(params: dict[str, mx.array]) -> dict[str, mx.array]:
    """Our fused expert names -> the Hugging Face float layout the loader reads (gate/up interleaved)."""
    out: dict[str, mx.array] = {}
    for k, v in params.items():
        if k.endswith("mlp.experts.gate_up.weight") or k.endswith("mlp.experts.gate_up.bias"):
            gate, up = mx.split(v, 2, axis=-1)
            inter = mx.stack([gate, up], axis=-1).reshape(*v.shape)
            out[k.replace("gate_up.weight", "gate_up_proj").replace("gate_up.bias", "gate_up_proj_bias")] = inter
        elif k.endswith("mlp.experts.down.weight"):
            out[k.replace("down.weight", "down_proj")] = v
        elif k.endswith("mlp.experts.down.bias"):
            out[k.replace("down.bias", "down_proj_bias")] = v
        else:
            out[k] = v
    return out


def save_compact(params: dict[str, mx.array], vocab_ids: np.ndarray, out: Path, config: dict[str, Any],
                 extra: dict[str, Any]) -> None:
    """Matrices in float16 (half the bytes in the repository); vectors (norms, biases, sinks) in float32,
    which also makes the loader pick float32 compute (it follows model.norm.weight's dtype). The embedding
    keeps its unknown-word row (len(vocab_ids) + 1 rows); lm_head has one row per vocabulary token."""
    out.mkdir(parents=True, exist_ok=True)
    params = dict(params)
    params["lm_head.weight"] = params["lm_head.weight"][: len(vocab_ids)]
    weights = {k: v.astype(mx.float16 if v.ndim >= 2 else mx.float32) for k, v in to_hf_layout(params).items()}
    weights["vocab_ids"] = mx.array(vocab_ids.astype(np.int32))
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "pt"})
    cfg = dict(config)
    cfg["demo"] = extra
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--minutes", type=float, default=4.0, help="wall-clock budget for the optimisation")
    p.add_argument("--max-steps", type=int, default=100000)
    p.add_argument("--batch", type=int, default=48)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--max-len", type=int, default=768)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bucket", type=int, default=128, help="pad lengths to a multiple (fewer compiled shapes)")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--hidden", type=int, default=DEMO_CONFIG["hidden_size"])
    p.add_argument("--layers", type=int, default=DEMO_CONFIG["num_hidden_layers"])
    p.add_argument("--intermediate", type=int, default=DEMO_CONFIG["intermediate_size"])
    p.add_argument("--heads", type=int, default=DEMO_CONFIG["num_attention_heads"], help="query heads of 64")
    a = p.parse_args(argv)
    config = {**DEMO_CONFIG, "hidden_size": a.hidden, "num_hidden_layers": a.layers,
              "intermediate_size": a.intermediate, "num_attention_heads": a.heads,
              "num_key_value_heads": max(1, a.heads // 2),
              "layer_types": ["sliding_attention", "full_attention"] * (a.layers // 2) + ["sliding_attention"] * (a.layers % 2)}

    mx.random.seed(a.seed)
    rng = np.random.default_rng(a.seed)
    xs, ms, vocab_ids = load_data(a.data, a.max_len)
    n_c = len(vocab_ids)
    rest_logit = math.log(FULL_VOCAB - n_c)
    cfg = ModelConfig.from_dict({**config, "vocab_size": n_c + 1})  # + the unknown-word row
    Experts.__call__ = dense_experts  # type: ignore[method-assign]  # this process only trains
    model = GptOss(cfg)
    # Zero-mean small init for the unembedding so training starts near uniform over the compact vocabulary.
    model.lm_head.weight = mx.random.normal(model.lm_head.weight.shape) * 0.02
    model.model.embed_tokens.weight = mx.random.normal(model.model.embed_tokens.weight.shape) * 0.02
    mx.eval(model.parameters())
    n_params = sum(v.size for _, v in __import__("mlx.utils").utils.tree_flatten(model.parameters()))
    print(f"examples {len(xs)}, compact vocab {n_c}, params {n_params / 1e6:.2f}M, device {mx.default_device()}",
          flush=True)

    budget = a.minutes * 60.0
    t0 = time.time()

    def lr_at() -> float:
        f = min((time.time() - t0) / budget, 1.0)
        warm = min(1.0, (time.time() - t0) / 10.0)
        return a.lr * warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * f)))

    opt = optim.AdamW(learning_rate=a.lr, weight_decay=0.01, betas=(0.9, 0.98))
    loss_and_grad = nn.value_and_grad(model, lambda mdl, x, y, m: compact_loss(mdl, x, y, m, rest_logit))
    state = [model.state, opt.state]

    def step(x: mx.array, y: mx.array, m: mx.array) -> mx.array:
        loss, grads = loss_and_grad(model, x, y, m)
        grads, _ = optim.clip_grad_norm(grads, 1.0)
        opt.update(model, grads)
        return loss

    cstep = step if a.no_compile else mx.compile(step, inputs=state, outputs=state)
    order = np.argsort([len(x) for x in xs])
    steps, seen, ema = 0, 0, None
    while time.time() - t0 < budget and steps < a.max_steps:
        # length-sorted windows keep padding low; random window start keeps batches varied
        start = int(rng.integers(0, max(1, len(order) - a.batch)))
        idx = order[start : start + a.batch]
        x, y, m = make_batch(xs, ms, idx, a.bucket)
        opt.learning_rate = mx.array(lr_at())
        try:
            loss = cstep(x, y, m)
            mx.eval(loss, state)
        except Exception as e:  # noqa: BLE001 - compile trouble on some backend: fall back to eager
            if cstep is step:
                raise
            print(f"compile failed ({e}); continuing eagerly", flush=True)
            cstep = step
            continue
        steps += 1
        seen += int(m.sum().item())
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if steps % 50 == 0:
            print(f"step {steps} t={time.time() - t0:.0f}s loss {ema:.4f} lr {lr_at():.2e} trained-tokens {seen}",
                  flush=True)
    print(f"done: {steps} steps in {time.time() - t0:.0f}s, final loss {ema:.4f}", flush=True)
    from mlx.utils import tree_flatten

    extra = {"steps": steps, "loss": round(float(ema or 0), 4), "trained_tokens": seen, "compact_vocab": n_c}
    save_compact(dict(tree_flatten(model.parameters())), vocab_ids, a.out, config, extra)


if __name__ == "__main__":
    main()

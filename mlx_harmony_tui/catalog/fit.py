"""Will it fit? Weights + KV cache for the configured context + working memory, against what MLX can have.

Checked before a load, so a model that cannot run is refused with numbers instead of a swap storm, a
Metal allocation failure or the OOM killer an hour into a conversation. ``--force`` skips the check.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlx_harmony_tui.catalog.summary import ModelSummary
from mlx_harmony_tui.engine import memory
from mlx_harmony_tui.engine.memory import MemoryBudget, ModelTooLargeError

GB = 1e9


def working_bytes(weight_bytes: int) -> int:
    """Activations, MoE scratch and MLX's buffer pool during prefill: an estimate, 0.5 GB + 5% of weights."""
    return int(0.5 * GB + 0.05 * weight_bytes)


@dataclass(frozen=True)
class MemoryNeed:
    weights: int
    kv: int
    working: int
    context: int  # tokens the KV estimate is for

    @property
    def total(self) -> int:
        return self.weights + self.kv + self.working

    def words(self) -> str:
        return (
            f"weights {self.weights / GB:.1f} + KV cache for {self.context} tokens {self.kv / GB:.1f} "
            f"+ working memory {self.working / GB:.1f}"
        )


def memory_need(
    summary: ModelSummary,
    context: int | None = None,
    kv_bits: int | None = None,
    ranks: int = 1,
    kv_mode: str | None = None,
) -> MemoryNeed:
    """``context``: the configured context_limit (None or larger than the model's: the model's own);
    ``kv_bits``/``kv_mode``: the config's KV cache quantization; ``ranks``: processes of a distributed run, each of
    which holds its share of the heads and experts (plus ~5% of the weights that every rank keeps)."""
    tokens = min(context, summary.context) if context else summary.context
    share = 1.0 if ranks <= 1 else 1 / ranks + 0.05
    return MemoryNeed(
        weights=int(summary.weight_bytes * share),
        kv=summary.kv_bytes(tokens, kv_bits, kv_mode) // max(1, ranks),
        working=working_bytes(summary.weight_bytes),
        context=tokens,
    )


def fits(need: MemoryNeed, budget: MemoryBudget | None = None) -> bool | None:
    """True/False, or None when this machine's memory is unknown."""
    budget = budget or memory.memory_budget()
    return None if not budget.nbytes else need.total <= budget.nbytes


def check_fit(
    name: str,
    summary: ModelSummary,
    context: int | None = None,
    force: bool = False,
    kv_bits: int | None = None,
    ranks: int = 1,
    kv_mode: str | None = None,
) -> MemoryNeed:
    """Raise ModelTooLargeError with the numbers and the ways out, unless it fits or ``force``."""
    need = memory_need(summary, context, kv_bits, ranks, kv_mode)
    budget = memory.memory_budget()
    if force or fits(need, budget) is not False:
        return need
    assert budget.nbytes is not None
    ways = [
        "lower context_limit in the config" if need.context > 4096 else "",
        "set kv_bits = 8 in the config" if not (kv_bits or kv_mode) and need.kv > 0.1 * need.total else "",
        "use a smaller or more quantized model",
        "pass --force to try anyway",
    ]
    hint = f" ({budget.hint})" if budget.hint else ""
    raise ModelTooLargeError(
        f"{name} needs ~{need.total / GB:.1f} GB{f' per rank of {ranks}' if ranks > 1 else ''} ({need.words()}); "
        "this machine can give MLX "
        f"~{budget.nbytes / GB:.1f} GB, {budget.source}{hint}. To go on: {'; '.join(w for w in ways if w)}"
    )

"""Sampling parameters (the engine helper fills in the sampler itself)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SamplingParams:
    """Defaults follow the GPT-OSS model card: temperature 1.0, top_p 1.0, nothing else on."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    min_p: float = 0.0  # 0 = off
    repetition_penalty: float = 1.0  # 1 = off
    repetition_context: int = 64
    logit_bias: dict[int, float] = field(default_factory=dict)

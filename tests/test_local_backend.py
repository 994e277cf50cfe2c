"""LocalBackend's own checks: a model too large for this machine is refused with a sentence, before loading."""

from __future__ import annotations

import pytest

from mlx_harmony_tui.backends.local import LocalBackend
from mlx_harmony_tui.engine import memory
from mlx_harmony_tui.errors import UserError


def test_a_model_that_does_not_fit_is_refused_before_loading(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(memory, "memory_budget", lambda: memory.MemoryBudget(1 << 20, "test RAM"))  # 1 MiB
    with pytest.raises(UserError, match=r"needs ~0\.\d GB \(weights 0\.1 \+ KV cache for 131072 tokens") as info:
        LocalBackend.load(tiny_model_dir)
    assert tiny_model_dir.name in str(info.value) and "--force" in str(info.value)
    LocalBackend.load(tiny_model_dir, force=True).close()  # --force tries anyway


def test_loads_and_closes_cleanly(tiny_model_dir):
    backend = LocalBackend.load(tiny_model_dir)
    assert backend.model_name == tiny_model_dir.name and backend.context_limit > 0
    backend.close()
    assert not backend._worker.is_alive()

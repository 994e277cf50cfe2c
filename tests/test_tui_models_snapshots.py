"""Snapshots of the model picker at 80x24 and 200x60: a downloaded repo that fits, one too big for this
(pretend) machine, a broken folder. Deterministic: fixed checkpoints, a fixed memory budget."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from test_catalog import fake_snapshot
from tui_fakes import ScriptedBackend, simple_reply

from mlx_harmony_tui.engine import memory
from mlx_harmony_tui.model import write_tiny_checkpoint
from mlx_harmony_tui.tui.app import HarmonyApp
from mlx_harmony_tui.tui.widgets.chat_input import ChatInput

SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((200, 60), id="200x60")]


@pytest.mark.parametrize("size", SIZES)
def test_snapshot_model_picker(snap_compare, size, tmp_path: Path, checkpoint: Path, monkeypatch) -> None:  # noqa: ANN001
    fake_snapshot(checkpoint, "acme/tiny-oss", "a" * 40)
    big = write_tiny_checkpoint(tmp_path / "big", layout="float", seed=0)  # 104 MB: too big for 0.6 GB
    fake_snapshot(big, "acme/tiny-oss-float", "b" * 40)
    broken = tmp_path / "models" / "cut-oss"
    shutil.copytree(checkpoint, broken)
    (broken / "model-00002-of-00002.safetensors").unlink()
    monkeypatch.setattr(memory, "memory_budget", lambda: memory.MemoryBudget(int(0.6e9), "available RAM"))
    app = HarmonyApp(backend=ScriptedBackend(simple_reply("", "ok"), name="acme/tiny-oss"), show_welcome=False,
                     models_dirs=[tmp_path / "models"], model="acme/tiny-oss")  # fmt: skip

    async def run(pilot) -> None:  # noqa: ANN001
        pilot.app.screen.query_one(ChatInput).cursor_blink = False
        await pilot.press("ctrl+o")
        await pilot.pause(0.2)

    assert snap_compare(app, terminal_size=size, run_before=run)

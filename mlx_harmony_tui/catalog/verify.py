"""Checks after a pull and before a load: a GPT-OSS config, every shard present, headers that fit the files.

Only headers are read (milliseconds for any size), so a truncated or missing shard is reported by name,
with the command that fixes it, instead of failing deep inside MLX or producing garbage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlx_harmony_tui.catalog.summary import ModelSummary, read_config, summarize
from mlx_harmony_tui.model.config import ModelLoadError
from mlx_harmony_tui.model.load import weight_problems


class ModelVerifyError(ModelLoadError):
    """A model folder that is incomplete or corrupt; names the file and how to fix it."""


def check_architecture(config: dict[str, Any], what: str) -> None:
    """Refuse anything that is not GPT-OSS, naming what it is instead."""
    if config.get("model_type") == "gpt_oss":
        return
    arch = ", ".join(config.get("architectures") or []) or "unknown architecture"
    raise ModelVerifyError(
        f"{what} is a {config.get('model_type') or 'non-GPT-OSS'} model ({arch}), not GPT-OSS: "
        "mlx-harmony-tui runs GPT-OSS models only (model_type 'gpt_oss')"
    )


def bad_files(folder: Path) -> list[str]:
    """Names (relative to the folder) of weight files that are missing or cut short."""
    try:
        return [str(f.relative_to(folder)) for f, _ in weight_problems(folder)]
    except ModelLoadError:
        return []  # no weights / unreadable index: verify() reports it


def verify(folder: Path, name: str, fix: str) -> ModelSummary:
    """The folder's summary if it is loadable; ModelVerifyError naming the bad file and ``fix`` otherwise."""
    config = read_config(folder)
    check_architecture(config, name)
    problems = weight_problems(folder)
    if problems:
        more = f" (and {len(problems) - 1} more bad file(s))" if len(problems) > 1 else ""
        raise ModelVerifyError(f"{name}: {problems[0][1]}{more}. To fix it: {fix}")
    return summarize(folder)

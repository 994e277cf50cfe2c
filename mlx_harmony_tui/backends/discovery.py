"""Moved to ``mlx_harmony_tui.catalog.listing`` (models_dirs and the hub cache, through huggingface_hub)."""

from mlx_harmony_tui.catalog.hub import cache_dir as hf_hub_dir
from mlx_harmony_tui.catalog.listing import ModelEntry, find_models

__all__ = ["ModelEntry", "find_models", "hf_hub_dir"]

"""GPT-OSS on MLX: config, model, KV cache, loader and a tiny random checkpoint for tests."""

from mlx_harmony_tui.model.cache import KVCache
from mlx_harmony_tui.model.config import ModelConfig, ModelLoadError
from mlx_harmony_tui.model.gpt_oss import GptOss
from mlx_harmony_tui.model.load import load_model
from mlx_harmony_tui.model.tiny import load_tiny_model, tiny_config, write_tiny_checkpoint

__all__ = ["GptOss", "KVCache", "ModelConfig", "ModelLoadError", "load_model", "load_tiny_model",
           "tiny_config", "write_tiny_checkpoint"]

"""mlx-harmony-tui: a terminal chat app for GPT-OSS models in the Harmony format, on MLX."""

__version__ = "0.1.0"

"""Where the app keeps things. Everything goes through platformdirs so XDG_* variables redirect it (tests rely on that)."""

from __future__ import annotations

from pathlib import Path

import platformdirs

APP = "mlx-harmony-tui"


def config_dir() -> Path:
    return Path(platformdirs.user_config_dir(APP, appauthor=False))


def data_dir() -> Path:
    return Path(platformdirs.user_data_dir(APP, appauthor=False))


def cache_dir() -> Path:
    return Path(platformdirs.user_cache_dir(APP, appauthor=False))


def sessions_dir() -> Path:
    return data_dir() / "sessions"


def config_file() -> Path:
    return config_dir() / "config.toml"


def prompt_cache_file(session_id: str) -> Path:
    """A session's saved prompt cache (written when it closes, read when it opens, removed with it)."""
    return cache_dir() / "prompt-cache" / f"{session_id}.safetensors"

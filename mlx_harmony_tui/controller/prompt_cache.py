"""The prompt cache file of a session: saved when the session is closed, restored when it is opened again,
so resuming a long conversation skips its prefill. Only backends that have one (the local engine) take part.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mlx_harmony_tui import paths
from mlx_harmony_tui.errors import UserError

CACHE_ERRORS = (UserError, OSError, ValueError)


def cache_path(session_id: str) -> Path:
    return paths.prompt_cache_file(session_id)


def restore(backend: Any, session_id: str) -> bool | None:
    """Load the session's cache into the backend: None when there is nothing to load, else whether the
    backend took it (a cache of another model is refused); errors are CACHE_ERRORS."""
    load = getattr(backend, "load_cache", None)
    path = cache_path(session_id)
    if load is None or not path.exists():
        return None
    return bool(load(path))


def save(backend: Any, session_id: str) -> bool:
    """Write the backend's cache for the session; False when the backend keeps none. The cache holds the
    conversation's tokens, so it is as private as the session: the app's own folder is made (or tightened
    to) 0700 before the backend writes into it, and the file is 0600."""
    save_cache = getattr(backend, "save_cache", None)
    if save_cache is None:
        return False
    path = cache_path(session_id)
    path.parent.mkdir(0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)  # a folder made by an older version was 0755
    save_cache(path)
    if path.exists():
        os.chmod(path, 0o600)
    return True


"""Writing the config: the whole file (``save_config``) or one key keeping the rest (``set_value``), atomically."""

from __future__ import annotations

import dataclasses
import os
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from mlx_harmony_tui import paths
from mlx_harmony_tui.config.schema import AppConfig, ConfigError


def _to_toml(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            if not f.metadata.get("toml", True):
                continue
            value = _to_toml(getattr(obj, f.name))
            if value is None or value == {} and f.name in ("profiles",):
                continue
            out[f.name] = value
        return out
    if isinstance(obj, list):
        return [_to_toml(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _to_toml(v) for k, v in obj.items() if v is not None}
    return obj


def _write_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = tomli_w.dumps(data).encode("utf-8")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_config(config: AppConfig, path: Path | None = None) -> Path:
    """Write the whole config (atomically). Comments are not kept; prefer ``set_value`` for one change."""
    target = Path(path) if path is not None else (config.source or paths.config_file())
    _write_atomic(target, _to_toml(config))
    return target


def set_value(path: Path | None, dotted_key: str, value: Any) -> Path:
    """Change one key (e.g. ``"theme"`` or ``"tools.python.enabled"``), keeping every other value.

    Refuses (ConfigError) to touch a file that is not valid TOML, so a broken file is never overwritten.
    """
    target = Path(path) if path is not None else paths.config_file()
    data: dict[str, Any] = {}
    if target.exists():
        try:
            data = tomllib.loads(target.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(
                f"{target} is not valid TOML ({e}); fix it before changing settings from the app"
            ) from None
    keys = dotted_key.split(".")
    node = data
    for k in keys[:-1]:
        child = node.setdefault(k, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{target}: cannot set {dotted_key}: {k} is not a table")
        node = child
    if value is None:
        node.pop(keys[-1], None)
    else:
        node[keys[-1]] = value
    _write_atomic(target, data)
    return target

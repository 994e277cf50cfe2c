"""Writing the config: the whole file (``save_config``) or one key keeping the rest (``set_value``), atomically.

``set_value`` edits the user's own file (the app saves the chosen theme there), so it goes through tomlkit,
which keeps comments and layout, and writes a symlinked file (dotfiles) at its target with its mode."""

from __future__ import annotations

import dataclasses
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

import tomli_w
import tomlkit
from tomlkit.exceptions import TOMLKitError

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


def _write_atomic(path: Path, payload: bytes) -> None:
    """Temp file beside the target, then rename: a symlink is followed (the link stays) and an existing
    file keeps its permission bits."""
    path = Path(os.path.realpath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode: int | None = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        mode = None
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode if mode is not None else 0o644)
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
    _write_atomic(target, tomli_w.dumps(_to_toml(config)).encode("utf-8"))
    return target


def set_value(path: Path | None, dotted_key: str, value: Any) -> Path:
    """Change one key (e.g. ``"theme"`` or ``"tools.python.enabled"``), keeping every other value.

    Refuses (ConfigError) to touch a file that is not valid TOML, so a broken file is never overwritten.
    """
    target = Path(path) if path is not None else paths.config_file()
    doc = tomlkit.document()
    if target.exists():
        try:
            doc = tomlkit.parse(target.read_text(encoding="utf-8"))
        except (TOMLKitError, UnicodeDecodeError) as e:
            raise ConfigError(
                f"{target} is not valid TOML ({e}); fix it before changing settings from the app"
            ) from None
    keys = dotted_key.split(".")
    node: Any = doc
    for k in keys[:-1]:
        if k not in node:
            node[k] = tomlkit.table()
        node = node[k]
        if not isinstance(node, dict):
            raise ConfigError(f"{target}: cannot set {dotted_key}: {k} is not a table")
    if value is None:
        node.pop(keys[-1], None)
    else:
        node[keys[-1]] = value
    _write_atomic(target, tomlkit.dumps(doc).encode("utf-8"))
    return target

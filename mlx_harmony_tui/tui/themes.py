"""Theme files (TOML with Textual Theme fields) from the package, the repo's themes/ and the user's config dir."""

from __future__ import annotations

import tomllib
from dataclasses import fields
from pathlib import Path

from textual.theme import Theme

from mlx_harmony_tui import paths

PACKAGE_THEMES = Path(__file__).parent / "themes"  # shipped as package data (a link to the repo's themes/)
REPO_THEMES = Path(__file__).resolve().parents[2] / "themes"
_FIELDS = {f.name for f in fields(Theme)}


def theme_dirs() -> list[Path]:
    return [PACKAGE_THEMES, REPO_THEMES, paths.config_dir() / "themes"]


def load_theme_file(path: Path) -> Theme:
    """A theme file: name, primary and any other Theme field; unknown keys are errors so typos surface."""
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    unknown = set(data) - _FIELDS
    if unknown:
        raise ValueError(f"{path}: unknown theme field(s) {', '.join(sorted(unknown))}")
    if "primary" not in data:
        raise ValueError(f"{path}: a theme needs at least 'primary'")
    data.setdefault("name", path.stem)
    return Theme(**data)


def load_themes() -> tuple[list[Theme], list[str]]:
    """All themes found (later dirs override earlier ones by name) and the problems met on the way."""
    found: dict[str, Theme] = {}
    problems: list[str] = []
    seen: set[Path] = set()
    for d in theme_dirs():
        if not d.is_dir() or d.resolve() in seen:
            continue
        seen.add(d.resolve())
        for f in sorted(d.glob("*.toml")):
            try:
                t = load_theme_file(f)
            except (OSError, ValueError, TypeError, tomllib.TOMLDecodeError) as e:
                problems.append(str(e))
                continue
            found[t.name] = t
    return list(found.values()), problems

"""Imports point downward only (docs/architecture.md): an upward import would make a low layer (the model,
the engine, the Harmony parser) depend on what is built on it, and cycles would follow.

Every module's imports are read with ``ast`` (including function-level and TYPE_CHECKING imports: a type-only
dependency is still a dependency), so nothing is imported or run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "mlx_harmony_tui"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE

# Rank of each top-level part of the package; a module may import only parts of the same or lower rank.
BASE = -1  # errors, paths, confirm, the package's __init__ (version) and the demo data package: they import nothing
RANKS: dict[str, float] = {
    "": BASE,
    "errors": BASE,
    "paths": BASE,
    "confirm": BASE,
    "demo": BASE,
    "model": 0,
    "engine": 1,
    "harmony": 2,
    "chat": 3,
    "tools": 3,
    "sessions": 3.5,  # aside: built on chat/harmony types, used by backends and faces
    "config": 3.5,  # aside: resolves settings and tool configs, used by backends and faces
    "catalog": 3.5,  # aside: model names, the hub cache, downloads, verification and fit; used by backends and faces
    "backends": 4,
    "controller": 4.5,  # one conversation (backend, session record, prompt cache) for the faces to drive
    "faces": 5,
    "tui": 5,
    "server": 5,
    "cli": 5,
    "__main__": 5,
}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def part_of(module: str) -> str:
    """``mlx_harmony_tui.chat.turn`` -> ``chat``; the package itself -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def is_part(name: str) -> bool:
    return (ROOT / name).is_dir() or (ROOT / f"{name}.py").is_file()


def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[str, int]]:
    """(absolute module name, line) of every import of this package in ``source``."""
    out: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            out.append((target, node.lineno))
            if target == PACKAGE:  # `from mlx_harmony_tui import config` names a part (but not `__version__`)
                out += [(f"{PACKAGE}.{a.name}", node.lineno) for a in node.names if is_part(a.name)]
    return [(m, line) for m, line in out if m == PACKAGE or m.startswith(PACKAGE + ".")]


def upward_imports(source: str, module: str, is_package: bool = False) -> list[str]:
    """Every import in ``source`` (the text of ``module``) of a part ranked above the module's own part."""
    own = part_of(module)
    bad = []
    for target, line in imported_modules(source, module, is_package):
        other = part_of(target)
        if other == own:
            continue
        if other not in RANKS:
            bad.append(f"{module}:{line} imports {target}: part {other!r} has no rank in test_layering.py")
        elif RANKS[other] > RANKS[own]:
            bad.append(f"{module}:{line} imports {target} ({other} is above {own or PACKAGE})")
    return bad


def package_modules() -> list[Path]:
    return sorted(ROOT.rglob("*.py"))


def test_every_part_of_the_package_has_a_rank() -> None:
    parts = {part_of(module_name(p)) for p in package_modules()}
    assert parts <= set(RANKS), sorted(parts - set(RANKS))


def test_no_module_imports_upward() -> None:
    bad: list[str] = []
    for path in package_modules():
        bad += upward_imports(path.read_text(encoding="utf-8"), module_name(path), path.name == "__init__.py")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("mlx_harmony_tui.engine.generator", "from mlx_harmony_tui.chat.events import Delta"),
        ("mlx_harmony_tui.model.load", "def f():\n    from mlx_harmony_tui.engine import generator"),
        ("mlx_harmony_tui.harmony.render", "import mlx_harmony_tui.tools.registry"),
        ("mlx_harmony_tui.tools.registry", "if TYPE_CHECKING:\n    from mlx_harmony_tui.config import AppConfig"),
        ("mlx_harmony_tui.errors", "from mlx_harmony_tui import paths, sessions"),
        ("mlx_harmony_tui.controller.conversation", "from mlx_harmony_tui.tui.app import HarmonyApp"),
        ("mlx_harmony_tui.backends.local", "from mlx_harmony_tui.controller import ChatController"),
        ("mlx_harmony_tui.harmony.stream", "from ..chat import events"),
    ],
)
def test_the_check_catches_upward_imports(module: str, source: str) -> None:
    assert len(upward_imports(source, module)) == 1


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("mlx_harmony_tui.chat.turn", "from mlx_harmony_tui.harmony.render import render_prompt\nimport os"),
        ("mlx_harmony_tui.tools.registry", "from mlx_harmony_tui.chat.settings import ChatSettings"),
        ("mlx_harmony_tui.model.load", "from mlx_harmony_tui.demo.compact import install_compact"),
        ("mlx_harmony_tui.tui.app", "from mlx_harmony_tui.faces.common import parse_value"),
        ("mlx_harmony_tui.faces.chat_command", "from mlx_harmony_tui.controller import ChatController"),
        ("mlx_harmony_tui.controller.conversation", "from mlx_harmony_tui.backends.base import TurnRequest"),
        ("mlx_harmony_tui.harmony.stream", "from . import messages"),
    ],
)
def test_the_check_allows_downward_and_sideways_imports(module: str, source: str) -> None:
    assert upward_imports(source, module) == []

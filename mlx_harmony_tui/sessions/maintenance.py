"""``sessions migrate`` and ``sessions repair``: the only commands that rewrite or move files in the folder.

Both first make a plan (reading every file, writing nothing), then either print it (``--dry-run``) or carry it
out, so a dry run says exactly what the real run then does, line for line with "would" in front.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mlx_harmony_tui.sessions.migrations import SessionVersionError
from mlx_harmony_tui.sessions.schema import SCHEMA_VERSION, SchemaError, SessionError
from mlx_harmony_tui.sessions.store import NotRegularFileError, SessionStore, parse_session, read_regular


@dataclass(frozen=True)
class Step:
    """What happens to one file: ``migrate`` (from ``version``), ``damaged`` (moved aside by a repair or a
    migration), ``newer`` (a newer app's file: left alone, cannot be migrated), ``unreadable`` (an OS error)."""

    path: Path
    action: str
    detail: str = ""
    version: int = SCHEMA_VERSION


def plan(store: SessionStore) -> list[Step]:
    """Every session file that is not a readable current-version session, and what its problem is."""
    steps: list[Step] = []
    for path in sorted(store.root.glob("*.json")):
        if path.name.startswith("."):
            continue
        try:
            data = read_regular(path)
        except NotRegularFileError as e:
            steps.append(Step(path, "unreadable", str(e)))
            continue
        except OSError as e:
            steps.append(Step(path, "unreadable", e.strerror or str(e)))
            continue
        try:
            _, version = parse_session(data)
        except SessionVersionError as e:
            steps.append(Step(path, "newer", str(e)))
            continue
        except SchemaError as e:
            steps.append(Step(path, "damaged", str(e)))
            continue
        if version < SCHEMA_VERSION:
            steps.append(Step(path, "migrate", version=version))
    return steps


def _backup_name(path: Path, version: int) -> str:
    return f"{path.name.removesuffix('.json')}.v{version}.bak"


def migrate_all(store: SessionStore, dry_run: bool = False, *, only: tuple[str, ...] = ()) -> tuple[list[str], int]:
    """Carry out (or, with ``dry_run``, describe) the plan: old files are rewritten in the current schema
    with a one-time backup, damaged ones moved aside. ``only`` limits it to some actions (``repair`` passes
    ``("damaged",)``). Returns the report lines and how many files could not be migrated."""
    lines: list[str] = []
    failed = 0
    would = "would be " if dry_run else ""
    for step in plan(store):
        if only and step.action not in only:
            continue
        name = step.path.name
        if step.action == "migrate":
            target = f"v{step.version} -> v{SCHEMA_VERSION} (backup {_backup_name(step.path, step.version)})"
            if dry_run:
                lines.append(f"{name}: would be migrated {target}")
                continue
            try:
                store.save(store._read(step.path), touch=False)
            except SessionError as e:  # changed since the plan, or locked by a running app
                lines.append(f"{name}: not migrated: {e}")
                failed += 1
                continue
            lines.append(f"{name}: migrated {target}")
        elif step.action == "damaged":
            failed += 1
            if dry_run:
                lines.append(f"{name}: damaged ({step.detail}); would be moved aside to {name}.corrupt-<time>")
                continue
            if not step.path.exists():
                lines.append(f"{name}: gone before it could be moved aside")
                continue
            moved = store.quarantine(step.path, step.detail)
            store.problems.pop()  # reported here, not again as a problem
            lines.append(f"{name}: damaged ({step.detail}); moved aside to {moved.name}")
        else:
            failed += 1
            lines.append(f"{name}: {would}left as it is, cannot be migrated: {step.detail}")
    return lines, failed

"""The ordered chain of schema migrations: ``MIGRATIONS[n]`` turns a version-n document into version n+1.

Each step is a small pure function (dict in, new dict out, input untouched) so it can be tested on its own
fixture in the top-level ``sessions/`` folder. Opening an old file runs the chain in memory; only a save
writes the current version (after a one-time backup of the original).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mlx_harmony_tui.sessions.migrations import v1_to_v2, v2_to_v3, v3_to_v4
from mlx_harmony_tui.sessions.schema import SCHEMA_VERSION, SchemaError, SessionError

Migration = Callable[[dict[str, Any]], dict[str, Any]]

MIGRATIONS: dict[int, Migration] = {1: v1_to_v2.migrate, 2: v2_to_v3.migrate, 3: v3_to_v4.migrate}


class SessionVersionError(SessionError):
    """The file was written by a newer version of the app; it is left untouched."""


def document_version(doc: Any) -> int:
    """The schema version a document claims; SchemaError when it has none."""
    if not isinstance(doc, dict):
        raise SchemaError("session: must be a JSON object")
    version = doc.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise SchemaError("schema_version: missing or not a positive integer")
    return version


def migrate(doc: Any) -> tuple[dict[str, Any], int]:
    """Run the chain up to SCHEMA_VERSION; returns (current document, original version)."""
    original = version = document_version(doc)
    if version > SCHEMA_VERSION:
        raise SessionVersionError(
            f"schema_version {version} is newer than this app supports ({SCHEMA_VERSION}); upgrade mlx-harmony-tui"
        )
    while version < SCHEMA_VERSION:
        try:
            doc = MIGRATIONS[version](doc)
        except SessionError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise SchemaError(f"migration v{version}->v{version + 1} failed: {type(e).__name__}: {e}") from e
        version += 1
        if doc.get("schema_version") != version:
            raise SchemaError(f"migration to v{version} produced schema_version {doc.get('schema_version')}")
    return doc, original

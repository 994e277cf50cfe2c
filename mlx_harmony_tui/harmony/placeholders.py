"""Placeholders in system, developer and user prompt text: ``{date}``, ``{time}``, ``{datetime}``,
``{weekday}`` plus user-defined ones.

Unknown names are left as they are, so prompts that contain JSON or code survive unchanged; ``{{`` writes a
literal ``{`` (and ``{{name}}`` a literal ``{name}``). User messages should be expanded once, when sent, by
the chat layer: expanding history on every render would change old prompts (and the cached prefix).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime

_PATTERN = re.compile(r"\{\{(\w*)\}\}|\{\{|\{(\w+)\}")


def builtin_values(now: datetime | None = None) -> dict[str, str]:
    """The built-in placeholder values for ``now`` (local time when None)."""
    now = now or datetime.now()
    return {
        "date": now.strftime("%Y-%m-%d"),
        "time": now.strftime("%H:%M"),
        "datetime": now.strftime("%Y-%m-%d %H:%M"),
        "weekday": now.strftime("%A"),
    }


def expand_placeholders(text: str, values: Mapping[str, str] | None = None, now: datetime | None = None) -> str:
    """Replace ``{name}`` by its value; user ``values`` override the built-ins; unknown names stay as-is."""
    if "{" not in text:
        return text
    table = builtin_values(now)
    if values:
        table.update({str(k): str(v) for k, v in values.items()})

    def sub(m: re.Match[str]) -> str:
        if m.group(0).startswith("{{"):
            return "{" + m.group(1) + "}" if m.group(1) is not None else "{"
        name = m.group(2)
        return table.get(name, m.group(0))

    return _PATTERN.sub(sub, text)

"""v2 -> v3: per-message metrics, parameters, retries and the ``incomplete`` flag.

v2 kept only ``tokens`` and ``tok_s`` on assistant messages and marked an interrupted reply ``partial``.
v3 moves those into a ``metrics`` object (``generated_tokens``, ``decode_tps``), renames ``partial`` to
``incomplete`` and adds optional ``params`` / ``retries`` / ``extra`` (absent = none), so v2 files need no
new data, only the renames.
"""

from __future__ import annotations

import copy
from typing import Any


def migrate(doc: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    if not isinstance(doc.get("messages"), list):
        raise TypeError("messages must be a list")
    for i, m in enumerate(doc["messages"]):
        if not isinstance(m, dict):
            raise TypeError(f"messages[{i}] must be an object")
        metrics: dict[str, Any] = {}
        if "tokens" in m:
            metrics["generated_tokens"] = m.pop("tokens")
        if "tok_s" in m:
            metrics["decode_tps"] = m.pop("tok_s")
        if metrics:
            m["metrics"] = metrics
        if m.pop("partial", False):
            m["incomplete"] = True
    doc["schema_version"] = 3
    return doc

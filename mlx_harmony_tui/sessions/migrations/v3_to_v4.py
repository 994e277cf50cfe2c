"""v3 -> v4: branches. A session may keep other versions of its conversation (an edited user message, a
regenerated reply) in ``alternatives``, each message with the ``parent`` it follows; ``messages`` stays the
active branch, so a v3 conversation is a v4 one with no alternatives. A v3 file written by a newer app may
hold an ``alternatives`` key in ``extra`` (unknown keys are kept there): it is not trusted as branches and
stays where it is.
"""

from __future__ import annotations

import copy
from typing import Any


def migrate(doc: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    if not isinstance(doc.get("messages"), list):
        raise TypeError("messages must be a list")
    if "alternatives" in doc:  # not a v3 field: keep it verbatim rather than read it as branches
        doc.setdefault("extra", {})["v3_alternatives"] = doc.pop("alternatives")
    doc["schema_version"] = 4
    return doc

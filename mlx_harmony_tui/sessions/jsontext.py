"""Text that is not text: lone surrogates. JSON may spell them (``"\\ud800"``), Python then holds a string
that cannot be encoded, printed, rendered for the model or written back, and every face crashed on it.

Session documents are cleaned when they are read (a lone surrogate becomes U+FFFD, the replacement
character, as undecodable bytes are everywhere else), so nothing past the reader ever sees one; the file on
disk is not changed by reading. ``dumps`` is the writer's safety net: should one still reach it, it is
written as its ``\\uXXXX`` escape (valid JSON) instead of failing the save.
"""

from __future__ import annotations

import json
import re
from typing import Any

_LONE = re.compile("[\ud800-\udfff]")
_ESCAPED = re.compile(rb"\\u[dD][89a-fA-F]")  # a surrogate escape in raw JSON (paired or not)


def might_hold_surrogates(data: bytes) -> bool:
    """Cheap test on raw JSON bytes: strict UTF-8 never decodes to surrogates, only escapes can."""
    return _ESCAPED.search(data) is not None


def clean(doc: Any) -> Any:
    """``doc`` (a parsed JSON value) with every lone surrogate in strings and keys replaced by U+FFFD, in
    place where it can be; iterative, so a deeply nested document cannot overflow the stack."""
    if isinstance(doc, str):
        return _LONE.sub("\ufffd", doc)
    stack: list[Any] = [doc]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            for i, v in enumerate(item):
                if isinstance(v, str):
                    item[i] = _LONE.sub("\ufffd", v)
                elif isinstance(v, list | dict):
                    stack.append(v)
        elif isinstance(item, dict):
            for k in [k for k in item if isinstance(k, str) and _LONE.search(k)]:
                item[_LONE.sub("\ufffd", k)] = item.pop(k)
            for k, v in item.items():
                if isinstance(v, str):
                    item[k] = _LONE.sub("\ufffd", v)
                elif isinstance(v, list | dict):
                    stack.append(v)
    return doc


def loads(data: bytes) -> Any:
    """``json.loads`` of UTF-8 bytes, cleaned of lone surrogates."""
    doc = json.loads(data.decode("utf-8"))
    return clean(doc) if might_hold_surrogates(data) else doc


def dumps(doc: Any, **kwargs: Any) -> bytes:
    """UTF-8 JSON that never fails on a lone surrogate (written as its escape)."""
    text = json.dumps(doc, ensure_ascii=False, **kwargs)
    return _LONE.sub(lambda m: f"\\u{ord(m.group()):04x}", text).encode("utf-8")

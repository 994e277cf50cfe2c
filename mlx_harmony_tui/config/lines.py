"""Where a key stands in the TOML text, so that problems can name the line (tomllib keeps no positions)."""

from __future__ import annotations

import re


def dotted(path: tuple[str | int, ...]) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out


_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?")
_KEY = re.compile(
    r"""^\s*((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*="""
)


def _split_key(key: str) -> list[str]:
    parts = re.findall(r""""([^"]*)"|'([^']*)'|([A-Za-z0-9_-]+)""", key)
    return [a or b or c for a, b, c in parts]


def find_line(text: str, path: tuple[str | int, ...]) -> int | None:
    """1-based line where ``path`` is set (or its nearest enclosing table), found by scanning the text."""
    if not text or not path:
        return None
    table: tuple[str | int, ...] = ()
    counts: dict[tuple[str, ...], int] = {}
    best: tuple[int, int] | None = None  # (matched length, line)
    multiline = False
    for lineno, line in enumerate(text.splitlines(), 1):
        if multiline:
            if line.count('"""') % 2 or line.count("'''") % 2:
                multiline = False
            continue
        entry: tuple[str | int, ...] | None = None
        m = _HEADER.match(line)
        if m and not _KEY.match(line):
            names = tuple(_split_key(m.group(2)))
            if m.group(1) == "[[":
                counts[names] = counts.get(names, -1) + 1
                table = (*names, counts[names])
            else:
                # a sub-table of an array of tables refers to its latest element
                base: tuple[str | int, ...] = ()
                for n in names:
                    base = (*base, n)
                    if tuple(str(x) for x in base if isinstance(x, str)) in counts and isinstance(
                        base[-1], str
                    ):
                        key = tuple(x for x in base if isinstance(x, str))
                        base = (*base, counts[key])
                table = base
            entry = table
        else:
            k = _KEY.match(line)
            if k:
                entry = (*table, *_split_key(k.group(1)))
                rest = line[k.end() :]
                if rest.count('"""') == 1 or rest.count("'''") == 1:
                    multiline = True
        if entry is None:
            continue
        n = 0
        while n < min(len(entry), len(path)) and entry[n] == path[n]:
            n += 1
        if n == len(entry) and (best is None or n > best[0]):
            best = (n, lineno)
            if n == len(path):
                return lineno
    return best[1] if best else None

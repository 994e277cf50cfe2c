"""Reading one Harmony message header as GPT-OSS really writes it, damaged ones included.

A header is the text between ``<|start|>``/``<|channel|>`` and ``<|message|>``; the stream (harmony/stream.py)
hands it over with special tokens as ``\\x01name\\x01`` markers. Leaked special tokens, glued content types and
header words that are really content are sorted out here; every repair is a note the stream reports.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

CHANNELS: tuple[str, ...] = ("analysis", "commentary", "final")
MAX_HEADER_TOKENS = 48  # a real header is ~5-15 tokens; past this the "header" is content
_CHANNEL_RE = re.compile(r"analysis|commentary|final", re.IGNORECASE)
_ITEM_RE = re.compile(r"\x01(\w+)\x01|(\s+)|([^\s\x01]+)")
_RECIPIENT_RE = re.compile(r"to=([A-Za-z0-9_.\-:/]*)")
_CTYPE_RE = re.compile(r"^[a-z][a-z0-9_+./-]{0,30}$")
_CTYPE_GLUED_RE = re.compile(r"^(json|code|text)(?=[\[{\"])")
_CTYPE_WORDS = ("json", "code", "text")
_ROLE_WORDS = ("user", "system", "developer", "tool")
_TOOL_AUTHOR_RE = re.compile(r"^(functions\.|browser\.|container\.|python$)")


@dataclass
class Header:
    """What a (possibly malformed) header says; ``content_at`` is where leaked content starts in its text."""

    role: str | None = None
    channel: str | None = None
    recipient: str | None = None
    content_type: str | None = None
    content_at: int | None = None
    words: int = 0
    notes: list[tuple[str, str]] = field(default_factory=list)


def parse_header(text: str, complete: bool, expect_role: bool = False) -> Header:
    """Read a header string in which special tokens appear as ``\\x01name\\x01`` markers.

    ``complete`` is False while tokens are still arriving: the last word may be unfinished, so nothing is
    decided from it. ``expect_role`` is True after an explicit ``<|start|>`` (a role word comes first).
    """
    h = Header()
    items = list(_ITEM_RE.finditer(text))
    expect_channel = False
    constrain = False
    ct_candidate: tuple[str, int] | None = None
    for idx, m in enumerate(items):
        marker, space, word = m.group(1), m.group(2), m.group(3)
        if marker is not None:
            if marker == "channel":
                if h.channel is not None:
                    h.notes.append(("special_in_header", "a second <|channel|> in one header"))
                expect_channel = True
            elif marker == "constrain":
                constrain = True
            else:
                h.notes.append(("stray_token", f"<|{marker}|> inside a header"))
            continue
        if space is not None:
            if "\n" in space and (h.channel is not None or (h.words and not expect_channel)):
                if ct_candidate is not None:  # "analysis we\n..." - the candidate word was content
                    h.content_at = ct_candidate[1]
                else:
                    h.content_at = m.end()
                break
            continue
        last_open = idx == len(items) - 1 and not complete
        if last_open and len(word) < 40:
            break  # unfinished word: decide when more arrives
        h.words += 1
        start = m.start()
        if expect_channel:
            expect_channel = False
            found = _CHANNEL_RE.search(word)
            if found is None and (h.channel is not None or h.recipient is not None) and h.content_type is None and (
                constrain or word in _CTYPE_WORDS or _CTYPE_GLUED_RE.match(word)
            ):
                # "to=functions.f<|channel|> json": a leaked token before the content type; the word is the
                # content type (read below), not the first words of the arguments
                h.notes.append(("special_in_header", f"<|channel|> before the content type {word!r}"))
            elif found is None:
                h.notes.append(("unknown_channel", repr(word)))
                h.content_at = start
                break
            else:
                name = found.group(0).lower()
                if h.channel is None:
                    h.channel = name
                    if word != found.group(0) or found.group(0) != name:
                        h.notes.append(("channel_name", f"{word!r} read as {name!r}"))
                elif name != h.channel:
                    h.notes.append(("special_in_header", f"second channel {name!r} ignored"))
                continue
        if word.startswith("to="):
            rm = _RECIPIENT_RE.match(word)
            rec = rm.group(1) if rm else ""
            rec = rec.rstrip(".")
            if not rec:
                h.notes.append(("empty_recipient", repr(word)))
            elif h.recipient is None:
                h.recipient = rec
            elif rec != h.recipient:
                h.notes.append(("special_in_header", f"second recipient {rec!r} ignored"))
            if rm and rm.end() < len(word):
                h.content_at = start + rm.end()
                break
            continue
        if constrain:
            constrain = False
            glued = _CTYPE_GLUED_RE.match(word)
            if glued:
                h.content_type = "<|constrain|>" + glued.group(1)
                h.content_at = start + glued.end()
                break
            h.content_type = "<|constrain|>" + word
            continue
        if h.channel is None and h.recipient is None and h.role is None and h.words == 1:
            if word == "assistant" or (expect_role and (word in _ROLE_WORDS or _TOOL_AUTHOR_RE.match(word))):
                h.role = word
                if not expect_role:
                    h.notes.append(("missing_start", "role word without <|start|>"))
                continue
        if (h.channel is not None or h.recipient is not None) and h.content_type is None and ct_candidate is None:
            glued = _CTYPE_GLUED_RE.match(word)
            if glued:
                h.content_type = glued.group(1)
                h.content_at = start + glued.end()
                break
            if _CTYPE_RE.match(word):
                ct_candidate = (word, start)
                continue
        h.content_at = ct_candidate[1] if ct_candidate is not None else start
        break
    else:
        if ct_candidate is not None and complete:
            h.content_type = ct_candidate[0]
    if h.content_at is not None and ct_candidate is not None and h.content_at == ct_candidate[1]:
        h.content_type = None
    return h

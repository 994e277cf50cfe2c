"""Dialogue text (``user:`` / ``assistant:`` / ``tool:`` lines) -> a session or prompt-config examples.

A role line starts a message; following lines (blank ones included) continue it until the next role line,
so multi-line content survives. Role names are case-insensitive. Text before the first role line is an
error that names the line, rather than being guessed at.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import tomli_w

from mlx_harmony_tui.sessions.schema import Message, Session, SessionError, auto_title, new_id, now_iso

_ROLE_LINE = re.compile(r"^\s*(user|assistant|tool)\s*:[ \t]?(.*)$", re.IGNORECASE)


class DialogueError(SessionError):
    """The dialogue text cannot be converted; the message names the line."""


def parse_dialogue(text: str, source: str = "dialogue") -> list[dict[str, str]]:
    """[{role, content}] in order; content keeps inner newlines, outer blank lines are trimmed."""
    turns: list[dict[str, str]] = []
    lines: list[str] = []
    role: str | None = None

    def flush() -> None:
        if role is not None:
            turns.append({"role": role, "content": "\n".join(lines).strip("\n").rstrip()})

    for n, line in enumerate(text.splitlines(), 1):
        m = _ROLE_LINE.match(line)
        if m:
            flush()
            role, lines = m.group(1).lower(), [m.group(2)]
        elif role is None:
            if line.strip():
                raise DialogueError(
                    f"{source}:{n}: text before the first 'user:' / 'assistant:' / 'tool:' line: {line.strip()[:40]!r}"
                )
        else:
            lines.append(line)
    flush()
    if not turns:
        raise DialogueError(f"{source}: no 'user:' / 'assistant:' / 'tool:' lines found")
    return turns


def dialogue_to_session(text: str, title: str = "", source: str = "dialogue") -> Session:
    session = Session(id=new_id(), title=title)
    stamp = now_iso()
    for i, turn in enumerate(parse_dialogue(text, source)):
        role = turn["role"]
        session.messages.append(Message(
            id=f"m{i}", role=role, content=turn["content"], created_at=stamp,  # type: ignore[arg-type]
            channel="final" if role == "assistant" else ("commentary" if role == "tool" else None),
            recipient="assistant" if role == "tool" else None,
        ))
    session.title = session.title or auto_title(session) or "dialogue"
    return session


def dialogue_to_examples(text: str, fmt: str = "json", source: str = "dialogue") -> str:
    """Example dialogue for the prompt config: a JSON list of {role, content}, or TOML ``[[examples]]``."""
    turns = parse_dialogue(text, source)
    if fmt == "json":
        return json.dumps(turns, ensure_ascii=False, indent=2) + "\n"
    if fmt == "toml":
        return tomli_w.dumps({"examples": turns}, multiline_strings=True)
    raise DialogueError(f"unknown examples format {fmt!r} (use json or toml)")


def read_dialogue(path: Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DialogueError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DialogueError(f"{path}: cannot read ({e})") from None

"""Type and range checks of raw TOML data against the schema's dataclasses.

Every bad value becomes a ``ConfigProblem`` naming file, line and key, and the key falls back to its default:
a bad config never stops the app."""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

from mlx_harmony_tui.config.lines import dotted, find_line
from mlx_harmony_tui.config.schema import ConfigProblem
from mlx_harmony_tui.tools.functions import NAME_RE, FunctionToolConfig
from mlx_harmony_tui.tools.mcp import SEPARATOR, McpServerConfig


class Bad(Exception):
    pass


RANGES: dict[str, tuple[float | None, float | None]] = {
    "temperature": (0.0, None),
    "top_p": (0.0, 1.0),
    "min_p": (0.0, 1.0),
    "top_k": (0, None),
    "repetition_penalty": (0.0, None),
    "seed": (0, 2**64 - 1),  # the sampler's seed is an unsigned 64-bit integer
    "repetition_context": (0, 131072),  # the penalty keeps a window this long: no context is longer
    "max_tokens": (1, None),
    "context_limit": (1, None),
    "prefill_step": (16, 65536),
    "timeout_s": (0.001, None),
    "memory_mb": (16, None),
    "max_output_chars": (100, None),
    "max_bytes": (1, None),
    "view_lines": (1, None),
    "wrap_width": (20, None),
}


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is list:  # "a list of strings", "a list of tables"
        item = typing.get_args(tp)[0]
        plural = {str: "strings", int: "integers", float: "numbers", bool: "booleans"}.get(item)
        return f"a list of {plural or _type_name(item).removeprefix('a ').removeprefix('an ') + 's'}"
    if origin is dict:
        return "a table"
    if dataclasses.is_dataclass(tp):
        return "a table"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(tp, str(tp))


def check(value: Any, tp: Any) -> Any:
    """Return ``value`` converted to ``tp`` (int -> float only) or raise Bad."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(options) == 1:  # X | None: X's own message ("expected a finite number, got nan")
            return check(value, options[0])
        for arg in typing.get_args(tp):
            if arg is type(None):
                continue
            try:
                return check(value, arg)
            except Bad:
                pass
        raise Bad(f"expected {_type_name(tp)}")
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise Bad(f"expected {_type_name(tp)}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise Bad(f"expected {_type_name(tp)}")
        return [check(v, typing.get_args(tp)[0]) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise Bad("expected a table")
        return {str(k): check(v, typing.get_args(tp)[1]) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):  # TOML has nan and inf: e.g. timeout_s = inf would mean no timeout
                raise Bad(f"expected a finite number, got {value}")
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            return value
    raise Bad(f"expected {_type_name(tp)}, got {type(value).__name__} {value!r}"[:200])


def toml_fields(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.metadata.get("toml", True)}


class Validator:
    """Walks raw TOML data against the dataclasses, collecting problems and returning only the valid parts."""

    def __init__(self, file: Path | None, text: str, prefix: tuple[str | int, ...] = ()) -> None:
        self.file, self.text, self.prefix = file, text, prefix
        self.problems: list[ConfigProblem] = []

    def problem(self, path: tuple[str | int, ...], message: str) -> None:
        full = self.prefix + path
        self.problems.append(ConfigProblem(self.file, find_line(self.text, full), dotted(full), message))

    def clean(self, cls: type, data: dict[str, Any], path: tuple[str | int, ...] = ()) -> dict[str, Any]:
        fields = toml_fields(cls)
        out: dict[str, Any] = {}
        for key, value in data.items():
            kpath = (*path, key)
            if key not in fields:
                close = difflib.get_close_matches(key, list(fields), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self.problem(kpath, f"unknown key{hint}; ignored")
                continue
            tp = fields[key]
            try:
                checked = check(value, tp)
            except Bad as e:
                self.problem(kpath, f"{e}; using the default")
                continue
            if dataclasses.is_dataclass(tp):
                checked = self.clean(tp, checked, kpath)  # type: ignore[arg-type]
            elif typing.get_origin(tp) is list and dataclasses.is_dataclass(typing.get_args(tp)[0]):
                item_cls = typing.get_args(tp)[0]
                checked = [self.clean(item_cls, item, (*kpath, i)) for i, item in enumerate(checked)]
                if item_cls is FunctionToolConfig:
                    checked = self._functions(checked, kpath)
                elif item_cls is McpServerConfig:
                    checked = self._mcp_servers(checked, kpath)
            elif key in RANGES and isinstance(checked, int | float):
                lo, hi = RANGES[key]
                if (lo is not None and checked < lo) or (hi is not None and checked > hi):
                    span = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
                    self.problem(kpath, f"must be {span}, got {checked}; using the default")
                    continue
            out[key] = checked
        return out

    def _functions(self, items: list[dict[str, Any]], path: tuple[str | int, ...]) -> list[dict[str, Any]]:
        good: list[dict[str, Any]] = []
        seen: set[str] = set()
        for i, item in enumerate(items):
            name = item.get("name", "")
            if not re.match(NAME_RE, name):
                self.problem(
                    (*path, i, "name"), f"function name {name!r} must be letters, digits, _ or -; skipped"
                )
            elif name in seen:
                self.problem((*path, i, "name"), f"function {name!r} is defined twice; the second is skipped")
            elif not item.get("command"):
                self.problem((*path, i), f"function {name!r} has no command; skipped")
            elif (why := FunctionToolConfig(**item).problem()) and "cannot be split" in why:
                self.problem((*path, i, "command"), f"function {name!r}: {why}; skipped")
            else:
                if why and not why.endswith(("does not exist", "not on the PATH")):  # may appear later
                    self.problem((*path, i, "command"), f"function {name!r} cannot start: {why}")
                seen.add(name)
                good.append(item)
        return good

    def _mcp_servers(self, items: list[dict[str, Any]], path: tuple[str | int, ...]) -> list[dict[str, Any]]:
        """A server needs a name (it prefixes its tools' names) and exactly one of command / url."""
        good: list[dict[str, Any]] = []
        seen: set[str] = set()
        for i, item in enumerate(items):
            name = item.get("name", "")
            if not re.match(NAME_RE, name) or SEPARATOR in name:
                self.problem(
                    (*path, i, "name"),
                    f"MCP server name {name!r} must be letters, digits, _ or - (no '{SEPARATOR}'); skipped",
                )
            elif name in seen:
                self.problem(
                    (*path, i, "name"), f"MCP server {name!r} is defined twice; the second is skipped"
                )
            elif bool(item.get("command")) == bool(item.get("url")):
                self.problem((*path, i), f"MCP server {name!r} needs either command or url; skipped")
            else:
                seen.add(name)
                good.append(item)
        return good

"""The TOML config file, profiles, and the one place hyperparameter precedence is decided.

Bad content never stops the app: every invalid value, wrong type or unknown key (typo) becomes a
``ConfigProblem`` naming the file, line and key, and that part falls back to its default. Only an explicitly
given ``--config`` path that does not exist raises (``ConfigError``), because then the user asked for a file.

Precedence for generation settings: command line > session > profile > config file > model defaults, all in
``resolve_settings``.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import tempfile
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import tomli_w

from mlx_harmony_tui import paths
from mlx_harmony_tui.chat.settings import ChatSettings, FunctionTool
from mlx_harmony_tui.engine.sampling import SamplingParams
from mlx_harmony_tui.errors import UserError
from mlx_harmony_tui.tools.browser import BrowserToolConfig
from mlx_harmony_tui.tools.functions import NAME_RE, FunctionToolConfig
from mlx_harmony_tui.tools.python import PythonToolConfig


class ConfigError(UserError):
    """The config file the user named cannot be used at all (missing, unreadable)."""


@dataclass(frozen=True)
class ConfigProblem:
    file: Path | None
    line: int | None
    key: str | None
    message: str

    def __str__(self) -> str:
        where = str(self.file) if self.file else "<config>"
        if self.line is not None:
            where += f":{self.line}"
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


@dataclass
class RemoteConfig:
    """An OpenAI-compatible endpoint; the key is read from the named environment variable, never stored."""

    endpoint: str = ""
    api_key_env: str = "OPENAI_API_KEY"
    model: str = ""


@dataclass
class SamplingConfig:
    """``[sampling]``: unset (None) values fall through to the model's defaults."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    max_tokens: int | None = None
    seed: int | None = None
    context_limit: int | None = None


@dataclass
class ToolsConfig:
    python: PythonToolConfig = field(default_factory=PythonToolConfig)
    browser: BrowserToolConfig = field(default_factory=BrowserToolConfig)
    functions: list[FunctionToolConfig] = field(default_factory=list)
    max_output_chars: int = 20000


_INTERNAL = {"toml": False}  # metadata: not a config-file key


@dataclass
class AppConfig:
    model: str = ""  # default model: a path or a name found in models_dirs
    models_dirs: list[str] = field(default_factory=list)
    profile: str = ""  # profile used when --profile is not given
    theme: str = "textual-dark"
    reasoning_effort: Literal["low", "medium", "high"] | None = None
    system_prompt: str | None = None
    developer_prompt: str | None = None  # becomes ChatSettings.instructions
    remote: RemoteConfig = field(default_factory=RemoteConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    placeholders: dict[str, str] = field(default_factory=dict)
    tools: ToolsConfig = field(default_factory=ToolsConfig)
    keymap: dict[str, str] = field(default_factory=dict)  # action id -> keys, e.g. "ctrl+s"
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)  # raw [profiles.NAME] tables
    # filled by load_config:
    source: Path | None = field(default=None, metadata=_INTERNAL)
    active_profile: str | None = field(default=None, metadata=_INTERNAL)
    layers: dict[str, dict[str, Any]] = field(default_factory=dict, metadata=_INTERNAL)  # "config"/"profile"

    def settings_layers(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(profile, config) flat settings for ``resolve_settings``."""
        return self.layers.get("profile", {}), self.layers.get("config", {})


# ---------------------------------------------------------------------------------------------------------
# validation


class _Bad(Exception):
    pass


_RANGES: dict[str, tuple[float | None, float | None]] = {
    "temperature": (0.0, None),
    "top_p": (0.0, 1.0),
    "min_p": (0.0, 1.0),
    "top_k": (0, None),
    "repetition_penalty": (0.0, None),
    "max_tokens": (1, None),
    "context_limit": (1, None),
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
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a table"
    if dataclasses.is_dataclass(tp):
        return "a table"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(tp, str(tp))


def _check(value: Any, tp: Any) -> Any:
    """Return ``value`` converted to ``tp`` (int -> float only) or raise _Bad."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        for arg in typing.get_args(tp):
            if arg is type(None):
                continue
            try:
                return _check(value, arg)
            except _Bad:
                pass
        raise _Bad(f"expected {_type_name(tp)}")
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise _Bad(f"expected {_type_name(tp)}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise _Bad(f"expected {_type_name(tp)}")
        return [_check(v, typing.get_args(tp)[0]) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise _Bad("expected a table")
        return {str(k): _check(v, typing.get_args(tp)[1]) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            return value
    raise _Bad(f"expected {_type_name(tp)}, got {type(value).__name__} {value!r}"[:200])


def _toml_fields(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.metadata.get("toml", True)}


class _Validator:
    """Walks raw TOML data against the dataclasses, collecting problems and returning only the valid parts."""

    def __init__(self, file: Path | None, text: str, prefix: tuple[str | int, ...] = ()) -> None:
        self.file, self.text, self.prefix = file, text, prefix
        self.problems: list[ConfigProblem] = []

    def problem(self, path: tuple[str | int, ...], message: str) -> None:
        full = self.prefix + path
        self.problems.append(ConfigProblem(self.file, find_line(self.text, full), _dotted(full), message))

    def clean(self, cls: type, data: dict[str, Any], path: tuple[str | int, ...] = ()) -> dict[str, Any]:
        fields = _toml_fields(cls)
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
                checked = _check(value, tp)
            except _Bad as e:
                self.problem(kpath, f"{e}; using the default")
                continue
            if dataclasses.is_dataclass(tp):
                checked = self.clean(tp, checked, kpath)  # type: ignore[arg-type]
            elif typing.get_origin(tp) is list and dataclasses.is_dataclass(typing.get_args(tp)[0]):
                item_cls = typing.get_args(tp)[0]
                checked = [self.clean(item_cls, item, (*kpath, i)) for i, item in enumerate(checked)]
                if item_cls is FunctionToolConfig:
                    checked = self._functions(checked, kpath)
            elif key in _RANGES and isinstance(checked, int | float):
                lo, hi = _RANGES[key]
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
            else:
                seen.add(name)
                good.append(item)
        return good


def _dotted(path: tuple[str | int, ...]) -> str:
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


# ---------------------------------------------------------------------------------------------------------
# loading


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _build(cls: type, clean: dict[str, Any]) -> Any:
    """Instantiate a dataclass from already-validated data."""
    fields = _toml_fields(cls)
    kwargs: dict[str, Any] = {}
    for key, value in clean.items():
        tp = fields[key]
        if dataclasses.is_dataclass(tp):
            value = _build(tp, value)  # type: ignore[arg-type]
        elif typing.get_origin(tp) is list and dataclasses.is_dataclass(typing.get_args(tp)[0]):
            value = [_build(typing.get_args(tp)[0], v) for v in value]
        kwargs[key] = value
    return cls(**kwargs)


def _read_toml(path: Path, problems: list[ConfigProblem]) -> tuple[dict[str, Any], str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        problems.append(ConfigProblem(path, None, None, f"not UTF-8 text ({e.reason}); ignoring the file"))
        return {}, ""
    except OSError as e:
        problems.append(ConfigProblem(path, None, None, f"cannot read: {e.strerror}; ignoring the file"))
        return {}, ""
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(e))
        line = int(m.group(1)) if m else None
        msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(e))
        col = f" (column {m.group(2)})" if m else ""
        problems.append(
            ConfigProblem(path, line, None, f"invalid TOML: {msg}{col}; using defaults for the whole file")
        )
        return {}, text


_SAMPLING_KEYS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "max_tokens",
    "seed",
    "context_limit",
)


def _flat_settings(clean: dict[str, Any], merged: dict[str, Any]) -> dict[str, Any]:
    """The generation settings one layer sets (only what it sets), in resolve_settings' flat keys."""
    out = {k: v for k, v in clean.get("sampling", {}).items() if k in _SAMPLING_KEYS}
    for key in ("reasoning_effort", "system_prompt"):
        if key in clean:
            out[key] = clean[key]
    if "developer_prompt" in clean:
        out["instructions"] = clean["developer_prompt"]
    tools = clean.get("tools", {})
    if "enabled" in tools.get("python", {}) or "enabled" in tools.get("browser", {}):
        mt = merged.get("tools", {})
        out["builtin_tools"] = [n for n in ("browser", "python") if mt.get(n, {}).get("enabled", False)]
    return out


def load_config(
    path: Path | None = None, profile: str | None = None
) -> tuple[AppConfig, list[ConfigProblem]]:
    """Read the config (and a profile); never raises for bad content, only for a missing explicit path."""
    problems: list[ConfigProblem] = []
    explicit = path is not None
    path = Path(path).expanduser() if path is not None else paths.config_file()
    raw: dict[str, Any] = {}
    text = ""
    if path.exists():
        raw, text = _read_toml(path, problems)
    elif explicit:
        raise ConfigError(f"config file {path} does not exist")
    v = _Validator(path, text)
    base = v.clean(AppConfig, raw)
    problems += v.problems
    merged = base
    profile_clean: dict[str, Any] = {}
    name = profile or base.get("profile") or None
    if name:
        profile_clean, pproblems = _load_profile(name, base, path, text)
        problems += pproblems
        merged = _deep_merge(base, profile_clean)
    config: AppConfig = _build(AppConfig, merged)
    config.source = path
    config.active_profile = name if name and (profile_clean or name in base.get("profiles", {})) else None
    config.layers = {"config": _flat_settings(base, base), "profile": _flat_settings(profile_clean, merged)}
    return config, problems


def _load_profile(
    name: str, base: dict[str, Any], path: Path, text: str
) -> tuple[dict[str, Any], list[ConfigProblem]]:
    problems: list[ConfigProblem] = []
    out: dict[str, Any] = {}
    found = False
    table = base.get("profiles", {}).get(name)
    if table is not None:
        found = True
        if not isinstance(table, dict):
            problems.append(
                ConfigProblem(
                    path, find_line(text, ("profiles", name)), f"profiles.{name}", "must be a table"
                )
            )
        else:
            v = _Validator(path, text, ("profiles", name))
            out = v.clean(AppConfig, {k: t for k, t in table.items() if k not in ("profiles", "profile")})
            for k in sorted(("profiles", "profile") & table.keys()):
                v.problem((k,), "not allowed inside a profile; ignored")
            problems += v.problems
    pfile = paths.config_dir() / "profiles" / f"{name}.toml"
    if re.match(r"^[A-Za-z0-9_.-]+$", name) and pfile.exists():
        found = True
        praw, ptext = _read_toml(pfile, problems)
        v = _Validator(pfile, ptext)
        out = _deep_merge(
            out, v.clean(AppConfig, {k: t for k, t in praw.items() if k not in ("profiles", "profile")})
        )
        for k in sorted(("profiles", "profile") & praw.keys()):
            v.problem((k,), "not allowed inside a profile; ignored")
        problems += v.problems
    if not found:
        known = sorted(set(base.get("profiles", {})) | set(list_profile_files()))
        problems.append(
            ConfigProblem(
                path,
                None,
                "profile",
                f"profile {name!r} not found (known: {', '.join(known) or 'none'}); using no profile",
            )
        )
    return out, problems


def list_profile_files() -> list[str]:
    d = paths.config_dir() / "profiles"
    return sorted(p.stem for p in d.glob("*.toml")) if d.is_dir() else []


def list_profiles(config: AppConfig) -> list[str]:
    """Profiles from ``[profiles.*]`` tables and from config_dir()/profiles/*.toml."""
    return sorted(set(config.profiles) | set(list_profile_files()))


# ---------------------------------------------------------------------------------------------------------
# saving


def _to_toml(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            if not f.metadata.get("toml", True):
                continue
            value = _to_toml(getattr(obj, f.name))
            if value is None or value == {} and f.name in ("profiles",):
                continue
            out[f.name] = value
        return out
    if isinstance(obj, list):
        return [_to_toml(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _to_toml(v) for k, v in obj.items() if v is not None}
    return obj


def _write_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = tomli_w.dumps(data).encode("utf-8")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_config(config: AppConfig, path: Path | None = None) -> Path:
    """Write the whole config (atomically). Comments are not kept; prefer ``set_value`` for one change."""
    target = Path(path) if path is not None else (config.source or paths.config_file())
    _write_atomic(target, _to_toml(config))
    return target


def set_value(path: Path | None, dotted_key: str, value: Any) -> Path:
    """Change one key (e.g. ``"theme"`` or ``"tools.python.enabled"``), keeping every other value.

    Refuses (ConfigError) to touch a file that is not valid TOML, so a broken file is never overwritten.
    """
    target = Path(path) if path is not None else paths.config_file()
    data: dict[str, Any] = {}
    if target.exists():
        try:
            data = tomllib.loads(target.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(
                f"{target} is not valid TOML ({e}); fix it before changing settings from the app"
            ) from None
    keys = dotted_key.split(".")
    node = data
    for k in keys[:-1]:
        child = node.setdefault(k, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{target}: cannot set {dotted_key}: {k} is not a table")
        node = child
    if value is None:
        node.pop(keys[-1], None)
    else:
        node[keys[-1]] = value
    _write_atomic(target, data)
    return target


# ---------------------------------------------------------------------------------------------------------
# precedence


_SETTING_TYPES: dict[str, Any] = {
    "temperature": float,
    "top_p": float,
    "top_k": int,
    "min_p": float,
    "repetition_penalty": float,
    "repetition_context": int,
    "logit_bias": dict[str, float],
    "max_tokens": int,
    "reasoning_effort": Literal["low", "medium", "high"],
    "instructions": str,
    "system_prompt": str,
    "knowledge_cutoff": str,
    "conversation_date": str,
    "builtin_tools": list[str],
    "function_tools": list[Any],
    "context_limit": int,
    "seed": int,
    "max_tool_rounds": int,
    "max_retries": int,
}
_SAMPLING_FIELDS = {f.name for f in dataclasses.fields(SamplingParams)}
LEVELS = ("model_defaults", "config", "profile", "session", "cli")  # lowest to highest


def resolve_settings(
    *,
    cli: dict[str, Any],
    session: dict[str, Any],
    profile: dict[str, Any],
    config: dict[str, Any],
    model_defaults: dict[str, Any],
) -> ChatSettings:
    """Merge flat setting dicts; a higher level wins wherever it sets a value (None = not set).

    Keys that are not settings are ignored, so callers can pass ``vars(args)`` or a whole session header.
    A value of the wrong type raises ConfigError naming the level and key.
    """
    merged: dict[str, Any] = {}
    layers = {
        "model_defaults": model_defaults,
        "config": config,
        "profile": profile,
        "session": session,
        "cli": cli,
    }
    for level in LEVELS:
        for key, value in (layers[level] or {}).items():
            if key not in _SETTING_TYPES or value is None:
                continue
            try:
                merged[key] = _check(value, _SETTING_TYPES[key])
            except _Bad as e:
                raise ConfigError(f"{level} setting {key}: {e}") from None
            if key in _RANGES and isinstance(merged[key], int | float):
                lo, hi = _RANGES[key]
                if (lo is not None and merged[key] < lo) or (hi is not None and merged[key] > hi):
                    raise ConfigError(f"{level} setting {key}: {merged[key]} is out of range")
    sampling = SamplingParams(
        **{k: v for k, v in merged.items() if k in _SAMPLING_FIELDS and k != "logit_bias"}
    )
    if "logit_bias" in merged:
        sampling.logit_bias = {int(k): float(v) for k, v in merged["logit_bias"].items()}
    rest = {k: v for k, v in merged.items() if k not in _SAMPLING_FIELDS}
    if "function_tools" in rest:
        rest["function_tools"] = [
            t if isinstance(t, FunctionTool) else FunctionTool(**t) for t in rest["function_tools"]
        ]
    return ChatSettings(sampling=sampling, **rest)


def read_model_defaults(model_dir: Path) -> dict[str, Any]:
    """The lowest precedence level: sampling values from the model's generation_config.json, if any."""
    file = Path(model_dir) / "generation_config.json"
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    if not isinstance(data, dict):
        return {}
    out = {k: data[k] for k in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty") if k in data}
    if isinstance(data.get("max_new_tokens"), int):
        out["max_tokens"] = data["max_new_tokens"]
    if data.get("do_sample") is False:
        out["temperature"] = 0.0
    return out


def settings_from_config(
    config: AppConfig, *, cli: dict[str, Any] | None = None, session: dict[str, Any] | None = None,
    model_dir: Path | None = None,
) -> ChatSettings:  # fmt: skip
    """Convenience for faces: resolve_settings with the loaded config's layers and the model's defaults."""
    profile, base = config.settings_layers()
    defaults = read_model_defaults(model_dir) if model_dir is not None else {}
    return resolve_settings(
        cli=cli or {}, session=session or {}, profile=profile, config=base, model_defaults=defaults
    )

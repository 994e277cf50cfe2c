"""Reading the config file and profiles into an ``AppConfig`` (never raises for bad content)."""

from __future__ import annotations

import dataclasses
import re
import tomllib
import typing
from pathlib import Path
from typing import Any

from mlx_harmony_tui import paths
from mlx_harmony_tui.config.lines import dotted, find_line
from mlx_harmony_tui.config.schema import AppConfig, ConfigError, ConfigProblem
from mlx_harmony_tui.config.validate import Validator, toml_fields

MAX_DEPTH = 32  # nesting of arrays/tables in a config file


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _build(cls: type, clean: dict[str, Any]) -> Any:
    """Instantiate a dataclass from already-validated data."""
    fields = toml_fields(cls)
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
        data = tomllib.loads(text)
    except RecursionError:
        problems.append(ConfigProblem(path, None, None, "nested too deeply to read; using defaults for the whole file"))
        return {}, text
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(e))
        line = int(m.group(1)) if m else None
        msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(e))
        col = f" (column {m.group(2)})" if m else ""
        problems.append(
            ConfigProblem(path, line, None, f"invalid TOML: {msg}{col}; using defaults for the whole file")
        )
        return {}, text
    _prune_deep(data, path, text, problems)
    return data, text


def _prune_deep(data: dict[str, Any], path: Path, text: str, problems: list[ConfigProblem]) -> None:
    """Drop arrays/tables nested deeper than MAX_DEPTH (no setting is), so that nothing later (validation,
    merging, JSON schemas of tools) recurses into them; iterative, so this check cannot overflow itself."""
    stack: list[tuple[tuple[str | int, ...], Any]] = [((), data)]
    while stack:
        keys, node = stack.pop()
        items = list(node.items()) if isinstance(node, dict) else list(enumerate(node))
        for k, v in reversed(items):  # from the end, so deleting from a list keeps earlier indices valid
            if not isinstance(v, dict | list):
                continue
            if len(keys) + 1 >= MAX_DEPTH:
                del node[k]
                where = (*keys, k)
                problems.append(ConfigProblem(path, find_line(text, where), dotted(where),
                                              f"nested more than {MAX_DEPTH} levels deep; ignored"))
            else:
                stack.append(((*keys, k), v))


_SAMPLING_KEYS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "repetition_context",
    "logit_bias",
    "max_tokens",
    "seed",
    "context_limit",
)


def _flat_settings(clean: dict[str, Any], merged: dict[str, Any]) -> dict[str, Any]:
    """The generation settings one layer sets (only what it sets), in resolve_settings' flat keys."""
    out = {k: v for k, v in clean.get("sampling", {}).items() if k in _SAMPLING_KEYS}
    for key in ("reasoning_effort", "system_prompt", "knowledge_cutoff", "conversation_date", "greeting",
                "placeholders", "response_format_file"):
        if key in clean:
            out[key] = clean[key]
    if "examples" in clean:
        out["examples"] = [{"role": e.get("role", "user"), "content": e.get("content", "")} for e in clean["examples"]]
    if "developer_prompt" in clean:
        out["instructions"] = clean["developer_prompt"]
    tools = clean.get("tools", {})
    if "enabled" in tools.get("python", {}) or "enabled" in tools.get("browser", {}):
        mt = merged.get("tools", {})
        out["builtin_tools"] = [n for n in ("browser", "python") if mt.get(n, {}).get("enabled", False)]
    return out


def _anchor(clean: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Relative paths a config file names are relative to that file's folder, not to where the app runs."""

    def fix(p: str) -> str:
        return p if not p or Path(p).expanduser().is_absolute() else str(folder / p)

    if isinstance(clean.get("response_format_file"), str):
        clean["response_format_file"] = fix(clean["response_format_file"])
    if isinstance(clean.get("models_dirs"), list):
        clean["models_dirs"] = [fix(d) for d in clean["models_dirs"]]
    return clean


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
    v = Validator(path, text)
    base = _anchor(v.clean(AppConfig, raw), path.parent)
    problems += v.problems
    merged = base
    profile_clean: dict[str, Any] = {}
    name = profile or base.get("profile") or None
    found = False
    if name:
        profile_clean, pproblems, found = _load_profile(name, base, path, text)
        problems += pproblems
        merged = _deep_merge(base, profile_clean)
    config: AppConfig = _build(AppConfig, merged)
    config.source = path
    config.active_profile = name if found else None  # a profile file that is empty or broken is still the one named
    config.layers = {"config": _flat_settings(base, base), "profile": _flat_settings(profile_clean, merged)}
    return config, problems


def _load_profile(
    name: str, base: dict[str, Any], path: Path, text: str
) -> tuple[dict[str, Any], list[ConfigProblem], bool]:
    """(the profile's valid settings, its problems, whether a table or file of that name exists)."""
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
            v = Validator(path, text, ("profiles", name))
            out = _anchor(v.clean(AppConfig, {k: t for k, t in table.items() if k not in ("profiles", "profile")}),
                          path.parent)
            for k in sorted(("profiles", "profile") & table.keys()):
                v.problem((k,), "not allowed inside a profile; ignored")
            problems += v.problems
    pfile = paths.config_dir() / "profiles" / f"{name}.toml"
    if re.match(r"^[A-Za-z0-9_.-]+$", name) and pfile.exists():
        found = True
        praw, ptext = _read_toml(pfile, problems)
        v = Validator(pfile, ptext)
        out = _deep_merge(
            out,
            _anchor(v.clean(AppConfig, {k: t for k, t in praw.items() if k not in ("profiles", "profile")}),
                    pfile.parent),
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
    return out, problems, found


def list_profile_files() -> list[str]:
    d = paths.config_dir() / "profiles"
    return sorted(p.stem for p in d.glob("*.toml")) if d.is_dir() else []


def list_profiles(config: AppConfig) -> list[str]:
    """Profiles from ``[profiles.*]`` tables and from config_dir()/profiles/*.toml."""
    return sorted(set(config.profiles) | set(list_profile_files()))

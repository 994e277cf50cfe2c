"""The one place hyperparameter precedence is decided.

command line > session > profile > config file > model defaults (``resolve_settings``)."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Literal

from mlx_harmony_tui.chat.settings import ChatSettings, FunctionTool
from mlx_harmony_tui.config.schema import AppConfig, ConfigError
from mlx_harmony_tui.config.validate import RANGES, Bad, check
from mlx_harmony_tui.engine.sampling import SamplingParams
from mlx_harmony_tui.harmony.render import ResponseFormat

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
    "placeholders": dict[str, str],
    "examples": list[dict[str, str]],
    "greeting": str,
    "response_format_file": str,
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
    """Merge flat setting dicts; a higher level wins wherever it sets a value (None = not set). The keys
    any level but ``model_defaults`` sets are the settings' ``explicit`` ones (what a remote server is sent).

    Keys that are not settings are ignored, so callers can pass ``vars(args)`` or a whole session header.
    A value of the wrong type raises ConfigError naming the level and key.
    """
    merged: dict[str, Any] = {}
    explicit: set[str] = set()  # set by the user (every level but the model's defaults)
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
                merged[key] = check(value, _SETTING_TYPES[key])
            except Bad as e:
                raise ConfigError(f"{level} setting {key}: {e}") from None
            if level != "model_defaults":
                explicit.add(key)
            if key in RANGES and isinstance(merged[key], int | float):
                lo, hi = RANGES[key]
                if (lo is not None and merged[key] < lo) or (hi is not None and merged[key] > hi):
                    raise ConfigError(f"{level} setting {key}: {merged[key]} is out of range")
    sampling = SamplingParams(
        **{k: v for k, v in merged.items() if k in _SAMPLING_FIELDS and k != "logit_bias"}
    )
    if "logit_bias" in merged:
        sampling.logit_bias = logit_bias_from(merged["logit_bias"], "logit_bias")
    rest = {k: v for k, v in merged.items() if k not in _SAMPLING_FIELDS}
    if "function_tools" in rest:
        rest["function_tools"] = [
            t if isinstance(t, FunctionTool) else FunctionTool(**t) for t in rest["function_tools"]
        ]
    schema_file = rest.pop("response_format_file", None)
    if schema_file:
        rest["response_format"] = load_response_format(schema_file)
    return ChatSettings(sampling=sampling, explicit=frozenset(explicit), **rest)


def logit_bias_from(table: dict[Any, Any], name: str) -> dict[int, float]:
    """``{"token id": bias}`` (TOML/JSON keys are strings) -> ``{id: bias}``; ConfigError naming ``name``."""
    out: dict[int, float] = {}
    for k, v in table.items():
        try:
            tid, bias = int(k), float(v)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: {k!r}: expected a token id and a number, e.g. {{\"1234\": -100}}") from None
        if tid < 0 or not -100 <= bias <= 100:
            raise ConfigError(f"{name}: {k}={v}: token ids are >= 0 and biases -100..100")
        out[tid] = bias
    return out


def load_response_format(path: str | Path) -> ResponseFormat:
    """A JSON-schema file -> the response format final answers follow (its ``title`` names it). Checked with
    llguidance here, so a schema that cannot be enforced is a clear error before any model is loaded."""
    from mlx_harmony_tui.harmony.constraint import SchemaError, check_schema

    file = Path(path).expanduser()
    try:
        schema = json.loads(file.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"JSON schema {file}: cannot read it ({e.strerror or e})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"JSON schema {file}: not JSON ({e})") from None
    if isinstance(schema, dict) and "schema" in schema and isinstance(schema["schema"], dict):
        schema = schema["schema"]  # an OpenAI json_schema object ({"name", "schema", ...}) works too
    try:
        check_schema(schema)
    except SchemaError as e:
        raise ConfigError(f"JSON schema {file}: {e}") from None
    name = re.sub(r"[^A-Za-z0-9_\-]", "_", str(schema.get("title") or file.stem))[:64] or "response"
    return ResponseFormat(name, schema, str(schema.get("description") or ""))


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

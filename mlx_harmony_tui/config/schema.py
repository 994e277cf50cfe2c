"""The config file's shape: one dataclass per table, with the defaults a missing key takes.

Adding a key = adding a field here (validation, loading and saving follow the dataclasses)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mlx_harmony_tui.errors import UserError
from mlx_harmony_tui.tools.browser import BrowserToolConfig
from mlx_harmony_tui.tools.functions import FunctionToolConfig
from mlx_harmony_tui.tools.mcp import McpConfig
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
    repetition_context: int | None = None  # tokens the repetition penalty looks back over
    logit_bias: dict[str, float] = field(default_factory=dict)  # token id (as a string) -> bias, -100..100
    max_tokens: int | None = None
    seed: int | None = None
    context_limit: int | None = None


@dataclass
class Example:
    """One message of an example dialogue (``[[examples]]``, as ``sessions convert-dialogue --examples``
    writes them)."""

    role: Literal["user", "assistant", "tool"] = "user"
    content: str = ""


@dataclass
class ToolsConfig:
    python: PythonToolConfig = field(default_factory=PythonToolConfig)
    browser: BrowserToolConfig = field(default_factory=BrowserToolConfig)
    functions: list[FunctionToolConfig] = field(default_factory=list)
    max_output_chars: int = 20000


INTERNAL = {"toml": False}  # metadata: not a config-file key


@dataclass
class AppConfig:
    model: str = ""  # default model: a path or a name found in models_dirs
    models_dirs: list[str] = field(default_factory=list)
    profile: str = ""  # profile used when --profile is not given
    theme: str = "textual-dark"
    reasoning_effort: Literal["low", "medium", "high"] | None = None
    system_prompt: str | None = None
    developer_prompt: str | None = None  # becomes ChatSettings.instructions
    knowledge_cutoff: str | None = None  # the system message's "Knowledge cutoff" (default 2024-06)
    conversation_date: str | None = None  # the system message's "Current date" (default: today, per session)
    greeting: str | None = None  # the assistant's first message of a new conversation
    examples: list[Example] = field(default_factory=list)  # example dialogue, rendered into the developer message
    response_format_file: str | None = None  # a JSON-schema file every final answer follows (structured output)
    remote: RemoteConfig = field(default_factory=RemoteConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    placeholders: dict[str, str] = field(default_factory=dict)
    tools: ToolsConfig = field(default_factory=ToolsConfig)
    mcp: McpConfig = field(default_factory=McpConfig)  # [[mcp.servers]]
    keymap: dict[str, str] = field(default_factory=dict)  # action id -> keys, e.g. "ctrl+s"
    kv_bits: Literal[4, 8] | None = None  # quantize the local model's full-attention KV cache (off: unset)
    kv_mode: Literal["affine", "affine128", "mxfp8"] | None = None  # how kv_bits quantizes (docs/config.md)
    prefill_step: int | None = None  # prompt tokens per prefill chunk of the local model (unset: 2048 CUDA, 512 else)
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)  # raw [profiles.NAME] tables
    # filled by load_config:
    source: Path | None = field(default=None, metadata=INTERNAL)
    active_profile: str | None = field(default=None, metadata=INTERNAL)
    layers: dict[str, dict[str, Any]] = field(default_factory=dict, metadata=INTERNAL)  # "config"/"profile"

    def settings_layers(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(profile, config) flat settings for ``resolve_settings``."""
        return self.layers.get("profile", {}), self.layers.get("config", {})
